//! `cargo xtask bench restart`: a deploy with health checks only. Every backend is stopped and
//! started again D seconds later, one after the other, under an open-loop load of new
//! connections, and no balancer command is given: the balancer finds out from its health checks
//! (and, in steer's NAT mode, from what it sees of the traffic) alone. This is the situation of
//! a team that cannot change how it deploys, only what it deploys behind.
//!
//! Systems, each in its own namespaces with three unmodified `steer-httpd` backends:
//! - `haproxy`: HAProxy (mode http) with `check inter 2000 rise 2 fall 2`, `option httpchk GET /`
//!   and HAProxy's default `retries 3`, no `option redispatch` (Debian's stock defaults).
//! - `haproxy-redispatch`: the same with `option redispatch`, which many configs add.
//! - `steer-dsr`: steer in DSR mode (backends carry the VIP on lo and the ARP sysctls), HTTP
//!   checks every 2 s (also while changing and while down), rise 2, fall 2.
//! - `steer-nat`: steer with `mode = "nat"` and nothing else, same checks, backends unmodified.
//!
//! Load: `--rate` new connections per second (200), one `GET /` each, answered within
//! `--deadline` seconds (10) or counted as a timeout. For each D of `--delays` (1,5): load
//! starts; after a second, each backend in turn is stopped (SIGTERM: the process ends, the host
//! stays, so its kernel refuses connections), started again D seconds after the stop, and the
//! next one waits until the balancer reports every backend healthy again (HAProxy: every server
//! `UP`; steer: every backend `up` with its last check `ok`, read through the control socket,
//! which changes nothing). A second later the load stops and the requests still in flight are
//! waited for. Reported per system and D: restarts, requests, failed (and how), failed per
//! restart, requests answered but more than 1 s late per restart, p99 of the answered ones.
//! A system that cannot run (e.g. a steer without NAT mode refusing the config) is a row with
//! its error. Writes target/bench/restart.json with every figure, per-restart counts and the
//! exact configs.
//!
//! Usage: `steer-bench-restart [OUT_DIR] [--rate N] [--delays 1,5] [--deadline 10]
//! [--systems haproxy,haproxy-redispatch,steer-dsr,steer-nat]`

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use steer_ctl::{
    client,
    model::Health,
    proto::{Request, Status},
};
use steer_tests::{
    daemon::{steer_ctl_bin, SteerDaemon},
    haproxy::Haproxy,
    netns::{addr, sh, Topology, TopologySpec},
    openloop::{quantile, OpenLoop, Outcome, Sample},
    servers::Servers,
};

const BACKENDS: usize = 3;
/// Load before the first stop and after the last recovery.
const MARGIN: Duration = Duration::from_secs(1);
/// How long a balancer may take to report every backend healthy.
const HEALTHY_TIMEOUT: Duration = Duration::from_secs(30);
/// Answered later than this after being scheduled: "delayed".
const DELAYED: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Haproxy,
    HaproxyRedispatch,
    SteerDsr,
    SteerNat,
}

const ALL: [System; 4] = [
    System::Haproxy,
    System::HaproxyRedispatch,
    System::SteerDsr,
    System::SteerNat,
];

impl System {
    fn key(self) -> &'static str {
        match self {
            System::Haproxy => "haproxy",
            System::HaproxyRedispatch => "haproxy-redispatch",
            System::SteerDsr => "steer-dsr",
            System::SteerNat => "steer-nat",
        }
    }

    fn is_steer(self) -> bool {
        matches!(self, System::SteerDsr | System::SteerNat)
    }
}

struct Opts {
    out_dir: PathBuf,
    rate: f64,
    delays: Vec<Duration>,
    deadline: Duration,
    systems: Vec<System>,
}

fn usage(msg: &str) -> ! {
    eprintln!("steer-bench-restart: {msg}");
    eprintln!(
        "usage: steer-bench-restart [OUT_DIR] [--rate N] [--delays S,S,…] [--deadline S] \
         [--systems {}]",
        ALL.map(System::key).join(",")
    );
    std::process::exit(2);
}

fn secs(s: &str, what: &str) -> Duration {
    match s.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Duration::from_secs_f64(v),
        _ => usage(&format!("{what}: {s:?} is not a number of seconds")),
    }
}

fn opts() -> Opts {
    let mut o = Opts {
        out_dir: PathBuf::from("target/bench"),
        rate: 200.0,
        delays: vec![Duration::from_secs(1), Duration::from_secs(5)],
        deadline: Duration::from_secs(10),
        systems: ALL.to_vec(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--rate" => {
                let v = val();
                o.rate = match v.parse::<f64>() {
                    Ok(r) if r > 0.0 && r <= 5000.0 => r,
                    _ => usage(&format!("--rate: {v:?} is not from 1 to 5000")),
                }
            }
            "--delays" => o.delays = val().split(',').map(|s| secs(s, "--delays")).collect(),
            "--deadline" => o.deadline = secs(&val(), "--deadline"),
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
    if o.delays.is_empty() || o.systems.is_empty() {
        usage("--delays and --systems need at least one value");
    }
    o
}

fn httpd() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd")
}

/// Removes a directory when dropped (declared last in `Lab`, so it goes after what used it).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One system's namespaces, servers and balancer. Fields drop in order: the balancer, the
/// servers, the namespaces, the files.
struct Lab {
    steer: Option<SteerDaemon>,
    haproxy: Option<Haproxy>,
    servers: Servers,
    topo: Topology,
    _dir: TempDir,
    /// The balancer's config, for the JSON.
    config: String,
}

impl Lab {
    /// Every backend healthy in the balancer's own view, or what is not.
    fn healthy(&self) -> Result<(), String> {
        if let Some(h) = &self.haproxy {
            let st = h.status();
            let up = st.values().filter(|s| *s == "UP").count();
            return if up == BACKENDS {
                Ok(())
            } else {
                Err(format!("{st:?}"))
            };
        }
        let d = self.steer.as_ref().expect("a balancer");
        let s = steer_status(d)?;
        let not: Vec<String> = s
            .backends
            .iter()
            .filter(|b| !(b.health == Health::Up && b.check == "ok"))
            .map(|b| format!("{}: {:?}, {}", b.name, b.health, b.check))
            .collect();
        if not.is_empty() && s.backends.len() == BACKENDS {
            Ok(())
        } else {
            Err(not.join("; "))
        }
    }

    fn wait_healthy(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            match self.healthy() {
                Ok(()) => return Ok(start.elapsed()),
                Err(e) if start.elapsed() > timeout => {
                    return Err(format!("not every backend healthy after {timeout:?}: {e}"))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

fn steer_status(d: &SteerDaemon) -> Result<Status, String> {
    let r = client::request(&d.socket, &Request::Status {}, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    r.status
        .ok_or_else(|| format!("status without a body: {:?}", r.error))
}

fn haproxy_config(dir: &Path, topo: &Topology, redispatch: bool) -> String {
    let mut cfg = format!(
        "global\n  maxconn 4096\n  stats socket {}/haproxy.sock level admin\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 50s\n  timeout server 50s\n\
         \x20 retries 3\n{}\
         frontend fe\n  bind {}:80\n  default_backend be\n\
         backend be\n  balance roundrobin\n  option httpchk GET /\n",
        dir.display(),
        if redispatch {
            "  option redispatch\n"
        } else {
            ""
        },
        addr::VIP
    );
    for b in &topo.backends {
        cfg += &format!(
            "  server {} {}:80 check inter 2000 rise 2 fall 2\n",
            b.name, b.addr
        );
    }
    cfg
}

fn steer_services(system: System, topo: &Topology) -> String {
    let mut cfg = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n{}\
         check = {{ type = \"http\", path = \"/\", interval = \"2s\", fastinterval = \"2s\", downinterval = \"2s\", timeout = \"1s\", rise = 2, fall = 2 }}\n",
        addr::VIP,
        if system == System::SteerNat {
            "mode = \"nat\"\n"
        } else {
            ""
        }
    );
    for (i, b) in topo.backends.iter().enumerate() {
        cfg += &format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\n",
            b.name, b.addr
        );
        if system == System::SteerDsr {
            cfg += &format!("mac = \"{}\"\n", addr::mac_str(addr::backend_host(i)));
        }
    }
    cfg
}

fn lab(system: System) -> Result<Lab, String> {
    // Backends are unmodified (no VIP, no ARP sysctls) except in DSR, which needs them.
    let topo = Topology::new(&TopologySpec {
        backends: BACKENDS,
        vips: if system == System::SteerDsr {
            vec![IpAddr::V4(addr::VIP)]
        } else {
            Vec::new()
        },
        ipv6: false,
    });
    // Frames a balancer forwards from XDP must carry complete checksums, as from a real NIC
    // (PLATFORM.md): the client's side already does; the backends' too, for every system
    // alike.
    for b in &topo.backends {
        b.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
    }
    topo.switch.exec(&["ethtool", "-K", "p-lb", "gro", "on"]);
    let dir = std::env::temp_dir().join(format!(
        "steer-bench-restart-{}-{}",
        std::process::id(),
        system.key()
    ));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let servers = Servers::new(&topo, &dir.join("servers"), &httpd());
    let mut lab = Lab {
        steer: None,
        haproxy: None,
        servers,
        topo,
        _dir: TempDir(dir.clone()),
        config: String::new(),
    };
    match system {
        System::Haproxy | System::HaproxyRedispatch => {
            let lb = &lab.topo.lb;
            lb.ip(&["addr", "add", &format!("{}/32", addr::VIP), "dev", "lo"]);
            let cfg = haproxy_config(&dir, &lab.topo, system == System::HaproxyRedispatch);
            lab.haproxy = Some(Haproxy::start(lb, &dir, &cfg));
            lab.config = cfg;
        }
        System::SteerDsr | System::SteerNat => {
            let mut d = SteerDaemon::new(&lab.topo.lb);
            d.write_config(&steer_services(system, &lab.topo));
            lab.config = std::fs::read_to_string(&d.config).unwrap_or_default();
            // A config this steer refuses is the row's answer, not a crash.
            let out = std::process::Command::new(steer_ctl_bin())
                .args(["config", "check", "--config"])
                .arg(&d.config)
                .output()
                .map_err(|e| format!("cannot run steer-ctl config check: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "config refused: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            d.start();
            lab.steer = Some(d);
        }
    }
    lab.wait_healthy(HEALTHY_TIMEOUT)?;
    Ok(lab)
}

/// One backend's stop and return, on the load's clock.
#[derive(Debug)]
struct Restart {
    backend: String,
    stopped_at: Duration,
    started_at: Duration,
    healthy_at: Duration,
}

/// One round (one D) of one system.
#[derive(Debug, Default)]
struct Round {
    delay: Duration,
    restarts: Vec<Restart>,
    samples: Vec<Sample>,
    /// What went wrong on the balancer's side (e.g. it never became healthy again).
    error: Option<String>,
    /// steer's datapath counters after the round.
    datapath: Option<BTreeMap<String, u64>>,
}

fn round(lab: &Lab, o: &Opts, delay: Duration) -> Round {
    let mut r = Round {
        delay,
        ..Round::default()
    };
    if let Err(e) = lab.wait_healthy(HEALTHY_TIMEOUT) {
        r.error = Some(e);
        return r;
    }
    let to = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
    let load = OpenLoop::start(&lab.topo.client, to, o.rate, o.deadline);
    std::thread::sleep(MARGIN);
    for b in &lab.topo.backends {
        let stopped_at = load.elapsed();
        lab.servers.stop(&b.name);
        // D is the scenario's own pause (the deploy's restart time), not a wait for readiness.
        std::thread::sleep((stopped_at + delay).saturating_sub(load.elapsed()));
        lab.servers.restart(&b.name, "v2");
        let started_at = load.elapsed();
        let healthy = lab.wait_healthy(HEALTHY_TIMEOUT);
        r.restarts.push(Restart {
            backend: b.name.clone(),
            stopped_at,
            started_at,
            healthy_at: load.elapsed(),
        });
        if let Err(e) = healthy {
            r.error = Some(format!("after restarting {}: {e}", b.name));
            break;
        }
    }
    std::thread::sleep(MARGIN);
    r.samples = load.stop();
    if let Some(d) = &lab.steer {
        r.datapath = steer_status(d).ok().map(|s| s.datapath);
    }
    r
}

/// What a round's figures are.
struct Figures {
    requests: usize,
    failed: usize,
    delayed: usize,
    by_kind: BTreeMap<&'static str, usize>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Per restart: (failed, delayed), counting the requests scheduled from its stop (the
    /// first: from the start) until the next stop (the last: until the end).
    per_restart: Vec<(usize, usize)>,
}

fn figures(r: &Round) -> Figures {
    let failed = |s: &Sample| s.outcome != Outcome::Ok;
    let delayed = |s: &Sample| s.outcome == Outcome::Ok && s.latency > DELAYED;
    let mut ok: Vec<Duration> = r
        .samples
        .iter()
        .filter(|s| s.outcome == Outcome::Ok)
        .map(|s| s.latency)
        .collect();
    ok.sort();
    let mut by_kind = BTreeMap::new();
    for s in r.samples.iter().filter(|s| failed(s)) {
        *by_kind.entry(s.outcome.as_str()).or_default() += 1;
    }
    let per_restart = r
        .restarts
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let end = r
                .restarts
                .get(i + 1)
                .map_or(Duration::MAX, |n| n.stopped_at);
            // The first window starts with the load: a request in flight when the first
            // server stops is that stop's.
            let begin = if i == 0 { Duration::ZERO } else { x.stopped_at };
            let w: Vec<&Sample> = r
                .samples
                .iter()
                .filter(|s| s.at >= begin && s.at < end)
                .collect();
            (
                w.iter().filter(|s| failed(s)).count(),
                w.iter().filter(|s| delayed(s)).count(),
            )
        })
        .collect();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Figures {
        requests: r.samples.len(),
        failed: r.samples.iter().filter(|s| failed(s)).count(),
        delayed: r.samples.iter().filter(|s| delayed(s)).count(),
        by_kind,
        p99_ms: quantile(&ok, 0.99).map(ms),
        max_ms: ok.last().copied().map(ms),
        per_restart,
    }
}

/// A system's outcome: its rounds, or why it could not run.
struct Run {
    system: System,
    config: String,
    rounds: Vec<Round>,
    error: Option<String>,
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

fn run_system(system: System, o: &Opts) -> Run {
    let mut run = Run {
        system,
        config: String::new(),
        rounds: Vec::new(),
        error: None,
    };
    eprintln!("{}: setting up", system.key());
    let lab = match std::panic::catch_unwind(|| lab(system)) {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            run.error = Some(e);
            return run;
        }
        Err(p) => {
            run.error = Some(panic_text(&*p));
            return run;
        }
    };
    run.config = lab.config.clone();
    for &d in &o.delays {
        eprintln!(
            "{}: every backend stopped and started {:?} later, {} new connections/s",
            system.key(),
            d,
            o.rate
        );
        match std::panic::catch_unwind(AssertUnwindSafe(|| round(&lab, o, d))) {
            Ok(r) => {
                if let Some(e) = &r.error {
                    eprintln!("{}: {e}", system.key());
                }
                run.rounds.push(r);
            }
            Err(p) => {
                run.error = Some(panic_text(&*p));
                break;
            }
        }
    }
    if system.is_steer() && run.error.is_some() {
        if let Some(d) = &lab.steer {
            eprintln!("{} daemon log:\n{}", system.key(), d.log());
        }
    }
    run
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("steer-bench-restart: needs root");
        std::process::exit(1);
    }
    let o = opts();
    for tool in ["haproxy", "ethtool"] {
        if sh(&["sh", "-c", &format!("command -v {tool} || true")])
            .trim()
            .is_empty()
        {
            eprintln!(
                "steer-bench-restart: {tool} is missing (cargo xtask bench restart installs it)"
            );
            std::process::exit(1);
        }
    }
    let started = Instant::now();
    let runs: Vec<Run> = o.systems.iter().map(|&s| run_system(s, &o)).collect();

    println!();
    println!(
        "deploy with health checks only: {} backends, each stopped and started D later, {} new connections/s, deadline {:?}",
        BACKENDS, o.rate, o.deadline
    );
    println!(
        "{:<19} {:>3} {:>8} {:>8} {:>6} {:>14} {:>17} {:>8}  failures / error",
        "system",
        "D",
        "restarts",
        "requests",
        "failed",
        "failed/restart",
        "delayed>1s/restart",
        "p99 ms",
    );
    let mut json_systems = serde_json::Map::new();
    for run in &runs {
        let mut rounds_json = Vec::new();
        if run.rounds.is_empty() {
            println!(
                "{:<19} {:>3} {:>8} {:>8} {:>6} {:>14} {:>17} {:>8}  error: {}",
                run.system.key(),
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                "-",
                first_line(run.error.as_deref().unwrap_or("no round ran"))
            );
        }
        for r in &run.rounds {
            let f = figures(r);
            let n = r.restarts.len().max(1) as f64;
            let kinds: Vec<String> = f.by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let mut note = match &r.error {
                Some(e) => format!("error: {}", first_line(e)),
                None => kinds.join(", "),
            };
            // Packets steer itself dropped explain failures a client cannot tell apart.
            let drops: Vec<String> = r
                .datapath
                .iter()
                .flatten()
                .filter(|(k, v)| k.starts_with("drop_") && **v > 0)
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            if !drops.is_empty() {
                note += &format!(" (steer: {})", drops.join(", "));
            }
            println!(
                "{:<19} {:>3} {:>8} {:>8} {:>6} {:>14.1} {:>17.1} {:>8}  {}",
                run.system.key(),
                format!("{}s", r.delay.as_secs_f64()),
                r.restarts.len(),
                f.requests,
                f.failed,
                f.failed as f64 / n,
                f.delayed as f64 / n,
                f.p99_ms.map_or("-".into(), |v| format!("{v:.0}")),
                note
            );
            let ms = |d: Duration| (d.as_secs_f64() * 1000.0).round();
            rounds_json.push(json!({
                "delay_s": r.delay.as_secs_f64(),
                "restarts": r.restarts.len(),
                "requests": f.requests,
                "failed": f.failed,
                "failed_by_kind": f.by_kind,
                "failed_per_restart": f.failed as f64 / n,
                "delayed_over_1s": f.delayed,
                "delayed_per_restart": f.delayed as f64 / n,
                "p99_ms": f.p99_ms,
                "max_ms": f.max_ms,
                "error": r.error,
                "per_restart": r.restarts.iter().zip(&f.per_restart).map(|(x, (fl, dl))| json!({
                    "backend": x.backend,
                    "stopped_at_ms": ms(x.stopped_at),
                    "started_at_ms": ms(x.started_at),
                    "healthy_at_ms": ms(x.healthy_at),
                    "failed": fl,
                    "delayed_over_1s": dl,
                })).collect::<Vec<_>>(),
                "steer_datapath": r.datapath,
                // Every failed request, and every late one: when, how, how long.
                "not_ok_or_late": r.samples.iter()
                    .filter(|s| s.outcome != Outcome::Ok || s.latency > DELAYED)
                    .map(|s| json!({
                        "at_ms": ms(s.at),
                        "outcome": s.outcome.as_str(),
                        "latency_ms": ms(s.latency),
                    }))
                    .collect::<Vec<_>>(),
            }));
        }
        json_systems.insert(
            run.system.key().into(),
            json!({
                "config": run.config,
                "error": run.error,
                "rounds": rounds_json,
            }),
        );
    }
    for run in &runs {
        if let (Some(e), false) = (&run.error, run.rounds.is_empty()) {
            println!("{}: stopped early: {}", run.system.key(), first_line(e));
        }
    }
    let doc: Value = json!({
        "scenario": "deploy with health checks only: every backend stopped (SIGTERM) and started again D seconds later, one after the other, waiting until the balancer reports all healthy before the next; no balancer command given",
        "backends": BACKENDS,
        "rate_per_s": o.rate,
        "deadline_s": o.deadline.as_secs_f64(),
        "delayed_threshold_s": DELAYED.as_secs_f64(),
        "delays_s": o.delays.iter().map(|d| d.as_secs_f64()).collect::<Vec<_>>(),
        "seconds": started.elapsed().as_secs_f64().round(),
        "systems": json_systems,
    });
    std::fs::create_dir_all(&o.out_dir).expect("output dir");
    let path = o.out_dir.join("restart.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&doc).expect("json") + "\n",
    )
    .expect("write restart.json");
    println!(
        "\nwrote {} ({:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}
