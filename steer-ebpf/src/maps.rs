//! The maps of the datapath. Names and sizes come from `steer_common`; userspace may resize the
//! tables at load time (`EbpfLoader::set_max_entries`).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use steer_common::{
    flow_cache_entries, hop_entries, maglev_chunks, nat_cache_entries, nat_capacity, prog,
    transient_capacity, Attempt, Backend, Counters, Flow, FlowKey, Globals, Handoff, NatPool,
    NatRev, NeighWant, Observed, ServiceInfo, ServiceKey, ServiceSlot, ATTEMPTS_LOG2,
    ATTEMPT_MARK_LINES, FILTER_WORDS, FLOW_EPOCH_LOG2, GLOBAL_SLOTS, MAGLEV_CHUNK, MAX_BACKENDS,
    MAX_FLOWS, MAX_SERVICES, NEIGH_SLOTS, NOTES_BYTES, PRESENCE_LINES, SERVICE_INDEX_SLOTS,
};

/// Service ids by (VIP, port, protocol). Written by steer-ctl when a service is added or
/// removed, not replaced while the service lives (but when a restarted daemon gives the key to
/// a service of another mode): a lookup racing the replacement of an
/// entry in its bucket can find neither the old entry nor the new one (seen with V2, which
/// held the whole `Service` and was replaced at every table flip, whether preallocated or not,
/// even with a grace period between two replacements: about one lookup in 10^8 while the swap
/// test's pools changed). What changes lives in `SERVICE_INFO`.
#[map(name = "STEER_SVC_V3")]
pub static SERVICES: HashMap<ServiceKey, u32> =
    HashMap::with_max_entries(MAX_SERVICES, BPF_F_NO_PREALLOC);

/// The service index: by `hash::service_slot`, the one service whose key has the slot, or a
/// mark that several share it (then `SERVICES`). Written by steer-ctl through mmap.
#[map(name = "STEER_SVCX_V1")]
pub static SERVICE_INDEX: Array<ServiceSlot> =
    Array::with_max_entries(SERVICE_INDEX_SLOTS, BPF_F_MMAPABLE);

/// Each service's settings by id, two copies, `ServiceInfo::live` naming the one packets
/// read. Written by steer-ctl through mmap: the idle copy, then `live`.
#[map(name = "STEER_SVCI_V1")]
pub static SERVICE_INFO: Array<ServiceInfo> = Array::with_max_entries(MAX_SERVICES, BPF_F_MMAPABLE);

/// Backends by id: address, MAC, admin state, health. Written by steer-ctl.
#[map(name = "STEER_BE_V2")]
pub static BACKENDS: Array<Backend> = Array::with_max_entries(MAX_BACKENDS, 0);

/// Maglev lookup tables of backend ids, two per service (live and next), at
/// `steer_common::maglev_index`. Written by steer-ctl through mmap, then made live by flipping
/// `Service::table_slot`.
#[map(name = "STEER_MAGLEV_V1")]
pub static MAGLEV: Array<[u32; MAGLEV_CHUNK as usize]> =
    Array::with_max_entries(maglev_chunks(MAX_SERVICES), BPF_F_MMAPABLE);

/// Per-CPU counters per service id. Written by the datapath, summed by steer-ctl.
#[map(name = "STEER_SSTAT_V1")]
pub static SERVICE_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_SERVICES, 0);

/// Per-CPU counters per backend id. Written by the datapath, summed by steer-ctl.
#[map(name = "STEER_BSTAT_V1")]
pub static BACKEND_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(MAX_BACKENDS, 0);

/// The connection table: 5-tuple → backend (and generation), flags, last seen. LRU, so a full
/// table evicts its least recently used flow. Written by the datapath, read by steer-ctl.
#[map(name = "STEER_FLOWS_V2")]
///
/// One LRU shared by all CPUs: `BPF_F_NO_COMMON_LRU` would split the capacity per CPU (a CPU
/// receiving all the flows could hold only 1/N of them) and was no faster here.
pub static FLOWS: LruHashMap<FlowKey, Flow> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// The established table's presence filter (`steer_common::presence`): a byte per slot, the
/// round in which a flow of the slot was last known to be in `FLOWS`. Written by the datapath
/// before each insert into `FLOWS`, and by steer-ctl's rounds through mmap; pinned.
#[map(name = "STEER_PRES_V1")]
pub static PRESENCE: Array<[u8; 64]> = Array::with_max_entries(PRESENCE_LINES, BPF_F_MMAPABLE);

/// The transient table: flows that have seen only SYNs (half-open) and flows that have ended,
/// until their last packets pass. Kept apart so that a SYN flood or a churn of short
/// connections never evicts an established flow. Written by the datapath, read by steer-ctl.
#[map(name = "STEER_TRANS_V2")]
pub static TRANSIENT: LruHashMap<FlowKey, Flow> =
    LruHashMap::with_max_entries(transient_capacity(MAX_FLOWS), 0);

/// Per-CPU packet counts per `outcome`, then per `event`. Written by the datapath, summed by
/// steer-ctl.
#[map(name = "STEER_GSTAT_V2")]
pub static GLOBAL_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_SLOTS, 0);

/// NAT mode's reverse translations: a backend's reply 5-tuple → the client and service it
/// stands for. LRU, as large as both flow tables together. Written by the datapath: inserted
/// before the flow's forward half, rewritten from it when lost.
#[map(name = "STEER_NAT_V1")]
pub static NAT: LruHashMap<FlowKey, NatRev> =
    LruHashMap::with_max_entries(nat_capacity(MAX_FLOWS), 0);

/// Source address pools of NAT services, by service id. Written by steer-ctl.
#[map(name = "STEER_POOL_V2")]
pub static POOLS: Array<NatPool> = Array::with_max_entries(MAX_SERVICES, 0);

/// Passive health per backend id: consecutive failed attempts. Written by the datapath,
/// reset by steer-ctl; mmapped by steer-ctl, which polls it.
#[map(name = "STEER_OBS_V1")]
pub static OBSERVED: Array<Observed> = Array::with_max_entries(MAX_BACKENDS, BPF_F_MMAPABLE);

/// Next hops with no neighbour entry, for steer-ctl to resolve. Written by the datapath,
/// mmapped and polled by steer-ctl.
#[map(name = "STEER_NEIGH_V1")]
pub static NEIGH: Array<NeighWant> = Array::with_max_entries(NEIGH_SLOTS, BPF_F_MMAPABLE);

/// Notes to steer-ctl (`steer_common::Note`): `OBSERVED` or `NEIGH` has news. Written by the
/// datapath, read by the daemon, which sleeps until one comes (`crate::note`).
#[map(name = "STEER_NOTE_V1")]
pub static NOTES: RingBuf = RingBuf::with_byte_size(NOTES_BYTES, 0);

/// Host-wide settings (one element). Written by steer-ctl.
#[map(name = "STEER_CFG_V1")]
pub static GLOBALS: Array<Globals> = Array::with_max_entries(1, 0);

/// The programs the entry program hands packets to, by `steer_common::prog` index. Written by
/// steer-ctl when it loads the programs.
#[map(name = "STEER_PROGS_V1")]
pub static PROGS: ProgramArray = ProgramArray::with_max_entries(prog::SLOTS, 0);

/// What a program tells the next one it tail-calls (per CPU: a packet is processed on one).
/// Written and read by the datapath only.
#[map(name = "STEER_HAND_V1")]
pub static HANDOFF: PerCpuArray<Handoff> = PerCpuArray::with_max_entries(1, 0);

/// The rewrite of the ICMP error being translated (per CPU: off the stack). Datapath only.
#[map(name = "STEER_ICMP_V1")]
pub static ICMP_PLAN: PerCpuArray<crate::icmp::Plan> = PerCpuArray::with_max_entries(1, 0);

/// Per backend id, shared by all CPUs: the NAT source port cursor (0: not yet), moved on by
/// one per new flow (a compare-and-swap from the value read) and past ports found held (a
/// compare-and-swap, never over another CPU's move), so ports go out in turn whichever CPU
/// hands them out and one comes back as late as the range allows. Datapath only; pinned (`steer_common::map::NAT_CURSOR`),
/// so a restart goes on from there.
#[map(name = "STEER_NCUR_V2")]
pub static NAT_CURSOR: Array<u64> = Array::with_max_entries(MAX_BACKENDS, 0);

/// The pre-filter (`steer_common::map::FILTER`). Written by steer-ctl through mmap.
#[map(name = "STEER_FILTER_V1")]
pub static FILTER: Array<u64> = Array::with_max_entries(FILTER_WORDS, BPF_F_MMAPABLE);

/// The flow cache (`crate::cache`): a region of `1 << FLOW_CACHE_LOG2` entries per CPU, each
/// written only by its CPU (sized by steer-ctl for the host's CPUs; mmapable only so that its
/// entries start on cache lines). Datapath only; not pinned (a new program starts with an
/// empty cache).
#[map(name = "STEER_FCACHE_V2")]
pub static FLOW_CACHE: Array<steer_common::CachedFlow> =
    Array::with_max_entries(flow_cache_entries(1), BPF_F_MMAPABLE);

/// The NAT flow cache (`crate::natcache`): per CPU, both directions of established NAT flows
/// and, last, the entry where a fill is put together (`NAT_CACHE_STRIDE` per CPU, written
/// only by its CPU; sized by steer-ctl). Datapath only; not pinned.
#[map(name = "STEER_NCACHE_V2")]
pub static NAT_CACHE: Array<steer_common::NatCached> =
    Array::with_max_entries(nat_cache_entries(1), BPF_F_MMAPABLE);

/// The next-hop cache (`crate::hop`): per CPU, the FIB's answers for translated packets
/// (`HOP_SLOTS` per CPU, written only by its CPU; sized by steer-ctl). Datapath only; not
/// pinned.
#[map(name = "STEER_HOP_V2")]
pub static HOPS: Array<steer_common::CachedHop> =
    Array::with_max_entries(hop_entries(1), BPF_F_MMAPABLE);

/// The flow epochs (`crate::cache`): one counter per bucket of 5-tuples, moved on every CPU's
/// change of a flow's entry. Datapath only; pinned (`steer_common::map::FLOW_EPOCHS`).
#[map(name = "STEER_FEPOCH_V1")]
pub static FLOW_EPOCHS: Array<u32> = Array::with_max_entries(1 << FLOW_EPOCH_LOG2, 0);

/// Per CPU: the flow changes this CPU has stamped into `FLOW_EPOCHS` (`crate::cache`).
/// Datapath only; pinned with the epochs (`steer_common::map::CHANGE_SEQ`), so the programs
/// of two daemons side by side never stamp the same value.
#[map(name = "STEER_FSEQ_V1")]
pub static CHANGE_SEQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// DSR connection attempts (`crate::attempt`), direct-mapped. Written by the datapath on any
/// CPU; read by steer-ctl through mmap. Pinned (`steer_common::map::ATTEMPTS`).
#[map(name = "STEER_ATTEMPT_V1")]
pub static ATTEMPTS: Array<Attempt> = Array::with_max_entries(1 << ATTEMPTS_LOG2, BPF_F_MMAPABLE);

/// One byte per slot of `ATTEMPTS`: set while it may hold an attempt, so a packet of an
/// established flow reads a byte of this 64 KB array, not a line of the 4 MB table. Datapath
/// only; pinned (`steer_common::map::ATTEMPT_MARKS`).
#[map(name = "STEER_AMARK_V1")]
pub static ATTEMPT_MARKS: Array<[u8; 64]> = Array::with_max_entries(ATTEMPT_MARK_LINES, 0);
