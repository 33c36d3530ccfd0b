//! Refused-connection recovery and passive health (issue 10, items 5 and 6): a backend's RST
//! answering a SYN is hidden from the client while another backend can take the attempt, and
//! the client's retransmitted SYN goes there; a SYN left unanswered past `syn_timeout` is a
//! failure too; `error_limit` consecutive failures keep a backend from new flows until its
//! failures are reset; a SYN-ACK starts the count over. With observe and recover off, none of
//! it happens.

use std::{net::IpAddr, time::Duration};

use steer_common::{event, flow_flags, note, outcome, NOTES_BYTES};
use steer_tests::fixture::{run_frame_on, Delta, Field, XDP_PASS, XDP_REDIRECT, XDP_TX};

use crate::nat_common::*;

#[test]
fn recovery() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes.
    run_cases(
        "nat_recovery",
        &[
            (
                "a_refused_attempt_is_hidden_and_retried_elsewhere",
                a_refused_attempt_is_hidden_and_retried_elsewhere,
            ),
            (
                "unanswered_syns_and_the_error_limit",
                unanswered_syns_and_the_error_limit,
            ),
            (
                "with_observe_and_recover_off_nothing_is_hidden_or_counted",
                with_observe_and_recover_off_nothing_is_hidden_or_counted,
            ),
            (
                "a_note_the_full_ring_cannot_take_is_counted",
                a_note_the_full_ring_cannot_take_is_counted,
            ),
        ],
    );
}

fn a_refused_attempt_is_hidden_and_retried_elsewhere(n: &mut Nat) {
    let (web, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-a", 52_000);
    let row = n.to_backend(
        "set-up: a SYN",
        "web",
        "web-a",
        from_client(c, p, web, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let k = key(c, p, web, 80, TCP);
    let (_, port) = n.nat_of(&k);
    n.backend(dropped(
        "the backend answers the SYN with a RST: hidden from the client, counted",
        n.backend_seg("web-a", SNAT.into(), port, rst_ack(1001), &[]),
        outcome::DROP_REFUSED,
        vec![
            Delta::Outcome(event::REFUSED, 1),
            Delta::Backend("web-a".into(), Field::Refused, 1),
        ],
    ));
    assert_eq!(n.fails("web-a"), 1, "one failure of web-a");
    assert_ne!(
        n.flow(&k).flags & flow_flags::REFUSED,
        0,
        "the attempt is marked"
    );
    let mut row = n.to_one_of(
        "the client's retransmitted SYN goes to another backend",
        "web",
        &["web-b", "web-c"],
        from_client(c, p, web, syn(), &[]),
        true,
    );
    row.deltas.push(Delta::Outcome(event::RECOVERED, 1));
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::Packets, 0));
    n.client(row);
    let (be, new_port) = n.nat_of(&k);
    assert_ne!(be, "web-a");
    assert!(
        n.reverse(&n.rev_key("web-a", SNAT.into(), port, TCP))
            .is_none(),
        "the refused attempt's reverse entry is released"
    );
    let row = n.to_client(
        "the other backend's SYN-ACK reaches the client",
        n.backend_seg(&be, SNAT.into(), new_port, syn_ack(1001), &[]),
        (web, 80),
        (c, p),
    );
    n.backend(row);
    let row = n.to_backend(
        "the handshake completes there",
        "web",
        &be,
        from_client(c, p, web, ack(1), &[]),
        false,
        Some(new_port),
    );
    n.client(row);

    // A SYN-ACK from web-a starts its count over.
    let p2 = n.port_to("web", c, "web-a", p + 1);
    n.establish("web", "web-a", c, p2);
    assert_eq!(
        n.fails("web-a"),
        0,
        "a SYN-ACK resets the consecutive failures"
    );

    // With no other backend, the refusal is the client's to see.
    let solo = vip(81);
    let row = n.to_backend(
        "set-up: a SYN to a service of one backend",
        "solo",
        "solo-a",
        from_client(c, 52_500, solo, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, sport) = n.nat_of(&key(c, 52_500, solo, 80, TCP));
    let mut row = n.to_client(
        "with no other backend eligible, the backend's RST reaches the client, translated",
        n.backend_seg("solo-a", SNAT.into(), sport, rst_ack(1001), &[]),
        (solo, 80),
        (c, 52_500),
    );
    row.deltas.push(Delta::Outcome(event::REFUSED, 1));
    row.deltas.push(Delta::Outcome(outcome::DROP_REFUSED, 0));
    row.deltas
        .push(Delta::Backend("solo-a".into(), Field::Refused, 1));
    n.backend(row);
    assert_eq!(n.fails("solo-a"), 1, "still a failure of the backend");
}

fn unanswered_syns_and_the_error_limit(n: &mut Nat) {
    let quick = vip(82);
    let c: IpAddr = CLIENT.into();
    let p = n.port_to("quick", c, "quick-a", 53_000);
    let row = n.to_backend(
        "set-up: a SYN (syn_timeout 50 ms)",
        "quick",
        "quick-a",
        from_client(c, p, quick, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let k = key(c, p, quick, 80, TCP);
    let (_, port) = n.nat_of(&k);
    let mut row = n.to_backend(
        "a retransmitted SYN within syn_timeout stays on its backend and source",
        "quick",
        "quick-a",
        from_client(c, p, quick, syn(), &[]),
        false,
        Some(port),
    );
    row.deltas.push(Delta::Outcome(event::SYN_TIMEOUT, 0));
    n.client(row);
    std::thread::sleep(Duration::from_millis(120));
    let mut row = n.to_one_of(
        "a retransmitted SYN after syn_timeout with no SYN-ACK seen: a failure, and goes elsewhere",
        "quick",
        &["quick-b", "quick-c"],
        from_client(c, p, quick, syn(), &[]),
        true,
    );
    row.deltas.extend([
        Delta::Outcome(event::SYN_TIMEOUT, 1),
        Delta::Outcome(event::RECOVERED, 1),
        Delta::Backend("quick-a".into(), Field::SynTimeouts, 1),
        Delta::Backend("quick-a".into(), Field::Packets, 0),
    ]);
    n.client(row);
    assert_eq!(n.fails("quick-a"), 1);
    assert_ne!(n.nat_of(&k).0, "quick-a");

    // error_limit 2: a pending attempt on quick-b, then two refusals take quick-b out.
    let pending = n.port_to("quick", c, "quick-b", 54_000);
    let row = n.to_backend(
        "set-up: an attempt on quick-b, not answered yet",
        "quick",
        "quick-b",
        from_client(c, pending, quick, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let mut notes = n.notes();
    let mut q = pending;
    for i in 1..=2u64 {
        q = n.port_to("quick", c, "quick-b", q + 1);
        let row = n.to_backend(
            "set-up: a SYN to quick-b",
            "quick",
            "quick-b",
            from_client(c, q, quick, syn(), &[]),
            true,
            None,
        );
        n.client(row);
        let (_, qport) = n.nat_of(&key(c, q, quick, 80, TCP));
        n.backend(dropped(
            &format!("refusal {i} of quick-b (error_limit 2)"),
            n.backend_seg("quick-b", SNAT.into(), qport, rst_ack(1001), &[]),
            outcome::DROP_REFUSED,
            vec![Delta::Outcome(event::PASSIVE_DOWN, (i == 2) as u64)],
        ));
        assert_eq!(n.fails("quick-b"), i);
        // The refusal that reaches the limit, and only it, tells the daemon (which sleeps
        // until then).
        let mut sent = Vec::new();
        while let Some(item) = notes.next() {
            sent.push(item.to_vec());
        }
        let id = n.bal().backend_id("quick-b").unwrap();
        let want: Vec<Vec<u8>> = if i == 2 {
            let mut b = note::PASSIVE.to_ne_bytes().to_vec();
            b.extend_from_slice(&id.to_ne_bytes());
            vec![b]
        } else {
            Vec::new()
        };
        assert_eq!(sent, want, "notes after refusal {i} of quick-b");
    }
    let fresh = n.port_to("quick", c, "quick-b", q + 1);
    let mut row = n.to_one_of(
        "at the error limit, a new SYN that Maglev gives quick-b goes elsewhere",
        "quick",
        &["quick-a", "quick-c"],
        from_client(c, fresh, quick, syn(), &[]),
        true,
    );
    row.deltas
        .push(Delta::Backend("quick-b".into(), Field::Packets, 0));
    n.client(row);
    let mut row = n.to_one_of(
        "…and the retransmitted SYN of an attempt pending on quick-b is steered again",
        "quick",
        &["quick-a", "quick-c"],
        from_client(c, pending, quick, syn(), &[]),
        true,
    );
    row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
    n.client(row);
    // The daemon's active checks bring it back: its failures are reset.
    n.bal().reset_observed("quick-b").unwrap();
    let again = n.port_to("quick", c, "quick-b", fresh + 1);
    let row = n.to_backend(
        "once its failures are reset, quick-b takes new flows again",
        "quick",
        "quick-b",
        from_client(c, again, quick, syn(), &[]),
        true,
        None,
    );
    n.client(row);
}

fn with_observe_and_recover_off_nothing_is_hidden_or_counted(n: &mut Nat) {
    let strict = vip(80);
    let c: IpAddr = CLIENT.into();
    let p = n.port_to("strict", c, "strict-a", 55_000);
    let row = n.to_backend(
        "set-up: a SYN",
        "strict",
        "strict-a",
        from_client(c, p, strict, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, port) = n.nat_of(&key(c, p, strict, 80, TCP));
    let mut row = n.to_client(
        "a refusal reaches the client though another backend is eligible",
        n.backend_seg("strict-a", SNAT.into(), port, rst_ack(1001), &[]),
        (strict, 80),
        (c, p),
    );
    row.deltas.extend([
        Delta::Outcome(event::REFUSED, 0),
        Delta::Outcome(outcome::DROP_REFUSED, 0),
        Delta::Backend("strict-a".into(), Field::Refused, 0),
    ]);
    n.backend(row);
    assert_eq!(n.fails("strict-a"), 0, "no failure counted");
    let q = n.port_to("strict", c, "strict-a", p + 1);
    let row = n.to_backend(
        "set-up: another SYN (syn_timeout 50 ms)",
        "strict",
        "strict-a",
        from_client(c, q, strict, syn(), &[]),
        true,
        None,
    );
    n.client(row);
    let (_, qport) = n.nat_of(&key(c, q, strict, 80, TCP));
    std::thread::sleep(Duration::from_millis(120));
    let mut row = n.to_backend(
        "a retransmitted SYN after syn_timeout stays on its backend and source",
        "strict",
        "strict-a",
        from_client(c, q, strict, syn(), &[]),
        false,
        Some(qport),
    );
    row.deltas.extend([
        Delta::Outcome(event::SYN_TIMEOUT, 0),
        Delta::Outcome(event::RECOVERED, 0),
        Delta::Backend("strict-a".into(), Field::SynTimeouts, 0),
    ]);
    n.client(row);
    assert_eq!(n.fails("strict-a"), 0, "no failure counted");
}

/// quick-b climbs to its error limit (2 refusals) and is reset, as the daemon's checks would
/// reset it: one note to the daemon. Returns the next client port to try.
fn climb(n: &mut Nat, from: u16) -> u16 {
    let (c, quick): (IpAddr, IpAddr) = (CLIENT.into(), vip(82));
    let mut q = from;
    for i in 1..=2u64 {
        q = n.port_to("quick", c, "quick-b", q + 1);
        let syn = from_client(c, q, quick, syn(), &[]).bytes;
        let ran = run_frame_on(&mut n.t.bal, &syn, Some(n.lab.cli));
        assert!(
            matches!(ran.action, XDP_TX | XDP_REDIRECT),
            "a SYN to quick-b is sent, not {}",
            ran.action
        );
        let (_, port) = n.nat_of(&key(c, q, quick, 80, TCP));
        let refusal = n.backend_seg("quick-b", SNAT.into(), port, rst_ack(1001), &[]);
        let ran = run_frame_on(&mut n.t.bal, &refusal.bytes, Some(n.lab.be));
        // Hidden (dropped) while Maglev's repicks find another backend for the flow, shown
        // otherwise: counted as a refusal either way.
        assert_ne!(ran.action, XDP_PASS, "quick-b's refusal {i} is seen as one");
        assert_eq!(n.fails("quick-b"), i, "quick-b's failures");
    }
    n.bal().reset_observed("quick-b").unwrap();
    q
}

/// A note the datapath cannot put in the notes ring (4 KiB: 256 notes, full while the daemon
/// does not read it) is dropped and counted (`notes_lost`): the daemon's once-a-second read of
/// the maps catches up. Nothing reads the ring here; each climb of quick-b to its error limit
/// sends one note.
fn a_note_the_full_ring_cannot_take_is_counted(n: &mut Nat) {
    let lost = |n: &Nat| n.bal().datapath().outcomes().unwrap()[event::NOTES_LOST as usize];
    let before = lost(n);
    let records = NOTES_BYTES as u64 / 16;
    let mut q = 56_000;
    for _ in 0..records + 8 {
        q = climb(n, q);
    }
    let after = lost(n);
    assert!(
        after - before >= 8,
        "{} climbs of one note each into a ring of {records}: {} counted lost",
        records + 8,
        after - before
    );
    // Still full: the next climb's note is lost too, and counted once.
    climb(n, q);
    assert_eq!(lost(n), after + 1, "the next note, lost");
}
