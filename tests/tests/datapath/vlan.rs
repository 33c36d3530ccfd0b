//! Rules 1–4 on a trunk port: 802.1Q-tagged and QinQ (802.1ad outer, 802.1Q inner) frames are
//! steered like untagged ones, with their tags kept (DSR rewrites only the MACs), and a RST
//! answers on the VLAN the packet came from. More tags than the datapath walks pass untouched.

use steer_common::{outcome, PROTO_TCP};
use steer_ctl::AdminState;
use steer_tests::fixture::{
    arp_request, tcp4, tcp6, udp4, Delta, Field, Frame, ETH_P_8021AD, ETH_P_8021Q,
};

use crate::common::{
    fwd, key, maglev_choice, passed, port_to, rst_frame, rst_row, table, tcp_key, CLIENT, CLIENT6,
    EMPTY_VIP, VIP, VIP6,
};

/// Tagged with VLAN 100.
fn q(f: Frame) -> Frame {
    f.vlan(ETH_P_8021Q, 100)
}

/// QinQ: service VLAN 10 (802.1ad) outside, customer VLAN 200 (802.1Q) inside.
fn qinq(f: Frame) -> Frame {
    f.vlan(ETH_P_8021Q, 200).vlan(ETH_P_8021AD, 10)
}

#[test]
fn tagged_frames_are_steered_with_their_tags() {
    let Some(mut t) = table("vlan::tagged_frames_are_steered_with_their_tags") else {
        return;
    };
    let be = maglev_choice(&t.bal, "web", &tcp_key(40_000));
    let row = fwd(
        &t.bal,
        "an 802.1Q SYN to the VIP goes to the Maglev choice, tag kept",
        "web",
        &be,
        q(tcp4(CLIENT, 40_000, VIP, 80).syn().frame()),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "an 802.1Q data packet of that flow follows it",
        "web",
        &be,
        q(tcp4(CLIENT, 40_000, VIP, 80).ack(1).data(b"GET /").frame()),
        false,
    );
    t.check(row);
    let be = maglev_choice(&t.bal, "web", &tcp_key(40_001));
    let row = fwd(
        &t.bal,
        "a QinQ (802.1ad + 802.1Q) SYN goes to the Maglev choice, both tags kept",
        "web",
        &be,
        qinq(tcp4(CLIENT, 40_001, VIP, 80).syn().frame()),
        true,
    );
    t.check(row);
    let be = maglev_choice(
        &t.bal,
        "web6",
        &key(CLIENT6.into(), 40_002, VIP6.into(), 80, PROTO_TCP),
    );
    let row = fwd(
        &t.bal,
        "an 802.1Q IPv6 SYN goes to the Maglev choice, tag kept",
        "web6",
        &be,
        q(tcp6(CLIENT6, 40_002, VIP6, 80).syn().frame()),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "a QinQ UDP datagram to a UDP service is forwarded, tags kept",
        "dns",
        &maglev_choice(
            &t.bal,
            "dns",
            &key(CLIENT.into(), 5353, VIP.into(), 53, steer_common::PROTO_UDP),
        ),
        qinq(udp4(CLIENT, 5353, VIP, 53, b"q")),
        true,
    );
    t.check(row);
    t.finish();
}

#[test]
fn what_is_not_for_a_service_passes_tagged() {
    let Some(mut t) = table("vlan::what_is_not_for_a_service_passes_tagged") else {
        return;
    };
    t.check(passed(
        "a third VLAN tag is more than the datapath walks: passed untouched, counted",
        qinq(tcp4(CLIENT, 40_000, VIP, 80).syn().frame()).vlan(ETH_P_8021AD, 5),
        outcome::PASS_TOO_MANY_HEADERS,
    ));
    t.check(passed(
        "an 802.1Q tag cut short passes as malformed",
        q(tcp4(CLIENT, 40_000, VIP, 80).syn().frame()).truncated(16),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "an IPv4 header cut short after a QinQ pair of tags passes as malformed",
        qinq(tcp4(CLIENT, 40_000, VIP, 80).syn().frame()).truncated(22 + 19),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "tagged ARP passes untouched",
        q(arp_request(CLIENT, VIP)),
        outcome::PASS_NOT_IP,
    ));
    t.check(passed(
        "a tagged SYN to a port with no service passes untouched",
        q(tcp4(CLIENT, 40_000, VIP, 8080).syn().frame()),
        outcome::PASS_NOT_SERVICE,
    ));
    t.finish();
}

#[test]
fn a_rst_goes_back_on_the_packets_vlan() {
    let Some(mut t) = table("vlan::a_rst_goes_back_on_the_packets_vlan") else {
        return;
    };
    let pr = port_to(&t.bal, "web-c", 46_000);
    for (desc, f) in [
        (
            "set-up: tagged SYN",
            tcp4(CLIENT, pr, VIP, 80).syn().frame(),
        ),
        (
            "set-up: tagged ACK",
            tcp4(CLIENT, pr, VIP, 80).ack(1).frame(),
        ),
    ] {
        let row = fwd(&t.bal, desc, "web", "web-c", q(f), desc.ends_with("SYN"));
        t.check(row);
    }
    t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, an 802.1Q data packet is answered with a RST on the same VLAN",
        q(tcp4(CLIENT, pr, VIP, 80).ack(777).data(b"GET /").frame()),
        q(rst_frame(VIP.into(), CLIENT.into(), pr, 777, None)),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
        ],
    ));
    t.check(rst_row(
        "…and a QinQ packet of the flow with a RST carrying both tags",
        qinq(tcp4(CLIENT, pr, VIP, 80).ack(800).frame()),
        qinq(rst_frame(VIP.into(), CLIENT.into(), pr, 800, None)),
        vec![Delta::Backend("web-c".into(), Field::RstSent, 1)],
    ));
    t.check(rst_row(
        "a QinQ SYN to a service with no backend is answered with a QinQ RST|ACK",
        qinq(tcp4(CLIENT, 40_000, EMPTY_VIP, 80).syn().frame()),
        qinq(rst_frame(
            EMPTY_VIP.into(),
            CLIENT.into(),
            40_000,
            0,
            Some(1001),
        )),
        vec![Delta::Service("empty".into(), Field::RstSent, 1)],
    ));
    let p6 = (50_000..52_000)
        .find(|p| {
            maglev_choice(
                &t.bal,
                "web6",
                &key(CLIENT6.into(), *p, VIP6.into(), 80, PROTO_TCP),
            ) == "web6-b"
        })
        .unwrap();
    let row = fwd(
        &t.bal,
        "set-up: tagged IPv6 SYN",
        "web6",
        "web6-b",
        q(tcp6(CLIENT6, p6, VIP6, 80).syn().frame()),
        true,
    );
    t.check(row);
    t.bal.set_admin("web6-b", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, an 802.1Q IPv6 data packet is answered with an IPv6 RST on the same VLAN",
        q(tcp6(CLIENT6, p6, VIP6, 80).ack(4242).data(b"x").frame()),
        q(rst_frame(VIP6.into(), CLIENT6.into(), p6, 4242, None)),
        vec![Delta::Backend("web6-b".into(), Field::RstSent, 1)],
    ));
    t.finish();
}
