//! The established table's presence filter (`steer_common::presence`): lets a SYN skip the
//! established table's lookup when its 5-tuple cannot be there. On a full million-flow table
//! that lookup misses into two or three cold lines (the bucket, then the chain's elements);
//! the filter costs one word of a 2 MiB bitmap and one hot word.

use core::intrinsics::{atomic_or, AtomicOrdering::Relaxed};

use steer_common::presence::{self, ACTIVE, VALID};

use crate::maps::PRESENCE;

/// Whether the established table may hold a flow of cache hash `hash`: false only when it
/// certainly does not (its bit is clear in the bitmap SYNs read), else true.
#[inline(always)]
pub fn may_be_established(hash: u32) -> bool {
    let Some(&meta) = PRESENCE.get(0) else {
        return true;
    };
    if meta & VALID == 0 {
        return true;
    }
    let (w, bit) = presence::slot(hash);
    PRESENCE
        .get(presence::element((meta & ACTIVE) as u32, w))
        .is_none_or(|x| (x >> bit) & 1 != 0)
}

/// A flow of cache hash `hash` is about to enter the established table: its bit is set in both
/// bitmaps (before the insert, so a round's scan that misses the insert finds the bit set).
/// Atomic ORs: other CPUs set other bits of the same words.
#[inline(always)]
pub fn mark(hash: u32) {
    let (w, bit) = presence::slot(hash);
    for which in 0..2 {
        if let Some(p) = PRESENCE.get_ptr_mut(presence::element(which, w)) {
            // SAFETY: an 8-byte-aligned map value of this run.
            unsafe { atomic_or::<u64, u64, { Relaxed }>(p, 1 << bit) };
        }
    }
}
