//! Rule 2: new flows take the Maglev choice and are pinned.

use steer_common::flow_flags;
use steer_tests::fixture::tcp4;

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
