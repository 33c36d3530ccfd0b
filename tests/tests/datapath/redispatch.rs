//! Rule 5: a retransmitted SYN leaves a backend that is no longer eligible (down, or rejected
//! before the handshake completed) and is steered again; the flow entry follows.

use steer_common::event;
use steer_ctl::{AdminState, Health};
use steer_tests::fixture::{tcp4, Delta};

use crate::common::{flow_of, fwd, maglev_choice, port_to, table, tcp_key, CLIENT, VIP};

#[test]
fn a_syn_whose_backend_went_down_is_steered_again() {
    let Some(mut t) = table("redispatch::a_syn_whose_backend_went_down_is_steered_again") else {
        return;
    };
    let ps = port_to(&t.bal, "web-c", 45_000);
    let row = fwd(
        &t.bal,
        "set-up: SYN to web-c",
        "web",
        "web-c",
        tcp4(CLIENT, ps, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_health("web-c", Health::Down).unwrap();
    let again = maglev_choice(&t.bal, "web", &tcp_key(ps));
    let mut row = fwd(
        &t.bal,
        "a retransmitted SYN whose backend went down is steered again",
        "web",
        &again,
        tcp4(CLIENT, ps, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
    t.check(row);
    assert_eq!(
        flow_of(&t.bal, &tcp_key(ps)).0,
        again,
        "the entry follows the redispatch"
    );
    t.finish();
}

#[test]
fn a_syn_whose_backend_was_rejected_is_steered_again() {
    let Some(mut t) = table("redispatch::a_syn_whose_backend_was_rejected_is_steered_again") else {
        return;
    };
    let pr2 = port_to(&t.bal, "web-c", 46_001);
    let row = fwd(
        &t.bal,
        "set-up: SYN never answered",
        "web",
        "web-c",
        tcp4(CLIENT, pr2, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    let again = maglev_choice(&t.bal, "web", &tcp_key(pr2));
    let mut row = fwd(
        &t.bal,
        "a retransmitted SYN of a rejected backend's flow is steered again",
        "web",
        &again,
        tcp4(CLIENT, pr2, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
    t.check(row);
    t.finish();
}

#[test]
fn a_syn_on_an_established_flows_tuple_is_a_new_connection() {
    let Some(mut t) = table("redispatch::a_syn_on_an_established_flows_tuple_is_a_new_connection")
    else {
        return;
    };
    // An established flow to web-c whose end the LB never saw (reset by the backend in DSR);
    // web-c is then drained. The client reuses the source port: its SYN is a new connection
    // and never goes to the drained backend.
    let p = port_to(&t.bal, "web-c", 47_000);
    crate::common::establish(&mut t, "web-c", p);
    t.bal.set_admin("web-c", AdminState::Drain).unwrap();
    let fresh = maglev_choice(&t.bal, "web", &tcp_key(p));
    assert_ne!(fresh, "web-c");
    let mut row = fwd(
        &t.bal,
        "a SYN on a stale established flow of a drained backend takes a fresh choice",
        "web",
        &fresh,
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::STALE_SYN, 1));
    t.check(row);
    assert_eq!(flow_of(&t.bal, &tcp_key(p)).0, fresh, "the entry follows");

    // With the backend eligible, the fresh choice is the same backend: a new connection all
    // the same (counted), pinned as a half-open attempt again.
    let q = port_to(&t.bal, "web-a", 47_500);
    crate::common::establish(&mut t, "web-a", q);
    let mut row = fwd(
        &t.bal,
        "a SYN on an established flow of an eligible backend: new connection, same choice",
        "web",
        "web-a",
        tcp4(CLIENT, q, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::STALE_SYN, 1));
    t.check(row);
    // And its retransmission is a retry of that attempt: same backend, no new flow.
    let row = fwd(
        &t.bal,
        "the retransmitted SYN of that attempt stays with web-a",
        "web",
        "web-a",
        tcp4(CLIENT, q, VIP, 80).syn().frame(),
        false,
    );
    t.check(row);
    t.finish();
}

#[test]
fn a_syn_retry_leaves_a_backend_that_no_longer_takes_new_flows_though_ready_and_up() {
    let Some(mut t) = table(
        "redispatch::a_syn_retry_leaves_a_backend_that_no_longer_takes_new_flows_though_ready_and_up",
    ) else {
        return;
    };
    // Weight 0: ready and up, but out of the table.
    let p = port_to(&t.bal, "web-c", 52_000);
    let row = fwd(
        &t.bal,
        "set-up: SYN to web-c",
        "web",
        "web-c",
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_weight("web-c", 0).unwrap();
    let again = maglev_choice(&t.bal, "web", &tcp_key(p));
    assert_ne!(again, "web-c");
    let mut row = fwd(
        &t.bal,
        "a retransmitted SYN to a backend of weight 0 is steered again",
        "web",
        &again,
        tcp4(CLIENT, p, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
    t.check(row);
    // Maintenance: only the maintenance backend takes new flows.
    let q = port_to(&t.bal, "web-a", 53_000);
    let row = fwd(
        &t.bal,
        "set-up: SYN to web-a",
        "web",
        "web-a",
        tcp4(CLIENT, q, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_maintenance("web", true).unwrap();
    let mut row = fwd(
        &t.bal,
        "a retransmitted SYN during maintenance goes to the maintenance backend",
        "web",
        "web-maint",
        tcp4(CLIENT, q, VIP, 80).syn().frame(),
        true,
    );
    row.deltas.push(Delta::Outcome(event::REDISPATCH, 1));
    t.check(row);
    let row = fwd(
        &t.bal,
        "and its own retransmission stays there",
        "web",
        "web-maint",
        tcp4(CLIENT, q, VIP, 80).syn().frame(),
        false,
    );
    t.check(row);
    t.finish();
}
