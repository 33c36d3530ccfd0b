//! Header parsing with bounds checks: Ethernet, IPv4 or IPv6, TCP or UDP.
//!
//! Each header is bounds-checked once as a whole, then its fields are read with single loads of
//! their own width (the x86 and arm64 JITs load unaligned words natively; byte-by-byte copies
//! and zeroing calls would cost more than the rest of the program).

use aya_ebpf::programs::XdpContext;
use steer_common::{outcome, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use crate::Stop;

pub const ETH_LEN: usize = 14;
/// EtherTypes as they read from the wire into a native (little-endian) u16.
const ETH_P_IP_NE: u16 = u16::from_ne_bytes([0x08, 0x00]);
const ETH_P_IPV6_NE: u16 = u16::from_ne_bytes([0x86, 0xdd]);
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const NEXTHDR_FRAGMENT: u8 = 44;

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
    /// Length of the IPv4 header with options (IPv6: the fixed 40 bytes).
    pub l3_len: usize,
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
    /// Offset of the L4 header.
    l4_off: usize,
    /// Header length.
    len: usize,
    /// Bytes after the IP header (IPv4 total length − header; IPv6 payload length).
    l4_bytes: u32,
}

/// Parses the headers. Packets that are not IP are passed; truncated or malformed headers are
/// passed to the kernel, which counts and drops them (the LB does not own the VIPs).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Stop> {
    let eth = Hdr::<ETH_LEN>::at(ctx, 0).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    let l3 = match eth.u16_ne(12) {
        ETH_P_IP_NE => parse_ipv4(ctx, ETH_LEN)?,
        ETH_P_IPV6_NE => parse_ipv6(ctx, ETH_LEN)?,
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
        l4_off: off + len,
        len,
        l4_bytes: total - len as u32,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize) -> Result<L3, Stop> {
    let h = Hdr::<IPV6_LEN>::at(ctx, off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    if h.u8(0) >> 4 != 6 {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    let proto = h.u8(6);
    if proto == NEXTHDR_FRAGMENT {
        return Err(Stop::Pass(outcome::PASS_FRAGMENT));
    }
    Ok(L3 {
        family: FAMILY_V6,
        proto,
        src: addr([h.u32_ne(8), h.u32_ne(12), h.u32_ne(16), h.u32_ne(20)]),
        dst: addr([h.u32_ne(24), h.u32_ne(28), h.u32_ne(32), h.u32_ne(36)]),
        l4_off: off + IPV6_LEN,
        len: IPV6_LEN,
        l4_bytes: h.u16_be(4) as u32,
    })
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
        l3_len: l3.len,
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
