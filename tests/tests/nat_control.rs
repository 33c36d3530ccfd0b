//! The daemon's side of NAT mode, through the real binary in a namespace lab: what it writes
//! for a NAT service (mode, facing address, forwarding), and how it answers the two maps the
//! datapath writes for it — passive health (`STEER_OBS_V1`) and neighbour wants
//! (`STEER_NEIGH_V1`). The datapath's own NAT behaviour is tested elsewhere; here the maps are
//! written by the test, as the datapath would.

mod common;

use std::{net::IpAddr, path::Path, time::Duration};

use aya::maps::{Array, Map, MapData};
use common::*;
use steer_common::{map, Backend, Globals, NeighWant, Observed, FAMILY_V4, MAX_BACKENDS};
use steer_tests::{
    daemon::SteerDaemon,
    netns::{addr, wait_for, Topology},
};

/// `web` in NAT mode on backends `pool` (no MACs), with fast checks and `extra` settings.
fn nat_config(topo: &Topology, pool: &[usize], extra: &str) -> String {
    let mut s = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\nmode = \"nat\"\n{extra}\
         check = {{ type = \"http\", path = \"/\", interval = \"500ms\", fastinterval = \"100ms\", downinterval = \"500ms\", timeout = \"500ms\", rise = 2, fall = 2 }}\n\n",
        addr::VIP
    );
    for &i in pool {
        s += &format!(
            "[[service.backend]]\nname = \"b{i}\"\naddress = \"{}\"\n\n",
            topo.backends[i].addr
        );
    }
    s
}

fn started(topo: &Topology, cfg: &str) -> SteerDaemon {
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(cfg);
    d.start();
    d
}

fn wait_health(d: &SteerDaemon, name: &str, want: &str) {
    wait_for(&format!("{name} {want}"), Duration::from_secs(10), || {
        let h = d.backend(name)["health"].clone();
        if h == want {
            Ok(())
        } else {
            Err(h.to_string())
        }
    });
}

fn pinned(pin_dir: &Path, name: &str) -> MapData {
    MapData::from_pin(pin_dir.join(name)).unwrap_or_else(|e| panic!("open pinned {name}: {e}"))
}

/// The id of the backend at `address`, from the pinned backends map.
fn backend_id(pin_dir: &Path, address: IpAddr) -> u32 {
    let a: Array<MapData, Backend> =
        Array::try_from(Map::Array(pinned(pin_dir, map::BACKENDS))).expect("backends map");
    let want = match address {
        IpAddr::V4(v4) => v4.octets(),
        IpAddr::V6(_) => unreachable!("IPv4 lab"),
    };
    (0..MAX_BACKENDS)
        .find(|id| {
            let b = a.get(id, 0).expect("backend slot");
            b.admin != steer_common::admin::NONE && b.addr[..4] == want
        })
        .unwrap_or_else(|| panic!("{address} is in no backend slot"))
}

fn observed(pin_dir: &Path) -> Array<MapData, Observed> {
    Array::try_from(Map::Array(pinned(pin_dir, map::OBSERVED))).expect("observed map")
}

#[test]
fn a_nat_service_needs_no_mac_and_leaves_from_the_address_facing_each_backend() {
    if !steer_tests::privileged(
        "a_nat_service_needs_no_mac_and_leaves_from_the_address_facing_each_backend",
    ) {
        return;
    }
    let topo = lab(2);
    topo.lb.sysctl("net.ipv4.conf.eth0.forwarding", "0");
    let d = started(&topo, &nat_config(&topo, &[0, 1], ""));
    wait_health(&d, "b0", "up");
    let s = d.ok_json(&["status"]);
    let svc = &s["services"][0];
    assert_eq!(svc["mode"], "nat", "{s}");
    assert_eq!(svc["nat"]["snat_ports"], "10000-32767", "{s}");
    assert_eq!(svc["nat"]["error_limit"], 3, "{s}");
    assert_eq!(svc["nat"]["observe"], true, "{s}");
    let b0 = d.backend("b0");
    assert_eq!(b0["snat"], addr::LB.to_string(), "{b0}");
    assert_eq!(b0["port"], 80, "{b0}");
    assert_eq!(b0["observed_fails"], 0, "{b0}");
    assert_eq!(
        topo.lb
            .exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/forwarding"])
            .trim(),
        "1",
        "forwarding on the XDP interface, for bpf_fib_lookup"
    );
    assert!(
        d.log().contains("net.ipv4.conf.eth0.forwarding"),
        "{}",
        d.log()
    );
    let m = d.scrape();
    assert!(
        m.contains("steer_service_mode{service=\"web\",mode=\"nat\"} 1"),
        "{m}"
    );
    assert!(m.contains("steer_backend_refused_total{"), "{m}");
}

#[test]
fn passive_health_marks_a_nat_backend_down_at_once_and_checks_bring_it_back() {
    if !steer_tests::privileged(
        "passive_health_marks_a_nat_backend_down_at_once_and_checks_bring_it_back",
    ) {
        return;
    }
    let topo = lab(2);
    let d = started(&topo, &nat_config(&topo, &[0, 1], ""));
    wait_health(&d, "b0", "up");
    wait_health(&d, "b1", "up");
    let id = backend_id(&d.pin_dir, IpAddr::V4(topo.backends[1].addr));
    let mut obs = observed(&d.pin_dir);
    // Below the limit: nothing happens.
    obs.set(
        id,
        Observed {
            fails: 2,
            last_fail_ns: 1,
        },
        0,
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(d.backend("b1")["health"], "up");
    assert_eq!(d.backend("b1")["observed_fails"], 2);
    // At the limit, as the datapath leaves it after a third refused attempt. The server is
    // fine, so only passive health can take it down (its checks would not).
    obs.set(
        id,
        Observed {
            fails: 3,
            last_fail_ns: 2,
        },
        0,
    )
    .unwrap();
    wait_for("b1 down by passive health", Duration::from_secs(2), || {
        let b = d.backend("b1");
        if b["health"] == "down" {
            Ok(b)
        } else {
            Err(b.to_string())
        }
    });
    let b1 = d.backend("b1");
    let why = b1["passive"].as_str().unwrap_or_default().to_string();
    assert!(
        why.starts_with("passive: 3 consecutive refused or unanswered attempts"),
        "{b1}"
    );
    let s = d.ok_json(&["status"]);
    assert_eq!(s["services"][0]["eligible"], 1, "out of the table: {s}");
    assert!(d.log().contains("passive: 3 consecutive"), "{}", d.log());
    // Checks bring it back (rise 2 at downinterval), and the count is forgotten first.
    wait_health(&d, "b1", "up");
    assert_eq!(obs.get(&id, 0).unwrap(), Observed::default());
    let b1 = d.backend("b1");
    assert!(b1.get("passive").is_none(), "{b1}");
    assert_eq!(d.ok_json(&["status"])["services"][0]["eligible"], 2);
    // And it can be marked down again.
    obs.set(
        id,
        Observed {
            fails: 5,
            last_fail_ns: 3,
        },
        0,
    )
    .unwrap();
    wait_health(&d, "b1", "down");
    wait_health(&d, "b1", "up");
}

#[test]
fn a_next_hop_the_datapath_misses_is_resolved() {
    if !steer_tests::privileged("a_next_hop_the_datapath_misses_is_resolved") {
        return;
    }
    let topo = lab(1);
    let d = started(&topo, &nat_config(&topo, &[0], ""));
    wait_health(&d, "b0", "up");
    // The client: a host on the LB's link it has no reason to know.
    let hop = addr::CLIENT;
    let _ = topo.lb.ip(&["neigh", "flush", "to", &hop.to_string()]);
    let known = || {
        let n = topo.lb.ip(&["neigh", "show", "to", &hop.to_string()]);
        n.contains("lladdr")
    };
    assert!(!known(), "the client is not a neighbour of the LB yet");
    let ifindex: u32 = topo
        .lb
        .exec(&["cat", "/sys/class/net/eth0/ifindex"])
        .trim()
        .parse()
        .unwrap();
    let mut want = NeighWant {
        addr: [0; 16],
        ifindex,
        family: FAMILY_V4 as u32,
        seq: 1,
    };
    want.addr[..4].copy_from_slice(&hop.octets());
    let mut neigh: Array<MapData, NeighWant> =
        Array::try_from(Map::Array(pinned(&d.pin_dir, map::NEIGH))).expect("neighbour map");
    neigh.set(7, want, 0).unwrap();
    wait_for(
        "the LB to resolve the client",
        Duration::from_secs(3),
        || {
            if known() {
                Ok(())
            } else {
                Err(topo.lb.ip(&["neigh", "show"]))
            }
        },
    );
}

/// The NAT flow cache holds the FIB's answers: the daemon voids every cache (moves the host
/// epoch) when the kernel says a next hop may have changed — a neighbour's new MAC, a route —
/// and not when a neighbour's MAC is told again unchanged.
#[test]
fn a_next_hop_change_voids_the_flow_caches() {
    if !steer_tests::privileged("a_next_hop_change_voids_the_flow_caches") {
        return;
    }
    let topo = lab(1);
    let d = started(&topo, &nat_config(&topo, &[0], ""));
    wait_health(&d, "b0", "up");
    let globals: Array<MapData, Globals> =
        Array::try_from(Map::Array(pinned(&d.pin_dir, map::GLOBALS))).expect("globals map");
    let epoch = || globals.get(&0, 0).expect("globals").epoch;
    // A next hop of the LB's link no one uses (so nothing else changes it meanwhile).
    let neigh = |mac: &str| {
        topo.lb.ip(&[
            "neigh",
            "replace",
            "10.99.0.199",
            "lladdr",
            mac,
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])
    };
    let moves = |what: &str, before: u32| {
        wait_for(what, Duration::from_secs(3), || {
            let now = epoch();
            if now != before {
                Ok(now)
            } else {
                Err(format!("epoch still {now}"))
            }
        })
    };
    let e0 = epoch();
    neigh("02:77:00:00:00:01");
    let e1 = moves("a new neighbour moves the epoch", e0);
    neigh("02:77:00:00:00:02");
    let e2 = moves("a neighbour's new MAC moves the epoch", e1);
    neigh("02:77:00:00:00:02");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(epoch(), e2, "the same MAC told again moves nothing");
    topo.lb.ip(&[
        "route",
        "add",
        "198.18.0.0/24",
        "via",
        "10.99.0.199",
        "dev",
        "eth0",
    ]);
    moves("a route moves the epoch", e2);
}

#[test]
fn a_reload_between_dsr_and_nat_replaces_the_service() {
    if !steer_tests::privileged("a_reload_between_dsr_and_nat_replaces_the_service") {
        return;
    }
    let topo = lab(2);
    let d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_health(&d, "b0", "up");
    d.write_config(&nat_config(&topo, &[0, 1], "error_limit = 5\n"));
    let r = d.ok_json(&["reload", "--json"]);
    let changes = r["changes"].to_string();
    assert!(
        changes.contains("service web: mode dsr → nat: replaced"),
        "{r}"
    );
    let s = d.ok_json(&["status"]);
    assert_eq!(s["services"][0]["mode"], "nat", "{s}");
    assert_eq!(s["services"][0]["nat"]["error_limit"], 5, "{s}");
    assert_eq!(d.backend("b1")["snat"], addr::LB.to_string());
    // Back to DSR with no MACs in the config: they are resolved again.
    d.write_config(&nat_config(&topo, &[0, 1], "").replace("mode = \"nat\"\n", ""));
    let r = d.ok_json(&["reload", "--json"]);
    assert!(r["changes"].to_string().contains("mode nat → dsr"), "{r}");
    assert_eq!(d.ok_json(&["status"])["services"][0]["mode"], "dsr");
    wait_health(&d, "b0", "up");
}
