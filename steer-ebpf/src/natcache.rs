//! The NAT flow cache: per CPU, direct-mapped, both directions of established NAT flows, read
//! by the entry program. A hit rewrites and sends the packet as the full path would — the tail
//! call to `steer_nat` or `steer_reply`, which parses again, looks the service, the flow and
//! the other half up, translates, and asks the FIB (`bpf_fib_lookup`) — from one entry: the
//! addresses and ports the packet leaves with, the checksum deltas (RFC 1624: for a given
//! 5-tuple in and out they are constants), the MACs and the egress interface.
//!
//! An entry is used only while all of these hold, else the packet takes the full path (which
//! fills the entry again):
//! - the 5-tuple matches, and the packet has no SYN, FIN or RST (those change the flow, and
//!   passive health and refused-connection recovery only look at SYNs, SYN-ACKs and RSTs);
//! - `Globals::epoch` is the one it was filled in: steer-ctl moves it after every change of a
//!   service entry, of a backend's address, port or LB address (`snat`), of a pool, and when
//!   a next hop may have changed (below);
//! - both halves' flow epoch buckets are as they were when read, before the half itself was
//!   read: the client's 5-tuple's (moved wherever the flow's entry in the connection tables
//!   changes: new, re-pinned, ended, retired, forgotten, reset, healed) and the reply's
//!   5-tuple's (moved wherever the reverse half changes: a port taken, released, healed, or
//!   seen to end). A port given to another flow stamps the reply's bucket, which the old
//!   flow's entries hold: they are void at once;
//! - it was filled less than `cache::REFRESH_JIFFIES` ago (200 ms at HZ=250), so the flow's
//!   `last_seen_ns` and the reverse half's `last_ns` (idle ageing, active counts, a port's
//!   reuse by `nat::claim`) lag no more than the DSR cache lets the connection table's lag;
//! - the packet comes in by the interface it was filled from (the FIB's answer depends on the
//!   ingress interface), and is no longer than the packet the FIB checked the route's MTU for;
//! - the backend still has the flow's generation and keeps flows (read live, as on the full
//!   path: `reject` and removal act at once).
//!
//! Only what a full path through an established, open flow does is cached: both halves found
//! and each other's, neither side has sent a FIN or RST. An eviction of a half (the tables are
//! LRU) is not seen by a hit: the entry stands for it until its refresh, as the DSR cache
//! does for the connection table.
//!
//! Next hops. The FIB's answer (next hop MAC, egress interface and MAC, MTU) is the kernel's at
//! the fill. It may change: a neighbour's MAC (a router's failover, a gratuitous ARP), a
//! neighbour gone invalid, a route, an address, a rule, an interface. steer-ctl follows the
//! kernel's rtnetlink notifications of these (`daemon::nexthop`) and moves `Globals::epoch`
//! when one may change a lookup's answer — a neighbour whose link-layer address changed or
//! that is no longer valid, any route, rule, address, link or forwarding change — which voids
//! every cached entry; a neighbour's reachability going round (reachable, stale, probe, with
//! the same MAC) changes no answer (`bpf_fib_lookup` takes any valid state) and moves nothing.
//! The fill reads the epoch before it asks the FIB, so a change after the answer voids it. Were
//! the daemon gone (fail static) or a notification lost, the refresh bounds a stale answer to
//! 50 jiffies. The answer a fill takes may come from the next-hop cache (`crate::hop`), kept
//! under the same rules; the entry is then dated by when the FIB gave it, so the bound holds
//! from the answer, not from the fill. A skipped lookup changes nothing in the kernel:
//! `bpf_fib_lookup` neither confirms nor marks a neighbour used, so reachability is kept up by
//! the kernel's own traffic and probes, as before.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_jiffies64, bpf_redirect},
    programs::XdpContext,
};
use steer_common::{
    nat_cache_index, outcome, FlowKey, NatCached, FAMILY_V4, FLOW_EPOCH_LOG2, NAT_CACHED_REPLY,
    NAT_CACHE_LOG2, PROTO_TCP, PROTO_UDP,
};

use crate::{
    addr::words,
    cache,
    csum::{self, Delta},
    maps::NAT_CACHE,
    parse::{ptr_at_mut, Packet},
    select, stats, Stop, Verdict,
};

/// This CPU's element where a fill is put together, after its cache's slots.
#[inline(always)]
fn stage_index() -> u32 {
    nat_cache_index(cache::cpu(), 1 << NAT_CACHE_LOG2)
}

/// `NatCached::fills` of the stage entry: which steps of the fill are done, in order.
mod staged {
    /// The packet's flow and epochs (`begin`), the other direction's epoch (`other`).
    pub const BEGUN: u16 = 1;
    /// The other half found, its own, and open (`other_open`).
    pub const OTHER: u16 = 2;
    /// The rewrite, read from the packet once translated (`rewritten`).
    pub const REWRITE: u16 = 4;
    /// The FIB's answer (`next_hop`).
    pub const NEXT_HOP: u16 = 8;
    pub const ALL: u16 = BEGUN | OTHER | REWRITE | NEXT_HOP;
}

/// This CPU's slot for the 5-tuple of `hash`.
#[inline(always)]
fn slot(hash: u32) -> u32 {
    nat_cache_index(cache::cpu(), hash >> (32 - NAT_CACHE_LOG2))
}

#[inline(always)]
fn jiffies() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_jiffies64() as u32 }
}

/// Whether `pkt` may be served from the NAT cache or fill it: TCP without SYN, FIN or RST, or
/// UDP.
#[inline(always)]
pub fn may_hold(pkt: &Packet) -> bool {
    (pkt.key.proto == PROTO_TCP || pkt.key.proto == PROTO_UDP) && cache::may_hold(pkt)
}

/// The packet's IP length (header and payload), as `bpf_fib_lookup` is given it (`tot_len`).
#[inline(always)]
fn ip_len(ctx: &XdpContext, pkt: &Packet) -> usize {
    (ctx.data_end() - ctx.data()).saturating_sub(pkt.l3_off)
}

/// Serves `pkt` from this CPU's cache if its entry is still good (module doc): rewritten,
/// counted as the full path counts it (a client's packet: its service and backend, and the
/// outcome; a reply: the outcome), sent. `None`: nothing was changed or counted; the packet
/// takes the full path.
#[inline(always)]
pub fn serve(
    ctx: &XdpContext,
    pkt: &Packet,
    hash: u32,
    cfg_epoch: u32,
) -> Option<Result<Verdict, Stop>> {
    let e = NAT_CACHE.get(slot(hash))?;
    if !e.key.same(&pkt.key)
        || e.cfg_epoch != cfg_epoch
        || jiffies().wrapping_sub(e.filled_jiffies) >= cache::REFRESH_JIFFIES as u32
        || cache::bucket_epoch(hash >> (32 - FLOW_EPOCH_LOG2)) != e.epoch
        || cache::bucket_epoch((e.other & !NAT_CACHED_REPLY) as u32) != e.other_epoch
    {
        return None;
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if ingress != e.ifindex_in || ip_len(ctx, pkt) > e.max_len as usize {
        return None;
    }
    let (be_id, be) = select::flow_backend(e.backend as u32, e.gen)?;
    if !be.keeps_flows() {
        return None;
    }
    apply(ctx, pkt, e)?;
    let reply = e.other & NAT_CACHED_REPLY != 0;
    if !reply {
        let len = (ctx.data_end() - ctx.data()) as u64;
        stats::count_service(e.svc as u32, len);
        stats::count_backend(be_id, len);
    }
    let (tx, redirect) = if reply {
        (outcome::TX_REPLY, outcome::REDIRECT_REPLY)
    } else {
        (outcome::TX_FORWARD, outcome::REDIRECT_FORWARD)
    };
    if e.ifindex_out == ingress {
        return Some(Ok((xdp_action::XDP_TX, tx)));
    }
    // SAFETY: helper without preconditions; XDP_ABORTED on a bad index (one the FIB gave,
    // since gone), counted as the full path counts it.
    let action = unsafe { bpf_redirect(e.ifindex_out, 0) } as u32;
    if action != xdp_action::XDP_REDIRECT {
        return Some(Err(Stop::Drop(outcome::DROP_NO_ROUTE)));
    }
    Some(Ok((action, redirect)))
}

/// Rewrites the frame from entry `e`: MACs, addresses, ports, checksums. `None` (nothing
/// written) when a header is not all in the frame.
#[inline(always)]
fn apply(ctx: &XdpContext, pkt: &Packet, e: &NatCached) -> Option<()> {
    let v4 = pkt.key.family == FAMILY_V4;
    let eth = ptr_at_mut::<[u8; 12]>(ctx, 0)? as *mut u32;
    let (ip, ip_words) = if v4 {
        (ptr_at_mut::<[u8; 20]>(ctx, pkt.l3_off)? as *mut u8, 1)
    } else {
        (ptr_at_mut::<[u8; 40]>(ctx, pkt.l3_off)? as *mut u8, 4)
    };
    // Each protocol's header checked and written in its own branch: the verifier must see
    // the length checked for the bytes written.
    if pkt.key.proto == PROTO_TCP {
        let l4 = ptr_at_mut::<[u8; 20]>(ctx, pkt.l4_off)? as *mut u8;
        // SAFETY: every pointer was checked by ptr_at_mut for the bytes written through it.
        unsafe {
            write_l2_l3(eth, ip, ip_words, v4, e);
            *(l4 as *mut u16) = e.sport_be;
            *(l4.add(2) as *mut u16) = e.dport_be;
            let c = l4.add(16) as *mut u16;
            *c = csum::apply_folded(*c, e.l4_sum);
        }
    } else {
        let l4 = ptr_at_mut::<[u8; 8]>(ctx, pkt.l4_off)? as *mut u8;
        // SAFETY: as above.
        unsafe {
            write_l2_l3(eth, ip, ip_words, v4, e);
            *(l4 as *mut u16) = e.sport_be;
            *(l4.add(2) as *mut u16) = e.dport_be;
            let c = l4.add(6) as *mut u16;
            let old = *c;
            // As `nat::rewrite`: IPv4 UDP without a checksum keeps none; a computed 0 is sent
            // as 0xffff.
            if !(v4 && old == 0) {
                let new = csum::apply_folded(old, e.l4_sum);
                *c = if new == 0 { 0xffff } else { new };
            }
        }
    }
    Some(())
}

/// Writes the MACs, the addresses and (IPv4) the header checksum of entry `e`.
///
/// # Safety
/// `eth` must point at the frame's first 12 bytes, `ip` at its whole IP header (20 bytes for
/// IPv4, `v4`, with `ip_words` 1; 40 for IPv6, with 4).
#[inline(always)]
unsafe fn write_l2_l3(eth: *mut u32, ip: *mut u8, ip_words: usize, v4: bool, e: &NatCached) {
    let (src_at, dst_at) = if v4 { (12, 16) } else { (8, 24) };
    // SAFETY: the caller vouches for the packet pointers; the entry's MACs and addresses sit
    // at 4-byte aligned offsets of the map value.
    unsafe {
        let macs = e.macs.as_ptr() as *const u32;
        for i in 0..3 {
            *eth.add(i) = *macs.add(i);
        }
        let (src, dst) = (e.src.as_ptr() as *const u32, e.dst.as_ptr() as *const u32);
        for i in 0..4 {
            if i < ip_words {
                *(ip.add(src_at + 4 * i) as *mut u32) = *src.add(i);
                *(ip.add(dst_at + 4 * i) as *mut u32) = *dst.add(i);
            }
        }
        if v4 {
            let c = ip.add(10) as *mut u16;
            *c = csum::apply_folded(*c, e.ip_sum);
        }
    }
}

/// The stage entry, this CPU's.
#[inline(always)]
fn stage() -> Option<&'static mut NatCached> {
    // SAFETY: this CPU's element; nothing else writes it while this program runs here.
    NAT_CACHE
        .get_ptr_mut(stage_index())
        .map(|s| unsafe { &mut *s })
}

/// A one's complement sum folded to 16 bits (not complemented): what `Delta::apply` adds.
#[inline(always)]
fn fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Begins a fill for `pkt`, a packet of an established NAT flow on its full path: `p` holds
/// the epochs read before its half was looked up (and the host epoch before its service
/// was, and before the FIB is asked); `svc`, `backend`, `gen` what the half said (for a
/// reply, `other_open` gives them).
#[inline(always)]
pub fn begin(pkt: &Packet, p: cache::Probe, svc: u32, backend: u32, gen: u16) {
    let Some(s) = stage() else {
        return;
    };
    // Field by field into the map value: a struct literal is built on the stack first, and
    // the callers' frames have no 128 bytes to spare.
    s.key = pkt.key;
    s.cfg_epoch = p.cfg_epoch();
    s.epoch = p.flow_epoch();
    s.other = 0;
    s.other_epoch = 0;
    s.svc = svc as u16;
    s.backend = backend as u16;
    s.gen = gen;
    s.filled_jiffies = jiffies();
    // (The rest is written by `rewritten` and `next_hop` before a commit.)
    s.fills = staged::BEGUN;
}

/// The stage entry, if it holds a fill of `pkt` whose steps done are `done`.
#[inline(always)]
fn staged_for(pkt: &Packet, done: u16) -> Option<&'static mut NatCached> {
    stage().filter(|s| s.fills == done && s.key.same(&pkt.key))
}

/// The fill begun for `pkt` (if one was): the flow epoch of the other direction's 5-tuple
/// `key`, read before the other half is looked up.
#[inline(always)]
pub fn other(pkt: &Packet, key: &FlowKey) {
    if let Some(s) = staged_for(pkt, staged::BEGUN) {
        let bucket = cache::hash(key) >> (32 - FLOW_EPOCH_LOG2);
        s.other = bucket as u16;
        s.other_epoch = cache::bucket_epoch(bucket);
    }
}

/// The fill begun for `pkt` (if one was): its other half was found, its own, and open.
/// `reply`: a backend's reply, of flow `svc`/`backend`/`gen`.
#[inline(always)]
pub fn other_open(pkt: &Packet, reply: Option<(u32, u32, u16)>) {
    let Some(s) = staged_for(pkt, staged::BEGUN) else {
        return;
    };
    if let Some((svc, backend, gen)) = reply {
        s.other |= NAT_CACHED_REPLY;
        s.svc = svc as u16;
        s.backend = backend as u16;
        s.gen = gen;
    }
    s.fills |= staged::OTHER;
}

/// The fill begun for `pkt` (if one was, and its other half is open): the rewrite, read from
/// the packet as translated (addresses and ports), with the checksum changes from it to
/// `pkt`'s 5-tuple — the same words `nat::rewrite` added up, so the same changes.
#[inline(always)]
pub fn rewritten(ctx: &XdpContext, pkt: &Packet) {
    let Some(s) = staged_for(pkt, staged::BEGUN | staged::OTHER) else {
        return;
    };
    let Some(l4) = ptr_at_mut::<[u8; 4]>(ctx, pkt.l4_off) else {
        return;
    };
    let (old_src, old_dst) = (words(&pkt.key.src), words(&pkt.key.dst));
    let (mut new_src, mut new_dst) = ([0u32; 4], [0u32; 4]);
    let mut d = Delta::default();
    // Each family's header checked in its own branch: the verifier must see the length
    // checked for the bytes read.
    if pkt.key.family == FAMILY_V4 {
        let Some(ip) = ptr_at_mut::<[u8; 20]>(ctx, pkt.l3_off) else {
            return;
        };
        // SAFETY: the 20 bytes were checked by ptr_at_mut.
        unsafe {
            let ip = ip as *const u8;
            new_src[0] = *(ip.add(12) as *const u32);
            new_dst[0] = *(ip.add(16) as *const u32);
        }
        d = d
            .word32(old_src[0], new_src[0])
            .word32(old_dst[0], new_dst[0]);
    } else {
        let Some(ip) = ptr_at_mut::<[u8; 40]>(ctx, pkt.l3_off) else {
            return;
        };
        // SAFETY: the 40 bytes were checked by ptr_at_mut.
        unsafe {
            let ip = ip as *const u8;
            for i in 0..4 {
                new_src[i] = *(ip.add(8 + 4 * i) as *const u32);
                new_dst[i] = *(ip.add(24 + 4 * i) as *const u32);
                d = d
                    .word32(old_src[i], new_src[i])
                    .word32(old_dst[i], new_dst[i]);
            }
        }
    }
    // SAFETY: same size, plain integers; 4 bytes of ports checked by ptr_at_mut.
    unsafe {
        s.src = core::mem::transmute::<[u32; 4], [u8; 16]>(new_src);
        s.dst = core::mem::transmute::<[u32; 4], [u8; 16]>(new_dst);
        let l4 = l4 as *const u16;
        s.sport_be = *l4;
        s.dport_be = *l4.add(1);
    }
    s.ip_sum = fold(d.sum());
    s.l4_sum = fold(
        d.word16(pkt.key.sport_be, s.sport_be)
            .word16(pkt.key.dport_be, s.dport_be)
            .sum(),
    );
    s.fills |= staged::REWRITE;
}

/// The FIB's answer for the fill being put together: the frame's MACs out and the egress
/// interface; with the interface the frame came in by and its IP length (at `l3_off`), for
/// which the route's MTU was checked. `since`: when the FIB gave it, in jiffies (earlier
/// than the fill for an answer from the next-hop cache, `crate::hop`).
#[inline(always)]
pub fn next_hop(
    ctx: &XdpContext,
    l3_off: usize,
    dmac: &[u8; 6],
    smac: &[u8; 6],
    ifindex_out: u32,
    since: u32,
) {
    let Some(s) = stage() else {
        return;
    };
    if s.fills != staged::BEGUN | staged::OTHER | staged::REWRITE {
        return;
    }
    // (Only for a caller that began the fill: `fib::Route::fill`.)
    s.macs[..6].copy_from_slice(dmac);
    s.macs[6..].copy_from_slice(smac);
    s.ifindex_in = ctx.ingress_ifindex() as u32;
    s.ifindex_out = ifindex_out;
    s.max_len = (ctx.data_end() - ctx.data()).saturating_sub(l3_off) as u16;
    // An answer from the next-hop cache is as old as it is: the entry is dated by the older
    // of the two, so the FIB's answer is never used past its refresh period.
    if (since.wrapping_sub(s.filled_jiffies) as i32) < 0 {
        s.filled_jiffies = since;
    }
    s.fills |= staged::NEXT_HOP;
}

/// Puts the fill begun for `pkt` into its slot once every part is in (the packet was sent).
/// Harmless after any NAT send: a fill is complete only in the run that began it (the FIB's
/// part is added only for a caller that began one), and is then committed or left
/// incomplete, never completed by a later run.
#[inline(always)]
pub fn commit(pkt: &Packet) {
    let Some(s) = stage() else {
        return;
    };
    if s.fills != staged::ALL || !s.key.same(&pkt.key) {
        return;
    }
    s.fills = 0;
    let Some(e) = NAT_CACHE.get_ptr_mut(slot(cache::hash(&pkt.key))) else {
        return;
    };
    // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
    let e = unsafe { &mut *e };
    let fills = if e.key.same(&pkt.key) {
        e.fills.wrapping_add(1)
    } else {
        1
    };
    // Word by word (BPF has no memcpy): 128 bytes, aligned to 8.
    // SAFETY: both are `NatCached` values of the map, 16 words each.
    unsafe {
        let (from, to) = (
            s as *const NatCached as *const u64,
            e as *mut NatCached as *mut u64,
        );
        for i in 0..16 {
            *to.add(i) = *from.add(i);
        }
    }
    e.fills = fills;
}
