//! Desired state of services and backends, kept in step with the datapath's maps.
//!
//! `Balancer` owns a `Datapath`. Every change goes through it: it allocates ids, writes the
//! backend entries, and rebuilds a service's Maglev table from its eligible backends whenever
//! their set or weights change, writing the table the datapath is not reading and then flipping
//! the service to it (one store: packets see the old table or the new one, never a mix).
//!
//! A packet reads the service entry, then a slot of the table it names, then the backend entry
//! that slot names: what it read first must still hold when it reads the rest. So nothing that a
//! packet which began before a service-map write may still be using is changed until every such
//! packet has ended (a grace period, `wait_for_running_programs`):
//! - the table slot a flip left is rewritten only by a later flip, after a grace period;
//! - a backend that left a table is emptied (removed) or marked `reject`, `drain`, down… only
//!   after the flip that took it out and a grace period, so a packet that read the old table
//!   finds the backend as it was;
//! - two writes of the services maps are a grace period apart: a service's settings are
//!   double-buffered (`ServiceInfo`), and its next publish writes the copy that packets read
//!   until this one;
//! - a backend slot is given to another backend in two writes, the new fields under admin `NONE`
//!   first, so a flow of the slot's last holder never reads half of each; a removed backend's
//!   slot only has its admin byte set to `NONE` (its flows may be reading the rest).
//!
//! Outside a batch every public change ends with the grace period its last write needs, so the
//! next change's flip is not delayed by this one. In a batch, entries of backends leaving a table
//! wait in `pending` until `commit` has flipped every changed service, then are written after
//! one grace period.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use steer_common::{
    admin, global_flags, svc_flags, Backend, Counters, Globals, NatPool, Service, ServiceKey,
    BACKEND_NONE, DEFAULT_IDLE_TIMEOUT_S, FAMILY_V4, FAMILY_V6, MAGLEV_DEFAULT_SIZE, MAX_BACKENDS,
    NAT_POOL_MAX,
};

pub use crate::model::{AdminState, Health, Mode, NoBackend, Proto, Role};
use crate::{
    datapath::{Datapath, DatapathError},
    maglev::{self, MaglevError},
};

/// A service to add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// Prime, at most `steer_common::MAGLEV_MAX_SIZE`.
    pub maglev_size: u32,
    /// Flows idle longer than this are gone: UDP flows are steered afresh, and drains stop
    /// waiting for them.
    pub idle_timeout_s: u32,
    pub no_backend: NoBackend,
    /// How new flows reach the backends.
    pub mode: Mode,
    /// NAT settings (read in `Mode::Nat` only).
    pub nat: NatSpec,
}

/// A NAT service's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSpec {
    /// LB addresses flows leave from (same family as the VIP, at most `NAT_POOL_MAX`);
    /// empty: each backend's `snat`.
    pub pool: Vec<IpAddr>,
    /// Where the datapath keeps each address (`NatPool`'s slots, whose index a flow
    /// records): every address of `pool`, and addresses the pool named before that still
    /// hold their slot (retired: their flows keep their source). Given empty, `Balancer`
    /// fills it: `pool` in order for a new service (or the slots of the service a daemon
    /// before ran on pinned maps), the slots the service had for an updated one
    /// (`pool_slots`).
    pub slots: Vec<IpAddr>,
    /// Source ports, inclusive.
    pub port_lo: u16,
    pub port_hi: u16,
    /// Passive health: `error_limit` consecutive failed attempts mark a backend down.
    pub observe: bool,
    pub error_limit: u16,
    pub syn_timeout_ms: u32,
    /// Refused-connection recovery.
    pub recover: bool,
}

impl Default for NatSpec {
    /// The config's defaults.
    fn default() -> Self {
        let ports = crate::config::DEFAULT_SNAT_PORTS;
        NatSpec {
            pool: Vec::new(),
            slots: Vec::new(),
            port_lo: ports.0,
            port_hi: ports.1,
            observe: true,
            error_limit: crate::config::DEFAULT_ERROR_LIMIT as u16,
            syn_timeout_ms: crate::config::DEFAULT_SYN_TIMEOUT.as_millis() as u32,
            recover: true,
        }
    }
}

impl ServiceSpec {
    pub fn tcp(name: &str, vip: IpAddr, port: u16) -> Self {
        ServiceSpec {
            name: name.to_string(),
            vip,
            port,
            proto: Proto::Tcp,
            maglev_size: MAGLEV_DEFAULT_SIZE,
            idle_timeout_s: DEFAULT_IDLE_TIMEOUT_S,
            no_backend: NoBackend::Reset,
            mode: Mode::Dsr,
            nat: NatSpec::default(),
        }
    }

    /// The same service in NAT mode with the default NAT settings (source: each backend's
    /// facing address).
    pub fn nat(self) -> Self {
        ServiceSpec {
            mode: Mode::Nat,
            ..self
        }
    }

    /// The datapath's fields that follow from this spec, set in `v`: the no-backend policy,
    /// the mode and the NAT settings (left zero in DSR mode, as before NAT existed).
    fn apply_to(&self, v: &mut Service) {
        const OWN: u32 = svc_flags::NO_BACKEND_DROP
            | svc_flags::OBSERVE
            | svc_flags::RECOVER
            | svc_flags::NAT_POOL;
        v.flags &= !OWN;
        if self.no_backend == NoBackend::Drop {
            v.flags |= svc_flags::NO_BACKEND_DROP;
        }
        v.idle_timeout_s = self.idle_timeout_s;
        v.mode = self.mode.code();
        (
            v.nat_port_lo,
            v.nat_port_hi,
            v.error_limit,
            v.syn_timeout_ms,
        ) = (0, 0, 0, 0);
        if self.mode == Mode::Nat {
            let n = &self.nat;
            v.nat_port_lo = n.port_lo;
            v.nat_port_hi = n.port_hi;
            v.error_limit = n.error_limit;
            v.syn_timeout_ms = n.syn_timeout_ms;
            for (on, bit) in [
                (n.observe, svc_flags::OBSERVE),
                (n.recover, svc_flags::RECOVER),
                (!n.pool.is_empty(), svc_flags::NAT_POOL),
            ] {
                if on {
                    v.flags |= bit;
                }
            }
        }
    }

    /// The datapath's pool of this service (`None`: no pool, or not NAT).
    fn pool(&self) -> Option<NatPool> {
        if self.mode != Mode::Nat || self.nat.pool.is_empty() {
            return None;
        }
        let mut p = NatPool {
            addrs: [[0; 16]; NAT_POOL_MAX],
            active: [0; NAT_POOL_MAX],
            count: 0,
            slots: 0,
        };
        for (i, a) in self.nat.slots().iter().enumerate().take(NAT_POOL_MAX) {
            p.addrs[i] = addr_bytes(*a).0;
            p.slots += 1;
            if self.nat.pool.contains(a) {
                p.active[p.count as usize] = i as u8;
                p.count += 1;
            }
        }
        // The rest repeat the first: a datapath reading this pool while it is written (an
        // array update is a copy, not a swap) with the count before it never picks a slot
        // the pool does not take.
        for j in p.count as usize..NAT_POOL_MAX {
            p.active[j] = p.active[0];
        }
        Some(p)
    }

    pub fn udp(name: &str, vip: IpAddr, port: u16) -> Self {
        ServiceSpec {
            proto: Proto::Udp,
            ..Self::tcp(name, vip, port)
        }
    }
}

/// A backend to add to a service.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub weight: u32,
    pub role: Role,
    /// Deployment group (`blue`, `green`): `switch` makes one group of a service eligible.
    pub group: Option<String>,
    /// Admin state and health the entry is written with (so an adopted or re-added backend
    /// is never briefly `ready` and `up` when it is not).
    pub admin: AdminState,
    pub health: Health,
    /// The port the server listens on; `None`: the service's (always, in DSR mode).
    pub port: Option<u16>,
    /// NAT: the LB's own address facing this backend (source of its flows when the service
    /// has no pool); `None` in DSR mode.
    pub snat: Option<IpAddr>,
}

impl BackendSpec {
    /// A pool backend of weight 1.
    pub fn new(name: &str, addr: IpAddr, mac: [u8; 6]) -> Self {
        BackendSpec {
            name: name.to_string(),
            addr,
            mac,
            weight: 1,
            role: Role::Pool,
            group: None,
            admin: AdminState::Ready,
            health: Health::Up,
            port: None,
            snat: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Maglev(#[from] MaglevError),
    #[error("no service named {0:?}")]
    UnknownService(String),
    #[error("no backend named {0:?}")]
    UnknownBackend(String),
    #[error("a service named {0:?} already exists")]
    DuplicateService(String),
    #[error("service {0:?} already has the address {1}:{2}")]
    DuplicateVip(String, IpAddr, u16),
    #[error("a backend named {0:?} already exists (backend names are unique per host)")]
    DuplicateBackend(String),
    #[error("no room for another {0} (limit {1})")]
    Full(&'static str, u32),
    #[error("service {0:?} already has a {1:?} backend ({2:?})")]
    DuplicateRole(String, Role, String),
    #[error("service {service:?}: the maintenance and fallback backends must be different servers, but both are {addr}")]
    MaintenanceIsFallback { service: String, addr: IpAddr },
    #[error("service {0:?} has no backend in group {1:?}")]
    UnknownGroup(String, String),
    #[error("service {0:?} has no maintenance backend")]
    NoMaintenanceBackend(String),
    #[error("backend {backend:?} is {backend_family} but service {service:?} is {service_family}")]
    FamilyMismatch {
        backend: String,
        backend_family: &'static str,
        service: String,
        service_family: &'static str,
    },
    #[error("service {0:?}: {1}")]
    BadNat(String, String),
}

type Result<T, E = BalancerError> = std::result::Result<T, E>;

/// `membarrier(2)` command that returns after an RCU grace period (`synchronize_rcu()`); not in
/// the libc crate.
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// How long to wait instead when `MEMBARRIER_CMD_GLOBAL` is refused (a `nohz_full` kernel, or a
/// seccomp filter): an XDP run takes microseconds in a softirq that nothing preempts, so 20 ms is
/// four orders of magnitude of margin, and covers a vCPU descheduled by its hypervisor for a few
/// host scheduler slices; only the kernel's own grace period covers any stall.
const FALLBACK_GRACE: Duration = Duration::from_millis(20);

/// Waits until every BPF program run that began before the call has ended, the same wait the
/// kernel makes after an update of a map-in-map (`maybe_wait_bpf_programs`): XDP programs run
/// inside RCU read-side critical sections (NAPI poll with bottom halves off, or
/// `BPF_PROG_TEST_RUN` under `rcu_read_lock`), so an RCU grace period covers them, including one
/// whose CPU was preempted by a hypervisor mid-run. `membarrier(MEMBARRIER_CMD_GLOBAL)` is
/// `synchronize_rcu()` (libbpf's selftests use it as `kern_sync_rcu`): about 8–30 ms on the
/// project's 2-core machines.
fn wait_for_running_programs() {
    // SAFETY: membarrier takes no pointers; flags 0, cpu_id ignored.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let err = std::io::Error::last_os_error();
        WARNED.call_once(|| {
            tracing::warn!(
                error = %err,
                wait = ?FALLBACK_GRACE,
                "membarrier(MEMBARRIER_CMD_GLOBAL) refused: table swaps wait a fixed time for running packets instead of an RCU grace period"
            )
        });
        std::thread::sleep(FALLBACK_GRACE);
    }
}

/// A removed backend's slot: only the admin byte changes (`NONE`), so a packet of one of its
/// flows that read the entry before still finds the MAC and generation it read. The datapath
/// reads nothing but the admin state of a `NONE` slot; the generation stays for the next holder.
fn vacated(entry: &Backend) -> Backend {
    Backend {
        admin: admin::NONE,
        ..*entry
    }
}

/// Splits an address into the datapath's 16-byte form and family.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address `addr_bytes` made `b` from: IPv4 (its first four bytes) or IPv6.
pub fn addr_from_bytes(b: [u8; 16], v4: bool) -> IpAddr {
    if v4 {
        IpAddr::from([b[0], b[1], b[2], b[3]])
    } else {
        IpAddr::from(b)
    }
}

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

impl NatSpec {
    /// The datapath's slots: `slots`, or `pool` in order when none were given.
    pub fn slots(&self) -> &[IpAddr] {
        if self.slots.is_empty() {
            &self.pool
        } else {
            &self.slots
        }
    }
}

/// The slots (`NatSpec::slots`) for pool `pool` after slots `old`: a flow records the slot of
/// its source address, so every address keeps its slot — one the pool no longer names too
/// (retired: no new flow takes it, its flows keep their source) — and a new address takes a
/// free slot, or, when all `NAT_POOL_MAX` are taken, the first retired one (whose remaining
/// flows then lose their source: the one change of a pool that moves flows).
pub fn pool_slots(old: &[IpAddr], pool: &[IpAddr]) -> Vec<IpAddr> {
    let mut slots = old.to_vec();
    for a in pool.iter().filter(|a| !old.contains(a)) {
        if slots.len() < NAT_POOL_MAX {
            slots.push(*a);
        } else if let Some(s) = slots.iter_mut().find(|s| !pool.contains(s)) {
            *s = *a;
        }
    }
    slots
}

/// What the datapath could not use in a service's NAT settings (the config refuses all of
/// these with a position first).
fn check_nat(spec: &ServiceSpec) -> Result<()> {
    if spec.mode != Mode::Nat {
        return Ok(());
    }
    let n = &spec.nat;
    let bad = |why: String| Err(BalancerError::BadNat(spec.name.clone(), why));
    if n.pool.len() > NAT_POOL_MAX {
        return bad(format!(
            "{} pool addresses, at most {NAT_POOL_MAX}",
            n.pool.len()
        ));
    }
    if let Some(a) = n.pool.iter().find(|a| a.is_ipv4() != spec.vip.is_ipv4()) {
        return bad(format!("pool address {a} is not of the VIP's family"));
    }
    let slots = n.slots();
    if slots.len() > NAT_POOL_MAX {
        return bad(format!(
            "{} pool slots, at most {NAT_POOL_MAX}",
            slots.len()
        ));
    }
    if let Some(a) = n.pool.iter().find(|a| !slots.contains(a)) {
        return bad(format!("pool address {a} has no slot"));
    }
    if let Some(a) = slots.iter().find(|a| a.is_ipv4() != spec.vip.is_ipv4()) {
        return bad(format!("pool slot {a} is not of the VIP's family"));
    }
    if n.port_lo == 0 || n.port_lo > n.port_hi {
        return bad(format!("source ports {}-{}", n.port_lo, n.port_hi));
    }
    if n.observe && n.error_limit == 0 {
        return bad("error_limit 0".into());
    }
    Ok(())
}

struct ServiceState {
    spec: ServiceSpec,
    id: u32,
    key: ServiceKey,
    value: Service,
    /// Backend names, in the order added.
    backends: Vec<String>,
    /// When set, only pool backends of this group take new flows.
    active_group: Option<String>,
    /// `maglev::digest` of the live table.
    digest: u64,
}

struct BackendState {
    spec: BackendSpec,
    id: u32,
    service: String,
    entry: Backend,
}

/// Services and backends, applied to a datapath.
pub struct Balancer {
    dp: Datapath,
    services: BTreeMap<String, ServiceState>,
    backends: BTreeMap<String, BackendState>,
    /// Generation last given out per backend id.
    gens: Vec<u16>,
    /// Ids to give back to services and backends by name (from the state file of a daemon that
    /// ran before): flows in a pinned connection table name backends by id and generation.
    reserved_services: BTreeMap<String, u32>,
    reserved_backends: BTreeMap<String, (u32, u16)>,
    /// While `Some`, table rebuilds and service updates are deferred: `commit` publishes each
    /// service named here once.
    batch: Option<BTreeSet<String>>,
    /// Backend entries to write once their service (named here) has flipped to a table without
    /// them and a grace period has passed: backends leaving a table, and removed backends
    /// (whose ids are not given out again until then).
    pending: BTreeMap<u32, (String, Backend)>,
    /// A services-map write (or a flip) happened since the last grace period.
    unsettled: bool,
    /// The host-wide settings last written (`None`: not yet this run).
    globals: Option<Globals>,
}

/// A backend as `Balancer` holds it, for status reports.
#[derive(Clone, Debug)]
pub struct BackendInfo {
    pub name: String,
    pub service: String,
    pub id: u32,
    pub gen: u16,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub weight: u32,
    pub role: Role,
    pub admin: AdminState,
    pub health: Health,
    pub group: Option<String>,
    /// The port the server is reached on.
    pub port: u16,
    /// NAT: the LB's address facing it.
    pub snat: Option<IpAddr>,
}

/// A service as `Balancer` holds it, for status reports.
#[derive(Clone, Debug)]
pub struct ServiceInfo {
    pub name: String,
    pub id: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    pub maintenance: bool,
    /// Pool backends that may take new flows.
    pub eligible: usize,
    pub backends: Vec<String>,
    /// The group `switch` made eligible, if any.
    pub active_group: Option<String>,
    pub mode: Mode,
    /// NAT settings, in NAT mode.
    pub nat: Option<NatSpec>,
    /// `maglev::digest` of the live table: equal on every LB host with the same config.
    pub table_digest: u64,
}

impl Balancer {
    pub fn new(dp: Datapath) -> Self {
        Balancer {
            dp,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
            gens: vec![0; MAX_BACKENDS as usize],
            reserved_services: BTreeMap::new(),
            reserved_backends: BTreeMap::new(),
            batch: None,
            pending: BTreeMap::new(),
            // A daemon before this one may have flipped a table just before it stopped.
            unsettled: true,
            globals: None,
        }
    }

    /// Writes the host-wide settings that follow from the services: the NAT flag while any
    /// service is in NAT mode. Called with a NAT service in `services` before it is published
    /// (its replies are looked up from its first flow) and after the last one has gone.
    fn sync_globals(&mut self) -> Result<()> {
        let nat = self.services.values().any(|s| s.spec.mode == Mode::Nat);
        let g = Globals {
            flags: if nat { global_flags::NAT } else { 0 },
            // Kept by the datapath (moves with every service change).
            epoch: 0,
        };
        if self.globals != Some(g) {
            self.dp.put_globals(&g)?;
            self.globals = Some(g);
        }
        Ok(())
    }

    /// Forgets the passive-health failures the datapath counted for a backend: before active
    /// checks make it eligible again, else the datapath would keep it out (its count is still
    /// at the limit).
    pub fn reset_observed(&self, name: &str) -> Result<()> {
        let id = self.backend_id(name)?;
        self.dp.observed().reset(id);
        Ok(())
    }

    /// Waits out every packet that may have read what the last services-map write replaced.
    fn settle(&mut self) {
        if self.unsettled {
            wait_for_running_programs();
            self.unsettled = false;
        }
    }

    /// Writes the pending entries of backends of the services in `flipped` (which must have
    /// flipped, and a grace period passed since) or of services gone.
    fn flush_pending(&mut self, flipped: &BTreeSet<String>) -> Result<()> {
        let ready: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, (svc, _))| flipped.contains(svc) || !self.services.contains_key(svc))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            let (_, entry) = self.pending.remove(&id).expect("listed above");
            self.dp.put_backend(id, &entry)?;
        }
        Ok(())
    }

    /// Defers publishing services until `commit`: a daemon adopting pinned maps, or applying a
    /// reload, builds each service whole (all backends, admin states, maintenance) before the
    /// datapath sees it, never an empty or half-built pool.
    pub fn begin_batch(&mut self) {
        self.batch.get_or_insert_with(Default::default);
    }

    /// Publishes every service changed since `begin_batch` (a grace period between two flips),
    /// then, after one more grace period, writes the entries of the backends that left.
    pub fn commit(&mut self) -> Result<()> {
        let dirty = self.batch.take().unwrap_or_default();
        let mut done = BTreeSet::new();
        let mut failed = None;
        for s in dirty {
            if self.services.contains_key(&s) {
                match self.publish(&s) {
                    Ok(()) => {
                        done.insert(s);
                    }
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        self.settle();
        // A service that failed to flip keeps its old table: its leaving backends stay as they
        // are until it flips.
        let r = self.flush_pending(&done);
        failed.map_or(r, Err)
    }

    /// Ids that services and backends of these names held before (a daemon restarting on
    /// pinned maps): they get them back when added.
    pub fn reserve_ids(
        &mut self,
        services: BTreeMap<String, u32>,
        backends: BTreeMap<String, (u32, u16)>,
    ) {
        for (_, (id, gen)) in backends.iter() {
            if let Some(g) = self.gens.get_mut(*id as usize) {
                *g = (*g).max(*gen);
            }
        }
        self.reserved_services = services;
        self.reserved_backends = backends;
    }

    /// Seeds the generation counter of every backend slot from what a pinned map holds, so an
    /// id given to a new backend never carries a generation that old pinned flows have —
    /// also for slots whose backend is gone from the config.
    pub fn seed_generations(&mut self, slots: &[(u32, u16)]) {
        for (id, gen) in slots {
            if let Some(g) = self.gens.get_mut(*id as usize) {
                *g = (*g).max(*gen);
            }
        }
    }

    /// The ids in use: service name → id, backend name → (id, generation).
    pub fn ids(&self) -> (BTreeMap<String, u32>, BTreeMap<String, (u32, u16)>) {
        (
            self.services
                .iter()
                .map(|(n, s)| (n.clone(), s.id))
                .collect(),
            self.backends
                .iter()
                .map(|(n, b)| (n.clone(), (b.id, b.entry.gen)))
                .collect(),
        )
    }

    /// Clears what the datapath holds that this balancer does not: services of an earlier
    /// config and backend slots no backend uses (their flows then count as removed).
    pub fn clear_unused(&mut self) -> Result<()> {
        // A pinned NAT flag outlives the NAT services of an earlier config.
        self.sync_globals()?;
        let keys: Vec<ServiceKey> = self.services.values().map(|s| s.key).collect();
        for k in self.dp.service_keys()? {
            if !keys.contains(&k) {
                self.settle();
                self.unsettled = true;
                self.dp.remove_service(&k)?;
            }
        }
        // No table read from now on holds the slots below: every service left here has been
        // published by this balancer, and the others are gone.
        self.settle();
        for id in 0..MAX_BACKENDS {
            if self.backends.values().any(|b| b.id == id) || self.pending.contains_key(&id) {
                continue;
            }
            let entry = self.dp.backend(id)?;
            if entry.admin != admin::NONE {
                self.dp.put_backend(id, &vacated(&entry))?;
            }
        }
        Ok(())
    }

    /// Every backend, by name.
    pub fn backend_infos(&self) -> Vec<BackendInfo> {
        self.backends
            .iter()
            .map(|(n, b)| BackendInfo {
                name: n.clone(),
                service: b.service.clone(),
                id: b.id,
                gen: b.entry.gen,
                addr: b.spec.addr,
                mac: b.spec.mac,
                weight: b.spec.weight,
                role: b.spec.role,
                admin: AdminState::from_code(b.entry.admin).unwrap_or_default(),
                health: Health::from_code(b.entry.health),
                group: b.spec.group.clone(),
                port: u16::from_be(b.entry.port_be),
                snat: b.spec.snat,
            })
            .collect()
    }

    /// Every service, by name.
    pub fn service_infos(&self) -> Vec<ServiceInfo> {
        self.services
            .iter()
            .map(|(n, s)| ServiceInfo {
                name: n.clone(),
                id: s.id,
                vip: s.spec.vip,
                port: s.spec.port,
                proto: s.spec.proto,
                maintenance: s.value.flags & svc_flags::MAINTENANCE != 0,
                eligible: self.table_members(s).count(),
                backends: s.backends.clone(),
                active_group: s.active_group.clone(),
                mode: s.spec.mode,
                nat: (s.spec.mode == Mode::Nat).then(|| s.spec.nat.clone()),
                table_digest: s.digest,
            })
            .collect()
    }

    /// Makes only the pool backends of `group` eligible for new flows of `service` (`None`:
    /// all groups), in one table swap. Flows on the other group's backends go on where they
    /// are.
    pub fn set_active_group(&mut self, service: &str, group: Option<&str>) -> Result<()> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        if let Some(g) = group {
            let known = svc
                .backends
                .iter()
                .filter_map(|n| self.backends.get(n))
                .any(|b| b.spec.group.as_deref() == Some(g));
            if !known {
                return Err(BalancerError::UnknownGroup(
                    service.to_string(),
                    g.to_string(),
                ));
            }
        }
        let svc = self.services.get_mut(service).expect("looked up");
        if svc.active_group.as_deref() == group {
            return Ok(());
        }
        svc.active_group = group.map(String::from);
        self.rebuild(service)
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Adds a service with no backends (new flows to it are dropped until one is added).
    pub fn add_service(&mut self, mut spec: ServiceSpec) -> Result<u32> {
        if self.services.contains_key(&spec.name) {
            return Err(BalancerError::DuplicateService(spec.name));
        }
        if let Some(other) = self.services.values().find(|s| {
            s.spec.vip == spec.vip && s.spec.port == spec.port && s.spec.proto == spec.proto
        }) {
            return Err(BalancerError::DuplicateVip(
                other.spec.name.clone(),
                spec.vip,
                spec.port,
            ));
        }
        if !maglev::is_prime(spec.maglev_size) || spec.maglev_size > steer_common::MAGLEV_MAX_SIZE {
            return Err(MaglevError::BadSize(spec.maglev_size).into());
        }
        check_nat(&spec)?;
        let max = self.dp.max_services();
        let free = |i: &u32| self.services.values().all(|s| s.id != *i);
        let reserved = self
            .reserved_services
            .get(&spec.name)
            .copied()
            .filter(|i| *i < max && free(i));
        let (addr, family) = addr_bytes(spec.vip);
        let key = ServiceKey {
            addr,
            port_be: spec.port.to_be(),
            proto: spec.proto.number(),
            family,
        };
        let id = match reserved {
            Some(i) => {
                // A service a daemon before this one ran (on pinned maps), with a pool then:
                // its addresses keep the slots that daemon gave them, which its flows record
                // (the key holds the VIP's family, so the pool's is the VIP's).
                let pooled = self
                    .dp
                    .service(&key)?
                    .is_some_and(|v| v.id == i && v.flags & svc_flags::NAT_POOL != 0);
                if spec.mode == Mode::Nat && spec.nat.slots.is_empty() && pooled {
                    let before = self.dp.pool(i)?;
                    let slots: Vec<IpAddr> = before.addrs
                        [..(before.slots as usize).min(NAT_POOL_MAX)]
                        .iter()
                        .map(|a| addr_from_bytes(*a, spec.vip.is_ipv4()))
                        .collect();
                    spec.nat.slots = pool_slots(&slots, &spec.nat.pool);
                }
                i
            }
            None => {
                // Not an id another key in the map still names (a service of an earlier
                // config, until `clear_unused`, which the program attached before may still
                // serve): its packets would read this service's settings. Nor one reserved
                // for a service yet to be added. Either only when nothing else is left.
                let pinned: Vec<u32> = self
                    .dp
                    .service_ids()?
                    .into_iter()
                    .filter(|(k, _)| *k != key)
                    .map(|(_, i)| i)
                    .collect();
                let reserved = |i: &u32| self.reserved_services.values().any(|r| r == i);
                let i = (0..max)
                    .find(|i| free(i) && !reserved(i) && !pinned.contains(i))
                    .or_else(|| (0..max).find(|i| free(i) && !pinned.contains(i)))
                    .or_else(|| (0..max).find(free))
                    .ok_or(BalancerError::Full("service", max))?;
                // A new service on this id: it does not inherit an earlier one's counters.
                self.dp.reset_service_counters(i)?;
                i
            }
        };
        // The slots as they will be kept (a reload compares specs).
        if spec.mode == Mode::Nat && spec.nat.slots.is_empty() {
            spec.nat.slots = spec.nat.pool.clone();
        }
        // A service already in a pinned map keeps reading the table it reads now: the next
        // table goes to the other slot.
        let live_slot = self.dp.service(&key)?.map_or(0, |v| v.table_slot & 1);
        let mut value = Service {
            id,
            flags: 0,
            maglev_size: 0,
            table_slot: live_slot,
            fallback: BACKEND_NONE,
            maintenance: BACKEND_NONE,
            idle_timeout_s: spec.idle_timeout_s,
            mode: 0,
            nat_port_lo: 0,
            nat_port_hi: 0,
            error_limit: 0,
            _pad: 0,
            syn_timeout_ms: 0,
            _pad2: 0,
        };
        spec.apply_to(&mut value);
        // The pool before the entry that names it.
        if let Some(pool) = spec.pool() {
            self.dp.put_pool(id, &pool)?;
        }
        let name = spec.name.clone();
        self.services.insert(
            name.clone(),
            ServiceState {
                spec,
                id,
                key,
                value,
                backends: Vec::new(),
                active_group: None,
                digest: 0,
            },
        );
        if let Err(e) = self.sync_globals().and_then(|()| self.rebuild(&name)) {
            self.services.remove(&name);
            let _ = self.sync_globals();
            return Err(e);
        }
        Ok(id)
    }

    /// Adds a backend to a service, ready and up, and puts it in the service's table.
    pub fn add_backend(&mut self, service: &str, spec: BackendSpec) -> Result<u32> {
        if self.backends.contains_key(&spec.name) {
            return Err(BalancerError::DuplicateBackend(spec.name));
        }
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        if svc.spec.vip.is_ipv4() != spec.addr.is_ipv4() {
            return Err(BalancerError::FamilyMismatch {
                backend: spec.name,
                backend_family: family_name(spec.addr),
                service: service.to_string(),
                service_family: family_name(svc.spec.vip),
            });
        }
        if spec.role != Role::Pool {
            let mut other_roles = svc
                .backends
                .iter()
                .filter_map(|n| self.backends.get(n))
                .filter(|b| b.spec.role != Role::Pool);
            if let Some(b) = other_roles.clone().find(|b| b.spec.role == spec.role) {
                return Err(BalancerError::DuplicateRole(
                    service.to_string(),
                    spec.role,
                    b.spec.name.clone(),
                ));
            }
            if other_roles.any(|b| b.spec.addr == spec.addr) {
                return Err(BalancerError::MaintenanceIsFallback {
                    service: service.to_string(),
                    addr: spec.addr,
                });
            }
        }
        let (svc_id, svc_port, svc_mode) = (svc.id, svc.spec.port, svc.spec.mode);
        if svc_mode == Mode::Dsr && spec.port.is_some_and(|p| p != svc_port) {
            return Err(BalancerError::BadNat(
                service.to_string(),
                format!(
                    "backend {:?}: a DSR backend answers on the service's port {svc_port}",
                    spec.name
                ),
            ));
        }
        if let Some(a) = spec.snat {
            if a.is_ipv4() != spec.addr.is_ipv4() {
                return Err(BalancerError::BadNat(
                    service.to_string(),
                    format!(
                        "backend {:?}: its snat {a} is not of its address's family",
                        spec.name
                    ),
                ));
            }
        }
        let free =
            |i: &u32| self.backends.values().all(|b| b.id != *i) && !self.pending.contains_key(i);
        let reserved = self
            .reserved_backends
            .get(&spec.name)
            .copied()
            .filter(|(i, _)| *i < MAX_BACKENDS && free(i));
        let id = match reserved {
            // The same backend as before, on the same id: its pinned flows stay its own.
            Some((i, gen)) => {
                self.gens[i as usize] = gen;
                i
            }
            None => {
                let i = (0..MAX_BACKENDS)
                    .find(|i| free(i) && !self.reserved_backends.values().any(|(r, _)| r == i))
                    .or_else(|| (0..MAX_BACKENDS).find(free))
                    .ok_or(BalancerError::Full("backend", MAX_BACKENDS))?;
                self.gens[i as usize] = self.gens[i as usize].wrapping_add(1);
                // A new backend on this id: it does not inherit an earlier one's counters,
                // nor its passive-health failures.
                self.dp.reset_backend_counters(i)?;
                self.dp.observed().reset(i);
                i
            }
        };
        let (addr, family) = addr_bytes(spec.addr);
        let entry = Backend {
            addr,
            mac: spec.mac,
            family,
            admin: spec.admin.code(),
            health: spec.health.code(),
            service: svc_id,
            port_be: spec.port.unwrap_or(svc_port).to_be(),
            gen: self.gens[id as usize],
            snat: spec.snat.map_or([0; 16], |a| addr_bytes(a).0),
            ..Backend::EMPTY
        };
        self.give_slot(id, service, &entry)?;
        let role = spec.role;
        let name = spec.name.clone();
        self.backends.insert(
            name.clone(),
            BackendState {
                spec,
                id,
                service: service.to_string(),
                entry,
            },
        );
        let svc = self.services.get_mut(service).expect("checked above");
        svc.backends.push(name.clone());
        match role {
            Role::Pool => {}
            Role::Fallback => svc.value.fallback = id,
            Role::Maintenance => svc.value.maintenance = id,
        }
        if let Err(e) = self.rebuild(service) {
            self.remove_backend(&name).ok();
            return Err(e);
        }
        Ok(id)
    }

    /// Writes the entry of a backend of `service` given slot `id`. The slot's last holder (a
    /// removed backend) may still have flows whose packets read it: the new fields go in under
    /// admin `NONE` (such a packet stops at the admin byte), then the admin state alone. The
    /// same backend taking its slot back (a restarted daemon adopting its pinned maps) keeps it
    /// in place, and if it is no longer eligible, its admin state and health wait for the flip
    /// like any backend leaving a table (the pinned table may hold it).
    fn give_slot(&mut self, id: u32, service: &str, entry: &Backend) -> Result<()> {
        self.pending.remove(&id);
        let cur = self.dp.backend(id)?;
        if cur.admin != admin::NONE && cur.gen == entry.gen && cur.addr == entry.addr {
            if cur.eligible() && !entry.eligible() {
                let now = Backend {
                    admin: cur.admin,
                    health: cur.health,
                    ..*entry
                };
                self.dp.put_backend(id, &now)?;
                self.pending.insert(id, (service.to_string(), *entry));
                return Ok(());
            }
            return Ok(self.dp.put_backend(id, entry)?);
        }
        if cur.admin != admin::NONE {
            // Held by a backend this balancer does not know (pinned maps of an earlier
            // config): vacated first, its packets waited out.
            self.dp.put_backend(id, &vacated(&cur))?;
            self.unsettled = true;
            self.settle();
        }
        self.dp.put_backend(id, &vacated(entry))?;
        Ok(self.dp.put_backend(id, entry)?)
    }

    /// Takes a backend out of its service's table, then (a grace period after the flip, or
    /// after `commit` in a batch) empties its slot and frees its id.
    pub fn remove_backend(&mut self, name: &str) -> Result<()> {
        let be = self
            .backends
            .remove(name)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))?;
        if let Some(svc) = self.services.get_mut(&be.service) {
            svc.backends.retain(|b| b != name);
            if svc.value.fallback == be.id {
                svc.value.fallback = BACKEND_NONE;
            }
            if svc.value.maintenance == be.id {
                svc.value.maintenance = BACKEND_NONE;
            }
        }
        // The id stays taken until the entry is written: no live table may point at a freed
        // id, nor a packet that read an old table find another backend there.
        self.pending
            .insert(be.id, (be.service.clone(), vacated(&be.entry)));
        if self.services.contains_key(&be.service) {
            self.rebuild(&be.service)
        } else {
            self.settle();
            let gone = BTreeSet::new();
            self.flush_pending(&gone)
        }
    }

    /// Drops the ids kept for names of an earlier run: after the first apply they are either
    /// taken or stale, and a backend re-added later must not inherit an old generation.
    pub fn clear_reservations(&mut self) {
        self.reserved_services.clear();
        self.reserved_backends.clear();
    }

    /// Sets a backend's Maglev weight (0 keeps it out of the table).
    pub fn set_weight(&mut self, name: &str, weight: u32) -> Result<()> {
        let be = self
            .backends
            .get_mut(name)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))?;
        be.spec.weight = weight;
        let service = be.service.clone();
        self.rebuild(&service)
    }

    /// Sets a backend's admin state. Leaving the table is applied table first, and the entry
    /// only once no packet that read the old table can still be running (no new flow is pinned
    /// to a backend that has just been rejected); joining it, entry first. Returns a grace
    /// period after the flip; the flip itself is not delayed.
    pub fn set_admin(&mut self, name: &str, state: AdminState) -> Result<()> {
        self.update_backend(name, |e| e.admin = state.code())
    }

    /// Sets a backend's health, as its checks found it.
    pub fn set_health(&mut self, name: &str, health: Health) -> Result<()> {
        self.update_backend(name, |e| e.health = health.code())
    }

    fn update_backend(&mut self, name: &str, change: impl FnOnce(&mut Backend)) -> Result<()> {
        let be = self
            .backends
            .get_mut(name)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))?;
        let before = be.entry;
        change(&mut be.entry);
        let (id, entry, service) = (be.id, be.entry, be.service.clone());
        if entry == before {
            return Ok(());
        }
        if entry.eligible() && !before.eligible() {
            // Joining: the entry first (a packet that reads the new table finds it ready).
            self.pending.remove(&id);
            self.dp.put_backend(id, &entry)?;
            self.rebuild(&service)
        } else if before.eligible() || self.batch.is_some() {
            // Leaving (or, in a batch, perhaps still in the live table): the entry once the
            // table without it is live and its last readers are gone.
            self.pending.insert(id, (service.clone(), entry));
            self.rebuild(&service)
        } else {
            // Out of every table already (drain to maint, down while drained): the table
            // does not change.
            self.pending.remove(&id);
            Ok(self.dp.put_backend(id, &entry)?)
        }
    }

    /// Turns a service's maintenance on (every new flow to its maintenance backend) or off.
    pub fn set_maintenance(&mut self, service: &str, on: bool) -> Result<()> {
        let svc = self
            .services
            .get_mut(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        if on && svc.value.maintenance == BACKEND_NONE {
            return Err(BalancerError::NoMaintenanceBackend(service.to_string()));
        }
        let mut value = svc.value;
        if on {
            value.flags |= svc_flags::MAINTENANCE;
        } else {
            value.flags &= !svc_flags::MAINTENANCE;
        }
        if value == svc.value {
            return Ok(());
        }
        // Published with a table flip: which backends take new flows changes with it.
        svc.value = value;
        self.rebuild(service)
    }

    /// Removes a service and its backends; their flows are treated as rejected.
    pub fn remove_service(&mut self, service: &str) -> Result<()> {
        let svc = self
            .services
            .remove(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        if let Some(dirty) = &mut self.batch {
            dirty.remove(service);
        }
        self.settle();
        self.unsettled = true;
        self.dp.remove_service(&svc.key)?;
        // Its backends' slots once no packet can be reading the service's tables.
        self.settle();
        for name in &svc.backends {
            if let Some(be) = self.backends.remove(name) {
                self.pending
                    .insert(be.id, (service.to_string(), vacated(&be.entry)));
            }
        }
        self.flush_pending(&BTreeSet::new())?;
        self.sync_globals()
    }

    /// Active flows per backend name: not ended and seen within the service's idle timeout.
    pub fn active_flows(&self) -> Result<BTreeMap<String, u64>> {
        let idle: std::collections::HashMap<u32, u64> = self
            .backends
            .values()
            .map(|b| {
                let t = self
                    .services
                    .get(&b.service)
                    .map_or(DEFAULT_IDLE_TIMEOUT_S, |s| s.spec.idle_timeout_s);
                (b.id, t as u64 * 1_000_000_000)
            })
            .collect();
        let by_id = self
            .dp
            .active_flows(|id| idle.get(&id).copied().unwrap_or(0))?;
        Ok(self
            .backends
            .iter()
            .map(|(n, b)| (n.clone(), by_id.get(&b.id).copied().unwrap_or(0)))
            .collect())
    }

    /// The id of a backend.
    pub fn backend_id(&self, name: &str) -> Result<u32> {
        self.backends
            .get(name)
            .map(|b| b.id)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))
    }

    /// The name of the backend with id `id`.
    pub fn backend_name(&self, id: u32) -> Option<String> {
        self.backends
            .values()
            .find(|b| b.id == id)
            .map(|b| b.spec.name.clone())
    }

    /// The id of a service.
    pub fn service_id(&self, name: &str) -> Result<u32> {
        self.services
            .get(name)
            .map(|s| s.id)
            .ok_or_else(|| BalancerError::UnknownService(name.to_string()))
    }

    /// Counters of a backend, summed over CPUs.
    pub fn backend_counters(&self, name: &str) -> Result<Counters> {
        Ok(self.dp.backend_counters(self.backend_id(name)?)?)
    }

    /// Counters of a service, summed over CPUs.
    pub fn service_counters(&self, name: &str) -> Result<Counters> {
        Ok(self.dp.service_counters(self.service_id(name)?)?)
    }

    /// The live Maglev table of a service, as backend ids.
    pub fn live_table(&self, service: &str) -> Result<Vec<u32>> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        Ok(self
            .dp
            .read_table(svc.id, svc.value.table_slot, svc.value.maglev_size)?)
    }

    /// The pool backends of a service that are ready, up and weighted, in `group` (`None`:
    /// every group).
    fn eligible_members<'a>(
        &'a self,
        svc: &'a ServiceState,
        group: Option<&'a str>,
    ) -> impl Iterator<Item = &'a BackendState> + 'a {
        svc.backends
            .iter()
            .filter_map(|n| self.backends.get(n))
            .filter(move |b| {
                b.spec.role == Role::Pool
                    && b.entry.eligible()
                    && b.spec.weight > 0
                    && (group.is_none() || b.spec.group.as_deref() == group)
            })
    }

    /// The backends a service's Maglev table holds: eligible, in the active group.
    fn table_members<'a>(
        &'a self,
        svc: &'a ServiceState,
    ) -> impl Iterator<Item = &'a BackendState> + 'a {
        self.eligible_members(svc, svc.active_group.as_deref())
    }

    /// Backends of `group` in `service` that would be in its table were the group active.
    pub fn eligible_in_group(&self, service: &str, group: Option<&str>) -> Result<usize> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        Ok(self.eligible_members(svc, group).count())
    }

    /// Changes a service's settings in place (idle timeout, what to do with no backend,
    /// Maglev size): its flows, backends and their health are untouched. The address, port and
    /// protocol must stay the same (another address is another service).
    pub fn update_service(&mut self, mut spec: ServiceSpec) -> Result<()> {
        let svc = self
            .services
            .get_mut(&spec.name)
            .ok_or_else(|| BalancerError::UnknownService(spec.name.clone()))?;
        assert!(
            svc.spec.vip == spec.vip && svc.spec.port == spec.port && svc.spec.proto == spec.proto,
            "update_service cannot move a service to another address"
        );
        if !maglev::is_prime(spec.maglev_size) || spec.maglev_size > steer_common::MAGLEV_MAX_SIZE {
            return Err(MaglevError::BadSize(spec.maglev_size).into());
        }
        assert!(
            svc.spec.mode == spec.mode,
            "update_service cannot change the forwarding mode (flows cannot follow)"
        );
        // Given no slots, the pool's addresses keep the ones they have.
        if spec.mode == Mode::Nat && spec.nat.slots.is_empty() {
            spec.nat.slots = pool_slots(svc.spec.nat.slots(), &spec.nat.pool);
        }
        check_nat(&spec)?;
        if svc.spec == spec {
            return Ok(());
        }
        let id = svc.id;
        // A changed pool is written before the entry that names it is published.
        if spec.pool() != svc.spec.pool() {
            if let Some(pool) = spec.pool() {
                self.dp.put_pool(id, &pool)?;
            }
        }
        let svc = self.services.get_mut(&spec.name).expect("looked up above");
        spec.apply_to(&mut svc.value);
        svc.spec = spec;
        let name = svc.spec.name.clone();
        // The table is rebuilt at the new size (if it changed) and published with the settings.
        self.rebuild(&name)
    }

    /// Changes a backend's MAC, weight, role or group in place: it keeps its id, generation,
    /// admin state, health and flows. Its address must stay the same (another address is
    /// another server).
    pub fn update_backend_spec(&mut self, spec: BackendSpec) -> Result<()> {
        let be = self
            .backends
            .get_mut(&spec.name)
            .ok_or_else(|| BalancerError::UnknownBackend(spec.name.clone()))?;
        assert_eq!(
            be.spec.addr, spec.addr,
            "update_backend_spec cannot readdress"
        );
        assert_eq!(
            be.spec.port, spec.port,
            "update_backend_spec cannot change the port"
        );
        if be.spec.weight == spec.weight
            && be.spec.group == spec.group
            && be.spec.role == spec.role
            && be.spec.mac == spec.mac
            && be.spec.snat == spec.snat
        {
            return Ok(());
        }
        let (id, service) = (be.id, be.service.clone());
        let old_role = be.spec.role;
        be.spec.weight = spec.weight;
        be.spec.group = spec.group;
        be.spec.role = spec.role;
        let mac_changed = be.spec.mac != spec.mac || be.spec.snat != spec.snat;
        let snat = spec.snat.map_or([0; 16], |a| addr_bytes(a).0);
        be.spec.mac = spec.mac;
        be.spec.snat = spec.snat;
        be.entry.mac = spec.mac;
        be.entry.snat = snat;
        let entry = be.entry;
        if mac_changed {
            // Only the MAC and the LB's facing address: an admin state or health waiting in
            // `pending` stays there.
            match self.pending.get_mut(&id) {
                Some((_, waiting)) => {
                    waiting.mac = spec.mac;
                    waiting.snat = snat;
                    let mut cur = self.dp.backend(id)?;
                    cur.mac = spec.mac;
                    cur.snat = snat;
                    self.dp.put_backend(id, &cur)?;
                }
                None => self.dp.put_backend(id, &entry)?,
            }
        }
        if old_role != spec.role {
            let svc = self.services.get_mut(&service).expect("backend's service");
            if svc.value.fallback == id {
                svc.value.fallback = BACKEND_NONE;
            }
            if svc.value.maintenance == id {
                svc.value.maintenance = BACKEND_NONE;
            }
            match spec.role {
                Role::Pool => {}
                Role::Fallback => svc.value.fallback = id,
                Role::Maintenance => svc.value.maintenance = id,
            }
            if svc.value.maintenance == BACKEND_NONE {
                svc.value.flags &= !svc_flags::MAINTENANCE;
            }
        }
        self.rebuild(&service)
    }

    /// For the flow scanner: per backend id, the generation that counts and the idle timeout
    /// of its service in nanoseconds.
    pub fn scan_inputs(&self) -> std::collections::HashMap<u32, (u16, u64)> {
        self.backends
            .values()
            .map(|b| {
                let t = self
                    .services
                    .get(&b.service)
                    .map_or(DEFAULT_IDLE_TIMEOUT_S, |s| s.spec.idle_timeout_s);
                (b.id, (b.entry.gen, t as u64 * 1_000_000_000))
            })
            .collect()
    }

    /// The spec of a service, if there is one of that name.
    pub fn service_spec(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.get(name).map(|s| &s.spec)
    }

    /// The spec a backend was added (or last updated) with.
    pub fn backend_spec(&self, name: &str) -> Option<&BackendSpec> {
        self.backends.get(name).map(|b| &b.spec)
    }

    /// Rebuilds a service's table from its eligible backends, writes it to the idle slot and
    /// makes it live; then, a grace period later, writes the entries of the backends that left
    /// it. In a batch, only notes the service for `commit`.
    fn rebuild(&mut self, service: &str) -> Result<()> {
        if let Some(dirty) = &mut self.batch {
            dirty.insert(service.to_string());
            return Ok(());
        }
        let r = self.publish(service);
        self.settle();
        r?;
        self.flush_pending(&BTreeSet::from([service.to_string()]))
    }

    /// Builds the service's table now, writes it to the idle slot and makes it live. The idle
    /// slot was left by the service's last flip, and the services-map element the write frees
    /// may be what packets read: both wait for a grace period since the last write (`settle`).
    fn publish(&mut self, service: &str) -> Result<()> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        let entries: Vec<maglev::Entry<'_>> = self
            .table_members(svc)
            .map(|b| maglev::Entry {
                name: &b.spec.name,
                weight: b.spec.weight,
                id: b.id,
            })
            .collect();
        let table = maglev::build(svc.spec.maglev_size, &entries)?;
        let digest = maglev::digest(&table, &entries);
        // Which backends take new flows once this table is live.
        let members: BTreeSet<u32> = entries.iter().map(|e| e.id).collect();
        let maintenance = svc.value.flags & svc_flags::MAINTENANCE != 0;
        let takes: Vec<(String, u8)> = svc
            .backends
            .iter()
            .filter_map(|n| self.backends.get(n))
            .map(|b| {
                let t = if maintenance {
                    b.id == svc.value.maintenance
                } else {
                    members.contains(&b.id) || (members.is_empty() && b.id == svc.value.fallback)
                };
                (b.spec.name.clone(), t as u8)
            })
            .collect();
        let (id, key) = (svc.id, svc.key);
        let mut value = svc.value;
        value.table_slot ^= 1;
        value.maglev_size = svc.spec.maglev_size;
        for (name, t) in takes {
            let be = self.backends.get_mut(&name).expect("listed above");
            if be.entry.takes_new == t {
                continue;
            }
            be.entry.takes_new = t;
            let (bid, entry) = (be.id, be.entry);
            if let Some(p) = self.pending.get_mut(&bid) {
                p.1.takes_new = t;
            } else if t == 1 {
                // Joining: before the flip.
                self.dp.put_backend(bid, &entry)?;
            } else {
                // Leaving: after the flip and a grace period.
                self.pending.insert(bid, (service.to_string(), entry));
            }
        }
        self.settle();
        self.dp.write_table(id, value.table_slot, &table)?;
        self.unsettled = true;
        self.dp.put_service(&key, &value)?;
        let svc = self.services.get_mut(service).expect("looked up above");
        svc.value = value;
        svc.digest = digest;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn pool_addresses_keep_their_slots_across_a_reload() {
        let old = ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
        // Reordered in the config: nothing moves.
        assert_eq!(
            pool_slots(&old, &ips(&["10.1.0.3", "10.1.0.1", "10.1.0.2"])),
            old
        );
        // Added: in a free slot.
        assert_eq!(
            pool_slots(
                &old,
                &ips(&["10.1.0.9", "10.1.0.1", "10.1.0.2", "10.1.0.3"])
            ),
            ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.9"])
        );
        // Removed from the middle: it stays in its slot (retired), the others stay in theirs.
        assert_eq!(pool_slots(&old, &ips(&["10.1.0.3", "10.1.0.1"])), old);
        // Then an address added takes a free slot, not the retired one.
        assert_eq!(
            pool_slots(&old, &ips(&["10.1.0.1", "10.1.0.3", "10.1.0.9"])),
            ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.9"])
        );
        assert_eq!(pool_slots(&[], &old), old);
        // Every slot taken: a new address takes the first retired one.
        let full = ips(&[
            "10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6", "10.1.0.7",
            "10.1.0.8",
        ]);
        let mut pool = full.clone();
        pool.retain(|a| *a != full[2] && *a != full[5]);
        pool.push("10.1.0.9".parse().unwrap());
        let mut want = full.clone();
        want[2] = "10.1.0.9".parse().unwrap();
        assert_eq!(pool_slots(&full, &pool), want);
    }

    #[test]
    fn a_retired_slot_keeps_its_address_and_takes_no_new_flow() {
        let mut nat = ServiceSpec::tcp("api", "10.0.0.1".parse().unwrap(), 80).nat();
        nat.nat.slots = ips(&["10.1.0.1", "10.1.0.2", "10.1.0.3"]);
        nat.nat.pool = ips(&["10.1.0.3", "10.1.0.1"]);
        assert!(check_nat(&nat).is_ok());
        let p = nat.pool().unwrap();
        assert_eq!((p.count, p.slots), (2, 3));
        assert_eq!(&p.active[..2], &[0, 2], "new flows take slots 0 and 2");
        assert_eq!(
            p.addrs[1][..4],
            [10, 1, 0, 2],
            "the retired address keeps slot 1"
        );
        nat.nat.pool.push("10.1.0.4".parse().unwrap());
        assert!(
            check_nat(&nat).is_err(),
            "a pool address with no slot is refused"
        );
    }

    #[test]
    fn dsr_services_keep_their_entry_as_before_nat() {
        let mut v = Service {
            id: 3,
            flags: svc_flags::MAINTENANCE,
            maglev_size: 0,
            table_slot: 0,
            fallback: BACKEND_NONE,
            maintenance: BACKEND_NONE,
            idle_timeout_s: 0,
            mode: 0,
            nat_port_lo: 0,
            nat_port_hi: 0,
            error_limit: 0,
            _pad: 0,
            syn_timeout_ms: 0,
            _pad2: 0,
        };
        let dsr = ServiceSpec {
            no_backend: NoBackend::Drop,
            ..ServiceSpec::tcp("web", "10.0.0.1".parse().unwrap(), 80)
        };
        dsr.apply_to(&mut v);
        assert_eq!(
            (
                v.flags,
                v.mode,
                v.nat_port_lo,
                v.error_limit,
                v.syn_timeout_ms
            ),
            (
                svc_flags::MAINTENANCE | svc_flags::NO_BACKEND_DROP,
                0,
                0,
                0,
                0
            )
        );
        let mut nat = ServiceSpec::tcp("web", "10.0.0.1".parse().unwrap(), 80).nat();
        nat.apply_to(&mut v);
        assert_eq!(
            v.flags,
            svc_flags::MAINTENANCE | svc_flags::OBSERVE | svc_flags::RECOVER,
            "maintenance is not the spec's to clear; no pool, no NAT_POOL"
        );
        assert_eq!(
            (
                v.mode,
                v.nat_port_lo,
                v.nat_port_hi,
                v.error_limit,
                v.syn_timeout_ms
            ),
            (steer_common::MODE_NAT, 10_000, 32_767, 3, 1000)
        );
        assert_eq!(nat.pool(), None);
        nat.nat = NatSpec {
            pool: ips(&["10.1.0.1", "10.1.0.2"]),
            observe: false,
            recover: false,
            ..NatSpec::default()
        };
        nat.apply_to(&mut v);
        assert_eq!(v.flags, svc_flags::MAINTENANCE | svc_flags::NAT_POOL);
        let p = nat.pool().unwrap();
        assert_eq!(p.count, 2);
        assert_eq!(p.addrs[1][..4], [10, 1, 0, 2]);
        assert!(check_nat(&nat).is_ok());
        nat.nat.pool = ips(&["fd00::1"]);
        assert!(check_nat(&nat).is_err(), "a pool of the other family");
    }
}
