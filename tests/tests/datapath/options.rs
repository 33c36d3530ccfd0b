//! Rules 1–4 for packets with longer IP headers: IPv4 options, and IPv6 extension headers
//! (hop-by-hop, routing, destination options) before TCP or UDP, walked up to
//! `MAX_IPV6_EXT_HEADERS`. They are steered like bare packets; the RST that answers one is
//! a bare IPv4 or IPv6 header and TCP header. A longer chain, a fragment header and a routing
//! header with segments left pass untouched, each counted.

use steer_common::{outcome, MAX_IPV6_EXT_HEADERS, PROTO_TCP, PROTO_UDP};
use steer_ctl::AdminState;
use steer_tests::fixture::{
    tcp4, tcp6, udp6, Delta, Ext, Field, IPV6_DEST_OPTS as DEST, IPV6_FRAGMENT as FRAG,
    IPV6_HOP_BY_HOP as HOP, IPV6_ROUTING as ROUTING,
};

use crate::common::{
    establish, fwd, key, maglev_choice, passed, port_to, rst_frame, rst_row, table, tcp_key,
    CLIENT, CLIENT6, EMPTY_VIP, EMPTY_VIP6, VIP, VIP6,
};

/// IPv4 Router Alert (RFC 2113): one 4-byte option.
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0, 0];
/// 40 bytes of options, the most IHL allows (15 words): NOPs, then End of Options.
const FULL_OPTIONS: [u8; 40] = {
    let mut o = [1u8; 40];
    o[39] = 0;
    o
};

fn exts(kinds: &[u8]) -> Vec<Ext> {
    kinds.iter().map(|k| Ext::of(*k)).collect()
}

fn web6_choice(bal: &steer_ctl::Balancer, port: u16) -> String {
    maglev_choice(
        bal,
        "web6",
        &key(CLIENT6.into(), port, VIP6.into(), 80, PROTO_TCP),
    )
}

#[test]
fn ipv4_options() {
    let Some(mut t) = table("options::ipv4_options") else {
        return;
    };
    let be = maglev_choice(&t.bal, "web", &tcp_key(40_000));
    let row = fwd(
        &t.bal,
        "a SYN with an IPv4 option goes to the Maglev choice, options kept",
        "web",
        &be,
        tcp4(CLIENT, 40_000, VIP, 80)
            .syn()
            .frame()
            .ipv4_options(&ROUTER_ALERT),
        true,
    );
    t.check(row);
    let pr = port_to(&t.bal, "web-c", 46_000);
    establish(&mut t, "web-c", pr);
    t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, a data packet with an IPv4 option is answered with a RST (bare header)",
        tcp4(CLIENT, pr, VIP, 80)
            .ack(777)
            .data(b"GET /")
            .frame()
            .ipv4_options(&ROUTER_ALERT),
        rst_frame(VIP.into(), CLIENT.into(), pr, 777, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
        ],
    ));
    t.check(rst_row(
        "…and so is one with 40 bytes of options (IHL 15)",
        tcp4(CLIENT, pr, VIP, 80)
            .ack(800)
            .frame()
            .ipv4_options(&FULL_OPTIONS),
        rst_frame(VIP.into(), CLIENT.into(), pr, 800, None),
        vec![Delta::Backend("web-c".into(), Field::RstSent, 1)],
    ));
    t.check(rst_row(
        "a SYN with options and data to a service with no backend: RST|ACK past SYN and data",
        tcp4(CLIENT, 40_000, EMPTY_VIP, 80)
            .syn()
            .data(b"0123456789")
            .frame()
            .ipv4_options(&FULL_OPTIONS),
        rst_frame(EMPTY_VIP.into(), CLIENT.into(), 40_000, 0, Some(1011)),
        vec![Delta::Service("empty".into(), Field::RstSent, 1)],
    ));
    let syn = tcp4(CLIENT, 40_000, VIP, 80).syn().frame();
    t.check(passed(
        "an IPv4 header cut short in its options passes as malformed",
        syn.clone().ipv4_options(&FULL_OPTIONS).truncated(14 + 30),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "IHL 15 with a total length of 40 passes as malformed",
        syn.clone().with_byte(14, 0x4f),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "a TCP header cut short after IPv4 options passes as malformed",
        syn.ipv4_options(&ROUTER_ALERT).truncated(14 + 24 + 19),
        outcome::PASS_MALFORMED,
    ));
    t.finish();
}

#[test]
fn ipv6_extension_headers_are_walked() {
    let Some(mut t) = table("options::ipv6_extension_headers_are_walked") else {
        return;
    };
    let be = web6_choice(&t.bal, 40_000);
    let row = fwd(
        &t.bal,
        "an IPv6 SYN with hop-by-hop and destination options goes to the Maglev choice",
        "web6",
        &be,
        tcp6(CLIENT6, 40_000, VIP6, 80)
            .syn()
            .frame()
            .ipv6_ext(&exts(&[HOP, DEST])),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "data of that flow with the same chain follows it",
        "web6",
        &be,
        tcp6(CLIENT6, 40_000, VIP6, 80)
            .ack(1)
            .data(b"hello")
            .frame()
            .ipv6_ext(&exts(&[HOP, DEST])),
        false,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "…and so does its data without the chain (the flow is its 5-tuple)",
        "web6",
        &be,
        tcp6(CLIENT6, 40_000, VIP6, 80).ack(6).frame(),
        false,
    );
    t.check(row);
    let long_dest = Ext {
        len8: 3,
        ..Ext::of(DEST)
    };
    let chain = [Ext::of(HOP), Ext::of(DEST), Ext::of(ROUTING), long_dest];
    assert_eq!(chain.len(), MAX_IPV6_EXT_HEADERS);
    let be = web6_choice(&t.bal, 40_001);
    let row = fwd(
        &t.bal,
        "a chain as long as the bound (hop-by-hop, dest, routing done, 32-byte dest) is walked",
        "web6",
        &be,
        tcp6(CLIENT6, 40_001, VIP6, 80)
            .syn()
            .frame()
            .ipv6_ext(&chain),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "UDP after a destination options header goes to the UDP service",
        "dns6",
        &maglev_choice(
            &t.bal,
            "dns6",
            &key(CLIENT6.into(), 5353, VIP6.into(), 53, PROTO_UDP),
        ),
        udp6(CLIENT6, 5353, VIP6, 53, b"q").ipv6_ext(&exts(&[DEST])),
        true,
    );
    t.check(row);
    t.finish();
}

#[test]
fn ipv6_chains_not_walked_pass_counted() {
    let Some(mut t) = table("options::ipv6_chains_not_walked_pass_counted") else {
        return;
    };
    let syn = || tcp6(CLIENT6, 40_000, VIP6, 80).syn().frame();
    let too_long = vec![Ext::of(DEST); MAX_IPV6_EXT_HEADERS + 1];
    t.check(passed(
        "a chain longer than the bound passes untouched, counted",
        syn().ipv6_ext(&too_long),
        outcome::PASS_TOO_MANY_HEADERS,
    ));
    t.check(passed(
        "a fragment header passes as a fragment",
        syn().ipv6_ext(&exts(&[FRAG])),
        outcome::PASS_FRAGMENT,
    ));
    t.check(passed(
        "a fragment header after hop-by-hop passes as a fragment",
        syn().ipv6_ext(&exts(&[HOP, FRAG])),
        outcome::PASS_FRAGMENT,
    ));
    t.check(passed(
        "a routing header with segments left: the VIP is not the destination, passed",
        syn().ipv6_ext(&[Ext {
            segments_left: 1,
            ..Ext::of(ROUTING)
        }]),
        outcome::PASS_NOT_SERVICE,
    ));
    t.check(passed(
        "hop-by-hop after another extension header passes as malformed",
        syn().ipv6_ext(&exts(&[DEST, HOP])),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "an extension header cut short passes as malformed",
        syn()
            .ipv6_ext(&exts(&[HOP, DEST]))
            .truncated(14 + 40 + 8 + 4),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "a payload length shorter than the extension headers passes as malformed",
        syn()
            .ipv6_ext(&exts(&[HOP, DEST]))
            .with_byte(14 + 4, 0)
            .with_byte(14 + 5, 12),
        outcome::PASS_MALFORMED,
    ));
    t.finish();
}

#[test]
fn a_rst_answering_an_extension_chain_is_bare() {
    let Some(mut t) = table("options::a_rst_answering_an_extension_chain_is_bare") else {
        return;
    };
    let p6 = (50_000..52_000)
        .find(|p| web6_choice(&t.bal, *p) == "web6-a")
        .unwrap();
    let row = fwd(
        &t.bal,
        "set-up: IPv6 SYN with hop-by-hop",
        "web6",
        "web6-a",
        tcp6(CLIENT6, p6, VIP6, 80)
            .syn()
            .frame()
            .ipv6_ext(&exts(&[HOP])),
        true,
    );
    t.check(row);
    t.bal.set_admin("web6-a", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, IPv6 data with hop-by-hop and dest options is answered with a bare RST",
        tcp6(CLIENT6, p6, VIP6, 80)
            .ack(4242)
            .data(b"hello")
            .frame()
            .ipv6_ext(&exts(&[HOP, DEST])),
        rst_frame(VIP6.into(), CLIENT6.into(), p6, 4242, None),
        vec![Delta::Backend("web6-a".into(), Field::RstSent, 1)],
    ));
    t.check(rst_row(
        "an IPv6 SYN with destination options to a service with no backend: bare RST|ACK",
        tcp6(CLIENT6, 40_000, EMPTY_VIP6, 80)
            .syn()
            .frame()
            .ipv6_ext(&exts(&[DEST])),
        rst_frame(EMPTY_VIP6.into(), CLIENT6.into(), 40_000, 0, Some(1001)),
        vec![Delta::Service("empty6".into(), Field::RstSent, 1)],
    ));
    t.finish();
}
