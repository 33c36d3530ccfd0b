//! What `status`, `show flows` and the metrics read: the balancer's state, check results, and
//! active-flow counts from a background scan of the connection table — never a scan under
//! the daemon's lock on every request (at 1M flows a scan takes about a third of a second).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use steer_common::flow_flags;

use super::Core;
use crate::{
    datapath::{self, FlowReader, Occupancy},
    model::Proto,
    proto::{self, BackendStatus, FlowInfo, FlowScan, ServiceStatus},
};

/// The last completed scan.
#[derive(Default)]
struct Scan {
    seq: u64,
    at: Option<Instant>,
    took: Duration,
    flows: u64,
    occupancy: Occupancy,
    last_full_seq: u64,
    /// Active flows per backend id (generation checked).
    by_id: HashMap<u32, u64>,
    error: Option<String>,
}

/// Counts active flows per backend in the background, on demand: while someone asks (a
/// status poll, a scrape, a `drain --wait`) and at most half the time (it rests as long as
/// the last scan took, and at least `REST`).
pub struct FlowCounts {
    scan: Mutex<Scan>,
    /// Scans started so far; the next to start is `started + 1`.
    started: AtomicU64,
    /// Last time someone asked for counts, as ms since `epoch`.
    wanted_ms: AtomicU64,
    epoch: Instant,
    /// Capacity of the established and transient tables.
    capacity: (u32, u32),
    wake: tokio::sync::Notify,
    /// A change is waiting to be seen (a drain): the next scan starts without its rest.
    urgent: tokio::sync::Notify,
}

const REST: Duration = Duration::from_millis(50);
/// Scans go on this long after the last request for counts.
const KEEP_SCANNING: Duration = Duration::from_secs(5);
/// With nobody asking, counts are refreshed this often (for metrics between scrapes).
const IDLE_REFRESH: Duration = Duration::from_secs(30);

impl FlowCounts {
    pub fn new(capacity: (u32, u32)) -> Arc<Self> {
        Arc::new(FlowCounts {
            capacity,
            scan: Mutex::new(Scan::default()),
            started: AtomicU64::new(0),
            wanted_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            wake: tokio::sync::Notify::new(),
            urgent: tokio::sync::Notify::new(),
        })
    }

    /// Someone wants fresh counts: keep scanning for a while.
    pub fn want(&self) {
        self.wanted_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// The number of the first scan that starts after now: it sees every change made so far.
    pub fn next_scan(&self) -> u64 {
        self.want();
        self.urgent.notify_one();
        self.started.load(Ordering::SeqCst) + 1
    }

    fn wanted_recently(&self) -> bool {
        let w = self.wanted_ms.load(Ordering::Relaxed);
        w != 0 && self.epoch.elapsed().as_millis() as u64 <= w + KEEP_SCANNING.as_millis() as u64
    }

    /// The scan's summary, and its counts by backend id (`None` if unknown).
    fn read(&self) -> (FlowScan, Option<HashMap<u32, u64>>) {
        let s = self.scan.lock().expect("scan lock");
        let summary = FlowScan {
            seq: s.seq,
            age_ms: s.at.map_or(0, |a| a.elapsed().as_millis() as u64),
            took_ms: s.took.as_millis() as u64,
            flows: s.flows,
            established: s.occupancy.established,
            capacity: self.capacity.0 as u64,
            transient: s.occupancy.transient,
            transient_capacity: self.capacity.1 as u64,
            attempts: s.occupancy.attempts,
            attempts_capacity: 1 << steer_common::ATTEMPTS_LOG2,
            last_full_seq: s.last_full_seq,
            error: s.error.clone(),
        };
        let counts = (s.seq > 0 && s.error.is_none()).then(|| s.by_id.clone());
        (summary, counts)
    }

    /// Runs scans until the task is aborted. `inputs` gives, per backend id, the generation
    /// that counts and the idle timeout in ns.
    pub async fn run(
        self: Arc<Self>,
        reader: Arc<FlowReader>,
        inputs: impl Fn() -> HashMap<u32, (u16, u64)> + Send + Sync + 'static,
    ) {
        let inputs = Arc::new(inputs);
        loop {
            let idle_for = self
                .scan
                .lock()
                .expect("scan lock")
                .at
                .map_or(Duration::MAX, |a| a.elapsed());
            if !self.wanted_recently() && idle_for < IDLE_REFRESH {
                let _ = tokio::time::timeout(IDLE_REFRESH - idle_for, self.wake.notified()).await;
                continue;
            }
            let seq = self.started.fetch_add(1, Ordering::SeqCst) + 1;
            let (r, i) = (reader.clone(), inputs.clone());
            let start = Instant::now();
            let result = tokio::task::spawn_blocking(move || count(&r, &i()))
                .await
                .unwrap_or_else(|e| Err(format!("scan task: {e}")));
            let took = start.elapsed();
            {
                let mut s = self.scan.lock().expect("scan lock");
                s.seq = seq;
                s.at = Some(Instant::now());
                s.took = took;
                match result {
                    Ok((by_id, occ, live)) => {
                        s.by_id = by_id;
                        s.flows = occ.established + occ.transient + occ.attempts;
                        s.occupancy = occ;
                        s.error = None;
                        if live * 100 >= self.capacity.0 as u64 * 95 {
                            s.last_full_seq = seq;
                        }
                    }
                    Err(e) => {
                        s.by_id.clear();
                        s.error = Some(e);
                    }
                }
            }
            // Rest as long as the scan took (at most half the time scanning), unless a change
            // waits to be counted: a deploy hook's drain should not wait for a rest.
            tokio::select! {
                _ = tokio::time::sleep(took.max(REST)) => {}
                _ = self.urgent.notified() => {}
            }
        }
    }
}

/// What a backend does now (`BackendStatus::state`).
fn state(
    b: &crate::balancer::BackendInfo,
    svc: Option<&crate::balancer::ServiceInfo>,
) -> &'static str {
    use crate::model::{AdminState, Health, Role};
    match (b.admin, b.health) {
        (AdminState::Reject, _) => "rejecting",
        (AdminState::Maint, _) => "maint",
        (AdminState::Drain, _) => "draining",
        (AdminState::Ready, Health::Down) => "down",
        (AdminState::Ready, Health::Unknown) => "unchecked",
        (AdminState::Ready, Health::Up) => {
            let Some(svc) = svc else { return "up" };
            match b.role {
                Role::Pool if svc.maintenance => "standby",
                Role::Pool
                    if svc
                        .active_group
                        .as_ref()
                        .is_some_and(|g| b.group.as_ref() != Some(g)) =>
                {
                    "standby"
                }
                Role::Pool if b.weight == 0 => "weight 0",
                Role::Pool => "up",
                Role::Fallback if !svc.maintenance && svc.eligible == 0 => "serving",
                Role::Maintenance if svc.maintenance => "serving",
                Role::Fallback | Role::Maintenance => "standby",
            }
        }
    }
}

fn rate(r: &super::history::Rate) -> proto::Rate {
    proto::Rate {
        packets_per_s: r.packets_per_s,
        new_flows_per_s: r.new_flows_per_s,
    }
}

/// One pass over the table: flows not ended, seen within their service's idle timeout, and
/// pinned to the current holder of their backend id.
fn count(
    reader: &FlowReader,
    inputs: &HashMap<u32, (u16, u64)>,
) -> Result<(HashMap<u32, u64>, Occupancy, u64), String> {
    let now = datapath::monotonic_ns();
    let mut by_id: HashMap<u32, u64> = HashMap::new();
    // Established entries still alive (not ended, seen within their idle timeout), whoever
    // holds their backend id: an LRU table is full in the steady state, but it evicts live
    // connections only when these fill it.
    let mut live_established = 0u64;
    // The pass is also a round of the established table's presence filter.
    let n = reader
        .census(|established, _, f| {
            let Some((gen, idle)) = inputs.get(&f.backend) else {
                return;
            };
            if !datapath::is_active(f, now, *idle) {
                return;
            }
            if established {
                live_established += 1;
            }
            if *gen == f.gen {
                *by_id.entry(f.backend).or_default() += 1;
            }
        })
        .map_err(|e| e.to_string())?;
    Ok((by_id, n, live_established))
}

impl Core {
    pub(super) fn status(&self, counts: &FlowCounts) -> proto::Status {
        let (flow_scan, by_id) = counts.read();
        let mut datapath = BTreeMap::new();
        if let Ok(o) = self.bal.datapath().outcomes() {
            for (i, n) in steer_common::outcome::NAMES.iter().enumerate() {
                datapath.insert(n.to_string(), o[i]);
            }
            for (i, n) in steer_common::event::NAMES.iter().enumerate() {
                datapath.insert(n.to_string(), o[steer_common::outcome::COUNT as usize + i]);
            }
        }
        let observing: std::collections::BTreeSet<String> = self
            .bal
            .service_infos()
            .into_iter()
            .filter(|s| s.nat.as_ref().is_some_and(|n| n.observe))
            .map(|s| s.name)
            .collect();
        let observed = self.bal.datapath().observed();
        let services: BTreeMap<String, crate::balancer::ServiceInfo> = self
            .bal
            .service_infos()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let history = self.history.lock().expect("history lock");
        let config_weights: BTreeMap<&String, u32> = self
            .cfg
            .backends()
            .map(|(_, b)| (b.name.get_ref(), b.weight))
            .collect();
        let mut st = proto::Status {
            config: self.cfg.path.display().to_string(),
            services: self
                .bal
                .service_infos()
                .into_iter()
                .map(|s| ServiceStatus {
                    rate: None,
                    counters: self
                        .bal
                        .service_counters(&s.name)
                        .map(Into::into)
                        .unwrap_or_default(),
                    name: s.name,
                    vip: s.vip.to_string(),
                    port: s.port,
                    protocol: s.proto,
                    mode: s.mode,
                    nat: s.nat.map(|n| proto::NatStatus {
                        snat: n.pool.iter().map(|a| a.to_string()).collect(),
                        snat_retired: n
                            .slots()
                            .iter()
                            .filter(|a| !n.pool.contains(a))
                            .map(|a| a.to_string())
                            .collect(),
                        snat_ports: format!("{}-{}", n.port_lo, n.port_hi),
                        observe: n.observe,
                        error_limit: n.error_limit,
                        syn_timeout_ms: n.syn_timeout_ms,
                        recover: n.recover,
                    }),
                    maintenance: s.maintenance,
                    eligible: s.eligible,
                    active_group: s.active_group,
                    table_digest: format!("{:016x}", s.table_digest),
                    backends: s.backends,
                })
                .collect(),
            backends: self
                .bal
                .backend_infos()
                .into_iter()
                .map(|b| {
                    let chk = self.checks.get(&b.name).cloned().unwrap_or_default();
                    let change = history.change(&b.name).unwrap_or_default();
                    BackendStatus {
                        state: state(&b, services.get(&b.service)).into(),
                        rate: None,
                        check_failures: chk.failures,
                        checks_not_run: chk.not_run,
                        went_down: change.went_down,
                        went_up: change.went_up,
                        passive_downs: chk.passive_downs,
                        last_change: change.what,
                        last_change_ms: change.ago.as_millis() as u64,
                        counters: self
                            .bal
                            .backend_counters(&b.name)
                            .map(Into::into)
                            .unwrap_or_default(),
                        active_flows: by_id.as_ref().map(|m| m.get(&b.id).copied().unwrap_or(0)),
                        config_weight: config_weights.get(&b.name).copied().unwrap_or(b.weight),
                        group: b.group,
                        observed_fails: observing
                            .contains(&b.service)
                            .then(|| observed.fails(b.id)),
                        passive: chk.passive.clone(),
                        service: b.service,
                        address: b.addr.to_string(),
                        port: b.port,
                        snat: b.snat.map(|a| a.to_string()),
                        role: b.role,
                        admin: b.admin,
                        health: b.health,
                        check: if !chk.checked {
                            "no checks".into()
                        } else if chk.last.is_empty() {
                            "not checked yet".into()
                        } else {
                            chk.last
                        },
                        check_ms: chk.latency.map(|d| d.as_secs_f64() * 1000.0),
                        checks_run: chk.runs,
                        weight: b.weight,
                        name: b.name,
                    }
                })
                .collect(),
            flow_scan,
            datapath,
            cluster: self.cluster.as_ref().map(|c| proto::ClusterStatus {
                host: c.host().to_string(),
                revision: c.revision(),
                peers: c
                    .peers()
                    .into_iter()
                    .map(|(host, r, age)| proto::PeerStatus {
                        host,
                        revision: r.revision,
                        scan: r.scan,
                        age_ms: age.as_millis() as u64,
                        active: r.active,
                        up: r.up,
                    })
                    .collect(),
            }),
            rate_window_ms: None,
        };
        drop(history);
        self.fill_rates(&mut st);
        st
    }

    /// Rates since an earlier read, from the counters the status just read (each per-CPU
    /// block is read once).
    fn fill_rates(&self, st: &mut proto::Status) {
        let key = |kind: &str, name: &str| format!("{kind} {name}");
        let counts = st
            .services
            .iter()
            .map(|s| (key("service", &s.name), &s.counters))
            .chain(
                st.backends
                    .iter()
                    .map(|b| (key("backend", &b.name), &b.counters)),
            )
            .map(|(k, c)| (k, (c.packets, c.new_flows)))
            .collect();
        let (rates, window) = self.history.lock().expect("history lock").rates(counts);
        for s in &mut st.services {
            s.rate = rates.get(&key("service", &s.name)).map(rate);
        }
        for b in &mut st.backends {
            b.rate = rates.get(&key("backend", &b.name)).map(rate);
        }
        st.rate_window_ms = window.map(|w| w.as_millis() as u64);
    }

    /// What listing flows needs, taken under the lock; the listing itself runs outside it.
    pub(super) fn flow_view(&self) -> FlowView {
        FlowView {
            names: self
                .bal
                .backend_infos()
                .iter()
                .map(|b| (b.id, (b.name.clone(), b.gen)))
                .collect(),
            idle: self.bal.scan_inputs(),
            reader: self.reader.clone(),
        }
    }
}

pub(super) struct FlowView {
    names: BTreeMap<u32, (String, u16)>,
    idle: HashMap<u32, (u16, u64)>,
    reader: Arc<FlowReader>,
}

impl FlowView {
    /// Up to `limit` flows of the connection table, each with why it still counts (or not).
    pub(super) fn list(&self, limit: usize) -> Result<Vec<FlowInfo>, String> {
        let (names, idle) = (&self.names, &self.idle);
        let now = datapath::monotonic_ns();
        let mut out = Vec::new();
        self.reader
            .for_each_flow(|k, f| {
                if out.len() >= limit {
                    return;
                }
                let ip = |a: &[u8; 16], fam: u8| -> IpAddr {
                    if fam == steer_common::FAMILY_V4 {
                        IpAddr::from([a[0], a[1], a[2], a[3]])
                    } else {
                        IpAddr::from(*a)
                    }
                };
                let idle_ns = now.saturating_sub(f.last_seen_ns);
                let (backend, current) = match names.get(&f.backend) {
                    Some((n, gen)) => (n.clone(), *gen == f.gen),
                    None => (format!("#{}", f.backend), false),
                };
                let state = if f.flags & flow_flags::RST != 0 {
                    "reset (ended)".to_string()
                } else if f.flags & flow_flags::FIN != 0 {
                    "fin (ended)".to_string()
                } else if !current {
                    "of a removed backend (ended)".to_string()
                } else if idle.get(&f.backend).is_some_and(|(_, t)| idle_ns > *t) {
                    "idle past the timeout (ended)".to_string()
                } else if f.flags & flow_flags::SYN_ONLY != 0
                    && idle_ns > steer_common::SYN_ACTIVE_NS
                {
                    "syn: attempt over, no retry for 3 s (ended)".to_string()
                } else if f.flags & flow_flags::SYN_ONLY != 0 {
                    "syn: connecting (counts)".to_string()
                } else {
                    "established (counts)".to_string()
                };
                out.push(FlowInfo {
                    client: SocketAddr::new(ip(&k.src, k.family), u16::from_be(k.sport_be))
                        .to_string(),
                    vip: SocketAddr::new(ip(&k.dst, k.family), u16::from_be(k.dport_be))
                        .to_string(),
                    protocol: if k.proto == steer_common::PROTO_TCP {
                        Proto::Tcp
                    } else {
                        Proto::Udp
                    },
                    backend,
                    state,
                    idle_ms: idle_ns / 1_000_000,
                });
            })
            .map_err(|e| e.to_string())?;
        Ok(out)
    }
}
