//! `cargo xtask demo`: steer in network namespaces with real HTTP traffic.
//!
//! Builds a client, an LB and three backends (each running `steer-httpd`) on a bridge, loads
//! the XDP datapath natively on the LB, sends HTTP requests to the VIP over new connections
//! from several client threads, and prints who answered, what XDP counted, and how many failed.
//! Everything it made is removed at the end, also after Ctrl-C.

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

use aya::programs::XdpMode;
use steer_ctl::{BackendSpec, Balancer, Datapath, Options, ServiceSpec};
use steer_tests::{
    http,
    netns::{addr, Topology, TopologySpec},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

struct Args {
    requests: usize,
    threads: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        requests: 1000,
        threads: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut num = |name: &str| -> usize {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("steer-demo: {name} needs a number");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--requests" => a.requests = num("--requests"),
            "--threads" => a.threads = num("--threads").max(1),
            "-h" | "--help" => {
                println!("usage: cargo xtask demo [--requests N] [--threads N]");
                std::process::exit(0)
            }
            other => {
                eprintln!("steer-demo: unknown argument {other:?} (try --help)");
                std::process::exit(2)
            }
        }
    }
    a
}

fn main() {
    let args = parse_args();
    // SAFETY: geteuid has no preconditions; the handler only stores to an atomic.
    unsafe {
        if libc::geteuid() != 0 {
            eprintln!("steer-demo: needs root (BPF, XDP, network namespaces)");
            std::process::exit(1);
        }
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let httpd: PathBuf = std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd");

    println!("steer demo: building namespaces (client, LB, 3 backends on a bridge)");
    let mut topo = Topology::new(&TopologySpec {
        backends: 3,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    for i in 0..topo.backends.len() {
        topo.start_http(&httpd, i);
    }
    let backends: Vec<(String, IpAddr, [u8; 6])> = topo
        .backends
        .iter()
        .map(|b| (b.name.clone(), IpAddr::V4(b.addr), b.mac))
        .collect();
    let mut bal = topo.lb.run(|| {
        let mut dp = Datapath::load(&Options {
            max_services: 4,
            ..Options::default()
        })
        .expect("load the XDP datapath");
        dp.attach("eth0", XdpMode::Driver)
            .expect("attach XDP to the LB's eth0");
        Balancer::new(dp)
    });
    let vip = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
    bal.add_service(ServiceSpec::tcp("web", vip.ip(), 80))
        .expect("add service");
    for (name, addr, mac) in &backends {
        bal.add_backend("web", BackendSpec::new(name, *addr, *mac))
            .expect("add backend");
    }
    println!(
        "steer demo: XDP attached natively on the LB; service web = {vip} → {}",
        backends
            .iter()
            .map(|b| format!("{} ({})", b.0, b.1))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "steer demo: sending {} HTTP requests, one per connection, from {} client threads",
        args.requests, args.threads
    );

    let served = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let per_thread = args.requests.div_ceil(args.threads);
    let mut joins = Vec::new();
    for t in 0..args.threads {
        let n = per_thread.min(args.requests.saturating_sub(t * per_thread));
        let (served, failures, client) = (served.clone(), failures.clone(), topo.client.clone());
        joins.push(std::thread::spawn(move || {
            client.run(move || {
                for _ in 0..n {
                    if INTERRUPTED.load(Ordering::SeqCst) {
                        return;
                    }
                    match http::get(vip, Duration::from_secs(3)) {
                        Ok(r) => *served.lock().unwrap().entry(r.backend).or_default() += 1,
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        }));
    }
    for j in joins {
        j.join().expect("client thread");
    }
    let elapsed = start.elapsed();
    let served = served.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    let ok: u64 = served.values().sum();
    let sent = ok + failures.len() as u64;

    println!();
    println!(
        "{:<10} {:>9} {:>7} {:>12} {:>12}",
        "backend", "requests", "share", "XDP packets", "XDP SYNs"
    );
    for (name, _, _) in &backends {
        let n = served.get(name).copied().unwrap_or(0);
        let c = bal.backend_counters(name).expect("counters");
        println!(
            "{:<10} {:>9} {:>6.1}% {:>12} {:>12}",
            name,
            n,
            100.0 * n as f64 / ok.max(1) as f64,
            c.packets,
            c.new_flows
        );
    }
    println!();
    println!(
        "sent {sent} requests in {:.2} s ({:.0} new connections/s), failed {}{}",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        failures.len(),
        if INTERRUPTED.load(Ordering::SeqCst) {
            " (interrupted)"
        } else {
            ""
        }
    );
    for f in failures.iter().take(5) {
        println!("  failure: {f}");
    }
    drop(bal);
    drop(topo);
    println!("steer demo: namespaces and XDP program removed");
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
