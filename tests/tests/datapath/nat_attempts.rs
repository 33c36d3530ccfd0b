//! NAT connection attempts (rule 5) live in the attempts array, one slot per 5-tuple's hash,
//! as DSR's do. A NAT attempt carries its source port, which no Maglev choice can find again:
//! once its backend has answered (the client's ACK is on its way), a SYN whose slot it holds
//! goes to the transient table instead of replacing it; before that, it may be replaced, and
//! its SYN-ACK, should it come, writes its flow again from its reverse half. Either way every
//! handshake completes with its own source.

use std::{collections::HashMap, net::IpAddr};

use steer_common::{event, flow_flags, hash::cache_hash, ATTEMPTS_LOG2};
use steer_tests::fixture::Delta;

use crate::nat_common::*;

#[test]
fn attempts() {
    run_cases(
        "nat_attempts",
        &[
            (
                "an_answered_attempt_keeps_its_slot",
                an_answered_attempt_keeps_its_slot,
            ),
            (
                "an_unanswered_attempt_may_be_replaced",
                an_unanswered_attempt_may_be_replaced,
            ),
        ],
    );
}

/// Two client ports whose flows from `client` to `vip`:80 share an attempt slot.
fn colliding_ports(client: IpAddr, vip: IpAddr, from: u16) -> (u16, u16) {
    let mut seen = HashMap::new();
    for p in from..65_000u16 {
        let slot = cache_hash(&key(client, p, vip, 80, TCP)) >> (32 - ATTEMPTS_LOG2);
        if let Some(q) = seen.insert(slot, p) {
            return (q, p);
        }
    }
    panic!("no two ports share an attempt slot");
}

/// A SYN of `svc`'s (one backend, `be`) from `c`:`port` to `v`, translated; `deltas` more.
fn syn(n: &mut Nat, desc: &str, (c, port, v): (IpAddr, u16, IpAddr), deltas: Vec<Delta>) {
    let mut row = n.to_backend(
        desc,
        "solo",
        "solo-a",
        from_client(c, port, v, super::nat_common::syn(), &[]),
        true,
        None,
    );
    row.deltas.extend(deltas);
    n.client(row);
}

/// The backend's SYN-ACK to `c`:`cport` (LB source port `src`), translated.
fn syn_ack_to(n: &mut Nat, (c, cport, v): (IpAddr, u16, IpAddr), src: u16, deltas: Vec<Delta>) {
    let mut row = n.to_client(
        "the backend's SYN-ACK goes to its client",
        n.backend_seg("solo-a", SNAT.into(), src, syn_ack(1001), &[]),
        (v, 80),
        (c, cport),
    );
    row.deltas.extend(deltas);
    n.backend(row);
}

/// The client's ACK completes the handshake, from source port `src`.
fn ack_from(n: &mut Nat, (c, cport, v): (IpAddr, u16, IpAddr), src: u16) {
    let row = n.to_backend(
        "the client's ACK completes its handshake, from its own source",
        "solo",
        "solo-a",
        from_client(c, cport, v, ack(1), &[]),
        false,
        Some(src),
    );
    n.client(row);
    assert!(n
        .bal()
        .datapath()
        .is_established(&key(c, cport, v, 80, TCP)));
}

fn an_answered_attempt_keeps_its_slot(n: &mut Nat) {
    let (v, c): (IpAddr, IpAddr) = (vip(81), CLIENT.into());
    let (p, q) = colliding_ports(c, v, 30_000);
    let (kp, kq) = (key(c, p, v, 80, TCP), key(c, q, v, 80, TCP));
    syn(n, "a SYN: its attempt takes its slot", (c, p, v), vec![]);
    assert!(n.bal().datapath().attempt(&kp).is_some(), "in the array");
    let (_, sp) = n.nat_of(&kp);
    syn_ack_to(n, (c, p, v), sp, vec![]);
    syn(
        n,
        "another 5-tuple's SYN, in the same slot, which an answered attempt holds: pinned in the transient table",
        (c, q, v),
        vec![],
    );
    let dp = n.bal().datapath();
    assert!(
        dp.attempt(&kp).is_some(),
        "the answered attempt keeps its slot"
    );
    assert!(dp.attempt(&kq).is_none(), "the second is not in the array");
    assert_ne!(
        n.flow(&kq).flags & flow_flags::SYN_ONLY,
        0,
        "an attempt all the same"
    );
    let (_, sq) = n.nat_of(&kq);
    assert_ne!(sp, sq, "each has a source port of its own");
    syn_ack_to(n, (c, q, v), sq, vec![]);
    ack_from(n, (c, p, v), sp);
    ack_from(n, (c, q, v), sq);
    assert!(
        n.bal().datapath().attempt(&kp).is_none(),
        "the slot is left"
    );
}

fn an_unanswered_attempt_may_be_replaced(n: &mut Nat) {
    let (v, c): (IpAddr, IpAddr) = (vip(81), CLIENT2.into());
    let (p, q) = colliding_ports(c, v, 40_000);
    let (kp, kq) = (key(c, p, v, 80, TCP), key(c, q, v, 80, TCP));
    syn(n, "a SYN: its attempt takes its slot", (c, p, v), vec![]);
    let (_, sp) = n.nat_of(&kp);
    syn(
        n,
        "another 5-tuple's SYN in the same slot, not answered yet: replaced (counted)",
        (c, q, v),
        vec![Delta::Outcome(event::ATTEMPT_EVICTED, 1)],
    );
    let dp = n.bal().datapath();
    assert!(dp.attempt(&kq).is_some(), "the newer attempt has the slot");
    assert!(
        dp.flow(&kp).unwrap().is_none(),
        "the older one has no entry"
    );
    let (_, sq) = n.nat_of(&kq);
    syn_ack_to(n, (c, p, v), sp, vec![Delta::Outcome(event::NAT_HEALED, 1)]);
    syn_ack_to(n, (c, q, v), sq, vec![]);
    ack_from(n, (c, p, v), sp);
    ack_from(n, (c, q, v), sq);
}
