//! An open-loop load generator: new TCP connections at a fixed rate, one HTTP request each,
//! started on schedule whether or not earlier ones have been answered (a closed loop would
//! slow down exactly when the balancer misbehaves, and hide it).
//!
//! Each request has a deadline; its latency runs from the time it was scheduled (not from when
//! it got to start), so a late scheduler shows up as latency rather than as fewer requests.
//! One thread, entered into the client's namespace, runs a current-thread tokio runtime; every
//! request is a task of it.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::netns::{enter, Netns};

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// A 200 with a backend's name in the body.
    Ok,
    /// The connection was refused (a RST answering the SYN).
    Refused,
    /// The connection was reset (or aborted, or the pipe broke) after it was open.
    Reset,
    /// No complete answer before the deadline.
    Timeout,
    /// An answer that is not a 200 from a backend (e.g. a proxy's 503), or the connection closed
    /// before a complete one.
    Bad,
    /// Any other socket error.
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
            Outcome::Timeout => "timeout",
            Outcome::Bad => "bad answer",
            Outcome::Error => "error",
        }
    }
}

/// One request.
#[derive(Clone, Debug)]
pub struct Sample {
    /// When it was scheduled, from the start of the load.
    pub at: Duration,
    /// From `at` to the end of the answer (or to the failure).
    pub latency: Duration,
    /// From `at` until the generator got to open the connection: its own lateness.
    pub lag: Duration,
    pub outcome: Outcome,
    /// The backend that answered (`Ok` only).
    pub backend: Option<String>,
}

/// A running load; `stop` ends it and returns every request's sample.
pub struct OpenLoop {
    start: Instant,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Sample>>>,
}

impl OpenLoop {
    /// Starts `rate` new connections per second to `to` from namespace `ns`, each with one
    /// `GET /` (`Connection: close`) that must be answered within `deadline`.
    pub fn start(ns: &Netns, to: SocketAddr, rate: f64, deadline: Duration) -> OpenLoop {
        OpenLoop::start_to(ns, vec![to], rate, deadline)
    }

    /// As `start`, the `n`th connection going to `targets[n % len]`.
    pub fn start_to(
        ns: &Netns,
        targets: Vec<SocketAddr>,
        rate: f64,
        deadline: Duration,
    ) -> OpenLoop {
        assert!(rate > 0.0, "rate must be positive, found {rate}");
        assert!(!targets.is_empty(), "no target to connect to");
        raise_nofile();
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.name);
        let (tx, rx) = std::sync::mpsc::channel();
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            enter(&path);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(run(targets, rate, deadline, stop2, tx))
        });
        let start = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the load generator started");
        OpenLoop {
            start,
            stop,
            thread: Some(thread),
        }
    }

    /// Time since the load started, on the same clock as `Sample::at`.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Stops scheduling, waits for the requests in flight (at most their deadline) and returns
    /// every sample, in schedule order.
    pub fn stop(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let mut v = self
            .thread
            .take()
            .expect("running")
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        v.sort_by_key(|s| s.at);
        v
    }
}

impl Drop for OpenLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Up to `rate × deadline` sockets may be open at once: lift the soft limit to the hard one.
fn raise_nofile() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

async fn run(
    targets: Vec<SocketAddr>,
    rate: f64,
    deadline: Duration,
    stop: Arc<AtomicBool>,
    started: std::sync::mpsc::Sender<Instant>,
) -> Vec<Sample> {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let start = tokio::time::Instant::now();
    let _ = started.send(start.into_std());
    let mut tasks = tokio::task::JoinSet::new();
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut n: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        let at = start + period * n;
        tokio::time::sleep_until(at).await;
        let to = targets[n as usize % targets.len()];
        n += 1;
        let samples = samples.clone();
        tasks.spawn(async move {
            let lag = at.elapsed();
            let (outcome, backend) = match tokio::time::timeout_at(at + deadline, request(to)).await
            {
                Ok(r) => r,
                Err(_) => (Outcome::Timeout, None),
            };
            let s = Sample {
                at: at - start,
                latency: at.elapsed(),
                lag,
                outcome,
                backend,
            };
            samples.lock().unwrap().push(s);
        });
        // Reap finished tasks so the set stays the size of what is in flight.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let v = std::mem::take(&mut *samples.lock().unwrap());
    v
}

async fn request(to: SocketAddr) -> (Outcome, Option<String>) {
    let io = |e: std::io::Error| {
        use std::io::ErrorKind::*;
        let o = match e.kind() {
            ConnectionRefused => Outcome::Refused,
            ConnectionReset | ConnectionAborted | BrokenPipe => Outcome::Reset,
            TimedOut => Outcome::Timeout,
            UnexpectedEof => Outcome::Bad,
            _ => Outcome::Error,
        };
        (o, None)
    };
    let mut s = match tokio::net::TcpStream::connect(to).await {
        Ok(s) => s,
        Err(e) => return io(e),
    };
    let _ = s.set_nodelay(true);
    if let Err(e) = s
        .write_all(b"GET / HTTP/1.1\r\nHost: steer\r\nConnection: close\r\n\r\n")
        .await
    {
        return io(e);
    }
    let mut buf = Vec::new();
    if let Err(e) = s.read_to_end(&mut buf).await {
        return io(e);
    }
    match parse(&buf) {
        Some(backend) => (Outcome::Ok, Some(backend)),
        None => (Outcome::Bad, None),
    }
}

/// The backend's name from a complete `200` answer of `steer-httpd`.
fn parse(buf: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?;
    if status != "200" {
        return None;
    }
    let len: usize = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })?;
    if body.len() != len {
        return None;
    }
    body.split_whitespace().next().map(str::to_string)
}

/// The `q`-quantile (0..=1) of `v`, which is sorted; `None` when empty.
pub fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    Some(v[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_200_only() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nX-Backend: b0\r\n\r\nb0 v1\n";
        assert_eq!(parse(ok).as_deref(), Some("b0"));
        let short = b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nb0 v1\n";
        assert_eq!(parse(short), None);
        let busy = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nno\n";
        assert_eq!(parse(busy), None);
        assert_eq!(parse(b""), None);
    }

    #[test]
    fn quantiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
