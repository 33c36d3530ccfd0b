//! `cargo xtask bench control`: does the latency of `status` grow with the connection table?
//!
//! The real daemon runs in a namespace with two backends (HTTP checks) and a 1,048,576-flow
//! table. For each table size the bench fills the pinned `STEER_FLOWS_V1` from userspace with
//! live flows (distinct 5-tuples to the VIP, `last_seen_ns` = now, pinned to a real backend id
//! and generation, split evenly between the backends; the service's idle timeout is 1 h so
//! none expires during the run), waits for a background scan that started after the fill,
//! and checks that the daemon's `active_flows` match both what was inserted and what a direct
//! read of the table counts. Then it times `status` round trips through the library client
//! (no process start-up), spaced out so that they fall both during and between the
//! background scans, and some through the `steer-ctl` binary; and the daemon's CPU use while
//! the round trips ran (the scanner keeps scanning while someone asks). Writes
//! target/bench/control.json.
//!
//! Nothing here asserts a time: the figures are printed for a reader to judge. The machine
//! this runs on is shared, so they are noisy.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, Map, MapData};
use serde_json::json;
use steer_common::{Flow, FlowKey, FAMILY_V4, PROTO_TCP};
use steer_ctl::{
    client,
    datapath::{monotonic_ns, Datapath, Options},
    proto::{FlowScan, Request, Status},
};
use steer_tests::{
    daemon::SteerDaemon,
    netns::{addr, wait_for, Topology, TopologySpec},
};

const BACKENDS: usize = 2;
const MAX_FLOWS: u32 = 1 << 20;
const MAX_SERVICES: u32 = 8;
const SIZES: [u64; 3] = [0, 100_000, 1_000_000];
/// Library round trips per size, one every `SPACING`: together they span several scan cycles
/// (at 1M flows a scan takes about a third of a second, then the scanner rests as long).
const REQUESTS: usize = 200;
const SPACING: Duration = Duration::from_millis(10);
/// Runs of the `steer-ctl` binary per size (one every `SPACING`).
const BINARY_RUNS: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Flows a full table may lose to LRU eviction before the bench calls the fill broken.
const EVICTION_TOLERANCE: f64 = 0.01;

fn httpd() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd")
}

/// The daemon's config: the usual `[daemon]` table with a 1M-flow table, one service.
fn config(d: &SteerDaemon, topo: &Topology) -> String {
    let table = d
        .daemon_table()
        .replace("max_flows = 65536", &format!("max_flows = {MAX_FLOWS}"));
    assert!(
        table.contains(&format!("max_flows = {MAX_FLOWS}")),
        "the harness's [daemon] table changed: {table}"
    );
    let mut s = format!(
        "{table}\n[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nidle_timeout = \"1h\"\n\
         check = {{ type = \"http\", path = \"/\", interval = \"1s\", timeout = \"500ms\", rise = 2, fall = 2 }}\n\n",
        addr::VIP
    );
    for (i, b) in topo.backends.iter().enumerate() {
        s += &format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\nmac = \"{}\"\n",
            b.name,
            b.addr,
            addr::mac_str(addr::backend_host(i))
        );
    }
    s
}

/// The `i`-th flow of the bench: client 100.64.0.0/16 + port, to the VIP on port 80.
fn flow_key(i: u64) -> FlowKey {
    let host = 1 + (i >> 14) as u32; // 16,384 ports per client address
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 0)) + host);
    let mut k = FlowKey {
        src: [0; 16],
        dst: [0; 16],
        sport_be: (10_000 + (i & 0x3fff) as u16).to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
        _pad: [0; 2],
    };
    k.src[..4].copy_from_slice(&src.octets());
    k.dst[..4].copy_from_slice(&addr::VIP.octets());
    k
}

/// A backend of the daemon as the datapath knows it.
struct Be {
    name: String,
    id: u32,
    gen: u16,
}

/// Backend ids and generations from the pinned `STEER_BE_V1`, named by address.
fn backends(dp: &Datapath, topo: &Topology) -> Vec<Be> {
    let entries = dp.backend_entries().expect("read the pinned backends");
    topo.backends
        .iter()
        .map(|b| {
            let (id, e) = entries
                .iter()
                .find(|(_, e)| e.family == FAMILY_V4 && e.addr[..4] == b.addr.octets())
                .unwrap_or_else(|| panic!("{} ({}) is not in STEER_BE_V1", b.name, b.addr));
            Be {
                name: b.name.clone(),
                id: *id,
                gen: e.gen,
            }
        })
        .collect()
}

fn status(socket: &Path) -> Status {
    let r = client::request(socket, &Request::Status {}, TIMEOUT).expect("status");
    match r.status {
        Some(s) => s,
        None => panic!("status without a body: {r:?}"),
    }
}

/// Waits for a scan that started after now to complete, and returns its status.
fn fresh_status(socket: &Path) -> Status {
    // The scan running now (if any) may have started before the fill: wait for the one after.
    let seq = status(socket).flow_scan.seq;
    wait_for(
        "a scan of the table that started after the fill",
        Duration::from_secs(60),
        || {
            let s = status(socket);
            if s.flow_scan.seq >= seq + 2 {
                Ok(s)
            } else {
                std::thread::sleep(Duration::from_millis(20));
                Err(format!("flow_scan {:?}", s.flow_scan))
            }
        },
    )
}

/// The pid of the daemon running on `config` (the guard does not expose its child; nsenter
/// execs the daemon, so its command line names the config).
fn daemon_pid(config: &Path) -> u32 {
    let want = config.to_str().expect("UTF-8 path");
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
                args.iter().any(|a| a.ends_with(b"steer-ctl"))
                    && args.contains(&b"daemon".as_slice())
                    && args.contains(&want.as_bytes())
            })
        })
        .unwrap_or_else(|| panic!("no steer-ctl daemon running on {want}"))
}

/// CPU time (user + system, every thread) the process has used, in seconds.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces): state is field 3, utime 14.
    let rest = &stat[stat.rfind(')').expect("(comm)") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// Whether a scan was running when the daemon built this answer. The scanner, while someone
/// asks, rests `max(took, 50 ms)` after a scan and then starts the next, so a result older than
/// that means the next scan has begun (to within a scheduling delay).
fn scanning(s: &FlowScan) -> bool {
    s.age_ms >= s.took_ms.max(50)
}

/// `n p50 p99` of sorted latencies, or `0 - -`.
fn split(v: &[f64]) -> String {
    if v.is_empty() {
        return format!("{:>5} {:>7} {:>7}", 0, "-", "-");
    }
    format!(
        "{:>5} {:>7.2} {:>7.2}",
        v.len(),
        percentile(v, 0.5),
        percentile(v, 0.99)
    )
}

/// Milliseconds to 3 decimals, for the JSON.
fn ms3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

struct Row {
    flows: u64,
    fill_s: f64,
    scan: FlowScan,
    scan_took_max_ms: u64,
    direct_ms: f64,
    inserted: BTreeMap<String, u64>,
    direct: BTreeMap<String, u64>,
    reported: BTreeMap<String, Option<u64>>,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// Sorted latencies of the answers given while a scan ran, and between scans.
    in_scan: Vec<f64>,
    between: Vec<f64>,
    binary_ms: f64,
    binary_max_ms: f64,
    /// The daemon's CPU use while the library round trips ran, in % of one core.
    daemon_cpu: f64,
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("steer-bench-control: needs root (BPF, network namespaces)");
        std::process::exit(1);
    }
    let out_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));

    let mut topo = Topology::new(&TopologySpec {
        backends: BACKENDS,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    for i in 0..BACKENDS {
        topo.start_http(&httpd(), i);
    }
    let mut d = SteerDaemon::new(&topo.lb);
    std::fs::write(&d.config, config(&d, &topo)).expect("write the config");
    d.start();
    let pid = daemon_pid(&d.config);
    for b in &topo.backends {
        wait_for(&format!("{} to be up", b.name), TIMEOUT, || {
            let s = d.backend(&b.name);
            if s["health"] == "up" {
                Ok(())
            } else {
                Err(format!("{s}"))
            }
        });
    }

    // The daemon's pinned maps, opened twice: the flows map alone to insert into, and the
    // whole datapath (an unattached second program over the same maps) for direct reads.
    let flows_pin = d.pin_dir.join(steer_common::map::FLOWS);
    let data = MapData::from_pin(&flows_pin)
        .unwrap_or_else(|e| panic!("open {}: {e}", flows_pin.display()));
    let map = Map::from_map_data(data).expect("STEER_FLOWS_V1's type");
    assert!(
        matches!(map, Map::LruHashMap(_)),
        "STEER_FLOWS_V1 is not an LRU hash"
    );
    let mut flows: HashMap<MapData, FlowKey, Flow> =
        HashMap::try_from(map).expect("STEER_FLOWS_V1 as FlowKey → Flow");
    let dp = Datapath::load(&Options {
        max_services: MAX_SERVICES,
        max_flows: MAX_FLOWS,
        pin_dir: Some(d.pin_dir.clone()),
    })
    .expect("open the daemon's pinned maps");
    let bes = backends(&dp, &topo);

    let mut rows = Vec::new();
    let mut inserted: BTreeMap<String, u64> = bes.iter().map(|b| (b.name.clone(), 0)).collect();
    let mut have = 0u64;
    for &size in &SIZES {
        eprintln!("{size} flows: filling");
        let start = Instant::now();
        let now = monotonic_ns();
        for i in have..size {
            let b = &bes[i as usize % bes.len()];
            let f = Flow {
                backend: b.id,
                gen: b.gen,
                flags: 0,
                last_seen_ns: now,
                nat_port_be: 0,
                nat_addr: 0,
                _pad: 0,
            };
            flows
                .insert(flow_key(i), f, 0)
                .unwrap_or_else(|e| panic!("insert flow {i}: {e}"));
            *inserted.get_mut(&b.name).unwrap() += 1;
        }
        let fill_s = start.elapsed().as_secs_f64();
        have = size;

        // The daemon's counts, from a scan that saw the whole fill, against a direct read.
        let fresh = fresh_status(&d.socket);
        let t = Instant::now();
        let by_id = dp
            .active_flows(|_| 3600 * 1_000_000_000)
            .expect("read the table directly");
        let direct_ms = t.elapsed().as_secs_f64() * 1000.0;
        let direct: BTreeMap<String, u64> = bes
            .iter()
            .map(|b| (b.name.clone(), by_id.get(&b.id).copied().unwrap_or(0)))
            .collect();
        let reported: BTreeMap<String, Option<u64>> = bes
            .iter()
            .map(|b| {
                let s = fresh
                    .backends
                    .iter()
                    .find(|s| s.name == b.name)
                    .unwrap_or_else(|| panic!("no {} in status", b.name));
                (b.name.clone(), s.active_flows)
            })
            .collect();
        for b in &bes {
            let (ins, dir, rep) = (inserted[&b.name], direct[&b.name], reported[&b.name]);
            eprintln!(
                "  {}: inserted {ins}, in the table {dir}, status says {rep:?}",
                b.name
            );
            assert_eq!(
                rep,
                Some(dir),
                "{}: the daemon's active_flows differ from a direct read of the table \
                 (flow_scan {:?})",
                b.name,
                fresh.flow_scan
            );
            assert!(
                dir <= ins && (ins - dir) as f64 <= ins as f64 * EVICTION_TOLERANCE,
                "{}: inserted {ins} flows, the table holds {dir}: more lost than LRU eviction explains",
                b.name
            );
        }

        eprintln!("{size} flows: {REQUESTS} status round trips");
        let mut lat = Vec::with_capacity(REQUESTS);
        // Split by whether a scan was running when the daemon answered.
        let (mut in_scan, mut between) = (Vec::new(), Vec::new());
        let mut scan = fresh.flow_scan.clone();
        let mut scan_took_max_ms = scan.took_ms;
        let (cpu0, wall0) = (cpu_s(pid), Instant::now());
        for _ in 0..REQUESTS {
            let t = Instant::now();
            let s = status(&d.socket);
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            lat.push(ms);
            if scanning(&s.flow_scan) {
                in_scan.push(ms);
            } else {
                between.push(ms);
            }
            scan_took_max_ms = scan_took_max_ms.max(s.flow_scan.took_ms);
            scan = s.flow_scan;
            std::thread::sleep(SPACING);
        }
        let daemon_cpu = 100.0 * (cpu_s(pid) - cpu0) / wall0.elapsed().as_secs_f64();
        for v in [&mut lat, &mut in_scan, &mut between] {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        }

        let mut bin = Vec::new();
        for _ in 0..BINARY_RUNS {
            let t = Instant::now();
            let r = d.ctl(&["--json", "status"]);
            bin.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(r.code, 0, "steer-ctl --json status: {r:?}");
            r.json();
            std::thread::sleep(SPACING);
        }
        bin.sort_by(|a, b| a.partial_cmp(b).unwrap());

        rows.push(Row {
            flows: size,
            fill_s,
            scan,
            scan_took_max_ms,
            direct_ms,
            inserted: inserted.clone(),
            direct,
            reported,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            max_ms: *lat.last().unwrap(),
            in_scan,
            between,
            binary_ms: bin[bin.len() / 2],
            binary_max_ms: *bin.last().unwrap(),
            daemon_cpu,
        });
    }

    println!();
    println!(
        "steer-ctl status against the connection table: {REQUESTS} round trips through the \
         library client and {BINARY_RUNS} through the binary per size, one every {} ms",
        SPACING.as_millis()
    );
    println!();
    println!(
        "{:>9} {:>7} {:>7} {:>7} {:>11} {:>11} {:>7} {:>12} {:>10} {:>9} {:>17} {:>6}",
        "flows",
        "p50 ms",
        "p99 ms",
        "max ms",
        "bin p50 ms",
        "bin max ms",
        "cpu %",
        "scan took ms",
        "scan flows",
        "direct ms",
        "active/inserted",
        "fill s"
    );
    for r in &rows {
        let active: u64 = r.reported.values().map(|v| v.unwrap_or(0)).sum();
        let ins: u64 = r.inserted.values().sum();
        println!(
            "{:>9} {:>7.2} {:>7.2} {:>7.2} {:>11.1} {:>11.1} {:>7.0} {:>12} {:>10} {:>9.1} {:>17} {:>6.1}",
            r.flows,
            r.p50_ms,
            r.p99_ms,
            r.max_ms,
            r.binary_ms,
            r.binary_max_ms,
            r.daemon_cpu,
            if r.scan_took_max_ms == r.scan.took_ms {
                r.scan.took_ms.to_string()
            } else {
                format!("{}-{}", r.scan.took_ms, r.scan_took_max_ms)
            },
            r.scan.flows,
            r.direct_ms,
            format!("{active}/{ins}"),
            r.fill_s
        );
    }
    println!();
    println!(
        "p50/p99/max: library round trips; bin: `steer-ctl --json status`, process start-up \
         included; cpu %: the daemon's CPU (of one core) while the round trips ran; scan took \
         ms: flow_scan.took_ms in the last answer (and the largest seen); direct ms: the same \
         count read by this process; active/inserted: the daemon's active_flows summed over the \
         backends / flows inserted. A shared 2-core machine: expect noise."
    );

    println!();
    println!("the library round trips, split by whether a background scan was running when the daemon answered:");
    println!();
    println!(
        "{:>9} {:>5} {:>7} {:>7}   {:>5} {:>7} {:>7}",
        "flows", "scan", "p50 ms", "p99 ms", "idle", "p50 ms", "p99 ms"
    );
    for r in &rows {
        println!(
            "{:>9} {}   {}",
            r.flows,
            split(&r.in_scan),
            split(&r.between)
        );
    }
    println!();

    let json_rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            json!({
                "flows": r.flows,
                "requests": REQUESTS,
                "spacing_ms": SPACING.as_millis() as u64,
                "p50_ms": ms3(r.p50_ms),
                "p99_ms": ms3(r.p99_ms),
                "max_ms": ms3(r.max_ms),
                "binary_runs": BINARY_RUNS,
                "binary_median_ms": ms3(r.binary_ms),
                "binary_max_ms": ms3(r.binary_max_ms),
                "during_scan": {
                    "n": r.in_scan.len(),
                    "p50_ms": (!r.in_scan.is_empty()).then(|| ms3(percentile(&r.in_scan, 0.5))),
                    "p99_ms": (!r.in_scan.is_empty()).then(|| ms3(percentile(&r.in_scan, 0.99))),
                },
                "between_scans": {
                    "n": r.between.len(),
                    "p50_ms": (!r.between.is_empty()).then(|| ms3(percentile(&r.between, 0.5))),
                    "p99_ms": (!r.between.is_empty()).then(|| ms3(percentile(&r.between, 0.99))),
                },
                "daemon_cpu_percent": (r.daemon_cpu * 10.0).round() / 10.0,
                "flow_scan": {
                    "seq": r.scan.seq,
                    "age_ms": r.scan.age_ms,
                    "took_ms": r.scan.took_ms,
                    "took_ms_max": r.scan_took_max_ms,
                    "flows": r.scan.flows,
                    "error": r.scan.error,
                },
                "direct_scan_ms": ms3(r.direct_ms),
                "fill_s": ms3(r.fill_s),
                "inserted": r.inserted,
                "in_table": r.direct,
                "active_flows": r.reported,
            })
        })
        .collect();
    std::fs::create_dir_all(&out_dir).expect("create the bench directory");
    let path = out_dir.join("control.json");
    let body = json!({ "max_flows": MAX_FLOWS, "backends": BACKENDS, "sizes": json_rows });
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&body).expect("JSON") + "\n",
    )
    .expect("write control.json");
    println!("wrote {}", path.display());

    drop(flows);
    drop(dp);
    drop(d);
    drop(topo);
}
