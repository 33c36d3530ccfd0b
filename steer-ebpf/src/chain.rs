//! Handing a packet to another of the datapath's programs (a tail call), with what it needs
//! to know in the per-CPU `HANDOFF` slot. A tail call does not return; when it cannot be made
//! (the program is not loaded), the caller drops the packet with `DROP_NO_PROGRAM`.

use aya_ebpf::programs::XdpContext;
use steer_common::{prog, Handoff};

use crate::maps::{HANDOFF, PROGS};

/// Continues in program `index` of `STEER_PROGS_V1`; returns only if it is not there.
#[inline(always)]
pub fn tail_call(ctx: &XdpContext, index: u32) {
    // SAFETY: an XDP context handed to another XDP program; no return on success.
    unsafe { PROGS.tail_call(ctx, index) };
}

/// Hands a NAT service's flow to `prog::NAT_NEW`: its entry in `table` (a `handoff` value)
/// is to be replaced, not on backend `avoid`; returns only if the program is not there.
#[inline(always)]
pub fn new_flow(ctx: &XdpContext, table: u32, avoid: u32, len: u64) {
    if let Some(h) = HANDOFF.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else runs on it until the tail call returns.
        unsafe { *h = Handoff { table, avoid, len } };
        tail_call(ctx, prog::NAT_NEW);
    }
}

/// What the program that tail-called this one left in this CPU's slot.
#[inline(always)]
pub fn handoff() -> Option<Handoff> {
    // SAFETY: this CPU's slot, written by the caller program just before its tail call.
    HANDOFF.get_ptr_mut(0).map(|h| unsafe { *h })
}
