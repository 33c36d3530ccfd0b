//! The established table's presence filter (`steer_common::presence`): lets a SYN skip the
//! established table's lookup when its 5-tuple cannot be there. On a full million-flow table
//! that lookup misses into two or three cold lines (the bucket, then the chain's elements);
//! the filter costs one byte of a 16 MiB array and one hot line.

use steer_common::presence::{self, DONE, STAMP, VALID};

use crate::maps::PRESENCE;

/// Whether the established table may hold a flow of cache hash `hash`: false only when it
/// certainly does not (the slot's byte is outside the window of rounds), or true.
#[inline(always)]
pub fn may_be_established(hash: u32) -> bool {
    let Some(meta) = PRESENCE.get(0) else {
        return true;
    };
    if meta[VALID] == 0 {
        return true;
    }
    let (line, byte) = presence::slot(hash);
    let Some(l) = PRESENCE.get(line) else {
        return true;
    };
    presence::in_window(l[byte & 63], meta[STAMP], meta[DONE])
}

/// A flow of cache hash `hash` is about to enter the established table: its slot takes the
/// current round (before the insert, so a round's scan that misses the insert finds the byte
/// already written). A plain byte store (a store to a cold line does not wait for it): any
/// other writer of the slot writes a round inside the window too.
#[inline(always)]
pub fn mark(hash: u32) {
    let Some(meta) = PRESENCE.get(0) else {
        return;
    };
    let stamp = meta[STAMP];
    let (line, byte) = presence::slot(hash);
    if let Some(l) = PRESENCE.get_ptr_mut(line) {
        // SAFETY: a map value of this run; `byte & 63` is inside the 64-byte line.
        unsafe { core::ptr::write_volatile((l as *mut u8).add(byte & 63), stamp) };
    }
}
