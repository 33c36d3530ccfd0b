//! `cargo xtask bench e2e`: steer next to the tools it replaces, in one run, on the same
//! namespaces, backends and load generator.
//!
//! Systems: steer (XDP, DSR, the real daemon); steer in NAT mode (`mode = "nat"`, unmodified
//! backends); nftables DNAT on the LB with the backends routing replies through it
//! (`nftables`), and nftables DNAT + masquerade with unmodified backends (`nft-dnat`, what
//! steer's NAT mode replaces); HAProxy in TCP mode (`check inter 2000 fall 2 rise 2`). The
//! backends' veths send complete checksums (TX offload off, as a forwarded frame needs) in every
//! lab alike; only the DSR lab gives them the VIP and ARP sysctls. For each: new
//! connections per second (one request per connection) and requests per second over keep-alive
//! with p50/p99 latency, from wrk in the client namespace. Then the deploy scenario — every
//! backend restarted in turn under a steady load of new connections — for the systems that can
//! do it: steer (drain --wait, restart, ready --wait-healthy), HAProxy with health checks alone,
//! and HAProxy with the iptables trick (a REDIRECT of the check port removed to fail the check,
//! restored after the restart). Reported: failed requests per restarted backend, and the time
//! from the operator's first command until the balancer stopped sending the backend new
//! connections (steer: its last answer before the restart gap, seen by the client; HAProxy: its
//! stats showing the server DOWN). A system that cannot run (e.g. a steer without NAT mode
//! refusing its config) keeps its row, with the error. Writes target/bench/e2e.json.

use std::{
    net::{IpAddr, SocketAddr},
    panic::AssertUnwindSafe,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use steer_tests::{
    cpu::CpuTimes,
    haproxy, http,
    lab::{redirect, Balancer as System, Lab, Setup, BACKENDS},
    netns::{addr, sh, Netns, Topology},
};

const WRK_SECONDS: u32 = 5;

#[derive(Default, Debug, Clone)]
struct Figures {
    cps: Option<f64>,
    rps: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    rollout_failed: Option<f64>,
    takeout_ms: Option<f64>,
    /// Why the system could not run (or stopped early).
    error: Option<String>,
}

fn json_num(v: Option<f64>) -> String {
    v.map_or("null".into(), |x| format!("{x:.2}"))
}

fn wait(timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// CPU jiffies (user + system) used so far by the backends' servers.
fn servers_cpu(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir.join("servers"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "pid") {
            let pid = std::fs::read_to_string(e.path()).unwrap_or_default();
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).unwrap_or_default();
            // Fields after the command name's closing parenthesis: utime is the 12th, stime 13th.
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                total += f.get(11).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                total += f.get(12).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            }
        }
    }
    total
}

/// Where the CPU went during `f`, as a sentence.
fn cpu_split(dir: &Path, f: impl FnOnce()) -> String {
    let (a, sa) = (CpuTimes::now(), servers_cpu(dir));
    f();
    let (b, sb) = (CpuTimes::now(), servers_cpu(dir));
    let d = b.since(&a);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let servers = Duration::from_secs_f64((sb - sa) as f64 / hz);
    format!(
        "CPU ({} cores): idle {:.0}%, user {:.0}%, system {:.0}%, irq+softirq {:.0}%; backend servers {:.0}% of it",
        d.cpus,
        d.pct(d.idle + d.iowait),
        d.pct(d.user + d.nice),
        d.pct(d.system),
        d.pct(d.irq + d.softirq),
        d.pct(servers)
    )
}

/// wrk in the client namespace; returns (requests/s, p50 ms, p99 ms).
fn wrk(client: &Netns, close: bool) -> (f64, f64, f64) {
    let url = format!("http://{}/", addr::VIP);
    let d = format!("{WRK_SECONDS}s");
    let mut args = vec![
        "wrk",
        "-t2",
        "-c32",
        "-d",
        &d,
        "--latency",
        "--timeout",
        "3s",
    ];
    if close {
        args.extend_from_slice(&["-H", "Connection: close"]);
    }
    args.push(&url);
    let out = client.exec(&args);
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk output:\n{out}"));
    let pct = |p: &str| -> f64 {
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(p))
            .map(|v| {
                let v = v.trim();
                let (num, unit) =
                    v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
                let n: f64 = num.parse().unwrap_or(f64::NAN);
                match unit {
                    "us" => n / 1000.0,
                    "ms" => n,
                    "s" => n * 1000.0,
                    "m" => n * 60_000.0,
                    _ => f64::NAN,
                }
            })
            .unwrap_or(f64::NAN)
    };
    let errors = out
        .lines()
        .find(|l| l.contains("Socket errors") || l.contains("Non-2xx"));
    if let Some(e) = errors {
        eprintln!("  wrk: {}", e.trim());
    }
    (rps, pct("50%"), pct("99%"))
}

/// What the steady client saw: (when the connection was opened, backend or error).
type Log = Arc<Mutex<Vec<(Duration, Result<String, String>)>>>;

fn steady_load(
    topo: &Topology,
    stop: Arc<AtomicBool>,
    start: Instant,
) -> (Log, Vec<std::thread::JoinHandle<()>>) {
    let log: Log = Arc::default();
    let to = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
    let threads = (0..2)
        .map(|_| {
            let (log, stop, client) = (log.clone(), stop.clone(), topo.client.clone());
            std::thread::spawn(move || {
                client.run(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let r = http::get(to, Duration::from_secs(5))
                            .map(|r| r.backend)
                            .map_err(|e| e.to_string());
                        log.lock().unwrap().push((start.elapsed(), r));
                    }
                })
            })
        })
        .collect();
    (log, threads)
}

/// Restarts every backend in turn under load; returns (failed requests per backend, mean
/// take-out ms).
fn deploy(system: System, lab: &Lab) -> (f64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let (log, threads) = steady_load(&lab.topo, stop.clone(), start);
    std::thread::sleep(Duration::from_secs(1));
    let mut takeouts = Vec::new();
    let sock = lab.dir.join("haproxy.sock");
    for b in &lab.topo.backends {
        let t0 = start.elapsed();
        let is_down = |sock: &Path| {
            haproxy::status(sock)
                .get(&b.name)
                .is_some_and(|s| s.starts_with("DOWN"))
        };
        let is_up = |sock: &Path| {
            haproxy::status(sock)
                .get(&b.name)
                .is_some_and(|s| s == "UP")
        };
        let takeout = match system {
            System::Steer | System::SteerNat => {
                let d = lab.steer.as_ref().unwrap();
                let r = d.ctl(&["drain", &b.name, "--wait", "--timeout", "30s"]);
                assert_eq!(r.code, 0, "{r:?}");
                lab.servers.restart(&b.name, "v2");
                let r = d.ctl(&["ready", &b.name, "--wait-healthy", "--timeout", "30s"]);
                assert_eq!(r.code, 0, "{r:?}");
                // The last connection opened after the drain that this backend answered, before
                // its restart gap: new connections stopped reaching it then.
                let times: Vec<Duration> = log
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(t, r)| *t >= t0 && r.as_ref().is_ok_and(|n| *n == b.name))
                    .map(|(t, _)| *t)
                    .collect();
                let mut end = t0;
                for t in times {
                    if t.saturating_sub(end) > Duration::from_millis(300) {
                        break;
                    }
                    end = end.max(t);
                }
                (end - t0).as_secs_f64() * 1000.0
            }
            System::Haproxy => {
                // Health checks alone: the server goes away; HAProxy sends it new connections
                // until its checks fail `fall` times.
                let pid = std::fs::read_to_string(lab.dir.join(format!("servers/{}.pid", b.name)))
                    .unwrap_or_default();
                let _ = Command::new("kill").arg(pid.trim()).status();
                let down = wait(Duration::from_secs(30), || is_down(&sock));
                lab.servers.restart(&b.name, "v2");
                wait(Duration::from_secs(30), || is_up(&sock));
                down.as_secs_f64() * 1000.0
            }
            System::HaproxyIptables => {
                redirect(&b.ns, false);
                let down = wait(Duration::from_secs(30), || is_down(&sock));
                lab.servers.restart(&b.name, "v2");
                redirect(&b.ns, true);
                wait(Duration::from_secs(30), || is_up(&sock));
                down.as_secs_f64() * 1000.0
            }
            _ => {
                unreachable!("no health checks, no deploy")
            }
        };
        takeouts.push(takeout);
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let failed = log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, r)| r.is_err())
        .count() as f64;
    (
        failed / BACKENDS as f64,
        takeouts.iter().sum::<f64>() / takeouts.len() as f64,
    )
}

/// Every system, in the order of the table: each steer mode beside the tool it replaces.
const ALL: [System; 6] = [
    System::Steer,
    System::SteerNat,
    System::Nftables,
    System::NftDnat,
    System::Haproxy,
    System::HaproxyIptables,
];

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

fn first_line(s: &str) -> &str {
    s.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("steer-bench-e2e: needs root");
        std::process::exit(1);
    }
    for tool in ["wrk", "haproxy", "nft", "iptables"] {
        if sh(&["sh", "-c", &format!("command -v {tool} || true")])
            .trim()
            .is_empty()
        {
            eprintln!("steer-bench-e2e: {tool} is missing (cargo xtask bench e2e installs it)");
            std::process::exit(1);
        }
    }
    let mut out_dir = PathBuf::from("target/bench");
    let mut systems = ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--systems" {
            let v = args.next().unwrap_or_default();
            systems = v
                .split(',')
                .map(|k| {
                    ALL.into_iter()
                        .find(|s| s.key() == k.trim())
                        .unwrap_or_else(|| {
                            eprintln!(
                                "steer-bench-e2e: unknown system {k:?} (known: {})",
                                ALL.map(System::key).join(", ")
                            );
                            std::process::exit(2)
                        })
                })
                .collect();
        } else {
            out_dir = PathBuf::from(a);
        }
    }
    let mut results: Vec<(&str, Figures)> = Vec::new();
    let mut cpu_notes = Vec::new();
    for system in systems {
        eprintln!("{}: setting up", system.key());
        let mut f = Figures::default();
        let lab = match std::panic::catch_unwind(|| Lab::new(system, Setup::E2e)) {
            Ok(Ok(lab)) => lab,
            Ok(Err(e)) => {
                f.error = Some(e);
                results.push((system.key(), f));
                continue;
            }
            Err(p) => {
                f.error = Some(panic_text(&*p));
                results.push((system.key(), f));
                continue;
            }
        };
        let measured = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if system != System::HaproxyIptables {
                eprintln!("{}: wrk, one request per connection", system.key());
                let mut cps = 0.0;
                let split = cpu_split(&lab.dir, || cps = wrk(&lab.topo.client, true).0);
                f.cps = Some(cps);
                eprintln!("{}: {split}", system.key());
                cpu_notes.push(format!("{}: {split}", system.key()));
                eprintln!("{}: wrk, keep-alive", system.key());
                let (rps, p50, p99) = wrk(&lab.topo.client, false);
                (f.rps, f.p50_ms, f.p99_ms) = (Some(rps), Some(p50), Some(p99));
            }
            if !system.is_nftables() {
                eprintln!(
                    "{}: deploy scenario (every backend restarted under load)",
                    system.key()
                );
                let (failed, takeout) = deploy(system, &lab);
                (f.rollout_failed, f.takeout_ms) = (Some(failed), Some(takeout));
            }
        }));
        if let Err(p) = measured {
            f.error = Some(panic_text(&*p));
            if system.is_steer() {
                if let Some(d) = &lab.steer {
                    eprintln!("{} daemon log:\n{}", system.key(), d.log());
                }
            }
        }
        results.push((system.key(), f));
        drop(lab);
    }

    println!();
    println!(
        "{:<18} {:>10} {:>10} {:>8} {:>8} {:>16} {:>11}",
        "system", "conn/s", "req/s", "p50 ms", "p99 ms", "failed/backend", "takeout ms"
    );
    let cell = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    for (k, f) in &results {
        println!(
            "{:<18} {:>10} {:>10} {:>8} {:>8} {:>16} {:>11}{}",
            k,
            cell(f.cps, 0),
            cell(f.rps, 0),
            cell(f.p50_ms, 2),
            cell(f.p99_ms, 2),
            cell(f.rollout_failed, 1),
            cell(f.takeout_ms, 0),
            f.error
                .as_deref()
                .map_or(String::new(), |e| format!("  error: {}", first_line(e)))
        );
    }
    println!();
    println!("during the new-connections run:");
    for n in &cpu_notes {
        println!("  {n}");
    }
    let body: Vec<String> = results
        .iter()
        .map(|(k, f)| {
            format!(
                "\"{k}\": {{\"cps\": {}, \"rps\": {}, \"p50_ms\": {}, \"p99_ms\": {}, \"rollout_failed\": {}, \"takeout_ms\": {}, \"error\": {}}}",
                json_num(f.cps),
                json_num(f.rps),
                json_num(f.p50_ms),
                json_num(f.p99_ms),
                json_num(f.rollout_failed),
                json_num(f.takeout_ms),
                serde_json::Value::from(f.error.clone())
            )
        })
        .collect();
    std::fs::create_dir_all(&out_dir).unwrap();
    let path = out_dir.join("e2e.json");
    std::fs::write(&path, format!("{{\"systems\": {{{}}}}}\n", body.join(", "))).unwrap();
    println!("\nwrote {}", path.display());
}
