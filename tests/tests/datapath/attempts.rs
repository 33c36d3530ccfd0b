//! DSR connection attempts (rules 2, 4, 5) live in their own direct-mapped array, from the SYN
//! to the handshake's ACK: counted as active flows meanwhile, ended by the client's RST, reset
//! when their backend is rejected, and — when a colliding SYN takes their slot — left to the
//! Maglev choice their SYN took.

use std::collections::HashMap;

use steer_common::{event, flow_flags, hash::cache_hash, ATTEMPTS_LOG2};
use steer_ctl::AdminState;
use steer_tests::fixture::{tcp4, Delta, Field};

use crate::common::{
    flow_of, fwd, maglev_choice, port_to, rst_frame, rst_row, table, tcp_key, CLIENT, VIP,
};

#[test]
fn an_attempt_is_an_active_flow_of_its_backend_until_its_handshake_completes() {
    let Some(mut t) = table(
        "attempts::an_attempt_is_an_active_flow_of_its_backend_until_its_handshake_completes",
    ) else {
        return;
    };
    let p = port_to(&t.bal, "web-b", 41_000);
    assert_eq!(t.bal.active_flows().unwrap().get("web-b").copied(), Some(0));
    let row = fwd(
        &t.bal,
        "a SYN: a connection attempt",
        "web",
        "web-b",
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    let (be, flags) = flow_of(&t.bal, &tcp_key(p));
    assert_eq!(be, "web-b");
    assert_ne!(flags & flow_flags::SYN_ONLY, 0, "only SYNs seen");
    assert!(!t.bal.datapath().is_established(&tcp_key(p)));
    assert_eq!(
        t.bal.active_flows().unwrap()["web-b"],
        1,
        "a drain waits for an attempt in flight"
    );
    let row = fwd(
        &t.bal,
        "its handshake's ACK",
        "web",
        "web-b",
        tcp4(CLIENT, p, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
    assert!(t.bal.datapath().is_established(&tcp_key(p)));
    assert_eq!(flow_of(&t.bal, &tcp_key(p)).1 & flow_flags::SYN_ONLY, 0);
    assert_eq!(
        t.bal.active_flows().unwrap()["web-b"],
        1,
        "counted once, in the established table, not also as an attempt"
    );
    t.finish();
}

#[test]
fn a_client_rst_ends_an_attempt_and_its_last_packets_follow_it() {
    let Some(mut t) =
        table("attempts::a_client_rst_ends_an_attempt_and_its_last_packets_follow_it")
    else {
        return;
    };
    let p = port_to(&t.bal, "web-a", 42_000);
    let row = fwd(
        &t.bal,
        "set-up: SYN",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    let mut row = fwd(
        &t.bal,
        "the client gives up: its RST goes to the attempt's backend, the flow ends",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).rst().frame(),
        false,
    );
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 1));
    t.check(row);
    assert_eq!(t.bal.active_flows().unwrap()["web-a"], 0, "ended");
    t.bal.set_admin("web-a", AdminState::Drain).unwrap();
    assert_ne!(maglev_choice(&t.bal, "web", &tcp_key(p)), "web-a");
    let mut row = fwd(
        &t.bal,
        "a late packet of it still reaches web-a (drained since), not counted again",
        "web",
        "web-a",
        tcp4(CLIENT, p, VIP, 80).rst().frame(),
        false,
    );
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 0));
    t.check(row);
    let fresh = maglev_choice(&t.bal, "web", &tcp_key(p));
    let mut row = fwd(
        &t.bal,
        "a new SYN on its 5-tuple is a new connection: no stale flow to count",
        "web",
        &fresh,
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::STALE_SYN, 0));
    t.check(row);
    t.finish();
}

#[test]
fn an_attempts_ack_is_reset_when_its_backend_was_rejected() {
    let Some(mut t) = table("attempts::an_attempts_ack_is_reset_when_its_backend_was_rejected")
    else {
        return;
    };
    let p = port_to(&t.bal, "web-c", 43_000);
    let row = fwd(
        &t.bal,
        "set-up: SYN",
        "web",
        "web-c",
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    t.check(rst_row(
        "the handshake's ACK after reject is answered with a RST (rule 4)",
        tcp4(CLIENT, p, VIP, 80).ack(555).frame(),
        rst_frame(VIP.into(), CLIENT.into(), p, 555, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::Packets, 0),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
            Delta::Service("web".into(), Field::RstSent, 1),
        ],
    ));
    t.check(rst_row(
        "…and so is the next one, without counting the end twice",
        tcp4(CLIENT, p, VIP, 80).ack(600).frame(),
        rst_frame(VIP.into(), CLIENT.into(), p, 600, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::EndedFlows, 0),
        ],
    ));
    t.finish();
}

/// Two client ports of `web` flows whose attempts share a slot.
fn colliding_ports() -> (u16, u16) {
    let mut seen = HashMap::new();
    for p in 20_000..65_000u16 {
        let slot = cache_hash(&tcp_key(p)) >> (32 - ATTEMPTS_LOG2);
        if let Some(q) = seen.insert(slot, p) {
            return (q, p);
        }
    }
    panic!("no two ports share an attempt slot");
}

#[test]
fn an_attempt_displaced_by_a_colliding_syn_takes_the_maglev_choice_its_syn_took() {
    let Some(mut t) = table(
        "attempts::an_attempt_displaced_by_a_colliding_syn_takes_the_maglev_choice_its_syn_took",
    ) else {
        return;
    };
    let (p, q) = colliding_ports();
    let (bp, bq) = (
        maglev_choice(&t.bal, "web", &tcp_key(p)),
        maglev_choice(&t.bal, "web", &tcp_key(q)),
    );
    let row = fwd(
        &t.bal,
        "a SYN",
        "web",
        &bp,
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    let mut row = fwd(
        &t.bal,
        "another 5-tuple's SYN, in the same slot: it takes the slot (an eviction, counted)",
        "web",
        &bq,
        tcp4(CLIENT, q, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::ATTEMPT_EVICTED, 1));
    t.check(row);
    assert_eq!(flow_of(&t.bal, &tcp_key(q)).0, bq);
    assert!(t.bal.datapath().flow(&tcp_key(p)).unwrap().is_none());
    let mut row = fwd(
        &t.bal,
        "the first one's ACK finds no entry: the Maglev choice, its SYN's (pool unchanged)",
        "web",
        &bp,
        tcp4(CLIENT, p, VIP, 80).ack(1).frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::FLOW_MISS, 1));
    t.check(row);
    let row = fwd(
        &t.bal,
        "the second one's ACK completes its handshake",
        "web",
        &bq,
        tcp4(CLIENT, q, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
    assert!(t.bal.datapath().is_established(&tcp_key(q)));
    t.finish();
}
