//! Table-driven datapath tests over `BPF_PROG_TEST_RUN`.
//!
//! A `Row` is one rule of SPEC.md's datapath: an input frame (built with etherparse), the XDP
//! action expected, what the output frame must be, and how counters must move. `run` executes
//! every row against a loaded program, prints one line per row, and panics listing every row
//! that failed.

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions};
use etherparse::PacketBuilder;
use steer_common::{outcome, Counters};
use steer_ctl::Balancer;

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

/// MAC of the LB's interface in fixtures (frames arrive addressed to it).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// MAC of the client's router (source of frames in fixtures).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// A frame and what it was built from.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Vec<u8>,
}

/// Builds TCP/IPv4 frames from the client router to the LB.
pub fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Tcp {
    Tcp {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
        flags: TcpFlags::default(),
        payload: Vec::new(),
    }
}

/// Builds TCP/IPv6 frames from the client router to the LB.
pub fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Tcp {
    Tcp {
        src: src.into(),
        dst: dst.into(),
        sport,
        dport,
        flags: TcpFlags::default(),
        payload: Vec::new(),
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct TcpFlags {
    pub syn: bool,
    pub ack: Option<u32>,
    pub fin: bool,
    pub rst: bool,
    pub psh: bool,
}

pub struct Tcp {
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    sport: u16,
    dport: u16,
    flags: TcpFlags,
    payload: Vec<u8>,
}

impl Tcp {
    pub fn syn(mut self) -> Self {
        self.flags.syn = true;
        self
    }
    pub fn ack(mut self, n: u32) -> Self {
        self.flags.ack = Some(n);
        self
    }
    pub fn fin(mut self) -> Self {
        self.flags.fin = true;
        self
    }
    pub fn rst(mut self) -> Self {
        self.flags.rst = true;
        self
    }
    pub fn data(mut self, payload: &[u8]) -> Self {
        self.flags.psh = true;
        self.payload = payload.to_vec();
        self
    }

    pub fn frame(&self) -> Frame {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        let mut b = match (self.src, self.dst) {
            (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => eth
                .ipv4(s.octets(), d.octets(), 64)
                .tcp(self.sport, self.dport, 1000, 64240),
            (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => eth
                .ipv6(s.octets(), d.octets(), 64)
                .tcp(self.sport, self.dport, 1000, 64240),
            _ => panic!("mixed address families"),
        };
        if self.flags.syn {
            b = b.syn();
        }
        if let Some(n) = self.flags.ack {
            b = b.ack(n);
        }
        if self.flags.fin {
            b = b.fin();
        }
        if self.flags.rst {
            b = b.rst();
        }
        if self.flags.psh {
            b = b.psh();
        }
        let mut bytes = Vec::new();
        b.write(&mut bytes, &self.payload).expect("build frame");
        Frame { bytes }
    }
}

/// A UDP/IPv4 frame from the client router to the LB.
pub fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, payload: &[u8]) -> Frame {
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut bytes, payload)
        .expect("build frame");
    Frame { bytes }
}

/// A UDP/IPv6 frame from the client router to the LB.
pub fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, payload: &[u8]) -> Frame {
    let mut bytes = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport)
        .write(&mut bytes, payload)
        .expect("build frame");
    Frame { bytes }
}

/// An ARP request (who has `target`? tell `sender`), broadcast.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Frame {
    let mut b = Vec::new();
    b.extend_from_slice(&[0xff; 6]);
    b.extend_from_slice(&CLIENT_MAC);
    b.extend_from_slice(&[0x08, 0x06]);
    b.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    b.extend_from_slice(&CLIENT_MAC);
    b.extend_from_slice(&sender.octets());
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&target.octets());
    Frame { bytes: b }
}

/// TPIDs of VLAN tags: 802.1Q (a customer tag, or the only tag), 802.1ad (QinQ's outer tag).
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IPv6 extension headers (next-header values).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DEST_OPTS: u8 = 60;

/// One IPv6 extension header to insert with [`Frame::ipv6_ext`].
#[derive(Clone, Copy, Debug)]
pub struct Ext {
    /// Its type (the next-header value that names it).
    pub kind: u8,
    /// Its Hdr Ext Len: length in 8-byte units beyond the first 8 (hop-by-hop and destination
    /// options are filled with PadN, so up to 30).
    pub len8: u8,
    /// Routing header: segments left (the packet's final destination is further on when > 0).
    pub segments_left: u8,
}

impl Ext {
    /// An 8-byte header of `kind`.
    pub fn of(kind: u8) -> Ext {
        Ext {
            kind,
            len8: 0,
            segments_left: 0,
        }
    }

    fn bytes(&self, next: u8) -> Vec<u8> {
        let len = (self.len8 as usize + 1) * 8;
        let mut b = vec![0u8; len];
        b[0] = next;
        b[1] = self.len8;
        match self.kind {
            IPV6_ROUTING => {
                b[2] = 4; // segment routing header (RFC 8754); the rest is left zero
                b[3] = self.segments_left;
            }
            IPV6_FRAGMENT => {} // offset 0, M clear, id 0: an atomic fragment
            _ => {
                // One PadN option over the rest (RFC 8200 §4.2).
                assert!(len - 4 <= 255, "options header too long for one PadN");
                b[2] = 1;
                b[3] = (len - 4) as u8;
            }
        }
        b
    }
}

/// Offset of the IP header of an Ethernet frame: after the addresses, any VLAN tags and the
/// EtherType (at most `max_tags` tags are skipped).
pub fn l3_offset(bytes: &[u8], max_tags: usize) -> usize {
    let mut off = 12;
    for _ in 0..max_tags {
        match bytes.get(off..off + 2) {
            Some(&[a, b]) if [ETH_P_8021Q, ETH_P_8021AD].contains(&u16::from_be_bytes([a, b])) => {
                off += 4
            }
            _ => break,
        }
    }
    off + 2
}

/// Internet checksum (RFC 1071) of `b`.
pub fn inet_csum(b: &[u8]) -> u16 {
    let mut sum: u32 = b
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

impl Frame {
    /// With a VLAN tag (`tpid`, VLAN id `vid`) in front of any tags it has: QinQ is
    /// `.vlan(ETH_P_8021Q, inner).vlan(ETH_P_8021AD, outer)`.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        let mut tag = tpid.to_be_bytes().to_vec();
        tag.extend_from_slice(&(vid & 0x0fff).to_be_bytes());
        self.bytes.splice(12..12, tag);
        self
    }

    /// An IPv4 frame with `opts` (a multiple of 4 bytes, at most 40) as IP options; the IHL,
    /// total length and header checksum are fixed up (TCP's and UDP's checksums do not cover
    /// them).
    pub fn ipv4_options(mut self, opts: &[u8]) -> Frame {
        assert!(
            opts.len().is_multiple_of(4) && opts.len() <= 40,
            "IPv4 options: 4-byte words, ≤ 40"
        );
        let ip = l3_offset(&self.bytes, 2);
        assert_eq!(self.bytes[ip] >> 4, 4, "not an IPv4 frame");
        let ihl = (self.bytes[ip] & 0x0f) as usize * 4;
        self.bytes.splice(ip + ihl..ip + ihl, opts.iter().copied());
        let ihl = ihl + opts.len();
        self.bytes[ip] = 0x40 | (ihl / 4) as u8;
        let total = u16::from_be_bytes([self.bytes[ip + 2], self.bytes[ip + 3]]) as usize;
        self.bytes[ip + 2..ip + 4].copy_from_slice(&((total + opts.len()) as u16).to_be_bytes());
        self.bytes[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = inet_csum(&self.bytes[ip..ip + ihl]);
        self.bytes[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        self
    }

    /// An IPv6 frame with `exts` inserted, in order, between the IPv6 header and what followed
    /// it; next headers and the payload length are fixed up (the upper layer's checksum does
    /// not cover them).
    pub fn ipv6_ext(mut self, exts: &[Ext]) -> Frame {
        let ip = l3_offset(&self.bytes, 2);
        assert_eq!(self.bytes[ip] >> 4, 6, "not an IPv6 frame");
        let upper = self.bytes[ip + 6];
        let mut chain = Vec::new();
        for (i, e) in exts.iter().enumerate() {
            let next = exts.get(i + 1).map(|n| n.kind).unwrap_or(upper);
            chain.extend(e.bytes(next));
        }
        if let Some(first) = exts.first() {
            self.bytes[ip + 6] = first.kind;
        }
        let payload = u16::from_be_bytes([self.bytes[ip + 4], self.bytes[ip + 5]]) as usize;
        self.bytes[ip + 4..ip + 6].copy_from_slice(&((payload + chain.len()) as u16).to_be_bytes());
        self.bytes.splice(ip + 40..ip + 40, chain);
        self
    }

    /// The first `n` bytes only (a frame cut short on the wire).
    pub fn truncated(mut self, n: usize) -> Frame {
        self.bytes.truncate(n);
        self
    }

    /// With byte `i` set to `v`.
    pub fn with_byte(mut self, i: usize, v: u8) -> Frame {
        self.bytes[i] = v;
        self
    }
}

/// A check of an output frame given the input: what was wrong, empty when nothing.
pub type Check = Box<dyn Fn(&[u8], &[u8]) -> Vec<String>>;

/// What the output frame must be.
pub enum Expect {
    /// Byte for byte the input.
    Unchanged,
    /// The input with destination MAC := `dst` and source MAC := `src`; everything after the
    /// Ethernet addresses untouched.
    Macs { dst: [u8; 6], src: [u8; 6] },
    /// Exactly this frame (e.g. the RST that answers the input).
    Frame(Frame),
    /// Not checked (the action says enough, e.g. a drop).
    Any,
    /// Checked by a function of the input and output frames, which returns what was wrong
    /// (e.g. a NAT translation, whose source port the datapath chooses).
    With(Check),
}

/// Which counter must move, and by how much.
pub enum Delta {
    /// Global outcome counter (`steer_common::outcome::*`).
    Outcome(u32, u64),
    /// A backend's counter, by name: `field` picks one of `Counters`.
    Backend(String, Field, u64),
    /// A service's counter, by name.
    Service(String, Field, u64),
}

#[derive(Clone, Copy, Debug)]
pub enum Field {
    Packets,
    Bytes,
    NewFlows,
    EndedFlows,
    RstSent,
    Refused,
    SynTimeouts,
    NatExhausted,
}

impl Field {
    fn get(self, c: &Counters) -> u64 {
        match self {
            Field::Packets => c.packets,
            Field::Bytes => c.bytes,
            Field::NewFlows => c.new_flows,
            Field::EndedFlows => c.ended_flows,
            Field::RstSent => c.rst_sent,
            Field::Refused => c.refused,
            Field::SynTimeouts => c.syn_timeouts,
            Field::NatExhausted => c.nat_exhausted,
        }
    }
}

/// One fixture.
pub struct Row {
    pub desc: String,
    pub input: Frame,
    pub action: u32,
    pub output: Expect,
    pub deltas: Vec<Delta>,
}

/// What a row did.
pub struct Ran {
    pub action: u32,
    pub output: Vec<u8>,
}

/// Runs one frame through the program once.
pub fn run_frame(bal: &mut Balancer, input: &[u8]) -> Ran {
    run_frame_on(bal, input, None)
}

/// Runs one frame through the program once, as if it arrived on interface `ingress` (of the
/// calling thread's network namespace; `None`: its loopback). The FIB lookups of NAT mode
/// start from the ingress interface, and tell `XDP_TX` (out of the same one) from
/// `XDP_REDIRECT`.
pub fn run_frame_on(bal: &mut Balancer, input: &[u8], ingress: Option<u32>) -> Ran {
    let mut out = vec![0u8; input.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
    // egress_ifindex. The kernel wants data and data_meta 0 and data_end the input's length.
    let ctx: Vec<u8> = [0, input.len() as u32, 0, ingress.unwrap_or(0), 0, 0]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
    let r = bal
        .datapath_mut()
        .program()
        .test_run(TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: ingress.map(|_| ctx.as_slice()),
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    Ran {
        action: r.return_value,
        output: out,
    }
}

fn read(bal: &Balancer, d: &Delta) -> u64 {
    match d {
        Delta::Outcome(o, _) => bal.datapath().outcomes().expect("outcomes")[*o as usize],
        Delta::Backend(name, f, _) => f.get(&bal.backend_counters(name).expect("backend counters")),
        Delta::Service(name, f, _) => f.get(&bal.service_counters(name).expect("service counters")),
    }
}

fn describe(d: &Delta) -> String {
    match d {
        Delta::Outcome(o, n) => format!(
            "outcome {} +{n}",
            outcome::NAMES
                .get(*o as usize)
                .or_else(|| steer_common::event::NAMES.get((*o - outcome::COUNT) as usize))
                .copied()
                .unwrap_or("?")
        ),
        Delta::Backend(b, f, n) => format!("backend {b} {f:?} +{n}"),
        Delta::Service(s, f, n) => format!("service {s} {f:?} +{n}"),
    }
}

fn expected(d: &Delta) -> u64 {
    match d {
        Delta::Outcome(_, n) | Delta::Backend(_, _, n) | Delta::Service(_, _, n) => *n,
    }
}

/// Checks one row; returns what was wrong.
pub fn check(bal: &mut Balancer, row: &Row) -> Vec<String> {
    check_on(bal, row, None)
}

/// Checks one row whose frame arrives on interface `ingress` (see `run_frame_on`).
pub fn check_on(bal: &mut Balancer, row: &Row, ingress: Option<u32>) -> Vec<String> {
    let before: Vec<u64> = row.deltas.iter().map(|d| read(bal, d)).collect();
    let outcomes = |bal: &Balancer| -> u64 {
        bal.datapath().outcomes().expect("outcomes")[..outcome::COUNT as usize]
            .iter()
            .sum()
    };
    let total_before = outcomes(bal);
    let ran = run_frame_on(bal, &row.input.bytes, ingress);
    let mut errs = Vec::new();
    if ran.action == XDP_ABORTED {
        errs.push("returned XDP_ABORTED".to_string());
    }
    if ran.action != row.action {
        errs.push(format!(
            "action {} (expected {})",
            action_name(ran.action),
            action_name(row.action)
        ));
    }
    let input = &row.input.bytes;
    match &row.output {
        Expect::Unchanged => {
            if &ran.output != input {
                errs.push(format!("frame changed: {}", diff(input, &ran.output)));
            }
        }
        Expect::Macs { dst, src } => {
            let mut want = input.clone();
            want[0..6].copy_from_slice(dst);
            want[6..12].copy_from_slice(src);
            if ran.output != want {
                errs.push(format!("frame: {}", diff(&want, &ran.output)));
            }
        }
        Expect::Frame(f) => {
            if ran.output != f.bytes {
                errs.push(format!("frame: {}", diff(&f.bytes, &ran.output)));
            }
        }
        Expect::Any => {}
        Expect::With(f) => errs.extend(f(input, &ran.output)),
    }
    for (d, b) in row.deltas.iter().zip(&before) {
        let now = read(bal, d);
        if now - b != expected(d) {
            errs.push(format!("{}: moved by {}", describe(d), now - b));
        }
    }
    // Every packet is counted under exactly one outcome.
    let total_after = outcomes(bal);
    if total_after - total_before != 1 {
        errs.push(format!(
            "{} outcomes counted for one packet",
            total_after - total_before
        ));
    }
    errs
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

/// A fixture table run step by step, so a test can change the balancer between rows (drain a
/// backend, turn maintenance on) and build each row's expectation from the state at that time.
pub struct Table {
    pub bal: Balancer,
    rows: usize,
    failed: Vec<String>,
}

impl Table {
    pub fn new(bal: Balancer) -> Table {
        Table {
            bal,
            rows: 0,
            failed: Vec::new(),
        }
    }

    /// Runs one row, printing `fixture <desc> ... ok|FAILED`.
    pub fn check(&mut self, row: Row) {
        self.check_on(None, row);
    }

    /// Runs one row whose frame arrives on interface `ingress` (see `run_frame_on`).
    pub fn check_on(&mut self, ingress: Option<u32>, row: Row) {
        self.rows += 1;
        let errs = check_on(&mut self.bal, &row, ingress);
        if errs.is_empty() {
            println!("fixture {} ... ok", row.desc);
        } else {
            println!("fixture {} ... FAILED: {}", row.desc, errs.join("; "));
            self.failed
                .push(format!("{}: {}", row.desc, errs.join("; ")));
        }
    }

    /// Panics listing every row that failed.
    pub fn finish(self) {
        if !self.failed.is_empty() {
            panic!(
                "{} of {} fixtures failed:\n  {}",
                self.failed.len(),
                self.rows,
                self.failed.join("\n  ")
            );
        }
        println!("{} fixtures passed", self.rows);
    }
}

/// What is wrong with the checksums of an Ethernet frame (IPv4 header, TCP or UDP over IPv4 or
/// IPv6), as etherparse computes them — never as the code under test does. An IPv4 UDP
/// checksum of 0 means "none" and is accepted.
pub fn checksum_errors(frame: &[u8]) -> Vec<String> {
    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
    let h = match PacketHeaders::from_ethernet_slice(frame) {
        Ok(h) => h,
        Err(e) => return vec![format!("etherparse cannot parse the frame: {e}")],
    };
    let payload = h.payload.slice();
    let mut errs = Vec::new();
    let wrong = |what: &str, got: u16, want: u16| {
        format!("{what} checksum {got:#06x}, etherparse computes {want:#06x}")
    };
    match (&h.net, &h.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), t) => {
            let want = ip.calc_header_checksum();
            if ip.header_checksum != want {
                errs.push(wrong("IPv4 header", ip.header_checksum, want));
            }
            match t {
                Some(TransportHeader::Tcp(tcp)) => {
                    let want = tcp.calc_checksum_ipv4(ip, payload).expect("TCP checksum");
                    if tcp.checksum != want {
                        errs.push(wrong("TCP", tcp.checksum, want));
                    }
                }
                Some(TransportHeader::Udp(udp)) if udp.checksum != 0 => {
                    let want = udp.calc_checksum_ipv4(ip, payload).expect("UDP checksum");
                    if udp.checksum != want {
                        errs.push(wrong("UDP", udp.checksum, want));
                    }
                }
                _ => {}
            }
        }
        (Some(NetHeaders::Ipv6(ip, _)), t) => match t {
            Some(TransportHeader::Tcp(tcp)) => {
                let want = tcp.calc_checksum_ipv6(ip, payload).expect("TCP checksum");
                if tcp.checksum != want {
                    errs.push(wrong("TCP", tcp.checksum, want));
                }
            }
            Some(TransportHeader::Udp(udp)) => {
                let want = udp.calc_checksum_ipv6(ip, payload).expect("UDP checksum");
                if udp.checksum != want {
                    errs.push(wrong("UDP/IPv6", udp.checksum, want));
                }
            }
            _ => {}
        },
        _ => errs.push("not an IP frame".into()),
    }
    errs
}

/// Pins the calling thread to one CPU (restored by the guard's drop): `BPF_PROG_TEST_RUN` runs
/// the program on the CPU of the thread that asks, so a fixture can act as two CPUs.
pub struct OnCpu(libc::cpu_set_t);

impl OnCpu {
    pub fn pin(cpu: usize) -> OnCpu {
        // SAFETY: plain libc calls on this thread's affinity with initialised sets.
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old),
                0
            );
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0,
                "pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
            OnCpu(old)
        }
    }
}

impl Drop for OnCpu {
    fn drop(&mut self) {
        // SAFETY: as in pin.
        unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
    }
}

/// The reverse half of a NAT flow of service `svc` (id) to `vip`:80 on backend (id,
/// generation) `backend`, from LB address slot `nat_addr`, that ended 10 s ago (so its port
/// is free again: `NAT_REUSE_NS` is 2 s); its client 192.0.2.99 on port `port`.
pub fn ended_nat_reverse(
    vip: std::net::IpAddr,
    svc: u32,
    nat_addr: u16,
    backend: (u32, u16),
    port: u16,
) -> steer_common::NatRev {
    use steer_ctl::balancer::addr_bytes;
    let long_ago = steer_ctl::datapath::monotonic_ns() - 10_000_000_000;
    steer_common::NatRev {
        client: addr_bytes(Ipv4Addr::new(192, 0, 2, 99).into()).0,
        vip: addr_bytes(vip).0,
        client_port_be: port.to_be(),
        vip_port_be: 80u16.to_be(),
        svc: svc as u16,
        nat_addr,
        backend: backend.0,
        gen: backend.1,
        flags: 0,
        syn_ns: 0,
        ended_ns: long_ago,
        last_ns: long_ago,
        idle_ns: 0,
    }
}
