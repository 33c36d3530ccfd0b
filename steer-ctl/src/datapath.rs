//! The loaded XDP program and its maps: the only code that talks to the kernel's BPF objects.

use std::{
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    ptr::NonNull,
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use steer_common::{
    maglev_chunks, maglev_index, map, outcome, Backend, Counters, Service, ServiceKey,
    MAGLEV_CHUNK, MAGLEV_MAX_SIZE, MAX_SERVICES, PROGRAM,
};

/// The compiled datapath, built by `build.rs` from `steer-ebpf`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));

/// A program that passes everything (`steer_pass`), for the peer of a veth that runs steer in
/// native mode: veth only delivers `XDP_TX` frames promptly to a peer with an XDP program.
pub static PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer-pass"));

/// Attaches `steer_pass` to `iface` (in the calling thread's namespace), natively. It stays
/// attached while the returned handle lives.
pub fn attach_pass(iface: &str) -> Result<Ebpf> {
    let mut ebpf = Ebpf::load(PASS_OBJECT)?;
    let prog: &mut Xdp = ebpf
        .program_mut("steer_pass")
        .ok_or(DatapathError::MissingProgram)?
        .try_into()?;
    prog.load()?;
    prog.attach(iface, XdpMode::Driver)
        .map_err(|source| DatapathError::Attach {
            iface: iface.to_string(),
            mode: XdpMode::Driver,
            source,
        })?;
    Ok(ebpf)
}

/// Errors from loading or driving the datapath.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("loading the XDP object failed (root and a kernel with BPF and BTF are needed): {0}")]
    Load(#[from] EbpfError),
    #[error("the XDP object has no map {0} (object and steer-ctl out of step?)")]
    MissingMap(&'static str),
    #[error("the XDP object has no program {PROGRAM}")]
    MissingProgram,
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {PROGRAM}: {0}")]
    Program(#[from] ProgramError),
    #[error("attaching XDP to {iface} in {mode:?} mode: {source}")]
    Attach {
        iface: String,
        mode: XdpMode,
        #[source]
        source: ProgramError,
    },
    #[error("mapping {name} into memory: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("service id {0} is out of range (the datapath was loaded for {1} services)")]
    ServiceId(u32, u32),
    #[error("Maglev table of {0} slots is larger than the maximum {MAGLEV_MAX_SIZE}")]
    TableSize(usize),
}

type Result<T, E = DatapathError> = std::result::Result<T, E>;

/// How to load the datapath.
#[derive(Clone, Debug)]
pub struct Options {
    /// Capacity of the services map and number of Maglev table pairs.
    pub max_services: u32,
    /// Pin (or reuse pinned) maps in this bpffs directory; `None` keeps them private to this
    /// process.
    pub pin_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_services: MAX_SERVICES,
            pin_dir: None,
        }
    }
}

/// The Maglev tables, mapped into this process (`BPF_F_MMAPABLE`): a 65,537-slot table is
/// written with one copy, not 65,537 syscalls.
struct MaglevTables {
    _map: MapData,
    base: NonNull<u32>,
    len: usize,
}

impl MaglevTables {
    fn new(map: MapData, chunks: u32) -> Result<Self> {
        let len = chunks as usize * MAGLEV_CHUNK as usize;
        let bytes = len * 4;
        // SAFETY: mapping a BPF array created with BPF_F_MMAPABLE; length within its size.
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
                name: map::MAGLEV,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(MaglevTables {
            _map: map,
            base: NonNull::new(p.cast()).expect("mmap returned null"),
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

/// The XDP program and typed handles on its maps.
pub struct Datapath {
    ebpf: Ebpf,
    max_services: u32,
    services: HashMap<MapData, ServiceKey, Service>,
    backends: Array<MapData, Backend>,
    maglev: MaglevTables,
    service_stats: PerCpuArray<MapData, Counters>,
    backend_stats: PerCpuArray<MapData, Counters>,
    global_stats: PerCpuArray<MapData, u64>,
}

fn take(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name).ok_or(DatapathError::MissingMap(name))
}

fn typed<T>(name: &'static str, r: std::result::Result<T, MapError>) -> Result<T> {
    r.map_err(|source| DatapathError::Map { name, source })
}

impl Datapath {
    /// Loads the object into the kernel (not attached to any interface yet).
    pub fn load(opts: &Options) -> Result<Self> {
        let maglev_entries = maglev_chunks(opts.max_services);
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map::SERVICES, opts.max_services)
            .map_max_entries(map::SERVICE_STATS, opts.max_services)
            .map_max_entries(map::MAGLEV, maglev_entries);
        let pins: Vec<(&'static str, PathBuf)> = match &opts.pin_dir {
            Some(dir) => map::ALL.iter().map(|n| (*n, dir.join(n))).collect(),
            None => Vec::new(),
        };
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or(DatapathError::MissingProgram)?
            .try_into()?;
        prog.load()?;

        let Map::Array(maglev) = take(&mut ebpf, map::MAGLEV)? else {
            return Err(DatapathError::MissingMap(map::MAGLEV));
        };
        let maglev = MaglevTables::new(maglev, maglev_entries)?;
        let services = typed(
            map::SERVICES,
            HashMap::try_from(take(&mut ebpf, map::SERVICES)?),
        )?;
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
        Ok(Datapath {
            ebpf,
            max_services: opts.max_services,
            services,
            backends,
            maglev,
            service_stats,
            backend_stats,
            global_stats,
        })
    }

    /// The XDP program, e.g. for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM)
            .and_then(|p| p.try_into().ok())
            .expect("program checked at load")
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

    pub fn max_services(&self) -> u32 {
        self.max_services
    }

    fn check_service_id(&self, id: u32) -> Result<()> {
        if id >= self.max_services {
            return Err(DatapathError::ServiceId(id, self.max_services));
        }
        Ok(())
    }

    pub fn put_service(&mut self, key: &ServiceKey, svc: &Service) -> Result<()> {
        self.check_service_id(svc.id)?;
        typed(map::SERVICES, self.services.insert(key, svc, 0))
    }

    pub fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        typed(map::SERVICES, self.services.remove(key))
    }

    pub fn put_backend(&mut self, id: u32, be: &Backend) -> Result<()> {
        typed(map::BACKENDS, self.backends.set(id, be, 0))
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

    /// Counters of service `id`, summed over CPUs.
    pub fn service_counters(&self, id: u32) -> Result<Counters> {
        Self::sum(map::SERVICE_STATS, &self.service_stats, id)
    }

    /// Counters of backend `id`, summed over CPUs.
    pub fn backend_counters(&self, id: u32) -> Result<Counters> {
        Self::sum(map::BACKEND_STATS, &self.backend_stats, id)
    }

    /// Packets per `outcome`, summed over CPUs.
    pub fn outcomes(&self) -> Result<[u64; outcome::COUNT as usize]> {
        let mut out = [0u64; outcome::COUNT as usize];
        for (i, o) in out.iter_mut().enumerate() {
            let per_cpu = typed(map::GLOBAL_STATS, self.global_stats.get(&(i as u32), 0))?;
            *o = per_cpu.iter().sum();
        }
        Ok(out)
    }
}
