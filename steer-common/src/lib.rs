//! Types and constants shared by the XDP datapath (`steer-ebpf`) and `steer-ctl`.
//!
//! Every map key and value here is `#[repr(C)]`, made of integers and byte arrays only, with
//! explicit padding and a compile-time size check: the kernel and userspace read the same bytes,
//! and a pinned map written by one version is read by the next. A layout change must bump the
//! version suffix of the map's name (`STEER_SVC_V1` → `STEER_SVC_V2`) so an upgraded daemon never
//! adopts a map it cannot read.
#![no_std]

pub mod hash;

/// Names of the maps, as they appear in the object file and under the pin directory.
/// At most 15 bytes each (BPF_OBJ_NAME_LEN - 1), versioned.
pub mod map {
    /// `ServiceKey` → service id (`u32`). An entry is written once, when its service is
    /// added, and removed with it: not replaced while the service lives (but by a restarted
    /// daemon giving the key to a service of another mode, a new id) (V2 held the whole
    /// `Service`, replaced at every table flip, and a hash map lookup racing the replacement
    /// of an entry in its bucket can find nothing). Written by steer-ctl.
    pub const SERVICES: &str = "STEER_SVC_V3";
    /// `SERVICE_INDEX_SLOTS` × `ServiceSlot` (mmapable), by `hash::service_slot`: the service
    /// whose key alone has that slot, or a mark that several share it (then `SERVICES` says).
    /// One array lookup instead of the hash map's for nearly every packet of a service.
    /// Written by steer-ctl through mmap; `SERVICES` stays the whole record.
    pub const SERVICE_INDEX: &str = "STEER_SVCX_V1";
    /// Service id → `ServiceInfo` (mmapable): the service's `Service`, double-buffered (the
    /// live copy is named by `ServiceInfo::live`). Written by steer-ctl.
    pub const SERVICE_INFO: &str = "STEER_SVCI_V1";
    /// Backend id → `Backend`. Written by steer-ctl.
    pub const BACKENDS: &str = "STEER_BE_V2";
    /// Maglev lookup tables: backend ids in `[u32; MAGLEV_CHUNK]` elements, two tables (double
    /// buffer) per service. Written by steer-ctl.
    pub const MAGLEV: &str = "STEER_MAGLEV_V1";
    /// `FlowKey` → `Flow`, LRU: established flows. Written by the datapath.
    pub const FLOWS: &str = "STEER_FLOWS_V2";
    /// `FlowKey` → `Flow`, LRU: flows that are not (or no longer) established — connection
    /// attempts that have seen only SYNs, and flows that have ended (FIN or RST seen). A SYN
    /// flood or a churn of short connections turns this table over, never the established one.
    pub const TRANSIENT: &str = "STEER_TRANS_V2";
    /// Per-CPU `Counters` per service id. Written by the datapath.
    pub const SERVICE_STATS: &str = "STEER_SSTAT_V1";
    /// Per-CPU `Counters` per backend id. Written by the datapath.
    pub const BACKEND_STATS: &str = "STEER_BSTAT_V1";
    /// Per-CPU `u64` per `outcome` index. Written by the datapath.
    pub const GLOBAL_STATS: &str = "STEER_GSTAT_V2";
    /// NAT mode's reverse translations: the 5-tuple of a backend's reply (`FlowKey`, backend →
    /// LB address and port) → `NatRev`, LRU. Written by the datapath; the forward half lives in
    /// the flow's `Flow::nat_port`.
    pub const NAT: &str = "STEER_NAT_V1";
    /// Service id → `NatPool`: the LB addresses a NAT service's flows leave from, when it has
    /// a pool. Written by steer-ctl.
    pub const POOLS: &str = "STEER_POOL_V2";
    /// Backend id → `Observed` (mmapable): passive health of NAT backends. Written by the
    /// datapath (failures), reset by steer-ctl (when active checks bring the backend back).
    pub const OBSERVED: &str = "STEER_OBS_V1";
    /// `NEIGH_SLOTS` × `NeighWant` (mmapable): next hops the datapath found no neighbour entry
    /// for. Written by the datapath, read (and resolved) by steer-ctl.
    pub const NEIGH: &str = "STEER_NEIGH_V1";
    /// Ring buffer of `Note`s (`NOTES_BYTES`): the datapath tells steer-ctl that `OBSERVED`
    /// or `NEIGH` has news, so the daemon sleeps until then instead of polling them. Not
    /// pinned: each program set writes its own, read by the daemon that loaded it.
    pub const NOTES: &str = "STEER_NOTE_V1";
    /// One `Globals`: host-wide datapath settings. Written by steer-ctl.
    pub const GLOBALS: &str = "STEER_CFG_V1";
    /// The datapath's programs after the entry one, by `prog` index, for tail calls. Written
    /// by steer-ctl at load.
    pub const PROGS: &str = "STEER_PROGS_V1";
    /// Per-CPU `Handoff`: what one program tells the next it tail-calls. Datapath only.
    pub const HANDOFF: &str = "STEER_HAND_V1";
    /// The pre-filter: `FILTER_WORDS` × `u64` (mmapable), one bit per `hash::filter_bit` of
    /// each service's address, port and protocol, and of each address NAT replies come to. A
    /// packet whose bits are clear is for no service and no NAT flow: passed after one array
    /// lookup. Bits are only ever set while the map lives (a stale bit costs a lookup, a missing
    /// one would lose a service's packets). Written by steer-ctl.
    pub const FILTER: &str = "STEER_FILTER_V1";
    /// `flow_cache_entries(cpus)` × `CachedFlow` (mmapable, so that each 64-byte entry is
    /// one cache line): the flow cache, CPU `c`'s at `c << FLOW_CACHE_LOG2` (V1 was a per-CPU
    /// array, whose lookup first reads a pointer table). Datapath only, not pinned.
    pub const FLOW_CACHE: &str = "STEER_FCACHE_V2";
    /// `1 << FLOW_EPOCH_LOG2` × `u32`: the flow epochs. Datapath only; pinned so that the
    /// programs of a daemon being replaced and of its successor, running side by side while
    /// the links are swapped, void each other's cached flows.
    pub const FLOW_EPOCHS: &str = "STEER_FEPOCH_V1";
    /// Backend id → `u64`, shared by all CPUs: the NAT source port cursor, moved by an atomic
    /// add per new flow (per-CPU cursors, V1, walked into each other's recent ports). Datapath
    /// only; pinned so that a restarted daemon's programs go on from where the ports were
    /// handed out (starting afresh would hand out ports of flows that ended seconds ago,
    /// which the backend may still hold in TIME_WAIT).
    pub const NAT_CURSOR: &str = "STEER_NCUR_V2";
    /// Per CPU, one `u32`: the flow changes this CPU has stamped into `FLOW_EPOCHS`.
    /// Datapath only; pinned with the epochs.
    pub const CHANGE_SEQ: &str = "STEER_FSEQ_V1";
    /// `1 << ATTEMPTS_LOG2` × `Attempt` (mmapable): DSR connection attempts (flows that have
    /// seen only SYNs), direct-mapped by `hash::cache_hash`. Written by the datapath, read by
    /// steer-ctl (active flows); pinned, so a restart keeps the attempts in flight.
    pub const ATTEMPTS: &str = "STEER_ATTEMPT_V1";
    /// `ATTEMPT_MARK_LINES` × 64 bytes: one byte per slot of `ATTEMPTS`, set while the slot
    /// may hold an attempt. Datapath only; pinned with the attempts.
    pub const ATTEMPT_MARKS: &str = "STEER_AMARK_V1";
    /// `nat_cache_entries(cpus)` × `NatCached` (mmapable: entries on line boundaries), per
    /// CPU `NAT_CACHE_STRIDE` of them from `c * NAT_CACHE_STRIDE`: the NAT flow cache (both
    /// directions of established NAT flows, by `hash::cache_hash` of the 5-tuple as it
    /// arrives), then one entry where a fill is put together. Datapath only, not pinned.
    pub const NAT_CACHE: &str = "STEER_NCACHE_V2";
    /// `hop_entries(cpus)` × `CachedHop` (mmapable), CPU `c`'s `HOP_SLOTS` from
    /// `c * HOP_SLOTS`: the FIB's answers for translated packets, by source, destination and
    /// ingress interface. Datapath only, not pinned.
    pub const HOPS: &str = "STEER_HOP_V2";
    /// `PRESENCE_LINES` × 64 bytes (mmapable): the established table's presence filter. Line
    /// 0 holds the round bytes (`presence`); then one byte per `presence::slot` of
    /// `hash::cache_hash`, the round in which a flow of that slot was last known to be in the
    /// established table. A SYN whose byte is outside the current window has no entry there,
    /// and skips that table's lookup. Written by the datapath (inserts) and by steer-ctl
    /// (rounds, from its scans); pinned with the established table it describes.
    pub const PRESENCE: &str = "STEER_PRES_V1";

    pub const ALL: [&str; 24] = [
        SERVICES,
        SERVICE_INDEX,
        SERVICE_INFO,
        BACKENDS,
        MAGLEV,
        FLOWS,
        TRANSIENT,
        SERVICE_STATS,
        BACKEND_STATS,
        GLOBAL_STATS,
        NAT,
        POOLS,
        OBSERVED,
        NEIGH,
        GLOBALS,
        PROGS,
        HANDOFF,
        FILTER,
        FLOW_EPOCHS,
        NAT_CURSOR,
        CHANGE_SEQ,
        ATTEMPTS,
        ATTEMPT_MARKS,
        PRESENCE,
    ];

    /// Names of earlier layouts: a daemon that finds them pinned removes them (they are never
    /// reused; their flows cannot be read by this version).
    pub const RETIRED: [&str; 8] = [
        "STEER_SVC_V1",
        "STEER_SVC_V2",
        "STEER_BE_V1",
        "STEER_FLOWS_V1",
        "STEER_TRANS_V1",
        "STEER_GSTAT_V1",
        "STEER_NCUR_V1",
        "STEER_POOL_V1",
    ];
}

/// Name of the XDP program in the object file: the entry, attached to the interfaces.
pub const PROGRAM: &str = "steer";

/// The programs the entry program hands packets to (tail calls), by index in `STEER_PROGS_V1`.
/// Each is verified on its own, so NAT's paths never add to DSR's, and a new NAT flow's
/// choice, source allocation and translation are verified once rather than at every place a
/// flow starts.
pub mod prog {
    /// Packets to a NAT service.
    pub const NAT: u32 = 0;
    /// A NAT service's packet that starts or moves a flow (handed over with a `Handoff`).
    pub const NAT_NEW: u32 = 1;
    /// Packets not for a service on a host with NAT services: backends' replies.
    pub const REPLY: u32 = 2;
    /// Capacity of `STEER_PROGS_V1`.
    pub const SLOTS: u32 = 4;
    /// Program names in the object file, by index.
    pub const NAMES: [&str; 3] = ["steer_nat", "steer_nat_new", "steer_reply"];
}

/// What a NAT service's program hands to `prog::NAT_NEW`. Value of `STEER_HAND_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Where the flow's entry is, to be replaced: `handoff::NONE`, `ESTABLISHED`, `TRANSIENT`.
    pub table: u32,
    /// A backend the flow must not go to (its attempt failed there), or `BACKEND_NONE`.
    pub avoid: u32,
    /// Frame length, for the counters.
    pub len: u64,
}
const _: () = assert!(core::mem::size_of::<Handoff>() == 16);

/// `Handoff::table` values.
pub mod handoff {
    pub const NONE: u32 = 0;
    pub const ESTABLISHED: u32 = 1;
    pub const TRANSIENT: u32 = 2;
}

/// Size of the pre-filter (`map::FILTER`): `1 << FILTER_BITS_LOG2` bits in `FILTER_WORDS`
/// 64-bit words.
pub const FILTER_BITS_LOG2: u32 = 16;
pub const FILTER_WORDS: u32 = 1 << (FILTER_BITS_LOG2 - 6);

/// Entries of the flow cache, per CPU (`1 << FLOW_CACHE_LOG2`): established DSR flows, by
/// `hash::cache_hash`.
pub const FLOW_CACHE_LOG2: u32 = 14;
/// Buckets of the flow epochs (`1 << FLOW_EPOCH_LOG2`): a flow's bucket moves when its entry
/// in the connection table changes, which voids every CPU's cached copy of it.
/// 4,096 (16 KB, small enough to stay in a busy core's cache, which every new flow's stamp
/// needs); a stamp voids the cached flows of its bucket, 1/4,096 of them, which then take the
/// full path once.
pub const FLOW_EPOCH_LOG2: u32 = 12;
/// Entries of the NAT flow cache, per CPU (`1 << NAT_CACHE_LOG2`, 128 bytes each: 2 MiB): each
/// direction of an established NAT flow takes one, by `hash::cache_hash` of its 5-tuple as it
/// arrives. Element `1 << NAT_CACHE_LOG2` of each CPU's region is where its fill is put together.
pub const NAT_CACHE_LOG2: u32 = 14;
/// Elements of the NAT flow cache per CPU: its slots and its stage entry.
pub const NAT_CACHE_STRIDE: u32 = (1 << NAT_CACHE_LOG2) + 1;
/// Entries of the next-hop cache, per CPU (64 bytes each: 16 KiB), direct-mapped by a hash of
/// a translated packet's addresses and ingress interface. A NAT host sends to few next hops
/// (its backends, and its clients' routers): a small array stays in the CPU's caches.
pub const HOP_SLOTS: u32 = 256;

// The three caches are plain arrays with a region per CPU, indexed by the CPU a packet is
// processed on, rather than per-CPU arrays: a per-CPU array's lookup reads the element's
// pointer from a table (a line of 8 bytes × entries) before the element, and a packet that
// finds its cache slot cold paid for both lines (docs/PERFORMANCE.md). Sized at load time with
// a region for every possible CPU id (up to the highest one, holes included).

/// Elements of the flow cache for regions of CPU ids `0..cpus`.
pub const fn flow_cache_entries(cpus: u32) -> u32 {
    cpus << FLOW_CACHE_LOG2
}

/// Elements of the NAT flow cache for regions of CPU ids `0..cpus`.
pub const fn nat_cache_entries(cpus: u32) -> u32 {
    cpus * NAT_CACHE_STRIDE
}

/// Elements of the next-hop cache for regions of CPU ids `0..cpus`.
pub const fn hop_entries(cpus: u32) -> u32 {
    cpus * HOP_SLOTS
}

// Where CPU `cpu`'s entries are: the datapath indexes by them, steer-ctl reads by them.

/// Index in the flow cache of CPU `cpu`'s slot `slot` (`< 1 << FLOW_CACHE_LOG2`).
pub const fn flow_cache_index(cpu: u32, slot: u32) -> u32 {
    cpu << FLOW_CACHE_LOG2 | slot
}

/// Index in the NAT flow cache of CPU `cpu`'s slot `slot` (`< 1 << NAT_CACHE_LOG2`); slot
/// `1 << NAT_CACHE_LOG2` is the CPU's stage entry.
pub const fn nat_cache_index(cpu: u32, slot: u32) -> u32 {
    cpu * NAT_CACHE_STRIDE + slot
}

/// Index in the next-hop cache of CPU `cpu`'s slot `slot` (`< HOP_SLOTS`).
pub const fn hop_index(cpu: u32, slot: u32) -> u32 {
    cpu * HOP_SLOTS + slot
}

/// Slots of the attempts table (`1 << ATTEMPTS_LOG2`, 64 bytes each: 4 MiB). A slot holds one
/// connection attempt from its SYN to its handshake's ACK (a round trip); a newer attempt
/// hashing to the same slot replaces it, and the older one's ACK then takes the Maglev choice
/// its SYN took, unless the pool changed in between.
pub const ATTEMPTS_LOG2: u32 = 16;
/// Lines of the attempt marks (64 one-byte marks each).
pub const ATTEMPT_MARK_LINES: u32 = 1 << (ATTEMPTS_LOG2 - 6);
/// How long an attempt stands (since its last SYN): longer than a SYN's retransmissions
/// (Linux gives up after about 127 s) and a SYN-ACK's (about 63 s).
pub const ATTEMPT_TTL_NS: u64 = 130_000_000_000;

/// The established table's presence filter (`map::PRESENCE`).
///
/// Each slot's byte is a round number; line 0 holds the current round (`STAMP`), the last
/// round whose scan completed (`DONE`) and whether any has (`VALID`). The datapath writes the
/// current round into a flow's slot before it inserts the flow into the established table;
/// steer-ctl runs rounds: it moves `STAMP` on (when it opens the map, and as soon as a round is
/// done), and once every program that read the old one has finished (`GRACE_MS` later) a flow
/// scan writes the new round into the slot of every flow the established table holds, then
/// sets `DONE` to it. So every flow in the table has a byte in the window
/// `DONE..=STAMP` (wrapping): a byte outside it means "not in the table" for certain, and a
/// byte inside means "perhaps" (another flow of the slot, or one since evicted). Until a round
/// has completed (`VALID` 0: a new map beside a table adopted from an older version) every
/// SYN looks the table up.
pub mod presence {
    /// Slots: `1 << LOG2` bytes (16 MiB); with the default million flows, about 1 slot in 16
    /// is in the window after a round, so 1 SYN in 16 still looks the table up.
    pub const LOG2: u32 = 24;
    /// Byte offsets in line 0.
    pub const STAMP: usize = 0;
    pub const DONE: usize = 1;
    pub const VALID: usize = 2;
    /// How long after moving `STAMP` steer-ctl may mark flows with it: a program run is
    /// microseconds, so any that read the round before is long over. A daemon's scan that
    /// comes sooner is a plain pass (no round); tests and the bench wait.
    pub const GRACE_MS: u64 = 10;

    /// The line (after line 0) and byte of a flow's slot, by `hash::cache_hash`.
    #[inline(always)]
    pub fn slot(hash: u32) -> (u32, usize) {
        let s = hash >> (32 - LOG2);
        (1 + (s >> 6), (s & 63) as usize)
    }

    /// Whether a slot's byte `b` is in the window of rounds `done..=stamp`.
    #[inline(always)]
    pub fn in_window(b: u8, stamp: u8, done: u8) -> bool {
        b.wrapping_sub(done) <= stamp.wrapping_sub(done)
    }
}
/// Lines of `map::PRESENCE`: line 0, then the slots.
pub const PRESENCE_LINES: u32 = 1 + (1 << (presence::LOG2 - 6));

/// Default capacity of the services map.
pub const MAX_SERVICES: u32 = 64;
/// Capacity of the backends array; backend ids are `0..MAX_BACKENDS`.
pub const MAX_BACKENDS: u32 = 4096;
/// Default capacity of the connection table (LRU: the least recently used flow is evicted when
/// it is full).
pub const MAX_FLOWS: u32 = 1 << 20;
/// Capacity of the transient table (SYN-only and ended flows) for a connection table of
/// `max_flows`: a quarter of it, at least 4,096. An entry lives there for a handshake or a
/// close, milliseconds; when a flood turns it over, a handshake's ACK that finds no entry
/// takes the same Maglev choice as its SYN did.
pub const fn transient_capacity(max_flows: u32) -> u32 {
    let q = max_flows / 4;
    if q < 4096 {
        4096
    } else {
        q
    }
}
/// Capacity of the NAT table for a connection table of `max_flows`: one reverse entry per flow
/// of either table, so that a reverse translation is never evicted while its flow is held.
pub const fn nat_capacity(max_flows: u32) -> u32 {
    max_flows + transient_capacity(max_flows)
}
/// Default idle timeout of a flow, in seconds.
pub const DEFAULT_IDLE_TIMEOUT_S: u32 = 30;
/// Largest Maglev table.
pub const MAGLEV_MAX_SIZE: u32 = 65_537;
/// Slots per element of the `MAGLEV` array. BPF arrays store each element at an 8-byte
/// stride, so one `u32` per element would waste half the memory and break a flat `mmap` view;
/// 16 slots (64 bytes) per element pack exactly.
pub const MAGLEV_CHUNK: u32 = 16;
/// Distance between two tables in the `MAGLEV` array, in slots: `MAGLEV_MAX_SIZE` rounded up to
/// whole chunks.
pub const MAGLEV_STRIDE: u32 = MAGLEV_MAX_SIZE.div_ceil(MAGLEV_CHUNK) * MAGLEV_CHUNK;
/// Number of `MAGLEV` elements for `services` services (two tables each).
pub const fn maglev_chunks(services: u32) -> u32 {
    services * 2 * (MAGLEV_STRIDE / MAGLEV_CHUNK)
}
/// Default Maglev table size (prime).
pub const MAGLEV_DEFAULT_SIZE: u32 = 65_537;
/// Marks "no backend" in a Maglev slot, a fallback or a maintenance field.
pub const BACKEND_NONE: u32 = u32::MAX;

/// Position, in slots from the start of the `MAGLEV` array, of slot `i` of table `slot` (0 or 1)
/// of service `svc`. Element `pos / MAGLEV_CHUNK`, lane `pos % MAGLEV_CHUNK`.
#[inline(always)]
pub const fn maglev_index(svc: u32, slot: u32, i: u32) -> u32 {
    (svc * 2 + slot) * MAGLEV_STRIDE + i
}

/// Address families as carried in keys (not the kernel's AF_* numbers, to keep them in a byte).
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// A service: virtual address, port and protocol. Key of `STEER_SVC_V3`.
///
/// IPv4 addresses fill `addr[0..4]` and leave the rest zero. Aligned to 4 so the datapath
/// copies it in words.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceKey {
    pub addr: [u8; 16],
    /// Port in network byte order (the bytes as they are on the wire).
    pub port_be: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(core::mem::size_of::<ServiceKey>() == 20);

/// `Service::flags` bits.
pub mod svc_flags {
    /// New flows go to the service's maintenance backend.
    pub const MAINTENANCE: u32 = 1 << 0;
    /// With no eligible backend and no fallback, drop a SYN silently instead of answering a RST.
    pub const NO_BACKEND_DROP: u32 = 1 << 1;
    /// NAT: passive health. Refused attempts (a RST answering a SYN) and attempts unanswered
    /// for `Service::syn_timeout_ms` count as failures of the backend; `Service::error_limit`
    /// consecutive ones take it out of new flows at once.
    pub const OBSERVE: u32 = 1 << 2;
    /// NAT: refused-connection recovery. A backend's RST to a SYN is not shown to the client
    /// while another backend can take the attempt; the client's retransmitted SYN goes there.
    pub const RECOVER: u32 = 1 << 3;
    /// NAT: flows leave from the service's `NatPool` (else from each backend's `Backend::snat`).
    pub const NAT_POOL: u32 = 1 << 4;
}

/// Forwarding modes (`Service::mode`).
pub const MODE_DSR: u32 = 0;
/// Full NAT: destination := backend address and port, source := an LB address and port.
pub const MODE_NAT: u32 = 1;

/// A service's datapath settings: a copy in `ServiceInfo`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    /// Index of the service's counters and Maglev tables, `0..MAX_SERVICES`.
    pub id: u32,
    /// `svc_flags` bits.
    pub flags: u32,
    /// Size of the Maglev table in use (prime, at most `MAGLEV_MAX_SIZE`); 0 = no table yet.
    pub maglev_size: u32,
    /// Which of the two Maglev tables is live (0 or 1); userspace fills the other, then flips.
    pub table_slot: u32,
    /// Backend for new flows when no backend is eligible, or `BACKEND_NONE`.
    pub fallback: u32,
    /// Backend for new flows while in maintenance, or `BACKEND_NONE`.
    pub maintenance: u32,
    /// Flows idle for longer than this are considered gone (UDP, and for drain accounting).
    pub idle_timeout_s: u32,
    /// Forwarding mode, `MODE_*`.
    pub mode: u32,
    /// NAT: the LB source ports flows may use, inclusive, host order.
    pub nat_port_lo: u16,
    pub nat_port_hi: u16,
    /// NAT with `OBSERVE`: consecutive failed attempts that mark a backend down.
    pub error_limit: u16,
    pub _pad: u16,
    /// NAT with `OBSERVE`: an attempt with no SYN-ACK after this long has failed (seen when
    /// the client retransmits its SYN).
    pub syn_timeout_ms: u32,
    pub _pad2: u32,
}
const _: () = assert!(core::mem::size_of::<Service>() == 48);

/// A service's settings, two copies: packets read `copies[live & 1]`. steer-ctl writes the
/// other copy, then stores `live` (through mmap), and writes that copy again only a grace
/// period later, when no packet that read the old `live` is still running: a packet reads one
/// whole `Service`, never a copy being written. Value of `STEER_SVCI_V1`, by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceInfo {
    pub live: u32,
    pub _pad: u32,
    pub copies: [Service; 2],
}
const _: () = assert!(core::mem::size_of::<ServiceInfo>() == 104);

/// `ServiceSlot::state`.
pub mod slot_state {
    /// No service has the slot.
    pub const EMPTY: u32 = 0;
    /// One service has it: the slot's `key` and `id`.
    pub const ONE: u32 = 1;
    /// Several services have it: look the key up in the services map.
    pub const SHARED: u32 = 2;
}

/// What the service index says of a key.
pub enum Indexed {
    /// The service with this id.
    Id(u32),
    /// Ask the services map.
    Shared,
    /// No service.
    None,
}

/// A slot of the service index (`STEER_SVCX_V1`). steer-ctl writes `key` and `id` only while
/// `state` is not `ONE` (and a grace period after it last was), then stores `state`; a packet
/// reads `state` first, so it never compares a key being written. Two slots a cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceSlot {
    pub key: ServiceKey,
    pub id: u32,
    pub state: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<ServiceSlot>() == 32);

impl ServiceSlot {
    /// What the slot says of `key` (the slot of `hash::service_slot` of it).
    #[inline(always)]
    pub fn find(&self, key: &ServiceKey) -> Indexed {
        // SAFETY: `state` is a u32 that steer-ctl stores whole.
        let state = unsafe { core::ptr::read_volatile(&self.state) };
        if state == slot_state::SHARED {
            return Indexed::Shared;
        }
        if state != slot_state::ONE {
            return Indexed::None;
        }
        // Word by word, in place: five 4-byte loads each side, no copy on the stack and no
        // memcmp (ServiceKey is 4-aligned).
        let a = &self.key as *const ServiceKey as *const u32;
        let b = key as *const ServiceKey as *const u32;
        for w in 0..5 {
            // SAFETY: both point to 20 bytes of plain integers, 4-aligned. The slot's words
            // are read volatile, so that no compiler moves them above the read of `state`.
            if unsafe { core::ptr::read_volatile(a.add(w)) != *b.add(w) } {
                return Indexed::None;
            }
        }
        // SAFETY: a u32 of the slot.
        Indexed::Id(unsafe { core::ptr::read_volatile(&self.id) })
    }
}

/// Slots of the service index: `1 << SERVICE_INDEX_LOG2` (32 bytes each, 128 KiB), four or
/// more a service up to `MAX_SERVICES_LIMIT`'s 1,024.
pub const SERVICE_INDEX_LOG2: u32 = 12;
pub const SERVICE_INDEX_SLOTS: u32 = 1 << SERVICE_INDEX_LOG2;

/// Admin states of a backend (`Backend::admin`). `NONE` marks a free slot or a removed backend.
pub mod admin {
    pub const NONE: u8 = 0;
    pub const READY: u8 = 1;
    pub const DRAIN: u8 = 2;
    pub const MAINT: u8 = 3;
    pub const REJECT: u8 = 4;
}

/// Health of a backend (`Backend::health`), as set by steer-ctl's checks.
pub mod health {
    pub const DOWN: u8 = 0;
    pub const UP: u8 = 1;
    /// Not checked yet (a backend added or adopted before its first check result): not
    /// eligible, like `DOWN`.
    pub const UNKNOWN: u8 = 2;
}

/// A real server. Value of `STEER_BE_V2`, indexed by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    pub mac: [u8; 6],
    pub family: u8,
    /// `admin::*`.
    pub admin: u8,
    /// `health::*`.
    pub health: u8,
    /// 1 while the backend takes new flows of its service: in its live Maglev table, or the
    /// maintenance backend of a service in maintenance, or the fallback of a service whose
    /// table is empty. Set by steer-ctl when it publishes a table (joining before the flip,
    /// leaving after it): a retransmitted SYN stays with its backend only while this holds.
    pub takes_new: u8,
    pub _pad: [u8; 2],
    /// Service this backend belongs to.
    pub service: u32,
    /// Port in network byte order (used by NAT mode; DSR keeps the VIP's port).
    pub port_be: u16,
    /// Bumped by steer-ctl each time the id is given to a different backend; a flow records
    /// the generation it was pinned to, so a reused id never inherits another backend's flows.
    pub gen: u16,
    pub _pad2: [u8; 4],
    /// NAT: the LB's own address that faces this backend (the source of its flows unless the
    /// service has a pool). Same family as `addr`.
    pub snat: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<Backend>() == 56);

impl Backend {
    pub const EMPTY: Backend = Backend {
        addr: [0; 16],
        mac: [0; 6],
        family: 0,
        admin: admin::NONE,
        health: health::DOWN,
        takes_new: 0,
        _pad: [0; 2],
        service: 0,
        port_be: 0,
        gen: 0,
        _pad2: [0; 4],
        snat: [0; 16],
    };

    /// May take new flows: admin `ready` and health `up`.
    #[inline(always)]
    pub fn eligible(&self) -> bool {
        self.admin == admin::READY && self.health == health::UP
    }

    /// Takes new flows now: eligible, and chosen by its service's live table (or as its
    /// maintenance or fallback backend).
    #[inline(always)]
    pub fn takes_new_flows(&self) -> bool {
        self.eligible() && self.takes_new != 0
    }

    /// May keep the flows it has: anything but removed or `reject`.
    #[inline(always)]
    pub fn keeps_flows(&self) -> bool {
        self.admin != admin::NONE && self.admin != admin::REJECT
    }
}

/// One connection: the 5-tuple as the client sent it. Key of `STEER_FLOWS_V2`. Aligned to 8
/// so the datapath copies and hashes it in words.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// Whether `other` is the same 5-tuple, compared in five 64-bit words (a few instructions
    /// in BPF, where a derived `==` compares field by field).
    #[inline(always)]
    pub fn same(&self, other: &FlowKey) -> bool {
        // SAFETY: 40 bytes aligned to 8, without padding bytes that differ (the parser and
        // every writer zero `_pad`).
        let (a, b) = unsafe {
            (
                &*(self as *const FlowKey as *const [u64; 5]),
                &*(other as *const FlowKey as *const [u64; 5]),
            )
        };
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
    }
}

/// `Flow::flags` bits.
pub mod flow_flags {
    /// Only SYNs seen from the client so far: the connection is not established.
    pub const SYN_ONLY: u16 = 1 << 0;
    /// The client sent a FIN.
    pub const FIN: u16 = 1 << 1;
    /// The client sent a RST, or steer answered one.
    pub const RST: u16 = 1 << 2;
    /// The flow has ended (FIN or RST seen).
    pub const ENDED: u16 = FIN | RST;
    /// NAT: the backend refused this attempt (or left it unanswered) and another backend could
    /// take it: the client's next SYN is steered elsewhere.
    pub const REFUSED: u16 = 1 << 3;
}

/// `Flow::nat_addr` when the flow leaves from its backend's `snat` address.
pub const NAT_ADDR_BACKEND: u16 = u16::MAX;
/// Most addresses in a `NatPool` (a power of two: the datapath masks indexes with it).
pub const NAT_POOL_MAX: usize = 8;
const _: () = assert!(NAT_POOL_MAX.is_power_of_two());
/// Source ports a NAT flow tries before its pool counts as exhausted.
pub const NAT_PORT_TRIES: u32 = 8;
/// A NAT source port whose flow ended (and passed its last packet) this long ago may be given
/// to a new flow (ports go out in turn, so in practice one comes back after the whole range
/// has).
pub const NAT_REUSE_NS: u64 = 2_000_000_000;

/// `NatRev::flags` bits.
pub mod nat_flags {
    /// The backend answered the attempt with a SYN-ACK.
    pub const SYN_ACK: u16 = 1 << 0;
    /// The attempt's failure (refused or unanswered) has been counted.
    pub const FAILED: u16 = 1 << 1;
    /// The client sent a FIN (a half-close: the backend may go on sending).
    pub const FIN_CLIENT: u16 = 1 << 2;
    /// The backend sent a FIN.
    pub const FIN_BACKEND: u16 = 1 << 3;
}

/// The reverse half of a NAT flow. Value of `STEER_NAT_V1`, whose key is the reply's 5-tuple
/// (backend address and port → LB address and source port). Written by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatRev {
    /// The client's address and port, as in the flow's key.
    pub client: [u8; 16],
    /// The service's address and port.
    pub vip: [u8; 16],
    pub client_port_be: u16,
    pub vip_port_be: u16,
    /// The flow's service id.
    pub svc: u16,
    /// `Flow::nat_addr` of the flow (which LB address it leaves from).
    pub nat_addr: u16,
    pub backend: u32,
    pub gen: u16,
    /// `nat_flags` bits.
    pub flags: u16,
    /// When the attempt's first SYN was forwarded (0: the flow was met mid-way).
    pub syn_ns: u64,
    /// When the flow was seen to end (a RST either way, or a FIN each way), 0 while open.
    pub ended_ns: u64,
    /// About when its last packet passed either way (updated at most once a second).
    pub last_ns: u64,
    /// UDP: the service's idle timeout; a flow idle longer has ended (its port is free
    /// again). 0 for TCP, whose flows end by FIN or RST.
    pub idle_ns: u64,
}
const _: () = assert!(core::mem::size_of::<NatRev>() == 80);

/// The LB addresses a NAT service's flows leave from. Value of `STEER_POOL_V2` by service id.
///
/// A flow records the slot of its address (`Flow::nat_addr`), so an address keeps its slot
/// for as long as the pool names it, and one the pool no longer names stays in its slot
/// (retired: no new flow takes it, the flows leaving from it keep their source) until a new
/// address needs the slot. (V1 kept the addresses in the pool's order: removing one from the
/// middle moved the flows of every address after it to another source.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatPool {
    /// Addresses by slot; the first `slots` hold one.
    pub addrs: [[u8; 16]; NAT_POOL_MAX],
    /// The slots new flows take (the pool's addresses), the first `count`.
    pub active: [u8; NAT_POOL_MAX],
    /// Addresses new flows take, `1..=NAT_POOL_MAX`.
    pub count: u32,
    /// Slots holding an address, the pool's and retired ones, `count..=NAT_POOL_MAX`.
    pub slots: u32,
}
const _: () = assert!(core::mem::size_of::<NatPool>() == 144);

/// Passive health of a backend. Value of `STEER_OBS_V1` by backend id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// Consecutive failed attempts (refused or unanswered); a SYN-ACK resets it. At the
    /// service's `error_limit` the backend takes no new flows until steer-ctl resets it.
    pub fails: u64,
    /// `bpf_ktime_get_coarse_ns()` of the last failure.
    pub last_fail_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Observed>() == 16);

/// Slots of `STEER_NEIGH_V1`.
pub const NEIGH_SLOTS: u32 = 64;

/// A next hop with no neighbour entry. Element of `STEER_NEIGH_V1`, at a slot chosen by the
/// address's hash; `seq` grows at each write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighWant {
    pub addr: [u8; 16],
    pub ifindex: u32,
    pub family: u32,
    pub seq: u64,
}
const _: () = assert!(core::mem::size_of::<NeighWant>() == 32);

/// Bytes of the `map::NOTES` ring: 256 notes (8 bytes and an 8-byte header each) between
/// two reads, where a read follows each wake-up; a note that finds it full is dropped, and the
/// daemon's slow poll (once a second) reads the maps it would have announced.
pub const NOTES_BYTES: u32 = 4096;

/// A note from the datapath to steer-ctl (`map::NOTES`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Note {
    /// `note::*`.
    pub kind: u32,
    /// `note::PASSIVE`: the backend id; `note::NEIGH`: the slot of `map::NEIGH`.
    pub id: u32,
}
const _: () = assert!(core::mem::size_of::<Note>() == 8);

/// `Note::kind`.
pub mod note {
    /// A backend's consecutive failures reached its service's `error_limit` (once per climb).
    pub const PASSIVE: u32 = 1;
    /// A slot of `map::NEIGH` was given a next hop it did not hold.
    pub const NEIGH: u32 = 2;
}

/// `Globals::flags` bits.
pub mod global_flags {
    /// Some service is in NAT mode: packets not for a service are looked up as replies.
    pub const NAT: u32 = 1 << 0;
}

/// Host-wide datapath settings. Only element of `STEER_CFG_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub flags: u32,
    /// Moves (by one, wrapping) after every change of a service entry. An entry of the flow
    /// cache holds the epoch it was filled in, and is used only while it is current.
    pub epoch: u32,
}
const _: () = assert!(core::mem::size_of::<Globals>() == 8);

/// One entry of the flow cache: an established DSR flow as this CPU last saw it in the
/// connection table; one cache line. Element of `STEER_FCACHE_V2` (datapath only; readable
/// for tests).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedFlow {
    pub key: FlowKey,
    pub backend: u32,
    pub gen: u16,
    pub _pad: u16,
    pub svc_id: u32,
    /// The flow's epoch bucket when filled.
    pub flow_epoch: u32,
    /// `Globals::epoch` when filled.
    pub cfg_epoch: u32,
    /// When filled, in jiffies (low 32 bits).
    pub filled_jiffies: u32,
}
const _: () = assert!(core::mem::size_of::<CachedFlow>() == 64);

/// `NatCached::other` bit: the entry translates a backend's reply (back to the client); clear,
/// a client's packet (to the backend).
pub const NAT_CACHED_REPLY: u16 = 1 << 15;

/// One entry of the NAT flow cache: one direction of an established NAT flow as this CPU last
/// sent it through the full path — the 5-tuple as it arrives, the rewrite (addresses, ports,
/// checksum deltas), the FIB's answer (MACs, egress interface) and what makes it still good.
/// Element of `STEER_NCACHE_V2` (datapath only; readable for tests).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatCached {
    /// The packet's 5-tuple as it arrives: the client's (to the VIP), or the backend's reply
    /// (to an LB address and source port).
    pub key: FlowKey,
    /// Source and destination addresses and ports the packet leaves with.
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    /// The frame's first 12 bytes out: the next hop's MAC, then the egress interface's (both
    /// from the FIB).
    pub macs: [u8; 12],
    /// The rewrite's incremental checksum changes (RFC 1624), folded to 16 bits: the IPv4
    /// header's (addresses), and the TCP or UDP checksum's (addresses and ports).
    pub ip_sum: u16,
    pub l4_sum: u16,
    /// The interface the packets came in by when filled (the FIB's answer depends on it), and
    /// the one the FIB sent them out of (the same: `XDP_TX`; another: `XDP_REDIRECT`).
    pub ifindex_in: u32,
    pub ifindex_out: u32,
    /// `Globals::epoch` when filled (moved by steer-ctl after a change of a service, a
    /// backend's addresses, a pool, or a next hop).
    pub cfg_epoch: u32,
    /// The flow epoch of this 5-tuple's bucket, and of the other direction's 5-tuple's
    /// bucket (`other & !NAT_CACHED_REPLY`), when filled.
    pub epoch: u32,
    pub other_epoch: u32,
    pub other: u16,
    /// The flow's service and backend ids (both below 65,536) and the backend's generation.
    pub svc: u16,
    pub backend: u16,
    pub gen: u16,
    /// The IP length (header and payload) of the packet that filled it: the FIB checked the
    /// route's MTU for that length, so only packets no longer are sent from the entry.
    pub max_len: u16,
    /// Fills of this 5-tuple in a row in this slot (wrapping; for tests and the bench: how
    /// often the full path ran).
    pub fills: u16,
    /// When filled, in jiffies (low 32 bits: an entry left unfilled for 2^32 jiffies, 49
    /// days at HZ=1000, would read as fresh again only if none of its epochs moved).
    pub filled_jiffies: u32,
}
const _: () = assert!(core::mem::size_of::<NatCached>() == 128);
const _: () = assert!(core::mem::offset_of!(NatCached, macs) % 4 == 0);

/// Element of `STEER_HOP_V2`: the FIB's answer for a translated packet from `src`
/// to `dst` that came in by `ifindex_in` (datapath only; readable for tests).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedHop {
    /// The packet's addresses as it leaves (an IPv4 address in the first word, the rest 0).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// The interface the packet came in by (the FIB's answer depends on it), and the one the
    /// FIB sends it out of; 0: the slot is empty.
    pub ifindex_in: u32,
    pub ifindex_out: u32,
    /// `Globals::epoch` read before the FIB was asked: steer-ctl moves it when a next hop may
    /// have changed, which voids the entry.
    pub cfg_epoch: u32,
    /// When the FIB answered, in jiffies (low 32 bits).
    pub filled_jiffies: u32,
    /// The frame's first 12 bytes out: the next hop's MAC, then the egress interface's.
    pub macs: [u8; 12],
    /// The IP length the FIB checked the route's MTU for: longer packets ask again.
    pub max_len: u16,
    /// The L4 protocol (policy routing may choose by it).
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<CachedHop>() == 64);
const _: () = assert!((1u32 << FLOW_EPOCH_LOG2) <= NAT_CACHED_REPLY as u32);
const _: () = assert!(MAX_BACKENDS <= 1 << 16);

/// A DSR connection attempt: a flow that has seen only SYNs, pinned to the backend its SYN
/// went to. Element of `STEER_ATTEMPT_V1`. Written by several CPUs without a lock (a slot is
/// shared by every 5-tuple that hashes to it), so `check` seals the rest: a reader that finds
/// it does not match (a write torn by another) treats the slot as empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    pub key: FlowKey,
    pub backend: u32,
    pub gen: u16,
    pub _pad: u16,
    /// `bpf_ktime_get_coarse_ns()` of its last SYN.
    pub last_seen_ns: u64,
    /// `hash::attempt_check` of the fields above; 0: empty.
    pub check: u64,
}
const _: () = assert!(core::mem::size_of::<Attempt>() == 64);

impl Attempt {
    /// Whether the slot holds a whole attempt (not empty, not torn) of `key`, younger than
    /// `ATTEMPT_TTL_NS` at `now`.
    #[inline(always)]
    pub fn holds(&self, key: &FlowKey, now: u64) -> bool {
        self.key.same(key) && self.live(now)
    }

    /// Whether the slot holds a whole attempt (of any 5-tuple) younger than
    /// `ATTEMPT_TTL_NS` at `now`.
    #[inline(always)]
    pub fn live(&self, now: u64) -> bool {
        // The time first: an empty or old slot is told without computing the seal.
        now.saturating_sub(self.last_seen_ns) < ATTEMPT_TTL_NS
            && self.check
                == hash::attempt_check(&self.key, self.backend, self.gen, self.last_seen_ns)
    }
}

/// Where a flow goes and what was seen of it. Value of `STEER_FLOWS_V2` and `STEER_TRANS_V2`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub backend: u32,
    /// `Backend::gen` of the backend when the flow was pinned to it.
    pub gen: u16,
    /// `flow_flags` bits.
    pub flags: u16,
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC_COARSE) of the last packet.
    pub last_seen_ns: u64,
    /// NAT: the LB source port of the flow (network order); 0 in DSR.
    pub nat_port_be: u16,
    /// NAT: index of the source address in the service's `NatPool`, or `NAT_ADDR_BACKEND`
    /// for the backend's `snat` address.
    pub nat_addr: u16,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Flow>() == 24);
// The datapath updates `backend | gen << 32 | flags << 48` as one aligned, atomic 64-bit word.
const _: () =
    assert!(core::mem::offset_of!(Flow, flags) == 6 && core::mem::align_of::<Flow>() == 8);

/// Per-CPU counters of one service or backend. Value of `STEER_SSTAT_V1` and `STEER_BSTAT_V1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    /// Flows this service or backend was chosen for (a SYN, or an unknown mid-flow packet).
    pub new_flows: u64,
    /// Flows that ended (FIN or RST seen from the client side).
    pub ended_flows: u64,
    /// RSTs answered from XDP.
    pub rst_sent: u64,
    /// NAT: connection attempts the backend refused (a RST answering a SYN).
    pub refused: u64,
    /// NAT: connection attempts the backend left unanswered for the service's `syn_timeout`.
    pub syn_timeouts: u64,
    /// NAT: new flows that found no free source port (answered with a RST, or dropped).
    pub nat_exhausted: u64,
}
const _: () = assert!(core::mem::size_of::<Counters>() == 64);

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.ended_flows += o.ended_flows;
        self.rst_sent += o.rst_sent;
        self.refused += o.refused;
        self.syn_timeouts += o.syn_timeouts;
        self.nat_exhausted += o.nat_exhausted;
    }
}

/// What happened to a packet: indexes of `STEER_GSTAT_V2`. Every packet the program sees is
/// counted under exactly one of them.
pub mod outcome {
    /// Forwarded to a backend (`XDP_TX`).
    pub const TX_FORWARD: u32 = 0;
    /// Answered with a RST built in XDP (`XDP_TX`).
    pub const TX_RST: u32 = 1;
    /// Not IPv4/IPv6 (ARP, LLDP, …): passed to the kernel.
    pub const PASS_NOT_IP: u32 = 2;
    /// IP, but not to a configured service: passed to the kernel.
    pub const PASS_NOT_SERVICE: u32 = 3;
    /// Fragment: passed to the kernel.
    pub const PASS_FRAGMENT: u32 = 4;
    /// Truncated or malformed IP, TCP or UDP headers: passed to the kernel, which counts and
    /// drops them.
    pub const PASS_MALFORMED: u32 = 5;
    /// To a service with no eligible backend, no fallback and nothing to answer: dropped.
    pub const DROP_NO_BACKEND: u32 = 6;
    /// A backend id found in a Maglev table is out of range or its slot is empty: dropped.
    pub const DROP_BAD_BACKEND: u32 = 7;
    /// A packet of a flow whose backend is rejected or removed, that cannot be answered with a
    /// RST (UDP, or a RST itself): dropped.
    pub const DROP_REJECTED: u32 = 8;
    /// Headers nested deeper than the datapath walks (more than two VLAN tags, more than
    /// `MAX_IPV6_EXT_HEADERS` IPv6 extension headers before TCP or UDP): passed to the kernel.
    pub const PASS_TOO_MANY_HEADERS: u32 = 9;
    /// NAT: translated and sent to its backend out of another interface (`XDP_REDIRECT`).
    pub const REDIRECT_FORWARD: u32 = 10;
    /// NAT: a backend's reply (or an ICMP error about a flow) translated back and sent out of
    /// the interface it came in by (`XDP_TX`).
    pub const TX_REPLY: u32 = 11;
    /// NAT: the same, out of another interface (`XDP_REDIRECT`).
    pub const REDIRECT_REPLY: u32 = 12;
    /// NAT: the next hop has no neighbour entry yet: dropped, and steer-ctl asked to resolve
    /// it (the client's retransmission goes through).
    pub const DROP_NO_NEIGH: u32 = 13;
    /// NAT: the kernel's FIB has no usable route for the translated packet (unreachable,
    /// blackhole, prohibited, forwarding disabled): dropped.
    pub const DROP_NO_ROUTE: u32 = 14;
    /// NAT: a backend's RST answering a SYN, hidden from the client because another backend
    /// will take its retransmitted SYN (refused-connection recovery).
    pub const DROP_REFUSED: u32 = 15;
    /// NAT: a new UDP flow (or a TCP packet that cannot be answered) found no free source
    /// port: dropped. A TCP SYN is answered with a RST (`TX_RST`).
    pub const DROP_NAT_EXHAUSTED: u32 = 16;
    /// NAT: a packet of a flow whose source port now belongs to another flow (its reverse
    /// translation was lost and given away): dropped, never delivered into the other flow.
    pub const DROP_NAT_CONFLICT: u32 = 17;
    /// NAT: the translated packet is larger than the next hop's MTU: dropped.
    pub const DROP_TOO_BIG: u32 = 18;
    /// A NAT packet whose program is not loaded (`STEER_PROGS_V1` empty): dropped.
    pub const DROP_NO_PROGRAM: u32 = 19;
    /// Number of outcome slots; every packet is counted in exactly one of `0..COUNT`.
    pub const COUNT: u32 = 32;

    /// Human names, indexed by outcome; used for logs and metrics labels.
    pub const NAMES: [&str; 20] = [
        "tx_forward",
        "tx_rst",
        "pass_not_ip",
        "pass_not_service",
        "pass_fragment",
        "pass_malformed",
        "drop_no_backend",
        "drop_bad_backend",
        "drop_rejected",
        "pass_too_many_headers",
        "redirect_forward",
        "tx_reply",
        "redirect_reply",
        "drop_no_neigh",
        "drop_no_route",
        "drop_refused",
        "drop_nat_exhausted",
        "drop_nat_conflict",
        "drop_too_big",
        "drop_no_program",
    ];
}

/// Events that are not outcomes (a packet may cause several, or none): indexes of
/// `STEER_GSTAT_V2` after the outcomes.
pub mod event {
    /// A new flow could not be inserted in the connection table; the packet was steered by
    /// Maglev all the same (fail closed: the same choice the next packet will make).
    pub const FLOW_INSERT_FAILED: u32 = super::outcome::COUNT;
    /// A retransmitted SYN was steered again because its backend was no longer eligible.
    pub const REDISPATCH: u32 = super::outcome::COUNT + 1;
    /// A UDP flow idle for longer than its service's idle timeout was steered afresh.
    pub const IDLE_EXPIRED: u32 = super::outcome::COUNT + 2;
    /// A SYN arrived on the 5-tuple of an established flow (one whose end the LB did not see,
    /// e.g. reset by the backend in DSR): a new connection, steered afresh.
    pub const STALE_SYN: u32 = super::outcome::COUNT + 3;
    /// A packet of an established TCP connection found no entry in either table: the LB
    /// restarted without its pins, the flow came through another LB host, or its entry was
    /// evicted from a full connection table. It took the Maglev choice.
    pub const FLOW_MISS: u32 = super::outcome::COUNT + 4;
    /// NAT: a new flow found no free source port in its pool.
    pub const NAT_EXHAUSTED: u32 = super::outcome::COUNT + 5;
    /// NAT: a flow's reverse translation was missing (evicted) and was written again from
    /// its forward half.
    pub const NAT_HEALED: u32 = super::outcome::COUNT + 6;
    /// NAT: a flow's source port belonged to another flow (see `outcome::DROP_NAT_CONFLICT`).
    pub const NAT_CONFLICT: u32 = super::outcome::COUNT + 7;
    /// NAT: a backend answered a SYN with a RST (a refused attempt).
    pub const REFUSED: u32 = super::outcome::COUNT + 8;
    /// NAT: a retransmitted SYN found its attempt unanswered after the service's syn_timeout.
    pub const SYN_TIMEOUT: u32 = super::outcome::COUNT + 9;
    /// NAT: a backend reached its service's error_limit of consecutive failures and takes no
    /// new flows until steer-ctl's checks bring it back.
    pub const PASSIVE_DOWN: u32 = super::outcome::COUNT + 10;
    /// NAT: a failed attempt (refused, unanswered, or on a backend found down) was steered to
    /// another backend on the client's retransmitted SYN.
    pub const RECOVERED: u32 = super::outcome::COUNT + 11;
    /// NAT: an ICMP error about a translated flow was translated and forwarded.
    pub const ICMP_TRANSLATED: u32 = super::outcome::COUNT + 12;
    /// A DSR SYN took the slot of another 5-tuple's connection attempt still in progress
    /// (the attempts array is direct-mapped): that attempt lost its pin, and its handshake's
    /// ACK takes the Maglev choice (the same backend while the pool is unchanged). The
    /// attempts array's evictions.
    pub const ATTEMPT_EVICTED: u32 = super::outcome::COUNT + 13;
    /// NAT: a note to steer-ctl (`STEER_NOTE_V1`: a backend's failures at its limit, a next
    /// hop to resolve) found the ring full and was dropped; the daemon learns the news from its
    /// once-a-second read of the maps instead, up to a second late.
    pub const NOTES_LOST: u32 = super::outcome::COUNT + 14;
    pub const NAMES: [&str; 15] = [
        "flow_insert_failed",
        "redispatch",
        "idle_expired",
        "stale_syn",
        "flow_miss",
        "nat_exhausted",
        "nat_healed",
        "nat_conflict",
        "refused",
        "syn_timeout",
        "passive_down",
        "recovered",
        "icmp_translated",
        "attempt_evicted",
        "notes_lost",
    ];
}

/// A connection attempt that has seen only SYNs counts as an active flow this long after its
/// last SYN (a handshake in progress), not for the idle timeout: its next retransmission is
/// steered to an eligible backend anyway (rule 5), so a drain need not wait for it.
pub const SYN_ACTIVE_NS: u64 = 3_000_000_000;

/// VLAN tags the datapath walks before the IP header: 802.1Q, or QinQ (802.1ad outer, 802.1Q
/// inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers (hop-by-hop, routing, destination options) the datapath walks before
/// TCP or UDP; a longer chain is passed (`outcome::PASS_TOO_MANY_HEADERS`).
pub const MAX_IPV6_EXT_HEADERS: usize = 4;

/// Size of `STEER_GSTAT_V2`: outcomes, then events.
pub const GLOBAL_SLOTS: u32 = 64;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C), made of integers and byte arrays, with explicit padding.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for ServiceInfo {}
    unsafe impl aya::Pod for ServiceSlot {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Flow {}
    unsafe impl aya::Pod for Counters {}
    unsafe impl aya::Pod for NatRev {}
    unsafe impl aya::Pod for NatPool {}
    unsafe impl aya::Pod for Observed {}
    unsafe impl aya::Pod for NeighWant {}
    unsafe impl aya::Pod for CachedFlow {}
    unsafe impl aya::Pod for NatCached {}
    unsafe impl aya::Pod for CachedHop {}
    unsafe impl aya::Pod for Globals {}
    unsafe impl aya::Pod for Handoff {}
}
