//! SPEC.md's datapath rules as `BPF_PROG_TEST_RUN` fixtures: one row per rule, each with the
//! frame in, the action and frame out, and the counters that must move.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use steer_common::{hash::flow_hash, outcome, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP};
use steer_ctl::{BackendSpec, Balancer, Datapath, Options, Proto, ServiceSpec};
use steer_tests::fixture::{
    arp_request, run, tcp4, tcp6, udp4, Delta, Expect, Field, Row, LB_MAC, XDP_DROP, XDP_PASS,
    XDP_TX,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

fn mac(i: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, i]
}

/// A datapath with: `web` (TCP 10.0.0.10:80, three backends), `dns` (UDP 10.0.0.10:53, one),
/// `web6` (TCP [fd00::10]:80, two) and `empty` (TCP 10.0.0.20:80, none).
fn setup() -> Balancer {
    let dp = Datapath::load(&Options {
        max_services: 4,
        ..Options::default()
    })
    .expect("load the datapath");
    let mut bal = Balancer::new(dp);
    bal.add_service(ServiceSpec::tcp("web", VIP.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec {
        proto: Proto::Udp,
        ..ServiceSpec::tcp("dns", VIP.into(), 53)
    })
    .unwrap();
    bal.add_service(ServiceSpec::tcp("web6", VIP6.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec::tcp("empty", EMPTY_VIP.into(), 80))
        .unwrap();
    let backends: [(&str, &str, IpAddr); 6] = [
        ("web", "web-a", Ipv4Addr::new(10, 1, 0, 1).into()),
        ("web", "web-b", Ipv4Addr::new(10, 1, 0, 2).into()),
        ("web", "web-c", Ipv4Addr::new(10, 1, 0, 3).into()),
        ("dns", "dns-a", Ipv4Addr::new(10, 1, 0, 4).into()),
        (
            "web6",
            "web6-a",
            "fd00:1::1".parse::<Ipv6Addr>().unwrap().into(),
        ),
        (
            "web6",
            "web6-b",
            "fd00:1::2".parse::<Ipv6Addr>().unwrap().into(),
        ),
    ];
    for (i, (svc, name, addr)) in backends.into_iter().enumerate() {
        bal.add_backend(
            svc,
            BackendSpec {
                name: name.into(),
                addr,
                mac: mac(i as u8 + 1),
                weight: 1,
            },
        )
        .unwrap();
    }
    bal
}

fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    let (s, family) = steer_ctl::balancer::addr_bytes(src);
    let (d, _) = steer_ctl::balancer::addr_bytes(dst);
    FlowKey {
        src: s,
        dst: d,
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        family: if family == FAMILY_V4 {
            FAMILY_V4
        } else {
            FAMILY_V6
        },
        _pad: [0; 2],
    }
}

/// The backend the service's live Maglev table gives a flow: what the datapath must pick.
fn maglev_choice(bal: &Balancer, service: &str, k: &FlowKey) -> (String, [u8; 6]) {
    let table = bal.live_table(service).unwrap();
    let id = table[(flow_hash(k) % table.len() as u32) as usize];
    let name = bal.backend_name(id).expect("table holds a known backend");
    let be = bal.datapath().backend(id).unwrap();
    (name, be.mac)
}

fn forwarded(
    bal: &Balancer,
    desc: &str,
    svc: &str,
    k: FlowKey,
    frame: steer_tests::fixture::Frame,
    new_flow: bool,
) -> Row {
    let (be, be_mac) = maglev_choice(bal, svc, &k);
    let len = frame.bytes.len() as u64;
    Row {
        desc: format!("{desc} (→ {be})"),
        input: frame,
        action: XDP_TX,
        output: Expect::Macs {
            dst: be_mac,
            src: LB_MAC,
        },
        deltas: vec![
            Delta::Outcome(outcome::TX_FORWARD, 1),
            Delta::Backend(be.clone(), Field::Packets, 1),
            Delta::Backend(be.clone(), Field::Bytes, len),
            Delta::Backend(be, Field::NewFlows, new_flow as u64),
            Delta::Service(svc.into(), Field::Packets, 1),
            Delta::Service(svc.into(), Field::Bytes, len),
        ],
    }
}

fn passed(desc: &str, frame: steer_tests::fixture::Frame, why: u32) -> Row {
    Row {
        desc: desc.into(),
        input: frame,
        action: XDP_PASS,
        output: Expect::Unchanged,
        deltas: vec![
            Delta::Outcome(why, 1),
            Delta::Outcome(outcome::TX_FORWARD, 0),
        ],
    }
}

#[test]
fn datapath_fixtures() {
    if !steer_tests::privileged("datapath_fixtures") {
        return;
    }
    let mut bal = setup();
    let c: IpAddr = CLIENT.into();
    let v: IpAddr = VIP.into();
    let syn = tcp4(CLIENT, 40_000, VIP, 80).syn().frame();
    let mut rows = vec![
        forwarded(
            &bal,
            "TCP SYN to a VIP is sent to its Maglev backend by DSR; L3/L4 untouched",
            "web",
            key(c, 40_000, v, 80, PROTO_TCP),
            syn.clone(),
            true,
        ),
        forwarded(
            &bal,
            "a data packet of the same connection goes to the same backend",
            "web",
            key(c, 40_000, v, 80, PROTO_TCP),
            tcp4(CLIENT, 40_000, VIP, 80)
                .ack(1)
                .data(b"GET / HTTP/1.1\r\n\r\n")
                .frame(),
            false,
        ),
        forwarded(
            &bal,
            "UDP to a UDP service is forwarded",
            "dns",
            key(c, 5353, v, 53, steer_common::PROTO_UDP),
            udp4(CLIENT, 5353, VIP, 53, b"query"),
            false,
        ),
        forwarded(
            &bal,
            "IPv6 TCP SYN to an IPv6 VIP is forwarded by DSR",
            "web6",
            key(CLIENT6.into(), 40_000, VIP6.into(), 80, PROTO_TCP),
            tcp6(CLIENT6, 40_000, VIP6, 80).syn().frame(),
            true,
        ),
        passed(
            "TCP to a VIP's address on a port with no service passes untouched",
            tcp4(CLIENT, 40_000, VIP, 8080).syn().frame(),
            outcome::PASS_NOT_SERVICE,
        ),
        passed(
            "UDP to a TCP service's port passes untouched",
            udp4(CLIENT, 40_000, VIP, 80, b"x"),
            outcome::PASS_NOT_SERVICE,
        ),
        passed(
            "TCP to an address that is no VIP passes untouched",
            tcp4(CLIENT, 40_000, Ipv4Addr::new(10, 0, 0, 99), 80)
                .syn()
                .frame(),
            outcome::PASS_NOT_SERVICE,
        ),
        passed(
            "ARP passes untouched",
            arp_request(CLIENT, VIP),
            outcome::PASS_NOT_IP,
        ),
        passed(
            "a frame with only an Ethernet header passes as malformed",
            syn.clone().truncated(14),
            outcome::PASS_MALFORMED,
        ),
        passed(
            "an IPv4 header cut to 10 bytes passes as malformed",
            syn.clone().truncated(14 + 10),
            outcome::PASS_MALFORMED,
        ),
        passed(
            "an IPv4 header with IHL 4 passes as malformed",
            syn.clone().with_byte(14, 0x44),
            outcome::PASS_MALFORMED,
        ),
        passed(
            "a TCP header cut to 10 bytes passes as malformed",
            syn.clone().truncated(14 + 20 + 10),
            outcome::PASS_MALFORMED,
        ),
        passed(
            "a TCP header with data offset 4 passes as malformed",
            syn.clone().with_byte(14 + 20 + 12, 0x40),
            outcome::PASS_MALFORMED,
        ),
        passed(
            "an IPv6 header cut to 30 bytes passes as malformed",
            tcp6(CLIENT6, 40_000, VIP6, 80)
                .syn()
                .frame()
                .truncated(14 + 30),
            outcome::PASS_MALFORMED,
        ),
        passed(
            "a first IPv4 fragment (MF set) to a VIP passes",
            syn.clone().with_byte(14 + 6, 0x20),
            outcome::PASS_FRAGMENT,
        ),
        passed(
            "a later IPv4 fragment (offset set) to a VIP passes",
            syn.clone().with_byte(14 + 7, 0x10).with_byte(14 + 6, 0x00),
            outcome::PASS_FRAGMENT,
        ),
    ];
    rows.push(Row {
        desc: "a SYN to a service with no backend is dropped".into(),
        input: tcp4(CLIENT, 40_000, EMPTY_VIP, 80).syn().frame(),
        action: XDP_DROP,
        output: Expect::Any,
        deltas: vec![
            Delta::Outcome(outcome::DROP_NO_BACKEND, 1),
            Delta::Service("empty".into(), Field::Packets, 1),
        ],
    });
    run(&mut bal, &rows);
}
