//! Rule 6: what is not for a service passes untouched, malformed input is counted.

use std::net::Ipv4Addr;

use steer_common::outcome;
use steer_tests::fixture::{arp_request, tcp4, tcp6, udp4};

use crate::common::{passed, table, CLIENT, CLIENT6, VIP, VIP6};

#[test]
fn other_traffic_passes_untouched() {
    let Some(mut t) = table("parse::other_traffic_passes_untouched") else {
        return;
    };
    t.check(passed(
        "TCP to a VIP's address on a port with no service passes untouched",
        tcp4(CLIENT, 40_000, VIP, 8080).syn().frame(),
        outcome::PASS_NOT_SERVICE,
    ));
    t.check(passed(
        "UDP to a TCP service's port passes untouched",
        udp4(CLIENT, 40_000, VIP, 80, b"x"),
        outcome::PASS_NOT_SERVICE,
    ));
    t.check(passed(
        "TCP to an address that is no VIP passes untouched",
        tcp4(CLIENT, 40_000, Ipv4Addr::new(10, 0, 0, 99), 80)
            .syn()
            .frame(),
        outcome::PASS_NOT_SERVICE,
    ));
    t.check(passed(
        "ARP passes untouched",
        arp_request(CLIENT, VIP),
        outcome::PASS_NOT_IP,
    ));
    t.finish();
}

#[test]
fn malformed_passes_counted() {
    let Some(mut t) = table("parse::malformed_passes_counted") else {
        return;
    };
    let syn = tcp4(CLIENT, 40_000, VIP, 80).syn().frame();
    t.check(passed(
        "a frame with only an Ethernet header passes as malformed",
        syn.clone().truncated(14),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "an IPv4 header cut to 10 bytes passes as malformed",
        syn.clone().truncated(14 + 10),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "an IPv4 header with IHL 4 passes as malformed",
        syn.clone().with_byte(14, 0x44),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "an IPv4 total length shorter than its header passes as malformed",
        syn.clone().with_byte(14 + 2, 0).with_byte(14 + 3, 10),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "a TCP header cut to 10 bytes passes as malformed",
        syn.clone().truncated(14 + 20 + 10),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "a TCP header with data offset 4 passes as malformed",
        syn.clone().with_byte(14 + 20 + 12, 0x40),
        outcome::PASS_MALFORMED,
    ));
    t.check(passed(
        "an IPv6 header cut to 30 bytes passes as malformed",
        tcp6(CLIENT6, 40_000, VIP6, 80)
            .syn()
            .frame()
            .truncated(14 + 30),
        outcome::PASS_MALFORMED,
    ));
    t.finish();
}

#[test]
fn fragments_pass() {
    let Some(mut t) = table("parse::fragments_pass") else {
        return;
    };
    let syn = tcp4(CLIENT, 40_000, VIP, 80).syn().frame();
    t.check(passed(
        "a first IPv4 fragment (MF set) to a VIP passes",
        syn.clone().with_byte(14 + 6, 0x20),
        outcome::PASS_FRAGMENT,
    ));
    t.check(passed(
        "a later IPv4 fragment (offset set) to a VIP passes",
        syn.clone().with_byte(14 + 7, 0x10).with_byte(14 + 6, 0x00),
        outcome::PASS_FRAGMENT,
    ));
    t.finish();
}
