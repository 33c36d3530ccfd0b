//! Answering a TCP packet with a RST from XDP, as the backend's `REJECT` would: the frame is
//! turned around in place (addresses and ports swapped, trimmed to bare headers) and sent back
//! out with `XDP_TX`. Its VLAN tags stay where they are; the IP and TCP headers are rebuilt
//! whole from what `parse` read, so IPv4 options and IPv6 extension headers of the packet are
//! simply written over (the answer carries none). Fields are written with single stores;
//! checksums are summed from the values written, not read back.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_tail, bpf_xdp_get_buff_len},
    programs::XdpContext,
};
use steer_common::{outcome, FAMILY_V4, PROTO_TCP};

use crate::{
    addr::words,
    csum,
    parse::{ptr_at_mut, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    Stop,
};

/// Destination and source MAC addresses.
const ETH_ADDRS_LEN: usize = 12;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;
const TTL: u8 = 64;

/// `N` writable bytes of the frame.
#[derive(Clone, Copy)]
struct Out<const N: usize>(*mut u8);

impl<const N: usize> Out<N> {
    #[inline(always)]
    fn at(ctx: &XdpContext, off: usize) -> Option<Self> {
        ptr_at_mut::<[u8; N]>(ctx, off).map(|p| Out(p as *mut u8))
    }
    // SAFETY (all writes): offsets are constants below N, checked by `at`.
    #[inline(always)]
    fn u8(self, i: usize, v: u8) {
        unsafe { *self.0.add(i) = v }
    }
    #[inline(always)]
    fn u16_ne(self, i: usize, v: u16) {
        unsafe { *(self.0.add(i) as *mut u16) = v }
    }
    #[inline(always)]
    fn u32_ne(self, i: usize, v: u32) {
        unsafe { *(self.0.add(i) as *mut u32) = v }
    }
    #[inline(always)]
    fn u16_be(self, i: usize, v: u16) {
        self.u16_ne(i, v.to_be())
    }
    #[inline(always)]
    fn u32_be(self, i: usize, v: u32) {
        self.u32_ne(i, v.to_be())
    }
}

impl Out<ETH_ADDRS_LEN> {
    /// Swaps the Ethernet addresses: the answer goes back to whoever sent the frame.
    #[inline(always)]
    fn swap_macs(self) {
        // SAFETY: bytes 0..12 are the N bytes checked by `at`.
        unsafe {
            let d0 = *(self.0 as *const u32);
            let d1 = *(self.0.add(4) as *const u16);
            let s0 = *(self.0.add(6) as *const u16);
            let s1 = *(self.0.add(8) as *const u32);
            *(self.0 as *mut u16) = s0;
            *(self.0.add(2) as *mut u32) = s1;
            *(self.0.add(6) as *mut u32) = d0;
            *(self.0.add(10) as *mut u16) = d1;
        }
    }
}

/// Sum of the 16-bit words of a network-order u32.
#[inline(always)]
fn sum32(ne: u32) -> u32 {
    let v = u32::from_be(ne);
    (v >> 16) + (v & 0xffff)
}

/// Turns the TCP packet `pkt` into the RST that answers it (RFC 9293 §3.10.7.1) and returns
/// `XDP_TX`. A RST is not answered: dropped (`DROP_REJECTED`; the caller may count it under its
/// own reason).
#[inline(always)]
pub fn reply_rst(ctx: &XdpContext, pkt: &Packet) -> Result<u32, Stop> {
    if pkt.tcp_flags & TCP_RST != 0 {
        return Err(Stop::Drop(outcome::DROP_REJECTED));
    }
    let v4 = pkt.key.family == FAMILY_V4;
    // The answer's IP header is a bare one; the packet's may be longer (options, extension
    // headers), so the frame is never shorter than the answer.
    let l3_len = if v4 { IPV4_LEN } else { IPV6_LEN };
    let ip = pkt.l3_off;

    // Trim the frame to Ethernet (and its tags) + IP + a bare TCP header. Its length counts
    // any fragments after the linear part too (data_end is only the linear part's end), or
    // their bytes would be left trailing the RST.
    let want = (ip + l3_len + TCP_LEN) as i32;
    // SAFETY: helper without preconditions on an XDP context.
    let have = unsafe { bpf_xdp_get_buff_len(ctx.ctx) } as i32;
    if have > want {
        // SAFETY: shrinking an XDP frame; pointers are re-derived and re-checked below.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, want - have) } != 0 {
            return Err(Stop::Drop(outcome::DROP_REJECTED));
        }
    }

    let (seq, ack, flags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (pkt.ack_seq, 0, TCP_RST)
    } else {
        let mut len = pkt.payload_len;
        if pkt.tcp_flags & TCP_SYN != 0 {
            len += 1;
        }
        if pkt.tcp_flags & TCP_FIN != 0 {
            len += 1;
        }
        (0, pkt.seq.wrapping_add(len), TCP_RST | TCP_ACK)
    };
    // The answer's source is the packet's destination.
    let (src, dst) = (words(&pkt.key.dst), words(&pkt.key.src));
    let mut sum = TCP_LEN as u32 + PROTO_TCP as u32;
    Out::<ETH_ADDRS_LEN>::at(ctx, 0)
        .ok_or(Stop::Drop(outcome::DROP_REJECTED))?
        .swap_macs();
    if v4 {
        let o =
            Out::<{ IPV4_LEN + TCP_LEN }>::at(ctx, ip).ok_or(Stop::Drop(outcome::DROP_REJECTED))?;
        let total = (IPV4_LEN + TCP_LEN) as u16;
        o.u16_be(0, 0x4500);
        o.u16_be(2, total);
        o.u32_be(4, 0x0000_4000); // id 0, DF
        o.u16_be(8, (TTL as u16) << 8 | PROTO_TCP as u16);
        o.u32_ne(12, src[0]);
        o.u32_ne(16, dst[0]);
        let ip_sum = 0x4500
            + total as u32
            + 0x4000
            + ((TTL as u32) << 8 | PROTO_TCP as u32)
            + sum32(src[0])
            + sum32(dst[0]);
        o.u16_be(10, csum::fold(ip_sum));
        sum += sum32(src[0]) + sum32(dst[0]);
        write_tcp(o, IPV4_LEN, pkt, seq, ack, flags, sum);
    } else {
        let o =
            Out::<{ IPV6_LEN + TCP_LEN }>::at(ctx, ip).ok_or(Stop::Drop(outcome::DROP_REJECTED))?;
        o.u32_be(0, 0x6000_0000);
        o.u16_be(4, TCP_LEN as u16);
        o.u8(6, PROTO_TCP);
        o.u8(7, TTL);
        for i in 0..4 {
            o.u32_ne(8 + 4 * i, src[i]);
            o.u32_ne(24 + 4 * i, dst[i]);
            sum += sum32(src[i]) + sum32(dst[i]);
        }
        write_tcp(o, IPV6_LEN, pkt, seq, ack, flags, sum);
    }
    Ok(xdp_action::XDP_TX)
}

/// Writes a bare TCP header at `off`; `sum` holds the pseudo-header's sum.
#[inline(always)]
fn write_tcp<const N: usize>(
    o: Out<N>,
    off: usize,
    pkt: &Packet,
    seq: u32,
    ack: u32,
    flags: u8,
    sum: u32,
) {
    let doff_flags = ((TCP_LEN as u16 / 4) << 12) | flags as u16;
    o.u16_ne(off, pkt.key.dport_be);
    o.u16_ne(off + 2, pkt.key.sport_be);
    o.u32_be(off + 4, seq);
    o.u32_be(off + 8, ack);
    o.u16_be(off + 12, doff_flags);
    o.u32_ne(off + 14, 0); // window 0, checksum 0 for now
    o.u16_ne(off + 18, 0); // urgent pointer
    let sum = sum
        + u16::from_be(pkt.key.dport_be) as u32
        + u16::from_be(pkt.key.sport_be) as u32
        + (seq >> 16)
        + (seq & 0xffff)
        + (ack >> 16)
        + (ack & 0xffff)
        + doff_flags as u32;
    o.u16_be(off + 16, csum::fold(sum));
}
