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

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// What the datapath needs to know of a packet.
pub struct Packet {
    /// The 5-tuple as sent by the client.
    pub key: FlowKey,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
}

impl Packet {
    /// A TCP SYN without ACK: the first packet of a connection attempt.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
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
    let l3_off = ETH_LEN;
    let l4_off = match u16::from_be_bytes(ethertype) {
        ETH_P_IP => parse_ipv4(ctx, l3_off, &mut key)?,
        ETH_P_IPV6 => parse_ipv6(ctx, l3_off, &mut key)?,
        _ => return Err(Stop::Pass(outcome::PASS_NOT_IP)),
    };
    let tcp_flags = parse_l4(ctx, l4_off, &mut key)?;
    Ok(Packet { key, tcp_flags })
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, off: usize, key: &mut FlowKey) -> Result<usize, Stop> {
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
    key.family = FAMILY_V4;
    key.proto = hdr[9];
    key.src[..4].copy_from_slice(&hdr[12..16]);
    key.dst[..4].copy_from_slice(&hdr[16..20]);
    Ok(off + ihl * 4)
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, off: usize, key: &mut FlowKey) -> Result<usize, Stop> {
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
    Ok(off + IPV6_LEN)
}

/// Reads the ports (and TCP flags) into `key`. A TCP or UDP header cut short, or a TCP data
/// offset below 5 words, is malformed: passed to the kernel, which counts and drops it. Other
/// protocols carry no ports and match no service.
#[inline(always)]
fn parse_l4(ctx: &XdpContext, off: usize, key: &mut FlowKey) -> Result<u8, Stop> {
    let malformed = Stop::Pass(outcome::PASS_MALFORMED);
    match key.proto {
        PROTO_TCP => {
            let h: [u8; 20] = read(ctx, off).ok_or(malformed)?;
            if h[12] >> 4 < 5 {
                return Err(Stop::Pass(outcome::PASS_MALFORMED));
            }
            key.sport_be = u16::from_ne_bytes([h[0], h[1]]);
            key.dport_be = u16::from_ne_bytes([h[2], h[3]]);
            Ok(h[13])
        }
        PROTO_UDP => {
            let h: [u8; 8] = read(ctx, off).ok_or(malformed)?;
            key.sport_be = u16::from_ne_bytes([h[0], h[1]]);
            key.dport_be = u16::from_ne_bytes([h[2], h[3]]);
            Ok(0)
        }
        _ => Ok(0),
    }
}
