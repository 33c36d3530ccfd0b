//! NAT source ports (issue 10, item 3): two flows never share an (LB address, port, backend)
//! tuple; a port taken by another flow's reverse entry is skipped; a pool with no free port
//! answers a SYN with a RST and drops a UDP flow's first datagram, counted; an ended flow's
//! port is given again only `NAT_REUSE_NS` after its end.

use std::{net::IpAddr, time::Duration};

use steer_common::{event, outcome, NatRev, NAT_ADDR_BACKEND, NAT_REUSE_NS};
use steer_tests::fixture::{udp4, Delta, Field};

use crate::nat_common::*;

#[test]
fn ports() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes.
    run_cases(
        "nat_ports",
        &[
            (
                "a_port_taken_by_another_flow_is_skipped",
                a_port_taken_by_another_flow_is_skipped,
            ),
            (
                "ports_are_never_shared_and_an_exhausted_pool_answers_with_a_rst",
                ports_are_never_shared_and_an_exhausted_pool_answers_with_a_rst,
            ),
            (
                "a_single_port_pool_tcp_and_udp_and_reuse_after_the_flow_ended",
                a_single_port_pool_tcp_and_udp_and_reuse_after_the_flow_ended,
            ),
            (
                "ports_go_out_in_turn_whichever_cpu_takes_the_flow",
                ports_go_out_in_turn_whichever_cpu_takes_the_flow,
            ),
        ],
    );
}

/// The counters an exhausted pool moves for a new flow of `svc` on `be`.
fn exhausted(svc: &str, be: &str) -> Vec<Delta> {
    vec![
        Delta::Outcome(event::NAT_EXHAUSTED, 1),
        Delta::Service(svc.into(), Field::NatExhausted, 1),
        Delta::Backend(be.into(), Field::NatExhausted, 1),
        Delta::Service(svc.into(), Field::NewFlows, 0),
        Delta::Backend(be.into(), Field::Packets, 0),
    ]
}

fn ports_are_never_shared_and_an_exhausted_pool_answers_with_a_rst(n: &mut Nat) {
    let tiny = vip(60);
    let c: IpAddr = CLIENT.into();
    let mut ports = Vec::new();
    for cport in [45_000, 45_001] {
        let row = n.to_backend(
            "a SYN to a service of two source ports",
            "tiny",
            "tiny-a",
            from_client(c, cport, tiny, syn(), &[]),
            true,
            None,
        );
        n.client(row);
        ports.push(n.nat_of(&key(c, cport, tiny, 80, TCP)).1);
    }
    ports.sort();
    assert_eq!(
        ports,
        [TINY_PORTS.0, TINY_PORTS.1],
        "two flows to one backend take the range's two ports, one each"
    );
    let mut deltas = exhausted("tiny", "tiny-a");
    deltas.push(Delta::Service("tiny".into(), Field::RstSent, 1));
    n.client(rst_row(
        "a third SYN finds no free port: answered with a RST, counted",
        from_client(c, 45_002, tiny, syn(), &[]),
        deltas,
    ));
    assert!(
        n.bal()
            .datapath()
            .flow(&key(c, 45_002, tiny, 80, TCP))
            .unwrap()
            .is_none(),
        "an exhausted attempt leaves no flow behind"
    );
}

fn a_port_taken_by_another_flow_is_skipped(n: &mut Nat) {
    let tiny = vip(60);
    let c: IpAddr = CLIENT.into();
    // Another flow's reverse entry on the range's first port.
    let taken = n.rev_key("tiny-a", SNAT.into(), TINY_PORTS.0, TCP);
    let other = NatRev {
        client: key(CLIENT2.into(), 1, tiny, 80, TCP).src,
        vip: key(c, 1, tiny, 80, TCP).dst,
        client_port_be: 1234u16.to_be(),
        vip_port_be: 80u16.to_be(),
        svc: n.bal().service_id("tiny").unwrap() as u16,
        nat_addr: NAT_ADDR_BACKEND,
        backend: n.bal().backend_id("tiny-a").unwrap(),
        gen: n
            .bal()
            .datapath()
            .backend(n.bal().backend_id("tiny-a").unwrap())
            .unwrap()
            .gen,
        flags: 0,
        syn_ns: 0,
        ended_ns: 0,
        last_ns: 0,
        idle_ns: 0,
    };
    n.t.bal
        .datapath_mut()
        .put_nat_reverse(&taken, &other)
        .unwrap();
    for cport in 45_100..45_108 {
        let row = n.to_backend(
            "a new flow skips the port another flow's reverse entry holds",
            "tiny",
            "tiny-a",
            from_client(c, cport, tiny, syn(), &[]),
            true,
            Some(TINY_PORTS.1),
        );
        n.client(row);
        // Free the port again for the next try (the random start differs each time).
        let k = key(c, cport, tiny, 80, TCP);
        let mine = n.rev_key("tiny-a", SNAT.into(), TINY_PORTS.1, TCP);
        assert!(n.reverse(&mine).is_some(), "the new flow's reverse entry");
        n.t.bal.datapath_mut().remove_nat_reverse(&mine).unwrap();
        n.t.bal.datapath_mut().remove_flow(&k).unwrap();
    }
    assert_eq!(
        n.reverse(&taken),
        Some(other),
        "the other flow's reverse entry is untouched"
    );
    n.t.bal.datapath_mut().remove_nat_reverse(&taken).unwrap();
}

fn a_single_port_pool_tcp_and_udp_and_reuse_after_the_flow_ended(n: &mut Nat) {
    let one = vip(61);
    let c: IpAddr = CLIENT.into();
    let row = n.to_backend(
        "a SYN takes the range's only port",
        "one",
        "one-a",
        from_client(c, 46_000, one, syn(), &[]),
        true,
        Some(ONE_PORT),
    );
    n.client(row);
    let row = n.to_client(
        "set-up: SYN-ACK",
        n.backend_seg("one-a", SNAT.into(), ONE_PORT, syn_ack(1001), &[]),
        (one, 80),
        (c, 46_000),
    );
    n.backend(row);
    let row = n.to_backend(
        "set-up: ACK",
        "one",
        "one-a",
        from_client(c, 46_000, one, ack(1), &[]),
        false,
        Some(ONE_PORT),
    );
    n.client(row);
    let mut deltas = exhausted("one", "one-a");
    deltas.push(Delta::Service("one".into(), Field::RstSent, 1));
    n.client(rst_row(
        "a second SYN finds the only port taken: a RST",
        from_client(c, 46_001, one, syn(), &[]),
        deltas,
    ));
    let row = n.to_backend(
        "the client's FIN: a half-close, the backend may go on sending",
        "one",
        "one-a",
        from_client(c, 46_000, one, fin_ack(1), &[]),
        false,
        Some(ONE_PORT),
    );
    n.client(row);
    let rk = n.rev_key("one-a", SNAT.into(), ONE_PORT, TCP);
    assert_eq!(
        n.reverse(&rk).unwrap().ended_ns,
        0,
        "a half-closed flow has not ended: its port is not free"
    );
    let row = n.to_client(
        "the backend's FIN: the flow has ended both ways",
        n.backend_seg("one-a", SNAT.into(), ONE_PORT, fin_ack(1001), &[]),
        (one, 80),
        (c, 46_000),
    );
    n.backend(row);
    assert_ne!(
        n.reverse(&rk).unwrap().ended_ns,
        0,
        "its end is recorded on the reverse entry"
    );
    let mut deltas = exhausted("one", "one-a");
    deltas.push(Delta::Service("one".into(), Field::RstSent, 1));
    n.client(rst_row(
        "right after the end, the port is not given again yet: a RST",
        from_client(c, 46_002, one, syn(), &[]),
        deltas,
    ));
    std::thread::sleep(Duration::from_nanos(NAT_REUSE_NS) + Duration::from_millis(100));
    let row = n.to_backend(
        "NAT_REUSE_NS after the end, a new flow takes the port",
        "one",
        "one-a",
        from_client(c, 46_003, one, syn(), &[]),
        true,
        Some(ONE_PORT),
    );
    n.client(row);
    assert_eq!(
        u16::from_be(n.reverse(&rk).unwrap().client_port_be),
        46_003,
        "the reverse entry is the new flow's"
    );
    let row = n.to_client(
        "the backend's answer on the port goes to the new flow's client",
        n.backend_seg("one-a", SNAT.into(), ONE_PORT, syn_ack(1001), &[]),
        (one, 80),
        (c, 46_003),
    );
    n.backend(row);
    n.client(dropped(
        "a late packet of the old flow is never delivered into the new one",
        from_client(c, 46_000, one, ack(2), &[]),
        outcome::DROP_NAT_CONFLICT,
        vec![Delta::Outcome(event::NAT_CONFLICT, 1)],
    ));

    // UDP: a datagram of a new flow that finds no port is dropped, counted.
    let row = n.to_backend(
        "a UDP flow takes the only port",
        "oneudp",
        "oneudp-a",
        udp4(
            CLIENT,
            46_100,
            std::net::Ipv4Addr::new(10, 0, 0, 61),
            53,
            b"q1",
        ),
        true,
        Some(ONE_UDP_PORT),
    );
    n.client(row);
    n.client(dropped(
        "a second UDP flow finds none: dropped, counted",
        udp4(
            CLIENT,
            46_101,
            std::net::Ipv4Addr::new(10, 0, 0, 61),
            53,
            b"q2",
        ),
        outcome::DROP_NAT_EXHAUSTED,
        exhausted("oneudp", "oneudp-a"),
    ));
}

/// One backend's ports go out from one cursor whatever CPU takes the flow: flows alternating
/// between two CPUs take consecutive ports. (With a cursor per CPU, each CPU walked from its
/// own place into the ports the other had handed out seconds before — ports the backend may
/// still hold in TIME_WAIT: connections failed at 2,000 new flows/s.)
fn ports_go_out_in_turn_whichever_cpu_takes_the_flow(n: &mut Nat) {
    let solo = vip(81);
    let c: IpAddr = CLIENT.into();
    let mut ports = Vec::new();
    for (i, cport) in [46_100u16, 46_101, 46_102, 46_103].into_iter().enumerate() {
        let _on = steer_tests::fixture::OnCpu::pin(i % 2);
        let row = n.to_backend(
            &format!("a SYN taken by CPU {}", i % 2),
            "solo",
            "solo-a",
            from_client(c, cport, solo, syn(), &[]),
            true,
            None,
        );
        n.client(row);
        ports.push(n.nat_of(&key(c, cport, solo, 80, TCP)).1);
    }
    let (lo, hi) = (20_000u16, 29_999u16);
    for w in ports.windows(2) {
        let next = if w[0] == hi { lo } else { w[0] + 1 };
        assert_eq!(w[1], next, "ports in turn across CPUs: {ports:?}");
    }
}
