//! Answering a TCP packet with a RST from XDP, as the backend's `REJECT` would: the frame is
//! turned around in place (addresses and ports swapped, trimmed to bare headers) and sent back
//! out with `XDP_TX`.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use steer_common::{outcome, FAMILY_V4};

use crate::{
    csum,
    parse::{ptr_at, ptr_at_mut, Packet, ETH_LEN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    Stop,
};

const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const TCP_LEN: usize = 20;

/// Writes `v` at `off`, if the packet holds it.
#[inline(always)]
fn put<T>(ctx: &XdpContext, off: usize, v: T) -> Result<(), Stop> {
    let p = ptr_at_mut::<T>(ctx, off).ok_or(Stop::Drop(outcome::DROP_REJECTED))?;
    // SAFETY: bounds checked by ptr_at_mut.
    unsafe { core::ptr::write_unaligned(p, v) };
    Ok(())
}

/// Turns the TCP packet `pkt` into the RST that answers it (RFC 9293 §3.10.7.1) and returns
/// `XDP_TX`. An IPv4 header with options is not rewritten: dropped with `DROP_REJECTED`.
#[inline(always)]
pub fn reply_rst(ctx: &XdpContext, pkt: &Packet) -> Result<u32, Stop> {
    let v4 = pkt.key.family == FAMILY_V4;
    let l3_len = if v4 { IPV4_LEN } else { IPV6_LEN };
    if pkt.l3_len != l3_len || pkt.tcp_flags & TCP_RST != 0 {
        return Err(Stop::Drop(outcome::DROP_REJECTED));
    }
    let macs = ptr_at::<[u8; 12]>(ctx, 0).ok_or(Stop::Drop(outcome::DROP_REJECTED))?;
    // SAFETY: bounds checked by ptr_at.
    let macs = unsafe { core::ptr::read_unaligned(macs) };

    // Trim the frame to Ethernet + IP + a bare TCP header.
    let want = (ETH_LEN + l3_len + TCP_LEN) as i32;
    let have = (ctx.data_end() - ctx.data()) as i32;
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

    let mut eth = [0u8; 12];
    eth[0..6].copy_from_slice(&macs[6..12]);
    eth[6..12].copy_from_slice(&macs[0..6]);
    put(ctx, 0, eth)?;

    let (src, dst) = (&pkt.key.dst, &pkt.key.src);
    let mut sum = TCP_LEN as u32 + pkt.key.proto as u32;
    if v4 {
        let mut ip = [0u8; IPV4_LEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((IPV4_LEN + TCP_LEN) as u16).to_be_bytes());
        ip[6] = 0x40; // DF
        ip[8] = 64;
        ip[9] = pkt.key.proto;
        ip[12..16].copy_from_slice(&src[..4]);
        ip[16..20].copy_from_slice(&dst[..4]);
        let c = csum::fold(csum::add(0, &ip));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        put(ctx, ETH_LEN, ip)?;
        let mut a = [0u8; 8];
        a[..4].copy_from_slice(&src[..4]);
        a[4..].copy_from_slice(&dst[..4]);
        sum = csum::add(sum, &a);
    } else {
        let mut ip = [0u8; IPV6_LEN];
        ip[0] = 0x60;
        ip[4..6].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
        ip[6] = pkt.key.proto;
        ip[7] = 64;
        ip[8..24].copy_from_slice(src);
        ip[24..40].copy_from_slice(dst);
        put(ctx, ETH_LEN, ip)?;
        sum = csum::add(sum, src);
        sum = csum::add(sum, dst);
    }

    let mut tcp = [0u8; TCP_LEN];
    tcp[0..2].copy_from_slice(&pkt.key.dport_be.to_ne_bytes());
    tcp[2..4].copy_from_slice(&pkt.key.sport_be.to_ne_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = (TCP_LEN as u8 / 4) << 4;
    tcp[13] = flags;
    let c = csum::fold(csum::add(sum, &tcp));
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    put(ctx, ETH_LEN + l3_len, tcp)?;
    Ok(xdp_action::XDP_TX)
}
