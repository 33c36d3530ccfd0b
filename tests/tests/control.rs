//! The control plane on its bad days, through the real binary: a second daemon, starts and
//! reloads that cannot apply, settings changed under long-lived connections, a lost state
//! file, pinned maps of another size, a restart with a dead backend, a missing interface,
//! thousands of idle control and metrics connections, and socket permissions.

mod common;

use std::time::Duration;

use common::*;
use steer_tests::{
    daemon::SteerDaemon,
    netns::{addr, wait_for, Topology},
};

fn started(topo: &Topology, cfg: &str) -> SteerDaemon {
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(cfg);
    d.start();
    d
}

fn wait_up(d: &SteerDaemon, names: &[&str]) {
    for b in names {
        wait_health(d, b, "up");
    }
}

/// A backend in the LB's subnet that nobody answers for: its MAC cannot be resolved.
const GHOST: &str = "[[service.backend]]\nname = \"ghost\"\naddress = \"10.99.0.200\"\n";

#[test]
fn a_second_daemon_is_refused_before_it_touches_anything() {
    if !steer_tests::privileged("a_second_daemon_is_refused_before_it_touches_anything") {
        return;
    }
    let mut topo = lab(2);
    let d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_up(&d, &["b0", "b1"]);
    topo.stop_http(1);
    wait_health(&d, "b1", "down");
    let r = d.run_refused(T);
    assert_ne!(r.code, 0, "{r:?}");
    assert!(
        r.stderr.contains("another steer daemon is running"),
        "says why: {r:?}"
    );
    // The running daemon's state is what it was: b1 down and out of the table.
    let b1 = d.backend("b1");
    assert_eq!(b1["health"], "down", "{b1}");
    assert_eq!(d.ok_json(&["status"])["services"][0]["eligible"], 1);
    let served = requests(&topo, 30);
    assert_eq!(served.keys().collect::<Vec<_>>(), ["b0"], "{served:?}");
    assert!(d.log().lines().all(|l| !l.contains("XDP program replaced")));
}

#[test]
fn a_start_that_cannot_apply_changes_nothing() {
    if !steer_tests::privileged("a_start_that_cannot_apply_changes_nothing") {
        return;
    }
    let topo = lab(2);
    // Fresh: refused with exit 78, naming the backend; nothing left behind.
    let fresh = SteerDaemon::new(&topo.lb);
    fresh.write_config(&format!("{}{GHOST}", web_config(&topo, &[0], None)));
    let r = fresh.run_refused(Duration::from_secs(20));
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("ghost") && r.stderr.contains("10.99.0.200"),
        "{r:?}"
    );
    assert!(!fresh.pin_dir.exists(), "a refused start leaves no pins");
    let link = topo.lb.ip(&["link", "show", "eth0"]);
    assert!(!link.contains("prog/xdp"), "nor a program: {link}");

    // Adopting: the running datapath keeps forwarding exactly as it did.
    let mut d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_up(&d, &["b0", "b1"]);
    d.kill9();
    d.write_config(&format!("{}{GHOST}", web_config(&topo, &[0, 1], None)));
    let r = d.run_refused(Duration::from_secs(20));
    assert_eq!(r.code, 78, "{r:?}");
    assert!(d.pin_dir.exists(), "the pins of the running datapath stay");
    let served = requests(&topo, 40);
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["b0", "b1"],
        "the datapath still serves both: {served:?}"
    );
    // Back to a good config: it adopts them.
    d.write_config(&web_config(&topo, &[0, 1], None));
    d.start();
    assert_eq!(d.ok_json(&["status"])["services"][0]["eligible"], 2);
}

#[test]
fn a_missing_interface_fails_cleanly() {
    if !steer_tests::privileged("a_missing_interface_fails_cleanly") {
        return;
    }
    let topo = lab(1);
    let d = SteerDaemon::new(&topo.lb);
    let cfg = format!("{}\n{}", d.daemon_table(), web_config(&topo, &[0], None))
        .replace("interfaces = [\"eth0\"]", "interfaces = [\"nope0\"]");
    std::fs::write(&d.config, cfg).unwrap();
    let r = d.run_refused(T);
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("nope0") && !r.stderr.contains("Skb"),
        "{r:?}"
    );
    assert!(!d.pin_dir.exists(), "nothing left behind");
}

#[test]
fn a_reload_that_cannot_apply_whole_changes_nothing() {
    if !steer_tests::privileged("a_reload_that_cannot_apply_whole_changes_nothing") {
        return;
    }
    let topo = lab(3);
    let d = started(&topo, &web_config(&topo, &[0, 1, 2], None));
    wait_up(&d, &["b0", "b1", "b2"]);
    let mut conns = open_conns(&topo, 30);
    assert!(conns.iter().any(|(_, b)| b == "b2"), "some land on b2");
    // Remove b2 and add a backend whose MAC cannot be resolved: refused whole.
    d.write_config(&format!("{}{GHOST}", web_config(&topo, &[0, 1], None)));
    let r = d.ctl(&["--json", "reload"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stdout.contains("ghost"), "{r:?}");
    all_alive(&mut conns, "after a refused reload");
    let s = d.ok_json(&["status"]);
    assert_eq!(s["backends"].as_array().unwrap().len(), 3, "{s}");
    assert_eq!(s["services"][0]["eligible"], 3, "{s}");
    // [daemon] settings that need a restart are refused, not silently ignored.
    let cfg = format!(
        "{}\n{}",
        d.daemon_table(),
        web_config(&topo, &[0, 1, 2], None)
    )
    .replace("max_flows = 65536", "max_flows = 131072");
    std::fs::write(&d.config, cfg).unwrap();
    let r = d.ctl(&["reload"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("max_flows: 65536 → 131072"), "{r:?}");
    all_alive(&mut conns, "after a refused [daemon] change");
}

#[test]
fn a_reload_changes_settings_in_place() {
    if !steer_tests::privileged("a_reload_changes_settings_in_place") {
        return;
    }
    let mut topo = lab(3);
    let d = started(&topo, &web_config(&topo, &[0, 1, 2], None));
    wait_up(&d, &["b0", "b1", "b2"]);
    let mut conns = open_conns(&topo, 40);
    topo.stop_http(2);
    wait_health(&d, "b2", "down");
    conns.retain(|(_, b)| b != "b2");
    d.ok_json(&["weight", "b1", "3"]);
    // Every service setting, a group and a weight change at once.
    let cfg = web_config(&topo, &[0, 1, 2], None)
        .replace(
            "port = 80\n",
            "port = 80\nidle_timeout = \"2m\"\nno_backend = \"drop\"\nmaglev_size = 251\n",
        )
        .replacen(
            "name = \"b0\"\n",
            "name = \"b0\"\ngroup = \"blue\"\nweight = 2\n",
            1,
        );
    d.write_config(&cfg);
    let v = d.ok_json(&["reload"]);
    let changes = v.to_string();
    assert!(changes.contains("settings changed in place"), "{v}");
    assert!(
        changes.contains("weight 3 set by `steer-ctl weight` stays in force"),
        "{v}"
    );
    all_alive(&mut conns, "after changing every setting");
    let b2 = d.backend("b2");
    assert_eq!(b2["health"], "down", "a reload forgets no health: {b2}");
    let (b0, b1) = (d.backend("b0"), d.backend("b1"));
    assert_eq!(
        (b0["weight"].as_u64(), b0["group"].as_str()),
        (Some(2), Some("blue"))
    );
    assert_eq!(
        (b1["weight"].as_u64(), b1["config_weight"].as_u64()),
        (Some(3), Some(1))
    );
    let served = requests(&topo, 40);
    assert!(!served.contains_key("b2"), "{served:?}");
    // A config weight that changes replaces the operator's.
    d.write_config(&cfg.replacen("name = \"b1\"\n", "name = \"b1\"\nweight = 4\n", 1));
    let v = d.ok_json(&["reload"]);
    assert!(v.to_string().contains("replaces the weight 3"), "{v}");
    assert_eq!(d.backend("b1")["weight"], 4);
    all_alive(&mut conns, "after a weight change");
}

#[test]
fn switch_counts_the_active_group_and_refuses_an_empty_one() {
    if !steer_tests::privileged("switch_counts_the_active_group_and_refuses_an_empty_one") {
        return;
    }
    let mut topo = lab(4);
    let mut cfg = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", interval = \"200ms\", fastinterval = \"100ms\", downinterval = \"200ms\", timeout = \"200ms\", rise = 2, fall = 2 }}\n",
        addr::VIP
    );
    for (i, g) in [(0, "blue"), (1, "blue"), (2, "green"), (3, "green")] {
        cfg += &backend_toml(&topo, i, &format!("b{i}"), &format!("group = \"{g}\""));
    }
    let d = started(&topo, &cfg);
    wait_up(&d, &["b0", "b1", "b2", "b3"]);
    d.ok_json(&["switch", "web", "blue"]);
    assert_eq!(d.ok_json(&["status"])["services"][0]["eligible"], 2);
    topo.stop_http(2);
    topo.stop_http(3);
    wait_health(&d, "b2", "down");
    wait_health(&d, "b3", "down");
    let r = d.ctl(&["switch", "web", "green"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(r.stderr.contains("no eligible backend"), "{r:?}");
    let s = d.ok_json(&["status"]);
    assert_eq!(s["services"][0]["active_group"], "blue", "{s}");
    assert_eq!(requests(&topo, 20).len(), 2, "blue still serves");
    let r = d.ctl(&["switch", "web", "nosuch"]);
    assert_eq!(r.code, 1, "{r:?}");
    // --force does it all the same.
    d.ok_json(&["switch", "web", "green", "--force"]);
    assert_eq!(d.ok_json(&["status"])["services"][0]["eligible"], 0);
}

#[test]
fn a_lost_state_file_is_recovered_from_the_pinned_maps() {
    if !steer_tests::privileged("a_lost_state_file_is_recovered_from_the_pinned_maps") {
        return;
    }
    let topo = lab(3);
    let mut d = started(&topo, &web_config(&topo, &[0, 1, 2], None));
    wait_up(&d, &["b0", "b1", "b2"]);
    let mut conns = open_conns(&topo, 30);
    d.ok_json(&["drain", "b1"]);
    d.kill9();
    std::fs::remove_file(d.state_file()).unwrap();
    // And the backends listed in another order: ids come from the pinned maps, not the order.
    d.write_config(&web_config(&topo, &[2, 0, 1], None));
    d.start();
    assert!(
        d.log().contains("recovered from the pinned maps"),
        "says so"
    );
    assert_eq!(
        d.backend("b1")["admin"],
        "drain",
        "a drained backend stays drained"
    );
    all_alive(&mut conns, "after a restart without the state file");
    let served = requests(&topo, 40);
    assert!(!served.contains_key("b1"), "{served:?}");
}

#[test]
fn pinned_maps_of_another_size_are_refused_with_what_to_do() {
    if !steer_tests::privileged("pinned_maps_of_another_size_are_refused_with_what_to_do") {
        return;
    }
    let topo = lab(2);
    let mut d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_up(&d, &["b0", "b1"]);
    d.kill9();
    let cfg = format!("{}\n{}", d.daemon_table(), web_config(&topo, &[0, 1], None))
        .replace("max_flows = 65536", "max_flows = 131072");
    std::fs::write(&d.config, cfg).unwrap();
    let r = d.run_refused(T);
    assert_eq!(r.code, 78, "{r:?}");
    assert!(
        r.stderr.contains("max_flows asks for 131072")
            && r.stderr.contains("holds 65536")
            && r.stderr.contains("shutdown --detach"),
        "{r:?}"
    );
    assert_eq!(requests(&topo, 20).len(), 2, "traffic goes on meanwhile");
}

#[test]
fn pins_of_an_earlier_layout_are_replaced_not_fatal() {
    if !steer_tests::privileged("pins_of_an_earlier_layout_are_replaced_not_fatal") {
        return;
    }
    let topo = lab(2);
    let mut d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_up(&d, &["b0", "b1"]);
    d.kill9();
    // The pin directory as the version before the V2 layouts left it: the maps whose layout
    // changed under their V1 names, none of the NAT maps, the link still running.
    for (now, before) in [
        ("STEER_SVC_V3", "STEER_SVC_V1"),
        ("STEER_BE_V2", "STEER_BE_V1"),
        ("STEER_FLOWS_V2", "STEER_FLOWS_V1"),
        ("STEER_TRANS_V2", "STEER_TRANS_V1"),
        ("STEER_GSTAT_V2", "STEER_GSTAT_V1"),
    ] {
        std::fs::rename(d.pin_dir.join(now), d.pin_dir.join(before)).unwrap();
    }
    for gone in [
        "STEER_SVCI_V1",
        "STEER_SVCX_V1",
        "STEER_NAT_V1",
        "STEER_POOL_V2",
        "STEER_OBS_V1",
        "STEER_NEIGH_V1",
        "STEER_CFG_V1",
    ] {
        std::fs::remove_file(d.pin_dir.join(gone)).unwrap();
    }
    assert_eq!(
        requests(&topo, 20).len(),
        2,
        "the earlier datapath serves meanwhile"
    );
    d.start();
    wait_up(&d, &["b0", "b1"]);
    let log = d.log();
    assert!(
        log.contains("maps of an earlier layout are pinned here"),
        "{log}"
    );
    for before in steer_common::map::RETIRED {
        assert!(!d.pin_dir.join(before).exists(), "{before} is still pinned");
    }
    for now in steer_common::map::ALL {
        assert!(d.pin_dir.join(now).exists(), "{now} is not pinned");
    }
    assert_eq!(requests(&topo, 20).len(), 2, "the new datapath serves");
}

/// Creates a hash map (not preallocated, `entries` of them) and pins it at `path`, as a daemon
/// of another version would have.
fn pin_new_hash(
    path: &std::path::Path,
    name: &str,
    key_size: usize,
    value_size: usize,
    entries: u32,
) {
    #[repr(C)]
    #[derive(Default)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
        inner_map_fd: u32,
        numa_node: u32,
        map_name: [u8; 16],
        rest: [u32; 8],
    }
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_F_NO_PREALLOC: u32 = 1;
    let mut map_name = [0u8; 16];
    map_name[..name.len()].copy_from_slice(name.as_bytes());
    let attr = MapCreate {
        map_type: BPF_MAP_TYPE_HASH,
        key_size: key_size as u32,
        value_size: value_size as u32,
        max_entries: entries,
        map_flags: BPF_F_NO_PREALLOC,
        map_name,
        ..Default::default()
    };
    // SAFETY: a valid bpf_attr prefix for BPF_MAP_CREATE, its size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>(),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let pin = ObjPin {
        pathname: c_path.as_ptr() as u64,
        bpf_fd: fd as u32,
        file_flags: 0,
    };
    // SAFETY: a valid bpf_attr for BPF_OBJ_PIN; the path outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &pin as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        )
    };
    assert_eq!(r, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: the fd was returned above and is closed once (the pin keeps the map).
    unsafe { libc::close(fd as i32) };
}

/// Pins the services map as the version before `STEER_SVC_V3` had it (`STEER_SVC_V2`: key →
/// whole `Service`, not preallocated), filled from the current maps under `dir`, and removes
/// the current services maps' pins. Returns the map's size (`daemon.max_services`).
fn pin_services_as_v2(dir: &std::path::Path) -> u32 {
    use aya::maps::{Array, HashMap, Map, MapData};
    use steer_common::{map, Service, ServiceInfo, ServiceKey};
    let ids: HashMap<MapData, ServiceKey, u32> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(dir.join(map::SERVICES)).unwrap(),
    ))
    .unwrap();
    let info: Array<MapData, ServiceInfo> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join(map::SERVICE_INFO)).unwrap(),
    ))
    .unwrap();
    let entries: Vec<(ServiceKey, Service)> = ids
        .iter()
        .map(|r| {
            let (k, id) = r.unwrap();
            let i = info.get(&id, 0).unwrap();
            (k, i.copies[(i.live & 1) as usize])
        })
        .collect();
    assert!(!entries.is_empty(), "a service to carry over");
    let size = aya::maps::MapInfo::from_pin(dir.join(map::SERVICES))
        .unwrap()
        .max_entries();

    pin_new_hash(
        &dir.join("STEER_SVC_V2"),
        "STEER_SVC_V2",
        std::mem::size_of::<ServiceKey>(),
        std::mem::size_of::<Service>(),
        size,
    );
    let mut v2: HashMap<MapData, ServiceKey, Service> = HashMap::try_from(Map::HashMap(
        MapData::from_pin(dir.join("STEER_SVC_V2")).unwrap(),
    ))
    .unwrap();
    for (k, v) in &entries {
        v2.insert(k, v, 0).unwrap();
    }
    for now in [map::SERVICES, map::SERVICE_INDEX, map::SERVICE_INFO] {
        std::fs::remove_file(dir.join(now)).unwrap();
    }
    size
}

/// An upgrade from the layout whose services map held whole entries (`STEER_SVC_V2`): the new
/// daemon carries its services over, so their ids — which the pinned backends and flows name
/// — stay, and a connection open across the upgrade keeps its backend.
#[test]
fn an_upgrade_from_the_v2_services_map_keeps_the_services_and_their_flows() {
    if !steer_tests::privileged(
        "an_upgrade_from_the_v2_services_map_keeps_the_services_and_their_flows",
    ) {
        return;
    }
    let topo = lab(3);
    let mut d = started(&topo, &web_config(&topo, &[0, 1, 2], None));
    wait_up(&d, &["b0", "b1", "b2"]);
    let vip = std::net::SocketAddr::new(std::net::IpAddr::V4(addr::VIP), 80);
    let (conn, first) = topo.client.run(move || {
        let mut c = steer_tests::http::Conn::open(vip, Duration::from_secs(5)).expect("connect");
        let b = c.get().expect("request").backend;
        (c, b)
    });
    let flows = |d: &SteerDaemon| {
        d.ok_json(&["status"])["services"][0]["counters"]["new_flows"]
            .as_u64()
            .expect("a new_flows counter")
    };
    let before = flows(&d);
    assert!(before > 0, "the connection was counted");
    d.kill9();
    let size = pin_services_as_v2(&d.pin_dir);
    // An empty services map of this layout, as a first attempt at the upgrade that failed
    // after loading the datapath leaves it: the services are carried over all the same.
    pin_new_hash(
        &d.pin_dir.join(steer_common::map::SERVICES),
        steer_common::map::SERVICES,
        std::mem::size_of::<steer_common::ServiceKey>(),
        4,
        size,
    );
    d.start();
    let log = d.log();
    assert!(
        log.contains("maps of an earlier layout are pinned here"),
        "{log}"
    );
    assert!(
        !d.pin_dir.join("STEER_SVC_V2").exists(),
        "the V2 pin is removed"
    );
    for now in steer_common::map::ALL {
        assert!(d.pin_dir.join(now).exists(), "{now} is not pinned");
    }
    // A service given a new id starts its counters from zero.
    let after = flows(&d);
    assert!(
        after >= before,
        "the service keeps its id, and its counters: {after} new flows, {before} before"
    );
    let again = topo
        .client
        .run(move || {
            let mut conn = conn;
            conn.get()
        })
        .expect("the connection open across the upgrade still works");
    assert_eq!(again.backend, first, "and keeps its backend");
}

#[test]
fn a_restarted_daemon_does_not_put_a_dead_backend_back() {
    if !steer_tests::privileged("a_restarted_daemon_does_not_put_a_dead_backend_back") {
        return;
    }
    let mut topo = lab(2);
    let mut d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_up(&d, &["b0", "b1"]);
    topo.stop_http(1);
    wait_health(&d, "b1", "down");
    let load = Load::start(&topo);
    d.kill9();
    d.start();
    assert_eq!(d.backend("b1")["health"], "down", "adopted as it was");
    std::thread::sleep(Duration::from_millis(500)); // load runs across the restart
    let (served, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} refused: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert_eq!(served.keys().collect::<Vec<_>>(), ["b0"], "{served:?}");
}

#[test]
fn idle_control_and_metrics_connections_do_not_exhaust_the_daemon() {
    if !steer_tests::privileged("idle_control_and_metrics_connections_do_not_exhaust_the_daemon") {
        return;
    }
    let topo = lab(2);
    let mut d = SteerDaemon::new(&topo.lb);
    // As a daemon limited to 1,024 descriptors (the default soft limit).
    d.prefix = vec!["prlimit".into(), "--nofile=1024:1024".into()];
    d.write_config(&web_config(&topo, &[0, 1], None));
    d.start();
    wait_up(&d, &["b0", "b1"]);
    let load = Load::start(&topo);
    let control: Vec<_> = (0..3000)
        .map(|_| std::os::unix::net::UnixStream::connect(&d.socket))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("connecting to the control socket: {e}"));
    let port = d.metrics_port;
    let metrics: Vec<std::net::TcpStream> = d.ns.run(move || {
        (0..1100)
            .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).ok())
            .collect()
    });
    // Checks keep running meanwhile: both backends stay up through several rounds. The
    // socket may answer "busy" while the idle connections hold its slots (they are closed
    // after 2 s without a request), or refuse a connection while its backlog is full.
    let mut runs = None;
    let mut busy = 0;
    wait_for(
        "b0 to be checked 10 more times",
        Duration::from_secs(30),
        || {
            let r = d.ctl(&["--json", "status"]);
            // Busy, or the socket's backlog full for a moment (EAGAIN): both are 69.
            if r.code == 69 {
                busy += 1;
                return Err("busy".into());
            }
            assert_eq!(r.code, 0, "{r:?}");
            let s = r.json();
            let b = s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["name"] == "b0")
                .unwrap()
                .clone();
            assert_eq!(b["health"], "up", "{b}");
            let n = b["checks_run"].as_u64().unwrap();
            let from = *runs.get_or_insert(n);
            if n >= from + 10 {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    );
    eprintln!("status answered busy {busy} times during the flood");
    drop(control);
    drop(metrics);
    let (served, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} client connections failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert_eq!(served.len(), 2, "{served:?}");
    assert_eq!(d.backend("b1")["health"], "up");
    let log = d.log();
    assert!(
        log.lines().count() < 200,
        "the log stays readable: {} lines",
        log.lines().count()
    );
    // The flood's connections were just dropped: the metrics server may still hold their
    // slots for a moment (a scrape then is reset, and this test once failed on it). It must
    // serve again once they are gone.
    wait_for(
        "metrics to be served again after the flood",
        Duration::from_secs(10),
        || match d.try_scrape() {
            Ok(s) if s.contains("steer_backend_up") => Ok(()),
            Ok(s) => Err(s.chars().take(200).collect::<String>()),
            Err(e) => Err(e),
        },
    );
}

#[test]
fn the_socket_group_admits_supplementary_members_and_refuses_others_with_77() {
    if !steer_tests::privileged(
        "the_socket_group_admits_supplementary_members_and_refuses_others_with_77",
    ) {
        return;
    }
    let topo = lab(1);
    let mut d = SteerDaemon::new(&topo.lb);
    let cfg = format!(
        "{}socket_group = \"adm\"\n\n{}",
        d.daemon_table(),
        web_config(&topo, &[0], None)
    );
    std::fs::write(&d.config, cfg).unwrap();
    d.start();
    let as_nobody = |groups: &str| {
        let out = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                &format!("--groups={groups}"),
            ])
            .arg(steer_tests::daemon::steer_ctl_bin())
            .args(["--socket", d.socket.to_str().unwrap(), "status"])
            .output()
            .expect("setpriv");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The socket's directory must be reachable by others for this test.
    let _ = std::process::Command::new("chmod")
        .args(["755", d.dir.to_str().unwrap()])
        .status();
    let (code, err) = as_nobody("4");
    assert_eq!(
        code,
        Some(0),
        "a member of adm by a supplementary group: {err}"
    );
    let (code, err) = as_nobody("65534");
    assert_eq!(code, Some(77), "{err}");
    assert!(err.contains("permission denied"), "{err}");

    // `status | head -1` ends quietly (SIGPIPE), not with a panic.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{} --socket {} status | head -1; echo \"rc=${{PIPESTATUS:-}}\"",
            steer_tests::daemon::steer_ctl_bin().display(),
            d.socket.display()
        ))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    // Flags that mean nothing to the daemon are refused, not ignored.
    let r = d.ctl(&["--json", "daemon", "--config", d.config.to_str().unwrap()]);
    assert_eq!(r.code, 2, "{r:?}");
    let r = std::process::Command::new(steer_tests::daemon::steer_ctl_bin())
        .args(["--socket", "/tmp/elsewhere.sock", "daemon", "--config"])
        .arg(&d.config)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2), "{r:?}");
}

#[test]
fn ready_wait_healthy_on_a_dead_server_leaves_it_out_and_says_so() {
    if !steer_tests::privileged("ready_wait_healthy_on_a_dead_server_leaves_it_out_and_says_so") {
        return;
    }
    let mut topo = lab(3);
    let mut cfg = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", interval = \"500ms\", fastinterval = \"100ms\", downinterval = \"500ms\", timeout = \"500ms\", rise = 2, fall = 2 }}\n",
        addr::VIP
    );
    for (i, g) in [(0, "blue"), (1, "green"), (2, "green")] {
        cfg += &backend_toml(&topo, i, &format!("b{i}"), &format!("group = \"{g}\""));
    }
    let d = started(&topo, &cfg);
    wait_up(&d, &["b0", "b1", "b2"]);
    // A group is a target for every backend verb.
    let v = d.ok_json(&["drain", "green"]);
    assert_eq!(v["backends"], serde_json::json!(["b1", "b2"]), "{v}");
    d.ok_json(&["ready", "green"]);
    d.ok_json(&["maint", "green"]);
    d.ok_json(&["weight", "green", "2"]);
    assert_eq!(d.backend("b2")["weight"], 2);
    d.ok_json(&["ready", "green", "--wait-healthy", "--timeout", "10s"]);
    assert_eq!(d.backend("b1")["admin"], "ready");

    // b1's server dies while it is drained (a deploy's restart gone wrong): its last passing
    // check is stale, and ready --wait-healthy must not put it back.
    d.ok_json(&["drain", "b1"]);
    topo.stop_http(1);
    let load = Load::start(&topo);
    let r = d.ctl(&["ready", "b1", "--wait-healthy", "--timeout", "2s"]);
    assert_eq!(r.code, 75, "{r:?}");
    assert!(r.stderr.contains("left drain"), "says what it left: {r:?}");
    assert_eq!(d.backend("b1")["admin"], "drain", "left as it was");
    // From maint (checks paused) the same: back to maint on timeout.
    d.ok_json(&["maint", "b1"]);
    let r = d.ctl(&["ready", "b1", "--wait-healthy", "--timeout", "2s"]);
    assert_eq!(r.code, 75, "{r:?}");
    assert_eq!(d.backend("b1")["admin"], "maint");
    let (served, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed: {:?}",
        errors.len(),
        &errors[..errors.len().min(3)]
    );
    assert!(
        !served.contains_key("b1"),
        "a dead server never got a connection: {served:?}"
    );
}

#[test]
fn backends_without_a_mac_are_resolved_from_the_neighbour_table() {
    if !steer_tests::privileged("backends_without_a_mac_are_resolved_from_the_neighbour_table") {
        return;
    }
    let topo = lab(2);
    // The same config without `mac = …`: the daemon asks the kernel (ARP) for both at once.
    let cfg: String = web_config(&topo, &[0, 1], None)
        .lines()
        .filter(|l| !l.starts_with("mac = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!cfg.contains("mac ="));
    let d = started(&topo, &cfg);
    wait_up(&d, &["b0", "b1"]);
    let served = requests(&topo, 40);
    assert_eq!(served.len(), 2, "both resolved and serving: {served:?}");
}

/// Removes a pin directory (and what is pinned in it) when dropped.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = steer_ctl::datapath::unpin_all(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Below the daemon: a datapath loaded over a carried-over `STEER_SVC_V2` writes every service
/// change there too (the program attached before it reads that map until it is replaced) and
/// stops once `attached_everywhere`; and a service added while a service of an earlier config
/// is still in the map (until `clear_unused`) does not take its id, whose packets would read
/// the new service's settings.
#[test]
fn a_carried_over_v2_map_follows_changes_until_attached_and_pinned_ids_stay_taken() {
    use aya::maps::{HashMap, Map, MapData, MapError};
    use std::collections::BTreeMap;
    use steer_common::{Service, ServiceKey, FAMILY_V4, PROTO_TCP};
    use steer_ctl::{Balancer, Datapath, Options, ServiceSpec};
    if !steer_tests::privileged(
        "a_carried_over_v2_map_follows_changes_until_attached_and_pinned_ids_stay_taken",
    ) {
        return;
    }
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/steer-test-{}-v2", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _pins = PinDir(dir.clone());
    let opts = Options {
        max_flows: 4096,
        pin_dir: Some(dir.clone()),
        ..Options::default()
    };
    let vip = |last: u8| std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, last));
    let key = |last: u8| ServiceKey {
        addr: [10, 0, 0, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        port_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    {
        let mut bal = Balancer::new(Datapath::load(&opts).expect("load the datapath"));
        bal.add_service(ServiceSpec::tcp("a", vip(10), 80)).unwrap();
        bal.add_service(ServiceSpec::tcp("b", vip(11), 80)).unwrap();
        assert_eq!(
            bal.ids().0,
            BTreeMap::from([("a".into(), 0), ("b".into(), 1)])
        );
    }
    pin_services_as_v2(&dir);
    let v2 = || -> HashMap<MapData, ServiceKey, Service> {
        HashMap::try_from(Map::HashMap(
            MapData::from_pin(dir.join("STEER_SVC_V2")).unwrap(),
        ))
        .unwrap()
    };

    // A restart with a config of b and c: b keeps its id; a is still in the map.
    let mut bal = Balancer::new(Datapath::load(&opts).expect("load over the V2 pin"));
    assert_eq!(
        bal.datapath().service(&key(10)).unwrap().map(|s| s.id),
        Some(0),
        "a carried over"
    );
    bal.reserve_ids(BTreeMap::from([("b".into(), 1)]), BTreeMap::new());
    bal.add_service(ServiceSpec::tcp("b", vip(11), 80)).unwrap();
    bal.add_service(ServiceSpec::tcp("c", vip(12), 80)).unwrap();
    let ids = bal.ids().0;
    assert_eq!(ids["b"], 1, "b keeps its id");
    assert_eq!(ids["c"], 2, "c does not take a's id 0, still in the map");
    for k in [key(11), key(12)] {
        assert_eq!(
            v2().get(&k, 0).ok(),
            bal.datapath().service(&k).unwrap(),
            "the V2 map holds the live settings"
        );
    }
    bal.clear_unused().unwrap();
    assert!(
        matches!(v2().get(&key(10), 0), Err(MapError::KeyNotFound)),
        "a is gone from the V2 map too"
    );

    bal.datapath_mut().attached_everywhere();
    let before = v2().get(&key(12), 0).unwrap();
    // A backend joins: c's table is rebuilt and flipped.
    bal.add_backend(
        "c",
        steer_ctl::BackendSpec::new("c-a", vip(99), [2, 0xbe, 0, 0, 0, 99]),
    )
    .unwrap();
    let now = bal.datapath().service(&key(12)).unwrap().unwrap();
    assert_ne!(now, before, "c's settings changed");
    assert_eq!(
        v2().get(&key(12), 0).unwrap(),
        before,
        "once attached everywhere, the V2 map is left alone"
    );
}
