//! The whole machine's CPU time, from `/proc/stat`, for the benchmarks.
//!
//! Two readings of the same quantity (busy = everything but idle and iowait, all CPUs, softirq
//! and steal included):
//! - `busy`: CPUs × elapsed wall time − idle − iowait. On a kernel with a tickless idle
//!   (`NO_HZ`), `/proc/stat`'s idle and iowait are the idle loop's own clock, exact to the
//!   file's 10 ms unit; so this is exact too, however short the bursts of work.
//! - `busy_ticks`: user + nice + system + irq + softirq + steal, as `/proc/stat` adds them up.
//!   With `TICK_CPU_ACCOUNTING` (this project's machines: HZ 250, no `IRQ_TIME_ACCOUNTING`),
//!   those are samples of what each CPU was doing at each 4 ms tick: unbiased over long runs,
//!   but noisy over seconds, and blind to work that falls between ticks.

use std::time::{Duration, Instant};

/// The `cpu` line of `/proc/stat` at an instant.
#[derive(Clone, Copy, Debug)]
pub struct CpuTimes {
    at: Instant,
    /// Online CPUs (`cpuN` lines).
    cpus: u32,
    /// user, nice, system, idle, iowait, irq, softirq, steal, in clock ticks.
    ticks: [u64; 8],
}

/// What the CPUs did between two `CpuTimes`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuDelta {
    pub wall: Duration,
    pub cpus: u32,
    pub user: Duration,
    pub nice: Duration,
    pub system: Duration,
    pub idle: Duration,
    pub iowait: Duration,
    pub irq: Duration,
    pub softirq: Duration,
    pub steal: Duration,
}

impl CpuTimes {
    /// Reads `/proc/stat` now. Panics if it cannot (no /proc: nothing to measure).
    pub fn now() -> CpuTimes {
        let text = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
        let at = Instant::now();
        let first = text.lines().next().unwrap_or("");
        let v: Vec<u64> = first
            .split_whitespace()
            .skip(1)
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        assert!(
            first.starts_with("cpu ") && v.len() >= 8,
            "expected /proc/stat to start with a `cpu` line of at least 8 numbers, found {first:?}"
        );
        let cpus = text
            .lines()
            .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
            .count() as u32;
        let mut ticks = [0; 8];
        ticks.copy_from_slice(&v[..8]);
        CpuTimes { at, cpus, ticks }
    }

    /// What happened from `earlier` to `self`.
    pub fn since(&self, earlier: &CpuTimes) -> CpuDelta {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let d = |i: usize| {
            Duration::from_secs_f64(self.ticks[i].saturating_sub(earlier.ticks[i]) as f64 / hz)
        };
        CpuDelta {
            wall: self.at.duration_since(earlier.at),
            cpus: self.cpus,
            user: d(0),
            nice: d(1),
            system: d(2),
            idle: d(3),
            iowait: d(4),
            irq: d(5),
            softirq: d(6),
            steal: d(7),
        }
    }
}

impl std::ops::AddAssign for CpuDelta {
    /// Adds another span's figures (for a measurement made of several spans).
    fn add_assign(&mut self, o: CpuDelta) {
        self.wall += o.wall;
        self.cpus = self.cpus.max(o.cpus);
        self.user += o.user;
        self.nice += o.nice;
        self.system += o.system;
        self.idle += o.idle;
        self.iowait += o.iowait;
        self.irq += o.irq;
        self.softirq += o.softirq;
        self.steal += o.steal;
    }
}

impl CpuDelta {
    /// CPU time available: CPUs × wall time.
    pub fn capacity(&self) -> Duration {
        self.wall * self.cpus
    }

    /// Busy time from the exact idle clock: capacity − idle − iowait.
    pub fn busy(&self) -> Duration {
        self.capacity().saturating_sub(self.idle + self.iowait)
    }

    /// Busy time as the tick-sampled fields add up.
    pub fn busy_ticks(&self) -> Duration {
        self.user + self.nice + self.system + self.irq + self.softirq + self.steal
    }

    /// `part` as a percentage of the capacity.
    pub fn pct(&self, part: Duration) -> f64 {
        100.0 * part.as_secs_f64() / self.capacity().as_secs_f64().max(1e-9)
    }
}

/// CPU time used by processes that are not the benchmark's: every userspace process except
/// this one and those in the network namespaces given (the labs'), and the kernel's workqueue
/// threads. On a shared machine it tells a measurement that something else ran meanwhile (a
/// build, say, or another test's namespaces being torn down), and how much.
#[derive(Clone, Debug, Default)]
pub struct Others {
    /// (pid, start time) → (user + system time, the same of its reaped children), in ticks.
    ticks: std::collections::HashMap<(u32, u64), (u64, u64)>,
    /// The same of every `kworker` thread.
    kworkers: std::collections::HashMap<(u32, u64), u64>,
}

/// What other processes ran between two `Others`.
#[derive(Clone, Copy, Debug, Default)]
pub struct OthersDelta {
    /// The processes' own time (one that started in between counts whole; one that ended
    /// counts nothing).
    pub own: Duration,
    /// `own`, the time of children reaped in between, and the kernel's workqueue threads'. An
    /// upper bound: a child that ran for a minute and was reaped in between counts its whole
    /// minute, and the workqueues do a little for the benchmark too; but it also catches the
    /// short-lived processes (a test's `ip` commands) and the namespace teardowns (a kworker's)
    /// that `own` misses.
    pub suspect: Duration,
}

impl Others {
    /// Reads `/proc/*/stat` now, leaving out this process and those whose network namespace
    /// has one of the inode numbers `own`.
    pub fn now(own: &[u64]) -> Others {
        let me = std::process::id();
        let mut ticks = std::collections::HashMap::new();
        let mut kworkers = std::collections::HashMap::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // Fields after the command's closing parenthesis, from field 3 (state) on.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let f: Vec<u64> = rest
                .split_whitespace()
                .skip(1)
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            // flags (9), utime (14), stime (15), cutime (16), cstime (17), starttime (22).
            let field = |n: usize| f.get(n - 4).copied().unwrap_or(0);
            const PF_KTHREAD: u64 = 0x0020_0000;
            if field(9) & PF_KTHREAD != 0 {
                if stat.contains("(kworker") {
                    kworkers.insert((pid, field(22)), field(14) + field(15));
                }
                continue;
            }
            if netns_of(&e.path()).is_some_and(|n| own.contains(&n)) {
                continue;
            }
            ticks.insert(
                (pid, field(22)),
                (field(14) + field(15), field(16) + field(17)),
            );
        }
        Others { ticks, kworkers }
    }

    /// CPU time the others used from `earlier` to `self`.
    pub fn since(&self, earlier: &Others) -> OthersDelta {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let (mut own, mut children) = (0, 0);
        for (k, (o, c)) in &self.ticks {
            let (eo, ec) = earlier.ticks.get(k).copied().unwrap_or((0, 0));
            own += o.saturating_sub(eo);
            children += c.saturating_sub(ec);
        }
        let kworkers: u64 = self
            .kworkers
            .iter()
            .map(|(k, v)| v.saturating_sub(earlier.kworkers.get(k).copied().unwrap_or(0)))
            .sum();
        let d = |t: u64| Duration::from_secs_f64(t as f64 / hz);
        OthersDelta {
            own: d(own),
            suspect: d(own + children + kworkers),
        }
    }
}

/// The inode number of the network namespace `/run/netns/NAME` (as `/proc/PID/ns/net` shows it).
pub fn netns_inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{name}"))
        .ok()
        .map(|m| m.ino())
}

/// For each of the network namespaces `inodes`, the CPU time its processes have run so far
/// (every thread's `schedstat` run time, exact to the nanosecond; softirq work done on a
/// thread's behalf counts as its own on this kernel).
pub fn netns_cpu(inodes: &[u64]) -> Vec<Duration> {
    let mut out = vec![Duration::ZERO; inodes.len()];
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        // Entries that are not processes have no namespace; `self` is the bench's own.
        let Some(i) = netns_of(&e.path()).and_then(|n| inodes.iter().position(|&x| x == n)) else {
            continue;
        };
        for t in std::fs::read_dir(e.path().join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let ns = std::fs::read_to_string(t.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            out[i] += Duration::from_nanos(ns);
        }
    }
    out
}

/// The network namespace inode of the process at `/proc/PID`.
fn netns_of(proc_dir: &std::path::Path) -> Option<u64> {
    let l = std::fs::read_link(proc_dir.join("ns/net")).ok()?;
    let l = l.to_string_lossy().into_owned();
    l.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}
