//! The two connection tables (rules 1, 2, 5): a connection attempt lives in the transient
//! table until its handshake completes, then in the established one until it ends, then in the
//! transient one again for its last packets — so a SYN flood or a churn of short connections
//! never evicts an established flow.

use std::net::Ipv4Addr;

use steer_common::{event, flow_flags};
use steer_ctl::AdminState;
use steer_tests::fixture::{run_frame, tcp4, Delta, XDP_TX};

use crate::common::{establish, flow_of, fwd, port_to, table, tcp_key, CLIENT, VIP};

#[test]
fn an_attempt_is_transient_until_its_handshake_and_again_once_it_ends() {
    let Some(mut t) =
        table("tables::an_attempt_is_transient_until_its_handshake_and_again_once_it_ends")
    else {
        return;
    };
    let p = port_to(&t.bal, "web-a", 48_000);
    let k = tcp_key(p);
    let row = fwd(
        &t.bal,
        "a SYN is pinned in the transient table",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    assert!(!t.bal.datapath().is_established(&k), "half-open: transient");
    let row = fwd(
        &t.bal,
        "the handshake's ACK moves it to the established table",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
    assert!(t.bal.datapath().is_established(&k), "established");
    let f = t.bal.datapath().flow(&k).unwrap().unwrap();
    assert_eq!(f.flags & flow_flags::SYN_ONLY, 0);
    let mut row = fwd(
        &t.bal,
        "its FIN ends it: back to the transient table",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).fin().ack(1).frame(),
        false,
    );
    row.deltas.push(Delta::Backend(
        "web-a".into(),
        steer_tests::fixture::Field::EndedFlows,
        1,
    ));
    t.check(row);
    assert!(!t.bal.datapath().is_established(&k), "ended: transient");
    assert_eq!(flow_of(&t.bal, &k).0, "web-a");
    let row = fwd(
        &t.bal,
        "its last ACK still reaches its backend",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).ack(2).frame(),
        false,
    );
    t.check(row);
    // A mid-connection packet nobody knows (LB restarted, another LB host, an evicted entry).
    let q = port_to(&t.bal, "web-b", 49_000);
    let mut row = fwd(
        &t.bal,
        "a mid-connection packet with no entry takes the Maglev choice, counted as a miss",
        "web",
        "web-b",
        tcp4(CLIENT, q, VIP, 80).ack(7).frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::FLOW_MISS, 1));
    t.check(row);
    assert!(
        !t.bal.datapath().is_established(&tcp_key(q)),
        "a flow met mid-way starts transient: a flood of spoofed ACKs evicts nothing"
    );
    let row = fwd(
        &t.bal,
        "its next packet makes it established",
        "web",
        "web-b",
        tcp4(CLIENT, q, VIP, 80).ack(8).frame(),
        false,
    );
    t.check(row);
    assert!(t.bal.datapath().is_established(&tcp_key(q)));
    t.finish();
}

/// A tiny xorshift: the flood's spoofed sources, the same every run.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

#[test]
fn a_syn_flood_of_ten_times_the_table_evicts_no_established_flow() {
    let Some(mut t) =
        table("tables::a_syn_flood_of_ten_times_the_table_evicts_no_established_flow")
    else {
        return;
    };
    // Established flows to web-c, then web-c drained: their entries are all that keeps them
    // on web-c (Maglev would send them elsewhere now).
    let ports: Vec<u16> = (20_000..40_000u16)
        .filter(|p| crate::common::maglev_choice(&t.bal, "web", &tcp_key(*p)) == "web-c")
        .take(64)
        .collect();
    for &p in &ports {
        establish(&mut t, "web-c", p);
    }
    t.bal.set_admin("web-c", AdminState::Drain).unwrap();
    // 10 × max_flows (4,096) spoofed SYNs from random sources and ports.
    let flood = 40_960;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let before = t.bal.datapath().outcomes().unwrap();
    for _ in 0..flood {
        let r = next(&mut seed);
        let src = Ipv4Addr::from((r >> 32) as u32 | 0x0100_0000);
        let frame = tcp4(src, (r & 0xffff) as u16 | 1024, VIP, 80).syn().frame();
        let out = run_frame(&mut t.bal, &frame.bytes);
        assert_eq!(
            out.action, XDP_TX,
            "a flood SYN is forwarded (to an eligible backend)"
        );
    }
    let after = t.bal.datapath().outcomes().unwrap();
    let forwarded = after[steer_common::outcome::TX_FORWARD as usize]
        - before[steer_common::outcome::TX_FORWARD as usize];
    println!("flood: {flood} spoofed SYNs, {forwarded} forwarded");
    for &p in &ports {
        assert_eq!(
            flow_of(&t.bal, &tcp_key(p)).0,
            "web-c",
            "an established flow of the drained backend survived the flood"
        );
        let row = fwd(
            &t.bal,
            "after the flood, an established flow of a drained backend still reaches it",
            "web",
            "web-c",
            tcp4(CLIENT, p, VIP, 80).ack(9).frame(),
            false,
        );
        t.check(row);
    }
    t.finish();
}
