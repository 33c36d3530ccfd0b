//! `cargo xtask bench cost`: what a balancer costs the machine per connection, at a fixed rate
//! of new connections well below saturation.
//!
//! Each system has a lab of its own (`lab::Lab`, `Setup::Lean`: client, LB and three
//! `steer-httpd` backends as namespaces on a bridge), all built before the first measurement and
//! kept until the last. An open-loop load of `--rate` new connections per second (2,000), one
//! `GET /` each, runs on one lab at a time. Each round gives every system `--seconds` (10) of
//! measured load, cut into slices of `--slice` (2 s) taken in turn — system A's first slice,
//! B's first, …, A's second, each pass starting one system further on — so that the machine's
//! drift reaches every system alike. Each slice starts with 250 ms of unmeasured load. Over the
//! slice the whole machine's busy CPU time is read from `/proc/stat` (every CPU, softirq and
//! steal included; see `cpu` for why it is taken as CPUs × wall − idle − iowait) and divided by
//! the connections the slice scheduled and completed. Rounds: `--rounds` (3); each lab first
//! gets `--warmup` (2 s) of unmeasured load.
//!
//! Every lab is up all the time, so the others' idle work (their balancers' health checks,
//! polling and table scans; their backends answering the checks) falls in every slice: it is
//! measured (the CPU time of every process in the other labs' namespaces) and taken off. A
//! system's own idle work stays in its figure. A system's cost in a round is its µs per
//! connection minus the baseline's (`direct`: the client straight to the backends, no balancer)
//! in the same round.
//!
//! Other processes on the machine (a build, another test's namespaces being torn down) are
//! watched: a slice in which they used more than 3 % of the CPUs is measured again, after
//! waiting for them to quieten; less is taken off. A round's window that did not carry its load
//! (more than 0.5 % of connections failed, or the generator fell more than 20 ms behind at p99)
//! does not count; its row says so. Benchmarks report; they never fail on a figure. Writes
//! `OUT_DIR/cost.json`, with every slice's figure.
//!
//! Usage: `steer-bench-cost [OUT_DIR] [--rate N] [--seconds S] [--slice S] [--warmup S]
//! [--rounds N] [--systems direct,xdp-floor,xdp-nat-floor,kernel-floor,steer,steer-nat,nftables,nft-dnat,haproxy]`

use std::{
    collections::BTreeMap,
    panic::AssertUnwindSafe,
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use steer_ctl::{client, proto::Request};
use steer_tests::{
    cpu::{netns_cpu, netns_inode, CpuDelta, CpuTimes, Others, OthersDelta},
    lab::{Balancer, Lab, Setup},
    netns::sh,
    openloop::{quantile, OpenLoop, Outcome, Sample},
};

/// Every system this bench knows, in the table's order; `direct` must run for any cost.
const ALL: [Balancer; 9] = [
    Balancer::Direct,
    Balancer::XdpFloor,
    Balancer::XdpNatFloor,
    Balancer::KernelFloor,
    Balancer::Steer,
    Balancer::SteerNat,
    Balancer::Nftables,
    Balancer::NftDnat,
    Balancer::Haproxy,
];

/// The targets: cost as a fraction of nft-dnat's.
fn target(b: Balancer) -> Option<f64> {
    match b {
        Balancer::Steer => Some(0.2),
        Balancer::SteerNat => Some(0.35),
        _ => None,
    }
}

/// The path a connection's packets take, for the output.
fn path(b: Balancer) -> &'static str {
    match b {
        Balancer::Direct => {
            "client -> bridge -> backend and back, both ways bridged; nothing enters the LB namespace"
        }
        Balancer::XdpFloor => {
            "client -> bridge -> LB eth0 (XDP: set backend MAC by source port, XDP_TX) -> bridge -> backend; replies backend -> bridge -> client"
        }
        Balancer::XdpNatFloor => {
            "client -> bridge -> LB eth0 (XDP: rewrite addresses to a backend picked by source port, XDP_TX) -> bridge -> backend; replies the same way back through the LB's XDP"
        }
        Balancer::KernelFloor => {
            "client -> bridge -> LB kernel (route to the VIP: ECMP over the backends, 5-tuple hash; no conntrack) -> bridge -> backend; replies backend -> bridge -> client"
        }
        Balancer::Steer => {
            "client -> bridge -> LB eth0 (steer XDP, DSR: XDP_TX to the backend's MAC) -> bridge -> backend; replies backend -> bridge -> client"
        }
        Balancer::SteerNat => {
            "client -> bridge -> LB eth0 (steer XDP, NAT: rewrite, XDP_TX) -> bridge -> backend; replies the same way back through the LB's XDP"
        }
        Balancer::Nftables => {
            "client -> bridge -> LB kernel (conntrack, DNAT, forward) -> bridge -> backend; replies routed back through the LB's kernel"
        }
        Balancer::NftDnat => {
            "client -> bridge -> LB kernel (conntrack, DNAT + masquerade, forward) -> bridge -> backend; replies to the LB, un-NATed, back"
        }
        Balancer::Haproxy => {
            "client -> bridge -> LB sockets (HAProxy, TCP mode) and a second connection LB -> bridge -> backend"
        }
        Balancer::HaproxyIptables => "as haproxy",
    }
}

/// What runs without `--systems`: all but plain `nftables` (DNAT with replies routed back
/// through the LB) and `kernel-floor`, which keeps the run within about five minutes.
const DEFAULT: [Balancer; 7] = [
    Balancer::Direct,
    Balancer::XdpFloor,
    Balancer::XdpNatFloor,
    Balancer::Steer,
    Balancer::SteerNat,
    Balancer::NftDnat,
    Balancer::Haproxy,
];

/// More than this share of a window's connections failing voids it.
const MAX_FAILED: f64 = 0.005;
/// The generator later than this (p99) voids a window: it did not hold the rate.
const MAX_LAG: Duration = Duration::from_millis(20);
/// A request not answered within this is a timeout.
const DEADLINE: Duration = Duration::from_secs(2);
/// Load before each slice's measurement starts (the generator starting, the first handshakes).
const RAMP: Duration = Duration::from_millis(250);
/// Other processes (a build, say) using more than this share of the CPUs during a slice get
/// it measured again, up to `ATTEMPTS` times in all; less is taken off the busy time.
const MAX_OTHERS: f64 = 0.03;
const ATTEMPTS: usize = 3;
/// Before a slice, wait this long at most for other processes to use less than `MAX_OTHERS`
/// of the CPUs over half a second.
const QUIET_WAIT: Duration = Duration::from_secs(120);

struct Opts {
    out_dir: PathBuf,
    rate: f64,
    seconds: Duration,
    slice: Duration,
    warmup: Duration,
    rounds: usize,
    systems: Vec<Balancer>,
}

impl Opts {
    fn slices_per_round(&self) -> usize {
        (self.seconds.as_secs_f64() / self.slice.as_secs_f64()).ceil() as usize
    }
}

fn usage(msg: &str) -> ! {
    eprintln!("steer-bench-cost: {msg}");
    eprintln!(
        "usage: steer-bench-cost [OUT_DIR] [--rate N] [--seconds S] [--slice S] [--warmup S] \
         [--rounds N] [--systems {}]",
        ALL.map(Balancer::key).join(",")
    );
    std::process::exit(2);
}

fn opts() -> Opts {
    let mut o = Opts {
        out_dir: PathBuf::from("target/bench"),
        rate: 2000.0,
        seconds: Duration::from_secs(10),
        slice: Duration::from_secs(2),
        warmup: Duration::from_secs(2),
        rounds: 3,
        systems: DEFAULT.to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        let secs = |v: String, what: &str, min: f64| match v.parse::<f64>() {
            Ok(s) if s >= min && s <= 3600.0 => Duration::from_secs_f64(s),
            _ => usage(&format!(
                "{what}: {v:?} is not a number of seconds from {min} to 3600"
            )),
        };
        match a.as_str() {
            "--rate" => {
                let v = val();
                o.rate = match v.parse::<f64>() {
                    Ok(r) if (1.0..=20_000.0).contains(&r) => r,
                    _ => usage(&format!("--rate: {v:?} is not from 1 to 20000")),
                }
            }
            "--seconds" => o.seconds = secs(val(), "--seconds", 0.5),
            "--slice" => o.slice = secs(val(), "--slice", 0.5),
            "--warmup" => o.warmup = secs(val(), "--warmup", 0.0),
            "--rounds" => {
                let v = val();
                o.rounds = match v.parse::<usize>() {
                    Ok(n) if (1..=50).contains(&n) => n,
                    _ => usage(&format!("--rounds: {v:?} is not from 1 to 50")),
                }
            }
            "--systems" => {
                o.systems = val()
                    .split(',')
                    .map(|s| {
                        ALL.into_iter()
                            .find(|x| x.key() == s.trim())
                            .unwrap_or_else(|| usage(&format!("unknown system {s:?}")))
                    })
                    .collect()
            }
            s if !s.starts_with('-') => o.out_dir = PathBuf::from(s),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if o.systems.is_empty() {
        usage("--systems needs at least one system");
    }
    o.slice = o.slice.min(o.seconds);
    if !o.systems.contains(&Balancer::Direct) {
        eprintln!("steer-bench-cost: without `direct` there is no baseline: costs stay empty");
    }
    o
}

/// Set by SIGINT or SIGTERM: the bench stops, tearing every lab down.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Sleeps until `until` on the load's clock (the scenario's own timing, not a wait for
/// readiness), waking early when stopped. False when stopped.
fn sleep_until(load: &OpenLoop, until: Duration) -> bool {
    while load.elapsed() < until {
        if stopped() {
            return false;
        }
        std::thread::sleep((until - load.elapsed()).min(Duration::from_millis(50)));
    }
    !stopped()
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn ms(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

/// What one slice measured.
struct Slice {
    cpu: CpuDelta,
    /// CPU time of processes not the bench's.
    others: OthersDelta,
    /// CPU time of the processes in each of the labs' namespaces (as `ours` lists them).
    ns_cpu: Vec<Duration>,
    /// The connections scheduled in the measured span.
    samples: Vec<Sample>,
    /// How many the rate asked for in that span.
    expected: f64,
    /// Run time and runs of the XDP programs on the LB's interfaces over the span (kernel BPF
    /// statistics), when the lab has any.
    xdp: Option<XdpTime>,
}

/// What the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`, held for the whole run) say
/// of a lab's balancer programs: the XDP programs attached to the LB namespace's interfaces.
/// A tail call runs inside its caller's run, so steer's entry program carries all of its
/// programs' time. The switch-side `XDP_PASS` program (`p-lb`) is not counted: it is the lab's
/// hop, not the balancer.
#[derive(Clone, Copy, Default)]
struct XdpTime {
    time: Duration,
    runs: u64,
}

impl XdpTime {
    /// The sums for the programs attached in `lab`'s LB namespace now; `None` when it has none.
    fn now(lab: &Lab) -> Option<XdpTime> {
        let links: Value = serde_json::from_str(&lab.topo.lb.ip(&["-j", "link", "show"])).ok()?;
        let mut ids = Vec::new();
        prog_ids(&links, false, &mut ids);
        if ids.is_empty() {
            return None;
        }
        let mut t = XdpTime::default();
        for info in aya::programs::loaded_programs().flatten() {
            if ids.contains(&info.id()) {
                t.time += info.run_time();
                t.runs += info.run_count();
            }
        }
        Some(t)
    }

    fn since(self, a: XdpTime) -> XdpTime {
        XdpTime {
            time: self.time.saturating_sub(a.time),
            runs: self.runs.saturating_sub(a.runs),
        }
    }
}

/// The program ids in `ip -j link show`'s output (`"xdp": {"prog": {"id": N}}`, or a list of
/// attached programs with a `prog` each).
fn prog_ids(v: &Value, in_prog: bool, out: &mut Vec<u32>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if in_prog && k == "id" {
                    if let Some(id) = x.as_u64() {
                        out.push(id as u32);
                    }
                }
                prog_ids(x, k == "prog", out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| prog_ids(x, in_prog, out)),
        _ => {}
    }
}

impl Slice {
    /// CPU time of the processes of the namespaces `idx` (indices into `ns_cpu`).
    fn cpu_of(&self, idx: &[usize]) -> Duration {
        idx.iter().map(|&i| self.ns_cpu[i]).sum()
    }

    fn disturbed(&self) -> bool {
        self.cpu.pct(self.others.suspect) / 100.0 > MAX_OTHERS
    }
}

/// steer's datapath counters (`status`), when the lab runs steer. Not read while measuring: a
/// `status` makes the daemon count flows by scanning its table for the next 5 s.
fn steer_counters(lab: &Lab) -> BTreeMap<String, u64> {
    let Some(d) = &lab.steer else {
        return BTreeMap::new();
    };
    client::request(&d.socket, &Request::Status {}, Duration::from_secs(5))
        .ok()
        .and_then(|r| r.status)
        .map(|s| s.datapath)
        .unwrap_or_default()
}

/// Runs the load on `lab` for a ramp and a measured slice.
fn run_slice(lab: &Lab, o: &Opts, ours: &[u64]) -> Option<Slice> {
    let load = OpenLoop::start_to(&lab.topo.client, lab.targets(), o.rate, DEADLINE);
    if !sleep_until(&load, RAMP) {
        return None;
    }
    // The scans of /proc (and of the programs' statistics) stay outside the span whose CPU is
    // measured.
    let (p0, oa) = (netns_cpu(ours), Others::now(ours));
    let x0 = XdpTime::now(lab);
    let (a, t0) = (CpuTimes::now(), load.elapsed());
    let carried_on = sleep_until(&load, t0 + o.slice);
    let (b, t1) = (CpuTimes::now(), load.elapsed());
    let x1 = XdpTime::now(lab);
    let (p1, ob) = (netns_cpu(ours), Others::now(ours));
    let samples = load.stop();
    carried_on.then(|| Slice {
        cpu: b.since(&a),
        others: ob.since(&oa),
        ns_cpu: p1
            .iter()
            .zip(&p0)
            .map(|(b, a)| b.saturating_sub(*a))
            .collect(),
        samples: samples
            .into_iter()
            .filter(|s| s.at >= t0 && s.at < t1)
            .collect(),
        expected: o.rate * (t1 - t0).as_secs_f64(),
        xdp: x1.zip(x0).map(|(b, a)| b.since(a)),
    })
}

/// Waits (at most `QUIET_WAIT`) until other processes used less than `MAX_OTHERS` of the CPUs
/// over half a second; returns how long it waited.
fn wait_quiet(ours: &[u64]) -> Duration {
    let start = Instant::now();
    let mut said = false;
    while start.elapsed() < QUIET_WAIT && !stopped() {
        let (a, oa) = (CpuTimes::now(), Others::now(ours));
        std::thread::sleep(Duration::from_millis(500));
        let (b, ob) = (CpuTimes::now(), Others::now(ours));
        let share = b.since(&a).pct(ob.since(&oa).suspect) / 100.0;
        if share < MAX_OTHERS {
            break;
        }
        if !said {
            eprintln!(
                "  other processes use {:.0} % of the CPUs: waiting (up to {:?}) for them to stop",
                share * 100.0,
                QUIET_WAIT
            );
            said = true;
        }
    }
    start.elapsed()
}

/// One system's measured time in one round: the sum of its slices.
#[derive(Default)]
struct Window {
    round: usize,
    slices: usize,
    /// Slices thrown away because other processes disturbed them.
    remeasured: usize,
    /// Slices kept although other processes disturbed them (after `ATTEMPTS`).
    disturbed: usize,
    quiet_wait: Duration,
    expected: f64,
    scheduled: usize,
    ok: usize,
    failed: BTreeMap<&'static str, usize>,
    /// The first failures: (slice of the round, scheduled at from the slice's load start,
    /// how it ended, latency).
    failures: Vec<(usize, Duration, &'static str, Duration)>,
    latencies: Vec<Duration>,
    lags: Vec<Duration>,
    cpu: CpuDelta,
    /// Other processes' own CPU time (taken off the busy time).
    others: Duration,
    /// The other labs' processes' CPU time (their balancers' and backends' idle work: health
    /// checks, polling, table scans), taken off the busy time too.
    background: Duration,
    /// Each slice's µs per completed connection (busy less others), for judging the noise.
    per_slice: Vec<f64>,
    /// CPU time of this system's own balancer processes during its slices.
    balancer: Duration,
    /// Its XDP programs' run time and runs over the measured spans (`XdpTime`).
    xdp: Option<XdpTime>,
    /// Why there is no figure (the run broke).
    error: Option<String>,
}

impl Window {
    fn add(&mut self, s: Slice, background: Duration, own_balancer: Duration) {
        self.slices += 1;
        self.expected += s.expected;
        self.scheduled += s.samples.len();
        for x in &s.samples {
            self.lags.push(x.lag);
            if x.outcome == Outcome::Ok {
                self.ok += 1;
                self.latencies.push(x.latency);
            } else {
                *self.failed.entry(x.outcome.as_str()).or_default() += 1;
                if self.failures.len() < 100 {
                    self.failures
                        .push((self.slices, x.at, x.outcome.as_str(), x.latency));
                }
            }
        }
        let ok = s
            .samples
            .iter()
            .filter(|x| x.outcome == Outcome::Ok)
            .count();
        self.per_slice.push(round2(
            s.cpu
                .busy()
                .saturating_sub(s.others.own + background)
                .as_secs_f64()
                * 1e6
                / ok.max(1) as f64,
        ));
        self.cpu += s.cpu;
        self.others += s.others.own;
        self.background += background;
        self.balancer += own_balancer;
        if let Some(x) = s.xdp {
            let t = self.xdp.get_or_insert_default();
            t.time += x.time;
            t.runs += x.runs;
        }
    }

    /// µs of the balancer's XDP programs per completed connection.
    fn xdp_us_per_conn(&self) -> Option<f64> {
        let x = self.xdp.filter(|_| self.ok > 0)?;
        Some(x.time.as_secs_f64() * 1e6 / self.ok as f64)
    }

    /// ns a run of the balancer's XDP programs (a packet), and runs per completed connection.
    fn xdp_ns_per_run(&self) -> Option<f64> {
        let x = self.xdp.filter(|x| x.runs > 0)?;
        Some(x.time.as_secs_f64() * 1e9 / x.runs as f64)
    }

    fn xdp_runs_per_conn(&self) -> Option<f64> {
        let x = self.xdp.filter(|_| self.ok > 0)?;
        Some(x.runs as f64 / self.ok as f64)
    }

    fn quantile(v: &[Duration], q: f64) -> Option<Duration> {
        let mut v = v.to_vec();
        v.sort();
        quantile(&v, q)
    }

    fn p50(&self) -> Option<Duration> {
        Window::quantile(&self.latencies, 0.5)
    }

    fn p99(&self) -> Option<Duration> {
        Window::quantile(&self.latencies, 0.99)
    }

    fn lag_p99(&self) -> Option<Duration> {
        Window::quantile(&self.lags, 0.99)
    }

    fn failed_total(&self) -> usize {
        self.failed.values().sum()
    }

    /// Why this window's figure does not count, if it does not.
    fn problem(&self) -> Option<String> {
        if let Some(e) = &self.error {
            return Some(e.clone());
        }
        let mut p = Vec::new();
        if self.ok == 0 {
            p.push("no connection completed".to_string());
        }
        if (self.scheduled as f64) < 0.98 * self.expected {
            p.push(format!(
                "only {} of {:.0} connections scheduled",
                self.scheduled, self.expected
            ));
        }
        if self.failed_total() as f64 > MAX_FAILED * self.scheduled.max(1) as f64 {
            let kinds: Vec<String> = self
                .failed
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            p.push(format!(
                "{} of {} connections failed ({})",
                self.failed_total(),
                self.scheduled,
                kinds.join(", ")
            ));
        }
        if self.lag_p99().is_some_and(|l| l > MAX_LAG) {
            p.push(format!(
                "rate not held: the generator was {:.0} ms late at p99",
                ms(self.lag_p99())
            ));
        }
        if self.disturbed > 0 {
            p.push(format!(
                "{} slice(s) shared with other processes",
                self.disturbed
            ));
        }
        (!p.is_empty()).then(|| p.join("; "))
    }

    fn valid(&self) -> bool {
        self.problem().is_none()
    }

    /// Busy CPU (exact idle clock) less other processes' and the other labs' time.
    fn busy(&self) -> Duration {
        self.cpu
            .busy()
            .saturating_sub(self.others + self.background)
    }

    /// µs of busy CPU per completed connection.
    fn us_per_conn(&self) -> Option<f64> {
        (self.ok > 0).then(|| self.busy().as_secs_f64() * 1e6 / self.ok as f64)
    }

    /// The same from the tick-sampled fields.
    fn ticks_us_per_conn(&self) -> Option<f64> {
        (self.ok > 0).then(|| {
            self.cpu
                .busy_ticks()
                .saturating_sub(self.others + self.background)
                .as_secs_f64()
                * 1e6
                / self.ok as f64
        })
    }

    fn valid_us(&self) -> Option<f64> {
        self.us_per_conn().filter(|_| self.valid())
    }

    fn line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("error: {}", first_line(e));
        }
        format!(
            "{} of {} ok, p99 {:.1} ms, lag p99 {:.1} ms; busy {:.3} s of {:.1} ({:.0} %; taken off: others {:.2} s, other labs {:.2} s): {:.1} µs/conn (ticks: {:.1}){}{}",
            self.ok,
            self.scheduled,
            ms(self.p99()),
            ms(self.lag_p99()),
            self.busy().as_secs_f64(),
            self.cpu.capacity().as_secs_f64(),
            self.cpu.pct(self.busy()),
            self.others.as_secs_f64(),
            self.background.as_secs_f64(),
            self.us_per_conn().unwrap_or(f64::NAN),
            self.ticks_us_per_conn().unwrap_or(f64::NAN),
            match (self.xdp_us_per_conn(), self.xdp_ns_per_run()) {
                (Some(c), Some(r)) => format!(
                    "; XDP {c:.1} µs/conn ({r:.0} ns a packet, {:.1} a connection)",
                    self.xdp_runs_per_conn().unwrap_or(f64::NAN)
                ),
                _ => String::new(),
            },
            self.problem()
                .map_or(String::new(), |p| format!("; DOES NOT COUNT: {p}"))
        )
    }
}

/// One system: its lab (or why it has none), its windows, and what its balancer's processes
/// ran while the other systems were measured (its idle work).
struct Entry {
    system: Balancer,
    lab: Option<Lab>,
    error: Option<String>,
    setup: Duration,
    windows: Vec<Window>,
    idle_cpu: Duration,
    idle_wall: Duration,
    /// steer's datapath counters after setting up, then what moved over the run (warm-up
    /// included).
    counters: BTreeMap<String, u64>,
}

impl Entry {
    /// Turns the counters read after setting up into what moved since.
    fn count_steer(&mut self) {
        let Some(lab) = &self.lab else {
            return;
        };
        let before = std::mem::take(&mut self.counters);
        self.counters = steer_counters(lab)
            .into_iter()
            .map(|(k, v)| {
                let d = v.saturating_sub(before.get(&k).copied().unwrap_or(0));
                (k, d)
            })
            .collect();
    }

    /// steer's drop counters that moved over the run, as text.
    fn drops(&self) -> Option<String> {
        let d: Vec<String> = self
            .counters
            .iter()
            .filter(|(k, v)| k.starts_with("drop") && **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        (!d.is_empty()).then(|| d.join(", "))
    }

    /// The balancer's idle work (its processes' CPU while the others were measured), µs per
    /// connection at `rate`: part of its cost, shown apart.
    fn idle_us(&self, rate: f64) -> Option<f64> {
        (self.idle_wall > Duration::ZERO)
            .then(|| self.idle_cpu.as_secs_f64() / self.idle_wall.as_secs_f64() / rate * 1e6)
    }

    fn us(&self) -> Vec<f64> {
        self.windows.iter().filter_map(Window::valid_us).collect()
    }

    /// This system's cost per round: its µs/conn minus the baseline's of the same round, for
    /// the rounds where both counted.
    fn costs(&self, base: Option<&Entry>) -> Vec<(usize, f64)> {
        let Some(base) = base else {
            return Vec::new();
        };
        self.windows
            .iter()
            .filter_map(|w| {
                let b = base.windows.iter().find(|b| b.round == w.round)?;
                Some((w.round, w.valid_us()? - b.valid_us()?))
            })
            .collect()
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("steer-bench-cost: needs root");
        std::process::exit(1);
    }
    let o = opts();
    for tool in ["haproxy", "nft", "ethtool"] {
        if sh(&["sh", "-c", &format!("command -v {tool} || true")])
            .trim()
            .is_empty()
        {
            eprintln!("steer-bench-cost: {tool} is missing (cargo xtask bench cost installs it)");
            std::process::exit(1);
        }
    }
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
    // The kernel counts BPF programs' run time while this is held (closed at exit, however
    // the bench ends). It costs each run two clock reads (tens of ns a packet): a cost only the
    // XDP systems carry, so it counts against them, never for them.
    let _bpf_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| eprintln!("steer-bench-cost: no BPF run-time statistics ({e}): no xdp column"))
        .ok();
    let started = Instant::now();
    eprintln!(
        "{} systems x {} rounds x {} slices of {:?} at {} connections/s: about {:.0} s of load",
        o.systems.len(),
        o.rounds,
        o.slices_per_round(),
        o.slice,
        o.rate,
        o.systems.len() as f64
            * (o.warmup.as_secs_f64()
                + (o.rounds * o.slices_per_round()) as f64 * (o.slice + RAMP).as_secs_f64())
    );
    let mut entries = set_up(&o);
    let ns = Namespaces::of(&entries);
    warm_up(&entries, &o);
    run_rounds(&mut entries, &o, &ns);
    for e in entries.iter_mut() {
        e.count_steer();
    }
    if stopped() {
        drop(entries);
        eprintln!("steer-bench-cost: interrupted; labs torn down, nothing written");
        std::process::exit(130);
    }
    report(&o, &entries, started.elapsed());
}

/// Builds every system's lab; one that cannot be built keeps its entry, with the error.
fn set_up(o: &Opts) -> Vec<Entry> {
    o.systems
        .iter()
        .map(|&system| {
            eprintln!("{}: setting up", system.key());
            let t = Instant::now();
            let (lab, error) = match std::panic::catch_unwind(|| Lab::new(system, Setup::Lean)) {
                Ok(Ok(lab)) => (Some(lab), None),
                Ok(Err(e)) => (None, Some(e)),
                Err(p) => (None, Some(panic_text(&*p))),
            };
            if let Some(e) = &error {
                eprintln!("  {}: {}", system.key(), first_line(e));
            }
            Entry {
                system,
                counters: lab.as_ref().map(steer_counters).unwrap_or_default(),
                lab,
                error,
                setup: t.elapsed(),
                windows: Vec::new(),
                idle_cpu: Duration::ZERO,
                idle_wall: Duration::ZERO,
            }
        })
        .collect()
}

/// The labs' network namespaces: whose processes are the bench's, and which are whose.
struct Namespaces {
    /// Every lab's namespaces' inode numbers.
    ours: Vec<u64>,
    /// By entry: its namespaces, as indices into `ours`.
    labs: Vec<Vec<usize>>,
    /// By entry: its LB namespace (its balancer's processes), the same way.
    lbs: Vec<Vec<usize>>,
}

impl Namespaces {
    fn of(entries: &[Entry]) -> Namespaces {
        let mut ns = Namespaces {
            ours: Vec::new(),
            labs: Vec::new(),
            lbs: Vec::new(),
        };
        for e in entries {
            let (mut lab, mut lb) = (Vec::new(), Vec::new());
            if let Some(l) = &e.lab {
                let lb_inode = netns_inode(&l.topo.lb.name);
                for inode in l.netns_inodes() {
                    if Some(inode) == lb_inode {
                        lb.push(ns.ours.len());
                    }
                    lab.push(ns.ours.len());
                    ns.ours.push(inode);
                }
            }
            ns.labs.push(lab);
            ns.lbs.push(lb);
        }
        ns
    }
}

/// Gives every lab `--warmup` of unmeasured load (caches, neighbours, tables).
fn warm_up(entries: &[Entry], o: &Opts) {
    for e in entries {
        let Some(lab) = &e.lab else {
            continue;
        };
        if stopped() {
            return;
        }
        eprintln!("{}: warming up for {:?}", e.system.key(), o.warmup);
        let warm = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let load = OpenLoop::start_to(&lab.topo.client, lab.targets(), o.rate, DEADLINE);
            sleep_until(&load, o.warmup);
            load.stop()
        }));
        match warm {
            Ok(s) => {
                let bad = s.iter().filter(|x| x.outcome != Outcome::Ok).count();
                if bad > 0 {
                    eprintln!("  {bad} of {} warm-up connections failed", s.len());
                }
            }
            Err(p) => eprintln!("  warm-up broke: {}", first_line(&panic_text(&*p))),
        }
    }
}

/// Every round: each system's slices in turn, each pass starting one system further on (none
/// always follows the same one).
fn run_rounds(entries: &mut [Entry], o: &Opts, ns: &Namespaces) {
    let (n, spr) = (entries.len(), o.slices_per_round());
    wait_quiet(&ns.ours);
    for round in 0..o.rounds {
        for e in entries.iter_mut() {
            e.windows.push(Window {
                round,
                error: e.error.clone(),
                ..Window::default()
            });
        }
        for k in 0..spr {
            for j in 0..n {
                if stopped() {
                    return;
                }
                let i = (round * spr + k + j) % n;
                if entries[i].lab.is_some() && entries[i].windows[round].error.is_none() {
                    slice_of(entries, i, round, o, ns);
                }
            }
        }
        for e in entries.iter() {
            eprintln!(
                "round {}/{} {}: {}",
                round + 1,
                o.rounds,
                e.system.key(),
                e.windows[round].line()
            );
        }
    }
}

/// Measures one slice of entry `i` and books it: to its window, and the other labs' process
/// time to their idle work.
fn slice_of(entries: &mut [Entry], i: usize, round: usize, o: &Opts, ns: &Namespaces) {
    let Some((slice, attempts, waited)) = measure_slice(&entries[i], o, &ns.ours, round) else {
        return;
    };
    entries[i].windows[round].quiet_wait += waited;
    let s = match slice {
        Ok(s) => s,
        Err(err) => {
            eprintln!("  {}: {}", entries[i].system.key(), first_line(&err));
            entries[i].windows[round].error = Some(err);
            return;
        }
    };
    let mut background = Duration::ZERO;
    for (x, other) in entries.iter_mut().enumerate() {
        if x != i {
            background += s.cpu_of(&ns.labs[x]);
            other.idle_cpu += s.cpu_of(&ns.lbs[x]);
            other.idle_wall += s.cpu.wall;
        }
    }
    let own = s.cpu_of(&ns.lbs[i]);
    let w = &mut entries[i].windows[round];
    w.remeasured += attempts - 1;
    if s.disturbed() {
        w.disturbed += 1;
    }
    w.add(s, background, own);
}

/// One slice of `e`'s system, measured again while other processes disturb it (up to
/// `ATTEMPTS`): the slice or why it broke, the attempts made, the time spent waiting for quiet.
/// None when stopped.
#[allow(clippy::type_complexity)]
fn measure_slice(
    e: &Entry,
    o: &Opts,
    ours: &[u64],
    round: usize,
) -> Option<(Result<Slice, String>, usize, Duration)> {
    let lab = e.lab.as_ref()?;
    let mut waited = Duration::ZERO;
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            waited += wait_quiet(ours);
        }
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| run_slice(lab, o, ours)));
        let s = match r {
            Ok(Some(s)) => s,
            Ok(None) => return None,
            Err(p) => {
                if let Some(d) = &lab.steer {
                    eprintln!("{} daemon log:\n{}", e.system.key(), d.log());
                }
                return Some((Err(panic_text(&*p)), attempt, waited));
            }
        };
        if !s.disturbed() || attempt == ATTEMPTS {
            return Some((Ok(s), attempt, waited));
        }
        eprintln!(
            "  round {} {}: other processes took {:.0} % of the CPUs during a slice: measuring it again",
            round + 1,
            e.system.key(),
            s.cpu.pct(s.others.suspect)
        );
    }
    unreachable!("the last attempt returns")
}

fn report(o: &Opts, entries: &[Entry], took: Duration) {
    let base = entries.iter().find(|e| e.system == Balancer::Direct);
    let nft = entries.iter().find(|e| e.system == Balancer::NftDnat);
    let nft_costs: BTreeMap<usize, f64> = nft
        .map(|e| e.costs(base))
        .unwrap_or_default()
        .into_iter()
        .collect();
    let cpus = entries
        .iter()
        .flat_map(|e| &e.windows)
        .map(|w| w.cpu.cpus)
        .max()
        .unwrap_or(0);

    println!();
    println!(
        "balancer cost: {} new connections/s, one GET each; per round {} s measured per system in {} interleaved slices; {} round(s); whole machine ({} CPUs)",
        o.rate,
        o.seconds.as_secs_f64(),
        o.slices_per_round(),
        o.rounds,
        cpus
    );
    println!(
        "{:<12} {:>6} {:>20} {:>20} {:>6} {:>5} {:>18} {:>14} {:>5} {:>6} {:>6}  note",
        "system",
        "rounds",
        "µs/conn med (range)",
        "cost µs/conn (range)",
        "idle",
        "xdp",
        "× nft-dnat (range)",
        "target",
        "busy%",
        "failed",
        "p99 ms"
    );
    let mut json_systems = serde_json::Map::new();
    for e in entries {
        let us = Spread::of(&e.us());
        let costs = e.costs(base);
        let cost = Spread::of(&costs.iter().map(|(_, c)| *c).collect::<Vec<_>>());
        let per_round_ratio: Vec<f64> = costs
            .iter()
            .filter_map(|(round, c)| Some(c / nft_costs.get(round)?))
            .collect();
        // Each round's cost over nft-dnat's in the same round: the median and range of those.
        let ratios = Spread::of(&per_round_ratio).filter(|_| e.system != Balancer::Direct);
        let ratio = ratios.map(|r| r.median);
        let ratio_cell = Spread::cell(ratios, 2);
        let target_cell = match (target(e.system), ratio) {
            (Some(t), Some(x)) => format!("≤ {t:.2}: {}", if x <= t { "met" } else { "missed" }),
            (Some(t), None) => format!("≤ {t:.2}"),
            _ => String::new(),
        };
        let valid: Vec<&Window> = e.windows.iter().filter(|w| w.valid()).collect();
        let busy = median(
            &valid
                .iter()
                .map(|w| w.cpu.pct(w.busy()))
                .collect::<Vec<_>>(),
        );
        let p99 = median(&valid.iter().map(|w| ms(w.p99())).collect::<Vec<_>>());
        let failed: usize = e.windows.iter().map(Window::failed_total).sum();
        let mut notes: Vec<String> = Vec::new();
        if let Some(err) = &e.error {
            notes.push(format!("no lab: {}", first_line(err)));
        } else {
            notes.extend(e.windows.iter().filter_map(|w| {
                Some(format!(
                    "round {} does not count: {}",
                    w.round + 1,
                    first_line(&w.problem()?)
                ))
            }));
        }
        if e.system == Balancer::Direct {
            notes.insert(0, "the baseline".into());
        }
        if let Some(d) = e.drops() {
            notes.push(format!("steer's drops over the run: {d}"));
        }
        let idle = e.idle_us(o.rate);
        let xdp = Spread::of(
            &valid
                .iter()
                .filter_map(|w| w.xdp_us_per_conn())
                .collect::<Vec<_>>(),
        );
        let xdp_run = median(
            &valid
                .iter()
                .filter_map(|w| w.xdp_ns_per_run())
                .collect::<Vec<_>>(),
        );
        let xdp_runs = median(
            &valid
                .iter()
                .filter_map(|w| w.xdp_runs_per_conn())
                .collect::<Vec<_>>(),
        );
        println!(
            "{:<12} {:>6} {:>20} {:>20} {:>6} {:>5} {:>18} {:>14} {:>5} {:>6} {:>6}  {}",
            e.system.key(),
            format!("{}/{}", valid.len(), e.windows.len()),
            Spread::cell(us, 1),
            if e.system == Balancer::Direct {
                "0".into()
            } else {
                Spread::cell(cost, 1)
            },
            idle.map_or("-".into(), |x| format!("{x:.1}")),
            xdp.map_or("-".into(), |x| format!("{:.1}", x.median)),
            ratio_cell,
            target_cell,
            busy.map_or("-".into(), |b| format!("{b:.0}")),
            failed,
            p99.map_or("-".into(), |p| format!("{p:.1}")),
            notes.join("; ")
        );
        json_systems.insert(
            e.system.key().into(),
            json!({
                "path": path(e.system),
                "error": e.error,
                "setup_s": round2(e.setup.as_secs_f64()),
                "rounds_counted": valid.len(),
                "us_per_conn": Spread::json(us),
                "cost_us_per_conn": Spread::json(cost),
                "idle_us_per_conn": idle.map(round2),
                "xdp_us_per_conn": Spread::json(xdp),
                "xdp_ns_per_run": xdp_run.map(round2),
                "xdp_runs_per_conn": xdp_runs.map(round2),
                "balancer_idle_cpu_s": round2(e.idle_cpu.as_secs_f64()),
                "balancer_idle_over_s": round2(e.idle_wall.as_secs_f64()),
                "cost_ratio_to_nft_dnat": ratio.map(round2),
                "cost_ratio_to_nft_dnat_per_round": per_round_ratio.iter().map(|x| round2(*x)).collect::<Vec<_>>(),
                "target_ratio": target(e.system),
                "ticks_us_per_conn": Spread::json(Spread::of(&valid.iter().filter_map(|w| w.ticks_us_per_conn()).collect::<Vec<_>>())),
                "steer_datapath_over_run": e.counters,
                "windows": e.windows.iter().map(|w| window_json(w, &costs)).collect::<Vec<_>>(),
            }),
        );
    }
    println!();
    // A balancer over the floor of its path, round by round: its own work beyond the lab's hop
    // (one way through the LB for DSR, both ways for NAT).
    let mut over_floor = serde_json::Map::new();
    for (sys, floor) in [
        (Balancer::Steer, Balancer::XdpFloor),
        (Balancer::SteerNat, Balancer::XdpNatFloor),
        (Balancer::NftDnat, Balancer::XdpNatFloor),
    ] {
        let find = |b: Balancer| entries.iter().find(|e| e.system == b);
        let (Some(a), Some(f)) = (find(sys), find(floor)) else {
            continue;
        };
        let d: Vec<(usize, f64)> = a
            .windows
            .iter()
            .filter_map(|w| {
                let fw = f.windows.iter().find(|x| x.round == w.round)?;
                Some((w.round, w.valid_us()? - fw.valid_us()?))
            })
            .collect();
        let Some(x) = Spread::of(&d.iter().map(|(_, v)| *v).collect::<Vec<_>>()) else {
            continue;
        };
        let ratios: Vec<f64> = d
            .iter()
            .filter_map(|(r, v)| Some(v / nft_costs.get(r)?))
            .collect();
        println!(
            "{} minus {} ({}'s own work over the least forwarding on its path): {} µs/conn{}",
            sys.key(),
            floor.key(),
            sys.key(),
            Spread::cell(Some(x), 1),
            Spread::of(&ratios).map_or(String::new(), |r| format!(
                "; × nft-dnat's cost: {}",
                Spread::cell(Some(r), 2)
            ))
        );
        over_floor.insert(
            format!("{}-minus-{}", sys.key(), floor.key()),
            Spread::json(Some(x)),
        );
    }
    println!("cost = µs/conn − direct's µs/conn in the same round; idle = the part of it that the balancer's processes spend while nothing is sent through it");
    println!("xdp = µs per connection in the XDP programs on the LB's interfaces (the kernel's BPF run-time statistics over the measured slices; tail calls included; a part of the cost measured directly, without the busy figure's slice-to-slice noise; the JSON has ns a packet and packets a connection)");
    println!("paths (every system has its own namespaces: client, LB and 3 backends on one bridge in a switch namespace, veth links):");
    for e in entries {
        println!("  {:<12} {}", e.system.key(), path(e.system));
    }
    for line in NOTES {
        println!("{line}");
    }
    let doc = json!({
        "benchmark": "CPU per connection of each balancer at a fixed open-loop rate of new connections",
        "rate_per_s": o.rate,
        "seconds_per_round": o.seconds.as_secs_f64(),
        "slice_s": o.slice.as_secs_f64(),
        "ramp_s": RAMP.as_secs_f64(),
        "warmup_s": o.warmup.as_secs_f64(),
        "rounds": o.rounds,
        "cpus": cpus,
        "cpu_method": "busy = CPUs x wall - idle - iowait from /proc/stat (idle is the exact nohz clock), less other processes' CPU; ticks_* = user+nice+system+irq+softirq+steal as tick-sampled",
        "cost": "us_per_conn - direct's us_per_conn in the same round; idle_us_per_conn (the balancer's processes' CPU while the other systems were measured, over the rate) is part of it",
        "request_deadline_s": DEADLINE.as_secs_f64(),
        "max_failed_share": MAX_FAILED,
        "max_generator_lag_ms": MAX_LAG.as_secs_f64() * 1000.0,
        "max_others_share": MAX_OTHERS,
        "notes": NOTES,
        "order": entries.iter().map(|e| e.system.key()).collect::<Vec<_>>(),
        "over_floor_us_per_conn": over_floor,
        "took_s": took.as_secs_f64().round(),
        "systems": json_systems,
    });
    std::fs::create_dir_all(&o.out_dir).expect("output dir");
    let path = o.out_dir.join("cost.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .expect("write cost.json");
    println!("\nwrote {} ({:.0} s)", path.display(), took.as_secs_f64());
}

/// What the output says about the method, printed under the table and kept in the JSON.
const NOTES: [&str; 3] = [
    "what subtracting direct leaves in every cost: a connection through a balancer crosses the bridge twice (client -> LB -> \
     backend) where direct crosses it once, so each cost includes one more veth pair and bridge hop for every packet that \
     visits the LB: the software stand-in for the LB's NIC, the wire and the switch (the bridge makes no netfilter calls, as \
     a switch would not). xdp-floor is that hop plus the least XDP forwarding, kernel-floor the \
     same through the kernel's forwarding (an ECMP route, no conntrack); both are DSR, one way through the LB as steer \
     DSR is, so steer minus xdp-floor is steer's own work. The NAT systems (steer-nat, nft-dnat, nftables) and HAProxy \
     bring the replies back through the LB too: their costs carry the hop both ways; xdp-nat-floor is that (the least \
     XDP NAT: addresses rewritten both ways for the one client, no state), so steer-nat minus xdp-nat-floor is \
     steer NAT's own work. \
     The LB's switch-side veth runs an XDP_PASS program only for the XDP systems (veth delivers XDP_TX frames only to a \
     peer with one): a lab cost that steer and xdp-floor pay and the kernel-path systems do not.",
    "CPU: busy = CPUs x wall - idle - iowait from /proc/stat, i.e. user+nice+system+irq+softirq+steal, read from the idle \
     clock because this kernel samples those fields at each 4 ms tick but clocks idle exactly (the tick-sampled sum is in \
     the JSON as ticks_us_per_conn); less the CPU time of other processes and of the other labs' processes. Every row \
     includes the same load generator (one tokio thread in the client namespace), the backends' steer-httpd (a thread per \
     connection) and both ends' TCP stacks: the same work in every row, which subtracting direct removes. This VM's \
     vCPUs change speed from one moment to the next (a fixed spin took 84 to 131 us): a 2 s slice's figure varies by about \
     5 %, which is why the rounds' ranges are wide; more --rounds narrow them.",
    "left out: kernel work that no process carries — TIME_WAIT sockets and conntrack entries expiring a minute or two \
     after their connection, and the softirq work of other labs' health checks outside their processes — falls on \
     whichever slice is running then, on all systems alike rather than on its owner.",
];

fn window_json(w: &Window, costs: &[(usize, f64)]) -> Value {
    let s = |d: Duration| (d.as_secs_f64() * 1000.0).round() / 1000.0;
    let msr = |d: Option<Duration>| d.map(|d| round2(d.as_secs_f64() * 1000.0));
    json!({
        "round": w.round + 1,
        "counted": w.valid(),
        "problem": w.problem(),
        "slices": w.slices,
        "slices_remeasured": w.remeasured,
        "quiet_wait_s": s(w.quiet_wait),
        "scheduled": w.scheduled,
        "ok": w.ok,
        "failed_by_kind": w.failed,
        "first_failures": w.failures.iter().map(|(n, at, how, lat)| json!({
            "slice": n, "at_ms": msr(Some(*at)), "outcome": how, "latency_ms": msr(Some(*lat)),
        })).collect::<Vec<_>>(),
        "p50_ms": msr(w.p50()),
        "p99_ms": msr(w.p99()),
        "generator_lag_p99_ms": msr(w.lag_p99()),
        "wall_s": s(w.cpu.wall),
        "busy_s": s(w.busy()),
        "machine_busy_s": s(w.cpu.busy()),
        "others_s": s(w.others),
        "other_labs_s": s(w.background),
        "ticks_busy_s": s(w.cpu.busy_ticks()),
        "user_s": s(w.cpu.user + w.cpu.nice),
        "system_s": s(w.cpu.system),
        "irq_softirq_s": s(w.cpu.irq + w.cpu.softirq),
        "steal_s": s(w.cpu.steal),
        "balancer_processes_s": s(w.balancer),
        "us_per_conn": w.us_per_conn().map(round2),
        "us_per_conn_by_slice": w.per_slice,
        "ticks_us_per_conn": w.ticks_us_per_conn().map(round2),
        "cost_us_per_conn": costs.iter().find(|(r, _)| *r == w.round).map(|(_, c)| round2(*c)),
        "xdp_us_per_conn": w.xdp_us_per_conn().map(round2),
        "xdp_ns_per_run": w.xdp_ns_per_run().map(round2),
        "xdp_runs_per_conn": w.xdp_runs_per_conn().map(round2),
    })
}

fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}

/// Median, min and max.
#[derive(Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Option<Spread> {
        Some(Spread {
            median: median(v)?,
            min: v.iter().copied().fold(f64::INFINITY, f64::min),
            max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    fn cell(s: Option<Spread>, prec: usize) -> String {
        s.map_or("-".into(), |s| {
            format!("{:.prec$} ({:.prec$}–{:.prec$})", s.median, s.min, s.max)
        })
    }

    fn json(s: Option<Spread>) -> Value {
        s.map_or(
            Value::Null,
            |s| json!({"median": round2(s.median), "min": round2(s.min), "max": round2(s.max)}),
        )
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
