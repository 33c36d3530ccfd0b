//! SPEC.md's datapath rules in NAT mode (issue 10, item 4), the rows of the DSR fixtures where
//! they apply: pinned flows survive a pool change (rule 1), drain and maint keep flows and
//! reject resets them from both sides — the client's packets answered with a RST to the
//! client, the backend's with a RST to the backend — and a removed backend is reject (rule 4),
//! maintenance and fallback backends (rule 3), SYN redispatch with a fresh source and the old
//! reverse entry released (rule 5), UDP idle expiry, several services, IPv6.

use std::{net::IpAddr, time::Duration};

use steer_common::{event, outcome};
use steer_ctl::{AdminState, BackendSpec, Health};
use steer_tests::fixture::{tcp6, udp4, Delta, Field};

use crate::nat_common::*;

#[test]
fn rules() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes.
    run_cases(
        "nat_rules",
        &[
            (
                "pinned_flows_survive_a_pool_change_and_drain_and_maint_keep_flows",
                pinned_flows_survive_a_pool_change_and_drain_and_maint_keep_flows,
            ),
            ("reject_resets_both_sides", reject_resets_both_sides),
            (
                "a_removed_backend_is_treated_as_reject",
                a_removed_backend_is_treated_as_reject,
            ),
            (
                "maintenance_and_fallback_backends",
                maintenance_and_fallback_backends,
            ),
            (
                "a_retransmitted_syn_leaves_a_backend_taken_out",
                a_retransmitted_syn_leaves_a_backend_taken_out,
            ),
            (
                "udp_idle_expiry_and_several_services",
                udp_idle_expiry_and_several_services,
            ),
            ("ipv6_reject_and_redispatch", ipv6_reject_and_redispatch),
        ],
    );
}

fn pinned_flows_survive_a_pool_change_and_drain_and_maint_keep_flows(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    // A flow whose Maglev choice moves to a new backend when it joins.
    let p = (49_000..53_000)
        .find(|p| n.choice("web", c, *p) == "web-a")
        .unwrap();
    let port = n.establish("web", "web-a", c, p);
    n.t.bal
        .add_backend(
            "web",
            BackendSpec {
                port: Some(BE_PORT),
                snat: Some(SNAT.into()),
                ..BackendSpec::new("web-d", be4(18), [0; 6])
            },
        )
        .unwrap();
    let moved = (53_000..60_000)
        .find(|q| n.choice("web", c, *q) == "web-d")
        .expect("web-d takes some flows");
    let row = n.to_backend(
        "after a pool change, an established flow stays on its backend and source",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"more"),
        false,
        Some(port),
    );
    n.client(row);
    let row = n.to_backend(
        "a new flow takes the new table",
        "web",
        "web-d",
        from_client(c, moved, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);

    n.t.bal.set_admin("web-a", AdminState::Drain).unwrap();
    let row = n.to_backend(
        "after drain, a flow on the drained backend still goes there",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"more"),
        false,
        Some(port),
    );
    n.client(row);
    let row = n.to_client(
        "…and its backend's replies still come back",
        n.backend_seg("web-a", SNAT.into(), port, ack(5), b"data"),
        (vip, 80),
        (c, p),
    );
    n.backend(row);
    let fresh = (60_000..64_000)
        .find(|q| n.choice("web", c, *q) != "web-a")
        .unwrap();
    let now = n.choice("web", c, fresh);
    let row = n.to_backend(
        "after drain, a new flow goes to another backend",
        "web",
        &now,
        from_client(c, fresh, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    n.t.bal.set_admin("web-a", AdminState::Maint).unwrap();
    let row = n.to_backend(
        "in maint, flows on the backend still go there",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"more"),
        false,
        Some(port),
    );
    n.client(row);
    n.t.bal.set_admin("web-a", AdminState::Ready).unwrap();
    n.t.bal.remove_backend("web-d").unwrap();
}

fn reject_resets_both_sides(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-c", 49_100);
    let port = n.establish("web", "web-c", c, p);
    let p2 = n.port_to("web", c, "web-c", p + 1);
    let port2 = n.establish("web", "web-c", c, p2);
    n.t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    n.client(rst_row(
        "after reject, a client's data packet is answered with a RST to the client",
        from_client(c, p, vip, ack(777), b"GET /"),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::Packets, 0),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
            Delta::Service("web".into(), Field::RstSent, 1),
        ],
    ));
    n.client(dropped(
        "a RST from the client is not answered",
        from_client(c, p, vip, rst(), &[]),
        outcome::DROP_REJECTED,
        vec![],
    ));
    n.backend(rst_row(
        "after reject, the backend's packet of a flow is answered with a RST to the backend",
        n.backend_seg("web-c", SNAT.into(), port2, ack(1), b"late data"),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    n.backend(rst_row(
        "…also for a flow whose client side was reset already",
        n.backend_seg("web-c", SNAT.into(), port, ack(1), b"late data"),
        vec![],
    ));
    n.backend(dropped(
        "a RST from the backend of a rejected flow is dropped, not answered",
        n.backend_seg("web-c", SNAT.into(), port, rst(), &[]),
        outcome::DROP_REJECTED,
        vec![],
    ));
    n.t.bal.set_admin("web-c", AdminState::Ready).unwrap();
}

fn a_removed_backend_is_treated_as_reject(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    n.t.bal
        .add_backend(
            "web",
            BackendSpec {
                port: Some(BE_PORT),
                snat: Some(SNAT.into()),
                ..BackendSpec::new("web-e", be4(19), [0; 6])
            },
        )
        .unwrap();
    let p = n.port_to("web", c, "web-e", 49_200);
    let port = n.establish("web", "web-e", c, p);
    n.t.bal.remove_backend("web-e").unwrap();
    n.client(rst_row(
        "a client's packet of a removed backend's flow is answered with a RST",
        from_client(c, p, vip, ack(55), b"x"),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    // The backend's packet, by the address and port it still uses.
    let frame = tcp_frame(
        mac4(19),
        BE_SIDE_MAC,
        (be4(19), BE_PORT),
        (SNAT.into(), port),
        ack(1),
        b"late",
    );
    n.backend(rst_row(
        "the removed backend's packet of the flow is answered with a RST to it",
        frame,
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
}

fn maintenance_and_fallback_backends(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-b", 49_300);
    let port = n.establish("web", "web-b", c, p);
    n.t.bal.set_maintenance("web", true).unwrap();
    let row = n.to_backend(
        "in maintenance, a new flow goes to the maintenance backend, translated",
        "web",
        "web-maint",
        from_client(c, 49_301, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, mport) = n.nat_of(&key(c, 49_301, vip, 80, TCP));
    let row = n.to_client(
        "…whose reply comes back from the VIP",
        n.backend_seg("web-maint", SNAT.into(), mport, syn_ack(1001), &[]),
        (vip, 80),
        (c, 49_301),
    );
    n.backend(row);
    let row = n.to_backend(
        "in maintenance, an established flow stays where it is",
        "web",
        "web-b",
        from_client(c, p, vip, ack(1), b"more"),
        false,
        Some(port),
    );
    n.client(row);
    n.t.bal.set_maintenance("web", false).unwrap();
    for be in ["web-a", "web-b", "web-c"] {
        n.t.bal.set_health(be, Health::Down).unwrap();
    }
    let row = n.to_backend(
        "with no pool backend eligible, a new flow goes to the fallback, translated",
        "web",
        "web-sorry",
        from_client(c, 49_302, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    for be in ["web-a", "web-b", "web-c"] {
        n.t.bal.set_health(be, Health::Up).unwrap();
    }
}

fn a_retransmitted_syn_leaves_a_backend_taken_out(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let take_out = |b: &mut steer_ctl::Balancer, how: &str| match how {
        "drained" => b.set_admin("web-c", AdminState::Drain).unwrap(),
        "down" => b.set_health("web-c", Health::Down).unwrap(),
        _ => b.set_admin("web-c", AdminState::Reject).unwrap(),
    };
    for (i, how) in ["drained", "down", "rejected"].into_iter().enumerate() {
        let p = n.port_to("web", c, "web-c", 49_400 + 100 * i as u16);
        let row = n.to_backend(
            "set-up: a SYN, never answered",
            "web",
            "web-c",
            from_client(c, p, vip, syn(), &[]),
            true,
            None,
        );
        n.client(row);
        let k = key(c, p, vip, 80, TCP);
        let (_, old_port) = n.nat_of(&k);
        let old_rev = n.rev_key("web-c", SNAT.into(), old_port, TCP);
        assert!(n.reverse(&old_rev).is_some());
        take_out(&mut n.t.bal, how);
        let again = n.choice("web", c, p);
        assert_ne!(again, "web-c");
        let mut row = n.to_backend(
            &format!(
                "a retransmitted SYN whose backend was {how} goes to another, from a fresh source"
            ),
            "web",
            &again,
            from_client(c, p, vip, syn(), &[]),
            true,
            None,
        );
        row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
        n.client(row);
        let (be, new_port) = n.nat_of(&k);
        assert_eq!(be, again, "the entry follows the redispatch");
        assert!(
            n.reverse(&old_rev).is_none(),
            "the attempt's old reverse entry ({how}) is released"
        );
        let new_rev = n.rev_key(&again, SNAT.into(), new_port, TCP);
        assert!(
            n.reverse(&new_rev).is_some(),
            "the new source's reverse entry"
        );
        let row = n.to_client(
            "the new backend's SYN-ACK reaches the client",
            n.backend_seg(&again, SNAT.into(), new_port, syn_ack(1001), &[]),
            (vip, 80),
            (c, p),
        );
        n.backend(row);
        n.backend(passed(
            "a late SYN-ACK of the old attempt, on the released source, is not translated",
            n.backend_seg("web-c", SNAT.into(), old_port, syn_ack(1001), &[]),
        ));
        // Back in rotation for the next case.
        n.t.bal.set_admin("web-c", AdminState::Ready).unwrap();
        n.t.bal.set_health("web-c", Health::Up).unwrap();
    }
}

fn udp_idle_expiry_and_several_services(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let be = n.choice("dns", c, 50_000);
    let row = n.to_backend(
        "a UDP flow",
        "dns",
        &be,
        udp4(CLIENT, 50_000, VIP, 53, b"q1"),
        true,
        None,
    );
    n.client(row);
    let k = key(c, 50_000, vip, 53, UDP);
    let (_, port) = n.nat_of(&k);
    let row = n.to_backend(
        "its next datagram within the idle timeout keeps the source",
        "dns",
        &be,
        udp4(CLIENT, 50_000, VIP, 53, b"q2"),
        false,
        Some(port),
    );
    n.client(row);
    // The same client port to another service of the same VIP: a flow of its own.
    let p = n.port_to("web", c, "web-a", 50_000);
    let web_port = n.establish("web", "web-a", c, p);
    std::thread::sleep(Duration::from_millis(1_100));
    let mut row = n.to_backend(
        "after the idle timeout, the next datagram is a new flow with a fresh source",
        "dns",
        &be,
        udp4(CLIENT, 50_000, VIP, 53, b"q3"),
        true,
        None,
    );
    row.deltas.push(Delta::Outcome(event::IDLE_EXPIRED, 1));
    n.client(row);
    let (_, port2) = n.nat_of(&k);
    assert_ne!(
        port2, port,
        "a fresh source port (the old one was still taken when it was chosen)"
    );
    assert!(
        n.reverse(&n.rev_key(&be, SNAT.into(), port, UDP)).is_none(),
        "the expired flow's reverse entry is released"
    );
    let row = n.to_client(
        "the answer on the new source comes back",
        n.backend_udp(&be, SNAT.into(), port2, b"a3"),
        (vip, 53),
        (c, 50_000),
    );
    n.backend(row);
    let row = n.to_backend(
        "the TCP flow of the other service is untouched (TCP does not expire)",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"still here"),
        false,
        Some(web_port),
    );
    n.client(row);
}

fn ipv6_reject_and_redispatch(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP6.into(), CLIENT6.into());
    let p = n.port_to("web6", c, "web6-a", 51_000);
    let port = n.establish("web6", "web6-a", c, p);
    let q = n.port_to("web6", c, "web6-a", p + 1);
    let row = n.to_backend(
        "set-up: an IPv6 SYN, never answered",
        "web6",
        "web6-a",
        tcp6(CLIENT6, q, VIP6, 80).syn().frame(),
        true,
        None,
    );
    n.client(row);
    let (_, qport) = n.nat_of(&key(c, q, vip, 80, TCP));
    n.t.bal.set_admin("web6-a", AdminState::Reject).unwrap();
    n.client(rst_row(
        "after reject, an IPv6 client's packet is answered with a RST",
        tcp6(CLIENT6, p, VIP6, 80).ack(9).data(b"x").frame(),
        vec![Delta::Service("web6".into(), Field::RstSent, 1)],
    ));
    n.backend(rst_row(
        "…and the backend's, with a RST to the backend",
        n.backend_seg("web6-a", SNAT6.into(), port, ack(1), b"late"),
        vec![],
    ));
    let mut row = n.to_backend(
        "a retransmitted IPv6 SYN of the rejected backend goes to the other one",
        "web6",
        "web6-b",
        tcp6(CLIENT6, q, VIP6, 80).syn().frame(),
        true,
        None,
    );
    row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
    n.client(row);
    assert!(n
        .reverse(&n.rev_key("web6-a", SNAT6.into(), qport, TCP))
        .is_none());
}
