//! Several LB hosts behind ECMP (issue 12): a router spreads the VIP over two LB hosts by a
//! multipath route hashing on the 5-tuple; each host runs the real daemon with the same config.
//! The hosts build the same Maglev tables, so a flow reaches the same backend whichever host
//! gets its packets; when one host's link is cut, the router moves its flows to the other,
//! which has no entry for them, takes the Maglev choice — the same backend — and the
//! connections go on.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use steer_common::{hash::flow_hash, FlowKey, PROTO_TCP};
use steer_ctl::{
    balancer::addr_bytes,
    maglev::{self, Entry},
};
use steer_tests::{
    daemon::SteerDaemon,
    etcd::EtcdServer,
    http::{self, Conn},
    netns::{addr, wait_for, Topology, TopologySpec},
    servers::Servers,
};

const HTTPD: &str = env!("CARGO_BIN_EXE_steer-httpd");
const T: Duration = Duration::from_secs(10);
/// How long a request may take while the router moves a cut host's flows (its ARP timers:
/// about two seconds) and TCP retransmits what was lost meanwhile.
const FAILOVER: Duration = Duration::from_secs(30);

fn config(topo: &Topology) -> String {
    let mut s = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", path = \"/\", interval = \"500ms\", fastinterval = \"100ms\", downinterval = \"500ms\", timeout = \"500ms\", rise = 2, fall = 2 }}\n\n",
        addr::VIP
    );
    // Two groups (every group takes new flows until a `switch`).
    for (i, b) in topo.backends.iter().enumerate() {
        s += &format!(
            "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\nmac = \"{}\"\ngroup = \"{}\"\n\n",
            b.name,
            b.addr,
            addr::mac_str(addr::backend_host(i)),
            if i < 2 { "blue" } else { "green" }
        );
    }
    s
}

/// The LB hosts' daemons, etcd, then the namespaces (fields drop in this order).
struct Fleet {
    daemons: Vec<SteerDaemon>,
    /// With `scripted`: the backends' servers, restartable by a deploy's script.
    servers: Option<Servers>,
    etcd: Option<EtcdServer>,
    topo: Topology,
}

/// Three backends serving HTTP, `lbs` LB hosts behind the router, each with a daemon of the
/// same config that has seen every backend pass a check.
fn fleet(lbs: usize) -> Fleet {
    fleet_with(lbs, false)
}

/// `fleet_with`, the backends' servers started by a script a rollout can run.
fn fleet_scripted(lbs: usize, shared: bool) -> Fleet {
    fleet_of(lbs, shared, true)
}

/// etcd's host on the bridge.
const ETCD_HOST: u8 = 7;

/// `fleet`, and with `shared` an etcd server (host 7) holding the hosts' intent.
fn fleet_with(lbs: usize, shared: bool) -> Fleet {
    fleet_of(lbs, shared, false)
}

fn fleet_of(lbs: usize, shared: bool, scripted: bool) -> Fleet {
    let mut topo = Topology::new(&TopologySpec {
        backends: 3,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    topo.add_ecmp(lbs - 1);
    let servers = if scripted {
        let dir = std::env::temp_dir().join(format!("steer-cluster-servers-{}", topo.client.name));
        Some(Servers::new(&topo, &dir, Path::new(HTTPD)))
    } else {
        for i in 0..topo.backends.len() {
            topo.start_http(Path::new(HTTPD), i);
        }
        None
    };
    let etcd = shared.then(|| {
        let ns = topo.add_host("etcd", ETCD_HOST);
        EtcdServer::start(&ns, std::net::Ipv4Addr::new(10, 99, 0, ETCD_HOST))
    });
    let services = config(&topo);
    let mut daemons = Vec::new();
    for (k, ns) in topo.lbs().into_iter().enumerate() {
        // The same config on every host, but for the name it goes by in the cluster.
        let mut cfg = String::new();
        if let Some(e) = &etcd {
            cfg += &format!(
                "[cluster]\netcd = [\"{}\"]\nprefix = \"/steer-test/\"\nhost = \"lb{k}\"\n\n",
                e.url()
            );
        }
        cfg += &services;
        let mut d = SteerDaemon::new(ns);
        d.write_config(&cfg);
        d.start();
        daemons.push(d);
    }
    for d in &daemons {
        for b in ["b0", "b1", "b2"] {
            wait_for(
                &format!("{b} checked up from {}", d.dir.display()),
                T,
                || {
                    let v = d.backend(b);
                    if v["check"] == "ok" && v["health"] == "up" {
                        Ok(())
                    } else {
                        Err(v.to_string())
                    }
                },
            );
        }
    }
    Fleet {
        daemons,
        servers,
        etcd,
        topo,
    }
}

fn vip() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(addr::VIP), 80)
}

/// The service's `status` entry on one LB host.
fn service(d: &SteerDaemon) -> serde_json::Value {
    d.ok_json(&["status"])["services"][0].clone()
}

#[test]
fn lb_hosts_with_the_same_config_build_the_same_table() {
    if !steer_tests::privileged("lb_hosts_with_the_same_config_build_the_same_table") {
        return;
    }
    let f = fleet(2);
    let digests: Vec<String> = f
        .daemons
        .iter()
        .map(|d| service(d)["table_digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(digests[0].len(), 16, "{digests:?}");
    assert_eq!(digests[0], digests[1], "two hosts, one config, one table");
    // Taking a backend out on one host only makes the tables differ (what the cluster's
    // shared admin state exists to prevent), and putting it back makes them equal again.
    f.daemons[1].ok_json(&["drain", "b1"]);
    assert_ne!(service(&f.daemons[1])["table_digest"], digests[0].as_str());
    f.daemons[1].ok_json(&["ready", "b1"]);
    assert_eq!(service(&f.daemons[1])["table_digest"], digests[0].as_str());
}

#[test]
fn cutting_one_lb_hosts_link_breaks_none_of_the_connections_it_carried() {
    if !steer_tests::privileged(
        "cutting_one_lb_hosts_link_breaks_none_of_the_connections_it_carried",
    ) {
        return;
    }
    let f = fleet(2);
    // 200 long-lived connections, each answered once; the router hashes them over both hosts.
    let mut conns: Vec<(Conn, String)> = f.topo.client.run(|| {
        (0..200)
            .map(|i| {
                let mut c =
                    Conn::open(vip(), FAILOVER).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let r = c
                    .get()
                    .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
                (c, r.backend)
            })
            .collect()
    });
    let carried: Vec<u64> = f
        .daemons
        .iter()
        .map(|d| service(d)["counters"]["new_flows"].as_u64().unwrap())
        .collect();
    assert!(
        carried.iter().all(|n| *n > 0) && carried.iter().sum::<u64>() >= 200,
        "both hosts carry some of the connections: {carried:?}"
    );
    let misses_before = f.daemons[1].ok_json(&["status"])["datapath"]["flow_miss"]
        .as_u64()
        .unwrap_or(0);

    // The first host's link is cut: the router finds its neighbour gone and sends everything
    // to the second, which has never seen the first host's connections.
    f.topo.lb.ip(&["link", "set", "eth0", "down"]);
    let cut = std::time::Instant::now();
    let mut slowest = Duration::ZERO;
    let mut broken = Vec::new();
    for (i, (c, was)) in conns.iter_mut().enumerate() {
        let t = std::time::Instant::now();
        let r = c.get();
        slowest = slowest.max(t.elapsed());
        match r {
            Ok(r) if r.backend == *was => {}
            Ok(r) => broken.push(format!("{i}: answered by {} instead of {was}", r.backend)),
            Err(e) => broken.push(format!("{i} (on {was}): {e}")),
        }
    }
    println!(
        "after the cut: one request on each of 200 connections in {:?}, the slowest {:?}",
        cut.elapsed(),
        slowest
    );
    assert!(
        broken.is_empty(),
        "{} of {} connections broke when one LB host was cut: {broken:?}",
        broken.len(),
        conns.len()
    );
    let misses = f.daemons[1].ok_json(&["status"])["datapath"]["flow_miss"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        misses > misses_before,
        "the surviving host took over flows it had no entry for ({misses_before} -> {misses})"
    );
    // New connections all go through the surviving host.
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    let failed: Vec<String> = f.topo.client.run(move || {
        let mut failed = Vec::new();
        for i in 0..100 {
            match http::get(vip(), FAILOVER) {
                Ok(r) => *served.entry(r.backend).or_default() += 1,
                Err(e) => failed.push(format!("{i}: {e}")),
            }
        }
        println!("new connections after the cut, by backend: {served:?}");
        failed
    });
    assert!(failed.is_empty(), "new connections failed: {failed:?}");
}

/// Client ports of the flows an LB host holds.
fn held_ports(d: &SteerDaemon) -> std::collections::BTreeSet<u16> {
    let v = d.ok_json(&["show", "flows", "--limit", "100000"]);
    v["flows"]
        .as_array()
        .expect("flows")
        .iter()
        .filter_map(|f| f["client"].as_str()?.rsplit(':').next()?.parse().ok())
        .collect()
}

/// What issue 12 asks to measure: an LB host lost while a backend drains. The other host has
/// no entry for the lost host's flows and takes the Maglev choice, which no longer holds the
/// draining backend: its connections that the lost host carried are answered by another
/// backend, which resets them. Every other connection goes on. (Documented in README.md;
/// GLB's second chance would save them, with a module on the backends.)
#[test]
fn losing_an_lb_host_mid_drain_breaks_only_the_draining_backends_connections_it_carried() {
    if !steer_tests::privileged(
        "losing_an_lb_host_mid_drain_breaks_only_the_draining_backends_connections_it_carried",
    ) {
        return;
    }
    let f = fleet(2);
    let mut conns: Vec<(Conn, String, u16)> = f.topo.client.run(|| {
        (0..200)
            .map(|i| {
                let mut c =
                    Conn::open(vip(), FAILOVER).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let r = c
                    .get()
                    .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
                let port = c.stream().local_addr().unwrap().port();
                (c, r.backend, port)
            })
            .collect()
    });
    let on_lost = held_ports(&f.daemons[0]);
    // The test's own Maglev tables, before and after the drain; the first agrees with the
    // hosts' on every connection.
    let (before, after) = (Pool::new(&["b0", "b1", "b2"]), Pool::new(&["b1", "b2"]));
    for (i, (c, was, port)) in conns.iter().enumerate() {
        let client = c.stream().local_addr().unwrap().ip();
        assert_eq!(
            before.choice(client, *port),
            *was,
            "connection {i}: the test's table disagrees with the hosts'"
        );
    }
    // No shared admin state yet: the drain is issued on each host.
    for d in &f.daemons {
        d.ok_json(&["drain", "b0"]);
    }
    f.topo.lb.ip(&["link", "set", "eth0", "down"]);
    let (mut lost, mut draining_lost, mut others_broken) = (0, 0, Vec::new());
    let mut moved = 0;
    for (i, (c, was, port)) in conns.iter_mut().enumerate() {
        let carried_by_lost = on_lost.contains(port);
        let client = c.stream().local_addr().unwrap().ip();
        let got = c.get();
        let survived = matches!(&got, Ok(r) if r.backend == *was);
        if was == "b0" && carried_by_lost {
            draining_lost += 1;
            lost += (!survived) as u32;
        } else if carried_by_lost && after.choice(client, *port) != *was {
            // Maglev is not perfectly stable: taking b0 out of the table also moves a few of
            // the other backends' slots, and the other host sends such a connection where
            // its slot now points. Broken as the draining backend's are, for the same reason.
            moved += 1;
        } else if !survived {
            let got = match got {
                Ok(r) => format!("answered by {}", r.backend),
                Err(e) => e.to_string(),
            };
            others_broken.push(format!(
                "{i} on {was} (lost host: {carried_by_lost}): {got}"
            ));
        }
    }
    println!(
        "LB host lost mid-drain: {lost} of {draining_lost} connections of the draining b0 \
         that it carried broke; {moved} of the other backends' that it carried had their \
         table slot moved by the drain; {} others, all went on",
        conns.len() - draining_lost as usize - moved
    );
    assert!(
        draining_lost > 0,
        "the lost host carried none of b0's connections: nothing was measured"
    );
    assert!(
        others_broken.is_empty(),
        "connections other than the draining backend's on the lost host broke: {others_broken:?}"
    );
}

/// A pool of the test config's backends (weight 1 each) and its Maglev table, built once.
struct Pool {
    names: Vec<&'static str>,
    table: Vec<u32>,
}

impl Pool {
    fn new(names: &[&'static str]) -> Pool {
        let entries: Vec<Entry> = names
            .iter()
            .enumerate()
            .map(|(i, name)| Entry {
                name,
                weight: 1,
                id: i as u32,
            })
            .collect();
        Pool {
            names: names.to_vec(),
            table: maglev::build(MAGLEV_SIZE, &entries).expect("a Maglev table"),
        }
    }

    /// The backend the table holds for the client's connection from `client`:`port`: what
    /// an LB host with no entry for the connection chooses.
    fn choice(&self, client: IpAddr, port: u16) -> &'static str {
        let (src, family) = addr_bytes(client);
        let key = FlowKey {
            src,
            dst: addr_bytes(vip().ip()).0,
            sport_be: port.to_be(),
            dport_be: vip().port().to_be(),
            proto: PROTO_TCP,
            family,
            _pad: [0; 2],
        };
        self.names[self.table[(flow_hash(&key) % MAGLEV_SIZE) as usize] as usize]
    }
}

/// The config's Maglev table size (the default).
const MAGLEV_SIZE: u32 = 65_537;

/// Every host shows the same table fingerprint.
fn assert_same_tables(f: &Fleet, why: &str) {
    let digests: Vec<String> = f
        .daemons
        .iter()
        .map(|d| service(d)["table_digest"].to_string())
        .collect();
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "{why}: {digests:?}"
    );
}

/// A backend's admin state on one host.
fn admin(d: &SteerDaemon, b: &str) -> String {
    d.backend(b)["admin"].as_str().unwrap_or("").to_string()
}

/// Waits until every host says `b` is `state`.
fn wait_admin(f: &Fleet, b: &str, state: &str) {
    for (k, d) in f.daemons.iter().enumerate() {
        wait_for(&format!("{b} {state} on LB host {k}"), T, || {
            let a = admin(d, b);
            if a == state {
                Ok(())
            } else {
                Err(a)
            }
        });
    }
}

#[test]
fn a_drain_on_one_host_drains_the_backend_on_every_host() {
    if !steer_tests::privileged("a_drain_on_one_host_drains_the_backend_on_every_host") {
        return;
    }
    let f = fleet_with(2, true);
    let t = std::time::Instant::now();
    f.daemons[0].ok_json(&["drain", "b0"]);
    wait_admin(&f, "b0", "drain");
    println!(
        "drain on host 0 in force on both hosts after {:?}",
        t.elapsed()
    );
    assert_same_tables(&f, "the same table on both hosts again");
    // And back, from the other host.
    f.daemons[1].ok_json(&["ready", "b0"]);
    wait_admin(&f, "b0", "ready");
    // Weights are the operators' word too.
    f.daemons[1].ok_json(&["weight", "b1", "3"]);
    for d in &f.daemons {
        wait_for("b1 weighs 3 on both hosts", T, || {
            let b = d.backend("b1");
            if b["weight"] == 3 {
                Ok(())
            } else {
                Err(b.to_string())
            }
        });
    }
    assert_same_tables(&f, "the same table on both hosts again");
    // A blue/green switch on one host switches every host.
    f.daemons[0].ok_json(&["switch", "web", "green"]);
    for d in &f.daemons {
        wait_for("green active on both hosts", T, || {
            let s = service(d);
            if s["active_group"] == "green" && s["eligible"] == 1 {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    }
    assert_same_tables(&f, "the same table on both hosts after the switch");
}

#[test]
fn without_etcd_hosts_forward_refuse_admin_changes_restart_from_their_copy_and_catch_up() {
    if !steer_tests::privileged(
        "without_etcd_hosts_forward_refuse_admin_changes_restart_from_their_copy_and_catch_up",
    ) {
        return;
    }
    let mut f = fleet_with(2, true);
    f.daemons[0].ok_json(&["drain", "b2"]);
    wait_admin(&f, "b2", "drain");
    f.etcd.as_mut().unwrap().stop();
    // Fail static: traffic goes on.
    let failed: Vec<String> = f.topo.client.run(|| {
        (0..20)
            .filter_map(|i| http::get(vip(), T).err().map(|e| format!("{i}: {e}")))
            .collect()
    });
    assert!(
        failed.is_empty(),
        "requests failed with etcd away: {failed:?}"
    );
    // Admin changes are refused, with nothing changed.
    let r = f.daemons[0].ctl(&["drain", "b1"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.stderr.contains("cluster store unreachable"),
        "the refusal says why: {r:?}"
    );
    assert_eq!(admin(&f.daemons[0], "b1"), "ready", "nothing changed");
    // A host restarting meanwhile starts from its local copy.
    f.daemons[1].kill9();
    f.daemons[1].start();
    assert_eq!(
        admin(&f.daemons[1], "b2"),
        "drain",
        "the local copy kept the drain"
    );
    // etcd back: changes are accepted again and reach every host.
    f.etcd.as_mut().unwrap().resume();
    wait_for("a drain accepted with etcd back", T, || {
        let r = f.daemons[0].ctl(&["drain", "b1"]);
        if r.code == 0 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    wait_admin(&f, "b1", "drain");
    wait_admin(&f, "b2", "drain");
}

/// Indexes of the connections to `backend` whose flows `d` holds.
fn held_by(d: &SteerDaemon, conns: &[(Conn, String, u16)], backend: &str) -> Vec<usize> {
    let held = held_ports(d);
    (0..conns.len())
        .filter(|i| conns[*i].1 == backend && held.contains(&conns[*i].2))
        .collect()
}

/// Host 0's view of a peer's record: (revision, active flows on `backend`).
fn peer_view(d: &SteerDaemon, peer: &str, backend: &str) -> Option<(i64, u64)> {
    let st = d.ok_json(&["status"]);
    let p = st["cluster"]["peers"]
        .as_array()?
        .iter()
        .find(|p| p["host"] == peer)?
        .clone();
    Some((
        p["revision"].as_i64()?,
        p["active"][backend].as_u64().unwrap_or(0),
    ))
}

#[test]
fn drain_wait_on_one_host_waits_for_the_flows_on_every_host_and_reports_a_lost_one() {
    if !steer_tests::privileged(
        "drain_wait_on_one_host_waits_for_the_flows_on_every_host_and_reports_a_lost_one",
    ) {
        return;
    }
    let mut f = fleet_with(2, true);
    wait_for("lb0 to see lb1's record", T, || {
        peer_view(&f.daemons[0], "lb1", "b0").ok_or(format!(
            "no record yet: {} / {}",
            f.daemons[0].ok_json(&["status"])["cluster"],
            f.daemons[1].ok_json(&["status"])["flow_scan"]
        ))
    });
    let mut conns: Vec<Option<(Conn, String, u16)>> = f.topo.client.run(|| {
        (0..90)
            .map(|i| {
                let mut c =
                    Conn::open(vip(), FAILOVER).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let r = c
                    .get()
                    .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
                let port = c.stream().local_addr().unwrap().port();
                Some((c, r.backend, port))
            })
            .collect()
    });
    let snapshot: Vec<(Conn, String, u16)> = conns
        .iter()
        .map(|c| {
            let (c, b, p) = c.as_ref().unwrap();
            (
                c.stream().try_clone().map(Conn::from_stream).unwrap(),
                b.clone(),
                *p,
            )
        })
        .collect();
    let on = |k: usize, b: &str| held_by(&f.daemons[k], &snapshot, b);
    let (b0_on0, b0_on1, b1_on0, b1_on1) = (on(0, "b0"), on(1, "b0"), on(0, "b1"), on(1, "b1"));
    drop(snapshot);
    assert!(
        [&b0_on0, &b0_on1, &b1_on0, &b1_on1]
            .iter()
            .all(|v| !v.is_empty()),
        "each host carries connections of b0 and b1: {b0_on0:?} {b0_on1:?} {b1_on0:?} {b1_on1:?}"
    );
    let close = |conns: &mut Vec<Option<(Conn, String, u16)>>, which: &[usize]| {
        for i in which {
            conns[*i] = None;
        }
    };

    std::thread::scope(|sc| {
        let d0 = &f.daemons[0];
        let waiting =
            sc.spawn(move || d0.ctl(&["--json", "drain", "b0", "--wait", "--timeout", "60s"]));
        // Host 0's own b0 connections end; host 1 still carries some, and its published
        // counts cover the drain: the drain waits.
        close(&mut conns, &b0_on0);
        wait_for(
            "host 0 free of b0, host 1 not, the drain in both hosts' counts",
            T,
            || {
                let local = d0.backend("b0")["active_flows"].as_u64();
                let rev = d0.ok_json(&["status"])["cluster"]["revision"]
                    .as_i64()
                    .unwrap_or(0);
                match (local, peer_view(d0, "lb1", "b0")) {
                    (Some(0), Some((r, n))) if r >= rev && n > 0 => Ok(()),
                    other => Err(format!("{other:?} (revision {rev})")),
                }
            },
        );
        assert!(
            !waiting.is_finished(),
            "drain --wait returned while host 1 still carried b0's connections"
        );
        close(&mut conns, &b0_on1);
        let r = waiting.join().unwrap();
        assert_eq!(r.code, 0, "{r:?}");
        let v = r.json();
        assert_eq!(v["hosts"], serde_json::json!(["lb1"]), "{v}");
        assert_eq!(v["gone"], serde_json::json!([]), "{v}");
    });

    // A host lost mid-wait is reported, not waited for: host 1's daemon dies (its XDP goes on
    // forwarding from the pinned link), its record expires.
    let (first, rest) = f.daemons.split_at_mut(1);
    let (d0, d1) = (&first[0], &mut rest[0]);
    std::thread::scope(|sc| {
        let waiting =
            sc.spawn(move || d0.ctl(&["--json", "drain", "b1", "--wait", "--timeout", "60s"]));
        wait_for("the drain of b1 in host 1's counts", T, || {
            let rev = d0.ok_json(&["status"])["cluster"]["revision"]
                .as_i64()
                .unwrap_or(0);
            match peer_view(d0, "lb1", "b1") {
                Some((r, n)) if r >= rev && n > 0 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
        d1.kill9();
        close(&mut conns, &b1_on0);
        let r = waiting.join().unwrap();
        assert_eq!(r.code, 0, "{r:?}");
        let v = r.json();
        assert_eq!(v["gone"], serde_json::json!(["lb1"]), "{v}");
        println!("drain --wait with host 1 lost: {v}");
    });
}

/// BIRD on an LB host: learns the routes steer keeps in table 250, exports them to the
/// router by eBGP with itself as next hop.
fn bird_lb(me: std::net::Ipv4Addr) -> String {
    format!(
        "router id {me};\n\
         protocol device {{ }}\n\
         protocol kernel announced {{\n  ipv4 {{ import all; export none; }};\n  kernel table 250;\n  learn;\n  scan time 1;\n}}\n\
         protocol bgp upstream {{\n  local {me} as 65001;\n  neighbor {} as 65000;\n  ipv4 {{ import none; export where proto = \"announced\"; next hop self; }};\n}}\n",
        addr::ROUTER
    )
}

/// BIRD on the router: one eBGP session per LB host, equal routes merged into one multipath
/// route in the kernel.
fn bird_router(lbs: &[std::net::Ipv4Addr]) -> String {
    let mut c = format!(
        "router id {};\nprotocol device {{ }}\n\
         protocol kernel {{\n  ipv4 {{ import none; export all; }};\n  merge paths on;\n}}\n",
        addr::ROUTER
    );
    for (k, lb) in lbs.iter().enumerate() {
        c += &format!(
            "protocol bgp lb{k} {{\n  local {} as 65000;\n  neighbor {lb} as 65001;\n  ipv4 {{ import all; export none; }};\n}}\n",
            addr::ROUTER
        );
    }
    c
}

/// The router's route to the VIP, as `ip route show` prints it.
fn router_route(topo: &Topology) -> String {
    topo.router
        .as_ref()
        .unwrap()
        .ip(&["route", "show", &format!("{}/32", addr::VIP)])
}

#[test]
fn a_bgp_speaker_announces_every_host_and_a_detaching_one_leaves_without_a_failed_connection() {
    if !steer_tests::privileged(
        "a_bgp_speaker_announces_every_host_and_a_detaching_one_leaves_without_a_failed_connection",
    ) {
        return;
    }
    let mut topo = Topology::new(&TopologySpec {
        backends: 3,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    // No static route: BGP is to give the router its routes to the VIP.
    topo.add_router(1, false);
    for i in 0..topo.backends.len() {
        topo.start_http(Path::new(HTTPD), i);
    }
    let services = config(&topo);
    let mut daemons = Vec::new();
    for ns in topo.lbs() {
        let mut d = SteerDaemon::new(ns);
        // Right after the [daemon] table: one of its keys.
        d.write_config(&format!("announce_table = 250\n\n{services}"));
        d.start();
        daemons.push(d);
    }
    let lb_addrs = [addr::lb(0), addr::lb(1)];
    let _birds: Vec<steer_tests::bird::Bird> = std::iter::once(steer_tests::bird::Bird::start(
        topo.router.as_ref().unwrap(),
        &bird_router(&lb_addrs),
    ))
    .chain(
        topo.lbs()
            .into_iter()
            .zip(lb_addrs)
            .map(|(ns, a)| steer_tests::bird::Bird::start(ns, &bird_lb(a))),
    )
    .collect();
    wait_for("the router to learn the VIP from both hosts", T, || {
        let r = router_route(&topo);
        if r.contains(&format!("via {}", lb_addrs[0]))
            && r.contains(&format!("via {}", lb_addrs[1]))
        {
            Ok(())
        } else {
            Err(format!(
                "route: {r:?}; lb0's table 250: {:?}",
                topo.lb.ip(&["route", "show", "table", "250"])
            ))
        }
    });

    // A daemon restarting takes its announcement over: never withdrawn, not even for a moment
    // (which would flap the routers): `ip monitor` sees no route deleted in lb1 meanwhile.
    let mut monitor = topo.more_lbs[0]
        .command("ip")
        .args(["monitor", "route"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("ip monitor");
    daemons[1].kill9();
    daemons[1].start();
    wait_for("lb1's daemon checking again", T, || {
        let b = daemons[1].backend("b0");
        if b["health"] == "up" {
            Ok(())
        } else {
            Err(b.to_string())
        }
    });
    let _ = monitor.kill();
    let seen = monitor.wait_with_output().expect("ip monitor output");
    let seen = String::from_utf8_lossy(&seen.stdout);
    assert!(
        !seen.contains("Deleted") || !seen.contains(&addr::VIP.to_string()),
        "lb1's VIP was withdrawn while its daemon restarted: {seen}"
    );

    // New connections all along, while lb0 leaves.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = topo.client.clone();
    let s = stop.clone();
    let load = std::thread::spawn(move || {
        client.run(move || {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match http::get(vip(), T) {
                    Ok(_) => ok += 1,
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        })
    });
    let r = daemons[0].ok_json(&["shutdown", "--detach"]);
    assert_eq!(r["ok"], true, "{r}");
    wait_for("the router to drop lb0's path", T, || {
        let r = router_route(&topo);
        if !r.contains(&format!("via {}", lb_addrs[0]))
            && r.contains(&format!("via {}", lb_addrs[1]))
        {
            Ok(())
        } else {
            Err(r)
        }
    });
    assert_eq!(daemons[0].wait_exit(T), 0);
    // Some traffic after lb0's datapath is gone, all through lb1.
    let before = service(&daemons[1])["counters"]["new_flows"]
        .as_u64()
        .unwrap();
    wait_for("new connections through lb1 after lb0 left", T, || {
        let n = service(&daemons[1])["counters"]["new_flows"]
            .as_u64()
            .unwrap();
        if n >= before + 50 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().unwrap();
    println!(
        "bgp: {ok} requests while lb0 was withdrawn and detached, {} failed",
        failed.len()
    );
    assert!(ok > 0);
    assert!(
        failed.is_empty(),
        "connections failed while lb0 left: {failed:?}"
    );
}

#[test]
fn ready_wait_healthy_on_one_host_waits_for_the_checks_of_every_host() {
    if !steer_tests::privileged("ready_wait_healthy_on_one_host_waits_for_the_checks_of_every_host")
    {
        return;
    }
    let f = fleet_with(2, true);
    wait_for("lb0 to see lb1's record", T, || {
        peer_view(&f.daemons[0], "lb1", "b2").ok_or("no record yet".to_string())
    });
    f.daemons[0].ok_json(&["drain", "b2"]);
    wait_admin(&f, "b2", "drain");
    // Host 1 cannot reach b2 (its checks go through the kernel's routes; its XDP does not).
    let b2 = format!("{}/32", f.topo.backends[2].addr);
    let lb1 = &f.topo.more_lbs[0];
    lb1.ip(&["route", "add", "blackhole", &b2]);
    wait_for("b2 down in host 1's checks", T, || {
        let b = f.daemons[1].backend("b2");
        if b["health"] == "down" {
            Ok(())
        } else {
            Err(b.to_string())
        }
    });
    std::thread::scope(|sc| {
        let d0 = &f.daemons[0];
        let runs0 = d0.backend("b2")["checks_run"].as_u64().unwrap();
        let waiting = sc.spawn(move || {
            d0.ctl(&[
                "--json",
                "ready",
                "b2",
                "--wait-healthy",
                "--timeout",
                "60s",
            ])
        });
        // Host 0's own checks pass again and again: alone, that would have readied b2.
        wait_for("three more passing checks on host 0", T, || {
            let b = d0.backend("b2");
            let runs = b["checks_run"].as_u64().unwrap();
            if b["health"] == "up" && runs >= runs0 + 3 {
                Ok(())
            } else {
                Err(b.to_string())
            }
        });
        assert!(
            !waiting.is_finished(),
            "ready --wait-healthy returned while host 1's checks found b2 down"
        );
        assert_eq!(admin(d0, "b2"), "drain");
        lb1.ip(&["route", "del", "blackhole", &b2]);
        let r = waiting.join().unwrap();
        assert_eq!(r.code, 0, "{r:?}");
    });
    wait_admin(&f, "b2", "ready");
}

#[test]
fn a_rollout_from_one_host_restarts_every_backend_with_no_failed_request_through_either() {
    if !steer_tests::privileged(
        "a_rollout_from_one_host_restarts_every_backend_with_no_failed_request_through_either",
    ) {
        return;
    }
    let f = fleet_scripted(2, true);
    wait_for("lb0 to see lb1's record", T, || {
        peer_view(&f.daemons[0], "lb1", "b0").ok_or("no record yet".to_string())
    });
    // New connections all along, spread by the router over both hosts.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = f.topo.client.clone();
    let s = stop.clone();
    let load = std::thread::spawn(move || {
        client.run(move || {
            let mut served: BTreeMap<String, u64> = BTreeMap::new();
            let mut failed = Vec::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                match http::get(vip(), T) {
                    Ok(r) => {
                        *served
                            .entry(format!("{} {}", r.backend, r.version))
                            .or_default() += 1
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (served, failed)
        })
    });
    let script = &f.servers.as_ref().unwrap().script;
    let exec = format!("sh {} {{backend}} v2", script.display());
    let r = f.daemons[0].ctl(&[
        "--json",
        "rollout",
        "web",
        "--exec",
        &exec,
        "--drain-timeout",
        "20s",
        "--healthy-timeout",
        "20s",
    ]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (served, failed) = load.join().unwrap();
    assert_eq!(r.code, 0, "rollout: {r:?}");
    let summary = r.json();
    assert!(
        summary["backends"]
            .as_array()
            .is_some_and(|a| a.len() == 3 && a.iter().all(|s| s["result"] == "ok")),
        "{summary}"
    );
    println!("rollout across two hosts: served {served:?}");
    assert!(
        failed.is_empty(),
        "{} requests failed: {failed:?}",
        failed.len()
    );
    assert!(served.keys().any(|k| k.ends_with("v2")), "{served:?}");
    // Every backend is back in rotation on both hosts.
    for b in ["b0", "b1", "b2"] {
        wait_admin(&f, b, "ready");
    }
}
