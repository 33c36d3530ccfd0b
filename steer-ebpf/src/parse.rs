//! Header parsing with bounds checks: Ethernet (with up to two VLAN tags), IPv4 (with options)
//! or IPv6 (with a bounded chain of extension headers), TCP or UDP.
//!
//! Each header is bounds-checked once as a whole, then its fields are read with single loads of
//! their own width (the x86 and arm64 JITs load unaligned words natively; byte-by-byte copies
//! and zeroing calls would cost more than the rest of the program).

use aya_ebpf::programs::XdpContext;
use steer_common::{
    outcome, FlowKey, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS, PROTO_TCP,
    PROTO_UDP,
};

use crate::Stop;

pub const ETH_LEN: usize = 14;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
/// EtherTypes as they read from the wire into a native (little-endian) u16.
const ETH_P_IP_NE: u16 = u16::from_ne_bytes([0x08, 0x00]);
const ETH_P_IPV6_NE: u16 = u16::from_ne_bytes([0x86, 0xdd]);
/// 802.1Q VLAN tag, and 802.1ad (QinQ) service tag.
const ETH_P_8021Q_NE: u16 = u16::from_ne_bytes([0x81, 0x00]);
const ETH_P_8021AD_NE: u16 = u16::from_ne_bytes([0x88, 0xa8]);
const VLAN_LEN: usize = 4;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
/// IPv6 next-header values of the extension headers walked (RFC 8200 §4), and the fragment
/// header, which ends the walk.
const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_DEST: u8 = 60;
/// Every extension header walked starts with next header, length (in 8-byte units after the
/// first 8), and is at least 8 bytes long.
const EXT_MIN_LEN: usize = 8;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the datapath needs to know of a packet.
pub struct Packet {
    /// The 5-tuple as sent by the client.
    pub key: FlowKey,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// Offset of the IP header: the Ethernet header and its VLAN tags come before it.
    pub l3_off: usize,
    /// Offset of the TCP or UDP header (after IPv4 options or IPv6 extension headers).
    pub l4_off: usize,
    /// TCP sequence and acknowledgment numbers (host order), to answer with a RST.
    pub seq: u32,
    pub ack_seq: u32,
    /// TCP payload length, from the IP length fields.
    pub payload_len: u32,
}

impl Packet {
    /// A TCP SYN without ACK: the first packet of a connection attempt.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP packet with FIN or RST: it ends its flow.
    #[inline(always)]
    pub fn ends_flow(&self) -> bool {
        self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.key.proto == PROTO_TCP
    }

    /// A TCP SYN with ACK: a server's answer to a connection attempt.
    #[inline(always)]
    pub fn is_syn_ack(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK | TCP_RST) == TCP_SYN | TCP_ACK
    }

    /// A TCP RST.
    #[inline(always)]
    pub fn is_rst(&self) -> bool {
        self.tcp_flags & TCP_RST != 0
    }
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

/// A header of `N` bytes known to lie inside the packet.
#[derive(Clone, Copy)]
pub struct Hdr<const N: usize>(*const u8);

impl<const N: usize> Hdr<N> {
    #[inline(always)]
    pub fn at(ctx: &XdpContext, off: usize) -> Option<Self> {
        ptr_at::<[u8; N]>(ctx, off).map(|p| Hdr(p as *const u8))
    }

    #[inline(always)]
    pub fn u8(self, i: usize) -> u8 {
        // SAFETY: `i < N`, checked at `at`.
        unsafe { *self.0.add(i) }
    }

    /// Two bytes as they are on the wire (network order kept).
    #[inline(always)]
    pub fn u16_ne(self, i: usize) -> u16 {
        // SAFETY: `i + 2 <= N`; the JIT loads unaligned halfwords.
        unsafe { *(self.0.add(i) as *const u16) }
    }

    /// Four bytes as they are on the wire (network order kept).
    #[inline(always)]
    pub fn u32_ne(self, i: usize) -> u32 {
        // SAFETY: `i + 4 <= N`; the JIT loads unaligned words.
        unsafe { *(self.0.add(i) as *const u32) }
    }

    #[inline(always)]
    pub fn u16_be(self, i: usize) -> u16 {
        u16::from_be(self.u16_ne(i))
    }

    #[inline(always)]
    pub fn u32_be(self, i: usize) -> u32 {
        u32::from_be(self.u32_ne(i))
    }
}

/// Sixteen address bytes from four words, without a byte loop.
#[inline(always)]
fn addr(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, plain integers.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// What the IP header says of the rest of the packet.
struct L3 {
    family: u8,
    proto: u8,
    src: [u8; 16],
    dst: [u8; 16],
    /// Offset of the IP header.
    off: usize,
    /// Offset of the L4 header.
    l4_off: usize,
    /// Bytes after the IP header and its options or extension headers (IPv4 total length −
    /// header; IPv6 payload length − extension headers).
    l4_bytes: u32,
}

/// Whether an EtherType (as read from the wire) is a VLAN tag's: 802.1Q, or 802.1ad.
#[inline(always)]
fn is_vlan(proto: u16) -> bool {
    proto == ETH_P_8021Q_NE || proto == ETH_P_8021AD_NE
}

/// Parses the headers. Packets that are not IP are passed; truncated or malformed headers are
/// passed to the kernel, which counts and drops them (the LB does not own the VIPs).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Stop> {
    let eth = Hdr::<ETH_LEN>::at(ctx, 0).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    let mut proto = eth.u16_ne(12);
    let mut off = ETH_LEN;
    // A trunk port: an 802.1Q tag, or QinQ's 802.1ad tag then an 802.1Q tag. Each tag is the
    // TCI then the next EtherType; the tags stay in the frame (DSR rewrites only the MACs).
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(proto) {
            break;
        }
        let tag = Hdr::<VLAN_LEN>::at(ctx, off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
        proto = tag.u16_ne(2);
        off += VLAN_LEN;
    }
    let l3 = match proto {
        ETH_P_IP_NE => parse_ipv4(ctx, off)?,
        ETH_P_IPV6_NE => parse_ipv6(ctx, off)?,
        p if is_vlan(p) => return Err(Stop::Pass(outcome::PASS_TOO_MANY_HEADERS)),
        _ => return Err(Stop::Pass(outcome::PASS_NOT_IP)),
    };
    parse_l4(ctx, &l3)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize) -> Result<L3, Stop> {
    let h = Hdr::<IPV4_LEN>::at(ctx, off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    let b0 = h.u8(0);
    let len = ((b0 & 0x0f) as usize) * 4;
    let total = h.u16_be(2) as u32;
    if b0 >> 4 != 4 || len < IPV4_LEN || total < len as u32 {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    if h.u16_be(6) & 0x3fff != 0 {
        // More-fragments set or a non-zero offset: ports are not in every piece.
        return Err(Stop::Pass(outcome::PASS_FRAGMENT));
    }
    Ok(L3 {
        family: FAMILY_V4,
        proto: h.u8(9),
        src: addr([h.u32_ne(12), 0, 0, 0]),
        dst: addr([h.u32_ne(16), 0, 0, 0]),
        off,
        l4_off: off + len,
        l4_bytes: total - len as u32,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<L3, Stop> {
    let h = Hdr::<IPV6_LEN>::at(ctx, off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    if h.u8(0) >> 4 != 6 {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    let payload = h.u16_be(4) as u32;
    let (proto, l4_off) = walk_ipv6_ext(ctx, h.u8(6), off + IPV6_LEN)?;
    let ext_len = (l4_off - off - IPV6_LEN) as u32;
    if ext_len > payload {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    Ok(L3 {
        family: FAMILY_V6,
        proto,
        src: addr([h.u32_ne(8), h.u32_ne(12), h.u32_ne(16), h.u32_ne(20)]),
        dst: addr([h.u32_ne(24), h.u32_ne(28), h.u32_ne(32), h.u32_ne(36)]),
        off,
        l4_off,
        l4_bytes: payload - ext_len,
    })
}

/// Walks the IPv6 extension headers from `next` (the IPv6 header's next header) at `off`, at
/// most `MAX_IPV6_EXT_HEADERS` of them (a fixed bound the verifier can see): returns the upper
/// protocol and its offset. A fragment header anywhere means a fragment (passed, as IPv4's
/// are); a routing header with segments left means the VIP is a waypoint, not the destination
/// (passed as not for a service); a hop-by-hop header after the first position is malformed
/// (RFC 8200 §4.1); a longer chain is passed with its own count.
#[inline(always)]
fn walk_ipv6_ext(ctx: &XdpContext, mut next: u8, mut off: usize) -> Result<(u8, usize), Stop> {
    for i in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            NEXTHDR_ROUTING | NEXTHDR_DEST => {}
            NEXTHDR_HOP if i == 0 => {}
            NEXTHDR_HOP => return Err(Stop::Pass(outcome::PASS_MALFORMED)),
            NEXTHDR_FRAGMENT => return Err(Stop::Pass(outcome::PASS_FRAGMENT)),
            _ => return Ok((next, off)),
        }
        let x = Hdr::<EXT_MIN_LEN>::at(ctx, off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
        if next == NEXTHDR_ROUTING && x.u8(3) != 0 {
            return Err(Stop::Pass(outcome::PASS_NOT_SERVICE));
        }
        next = x.u8(0);
        off += (x.u8(1) as usize + 1) * EXT_MIN_LEN;
    }
    match next {
        NEXTHDR_FRAGMENT => Err(Stop::Pass(outcome::PASS_FRAGMENT)),
        NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST => {
            Err(Stop::Pass(outcome::PASS_TOO_MANY_HEADERS))
        }
        _ => Ok((next, off)),
    }
}

/// Reads the ports (and TCP flags, sequence numbers, payload length). A TCP or UDP header cut
/// short, or a TCP data offset below 5 words or beyond the IP length, is malformed: passed to
/// the kernel, which counts and drops it. Other protocols carry no ports and match no service.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, l3: &L3) -> Result<Packet, Stop> {
    let mut pkt = Packet {
        key: FlowKey {
            src: l3.src,
            dst: l3.dst,
            sport_be: 0,
            dport_be: 0,
            proto: l3.proto,
            family: l3.family,
            _pad: [0; 2],
        },
        tcp_flags: 0,
        l3_off: l3.off,
        l4_off: l3.l4_off,
        seq: 0,
        ack_seq: 0,
        payload_len: 0,
    };
    match l3.proto {
        PROTO_TCP => {
            let h = Hdr::<20>::at(ctx, l3.l4_off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
            let doff = (h.u8(12) >> 4) as u32 * 4;
            if doff < 20 || doff > l3.l4_bytes {
                return Err(Stop::Pass(outcome::PASS_MALFORMED));
            }
            pkt.key.sport_be = h.u16_ne(0);
            pkt.key.dport_be = h.u16_ne(2);
            pkt.seq = h.u32_be(4);
            pkt.ack_seq = h.u32_be(8);
            pkt.tcp_flags = h.u8(13);
            pkt.payload_len = l3.l4_bytes - doff;
        }
        PROTO_UDP => {
            let h = Hdr::<8>::at(ctx, l3.l4_off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
            pkt.key.sport_be = h.u16_ne(0);
            pkt.key.dport_be = h.u16_ne(2);
        }
        _ => {}
    }
    Ok(pkt)
}
