//! What every rule's fixtures share: the services and backends of a fresh datapath, flow keys,
//! the backend Maglev gives a flow, and row builders (forwarded, passed, dropped, answered with a
//! RST).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::PacketBuilder;
use steer_common::{hash::flow_hash, outcome, FlowKey, PROTO_TCP};
use steer_ctl::{
    balancer::addr_bytes, BackendSpec, Balancer, Datapath, NoBackend, Options, Role, ServiceSpec,
};
use steer_tests::fixture::{
    tcp4, Delta, Expect, Field, Frame, Row, Table, CLIENT_MAC, LB_MAC, XDP_DROP, XDP_PASS, XDP_TX,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
pub const QUIET_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 30);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x10);
pub const EMPTY_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x20);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7);

pub fn mac(i: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 0, i]
}

pub fn v4(last: u8) -> IpAddr {
    Ipv4Addr::new(10, 1, 0, last).into()
}

pub fn v6(last: u16) -> IpAddr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, last).into()
}

/// Services:
/// - `web` TCP 10.0.0.10:80: pool web-a/b/c, fallback web-sorry, maintenance web-maint;
/// - `dns` UDP 10.0.0.10:53: pool dns-a/b, idle timeout 1 s;
/// - `web6` TCP [fd00::10]:80: pool web6-a/b; `dns6` UDP [fd00::10]:53: dns6-a;
/// - `empty` TCP 10.0.0.20:80 and `empty6` TCP [fd00::20]:80: no backend (RST);
/// - `quiet` TCP 10.0.0.30:80: no backend, drop.
pub fn setup() -> Balancer {
    let dp = Datapath::load(&Options {
        max_services: 8,
        max_flows: 4096,
        ..Options::default()
    })
    .expect("load the datapath");
    // The established table's presence filter made valid, as a daemon's first scan does: every
    // row then runs with SYNs checked against it.
    dp.flow_reader()
        .expect("a flow reader")
        .presence_round()
        .expect("a round of the presence filter");
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

pub fn key(src: IpAddr, sport: u16, dst: IpAddr, dport: u16, proto: u8) -> FlowKey {
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

pub fn tcp_key(sport: u16) -> FlowKey {
    key(CLIENT.into(), sport, VIP.into(), 80, PROTO_TCP)
}

/// The backend the service's live Maglev table gives a flow: what the datapath must pick.
pub fn maglev_choice(bal: &Balancer, service: &str, k: &FlowKey) -> String {
    let table = bal.live_table(service).unwrap();
    let id = table[(flow_hash(k) % table.len() as u32) as usize];
    bal.backend_name(id).expect("table holds a known backend")
}

/// A client port whose `web` flow Maglev currently sends to `backend`.
pub fn port_to(bal: &Balancer, backend: &str, from: u16) -> u16 {
    (from..from + 2000)
        .find(|p| maglev_choice(bal, "web", &tcp_key(*p)) == backend)
        .unwrap_or_else(|| panic!("no port in {from}.. maps to {backend}"))
}

pub fn be_mac(bal: &Balancer, name: &str) -> [u8; 6] {
    bal.datapath()
        .backend(bal.backend_id(name).unwrap())
        .unwrap()
        .mac
}

/// A row expecting `frame` forwarded by DSR to `be` of `svc`.
pub fn fwd(bal: &Balancer, desc: &str, svc: &str, be: &str, frame: Frame, new_flow: bool) -> Row {
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

pub fn passed(desc: &str, frame: Frame, why: u32) -> Row {
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

pub fn dropped(desc: &str, frame: Frame, why: u32) -> Row {
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
pub fn rst_frame(vip: IpAddr, client: IpAddr, sport: u16, seq: u32, acks: Option<u32>) -> Frame {
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

pub fn rst_row(desc: &str, frame: Frame, answer: Frame, deltas: Vec<Delta>) -> Row {
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

pub fn flow_of(bal: &Balancer, k: &FlowKey) -> (String, u16) {
    let f = bal
        .datapath()
        .flow(k)
        .unwrap()
        .expect("the connection table holds the flow");
    (bal.backend_name(f.backend).unwrap_or_default(), f.flags)
}

/// A fixture table over a datapath of its own (fresh, unpinned maps) holding the services of
/// `setup`, so no row of another test can leave state behind; `None` when `test` is skipped for
/// want of root (see `steer_tests::privileged`).
pub fn table(test: &str) -> Option<Table> {
    steer_tests::privileged(test).then(|| Table::new(setup()))
}

/// Pins a `web` flow from CLIENT:`port` to `be` and establishes it (SYN, then ACK), as rows.
pub fn establish(t: &mut Table, be: &str, port: u16) {
    let row = fwd(
        &t.bal,
        "set-up: SYN",
        "web",
        be,
        tcp4(CLIENT, port, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    let row = fwd(
        &t.bal,
        "set-up: ACK",
        "web",
        be,
        tcp4(CLIENT, port, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
}
