//! The rules again over IPv6, where the family changes what is parsed and what is built: DSR
//! forwarding of TCP and UDP, and the RSTs of reject and of a service with no backend.

use steer_common::PROTO_TCP;
use steer_ctl::AdminState;
use steer_tests::fixture::{tcp6, udp6, Delta, Field};

use crate::common::{
    fwd, key, maglev_choice, rst_frame, rst_row, table, CLIENT6, EMPTY_VIP6, VIP6,
};

#[test]
fn forwarding() {
    let Some(mut t) = table("ipv6::forwarding") else {
        return;
    };
    let k6 = key(CLIENT6.into(), 40_000, VIP6.into(), 80, PROTO_TCP);
    let be6 = maglev_choice(&t.bal, "web6", &k6);
    let row = fwd(
        &t.bal,
        "IPv6 TCP SYN to an IPv6 VIP is forwarded by DSR",
        "web6",
        &be6,
        tcp6(CLIENT6, 40_000, VIP6, 80).syn().frame(),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "IPv6 data of that flow follows it",
        "web6",
        &be6,
        tcp6(CLIENT6, 40_000, VIP6, 80)
            .ack(1)
            .data(b"hello")
            .frame(),
        false,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "IPv6 UDP to an IPv6 UDP service is forwarded",
        "dns6",
        "dns6-a",
        udp6(CLIENT6, 5353, VIP6, 53, b"q"),
        true,
    );
    t.check(row);
    t.finish();
}

#[test]
fn reject() {
    let Some(mut t) = table("ipv6::reject") else {
        return;
    };
    let p6 = (50_000..52_000)
        .find(|p| {
            maglev_choice(
                &t.bal,
                "web6",
                &key(CLIENT6.into(), *p, VIP6.into(), 80, PROTO_TCP),
            ) == "web6-a"
        })
        .unwrap();
    t.check(fwd(
        &t.bal,
        "set-up: IPv6 SYN",
        "web6",
        "web6-a",
        tcp6(CLIENT6, p6, VIP6, 80).syn().frame(),
        true,
    ));
    t.bal.set_admin("web6-a", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, an IPv6 data packet is answered with an IPv6 RST",
        tcp6(CLIENT6, p6, VIP6, 80).ack(4242).data(b"hello").frame(),
        rst_frame(VIP6.into(), CLIENT6.into(), p6, 4242, None),
        vec![Delta::Backend("web6-a".into(), Field::RstSent, 1)],
    ));
    t.finish();
}

#[test]
fn no_backend() {
    let Some(mut t) = table("ipv6::no_backend") else {
        return;
    };
    t.check(rst_row(
        "an IPv6 SYN to a service with no backend is answered with an IPv6 RST|ACK",
        tcp6(CLIENT6, 40_000, EMPTY_VIP6, 80).syn().frame(),
        rst_frame(EMPTY_VIP6.into(), CLIENT6.into(), 40_000, 0, Some(1001)),
        vec![Delta::Service("empty6".into(), Field::RstSent, 1)],
    ));
    t.finish();
}
