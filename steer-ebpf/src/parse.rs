//! Header parsing with bounds checks: Ethernet, IPv4 or IPv6, TCP or UDP.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use steer_common::{outcome, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP};

use crate::Stop;

pub const ETH_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
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

    #[inline(always)]
    pub fn is_tcp(&self) -> bool {
        self.key.proto == PROTO_TCP
    }
}

/// What the IP header says of the rest of the packet.
struct L3 {
    /// Offset of the L4 header.
    l4_off: usize,
    /// Header length.
    len: usize,
    /// Bytes after the IP header (IPv4 total length − header; IPv6 payload length).
    l4_bytes: u32,
}

/// A pointer to a `T` at `off` bytes into the packet, if the packet holds all of it.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *const T)
}

/// Mutable variant of [`ptr_at`].
#[inline(always)]
pub fn ptr_at_mut<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    ptr_at::<T>(ctx, off).map(|p| p as *mut T)
}

#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    // SAFETY: ptr_at checked that the packet holds the bytes; reads are unaligned-safe.
    ptr_at::<T>(ctx, off).map(|p| unsafe { core::ptr::read_unaligned(p) })
}

/// Parses the headers. Packets that are not IP are passed; truncated or malformed headers are
/// passed to the kernel, which counts and drops them (the LB does not own the VIPs).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Stop> {
    let ethertype: [u8; 2] = read(ctx, 12).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    let mut key = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport_be: 0,
        dport_be: 0,
        proto: 0,
        family: 0,
        _pad: [0; 2],
    };
    let l3 = match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_ipv4(ctx, ETH_LEN, &mut key)?,
        ETH_P_IPV6 => parse_ipv6(ctx, ETH_LEN, &mut key)?,
        _ => return Err(Stop::Pass(outcome::PASS_NOT_IP)),
    };
    let mut pkt = Packet {
        key,
        tcp_flags: 0,
        l3_len: l3.len,
        seq: 0,
        ack_seq: 0,
        payload_len: 0,
    };
    parse_l4(ctx, &l3, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, key: &mut FlowKey) -> Result<L3, Stop> {
    let malformed = Stop::Pass(outcome::PASS_MALFORMED);
    let hdr: [u8; 20] = read(ctx, off).ok_or(malformed)?;
    let ihl = (hdr[0] & 0x0f) as usize;
    if hdr[0] >> 4 != 4 || ihl < 5 {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    let frag = u16::from_be_bytes([hdr[6], hdr[7]]);
    if frag & 0x3fff != 0 {
        // More-fragments set or a non-zero offset: ports are not in every piece.
        return Err(Stop::Pass(outcome::PASS_FRAGMENT));
    }
    let total = u16::from_be_bytes([hdr[2], hdr[3]]) as u32;
    let len = ihl * 4;
    if total < len as u32 {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    key.family = FAMILY_V4;
    key.proto = hdr[9];
    key.src[..4].copy_from_slice(&hdr[12..16]);
    key.dst[..4].copy_from_slice(&hdr[16..20]);
    Ok(L3 {
        l4_off: off + len,
        len,
        l4_bytes: total - len as u32,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, key: &mut FlowKey) -> Result<L3, Stop> {
    let p = ptr_at::<[u8; IPV6_LEN]>(ctx, off).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    // SAFETY: bounds checked by ptr_at.
    let hdr = unsafe { &*p };
    if hdr[0] >> 4 != 6 {
        return Err(Stop::Pass(outcome::PASS_MALFORMED));
    }
    if hdr[6] == NEXTHDR_FRAGMENT {
        return Err(Stop::Pass(outcome::PASS_FRAGMENT));
    }
    key.family = FAMILY_V6;
    key.proto = hdr[6];
    key.src.copy_from_slice(&hdr[8..24]);
    key.dst.copy_from_slice(&hdr[24..40]);
    Ok(L3 {
        l4_off: off + IPV6_LEN,
        len: IPV6_LEN,
        l4_bytes: u16::from_be_bytes([hdr[4], hdr[5]]) as u32,
    })
}

/// Reads the ports (and TCP flags, sequence numbers, payload length) into `pkt`. A TCP or UDP
/// header cut short, or a TCP data offset below 5 words, is malformed: passed to the kernel,
/// which counts and drops it. Other protocols carry no ports and match no service.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, l3: &L3, pkt: &mut Packet) -> Result<(), Stop> {
    let malformed = Stop::Pass(outcome::PASS_MALFORMED);
    match pkt.key.proto {
        PROTO_TCP => {
            let h: [u8; 20] = read(ctx, l3.l4_off).ok_or(malformed)?;
            let doff = (h[12] >> 4) as u32 * 4;
            if doff < 20 || doff > l3.l4_bytes {
                return Err(Stop::Pass(outcome::PASS_MALFORMED));
            }
            pkt.key.sport_be = u16::from_ne_bytes([h[0], h[1]]);
            pkt.key.dport_be = u16::from_ne_bytes([h[2], h[3]]);
            pkt.seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            pkt.ack_seq = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
            pkt.tcp_flags = h[13];
            pkt.payload_len = l3.l4_bytes - doff;
        }
        PROTO_UDP => {
            let h: [u8; 8] = read(ctx, l3.l4_off).ok_or(malformed)?;
            pkt.key.sport_be = u16::from_ne_bytes([h[0], h[1]]);
            pkt.key.dport_be = u16::from_ne_bytes([h[2], h[3]]);
        }
        _ => {}
    }
    Ok(())
}
