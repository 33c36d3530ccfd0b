//! What the NAT fixtures share: a network namespace of their own (the lab) whose FIB the
//! datapath's `bpf_fib_lookup` reads, the NAT services of a fresh datapath, frame builders for
//! both sides, and rows whose expected frames are built from the input with etherparse's
//! checksums (never the datapath's).
//!
//! ```text
//!   client 192.0.2.7, 2001:db8::7 ──┐            ┌── backends 10.1.0.x, fd00:1::x
//!   client router 192.0.2.254 ──────┤ cli0   be0 ├── router 10.1.0.100 ── 10.2.0.0/24
//!   (default route)                 └─── LB ─────┘   (fd00:1::64 ── fd00:2::/64)
//! ```
//!
//! Frames from clients arrive on `cli0` (MAC `LB_MAC`), frames from backends on `be0`; the test
//! run says so through `xdp_md.ingress_ifindex`, so a translated packet leaving by the other
//! interface is `XDP_REDIRECT` and one leaving by the same is `XDP_TX`. Every next hop has a
//! permanent neighbour entry (known MACs) but `10.1.0.50`, which has none.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicU32, Ordering},
};

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use steer_common::{outcome, Flow, FlowKey, NatRev, PROTO_TCP, PROTO_UDP};
use steer_ctl::{balancer::NatSpec, BackendSpec, Balancer, Datapath, Options, Role, ServiceSpec};
use steer_tests::{
    fixture::{
        checksum_errors, Delta, Expect, Field, Frame, Row, Table, TcpFlags, CLIENT_MAC, LB_MAC,
        XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX,
    },
    netns::{enter, mac_string, sh, Netns, NS_PREFIX},
};

pub use crate::common::{key, CLIENT, CLIENT6, VIP, VIP6};

/// MAC of the LB's backend-facing interface `be0`.
pub const BE_SIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
/// The backends' side router (10.1.0.100, fd00:1::64), to 10.2.0.0/24 and fd00:2::/64.
pub const GW_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 1];
/// The clients' side router (192.0.2.254, 2001:db8::fe): the default route.
pub const CGW_MAC: [u8; 6] = [0x02, 0xaa, 0, 0, 0, 2];
/// A second client on the clients' link.
pub const CLIENT2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 8);
pub const CLIENT2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
/// A client behind the clients' router.
pub const FAR_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 9);
/// The LB's own addresses facing the backends: the `snat` of every backend on `be0`.
pub const SNAT: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 254);
pub const SNAT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0xfe);
/// The LB's address on the clients' link (snat of the backend there).
pub const CLI_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// A backend with no neighbour entry.
pub const NO_NEIGH: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 50);
/// A backend on the clients' link (out of the interface client frames come in by).
pub const LOCAL_BE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 50);
pub const LOCAL_BE_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 2, 50];
/// The pool of service `pooled`.
pub const POOL: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 1, 0, 200), Ipv4Addr::new(10, 1, 0, 201)];

pub const BE_PORT: u16 = 8080;
pub const DNS_PORT: u16 = 5353;

/// MAC of backend 10.1.0.`i`.
pub fn mac4(i: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 4, i]
}

/// MAC of backend fd00:1::`i`.
pub fn mac6(i: u8) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, 6, i]
}

pub fn be4(i: u8) -> IpAddr {
    Ipv4Addr::new(10, 1, 0, i).into()
}

pub fn be6(i: u16) -> IpAddr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, i).into()
}

/// The NAT fixtures' network namespace, entered by the test's thread (test runs and the FIB
/// lookups they make use the calling thread's namespace), deleted on drop — also when the
/// test fails.
pub struct Lab {
    pub ns: Netns,
    /// Interface indexes of `cli0` (clients' side) and `be0` (backends' side).
    pub cli: u32,
    pub be: u32,
    /// Pass programs on `cli0` and `be0`: a veth registers its XDP receive queue (which a
    /// test run's `ingress_ifindex` needs) only while it has an XDP program.
    _pass: Vec<aya::Ebpf>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    pub fn new() -> Lab {
        let name = format!(
            "{NS_PREFIX}{}-nat{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let mut lab = Lab {
            ns: Netns { name },
            cli: 0,
            be: 0,
            _pass: Vec::new(),
        };
        // From here on a panic drops `lab`, which deletes the namespace.
        let ns = lab.ns.clone();
        for (k, v) in [
            ("net.ipv6.conf.all.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_ra", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
            ("net.ipv6.conf.default.addr_gen_mode", "1"),
        ] {
            ns.sysctl(k, v);
        }
        ns.ip(&["link", "set", "lo", "up"]);
        for (dev, peer, mac) in [("cli0", "cli1", LB_MAC), ("be0", "be1", BE_SIDE_MAC)] {
            ns.ip(&[
                "link",
                "add",
                dev,
                "address",
                &mac_string(mac),
                "type",
                "veth",
                "peer",
                "name",
                peer,
            ]);
            ns.ip(&["link", "set", peer, "up"]);
            ns.ip(&["link", "set", dev, "up"]);
        }
        for (addr, dev) in [
            ("192.0.2.1/24", "cli0"),
            ("2001:db8::1/64", "cli0"),
            ("10.1.0.254/24", "be0"),
            ("fd00:1::fe/64", "be0"),
        ] {
            ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
        }
        // Forwarding on every interface (bpf_fib_lookup checks the ingress one's).
        for k in [
            "net.ipv4.conf.all.forwarding",
            "net.ipv4.conf.default.forwarding",
            "net.ipv4.conf.lo.forwarding",
            "net.ipv6.conf.all.forwarding",
            "net.ipv6.conf.default.forwarding",
        ] {
            ns.sysctl(k, "1");
        }
        let neigh = |addr: String, mac: [u8; 6], dev: &str| {
            ns.neighbour(dev, &addr, mac);
        };
        neigh(CLIENT.to_string(), CLIENT_MAC, "cli0");
        neigh(CLIENT6.to_string(), CLIENT_MAC, "cli0");
        neigh(CLIENT2.to_string(), CLIENT2_MAC, "cli0");
        neigh(LOCAL_BE.to_string(), LOCAL_BE_MAC, "cli0");
        neigh("192.0.2.254".into(), CGW_MAC, "cli0");
        neigh("2001:db8::fe".into(), CGW_MAC, "cli0");
        neigh("10.1.0.100".into(), GW_MAC, "be0");
        neigh("fd00:1::64".into(), GW_MAC, "be0");
        for i in 1..=20u8 {
            neigh(be4(i).to_string(), mac4(i), "be0");
        }
        for i in 1..=4u16 {
            neigh(be6(i).to_string(), mac6(i as u8), "be0");
        }
        for route in [
            &["route", "add", "10.2.0.0/24", "via", "10.1.0.100"][..],
            &["-6", "route", "add", "fd00:2::/64", "via", "fd00:1::64"],
            &["route", "add", "default", "via", "192.0.2.254"],
            &["-6", "route", "add", "default", "via", "2001:db8::fe"],
            &["route", "add", "blackhole", "172.16.0.0/24"],
        ] {
            ns.ip(route);
        }
        enter(&format!("/run/netns/{}", ns.name));
        let index = |dev: &str| {
            let c = std::ffi::CString::new(dev).unwrap();
            // SAFETY: a NUL-terminated name; the lookup is in this thread's namespace.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            assert_ne!(i, 0, "{dev} has no index in {}", ns.name);
            i
        };
        lab.cli = index("cli0");
        lab.be = index("be0");
        lab._pass = vec![
            steer_tests::aux::attach_pass("cli0"),
            steer_tests::aux::attach_pass("be0"),
        ];
        lab
    }

    /// Adds a permanent neighbour entry on `be0`.
    pub fn add_neighbour(&self, addr: IpAddr, mac: [u8; 6]) {
        self.ns.neighbour("be0", &addr.to_string(), mac);
    }

    /// Where the FIB sends a packet to `dst` that came in by `ingress`: destination and source
    /// MACs, and the action (`XDP_TX` out of the same interface, else `XDP_REDIRECT`).
    pub fn next_hop(&self, dst: IpAddr, ingress: u32) -> ([u8; 6], [u8; 6], u32) {
        let (dmac, out) = match dst {
            IpAddr::V4(a) => match a.octets() {
                [10, 1, 0, i] => (mac4(i), self.be),
                [10, 2, 0, _] => (GW_MAC, self.be),
                _ if a == CLIENT => (CLIENT_MAC, self.cli),
                _ if a == CLIENT2 => (CLIENT2_MAC, self.cli),
                _ if a == LOCAL_BE => (LOCAL_BE_MAC, self.cli),
                _ => (CGW_MAC, self.cli),
            },
            IpAddr::V6(a) => match a.segments() {
                [0xfd00, 1, 0, 0, 0, 0, 0, i] => (mac6(i as u8), self.be),
                [0xfd00, 2, ..] => (GW_MAC, self.be),
                _ if a == CLIENT6 => (CLIENT_MAC, self.cli),
                _ => (CGW_MAC, self.cli),
            },
        };
        let smac = if out == self.be { BE_SIDE_MAC } else { LB_MAC };
        let action = if out == ingress { XDP_TX } else { XDP_REDIRECT };
        (dmac, smac, action)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self._pass.clear();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.ns.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

pub const TINY_PORTS: (u16, u16) = (30_000, 30_001);
pub const ONE_PORT: u16 = 30_100;
pub const ONE_UDP_PORT: u16 = 30_200;
pub const IDLE_UDP_PORT: u16 = 30_300;

pub fn vip(last: u8) -> IpAddr {
    Ipv4Addr::new(10, 0, 0, last).into()
}

/// Services, all in NAT mode (TCP port 80 unless said; backends listen on 8080, DNS on 5353;
/// sources from `SNAT`/`SNAT6` on ports 20000–29999 unless said; observe and recover on with
/// the defaults, error_limit 3 and syn_timeout 1 s, unless said):
/// - `web` 10.0.0.10: web-a/b/c = 10.1.0.1–3, fallback web-sorry .9, maintenance web-maint .8;
/// - `dns` UDP 10.0.0.10:53, idle 1 s: dns-a .5, dns-b .6;
/// - `web6` [fd00::10]: web6-a/b = fd00:1::1–2; `dns6` UDP [fd00::10]:53: dns6-a fd00:1::4;
/// - `far` 10.0.0.40: far-a 10.2.0.5 (behind the router); `far6` [fd00::40]: far6-a fd00:2::5;
/// - `local` 10.0.0.41: local-a 192.0.2.50 on the clients' link, from 192.0.2.1;
/// - `pooled` 10.0.0.50: pooled-a .4, from the pool 10.1.0.200–201;
/// - `tiny` 10.0.0.60: tiny-a .7, ports 30000–30001; `one` 10.0.0.61: one-a .10, port 30100;
///   `oneudp` UDP 10.0.0.61:53: oneudp-a .11, port 30200; `idleudp` UDP 10.0.0.62:53, idle
///   1 s: idleudp-a .19, port 30300;
/// - `lost` 10.0.0.70: lost-a 10.1.0.50 (no neighbour); `void` 10.0.0.71: void-a 172.16.0.1
///   (blackhole route);
/// - `strict` 10.0.0.80: observe and recover off (syn_timeout 50 ms): strict-a .12, strict-b .13;
/// - `solo` 10.0.0.81: solo-a .14 alone;
/// - `quick` 10.0.0.82: syn_timeout 50 ms, error_limit 2: quick-a/b/c .15–.17.
pub fn setup() -> Balancer {
    let dp = Datapath::load(&Options {
        max_services: 32,
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
    let nat = |spec: ServiceSpec, f: &dyn Fn(&mut NatSpec)| {
        let mut s = spec.nat();
        s.nat.port_lo = 20_000;
        s.nat.port_hi = 29_999;
        f(&mut s.nat);
        s
    };
    let none = |_: &mut NatSpec| {};
    let services = [
        nat(ServiceSpec::tcp("web", VIP.into(), 80), &none),
        nat(
            ServiceSpec {
                idle_timeout_s: 1,
                ..ServiceSpec::udp("dns", VIP.into(), 53)
            },
            &none,
        ),
        nat(ServiceSpec::tcp("web6", VIP6.into(), 80), &none),
        nat(ServiceSpec::udp("dns6", VIP6.into(), 53), &none),
        nat(ServiceSpec::tcp("far", vip(40), 80), &none),
        nat(
            ServiceSpec::tcp(
                "far6",
                Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0x40).into(),
                80,
            ),
            &none,
        ),
        nat(ServiceSpec::tcp("local", vip(41), 80), &none),
        nat(ServiceSpec::tcp("pooled", vip(50), 80), &|n| {
            n.pool = POOL.iter().map(|a| (*a).into()).collect()
        }),
        nat(ServiceSpec::tcp("tiny", vip(60), 80), &|n| {
            (n.port_lo, n.port_hi) = TINY_PORTS
        }),
        nat(ServiceSpec::tcp("one", vip(61), 80), &|n| {
            (n.port_lo, n.port_hi) = (ONE_PORT, ONE_PORT)
        }),
        nat(ServiceSpec::udp("oneudp", vip(61), 53), &|n| {
            (n.port_lo, n.port_hi) = (ONE_UDP_PORT, ONE_UDP_PORT)
        }),
        nat(
            ServiceSpec {
                idle_timeout_s: 1,
                ..ServiceSpec::udp("idleudp", vip(62), 53)
            },
            &|n| (n.port_lo, n.port_hi) = (IDLE_UDP_PORT, IDLE_UDP_PORT),
        ),
        nat(ServiceSpec::tcp("lost", vip(70), 80), &none),
        nat(ServiceSpec::tcp("void", vip(71), 80), &none),
        nat(ServiceSpec::tcp("strict", vip(80), 80), &|n| {
            n.observe = false;
            n.recover = false;
            n.syn_timeout_ms = 50;
        }),
        nat(ServiceSpec::tcp("solo", vip(81), 80), &none),
        nat(ServiceSpec::tcp("quick", vip(82), 80), &|n| {
            n.syn_timeout_ms = 50;
            n.error_limit = 2;
        }),
    ];
    for s in services {
        bal.add_service(s).unwrap();
    }
    let snat4: IpAddr = SNAT.into();
    let snat6: IpAddr = SNAT6.into();
    let backends: Vec<(&str, &str, IpAddr, u16, Role)> = vec![
        ("web", "web-a", be4(1), BE_PORT, Role::Pool),
        ("web", "web-b", be4(2), BE_PORT, Role::Pool),
        ("web", "web-c", be4(3), BE_PORT, Role::Pool),
        ("web", "web-sorry", be4(9), BE_PORT, Role::Fallback),
        ("web", "web-maint", be4(8), BE_PORT, Role::Maintenance),
        ("dns", "dns-a", be4(5), DNS_PORT, Role::Pool),
        ("dns", "dns-b", be4(6), DNS_PORT, Role::Pool),
        ("web6", "web6-a", be6(1), BE_PORT, Role::Pool),
        ("web6", "web6-b", be6(2), BE_PORT, Role::Pool),
        ("dns6", "dns6-a", be6(4), DNS_PORT, Role::Pool),
        (
            "far",
            "far-a",
            Ipv4Addr::new(10, 2, 0, 5).into(),
            BE_PORT,
            Role::Pool,
        ),
        (
            "far6",
            "far6-a",
            Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 5).into(),
            BE_PORT,
            Role::Pool,
        ),
        ("local", "local-a", LOCAL_BE.into(), BE_PORT, Role::Pool),
        ("pooled", "pooled-a", be4(4), BE_PORT, Role::Pool),
        ("tiny", "tiny-a", be4(7), BE_PORT, Role::Pool),
        ("one", "one-a", be4(10), BE_PORT, Role::Pool),
        ("oneudp", "oneudp-a", be4(11), DNS_PORT, Role::Pool),
        ("idleudp", "idleudp-a", be4(19), DNS_PORT, Role::Pool),
        ("lost", "lost-a", NO_NEIGH.into(), BE_PORT, Role::Pool),
        (
            "void",
            "void-a",
            Ipv4Addr::new(172, 16, 0, 1).into(),
            BE_PORT,
            Role::Pool,
        ),
        ("strict", "strict-a", be4(12), BE_PORT, Role::Pool),
        ("strict", "strict-b", be4(13), BE_PORT, Role::Pool),
        ("solo", "solo-a", be4(14), BE_PORT, Role::Pool),
        ("quick", "quick-a", be4(15), BE_PORT, Role::Pool),
        ("quick", "quick-b", be4(16), BE_PORT, Role::Pool),
        ("quick", "quick-c", be4(17), BE_PORT, Role::Pool),
    ];
    for (svc, name, addr, port, role) in backends {
        let snat = match addr {
            _ if addr == IpAddr::from(LOCAL_BE) => CLI_ADDR.into(),
            IpAddr::V4(_) => snat4,
            IpAddr::V6(_) => snat6,
        };
        bal.add_backend(
            svc,
            BackendSpec {
                role,
                port: Some(port),
                snat: Some(snat),
                // NAT needs no MAC: the FIB gives it.
                ..BackendSpec::new(name, addr, [0; 6])
            },
        )
        .unwrap();
    }
    bal
}

/// A NAT fixture table: the lab (entered by this thread) and a fresh datapath holding the
/// services of `setup`; `None` when `test` is skipped for want of root.
pub struct Nat {
    pub t: Table,
    pub lab: Lab,
    /// The case running, prefixed to its rows' descriptions.
    pub case: &'static str,
}

/// A named case of a module's fixtures.
pub type Case = (&'static str, fn(&mut Nat));

/// Runs `cases` in order on one NAT fixture table (`test` names the test for `privileged`),
/// then panics listing every row that failed.
pub fn run_cases(test: &str, cases: &[Case]) {
    let Some(mut n) = nat_table(test) else {
        return;
    };
    for (name, case) in cases {
        n.case = name;
        case(&mut n);
    }
    n.finish();
}

pub fn nat_table(test: &str) -> Option<Nat> {
    if !steer_tests::privileged(test) {
        return None;
    }
    let lab = Lab::new();
    Some(Nat {
        t: Table::new(setup()),
        lab,
        case: "",
    })
}

impl Nat {
    pub fn bal(&self) -> &Balancer {
        &self.t.bal
    }

    /// Runs a row whose frame comes from a client (in by `cli0`).
    pub fn client(&mut self, mut row: Row) {
        row.desc = format!("{}: {}", self.case, row.desc);
        let i = self.lab.cli;
        self.t.check_on(Some(i), row);
    }

    /// Runs a row whose frame comes from a backend (in by `be0`).
    pub fn backend(&mut self, mut row: Row) {
        row.desc = format!("{}: {}", self.case, row.desc);
        let i = self.lab.be;
        self.t.check_on(Some(i), row);
    }

    pub fn finish(self) {
        let Nat { t, lab, .. } = self;
        t.finish();
        drop(lab);
    }

    /// A backend's address and port.
    pub fn be_addr(&self, be: &str) -> (IpAddr, u16) {
        let s = self.bal().backend_spec(be).expect("known backend");
        (s.addr, s.port.expect("NAT backends have a port"))
    }

    /// The LB addresses flows of `svc` to `be` may leave from, and the service's port range.
    pub fn sources(&self, svc: &str, be: &str) -> (Vec<IpAddr>, u16, u16) {
        let s = self.bal().service_spec(svc).expect("known service");
        let addrs = if s.nat.pool.is_empty() {
            vec![self.bal().backend_spec(be).unwrap().snat.unwrap()]
        } else {
            s.nat.pool.clone()
        };
        (addrs, s.nat.port_lo, s.nat.port_hi)
    }

    /// A row: the client's `frame` to `svc` leaves for backend `be`, translated (destination
    /// the backend's address and port, source an LB address of the service and a port of its
    /// range, or exactly `port`), with the FIB's MACs, valid checksums, and the counters.
    pub fn to_backend(
        &self,
        desc: &str,
        svc: &str,
        be: &str,
        frame: Frame,
        new_flow: bool,
        port: Option<u16>,
    ) -> Row {
        let (dst, dport) = self.be_addr(be);
        let (srcs, lo, hi) = self.sources(svc, be);
        let (dmac, smac, action) = self.lab.next_hop(dst, self.lab.cli);
        let len = frame.bytes.len() as u64;
        let why = if action == XDP_TX {
            outcome::TX_FORWARD
        } else {
            outcome::REDIRECT_FORWARD
        };
        Row {
            desc: format!("{desc} (→ {be})"),
            input: frame,
            action,
            output: xlate(dmac, smac, Side::Source(srcs, lo, hi, port), dst, dport),
            deltas: vec![
                Delta::Outcome(why, 1),
                Delta::Backend(be.into(), Field::Packets, 1),
                Delta::Backend(be.into(), Field::Bytes, len),
                Delta::Backend(be.into(), Field::NewFlows, new_flow as u64),
                Delta::Service(svc.into(), Field::Packets, 1),
                Delta::Service(svc.into(), Field::Bytes, len),
                Delta::Service(svc.into(), Field::NewFlows, new_flow as u64),
            ],
        }
    }

    /// A row: the client's `frame` to `svc` leaves, translated, for one of `bes` (a choice the
    /// test does not predict, e.g. another backend than the one an attempt failed on).
    pub fn to_one_of(
        &self,
        desc: &str,
        svc: &str,
        bes: &[&str],
        frame: Frame,
        new_flow: bool,
    ) -> Row {
        let len = frame.bytes.len() as u64;
        let checks: Vec<(String, Expect)> = bes
            .iter()
            .map(|be| {
                let (dst, dport) = self.be_addr(be);
                let (srcs, lo, hi) = self.sources(svc, be);
                let (dmac, smac, _) = self.lab.next_hop(dst, self.lab.cli);
                (
                    be.to_string(),
                    xlate(dmac, smac, Side::Source(srcs, lo, hi, None), dst, dport),
                )
            })
            .collect();
        Row {
            desc: format!("{desc} (→ one of {bes:?})"),
            input: frame,
            action: XDP_REDIRECT,
            output: Expect::With(Box::new(move |input: &[u8], out: &[u8]| {
                let mut all = Vec::new();
                for (be, e) in &checks {
                    let Expect::With(f) = e else { unreachable!() };
                    let errs = f(input, out);
                    if errs.is_empty() {
                        return errs;
                    }
                    all.push(format!("not {be}: {}", errs.join(", ")));
                }
                all
            })),
            deltas: vec![
                Delta::Outcome(outcome::REDIRECT_FORWARD, 1),
                Delta::Service(svc.into(), Field::Packets, 1),
                Delta::Service(svc.into(), Field::Bytes, len),
                Delta::Service(svc.into(), Field::NewFlows, new_flow as u64),
            ],
        }
    }

    /// The datapath's notes to the daemon (`steer_common::Note`), taken once.
    pub fn notes(&mut self) -> aya::maps::RingBuf<aya::maps::MapData> {
        self.t
            .bal
            .datapath_mut()
            .take_notes()
            .expect("the notes were not taken before")
    }

    /// Consecutive failures passive health counts for backend `be`.
    pub fn fails(&self, be: &str) -> u64 {
        self.bal()
            .datapath()
            .observed()
            .fails(self.bal().backend_id(be).unwrap())
    }

    /// A row: a backend's `frame` (a reply) leaves for the client translated back: source
    /// `vip`:`vport`, destination `client`:`cport`.
    pub fn to_client(
        &self,
        desc: &str,
        frame: Frame,
        (vip, vport): (IpAddr, u16),
        (client, cport): (IpAddr, u16),
    ) -> Row {
        let (dmac, smac, action) = self.lab.next_hop(client, self.lab.be);
        let why = if action == XDP_TX {
            outcome::TX_REPLY
        } else {
            outcome::REDIRECT_REPLY
        };
        Row {
            desc: desc.into(),
            input: frame,
            action,
            output: xlate(dmac, smac, Side::Exact(vip, vport), client, cport),
            deltas: vec![Delta::Outcome(why, 1)],
        }
    }

    /// The flow entry of a client's 5-tuple.
    pub fn flow(&self, k: &FlowKey) -> Flow {
        self.bal()
            .datapath()
            .flow(k)
            .unwrap()
            .expect("the connection table holds the flow")
    }

    /// The backend (name) and LB source port of a client's flow.
    pub fn nat_of(&self, k: &FlowKey) -> (String, u16) {
        let f = self.flow(k);
        (
            self.bal().backend_name(f.backend).unwrap_or_default(),
            u16::from_be(f.nat_port_be),
        )
    }

    /// The reverse key of a flow of `svc` on `be` from LB source `src`:`port`.
    pub fn rev_key(&self, be: &str, src: IpAddr, port: u16, proto: u8) -> FlowKey {
        let (addr, bport) = self.be_addr(be);
        key(addr, bport, src, port, proto)
    }

    pub fn reverse(&self, k: &FlowKey) -> Option<NatRev> {
        self.bal().datapath().nat_reverse(k).unwrap()
    }

    /// A TCP segment from backend `be` to LB source `src`:`port` (in by `be0`).
    pub fn backend_seg(
        &self,
        be: &str,
        src: IpAddr,
        port: u16,
        flags: TcpFlags,
        data: &[u8],
    ) -> Frame {
        let (addr, bport) = self.be_addr(be);
        let smac = self.lab.next_hop(addr, self.lab.cli).0;
        tcp_frame(smac, BE_SIDE_MAC, (addr, bport), (src, port), flags, data)
    }

    /// A UDP datagram from backend `be` to LB source `src`:`port`.
    pub fn backend_udp(&self, be: &str, src: IpAddr, port: u16, data: &[u8]) -> Frame {
        let (addr, bport) = self.be_addr(be);
        let smac = self.lab.next_hop(addr, self.lab.cli).0;
        udp_frame(smac, BE_SIDE_MAC, (addr, bport), (src, port), data)
    }

    /// Establishes a TCP flow of `svc` from `client`:`cport` on backend `be` (SYN, the
    /// backend's SYN-ACK, ACK), as rows; returns its LB source port.
    pub fn establish(&mut self, svc: &str, be: &str, client: IpAddr, cport: u16) -> u16 {
        let s = self.bal().service_spec(svc).unwrap();
        let vip = s.vip;
        let row = self.to_backend(
            "set-up: SYN",
            svc,
            be,
            from_client(client, cport, vip, syn(), &[]),
            true,
            None,
        );
        self.client(row);
        let (got, port) = self.nat_of(&key(client, cport, vip, 80, TCP));
        assert_eq!(got, be, "set-up: the SYN went to {be}");
        let src = self.flow_source(svc, &key(client, cport, vip, 80, TCP));
        let row = self.to_client(
            "set-up: SYN-ACK",
            self.backend_seg(be, src, port, syn_ack(1001), &[]),
            (vip, 80),
            (client, cport),
        );
        self.backend(row);
        let row = self.to_backend(
            "set-up: ACK",
            svc,
            be,
            from_client(client, cport, vip, ack(1), &[]),
            false,
            Some(port),
        );
        self.client(row);
        port
    }

    /// The LB address a flow of `svc` leaves from.
    pub fn flow_source(&self, svc: &str, k: &FlowKey) -> IpAddr {
        let f = self.flow(k);
        let s = self.bal().service_spec(svc).unwrap();
        if f.nat_addr == steer_common::NAT_ADDR_BACKEND {
            let be = self.bal().backend_name(f.backend).unwrap();
            self.bal().backend_spec(&be).unwrap().snat.unwrap()
        } else {
            s.nat.slots()[f.nat_addr as usize]
        }
    }

    /// The backend Maglev gives the flow from `client`:`cport` to `svc`.
    pub fn choice(&self, svc: &str, client: IpAddr, cport: u16) -> String {
        let s = self.bal().service_spec(svc).unwrap();
        crate::common::maglev_choice(
            self.bal(),
            svc,
            &key(client, cport, s.vip, s.port, s.proto.number()),
        )
    }

    /// A client port whose flow from `client` to `svc` Maglev gives `be`.
    pub fn port_to(&self, svc: &str, client: IpAddr, be: &str, from: u16) -> u16 {
        let s = self.bal().service_spec(svc).unwrap();
        let proto = s.proto.number();
        (from..from + 4000)
            .find(|p| {
                crate::common::maglev_choice(
                    self.bal(),
                    svc,
                    &key(client, *p, s.vip, s.port, proto),
                ) == be
            })
            .unwrap_or_else(|| panic!("no port in {from}.. maps {svc} to {be}"))
    }
}

/// What the translated source (or destination) must be.
pub enum Side {
    /// One of these addresses and a port in `lo..=hi` (exactly the last field if given).
    Source(Vec<IpAddr>, u16, u16, Option<u16>),
    /// Exactly this address and port.
    Exact(IpAddr, u16),
}

/// The output must be the input with MACs `dmac`/`smac`, source per `src`, destination
/// `dst`:`dport`, and checksums as etherparse computes them (an IPv4 UDP checksum of 0 stays
/// 0); etherparse must also find the output's own checksums valid.
pub fn xlate(dmac: [u8; 6], smac: [u8; 6], src: Side, dst: IpAddr, dport: u16) -> Expect {
    Expect::With(Box::new(move |input: &[u8], out: &[u8]| {
        let mut errs: Vec<String> = checksum_errors(out)
            .into_iter()
            .map(|e| format!("output: {e}"))
            .collect();
        let Some((osrc, osport)) = addrs_ports(out).map(|(s, sp, _, _)| (s, sp)) else {
            errs.push("output is not TCP or UDP over IP".into());
            return errs;
        };
        let (s, sport) = match &src {
            Side::Exact(a, p) => (*a, *p),
            Side::Source(addrs, lo, hi, exact) => {
                if !addrs.contains(&osrc) {
                    errs.push(format!("source address {osrc}, expected one of {addrs:?}"));
                }
                if !(*lo..=*hi).contains(&osport) {
                    errs.push(format!("source port {osport} outside {lo}..={hi}"));
                }
                if let Some(p) = exact {
                    if *p != osport {
                        errs.push(format!("source port {osport}, expected the flow's {p}"));
                    }
                }
                (osrc, osport)
            }
        };
        let want = rewritten(input, dmac, smac, (s, sport), (dst, dport));
        if out != want.as_slice() {
            errs.push(format!("frame: {}", diff(&want, out)));
        }
        errs
    }))
}

fn diff(want: &[u8], got: &[u8]) -> String {
    if want.len() != got.len() {
        return format!("length {} (expected {})", got.len(), want.len());
    }
    let first = want.iter().zip(got).position(|(a, b)| a != b).unwrap_or(0);
    format!(
        "first difference at byte {first}: {:02x?} (expected {:02x?})",
        &got[first..(first + 8).min(got.len())],
        &want[first..(first + 8).min(want.len())]
    )
}

/// Source and destination addresses and ports of a TCP or UDP frame.
pub fn addrs_ports(frame: &[u8]) -> Option<(IpAddr, u16, IpAddr, u16)> {
    let h = PacketHeaders::from_ethernet_slice(frame).ok()?;
    let (s, d): (IpAddr, IpAddr) = match h.net? {
        NetHeaders::Ipv4(ip, _) => (ip.source.into(), ip.destination.into()),
        NetHeaders::Ipv6(ip, _) => (ip.source.into(), ip.destination.into()),
    };
    let (sp, dp) = match h.transport? {
        TransportHeader::Tcp(t) => (t.source_port, t.destination_port),
        TransportHeader::Udp(u) => (u.source_port, u.destination_port),
        _ => return None,
    };
    Some((s, sp, d, dp))
}

/// `input` (untagged Ethernet, IPv4 without options or IPv6 without extension headers, TCP
/// or UDP) with new MACs, addresses and ports, and its checksums computed by etherparse.
pub fn rewritten(
    input: &[u8],
    dmac: [u8; 6],
    smac: [u8; 6],
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
) -> Vec<u8> {
    let mut b = input.to_vec();
    b[0..6].copy_from_slice(&dmac);
    b[6..12].copy_from_slice(&smac);
    let l4 = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            b[26..30].copy_from_slice(&s.octets());
            b[30..34].copy_from_slice(&d.octets());
            14 + (b[14] & 0x0f) as usize * 4
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            b[22..38].copy_from_slice(&s.octets());
            b[38..54].copy_from_slice(&d.octets());
            54
        }
        _ => panic!("mixed families"),
    };
    b[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
    b[l4 + 2..l4 + 4].copy_from_slice(&dport.to_be_bytes());
    fix_checksums(&mut b);
    b
}

/// Writes the checksums etherparse computes into a frame (keeping an IPv4 UDP checksum of 0).
fn fix_checksums(b: &mut [u8]) {
    let h = PacketHeaders::from_ethernet_slice(b).expect("etherparse parses the frame");
    let payload = h.payload.slice().to_vec();
    let (ip_csum, l4_off, v4_ip) = match &h.net {
        Some(NetHeaders::Ipv4(ip, _)) => (
            Some(ip.calc_header_checksum()),
            14 + ip.header_len(),
            Some(ip.clone()),
        ),
        Some(NetHeaders::Ipv6(_, _)) => (None, 54, None),
        None => panic!("not IP"),
    };
    let v6_ip = match &h.net {
        Some(NetHeaders::Ipv6(ip, _)) => Some(ip.clone()),
        _ => None,
    };
    let (l4_csum, at) = match &h.transport {
        Some(TransportHeader::Tcp(t)) => (
            Some(match (&v4_ip, &v6_ip) {
                (Some(ip), _) => t.calc_checksum_ipv4(ip, &payload).unwrap(),
                (_, Some(ip)) => t.calc_checksum_ipv6(ip, &payload).unwrap(),
                _ => unreachable!(),
            }),
            l4_off + 16,
        ),
        Some(TransportHeader::Udp(u)) => (
            match (&v4_ip, &v6_ip) {
                (Some(_), _) if u.checksum == 0 => None,
                (Some(ip), _) => Some(u.calc_checksum_ipv4(ip, &payload).unwrap()),
                (_, Some(ip)) => Some(u.calc_checksum_ipv6(ip, &payload).unwrap()),
                _ => unreachable!(),
            },
            l4_off + 6,
        ),
        _ => panic!("not TCP or UDP"),
    };
    if let Some(c) = ip_csum {
        b[24..26].copy_from_slice(&c.to_be_bytes());
    }
    if let Some(c) = l4_csum {
        b[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
}

/// A TCP segment (sequence number 1000, window 64240, as the fixture's client frames).
pub fn tcp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    flags: TcpFlags,
    data: &[u8],
) -> Frame {
    tcp_frame_seq(smac, dmac, (src, sport), (dst, dport), flags, 1000, data)
}

pub fn tcp_frame_seq(
    smac: [u8; 6],
    dmac: [u8; 6],
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    flags: TcpFlags,
    seq: u32,
    data: &[u8],
) -> Frame {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let mut b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .tcp(sport, dport, seq, 64240),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .tcp(sport, dport, seq, 64240),
        _ => panic!("mixed families"),
    };
    if flags.syn {
        b = b.syn();
    }
    if let Some(n) = flags.ack {
        b = b.ack(n);
    }
    if flags.fin {
        b = b.fin();
    }
    if flags.rst {
        b = b.rst();
    }
    if flags.psh {
        b = b.psh();
    }
    let mut bytes = Vec::new();
    b.write(&mut bytes, data).expect("build frame");
    Frame { bytes }
}

pub fn udp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    (src, sport): (IpAddr, u16),
    (dst, dport): (IpAddr, u16),
    data: &[u8],
) -> Frame {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64).udp(sport, dport),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64).udp(sport, dport),
        _ => panic!("mixed families"),
    };
    let mut bytes = Vec::new();
    b.write(&mut bytes, data).expect("build frame");
    Frame { bytes }
}

pub fn flags() -> TcpFlags {
    TcpFlags::default()
}
pub fn syn() -> TcpFlags {
    TcpFlags {
        syn: true,
        ..flags()
    }
}
pub fn syn_ack(n: u32) -> TcpFlags {
    TcpFlags {
        syn: true,
        ack: Some(n),
        ..flags()
    }
}
pub fn ack(n: u32) -> TcpFlags {
    TcpFlags {
        ack: Some(n),
        ..flags()
    }
}
pub fn rst_ack(n: u32) -> TcpFlags {
    TcpFlags {
        rst: true,
        ack: Some(n),
        ..flags()
    }
}
pub fn rst() -> TcpFlags {
    TcpFlags {
        rst: true,
        ..flags()
    }
}
pub fn fin_ack(n: u32) -> TcpFlags {
    TcpFlags {
        fin: true,
        ack: Some(n),
        ..flags()
    }
}

/// A client's TCP segment (in by `cli0`, from `CLIENT_MAC` or `CLIENT2_MAC`).
pub fn from_client(client: IpAddr, cport: u16, vip: IpAddr, f: TcpFlags, data: &[u8]) -> Frame {
    let smac = if client == IpAddr::from(CLIENT2) {
        CLIENT2_MAC
    } else {
        CLIENT_MAC
    };
    tcp_frame(smac, LB_MAC, (client, cport), (vip, 80), f, data)
}

/// The RST steer builds in answer to `frame` (a TCP segment without RST): MACs and addresses
/// swapped; seq = its ACK number if it has one, else RST|ACK acknowledging it.
pub fn rst_answer(frame: &Frame) -> Frame {
    let h = PacketHeaders::from_ethernet_slice(&frame.bytes).unwrap();
    let (Some(etherparse::LinkHeader::Ethernet2(eth)), Some(TransportHeader::Tcp(t))) =
        (&h.link, &h.transport)
    else {
        panic!("not a TCP frame")
    };
    let (s, _, d, _) = addrs_ports(&frame.bytes).unwrap();
    let len = h.payload.slice().len() as u32 + t.syn as u32 + t.fin as u32;
    let (seq, f) = if t.ack {
        (
            t.acknowledgment_number,
            TcpFlags {
                rst: true,
                ..flags()
            },
        )
    } else {
        (0, rst_ack(t.sequence_number.wrapping_add(len)))
    };
    let mut out = tcp_frame_seq(
        eth.destination,
        eth.source,
        (d, t.destination_port),
        (s, t.source_port),
        f,
        seq,
        &[],
    );
    // steer's RSTs: window 0, IPv4 DF with id 0 (as `common::rst_frame` builds them).
    let bytes = &mut out.bytes;
    let l4 = if s.is_ipv4() {
        bytes[20] = 0x40;
        14 + 20
    } else {
        54
    };
    bytes[l4 + 14..l4 + 16].copy_from_slice(&[0, 0]);
    fix_checksums(bytes);
    out
}

pub fn rst_row(desc: &str, frame: Frame, deltas: Vec<Delta>) -> Row {
    let answer = rst_answer(&frame);
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

pub fn dropped(desc: &str, frame: Frame, why: u32, more: Vec<Delta>) -> Row {
    let mut deltas = vec![Delta::Outcome(why, 1)];
    deltas.extend(more);
    Row {
        desc: desc.into(),
        input: frame,
        action: XDP_DROP,
        output: Expect::Any,
        deltas,
    }
}

pub fn passed(desc: &str, frame: Frame) -> Row {
    Row {
        desc: desc.into(),
        input: frame,
        action: XDP_PASS,
        output: Expect::Unchanged,
        deltas: vec![Delta::Outcome(outcome::PASS_NOT_SERVICE, 1)],
    }
}

pub const TCP: u8 = PROTO_TCP;
pub const UDP: u8 = PROTO_UDP;
