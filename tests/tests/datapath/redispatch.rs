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
