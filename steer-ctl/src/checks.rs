//! Health checks, run by the daemon from the LB host: TCP connect, or an HTTP request whose
//! status (and optionally body) is checked. Rise and fall count consecutive results only.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::mpsc,
};

use crate::{
    config::{Check, CheckKind, HttpMethod},
    model::Health,
};

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Why not: "timeout", "refused", "status 503", "body mismatch", …
    Failed(String),
    /// The check could not run because of a problem on this host (no file descriptors, no
    /// ports, no memory): it says nothing about the backend, whose health stays as it was
    /// (fail static).
    Local(String),
}

/// Consecutive results and the state they lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    pub health: Health,
    pub successes: u32,
    pub failures: u32,
}

impl Tracker {
    pub fn new(health: Health) -> Tracker {
        Tracker {
            health,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; returns the new health when it changes. From `Unknown` the first
    /// result decides at once (a backend not yet checked is not kept out for `rise` checks,
    /// nor kept in for `fall`).
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<Health> {
        let before = self.health;
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if before == Health::Unknown || (before == Health::Down && self.successes >= rise) {
                self.health = Health::Up;
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if before == Health::Unknown || (before == Health::Up && self.failures >= fall) {
                self.health = Health::Down;
            }
        }
        (self.health != before).then_some(self.health)
    }

    /// How long until the next check: `interval` when steady up, `downinterval` when steady
    /// down, `fastinterval` while results disagree with the state (or it is unknown).
    pub fn next_interval(&self, c: &Check) -> Duration {
        match (self.health, self.failures, self.successes) {
            (Health::Up, 0, _) => c.interval.0,
            (Health::Down, _, 0) => c.downinterval.0,
            _ => c.fastinterval.0,
        }
    }
}

/// A connect error that comes from this host, not from the backend.
fn local_error(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EADDRNOTAVAIL)
    )
}

/// Runs one check against `addr`.
pub async fn probe(c: &Check, addr: SocketAddr) -> Outcome {
    let work = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
            _ if local_error(&e) => Err(format!("cannot check from this host: {e}")),
            std::io::ErrorKind::ConnectionRefused => Ok("refused".to_string()),
            _ => Ok(format!("connect: {e}")),
        })?;
        if c.kind != CheckKind::Http {
            return Ok(());
        }
        let method = match c.method {
            HttpMethod::Get => "GET",
            HttpMethod::Head => "HEAD",
        };
        let host = c.host.clone().unwrap_or_else(|| addr.ip().to_string());
        let req = format!(
            "{method} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: steer-check\r\nConnection: close\r\n\r\n",
            c.path
        );
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| Ok(format!("send: {e}")))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionReset => Ok("reset".to_string()),
                _ => Ok(format!("receive: {e}")),
            })?;
            if n == 0 || buf.len() > 64 * 1024 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf);
        let status: u16 = text
            .strip_prefix("HTTP/1.")
            .and_then(|r| r.get(2..5))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Ok("not an HTTP response".to_string()))?;
        if !c.status.contains(status) {
            return Err(Ok(format!("status {status}")));
        }
        if let Some(want) = &c.body {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if !body.contains(want.as_str()) {
                return Err(Ok("body mismatch".to_string()));
            }
        }
        Ok(())
    };
    // Err(Ok(why)): the backend failed the check; Err(Err(why)): this host could not check.
    let r: Result<(), Result<String, String>> = match tokio::time::timeout(c.timeout.0, work).await
    {
        Ok(r) => r,
        Err(_) => Err(Ok("timeout".to_string())),
    };
    match r {
        Ok(()) => Outcome::Ok,
        Err(Ok(why)) => Outcome::Failed(why),
        Err(Err(why)) => Outcome::Local(why),
    }
}

/// A result reported to the daemon.
#[derive(Clone, Debug)]
pub struct Report {
    pub backend: String,
    pub outcome: Outcome,
    pub latency: Duration,
    /// `Some(health)` when this result changed the backend's health.
    pub change: Option<Health>,
    pub successes: u32,
    pub failures: u32,
    /// The supervisor's generation of check tasks that sent it: reports of tasks stopped by a
    /// reload are dropped, never applied to the backend that now has the name.
    pub epoch: u64,
}

/// Health set from outside the checks: passive health (the datapath saw `error_limit`
/// consecutive attempts refused or unanswered) marks the backend down at once. The check task
/// then counts from down, like after `fall` failures: checks at `downinterval`, up after
/// `rise` successes.
#[derive(Default)]
pub struct Forced {
    /// Bumped at each mark-down.
    marks: std::sync::atomic::AtomicU64,
    wake: tokio::sync::Notify,
}

impl Forced {
    /// The backend was marked down (its health is already `Down` in the balancer).
    pub fn mark_down(&self) {
        self.marks.fetch_add(1, Ordering::SeqCst);
        self.wake.notify_one();
    }

    fn marks(&self) -> u64 {
        self.marks.load(Ordering::SeqCst)
    }
}

impl Tracker {
    /// Down from outside the checks: no run of results under way.
    pub fn force_down(&mut self) {
        *self = Tracker::new(Health::Down);
    }
}

/// Checks one backend until the task is aborted: reports every result, and transitions as
/// they happen. While `paused` (admin `maint`) it does not check. A check that cannot run
/// for a local reason is reported but counts neither way. A mark-down through `forced`
/// restarts the count from down.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    backend: String,
    check: Check,
    addr: SocketAddr,
    initial: Health,
    paused: Arc<AtomicBool>,
    forced: Arc<Forced>,
    tx: mpsc::UnboundedSender<Report>,
    epoch: u64,
) {
    let mut h = Tracker::new(initial);
    let mut marks = forced.marks();
    loop {
        if forced.marks() != marks {
            marks = forced.marks();
            h.force_down();
        }
        if paused.load(Ordering::Relaxed) {
            tokio::time::sleep(check.interval.0).await;
            continue;
        }
        let start = Instant::now();
        let outcome = probe(&check, addr).await;
        let latency = start.elapsed();
        let change = match outcome {
            Outcome::Local(_) => None,
            _ => h.record(outcome == Outcome::Ok, check.rise, check.fall),
        };
        let report = Report {
            backend: backend.clone(),
            outcome,
            latency,
            change,
            successes: h.successes,
            failures: h.failures,
            epoch,
        };
        if tx.send(report).is_err() {
            return;
        }
        // Marked down while checking: this result was about the backend before.
        if forced.marks() != marks {
            marks = forced.marks();
            h.force_down();
        }
        tokio::select! {
            _ = tokio::time::sleep(h.next_interval(&check)) => {}
            // Marked down: the next check is `downinterval` from now, not at the end of an
            // `interval` begun while up.
            _ = forced.wake.notified() => {
                if forced.marks() != marks {
                    marks = forced.marks();
                    h.force_down();
                }
                tokio::time::sleep(h.next_interval(&check)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_count_consecutive_results_only() {
        let mut h = Tracker::new(Health::Up);
        // Failing every other check never takes a backend down with fall >= 2.
        for _ in 0..10 {
            assert_eq!(h.record(false, 2, 2), None);
            assert_eq!(h.record(true, 2, 2), None);
        }
        assert_eq!(h.health, Health::Up);
        assert_eq!(h.record(false, 2, 2), None);
        assert_eq!(h.record(false, 2, 2), Some(Health::Down));
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), Some(Health::Up));
    }

    #[test]
    fn the_first_result_decides_an_unknown_health() {
        let mut h = Tracker::new(Health::Unknown);
        assert_eq!(h.record(false, 2, 3), Some(Health::Down));
        let mut h = Tracker::new(Health::Unknown);
        assert_eq!(h.record(true, 2, 3), Some(Health::Up));
        assert_eq!(h.record(false, 2, 3), None);
    }

    #[test]
    fn a_forced_mark_down_counts_rise_from_down() {
        let c = Check::default();
        let mut h = Tracker::new(Health::Up);
        h.record(true, 2, 3);
        h.force_down();
        assert_eq!(h.health, Health::Down);
        assert_eq!(h.next_interval(&c), c.downinterval.0);
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(Health::Up));
    }

    #[test]
    fn intervals_follow_the_state() {
        let c = Check::default();
        let mut h = Tracker::new(Health::Up);
        assert_eq!(h.next_interval(&c), c.interval.0);
        h.record(false, 2, 3);
        assert_eq!(h.next_interval(&c), c.fastinterval.0);
        h.record(false, 2, 3);
        h.record(false, 2, 3);
        assert_eq!(h.health, Health::Down);
        assert_eq!(h.next_interval(&c), c.downinterval.0);
        h.record(true, 2, 3);
        assert_eq!(h.next_interval(&c), c.fastinterval.0);
    }
}
