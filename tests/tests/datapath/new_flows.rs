//! Rule 2: new flows take the Maglev choice and are pinned.

use steer_common::flow_flags;
use steer_ctl::BackendSpec;
use steer_tests::fixture::{run_frame, tcp4, XDP_TX};

use crate::common::{flow_of, fwd, maglev_choice, table, tcp_key, CLIENT, VIP};

#[test]
fn new_flows_take_the_maglev_choice() {
    let Some(mut t) = table("new_flows::new_flows_take_the_maglev_choice") else {
        return;
    };
    let k = tcp_key(40_000);
    let be = maglev_choice(&t.bal, "web", &k);
    let row = fwd(
        &t.bal,
        "TCP SYN to a VIP goes to its Maglev backend by DSR, L3/L4 untouched",
        "web",
        &be,
        tcp4(CLIENT, 40_000, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    assert_eq!(
        flow_of(&t.bal, &k),
        (be.clone(), flow_flags::SYN_ONLY),
        "SYN pins a not-yet-established flow"
    );
    let row = fwd(
        &t.bal,
        "the handshake's ACK follows the SYN",
        "web",
        &be,
        tcp4(CLIENT, 40_000, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
    assert_eq!(
        flow_of(&t.bal, &k),
        (be.clone(), 0),
        "an ACK establishes the flow"
    );
    let k2 = tcp_key(40_001);
    let be2 = maglev_choice(&t.bal, "web", &k2);
    let row = fwd(
        &t.bal,
        "a mid-flow packet the table does not know takes the Maglev choice and is pinned",
        "web",
        &be2,
        tcp4(CLIENT, 40_001, VIP, 80)
            .ack(7)
            .data(b"GET / HTTP/1.1\r\n\r\n")
            .frame(),
        true,
    );
    t.check(row);
    assert_eq!(flow_of(&t.bal, &k2).0, be2);
    t.finish();
}

/// A SYN retransmitted after the pool grew keeps the backend its attempt was pinned to, though
/// the Maglev choice for its 5-tuple moved to the new backend: a fresh SYN is pinned without
/// looking in the transient table first, and a retransmission must still find its pin there.
#[test]
fn a_retransmitted_syn_keeps_its_pin_when_the_pool_grows() {
    let Some(mut t) = table("new_flows::a_retransmitted_syn_keeps_its_pin_when_the_pool_grows")
    else {
        return;
    };
    let ports: Vec<u16> = (50_000..50_200).collect();
    let before: Vec<String> = ports
        .iter()
        .map(|p| maglev_choice(&t.bal, "web", &tcp_key(*p)))
        .collect();
    for p in &ports {
        let r = run_frame(&mut t.bal, &tcp4(CLIENT, *p, VIP, 80).syn().frame().bytes);
        assert_eq!(r.action, XDP_TX, "set-up SYN from port {p}");
    }
    t.bal
        .add_backend(
            "web",
            BackendSpec::new("web-d", crate::common::v4(14), crate::common::mac(14)),
        )
        .unwrap();
    let (port, was) = ports
        .iter()
        .zip(&before)
        .find(|(p, b)| maglev_choice(&t.bal, "web", &tcp_key(**p)) != **b)
        .expect("adding a backend moves some 5-tuples' choice");
    let row = fwd(
        &t.bal,
        "a retransmitted SYN whose choice moved to a new backend stays with its attempt's",
        "web",
        was,
        tcp4(CLIENT, *port, VIP, 80).syn().frame(),
        false,
    );
    t.check(row);
    let fresh = (51_000..53_000)
        .find(|p| maglev_choice(&t.bal, "web", &tcp_key(*p)) == "web-d")
        .expect("a 5-tuple the new backend takes");
    let row = fwd(
        &t.bal,
        "a fresh SYN takes the new choice",
        "web",
        "web-d",
        tcp4(CLIENT, fresh, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.finish();
}
