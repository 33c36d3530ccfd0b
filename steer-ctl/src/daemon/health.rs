//! Health-check supervision: one task per checked backend, reports applied to the balancer.
//! A check that cannot run because of this host (no descriptors, no ports) changes nothing:
//! the backend keeps its health (fail static) and the problem is logged loudly, once a minute.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinSet};
use tracing::{error, info, warn};

use super::{os::Throttle, Shared};
use crate::{
    checks::{self, Outcome, Report},
    model::{AdminState, Health},
};

/// Last check result of a backend, for status and metrics.
#[derive(Clone, Debug, Default)]
pub struct CheckState {
    /// The backend has checks (otherwise it is always up).
    pub checked: bool,
    pub last: String,
    pub latency: Option<Duration>,
    /// Checks run since the daemon started.
    pub runs: u64,
    /// Failed checks since the daemon started.
    pub failures: u64,
    /// Checks that could not run from this host (no descriptors, no ports) since the daemon
    /// started.
    pub not_run: u64,
    /// Times passive health marked the backend down since the daemon started.
    pub passive_downs: u64,
    /// Why passive health marked the backend down, until checks bring it back.
    pub passive: Option<String>,
}

static LOCAL_ERRORS: Throttle = Throttle::new(Duration::from_secs(60));

/// The running check tasks.
pub struct Supervisor {
    tasks: JoinSet<()>,
    tx: mpsc::UnboundedSender<Report>,
    /// Bumped at every restart; reports carry the epoch of the task that sent them.
    epoch: u64,
}

impl Supervisor {
    pub fn new(tx: mpsc::UnboundedSender<Report>) -> Self {
        Supervisor {
            tasks: JoinSet::new(),
            tx,
            epoch: 0,
        }
    }

    /// Stops every check and starts one per checked backend of the current config, each from
    /// the backend's current health.
    pub async fn restart(&mut self, core: &Shared) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        self.epoch += 1;
        let mut c = core.lock().expect("core lock");
        c.check_epoch = self.epoch;
        let infos: BTreeMap<String, crate::balancer::BackendInfo> = c
            .bal
            .backend_infos()
            .into_iter()
            .map(|b| (b.name.clone(), b))
            .collect();
        let cfg = c.cfg.clone();
        let mut paused_map = BTreeMap::new();
        let mut forced_map = BTreeMap::new();
        let mut states = BTreeMap::new();
        for (s, b) in cfg.backends() {
            let name = b.name.get_ref().clone();
            let check = s.check_of(b);
            let mut st: CheckState = c.checks.get(&name).cloned().unwrap_or_default();
            st.checked = check.is_some();
            states.insert(name.clone(), st);
            let (Some(check), Some(info)) = (check, infos.get(&name)) else {
                continue;
            };
            let paused = Arc::new(AtomicBool::new(info.admin == AdminState::Maint));
            paused_map.insert(name.clone(), paused.clone());
            let forced = Arc::new(checks::Forced::default());
            forced_map.insert(name.clone(), forced.clone());
            // The server's own port (NAT may reach it on another port than the VIP's).
            let addr = SocketAddr::new(info.addr, check.port.unwrap_or(info.port));
            self.tasks.spawn(checks::run(
                name,
                check,
                addr,
                info.health,
                paused,
                forced,
                self.tx.clone(),
                self.epoch,
            ));
        }
        c.checks = states;
        c.paused = paused_map;
        c.forced = forced_map;
    }

    pub fn stop(&mut self) {
        self.tasks.abort_all();
    }
}

/// Applies check results that arrived together as one batch: each changed service's table is
/// published once, and the grace period that follows a table change is waited once, however
/// many backends changed at the same moment (a switch failing takes many down at once).
pub fn apply_reports(core: &Shared, reports: Vec<Report>) {
    let mut c = core.lock().expect("core lock");
    c.bal.begin_batch();
    for r in reports {
        apply_report(&mut c, r);
    }
    if let Err(e) = c.bal.commit() {
        error!(error = %e, "cannot publish health changes");
    }
    c.note_changes("added");
}

/// Applies one check result (inside a batch).
fn apply_report(c: &mut super::Core, r: Report) {
    if r.epoch != c.check_epoch {
        return; // From a task a reload stopped: about a server that may no longer be there.
    }
    let last = match &r.outcome {
        Outcome::Ok => "ok".to_string(),
        Outcome::Failed(why) => why.clone(),
        Outcome::Local(why) => {
            if let Some(held) = LOCAL_ERRORS.allow(&r.backend) {
                error!(
                    backend = %r.backend,
                    error = %why,
                    held_back = held,
                    "health check cannot run from this host: the backend keeps its health (fail static)"
                );
            }
            format!("not run: {why}")
        }
    };
    let st = c.checks.entry(r.backend.clone()).or_default();
    st.checked = true;
    st.last = last.clone();
    st.latency = Some(r.latency);
    st.runs += 1;
    match r.outcome {
        Outcome::Failed(_) => st.failures += 1,
        Outcome::Local(_) => st.not_run += 1,
        Outcome::Ok => {}
    }
    let Some(health) = r.change else {
        return;
    };
    let Some(info) = c
        .bal
        .backend_infos()
        .into_iter()
        .find(|b| b.name == r.backend)
    else {
        return;
    };
    if health == Health::Up {
        // The failures passive health counted are about the server before: forgotten before
        // it is eligible again, or the datapath would keep it out (it stops at the limit).
        if let Err(e) = c.bal.reset_observed(&r.backend) {
            error!(backend = %r.backend, error = %e, "cannot reset passive health");
        }
        if let Some(st) = c.checks.get_mut(&r.backend) {
            st.passive = None;
        }
    }
    match c.bal.set_health(&r.backend, health) {
        Ok(()) => {
            let line = |h: Health| h.as_str();
            if health == Health::Up {
                info!(service = %info.service, backend = %r.backend, old = line(info.health), new = line(health), reason = %last, "health changed");
            } else {
                warn!(service = %info.service, backend = %r.backend, old = line(info.health), new = line(health), reason = %last, "health changed");
            }
        }
        Err(e) => error!(backend = %r.backend, error = %e, "cannot apply health"),
    }
}

/// A NAT backend whose consecutive failed attempts reached its service's `error_limit`, as
/// the datapath's passive-health map showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassiveDown {
    pub backend: String,
    pub id: u32,
}

/// Marks down at once the backends passive health found failing (one batch: one publish per
/// service), through the same state as the checks: the balancer's health, the status reason,
/// and each backend's check task, which then counts `rise` successes from down at
/// `downinterval`. A report made stale by a change since (the backend removed, its id given
/// to another, already down, its failures reset by checks) is dropped.
pub fn apply_passive(core: &Shared, downs: Vec<PassiveDown>) {
    let mut c = core.lock().expect("core lock");
    let limits: BTreeMap<String, u16> = c
        .bal
        .service_infos()
        .into_iter()
        .filter_map(|s| {
            let n = s.nat?;
            n.observe.then_some((s.name, n.error_limit))
        })
        .collect();
    c.bal.begin_batch();
    for d in downs {
        let Some(info) = c
            .bal
            .backend_infos()
            .into_iter()
            .find(|b| b.name == d.backend && b.id == d.id)
        else {
            continue;
        };
        let Some(&limit) = limits.get(&info.service) else {
            continue;
        };
        let fails = c.bal.datapath().observed().fails(d.id);
        if info.health == Health::Down || fails < limit as u64 {
            continue;
        }
        let counters = c.bal.backend_counters(&d.backend).unwrap_or_default();
        let reason = format!(
            "passive: {fails} consecutive refused or unanswered attempts (error_limit {limit}; {} refused and {} unanswered in all)",
            counters.refused, counters.syn_timeouts
        );
        if let Err(e) = c.bal.set_health(&d.backend, Health::Down) {
            error!(backend = %d.backend, error = %e, "cannot apply passive health");
            continue;
        }
        warn!(service = %info.service, backend = %d.backend, old = info.health.as_str(), new = "down", reason = %reason, "health changed");
        let st = c.checks.entry(d.backend.clone()).or_default();
        st.passive = Some(reason);
        st.passive_downs += 1;
        if let Some(f) = c.forced.get(&d.backend) {
            f.mark_down();
        }
    }
    if let Err(e) = c.bal.commit() {
        error!(error = %e, "cannot publish passive health changes");
    }
    c.note_changes("added");
}
