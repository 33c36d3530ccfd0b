//! Passive health of NAT backends (`observe`): the datapath sees their answers, so it counts
//! connection attempts they refuse (a RST answering a SYN) or leave unanswered, and after a
//! service's `error_limit` consecutive failures stops giving them new flows. The failure that
//! reaches the limit sends a note (`crate::note`); steer-ctl then reads the counts, marks the
//! backend down and lets its active checks bring it back.

use core::intrinsics::{atomic_xadd, AtomicOrdering::Relaxed};

use steer_common::{event, note, svc_flags, Service};

use crate::{maps::OBSERVED, stats};

/// Whether passive health has taken backend `id` out of its service's new flows.
#[inline(always)]
pub fn is_down(svc: &Service, id: u32) -> bool {
    if svc.flags & svc_flags::OBSERVE == 0 || svc.error_limit == 0 {
        return false;
    }
    match OBSERVED.get(id) {
        Some(o) => o.fails >= svc.error_limit as u64,
        None => false,
    }
}

/// A failed attempt on backend `id`: one more consecutive failure. The failure that reaches
/// the limit is counted as the backend going down.
#[inline(always)]
pub fn failed(svc: &Service, id: u32, now: u64) {
    if svc.flags & svc_flags::OBSERVE == 0 {
        return;
    }
    if let Some(o) = OBSERVED.get_ptr_mut(id) {
        // SAFETY: an 8-byte-aligned map value that lives for this run; other CPUs add too.
        // (The add's fetched value is not used: that needs BPF v3 atomics, and this object
        // is built for generic CPUs; the read after it may see another CPU's add as well, so
        // the PASSIVE_DOWN event is counted once, or rarely twice.)
        unsafe { atomic_xadd::<u64, u64, { Relaxed }>(&raw mut (*o).fails, 1) };
        // SAFETY: as above.
        let fails = unsafe { core::ptr::read_volatile(&raw const (*o).fails) };
        // SAFETY: as above; the latest time from any CPU is as good as ours.
        unsafe { (*o).last_fail_ns = now };
        if fails == svc.error_limit as u64 {
            stats::count_event(event::PASSIVE_DOWN);
            crate::note::send(note::PASSIVE, id);
        }
    }
}

/// Backend `id` answered an attempt: its consecutive failures start over. Written only when
/// there were some, so the common case does not dirty a shared cache line.
#[inline(always)]
pub fn answered(id: u32) {
    if let Some(o) = OBSERVED.get_ptr_mut(id) {
        // SAFETY: as in `failed`.
        unsafe {
            if core::ptr::read_volatile(&raw const (*o).fails) != 0 {
                core::ptr::write_volatile(&raw mut (*o).fails, 0);
            }
        }
    }
}
