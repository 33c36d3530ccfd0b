//! SPEC.md's datapath rules as `BPF_PROG_TEST_RUN` fixtures: each row is a frame in, the action
//! and frame out, and the counters that must move. Rows run in order against one datapath, and
//! the table changes state between them (drain, reject, maintenance…) as an operator would.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use etherparse::PacketBuilder;
use steer_common::{event, flow_flags, hash::flow_hash, outcome, FlowKey, PROTO_TCP, PROTO_UDP};
use steer_ctl::{
    balancer::addr_bytes, AdminState as Admin, BackendSpec, Balancer, Datapath, Health, NoBackend,
    Options, Role, ServiceSpec,
};
use steer_tests::fixture::{
    arp_request, tcp4, tcp6, udp4, Delta, Expect, Field, Frame, Row, Table, CLIENT_MAC, LB_MAC,
    XDP_DROP, XDP_PASS, XDP_TX,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
const QUIET_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
const EMPTY_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

fn mac(i: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, i]
}

fn v4(last: u8) -> IpAddr {
    Ipv4Addr::new(10, 1, 0, last).into()
}

fn v6(last: u16) -> IpAddr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last).into()
}

/// Services:
/// - `web` TCP 10.0.0.10:80: pool web-a/b/c, fallback web-sorry, maintenance web-maint;
/// - `dns` UDP 10.0.0.10:53: pool dns-a/b, idle timeout 1 s;
/// - `web6` TCP [fd00::10]:80: pool web6-a/b; `dns6` UDP [fd00::10]:53: dns6-a;
/// - `empty` TCP 10.0.0.20:80 and `empty6` TCP [fd00::20]:80: no backend (RST);
/// - `quiet` TCP 10.0.0.30:80: no backend, drop.
fn setup() -> Balancer {
    let dp = Datapath::load(&Options {
        max_services: 8,
        max_flows: 4096,
        ..Options::default()
    })
    .expect("load the datapath");
    let mut bal = Balancer::new(dp);
    bal.add_service(ServiceSpec::tcp("web", VIP.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec {
        idle_timeout_s: 1,
        ..ServiceSpec::udp("dns", VIP.into(), 53)
    })
    .unwrap();
    bal.add_service(ServiceSpec::tcp("web6", VIP6.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec::udp("dns6", VIP6.into(), 53))
        .unwrap();
    bal.add_service(ServiceSpec::tcp("empty", EMPTY_VIP.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec::tcp("empty6", EMPTY_VIP6.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec {
        no_backend: NoBackend::Drop,
        ..ServiceSpec::tcp("quiet", QUIET_VIP.into(), 80)
    })
    .unwrap();
    let backends: [(&str, &str, IpAddr, Role); 10] = [
        ("web", "web-a", v4(1), Role::Pool),
        ("web", "web-b", v4(2), Role::Pool),
        ("web", "web-c", v4(3), Role::Pool),
        ("web", "web-sorry", v4(9), Role::Fallback),
        ("web", "web-maint", v4(8), Role::Maintenance),
        ("dns", "dns-a", v4(4), Role::Pool),
        ("dns", "dns-b", v4(5), Role::Pool),
        ("web6", "web6-a", v6(1), Role::Pool),
        ("web6", "web6-b", v6(2), Role::Pool),
        ("dns6", "dns6-a", v6(4), Role::Pool),
    ];
    for (i, (svc, name, addr, role)) in backends.into_iter().enumerate() {
        bal.add_backend(
            svc,
            BackendSpec {
                role,
                ..BackendSpec::new(name, addr, mac(i as u8 + 1))
            },
        )
        .unwrap();
    }
    bal
}

fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
    let (s, family) = addr_bytes(src);
    let (d, _) = addr_bytes(dst);
    FlowKey {
        src: s,
        dst: d,
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        family,
        _pad: [0; 2],
    }
}

fn tcp_key(sport: u16) -> FlowKey {
    key(CLIENT.into(), sport, VIP.into(), 80, PROTO_TCP)
}

/// The backend the service's live Maglev table gives a flow: what the datapath must pick.
fn maglev_choice(bal: &Balancer, service: &str, k: &FlowKey) -> String {
    let table = bal.live_table(service).unwrap();
    let id = table[(flow_hash(k) % table.len() as u32) as usize];
    bal.backend_name(id).expect("table holds a known backend")
}

/// A client port whose `web` flow Maglev currently sends to `backend`.
fn port_to(bal: &Balancer, backend: &str, from: u16) -> u16 {
    (from..from + 2000)
        .find(|p| maglev_choice(bal, "web", &tcp_key(*p)) == backend)
        .unwrap_or_else(|| panic!("no port in {from}.. maps to {backend}"))
}

fn be_mac(bal: &Balancer, name: &str) -> [u8; 6] {
    bal.datapath()
        .backend(bal.backend_id(name).unwrap())
        .unwrap()
        .mac
}

/// A row expecting `frame` forwarded by DSR to `be` of `svc`.
fn fwd(bal: &Balancer, desc: &str, svc: &str, be: &str, frame: Frame, new_flow: bool) -> Row {
    let len = frame.bytes.len() as u64;
    Row {
        desc: format!("{desc} (→ {be})"),
        output: Expect::Macs {
            dst: be_mac(bal, be),
            src: LB_MAC,
        },
        input: frame,
        action: XDP_TX,
        deltas: vec![
            Delta::Outcome(outcome::TX_FORWARD, 1),
            Delta::Backend(be.into(), Field::Packets, 1),
            Delta::Backend(be.into(), Field::Bytes, len),
            Delta::Backend(be.into(), Field::NewFlows, new_flow as u64),
            Delta::Service(svc.into(), Field::Packets, 1),
            Delta::Service(svc.into(), Field::Bytes, len),
            Delta::Service(svc.into(), Field::NewFlows, new_flow as u64),
        ],
    }
}

fn passed(desc: &str, frame: Frame, why: u32) -> Row {
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

fn dropped(desc: &str, frame: Frame, why: u32) -> Row {
    Row {
        desc: desc.into(),
        input: frame,
        action: XDP_DROP,
        output: Expect::Any,
        deltas: vec![Delta::Outcome(why, 1)],
    }
}

/// The RST answering a TCP segment from (client, sport) to (vip, 80): with `ack_of` the
/// segment's ACK number it is a bare RST with that sequence; without, RST|ACK acknowledging
/// `acks`.
fn rst_frame(vip: IpAddr, client: IpAddr, sport: u16, seq: u32, acks: Option<u32>) -> Frame {
    let eth = PacketBuilder::ethernet2(LB_MAC, CLIENT_MAC);
    let b = match (vip, client) {
        (IpAddr::V4(v), IpAddr::V4(c)) => {
            eth.ipv4(v.octets(), c.octets(), 64).tcp(80, sport, seq, 0)
        }
        (IpAddr::V6(v), IpAddr::V6(c)) => {
            eth.ipv6(v.octets(), c.octets(), 64).tcp(80, sport, seq, 0)
        }
        _ => unreachable!(),
    };
    let b = b.rst();
    let b = match acks {
        Some(n) => b.ack(n),
        None => b,
    };
    let mut bytes = Vec::new();
    b.write(&mut bytes, &[]).unwrap();
    Frame { bytes }
}

fn rst_row(desc: &str, frame: Frame, answer: Frame, deltas: Vec<Delta>) -> Row {
    let mut deltas = deltas;
    deltas.push(Delta::Outcome(outcome::TX_RST, 1));
    Row {
        desc: desc.into(),
        input: frame,
        action: XDP_TX,
        output: Expect::Frame(answer),
        deltas,
    }
}

fn flow_of(bal: &Balancer, k: &FlowKey) -> (String, u16) {
    let f = bal
        .datapath()
        .flow(k)
        .unwrap()
        .expect("the connection table holds the flow");
    (bal.backend_name(f.backend).unwrap_or_default(), f.flags)
}

#[test]
fn datapath_fixtures() {
    if !steer_tests::privileged("datapath_fixtures") {
        return;
    }
    let mut t = Table::new(setup());
    let c: IpAddr = CLIENT.into();

    // Rule 6: what is not for a service passes untouched, malformed input is counted.
    let syn = tcp4(CLIENT, 40_000, VIP, 80).syn().frame();
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

    // Rule 2: new flows take the Maglev choice and are pinned.
    let k = tcp_key(40_000);
    let be = maglev_choice(&t.bal, "web", &k);
    let row = fwd(
        &t.bal,
        "TCP SYN to a VIP goes to its Maglev backend by DSR, L3/L4 untouched",
        "web",
        &be,
        syn.clone(),
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
    let ku = key(c, 5353, VIP.into(), 53, PROTO_UDP);
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
        steer_tests::fixture::udp6(CLIENT6, 5353, VIP6, 53, b"q"),
        true,
    );
    t.check(row);

    // Rule 1 and 4: drain and maint keep established flows; new flows avoid them.
    let (pa, pb) = (
        port_to(&t.bal, "web-a", 41_000),
        port_to(&t.bal, "web-b", 42_000),
    );
    for (p, be) in [(pa, "web-a"), (pb, "web-b")] {
        let row = fwd(
            &t.bal,
            "set-up: SYN",
            "web",
            be,
            tcp4(CLIENT, p, VIP, 80).syn().frame(),
            true,
        );
        t.check(row);
        let row = fwd(
            &t.bal,
            "set-up: ACK",
            "web",
            be,
            tcp4(CLIENT, p, VIP, 80).ack(1).frame(),
            false,
        );
        t.check(row);
    }
    let fresh_a = port_to(&t.bal, "web-a", 43_000);
    t.bal.set_admin("web-a", Admin::Drain).unwrap();
    let row = fwd(
        &t.bal,
        "after drain, a data packet of a flow on the drained backend still goes there",
        "web",
        "web-a",
        tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"more").frame(),
        false,
    );
    t.check(row);
    let now = maglev_choice(&t.bal, "web", &tcp_key(fresh_a));
    assert_ne!(now, "web-a", "a drained backend is out of the Maglev table");
    let row = fwd(
        &t.bal,
        "after drain, a SYN that used to map to the drained backend goes elsewhere",
        "web",
        &now,
        tcp4(CLIENT, fresh_a, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_admin("web-a", Admin::Maint).unwrap();
    let row = fwd(
        &t.bal,
        "in maint, flows on the backend still go there",
        "web",
        "web-a",
        tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"more").frame(),
        false,
    );
    t.check(row);
    t.bal.set_admin("web-a", Admin::Ready).unwrap();
    t.bal.set_health("web-b", Health::Down).unwrap();
    let row = fwd(
        &t.bal,
        "a backend marked down keeps its established flows",
        "web",
        "web-b",
        tcp4(CLIENT, pb, VIP, 80).ack(1).data(b"x").frame(),
        false,
    );
    t.check(row);
    t.bal.set_health("web-b", Health::Up).unwrap();

    // Rule 1: a pool change moves no established flow.
    let before: Vec<(u16, String)> = (44_000..44_050)
        .map(|p| (p, maglev_choice(&t.bal, "web", &tcp_key(p))))
        .collect();
    for (p, be) in &before {
        let f = tcp4(CLIENT, *p, VIP, 80).syn().frame();
        let r = steer_tests::fixture::run_frame(&mut t.bal, &f.bytes);
        assert_eq!(r.output[0..6], be_mac(&t.bal, be), "set-up SYN on port {p}");
    }
    t.bal
        .add_backend("web", BackendSpec::new("web-d", v4(6), mac(30)))
        .unwrap();
    let (moved_p, moved_from) = before
        .iter()
        .find(|(p, be)| maglev_choice(&t.bal, "web", &tcp_key(*p)) != *be)
        .cloned()
        .expect("adding web-d changes the choice of some port");
    let row = fwd(
        &t.bal,
        "after a backend is added, a flow whose Maglev slot moved stays on its backend",
        "web",
        &moved_from,
        tcp4(CLIENT, moved_p, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);

    // Rule 5: a retransmitted SYN leaves a backend that is no longer eligible.
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
    t.bal.set_health("web-c", Health::Up).unwrap();

    // Rule 4: reject answers every further packet of the backend's flows with a RST.
    let pr = port_to(&t.bal, "web-c", 46_000);
    let row = fwd(
        &t.bal,
        "set-up: SYN",
        "web",
        "web-c",
        tcp4(CLIENT, pr, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "set-up: ACK",
        "web",
        "web-c",
        tcp4(CLIENT, pr, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
    let pr2 = port_to(&t.bal, "web-c", pr + 1);
    let row = fwd(
        &t.bal,
        "set-up: SYN never answered",
        "web",
        "web-c",
        tcp4(CLIENT, pr2, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_admin("web-c", Admin::Reject).unwrap();
    t.check(rst_row(
        "after reject, a data packet is answered with a RST (seq = its ACK)",
        tcp4(CLIENT, pr, VIP, 80).ack(777).data(b"GET /").frame(),
        rst_frame(VIP.into(), c, pr, 777, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::Packets, 0),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
            Delta::Service("web".into(), Field::RstSent, 1),
        ],
    ));
    t.check(rst_row(
        "…and so is the next one, without counting the flow's end twice",
        tcp4(CLIENT, pr, VIP, 80).ack(800).frame(),
        rst_frame(VIP.into(), c, pr, 800, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::EndedFlows, 0),
        ],
    ));
    t.check(dropped(
        "a RST from the client to a rejected backend's flow is not answered",
        tcp4(CLIENT, pr, VIP, 80).rst().frame(),
        outcome::DROP_REJECTED,
    ));
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
    t.bal.set_admin("web-c", Admin::Ready).unwrap();

    // A removed backend's flows are treated as reject.
    let row = fwd(
        &t.bal,
        "set-up: SYN to web-d",
        "web",
        "web-d",
        tcp4(CLIENT, port_to(&t.bal, "web-d", 47_000), VIP, 80)
            .syn()
            .frame(),
        true,
    );
    let pd = port_to(&t.bal, "web-d", 47_000);
    t.check(row);
    t.check(fwd(
        &t.bal,
        "set-up: ACK",
        "web",
        "web-d",
        tcp4(CLIENT, pd, VIP, 80).ack(1).frame(),
        false,
    ));
    t.bal.remove_backend("web-d").unwrap();
    t.check(rst_row(
        "a data packet of a removed backend's flow is answered with a RST",
        tcp4(CLIENT, pd, VIP, 80).ack(55).data(b"x").frame(),
        rst_frame(VIP.into(), c, pd, 55, None),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    // Its id, reused by a new backend, does not inherit the old flows.
    t.bal
        .add_backend("web", BackendSpec::new("web-e", v4(7), mac(31)))
        .unwrap();
    assert_eq!(
        t.bal.backend_counters("web-e").unwrap(),
        steer_common::Counters::default(),
        "a reused id starts with zeroed counters"
    );
    t.check(rst_row(
        "a new backend given a removed backend's id does not inherit its flows",
        tcp4(CLIENT, pd, VIP, 80).ack(56).frame(),
        rst_frame(VIP.into(), c, pd, 56, None),
        vec![Delta::Backend("web-e".into(), Field::Packets, 0)],
    ));
    t.bal.remove_backend("web-e").unwrap();

    // IPv6 reject.
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
    t.bal.set_admin("web6-a", Admin::Reject).unwrap();
    t.check(rst_row(
        "after reject, an IPv6 data packet is answered with an IPv6 RST",
        tcp6(CLIENT6, p6, VIP6, 80).ack(4242).data(b"hello").frame(),
        rst_frame(VIP6.into(), CLIENT6.into(), p6, 4242, None),
        vec![Delta::Backend("web6-a".into(), Field::RstSent, 1)],
    ));
    t.bal.set_admin("web6-a", Admin::Ready).unwrap();

    // UDP of a rejected backend is dropped; an idle UDP flow is steered afresh.
    let row = fwd(
        &t.bal,
        "set-up: UDP",
        "dns",
        &dns_be,
        udp4(CLIENT, 5353, VIP, 53, b"query"),
        false,
    );
    t.check(row);
    t.bal.set_admin(&dns_be, Admin::Reject).unwrap();
    t.check(dropped(
        "UDP of a rejected backend's flow is dropped",
        udp4(CLIENT, 5353, VIP, 53, b"q"),
        outcome::DROP_REJECTED,
    ));
    t.bal.set_admin(&dns_be, Admin::Drain).unwrap();
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
    t.bal.set_admin(&dns_be, Admin::Ready).unwrap();

    // Ended flows.
    let pf = port_to(&t.bal, "web-a", 48_000);
    t.check(fwd(
        &t.bal,
        "set-up: SYN",
        "web",
        "web-a",
        tcp4(CLIENT, pf, VIP, 80).syn().frame(),
        true,
    ));
    let mut row = fwd(
        &t.bal,
        "a client FIN ends the flow and still reaches the backend",
        "web",
        "web-a",
        tcp4(CLIENT, pf, VIP, 80).ack(1).fin().frame(),
        false,
    );
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 1));
    row.deltas
        .push(Delta::Service("web".into(), Field::EndedFlows, 1));
    t.check(row);
    let mut row = fwd(
        &t.bal,
        "a retransmitted FIN does not end it twice",
        "web",
        "web-a",
        tcp4(CLIENT, pf, VIP, 80).ack(1).fin().frame(),
        false,
    );
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 0));
    t.check(row);
    t.bal.set_admin("web-a", Admin::Drain).unwrap();
    let now = maglev_choice(&t.bal, "web", &tcp_key(pf));
    t.check(fwd(
        &t.bal,
        "a new SYN on an ended flow's 5-tuple is a new flow",
        "web",
        &now,
        tcp4(CLIENT, pf, VIP, 80).syn().frame(),
        true,
    ));
    t.bal.set_admin("web-a", Admin::Ready).unwrap();

    // Rule 3: maintenance, fallback, no backend.
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
    for b in ["web-a", "web-b", "web-c"] {
        t.bal.set_health(b, Health::Up).unwrap();
    }
    t.check(rst_row(
        "a SYN to a service with no backend is answered with RST|ACK",
        tcp4(CLIENT, 40_000, EMPTY_VIP, 80).syn().frame(),
        rst_frame(EMPTY_VIP.into(), c, 40_000, 0, Some(1001)),
        vec![Delta::Service("empty".into(), Field::RstSent, 1)],
    ));
    t.check(rst_row(
        "an IPv6 SYN to a service with no backend is answered with an IPv6 RST|ACK",
        tcp6(CLIENT6, 40_000, EMPTY_VIP6, 80).syn().frame(),
        rst_frame(EMPTY_VIP6.into(), CLIENT6.into(), 40_000, 0, Some(1001)),
        vec![Delta::Service("empty6".into(), Field::RstSent, 1)],
    ));
    t.check(dropped(
        "a non-SYN to a service with no backend is dropped",
        tcp4(CLIENT, 40_000, EMPTY_VIP, 80).ack(1).frame(),
        outcome::DROP_NO_BACKEND,
    ));
    t.check(dropped(
        "a SYN to a no-backend service set to drop is dropped",
        tcp4(CLIENT, 40_000, QUIET_VIP, 80).syn().frame(),
        outcome::DROP_NO_BACKEND,
    ));

    t.finish();
}
