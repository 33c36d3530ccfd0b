//! The flow cache: per CPU, a direct-mapped copy of recently seen established DSR flows, in
//! front of the services map and the connection table. A hit costs a few ALU instructions and
//! array lookups (the verifier inlines them) instead of two hash lookups.
//!
//! An entry is used only while all of these hold, else the packet takes the full path (which
//! refills the entry):
//! - the 5-tuple matches, and the packet has no SYN, FIN or RST (those change the flow);
//! - the epoch of host settings is the one it was filled in (steer-ctl moves it after every
//!   change of a service entry);
//! - the flow's epoch bucket is the one it was filled in (the datapath moves it, on any CPU,
//!   whenever the flow's entry in the connection table changes: new, re-pinned, ended,
//!   retired, forgotten, reset: it is stamped with a value no entry holds);
//! - it was filled less than `REFRESH_JIFFIES` ago, so the connection table's `last_seen_ns` (idle
//!   ageing, active counts, the UDP timeout) is never older than that;
//! - the backend still has the flow's generation and keeps flows (read live, as on the full
//!   path: `reject` and removal act at once).

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use steer_common::{
    flow_cache_index, hash::cache_hash, Backend, CachedFlow, FlowKey, FLOW_CACHE_LOG2,
    FLOW_EPOCH_LOG2,
};

use crate::{
    maps::{CHANGE_SEQ, FLOW_CACHE, FLOW_EPOCHS, GLOBALS},
    parse::{Packet, TCP_FIN, TCP_RST, TCP_SYN},
    select,
};

/// How long a cached entry stands in for the connection table, in jiffies: 200 ms at the
/// usual HZ=250 (50 ms at HZ=1000, 500 ms at HZ=100) — under any idle timeout (whole
/// seconds), long enough that a busy flow takes the full path a few times a second at most.
/// Jiffies, not the coarse monotonic clock the table's entries use: reading jiffies is one
/// load, `bpf_ktime_get_coarse_ns` cost 10 ns a packet here (measured), as much as the rest of
/// a hit's lookups.
pub const REFRESH_JIFFIES: u64 = 50;

#[inline(always)]
fn jiffies() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { aya_ebpf::helpers::bpf_jiffies64() as u32 }
}

/// Where a packet's flow would be cached, and the epochs to compare: read before the flow's
/// state is, so a change made after this moment voids what is filled from it.
#[derive(Clone, Copy)]
pub struct Probe {
    hash: u32,
    flow_epoch: u32,
    cfg_epoch: u32,
}

impl Probe {
    /// For a packet that is never served from a cache nor fills one.
    pub const NONE: Probe = Probe {
        hash: 0,
        flow_epoch: 0,
        cfg_epoch: 0,
    };

    /// The flow epoch of the 5-tuple's bucket, as read.
    #[inline(always)]
    pub fn flow_epoch(&self) -> u32 {
        self.flow_epoch
    }

    /// The host epoch, as read.
    #[inline(always)]
    pub fn cfg_epoch(&self) -> u32 {
        self.cfg_epoch
    }
}

/// `Globals` as a packet's processing starts: its flags and epoch, read once.
#[derive(Clone, Copy)]
pub struct Host {
    pub flags: u32,
    pub epoch: u32,
}

/// Reads the host-wide settings (one array lookup).
#[inline(always)]
pub fn host() -> Host {
    GLOBALS
        .get(0)
        .map_or(Host { flags: 0, epoch: 0 }, |g| Host {
            flags: g.flags,
            epoch: g.epoch,
        })
}

/// The CPU this packet is processed on (the verifier inlines the helper: one load).
#[inline(always)]
pub fn cpu() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_smp_processor_id() }
}

/// This CPU's slot for the 5-tuple of `hash`.
#[inline(always)]
fn slot(hash: u32) -> u32 {
    flow_cache_index(cpu(), hash >> (32 - FLOW_CACHE_LOG2))
}

#[inline(always)]
fn bucket(hash: u32) -> u32 {
    hash >> (32 - FLOW_EPOCH_LOG2)
}

/// The flow epoch of bucket `b` now.
#[inline(always)]
pub fn bucket_epoch(b: u32) -> u32 {
    FLOW_EPOCHS.get(b).copied().unwrap_or(0)
}

/// Whether `pkt` may be served from the cache or fill it: no SYN, FIN or RST (those change
/// their flow's state, and take the full path).
#[inline(always)]
pub fn may_hold(pkt: &Packet) -> bool {
    pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
}

/// The hash the cache, the flow epochs and the attempts table place a 5-tuple by.
#[inline(always)]
pub fn hash(key: &FlowKey) -> u32 {
    cache_hash(key)
}

/// Reads the epochs for a 5-tuple of `hash` (before its service and flow are looked up;
/// `cfg_epoch` was read before too, by `host`).
#[inline(always)]
pub fn probe(hash: u32, cfg_epoch: u32) -> Probe {
    Probe {
        hash,
        flow_epoch: bucket_epoch(bucket(hash)),
        cfg_epoch,
    }
}

/// The cached established flow of `pkt`, still good: its service id, backend id
/// and backend.
#[inline(always)]
pub fn lookup(pkt: &Packet, p: Probe) -> Option<(u32, u32, &'static Backend)> {
    if !may_hold(pkt) {
        return None;
    }
    let c = FLOW_CACHE.get(slot(p.hash))?;
    if !c.key.same(&pkt.key)
        || c.flow_epoch != p.flow_epoch
        || c.cfg_epoch != p.cfg_epoch
        || jiffies().wrapping_sub(c.filled_jiffies) >= REFRESH_JIFFIES as u32
    {
        return None;
    }
    let (be_id, be) = select::flow_backend(c.backend, c.gen)?;
    if !be.keeps_flows() {
        return None;
    }
    Some((c.svc_id, be_id, be))
}

/// Caches an established DSR flow that the full path just forwarded (this CPU's slot).
#[inline(always)]
pub fn fill(pkt: &Packet, p: Probe, svc_id: u32, backend: u32, gen: u16) {
    if !may_hold(pkt) {
        return;
    }
    if let Some(c) = FLOW_CACHE.get_ptr_mut(slot(p.hash)) {
        // SAFETY: this CPU's slot; nothing else writes it while this program runs here.
        unsafe {
            *c = CachedFlow {
                key: pkt.key,
                backend,
                gen,
                _pad: 0,
                svc_id,
                flow_epoch: p.flow_epoch,
                cfg_epoch: p.cfg_epoch,
                filled_jiffies: jiffies(),
            }
        };
    }
}

/// The flow of `key` changed in the connection table: every CPU's cached copy is void.
#[inline(always)]
pub fn invalidate(key: &FlowKey) {
    invalidate_hash(cache_hash(key))
}

/// `invalidate` for the 5-tuple of `hash`.
#[inline(always)]
pub fn invalidate_hash(hash: u32) {
    let (Some(seq), Some(e)) = (
        CHANGE_SEQ.get_ptr_mut(0),
        FLOW_EPOCHS.get_ptr_mut(bucket(hash)),
    ) else {
        return;
    };
    // SAFETY: map values of this run; `seq` is this CPU's own.
    unsafe {
        let n = (*seq).wrapping_add(1);
        *seq = n;
        core::ptr::write_volatile(e, stamp(n, bpf_get_smp_processor_id()));
    }
}

/// A flow epoch no cache entry can hold: this CPU's change number (22 bits) and the CPU (10
/// bits), never 0 (the epochs' first value). Stamped with a plain store rather than moved by
/// a locked add, which waits for the line (a busy LB's tables push the epochs out of the
/// cache) while a store is posted. Two CPUs stamping one bucket at once leave one of their
/// stamps, and either differs from every stamp before. A stamp comes back only after 4
/// million changes on one CPU (a cached entry lives 50 jiffies), or from a CPU 1,024 apart
/// with the same count.
#[inline(always)]
fn stamp(n: u32, cpu: u32) -> u32 {
    ((n & 0x3f_ffff) << 10 | (cpu & 0x3ff)) | (n == 0) as u32 * (1 << 10)
}
