//! `steer-ctl daemon`: takes the single-instance lock, checks and builds everything a config
//! needs, loads (or adopts) the datapath, publishes the config whole, then runs the health
//! checks, the flow scanner, the control socket and the metrics endpoint until told to stop.
//!
//! Rooms: `os` (bpffs, lock, limits, neighbours), `reconcile` (config + intent → datapath, in
//! place, all or nothing), `control` (the socket), `status` (status, flows, the flow
//! scanner), `health` (check supervision). This file owns the tasks and the run loop.
//!
//! On SIGTERM/SIGINT it exits leaving the XDP program and maps pinned: traffic goes on with
//! the last state until the next daemon adopts them.

mod announce;
mod control;
mod health;
mod history;
mod nat;
mod nexthop;
mod os;
pub mod reconcile;
mod status;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::programs::XdpMode;
use tokio::{sync::mpsc, task::JoinSet};
use tracing::{error, info, warn};

use crate::{
    balancer::Balancer,
    checks::Report,
    cluster::EtcdStore,
    config::{Config, XdpModeCfg},
    datapath::{self, Attached, Datapath, FlowReader, Options},
    exit,
    model::{AdminState, Health},
    proto::{ErrorKind, Request, Response},
    store::{FileStore, Intent, IntentStore},
};
use reconcile::{ApplyError, Desired};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Balancer(#[from] crate::balancer::BalancerError),
    #[error("the config cannot be applied (nothing was changed): {0}")]
    Apply(String),
    #[error("control socket {0}: {1}")]
    Socket(PathBuf, #[source] std::io::Error),
    #[error("another steer daemon answers on {0}")]
    SocketInUse(PathBuf),
    #[error("another steer daemon is running on {0} (it holds the lock on that pin directory); stop it first, or give this one its own daemon.pin_dir")]
    AlreadyRunning(PathBuf),
    #[error("daemon.interfaces: no interface named {} in this network namespace", .0.join(", "))]
    NoInterface(Vec<String>),
    #[error("the maps pinned under {dir} do not match the config: {}. Either set the config back to the pinned sizes, or remove the datapath with `steer-ctl shutdown --detach` (every connection through it is lost) and start again", .list.join("; "))]
    PinMismatch { dir: PathBuf, list: Vec<String> },
    #[error("bpffs: {0}")]
    Bpffs(String),
}

impl DaemonError {
    fn exit_code(&self) -> i32 {
        match self {
            DaemonError::Config(_)
            | DaemonError::Apply(_)
            | DaemonError::NoInterface(_)
            | DaemonError::PinMismatch { .. } => exit::CONFIG,
            _ => exit::FAILURE,
        }
    }
}

/// Everything the daemon knows, behind one lock (never held across an await, nor across a
/// scan of the connection table).
pub(crate) struct Core {
    cfg: Config,
    intent: Intent,
    store: Box<dyn IntentStore>,
    bal: Balancer,
    checks: BTreeMap<String, health::CheckState>,
    /// Per backend: checks paused (admin `maint`).
    paused: BTreeMap<String, Arc<AtomicBool>>,
    /// Per backend: marks from passive health to its check task.
    forced: BTreeMap<String, Arc<crate::checks::Forced>>,
    /// The current generation of check tasks (see `health::Supervisor`).
    check_epoch: u64,
    reader: Arc<FlowReader>,
    /// The poller of the datapath's NAT maps, told which backends to watch.
    watcher: Arc<nat::Watcher>,
    /// With `[cluster]`: the other hosts, and this one's published record.
    cluster: Option<crate::cluster::ClusterHandle>,
    /// Each backend's last change, and recent rates (a lock of its own: status reads it).
    history: Mutex<history::History>,
}

type Shared = Mutex<Core>;

/// One change to what the daemon applies. Verbs, reloads and (later) the intent store's
/// watch all become one of these, applied by `Core::apply_change`.
pub(crate) enum Change {
    /// An operator's verb: the intent as it should be now (to be stored).
    Intent(Intent),
    /// A reload: the new config, the MACs of the DSR backends it adds, and the LB's address
    /// facing each NAT backend.
    Config {
        cfg: Box<Config>,
        macs: BTreeMap<std::net::IpAddr, [u8; 6]>,
        snat: BTreeMap<std::net::IpAddr, std::net::IpAddr>,
    },
    /// Intent stored by someone else (another host), to apply as it is, and the store's
    /// revision of it.
    Stored(Intent, i64),
}

/// Weights an operator set, against a reloaded config: an override stays in force until the
/// config's weight for that backend changes; then the config wins and the override goes.
fn settle_weights(cfg: &Config, intent: &mut Intent) -> Vec<String> {
    let mut notes = Vec::new();
    for (_, b) in cfg.backends() {
        let n = b.name.get_ref();
        let Some(w) = intent.backends.get(n).and_then(|x| x.weight) else {
            continue;
        };
        if intent.weight(n, b.weight).1 {
            if w == b.weight {
                continue;
            }
            notes.push(format!(
                "backend {n}: weight {w} set by `steer-ctl weight` stays in force over the config's {}",
                b.weight
            ));
        } else {
            notes.push(format!(
                "backend {n}: the config's weight {} (changed) replaces the weight {w} set by `steer-ctl weight`",
                b.weight
            ));
            let x = intent.backend_mut(n);
            x.weight = None;
            x.config_weight = None;
        }
    }
    intent.compact();
    notes
}

/// A request refused or failed: what kind of failure, and why.
pub(crate) struct Refusal {
    kind: ErrorKind,
    error: String,
}

impl Refusal {
    fn new(kind: ErrorKind, error: impl Into<String>) -> Self {
        Refusal {
            kind,
            error: error.into(),
        }
    }
}

impl From<Refusal> for Response {
    fn from(r: Refusal) -> Response {
        Response::error(r.kind, r.error)
    }
}

/// The daemon's shared parts: its state and the flow counts.
pub(crate) struct Daemon {
    core: Shared,
    counts: Arc<status::FlowCounts>,
    /// Why the last reload was refused, until one succeeds (for the service manager's status).
    refused_reload: Mutex<Option<String>>,
}

impl Daemon {
    /// The service manager's status line: what runs and how it stands, and a refused reload.
    fn status_line(&self) -> String {
        let line = self.core.lock().expect("core lock").status_line();
        let line = match &*self.refused_reload.lock().expect("reload note") {
            Some(e) => format!("{line}; last reload refused: {e}"),
            None => line,
        };
        // One line: a newline would end the assignment (config errors span lines).
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// Keeps the service manager's status line (`systemctl status`) as the daemon stands: sent
/// when it changes, looked at every second. Runs only under a service manager.
async fn keep_status(daemon: Arc<Daemon>) {
    let mut sent = daemon.status_line();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let line = daemon.status_line();
        if line != sent {
            os::notify(&format!("STATUS={line}"));
            sent = line;
        }
    }
}

fn xdp_mode(m: XdpModeCfg) -> XdpMode {
    match m {
        XdpModeCfg::Native => XdpMode::Driver,
        XdpModeCfg::Generic => XdpMode::Skb,
    }
}

impl Core {
    /// Applies one change — a verb's new intent, a reloaded config, or (later) intent another
    /// host stored — the same way: checked whole against what it would change, the intent
    /// stored, then the diff applied. Refused with nothing changed when it cannot apply whole
    /// or its intent cannot be stored. Returns what changed, then notes.
    fn apply_change(&mut self, change: Change) -> Result<Vec<String>, Refusal> {
        let mut stored_rev = None;
        let (cfg, intent, macs, snat, from_store) = match change {
            Change::Intent(i) => (None, i, BTreeMap::new(), BTreeMap::new(), false),
            Change::Stored(i, rev) => {
                stored_rev = Some(rev);
                (None, i, BTreeMap::new(), BTreeMap::new(), true)
            }
            Change::Config { cfg, macs, snat } => {
                (Some(*cfg), self.intent.clone(), macs, snat, false)
            }
        };
        let reloading = cfg.is_some();
        let cfg_ref = cfg.as_ref().unwrap_or(&self.cfg);
        // A cluster's intent names other hosts' backends too: this host applies its own.
        let shared = self.store.shared();
        let full = intent;
        let intent = if shared {
            known_only(full.clone(), cfg_ref)
        } else {
            full.clone()
        };
        // Only a reload adds backends (new, readdressed or moved): unknown until checked.
        let initial = |_: &str| Health::Unknown;
        let d = Desired {
            cfg: cfg_ref,
            intent: &intent,
            macs: &macs,
            snat: &snat,
            initial_health: &initial,
        };
        let checked = reconcile::check(&self.bal, &d).map_err(|e| {
            let kind = if reloading {
                ErrorKind::Apply
            } else {
                ErrorKind::Refused
            };
            Refusal::new(kind, format!("refused, nothing changed: {e}"))
        })?;
        let mut notes = checked.notes;
        let mut intent = checked.intent;
        if reloading {
            notes.extend(settle_weights(cfg_ref, &mut intent));
        }
        if shared {
            intent = with_foreign(intent, &full, cfg_ref);
        }
        if !from_store {
            self.store.put(&intent).map_err(|e| {
                Refusal::new(ErrorKind::Internal, format!("{e}: nothing was changed"))
            })?;
        }
        let own = if shared {
            known_only(intent.clone(), cfg_ref)
        } else {
            intent.clone()
        };
        let d = Desired { intent: &own, ..d };
        // Backends not rejected before: if this change rejects or removes them, the backend's
        // side of their NAT flows is reset below.
        let before: Vec<(String, u32, u16)> = self
            .cfg
            .backends()
            .map(|(_, b)| b.name.get_ref().clone())
            .filter(|n| self.intent.backend(n).admin != AdminState::Reject)
            .filter_map(|n| {
                let id = self.bal.backend_id(&n).ok()?;
                let gen = self.bal.datapath().backend(id).ok()?.gen;
                Some((n, id, gen))
            })
            .collect();
        let r = reconcile::apply(&mut self.bal, &d);
        if let Some(cfg) = cfg {
            self.cfg = cfg;
        }
        if let Some(rev) = stored_rev {
            self.store.held(&intent, rev);
        }
        self.intent = intent;
        let gone: Vec<(u32, u16)> = before
            .into_iter()
            .filter(|(n, id, _)| {
                self.bal.backend_id(n).ok() != Some(*id)
                    || self.intent.backend(n).admin == AdminState::Reject
            })
            .map(|(_, id, gen)| (id, gen))
            .collect();
        if !gone.is_empty() {
            match self.bal.datapath().nat_table() {
                Ok(t) => nat::reset_backend_sides(t, gone),
                Err(e) => warn!(error = %e, "cannot read the NAT table to reset rejected flows"),
            }
        }
        self.watcher.set(self.watched(), self.has_nat());
        for (name, p) in &self.paused {
            p.store(
                self.intent.backend(name).admin == AdminState::Maint,
                Ordering::Relaxed,
            );
        }
        for n in &notes {
            warn!("{n}");
        }
        self.note_changes(if reloading {
            "added by a reload"
        } else {
            "added"
        });
        match r {
            Ok(mut changes) => {
                changes.extend(notes);
                Ok(changes)
            }
            Err(e) => {
                error!(error = %e, "applying a change failed part way");
                Err(Refusal::new(ErrorKind::Internal, e.to_string()))
            }
        }
    }

    /// One line for a service manager's status: what runs and how it stands.
    fn status_line(&self) -> String {
        let services = self.bal.service_infos();
        let backends = self.bal.backend_infos();
        let eligible: usize = services.iter().map(|s| s.eligible).sum();
        let down = backends.iter().filter(|b| b.health == Health::Down).count();
        format!(
            "{} services, {} backends ({eligible} in tables, {down} down) on {}",
            services.len(),
            backends.len(),
            self.cfg.daemon.interfaces.join(", ")
        )
    }

    /// Notes every backend's admin state and health in its history (a backend first seen
    /// starts its history with `first`).
    fn note_changes(&self, first: &str) {
        let infos = self.bal.backend_infos();
        let checks = &self.checks;
        self.history
            .lock()
            .expect("history lock")
            .note(&infos, first, |name| {
                let c = checks.get(name)?;
                c.passive
                    .clone()
                    .or_else(|| (!c.last.is_empty()).then(|| c.last.clone()))
            });
    }

    /// Whether any service is NAT.
    fn has_nat(&self) -> bool {
        self.bal.service_infos().iter().any(|s| s.nat.is_some())
    }

    /// The backends whose passive health the watcher reads: those of NAT services with
    /// `observe` on.
    fn watched(&self) -> Vec<nat::Watched> {
        let limits: BTreeMap<String, u64> = self
            .bal
            .service_infos()
            .into_iter()
            .filter_map(|s| {
                let n = s.nat?;
                n.observe.then_some((s.name, n.error_limit as u64))
            })
            .collect();
        self.bal
            .backend_infos()
            .into_iter()
            .filter_map(|b| {
                let limit = *limits.get(&b.service)?;
                Some(nat::Watched {
                    id: b.id,
                    name: b.name,
                    limit,
                })
            })
            .collect()
    }

    /// The backends a name stands for: that backend, or every backend of that group.
    fn targets(&self, name: &str) -> Option<Vec<String>> {
        if self.cfg.backend(name).is_some() {
            return Some(vec![name.to_string()]);
        }
        let group: Vec<String> = self
            .cfg
            .backends()
            .filter(|(_, b)| b.group.as_deref() == Some(name))
            .map(|(_, b)| b.name.get_ref().clone())
            .collect();
        (!group.is_empty()).then_some(group)
    }

    fn service_exists(&self, name: &str) -> Result<(), Refusal> {
        if self.cfg.service(name).is_some() {
            Ok(())
        } else {
            Err(Refusal::new(
                ErrorKind::UnknownService,
                format!("no service named {name:?}"),
            ))
        }
    }
}

impl Daemon {
    /// Handles a request that needs no task of the run loop.
    fn handle(&self, req: Request) -> Response {
        self.try_handle(req).unwrap_or_else(Response::from)
    }

    fn try_handle(&self, req: Request) -> Result<Response, Refusal> {
        let unknown = |name: &str| {
            Refusal::new(
                ErrorKind::UnknownTarget,
                format!("no backend or group named {name:?}"),
            )
        };
        match req {
            Request::Status {} => {
                self.counts.want();
                let c = self.core.lock().expect("core lock");
                Ok(Response {
                    status: Some(c.status(&self.counts)),
                    ..Response::ok()
                })
            }
            Request::Flows { limit } => {
                let view = self.core.lock().expect("core lock").flow_view();
                let flows = view
                    .list(limit)
                    .map_err(|e| Refusal::new(ErrorKind::Internal, e))?;
                Ok(Response {
                    flows: Some(flows),
                    ..Response::ok()
                })
            }
            Request::Admin { target, state } => {
                let mut c = self.core.lock().expect("core lock");
                let names = c.targets(&target).ok_or_else(|| unknown(&target))?;
                let mut intent = c.intent.clone();
                let mut old = Vec::new();
                for n in &names {
                    old.push(intent.backend(n).admin);
                    intent.backend_mut(n).admin = state;
                }
                c.apply_change(Change::Intent(intent))?;
                for (n, o) in names.iter().zip(old) {
                    info!(backend = %n, old = %o, new = %state, reason = "operator", "admin state changed");
                }
                Ok(Response {
                    backends: names,
                    scan: Some(self.counts.next_scan()),
                    ..Response::ok()
                })
            }
            Request::Weight { target, weight } => {
                let mut c = self.core.lock().expect("core lock");
                let names = c.targets(&target).ok_or_else(|| unknown(&target))?;
                let mut intent = c.intent.clone();
                for n in &names {
                    let b = intent.backend_mut(n);
                    b.weight = Some(weight);
                    b.config_weight = c.cfg.backend(n).map(|(_, b)| b.weight);
                }
                c.apply_change(Change::Intent(intent))?;
                info!(target = %target, weight, "weight changed");
                Ok(Response {
                    backends: names,
                    ..Response::ok()
                })
            }
            Request::Switch {
                service,
                group,
                force,
            } => {
                let mut c = self.core.lock().expect("core lock");
                c.service_exists(&service)?;
                if let Some(g) = &group {
                    let svc = c.cfg.service(&service).expect("exists");
                    if !svc.backends.iter().any(|b| b.group.as_ref() == Some(g)) {
                        return Err(Refusal::new(
                            ErrorKind::UnknownTarget,
                            format!("service {service} has no backend in group {g:?}"),
                        ));
                    }
                    let eligible = c.bal.eligible_in_group(&service, Some(g)).unwrap_or(0);
                    if eligible == 0 && !force {
                        let why: Vec<String> = c
                            .bal
                            .backend_infos()
                            .into_iter()
                            .filter(|b| b.service == service && b.group.as_ref() == Some(g))
                            .map(|b| format!("{} {} {}", b.name, b.admin, b.health))
                            .collect();
                        return Err(Refusal::new(
                            ErrorKind::Refused,
                            format!(
                                "group {g} of {service} has no eligible backend ({}): switching would leave {service} without one; use --force to switch anyway",
                                why.join(", ")
                            ),
                        ));
                    }
                }
                let mut intent = c.intent.clone();
                intent.service_mut(&service).group = group.clone();
                c.apply_change(Change::Intent(intent))?;
                info!(service = %service, group = ?group, force, "switched: only this group takes new flows");
                Ok(Response {
                    scan: Some(self.counts.next_scan()),
                    ..Response::ok()
                })
            }
            Request::Maintenance { service, on } => {
                let mut c = self.core.lock().expect("core lock");
                c.service_exists(&service)?;
                let has = c.cfg.service(&service).is_some_and(|s| {
                    s.backends
                        .iter()
                        .any(|b| b.role() == crate::model::Role::Maintenance)
                });
                if on && !has {
                    return Err(Refusal::new(
                        ErrorKind::Refused,
                        format!(
                            "service {service} has no maintenance backend (role = \"maintenance\")"
                        ),
                    ));
                }
                let mut intent = c.intent.clone();
                intent.service_mut(&service).maintenance = on;
                c.apply_change(Change::Intent(intent))?;
                info!(service = %service, maintenance = on, "maintenance changed");
                Ok(Response::ok())
            }
            Request::Reload {} | Request::Shutdown { .. } => {
                Err(Refusal::new(ErrorKind::Internal, "handled by the run loop"))
            }
        }
    }
}

/// What a reload changed that the run loop must act on.
#[derive(Default)]
struct Reloaded {
    metrics: Option<Option<SocketAddr>>,
    socket_group: Option<Option<String>>,
}

/// Re-reads the config and applies it whole, or refuses it with nothing changed.
async fn reload(daemon: &Arc<Daemon>) -> (Response, Option<Reloaded>) {
    let (path, old_daemon, old_cluster) = {
        let c = daemon.core.lock().expect("core lock");
        (
            c.cfg.path.clone(),
            c.cfg.daemon.clone(),
            c.cfg.cluster.clone(),
        )
    };
    let new = match Config::load(&path) {
        Ok(n) => n,
        Err(e) => {
            warn!(config = %path.display(), error = %e, "reload refused: the running config stays");
            return (Response::error(ErrorKind::Config, e.to_string()), None);
        }
    };
    let mut restart = old_daemon.restart_needed(&new.daemon);
    if old_cluster != new.cluster {
        restart.push("[cluster] (where the intent is kept)".into());
    }
    if !restart.is_empty() {
        let msg = format!(
            "reload refused, nothing changed: these [daemon] settings only change at a restart: {}",
            restart.join("; ")
        );
        warn!("{msg}");
        return (Response::error(ErrorKind::Apply, msg), None);
    }
    // MACs are resolved outside the lock: it can take a moment.
    let need = {
        let c = daemon.core.lock().expect("core lock");
        reconcile::macs_needed(Some(&c.bal), &new)
    };
    let ifaces = old_daemon.interfaces.clone();
    let macs = tokio::task::spawn_blocking(move || {
        os::resolve_macs(&need, &ifaces, Duration::from_secs(3))
    })
    .await
    .unwrap_or_default();
    // Routes may have changed since the start: every NAT backend's facing address and next
    // hop are looked up again, and the host readied before the new services take traffic.
    let nat_dsts = reconcile::nat_backends(&new);
    let routes = tokio::task::spawn_blocking(move || os::facing_addresses(&nat_dsts))
        .await
        .unwrap_or_default();
    for n in nat::prepare(&new, &routes) {
        warn!("{n}");
    }
    let snat = routes.iter().map(|(d, (src, _))| (*d, *src)).collect();
    let mut c = daemon.core.lock().expect("core lock");
    let old = c.cfg.daemon.clone();
    let reloaded = Reloaded {
        metrics: (old.metrics != new.daemon.metrics).then_some(new.daemon.metrics),
        socket_group: (old.socket_group != new.daemon.socket_group)
            .then(|| new.daemon.socket_group.clone()),
    };
    match c.apply_change(Change::Config {
        cfg: Box::new(new),
        macs,
        snat,
    }) {
        Ok(changes) => {
            info!(config = %path.display(), changes = changes.len(), "config reloaded");
            (
                Response {
                    message: Some(format!("reloaded {}", path.display())),
                    changes,
                    ..Response::ok()
                },
                Some(reloaded),
            )
        }
        Err(refusal) => {
            // A failure part way did apply some of it: its checks must follow.
            let applied = refusal.kind == ErrorKind::Internal;
            if applied {
                error!(error = %refusal.error, "reload failed part way: the new config is in force as far as it was applied");
            } else {
                warn!(error = %refusal.error, "reload refused: the running config stays");
            }
            (refusal.into(), applied.then_some(reloaded))
        }
    }
}

/// Runs the daemon until SIGTERM, SIGINT or a shutdown request. Returns the exit code.
pub fn run(config_path: &Path) -> i32 {
    let cfg = match Config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            eprintln!("{e}");
            return exit::CONFIG;
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(serve(cfg)) {
        Ok(code) => code,
        Err(e) => {
            error!(error = %e, "daemon failed to start");
            eprintln!("steer-ctl daemon: {e}");
            e.exit_code()
        }
    }
}

/// Start-up: everything that can fail is checked before the datapath is touched; if start-up
/// still fails, what this run created is removed again.
struct Started {
    daemon: Arc<Daemon>,
    listener: tokio::net::UnixListener,
    _lock: os::InstanceLock,
}

async fn start(cfg: Config) -> Result<Started, DaemonError> {
    let d = cfg.daemon.clone();
    let nofile = os::raise_nofile();
    let missing = os::missing_interfaces(&d.interfaces);
    if !missing.is_empty() {
        return Err(DaemonError::NoInterface(missing));
    }
    os::ensure_bpffs(&d.pin_dir)?;
    let lock = os::lock_instance(&d.pin_dir)?;
    let had_pins = datapath::has_pins(&d.pin_dir);
    let retired = datapath::retired_pins(&d.pin_dir);
    if !retired.is_empty() {
        warn!(
            dir = %d.pin_dir.display(),
            maps = ?retired,
            "maps of an earlier layout are pinned here (a daemon of an earlier version ran): this version cannot read them (but for STEER_SVC_V2, whose services it carries over), so the connections tracked only there are lost and what else they held is written afresh from the config (a NAT pool in the config's order); the program using them is replaced and their pins removed"
        );
    }
    let undo = |lock: &os::InstanceLock| {
        if !had_pins && retired.is_empty() {
            let _ = datapath::unpin_all(&lock.dir);
        } else if !had_pins {
            // An earlier version's datapath runs here: its link and maps stay as they are.
            let _ = datapath::unpin_maps(&lock.dir);
        } else if lock.created {
            let _ = std::fs::remove_dir(&lock.dir);
        }
    };
    let r = start_locked(cfg, had_pins, nofile).await;
    match r {
        Ok((daemon, listener)) => Ok(Started {
            daemon,
            listener,
            _lock: lock,
        }),
        Err(e) => {
            undo(&lock);
            Err(e)
        }
    }
}

/// Keeps the announced VIPs those of the services that can take new flows here (checked every
/// 200 ms: a backend's health or admin change shows within that).
async fn keep_announced(daemon: Arc<Daemon>, announcer: Arc<Mutex<announce::Announcer>>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last: Option<std::collections::BTreeSet<std::net::IpAddr>> = None;
    loop {
        tick.tick().await;
        let want: std::collections::BTreeSet<std::net::IpAddr> = daemon
            .core
            .lock()
            .expect("core lock")
            .bal
            .service_infos()
            .into_iter()
            .filter(|s| s.eligible > 0 || s.maintenance)
            .map(|s| s.vip)
            .collect();
        if last.as_ref() == Some(&want) {
            continue;
        }
        let a = announcer.clone();
        let w = want.clone();
        let ok = tokio::task::spawn_blocking(move || a.lock().expect("announcer").sync(&w))
            .await
            .unwrap_or(false);
        last = ok.then_some(want);
    }
}

/// Publishes this host's active flows per backend for the other hosts' `drain --wait`, every
/// half second: from the latest flow scan, with the newest intent revision that a scan begun
/// after holding it covers.
async fn publish_counts(daemon: Arc<Daemon>, cluster: crate::cluster::ClusterHandle) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // (revision, first scan to start after this host held it)
    let mut waiting: Vec<(i64, u64)> = Vec::new();
    let (mut seen, mut covered) = (0i64, 0i64);
    let mut failing = false;
    loop {
        tick.tick().await;
        let rev = cluster.revision();
        if rev > seen {
            waiting.push((rev, daemon.counts.next_scan()));
            seen = rev;
        }
        let st = daemon
            .core
            .lock()
            .expect("core lock")
            .status(&daemon.counts);
        let scan = st.flow_scan.seq;
        if scan == 0 || st.flow_scan.error.is_some() {
            continue;
        }
        for (r, first) in &waiting {
            if scan >= *first {
                covered = covered.max(*r);
            }
        }
        waiting.retain(|(_, first)| scan < *first);
        let record = crate::cluster::HostRecord {
            revision: covered,
            scan,
            active: st
                .backends
                .iter()
                .filter_map(|b| Some((b.name.clone(), b.active_flows?)))
                .collect(),
            up: st
                .backends
                .iter()
                .filter(|b| b.health == crate::model::Health::Up)
                .map(|b| b.name.clone())
                .collect(),
        };
        let c = cluster.clone();
        match tokio::task::spawn_blocking(move || c.publish(&record)).await {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                warn!(error = %e, "cannot publish this host's flow counts to the cluster store");
                failing = true;
            }
            _ => {}
        }
    }
}

/// `intent` without the backends and services `cfg` does not name (a cluster's intent names
/// those of every host's config).
fn known_only(mut intent: Intent, cfg: &Config) -> Intent {
    intent.backends.retain(|n, _| cfg.backend(n).is_some());
    intent.services.retain(|n, _| cfg.service(n).is_some());
    intent
}

/// `checked` (the intent of this host's names, as `reconcile::check` returned it) with the
/// entries of `full` that `cfg` does not name put back: a host never writes other hosts'
/// backends out of the cluster's intent.
fn with_foreign(mut checked: Intent, full: &Intent, cfg: &Config) -> Intent {
    for (n, b) in &full.backends {
        if cfg.backend(n).is_none() {
            checked.backends.insert(n.clone(), b.clone());
        }
    }
    for (n, sv) in &full.services {
        if cfg.service(n).is_none() {
            checked.services.insert(n.clone(), sv.clone());
        }
    }
    checked
}

async fn start_locked(
    cfg: Config,
    had_pins: bool,
    nofile: u64,
) -> Result<(Arc<Daemon>, tokio::net::UnixListener), DaemonError> {
    let d = cfg.daemon.clone();
    let store: Box<dyn IntentStore> = match &cfg.cluster {
        Some(c) => Box::new(EtcdStore::new(
            &c.etcd,
            &c.prefix,
            &c.host_name(),
            FileStore::new(&d.state_file),
        )),
        None => Box::new(FileStore::new(&d.state_file)),
    };
    let stored = store.load()?;
    // The cluster's intent may name backends of other hosts' configs: kept, not applied.
    let full = stored.clone().unwrap_or_default();
    let stored = if store.shared() {
        stored.map(|i| known_only(i, &cfg))
    } else {
        stored
    };
    let opts = Options {
        max_services: d.max_services,
        max_flows: d.max_flows,
        pin_dir: Some(d.pin_dir.clone()),
    };
    let mismatches = datapath::pin_mismatches(&opts)?;
    if !mismatches.is_empty() {
        let mut list: Vec<String> = mismatches
            .iter()
            .map(|m| {
                format!(
                    "{} holds {} entries where daemon.{} asks for {}",
                    m.map, m.pinned, m.setting, m.wanted
                )
            })
            .collect();
        list.dedup();
        return Err(DaemonError::PinMismatch {
            dir: d.pin_dir.clone(),
            list,
        });
    }
    // MACs before the datapath: an unresolvable backend refuses the start with nothing
    // touched.
    let need = reconcile::macs_needed(None, &cfg);
    let ifaces = d.interfaces.clone();
    let macs = tokio::task::spawn_blocking(move || {
        os::resolve_macs(&need, &ifaces, Duration::from_secs(3))
    })
    .await
    .unwrap_or_default();
    // NAT backends: the LB's address facing each (`ip route get`), next hops resolved ahead
    // of the first packet, forwarding on where the FIB lookup needs it.
    let nat_dsts = reconcile::nat_backends(&cfg);
    let routes = tokio::task::spawn_blocking(move || os::facing_addresses(&nat_dsts))
        .await
        .unwrap_or_default();
    let snat: BTreeMap<std::net::IpAddr, std::net::IpAddr> =
        routes.iter().map(|(d, (src, _))| (*d, *src)).collect();

    let dp = Datapath::load(&opts)?;
    let adopted = if had_pins {
        reconcile::adopt(&dp, &cfg)?
    } else {
        Default::default()
    };
    let intent = match stored {
        Some(i) => i,
        None if had_pins => {
            let i = adopted.intent();
            warn!(
                state_file = %d.state_file.display(),
                backends = i.backends.len(),
                "the state file is missing: admin states and maintenance recovered from the pinned maps (weights and switched groups come from the config)"
            );
            i
        }
        None => Intent::default(),
    };
    let reader = Arc::new(dp.flow_reader()?);
    let mut bal = Balancer::new(dp);
    bal.seed_generations(&adopted.generations);
    bal.reserve_ids(adopted.service_ids.clone(), adopted.backend_ids.clone());
    let initial = |n: &str| adopted.health.get(n).copied().unwrap_or(Health::Unknown);
    let desired = Desired {
        cfg: &cfg,
        intent: &intent,
        macs: &macs,
        snat: &snat,
        initial_health: &initial,
    };
    let checked = reconcile::check(&bal, &desired).map_err(|e| match e {
        ApplyError::Refused(list) => DaemonError::Apply(list.join("; ")),
        ApplyError::Datapath(e) => DaemonError::Balancer(e),
    })?;
    let mut intent = checked.intent;
    let mut notes = checked.notes;
    // A weight override whose config weight changed while the daemon was down gives way.
    notes.extend(settle_weights(&cfg, &mut intent));
    for n in &notes {
        warn!("{n}");
    }
    let desired = Desired {
        intent: &intent,
        ..desired
    };
    for n in nat::prepare(&cfg, &routes) {
        warn!("{n}");
    }
    reconcile::apply(&mut bal, &desired).map_err(|e| DaemonError::Apply(e.to_string()))?;
    bal.clear_reservations();
    bal.clear_unused()?;
    for iface in &d.interfaces {
        let how = bal.datapath_mut().attach_pinned(
            iface,
            xdp_mode(d.xdp_mode),
            &datapath::link_pin(&d.pin_dir, iface),
        )?;
        match how {
            Attached::New => info!(interface = %iface, mode = ?d.xdp_mode, "XDP attached"),
            Attached::Replaced => {
                info!(interface = %iface, "XDP program replaced in the pinned link (adopted)")
            }
        }
    }
    // The program that used the retired maps has been replaced on every interface.
    bal.datapath_mut().attached_everywhere();
    match datapath::remove_retired(&d.pin_dir) {
        Ok(gone) if !gone.is_empty() => {
            warn!(maps = ?gone, "pins of an earlier layout removed")
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "cannot remove the pins of an earlier layout"),
    }
    let mut store = store;
    if store.shared() {
        intent = with_foreign(intent, &full, &cfg);
        if let Err(e) = store.put(&intent) {
            warn!(error = %e, "the cluster's intent could not be written at start (fail static: the local copy is in force)");
        }
    } else {
        store.put(&intent)?;
    }
    let listener = control::bind(&d.socket, d.socket_group.as_deref())?;
    info!(
        config = %cfg.path.display(),
        services = cfg.services.len(),
        adopted = had_pins,
        open_files = nofile,
        "steer daemon ready"
    );
    let capacity = bal.datapath().flow_capacity();
    let watcher = nat::Watcher::new(
        bal.datapath().observed(),
        bal.datapath().neigh_wants(),
        bal.datapath_mut().take_notes(),
    );
    let core = Core {
        cfg,
        intent,
        store,
        bal,
        checks: BTreeMap::new(),
        paused: BTreeMap::new(),
        forced: BTreeMap::new(),
        check_epoch: 0,
        reader,
        watcher,
        cluster: None,
        history: Mutex::new(history::History::default()),
    };
    let mut core = core;
    core.cluster = core.store.cluster();
    core.watcher.set(core.watched(), core.has_nat());
    core.note_changes("daemon started");
    let daemon = Arc::new(Daemon {
        core: Mutex::new(core),
        counts: status::FlowCounts::new(capacity),
        refused_reload: Mutex::new(None),
    });
    Ok((daemon, listener))
}

fn spawn_metrics(set: &mut JoinSet<()>, daemon: &Arc<Daemon>, addr: SocketAddr) {
    use crate::metrics::{Page, OPENMETRICS};
    let daemon = daemon.clone();
    set.spawn(async move {
        let route = move |path: &str| {
            let status = || {
                daemon.counts.want();
                let c = daemon.core.lock().expect("core lock");
                let host = c.cluster.as_ref().map(|c| c.host().to_string());
                (c.status(&daemon.counts), host)
            };
            match path {
                "/metrics" => Page {
                    status: 200,
                    content_type: OPENMETRICS,
                    body: crate::metrics::render(&status().0),
                },
                "/stats" | "/stats/" => {
                    let (s, host) = status();
                    let host = host.unwrap_or_else(os::hostname);
                    Page {
                        status: 200,
                        content_type: "text/html; charset=utf-8",
                        body: crate::stats::render(&s, &host),
                    }
                }
                _ => Page {
                    status: 404,
                    content_type: "text/plain; charset=utf-8",
                    body: "not found: metrics are at /metrics, the stats page at /stats\n".into(),
                },
            }
        };
        if let Err(e) = crate::metrics::serve(addr, route).await {
            error!(address = %addr, error = %e, "metrics endpoint failed");
        }
    });
}

async fn serve(cfg: Config) -> Result<i32, DaemonError> {
    let d = cfg.daemon.clone();
    let Started {
        daemon,
        listener,
        _lock,
    } = start(cfg).await?;

    let mut tasks = JoinSet::new();
    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Report>();
    let (deferred_tx, mut deferred_rx) = mpsc::unbounded_channel::<control::Deferred>();
    let mut checks = health::Supervisor::new(report_tx);
    checks.restart(&daemon.core).await;
    let (passive_tx, mut passive_rx) = mpsc::unbounded_channel::<health::PassiveDown>();
    {
        let watcher = daemon.core.lock().expect("core lock").watcher.clone();
        tasks.spawn(watcher.run(passive_tx));
    }
    // Cached NAT flows hold the FIB's answers: voided when the kernel changes a next hop.
    tasks.spawn(nexthop::run(daemon.clone()));
    let stored = daemon.core.lock().expect("core lock").store.watch();
    if let Some(mut rx) = stored {
        // Intent other hosts stored: applied as it comes (the latest of a burst).
        let dd = daemon.clone();
        tasks.spawn(async move {
            while let Some((mut intent, mut rev)) = rx.recv().await {
                while let Ok((newer, r)) = rx.try_recv() {
                    (intent, rev) = (newer, r);
                }
                let mut core = dd.core.lock().expect("core lock");
                if core.intent == intent {
                    // Nothing to apply; the store learns that this is what the host holds.
                    core.store.held(&intent, rev);
                    continue;
                }
                match core.apply_change(Change::Stored(intent, rev)) {
                    Ok(changes) if !changes.is_empty() => {
                        // Another host may be waiting for this one's flows to end.
                        dd.counts.want();
                        info!(?changes, "applied the cluster's intent")
                    }
                    Ok(_) => {}
                    Err(r) => warn!(
                        error = %r.error,
                        "the cluster's intent cannot be applied here; this host keeps its own"
                    ),
                }
            }
        });
    }
    let cluster = daemon.core.lock().expect("core lock").cluster.clone();
    if let Some(c) = cluster {
        tasks.spawn(publish_counts(daemon.clone(), c));
    }
    let announcer = d
        .announce_table
        .map(|t| Arc::new(Mutex::new(announce::Announcer::new(t))));
    if let Some(a) = &announcer {
        tasks.spawn(keep_announced(daemon.clone(), a.clone()));
    }
    {
        let reader = daemon.core.lock().expect("core lock").reader.clone();
        let dd = daemon.clone();
        tasks.spawn(daemon.counts.clone().run(reader, move || {
            dd.core.lock().expect("core lock").bal.scan_inputs()
        }));
    }
    let mut metrics = JoinSet::new();
    if let Some(addr) = d.metrics {
        spawn_metrics(&mut metrics, &daemon, addr);
    }
    let group = Arc::new(AtomicU32::new(
        d.socket_group
            .as_deref()
            .and_then(os::group_id)
            .unwrap_or(u32::MAX),
    ));
    tasks.spawn(control::serve(
        listener,
        daemon.clone(),
        deferred_tx,
        group.clone(),
    ));
    // The datapath is attached and the socket listens: a service manager may now start what
    // depends on steer (and `systemctl start` returns).
    os::notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS={}",
        std::process::id(),
        daemon.status_line()
    ));
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        tasks.spawn(keep_status(daemon.clone()));
    }

    let sig =
        |k| tokio::signal::unix::signal(k).map_err(|e| DaemonError::Socket(d.socket.clone(), e));
    use tokio::signal::unix::SignalKind;
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    let mut hup = sig(SignalKind::hangup())?;
    let mut reply_to_shutdown = None;
    let detach = loop {
        let reload_req = tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; XDP stays attached with the last state"); break false; }
            _ = int.recv() => { info!("SIGINT: stopping; XDP stays attached with the last state"); break false; }
            _ = hup.recv() => None,
            Some(r) = report_rx.recv() => {
                // Everything that arrived together, in one batch, off the async workers (a
                // table change waits an RCU grace period).
                let mut batch = vec![r];
                while let Ok(more) = report_rx.try_recv() {
                    batch.push(more);
                }
                let d = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || health::apply_reports(&d.core, batch)).await;
                continue;
            }
            Some(p) = passive_rx.recv() => {
                let mut batch = vec![p];
                while let Ok(more) = passive_rx.try_recv() {
                    batch.push(more);
                }
                let d = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || health::apply_passive(&d.core, batch)).await;
                continue;
            }
            Some(req) = deferred_rx.recv() => match req.req {
                Request::Shutdown { detach } => { reply_to_shutdown = Some(req.reply); break detach; }
                _ => Some(req.reply),
            },
        };
        // Check results already queued are about the servers as they were: apply them under
        // the current checks' epoch before a reload restarts the checks.
        let mut queued = Vec::new();
        while let Ok(r) = report_rx.try_recv() {
            queued.push(r);
        }
        if !queued.is_empty() {
            let d = daemon.clone();
            let _ =
                tokio::task::spawn_blocking(move || health::apply_reports(&d.core, queued)).await;
        }
        os::notify(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}",
            crate::datapath::monotonic_ns() / 1000
        ));
        let (resp, reloaded) = reload(&daemon).await;
        *daemon.refused_reload.lock().expect("reload note") = resp.error.clone();
        os::notify(&format!("READY=1\nSTATUS={}", daemon.status_line()));
        if let Some(r) = reloaded {
            checks.restart(&daemon.core).await;
            if let Some(m) = r.metrics {
                metrics.abort_all();
                while metrics.join_next().await.is_some() {}
                if let Some(addr) = m {
                    spawn_metrics(&mut metrics, &daemon, addr);
                }
            }
            if let Some(g) = r.socket_group {
                if let Err(e) = control::set_group(&d.socket, g.as_deref()) {
                    error!(error = %e, "socket_group");
                }
                group.store(
                    g.as_deref().and_then(os::group_id).unwrap_or(u32::MAX),
                    Ordering::Relaxed,
                );
            }
        }
        if let Some(tx) = reload_req {
            let _ = tx.send(resp);
        }
    };
    os::notify(if detach {
        "STOPPING=1\nSTATUS=stopping; removing the datapath"
    } else {
        "STOPPING=1\nSTATUS=stopping; the datapath keeps forwarding with the last state"
    });
    checks.stop();
    metrics.abort_all();
    while metrics.join_next().await.is_some() {}
    let _ = std::fs::remove_file(&d.socket);
    if let Some(tx) = reply_to_shutdown {
        let _ = tx.send(Response::ok());
        // Let the reply go out before the tasks stop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    if detach {
        if let Some(a) = &announcer {
            // The routers move the traffic away before the program goes.
            a.lock().expect("announcer").withdraw_all();
            info!(hold = ?announce::HOLD, "VIPs withdrawn; holding the datapath while the routers move away");
            tokio::time::sleep(announce::HOLD).await;
        }
        // The balancer's handles must close before the pins go, or the maps outlive us.
        drop(daemon);
        match datapath::unpin_all(&d.pin_dir) {
            Ok(n) => {
                info!(pins = n, dir = %d.pin_dir.display(), "detached: XDP program and maps removed")
            }
            Err(e) => {
                error!(error = %e, "detach failed");
                return Ok(exit::FAILURE);
            }
        }
    }
    Ok(exit::OK)
}
