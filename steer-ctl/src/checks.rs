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

use crate::config::{Check, CheckKind, HttpMethod};

/// What a check found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// Why not: "timeout", "refused", "status 503", "body mismatch", …
    Failed(String),
}

/// Consecutive results and the state they lead to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    pub successes: u32,
    pub failures: u32,
}

impl Health {
    pub fn new(up: bool) -> Health {
        Health {
            up,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one result; returns the new state when it changes.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    /// How long until the next check: `interval` when steady up, `downinterval` when steady
    /// down, `fastinterval` while results disagree with the state.
    pub fn next_interval(&self, c: &Check) -> Duration {
        match (self.up, self.failures, self.successes) {
            (true, 0, _) => c.interval.0,
            (false, _, 0) => c.downinterval.0,
            _ => c.fastinterval.0,
        }
    }
}

/// Runs one check against `addr`.
pub async fn probe(c: &Check, addr: SocketAddr) -> Outcome {
    let work = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "refused".to_string(),
            _ => format!("connect: {e}"),
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
            .map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionReset => "reset".to_string(),
                _ => format!("receive: {e}"),
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
            .ok_or_else(|| "not an HTTP response".to_string())?;
        if !c.status.contains(status) {
            return Err(format!("status {status}"));
        }
        if let Some(want) = &c.body {
            let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
            if !body.contains(want.as_str()) {
                return Err("body mismatch".to_string());
            }
        }
        Ok(())
    };
    match tokio::time::timeout(c.timeout.0, work).await {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(why)) => Outcome::Failed(why),
        Err(_) => Outcome::Failed("timeout".to_string()),
    }
}

/// A result reported to the daemon.
#[derive(Clone, Debug)]
pub struct Report {
    pub backend: String,
    pub outcome: Outcome,
    pub latency: Duration,
    /// `Some(up)` when this result changed the backend's health.
    pub change: Option<bool>,
    pub successes: u32,
    pub failures: u32,
}

/// Checks one backend until the task is aborted: reports every result, and transitions as
/// they happen. While `paused` (admin `maint`) it does not check.
pub async fn run(
    backend: String,
    check: Check,
    addr: SocketAddr,
    initial_up: bool,
    paused: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<Report>,
) {
    let mut h = Health::new(initial_up);
    loop {
        if paused.load(Ordering::Relaxed) {
            tokio::time::sleep(check.interval.0).await;
            continue;
        }
        let start = Instant::now();
        let outcome = probe(&check, addr).await;
        let latency = start.elapsed();
        let change = h.record(outcome == Outcome::Ok, check.rise, check.fall);
        let report = Report {
            backend: backend.clone(),
            outcome,
            latency,
            change,
            successes: h.successes,
            failures: h.failures,
        };
        if tx.send(report).is_err() {
            return;
        }
        tokio::time::sleep(h.next_interval(&check)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall_count_consecutive_results_only() {
        let mut h = Health::new(true);
        // Failing every other check never takes a backend down with fall >= 2.
        for _ in 0..10 {
            assert_eq!(h.record(false, 2, 2), None);
            assert_eq!(h.record(true, 2, 2), None);
        }
        assert!(h.up);
        assert_eq!(h.record(false, 2, 2), None);
        assert_eq!(h.record(false, 2, 2), Some(false));
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(false, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), None);
        assert_eq!(h.record(true, 3, 2), Some(true));
    }

    #[test]
    fn intervals_follow_the_state() {
        let c = Check::default();
        let mut h = Health::new(true);
        assert_eq!(h.next_interval(&c), c.interval.0);
        h.record(false, 2, 3);
        assert_eq!(h.next_interval(&c), c.fastinterval.0);
        h.record(false, 2, 3);
        h.record(false, 2, 3);
        assert!(!h.up);
        assert_eq!(h.next_interval(&c), c.downinterval.0);
        h.record(true, 2, 3);
        assert_eq!(h.next_interval(&c), c.fastinterval.0);
    }
}
