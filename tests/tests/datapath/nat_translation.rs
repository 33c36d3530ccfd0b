//! NAT translation, both ways (SPEC.md, forwarding modes: `nat`): a client's packet leaves with
//! the backend's address and port as destination and an LB address and port as source, MACs
//! from the kernel's FIB; the backend's reply comes back as from the VIP to the client. Every
//! expected frame is the input rewritten with checksums etherparse computes.

use std::net::{IpAddr, Ipv6Addr};

use steer_common::{note, outcome, FAMILY_V4, NEIGH_SLOTS};
use steer_tests::fixture::{tcp4, tcp6, udp4, udp6, Delta, Frame};

use crate::nat_common::*;

/// A reload that removes a pool address (the first of two here) moves no flow: the flows of
/// the other address keep their source (a flow records its address's slot, which the other
/// address keeps), the removed address's flows keep theirs until they end (its slot is
/// retired, not reused), and new flows leave from the pool's addresses only. (The pool was an
/// ordered list: the second address moved to the first place, so the flows of both lost their
/// source.)
fn a_pool_address_removed_keeps_its_flows_and_the_others_keep_theirs(n: &mut Nat) {
    let pooled = vip(50);
    let c: IpAddr = CLIENT.into();
    // New flows take an address of the pool at random: SYNs until one flow has each.
    let mut on: [Option<(u16, u16)>; 2] = [None, None];
    for cport in 41_100..41_140 {
        let row = n.to_backend(
            "set-up: a SYN to the pooled service",
            "pooled",
            "pooled-a",
            from_client(c, cport, pooled, syn(), &[]),
            true,
            None,
        );
        n.client(row);
        let f = n.flow(&key(c, cport, pooled, 80, TCP));
        on[f.nat_addr as usize].get_or_insert((cport, u16::from_be(f.nat_port_be)));
        if on.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some((c0, port0)), Some((c1, port1))] = on else {
        panic!("set-up: no flow on each pool address in 40 SYNs: {on:?}")
    };
    let before = n.bal().service_spec("pooled").unwrap().clone();
    let mut spec = before.clone();
    spec.nat.pool = vec![POOL[1].into()];
    spec.nat.slots = steer_ctl::balancer::pool_slots(before.nat.slots(), &spec.nat.pool);
    assert_eq!(
        spec.nat.slots,
        vec![IpAddr::from(POOL[0]), POOL[1].into()],
        "both addresses keep their slots"
    );
    n.t.bal.update_service(spec).unwrap();

    let (dst, dport) = n.be_addr("pooled-a");
    for (cport, port, addr, desc) in [
        (
            c1,
            port1,
            POOL[1],
            "a flow of the address kept keeps its source",
        ),
        (
            c0,
            port0,
            POOL[0],
            "a flow of the address removed keeps its source",
        ),
    ] {
        let mut row = n.to_backend(
            desc,
            "pooled",
            "pooled-a",
            from_client(c, cport, pooled, ack(1), &[]),
            false,
            Some(port),
        );
        let (dmac, smac, _) = n.lab.next_hop(dst, n.lab.cli);
        row.output = xlate(
            dmac,
            smac,
            Side::Source(vec![addr.into()], port, port, Some(port)),
            dst,
            dport,
        );
        n.client(row);
        let row = n.to_client(
            "and the backend's answer to it comes back",
            n.backend_seg("pooled-a", addr.into(), port, ack(1), b"ok"),
            (pooled, 80),
            (c, cport),
        );
        n.backend(row);
    }
    // (16 of them: were the removed address still taken, one in 65,536 runs would miss it.)
    for cport in 41_200..41_216 {
        let row = n.to_backend(
            "a new flow leaves from the pool's address",
            "pooled",
            "pooled-a",
            from_client(c, cport, pooled, syn(), &[]),
            true,
            None,
        );
        n.client(row);
    }
    n.t.bal.update_service(before).unwrap();
}

#[test]
fn translation() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes.
    run_cases(
        "nat_translation",
        &[
            ("tcp_v4_both_ways", tcp_v4_both_ways),
            ("next_hops_come_from_the_fib", next_hops_come_from_the_fib),
            (
                "a_missing_neighbour_is_asked_for_and_the_retransmission_goes_through",
                a_missing_neighbour_is_asked_for_and_the_retransmission_goes_through,
            ),
            ("udp_both_ways", udp_both_ways),
            ("ipv6_tcp_and_udp_both_ways", ipv6_tcp_and_udp_both_ways),
            (
                "a_pool_address_removed_keeps_its_flows_and_the_others_keep_theirs",
                a_pool_address_removed_keeps_its_flows_and_the_others_keep_theirs,
            ),
        ],
    );
}

fn tcp_v4_both_ways(n: &mut Nat) {
    let vip: IpAddr = VIP.into();
    let c: IpAddr = CLIENT.into();
    let p = n.port_to("web", c, "web-a", 40_000);
    let k = key(c, p, vip, 80, TCP);
    let row = n.to_backend(
        "a client's SYN leaves for the backend's address and port, from the LB's facing address and a port of the range",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
        None,
    );
    n.client(row);
    let (be, lb_port) = n.nat_of(&k);
    assert_eq!(be, "web-a");
    let rk = n.rev_key("web-a", SNAT.into(), lb_port, TCP);
    let rev = n.reverse(&rk).expect("the flow's reverse entry");
    assert_eq!(
        (rev.client_port_be, rev.vip_port_be),
        (p.to_be(), 80u16.to_be()),
        "the reverse entry names the client's and the VIP's ports"
    );
    let row = n.to_client(
        "the backend's SYN-ACK comes back from the VIP to the client",
        n.backend_seg("web-a", SNAT.into(), lb_port, syn_ack(1001), &[]),
        (vip, 80),
        (c, p),
    );
    n.backend(row);
    let row = n.to_backend(
        "the handshake's ACK keeps the flow's source",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).ack(1).frame(),
        false,
        Some(lb_port),
    );
    n.client(row);
    assert!(
        n.bal().datapath().is_established(&k),
        "the ACK established the flow"
    );
    let row = n.to_backend(
        "a data segment too",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80)
            .ack(1)
            .data(b"GET / HTTP/1.1\r\n\r\n")
            .frame(),
        false,
        Some(lb_port),
    );
    n.client(row);
    let row = n.to_client(
        "the backend's data comes back translated",
        n.backend_seg(
            "web-a",
            SNAT.into(),
            lb_port,
            ack(19),
            b"HTTP/1.1 200 OK\r\n\r\nhello",
        ),
        (vip, 80),
        (c, p),
    );
    n.backend(row);
    // A payload of odd length: the checksum's last word is padded.
    let row = n.to_client(
        "…of odd length too",
        n.backend_seg("web-a", SNAT.into(), lb_port, ack(19), b"odd"),
        (vip, 80),
        (c, p),
    );
    n.backend(row);

    // A second client, another port to the same backend: its own source port.
    let c2: IpAddr = CLIENT2.into();
    let p2 = n.port_to("web", c2, "web-a", 40_000);
    let row = n.to_backend(
        "another client's SYN to the same backend",
        "web",
        "web-a",
        from_client(c2, p2, vip, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, lb_port2) = n.nat_of(&key(c2, p2, vip, 80, TCP));
    assert_ne!(
        lb_port2, lb_port,
        "two clients on one backend never share a source port"
    );
    let row = n.to_client(
        "its reply goes to it, not to the first client",
        n.backend_seg("web-a", SNAT.into(), lb_port2, syn_ack(1001), &[]),
        (vip, 80),
        (c2, p2),
    );
    n.backend(row);
}

fn next_hops_come_from_the_fib(n: &mut Nat) {
    // A backend behind a router: its destination MAC is the router's.
    let far = vip(40);
    let row = n.to_backend(
        "a backend in another subnet is reached through its router's MAC",
        "far",
        "far-a",
        from_client(CLIENT.into(), 41_000, far, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(CLIENT.into(), 41_000, far, 80, TCP));
    let row = n.to_client(
        "its reply goes to the client",
        n.backend_seg("far-a", SNAT.into(), port, syn_ack(1001), &[]),
        (far, 80),
        (CLIENT.into(), 41_000),
    );
    n.backend(row);
    let far6: IpAddr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x40).into();
    let row = n.to_backend(
        "the same in IPv6",
        "far6",
        "far6-a",
        from_client(CLIENT6.into(), 41_001, far6, syn(), &[]),
        true,
        None,
    );
    n.client(row);

    // A client behind the clients' router: the reply goes to the router's MAC.
    let fc: IpAddr = FAR_CLIENT.into();
    let row = n.to_backend(
        "a SYN from a client behind a router",
        "web",
        &n.choice("web", fc, 41_002),
        tcp_frame(
            CGW_MAC,
            steer_tests::fixture::LB_MAC,
            (fc, 41_002),
            (VIP.into(), 80),
            syn(),
            &[],
        ),
        true,
        None,
    );
    n.client(row);
    let k = key(fc, 41_002, VIP.into(), 80, TCP);
    let (be, port) = n.nat_of(&k);
    let row = n.to_client(
        "its reply leaves through that router (the default route)",
        n.backend_seg(&be, SNAT.into(), port, syn_ack(1001), &[]),
        (VIP.into(), 80),
        (fc, 41_002),
    );
    n.backend(row);

    // A backend on the clients' link: out of the interface the SYN came in by.
    let local = vip(41);
    let row = n.to_backend(
        "a backend on the clients' own link is sent back out of it (XDP_TX)",
        "local",
        "local-a",
        from_client(CLIENT.into(), 41_003, local, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(CLIENT.into(), 41_003, local, 80, TCP));
    let reply = n.backend_seg("local-a", CLI_ADDR.into(), port, syn_ack(1001), &[]);
    let (dmac, smac, action) = n.lab.next_hop(CLIENT.into(), n.lab.cli);
    assert_eq!(action, steer_tests::fixture::XDP_TX);
    let row = steer_tests::fixture::Row {
        desc: "its reply, in by the same link, goes back out of it (XDP_TX)".into(),
        output: xlate(dmac, smac, Side::Exact(local, 80), CLIENT.into(), 41_003),
        input: Frame {
            bytes: {
                let mut b = reply.bytes;
                b[0..6].copy_from_slice(&steer_tests::fixture::LB_MAC);
                b
            },
        },
        action,
        deltas: vec![Delta::Outcome(outcome::TX_REPLY, 1)],
    };
    n.client(row);

    // A pool: the source is one of its addresses, not the backend's facing one.
    let pooled = vip(50);
    for cport in [41_010, 41_011, 41_012, 41_013] {
        let row = n.to_backend(
            "a service with a pool leaves from one of its addresses",
            "pooled",
            "pooled-a",
            from_client(CLIENT.into(), cport, pooled, syn(), &[]),
            true,
            None,
        );
        n.client(row);
    }
    let k = key(CLIENT.into(), 41_010, pooled, 80, TCP);
    let f = n.flow(&k);
    let src: IpAddr = POOL[f.nat_addr as usize].into();
    let row = n.to_client(
        "the reply to a pool address comes back",
        n.backend_seg(
            "pooled-a",
            src,
            u16::from_be(f.nat_port_be),
            syn_ack(1001),
            &[],
        ),
        (pooled, 80),
        (CLIENT.into(), 41_010),
    );
    n.backend(row);
}

fn a_missing_neighbour_is_asked_for_and_the_retransmission_goes_through(n: &mut Nat) {
    let lost = vip(70);
    let mut notes = n.notes();
    let mut sent = move || {
        let mut v = Vec::new();
        while let Some(item) = notes.next() {
            v.push(item.to_vec());
        }
        v
    };
    sent();
    n.client(dropped(
        "a SYN to a backend with no neighbour entry is dropped",
        from_client(CLIENT.into(), 42_000, lost, syn(), &[]),
        outcome::DROP_NO_NEIGH,
        vec![],
    ));
    let wants = n.bal().datapath().neigh_wants();
    let want = (0..NEIGH_SLOTS as usize)
        .filter_map(|i| wants.get(i))
        .find(|w| w.seq != 0 && w.addr[..4] == NO_NEIGH.octets())
        .expect("a neighbour want for the backend");
    assert_eq!(
        (want.ifindex, want.family),
        (n.lab.be, FAMILY_V4 as u32),
        "wanted on the backends' interface"
    );
    // The daemon, asleep until told, is told once: the slot's next hop is new.
    let slot = (0..NEIGH_SLOTS)
        .find(|i| wants.get(*i as usize) == Some(want))
        .expect("the want's slot");
    let mut told = note::NEIGH.to_ne_bytes().to_vec();
    told.extend_from_slice(&slot.to_ne_bytes());
    assert_eq!(sent(), vec![told], "notes after the first SYN");
    n.client(dropped(
        "another SYN to it before it is resolved is dropped too, without telling again",
        from_client(CLIENT.into(), 42_002, lost, syn(), &[]),
        outcome::DROP_NO_NEIGH,
        vec![],
    ));
    assert_eq!(sent(), Vec::<Vec<u8>>::new(), "notes after the second SYN");
    let (_, port) = n.nat_of(&key(CLIENT.into(), 42_000, lost, 80, TCP));
    n.lab.add_neighbour(NO_NEIGH.into(), mac4(50));
    let row = n.to_backend(
        "once resolved, the client's retransmitted SYN goes through on the same source",
        "lost",
        "lost-a",
        from_client(CLIENT.into(), 42_000, lost, syn(), &[]),
        false,
        Some(port),
    );
    n.client(row);
    n.client(dropped(
        "a backend behind a blackhole route is dropped (no route)",
        from_client(CLIENT.into(), 42_001, vip(71), syn(), &[]),
        outcome::DROP_NO_ROUTE,
        vec![],
    ));
}

fn udp_both_ways(n: &mut Nat) {
    let vip: IpAddr = VIP.into();
    let c: IpAddr = CLIENT.into();
    let be = n.choice("dns", c, 43_000);
    let row = n.to_backend(
        "a UDP datagram leaves for the backend's address and port",
        "dns",
        &be,
        udp4(CLIENT, 43_000, VIP, 53, b"query"),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(c, 43_000, vip, 53, UDP));
    let row = n.to_client(
        "the backend's answer comes back from the VIP",
        n.backend_udp(&be, SNAT.into(), port, b"answer"),
        (vip, 53),
        (c, 43_000),
    );
    n.backend(row);

    // IPv4 UDP without a checksum (0) keeps none, both ways.
    let mut f = udp4(CLIENT, 43_000, VIP, 53, b"no checksum");
    f.bytes[40..42].copy_from_slice(&[0, 0]);
    let row = n.to_backend(
        "an IPv4 datagram without a checksum leaves without one",
        "dns",
        &be,
        f,
        false,
        Some(port),
    );
    n.client(row);
    let mut f = n.backend_udp(&be, SNAT.into(), port, b"none either");
    f.bytes[40..42].copy_from_slice(&[0, 0]);
    let row = n.to_client(
        "…and the answer without one comes back without one",
        f,
        (vip, 53),
        (c, 43_000),
    );
    n.backend(row);
}

fn ipv6_tcp_and_udp_both_ways(n: &mut Nat) {
    let vip: IpAddr = VIP6.into();
    let c: IpAddr = CLIENT6.into();
    let p = n.port_to("web6", c, "web6-b", 44_000);
    let row = n.to_backend(
        "an IPv6 SYN leaves for the backend, from the LB's facing IPv6 address",
        "web6",
        "web6-b",
        tcp6(CLIENT6, p, VIP6, 80).syn().frame(),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(c, p, vip, 80, TCP));
    let row = n.to_client(
        "its SYN-ACK comes back from the VIP",
        n.backend_seg("web6-b", SNAT6.into(), port, syn_ack(1001), &[]),
        (vip, 80),
        (c, p),
    );
    n.backend(row);
    let row = n.to_backend(
        "the ACK with data keeps the source",
        "web6",
        "web6-b",
        tcp6(CLIENT6, p, VIP6, 80).ack(1).data(b"GET /").frame(),
        false,
        Some(port),
    );
    n.client(row);
    let row = n.to_backend(
        "an IPv6 datagram leaves for the backend",
        "dns6",
        "dns6-a",
        udp6(CLIENT6, 44_001, VIP6, 53, b"query"),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(c, 44_001, vip, 53, UDP));
    let row = n.to_client(
        "its answer comes back",
        n.backend_udp("dns6-a", SNAT6.into(), port, b"answer!"),
        (vip, 53),
        (c, 44_001),
    );
    n.backend(row);
}
