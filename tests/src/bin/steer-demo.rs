//! `cargo xtask demo`: steer doing its job, in network namespaces, with the real daemon and the
//! real `steer-ctl` verbs, under a steady load of new HTTP connections.
//!
//! Phases: traffic spread over three backends (blue, v1); `steer-ctl rollout` restarting every
//! one of them as v2; a blue/green switch to three green backends (v3) started in parallel,
//! with blue draining; one green server killed without warning, taken out by its health check;
//! the service put in maintenance and back. Then a table: requests, failures and per-backend
//! share per phase, drain and return times, versions before and after. Everything it made is
//! removed at the end, also after Ctrl-C.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use steer_tests::{
    daemon::SteerDaemon,
    http,
    netns::{addr, Topology, TopologySpec},
    servers::Servers,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const BLUE: [usize; 3] = [0, 1, 2];
const GREEN: [usize; 3] = [3, 4, 5];
const MAINT: usize = 6;

/// Per phase: who answered (backend → count), versions seen, failures.
#[derive(Default, Clone)]
struct Phase {
    name: String,
    served: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
    failed: u64,
    first_error: Option<String>,
    seconds: f64,
}

/// The steady load: client threads making one request per connection, reporting into the
/// current phase.
struct Load {
    phase: Arc<Mutex<Phase>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(topo: &Topology, threads: usize) -> Load {
        let phase = Arc::new(Mutex::new(Phase::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let to = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
        let threads = (0..threads)
            .map(|_| {
                let (phase, stop, client) = (phase.clone(), stop.clone(), topo.client.clone());
                std::thread::spawn(move || {
                    client.run(move || {
                        while !stop.load(Ordering::Relaxed) {
                            let r = http::get(to, Duration::from_secs(3));
                            let mut p = phase.lock().unwrap();
                            match r {
                                Ok(r) => {
                                    *p.served.entry(r.backend).or_default() += 1;
                                    *p.versions.entry(r.version).or_default() += 1;
                                }
                                Err(e) => {
                                    p.failed += 1;
                                    p.first_error.get_or_insert(e.to_string());
                                }
                            }
                        }
                    })
                })
            })
            .collect();
        Load {
            phase,
            stop,
            threads,
        }
    }

    /// Ends the current phase and starts `next`.
    fn next(&self, next: &str, started: &mut Instant) -> Phase {
        let mut p = self.phase.lock().unwrap();
        let mut done = std::mem::take(&mut *p);
        p.name = next.to_string();
        done.seconds = started.elapsed().as_secs_f64();
        *started = Instant::now();
        done
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn ctl(d: &SteerDaemon, args: &[&str]) -> Result<serde_json::Value, String> {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let r = d.ctl(&a);
    if r.code != 0 {
        return Err(format!(
            "steer-ctl {args:?} failed ({}): {}{}\ndaemon log:\n{}",
            r.code,
            r.stdout,
            r.stderr,
            d.log()
        ));
    }
    Ok(r.json())
}

fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > timeout {
            return Err(format!("gave up waiting for {what}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(start.elapsed())
}

fn say(msg: &str) {
    println!("steer demo: {msg}");
}

fn main() {
    // SAFETY: geteuid has no preconditions; the handler only stores to an atomic.
    unsafe {
        if libc::geteuid() != 0 {
            eprintln!("steer-demo: needs root (BPF, XDP, network namespaces)");
            std::process::exit(1);
        }
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    // Every guard drops before this returns: a failure cleans up as a success does.
    let code = match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("steer demo: {e}");
            1
        }
    };
    say("namespaces, servers, daemon and XDP program removed");
    std::process::exit(code);
}

fn run() -> Result<i32, String> {
    let httpd: PathBuf = std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd");
    say("building namespaces: a client, the LB, six backends (blue, green) and a maintenance server");
    let topo = Topology::new(&TopologySpec {
        backends: 7,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    let mut d = SteerDaemon::new(&topo.lb);
    let servers = Servers::new(&topo, &d.dir.join("servers"), &httpd);
    let mut cfg = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", path = \"/\", interval = \"300ms\", fastinterval = \"100ms\", downinterval = \"300ms\", timeout = \"300ms\", rise = 2, fall = 2 }}\n\n",
        addr::VIP
    );
    for (i, b) in topo.backends.iter().enumerate() {
        let extra = if BLUE.contains(&i) {
            "group = \"blue\"".to_string()
        } else if GREEN.contains(&i) {
            "group = \"green\"".to_string()
        } else {
            "role = \"maintenance\"".to_string()
        };
        cfg += &format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\nmac = \"{}\"\n{extra}\n\n",
            if i == MAINT {
                "maint".to_string()
            } else {
                b.name.clone()
            },
            b.addr,
            addr::mac_str(addr::backend_host(i))
        );
    }
    d.write_config(&cfg);
    d.start();
    say(&format!(
        "steer-ctl daemon running; XDP on the LB's eth0; service web = {}:80, blue b0 b1 b2 (v1)",
        addr::VIP
    ));
    for i in GREEN {
        servers.restart(&topo.backends[i].name, "v3");
    }
    // The maintenance server answers as "maint".
    servers.stop("b6");
    let maint_ns = &topo.backends[MAINT].ns.name;
    std::fs::write(d.dir.join("servers/maint.ns"), maint_ns).map_err(|e| e.to_string())?;
    servers.restart("maint", "v1");
    for b in ["b0", "b1", "b2", "b3", "b4", "b5", "maint"] {
        wait_until(&format!("{b} healthy"), Duration::from_secs(10), || {
            d.backend(b)["health"] == "up"
        })?;
    }
    // Once checked: a switch to a group with nothing eligible would be refused.
    ctl(&d, &["switch", "web", "blue"])?;

    let load = Load::start(&topo, 2);
    let mut t = Instant::now();
    let mut phases = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let pause = |secs: u64| {
        let end = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < end && !INTERRUPTED.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    load.next("spread", &mut t);
    say("phase 1: traffic spread over blue");
    pause(2);

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("rollout", &mut t));
        say("phase 2: steer-ctl rollout web (drain --wait, restart as v2, ready --wait-healthy)");
        let exec = format!("sh {} {{backend}} v2", servers.script.display());
        let r = d.ctl(&["--json", "rollout", "web", "--exec", &exec]);
        let summary = r.json();
        for s in summary["backends"].as_array().into_iter().flatten() {
            notes.push(format!(
                "rollout {}: drained in {} ms, restarted in {} ms, healthy again in {} ms",
                s["backend"].as_str().unwrap_or("?"),
                s["drain_ms"],
                s["exec_ms"],
                s["healthy_ms"]
            ));
        }
        if r.code != 0 {
            notes.push(format!("rollout exited {}: {}", r.code, r.stdout.trim()));
        }
        pause(1);
    }

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("blue/green", &mut t));
        say("phase 3: green (v3) already running; steer-ctl switch web green; steer-ctl drain blue --wait");
        let s = Instant::now();
        ctl(&d, &["switch", "web", "green"])?;
        let switched = s.elapsed();
        let v = ctl(&d, &["drain", "blue", "--wait", "--timeout", "30s"])?;
        notes.push(format!(
            "switch to green in {:.1} ms; blue drained {} ms after",
            switched.as_secs_f64() * 1000.0,
            v["waited_ms"]
        ));
        pause(1);
    }

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("failure", &mut t));
        say("phase 4: b4's server killed without warning; its health check takes it out");
        let pid = std::fs::read_to_string(d.dir.join("servers/b4.pid")).unwrap_or_default();
        let _ = std::process::Command::new("kill")
            .args(["-9", pid.trim()])
            .status();
        let down = wait_until("b4 marked down", Duration::from_secs(10), || {
            d.backend("b4")["health"] == "down"
        })?;
        notes.push(format!(
            "b4 killed: marked down and out of the table {:.0} ms later (fall 2 × fastinterval 100 ms)",
            down.as_secs_f64() * 1000.0
        ));
        pause(1);
    }

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("maintenance", &mut t));
        say("phase 5: steer-ctl maintenance web on, then off");
        ctl(&d, &["maintenance", "web", "on"])?;
        pause(1);
        ctl(&d, &["maintenance", "web", "off"])?;
        pause(1);
    }
    phases.push(load.next("", &mut t));
    load.stop();

    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    let names = ["b0", "b1", "b2", "b3", "b4", "b5", "maint"];
    println!();
    print!("{:<12} {:>8} {:>7}", "phase", "requests", "failed");
    for n in names {
        print!(" {n:>6}");
    }
    println!("  versions");
    for p in phases.iter().filter(|p| !p.name.is_empty()) {
        let total: u64 = p.served.values().sum::<u64>() + p.failed;
        print!("{:<12} {:>8} {:>7}", p.name, total, p.failed);
        for n in names {
            let k = p.served.get(n).copied().unwrap_or(0);
            let share = 100.0 * k as f64 / total.max(1) as f64;
            if k == 0 {
                print!(" {:>6}", "-");
            } else {
                print!(" {share:>5.0}%");
            }
        }
        let versions: Vec<String> = p.versions.iter().map(|(v, k)| format!("{v}:{k}")).collect();
        println!("  {}", versions.join(" "));
    }
    println!();
    for n in &notes {
        println!("  {n}");
    }
    let versions = |name: &str| {
        phases
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.versions.keys().cloned().collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "-".into())
    };
    println!(
        "  versions served: before the rollout {}; during it {}; after the switch to green {}",
        versions("spread"),
        versions("rollout"),
        versions("blue/green")
    );
    for p in &phases {
        if let Some(e) = &p.first_error {
            println!("  first failure in {}: {e}", p.name);
        }
    }
    let rollout_failed = phases
        .iter()
        .find(|p| p.name == "rollout")
        .map_or(0, |p| p.failed);
    println!();
    println!(
        "rollout phase: {rollout_failed} failed requests{}",
        if interrupted { " (interrupted)" } else { "" }
    );
    drop(servers);
    drop(d);
    drop(topo);
    Ok(if rollout_failed > 0 { 1 } else { 0 })
}
