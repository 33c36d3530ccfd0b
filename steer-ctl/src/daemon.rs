//! `steer-ctl daemon`: loads (or adopts) the datapath, applies config + state file, runs the
//! health checks, and serves the control socket. One tokio runtime; every task is owned by a
//! `JoinSet` and stops with the daemon. On SIGTERM/SIGINT it exits leaving the XDP program and
//! maps pinned: traffic goes on with the last state until the next daemon adopts them.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::programs::XdpMode;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
    task::JoinSet,
};
use tracing::{error, info, warn};

use crate::{
    balancer::{AdminState as Admin, BackendSpec, Balancer, ServiceSpec},
    checks::{self, Outcome, Report},
    config::{CheckKind, Config, XdpModeCfg},
    datapath::{self, Attached, Datapath, Options},
    proto::{self, BackendStatus, FlowInfo, Request, Response, ServiceStatus},
    state::{AdminState, BackendState, ServiceState, State},
};

/// Exit codes (sysexits), shared with the verbs.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILURE: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const UNAVAILABLE: i32 = 69;
    pub const TIMEOUT: i32 = 75;
    pub const CONFIG: i32 = 78;
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] crate::config::ConfigErrors),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Datapath(#[from] crate::datapath::DatapathError),
    #[error(transparent)]
    Balancer(#[from] crate::balancer::BalancerError),
    #[error("control socket {0}: {1}")]
    Socket(PathBuf, #[source] std::io::Error),
    #[error("another daemon answers on {0}")]
    AlreadyRunning(PathBuf),
    #[error("backend {0}: no MAC address in the config, and none in the neighbour table for {1}")]
    NoMac(String, IpAddr),
    #[error("bpffs: {0}")]
    Bpffs(String),
}

/// Last check result of a backend, for status and metrics.
#[derive(Clone, Debug, Default)]
struct CheckState {
    last: String,
    latency: Option<Duration>,
    runs: u64,
}

/// Everything the daemon knows, behind one lock (never held across an await).
struct Core {
    cfg: Config,
    state: State,
    bal: Balancer,
    checks: BTreeMap<String, CheckState>,
    /// Per backend: checks paused (admin `maint`).
    paused: BTreeMap<String, Arc<AtomicBool>>,
    groups: BTreeMap<String, Option<String>>,
}

type Shared = Arc<Mutex<Core>>;

fn xdp_mode(m: XdpModeCfg) -> XdpMode {
    match m {
        XdpModeCfg::Native => XdpMode::Driver,
        XdpModeCfg::Generic => XdpMode::Skb,
    }
}

/// Mounts bpffs on the parent of `pin_dir` if nothing is mounted there.
fn ensure_bpffs(pin_dir: &Path) -> Result<(), DaemonError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let c = std::ffi::CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: statfs on a valid path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: mounting bpffs with valid C strings.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(DaemonError::Bpffs(format!(
            "cannot mount bpffs on /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        )));
    }
    info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// The MAC of `addr` from the neighbour table, asking for it (a UDP packet to the discard port
/// makes the kernel resolve it) if it is not there yet.
fn resolve_mac(addr: IpAddr) -> Option<[u8; 6]> {
    let lookup = || -> Option<[u8; 6]> {
        let out = std::process::Command::new("ip")
            .args(["neigh", "show", &addr.to_string()])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mac = text
            .split_whitespace()
            .skip_while(|w| *w != "lladdr")
            .nth(1)?;
        let mut m = [0u8; 6];
        let parts: Vec<&str> = mac.split(':').collect();
        if parts.len() != 6 {
            return None;
        }
        for (i, p) in parts.iter().enumerate() {
            m[i] = u8::from_str_radix(p, 16).ok()?;
        }
        Some(m)
    };
    if let Some(m) = lookup() {
        return Some(m);
    }
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    if let Ok(s) = std::net::UdpSocket::bind(bind) {
        let _ = s.send_to(b"", SocketAddr::new(addr, 9));
    }
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(m) = lookup() {
            return Some(m);
        }
    }
    None
}

fn backend_spec(b: &crate::config::BackendCfg, weight: u32) -> Result<BackendSpec, DaemonError> {
    let addr = *b.address.get_ref();
    let mac = match b.mac {
        Some(m) => m.0,
        None => {
            resolve_mac(addr).ok_or_else(|| DaemonError::NoMac(b.name.get_ref().clone(), addr))?
        }
    };
    Ok(BackendSpec {
        name: b.name.get_ref().clone(),
        addr,
        mac,
        weight,
        role: b.role(),
        group: b.group.clone(),
    })
}

fn service_spec(s: &crate::config::ServiceCfg) -> ServiceSpec {
    ServiceSpec {
        name: s.name.get_ref().clone(),
        vip: *s.vip.get_ref(),
        port: s.port,
        proto: s.proto(),
        maglev_size: *s.maglev_size.get_ref(),
        idle_timeout_s: s.idle_timeout.0.as_secs().max(1) as u32,
        no_backend: s.no_backend(),
    }
}

impl Core {
    /// Makes the balancer hold what `cfg` and `self.state` say. Services or backends whose
    /// definition changed are replaced; weights and admin states come from the state file,
    /// falling back to the config. New backends with checks start down until they pass
    /// (`new_backends_up` false) — at daemon start every backend starts up, so a restart
    /// never empties a pool.
    fn apply(&mut self, cfg: &Config, new_backends_up: bool) -> Result<(), DaemonError> {
        self.bal.begin_batch();
        let r = self.apply_batched(cfg, new_backends_up);
        let c = self.bal.commit();
        r?;
        Ok(c?)
    }

    fn apply_batched(&mut self, cfg: &Config, new_backends_up: bool) -> Result<(), DaemonError> {
        let old: BTreeMap<String, crate::balancer::ServiceInfo> = self
            .bal
            .service_infos()
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect();
        let old_backends: BTreeMap<String, crate::balancer::BackendInfo> = self
            .bal
            .backend_infos()
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        let prev = std::mem::replace(&mut self.cfg, cfg.clone());
        let prev_services: BTreeMap<String, &crate::config::ServiceCfg> = prev
            .services
            .iter()
            .map(|s| (s.name.get_ref().clone(), s))
            .collect();

        // Services gone or redefined.
        for name in old.keys() {
            let keep = cfg
                .services
                .iter()
                .find(|s| s.name.get_ref() == name)
                .is_some_and(|s| {
                    prev_services
                        .get(name)
                        .is_some_and(|p| service_spec(p) == service_spec(s))
                });
            if !keep {
                self.bal.remove_service(name)?;
                info!(service = %name, "service removed");
            }
        }
        let present: Vec<String> = self
            .bal
            .service_infos()
            .into_iter()
            .map(|s| s.name)
            .collect();
        for s in &cfg.services {
            let name = s.name.get_ref();
            if !present.contains(name) {
                self.bal.add_service(service_spec(s))?;
                info!(service = %name, vip = %s.vip.get_ref(), port = s.port, "service added");
            }
            // Backends of this service.
            let have: BTreeMap<String, crate::balancer::BackendInfo> = self
                .bal
                .backend_infos()
                .into_iter()
                .filter(|b| &b.service == name)
                .map(|b| (b.name.clone(), b))
                .collect();
            for (bname, info) in &have {
                let def = s.backends.iter().find(|b| b.name.get_ref() == bname);
                let same = def.is_some_and(|b| {
                    *b.address.get_ref() == info.addr
                        && b.role() == info.role
                        && b.group == info.group
                        && b.mac.is_none_or(|m| m.0 == info.mac)
                });
                if !same {
                    self.bal.remove_backend(bname)?;
                    info!(service = %name, backend = %bname, "backend removed");
                }
            }
            for b in &s.backends {
                let bname = b.name.get_ref();
                let st = self.state.backend(bname);
                let weight = st.weight.unwrap_or(b.weight);
                let exists = self.bal.backend_infos().iter().any(|x| &x.name == bname);
                if !exists {
                    self.bal.add_backend(name, backend_spec(b, weight)?)?;
                    let checked = s
                        .check_for(b.check.as_ref().unwrap_or(&toml::Table::new()))
                        .map(|c| c.kind != CheckKind::None)
                        .unwrap_or(true);
                    let up = new_backends_up || !checked || old_backends.contains_key(bname);
                    self.bal
                        .set_health(bname, crate::model::Health::from_up(up))?;
                    info!(service = %name, backend = %bname, address = %b.address.get_ref(), up, "backend added");
                } else {
                    self.bal.set_weight(bname, weight)?;
                }
                self.bal.set_admin(bname, st.admin)?;
                self.groups.insert(bname.clone(), b.group.clone());
            }
            let group = self.state.service(name).group;
            if let Err(e) = self.bal.set_active_group(name, group.as_deref()) {
                warn!(service = %name, error = %e, "the switched-to group is gone from the config: all groups eligible");
                self.bal.set_active_group(name, None)?;
                self.state.services.entry(name.clone()).or_default().group = None;
            }
            // Maintenance last: its backend must be in place first.
            if self.state.service(name).maintenance {
                if let Err(e) = self.bal.set_maintenance(name, true) {
                    warn!(service = %name, error = %e, "maintenance was on, but the service has no maintenance backend any more: off");
                    self.state
                        .services
                        .entry(name.clone())
                        .or_default()
                        .maintenance = false;
                    self.bal.set_maintenance(name, false)?;
                }
            } else {
                self.bal.set_maintenance(name, false)?;
            }
        }
        self.groups.retain(|n, _| {
            cfg.services
                .iter()
                .any(|s| s.backends.iter().any(|b| b.name.get_ref() == n))
        });
        Ok(())
    }

    /// Writes the state file: admin states, weights, maintenance and the ids in use.
    fn save_state(&mut self) -> Result<(), DaemonError> {
        let (sids, bids) = self.bal.ids();
        let mut st = State::default();
        for (name, id) in sids {
            let prev = self.state.service(&name);
            st.services.insert(
                name,
                ServiceState {
                    id: Some(id),
                    ..prev
                },
            );
        }
        for (name, (id, gen)) in bids {
            let prev = self.state.backend(&name);
            st.backends.insert(
                name,
                BackendState {
                    id: Some(id),
                    gen: Some(gen),
                    ..prev
                },
            );
        }
        st.save(&self.cfg.daemon.state_file)?;
        self.state = st;
        Ok(())
    }

    fn status(&self) -> proto::Status {
        let active = self.bal.active_flows().unwrap_or_default();
        let mut datapath = BTreeMap::new();
        if let Ok(o) = self.bal.datapath().outcomes() {
            for (i, n) in steer_common::outcome::NAMES.iter().enumerate() {
                datapath.insert(n.to_string(), o[i]);
            }
            for (i, n) in steer_common::event::NAMES.iter().enumerate() {
                datapath.insert(n.to_string(), o[steer_common::outcome::COUNT as usize + i]);
            }
        }
        proto::Status {
            flow_scan: Default::default(),
            config: self.cfg.path.display().to_string(),
            services: self
                .bal
                .service_infos()
                .into_iter()
                .map(|s| ServiceStatus {
                    counters: self
                        .bal
                        .service_counters(&s.name)
                        .map(Into::into)
                        .unwrap_or_default(),
                    name: s.name,
                    vip: s.vip.to_string(),
                    port: s.port,
                    protocol: s.proto,
                    maintenance: s.maintenance,
                    eligible: s.eligible,
                    active_group: s.active_group,
                    backends: s.backends,
                })
                .collect(),
            backends: self
                .bal
                .backend_infos()
                .into_iter()
                .map(|b| {
                    let chk = self.checks.get(&b.name).cloned().unwrap_or_default();
                    BackendStatus {
                        counters: self
                            .bal
                            .backend_counters(&b.name)
                            .map(Into::into)
                            .unwrap_or_default(),
                        active_flows: active.get(&b.name).copied(),
                        config_weight: b.weight,
                        group: self.groups.get(&b.name).cloned().flatten(),
                        name: b.name,
                        service: b.service,
                        address: b.addr.to_string(),
                        role: b.role,
                        admin: b.admin,
                        health: b.health,
                        check: if chk.last.is_empty() {
                            "not checked yet".into()
                        } else {
                            chk.last
                        },
                        check_ms: chk.latency.map(|d| d.as_secs_f64() * 1000.0),
                        checks_run: chk.runs,
                        weight: b.weight,
                    }
                })
                .collect(),
            datapath,
        }
    }

    fn flows(&self, limit: usize) -> Vec<FlowInfo> {
        let names: BTreeMap<u32, String> = self
            .bal
            .backend_infos()
            .into_iter()
            .map(|b| (b.id, b.name))
            .collect();
        let now = datapath::monotonic_ns();
        let mut out = Vec::new();
        let _ = self.bal.datapath().for_each_flow(|k, f| {
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
            let state = if f.flags & steer_common::flow_flags::RST != 0 {
                "reset"
            } else if f.flags & steer_common::flow_flags::FIN != 0 {
                "fin"
            } else if f.flags & steer_common::flow_flags::SYN_ONLY != 0 {
                "syn"
            } else {
                "established"
            };
            out.push(FlowInfo {
                client: SocketAddr::new(ip(&k.src, k.family), u16::from_be(k.sport_be)).to_string(),
                vip: SocketAddr::new(ip(&k.dst, k.family), u16::from_be(k.dport_be)).to_string(),
                protocol: if k.proto == steer_common::PROTO_TCP {
                    crate::model::Proto::Tcp
                } else {
                    crate::model::Proto::Udp
                },
                backend: names
                    .get(&f.backend)
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", f.backend)),
                state: state.into(),
                idle_ms: now.saturating_sub(f.last_seen_ns) / 1_000_000,
            });
        });
        out
    }
}

/// What the control loop must do after a request.
enum After {
    Nothing,
    Shutdown { detach: bool },
    RestartChecks,
}

fn handle(core: &Shared, req: Request) -> (Response, After) {
    let mut c = core.lock().expect("core lock");
    let fail =
        |e: &dyn std::fmt::Display| Response::error(proto::ErrorKind::Internal, e.to_string());
    match req {
        Request::Status => (
            Response {
                status: Some(c.status()),
                ..Response::ok()
            },
            After::Nothing,
        ),
        Request::Flows { limit } => (
            Response {
                flows: Some(c.flows(limit)),
                ..Response::ok()
            },
            After::Nothing,
        ),
        Request::Admin {
            target: backend,
            state,
        } => {
            let old = match c
                .bal
                .backend_infos()
                .into_iter()
                .find(|b| b.name == backend)
            {
                Some(b) => b.admin,
                None => {
                    return (
                        fail(&format!("no backend named {backend:?}")),
                        After::Nothing,
                    )
                }
            };
            if let Err(e) = c.bal.set_admin(&backend, state) {
                return (fail(&e), After::Nothing);
            }
            c.state.backends.entry(backend.clone()).or_default().admin = state;
            if let Some(p) = c.paused.get(&backend) {
                p.store(state == AdminState::Maint, Ordering::Relaxed);
            }
            let service = c
                .bal
                .backend_infos()
                .into_iter()
                .find(|b| b.name == backend)
                .map(|b| b.service)
                .unwrap_or_default();
            info!(service = %service, backend = %backend, old = %old, new = %state, reason = "operator", "admin state changed");
            if let Err(e) = c.save_state() {
                return (fail(&e), After::Nothing);
            }
            (Response::ok(), After::Nothing)
        }
        Request::Weight {
            target: backend,
            weight,
        } => {
            if let Err(e) = c.bal.set_weight(&backend, weight) {
                return (fail(&e), After::Nothing);
            }
            c.state.backends.entry(backend.clone()).or_default().weight = Some(weight);
            info!(backend = %backend, weight, "weight changed");
            match c.save_state() {
                Ok(()) => (Response::ok(), After::Nothing),
                Err(e) => (fail(&e), After::Nothing),
            }
        }
        Request::Maintenance { service, on } => {
            if let Err(e) = c.bal.set_maintenance(&service, on) {
                return (fail(&e), After::Nothing);
            }
            c.state
                .services
                .entry(service.clone())
                .or_default()
                .maintenance = on;
            info!(service = %service, maintenance = on, "maintenance changed");
            match c.save_state() {
                Ok(()) => (Response::ok(), After::Nothing),
                Err(e) => (fail(&e), After::Nothing),
            }
        }
        Request::Switch { service, group, .. } => {
            if let Err(e) = c.bal.set_active_group(&service, group.as_deref()) {
                return (fail(&e), After::Nothing);
            }
            c.state.services.entry(service.clone()).or_default().group = group.clone();
            info!(service = %service, group = ?group, "switched: only this group takes new flows");
            match c.save_state() {
                Ok(()) => (Response::ok(), After::Nothing),
                Err(e) => (fail(&e), After::Nothing),
            }
        }
        Request::Reload => {
            let path = c.cfg.path.clone();
            let new = match Config::load(&path) {
                Ok(n) => n,
                Err(e) => {
                    warn!(config = %path.display(), error = %e, "reload refused: the running config stays");
                    return (
                        Response::error(proto::ErrorKind::Config, e.to_string()),
                        After::Nothing,
                    );
                }
            };
            if new.daemon != c.cfg.daemon {
                warn!("reload: [daemon] settings change only at restart");
            }
            let mut keep_daemon = new.clone();
            keep_daemon.daemon = c.cfg.daemon.clone();
            match c.apply(&keep_daemon, false).and_then(|()| c.save_state()) {
                Ok(()) => {
                    info!(config = %path.display(), "config reloaded");
                    (
                        Response {
                            message: Some(format!("reloaded {}", path.display())),
                            ..Response::ok()
                        },
                        After::RestartChecks,
                    )
                }
                Err(e) => {
                    error!(error = %e, "reload failed part way");
                    (fail(&e), After::RestartChecks)
                }
            }
        }
        Request::Shutdown { detach } => (Response::ok(), After::Shutdown { detach }),
    }
}

/// Starts one check task per checked backend; reports come back on `tx`.
fn spawn_checks(core: &Shared, set: &mut JoinSet<()>, tx: &mpsc::UnboundedSender<Report>) {
    let mut c = core.lock().expect("core lock");
    let infos = c.bal.backend_infos();
    let cfg = c.cfg.clone();
    let mut paused_map = BTreeMap::new();
    for s in &cfg.services {
        for b in &s.backends {
            let name = b.name.get_ref().clone();
            let Ok(check) = s.check_for(b.check.as_ref().unwrap_or(&toml::Table::new())) else {
                continue;
            };
            if check.kind == CheckKind::None {
                continue;
            }
            let Some(info) = infos.iter().find(|i| i.name == name) else {
                continue;
            };
            let paused = Arc::new(AtomicBool::new(info.admin == Admin::Maint));
            paused_map.insert(name.clone(), paused.clone());
            let addr = SocketAddr::new(info.addr, check.port.unwrap_or(s.port));
            set.spawn(checks::run(
                name,
                check,
                addr,
                info.health == crate::model::Health::Up,
                paused,
                tx.clone(),
            ));
        }
    }
    c.paused = paused_map;
}

fn apply_report(core: &Shared, r: Report) {
    let mut c = core.lock().expect("core lock");
    let last = match &r.outcome {
        Outcome::Ok => "ok".to_string(),
        Outcome::Failed(why) => why.clone(),
    };
    let runs = c.checks.get(&r.backend).map_or(0, |s| s.runs) + 1;
    c.checks.insert(
        r.backend.clone(),
        CheckState {
            last: last.clone(),
            latency: Some(r.latency),
            runs,
        },
    );
    if let Some(up) = r.change {
        let service = c
            .bal
            .backend_infos()
            .into_iter()
            .find(|b| b.name == r.backend)
            .map(|b| b.service)
            .unwrap_or_default();
        match c
            .bal
            .set_health(&r.backend, crate::model::Health::from_up(up))
        {
            Ok(()) => info!(
                service = %service,
                backend = %r.backend,
                old = if up { "down" } else { "up" },
                new = if up { "up" } else { "down" },
                reason = %last,
                "health changed"
            ),
            Err(e) => error!(backend = %r.backend, error = %e, "cannot apply health"),
        }
    }
}

/// Binds the control socket: mode 0660, group `socket_group` if set. Refuses to take over a
/// socket another daemon still answers on.
fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, DaemonError> {
    let err = |e| DaemonError::Socket(path.to_path_buf(), e);
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    if let Some(g) = group {
        let gid =
            group_id(g).ok_or_else(|| err(std::io::Error::other(format!("no group {g:?}"))))?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(err)?;
    }
    Ok(l)
}

fn group_id(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: getgrnam with a valid C string; the result is read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// Root, the daemon's own user, or the socket's group may talk to the daemon.
fn allowed(stream: &UnixStream, group: Option<u32>) -> bool {
    match stream.peer_cred() {
        // SAFETY: getuid has no preconditions.
        Ok(c) => c.uid() == 0 || c.uid() == unsafe { libc::getuid() } || Some(c.gid()) == group,
        Err(_) => false,
    }
}

async fn serve_conn(
    stream: UnixStream,
    core: Shared,
    ctl: mpsc::UnboundedSender<After>,
    group: Option<u32>,
) {
    let (r, mut w) = stream.into_split();
    let reply = |resp: Response| {
        let mut line = serde_json::to_vec(&resp).expect("response serializes");
        line.push(b'\n');
        line
    };
    let peer_ok = {
        let s = r.as_ref();
        allowed(s, group)
    };
    if !peer_ok {
        let _ = w
            .write_all(&reply(Response::error(
                proto::ErrorKind::Internal,
                "permission denied: root or the socket's group only",
            )))
            .await;
        return;
    }
    let mut reader = BufReader::new(r).take(proto::MAX_REQUEST as u64 + 1);
    let mut line = Vec::new();
    let resp =
        match tokio::time::timeout(Duration::from_secs(10), reader.read_until(b'\n', &mut line))
            .await
        {
            Err(_) => Response::error(proto::ErrorKind::Internal, "no request within 10 s"),
            Ok(Err(e)) => Response::error(
                proto::ErrorKind::Internal,
                format!("reading the request: {e}"),
            ),
            Ok(Ok(_)) if line.len() > proto::MAX_REQUEST => Response::error(
                proto::ErrorKind::Internal,
                format!("request longer than {} bytes", proto::MAX_REQUEST),
            ),
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::error(
                    proto::ErrorKind::Internal,
                    format!("malformed request: {e}"),
                ),
                Ok(req) => {
                    let core = core.clone();
                    let (resp, after) = tokio::task::spawn_blocking(move || handle(&core, req))
                        .await
                        .unwrap_or_else(|e| {
                            (
                                Response::error(
                                    proto::ErrorKind::Internal,
                                    format!("internal error: {e}"),
                                ),
                                After::Nothing,
                            )
                        });
                    if !matches!(after, After::Nothing) {
                        let _ = ctl.send(after);
                    }
                    resp
                }
            },
        };
    let _ = w.write_all(&reply(resp)).await;
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
            error!(error = %e, "daemon failed");
            eprintln!("steer-ctl daemon: {e}");
            match e {
                DaemonError::Config(_) | DaemonError::NoMac(..) => exit::CONFIG,
                _ => exit::FAILURE,
            }
        }
    }
}

async fn serve(cfg: Config) -> Result<i32, DaemonError> {
    let d = cfg.daemon.clone();
    ensure_bpffs(&d.pin_dir)?;
    std::fs::create_dir_all(&d.pin_dir)
        .map_err(|e| DaemonError::Bpffs(format!("{}: {e}", d.pin_dir.display())))?;
    let state = State::load(&d.state_file)?;
    let adopting = datapath::link_pin(&d.pin_dir, d.interfaces.first().map_or("", |s| s)).exists();
    let dp = Datapath::load(&Options {
        max_services: d.max_services,
        max_flows: d.max_flows,
        pin_dir: Some(d.pin_dir.clone()),
    })?;
    let mut bal = Balancer::new(dp);
    bal.reserve_ids(
        state
            .services
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.id?)))
            .collect(),
        state
            .backends
            .iter()
            .filter_map(|(n, b)| Some((n.clone(), (b.id?, b.gen?))))
            .collect(),
    );
    let mut core = Core {
        cfg: Config {
            services: Vec::new(),
            ..cfg.clone()
        },
        state,
        bal,
        checks: BTreeMap::new(),
        paused: BTreeMap::new(),
        groups: BTreeMap::new(),
    };
    core.apply(&cfg, true)?;
    core.bal.clear_reservations();
    core.bal.clear_unused()?;
    for iface in &d.interfaces {
        let how = core.bal.datapath_mut().attach_pinned(
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
    core.save_state()?;
    info!(
        config = %cfg.path.display(),
        services = cfg.services.len(),
        adopted = adopting,
        "steer daemon ready"
    );
    let listener = bind_socket(&d.socket, d.socket_group.as_deref())?;
    let group = d.socket_group.as_deref().and_then(group_id);
    let core: Shared = Arc::new(Mutex::new(core));

    let (report_tx, mut report_rx) = mpsc::unbounded_channel::<Report>();
    let (ctl_tx, mut ctl_rx) = mpsc::unbounded_channel::<After>();
    let mut checks = JoinSet::new();
    spawn_checks(&core, &mut checks, &report_tx);
    let mut conns = JoinSet::new();
    let mut extra = JoinSet::new();
    if let Some(addr) = d.metrics {
        let core = core.clone();
        extra.spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, move || {
                let c = core.lock().expect("core lock");
                crate::metrics::render(&c.status(), &c.bal)
            })
            .await
            {
                error!(address = %addr, error = %e, "metrics endpoint failed");
            }
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Socket(d.socket.clone(), e))?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| DaemonError::Socket(d.socket.clone(), e))?;
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| DaemonError::Socket(d.socket.clone(), e))?;
    let detach = loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping; XDP stays attached with the last state"); break false; }
            _ = int.recv() => { info!("SIGINT: stopping; XDP stays attached with the last state"); break false; }
            _ = hup.recv() => {
                let core2 = core.clone();
                let (_, after) = tokio::task::spawn_blocking(move || handle(&core2, Request::Reload)).await.expect("reload task");
                // Also after a reload that failed part way: what it did apply needs its checks.
                if matches!(after, After::RestartChecks) {
                    checks.abort_all();
                    while checks.join_next().await.is_some() {}
                    spawn_checks(&core, &mut checks, &report_tx);
                }
            }
            Some(r) = report_rx.recv() => apply_report(&core, r),
            Some(after) = ctl_rx.recv() => match after {
                After::Shutdown { detach } => break detach,
                After::RestartChecks => {
                    checks.abort_all();
                    while checks.join_next().await.is_some() {}
                    spawn_checks(&core, &mut checks, &report_tx);
                }
                After::Nothing => {}
            },
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => { conns.spawn(serve_conn(s, core.clone(), ctl_tx.clone(), group)); }
                Err(e) => warn!(error = %e, "accept on the control socket"),
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    };
    checks.abort_all();
    extra.abort_all();
    // Let in-flight replies (the shutdown's own) go out.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    let _ = std::fs::remove_file(&d.socket);
    if detach {
        // The balancer's handles must close before the pins go, or the maps outlive us.
        drop(core);
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
