//! The connection table: which backend each flow is pinned to, and what was seen of it.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use steer_common::{event, flow_flags, Flow, FlowKey};

use crate::{
    maps::FLOWS,
    parse::{Packet, TCP_FIN, TCP_RST},
    stats,
};

/// CLOCK_MONOTONIC_COARSE in nanoseconds (a few ms of resolution, a fraction of the cost of
/// the precise clock); userspace reads the same clock to age flows.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The flow's entry, if the table has one.
#[inline(always)]
pub fn lookup_flow(key: &FlowKey) -> Option<*mut Flow> {
    FLOWS.get_ptr_mut(key)
}

/// `flow_flags` a packet sets.
#[inline(always)]
fn flags_of(pkt: &Packet) -> u16 {
    let mut f = 0;
    if pkt.tcp_flags & TCP_FIN != 0 {
        f |= flow_flags::FIN;
    }
    if pkt.tcp_flags & TCP_RST != 0 {
        f |= flow_flags::RST;
    }
    f
}

/// Pins a new flow to `backend`. On failure (table busy) counts it and carries on: the next
/// packet makes the same Maglev choice while the pool is unchanged.
#[inline(always)]
pub fn insert_flow(pkt: &Packet, backend: u32, gen: u16, now: u64) {
    let mut flags = flags_of(pkt);
    if pkt.is_syn() {
        flags |= flow_flags::SYN_ONLY;
    }
    let f = Flow {
        backend,
        gen,
        flags,
        last_seen_ns: now,
    };
    if FLOWS.insert(&pkt.key, &f, 0).is_err() {
        stats::count_event(event::FLOW_INSERT_FAILED);
    }
}

/// Records a packet of a known flow. Returns true when this packet ends the flow (its first
/// FIN or RST).
#[inline(always)]
pub fn touch_flow(flow: *mut Flow, pkt: &Packet, now: u64) -> bool {
    // SAFETY: a pointer into the map from lookup_flow, valid for this program run. Concurrent
    // writers on other CPUs can only set the same bits or a later time.
    let f = unsafe { &mut *flow };
    let before = f.flags;
    let mut flags = before | flags_of(pkt);
    if !pkt.is_syn() {
        flags &= !flow_flags::SYN_ONLY;
    }
    if flags != before {
        f.flags = flags;
    }
    f.last_seen_ns = now;
    before & flow_flags::ENDED == 0 && flags & flow_flags::ENDED != 0
}

/// Moves a flow to another backend (redispatch of a SYN, or a new connection reusing an ended
/// flow's 5-tuple).
#[inline(always)]
pub fn repin_flow(flow: *mut Flow, pkt: &Packet, backend: u32, gen: u16, now: u64) {
    // SAFETY: as in touch_flow.
    let f = unsafe { &mut *flow };
    f.backend = backend;
    f.gen = gen;
    f.flags = flags_of(pkt)
        | if pkt.is_syn() {
            flow_flags::SYN_ONLY
        } else {
            0
        };
    f.last_seen_ns = now;
}

/// Records that steer answered the flow with a RST. Returns true when this ends the flow.
#[inline(always)]
pub fn mark_reset(flow: *mut Flow, now: u64) -> bool {
    // SAFETY: as in touch_flow.
    let f = unsafe { &mut *flow };
    let before = f.flags;
    f.flags = (before | flow_flags::RST) & !flow_flags::SYN_ONLY;
    f.last_seen_ns = now;
    before & flow_flags::ENDED == 0
}
