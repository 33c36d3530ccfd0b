//! Sending a translated packet on its way: next hop, MACs and egress interface from the
//! kernel's FIB (`bpf_fib_lookup`), so NAT backends and clients may sit in any subnet.

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use steer_common::{hash::mix32, note, outcome, NeighWant, FAMILY_V4, NEIGH_SLOTS};

use crate::{addr::words, cache, hop, maps::NEIGH, natcache, parse::ptr_at_mut, Stop, Verdict};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// Zeroes `*v` (a plain struct of integers, 8-byte aligned) a word at a time. LLVM turns
/// zeroing of more than a few bytes — `mem::zeroed`, `[0u8; 16]`, even three zero words —
/// into a call to compiler-builtins' `memset`, a BPF function that loops over the bytes; on
/// every NAT packet that took the full path that was a 64-byte loop for the FIB request and
/// two 12-byte ones for its addresses. Volatile stores are not merged back into it.
#[inline(always)]
fn zero<T>(v: *mut T) {
    const { assert!(core::mem::size_of::<T>() % 8 == 0 && core::mem::align_of::<T>() >= 8) };
    let w = v as *mut u64;
    for i in 0..core::mem::size_of::<T>() / 8 {
        // SAFETY: inside `*v`, 8-byte aligned (checked above).
        unsafe { core::ptr::write_volatile(w.add(i), 0) };
    }
}

/// The FIB request, 8-byte aligned so that `zero` can clear it in words.
#[repr(C, align(8))]
struct Request(FibParams);

/// An address as 16 bytes in words, 8-byte aligned (for `zero`).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Addr([u32; 4]);

/// What `send` needs besides the addresses, packed into one argument (BPF calls take at most
/// five): family, protocol, offset of the IP header, which direction (for the outcome), and
/// whether a NAT cache fill takes the answer.
#[derive(Clone, Copy)]
pub struct Route(u64);

const FILL: u64 = 1 << 33;

impl Route {
    #[inline(always)]
    pub fn new(family: u8, proto: u8, l3_off: usize, reply: bool) -> Route {
        Route(
            family as u64
                | (proto as u64) << 8
                | (l3_off as u64 & 0xffff) << 16
                | (reply as u64) << 32,
        )
    }

    /// `fill`: the answer goes into the NAT cache fill begun for the packet
    /// (`natcache::next_hop`).
    #[inline(always)]
    pub fn fill(self, fill: bool) -> Route {
        Route(self.0 | if fill { FILL } else { 0 })
    }
}

/// Packs what a packet's processing ends with, `(action, outcome)`, into one word: the
/// return value of a BPF call (which cannot return an aggregate).
#[inline(always)]
pub fn pack(r: Result<Verdict, Stop>) -> u64 {
    let (action, why) = match r {
        Ok(v) => v,
        Err(Stop::Pass(why)) => (xdp_action::XDP_PASS, why),
        Err(Stop::Drop(why)) => (xdp_action::XDP_DROP, why),
    };
    action as u64 | (why as u64) << 32
}

/// The `(action, outcome)` packed by `pack`.
#[inline(always)]
pub fn unpack(v: u64) -> Verdict {
    (v as u32, (v >> 32) as u32)
}

/// Sends a translated packet on its way (a BPF call of its own: its 64-byte FIB request
/// would not fit in the caller's stack). Next hop, MACs and egress interface come from the
/// FIB. Out of the interface it came in by: `XDP_TX`; out of another one: `XDP_REDIRECT`. A
/// next hop with no neighbour entry is dropped and written down for steer-ctl to resolve; no
/// route, or an MTU too small, is dropped and counted. Returns a `pack`ed verdict.
#[inline(never)]
pub fn send(ctx: &XdpContext, src: &[u8; 16], dst: &[u8; 16], route: Route) -> u64 {
    pack(try_send(ctx, src, dst, route))
}

/// `send` for a packet already rewritten: its own addresses are the ones to route (read from
/// its IP header). Lets a translating call return before the FIB request is made, so the two
/// stacks are never nested.
#[inline(never)]
pub fn send_packet(ctx: &XdpContext, route: Route) -> u64 {
    let family = route.0 as u8;
    let l3_off = ((route.0 >> 16) & 0xffff) as usize;
    let (mut src, mut dst) = (
        core::mem::MaybeUninit::<Addr>::uninit(),
        core::mem::MaybeUninit::<Addr>::uninit(),
    );
    zero(src.as_mut_ptr());
    zero(dst.as_mut_ptr());
    // SAFETY: both were zeroed just above.
    let (src, dst) = unsafe { (&mut (*src.as_mut_ptr()).0, &mut (*dst.as_mut_ptr()).0) };
    if family == FAMILY_V4 {
        let Some(ip) = ptr_at_mut::<[u32; 5]>(ctx, l3_off) else {
            return pack(Err(Stop::Pass(outcome::PASS_MALFORMED)));
        };
        // SAFETY: the 20 bytes were checked by ptr_at_mut; the JIT loads unaligned words.
        let ip = unsafe { &*ip };
        src[0] = ip[3];
        dst[0] = ip[4];
    } else {
        let Some(ip) = ptr_at_mut::<[u32; 10]>(ctx, l3_off) else {
            return pack(Err(Stop::Pass(outcome::PASS_MALFORMED)));
        };
        // SAFETY: the 40 bytes were checked by ptr_at_mut; as above.
        let ip = unsafe { &*ip };
        src.copy_from_slice(&ip[2..6]);
        dst.copy_from_slice(&ip[6..10]);
    }
    // SAFETY: same size, plain integers.
    let (src, dst) = unsafe {
        (
            &*(src as *const [u32; 4] as *const [u8; 16]),
            &*(dst as *const [u32; 4] as *const [u8; 16]),
        )
    };
    pack(try_send(ctx, src, dst, route))
}

#[inline(always)]
fn try_send(
    ctx: &XdpContext,
    src: &[u8; 16],
    dst: &[u8; 16],
    route: Route,
) -> Result<Verdict, Stop> {
    let family = route.0 as u8;
    let proto = (route.0 >> 8) as u8;
    let l3_off = ((route.0 >> 16) & 0xffff) as usize;
    let ingress = ctx.ingress_ifindex() as u32;
    let ask = hop::Ask {
        src,
        dst,
        ingress,
        proto,
        len: (ctx.data_end() - ctx.data()).saturating_sub(l3_off) as u16,
    };
    let slot = ask.slot();
    // Read before the FIB is asked: a change after its answer voids the answer.
    let epoch = cache::host().epoch;
    if let Some(h) = hop::find(slot, &ask, epoch) {
        let (dmac, smac) = hop::macs(h);
        return out(ctx, route, dmac, smac, h.ifindex_out, h.filled_jiffies);
    }
    let mut req = core::mem::MaybeUninit::<Request>::uninit();
    zero(req.as_mut_ptr());
    // SAFETY: zeroed just above; all zeroes is a valid request.
    let p = unsafe { &mut (*req.as_mut_ptr()).0 };
    p.l4_protocol = proto;
    p.ifindex = ingress;
    p.__bindgen_anon_1.tot_len = ask.len;
    if family == FAMILY_V4 {
        p.family = AF_INET;
        p.__bindgen_anon_3.ipv4_src = words(src)[0];
        p.__bindgen_anon_4.ipv4_dst = words(dst)[0];
    } else {
        p.family = AF_INET6;
        p.__bindgen_anon_3.ipv6_src = words(src);
        p.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: params on our stack, its size passed; XDP context from the kernel.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            &mut *p as *mut FibParams,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc as u32 {
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            want_neighbour(p, family);
            return Err(Stop::Drop(outcome::DROP_NO_NEIGH));
        }
        BPF_FIB_LKUP_RET_FRAG_NEEDED => return Err(Stop::Drop(outcome::DROP_TOO_BIG)),
        _ => return Err(Stop::Drop(outcome::DROP_NO_ROUTE)),
    }
    let since = hop::keep(slot, &ask, epoch, &p.dmac, &p.smac, p.ifindex);
    out(ctx, route, &p.dmac, &p.smac, p.ifindex, since)
}

/// Sends a translated packet out as the FIB said (`since`: when it said so, for a NAT cache
/// fill that takes the answer).
#[inline(always)]
fn out(
    ctx: &XdpContext,
    route: Route,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    ifindex: u32,
    since: u32,
) -> Result<Verdict, Stop> {
    let l3_off = ((route.0 >> 16) & 0xffff) as usize;
    let reply = (route.0 >> 32) & 1 != 0;
    let eth = ptr_at_mut::<[u8; 12]>(ctx, 0).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    // SAFETY: ptr_at_mut checked that the 12 bytes are in the packet.
    let macs = unsafe { &mut *eth };
    macs[0..6].copy_from_slice(dmac);
    macs[6..12].copy_from_slice(smac);
    let (tx, redirect) = if reply {
        (outcome::TX_REPLY, outcome::REDIRECT_REPLY)
    } else {
        (outcome::TX_FORWARD, outcome::REDIRECT_FORWARD)
    };
    let fill = route.0 & FILL != 0;
    if ifindex == ctx.ingress_ifindex() as u32 {
        if fill {
            natcache::next_hop(ctx, l3_off, dmac, smac, ifindex, since);
        }
        return Ok((xdp_action::XDP_TX, tx));
    }
    // SAFETY: helper without preconditions; returns XDP_REDIRECT, or XDP_ABORTED on a bad
    // index (never: the FIB gave it).
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    if action != xdp_action::XDP_REDIRECT {
        return Err(Stop::Drop(outcome::DROP_NO_ROUTE));
    }
    if fill {
        natcache::next_hop(ctx, l3_off, dmac, smac, ifindex, since);
    }
    Ok((action, redirect))
}

/// Writes down a next hop the FIB found no neighbour for (`p` holds it after the lookup),
/// in the slot of its address's hash, with a note to steer-ctl when the slot held another
/// (a next hop asked for again is found by the daemon's slow poll); steer-ctl has the kernel
/// resolve it, so the next packet (a client's retransmission) goes through.
#[inline(always)]
fn want_neighbour(p: &FibParams, family: u8) {
    let mut addr = [0u32; 4];
    // SAFETY: the lookup wrote the next hop into the destination field of the family.
    unsafe {
        if family == FAMILY_V4 {
            addr[0] = p.__bindgen_anon_4.ipv4_dst;
        } else {
            addr = p.__bindgen_anon_4.ipv6_dst;
        }
    }
    let slot = mix32(addr[0] ^ addr[1] ^ addr[2] ^ addr[3] ^ p.ifindex) % NEIGH_SLOTS;
    if let Some(w) = NEIGH.get_ptr_mut(slot) {
        // SAFETY: a map value that lives for this run; steer-ctl reads it whole after `seq`
        // changes, so a torn write is at worst one wasted resolution.
        let new = unsafe {
            let old = *w;
            // SAFETY: same size, plain integers.
            let addr = core::mem::transmute::<[u32; 4], [u8; 16]>(addr);
            *w = NeighWant {
                addr,
                ifindex: p.ifindex,
                family: family as u32,
                seq: old.seq + 1,
            };
            old.addr != addr || old.ifindex != p.ifindex || old.seq == 0
        };
        if new {
            crate::note::send(note::NEIGH, slot);
        }
    }
}
