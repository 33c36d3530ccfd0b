//! Notes to steer-ctl (`STEER_NOTE_V1`, a ring buffer): the datapath says when the maps the
//! daemon would otherwise poll have news — a backend's passive health at its limit, a next hop
//! to resolve — so the daemon sleeps until then. A note that finds the ring full is dropped:
//! the daemon's slow poll reads the maps anyway.

use steer_common::Note;

use crate::maps::NOTES;

/// Sends note `kind` about `id`.
#[inline(always)]
pub fn send(kind: u32, id: u32) {
    let _ = NOTES.output::<Note>(Note { kind, id }, 0);
}
