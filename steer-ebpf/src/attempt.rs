//! Connection attempts: a flow that has seen only SYNs lives in a direct-mapped array
//! (`STEER_ATTEMPT_V2`), not in a hash table. A SYN writes one 64-byte slot — no LRU to pop,
//! no bucket lock, nothing evicted — and the handshake's ACK moves it to the established
//! table. Rule 5 holds as with a table: a retransmitted SYN finds its attempt and keeps its
//! backend, or leaves it for an eligible one.
//!
//! A slot is shared by every 5-tuple that hashes to it. A DSR attempt may be replaced by a
//! newer one; its ACK then takes the Maglev choice its SYN took (the same backend unless the
//! pool changed within that round trip). A NAT attempt also carries its source, which no
//! choice can find again: it is never replaced while it stands — a NAT SYN that finds its slot
//! held goes to the transient table instead, a DSR one goes unpinned. Slots are written by
//! several CPUs without a lock: each carries a seal (`hash::attempt_check`), and a torn one
//! reads as empty. A byte per slot (`STEER_AMARK_V1`) says whether it may hold an attempt, so
//! packets of established flows do not read the table's cold lines to learn that it does not.

use core::intrinsics::{atomic_or, AtomicOrdering::Relaxed};

use steer_common::{flow_flags, unpin, Attempt, Flow, FlowKey, ATTEMPTS_LOG2};

use crate::{
    maps::{ATTEMPTS, ATTEMPT_MARKS},
    nat::Nat,
};

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

/// What the attempt of `key` in `slot` is pinned to (`pin_word`), if the slot holds a whole
/// one younger than its TTL. (A word, not a copy of the slot: the callers' stacks are tight.)
#[inline(always)]
pub fn find(slot: u32, key: &FlowKey, now: u64) -> Option<u64> {
    let a = ATTEMPTS.get(slot)?;
    let pin = a.head();
    if a.holds(key, now) {
        Some(pin)
    } else {
        None
    }
}

/// The `flow_flags` set on the attempt in `slot` after its SYN (read after `find`: the line
/// is in the cache).
#[inline(always)]
pub fn flags(slot: u32) -> u16 {
    ATTEMPTS.get(slot).map_or(0, |a| (a.check >> 48) as u16)
}

/// Sets `bits` of the `flow_flags` of `key`'s attempt (an atomic OR outside the seal),
/// unless its slot has been given to another 5-tuple meanwhile (a race lost between that
/// check and the OR marks the newer attempt: at worst its retransmitted SYN is steered to
/// another backend). A BPF call of its own: its caller, the reply path, has little stack
/// left.
#[inline(never)]
pub fn mark(key: &FlowKey, bits: u16) {
    if let Some(a) = ATTEMPTS.get_ptr_mut(slot(crate::cache::hash(key))) {
        // SAFETY: a map value of this run, 8-byte aligned.
        unsafe {
            if (*a).key.same(key) {
                atomic_or::<u64, u64, { Relaxed }>(
                    core::ptr::addr_of_mut!((*a).check),
                    (bits as u64) << 48,
                );
            }
        }
    }
}

/// An attempt pinned to `pin`, with `flags` set since its SYN, as the flow entry it stands
/// for.
#[inline(always)]
pub fn as_flow(pin: u64, flags: u16, now: u64) -> Flow {
    let (backend, gen, nat_port_be, nat_addr) = unpin(pin);
    Flow {
        backend,
        gen,
        flags: flow_flags::SYN_ONLY | flags,
        last_seen_ns: now,
        nat_port_be,
        nat_addr,
        _pad: 0,
    }
}

/// Who else holds a slot (read after `find` looked at it: its line is in the cache, the mark
/// array's would not be).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// Nobody (empty, expired, torn), or `key` itself.
    Free,
    /// Another 5-tuple's attempt, still in progress, that a SYN may replace: a DSR one (its
    /// ACK takes the Maglev choice its SYN took), or a NAT one its backend has not answered
    /// (the SYN-ACK, should it come, writes the flow again from its reverse half, as for a
    /// flow whose entry was evicted; a retransmitted SYN is a new attempt).
    Replaceable,
    /// Another 5-tuple's NAT attempt its backend answered: its client's ACK, on its way, needs
    /// its source, which no choice can find again. Never replaced.
    Answered,
}

/// Whether another 5-tuple's attempt holds `slot`, and whether a SYN may replace it.
#[inline(always)]
pub fn holder(slot: u32, key: &FlowKey, now: u64) -> Holder {
    match ATTEMPTS.get(slot) {
        Some(a) if a.live(now) && !a.key.same(key) => {
            if a.is_nat() && (a.check >> 48) as u16 & flow_flags::ANSWERED != 0 {
                Holder::Answered
            } else {
                Holder::Replaceable
            }
        }
        _ => Holder::Free,
    }
}

/// Pins an attempt of `key` to `backend` and, for a NAT flow, its source (a first SYN, a
/// redispatched one, or a retry, which moves its time and keeps its `flags`), then marks the
/// slot.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn pin(slot: u32, key: &FlowKey, backend: u32, gen: u16, nat: Nat, flags: u16, now: u64) {
    if let Some(a) = ATTEMPTS.get_ptr_mut(slot) {
        let mut v = Attempt::new(key, backend, gen, nat.port_be, nat.addr, now);
        v.check |= (flags as u64) << 48;
        // SAFETY: a map value of this run. Another CPU may write the slot at the same moment;
        // the seal tells a torn result.
        unsafe { *a = v };
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
