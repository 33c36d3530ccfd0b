//! The established table's presence filter (`steer_common::presence`): a SYN skips the
//! established table only when its 5-tuple certainly is not there. Every fixture of this
//! binary runs with the filter valid (`common::setup` runs a round, as a daemon's first scan
//! does); these rows drive the rounds themselves: a missed mark or a round that ends early
//! would let a SYN on a stale established flow pass uncounted (rule 5).

use steer_common::{event, FlowKey};
use steer_ctl::datapath::{DatapathError, FlowReader};
use steer_tests::fixture::{tcp4, Delta, Table};

use crate::common::{establish, fwd, maglev_choice, port_to, table, tcp_key, CLIENT, VIP};

/// A SYN on the established flow of CLIENT:`p` (to `be`, still eligible): a new connection,
/// the stale flow counted (rule 5) — which happens only if the SYN looked the table up.
fn stale_syn_is_seen(t: &mut Table, desc: &str, be: &str, p: u16) {
    let mut row = fwd(
        &t.bal,
        desc,
        "web",
        be,
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::STALE_SYN, 1));
    t.check(row);
}

fn reader(t: &Table) -> FlowReader {
    t.bal.datapath().flow_reader().expect("a flow reader")
}

fn round(r: &FlowReader) {
    r.presence_round().expect("a round of the presence filter");
}

#[test]
fn flows_stay_visible_to_syns_through_rounds_and_their_wrap() {
    let Some(mut t) = table("presence::flows_stay_visible_to_syns_through_rounds_and_their_wrap")
    else {
        return;
    };
    let r = reader(&t);
    assert!(r.presence().rounds().2, "set-up made the filter valid");
    let p = port_to(&t.bal, "web-a", 41_000);
    establish(&mut t, "web-a", p);
    assert!(r.presence().may_hold(&tcp_key(p)));
    // 300 rounds: the one-byte round numbers wrap past 255 and 0; the flow is marked anew by
    // every round's scan and never falls out of the window.
    for _ in 0..300 {
        round(&r);
        assert!(
            r.presence().may_hold(&tcp_key(p)),
            "after round {:?}",
            r.presence().rounds()
        );
    }
    stale_syn_is_seen(
        &mut t,
        "a SYN on an established flow after 300 rounds",
        "web-a",
        p,
    );
    t.finish();
}

#[test]
fn a_flow_established_while_a_round_scans_is_seen_though_the_scan_missed_it() {
    let Some(mut t) =
        table("presence::a_flow_established_while_a_round_scans_is_seen_though_the_scan_missed_it")
    else {
        return;
    };
    let r = reader(&t);
    let old = port_to(&t.bal, "web-a", 41_500);
    establish(&mut t, "web-a", old);
    // Marked by a round of its own: its byte is that round's, the next round's is newer.
    round(&r);
    let p = port_to(&t.bal, "web-b", 42_000);
    // The scan marks nothing (as if the flow's bucket had been read before its insert): the
    // datapath's own mark, taken with the round's new number, must carry it. And while the
    // round runs, a flow the scan has not reached yet (marked in an earlier round) is seen.
    r.presence()
        .round(|_mark| {
            establish(&mut t, "web-b", p);
            stale_syn_is_seen(
                &mut t,
                "a SYN on a flow the scan has not reached",
                "web-a",
                old,
            );
            Ok(())
        })
        .unwrap();
    round(&r);
    stale_syn_is_seen(
        &mut t,
        "a SYN on a flow established during a round",
        "web-b",
        p,
    );
    t.finish();
}

#[test]
fn a_round_that_fails_leaves_every_flow_visible() {
    let Some(mut t) = table("presence::a_round_that_fails_leaves_every_flow_visible") else {
        return;
    };
    let r = reader(&t);
    let p = port_to(&t.bal, "web-c", 43_000);
    establish(&mut t, "web-c", p);
    let before = r.presence().rounds();
    // A scan that fails half-way (the table unreadable): the round is not done, the window
    // stays as it was (the next round opened, not closed), and the flow stays in it.
    let failed = r.presence().round(|_mark| -> Result<(), DatapathError> {
        Err(DatapathError::FlowIter(std::io::Error::from_raw_os_error(
            libc::EIO,
        )))
    });
    assert!(failed.is_err());
    let after = r.presence().rounds();
    assert_eq!(after, before, "a failed round changes nothing");
    assert_ne!(
        after.0, after.1,
        "the round it was stays open, to run again"
    );
    stale_syn_is_seen(&mut t, "a SYN on a flow after a failed round", "web-c", p);
    // The next flow, established after the failed round, and both after a good one.
    let q = port_to(&t.bal, "web-c", 43_500);
    establish(&mut t, "web-c", q);
    round(&r);
    stale_syn_is_seen(
        &mut t,
        "a SYN on a flow after the next good round",
        "web-c",
        q,
    );
    t.finish();
}

#[test]
fn flows_that_left_the_table_leave_the_window_and_new_tuples_skip_the_lookup() {
    let Some(mut t) = table(
        "presence::flows_that_left_the_table_leave_the_window_and_new_tuples_skip_the_lookup",
    ) else {
        return;
    };
    let r = reader(&t);
    let p = port_to(&t.bal, "web-a", 44_000);
    establish(&mut t, "web-a", p);
    let gone: FlowKey = tcp_key(p);
    // Evicted (as the LRU would): still in the window until the round after the one open when
    // it was inserted is done (its byte is that open round's number).
    t.bal.datapath_mut().remove_flow(&gone).unwrap();
    assert!(
        r.presence().may_hold(&gone),
        "until a round, a removed flow may be there"
    );
    round(&r);
    assert!(
        r.presence().may_hold(&gone),
        "the round it was marked for is done: still in the window"
    );
    round(&r);
    assert!(
        !r.presence().may_hold(&gone),
        "a round later, its slot is outside the window: SYNs skip the table"
    );
    // Nearly every 5-tuple never seen is outside the window: the set-up's flows are few.
    let unseen = (50_000..51_000)
        .filter(|&port| !r.presence().may_hold(&tcp_key(port)))
        .count();
    assert!(unseen >= 990, "{unseen} of 1,000 new tuples ruled out");
    // And a new connection on the evicted flow's tuple is an ordinary new flow.
    let be = maglev_choice(&t.bal, "web", &gone);
    let row = fwd(
        &t.bal,
        "a SYN on the tuple of a flow evicted before a round: a new flow, nothing stale",
        "web",
        &be,
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.finish();
}
