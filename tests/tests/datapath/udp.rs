//! UDP flows: pinned like TCP, dropped (there is no RST) when their backend is rejected, and
//! steered afresh once idle past the service's timeout.

use std::time::Duration;

use steer_common::{event, outcome, PROTO_UDP};
use steer_ctl::AdminState;
use steer_tests::fixture::{udp4, Delta};

use crate::common::{dropped, fwd, key, maglev_choice, table, CLIENT, VIP};

#[test]
fn udp() {
    let Some(mut t) = table("udp::udp") else {
        return;
    };
    let ku = key(CLIENT.into(), 5353, VIP.into(), 53, PROTO_UDP);
    let dns_be = maglev_choice(&t.bal, "dns", &ku);
    let row = fwd(
        &t.bal,
        "UDP to a UDP service is forwarded and pinned",
        "dns",
        &dns_be,
        udp4(CLIENT, 5353, VIP, 53, b"query"),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "set-up: UDP",
        "dns",
        &dns_be,
        udp4(CLIENT, 5353, VIP, 53, b"query"),
        false,
    );
    t.check(row);
    t.bal.set_admin(&dns_be, AdminState::Reject).unwrap();
    t.check(dropped(
        "UDP of a rejected backend's flow is dropped",
        udp4(CLIENT, 5353, VIP, 53, b"q"),
        outcome::DROP_REJECTED,
    ));
    t.bal.set_admin(&dns_be, AdminState::Drain).unwrap();
    t.check(fwd(
        &t.bal,
        "UDP of a drained backend's flow still goes there",
        "dns",
        &dns_be,
        udp4(CLIENT, 5353, VIP, 53, b"q"),
        false,
    ));
    std::thread::sleep(Duration::from_millis(1100)); // the service's idle timeout is 1 s
    let other = if dns_be == "dns-a" { "dns-b" } else { "dns-a" };
    let mut row = fwd(
        &t.bal,
        "a UDP flow idle past the service's timeout is steered afresh",
        "dns",
        other,
        udp4(CLIENT, 5353, VIP, 53, b"q"),
        true,
    );
    row.deltas.push(Delta::Outcome(event::IDLE_EXPIRED, 1));
    t.check(row);
    t.finish();
}
