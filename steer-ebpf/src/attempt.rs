//! DSR connection attempts: a flow that has seen only SYNs lives in a direct-mapped array
//! (`STEER_ATTEMPT_V1`), not in a hash table. A SYN writes one 64-byte slot — no LRU to pop,
//! no bucket lock, nothing evicted — and the handshake's ACK moves it to the established
//! table. Rule 5 holds as with a table: a retransmitted SYN finds its attempt and keeps its
//! backend, or leaves it for an eligible one.
//!
//! A slot is shared by every 5-tuple that hashes to it; a newer attempt replaces an older one,
//! whose ACK then takes the Maglev choice its SYN took (the same backend unless the pool
//! changed within that round trip). Slots are written by several CPUs without a lock: each
//! carries a seal (`hash::attempt_check`), and a torn one reads as empty. A byte per slot
//! (`STEER_AMARK_V1`) says whether it may hold an attempt, so packets of established flows do
//! not read the table's cold lines to learn that it does not.

use steer_common::{hash::attempt_check, Attempt, FlowKey, ATTEMPTS_LOG2};

use crate::maps::{ATTEMPTS, ATTEMPT_MARKS};

/// The slot of a 5-tuple of `hash::cache_hash` `hash`.
#[inline(always)]
pub fn slot(hash: u32) -> u32 {
    hash >> (32 - ATTEMPTS_LOG2)
}

#[inline(always)]
fn set_mark(slot: u32, v: u8) {
    if let Some(line) = ATTEMPT_MARKS.get_ptr_mut(slot >> 6) {
        // SAFETY: a byte of a map value of this run; a plain byte store.
        unsafe { core::ptr::write_volatile((line as *mut u8).add((slot & 63) as usize), v) };
    }
}

/// Whether the slot may hold an attempt (a byte read; false for most packets).
#[inline(always)]
pub fn marked(slot: u32) -> bool {
    match ATTEMPT_MARKS.get(slot >> 6) {
        Some(line) => line[(slot & 63) as usize] != 0,
        None => false,
    }
}

/// The attempt of `key` in `slot`, if it holds a whole one younger than its TTL: its backend
/// and the backend's generation.
#[inline(always)]
pub fn find(slot: u32, key: &FlowKey, now: u64) -> Option<(u32, u16)> {
    let a = ATTEMPTS.get(slot)?;
    if a.holds(key, now) {
        Some((a.backend, a.gen))
    } else {
        None
    }
}

/// Whether `slot` holds another 5-tuple's attempt still in progress (its SYN would evict
/// it). Read after `find` looked at the same slot: its line is in the cache (the mark array's
/// would not be).
#[inline(always)]
pub fn held_by_other(slot: u32, key: &FlowKey, now: u64) -> bool {
    ATTEMPTS
        .get(slot)
        .is_some_and(|a| a.live(now) && !a.key.same(key))
}

/// Pins an attempt of `key` to `backend` (a first SYN, a redispatched one, or a retry, which
/// moves its time), then marks the slot.
#[inline(always)]
pub fn pin(slot: u32, key: &FlowKey, backend: u32, gen: u16, now: u64) {
    if let Some(a) = ATTEMPTS.get_ptr_mut(slot) {
        // SAFETY: a map value of this run. Another CPU may write the slot at the same moment;
        // the seal tells a torn result.
        unsafe {
            *a = Attempt {
                key: *key,
                backend,
                gen,
                _pad: 0,
                last_seen_ns: now,
                check: attempt_check(key, backend, gen, now),
            }
        };
    }
    set_mark(slot, 1);
}

/// The attempt of `key` is over (established, ended or reset): empties the slot unless it
/// has been given to another 5-tuple meanwhile.
#[inline(always)]
pub fn clear(slot: u32, key: &FlowKey) {
    if let Some(a) = ATTEMPTS.get_ptr_mut(slot) {
        // SAFETY: a map value of this run. Re-checked just before clearing: a SYN of another
        // 5-tuple that took the slot since it was read keeps it (a race lost between the two
        // loads costs that attempt its pin, never its packets: its ACK takes the Maglev
        // choice).
        unsafe {
            if !(*a).key.same(key) {
                return;
            }
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*a).check), 0);
        }
    }
    set_mark(slot, 0);
}
