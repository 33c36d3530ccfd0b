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
            let addr = SocketAddr::new(info.addr, check.port.unwrap_or(s.port));
            self.tasks.spawn(checks::run(
                name,
                check,
                addr,
                info.health,
                paused,
                self.tx.clone(),
                self.epoch,
            ));
        }
        c.checks = states;
        c.paused = paused_map;
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
    if matches!(r.outcome, Outcome::Failed(_)) {
        st.failures += 1;
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
