//! Per-CPU counters. Plain adds are safe: each CPU owns its copy.

use steer_common::Counters;

use crate::maps::{BACKEND_STATS, GLOBAL_STATS, SERVICE_STATS};

#[inline(always)]
fn bump_global(i: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

/// What happened to the packet (exactly one per packet).
#[inline(always)]
pub fn count_outcome(why: u32) {
    bump_global(why);
}

/// An event (`steer_common::event`).
#[inline(always)]
pub fn count_event(what: u32) {
    bump_global(what);
}

#[inline(always)]
fn with(map_is_backend: bool, id: u32, f: impl FnOnce(&mut Counters)) {
    let c = if map_is_backend {
        BACKEND_STATS.get_ptr_mut(id)
    } else {
        SERVICE_STATS.get_ptr_mut(id)
    };
    if let Some(c) = c {
        // SAFETY: per-CPU slot, no concurrent writer.
        f(unsafe { &mut *c });
    }
}

/// A packet to a service.
#[inline(always)]
pub fn count_service(id: u32, len: u64) {
    with(false, id, |c| {
        c.packets += 1;
        c.bytes += len;
    });
}

/// A packet forwarded to a backend.
#[inline(always)]
pub fn count_backend(id: u32, len: u64) {
    with(true, id, |c| {
        c.packets += 1;
        c.bytes += len;
    });
}

/// A flow pinned to a backend of a service.
#[inline(always)]
pub fn count_new_flow(svc: u32, be: u32) {
    with(false, svc, |c| c.new_flows += 1);
    with(true, be, |c| c.new_flows += 1);
}

/// A flow that saw its first FIN or RST (`be`: its backend, unless removed).
#[inline(always)]
pub fn count_ended(svc: u32, be: Option<u32>) {
    with(false, svc, |c| c.ended_flows += 1);
    if let Some(be) = be {
        with(true, be, |c| c.ended_flows += 1);
    }
}

/// A RST sent on behalf of a service (no backend) or of a rejected backend too.
#[inline(always)]
pub fn count_rst(svc: u32, be: Option<u32>) {
    with(false, svc, |c| c.rst_sent += 1);
    if let Some(be) = be {
        with(true, be, |c| c.rst_sent += 1);
    }
}

/// NAT: an attempt backend `be` refused.
#[inline(always)]
pub fn count_backend_refused(be: u32) {
    with(true, be, |c| c.refused += 1);
}

/// NAT: an attempt backend `be` left unanswered.
#[inline(always)]
pub fn count_backend_syn_timeout(be: u32) {
    with(true, be, |c| c.syn_timeouts += 1);
}

/// NAT: a new flow of service `svc` (chosen for backend `be`) found no free source port.
#[inline(always)]
pub fn count_nat_exhausted(svc: u32, be: u32) {
    with(false, svc, |c| c.nat_exhausted += 1);
    with(true, be, |c| c.nat_exhausted += 1);
}
