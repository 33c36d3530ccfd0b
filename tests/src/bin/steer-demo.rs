//! `cargo xtask demo`: steer doing its job, in network namespaces, with the real daemon and the
//! real `steer-ctl` verbs, under a steady load of new HTTP connections.
//!
//! Two services. `web` (DSR) goes through the phases: traffic spread over three backends
//! (blue, v1); `steer-ctl rollout` restarting every one of them as v2; a blue/green switch to
//! three green backends (v3) started in parallel, with blue draining; one green server killed
//! without warning, taken out by its health check; the service put in maintenance and back.
//! `api` (NAT) has three unmodified backends (no VIP, no ARP sysctls; two on the LB's subnet,
//! one in another behind a router) under an open-loop load all along; in the failure phase one
//! of its servers is killed too, and passive health and refused-connection recovery take it
//! out with no failed request. Then a table per service: requests, failures and per-backend
//! share per phase; drain and return times, versions before and after, the refusals steer hid
//! and how fast each killed server left. Everything it made is removed at the end, also after
//! Ctrl-C.

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
    etcd::EtcdServer,
    http,
    netns::{addr, sh, Netns, Topology, TopologySpec, NS_PREFIX},
    openloop::{OpenLoop, Outcome, Sample},
    servers::Servers,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

const BLUE: [usize; 3] = [0, 1, 2];
const GREEN: [usize; 3] = [3, 4, 5];
const MAINT: usize = 6;

/// The NAT service's backends: n0 and n1 on the LB's subnet, n2 behind the router.
const NAT_BACKENDS: [&str; 3] = ["n0", "n1", "n2"];
const NAT_ADDRS: [&str; 3] = ["10.99.0.20", "10.99.0.21", "10.98.0.10"];
const ROUTER: &str = "10.99.0.254";
const ROUTED_NET: &str = "10.98.0.0/24";
/// New connections per second to the NAT service, open loop (started on schedule whatever
/// happens to earlier ones, so a stall shows as latency, not as fewer requests).
const NAT_RATE: f64 = 200.0;

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

/// The NAT service's backends, unmodified hosts: no VIP on a loopback, no ARP sysctls, their
/// default route through a router namespace (never through the LB). n0 and n1 sit on the LB's
/// subnet (on its bridge); n2 is in 10.98.0.0/24 behind the router, which the LB routes to.
/// Their veths send complete checksums (TX offload off), as frames XDP forwards must carry
/// (PLATFORM.md). Every namespace is deleted on drop.
struct NatNodes {
    namespaces: Vec<Netns>,
    /// By backend, as in `NAT_BACKENDS`.
    backends: Vec<Netns>,
}

impl NatNodes {
    fn new(topo: &Topology) -> NatNodes {
        let mut t = NatNodes {
            namespaces: Vec::new(),
            backends: Vec::new(),
        };
        // From here on, a panic drops `t`, which deletes whatever was made.
        let id = format!("{NS_PREFIX}{}-nat", std::process::id());
        let router = t.ns(format!("{id}-r"));
        router.sysctl("net.ipv4.ip_forward", "1");
        on_bridge(topo, &router, "p-r", &format!("{ROUTER}/24"));
        for (i, name) in NAT_BACKENDS.iter().enumerate() {
            let ns = t.ns(format!("{id}-{name}"));
            let cidr = format!("{}/24", NAT_ADDRS[i]);
            if i < 2 {
                on_bridge(topo, &ns, &format!("p-{name}"), &cidr);
                ns.ip(&["route", "add", "default", "via", ROUTER]);
            } else {
                let peer = ["peer", "name", "eth0", "netns", &ns.name];
                router.ip(&[&["link", "add", "eth1", "type", "veth"][..], &peer].concat());
                router.ip(&["addr", "add", "10.98.0.1/24", "dev", "eth1"]);
                router.ip(&["link", "set", "eth1", "up"]);
                router.exec(&["ethtool", "-K", "eth1", "tx", "off"]);
                ns.ip(&["addr", "add", &cidr, "dev", "eth0"]);
                ns.ip(&["link", "set", "eth0", "up"]);
                ns.ip(&["route", "add", "default", "via", "10.98.0.1"]);
            }
            ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
            t.backends.push(ns);
        }
        router.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        topo.lb.ip(&["route", "add", ROUTED_NET, "via", ROUTER]);
        // NAT replies go back to the client through the LB, which must know the client's MAC,
        // as an LB knows its upstream router's. The topology's client never ARPs (it knows
        // the LB's MAC), so tell the LB, as the topology tells the backends: otherwise the
        // very first reply finds no neighbour (`drop_no_neigh`), the daemon resolves it, and
        // that connection waits for a retransmission (1 s).
        let client = addr::CLIENT.to_string();
        topo.lb.neighbour("eth0", &client, addr::mac(2));
        t
    }

    /// A namespace with only `lo` up and IPv6 off (nothing sent that the demo did not ask for).
    fn ns(&mut self, name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        self.namespaces.push(ns.clone());
        ns.ip(&["link", "set", "lo", "up"]);
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        ns
    }
}

/// Gives `ns` an `eth0` on the topology's bridge (its peer `peer` in the switch namespace),
/// with address `cidr`.
fn on_bridge(topo: &Topology, ns: &Netns, peer: &str, cidr: &str) {
    let sw = &topo.switch;
    sw.ip(&[
        "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
    ]);
    sw.ip(&["link", "set", peer, "master", "br0", "up"]);
    ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
}

impl Drop for NatNodes {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// The NAT service's requests of one phase.
#[derive(Default)]
struct NatPhase {
    requests: u64,
    /// Requests that did not get a complete answer, in schedule order.
    failed: Vec<Sample>,
    /// Latencies of the requests answered more than 1 s after they were due (a SYN
    /// retransmission's wait).
    slow: Vec<Duration>,
    served: BTreeMap<String, u64>,
}

/// Sorts the open loop's samples into the phases that began at `starts` (name, time since the
/// load began).
fn nat_phases(samples: &[Sample], starts: &[(String, Duration)]) -> BTreeMap<String, NatPhase> {
    let mut out: BTreeMap<String, NatPhase> = BTreeMap::new();
    for s in samples {
        let Some((name, _)) = starts.iter().rev().find(|(_, t)| *t <= s.at) else {
            continue;
        };
        let p = out.entry(name.clone()).or_default();
        p.requests += 1;
        match (&s.outcome, &s.backend) {
            (Outcome::Ok, Some(b)) => {
                *p.served.entry(b.clone()).or_default() += 1;
                if s.latency > Duration::from_secs(1) {
                    p.slow.push(s.latency);
                }
            }
            _ => p.failed.push(s.clone()),
        }
    }
    out
}

/// The datapath's counters (`status --json`, "datapath"): outcomes and events, by name.
fn datapath_counter(status: &serde_json::Value, name: &str) -> u64 {
    status["datapath"][name].as_u64().unwrap_or(0)
}

fn backend_of<'a>(status: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    status["backends"]
        .as_array()
        .and_then(|v| v.iter().find(|b| b["name"] == name))
        .unwrap_or(&serde_json::Value::Null)
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

/// Per phase: requests, failures, each backend's share, the versions that answered.
fn print_phases(phases: &[Phase], names: &[&str]) {
    print!("{:<12} {:>8} {:>7}", "phase", "requests", "failed");
    for n in names {
        print!(" {n:>6}");
    }
    println!("  versions");
    for p in phases.iter().filter(|p| !p.name.is_empty()) {
        let total: u64 = p.served.values().sum::<u64>() + p.failed;
        print!("{:<12} {:>8} {:>7}", p.name, total, p.failed);
        for n in names {
            let k = p.served.get(*n).copied().unwrap_or(0);
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
}

/// One line per backend of a `rollout --json`'s report, and its exit if it failed.
fn rollout_notes(r: &steer_tests::daemon::Ran, from: &str, drained: &str, notes: &mut Vec<String>) {
    for s in r.json()["backends"].as_array().into_iter().flatten() {
        notes.push(format!(
            "rollout {}{from}: {drained} in {} ms, restarted in {} ms, healthy again in {} ms",
            s["backend"].as_str().unwrap_or("?"),
            s["drain_ms"],
            s["exec_ms"],
            s["healthy_ms"]
        ));
    }
    if r.code != 0 {
        notes.push(format!("rollout exited {}: {}", r.code, r.stdout.trim()));
    }
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
    let act = std::env::args().nth(1);
    let result = match act.as_deref() {
        None => run(),
        Some("cluster") => run_cluster(),
        Some(other) => Err(format!(
            "no act {other:?}: `cargo xtask demo` (one LB host) or `cargo xtask demo cluster`"
        )),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("steer demo: {e}");
            1
        }
    };
    say("namespaces, servers, daemon and XDP program removed");
    std::process::exit(code);
}

/// `cargo xtask demo cluster`: two LB hosts behind an ECMP router, sharing the operators'
/// intent in a real etcd; a rolling deploy driven from one host, that host lost mid-run, a
/// drain from the other that reports it gone; a table of who answered and what failed.
fn run_cluster() -> Result<i32, String> {
    let httpd: PathBuf = std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd");
    say("cluster act: a client behind a router that spreads the VIP over two LB hosts (ECMP, 5-tuple hash), three backends, and etcd holding the operators' intent");
    let mut topo = Topology::new(&TopologySpec {
        backends: 3,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    topo.add_ecmp(1);
    let etcd_ns = topo.add_host("etcd", 7);
    let etcd = EtcdServer::start(&etcd_ns, std::net::Ipv4Addr::new(10, 99, 0, 7));
    let lbs: Vec<Netns> = topo.lbs().into_iter().cloned().collect();
    let mut daemons: Vec<SteerDaemon> = lbs.iter().map(SteerDaemon::new).collect();
    let servers = Servers::new(&topo, &daemons[0].dir.join("servers"), &httpd);
    let mut services = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", path = \"/\", interval = \"300ms\", fastinterval = \"100ms\", downinterval = \"300ms\", timeout = \"300ms\", rise = 2, fall = 2 }}\n\n",
        addr::VIP
    );
    for (i, b) in topo.backends.iter().enumerate() {
        services += &format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\nmac = \"{}\"\n\n",
            b.name,
            b.addr,
            addr::mac_str(addr::backend_host(i))
        );
    }
    for (k, d) in daemons.iter_mut().enumerate() {
        d.write_config(&format!(
            "[cluster]\netcd = [\"{}\"]\nprefix = \"/steer-demo/\"\nhost = \"lb{k}\"\n\n{services}",
            etcd.url()
        ));
        d.start();
    }
    for d in &daemons {
        for b in ["b0", "b1", "b2"] {
            wait_until(&format!("{b} healthy"), Duration::from_secs(10), || {
                d.backend(b)["health"] == "up"
            })?;
        }
    }
    wait_until(
        "each host to see the other",
        Duration::from_secs(10),
        || {
            daemons.iter().all(|d| {
                d.ok_json(&["status"])["cluster"]["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 1)
            })
        },
    )?;
    say(&format!(
        "daemons lb0 and lb1 running, XDP on each; service web = {}:80 (DSR), b0 b1 b2 (v1); etcd at {}",
        addr::VIP,
        etcd.url()
    ));
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
    say("phase 1: traffic spread by the router over lb0 and lb1, by them over b0 b1 b2");
    pause(2);
    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("rollout", &mut t));
        say("phase 2: steer-ctl rollout web on lb0 (each drain waits for the flows on both hosts)");
        let exec = format!("sh {} {{backend}} v2", servers.script.display());
        let r = daemons[0].ctl(&["--json", "rollout", "web", "--exec", &exec]);
        rollout_notes(&r, " (from lb0)", "drained on both hosts", &mut notes);
        pause(1);
    }
    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("lb0 lost", &mut t));
        say("phase 3: lb0's link cut; the router moves its flows to lb1");
        topo.lb.ip(&["link", "set", "eth0", "down"]);
        pause(4);
    }
    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("drain b1", &mut t));
        say("phase 4: steer-ctl drain b1 --wait on lb1 (lb0 is gone), then ready b1");
        let v = ctl(&daemons[1], &["drain", "b1", "--wait", "--timeout", "30s"])?;
        notes.push(format!(
            "drain b1 --wait on lb1: {} ms; hosts waited for {}, gone {}",
            v["waited_ms"], v["hosts"], v["gone"]
        ));
        ctl(&daemons[1], &["ready", "b1"])?;
        pause(1);
    }
    phases.push(load.next("", &mut t));
    load.stop();
    println!();
    println!(
        "web: DSR, {}:80 behind two LB hosts, 2 clients in a closed loop (one request per connection)",
        addr::VIP
    );
    print_phases(&phases, &["b0", "b1", "b2"]);
    println!();
    for n in &notes {
        println!("  {n}");
    }
    for p in &phases {
        if let Some(e) = &p.first_error {
            println!("  first failure in {}: {e}", p.name);
        }
    }
    let failed: u64 = phases.iter().map(|p| p.failed).sum();
    println!(
        "  {failed} failed request(s) in all{}",
        if INTERRUPTED.load(Ordering::SeqCst) {
            " (interrupted)"
        } else {
            ""
        }
    );
    drop(daemons);
    drop(servers);
    drop(etcd);
    Ok(0)
}

fn run() -> Result<i32, String> {
    let httpd: PathBuf = std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd");
    say("building namespaces: a client, the LB, six backends (blue, green) and a maintenance server for web (DSR); a router and three unmodified backends for api (NAT)");
    let topo = Topology::new(&TopologySpec {
        backends: 7,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    let nat = NatNodes::new(&topo);
    let nat_vip = addr::vip(1);
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
    // NAT: `mode = "nat"` and checks (passive health needs them to bring a backend back);
    // every NAT setting at its default (observe, error_limit 3, recover).
    cfg += &format!(
        "[[service]]\nname = \"api\"\nvip = \"{nat_vip}\"\nport = 80\nmode = \"nat\"\n\
         check = {{ type = \"http\", path = \"/\", interval = \"300ms\", fastinterval = \"100ms\", downinterval = \"300ms\", timeout = \"300ms\", rise = 2, fall = 2 }}\n\n"
    );
    for (name, address) in NAT_BACKENDS.iter().zip(NAT_ADDRS) {
        cfg += &format!("[[service.backend]]\nname = \"{name}\"\naddress = \"{address}\"\n\n");
    }
    d.write_config(&cfg);
    d.start();
    // The stats page, served in the LB namespace, reachable from this host's browser.
    let stats = steer_tests::relay::Relay::start(
        &topo.lb,
        SocketAddr::from(([127, 0, 0, 1], d.metrics_port)),
        &[9469, 9470, 9471, 0],
    )
    .map_err(|e| format!("relaying the stats page: {e}"))?;
    say(&format!(
        "stats page: http://{}/stats (open it in a browser while the demo runs; metrics at /metrics)",
        stats.local
    ));
    say(&format!(
        "steer-ctl daemon running; XDP on the LB's eth0; service web = {}:80 (DSR), blue b0 b1 b2 (v1); service api = {nat_vip}:80 (NAT), n0 n1 on the LB's subnet, n2 in {ROUTED_NET} behind a router",
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
    for (name, ns) in NAT_BACKENDS.iter().zip(&nat.backends) {
        std::fs::write(d.dir.join(format!("servers/{name}.ns")), &ns.name)
            .map_err(|e| e.to_string())?;
        servers.restart(name, "v1");
    }
    for b in [
        "b0", "b1", "b2", "b3", "b4", "b5", "maint", "n0", "n1", "n2",
    ] {
        wait_until(&format!("{b} healthy"), Duration::from_secs(10), || {
            d.backend(b)["health"] == "up"
        })?;
    }
    // Once checked: a switch to a group with nothing eligible would be refused.
    ctl(&d, &["switch", "web", "blue"])?;

    let api = OpenLoop::start(
        &topo.client,
        SocketAddr::new(nat_vip, 80),
        NAT_RATE,
        Duration::from_secs(3),
    );
    // When each phase began, on the open loop's clock.
    let mut starts: Vec<(String, Duration)> = Vec::new();
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
    starts.push(("spread".into(), api.elapsed()));
    say(&format!("phase 1: traffic spread over blue; api: {NAT_RATE} new connections/s (open loop) over n0 n1 n2 from here to the end"));
    pause(2);

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("rollout", &mut t));
        starts.push(("rollout".into(), api.elapsed()));
        say("phase 2: steer-ctl rollout web (drain --wait, restart as v2, ready --wait-healthy)");
        let exec = format!("sh {} {{backend}} v2", servers.script.display());
        let r = d.ctl(&["--json", "rollout", "web", "--exec", &exec]);
        rollout_notes(&r, "", "drained", &mut notes);
        pause(1);
    }

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("blue/green", &mut t));
        starts.push(("blue/green".into(), api.elapsed()));
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

    // The failure phase's counters, from its start to the next phase's.
    let mut failure_status: Option<serde_json::Value> = None;
    let mut n1_down: Option<(Duration, String)> = None;
    // When n1's process was gone (its listening socket closed), on the open loop's clock, and
    // how long after the kill.
    let mut n1_gone: Option<(Duration, Duration)> = None;
    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("failure", &mut t));
        starts.push(("failure".into(), api.elapsed()));
        say("phase 4: b4's (web) and n1's (api) servers killed without warning, no steer verb; b4's health check takes it out, n1's refusals take n1 out");
        failure_status = Some(ctl(&d, &["status"])?);
        let kill = |name: &str| {
            let pid = std::fs::read_to_string(d.dir.join(format!("servers/{name}.pid")))
                .unwrap_or_default();
            let _ = std::process::Command::new("kill")
                .args(["-9", pid.trim()])
                .status();
            pid.trim().to_string()
        };
        kill("b4");
        let n1_pid = kill("n1");
        let killed = Instant::now();
        // A killed process takes a moment to die (here, up to tens of ms on a busy machine);
        // until its files are closed its kernel still accepts connections, which it then
        // resets. Gone: no /proc entry, or a zombie (files closed).
        let gone = || {
            std::fs::read_to_string(format!("/proc/{n1_pid}/stat"))
                .map(|st| {
                    st.rsplit_once(") ")
                        .is_some_and(|(_, rest)| rest.starts_with('Z'))
                })
                .unwrap_or(true)
        };
        while !gone() {
            if killed.elapsed() > Duration::from_secs(10) {
                return Err("n1's server still running 10 s after SIGKILL".into());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        n1_gone = Some((api.elapsed(), killed.elapsed()));
        // Both at once, polled as fast as `status` answers.
        let mut b4_down = None;
        while b4_down.is_none() || n1_down.is_none() {
            if killed.elapsed() > Duration::from_secs(10) {
                return Err("gave up waiting for b4 and n1 to be marked down".into());
            }
            let s = ctl(&d, &["status"])?;
            let at = killed.elapsed();
            if b4_down.is_none() && backend_of(&s, "b4")["health"] == "down" {
                b4_down = Some(at);
            }
            let n1 = backend_of(&s, "n1");
            if n1_down.is_none() && n1["health"] == "down" {
                let by = match n1["passive"].as_str() {
                    Some(p) => format!(
                        "passive health, before its health check did: {}",
                        p.trim_start_matches("passive: ")
                    ),
                    None => format!("its health check (last: {})", n1["check"]),
                };
                n1_down = Some((at, by));
            }
        }
        notes.push(format!(
            "b4 killed: marked down and out of the table {:.0} ms later (fall 2 × fastinterval 100 ms)",
            b4_down.unwrap_or_default().as_secs_f64() * 1000.0
        ));
        pause(1);
    }

    if !INTERRUPTED.load(Ordering::SeqCst) {
        phases.push(load.next("maintenance", &mut t));
        starts.push(("maintenance".into(), api.elapsed()));
        say("phase 5: steer-ctl maintenance web on, then off");
        ctl(&d, &["maintenance", "web", "on"])?;
        pause(1);
        ctl(&d, &["maintenance", "web", "off"])?;
        pause(1);
    }
    phases.push(load.next("", &mut t));
    load.stop();
    let failure_end = if failure_status.is_some() {
        Some(ctl(&d, &["status"])?)
    } else {
        None
    };
    let samples = api.stop();
    let api_phases = nat_phases(&samples, &starts);

    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    let names = ["b0", "b1", "b2", "b3", "b4", "b5", "maint"];
    println!();
    println!(
        "web: DSR, {}:80, 2 clients in a closed loop (one request per connection)",
        addr::VIP
    );
    print_phases(&phases, &names);
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

    println!();
    println!(
        "api: NAT, {nat_vip}:80, {NAT_RATE} new connections/s in an open loop (one request each, 3 s deadline); \
         backends unmodified: n0 n1 on the LB's subnet, n2 in {ROUTED_NET} behind a router"
    );
    print!(
        "{:<12} {:>8} {:>7} {:>6}",
        "phase", "requests", "failed", ">1 s"
    );
    for n in NAT_BACKENDS {
        print!(" {n:>6}");
    }
    println!();
    for (name, _) in &starts {
        let Some(p) = api_phases.get(name) else {
            continue;
        };
        print!(
            "{:<12} {:>8} {:>7} {:>6}",
            name,
            p.requests,
            p.failed.len(),
            p.slow.len()
        );
        for n in NAT_BACKENDS {
            let k = p.served.get(n).copied().unwrap_or(0);
            let share = 100.0 * k as f64 / p.requests.max(1) as f64;
            if k == 0 {
                print!(" {:>6}", "-");
            } else {
                print!(" {share:>5.0}%");
            }
        }
        println!();
    }
    println!();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    if let (Some(before), Some(after), Some((down, by))) = (&failure_status, &failure_end, &n1_down)
    {
        let delta = |name: &str| {
            datapath_counter(after, name).saturating_sub(datapath_counter(before, name))
        };
        let n1_refused = backend_of(after, "n1")["counters"]["refused"]
            .as_u64()
            .unwrap_or(0);
        println!(
            "  n1 killed: marked down and out of the table {:.0} ms later, by {by}",
            ms(*down)
        );
        let failed = api_phases
            .get("failure")
            .is_some_and(|p| !p.failed.is_empty());
        if let Some((_, after)) = n1_gone.filter(|_| failed) {
            println!(
                "  n1's process was gone {:.0} ms after the kill signal (until then its kernel still accepted connections)",
                ms(after)
            );
        }
        let slow = api_phases
            .get("failure")
            .map(|p| p.slow.clone())
            .unwrap_or_default();
        let answered = match (slow.iter().min(), slow.iter().max()) {
            (Some(lo), Some(hi)) => format!(
                "{} requests answered in {:.2}–{:.2} s",
                slow.len(),
                lo.as_secs_f64(),
                hi.as_secs_f64()
            ),
            _ => "no request answered late".into(),
        };
        println!(
            "  refusals steer hid from the clients: {} (drop_refused; n1 refused {n1_refused} SYNs in all); \
             their SYN retransmissions, 1 s later, went to n0 and n2: {answered}",
            delta("drop_refused")
        );
    }
    for (name, _) in &starts {
        let Some(p) = api_phases.get(name) else {
            continue;
        };
        for f in p.failed.iter().take(5) {
            let when = match n1_gone {
                Some((k, _)) if f.at <= k => {
                    format!(", started {:.0} ms before n1 was gone", ms(k - f.at))
                }
                Some((k, _)) => format!(", started {:.0} ms after n1 was gone", ms(f.at - k)),
                None => String::new(),
            };
            println!(
                "  api failure in {name}: {} after {:.0} ms{when}",
                f.outcome.as_str(),
                ms(f.latency)
            );
        }
        if p.failed.len() > 5 {
            println!("  … and {} more in {name}", p.failed.len() - 5);
        }
    }

    // A connection n1's kernel had already accepted when n1 died is reset (or closed before
    // the answer) by that kernel, whatever balances it: no L4 balancer can replay it (HAProxy
    // does not either).
    let in_flight = |f: &Sample| {
        matches!(f.outcome, Outcome::Reset | Outcome::Bad)
            && n1_gone.is_some_and(|(k, _)| f.at <= k)
    };
    let web_failure = phases.iter().find(|p| p.name == "failure");
    let api_failure = api_phases.get("failure");
    if let (Some(w), Some(a)) = (web_failure, api_failure) {
        let total: u64 = w.served.values().sum::<u64>() + w.failed;
        println!();
        println!(
            "failure phase, one server of each service killed without warning (no steer verb):"
        );
        println!(
            "  web (DSR): {total} requests, {} failed: the LB never sees a refusal; b4 is out when its check fails",
            w.failed
        );
        let cut = a.failed.iter().filter(|f| in_flight(f)).count();
        println!(
            "  api (NAT): {} requests, {} failed{}: steer hid the refusals; passive health took n1 out after 3 of them",
            a.requests,
            a.failed.len(),
            if cut > 0 {
                format!(" ({cut} open on n1 when it died, reset or cut short)")
            } else {
                String::new()
            }
        );
    }
    let rollout_failed = phases
        .iter()
        .find(|p| p.name == "rollout")
        .map_or(0, |p| p.failed);
    // What NAT mode claims: no client sees a refusal or waits in vain; only a request open on
    // the killed server when it died is lost.
    let api_failed: Vec<(&String, &Sample)> = api_phases
        .iter()
        .flat_map(|(name, p)| p.failed.iter().map(move |f| (name, f)))
        .collect();
    let api_unexplained = api_failed
        .iter()
        .filter(|(name, f)| !(name.as_str() == "failure" && in_flight(f)))
        .count();
    println!();
    println!(
        "rollout phase: {rollout_failed} failed requests; api (NAT): {} failed requests, {api_unexplained} of them not open on n1 when it died{}",
        api_failed.len(),
        if interrupted { " (interrupted)" } else { "" }
    );
    drop(servers);
    drop(d);
    drop(nat);
    drop(topo);
    Ok(if rollout_failed > 0 || api_unexplained > 0 {
        1
    } else {
        0
    })
}
