//! The connection table: which backend each flow is pinned to, and what was seen of it.

use core::intrinsics::{atomic_and, atomic_or, AtomicOrdering::Relaxed};

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use steer_common::{event, flow_flags, Flow, FlowKey};

use crate::{
    cache,
    maps::{FLOWS, TRANSIENT},
    nat::Nat,
    parse::{Packet, TCP_FIN, TCP_RST},
    presence, stats,
};

/// CLOCK_MONOTONIC_COARSE in nanoseconds (a few ms of resolution, a fraction of the cost of
/// the precise clock); userspace reads the same clock to age flows.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The flow's entry in the established table, if it has one.
#[inline(always)]
pub fn lookup_flow(key: &FlowKey) -> Option<*mut Flow> {
    FLOWS.get_ptr_mut(key)
}

/// The flow's entry in the transient table (half-open or ended), if it has one.
#[inline(always)]
pub fn lookup_transient(key: &FlowKey) -> Option<*mut Flow> {
    TRANSIENT.get_ptr_mut(key)
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

/// Pins a new flow to `backend` in the transient table (a SYN: a connection attempt, until its
/// handshake completes; anything else: until its next packet). On failure (table busy)
/// counts it and carries on: the next packet makes the same Maglev choice while the pool is
/// unchanged.
#[inline(always)]
pub fn insert_flow(pkt: &Packet, backend: u32, gen: u16, nat: Nat, now: u64) {
    let mut flags = flags_of(pkt);
    if pkt.is_syn() {
        flags |= flow_flags::SYN_ONLY;
    }
    let f = Flow {
        backend,
        gen,
        flags,
        last_seen_ns: now,
        nat_port_be: nat.port_be,
        nat_addr: nat.addr,
        _pad: 0,
    };
    // Every new flow starts in the transient table — a SYN, but also a packet of a flow the
    // LB does not know (a flood of spoofed ACKs or UDP must not evict established flows); its
    // next packet that is neither a SYN nor an end promotes it.
    let r = TRANSIENT.insert(&pkt.key, &f, 0);
    cache::invalidate(&pkt.key);
    if r.is_err() {
        stats::count_event(event::FLOW_INSERT_FAILED);
    }
}

/// A DSR connection attempt's handshake completed: its flow enters the established table
/// (BPF_ANY: the SYN forgot any entry of an older connection on its 5-tuple). False when the
/// table refused it: the attempt stands, and the next packet tries again.
#[inline(always)]
pub fn establish(pkt: &Packet, backend: u32, gen: u16, now: u64) -> bool {
    let f = Flow {
        backend,
        gen,
        flags: 0,
        last_seen_ns: now,
        nat_port_be: 0,
        nat_addr: 0,
        _pad: 0,
    };
    presence::mark(cache::hash(&pkt.key));
    if FLOWS.insert(&pkt.key, &f, 0).is_err() {
        stats::count_event(event::FLOW_INSERT_FAILED);
        return false;
    }
    true
}

/// A DSR connection attempt ended before its handshake did (`flags`: the client's FIN or
/// RST, or steer's RST): kept in the transient table for its last packets, as any ended flow.
#[inline(always)]
pub fn record_ended(pkt: &Packet, backend: u32, gen: u16, flags: u16, now: u64) {
    let f = Flow {
        backend,
        gen,
        flags,
        last_seen_ns: now,
        nat_port_be: 0,
        nat_addr: 0,
        _pad: 0,
    };
    if TRANSIENT.insert(&pkt.key, &f, 0).is_err() {
        stats::count_event(event::FLOW_INSERT_FAILED);
    }
}

/// `flow_flags` the packet sets (FIN, RST).
#[inline(always)]
pub fn ends_with(pkt: &Packet) -> u16 {
    flags_of(pkt)
}

/// Writes `f` into the transient table unless the flow has an entry there already (a NAT
/// flow's forward half written again from its reverse half). True when written.
#[inline(always)]
pub fn insert_transient(key: &FlowKey, f: &Flow) -> bool {
    TRANSIENT
        .insert(key, f, aya_ebpf::bindings::BPF_NOEXIST as u64)
        .is_ok()
}

/// A half-open flow's handshake completed: it moves to the established table (with what this
/// packet says), and leaves the transient one.
#[inline(always)]
pub fn promote(pkt: &Packet, flow: *mut Flow, now: u64) -> bool {
    // SAFETY: a pointer into the transient table from lookup_transient, valid for this run.
    let f = unsafe { *flow };
    let est = Flow {
        flags: flags_of(pkt),
        last_seen_ns: now,
        ..f
    };
    presence::mark(cache::hash(&pkt.key));
    if FLOWS.insert(&pkt.key, &est, 0).is_err() {
        // Stays half-open: the next packet tries again; its Maglev choice is the same.
        stats::count_event(event::FLOW_INSERT_FAILED);
        touch_flow(flow, pkt, now);
        return false;
    }
    let _ = TRANSIENT.remove(&pkt.key);
    true
}

/// An established flow ended (its first FIN or RST): it moves to the transient table for its
/// last packets, so that ended flows never crowd out established ones.
#[inline(always)]
pub fn retire(pkt: &Packet, flow: *mut Flow) {
    // SAFETY: a pointer into the established table from lookup_flow, valid for this run.
    let f = unsafe { *flow };
    if TRANSIENT.insert(&pkt.key, &f, 0).is_ok() {
        let _ = FLOWS.remove(&pkt.key);
    }
    cache::invalidate(&pkt.key);
}

/// Forgets a flow of the established table (a new connection on its 5-tuple starts over in
/// the transient table).
#[inline(always)]
pub fn forget(pkt: &Packet) {
    let _ = FLOWS.remove(&pkt.key);
    cache::invalidate(&pkt.key);
}

/// The flow's first 8 bytes, `backend | gen << 32 | flags << 48` (little-endian), updated
/// with 64-bit atomics (the only width BPF has): another CPU may set FIN or RST on the same
/// flow at the same moment, and neither bit may be lost.
#[inline(always)]
fn head(flow: *mut Flow) -> *mut u64 {
    flow as *mut u64
}

const FLAGS_SHIFT: u32 = 48;

/// Sets `bits` of the flow's flags atomically; returns the flags before.
#[inline(always)]
fn set_flags(flow: *mut Flow, bits: u16) -> u16 {
    // SAFETY: an 8-byte-aligned map value that lives for this program run.
    let before =
        unsafe { atomic_or::<u64, u64, { Relaxed }>(head(flow), (bits as u64) << FLAGS_SHIFT) };
    (before >> FLAGS_SHIFT) as u16
}

/// Clears `bits` of the flow's flags atomically.
#[inline(always)]
fn clear_flags(flow: *mut Flow, bits: u16) {
    // SAFETY: as in set_flags.
    unsafe { atomic_and::<u64, u64, { Relaxed }>(head(flow), !((bits as u64) << FLAGS_SHIFT)) };
}

/// Records a packet of a known flow. Returns true when this packet ends the flow (its first
/// FIN or RST). Flags change by atomic OR and AND, so concurrent packets of one flow on
/// several CPUs never undo each other's bits.
#[inline(always)]
pub fn touch_flow(flow: *mut Flow, pkt: &Packet, now: u64) -> bool {
    let set = flags_of(pkt);
    let before = if set != 0 {
        cache::invalidate(&pkt.key);
        set_flags(flow, set)
    } else {
        // SAFETY: as in set_flags; a plain read (BPF has no atomic load to select).
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*flow).flags)) }
    };
    if !pkt.is_syn() && before & flow_flags::SYN_ONLY != 0 {
        clear_flags(flow, flow_flags::SYN_ONLY);
    }
    // SAFETY: as in set_flags; a later time from another CPU is as good as ours.
    unsafe { (*flow).last_seen_ns = now };
    before & flow_flags::ENDED == 0 && set & flow_flags::ENDED != 0
}

/// Moves a flow to another backend (redispatch of a SYN, or a new connection reusing an ended
/// flow's 5-tuple). Backend, generation and flags change in one aligned 64-bit store, so no
/// CPU reads the new backend with the old generation.
#[inline(always)]
pub fn repin_flow(flow: *mut Flow, pkt: &Packet, backend: u32, gen: u16, nat: Nat, now: u64) {
    let flags = flags_of(pkt)
        | if pkt.is_syn() {
            flow_flags::SYN_ONLY
        } else {
            0
        };
    let word = backend as u64 | (gen as u64) << 32 | (flags as u64) << FLAGS_SHIFT;
    // SAFETY: as in set_flags. The NAT source goes first: a CPU that reads the new source with
    // the old backend finds the source's reverse entry naming another backend, and drops that
    // one packet (a conflict) rather than sending it anywhere wrong.
    unsafe {
        (*flow).nat_port_be = nat.port_be;
        (*flow).nat_addr = nat.addr;
        core::ptr::write_volatile(head(flow), word);
        (*flow).last_seen_ns = now;
    }
    cache::invalidate(&pkt.key);
}

/// Sets `bits` of a flow's flags (atomically, as any flag change).
#[inline(always)]
pub fn mark(flow: *mut Flow, bits: u16) {
    set_flags(flow, bits);
}

/// Records that steer answered the flow with a RST. Returns true when this ends the flow.
#[inline(always)]
pub fn mark_reset(flow: *mut Flow, now: u64) -> bool {
    let before = set_flags(flow, flow_flags::RST);
    if before & flow_flags::SYN_ONLY != 0 {
        clear_flags(flow, flow_flags::SYN_ONLY);
    }
    // SAFETY: as in set_flags.
    unsafe { (*flow).last_seen_ns = now };
    before & flow_flags::ENDED == 0
}
