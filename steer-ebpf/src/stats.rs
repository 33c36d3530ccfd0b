//! Per-CPU counters. Plain adds are safe: each CPU owns its copy.

use steer_common::Counters;

use crate::{
    maps::{BACKEND_STATS, GLOBAL_STATS, SERVICE_STATS},
    parse::Packet,
};

#[inline(always)]
pub fn count_outcome(why: u32) {
    if let Some(c) = GLOBAL_STATS.get_ptr_mut(why) {
        // SAFETY: per-CPU slot, no concurrent writer.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
fn bump(c: *mut Counters, len: u64, pkt: &Packet) {
    // SAFETY: per-CPU slot, no concurrent writer.
    let c = unsafe { &mut *c };
    c.packets += 1;
    c.bytes += len;
    if pkt.is_syn() {
        c.new_flows += 1;
    }
}

#[inline(always)]
pub fn count_service(id: u32, len: u64, pkt: &Packet) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(id) {
        bump(c, len, pkt);
    }
}

#[inline(always)]
pub fn count_backend(id: u32, len: u64, pkt: &Packet) {
    if let Some(c) = BACKEND_STATS.get_ptr_mut(id) {
        bump(c, len, pkt);
    }
}
