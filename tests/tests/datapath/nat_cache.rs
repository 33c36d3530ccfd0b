//! The NAT flow cache (per CPU, in the entry program, both directions of established NAT
//! flows) must never change what happens to a packet: a packet served from it leaves with the
//! bytes and counts the counters the full path would, and whatever changes a flow — its
//! backend rejected or removed, a FIN or a RST either way (on any CPU), a new connection on its
//! 5-tuple, a change of its service — sends its next packets through the full path again.
//!
//! Whether a packet was served from the cache is seen two ways: the entry's `fills` (how often
//! the full path filled it) stays put; and, the oracle of the voiding cases, a next hop's MAC
//! is changed in the lab's neighbour table behind the cache's back (no daemon here tells the
//! datapath): the full path sends to the new MAC, a cached copy to the old one.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use steer_common::{admin, event, Backend, FlowKey};
use steer_ctl::AdminState;
use steer_tests::fixture::{
    run_frame_on, tcp6, udp4, Delta, Field, Frame, OnCpu, Row, CLIENT_MAC, LB_MAC, XDP_REDIRECT,
};

use crate::nat_common::*;

#[test]
fn nat_cache() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes. Rows run on
    // CPU 0 unless a case says otherwise (the cache is per CPU).
    run_cases(
        "nat_cache",
        &[
            ("tcp_both_ways_from_the_cache", tcp_both_ways_from_the_cache),
            ("udp_both_ways_from_the_cache", udp_both_ways_from_the_cache),
            (
                "ipv6_and_xdp_tx_from_the_cache",
                ipv6_and_xdp_tx_from_the_cache,
            ),
            (
                "reject_and_removal_act_at_once",
                reject_and_removal_act_at_once,
            ),
            (
                "a_fin_or_rst_on_another_cpu_voids_both_ways",
                a_fin_or_rst_on_another_cpu_voids_both_ways,
            ),
            (
                "a_new_connection_on_the_tuple_leaves_the_cached_copies",
                a_new_connection_on_the_tuple_leaves_the_cached_copies,
            ),
            (
                "a_next_hop_change_is_seen_once_voided_or_refreshed",
                a_next_hop_change_is_seen_once_voided_or_refreshed,
            ),
            (
                "a_refresh_updates_both_halves",
                a_refresh_updates_both_halves,
            ),
            (
                "a_change_of_the_service_voids_it",
                a_change_of_the_service_voids_it,
            ),
            (
                "a_next_hop_is_kept_until_voided_or_refreshed",
                a_next_hop_is_kept_until_voided_or_refreshed,
            ),
        ],
    );
}

/// How often the full path filled CPU 0's entry for packets of `k` (`None`: not cached).
fn fills(n: &Nat, k: &FlowKey) -> Option<u16> {
    n.bal()
        .datapath()
        .nat_cached(k)
        .unwrap()
        .into_iter()
        .find(|(cpu, _)| *cpu == 0)
        .map(|(_, e)| e.fills)
}

/// Gives neighbour `addr` on `dev` the MAC `mac` in the lab (as a gratuitous ARP would): the
/// FIB answers with it from now on; no one tells the datapath.
fn move_neighbour(n: &Nat, dev: &str, addr: IpAddr, mac: [u8; 6]) {
    n.lab.ns.neighbour(dev, &addr.to_string(), mac);
}

/// A MAC no lab host has.
const MOVED: [u8; 6] = [0x02, 0x77, 0, 0, 0, 1];

/// `to_backend` with the next hop's MAC `dmac` (a backend on `be0`, source port `port`).
fn to_backend_via(
    n: &Nat,
    desc: &str,
    (svc, be): (&str, &str),
    frame: Frame,
    port: u16,
    dmac: [u8; 6],
) -> Row {
    let mut row = n.to_backend(desc, svc, be, frame, false, Some(port));
    let (dst, dport) = n.be_addr(be);
    let (srcs, lo, hi) = n.sources(svc, be);
    row.output = xlate(
        dmac,
        BE_SIDE_MAC,
        Side::Source(srcs, lo, hi, Some(port)),
        dst,
        dport,
    );
    row
}

/// `to_client` with the client's MAC `dmac` (a client on `cli0`).
fn to_client_via(
    n: &Nat,
    desc: &str,
    frame: Frame,
    (vip, vport): (IpAddr, u16),
    (client, cport): (IpAddr, u16),
    dmac: [u8; 6],
) -> Row {
    let mut row = n.to_client(desc, frame, (vip, vport), (client, cport));
    row.output = xlate(dmac, LB_MAC, Side::Exact(vip, vport), client, cport);
    row
}

/// Sends `count` data packets of the established flow `c`:`p` → `svc` on `be` (source port
/// `port`) and `count` of the backend's replies, as rows; with `count` ≥ 2 the flow is then
/// in CPU 0's cache both ways.
fn both_ways(n: &mut Nat, (svc, be): (&str, &str), (c, p): (IpAddr, u16), port: u16, count: u32) {
    let vip = n.bal().service_spec(svc).unwrap().vip;
    let src = n.flow_source(svc, &key(c, p, vip, 80, TCP));
    for i in 0..count {
        let row = n.to_backend(
            &format!("set-up: client data {i}"),
            svc,
            be,
            from_client(c, p, vip, ack(1), b"GET /"),
            false,
            Some(port),
        );
        n.client(row);
        let row = n.to_client(
            &format!("set-up: backend data {i}"),
            n.backend_seg(be, src, port, ack(6), b"200 OK"),
            (vip, 80),
            (c, p),
        );
        n.backend(row);
    }
}

fn tcp_both_ways_from_the_cache(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-a", 50_000);
    let port = n.establish("web", "web-a", c, p);
    let k = key(c, p, vip, 80, TCP);
    let rk = n.rev_key("web-a", SNAT.into(), port, TCP);
    // The handshake's ACK fills the client's direction (so that the request after it, most of
    // what a short connection's client sends, is served from the cache); the backend's SYN-ACK
    // is a SYN, which fills nothing.
    assert_eq!(
        fills(n, &k),
        Some(1),
        "the handshake's ACK fills the client's direction"
    );
    assert_eq!(fills(n, &rk), None, "the SYN-ACK fills no entry");
    for i in 0..4 {
        let row = n.to_backend(
            &format!(
                "client data {i}: sent from the entry the ACK filled, the same bytes and counters"
            ),
            "web",
            "web-a",
            from_client(c, p, vip, ack(1), b"GET /"),
            false,
            Some(port),
        );
        n.client(row);
    }
    let f = fills(n, &k).expect("the client's direction is cached");
    // (Four packets, and the entry refreshed at most once in between: 200 ms.)
    assert!(
        f <= 2,
        "the client's packets were sent from the cache: {f} fills of 4"
    );
    for i in 0..4 {
        let row = n.to_client(
            &format!("backend data {i}: the first fills the cache, the next are sent from it"),
            n.backend_seg("web-a", SNAT.into(), port, ack(6), b"200 OK"),
            (vip, 80),
            (c, p),
        );
        n.backend(row);
    }
    let f = fills(n, &rk).expect("the backend's direction is cached");
    assert!(
        f <= 2,
        "the backend's packets were sent from the cache: {f} fills of 4"
    );

    // A longer packet than the one the FIB checked the route's MTU for takes the full path
    // (which fills again, for the longer length); shorter ones are sent from the cache.
    let before = fills(n, &k).unwrap();
    let row = n.to_backend(
        "a longer client packet takes the full path",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), &[b'x'; 600]),
        false,
        Some(port),
    );
    n.client(row);
    assert_eq!(
        fills(n, &k),
        Some(before + 1),
        "filled again by the longer packet"
    );
    let row = n.to_backend(
        "then a short one is sent from the cache",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"GET /"),
        false,
        Some(port),
    );
    n.client(row);
    assert!(fills(n, &k).unwrap() <= before + 2);
}

fn udp_both_ways_from_the_cache(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let be = n.choice("dns", c, 50_100);
    let k = key(c, 50_100, vip, 53, UDP);
    let row = n.to_backend(
        "a UDP flow's first datagram",
        "dns",
        &be,
        udp4(CLIENT, 50_100, VIP, 53, b"query"),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&k);
    let rk = n.rev_key(&be, SNAT.into(), port, UDP);
    for i in 0..4 {
        let row = n.to_backend(
            &format!("datagram {i}: promoted, then filling the cache, then sent from it"),
            "dns",
            &be,
            udp4(CLIENT, 50_100, VIP, 53, b"query"),
            false,
            Some(port),
        );
        n.client(row);
    }
    let f = fills(n, &k).expect("the client's direction is cached");
    assert!(f <= 2, "sent from the cache: {f} fills of 3");
    for i in 0..4 {
        let row = n.to_client(
            &format!("answer {i}: the first fills the cache, the next are sent from it"),
            n.backend_udp(&be, SNAT.into(), port, b"answer"),
            (vip, 53),
            (c, 50_100),
        );
        n.backend(row);
    }
    let f = fills(n, &rk).expect("the backend's direction is cached");
    assert!(f <= 2, "sent from the cache: {f} fills of 4");
}

fn ipv6_and_xdp_tx_from_the_cache(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    // IPv6: no header checksum, four words per address.
    let (vip6, c): (IpAddr, IpAddr) = (VIP6.into(), CLIENT6.into());
    let p = n.port_to("web6", c, "web6-a", 50_200);
    let port = n.establish("web6", "web6-a", c, p);
    let k = key(c, p, vip6, 80, TCP);
    for i in 0..3 {
        let row = n.to_backend(
            &format!("IPv6 client data {i}"),
            "web6",
            "web6-a",
            tcp6(CLIENT6, p, VIP6, 80).ack(1).data(b"GET /").frame(),
            false,
            Some(port),
        );
        n.client(row);
        let row = n.to_client(
            &format!("IPv6 backend data {i}"),
            n.backend_seg("web6-a", SNAT6.into(), port, ack(6), b"200 OK"),
            (vip6, 80),
            (c, p),
        );
        n.backend(row);
    }
    assert!(fills(n, &k).unwrap() <= 2);
    assert!(fills(n, &n.rev_key("web6-a", SNAT6.into(), port, TCP)).unwrap() <= 2);

    // A backend on the clients' link: sent back out of the interface it came in by.
    let local = vip(41);
    let p = 50_210;
    let port = n.establish("local", "local-a", CLIENT.into(), p);
    let k = key(CLIENT.into(), p, local, 80, TCP);
    for i in 0..3 {
        let row = n.to_backend(
            &format!("client data {i} to a backend on the same link (XDP_TX)"),
            "local",
            "local-a",
            from_client(CLIENT.into(), p, local, ack(1), b"GET /"),
            false,
            Some(port),
        );
        assert_ne!(row.action, XDP_REDIRECT);
        n.client(row);
    }
    assert!(fills(n, &k).unwrap() <= 2);
}

fn reject_and_removal_act_at_once(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-c", 50_300);
    let port = n.establish("web", "web-c", c, p);
    both_ways(n, ("web", "web-c"), (c, p), port, 3);
    n.t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    n.client(rst_row(
        "after reject, a cached flow's client packet is answered with a RST to the client",
        from_client(c, p, vip, ack(777), b"GET /"),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::Packets, 0),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
            Delta::Service("web".into(), Field::RstSent, 1),
        ],
    ));
    n.backend(rst_row(
        "…and the backend's with a RST to the backend",
        n.backend_seg("web-c", SNAT.into(), port, ack(6), b"200 OK"),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    n.t.bal.set_admin("web-c", AdminState::Ready).unwrap();

    // The backend's entry alone says reject (as between the flip of its service's table and
    // the write of its entry): read live, it acts at once.
    let p = n.port_to("web", c, "web-c", p + 1);
    let port = n.establish("web", "web-c", c, p);
    both_ways(n, ("web", "web-c"), (c, p), port, 3);
    let id = n.bal().backend_id("web-c").unwrap();
    let entry = n.bal().datapath().backend(id).unwrap();
    n.t.bal
        .datapath_mut()
        .put_backend(
            id,
            &Backend {
                admin: admin::REJECT,
                ..entry
            },
        )
        .unwrap();
    n.client(rst_row(
        "the backend's entry rejected: a cached flow's client packet is answered with a RST",
        from_client(c, p, vip, ack(777), b"GET /"),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
            Delta::Service("web".into(), Field::RstSent, 1),
        ],
    ));
    n.backend(rst_row(
        "…and the backend's with a RST to the backend",
        n.backend_seg("web-c", SNAT.into(), port, ack(6), b"200 OK"),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    n.t.bal.datapath_mut().put_backend(id, &entry).unwrap();

    n.t.bal
        .add_backend(
            "web",
            steer_ctl::BackendSpec {
                port: Some(BE_PORT),
                snat: Some(SNAT.into()),
                ..steer_ctl::BackendSpec::new("web-f", be4(18), [0; 6])
            },
        )
        .unwrap();
    let p = n.port_to("web", c, "web-f", 50_310);
    let port = n.establish("web", "web-f", c, p);
    both_ways(n, ("web", "web-f"), (c, p), port, 3);
    // The backend's packets, by the address and port it still uses, once it is gone.
    let late = tcp_frame(
        mac4(18),
        BE_SIDE_MAC,
        (be4(18), BE_PORT),
        (SNAT.into(), port),
        ack(6),
        b"200 OK",
    );
    n.t.bal.remove_backend("web-f").unwrap();
    n.client(rst_row(
        "after removal, a cached flow's client packet is answered with a RST",
        from_client(c, p, vip, ack(55), b"x"),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    n.backend(rst_row(
        "…and the removed backend's with a RST to it",
        late,
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
}

fn a_fin_or_rst_on_another_cpu_voids_both_ways(n: &mut Nat) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this case needs two CPUs, found {cpus}");
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    for (i, end) in ["the client's FIN", "the client's RST", "the backend's FIN"]
        .into_iter()
        .enumerate()
    {
        let p = n.port_to("web", c, "web-b", 50_400 + 20 * i as u16);
        let port = {
            let _cpu = OnCpu::pin(0);
            let port = n.establish("web", "web-b", c, p);
            both_ways(n, ("web", "web-b"), (c, p), port, 3);
            port
        };
        // Both next hops move behind the caches' back, and the next-hop cache forgets its
        // answers (as when they age out) while the NAT cache keeps its copies: what the full
        // path sends from now on goes to the new MACs, a cached copy to the old ones.
        move_neighbour(n, "be0", be4(2), MOVED);
        move_neighbour(n, "cli0", c, MOVED);
        n.t.bal.datapath_mut().forget_next_hops().unwrap();
        {
            let _cpu = OnCpu::pin(1);
            match i {
                0 | 1 => {
                    let f = if i == 0 { fin_ack(1) } else { rst_ack(1) };
                    let mut row = to_backend_via(
                        n,
                        &format!("CPU 1: {end}"),
                        ("web", "web-b"),
                        from_client(c, p, vip, f, &[]),
                        port,
                        MOVED,
                    );
                    row.deltas
                        .push(Delta::Backend("web-b".into(), Field::EndedFlows, 1));
                    n.client(row);
                }
                _ => {
                    let row = to_client_via(
                        n,
                        &format!("CPU 1: {end}"),
                        n.backend_seg("web-b", SNAT.into(), port, fin_ack(6), &[]),
                        (vip, 80),
                        (c, p),
                        MOVED,
                    );
                    n.backend(row);
                }
            }
        }
        {
            let _cpu = OnCpu::pin(0);
            if i != 1 {
                // (After a RST, the client sends nothing more.)
                let row = to_backend_via(
                    n,
                    &format!("CPU 0, after {end}: the client's packet takes the full path"),
                    ("web", "web-b"),
                    from_client(c, p, vip, ack(2), &[]),
                    port,
                    MOVED,
                );
                n.client(row);
            }
            let row = to_client_via(
                n,
                &format!("CPU 0, after {end}: the backend's packet takes the full path"),
                n.backend_seg("web-b", SNAT.into(), port, ack(2), &[]),
                (vip, 80),
                (c, p),
                MOVED,
            );
            n.backend(row);
        }
        move_neighbour(n, "be0", be4(2), mac4(2));
        move_neighbour(n, "cli0", c, CLIENT_MAC);
        // (The next case's cached copies must not hold the moved MACs.)
        n.t.bal.datapath_mut().void_caches().unwrap();
    }
}

fn a_new_connection_on_the_tuple_leaves_the_cached_copies(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-b", 50_500);
    let port = n.establish("web", "web-b", c, p);
    // Drained first (a service change voids every cache), then cached both ways: a new
    // connection on the 5-tuple goes to another backend.
    n.t.bal.set_admin("web-b", AdminState::Drain).unwrap();
    both_ways(n, ("web", "web-b"), (c, p), port, 3);
    let k = key(c, p, vip, 80, TCP);
    let now = n.choice("web", c, p);
    assert_ne!(now, "web-b");
    let mut row = n.to_backend(
        "a SYN on a cached flow's 5-tuple is a new connection, steered afresh",
        "web",
        &now,
        from_client(c, p, vip, syn(), &[]),
        true,
        None,
    );
    row.deltas.extend([
        Delta::Outcome(event::STALE_SYN, 1),
        Delta::Backend("web-b".into(), Field::EndedFlows, 1),
        Delta::Service("web".into(), Field::EndedFlows, 1),
    ]);
    n.client(row);
    let (be, new_port) = n.nat_of(&k);
    assert_eq!(be, now);
    let src = n.flow_source("web", &k);
    let row = n.to_client(
        "its backend's SYN-ACK",
        n.backend_seg(&now, src, new_port, syn_ack(1001), &[]),
        (vip, 80),
        (c, p),
    );
    n.backend(row);
    let row = n.to_backend(
        "its handshake's ACK goes to its backend, not the cached copy's",
        "web",
        &now,
        from_client(c, p, vip, ack(1), &[]),
        false,
        Some(new_port),
    );
    n.client(row);
    n.backend(passed(
        "a late packet of the old backend on the old source is not translated from a cached copy",
        n.backend_seg("web-b", SNAT.into(), port, ack(6), b"late"),
    ));
    n.t.bal.set_admin("web-b", AdminState::Ready).unwrap();
}

fn a_next_hop_change_is_seen_once_voided_or_refreshed(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-a", 50_600);
    let port = n.establish("web", "web-a", c, p);
    let k = key(c, p, vip, 80, TCP);
    both_ways(n, ("web", "web-a"), (c, p), port, 2);
    // A fresh fill, then the move.
    n.t.bal.datapath_mut().void_caches().unwrap();
    let row = n.to_backend(
        "set-up: a client packet fills the cache",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"GET /"),
        false,
        Some(port),
    );
    n.client(row);
    move_neighbour(n, "be0", be4(1), MOVED);
    // Until the daemon, told by the kernel, voids the caches (or the entry's refresh), a
    // cached copy sends to the MAC the FIB gave when it was filled.
    let row = n.to_backend(
        "the backend's MAC changed: a cached copy still sends to the old one",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"GET /"),
        false,
        Some(port),
    );
    n.client(row);
    n.t.bal.datapath_mut().void_caches().unwrap();
    let row = to_backend_via(
        n,
        "once the caches are voided (the daemon's answer to the kernel's notice), the new one",
        ("web", "web-a"),
        from_client(c, p, vip, ack(1), b"GET /"),
        port,
        MOVED,
    );
    n.client(row);
    move_neighbour(n, "be0", be4(1), mac4(1));
    // Without a notice, the entry's refresh (50 jiffies, 200 ms at HZ=250; 500 ms at
    // HZ=100) bounds how long the old MAC is used.
    let filled = fills(n, &k).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let row = n.to_backend(
        "the MAC changed back, nobody told: after the refresh period, the full path's",
        "web",
        "web-a",
        from_client(c, p, vip, ack(1), b"GET /"),
        false,
        Some(port),
    );
    n.client(row);
    assert_eq!(
        fills(n, &k),
        Some(filled + 1),
        "refilled after the refresh period"
    );
}

fn a_refresh_updates_both_halves(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-a", 50_700);
    let port = n.establish("web", "web-a", c, p);
    let k = key(c, p, vip, 80, TCP);
    let rk = n.rev_key("web-a", SNAT.into(), port, TCP);
    both_ways(n, ("web", "web-a"), (c, p), port, 2);
    let (seen0, rev0) = (n.flow(&k).last_seen_ns, n.reverse(&rk).unwrap().last_ns);
    // Client packets every 10 ms: the flow's `last_seen_ns` moves at each refresh, no sooner
    // than 40 ms (50 jiffies at HZ=1000) after the fill; the reverse half's `last_ns` (which
    // the full path moves once a second at most) moves too.
    let deadline = Instant::now() + Duration::from_secs(5);
    let frame = from_client(c, p, vip, ack(1), b"x").bytes;
    let mut seen_moved = None;
    loop {
        let r = run_frame_on(&mut n.t.bal, &frame, Some(n.lab.cli));
        assert_eq!(r.action, XDP_REDIRECT);
        let seen = n.flow(&k).last_seen_ns;
        if seen > seen0 && seen_moved.is_none() {
            assert!(
                seen - seen0 >= 40_000_000,
                "the flow's last_seen moved after {} ms: its packets were not sent from the cache",
                (seen - seen0) / 1_000_000
            );
            seen_moved = Some(seen);
        }
        if seen_moved.is_some() && n.reverse(&rk).unwrap().last_ns > rev0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "client packets from the cache: last_seen {seen_moved:?}, the reverse half's last_ns {} (was {rev0})",
            n.reverse(&rk).unwrap().last_ns
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The backend's packets alone: the reverse half's `last_ns` moves (as on the full path,
    // the flow's own entry is the client's packets' to move).
    let rev1 = n.reverse(&rk).unwrap().last_ns;
    let frame = n
        .backend_seg("web-a", SNAT.into(), port, ack(6), b"y")
        .bytes;
    let deadline = Instant::now() + Duration::from_secs(5);
    while n.reverse(&rk).unwrap().last_ns == rev1 {
        let r = run_frame_on(&mut n.t.bal, &frame, Some(n.lab.be));
        assert_eq!(r.action, XDP_REDIRECT);
        assert!(
            Instant::now() < deadline,
            "backend packets from the cache: the reverse half's last_ns never moved"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn a_change_of_the_service_voids_it(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (web, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-a", 50_800);
    let port = n.establish("web", "web-a", c, p);
    both_ways(n, ("web", "web-a"), (c, p), port, 3);
    move_neighbour(n, "be0", be4(1), MOVED);
    n.t.bal.set_maintenance("web", true).unwrap();
    let row = to_backend_via(
        n,
        "the service went into maintenance: its cached flow's packet takes the full path (and stays on its backend)",
        ("web", "web-a"),
        from_client(c, p, web, ack(1), b"GET /"),
        port,
        MOVED,
    );
    n.client(row);
    n.t.bal.set_maintenance("web", false).unwrap();
    move_neighbour(n, "be0", be4(1), mac4(1));

    // The last case: a service removed.
    let solo = vip(81);
    let p = 50_810;
    let port = n.establish("solo", "solo-a", c, p);
    both_ways(n, ("solo", "solo-a"), (c, p), port, 3);
    n.t.bal.remove_service("solo").unwrap();
    n.client(passed(
        "the service removed, its cached flow's packets are for no service",
        from_client(c, p, solo, ack(1), b"GET /"),
    ));
}

/// A new connection's SYN to `be` whose next hop's MAC is `dmac`.
fn syn_via(n: &Nat, desc: &str, (svc, be): (&str, &str), frame: Frame, dmac: [u8; 6]) -> Row {
    let mut row = n.to_backend(desc, svc, be, frame, true, None);
    let (dst, dport) = n.be_addr(be);
    let (srcs, lo, hi) = n.sources(svc, be);
    row.output = xlate(
        dmac,
        BE_SIDE_MAC,
        Side::Source(srcs, lo, hi, None),
        dst,
        dport,
    );
    row
}

/// The FIB's answer for a next hop is kept per CPU (`hop.rs`) under the NAT cache's rules:
/// a new connection to the same backend is sent with it, without asking the FIB, until the
/// host epoch moves (steer-ctl's answer to the kernel's notice of a neighbour change) or 50
/// jiffies pass.
fn a_next_hop_is_kept_until_voided_or_refreshed(n: &mut Nat) {
    let _cpu = OnCpu::pin(0);
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    n.t.bal.datapath_mut().void_caches().unwrap();
    let p1 = n.port_to("web", c, "web-a", 50_800);
    n.establish("web", "web-a", c, p1);
    move_neighbour(n, "be0", be4(1), MOVED);
    let p2 = n.port_to("web", c, "web-a", 50_820);
    let row = n.to_backend(
        "the backend's MAC changed, nobody told: a new connection's SYN goes to the next hop \
         the FIB gave the first one",
        "web",
        "web-a",
        from_client(c, p2, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    n.t.bal.datapath_mut().void_caches().unwrap();
    let p3 = n.port_to("web", c, "web-a", 50_840);
    let row = syn_via(
        n,
        "once the caches are voided (the daemon's answer to the kernel's notice), the FIB's new \
         answer",
        ("web", "web-a"),
        from_client(c, p3, vip, syn(), &[]),
        MOVED,
    );
    n.client(row);
    move_neighbour(n, "be0", be4(1), mac4(1));
    // Without a notice, the answer's refresh period (50 jiffies: 200 ms at HZ=250, 500 ms at
    // HZ=100) bounds how long the moved MAC is used.
    std::thread::sleep(Duration::from_millis(600));
    let p4 = n.port_to("web", c, "web-a", 50_860);
    let row = n.to_backend(
        "the MAC changed back, nobody told: after the refresh period, the FIB is asked again",
        "web",
        "web-a",
        from_client(c, p4, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    n.t.bal.datapath_mut().void_caches().unwrap();
}
