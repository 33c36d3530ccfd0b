//! The next-hop cache: per CPU, the FIB's answer (`bpf_fib_lookup`: next hop MAC, egress
//! interface and its MAC, the MTU checked) for a translated packet, by its source and
//! destination addresses, ingress interface and protocol — what the lookup is asked. A NAT
//! host sends to few next hops (its backends, its clients' routers), and every packet of a
//! NAT flow that takes the full path asked the FIB again: 15 % of NAT's datapath time at
//! 2,000 connections/s, whose packets mostly take it (docs/PERFORMANCE.md).
//!
//! An answer is used under the NAT flow cache's rules for next hops (`natcache`), the same
//! bound on how stale it may be: while `Globals::epoch` is the one read before the FIB was
//! asked (steer-ctl moves it when a neighbour's MAC changes or it becomes invalid, or a route,
//! rule, address, link or forwarding setting changes: `daemon::nexthop`), for at most
//! `cache::REFRESH_JIFFIES`, for a packet that came in by the same interface and is no longer
//! than the one the FIB checked the MTU for. Only answers that sent a packet are kept: a next
//! hop without a neighbour, no route or an MTU too small ask the FIB every time. A NAT cache
//! fill that takes its answer from here keeps the answer's time, not its own, so a flow's
//! cached copy never outlives the answer's bound either.

use aya_ebpf::helpers::bpf_jiffies64;
use steer_common::{hash::mix32, hop_index, CachedHop, HOP_SLOTS};

use crate::{
    addr::{is, words},
    cache::{self, REFRESH_JIFFIES},
    maps::HOPS,
};

/// What a translated packet asks the FIB, as a key.
pub struct Ask<'a> {
    pub src: &'a [u8; 16],
    pub dst: &'a [u8; 16],
    pub ingress: u32,
    pub proto: u8,
    /// The IP length (header and payload).
    pub len: u16,
}

#[inline(always)]
fn jiffies() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_jiffies64() as u32 }
}

impl Ask<'_> {
    /// This CPU's slot for the ask.
    #[inline(always)]
    pub fn slot(&self) -> u32 {
        let (s, d) = (words(self.src), words(self.dst));
        let h = mix32(s[0] ^ s[3] ^ d[0] ^ d[1] ^ d[2] ^ d[3]).wrapping_add(self.ingress);
        hop_index(cache::cpu(), h % HOP_SLOTS)
    }
}

/// This CPU's answer for `ask` in `slot`, if it is still good under host epoch `epoch`.
#[inline(always)]
pub fn find(slot: u32, ask: &Ask, epoch: u32) -> Option<&'static CachedHop> {
    let h = HOPS.get(slot)?;
    if h.ifindex_out == 0
        || h.ifindex_in != ask.ingress
        || h.cfg_epoch != epoch
        || h.proto != ask.proto
        || ask.len > h.max_len
        || !is(&h.src, ask.src)
        || !is(&h.dst, ask.dst)
        || jiffies().wrapping_sub(h.filled_jiffies) >= REFRESH_JIFFIES as u32
    {
        return None;
    }
    Some(h)
}

/// Keeps the FIB's answer for `ask` (asked after `epoch` was read) in this CPU's `slot`.
/// Returns when the answer was given, in jiffies.
#[inline(always)]
pub fn keep(slot: u32, ask: &Ask, epoch: u32, dmac: &[u8; 6], smac: &[u8; 6], out: u32) -> u32 {
    let now = jiffies();
    let Some(h) = HOPS.get_ptr_mut(slot) else {
        return now;
    };
    // SAFETY: this CPU's slot; nothing else writes it while this program runs here. Field by
    // field: the callers' stacks have no 64 bytes to spare for a literal.
    let h = unsafe { &mut *h };
    h.src = words(ask.src);
    h.dst = words(ask.dst);
    h.ifindex_in = ask.ingress;
    h.ifindex_out = out;
    h.cfg_epoch = epoch;
    h.filled_jiffies = now;
    h.macs[..6].copy_from_slice(dmac);
    h.macs[6..].copy_from_slice(smac);
    h.max_len = ask.len;
    h.proto = ask.proto;
    now
}

/// The next hop's MAC and the egress interface's, from an entry.
#[inline(always)]
pub fn macs(h: &CachedHop) -> (&[u8; 6], &[u8; 6]) {
    // SAFETY: both 6-byte halves of the 12-byte array.
    unsafe {
        (
            &*(h.macs.as_ptr() as *const [u8; 6]),
            &*(h.macs.as_ptr().add(6) as *const [u8; 6]),
        )
    }
}
