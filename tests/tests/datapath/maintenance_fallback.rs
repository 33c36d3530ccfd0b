//! Rule 3: a service in maintenance sends new flows to its maintenance backend; with no eligible
//! pool backend, new flows go to the fallback backend. Established flows continue either way.

use steer_common::PROTO_TCP;
use steer_ctl::Health;
use steer_tests::fixture::{tcp4, tcp6};

use crate::common::{
    establish, fwd, key, maglev_choice, port_to, table, tcp_key, CLIENT, CLIENT6, VIP, VIP6,
};

#[test]
fn maintenance() {
    let Some(mut t) = table("maintenance_fallback::maintenance") else {
        return;
    };
    let pb = port_to(&t.bal, "web-b", 42_000);
    establish(&mut t, "web-b", pb);
    t.bal.set_maintenance("web", true).unwrap();
    t.check(fwd(
        &t.bal,
        "maintenance on: a SYN goes to the maintenance backend",
        "web",
        "web-maint",
        tcp4(CLIENT, 49_000, VIP, 80).syn().frame(),
        true,
    ));
    t.check(fwd(
        &t.bal,
        "maintenance on: an established flow continues on its backend",
        "web",
        "web-b",
        tcp4(CLIENT, pb, VIP, 80).ack(1).data(b"x").frame(),
        false,
    ));
    let k6b = key(CLIENT6.into(), 40_100, VIP6.into(), 80, PROTO_TCP);
    let b6 = maglev_choice(&t.bal, "web6", &k6b);
    t.check(fwd(
        &t.bal,
        "maintenance on one service leaves another untouched",
        "web6",
        &b6,
        tcp6(CLIENT6, 40_100, VIP6, 80).syn().frame(),
        true,
    ));
    t.bal.set_maintenance("web", false).unwrap();
    let back = maglev_choice(&t.bal, "web", &tcp_key(49_001));
    t.check(fwd(
        &t.bal,
        "maintenance off: SYNs take the Maglev choice again",
        "web",
        &back,
        tcp4(CLIENT, 49_001, VIP, 80).syn().frame(),
        true,
    ));
    t.finish();
}

#[test]
fn fallback() {
    let Some(mut t) = table("maintenance_fallback::fallback") else {
        return;
    };
    for b in ["web-a", "web-b", "web-c"] {
        t.bal.set_health(b, Health::Down).unwrap();
    }
    t.check(fwd(
        &t.bal,
        "no eligible backend: a SYN goes to the fallback backend, not the maintenance one",
        "web",
        "web-sorry",
        tcp4(CLIENT, 49_002, VIP, 80).syn().frame(),
        true,
    ));
    t.finish();
}
