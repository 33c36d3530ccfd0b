//! The deploy sequences the verbs run, as library code: drain and wait until a flow scan from
//! after the drain counts no flow; wait for checks run since the command to pass before putting
//! a backend back; and `rollout`, which strings them together batch by batch.
//!
//! They are generic over how requests reach the daemon ([`Control`]: the socket [`Client`], or
//! an in-memory daemon in the tests) and over time, output, Ctrl-C and commands ([`Env`]), so
//! every sequence is tested without a daemon, a clock or a shell.

use std::{
    io::Write,
    process::{Command, ExitStatus, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    client::{Client, ClientError},
    exit,
    model::{AdminState, Health, Role},
    proto::{BackendStatus, ErrorKind, Request, Response, Status},
};

/// How often a waiting sequence asks the daemon again.
pub const POLL: Duration = Duration::from_millis(100);
/// How often `drain --wait` asks while the scan that sees the drain has not completed.
pub const FAST_POLL: Duration = Duration::from_millis(10);

/// Progress about a count that has not changed is repeated this often.
const REPEAT: Duration = Duration::from_secs(5);

/// Exit code of a sequence stopped by Ctrl-C (128 + SIGINT), as a shell reports it.
pub const INTERRUPTED: i32 = 130;

/// `check` of a backend that has no health checks (it is up by definition).
pub const NO_CHECKS: &str = "no checks";

/// `check` after a passing check.
pub const CHECK_OK: &str = "ok";

/// Sends a request to the daemon and returns its answer.
pub trait Control {
    fn call(&mut self, req: &Request) -> Result<Response, ClientError>;
}

impl Control for Client {
    fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.request(req)
    }
}

/// Everything else a sequence touches: time, progress output, Ctrl-C and commands.
pub trait Env {
    /// Time since a fixed point (monotonic).
    fn now(&self) -> Duration;
    fn sleep(&mut self, d: Duration);
    /// One line of progress for the operator.
    fn progress(&mut self, msg: &str);
    /// Whether the operator asked to stop (Ctrl-C).
    fn interrupted(&self) -> bool;
    /// Runs a command line with `sh -c`.
    fn exec(&mut self, command: &str) -> std::io::Result<ExitStatus>;
}

/// The real [`Env`]: the monotonic clock, `thread::sleep`, `sh -c`, a progress writer and an
/// optional flag set by a SIGINT handler.
pub struct System {
    started: Instant,
    progress: Box<dyn FnMut(&str)>,
    interrupt: Option<&'static AtomicBool>,
    commands_to_stderr: bool,
}

impl System {
    /// Progress goes to `progress` (e.g. a line on stderr).
    pub fn new(progress: impl FnMut(&str) + 'static) -> System {
        System {
            started: Instant::now(),
            progress: Box::new(progress),
            interrupt: None,
            commands_to_stderr: false,
        }
    }

    /// Progress as lines on stderr; a closed stderr is not an error.
    pub fn stderr() -> System {
        System::new(|m| {
            let _ = writeln!(std::io::stderr(), "{m}");
        })
    }

    /// `interrupted()` reads this flag (set it from a SIGINT handler).
    pub fn with_interrupt(mut self, flag: &'static AtomicBool) -> System {
        self.interrupt = Some(flag);
        self
    }

    /// Sends the commands' standard output to stderr, so that stdout stays one JSON object.
    pub fn commands_to_stderr(mut self, yes: bool) -> System {
        self.commands_to_stderr = yes;
        self
    }
}

impl Env for System {
    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn sleep(&mut self, d: Duration) {
        std::thread::sleep(d);
    }

    fn progress(&mut self, msg: &str) {
        (self.progress)(msg);
    }

    fn interrupted(&self) -> bool {
        self.interrupt.is_some_and(|f| f.load(Ordering::SeqCst))
    }

    fn exec(&mut self, command: &str) -> std::io::Result<ExitStatus> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", command]);
        if self.commands_to_stderr {
            use std::os::fd::AsFd;
            let err = std::io::stderr().as_fd().try_clone_to_owned()?;
            cmd.stdout(Stdio::from(err));
        }
        cmd.status()
    }
}

/// A backend, after a `ready --wait-healthy` gave up on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unhealthy {
    pub name: String,
    pub health: Health,
    /// The last check's result.
    pub check: String,
    /// The admin state it was left in (the one it had before the command, unless putting it
    /// back failed: see `restore_error`).
    pub admin: AdminState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The daemon refused a request.
    #[error("{error}")]
    Daemon {
        error: String,
        kind: Option<ErrorKind>,
    },
    #[error("no backend or group named {0:?}")]
    UnknownTarget(String),
    /// The flow scan failed or did not count a backend: "0 active flows" cannot be told apart
    /// from "unknown", so the wait stops.
    #[error("{target}: active flows unknown: {why}")]
    FlowsUnknown { target: String, why: String },
    #[error("{}", drain_timeout_text(target, *active_flows, *waited))]
    DrainTimeout {
        target: String,
        /// The last count from a scan that saw the drain; `None` when no such scan completed.
        active_flows: Option<u64>,
        waited: Duration,
    },
    #[error("{}", not_healthy_text(backends, *waited))]
    NotHealthy {
        waited: Duration,
        backends: Vec<Unhealthy>,
    },
    #[error("interrupted{}", left_text(left))]
    Interrupted {
        /// Backends and the admin state they were left in.
        left: Vec<(String, AdminState)>,
    },
    /// A sequence will not start (it would leave a service without an eligible backend, …).
    #[error("{0}")]
    Refused(String),
}

fn drain_timeout_text(target: &str, active_flows: Option<u64>, waited: Duration) -> String {
    match active_flows {
        Some(n) => format!(
            "{target}: {n} active flows left after {:.1} s (--timeout)",
            waited.as_secs_f64()
        ),
        None => format!(
            "{target}: no flow scan since the drain after {:.1} s (--timeout); active flows unknown",
            waited.as_secs_f64()
        ),
    }
}

fn not_healthy_text(backends: &[Unhealthy], waited: Duration) -> String {
    let lines: Vec<String> = backends
        .iter()
        .map(|b| {
            let what = if b.health == Health::Up {
                "no passing check since the command".to_string()
            } else {
                format!("still {}", b.health)
            };
            let mut line = format!(
                "{}: {what} after {:.1} s (last check: {}); left {}",
                b.name,
                waited.as_secs_f64(),
                b.check,
                b.admin
            );
            if let Some(e) = &b.restore_error {
                line += &format!(" (putting it back failed: {e})");
            }
            line
        })
        .collect();
    lines.join("\n")
}

fn left_text(left: &[(String, AdminState)]) -> String {
    if left.is_empty() {
        return String::new();
    }
    let l: Vec<String> = left.iter().map(|(b, s)| format!("{b} left {s}")).collect();
    format!("; {}", l.join(", "))
}

impl DeployError {
    /// The exit code a verb ends with for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            DeployError::Client(e) => e.exit_code(),
            DeployError::Daemon { kind, .. } => kind.map_or(exit::FAILURE, ErrorKind::exit_code),
            DeployError::DrainTimeout { .. } | DeployError::NotHealthy { .. } => exit::TIMEOUT,
            DeployError::Interrupted { .. } => INTERRUPTED,
            DeployError::UnknownTarget(_)
            | DeployError::FlowsUnknown { .. }
            | DeployError::Refused(_) => exit::FAILURE,
        }
    }

    /// What sort of failure, for `--json` output's `kind`: the daemon's `kind` when it refused,
    /// else one of unreachable, permission, io, protocol, unknown_target, flows_unknown,
    /// timeout, interrupted, refused, failed.
    pub fn kind(&self) -> String {
        match self {
            DeployError::Client(e) => e.kind().into(),
            DeployError::Daemon { kind, .. } => kind
                .and_then(|k| serde_json::to_value(k).ok())
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_else(|| "failed".into()),
            DeployError::UnknownTarget(_) => "unknown_target".into(),
            DeployError::FlowsUnknown { .. } => "flows_unknown".into(),
            DeployError::DrainTimeout { .. } | DeployError::NotHealthy { .. } => "timeout".into(),
            DeployError::Interrupted { .. } => "interrupted".into(),
            DeployError::Refused(_) => "refused".into(),
        }
    }
}

/// Sends a request; a refusal is an error.
pub fn call(ctl: &mut impl Control, req: &Request) -> Result<Response, DeployError> {
    let r = ctl.call(req)?;
    if r.ok {
        Ok(r)
    } else {
        Err(DeployError::Daemon {
            error: r.error.unwrap_or_else(|| "the daemon refused".into()),
            kind: r.kind,
        })
    }
}

/// The daemon's status.
pub fn status(ctl: &mut impl Control) -> Result<Status, DeployError> {
    call(ctl, &Request::Status {})?
        .status
        .ok_or_else(|| ClientError::Protocol("a status reply without a status".into()).into())
}

/// The backends a target stands for, as the daemon resolves it: the backend of that name, or
/// else every backend of that group.
pub fn members<'a>(status: &'a Status, target: &str) -> Vec<&'a BackendStatus> {
    let named: Vec<&BackendStatus> = status
        .backends
        .iter()
        .filter(|b| b.name == target)
        .collect();
    if !named.is_empty() {
        return named;
    }
    status
        .backends
        .iter()
        .filter(|b| b.group.as_deref() == Some(target))
        .collect()
}

fn set(ctl: &mut impl Control, target: &str, state: AdminState) -> Result<Response, DeployError> {
    call(
        ctl,
        &Request::Admin {
            target: target.into(),
            state,
        },
    )
}

/// `drain`'s options.
#[derive(Clone, Copy, Debug)]
pub struct DrainOpts {
    /// Wait until no active flow is left.
    pub wait: bool,
    /// Give up waiting after this long.
    pub timeout: Duration,
    /// Wait at least this long, even with no flow left.
    pub min: Duration,
}

/// A drain that took effect (and, with `wait`, ended).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Drained {
    pub target: String,
    /// The backends drained (a group stands for its members).
    pub backends: Vec<String>,
    /// The flow scan that first saw the drain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan: Option<u64>,
    /// 0 after a wait; absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_flows: Option<u64>,
    pub waited_ms: u64,
    /// With `[cluster]`: the other LB hosts whose flows were waited for too.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Hosts that disappeared while waited for (their record died: daemon stopped or host
    /// lost): reported, not waited for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
}

/// Drains a backend or group in one request; with `wait`, waits until a flow scan that saw the
/// drain counts no active flow on any of its backends. A failed scan or a missing count is an
/// error, never "0 active flows".
pub fn drain(
    ctl: &mut impl Control,
    env: &mut impl Env,
    target: &str,
    opts: DrainOpts,
) -> Result<Drained, DeployError> {
    let start = env.now();
    let r = set(ctl, target, AdminState::Drain)?;
    let mut backends = r.backends.clone();
    if !opts.wait {
        if backends.is_empty() {
            backends.push(target.to_string());
        }
        return Ok(Drained {
            target: target.into(),
            backends,
            scan: r.scan,
            active_flows: None,
            waited_ms: 0,
            hosts: Vec::new(),
            gone: Vec::new(),
        });
    }
    let scan = r.scan.ok_or_else(|| {
        ClientError::Protocol("the drain's reply does not say which flow scan will see it".into())
    })?;
    // The reply lists what the drain changed; a member drained before is watched as well.
    let st = status(ctl)?;
    for b in members(&st, target) {
        if !backends.contains(&b.name) {
            backends.push(b.name.clone());
        }
    }
    if backends.is_empty() {
        return Err(ClientError::Protocol(format!(
            "the daemon drained {target:?} but names no backend of it"
        ))
        .into());
    }
    // In a cluster, every other host's flows too: once its published counts come from a
    // scan that began after it held this drain (the intent's revision this host holds now).
    let peers = st.cluster.as_ref().map(|c| Peers {
        revision: c.revision,
        hosts: c.peers.iter().map(|p| p.host.clone()).collect(),
    });
    let gone = wait_drained(
        ctl,
        env,
        target,
        &backends,
        scan,
        start,
        opts.timeout,
        opts.min,
        peers.as_ref(),
    )?;
    Ok(Drained {
        target: target.into(),
        backends,
        scan: Some(scan),
        active_flows: Some(0),
        waited_ms: (env.now() - start).as_millis() as u64,
        hosts: peers.map(|p| p.hosts).unwrap_or_default(),
        gone,
    })
}

/// The records in `st` of the hosts of `hosts` not yet `gone`; a host whose record has expired
/// (its daemon stopped, or the host was lost) is said once, added to `gone`, and no longer
/// waited for.
fn live_peers<'a>(
    st: &'a Status,
    hosts: &[String],
    gone: &mut Vec<String>,
    env: &mut impl Env,
    label: &str,
) -> Vec<&'a crate::proto::PeerStatus> {
    let mut live = Vec::new();
    for h in hosts
        .iter()
        .filter(|h| !gone.contains(h))
        .cloned()
        .collect::<Vec<_>>()
    {
        match st
            .cluster
            .as_ref()
            .and_then(|c| c.peers.iter().find(|p| p.host == h))
        {
            Some(p) => live.push(p),
            None => {
                env.progress(&format!(
                    "{label}: LB host {h} is gone (its record expired): not waited for"
                ));
                gone.push(h);
            }
        }
    }
    live
}

/// The other LB hosts a drain waits for, and the intent revision their counts must cover.
struct Peers {
    revision: i64,
    hosts: Vec<String>,
}

/// Waits until flow scan `scan` or a later one counts no active flow on `names`, and (in a
/// cluster) until every host of `peers` publishes counts covering the drain with none on them;
/// `label` names them in progress and errors. Returns the hosts that disappeared meanwhile.
#[allow(clippy::too_many_arguments)]
fn wait_drained(
    ctl: &mut impl Control,
    env: &mut impl Env,
    label: &str,
    names: &[String],
    scan: u64,
    start: Duration,
    timeout: Duration,
    min: Duration,
    peers: Option<&Peers>,
) -> Result<Vec<String>, DeployError> {
    let mut last_count: Option<u64> = None;
    let mut said: Option<(Option<u64>, Duration)> = None;
    let mut gone: Vec<String> = Vec::new();
    loop {
        let st = status(ctl)?;
        if let Some(why) = st.flow_scan.error {
            return Err(DeployError::FlowsUnknown {
                target: label.into(),
                why: format!("the flow scan failed: {why}"),
            });
        }
        if st.flow_scan.last_full_seq >= scan && scan > 0 {
            // Entries evicted from a full table cannot be counted: "0 active" would be a guess.
            return Err(DeployError::FlowsUnknown {
                target: label.into(),
                why: format!(
                    "the connection table is full ({} of {} established flows): connections evicted from it cannot be counted; raise daemon.max_flows",
                    st.flow_scan.established, st.flow_scan.capacity
                ),
            });
        }
        // Other hosts: fresh when their counts cover the drain; a host whose record died is
        // reported once and no longer waited for.
        let (mut peers_fresh, mut peer_sum) = (true, 0u64);
        let hosts = peers.map(|p| p.hosts.as_slice()).unwrap_or(&[]);
        for p in live_peers(&st, hosts, &mut gone, env, label) {
            if p.revision >= peers.map_or(0, |p| p.revision) {
                peer_sum += names.iter().filter_map(|n| p.active.get(n)).sum::<u64>();
            } else {
                peers_fresh = false;
            }
        }
        let fresh = st.flow_scan.seq >= scan && peers_fresh;
        let count = if fresh {
            let mut sum = 0;
            for n in names {
                let b = st.backends.iter().find(|b| &b.name == n).ok_or_else(|| {
                    DeployError::FlowsUnknown {
                        target: label.into(),
                        why: format!("{n} is no longer in the daemon's status"),
                    }
                })?;
                sum += b.active_flows.ok_or_else(|| DeployError::FlowsUnknown {
                    target: label.into(),
                    why: format!("flow scan {} has no count for {n}", st.flow_scan.seq),
                })?;
            }
            sum += peer_sum;
            last_count = Some(sum);
            Some(sum)
        } else {
            None
        };
        let now = env.now();
        let waited = now - start;
        if count == Some(0) && waited >= min.min(timeout) {
            return Ok(gone);
        }
        if waited >= timeout {
            return Err(DeployError::DrainTimeout {
                target: label.into(),
                active_flows: last_count,
                waited,
            });
        }
        if env.interrupted() {
            return Err(DeployError::Interrupted {
                left: names
                    .iter()
                    .map(|n| (n.clone(), AdminState::Drain))
                    .collect(),
            });
        }
        let repeat = said.is_none_or(|(c, at)| c != count || now - at >= REPEAT);
        if repeat {
            match count {
                Some(n) => env.progress(&format!("{label}: {n} active flows")),
                None => env.progress(&format!(
                    "{label}: waiting for flow scan {scan} (the first to see the drain; last \
                     completed: {})",
                    st.flow_scan.seq
                )),
            }
            said = Some((count, now));
        }
        // The first answer usually comes with the next scan, milliseconds away: poll fast
        // until the scan that sees the drain has completed, then at the usual pace.
        env.sleep(if count.is_none() { FAST_POLL } else { POLL });
    }
}

/// `ready`'s options.
#[derive(Clone, Copy, Debug)]
pub struct ReadyOpts {
    /// Set ready only after fresh passing checks.
    pub wait_healthy: bool,
    /// Give up waiting after this long (and put everything back).
    pub timeout: Duration,
    /// Checks that must have run since the command before one counts as fresh: 1 trusts a
    /// check already in flight when the command started; 2 does not.
    pub fresh_checks: u64,
}

impl ReadyOpts {
    pub fn new(wait_healthy: bool, timeout: Duration) -> ReadyOpts {
        ReadyOpts {
            wait_healthy,
            timeout,
            fresh_checks: 1,
        }
    }
}

/// A backend or group back in rotation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Readied {
    pub target: String,
    pub backends: Vec<String>,
    pub waited_ms: u64,
}

/// Whether a backend passed a check run since `runs0` checks (or has no checks).
fn fresh_up(b: &BackendStatus, runs0: u64, fresh_checks: u64) -> bool {
    b.health == Health::Up
        && (b.check == NO_CHECKS
            || (b.checks_run >= runs0 + fresh_checks.max(1) && b.check == CHECK_OK))
}

/// Puts backends back to the admin states they had; returns the failures.
fn restore(ctl: &mut impl Control, changed: &[(String, AdminState)]) -> Vec<(String, DeployError)> {
    let mut failed = Vec::new();
    for (name, state) in changed {
        if let Err(e) = set(ctl, name, *state) {
            failed.push((name.clone(), e));
        }
    }
    failed
}

/// Puts a backend or group back in rotation. With `wait_healthy`, nothing is put back before
/// every backend of it has passed a check run since this call: a backend in `maint` (checks
/// paused) is drained first so that its checks run, still out of rotation; then one `ready`
/// for the target. On timeout or Ctrl-C, every backend is put back to the admin state it had.
pub fn ready(
    ctl: &mut impl Control,
    env: &mut impl Env,
    target: &str,
    opts: ReadyOpts,
) -> Result<Readied, DeployError> {
    let start = env.now();
    if !opts.wait_healthy {
        let r = set(ctl, target, AdminState::Ready)?;
        return Ok(Readied {
            target: target.into(),
            backends: if r.backends.is_empty() {
                vec![target.into()]
            } else {
                r.backends
            },
            waited_ms: 0,
        });
    }
    let st = status(ctl)?;
    // Each backend's admin state and checks run before the command.
    let before: Vec<(String, AdminState, u64)> = members(&st, target)
        .into_iter()
        .map(|b| (b.name.clone(), b.admin, b.checks_run))
        .collect();
    if before.is_empty() {
        return Err(DeployError::UnknownTarget(target.into()));
    }
    let mut changed: Vec<(String, AdminState)> = Vec::new();
    // In a cluster, every other host's checks must find them up too.
    let peers: Vec<String> = st
        .cluster
        .as_ref()
        .map(|c| c.peers.iter().map(|p| p.host.clone()).collect())
        .unwrap_or_default();
    let result = wait_then_ready(ctl, env, target, opts, start, &before, &peers, &mut changed);
    match result {
        Ok(r) => Ok(r),
        Err(e) => {
            let failed = restore(ctl, &changed);
            Err(match e {
                DeployError::NotHealthy { waited, backends } => DeployError::NotHealthy {
                    waited,
                    backends: backends
                        .into_iter()
                        .map(|mut b| {
                            if let Some((_, err)) = failed.iter().find(|(n, _)| *n == b.name) {
                                b.admin = AdminState::Drain;
                                b.restore_error = Some(err.to_string());
                            }
                            b
                        })
                        .collect(),
                },
                DeployError::Interrupted { .. } => DeployError::Interrupted {
                    left: before
                        .iter()
                        .map(|(n, s, _)| {
                            let failed = failed.iter().any(|(f, _)| f == n);
                            (n.clone(), if failed { AdminState::Drain } else { *s })
                        })
                        .collect(),
                },
                e => e,
            })
        }
    }
}

/// `ready`'s wait (here, and on every host of `peers` by the records they publish); `changed`
/// collects what it changed, for the caller to undo on failure.
#[allow(clippy::too_many_arguments)]
fn wait_then_ready(
    ctl: &mut impl Control,
    env: &mut impl Env,
    target: &str,
    opts: ReadyOpts,
    start: Duration,
    before: &[(String, AdminState, u64)],
    peers: &[String],
    changed: &mut Vec<(String, AdminState)>,
) -> Result<Readied, DeployError> {
    let mut gone: Vec<String> = Vec::new();
    for (name, admin, _) in before.iter().filter(|b| b.1 == AdminState::Maint) {
        set(ctl, name, AdminState::Drain)?;
        changed.push((name.clone(), *admin));
        env.progress(&format!(
            "{name}: maint -> drain until its checks pass (still out of rotation)"
        ));
    }
    let mut said: Vec<(String, String)> = Vec::new();
    loop {
        let st = status(ctl)?;
        let mut pending: Vec<&BackendStatus> = Vec::new();
        for (name, _, runs0) in before {
            let b = st
                .backends
                .iter()
                .find(|b| &b.name == name)
                .ok_or_else(|| {
                    DeployError::Refused(format!("{name} is no longer in the daemon's status"))
                })?;
            if !fresh_up(b, *runs0, opts.fresh_checks) {
                pending.push(b);
            }
        }
        // Other hosts: a record published since the command began that lists them up.
        let waited_so_far = env.now() - start;
        let peers_pending: Vec<String> = live_peers(&st, peers, &mut gone, env, target)
            .into_iter()
            .filter(|p| {
                Duration::from_millis(p.age_ms) >= waited_so_far
                    || !before.iter().all(|(n, _, _)| p.up.contains(n))
            })
            .map(|p| p.host.clone())
            .collect();
        if pending.is_empty() && !peers_pending.is_empty() {
            let line = format!(
                "{target}: up here; waiting for the checks of {}",
                peers_pending.join(", ")
            );
            if !said.iter().any(|(n, k)| n == "*peers" && *k == line) {
                said.retain(|(n, _)| n != "*peers");
                said.push(("*peers".into(), line.clone()));
                env.progress(&line);
            }
        }
        if pending.is_empty() && peers_pending.is_empty() {
            let r = set(ctl, target, AdminState::Ready)?;
            return Ok(Readied {
                target: target.into(),
                backends: if r.backends.is_empty() {
                    before.iter().map(|b| b.0.clone()).collect()
                } else {
                    r.backends
                },
                waited_ms: (env.now() - start).as_millis() as u64,
            });
        }
        let waited = env.now() - start;
        if waited >= opts.timeout {
            return Err(DeployError::NotHealthy {
                waited,
                backends: pending
                    .iter()
                    .map(|b| Unhealthy {
                        name: b.name.clone(),
                        health: b.health,
                        check: b.check.clone(),
                        admin: before
                            .iter()
                            .find(|x| x.0 == b.name)
                            .map_or(b.admin, |x| x.1),
                        restore_error: None,
                    })
                    .chain(peers_pending.iter().flat_map(|h| {
                        before.iter().map(move |(n, admin, _)| Unhealthy {
                            name: format!("{n} (on LB host {h})"),
                            health: crate::model::Health::Unknown,
                            check: format!("not listed up in {h}'s published checks"),
                            admin: *admin,
                            restore_error: None,
                        })
                    }))
                    .collect(),
            });
        }
        if env.interrupted() {
            return Err(DeployError::Interrupted { left: Vec::new() });
        }
        for b in &pending {
            let line = format!(
                "{}: {} (last check: {}; {} run since the command); waiting for a passing one",
                b.name,
                b.health,
                b.check,
                b.checks_run
                    .saturating_sub(before.iter().find(|x| x.0 == b.name).map_or(0, |x| x.2))
            );
            // Say it when the health or the check's result changes.
            let key = format!("{} {}", b.health, b.check);
            match said.iter_mut().find(|(n, _)| *n == b.name) {
                Some((_, k)) if *k == key => {}
                Some((_, k)) => {
                    *k = key;
                    env.progress(&line);
                }
                None => {
                    said.push((b.name.clone(), key));
                    env.progress(&line);
                }
            }
        }
        env.sleep(POLL);
    }
}

/// What `rollout` does.
#[derive(Clone, Debug)]
pub struct Plan {
    pub service: String,
    /// Run by `sh -c` per backend; `{backend}` and `{address}` are replaced.
    pub exec: String,
    /// Backends at a time (lowered so that the service always keeps an eligible backend).
    pub batch: usize,
    pub drain_timeout: Duration,
    pub healthy_timeout: Duration,
    /// Go on with the next batches after a failure (the failed backends stay drained).
    pub continue_on_error: bool,
}

/// What happened to one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Step {
    pub backend: String,
    pub address: String,
    pub drain_ms: u64,
    /// Flows still open when the drain timeout passed (0 when drained).
    pub flows_left: u64,
    pub exec_ms: u64,
    pub healthy_ms: u64,
    /// "ok", or why not and that the backend was left drained.
    pub result: String,
    /// Drained by the rollout and not put back.
    #[serde(skip)]
    pub left_drained: bool,
}

/// A rollout's summary (`--json` prints it).
#[derive(Clone, Debug, Serialize)]
pub struct Rollout {
    pub ok: bool,
    pub service: String,
    pub seconds: f64,
    /// Stopped by Ctrl-C (after the batch in flight).
    pub interrupted: bool,
    /// Every backend the rollout drained and did not put back: failed steps, and the batch in
    /// flight when it was interrupted or stopped by an error.
    pub left_drained: Vec<String>,
    pub backends: Vec<Step>,
    /// Why it stopped or what failed, when not `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The exit code: 0, 1, 130 when interrupted, or the code of the error that stopped it.
    #[serde(skip)]
    pub exit_code: i32,
}

/// Whether a name can go into a shell command line as is (config check restricts backend names
/// to these characters; checked again so that a command never runs with anything else).
fn shell_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
}

/// A service's pool backends (of `group` only, when one is switched to).
fn pool_of<'a>(st: &'a Status, service: &str, group: Option<&str>) -> Vec<&'a BackendStatus> {
    st.backends
        .iter()
        .filter(|b| {
            b.service == service
                && b.role == Role::Pool
                && (group.is_none() || b.group.as_deref() == group)
        })
        .collect()
}

fn eligible(b: &BackendStatus) -> bool {
    b.admin == AdminState::Ready && b.health == Health::Up
}

/// Restarts a service's pool backends (those of its active group, when one is switched to) a
/// batch at a time: drain and wait, run the command, wait for fresh passing checks, ready.
/// Never takes out so many that no eligible backend is left; stops at the first failure
/// (unless `continue_on_error`) and after the batch in flight on Ctrl-C. A failed step leaves
/// its backend drained, and the summary's `left_drained` lists every such backend.
///
/// `Err` only when it does not start (unknown service, too few eligible backends, daemon
/// unreachable); once started, the summary says what happened.
pub fn rollout(
    ctl: &mut impl Control,
    env: &mut impl Env,
    plan: &Plan,
) -> Result<Rollout, DeployError> {
    let start = env.now();
    let st = status(ctl)?;
    let service = st
        .services
        .iter()
        .find(|s| s.name == plan.service)
        .ok_or_else(|| DeployError::Daemon {
            error: format!("no service named {:?}", plan.service),
            kind: Some(ErrorKind::UnknownService),
        })?;
    // With a group switched to, the rollout is of that group: the others take no new flows.
    let group = service.active_group.clone();
    let mut pool = pool_of(&st, &plan.service, group.as_deref());
    pool.sort_by(|a, b| a.name.cmp(&b.name));
    if pool.is_empty() {
        return Err(DeployError::Refused(format!(
            "service {:?} has no pool backend",
            plan.service
        )));
    }
    let eligible0 = pool.iter().filter(|b| eligible(b)).count();
    if eligible0 < 2 {
        return Err(DeployError::Refused(format!(
            "service {:?} has {eligible0} eligible backend(s): a rollout would leave it none",
            plan.service
        )));
    }
    let batch = plan.batch.clamp(1, eligible0 - 1);
    if batch < plan.batch {
        env.progress(&format!(
            "batch of {} lowered to {batch}: {eligible0} backends are eligible",
            plan.batch
        ));
    }
    let todo: Vec<(String, String)> = pool
        .iter()
        .filter(|b| b.admin == AdminState::Ready)
        .map(|b| (b.name.clone(), b.address.clone()))
        .collect();

    let mut steps: Vec<Step> = Vec::new();
    let mut failed = false;
    let mut interrupted = false;
    // An error that stopped the rollout (the daemon went away, a count was unknown, …).
    let mut stopped: Option<DeployError> = None;
    let mut next = 0;
    while next < todo.len() {
        if env.interrupted() {
            interrupted = true;
            break;
        }
        // Recount before each batch: failures left drained, or checks, may have taken some out.
        let eligible_now = match status(ctl) {
            Ok(st) => pool_of(&st, &plan.service, group.as_deref())
                .into_iter()
                .filter(|b| eligible(b))
                .count(),
            Err(e) => {
                stopped = Some(e);
                break;
            }
        };
        let n = batch.min(eligible_now.saturating_sub(1));
        if n == 0 {
            stopped = Some(DeployError::Refused(format!(
                "stopping: {eligible_now} eligible backend(s) left; taking one out would leave \
                 none"
            )));
            break;
        }
        let end = (next + n).min(todo.len());
        let mut batch_steps: Vec<Step> = todo[next..end]
            .iter()
            .map(|(b, a)| Step {
                backend: b.clone(),
                address: a.clone(),
                ..Step::default()
            })
            .collect();
        next = end;
        let outcome = run_batch(ctl, env, plan, &mut batch_steps);
        for s in batch_steps.iter().filter(|s| s.result != "ok") {
            env.progress(&format!("{}: {}", s.backend, s.result));
        }
        steps.extend(batch_steps);
        match outcome {
            Batch::Ok => {}
            Batch::Failed => {
                failed = true;
                if !plan.continue_on_error {
                    break;
                }
            }
            Batch::Interrupted => {
                interrupted = true;
                break;
            }
            Batch::Stopped(e) => {
                stopped = Some(e);
                break;
            }
        }
    }
    let left_drained: Vec<String> = steps
        .iter()
        .filter(|s| s.left_drained)
        .map(|s| s.backend.clone())
        .collect();
    let ok = !failed && !interrupted && stopped.is_none() && steps.len() == todo.len();
    let (error, kind, exit_code) = if ok {
        (None, None, exit::OK)
    } else if interrupted {
        (
            Some(format!(
                "interrupted; {}",
                if left_drained.is_empty() {
                    "no backend left drained".to_string()
                } else {
                    format!("{} left drained", left_drained.join(", "))
                }
            )),
            Some("interrupted".to_string()),
            INTERRUPTED,
        )
    } else if let Some(e) = &stopped {
        (Some(e.to_string()), Some(e.kind()), e.exit_code())
    } else {
        let failures: Vec<String> = steps
            .iter()
            .filter(|s| s.result != "ok")
            .map(|s| format!("{}: {}", s.backend, s.result))
            .collect();
        (
            Some(failures.join("; ")),
            Some("failed".to_string()),
            exit::FAILURE,
        )
    };
    Ok(Rollout {
        ok,
        service: plan.service.clone(),
        seconds: (env.now() - start).as_secs_f64(),
        interrupted,
        left_drained,
        backends: steps,
        error,
        kind,
        exit_code,
    })
}

/// How a batch ended.
enum Batch {
    Ok,
    /// A step failed; its backend is left drained.
    Failed,
    /// Ctrl-C; the batch's backends not put back are left drained.
    Interrupted,
    /// An error that stops the rollout.
    Stopped(DeployError),
}

/// One batch: drain all and wait, run the command per backend, then put each back once fresh
/// checks pass. Marks every step it drained and did not put back `left_drained`.
fn run_batch(ctl: &mut impl Control, env: &mut impl Env, plan: &Plan, steps: &mut [Step]) -> Batch {
    let names: Vec<String> = steps.iter().map(|s| s.backend.clone()).collect();
    let label = names.join(", ");
    // 1. Drain and wait.
    let t = env.now();
    let mut scan = 0;
    for s in steps.iter_mut() {
        match set(ctl, &s.backend, AdminState::Drain) {
            Ok(r) => {
                s.left_drained = true;
                scan = scan.max(r.scan.unwrap_or(0));
            }
            Err(e) => {
                for s in steps.iter_mut() {
                    s.result = if s.left_drained {
                        format!("stopped ({e}); left drained")
                    } else {
                        format!("not drained: {e}")
                    };
                }
                return Batch::Stopped(e);
            }
        }
    }
    env.progress(&format!("{label}: draining"));
    // In a cluster, the batch's flows on every host (see `drain`).
    let peers = status(ctl).ok().and_then(|st| st.cluster).map(|c| Peers {
        revision: c.revision,
        hosts: c.peers.iter().map(|p| p.host.clone()).collect(),
    });
    let drained = wait_drained(
        ctl,
        env,
        &label,
        &names,
        scan,
        t,
        plan.drain_timeout,
        Duration::ZERO,
        peers.as_ref(),
    )
    .map(|gone| {
        if !gone.is_empty() {
            env.progress(&format!(
                "{label}: LB host(s) {} gone meanwhile: not waited for",
                gone.join(", ")
            ));
        }
    });
    let drain_ms = (env.now() - t).as_millis() as u64;
    for s in steps.iter_mut() {
        s.drain_ms = drain_ms;
    }
    match drained {
        Ok(()) => env.progress(&format!(
            "{label}: drained in {:.1} s",
            (env.now() - t).as_secs_f64()
        )),
        Err(DeployError::DrainTimeout { active_flows, .. }) => {
            let left = active_flows.unwrap_or(0);
            for s in steps.iter_mut() {
                s.flows_left = left;
            }
            env.progress(&format!(
                "{label}: drain timeout with {} flows left; going on",
                active_flows.map_or("an unknown number of".into(), |n| n.to_string())
            ));
        }
        Err(DeployError::Interrupted { .. }) => {
            for s in steps.iter_mut() {
                s.result = "interrupted; left drained".into();
            }
            return Batch::Interrupted;
        }
        Err(e) => {
            for s in steps.iter_mut() {
                s.result = format!("{e}; left drained");
            }
            return match e {
                DeployError::FlowsUnknown { .. } => Batch::Failed,
                e => Batch::Stopped(e),
            };
        }
    }
    // 2. Run the command, per backend.
    let mut ok = true;
    for s in steps.iter_mut() {
        if !shell_safe(&s.backend) || !shell_safe(&s.address) {
            s.result = format!(
                "name or address not safe in a command line ({:?}, {:?}); left drained",
                s.backend, s.address
            );
            ok = false;
            continue;
        }
        let cmd = plan
            .exec
            .replace("{backend}", &s.backend)
            .replace("{address}", &s.address);
        let t = env.now();
        env.progress(&format!("{}: running {cmd}", s.backend));
        let st = env.exec(&cmd);
        s.exec_ms = (env.now() - t).as_millis() as u64;
        match st {
            Ok(st) if st.success() => {}
            Ok(st) => {
                s.result = format!("command failed ({st}); left drained");
                ok = false;
            }
            Err(e) => {
                s.result = format!("command could not run ({e}); left drained");
                ok = false;
            }
        }
    }
    if env.interrupted() {
        // Stop with the batch in flight drained: it has just been worked on.
        for s in steps.iter_mut().filter(|s| s.result.is_empty()) {
            s.result = "interrupted; left drained".into();
        }
        return Batch::Interrupted;
    }
    // 3. Wait for fresh passing checks while still drained — a result from before the
    // restart proves nothing, nor does one in flight when the command ended — then ready.
    let opts = ReadyOpts {
        wait_healthy: true,
        timeout: plan.healthy_timeout,
        fresh_checks: 2,
    };
    let mut i = 0;
    while i < steps.len() {
        let s = &mut steps[i];
        i += 1;
        if !s.result.is_empty() {
            continue;
        }
        let t = env.now();
        let r = ready(ctl, env, &s.backend, opts);
        s.healthy_ms = (env.now() - t).as_millis() as u64;
        match r {
            Ok(_) => {
                s.result = "ok".into();
                s.left_drained = false;
                env.progress(&format!(
                    "{}: healthy and back in rotation {:.1} s after the command",
                    s.backend,
                    (env.now() - t).as_secs_f64()
                ));
            }
            Err(DeployError::NotHealthy { .. }) => {
                s.result = "not healthy in time; left drained".into();
                ok = false;
            }
            Err(DeployError::Interrupted { .. }) => {
                for s in steps.iter_mut().filter(|s| s.result.is_empty()) {
                    s.result = "interrupted; left drained".into();
                }
                return Batch::Interrupted;
            }
            Err(e) => {
                for s in steps.iter_mut().filter(|s| s.result.is_empty()) {
                    s.result = format!("stopped ({e}); left drained");
                }
                return Batch::Stopped(e);
            }
        }
    }
    if ok {
        Batch::Ok
    } else {
        Batch::Failed
    }
}

#[cfg(test)]
mod tests {
    //! The sequences against an in-memory daemon with a simulated clock: checks run every
    //! `check_every` ms (not in `maint`), the flow table is scanned every `scan_every` ms, and
    //! every request is logged with the time it was sent.

    use std::{cell::RefCell, os::unix::process::ExitStatusExt, rc::Rc};

    use super::*;
    use crate::proto::{FlowScan, ServiceStatus};

    struct FakeBackend {
        st: BackendStatus,
        /// Whether the server answers its checks.
        server_up: bool,
        has_checks: bool,
        /// Open flows now (a scan copies them into `active_flows`).
        flows: u64,
    }

    type Event = Box<dyn FnOnce(&mut World)>;
    type ExecHook = Box<dyn FnMut(&mut World, &str) -> i32>;

    struct World {
        now: u64,
        backends: Vec<FakeBackend>,
        services: Vec<ServiceStatus>,
        scan_seq: u64,
        scan_every: u64,
        scan_error: Option<String>,
        /// Scans leave out the counts (and say no error).
        scan_omits_counts: bool,
        /// The last scan that found the established table full (0: none).
        last_full_seq: u64,
        check_every: u64,
        events: Vec<(u64, Event)>,
        /// Every request, with the time it was sent.
        log: Vec<(u64, Request)>,
        progress: Vec<String>,
        execs: Vec<String>,
        exec_hook: Option<ExecHook>,
        interrupted: bool,
        /// Fewest eligible pool backends seen after any request.
        min_eligible: usize,
    }

    impl World {
        fn new(backends: &[(&str, Option<&str>)]) -> World {
            let backends: Vec<FakeBackend> = backends
                .iter()
                .enumerate()
                .map(|(i, (name, group))| FakeBackend {
                    st: BackendStatus {
                        name: name.to_string(),
                        service: "web".into(),
                        address: format!("10.0.0.{}", i + 1),
                        role: Role::Pool,
                        group: group.map(String::from),
                        admin: AdminState::Ready,
                        health: Health::Up,
                        check: CHECK_OK.into(),
                        checks_run: 5,
                        weight: 1,
                        config_weight: 1,
                        active_flows: Some(0),
                        ..BackendStatus::default()
                    },
                    server_up: true,
                    has_checks: true,
                    flows: 0,
                })
                .collect();
            let service = ServiceStatus {
                name: "web".into(),
                backends: backends.iter().map(|b| b.st.name.clone()).collect(),
                ..ServiceStatus::default()
            };
            let mut w = World {
                now: 0,
                backends,
                services: vec![service],
                scan_seq: 5,
                scan_every: 1000,
                scan_error: None,
                scan_omits_counts: false,
                last_full_seq: 0,
                check_every: 500,
                events: Vec::new(),
                log: Vec::new(),
                progress: Vec::new(),
                execs: Vec::new(),
                exec_hook: None,
                interrupted: false,
                min_eligible: usize::MAX,
            };
            w.min_eligible = w.eligible();
            w
        }

        fn shared(self) -> (Rc<RefCell<World>>, FakeCtl, FakeEnv) {
            let w = Rc::new(RefCell::new(self));
            (w.clone(), FakeCtl(w.clone()), FakeEnv(w))
        }

        fn b(&mut self, name: &str) -> &mut FakeBackend {
            self.backends
                .iter_mut()
                .find(|b| b.st.name == name)
                .unwrap_or_else(|| panic!("no backend {name}"))
        }

        fn at(&mut self, t: u64, f: impl FnOnce(&mut World) + 'static) {
            self.events.push((t, Box::new(f)));
        }

        fn eligible(&self) -> usize {
            self.backends
                .iter()
                .filter(|b| eligible(&b.st) && b.st.role == Role::Pool)
                .count()
        }

        fn tick(&mut self) {
            self.now += 1;
            let now = self.now;
            let due: Vec<Event> = {
                let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.events)
                    .into_iter()
                    .partition(|e| e.0 <= now);
                self.events = later;
                due.into_iter().map(|e| e.1).collect()
            };
            for f in due {
                f(self);
            }
            if now.is_multiple_of(self.check_every) {
                for b in &mut self.backends {
                    if b.has_checks && b.st.admin != AdminState::Maint {
                        b.st.checks_run += 1;
                        b.st.check = if b.server_up { CHECK_OK } else { "refused" }.into();
                        b.st.health = Health::from_up(b.server_up);
                    }
                }
            }
            if now.is_multiple_of(self.scan_every) {
                if self.scan_error.is_some() {
                    for b in &mut self.backends {
                        b.st.active_flows = None;
                    }
                } else {
                    self.scan_seq += 1;
                    for b in &mut self.backends {
                        b.st.active_flows = (!self.scan_omits_counts).then_some(b.flows);
                    }
                }
            }
        }

        fn advance(&mut self, ms: u64) {
            for _ in 0..ms {
                self.tick();
            }
        }

        fn resolve(&self, target: &str) -> Vec<usize> {
            let named: Vec<usize> = (0..self.backends.len())
                .filter(|&i| self.backends[i].st.name == target)
                .collect();
            if !named.is_empty() {
                return named;
            }
            (0..self.backends.len())
                .filter(|&i| self.backends[i].st.group.as_deref() == Some(target))
                .collect()
        }

        fn handle(&mut self, req: &Request) -> Response {
            self.log.push((self.now, req.clone()));
            let r = match req {
                Request::Status {} => Response {
                    status: Some(Status {
                        config: "/etc/steer/steer.toml".into(),
                        services: self.services.clone(),
                        backends: self.backends.iter().map(|b| b.st.clone()).collect(),
                        flow_scan: FlowScan {
                            seq: self.scan_seq,
                            error: self.scan_error.clone(),
                            last_full_seq: self.last_full_seq,
                            ..FlowScan::default()
                        },
                        ..Status::default()
                    }),
                    ..Response::ok()
                },
                Request::Admin { target, state } => {
                    let idx = self.resolve(target);
                    if idx.is_empty() {
                        return Response::error(
                            ErrorKind::UnknownTarget,
                            format!("no backend or group named {target:?}"),
                        );
                    }
                    for &i in &idx {
                        self.backends[i].st.admin = *state;
                    }
                    Response {
                        backends: idx
                            .iter()
                            .map(|&i| self.backends[i].st.name.clone())
                            .collect(),
                        scan: Some(self.scan_seq + 1),
                        ..Response::ok()
                    }
                }
                other => Response::error(ErrorKind::Malformed, format!("fake: {other:?}")),
            };
            self.min_eligible = self.min_eligible.min(self.eligible());
            r
        }

        /// Admin requests sent, as (time, target, state).
        fn admin_log(&self) -> Vec<(u64, String, AdminState)> {
            self.log
                .iter()
                .filter_map(|(t, r)| match r {
                    Request::Admin { target, state } => Some((*t, target.clone(), *state)),
                    _ => None,
                })
                .collect()
        }
    }

    struct FakeCtl(Rc<RefCell<World>>);

    impl Control for FakeCtl {
        fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
            Ok(self.0.borrow_mut().handle(req))
        }
    }

    struct FakeEnv(Rc<RefCell<World>>);

    impl Env for FakeEnv {
        fn now(&self) -> Duration {
            Duration::from_millis(self.0.borrow().now)
        }
        fn sleep(&mut self, d: Duration) {
            self.0.borrow_mut().advance(d.as_millis() as u64);
        }
        fn progress(&mut self, msg: &str) {
            self.0.borrow_mut().progress.push(msg.into());
        }
        fn interrupted(&self) -> bool {
            self.0.borrow().interrupted
        }
        fn exec(&mut self, command: &str) -> std::io::Result<ExitStatus> {
            let mut w = self.0.borrow_mut();
            w.execs.push(command.into());
            let mut hook = w.exec_hook.take();
            let code = hook.as_mut().map_or(0, |h| h(&mut w, command));
            w.exec_hook = hook;
            // A command takes a while.
            w.advance(300);
            Ok(ExitStatus::from_raw(code << 8))
        }
    }

    const WAIT: DrainOpts = DrainOpts {
        wait: true,
        timeout: Duration::from_secs(30),
        min: Duration::ZERO,
    };

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn drain_waits_for_a_scan_that_saw_it_and_for_zero_flows() {
        let mut w = World::new(&[("b0", None), ("b1", None)]);
        // Two flows the last scan (seq 5) did not see: its "0" is stale.
        w.b("b0").flows = 2;
        w.at(1500, |w| w.b("b0").flows = 0);
        let (w, mut ctl, mut env) = w.shared();
        let d = drain(&mut ctl, &mut env, "b0", WAIT).unwrap();
        let w = w.borrow();
        // Scan 6 (t=1000) still counts 2; scan 7 (t=2000) counts 0.
        assert_eq!(w.now, 2000, "{:?}", w.progress);
        assert_eq!(d.scan, Some(6));
        assert_eq!(d.active_flows, Some(0));
        assert_eq!(d.backends, vec!["b0".to_string()]);
        assert!(
            w.progress.iter().any(|p| p == "b0: 2 active flows"),
            "{:?}",
            w.progress
        );
        assert!(
            w.progress[0].starts_with("b0: waiting for flow scan 6"),
            "{:?}",
            w.progress
        );
        assert_eq!(w.admin_log().len(), 1);
    }

    #[test]
    fn drain_with_min_waits_at_least_that_long() {
        let (w, mut ctl, mut env) = World::new(&[("b0", None)]).shared();
        let opts = DrainOpts {
            min: secs(3),
            ..WAIT
        };
        let d = drain(&mut ctl, &mut env, "b0", opts).unwrap();
        assert!(d.waited_ms >= 3000, "{d:?}");
        assert!(w.borrow().now < 3200);
    }

    #[test]
    fn drain_without_wait_sends_one_request_and_returns() {
        let (w, mut ctl, mut env) =
            World::new(&[("b0", Some("blue")), ("b1", Some("blue"))]).shared();
        let opts = DrainOpts {
            wait: false,
            ..WAIT
        };
        let d = drain(&mut ctl, &mut env, "blue", opts).unwrap();
        assert_eq!(d.backends, vec!["b0".to_string(), "b1".to_string()]);
        assert_eq!(d.active_flows, None);
        assert_eq!(w.borrow().log.len(), 1);
    }

    #[test]
    fn a_failed_flow_scan_fails_the_drain_instead_of_counting_zero() {
        let mut w = World::new(&[("b0", None)]);
        w.b("b0").flows = 3;
        w.at(500, |w| {
            w.scan_error = Some("reading STEER_FLOWS_V1: Operation not permitted".into())
        });
        let (w, mut ctl, mut env) = w.shared();
        let e = drain(&mut ctl, &mut env, "b0", WAIT).unwrap_err();
        assert!(matches!(e, DeployError::FlowsUnknown { .. }), "{e:?}");
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert_eq!(e.kind(), "flows_unknown");
        assert!(
            e.to_string()
                .contains("b0: active flows unknown: the flow scan failed: reading"),
            "{e}"
        );
        assert!(w.borrow().now < 1000, "fails at once");
    }

    #[test]
    fn a_full_table_since_the_drain_fails_it_instead_of_counting_zero() {
        let mut w = World::new(&[("b0", None)]);
        // Every count says 0, but the table evicted entries after the drain: not a success.
        w.last_full_seq = u64::MAX;
        let (_w, mut ctl, mut env) = w.shared();
        let e = drain(&mut ctl, &mut env, "b0", WAIT).unwrap_err();
        assert!(matches!(e, DeployError::FlowsUnknown { .. }), "{e:?}");
        assert!(e.to_string().contains("connection table is full"), "{e}");
    }

    #[test]
    fn a_scan_without_a_count_fails_the_drain() {
        let mut w = World::new(&[("b0", None)]);
        w.scan_omits_counts = true;
        let (_w, mut ctl, mut env) = w.shared();
        let e = drain(&mut ctl, &mut env, "b0", WAIT).unwrap_err();
        assert!(
            e.to_string().contains("flow scan 6 has no count for b0"),
            "{e}"
        );
        assert_eq!(e.exit_code(), exit::FAILURE);
    }

    #[test]
    fn drain_timeout_says_how_many_flows_are_left_and_exits_75() {
        let mut w = World::new(&[("b0", None)]);
        w.b("b0").flows = 4;
        let (w, mut ctl, mut env) = w.shared();
        let opts = DrainOpts {
            timeout: secs(3),
            ..WAIT
        };
        let e = drain(&mut ctl, &mut env, "b0", opts).unwrap_err();
        assert!(
            matches!(
                e,
                DeployError::DrainTimeout {
                    active_flows: Some(4),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.exit_code(), exit::TIMEOUT);
        assert!(
            e.to_string()
                .starts_with("b0: 4 active flows left after 3.0 s"),
            "{e}"
        );
        let w = w.borrow();
        assert_eq!(w.b_admin("b0"), AdminState::Drain, "the drain stays");
        // Progress repeats an unchanged count only every 5 s.
        assert_eq!(
            w.progress
                .iter()
                .filter(|p| *p == "b0: 4 active flows")
                .count(),
            1
        );
    }

    #[test]
    fn draining_a_group_is_one_request_and_waits_for_every_member() {
        let mut w = World::new(&[
            ("b0", Some("blue")),
            ("b1", Some("blue")),
            ("b2", Some("green")),
        ]);
        w.b("b0").flows = 1;
        w.b("b1").flows = 1;
        w.b("b2").flows = 9;
        w.at(1200, |w| w.b("b0").flows = 0);
        w.at(2500, |w| w.b("b1").flows = 0);
        let (w, mut ctl, mut env) = w.shared();
        let d = drain(&mut ctl, &mut env, "blue", WAIT).unwrap();
        let w = w.borrow();
        assert_eq!(d.backends, vec!["b0".to_string(), "b1".to_string()]);
        assert_eq!(w.now, 3000, "scan at 3000 is the first with both at 0");
        assert_eq!(
            w.admin_log(),
            vec![(0, "blue".to_string(), AdminState::Drain)]
        );
        assert_eq!(w.b_admin("b2"), AdminState::Ready);
        assert!(w.progress.iter().any(|p| p == "blue: 2 active flows"));
    }

    #[test]
    fn draining_an_unknown_target_reports_the_daemons_refusal() {
        let (_w, mut ctl, mut env) = World::new(&[("b0", None)]).shared();
        let e = drain(&mut ctl, &mut env, "nope", WAIT).unwrap_err();
        assert_eq!(e.to_string(), "no backend or group named \"nope\"");
        assert_eq!(e.kind(), "unknown_target");
        assert_eq!(e.exit_code(), exit::FAILURE);
    }

    impl World {
        fn b_admin(&self, name: &str) -> AdminState {
            self.backends
                .iter()
                .find(|b| b.st.name == name)
                .unwrap()
                .st
                .admin
        }

        /// Times at which `ready` was sent for `target`.
        fn readies(&self, target: &str) -> Vec<u64> {
            self.admin_log()
                .into_iter()
                .filter(|(_, t, s)| t == target && *s == AdminState::Ready)
                .map(|(at, ..)| at)
                .collect()
        }
    }

    const HEALTHY: ReadyOpts = ReadyOpts {
        wait_healthy: true,
        timeout: Duration::from_secs(10),
        fresh_checks: 1,
    };

    #[test]
    fn ready_wait_healthy_never_trusts_a_check_from_before_the_command() {
        let mut w = World::new(&[("b0", None), ("b1", None)]);
        // Restarted: the server is down until 1700, but the status still says up and "ok"
        // from before.
        w.b("b0").st.admin = AdminState::Drain;
        w.b("b0").server_up = false;
        w.at(1700, |w| w.b("b0").server_up = true);
        let (w, mut ctl, mut env) = w.shared();
        let r = ready(&mut ctl, &mut env, "b0", HEALTHY).unwrap();
        let w = w.borrow();
        // Checks at 500 (refused), 1000, 1500 (refused), 2000 (ok).
        assert_eq!(w.readies("b0"), vec![2000], "{:?}", w.log);
        assert_eq!(r.waited_ms, 2000);
        assert_eq!(w.b_admin("b0"), AdminState::Ready);
        assert!(
            w.progress
                .iter()
                .any(|p| p.starts_with("b0: down (last check: refused")),
            "{:?}",
            w.progress
        );
    }

    #[test]
    fn ready_wait_healthy_waits_for_a_fresh_ok_even_when_up() {
        let mut w = World::new(&[("b0", None)]);
        w.b("b0").st.admin = AdminState::Drain;
        let (w, mut ctl, mut env) = w.shared();
        ready(&mut ctl, &mut env, "b0", HEALTHY).unwrap();
        assert_eq!(w.borrow().readies("b0"), vec![500], "the first check after");
        // Two fresh checks (the rollout's rule): a check in flight at the start does not count.
        let mut w2 = World::new(&[("b0", None)]);
        w2.b("b0").st.admin = AdminState::Drain;
        let (w2, mut ctl, mut env) = w2.shared();
        let opts = ReadyOpts {
            fresh_checks: 2,
            ..HEALTHY
        };
        ready(&mut ctl, &mut env, "b0", opts).unwrap();
        assert_eq!(w2.borrow().readies("b0"), vec![1000]);
    }

    #[test]
    fn ready_of_a_backend_without_checks_is_at_once() {
        let mut w = World::new(&[("b0", None)]);
        let b = w.b("b0");
        b.has_checks = false;
        b.st.check = NO_CHECKS.into();
        b.st.checks_run = 0;
        b.st.admin = AdminState::Maint;
        let (w, mut ctl, mut env) = w.shared();
        ready(&mut ctl, &mut env, "b0", HEALTHY).unwrap();
        let w = w.borrow();
        assert_eq!(
            w.admin_log(),
            vec![
                (0, "b0".to_string(), AdminState::Drain),
                (0, "b0".to_string(), AdminState::Ready)
            ]
        );
    }

    #[test]
    fn ready_without_wait_is_one_request() {
        let mut w = World::new(&[("b0", None)]);
        w.b("b0").st.admin = AdminState::Maint;
        w.b("b0").server_up = false;
        let (w, mut ctl, mut env) = w.shared();
        let r = ready(&mut ctl, &mut env, "b0", ReadyOpts::new(false, secs(1))).unwrap();
        assert_eq!(r.backends, vec!["b0".to_string()]);
        assert_eq!(w.borrow().log.len(), 1);
    }

    #[test]
    fn ready_timeout_from_maint_resumes_checks_then_puts_it_back_in_maint() {
        let mut w = World::new(&[("b0", None), ("b1", None)]);
        w.b("b0").st.admin = AdminState::Maint;
        w.b("b0").server_up = false;
        let (w, mut ctl, mut env) = w.shared();
        let opts = ReadyOpts {
            timeout: Duration::from_millis(2500),
            ..HEALTHY
        };
        let e = ready(&mut ctl, &mut env, "b0", opts).unwrap_err();
        let w = w.borrow();
        assert_eq!(
            w.admin_log(),
            vec![
                (0, "b0".to_string(), AdminState::Drain),
                (2500, "b0".to_string(), AdminState::Maint)
            ],
            "drained so that checks run, never ready, then back to maint"
        );
        assert_eq!(w.b_admin("b0"), AdminState::Maint);
        assert_eq!(e.exit_code(), exit::TIMEOUT);
        assert_eq!(e.kind(), "timeout");
        assert_eq!(
            e.to_string(),
            "b0: still down after 2.5 s (last check: refused); left maint"
        );
    }

    #[test]
    fn ready_timeout_leaves_a_drained_backend_drained() {
        let mut w = World::new(&[("b0", None)]);
        w.b("b0").st.admin = AdminState::Drain;
        w.b("b0").server_up = false;
        let (w, mut ctl, mut env) = w.shared();
        let opts = ReadyOpts {
            timeout: secs(2),
            ..HEALTHY
        };
        let e = ready(&mut ctl, &mut env, "b0", opts).unwrap_err();
        assert!(w.borrow().admin_log().is_empty(), "nothing to put back");
        assert_eq!(
            e.to_string(),
            "b0: still down after 2.0 s (last check: refused); left drain"
        );
    }

    #[test]
    fn ready_interrupted_puts_maint_back() {
        let mut w = World::new(&[("b0", None)]);
        w.b("b0").st.admin = AdminState::Maint;
        w.b("b0").server_up = false;
        w.at(700, |w| w.interrupted = true);
        let (w, mut ctl, mut env) = w.shared();
        let e = ready(&mut ctl, &mut env, "b0", HEALTHY).unwrap_err();
        assert_eq!(e.exit_code(), INTERRUPTED);
        assert_eq!(e.to_string(), "interrupted; b0 left maint");
        assert_eq!(w.borrow().b_admin("b0"), AdminState::Maint);
    }

    #[test]
    fn ready_of_a_group_waits_for_every_member_then_sends_one_ready() {
        let mut w = World::new(&[("b0", Some("blue")), ("b1", Some("blue")), ("b2", None)]);
        w.b("b0").st.admin = AdminState::Maint;
        w.b("b1").st.admin = AdminState::Drain;
        w.b("b1").server_up = false;
        w.at(1200, |w| w.b("b1").server_up = true);
        let (w, mut ctl, mut env) = w.shared();
        let r = ready(&mut ctl, &mut env, "blue", HEALTHY).unwrap();
        let w = w.borrow();
        assert_eq!(r.backends, vec!["b0".to_string(), "b1".to_string()]);
        assert_eq!(
            w.admin_log(),
            vec![
                (0, "b0".to_string(), AdminState::Drain),
                (1500, "blue".to_string(), AdminState::Ready)
            ]
        );
    }

    #[test]
    fn ready_timeout_of_a_group_puts_each_member_back_as_it_was() {
        let mut w = World::new(&[("b0", Some("blue")), ("b1", Some("blue"))]);
        w.b("b0").st.admin = AdminState::Maint;
        w.b("b1").st.admin = AdminState::Reject;
        w.b("b1").server_up = false;
        let (w, mut ctl, mut env) = w.shared();
        let opts = ReadyOpts {
            timeout: secs(3),
            ..HEALTHY
        };
        let e = ready(&mut ctl, &mut env, "blue", opts).unwrap_err();
        let w = w.borrow();
        assert_eq!(
            w.b_admin("b0"),
            AdminState::Maint,
            "b0 was fine but b1 was not"
        );
        assert_eq!(w.b_admin("b1"), AdminState::Reject);
        assert!(w.readies("blue").is_empty());
        assert_eq!(
            e.to_string(),
            "b1: still down after 3.0 s (last check: refused); left reject"
        );
    }

    #[test]
    fn ready_of_an_unknown_target_fails_before_changing_anything() {
        let (w, mut ctl, mut env) = World::new(&[("b0", None)]).shared();
        let e = ready(&mut ctl, &mut env, "nope", HEALTHY).unwrap_err();
        assert_eq!(e.to_string(), "no backend or group named \"nope\"");
        assert_eq!(e.exit_code(), exit::FAILURE);
        assert!(w.borrow().admin_log().is_empty());
    }

    fn plan() -> Plan {
        Plan {
            service: "web".into(),
            exec: "restart {backend} {address}".into(),
            batch: 1,
            drain_timeout: secs(20),
            healthy_timeout: secs(5),
            continue_on_error: false,
        }
    }

    /// A command that restarts the server (down for `down_ms`) and fails for `failing`.
    fn restarts(failing: &'static [&'static str], down_ms: u64) -> ExecHook {
        Box::new(move |w: &mut World, cmd: &str| {
            let name = cmd.split(' ').nth(1).unwrap().to_string();
            if failing.contains(&name.as_str()) {
                return 3;
            }
            w.b(&name).server_up = false;
            let at = w.now + down_ms;
            w.at(at, move |w| w.b(&name).server_up = true);
            0
        })
    }

    #[test]
    fn rollout_restarts_every_backend_after_fresh_checks() {
        let mut w = World::new(&[("b0", None), ("b1", None), ("b2", None)]);
        w.exec_hook = Some(restarts(&[], 100));
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        let w = w.borrow();
        assert!(r.ok, "{r:?}");
        assert_eq!(r.exit_code, 0);
        assert!(r.left_drained.is_empty());
        assert_eq!(r.backends.len(), 3);
        assert!(r.backends.iter().all(|s| s.result == "ok"), "{r:?}");
        assert_eq!(
            w.execs,
            vec![
                "restart b0 10.0.0.1",
                "restart b1 10.0.0.2",
                "restart b2 10.0.0.3"
            ]
        );
        // Each ready comes two checks after its command ended.
        for (i, name) in ["b0", "b1", "b2"].iter().enumerate() {
            let exec_end = w
                .admin_log()
                .iter()
                .find(|(_, t, s)| t == name && *s == AdminState::Drain)
                .unwrap()
                .0;
            let ready_at = w.readies(name)[0];
            assert!(ready_at >= exec_end + 300 + 1000, "{i}: {:?}", w.log);
        }
        assert_eq!(w.min_eligible, 2);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["ok"], true);
        assert_eq!(json["left_drained"], serde_json::json!([]));
        assert!(json.get("error").is_none() && json.get("exit_code").is_none());
    }

    #[test]
    fn a_failing_command_stops_the_rollout_and_is_listed_as_left_drained() {
        let mut w = World::new(&[("b0", None), ("b1", None), ("b2", None)]);
        w.exec_hook = Some(restarts(&["b0"], 100));
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        let w = w.borrow();
        assert!(!r.ok);
        assert_eq!(r.exit_code, exit::FAILURE);
        assert_eq!(r.left_drained, vec!["b0".to_string()]);
        assert_eq!(r.backends.len(), 1);
        assert_eq!(
            r.backends[0].result,
            "command failed (exit status: 3); left drained"
        );
        assert_eq!(
            r.error.as_deref(),
            Some("b0: command failed (exit status: 3); left drained")
        );
        assert_eq!(r.kind.as_deref(), Some("failed"));
        assert_eq!(w.b_admin("b0"), AdminState::Drain);
        assert_eq!(w.b_admin("b1"), AdminState::Ready);
        assert_eq!(w.b_admin("b2"), AdminState::Ready);
        assert!(w.readies("b0").is_empty());
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["left_drained"], serde_json::json!(["b0"]));
    }

    #[test]
    fn continue_on_error_lists_every_backend_left_drained() {
        let mut w = World::new(&[("b0", None), ("b1", None), ("b2", None), ("b3", None)]);
        w.exec_hook = Some(restarts(&["b0", "b2"], 100));
        let (w, mut ctl, mut env) = w.shared();
        let p = Plan {
            continue_on_error: true,
            ..plan()
        };
        let r = rollout(&mut ctl, &mut env, &p).unwrap();
        let w = w.borrow();
        assert_eq!(r.left_drained, vec!["b0".to_string(), "b2".to_string()]);
        assert_eq!(r.backends.len(), 4);
        assert_eq!(w.b_admin("b1"), AdminState::Ready);
        assert_eq!(w.b_admin("b3"), AdminState::Ready);
        assert!(w.min_eligible >= 1);
        assert_eq!(r.exit_code, exit::FAILURE);
    }

    #[test]
    fn a_backend_not_healthy_in_time_is_left_drained() {
        let mut w = World::new(&[("b0", None), ("b1", None), ("b2", None)]);
        // The command kills the server for good.
        w.exec_hook = Some(restarts(&[], u64::MAX / 2));
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        assert_eq!(r.backends[0].result, "not healthy in time; left drained");
        assert_eq!(r.left_drained, vec!["b0".to_string()]);
        assert_eq!(r.backends.len(), 1);
        assert_eq!(w.borrow().b_admin("b0"), AdminState::Drain);
        assert!(w.borrow().readies("b0").is_empty());
    }

    #[test]
    fn an_interrupted_rollout_leaves_only_the_batch_in_flight_drained() {
        let mut w = World::new(&[("b0", None), ("b1", None), ("b2", None)]);
        let mut restart = restarts(&[], 100);
        w.exec_hook = Some(Box::new(move |w: &mut World, cmd: &str| {
            if cmd.contains("b1") {
                w.interrupted = true; // Ctrl-C during b1's command
            }
            restart(w, cmd)
        }));
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        let w = w.borrow();
        assert!(r.interrupted);
        assert_eq!(r.exit_code, INTERRUPTED);
        assert_eq!(r.left_drained, vec!["b1".to_string()]);
        assert_eq!(r.backends[1].result, "interrupted; left drained");
        assert_eq!(r.backends[0].result, "ok");
        assert_eq!(w.b_admin("b2"), AdminState::Ready, "never touched");
        assert_eq!(w.execs.len(), 2);
    }

    #[test]
    fn an_interrupted_drain_wait_leaves_the_batch_drained() {
        let mut w = World::new(&[("b0", None), ("b1", None)]);
        w.b("b0").flows = 5;
        w.at(800, |w| w.interrupted = true);
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        assert_eq!(r.left_drained, vec!["b0".to_string()]);
        assert_eq!(r.exit_code, INTERRUPTED);
        assert!(w.borrow().execs.is_empty(), "no command after Ctrl-C");
    }

    #[test]
    fn a_failed_flow_scan_stops_the_rollout_before_the_command() {
        let mut w = World::new(&[("b0", None), ("b1", None)]);
        w.scan_error = Some("map read failed".into());
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        assert_eq!(r.left_drained, vec!["b0".to_string()]);
        assert!(
            r.backends[0]
                .result
                .contains("the flow scan failed: map read failed"),
            "{r:?}"
        );
        assert!(w.borrow().execs.is_empty());
        assert_eq!(r.exit_code, exit::FAILURE);
    }

    #[test]
    fn batches_never_leave_the_service_without_an_eligible_backend() {
        let mut w = World::new(&[("b0", None), ("b1", None), ("b2", None)]);
        w.exec_hook = Some(restarts(&[], 100));
        let (w, mut ctl, mut env) = w.shared();
        let p = Plan { batch: 5, ..plan() };
        let r = rollout(&mut ctl, &mut env, &p).unwrap();
        let w = w.borrow();
        assert!(r.ok, "{r:?}");
        assert_eq!(w.min_eligible, 1);
        assert_eq!(
            w.progress[0],
            "batch of 5 lowered to 2: 3 backends are eligible"
        );
        // b0 and b1 drained together.
        let drains: Vec<u64> = w
            .admin_log()
            .iter()
            .filter(|(_, _, s)| *s == AdminState::Drain)
            .map(|(t, ..)| *t)
            .collect();
        assert_eq!(drains[0], drains[1]);
    }

    #[test]
    fn a_rollout_of_a_switched_service_is_of_its_active_group_only() {
        let mut w = World::new(&[
            ("b0", Some("blue")),
            ("b1", Some("blue")),
            ("b2", Some("green")),
            ("b3", Some("green")),
        ]);
        w.services[0].active_group = Some("green".into());
        w.exec_hook = Some(restarts(&[], 100));
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        assert!(r.ok);
        assert_eq!(
            w.borrow().execs,
            vec!["restart b2 10.0.0.3", "restart b3 10.0.0.4"]
        );
    }

    #[test]
    fn a_rollout_that_would_leave_no_eligible_backend_does_not_start() {
        let mut w = World::new(&[("b0", None), ("b1", None)]);
        w.b("b1").st.health = Health::Down;
        w.b("b1").server_up = false;
        let (w, mut ctl, mut env) = w.shared();
        let e = rollout(&mut ctl, &mut env, &plan()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "service \"web\" has 1 eligible backend(s): a rollout would leave it none"
        );
        assert!(w.borrow().admin_log().is_empty());
        let e = rollout(
            &mut ctl,
            &mut env,
            &Plan {
                service: "nope".into(),
                ..plan()
            },
        )
        .unwrap_err();
        assert_eq!(e.kind(), "unknown_service");
    }

    #[test]
    fn an_unsafe_name_is_never_put_in_a_command() {
        let mut w = World::new(&[("b0;rm", None), ("b1", None), ("b2", None)]);
        w.exec_hook = Some(restarts(&[], 100));
        let (w, mut ctl, mut env) = w.shared();
        let r = rollout(&mut ctl, &mut env, &plan()).unwrap();
        assert!(w.borrow().execs.is_empty());
        assert_eq!(r.left_drained, vec!["b0;rm".to_string()]);
    }
}
