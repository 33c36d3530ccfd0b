//! The loaded XDP program and its maps: the only code that talks to the kernel's BPF objects.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc,
    },
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, ProgramArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        ProgramError, ProgramInfo, Xdp, XdpMode,
    },
    Ebpf, EbpfError, EbpfLoader,
};
use steer_common::{
    flow_flags,
    hash::{filter_bit, nat_filter_bit},
    maglev_chunks, maglev_index, map, nat_capacity, slot_state, Attempt, Backend, CachedFlow,
    Counters, Flow, FlowKey, Globals, NatPool, NatRev, NeighWant, Observed, Service, ServiceInfo,
    ServiceKey, ServiceSlot, ATTEMPTS_LOG2, FILTER_WORDS, GLOBAL_SLOTS, MAGLEV_CHUNK,
    MAGLEV_MAX_SIZE, MAX_BACKENDS, MAX_FLOWS, MAX_SERVICES, MODE_NAT, NEIGH_SLOTS, PRESENCE_LINES,
    PROGRAM, SERVICE_INDEX_SLOTS,
};

/// The compiled datapath, built by `build.rs` from `steer-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));

/// Errors from loading or driving the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP object failed (root and a kernel with BPF and BTF are needed): {0}")]
    Load(#[from] EbpfError),
    #[error("the XDP object has no map {0} (object and steer-ctl out of step?)")]
    MissingMap(&'static str),
    #[error("the XDP object has no program {0} (object and steer-ctl out of step?)")]
    MissingProgram(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {PROGRAM} (or one it hands packets to): {0}")]
    Program(#[from] ProgramError),
    #[error("attaching XDP to {iface} in {mode:?} mode: {source}")]
    Attach {
        iface: String,
        mode: XdpMode,
        #[source]
        source: ProgramError,
    },
    #[error("pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mapping {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the connection table ({map}): {0}", map = map::FLOWS)]
    FlowIter(#[source] std::io::Error),
    #[error("service id {0} is out of range (the datapath was loaded for {1} services)")]
    ServiceId(u32, u32),
    #[error("Maglev table of {0} slots is larger than the maximum {MAGLEV_MAX_SIZE}")]
    TableSize(usize),
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// What `attach_pinned` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link was made and pinned.
    New,
    /// The program in a pinned link was replaced by this one.
    Replaced,
}

/// Where the link of `iface` is pinned under `dir`.
pub fn link_pin(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("link_{iface}"))
}

/// Removes steer's pins under `dir` (its maps and XDP links; links detach, maps go when
/// unused), and `dir` itself when nothing else is left in it. Pins of other tools sharing the
/// directory are left alone.
pub fn unpin_all(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        let name = e.file_name();
        let name = name.to_string_lossy();
        let ours = map::ALL.contains(&name.as_ref())
            || name.starts_with("link_")
            || name.starts_with("STEER_");
        if ours {
            std::fs::remove_file(e.path())?;
            n += 1;
        }
    }
    let _ = std::fs::remove_dir(dir);
    Ok(n)
}

/// A pinned map whose size is not what the config asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinMismatch {
    pub map: &'static str,
    pub setting: &'static str,
    pub pinned: u32,
    pub wanted: u32,
}

/// Compares the maps pinned under `opts.pin_dir` (if any) with the sizes `opts` asks for.
/// Adopting a map of another size silently (or failing with "Invalid argument") would be
/// worse than refusing: the caller says what to do.
pub fn pin_mismatches(opts: &Options) -> Result<Vec<PinMismatch>> {
    let Some(dir) = &opts.pin_dir else {
        return Ok(Vec::new());
    };
    let wanted = [
        (map::FLOWS, "max_flows", opts.max_flows),
        (
            map::TRANSIENT,
            "max_flows",
            steer_common::transient_capacity(opts.max_flows),
        ),
        (map::SERVICES, "max_services", opts.max_services),
        (map::SERVICE_INFO, "max_services", opts.max_services),
        (map::SERVICE_STATS, "max_services", opts.max_services),
        (
            map::MAGLEV,
            "max_services",
            maglev_chunks(opts.max_services),
        ),
        (map::NAT, "max_flows", nat_capacity(opts.max_flows)),
        (map::POOLS, "max_services", opts.max_services),
    ];
    let mut out = Vec::new();
    for (name, setting, want) in wanted {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path)
            .map_err(|source| DatapathError::Map { name, source })?;
        if info.max_entries() != want {
            out.push(PinMismatch {
                map: name,
                setting,
                pinned: info.max_entries(),
                wanted: want,
            });
        }
    }
    Ok(out)
}

/// Whether any map of the datapath is pinned under `dir` (a daemon ran before).
pub fn has_pins(dir: &Path) -> bool {
    map::ALL.iter().any(|n| dir.join(n).exists())
}

/// Maps of earlier layouts (`map::RETIRED`) pinned under `dir`: a daemon of an earlier
/// version ran there. This version cannot read them (their flows are lost at the upgrade);
/// the program in the pinned XDP link still uses them until it is replaced.
pub fn retired_pins(dir: &Path) -> Vec<&'static str> {
    map::RETIRED
        .iter()
        .copied()
        .filter(|n| dir.join(n).exists())
        .collect()
}

/// Removes the pins of retired maps under `dir` (the maps themselves go once the program
/// that used them is replaced). Returns the names removed.
pub fn remove_retired(dir: &Path) -> std::io::Result<Vec<&'static str>> {
    let mut out = Vec::new();
    for n in retired_pins(dir) {
        match std::fs::remove_file(dir.join(n)) {
            Ok(()) => out.push(n),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Removes the pins of the current layout's maps under `dir` (not links, not retired maps):
/// what a start-up that failed had created in a directory that held none of them.
pub fn unpin_maps(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for name in map::ALL {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => n += 1,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct Options {
    /// Capacity of the services map and number of Maglev table pairs.
    pub max_services: u32,
    /// Capacity of the connection table (preallocated: about 100 bytes a flow).
    pub max_flows: u32,
    /// Pin (or reuse pinned) maps in this bpffs directory; `None` keeps them private to this
    /// process.
    pub pin_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_services: MAX_SERVICES,
            max_flows: MAX_FLOWS,
            pin_dir: None,
        }
    }
}

/// The Maglev tables, mapped into this process (`BPF_F_MMAPABLE`): a 65,537-slot table is
/// written with one copy, not 65,537 syscalls.
/// Maps `bytes` of the BPF array `map` (created with BPF_F_MMAPABLE) read-write, shared with
/// the datapath.
fn map_shared(map: &MapData, name: &'static str, bytes: usize) -> Result<NonNull<u8>> {
    // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE; the callers keep `bytes` within
    // its size and keep `map` alive as long as the mapping.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(DatapathError::Mmap {
            name,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(NonNull::new(p.cast()).expect("mmap returned null"))
}

struct MaglevTables {
    _map: MapData,
    base: NonNull<u32>,
    len: usize,
}

impl MaglevTables {
    fn new(map: MapData, chunks: u32) -> Result<Self> {
        let len = chunks as usize * MAGLEV_CHUNK as usize;
        let bytes = len * 4;
        let base = map_shared(&map, map::MAGLEV, bytes)?;
        Ok(MaglevTables {
            _map: map,
            base: base.cast(),
            len,
        })
    }

    fn write(&mut self, svc: u32, slot: u32, table: &[u32]) {
        let start = maglev_index(svc, slot, 0) as usize;
        assert!(start + table.len() <= self.len, "Maglev write out of range");
        // SAFETY: in range of the mapping (checked above); the datapath only reads the slot
        // that is not being written (the caller flips `table_slot` afterwards).
        unsafe {
            std::ptr::copy_nonoverlapping(
                table.as_ptr(),
                self.base.as_ptr().add(start),
                table.len(),
            )
        };
    }

    fn read(&self, svc: u32, slot: u32, size: u32) -> Vec<u32> {
        let start = maglev_index(svc, slot, 0) as usize;
        assert!(
            start + size as usize <= self.len,
            "Maglev read out of range"
        );
        // SAFETY: in range of the mapping (checked above).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), size as usize).to_vec() }
    }
}

impl Drop for MaglevTables {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len * 4) };
    }
}

// SAFETY: the mapping is owned by this value and only touched through &mut self or &self.
unsafe impl Send for MaglevTables {}

/// A BPF array created with `BPF_F_MMAPABLE`, mapped into this process and shared with the
/// datapath, which writes it while we read: every access is an atomic load or store of one
/// aligned word, never a reference to an element.
pub struct Mapped<T> {
    _map: MapData,
    base: NonNull<T>,
    len: usize,
}

// SAFETY: the mapping is owned by the value; every access goes through atomics.
unsafe impl<T> Send for Mapped<T> {}
unsafe impl<T> Sync for Mapped<T> {}

impl<T> Mapped<T> {
    fn new(map: MapData, name: &'static str, len: u32) -> Result<Self> {
        // Array elements sit at an 8-byte stride: `T` must fill it exactly.
        assert!(
            std::mem::size_of::<T>().is_multiple_of(8),
            "element of {name} is not 8-byte sized"
        );
        let bytes = len as usize * std::mem::size_of::<T>();
        let base = map_shared(&map, name, bytes)?;
        Ok(Mapped {
            _map: map,
            base: base.cast(),
            len: len as usize,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The 64-bit word at byte `offset` of element `i`.
    fn word64(&self, i: usize, offset: usize) -> &AtomicU64 {
        assert!(i < self.len && offset + 8 <= std::mem::size_of::<T>() && offset.is_multiple_of(8));
        // SAFETY: in range of the mapping (checked), 8-byte aligned (page-aligned base, 8-byte
        // stride, aligned offset); the kernel's side only touches it atomically or by plain
        // word stores.
        unsafe {
            AtomicU64::from_ptr(
                self.base
                    .as_ptr()
                    .cast::<u8>()
                    .add(i * std::mem::size_of::<T>() + offset)
                    .cast(),
            )
        }
    }

    /// The 32-bit word at byte `offset` of element `i`.
    fn word32(&self, i: usize, offset: usize) -> &AtomicU32 {
        assert!(i < self.len && offset + 4 <= std::mem::size_of::<T>() && offset.is_multiple_of(4));
        // SAFETY: as `word64`, 4-byte aligned.
        unsafe {
            AtomicU32::from_ptr(
                self.base
                    .as_ptr()
                    .cast::<u8>()
                    .add(i * std::mem::size_of::<T>() + offset)
                    .cast(),
            )
        }
    }

    /// The byte at `offset` of element `i`.
    fn byte(&self, i: usize, offset: usize) -> &AtomicU8 {
        assert!(i < self.len && offset < std::mem::size_of::<T>());
        // SAFETY: in range of the mapping (checked); bytes need no alignment; the kernel's
        // side only stores whole bytes there.
        unsafe {
            AtomicU8::from_ptr(
                self.base
                    .as_ptr()
                    .cast::<u8>()
                    .add(i * std::mem::size_of::<T>() + offset),
            )
        }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe {
            libc::munmap(
                self.base.as_ptr().cast(),
                self.len * std::mem::size_of::<T>(),
            )
        };
    }
}

impl Mapped<Observed> {
    /// Consecutive failed attempts of backend `id` as the datapath counts them.
    pub fn fails(&self, id: u32) -> u64 {
        self.word64(id as usize, std::mem::offset_of!(Observed, fails))
            .load(Ordering::Acquire)
    }

    /// The passive health of backend `id`.
    pub fn get(&self, id: u32) -> Observed {
        Observed {
            fails: self.fails(id),
            last_fail_ns: self
                .word64(id as usize, std::mem::offset_of!(Observed, last_fail_ns))
                .load(Ordering::Relaxed),
        }
    }

    /// Forgets the failures of backend `id` (`Observed::default()`).
    pub fn reset(&self, id: u32) {
        self.word64(id as usize, std::mem::offset_of!(Observed, last_fail_ns))
            .store(0, Ordering::Relaxed);
        self.word64(id as usize, std::mem::offset_of!(Observed, fails))
            .store(0, Ordering::Release);
    }
}

impl Mapped<ServiceInfo> {
    /// Byte offset of copy `c` of an element.
    fn copy_offset(c: u32) -> usize {
        std::mem::offset_of!(ServiceInfo, copies) + (c & 1) as usize * SERVICE_WORDS * 8
    }

    /// The copy of service `id`'s settings that packets read now.
    pub fn live(&self, id: u32) -> Service {
        let i = id as usize;
        let c = self
            .word32(i, std::mem::offset_of!(ServiceInfo, live))
            .load(Ordering::Acquire);
        let base = Self::copy_offset(c);
        let words: [u64; SERVICE_WORDS] =
            std::array::from_fn(|w| self.word64(i, base + w * 8).load(Ordering::Relaxed));
        // SAFETY: `Service` is plain integers, `SERVICE_WORDS` words long (checked below).
        unsafe { std::mem::transmute::<[u64; SERVICE_WORDS], Service>(words) }
    }

    /// Writes `svc` to service `id`'s idle copy, then makes it the live one.
    pub fn publish(&self, id: u32, svc: &Service) {
        let i = id as usize;
        let live = self.word32(i, std::mem::offset_of!(ServiceInfo, live));
        let next = (live.load(Ordering::Relaxed) & 1) ^ 1;
        // SAFETY: as in `live`.
        let words = unsafe { std::mem::transmute::<Service, [u64; SERVICE_WORDS]>(*svc) };
        let base = Self::copy_offset(next);
        for (w, v) in words.iter().enumerate() {
            self.word64(i, base + w * 8).store(*v, Ordering::Relaxed);
        }
        live.store(next, Ordering::Release);
    }
}

impl Mapped<ServiceSlot> {
    /// The slot as it is now (word by word).
    fn slot(&self, s: u32) -> ServiceSlot {
        let i = s as usize;
        let state = self
            .word32(i, std::mem::offset_of!(ServiceSlot, state))
            .load(Ordering::Acquire);
        let words: [u32; 5] =
            std::array::from_fn(|w| self.word32(i, w * 4).load(Ordering::Relaxed));
        ServiceSlot {
            // SAFETY: `ServiceKey` is five 4-byte words of plain integers.
            key: unsafe { std::mem::transmute::<[u32; 5], ServiceKey>(words) },
            id: self
                .word32(i, std::mem::offset_of!(ServiceSlot, id))
                .load(Ordering::Relaxed),
            state,
            _pad: 0,
        }
    }

    fn set_state(&self, s: u32, state: u32) {
        self.word32(s as usize, std::mem::offset_of!(ServiceSlot, state))
            .store(state, Ordering::Release);
    }

    /// Writes the key and id of slot `s` (not `ONE` now), then makes it `ONE`.
    fn publish_one(&self, s: u32, key: &ServiceKey, id: u32) {
        let i = s as usize;
        // SAFETY: as in `slot`.
        let words = unsafe { std::mem::transmute::<ServiceKey, [u32; 5]>(*key) };
        for (w, v) in words.iter().enumerate() {
            self.word32(i, w * 4).store(*v, Ordering::Relaxed);
        }
        self.word32(i, std::mem::offset_of!(ServiceSlot, id))
            .store(id, Ordering::Relaxed);
        self.set_state(s, slot_state::ONE);
    }
}

/// The service index's slot for a key.
pub fn slot_of(key: &ServiceKey) -> u32 {
    steer_common::hash::service_slot(&key.addr, key.port_be, key.proto)
}

/// 64-bit words in a `Service`.
const SERVICE_WORDS: usize = std::mem::size_of::<Service>() / 8;
const _: () = assert!(std::mem::size_of::<Service>() == SERVICE_WORDS * 8);
const _: () = assert!(std::mem::offset_of!(ServiceInfo, copies) % 8 == 0);

/// The services map of the layout before `STEER_SVC_V3` (key → whole `Service`), read once to
/// carry its services over.
const SERVICES_V2: &str = "STEER_SVC_V2";

impl Mapped<u64> {
    /// Sets bit `b` of a bitmap of 64-bit words (the pre-filter).
    pub fn set_bit(&self, b: u32) {
        self.word64((b / 64) as usize, 0)
            .fetch_or(1 << (b % 64), Ordering::Release);
    }

    /// Whether bit `b` is set.
    pub fn bit(&self, b: u32) -> bool {
        self.word64((b / 64) as usize, 0).load(Ordering::Acquire) & (1 << (b % 64)) != 0
    }
}

/// The established table's presence filter (`map::PRESENCE`, see `steer_common::presence`),
/// mmapped. Its rounds are run one at a time. The stamp is moved on for the next round as soon
/// as one is done (and when the map is opened), so the grace a round needs has usually passed
/// by the next scan, which then marks without waiting.
pub struct Presence {
    lines: Mapped<[u8; 64]>,
    /// When this process last moved the stamp on (the round it opened is not done yet).
    armed: std::sync::Mutex<std::time::Instant>,
}

impl Presence {
    fn new(lines: Mapped<[u8; 64]>) -> Presence {
        let p = Presence {
            lines,
            armed: std::sync::Mutex::new(std::time::Instant::now()),
        };
        *p.armed.lock().expect("fresh lock") = p.arm();
        p
    }

    /// Moves the stamp on: programs from now on mark flows with the next round's number.
    fn arm(&self) -> std::time::Instant {
        use steer_common::presence::STAMP;
        let stamp = self.byte(0, STAMP).load(Ordering::Acquire).wrapping_add(1);
        self.byte(0, STAMP).store(stamp, Ordering::Release);
        std::time::Instant::now()
    }

    fn byte(&self, line: u32, i: usize) -> &AtomicU8 {
        self.lines.byte(line as usize, i)
    }

    /// `(stamp, done, valid)` of line 0.
    pub fn rounds(&self) -> (u8, u8, bool) {
        use steer_common::presence::{DONE, STAMP, VALID};
        (
            self.byte(0, STAMP).load(Ordering::Acquire),
            self.byte(0, DONE).load(Ordering::Acquire),
            self.byte(0, VALID).load(Ordering::Acquire) != 0,
        )
    }

    /// Whether the established table may hold `key`, as a SYN's check reads it.
    pub fn may_hold(&self, key: &FlowKey) -> bool {
        let (stamp, done, valid) = self.rounds();
        let (line, i) = steer_common::presence::slot(steer_common::hash::cache_hash(key));
        !valid
            || steer_common::presence::in_window(
                self.byte(line, i).load(Ordering::Relaxed),
                stamp,
                done,
            )
    }

    /// The share of slots whose byte is in the window: the share of SYNs (of 5-tuples not in
    /// the table) that still look the established table up.
    pub fn share_in_window(&self) -> f64 {
        let (stamp, done, valid) = self.rounds();
        if !valid {
            return 1.0;
        }
        let slots = (self.lines.len() - 1) * 64;
        let mut n = 0usize;
        for line in 1..self.lines.len() as u32 {
            for i in 0..64 {
                let b = self.byte(line, i).load(Ordering::Relaxed);
                n += steer_common::presence::in_window(b, stamp, done) as usize;
            }
        }
        n as f64 / slots as f64
    }

    /// Runs one round, waiting if the stamp was moved on less than `GRACE_MS` ago: calls
    /// `scan` with a marker to call on every flow of the established table, and (if `scan`
    /// read the whole table: `Ok`) records the round as done and opens the next. A round that
    /// fails leaves the window as it was.
    pub fn round<T>(&self, scan: impl FnOnce(&dyn Fn(&FlowKey)) -> Result<T>) -> Result<T> {
        self.pass(true, |mark| {
            scan(mark.expect("a round waits for its grace"))
        })
    }

    /// `scan` as a round (with a marker) if its grace has passed, else (`wait` false) as a
    /// plain pass (no marker): a flow scan never waits for the filter.
    fn pass<T>(
        &self,
        wait: bool,
        scan: impl FnOnce(Option<&dyn Fn(&FlowKey)>) -> Result<T>,
    ) -> Result<T> {
        use steer_common::presence::{slot, DONE, GRACE_MS, STAMP, VALID};
        let mut armed = self.armed.lock().unwrap_or_else(|e| e.into_inner());
        let left = std::time::Duration::from_millis(GRACE_MS).saturating_sub(armed.elapsed());
        if !left.is_zero() {
            if !wait {
                return scan(None);
            }
            std::thread::sleep(left);
        }
        let stamp = self.byte(0, STAMP).load(Ordering::Acquire);
        let mark = |k: &FlowKey| {
            let (line, i) = slot(steer_common::hash::cache_hash(k));
            self.byte(line, i).store(stamp, Ordering::Relaxed);
        };
        let out = scan(Some(&mark))?;
        self.byte(0, DONE).store(stamp, Ordering::Release);
        self.byte(0, VALID).store(1, Ordering::Release);
        *armed = self.arm();
        Ok(out)
    }
}

impl Mapped<NeighWant> {
    /// Slot `i`, or `None` while the datapath is writing it (its `seq` moved during the read;
    /// the next poll reads it again).
    pub fn get(&self, i: usize) -> Option<NeighWant> {
        let seq = |m: &Self| {
            m.word64(i, std::mem::offset_of!(NeighWant, seq))
                .load(Ordering::Acquire)
        };
        let before = seq(self);
        let mut addr = [0u8; 16];
        for (k, chunk) in addr.chunks_mut(8).enumerate() {
            let w = self
                .word64(i, std::mem::offset_of!(NeighWant, addr) + k * 8)
                .load(Ordering::Relaxed);
            chunk.copy_from_slice(&w.to_ne_bytes());
        }
        let ifindex = self
            .word32(i, std::mem::offset_of!(NeighWant, ifindex))
            .load(Ordering::Relaxed);
        let family = self
            .word32(i, std::mem::offset_of!(NeighWant, family))
            .load(Ordering::Relaxed);
        (seq(self) == before).then_some(NeighWant {
            addr,
            ifindex,
            family,
            seq: before,
        })
    }
}

/// The XDP program and typed handles on its maps.
pub struct Datapath {
    ebpf: Ebpf,
    /// The chained programs (kept open: an unpinned program array empties when its last
    /// user handle closes).
    #[allow(dead_code)]
    progs: ProgramArray<MapData>,
    max_services: u32,
    /// Service ids by key: written when a service is added, never replaced while it lives.
    services: HashMap<MapData, ServiceKey, u32>,
    /// Each service's settings, double-buffered (mmapped).
    service_info: Mapped<ServiceInfo>,
    /// The service index (mmapped): the one service of a slot, or `SHARED`.
    service_index: Mapped<ServiceSlot>,
    /// A carried-over `STEER_SVC_V2`, which the program attached before this one still reads:
    /// written with every service change until `attached_everywhere`.
    services_v2: Option<HashMap<MapData, ServiceKey, Service>>,
    backends: Array<MapData, Backend>,
    maglev: MaglevTables,
    service_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    global_stats: PerCpuArray<MapData, u64>,
    flows: HashMap<MapData, FlowKey, Flow>,
    /// Half-open and ended flows (`STEER_TRANS_V2`).
    transient: HashMap<MapData, FlowKey, Flow>,
    /// NAT reverse translations (written by the datapath).
    nat: HashMap<MapData, FlowKey, NatRev>,
    /// NAT source pools by service id.
    pools: Array<MapData, NatPool>,
    /// Passive health per backend id (mmapped; polled by the daemon).
    observed: Arc<Mapped<Observed>>,
    /// Next hops the datapath wants resolved (mmapped; polled by the daemon).
    neigh: Arc<Mapped<NeighWant>>,
    /// The datapath's notes (`map::NOTES`), until the daemon's watcher takes them.
    notes: Option<RingBuf<MapData>>,
    /// Host-wide settings, one element.
    globals: Array<MapData, Globals>,
    /// The pre-filter (`map::FILTER`), mmapped: bits are set with atomic ORs.
    filter: Mapped<u64>,
    /// The flow cache (a region per CPU), read by tests.
    flow_cache: Array<MapData, CachedFlow>,
    /// The NAT flow cache (a region per CPU), read by tests and the bench.
    nat_cache: Array<MapData, steer_common::NatCached>,
    /// The next-hop cache (a region per CPU), emptied by tests.
    hops: Array<MapData, steer_common::CachedHop>,
    /// The CPU ids the caches have a region for (`0..cpus`).
    cpus: u32,
    /// DSR connection attempts (`map::ATTEMPTS`), mmapped: read by flow scans.
    attempts: Arc<Mapped<Attempt>>,
    /// The established table's presence filter, mmapped: rounds run by flow scans.
    presence: Arc<Presence>,
    /// What `globals` holds: the flags, and the epoch of the flow cache.
    flags: u32,
    epoch: u32,
    max_flows: u32,
}

/// Loads (verifies) XDP program `name` of the object.
fn load_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or(DatapathError::MissingProgram(name))?
        .try_into()?;
    prog.load()?;
    if let Ok(info) = prog.info() {
        tracing::debug!(
            program = name,
            verified_insns = ?info.verified_instruction_count(),
            "datapath program verified"
        );
        if std::env::var_os("STEER_VERIFIER_STATS").is_some() {
            eprintln!(
                "{name}: verified_insns {:?}",
                info.verified_instruction_count()
            );
        }
    }
    Ok(prog)
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

/// The CPUs (by index) whose per-CPU value `holds` says is the one looked for, with it.
fn cpus_holding<'a, T: Copy + 'a>(
    per_cpu: impl Iterator<Item = &'a T>,
    holds: impl Fn(&T) -> bool,
) -> Vec<(usize, T)> {
    per_cpu
        .enumerate()
        .filter(|(_, c)| holds(c))
        .map(|(cpu, c)| (cpu, *c))
        .collect()
}

/// Whether a map operation failed because the key is not there (a delete reports ENOENT).
fn not_found(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.kind() == std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// Regions the caches need: one per CPU id the datapath may run on, that is the highest
/// possible CPU's id + 1 (`bpf_get_smp_processor_id` is below it), which is more than the
/// count of possible CPUs when their list has holes ("0,2-3"). A CPU without a region only
/// goes without its caches (its lookups fail), but none should.
fn cache_regions() -> Result<u32> {
    const POSSIBLE: &str = "/sys/devices/system/cpu/possible";
    let err = |io_error| DatapathError::Map {
        name: map::FLOW_CACHE,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "read /sys/devices/system/cpu/possible",
            io_error,
        }),
    };
    let list = std::fs::read_to_string(POSSIBLE).map_err(err)?;
    cpu_ids_end(&list).ok_or_else(|| {
        err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{POSSIBLE}: not a CPU list: {list:?}"),
        ))
    })
}

/// The highest CPU id of a kernel CPU list ("0-3,5,7-8") plus one.
fn cpu_ids_end(list: &str) -> Option<u32> {
    let mut end = None;
    for part in list.trim().split(',') {
        let last = part.rsplit('-').next()?.trim().parse::<u32>().ok()?;
        end = end.max(Some(last + 1));
    }
    end
}

/// The host's possible CPUs (per-CPU maps hold a value for each).
fn possible_cpus(name: &'static str) -> Result<u32> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
        name,
        source: MapError::SyscallError(aya::sys::SyscallError {
            call: "nr_cpus",
            io_error: e,
        }),
    })?;
    Ok(n as u32)
}

fn typed<T>(name: &'static str, r: std::result::Result<T, MapError>) -> Result<T> {
    r.map_err(|source| DatapathError::Map { name, source })
}

impl Datapath {
    /// Loads the object into the kernel (not attached to any interface yet).
    pub fn load(opts: &Options) -> Result<Self> {
        let maglev_entries = maglev_chunks(opts.max_services);
        let cpus = cache_regions()?;
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map::FLOW_CACHE, steer_common::flow_cache_entries(cpus))
            .map_max_entries(map::NAT_CACHE, steer_common::nat_cache_entries(cpus))
            .map_max_entries(map::HOPS, steer_common::hop_entries(cpus))
            .map_max_entries(map::SERVICES, opts.max_services)
            .map_max_entries(map::SERVICE_INFO, opts.max_services)
            .map_max_entries(map::SERVICE_STATS, opts.max_services)
            .map_max_entries(map::FLOWS, opts.max_flows)
            .map_max_entries(
                map::TRANSIENT,
                steer_common::transient_capacity(opts.max_flows),
            )
            .map_max_entries(map::MAGLEV, maglev_entries)
            .map_max_entries(map::NAT, nat_capacity(opts.max_flows))
            .map_max_entries(map::POOLS, opts.max_services);
        let pins: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => map::ALL.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        // Pins of a daemon from before the services map held ids (`STEER_SVC_V2`): its
        // services are carried over (below), so their flows keep their backends. (Whether
        // this layout's map is pinned says nothing: the loader pins it, empty, before a start
        // that may fail; it is empty until a carry-over.)
        let services_v2 = opts
            .pin_dir
            .as_ref()
            .map(|d| d.join(SERVICES_V2))
            .filter(|v2| v2.exists());
        let mut ebpf = loader.load(OBJECT)?;
        load_program(&mut ebpf, PROGRAM)?;
        // The programs the entry one hands packets to (NAT services, new NAT flows, replies),
        // each verified on its own, then chained in by index.
        let mut progs = typed(
            map::PROGS,
            ProgramArray::try_from(take(&mut ebpf, map::PROGS)?),
        )?;
        for (i, name) in steer_common::prog::NAMES.iter().enumerate() {
            let fd = load_program(&mut ebpf, name)?.fd()?;
            typed(map::PROGS, progs.set(i as u32, fd, 0))?;
        }

        let Map::Array(maglev) = take(&mut ebpf, map::MAGLEV)? else {
            return Err(DatapathError::MissingMap(map::MAGLEV));
        };
        let maglev = MaglevTables::new(maglev, maglev_entries)?;
        let services = typed(
            map::SERVICES,
            HashMap::try_from(take(&mut ebpf, map::SERVICES)?),
        )?;
        let Map::Array(service_info) = take(&mut ebpf, map::SERVICE_INFO)? else {
            return Err(DatapathError::MissingMap(map::SERVICE_INFO));
        };
        let service_info = Mapped::new(service_info, map::SERVICE_INFO, opts.max_services)?;
        let Map::Array(service_index) = take(&mut ebpf, map::SERVICE_INDEX)? else {
            return Err(DatapathError::MissingMap(map::SERVICE_INDEX));
        };
        let service_index = Mapped::new(service_index, map::SERVICE_INDEX, SERVICE_INDEX_SLOTS)?;
        let backends = typed(
            map::BACKENDS,
            Array::try_from(take(&mut ebpf, map::BACKENDS)?),
        )?;
        let service_stats = typed(
            map::SERVICE_STATS,
            PerCpuArray::try_from(take(&mut ebpf, map::SERVICE_STATS)?),
        )?;
        let backend_stats = typed(
            map::BACKEND_STATS,
            PerCpuArray::try_from(take(&mut ebpf, map::BACKEND_STATS)?),
        )?;
        let global_stats = typed(
            map::GLOBAL_STATS,
            PerCpuArray::try_from(take(&mut ebpf, map::GLOBAL_STATS)?),
        )?;
        let flows = typed(map::FLOWS, HashMap::try_from(take(&mut ebpf, map::FLOWS)?))?;
        let transient = typed(
            map::TRANSIENT,
            HashMap::try_from(take(&mut ebpf, map::TRANSIENT)?),
        )?;
        let nat = typed(map::NAT, HashMap::try_from(take(&mut ebpf, map::NAT)?))?;
        let pools = typed(map::POOLS, Array::try_from(take(&mut ebpf, map::POOLS)?))?;
        let globals = typed(
            map::GLOBALS,
            Array::try_from(take(&mut ebpf, map::GLOBALS)?),
        )?;
        let Map::Array(observed) = take(&mut ebpf, map::OBSERVED)? else {
            return Err(DatapathError::MissingMap(map::OBSERVED));
        };
        let observed = Arc::new(Mapped::new(observed, map::OBSERVED, MAX_BACKENDS)?);
        let Map::Array(neigh) = take(&mut ebpf, map::NEIGH)? else {
            return Err(DatapathError::MissingMap(map::NEIGH));
        };
        let neigh = Arc::new(Mapped::new(neigh, map::NEIGH, NEIGH_SLOTS)?);
        let notes = typed(map::NOTES, RingBuf::try_from(take(&mut ebpf, map::NOTES)?))?;
        let Map::Array(filter) = take(&mut ebpf, map::FILTER)? else {
            return Err(DatapathError::MissingMap(map::FILTER));
        };
        let filter = Mapped::new(filter, map::FILTER, FILTER_WORDS)?;
        let flow_cache = typed(
            map::FLOW_CACHE,
            Array::try_from(take(&mut ebpf, map::FLOW_CACHE)?),
        )?;
        let nat_cache = typed(
            map::NAT_CACHE,
            Array::try_from(take(&mut ebpf, map::NAT_CACHE)?),
        )?;
        let hops = typed(map::HOPS, Array::try_from(take(&mut ebpf, map::HOPS)?))?;
        let Map::Array(attempts) = take(&mut ebpf, map::ATTEMPTS)? else {
            return Err(DatapathError::MissingMap(map::ATTEMPTS));
        };
        let attempts = Arc::new(Mapped::new(attempts, map::ATTEMPTS, 1 << ATTEMPTS_LOG2)?);
        let Map::Array(presence) = take(&mut ebpf, map::PRESENCE)? else {
            return Err(DatapathError::MissingMap(map::PRESENCE));
        };
        let presence = Arc::new(Presence::new(Mapped::new(
            presence,
            map::PRESENCE,
            PRESENCE_LINES,
        )?));
        // Adopted settings (a pinned map) keep their flags and epoch.
        let Globals { flags, epoch } = typed(map::GLOBALS, globals.get(&0, 0))?;
        let mut dp = Datapath {
            ebpf,
            progs,
            max_services: opts.max_services,
            services,
            service_info,
            service_index,
            services_v2: None,
            backends,
            maglev,
            service_stats,
            backend_stats,
            global_stats,
            flows,
            transient,
            nat,
            pools,
            observed,
            neigh,
            notes: Some(notes),
            globals,
            filter,
            flow_cache,
            nat_cache,
            hops,
            cpus,
            attempts,
            presence,
            flags,
            epoch,
            max_flows: opts.max_flows,
        };
        if let Some(path) = services_v2 {
            dp.carry_over_services(&path)?;
        }
        dp.seed_filter()?;
        dp.seed_index()?;
        Ok(dp)
    }

    /// Writes the services of a pinned `STEER_SVC_V2` (key → whole `Service`) into this
    /// layout, if it has none yet: the ids, tables and pools they name are in maps this
    /// version reuses. Before the program is attached, so no packet of it reads them yet. The
    /// program attached until then still reads the V2 map: every service change is written
    /// there too (`services_v2`) until `attached_everywhere`.
    fn carry_over_services(&mut self, path: &Path) -> Result<()> {
        let old: HashMap<MapData, ServiceKey, Service> = typed(
            SERVICES_V2,
            MapData::from_pin(path).and_then(|m| HashMap::try_from(Map::HashMap(m))),
        )?;
        if self.service_keys()?.is_empty() {
            let entries = old
                .iter()
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|source| DatapathError::Map {
                    name: SERVICES_V2,
                    source,
                })?;
            for (key, svc) in entries {
                if svc.id < self.max_services {
                    self.put_service_entry(&key, &svc)?;
                }
            }
        }
        self.services_v2 = Some(old);
        Ok(())
    }

    /// This datapath's program is attached on every interface: no program reads a carried-over
    /// `STEER_SVC_V2` any more, so service changes are no longer written there.
    pub fn attached_everywhere(&mut self) {
        self.services_v2 = None;
    }

    /// Sets the pre-filter's bits for what the maps already hold (pinned maps adopted from an
    /// earlier daemon, perhaps one from before the filter existed): a program attached with a
    /// bit missing would pass a service's packets to the kernel.
    fn seed_filter(&mut self) -> Result<()> {
        for key in self.service_keys()? {
            let nat = self.service(&key)?.is_some_and(|s| s.mode == MODE_NAT);
            self.filter_service(&key, nat);
        }
        for id in 0..MAX_BACKENDS {
            let be = self.backend(id)?;
            if be.admin != steer_common::admin::NONE {
                self.filter_nat_source(&be.snat);
            }
        }
        for id in 0..self.max_services {
            let pool = self.pool(id)?;
            for a in pool.addrs.iter().take(pool.slots as usize) {
                self.filter_nat_source(a);
            }
        }
        Ok(())
    }

    /// A service's bit; a NAT service's second bit too (its packets are looked for in the NAT
    /// flow cache).
    fn filter_service(&self, key: &ServiceKey, nat: bool) {
        self.filter
            .set_bit(filter_bit(&key.addr, key.port_be, key.proto));
        if nat {
            self.filter
                .set_bit(nat_filter_bit(&key.addr, key.port_be, key.proto));
        }
    }

    /// An address NAT flows may leave from: backends' replies come to it.
    fn filter_nat_source(&self, addr: &[u8; 16]) {
        if *addr != [0; 16] {
            self.filter.set_bit(filter_bit(addr, 0, 0));
        }
    }

    /// The CPUs whose flow cache holds `key`'s flow, with the entry (for tests: whether a
    /// packet may have been forwarded from the cache).
    pub fn cached(&self, key: &FlowKey) -> Result<Vec<(usize, CachedFlow)>> {
        let slot = steer_common::hash::cache_hash(key) >> (32 - steer_common::FLOW_CACHE_LOG2);
        let per_cpu = self.regions(map::FLOW_CACHE, &self.flow_cache, |cpu| {
            steer_common::flow_cache_index(cpu, slot)
        })?;
        Ok(cpus_holding(per_cpu.iter(), |c| c.key == *key))
    }

    /// The CPUs whose NAT flow cache holds an entry for packets of 5-tuple `key` (a client's
    /// or a backend's reply), with the entry (tests and the bench: whether packets may have
    /// been sent from the cache, and how often the full path filled it).
    pub fn nat_cached(&self, key: &FlowKey) -> Result<Vec<(usize, steer_common::NatCached)>> {
        let slot = steer_common::hash::cache_hash(key) >> (32 - steer_common::NAT_CACHE_LOG2);
        let per_cpu = self.regions(map::NAT_CACHE, &self.nat_cache, |cpu| {
            steer_common::nat_cache_index(cpu, slot)
        })?;
        Ok(cpus_holding(per_cpu.iter(), |c| c.key == *key))
    }

    /// One entry of every CPU's region of a cache (`index` places CPU `cpu`'s), by CPU.
    fn regions<T: aya::Pod>(
        &self,
        name: &'static str,
        cache: &Array<MapData, T>,
        index: impl Fn(u32) -> u32,
    ) -> Result<Vec<T>> {
        (0..self.cpus)
            .map(|cpu| typed(name, cache.get(&index(cpu), 0)))
            .collect()
    }

    /// Whether the pre-filter lets a packet to `key`'s service through (for tests).
    pub fn filter_admits(&self, key: &ServiceKey) -> bool {
        self.filter
            .bit(filter_bit(&key.addr, key.port_be, key.proto))
    }

    /// Passive health per backend id, shared with the daemon's poller.
    pub fn observed(&self) -> Arc<Mapped<Observed>> {
        self.observed.clone()
    }

    /// The datapath's notes (`steer_common::Note`), for the one reader that waits on them;
    /// `None` once taken.
    pub fn take_notes(&mut self) -> Option<RingBuf<MapData>> {
        self.notes.take()
    }

    /// Next hops the datapath wants resolved, shared with the daemon's poller.
    pub fn neigh_wants(&self) -> Arc<Mapped<NeighWant>> {
        self.neigh.clone()
    }

    /// Writes the NAT source pool of service `id`.
    pub fn put_pool(&mut self, id: u32, pool: &NatPool) -> Result<()> {
        self.check_service_id(id)?;
        // Retired slots' addresses too: their flows' replies still come to them.
        for a in pool.addrs.iter().take(pool.slots as usize) {
            self.filter_nat_source(a);
        }
        typed(map::POOLS, self.pools.set(id, pool, 0))?;
        // Cached NAT flows hold their pool address.
        self.bump_epoch()
    }

    /// The NAT source pool of service `id`.
    pub fn pool(&self, id: u32) -> Result<NatPool> {
        self.check_service_id(id)?;
        typed(map::POOLS, self.pools.get(&id, 0))
    }

    /// Writes the host-wide settings.
    /// Writes the host-wide settings (`g`'s flags; the epoch is the datapath's own).
    pub fn put_globals(&mut self, g: &Globals) -> Result<()> {
        let g = Globals {
            flags: g.flags,
            epoch: self.epoch,
        };
        typed(map::GLOBALS, self.globals.set(0, g, 0))?;
        self.flags = g.flags;
        Ok(())
    }

    /// Voids every CPU's flow caches, DSR and NAT: after a change of what they hold copies
    /// of that is not a flow's own (steer-ctl's entries; a next hop, whose change the kernel
    /// tells the daemon of).
    pub fn void_caches(&mut self) -> Result<()> {
        self.bump_epoch()
    }

    /// Empties every CPU's next-hop cache and nothing else (tests: a next hop changed behind
    /// the caches' back, as if the answers had aged out, while the NAT flow cache's copies
    /// still hold the old one). Not atomic against a running datapath: for tests only.
    pub fn forget_next_hops(&mut self) -> Result<()> {
        for i in 0..steer_common::hop_entries(self.cpus) {
            typed(
                map::HOPS,
                self.hops.set(i, steer_common::CachedHop::default(), 0),
            )?;
        }
        Ok(())
    }

    /// Voids every CPU's flow cache (a service entry changed: the cached flows' service may be
    /// gone or in another mode).
    fn bump_epoch(&mut self) -> Result<()> {
        self.epoch = self.epoch.wrapping_add(1);
        let g = Globals {
            flags: self.flags,
            epoch: self.epoch,
        };
        typed(map::GLOBALS, self.globals.set(0, g, 0))
    }

    /// The host-wide settings.
    pub fn globals(&self) -> Result<Globals> {
        typed(map::GLOBALS, self.globals.get(&0, 0))
    }

    /// The reverse translation of a backend's reply 5-tuple, if the NAT table has one.
    pub fn nat_reverse(&self, key: &FlowKey) -> Result<Option<NatRev>> {
        match self.nat.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                name: map::NAT,
                source,
            }),
        }
    }

    /// A handle on the NAT table that does not borrow this `Datapath` (for scans off the
    /// daemon's lock).
    pub fn nat_table(&self) -> Result<NatTable> {
        aya::maps::IterableMap::map(&self.nat)
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map(NatTable)
            .map_err(DatapathError::FlowIter)
    }

    /// Writes a reverse translation (tests: a source port taken by another flow). As the
    /// datapath's own writes do, it voids cached copies of the flows concerned (here: all).
    pub fn put_nat_reverse(&mut self, key: &FlowKey, rev: &NatRev) -> Result<()> {
        typed(map::NAT, self.nat.insert(key, rev, 0))?;
        self.bump_epoch()
    }

    /// Removes a reverse translation, if there is one (tests: an evicted reverse half, as a
    /// flow whose packets were sent from a cache sees it at its next refresh: every cache is
    /// voided).
    pub fn remove_nat_reverse(&mut self, key: &FlowKey) -> Result<()> {
        match self.nat.remove(key) {
            Ok(()) => {}
            Err(e) if not_found(&e) => {}
            Err(source) => {
                return Err(DatapathError::Map {
                    name: map::NAT,
                    source,
                })
            }
        }
        self.bump_epoch()
    }

    /// Removes a flow's entry from both tables, if it has one (tests: an evicted forward
    /// half, as a flow whose packets were sent from a cache sees it at its next refresh:
    /// every cache is voided).
    pub fn remove_flow(&mut self, key: &FlowKey) -> Result<()> {
        for (name, m) in [
            (map::FLOWS, &mut self.flows),
            (map::TRANSIENT, &mut self.transient),
        ] {
            match m.remove(key) {
                Ok(()) => {}
                Err(e) if not_found(&e) => {}
                Err(source) => return Err(DatapathError::Map { name, source }),
            }
        }
        self.bump_epoch()
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
    }

    /// What the kernel says of each of the datapath's programs (verified instruction count,
    /// translated and JIT sizes), the entry program first, then the chained ones.
    pub fn program_infos(&self) -> Result<Vec<(&'static str, ProgramInfo)>> {
        std::iter::once(PROGRAM)
            .chain(steer_common::prog::NAMES)
            .map(|name| {
                let prog = self
                    .ebpf
                    .program(name)
                    .ok_or(DatapathError::MissingProgram(name))?;
                Ok((name, prog.info()?))
            })
            .collect()
    }

    /// Attaches the program to `iface` (in the calling thread's network namespace). It stays
    /// attached until this `Datapath` is dropped.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<()> {
        self.program()
            .attach(iface, mode)
            .map_err(|source| DatapathError::Attach {
                iface: iface.to_string(),
                mode,
                source,
            })?;
        Ok(())
    }

    /// Attaches the program to `iface` through a link pinned at `pin`: when the pin exists (a
    /// daemon ran before), this program replaces the one in that link atomically and no packet
    /// goes unprocessed; otherwise a new link is made and pinned. The link outlives this
    /// process: with no daemon, the datapath goes on with the last state (fail static).
    pub fn attach_pinned(&mut self, iface: &str, mode: XdpMode, pin: &Path) -> Result<Attached> {
        let pin_err = |source: std::io::Error| DatapathError::Pin {
            path: pin.to_path_buf(),
            source,
        };
        if pin.exists() {
            let link = PinnedLink::from_pin(pin).map_err(|e| pin_err(std::io::Error::other(e)))?;
            let link = XdpLink::try_from(FdLink::from(link))
                .map_err(|e| pin_err(std::io::Error::other(e)))?;
            match self.program().attach_to_link(link) {
                Ok(id) => {
                    // The pin holds the link; this process's handle on it can go.
                    drop(self.program().take_link(id)?);
                    return Ok(Attached::Replaced);
                }
                // A link that can no longer be updated (its interface was removed and made
                // again): drop the stale pin and attach afresh.
                Err(e) => {
                    tracing::warn!(pin = %pin.display(), error = %e, "stale XDP link pin: attaching afresh");
                    std::fs::remove_file(pin).map_err(pin_err)?;
                }
            }
        }
        let id = self
            .program()
            .attach(iface, mode)
            .map_err(|source| DatapathError::Attach {
                iface: iface.to_string(),
                mode,
                source,
            })?;
        let link = self.program().take_link(id)?;
        let fd = FdLink::try_from(link).map_err(|e| pin_err(std::io::Error::other(e)))?;
        if let Some(dir) = pin.parent() {
            std::fs::create_dir_all(dir).map_err(pin_err)?;
        }
        fd.pin(pin).map_err(|e| pin_err(std::io::Error::other(e)))?;
        Ok(Attached::New)
    }

    pub fn max_services(&self) -> u32 {
        self.max_services
    }

    fn check_service_id(&self, id: u32) -> Result<()> {
        if id >= self.max_services {
            return Err(DatapathError::ServiceId(id, self.max_services));
        }
        Ok(())
    }

    /// Publishes a service's settings: written to the idle copy of its `ServiceInfo`, which
    /// then becomes the live one. The copy left is written again by the next call for this
    /// id, which must wait for a grace period (no packet still reading it: `Balancer`'s
    /// protocol). The key's entry is written only when it is missing or names another id.
    pub fn put_service(&mut self, key: &ServiceKey, svc: &Service) -> Result<()> {
        if self.put_service_entry(key, svc)? {
            self.refresh_index(slot_of(key))?;
        }
        if let Some(v2) = &mut self.services_v2 {
            typed(SERVICES_V2, v2.insert(key, svc, 0))?;
        }
        self.bump_epoch()
    }

    /// `put_service` short of the index and the epoch: true when the key's entry was
    /// written (missing, or naming another id: a restarted daemon giving the key to a service
    /// of another mode, the one case where an entry is replaced).
    fn put_service_entry(&mut self, key: &ServiceKey, svc: &Service) -> Result<bool> {
        self.check_service_id(svc.id)?;
        // The filter's bit first: the service's packets must never meet a clear one.
        self.filter_service(key, svc.mode == MODE_NAT);
        self.service_info.publish(svc.id, svc);
        match self.services.get(key, 0) {
            Ok(id) if id == svc.id => Ok(false),
            Ok(_) | Err(MapError::KeyNotFound) => {
                typed(map::SERVICES, self.services.insert(key, svc.id, 0))?;
                Ok(true)
            }
            Err(source) => Err(DatapathError::Map {
                name: map::SERVICES,
                source,
            }),
        }
    }

    /// Every service key in the map with its id.
    pub fn service_ids(&self) -> Result<Vec<(ServiceKey, u32)>> {
        self.services
            .iter()
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|source| DatapathError::Map {
                name: map::SERVICES,
                source,
            })
    }

    /// The live settings of a service, if the map holds its key.
    pub fn service(&self, key: &ServiceKey) -> Result<Option<Service>> {
        match self.services.get(key, 0) {
            Ok(id) if id < self.max_services => Ok(Some(self.service_info.live(id))),
            Ok(id) => Err(DatapathError::ServiceId(id, self.max_services)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DatapathError::Map {
                name: map::SERVICES,
                source,
            }),
        }
    }

    /// Every service key in the map.
    pub fn service_keys(&self) -> Result<Vec<ServiceKey>> {
        Ok(self.service_ids()?.into_iter().map(|(k, _)| k).collect())
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        typed(map::SERVICES, self.services.remove(key))?;
        self.refresh_index(slot_of(key))?;
        if let Some(v2) = &mut self.services_v2 {
            match v2.remove(key) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(source) => {
                    return Err(DatapathError::Map {
                        name: SERVICES_V2,
                        source,
                    })
                }
            }
        }
        self.bump_epoch()
    }

    /// Sets index slot `slot` from the services map: `EMPTY`, `ONE` with the service whose key
    /// alone has it, or `SHARED`. A slot's key and id are written only while it is not `ONE`;
    /// one that is `ONE` with another service becomes `SHARED` (correct, only slower) rather
    /// than being rewritten under packets. Callers wait a grace period between two changes of
    /// the services (`Balancer` does), so no packet still reads what a slot held two changes
    /// ago.
    fn refresh_index(&self, slot: u32) -> Result<()> {
        let here: Vec<(ServiceKey, u32)> = self
            .service_ids()?
            .into_iter()
            .filter(|(k, _)| slot_of(k) == slot)
            .collect();
        self.set_index_slot(slot, &here);
        Ok(())
    }

    /// Sets index slot `slot` for the services whose keys have it (`refresh_index`).
    fn set_index_slot(&self, slot: u32, here: &[(ServiceKey, u32)]) {
        let now = self.service_index.slot(slot);
        match here {
            [] => self.service_index.set_state(slot, slot_state::EMPTY),
            [(k, id)] if now.state == slot_state::ONE => {
                if now.key != *k || now.id != *id {
                    self.service_index.set_state(slot, slot_state::SHARED);
                }
            }
            [(k, id)] => self.service_index.publish_one(slot, k, *id),
            _ => self.service_index.set_state(slot, slot_state::SHARED),
        }
    }

    /// Makes the index agree with the services map (pinned maps adopted, or carried over).
    fn seed_index(&mut self) -> Result<()> {
        let mut by_slot: std::collections::BTreeMap<u32, Vec<(ServiceKey, u32)>> = (0
            ..SERVICE_INDEX_SLOTS)
            .filter(|s| self.service_index.slot(*s).state != slot_state::EMPTY)
            .map(|s| (s, Vec::new()))
            .collect();
        for (k, id) in self.service_ids()? {
            by_slot.entry(slot_of(&k)).or_default().push((k, id));
        }
        for (s, here) in by_slot {
            self.set_index_slot(s, &here);
        }
        Ok(())
    }

    /// What the service index holds in slot `slot` (for tests).
    pub fn index_slot(&self, slot: u32) -> ServiceSlot {
        self.service_index.slot(slot)
    }

    pub fn put_backend(&mut self, id: u32, be: &Backend) -> Result<()> {
        self.filter_nat_source(&be.snat);
        let old = self.backend(id)?;
        typed(map::BACKENDS, self.backends.set(id, be, 0))?;
        // Cached NAT flows hold the backend's address and port and the LB's address facing
        // it (its admin state and generation they read live).
        if (old.addr, old.port_be, old.snat) != (be.addr, be.port_be, be.snat) {
            self.bump_epoch()?;
        }
        Ok(())
    }

    pub fn backend(&self, id: u32) -> Result<Backend> {
        typed(map::BACKENDS, self.backends.get(&id, 0))
    }

    /// Writes Maglev table `slot` (0 or 1) of service `svc`. Only write the slot the service does
    /// not use, then make it live with `put_service`.
    pub fn write_table(&mut self, svc: u32, slot: u32, table: &[u32]) -> Result<()> {
        self.check_service_id(svc)?;
        if table.len() > MAGLEV_MAX_SIZE as usize {
            return Err(DatapathError::TableSize(table.len()));
        }
        self.maglev.write(svc, slot & 1, table);
        Ok(())
    }

    /// Reads back `size` slots of a Maglev table.
    pub fn read_table(&self, svc: u32, slot: u32, size: u32) -> Result<Vec<u32>> {
        self.check_service_id(svc)?;
        Ok(self.maglev.read(svc, slot & 1, size.min(MAGLEV_MAX_SIZE)))
    }

    fn sum(name: &'static str, m: &PerCpuArray<MapData, Counters>, id: u32) -> Result<Counters> {
        let per_cpu = typed(name, m.get(&id, 0))?;
        let mut total = Counters::default();
        for c in per_cpu.iter() {
            total.add(c);
        }
        Ok(total)
    }

    fn zero<T: aya::Pod + Default>(
        name: &'static str,
        m: &mut PerCpuArray<MapData, T>,
        id: u32,
    ) -> Result<()> {
        let n = possible_cpus(name)? as usize;
        let zeros = aya::maps::PerCpuValues::try_from(vec![T::default(); n]).map_err(|source| {
            DatapathError::Map {
                name,
                source: MapError::from(source),
            }
        })?;
        typed(name, m.set(id, zeros, 0))
    }

    /// Zeroes the counters of service `id` (an id given to a new service starts from zero).
    pub fn reset_service_counters(&mut self, id: u32) -> Result<()> {
        Self::zero(map::SERVICE_STATS, &mut self.service_stats, id)
    }

    /// Zeroes the counters of backend `id` (an id given to a new backend starts from zero).
    pub fn reset_backend_counters(&mut self, id: u32) -> Result<()> {
        Self::zero(map::BACKEND_STATS, &mut self.backend_stats, id)
    }

    /// Counters of service `id`, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> Result<Counters> {
        Self::sum(map::SERVICE_STATS, &self.service_stats, id)
    }

    /// Counters of backend `id`, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        Self::sum(map::BACKEND_STATS, &self.backend_stats, id)
    }

    /// Packets per `outcome` (indexes `0..outcome::COUNT`), then counts per `event`, summed
    /// over CPUs.
    pub fn outcomes(&self) -> Result<[u64; GLOBAL_SLOTS as usize]> {
        let mut out = [0u64; GLOBAL_SLOTS as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let per_cpu = typed(map::GLOBAL_STATS, self.global_stats.get(&(i as u32), 0))?;
            *o = per_cpu.iter().sum();
        }
        Ok(out)
    }
}

/// `bpf_attr` for `BPF_MAP_LOOKUP_BATCH` (linux/bpf.h, `batch`).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries fetched per syscall: more than a hash bucket ever holds, few enough to stay small.
const BATCH: usize = 4096;

/// Whether a flow is still open as far as the LB can tell: not ended (no FIN or RST seen),
/// and seen within `idle_ns` — or, for an attempt that has seen only SYNs, within
/// `SYN_ACTIVE_NS` (its next retransmission is steered to an eligible backend anyway).
pub fn is_active(f: &Flow, now: u64, idle_ns: u64) -> bool {
    let limit = if f.flags & flow_flags::SYN_ONLY != 0 {
        steer_common::SYN_ACTIVE_NS.min(idle_ns)
    } else {
        idle_ns
    };
    f.flags & flow_flags::ENDED == 0 && now.saturating_sub(f.last_seen_ns) <= limit
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the datapath's `bpf_ktime_get_coarse_ns` clock.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A handle on the connection tables of its own (duplicated descriptors), so that a
/// background task can read them without holding whatever guards the `Datapath`.
/// The NAT table, read apart from the `Datapath` (see `Datapath::nat_table`).
pub struct NatTable(std::os::fd::OwnedFd);

impl NatTable {
    /// The reply 5-tuples of the TCP flows of backend `id` (generation `gen`) that have not
    /// ended: backend address and port → LB address and source port.
    pub fn open_tcp_replies_of(&self, id: u32, gen: u16) -> Result<Vec<FlowKey>> {
        let fd = self.0.try_clone().map_err(DatapathError::FlowIter)?;
        let md = MapData::from_fd(fd).map_err(|source| DatapathError::Map {
            name: map::NAT,
            source,
        })?;
        let m: HashMap<MapData, FlowKey, NatRev> =
            typed(map::NAT, HashMap::try_from(Map::LruHashMap(md)))?;
        let mut out = Vec::new();
        for item in m.iter() {
            // An entry evicted or deleted between two steps of the walk ends it early at
            // worst; what was read is still good.
            let Ok((k, v)) = item else { break };
            if v.backend == id
                && v.gen == gen
                && v.ended_ns == 0
                && k.proto == steer_common::PROTO_TCP
            {
                out.push(k);
            }
        }
        Ok(out)
    }
}

pub struct FlowReader {
    established: std::os::fd::OwnedFd,
    transient: std::os::fd::OwnedFd,
    attempts: Arc<Mapped<Attempt>>,
    presence: Arc<Presence>,
}

/// How many entries each table holds, as one pass over them read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    pub established: u64,
    pub transient: u64,
    /// DSR connection attempts standing (their slots of `map::ATTEMPTS`).
    pub attempts: u64,
}

impl Mapped<Attempt> {
    /// The slot's attempt of the moment (its words read one by one: a slot being written
    /// may read torn, which its seal then shows).
    fn attempt(&self, i: usize) -> Attempt {
        let mut w = [0u64; 8];
        for (k, x) in w.iter_mut().enumerate() {
            *x = self
                .word64(i, k * 8)
                .load(std::sync::atomic::Ordering::Relaxed);
        }
        // SAFETY: `Attempt` is 64 bytes of plain integers, any bit pattern valid.
        unsafe { std::mem::transmute::<[u64; 8], Attempt>(w) }
    }

    /// Calls `f` on every whole attempt standing at `now`, as the flow the datapath would
    /// find (`SYN_ONLY`). Returns how many.
    fn for_each(&self, now: u64, mut f: impl FnMut(&FlowKey, &Flow)) -> u64 {
        let mut n = 0;
        for i in 0..self.len() {
            let a = self.attempt(i);
            if a.check == 0 || !a.holds(&a.key, now) {
                continue;
            }
            n += 1;
            f(&a.key, &attempt_flow(&a));
        }
        n
    }

    /// The attempt of `key`, if one stands at `now`.
    fn find(&self, key: &FlowKey, now: u64) -> Option<Attempt> {
        let slot = steer_common::hash::cache_hash(key) >> (32 - ATTEMPTS_LOG2);
        let a = self.attempt(slot as usize);
        a.holds(key, now).then_some(a)
    }
}

/// A connection attempt as a flow entry: pinned to its backend, only SYNs seen.
fn attempt_flow(a: &Attempt) -> Flow {
    Flow {
        backend: a.backend,
        gen: a.gen,
        flags: flow_flags::SYN_ONLY,
        last_seen_ns: a.last_seen_ns,
        nat_port_be: 0,
        nat_addr: 0,
        _pad: 0,
    }
}

impl FlowReader {
    /// The established table's presence filter.
    pub fn presence(&self) -> &Presence {
        &self.presence
    }

    /// Calls `f` on every flow of both tables and on every DSR connection attempt, fetching
    /// the tables in batches of 4,096 (one syscall each). Returns how many each held. The
    /// attempts and the transient table are read first: a flow promoted while the scan runs is
    /// inserted in the established table before it leaves them, so it is seen at least once (a
    /// flow going the other way has ended).
    pub fn for_each_flow(&self, mut f: impl FnMut(&FlowKey, &Flow)) -> Result<Occupancy> {
        self.for_each_flow_in(|_, k, v| f(k, v))
    }

    /// `for_each_flow`, telling `f` whether each flow is in the established table.
    pub fn for_each_flow_in(&self, f: impl FnMut(bool, &FlowKey, &Flow)) -> Result<Occupancy> {
        self.pass(false, f)
    }

    /// `for_each_flow_in`, the established table's pass being a round of the presence filter
    /// when its grace has passed (the daemon's scans: the filter follows the table's
    /// evictions, and a scan never waits for it).
    pub fn census(&self, f: impl FnMut(bool, &FlowKey, &Flow)) -> Result<Occupancy> {
        self.pass(true, f)
    }

    /// A round of the presence filter over the established table, waiting for its grace if
    /// need be (tests and the bench, after they fill the table).
    pub fn presence_round(&self) -> Result<u64> {
        let fd = self.established.as_raw_fd();
        self.presence
            .round(|mark| for_each_flow(fd, |k, _| mark(k)))
    }

    fn pass(&self, round: bool, mut f: impl FnMut(bool, &FlowKey, &Flow)) -> Result<Occupancy> {
        let attempts = self
            .attempts
            .for_each(monotonic_ns(), |k, v| f(false, k, v));
        let transient = for_each_flow(self.transient.as_raw_fd(), |k, v| f(false, k, v))?;
        let fd = self.established.as_raw_fd();
        let established = if round {
            self.presence.pass(false, |mark| {
                for_each_flow(fd, |k, v| {
                    if let Some(mark) = mark {
                        mark(k);
                    }
                    f(true, k, v)
                })
            })?
        } else {
            for_each_flow(fd, |k, v| f(true, k, v))?
        };
        Ok(Occupancy {
            established,
            transient,
            attempts,
        })
    }
}

fn for_each_flow(fd: std::os::fd::RawFd, mut f: impl FnMut(&FlowKey, &Flow)) -> Result<u64> {
    let mut keys = vec![
        FlowKey {
            src: [0; 16],
            dst: [0; 16],
            sport_be: 0,
            dport_be: 0,
            proto: 0,
            family: 0,
            _pad: [0; 2],
        };
        BATCH
    ];
    let mut values = vec![
        Flow {
            backend: 0,
            gen: 0,
            flags: 0,
            last_seen_ns: 0,
            nat_port_be: 0,
            nat_addr: 0,
            _pad: 0,
        };
        BATCH
    ];
    let mut token = [0u64; 2];
    let mut first = true;
    let mut n = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_ptr() as u64 },
            out_batch: token.as_mut_ptr() as u64 + 8,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: attr points at buffers of `count` keys and values, and 8-byte tokens.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (r < 0).then(std::io::Error::last_os_error);
        let done = match &err {
            None => false,
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) => {
                return Err(DatapathError::FlowIter(std::io::Error::from_raw_os_error(
                    e.raw_os_error().unwrap_or(libc::EIO),
                )))
            }
        };
        for i in 0..attr.count as usize {
            f(&keys[i], &values[i]);
        }
        n += attr.count as u64;
        if done {
            return Ok(n);
        }
        token[0] = token[1];
        first = false;
    }
}

impl Datapath {
    /// Calls `f` on every flow of both connection tables, fetching them in batches of 4,096
    /// (one syscall each): 100,000 flows take a few milliseconds.
    pub fn for_each_flow(&self, f: impl FnMut(&FlowKey, &Flow)) -> Result<()> {
        self.flow_reader()?.for_each_flow(f).map(|_| ())
    }

    /// A reader of the connection tables that does not borrow this `Datapath`.
    pub fn flow_reader(&self) -> Result<FlowReader> {
        let dup = |m: &HashMap<MapData, FlowKey, Flow>| {
            aya::maps::IterableMap::map(m)
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(DatapathError::FlowIter)
        };
        Ok(FlowReader {
            established: dup(&self.flows)?,
            transient: dup(&self.transient)?,
            attempts: self.attempts.clone(),
            presence: self.presence.clone(),
        })
    }

    /// Capacity of the established table and of the transient one.
    pub fn flow_capacity(&self) -> (u32, u32) {
        (
            self.max_flows,
            steer_common::transient_capacity(self.max_flows),
        )
    }

    /// Every service entry in the map, with its key (what a daemon that ran before left).
    pub fn service_entries(&self) -> Result<Vec<(ServiceKey, Service)>> {
        let mut out = Vec::new();
        for k in self.service_keys()? {
            if let Some(v) = self.service(&k)? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// The generation of every backend slot that ever had one (in use or emptied).
    pub fn backend_generations(&self) -> Result<Vec<(u32, u16)>> {
        let mut out = Vec::new();
        for id in 0..steer_common::MAX_BACKENDS {
            let b = self.backend(id)?;
            if b.gen != 0 {
                out.push((id, b.gen));
            }
        }
        Ok(out)
    }

    /// Every backend slot in use, by id.
    pub fn backend_entries(&self) -> Result<Vec<(u32, Backend)>> {
        let mut out = Vec::new();
        for id in 0..steer_common::MAX_BACKENDS {
            let b = self.backend(id)?;
            if b.admin != steer_common::admin::NONE {
                out.push((id, b));
            }
        }
        Ok(out)
    }

    /// Active flows per backend id (`is_active`, with the idle timeout `idle_ns` gives for the
    /// backend). A flow pinned to an earlier holder of the id (`gen` differs) is not counted.
    pub fn active_flows(
        &self,
        idle_ns: impl Fn(u32) -> u64,
    ) -> Result<std::collections::HashMap<u32, u64>> {
        let now = monotonic_ns();
        let mut gens = std::collections::HashMap::new();
        let mut out = std::collections::HashMap::new();
        self.for_each_flow(|_, fl| {
            if !is_active(fl, now, idle_ns(fl.backend)) {
                return;
            }
            let gen = *gens
                .entry(fl.backend)
                .or_insert_with(|| self.backend(fl.backend).map(|b| b.gen).ok());
            if gen == Some(fl.gen) {
                *out.entry(fl.backend).or_default() += 1;
            }
        })?;
        Ok(out)
    }

    /// The flow entry of a 5-tuple as the datapath finds it for a packet that is not a SYN:
    /// its DSR connection attempt, else its entry in the established table, else in the
    /// transient one.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>> {
        if let Some(a) = self.attempts.find(key, monotonic_ns()) {
            return Ok(Some(attempt_flow(&a)));
        }
        for (name, m) in [(map::FLOWS, &self.flows), (map::TRANSIENT, &self.transient)] {
            match m.get(key, 0) {
                Ok(f) => return Ok(Some(f)),
                Err(MapError::KeyNotFound) => {}
                Err(source) => return Err(DatapathError::Map { name, source }),
            }
        }
        Ok(None)
    }

    /// Whether the 5-tuple's entry is in the established table (else transient, or none).
    pub fn is_established(&self, key: &FlowKey) -> bool {
        self.flows.get(key, 0).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::cpu_ids_end;

    #[test]
    fn the_caches_have_a_region_up_to_the_highest_possible_cpu() {
        assert_eq!(cpu_ids_end("0-1\n"), Some(2));
        assert_eq!(cpu_ids_end("0"), Some(1));
        assert_eq!(cpu_ids_end("0,2-3"), Some(4));
        assert_eq!(cpu_ids_end("0-3,8-11,5"), Some(12));
        assert_eq!(cpu_ids_end(""), None);
        assert_eq!(cpu_ids_end("0-x"), None);
    }
}
