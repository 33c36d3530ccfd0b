//! Notes to steer-ctl (`STEER_NOTE_V1`, a ring buffer): the datapath says when the maps the
//! daemon would otherwise poll have news — a backend's passive health at its limit, a next hop
//! to resolve — so the daemon sleeps until then. A note that finds the ring full is dropped
//! and counted (`notes_lost`): the daemon's slow poll reads the maps anyway.

use steer_common::{event, Note};

use crate::{maps::NOTES, stats};

/// Sends note `kind` about `id`.
#[inline(always)]
pub fn send(kind: u32, id: u32) {
    if NOTES.output::<Note>(Note { kind, id }, 0).is_err() {
        stats::count_event(event::NOTES_LOST);
    }
}
