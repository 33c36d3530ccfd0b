//! Property test of the whole datapath over `BPF_PROG_TEST_RUN`: at least 100,000 frames per
//! run — random bytes of every length, valid frames (tagged, with IPv4 options, with IPv6
//! extension chains, any TCP flags), mutations of them (bits flipped, cut at every offset,
//! every IHL, fragment bits, lengths rewritten) — to the services of `common::setup`, with
//! flows pinned to backends that are rejected and made ready again as the run goes on.
//!
//! Whatever the frame, the program must never return `XDP_ABORTED`; a passed frame must be
//! untouched; a frame sent back out (`XDP_TX`) must be either the input forwarded by DSR —
//! only the MACs changed, to a backend of the service the frame is addressed to that is not
//! rejected — or a valid RST answering it (checksums, addresses and ports swapped, sequence
//! numbers per RFC 9293, VLAN tags kept); and the outcome counters must account for every
//! frame, each under the class of action it got.
//!
//! Seeded: `STEER_FUZZ_SEED` (decimal or 0x-hex) replays a run, else the clock picks the seed;
//! it is printed at the start and in every failure. `STEER_FUZZ_FRAMES` changes the number of
//! frames, `STEER_FUZZ_BATCH` how many run between two reads of the counters (1 pins a counter
//! mismatch to its frame).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Instant, SystemTime},
};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TransportSlice, VlanSlice};
use steer_common::{outcome, PROTO_TCP, PROTO_UDP};
use steer_ctl::{AdminState, Balancer, Proto};
use steer_tests::fixture::{
    action_name, l3_offset, run_frame, tcp4, tcp6, Ext, Frame, Ran, CLIENT_MAC, ETH_P_8021AD,
    ETH_P_8021Q, IPV6_DEST_OPTS, IPV6_FRAGMENT, IPV6_HOP_BY_HOP, IPV6_ROUTING, LB_MAC, XDP_DROP,
    XDP_PASS, XDP_TX,
};

use crate::common::{
    key, maglev_choice, table, CLIENT, CLIENT6, EMPTY_VIP, EMPTY_VIP6, QUIET_VIP, VIP, VIP6,
};

const FRAMES: usize = 100_000;
const BATCH: usize = 100;
/// Frames between two changes of the pool.
const POOL_CHANGE_EVERY: usize = 1_000;
/// Longest frame an untagged Ethernet link carries (without FCS).
const ETH_MAX: usize = 1514;

/// splitmix64: small, fast, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }
    /// True `pct` times in a hundred.
    fn pct(&mut self, pct: usize) -> bool {
        self.below(100) < pct
    }
    fn u8(&mut self) -> u8 {
        self.next() as u8
    }
    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
    fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut b = Vec::with_capacity(n + 8);
        while b.len() < n {
            b.extend_from_slice(&self.next().to_le_bytes());
        }
        b.truncate(n);
        b
    }
    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }
}

fn seed() -> u64 {
    match std::env::var("STEER_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("STEER_FUZZ_SEED={s:?}: expected a u64"))
        }
        Err(_) => SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?}: expected a number"))
        })
        .unwrap_or(default)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---------------------------------------------------------------------------------------------
// What a frame says, read here independently of the datapath: the headers the datapath must
// understand (up to 2 VLAN tags; IPv4 with options; IPv6 with up to 4 hop-by-hop, routing with
// no segments left, or destination options headers), and the TCP or UDP ports.

/// A TCP segment's fields an answering RST depends on.
#[derive(Debug)]
struct Seg {
    flags: u8,
    seq: u32,
    ack: u32,
    /// Payload length from the IP length fields and the data offset.
    payload: u32,
}

#[derive(Debug)]
struct View {
    l3_off: usize,
    l4_off: usize,
    v4: bool,
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    dport: u16,
    sport: u16,
    tcp: Option<Seg>,
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(i..i + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], i: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(i..i + 4)?.try_into().ok()?))
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

/// The packet as the datapath should see it, if it is a well-formed IPv4 or IPv6 packet it
/// can read the ports of.
fn view(b: &[u8]) -> Option<View> {
    let mut et_at = 12;
    let mut et = be16(b, et_at)?;
    for _ in 0..2 {
        if et != ETH_P_8021Q && et != ETH_P_8021AD {
            break;
        }
        et_at += 4;
        et = be16(b, et_at)?;
    }
    let l3 = et_at + 2;
    let (v4, src, dst, proto, l4, l4_bytes) = match et {
        0x0800 => {
            let h = b.get(l3..l3 + 20)?;
            let ihl = (h[0] & 0x0f) as usize * 4;
            let total = be16(h, 2)? as usize;
            if h[0] >> 4 != 4 || ihl < 20 || total < ihl {
                return None;
            }
            if be16(h, 6)? & 0x3fff != 0 {
                return None; // a fragment
            }
            let src: [u8; 4] = h[12..16].try_into().unwrap();
            let dst: [u8; 4] = h[16..20].try_into().unwrap();
            (
                true,
                IpAddr::from(src),
                IpAddr::from(dst),
                h[9],
                l3 + ihl,
                total - ihl,
            )
        }
        0x86dd => {
            let h = b.get(l3..l3 + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            let payload = be16(h, 4)? as usize;
            let mut next = h[6];
            let mut at = l3 + 40;
            for i in 0..=4 {
                match next {
                    IPV6_HOP_BY_HOP if i == 0 => {}
                    IPV6_DEST_OPTS | IPV6_ROUTING => {}
                    IPV6_HOP_BY_HOP | IPV6_FRAGMENT => return None,
                    _ => break,
                }
                if i == 4 {
                    return None; // longer than the datapath walks
                }
                let x = b.get(at..at + 8)?;
                if next == IPV6_ROUTING && x[3] != 0 {
                    return None; // not for us yet
                }
                next = x[0];
                at += (x[1] as usize + 1) * 8;
            }
            let ext = at - (l3 + 40);
            if ext > payload {
                return None;
            }
            let src: [u8; 16] = h[8..24].try_into().unwrap();
            let dst: [u8; 16] = h[24..40].try_into().unwrap();
            (
                false,
                IpAddr::from(src),
                IpAddr::from(dst),
                next,
                at,
                payload - ext,
            )
        }
        _ => return None,
    };
    let mut v = View {
        l3_off: l3,
        l4_off: l4,
        v4,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        tcp: None,
    };
    match proto {
        PROTO_TCP => {
            let t = b.get(l4..l4 + 20)?;
            let doff = (t[12] >> 4) as usize * 4;
            if doff < 20 || doff > l4_bytes {
                return None;
            }
            v.sport = be16(t, 0)?;
            v.dport = be16(t, 2)?;
            v.tcp = Some(Seg {
                flags: t[13],
                seq: be32(t, 4)?,
                ack: be32(t, 8)?,
                payload: (l4_bytes - doff) as u32,
            });
        }
        PROTO_UDP => {
            let u = b.get(l4..l4 + 8)?;
            v.sport = be16(u, 0)?;
            v.dport = be16(u, 2)?;
        }
        _ => {}
    }
    Some(v)
}

// ---------------------------------------------------------------------------------------------
// The configuration the checks hold the datapath to.

struct Model {
    /// (VIP, port, protocol) → MACs of the service's backends that may receive its packets
    /// (any but rejected ones).
    services: HashMap<(IpAddr, u16, u8), Vec<[u8; 6]>>,
}

impl Model {
    fn of(bal: &Balancer) -> Model {
        let backends = bal.backend_infos();
        let services = bal
            .service_infos()
            .into_iter()
            .map(|s| {
                let proto = match s.proto {
                    Proto::Tcp => PROTO_TCP,
                    Proto::Udp => PROTO_UDP,
                };
                let macs = backends
                    .iter()
                    .filter(|b| b.service == s.name && b.admin != AdminState::Reject)
                    .map(|b| b.mac)
                    .collect();
                ((s.vip, s.port, proto), macs)
            })
            .collect();
        Model { services }
    }

    fn service(&self, v: &View) -> Option<&Vec<[u8; 6]>> {
        self.services.get(&(v.dst, v.dport, v.proto))
    }
}

// ---------------------------------------------------------------------------------------------
// Checks of what the program sent back out.

enum Tx {
    Forward(Shape),
    Rst(Shape),
}

/// What was unusual about a packet sent back out, to show that the run reached those paths.
#[derive(Clone, Copy, Default)]
struct Shape {
    tagged: bool,
    /// IPv4 options or IPv6 extension headers.
    long_ip: bool,
    jumbo: bool,
}

impl Shape {
    fn of(v: &View, len: usize) -> Shape {
        Shape {
            tagged: v.l3_off > 14,
            long_ip: v.l4_off - v.l3_off > if v.v4 { 20 } else { 40 },
            jumbo: len > ETH_MAX,
        }
    }
}

/// How many packets of each shape got an action.
#[derive(Clone, Copy, Default)]
struct Shapes {
    all: u64,
    tagged: u64,
    long_ip: u64,
    jumbo: u64,
}

impl Shapes {
    fn add(&mut self, s: Shape) {
        self.all += 1;
        self.tagged += s.tagged as u64;
        self.long_ip += s.long_ip as u64;
        self.jumbo += s.jumbo as u64;
    }
}

impl std::fmt::Display for Shapes {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "{} ({} tagged, {} with IPv4 options or IPv6 extension headers, {} longer than \
             {ETH_MAX} bytes)",
            self.all, self.tagged, self.long_ip, self.jumbo
        )
    }
}

fn check_tx(m: &Model, input: &[u8], out: &[u8]) -> Result<Tx, String> {
    if out.len() == input.len() && out.get(12..) == input.get(12..) {
        check_dsr(m, input, out).map(Tx::Forward)
    } else {
        check_rst(m, input, out).map(Tx::Rst)
    }
}

fn check_dsr(m: &Model, input: &[u8], out: &[u8]) -> Result<Shape, String> {
    let v = view(input).ok_or("forwarded a frame that is not a well-formed TCP/UDP packet")?;
    let macs = m
        .service(&v)
        .ok_or_else(|| format!("forwarded a packet to {}:{} (no service)", v.dst, v.dport))?;
    let dst: [u8; 6] = out[0..6].try_into().unwrap();
    if !macs.contains(&dst) {
        return Err(format!(
            "forwarded to MAC {} (not a backend of the service, or a rejected one)",
            hex(&dst)
        ));
    }
    if out[6..12] != input[0..6] {
        return Err(format!(
            "forwarded with source MAC {} (expected the input's destination {})",
            hex(&out[6..12]),
            hex(&input[0..6])
        ));
    }
    Ok(Shape::of(&v, input.len()))
}

fn check_rst(m: &Model, input: &[u8], out: &[u8]) -> Result<Shape, String> {
    let v = view(input).ok_or("answered a frame that is not a well-formed TCP packet")?;
    let seg = v.tcp.as_ref().ok_or("answered a packet that is not TCP")?;
    if seg.flags & TCP_RST != 0 {
        return Err("answered a RST".into());
    }
    if m.service(&v).is_none() {
        return Err(format!(
            "answered a packet to {}:{} (no service)",
            v.dst, v.dport
        ));
    }
    let ip_len = if v.v4 { 20 } else { 40 };
    if out.len() != v.l3_off + ip_len + 20 {
        return Err(format!(
            "a RST of {} bytes (expected {})",
            out.len(),
            v.l3_off + ip_len + 20
        ));
    }
    if out[0..6] != input[6..12] || out[6..12] != input[0..6] {
        return Err("a RST whose MACs are not the input's swapped".into());
    }
    if out[12..v.l3_off] != input[12..v.l3_off] {
        return Err("a RST whose VLAN tags or EtherType differ from the input's".into());
    }
    let p = SlicedPacket::from_ethernet(out).map_err(|e| format!("RST unreadable: {e}"))?;
    let tags = match &p.vlan {
        None => 0,
        Some(VlanSlice::SingleVlan(_)) => 1,
        Some(VlanSlice::DoubleVlan(_)) => 2,
    };
    if tags != (v.l3_off - 14) / 4 {
        return Err(format!("a RST with {tags} VLAN tags"));
    }
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        return Err("a RST without a TCP header".into());
    };
    let tcp_sum = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            if h.ihl() != 5 || h.total_len() != 40 || h.protocol().0 != PROTO_TCP {
                return Err("a RST whose IPv4 header is not bare TCP".into());
            }
            if h.is_fragmenting_payload() {
                return Err("a RST that is a fragment".into());
            }
            if h.header_checksum() != h.to_header().calc_header_checksum() {
                return Err("a RST with a bad IPv4 header checksum".into());
            }
            if IpAddr::from(h.source()) != v.dst || IpAddr::from(h.destination()) != v.src {
                return Err("a RST whose addresses are not the input's swapped".into());
            }
            tcp.calc_checksum_ipv4(h.source(), h.destination())
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            if h.payload_length() != 20 || h.next_header().0 != PROTO_TCP {
                return Err("a RST whose IPv6 header is not bare TCP".into());
            }
            if IpAddr::from(h.source()) != v.dst || IpAddr::from(h.destination()) != v.src {
                return Err("a RST whose addresses are not the input's swapped".into());
            }
            tcp.calc_checksum_ipv6(h.source(), h.destination())
        }
        None => return Err("a RST without an IP header".into()),
    };
    if tcp_sum.ok() != Some(tcp.checksum()) {
        return Err("a RST with a bad TCP checksum".into());
    }
    if tcp.source_port() != v.dport || tcp.destination_port() != v.sport {
        return Err("a RST whose ports are not the input's swapped".into());
    }
    if !tcp.rst() || tcp.syn() || tcp.fin() || tcp.psh() || tcp.urg() || tcp.data_offset() != 5 {
        return Err("a RST whose flags or data offset are wrong".into());
    }
    // RFC 9293 §3.10.7.1: answer an ACK with its acknowledgment number; else acknowledge
    // everything the segment occupied.
    if seg.flags & TCP_ACK != 0 {
        if tcp.ack() || tcp.sequence_number() != seg.ack {
            return Err(format!(
                "a RST answering an ACK has seq {} ack flag {} (expected seq {}, no ACK)",
                tcp.sequence_number(),
                tcp.ack(),
                seg.ack
            ));
        }
    } else {
        let len =
            seg.payload + (seg.flags & TCP_SYN != 0) as u32 + (seg.flags & TCP_FIN != 0) as u32;
        let want = seg.seq.wrapping_add(len);
        if !tcp.ack() || tcp.acknowledgment_number() != want || tcp.sequence_number() != 0 {
            return Err(format!(
                "a RST|ACK acknowledging {} (expected {want}, seq 0)",
                tcp.acknowledgment_number()
            ));
        }
    }
    Ok(Shape::of(&v, input.len()))
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// Where frames go, and the client ports pinned to backends that get rejected.
struct Targets {
    pinned4: Vec<u16>,
    pinned6: Vec<u16>,
}

/// A TCP header with random flags, sequence numbers and window (mostly the usual flags).
fn tcp_header(r: &mut Rng, sport: u16, dport: u16) -> TcpHeader {
    let mut h = TcpHeader::new(sport, dport, r.u32(), r.u16());
    let flags = if r.pct(70) {
        r.pick(&[
            TCP_SYN,
            TCP_SYN,
            TCP_ACK,
            TCP_ACK | 0x08,
            TCP_ACK | TCP_FIN,
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_SYN | TCP_ACK,
            TCP_SYN | TCP_FIN,
            0,
        ])
    } else {
        r.u8()
    };
    h.fin = flags & 0x01 != 0;
    h.syn = flags & 0x02 != 0;
    h.rst = flags & 0x04 != 0;
    h.psh = flags & 0x08 != 0;
    h.ack = flags & 0x10 != 0;
    h.urg = flags & 0x20 != 0;
    h.ece = flags & 0x40 != 0;
    h.cwr = flags & 0x80 != 0;
    h.ns = r.pct(5);
    if h.ack {
        h.acknowledgment_number = r.u32();
    }
    h
}

/// A valid frame, decorated at random: VLAN tags, IPv4 options, IPv6 extension headers.
fn valid(r: &mut Rng, t: &Targets, max_len: usize) -> Vec<u8> {
    let v6 = r.pct(40);
    // A quarter go to the flows pinned to the backends that get rejected.
    let pinned = r.pct(25);
    let udp = !pinned && r.pct(15);
    let (src, dst, dport): (IpAddr, IpAddr, u16) = if pinned {
        match v6 {
            true => (CLIENT6.into(), VIP6.into(), 80),
            false => (CLIENT.into(), VIP.into(), 80),
        }
    } else if v6 {
        let dst = match r.below(10) {
            0..=6 => VIP6,
            7 | 8 => EMPTY_VIP6,
            _ => Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, r.u16()),
        };
        let src = if r.pct(80) {
            CLIENT6
        } else {
            Ipv6Addr::from(r.next() as u128 | (r.next() as u128) << 64)
        };
        (src.into(), dst.into(), r.pick(&[80, 80, 80, 53, 53, 8080]))
    } else {
        let dst = match r.below(12) {
            0..=6 => VIP,
            7 | 8 => EMPTY_VIP,
            9 => QUIET_VIP,
            _ => Ipv4Addr::from(r.u32()),
        };
        let src = if r.pct(80) {
            CLIENT
        } else {
            Ipv4Addr::from(r.u32())
        };
        (src.into(), dst.into(), r.pick(&[80, 80, 80, 53, 53, 8080]))
    };
    let sport = match (pinned, v6) {
        (true, false) => r.pick(&t.pinned4),
        (true, true) => r.pick(&t.pinned6),
        _ => r.range(1024, 1100) as u16,
    };
    // Room for the largest headers: 3 tags, IPv6 with 6 extension headers of 32 bytes, TCP.
    // IP's length fields cap a packet at 64 KiB.
    let room = |len: usize| len.saturating_sub(14 + 12 + 40 + 6 * 32 + 20).min(65_000);
    let payload_len = match r.below(100) {
        0 => room(max_len),
        1..=5 => room(ETH_MAX),
        6..=25 => r.below(1400),
        _ => r.below(40),
    };
    let payload = r.bytes(payload_len);
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    let mut bytes = Vec::new();
    let ttl = 64;
    match (src, dst, udp) {
        (IpAddr::V4(s), IpAddr::V4(d), true) => eth
            .ipv4(s.octets(), d.octets(), ttl)
            .udp(sport, dport)
            .write(&mut bytes, &payload),
        (IpAddr::V4(s), IpAddr::V4(d), false) => eth
            .ipv4(s.octets(), d.octets(), ttl)
            .tcp_header(tcp_header(r, sport, dport))
            .write(&mut bytes, &payload),
        (IpAddr::V6(s), IpAddr::V6(d), true) => eth
            .ipv6(s.octets(), d.octets(), ttl)
            .udp(sport, dport)
            .write(&mut bytes, &payload),
        (IpAddr::V6(s), IpAddr::V6(d), false) => eth
            .ipv6(s.octets(), d.octets(), ttl)
            .tcp_header(tcp_header(r, sport, dport))
            .write(&mut bytes, &payload),
        _ => unreachable!(),
    }
    .expect("build a frame");
    let mut f = Frame { bytes };
    if !v6 && r.pct(30) {
        let words = r.range(1, 10);
        let opts = if r.pct(50) {
            vec![1u8; words * 4] // NOPs
        } else {
            r.bytes(words * 4)
        };
        f = f.ipv4_options(&opts);
    }
    if v6 && r.pct(40) {
        let n = r.pick(&[1, 1, 2, 2, 3, 4, 5, 6]);
        let exts: Vec<Ext> = (0..n)
            .map(|i| {
                let kind = match r.below(10) {
                    0..=3 if i == 0 => IPV6_HOP_BY_HOP,
                    0..=4 => IPV6_DEST_OPTS,
                    5..=7 => IPV6_ROUTING,
                    8 => IPV6_FRAGMENT,
                    _ => r.pick(&[IPV6_HOP_BY_HOP, IPV6_DEST_OPTS]),
                };
                Ext {
                    kind,
                    len8: if kind == IPV6_FRAGMENT {
                        0
                    } else {
                        r.pick(&[0, 0, 0, 1, 2, 3])
                    },
                    segments_left: if r.pct(15) { 1 } else { 0 },
                }
            })
            .collect();
        f = f.ipv6_ext(&exts);
    }
    f = tag(r, f);
    f.bytes.truncate(max_len);
    f.bytes
}

/// Adds 0 to 3 VLAN tags.
fn tag(r: &mut Rng, mut f: Frame) -> Frame {
    let n = match r.below(20) {
        0..=5 => 1,
        6..=8 => 2,
        9 => 3,
        _ => 0,
    };
    for i in 0..n {
        let tpid = if i == 0 || r.pct(30) {
            ETH_P_8021Q
        } else {
            ETH_P_8021AD
        };
        f = f.vlan(tpid, r.u16());
    }
    f
}

/// Random bytes of a random length.
fn random(r: &mut Rng, max_len: usize) -> Vec<u8> {
    let len = if r.pct(2) {
        r.range(ETH_MAX, max_len)
    } else {
        r.range(0, ETH_MAX)
    };
    let mut b = r.bytes(len);
    // Half of them start as something the datapath reads further than the EtherType.
    if len >= 14 && r.pct(50) {
        let et: u16 = r.pick(&[0x0800, 0x86dd, ETH_P_8021Q, ETH_P_8021AD]);
        b[12..14].copy_from_slice(&et.to_be_bytes());
        if len > 14 {
            b[14] = match et {
                0x0800 => 0x40 | (b[14] & 0x0f),
                0x86dd => 0x60 | (b[14] & 0x0f),
                _ => b[14],
            };
        }
    }
    b
}

/// One to four mutations of a valid frame.
fn mutate(r: &mut Rng, mut b: Vec<u8>, max_len: usize) -> Vec<u8> {
    for _ in 0..r.range(1, 4) {
        let l3 = l3_offset(&b, 2);
        let v4 = b.get(l3).map(|x| x >> 4) == Some(4);
        let ihl = b.get(l3).map(|x| (x & 0x0f) as usize * 4).unwrap_or(20);
        let l4 = if v4 { l3 + ihl } else { l3 + 40 };
        match r.below(12) {
            0 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] ^= 1 << r.below(8);
            }
            1 if !b.is_empty() => {
                let i = r.below(b.len());
                b[i] = r.u8();
            }
            2 => b.truncate(r.below(b.len() + 1)),
            3 if v4 && b.len() > l3 => b[l3] = 0x40 | r.below(16) as u8,
            4 if v4 && b.len() > l3 + 7 => {
                let any = r.u16();
                let frag: u16 = r.pick(&[0x2000, 0x0001, 0x1fff, 0x4000, any]);
                b[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
            }
            5 if b.len() > l4 + 13 => b[l4 + 13] = r.u8(),
            6 if b.len() > l4 + 12 => b[l4 + 12] = (r.below(16) as u8) << 4,
            7 if b.len() > l3 + 5 => {
                // IPv4 total length or IPv6 payload length.
                let at = if v4 { l3 + 2 } else { l3 + 4 };
                let any = r.u16();
                let len: u16 = r.pick(&[0, 1, 20, 40, any, (b.len() - l3) as u16]);
                b[at..at + 2].copy_from_slice(&len.to_be_bytes());
            }
            8 if b.len() > l3 + 41 => {
                // An IPv6 next header, or an extension header's length.
                let at = r.pick(&[l3 + 6, l3 + 40, l3 + 41, l3 + 48, l3 + 49]);
                if at < b.len() {
                    let any = r.u8();
                    b[at] = r.pick(&[0, 6, 17, 43, 44, 60, 59, any]);
                }
            }
            9 if b.len() >= 14 => {
                let at = r.below(b.len() - 12) + 12;
                let n = r.pick(&[1, 2, 4, 8]);
                let ins = r.bytes(n);
                b.splice(at..at, ins);
            }
            10 if b.len() > 14 => {
                let at = r.range(12, b.len() - 1);
                let n = r.range(1, 8).min(b.len() - at);
                b.drain(at..at + n);
            }
            _ if b.len() >= 12 => b = tag(r, Frame { bytes: b }).bytes,
            _ => {}
        }
    }
    b.truncate(max_len);
    b
}

// ---------------------------------------------------------------------------------------------
// The run.

/// Runs one frame through the program; `None` when `BPF_PROG_TEST_RUN` refuses it.
fn try_run(bal: &mut Balancer, input: &[u8]) -> Option<Ran> {
    let mut out = vec![0u8; input.len() + 256];
    let r = bal
        .datapath_mut()
        .program()
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ..TestRunOptions::new()
        })
        .ok()?;
    out.truncate(r.data_size_out as usize);
    Some(Ran {
        action: r.return_value,
        output: out,
    })
}

/// The largest frame `BPF_PROG_TEST_RUN` takes for this program (it refuses longer ones): a
/// frame longer than a page reaches the program with its tail in fragments.
fn largest_frame(bal: &mut Balancer) -> usize {
    let mut fits = |n: usize| try_run(bal, &vec![0u8; n]).is_some();
    assert!(
        fits(ETH_MAX),
        "BPF_PROG_TEST_RUN refuses a {ETH_MAX}-byte frame"
    );
    let (mut lo, mut hi) = (ETH_MAX, 1 << 17);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Outcome indexes of each action class.
const PASSES: [u32; 5] = [
    outcome::PASS_NOT_IP,
    outcome::PASS_NOT_SERVICE,
    outcome::PASS_FRAGMENT,
    outcome::PASS_MALFORMED,
    outcome::PASS_TOO_MANY_HEADERS,
];
const DROPS: [u32; 3] = [
    outcome::DROP_NO_BACKEND,
    outcome::DROP_BAD_BACKEND,
    outcome::DROP_REJECTED,
];

#[derive(Default)]
struct Tally {
    frames: u64,
    forward: u64,
    rst: u64,
    pass: u64,
    drop: u64,
}

fn outcomes(bal: &Balancer) -> Vec<u64> {
    bal.datapath().outcomes().expect("outcomes")[..outcome::COUNT as usize].to_vec()
}

#[test]
fn random_and_mutated_frames() {
    let Some(mut t) = table("fuzz::random_and_mutated_frames") else {
        return;
    };
    let seed = seed();
    let frames = env_usize("STEER_FUZZ_FRAMES", FRAMES);
    let batch = env_usize("STEER_FUZZ_BATCH", BATCH).max(1);
    println!("fuzz: seed {seed} (replay with STEER_FUZZ_SEED={seed}), {frames} frames");
    let mut r = Rng(seed);
    let bal = &mut t.bal;
    let started = Instant::now();

    let max_len = largest_frame(bal);
    println!("fuzz: BPF_PROG_TEST_RUN takes frames up to {max_len} bytes");

    // Flows pinned to web-c and web6-a, which get rejected (and ready again) as the run goes.
    let pinned4: Vec<u16> = (30_000..40_000)
        .filter(|p| {
            maglev_choice(
                bal,
                "web",
                &key(CLIENT.into(), *p, VIP.into(), 80, PROTO_TCP),
            ) == "web-c"
        })
        .take(32)
        .collect();
    let pinned6: Vec<u16> = (30_000..40_000)
        .filter(|p| {
            maglev_choice(
                bal,
                "web6",
                &key(CLIENT6.into(), *p, VIP6.into(), 80, PROTO_TCP),
            ) == "web6-a"
        })
        .take(32)
        .collect();
    for p in &pinned4 {
        for f in [
            tcp4(CLIENT, *p, VIP, 80).syn().frame(),
            tcp4(CLIENT, *p, VIP, 80).ack(1).frame(),
        ] {
            assert_eq!(
                run_frame(bal, &f.bytes).action,
                XDP_TX,
                "set-up: pin a flow to web-c"
            );
        }
    }
    for p in &pinned6 {
        for f in [
            tcp6(CLIENT6, *p, VIP6, 80).syn().frame(),
            tcp6(CLIENT6, *p, VIP6, 80).ack(1).frame(),
        ] {
            assert_eq!(
                run_frame(bal, &f.bytes).action,
                XDP_TX,
                "set-up: pin a flow to web6-a"
            );
        }
    }
    bal.set_admin("web-c", AdminState::Reject).unwrap();
    bal.set_admin("web6-a", AdminState::Reject).unwrap();
    let targets = Targets { pinned4, pinned6 };

    let mut failures: Vec<String> = Vec::new();
    let fail = |failures: &mut Vec<String>, msg: String| {
        if failures.len() < 20 {
            failures.push(format!("seed {seed}: {msg}"));
        }
    };
    let mut total = Tally::default();
    let mut refused = 0;
    let (mut forwarded, mut answered) = (Shapes::default(), Shapes::default());
    let mut model = Model::of(bal);
    let mut before = outcomes(bal);
    let mut tally = Tally::default();
    // Every frame, in order: first each template cut at every offset and given every IHL,
    // then random frames, valid frames and mutations.
    let mut systematic: Vec<Vec<u8>> = Vec::new();
    for _ in 0..24 {
        let f = valid(&mut r, &targets, ETH_MAX.min(200));
        let l3 = l3_offset(&f, 2);
        for n in 0..=f.len() {
            systematic.push(f[..n].to_vec());
        }
        if f.get(l3).map(|x| x >> 4) == Some(4) {
            for ihl in 0..16u8 {
                let mut g = f.clone();
                g[l3] = 0x40 | ihl;
                systematic.push(g);
            }
        }
    }
    let systematic_len = systematic.len();
    let mut systematic = systematic.into_iter();
    let first = before.clone();
    // `i` numbers the frames made (the refused ones too), the same for the same seed.
    let mut i = 0;
    let mut batch_first = 0;
    while total.frames + tally.frames < frames as u64 {
        let i = {
            i += 1;
            i - 1
        };
        let frame = match systematic.next() {
            Some(f) => f,
            None => match r.below(10) {
                0..=1 => random(&mut r, max_len),
                2..=4 => valid(&mut r, &targets, max_len),
                _ => {
                    let f = valid(&mut r, &targets, max_len);
                    mutate(&mut r, f, max_len)
                }
            },
        };
        match try_run(bal, &frame) {
            Some(ran) => {
                let what = |why: &str| {
                    format!(
                        "frame {i}: {why}\n    in  {}\n    out {}",
                        hex(&frame),
                        hex(&ran.output)
                    )
                };
                match ran.action {
                    XDP_PASS => {
                        tally.pass += 1;
                        if ran.output != frame {
                            fail(&mut failures, what("XDP_PASS changed the frame"));
                        }
                    }
                    XDP_DROP => tally.drop += 1,
                    XDP_TX => match check_tx(&model, &frame, &ran.output) {
                        Ok(Tx::Forward(shape)) => {
                            tally.forward += 1;
                            forwarded.add(shape);
                        }
                        Ok(Tx::Rst(shape)) => {
                            tally.rst += 1;
                            answered.add(shape);
                        }
                        Err(e) => {
                            // Tallied as the counters will have it, so a bad frame fails once.
                            if ran.output.get(12..) == frame.get(12..) {
                                tally.forward += 1;
                            } else {
                                tally.rst += 1;
                            }
                            fail(&mut failures, what(&format!("XDP_TX: {e}")));
                        }
                    },
                    a => fail(&mut failures, what(&format!("returned {}", action_name(a)))),
                }
                tally.frames += 1;
            }
            None => {
                // The kernel refuses frames shorter than an Ethernet header: they never reach
                // the program.
                refused += 1;
                if frame.len() >= 14 {
                    fail(
                        &mut failures,
                        format!("frame {i}: BPF_PROG_TEST_RUN refused {} bytes", frame.len()),
                    );
                }
            }
        }
        // The pool changes at fixed frame numbers, whatever the batch, so a replay with
        // another STEER_FUZZ_BATCH runs the same frames against the same pool.
        let change_pool = (i + 1) % POOL_CHANGE_EVERY == 0;
        let done = total.frames + tally.frames == frames as u64;
        if tally.frames > 0 && (tally.frames as usize >= batch || change_pool || done) {
            let after = outcomes(bal);
            let d: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            let sum = |ix: &[u32]| ix.iter().map(|i| d[*i as usize]).sum::<u64>();
            let counted = [
                ("frames", d.iter().sum::<u64>(), tally.frames),
                ("tx_forward", d[outcome::TX_FORWARD as usize], tally.forward),
                ("tx_rst", d[outcome::TX_RST as usize], tally.rst),
                ("pass_*", sum(&PASSES), tally.pass),
                ("drop_*", sum(&DROPS), tally.drop),
            ];
            for (name, got, want) in counted {
                if got != want {
                    fail(
                        &mut failures,
                        format!(
                            "frames {batch_first}..={i}: outcome counters {name} moved by {got}, \
                             {want} frames got that action (per outcome: {d:?})"
                        ),
                    );
                }
            }
            total.frames += tally.frames;
            total.forward += tally.forward;
            total.rst += tally.rst;
            total.pass += tally.pass;
            total.drop += tally.drop;
            tally = Tally::default();
            before = after;
            batch_first = i + 1;
        }
        if change_pool {
            // Reject web-c and web6-a (their flows are answered with RSTs), or make them take
            // new flows again, or drain them.
            for be in ["web-c", "web6-a"] {
                let state = if r.pct(60) {
                    AdminState::Reject
                } else {
                    r.pick(&[AdminState::Ready, AdminState::Drain])
                };
                bal.set_admin(be, state).unwrap();
            }
            model = Model::of(bal);
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let last = outcomes(bal);
    let per_outcome: Vec<String> = outcome::NAMES
        .iter()
        .enumerate()
        .map(|(o, n)| format!("{n} {}", last[o] - first[o]))
        .collect();
    println!(
        "fuzz: {} frames ({systematic_len} cut at every offset or given every IHL) in {secs:.1} s: \
         {} forwarded, {} answered with a RST, {} passed, {} dropped; {refused} shorter than an \
         Ethernet header refused by the kernel\nfuzz: forwarded {forwarded}\nfuzz: answered \
         with a RST {answered}\nfuzz: {}",
        total.frames,
        total.forward,
        total.rst,
        total.pass,
        total.drop,
        per_outcome.join(", ")
    );
    assert!(
        failures.is_empty(),
        "fuzz (seed {seed}, replay with STEER_FUZZ_SEED={seed}): {} failures:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
