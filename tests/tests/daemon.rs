//! The real `steer-ctl daemon` in a namespace topology, driven through the real binary: verbs
//! with --json and exit codes, health checks, drain --wait, kill -9 and adoption, reload under
//! load, metrics.

mod common;

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use common::*;

use steer_tests::{
    daemon::SteerDaemon,
    http::Conn,
    netns::{addr, wait_for},
};

#[test]
fn verbs_health_checks_and_metrics_through_the_binary() {
    if !steer_tests::privileged("verbs_health_checks_and_metrics_through_the_binary") {
        return;
    }
    let mut topo = lab(4);
    topo.start_http_named(Path::new(HTTPD), 3, "maint", "v1");
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(&web_config(&topo, &[0, 1, 2], Some(3)));
    let check = d.ctl(&[
        "--json",
        "config",
        "check",
        "--config",
        d.config.to_str().unwrap(),
    ]);
    assert_eq!(check.code, 0, "{check:?}");
    assert_eq!(check.json()["services"], 1);
    d.start();
    let mut tally = BTreeMap::new();
    for b in ["b0", "b1", "b2", "maint"] {
        wait_for(&format!("a passing check of {b}"), T, || {
            let v = d.backend(b);
            if v["check"] == "ok" && v["health"] == "up" {
                Ok(())
            } else {
                Err(v.to_string())
            }
        });
    }
    let s = d.ok_json(&["status"]);
    assert_eq!(s["services"][0]["eligible"], 3, "{s}");
    let served = counted(&topo, &mut tally, 60);
    assert!(
        served.len() >= 2 && !served.contains_key("maint"),
        "{served:?}"
    );

    // Admin verbs, each with --json.
    let v = d.ok_json(&["drain", "b0"]);
    assert_eq!(
        (v["ok"].as_bool(), v["admin"].as_str()),
        (Some(true), Some("drain"))
    );
    assert_eq!(d.backend("b0")["admin"], "drain");
    assert!(
        !counted(&topo, &mut tally, 40).contains_key("b0"),
        "drained b0 got new connections"
    );
    let v = d.ok_json(&["ready", "b0", "--wait-healthy", "--timeout", "10s"]);
    assert_eq!(v["health"], "up");
    d.ok_json(&["maint", "b1"]);
    let runs = d.backend("b1")["checks_run"].as_u64().unwrap();
    assert_eq!(d.backend("b1")["admin"], "maint");
    d.ok_json(&["reject", "b2"]);
    assert_eq!(d.backend("b2")["admin"], "reject");
    let served = counted(&topo, &mut tally, 30);
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["b0"],
        "only b0 is ready: {served:?}"
    );
    // Checks of a backend in maint are paused: b0's keep running meanwhile.
    let b0_runs = d.backend("b0")["checks_run"].as_u64().unwrap();
    wait_for("b0 to be checked 3 more times", T, || {
        let n = d.backend("b0")["checks_run"].as_u64().unwrap();
        if n >= b0_runs + 3 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    assert!(
        d.backend("b1")["checks_run"].as_u64().unwrap() <= runs + 1,
        "maint backends are not checked"
    );
    d.ok_json(&["ready", "b1"]);
    d.ok_json(&["ready", "b2"]);
    let v = d.ok_json(&["weight", "b0", "0"]);
    assert_eq!(v["weight"], 0);
    assert!(
        !counted(&topo, &mut tally, 40).contains_key("b0"),
        "weight 0 takes b0 out"
    );
    d.ok_json(&["weight", "b0", "1"]);
    let v = d.ok_json(&["maintenance", "web", "on"]);
    assert_eq!(v["maintenance"], true);
    assert_eq!(
        counted(&topo, &mut tally, 20).keys().collect::<Vec<_>>(),
        ["maint"]
    );
    d.ok_json(&["maintenance", "web", "off"]);
    assert!(!counted(&topo, &mut tally, 20).contains_key("maint"));
    let flows = d.ok_json(&["show", "flows", "--limit", "5"]);
    assert_eq!(
        flows["flows"].as_array().map(|a| a.len()),
        Some(5),
        "{flows}"
    );

    // Failures and their exit codes.
    let r = d.ctl(&["--json", "drain", "nope"]);
    assert_eq!(r.code, 1, "{r:?}");
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("no backend or group named \"nope\""),
        "{r:?}"
    );
    let r = std::process::Command::new(steer_tests::daemon::steer_ctl_bin())
        .args(["--socket", "/nonexistent/steer.sock", "status"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(69), "daemon unreachable: {r:?}");
    let r = d.ctl(&["drain"]);
    assert_eq!(r.code, 2, "usage: {r:?}");

    // Health: a stopped server goes down after `fall` failures and comes back after `rise`.
    topo.stop_http(2);
    let b = wait_health(&d, "b2", "down");
    assert_eq!(b["check"], "refused", "{b}");
    assert!(!counted(&topo, &mut tally, 30).contains_key("b2"));
    topo.start_http(Path::new(HTTPD), 2);
    wait_health(&d, "b2", "up");
    // A server answering 503 is down.
    topo.stop_http(1);
    topo.spawn_server_on(
        1,
        Path::new(HTTPD),
        &["--name", "b1", "--listen", "[::]:80", "--status", "503"],
    );
    let b = wait_health(&d, "b1", "down");
    assert_eq!(b["check"], "status 503", "{b}");
    // A server failing every other check never goes down with fall = 2.
    topo.start_http(Path::new(HTTPD), 1);
    wait_health(&d, "b1", "up");
    let b1 = SocketAddr::new(IpAddr::V4(topo.backends[1].addr), 80);
    topo.client.run(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(b1).expect("b1 directly");
        s.write_all(b"GET /control/flap HTTP/1.1\r\nHost: b1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
    });
    let from = d.backend("b1")["checks_run"].as_u64().unwrap();
    let mut saw_503 = false;
    wait_for("b1 to be checked 12 more times, never down", T, || {
        let b = d.backend("b1");
        assert_eq!(b["health"], "up", "a flapping backend went down: {b}");
        saw_503 |= b["check"] == "status 503";
        let n = b["checks_run"].as_u64().unwrap();
        if n >= from + 12 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    assert!(saw_503, "b1 did flap (some checks failed)");

    // Metrics: per-backend new flows match what the client saw (checks do not cross XDP).
    let status = d.ok_json(&["status"]);
    let metrics = d.scrape();
    for b in status["backends"].as_array().unwrap() {
        let name = b["name"].as_str().unwrap();
        let line = format!(
            "steer_backend_new_flows_total{{service=\"web\",backend=\"{name}\"}} {}",
            b["counters"]["new_flows"]
        );
        assert!(metrics.contains(&line), "missing {line:?} in:\n{metrics}");
    }
    assert!(
        metrics.contains("steer_backend_up{service=\"web\",backend=\"b0\"} 1"),
        "{metrics}"
    );
    // Maintenance survives a daemon restart (its backend is in place before it is applied).
    d.ok_json(&["maintenance", "web", "on"]);
    d.kill9();
    d.start();
    assert_eq!(d.ok_json(&["status"])["services"][0]["maintenance"], true);
    assert_eq!(
        counted(&topo, &mut tally, 10).keys().collect::<Vec<_>>(),
        ["maint"]
    );
    d.ok_json(&["maintenance", "web", "off"]);
    d.ctl(&["shutdown", "--detach"]);
    assert_eq!(d.wait_exit(T), 0);
    assert!(!d.pin_dir.exists(), "shutdown --detach removes the pins");
    let link = topo.lb.ip(&["link", "show", "eth0"]);
    assert!(
        !link.contains("prog/xdp"),
        "shutdown --detach removes the program: {link}"
    );
}

#[test]
fn drain_wait_returns_when_the_flows_end_and_times_out_with_75() {
    if !steer_tests::privileged("drain_wait_returns_when_the_flows_end_and_times_out_with_75") {
        return;
    }
    let topo = lab(3);
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(&web_config(&topo, &[0, 1, 2], None));
    d.start();
    for b in ["b0", "b1", "b2"] {
        wait_health(&d, b, "up");
    }
    let r = d.ok_json(&["drain", "b2", "--wait", "--timeout", "5s"]);
    assert_eq!(r["active_flows"], 0, "no flows: returns at once ({r})");
    d.ok_json(&["ready", "b2"]);

    // Five long-lived connections on b0 (and one on b1).
    let to = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
    let conns = topo.client.run(move || {
        let (mut on_b0, mut on_b1) = (Vec::new(), Vec::new());
        while on_b0.len() < 5 || on_b1.is_empty() {
            let mut c = Conn::open(to, T).expect("connect");
            match c.get().expect("request").backend.as_str() {
                "b0" if on_b0.len() < 5 => on_b0.push(c),
                "b1" if on_b1.is_empty() => on_b1.push(c),
                _ => {}
            }
        }
        (on_b0, on_b1)
    });
    let (b0_conns, b1_conns) = conns;
    let r = d.ctl(&["drain", "b1", "--wait", "--timeout", "1s"]);
    assert_eq!(
        r.code, 75,
        "drain --wait with an open flow and a short timeout: {r:?}"
    );
    assert!(r.stderr.contains("b1: 1 active flows"), "progress: {r:?}");
    d.ok_json(&["ready", "b1"]);

    let mut drain = std::process::Command::new(steer_tests::daemon::steer_ctl_bin())
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "drain",
            "b0",
            "--wait",
            "--timeout",
            "60s",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run drain");
    // Its progress, line by line, as it prints it.
    let progress = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let (p, err) = (progress.clone(), drain.stderr.take().unwrap());
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut p = p.lock().unwrap();
                p.push_str(&l);
                p.push('\n');
            }
        })
    };
    wait_for("drain to count b0's 5 open flows", T, || {
        let p = progress.lock().unwrap().clone();
        if p.contains("b0: 5 active flows") {
            Ok(())
        } else {
            Err(p)
        }
    });
    // The scans drain --wait asked for ran rounds of the established table's presence filter:
    // it is in use, and its rounds move on (a scan never waits for one).
    let first = presence_rounds(&d);
    assert!(
        first.2,
        "the daemon's scans made the presence filter valid: {first:?}"
    );
    wait_for("another presence round done", T, || {
        match presence_rounds(&d) {
            r if r.1 != first.1 => Ok(()),
            r => Err(format!("{r:?}")),
        }
    });
    // The connections keep working while drain waits; then the client closes them.
    let b0_conns = topo.client.run(move || {
        let mut b0_conns = b0_conns;
        for c in &mut b0_conns {
            assert_eq!(
                c.get()
                    .expect("a drained backend's connection keeps working")
                    .backend,
                "b0"
            );
        }
        b0_conns
    });
    assert!(
        drain.try_wait().unwrap().is_none(),
        "drain --wait returned while 5 flows were open"
    );
    drop(b0_conns);
    let out = drain.wait_with_output().unwrap();
    reader.join().unwrap();
    let stderr = progress.lock().unwrap().clone();
    assert_eq!(out.status.code(), Some(0), "{out:?} {stderr}");
    assert!(
        stderr.contains("b0: 5 active flows"),
        "progress lines: {stderr}"
    );
    drop(b1_conns);
}

#[test]
fn kill_9_loses_no_request_and_a_new_daemon_adopts_the_pins() {
    if !steer_tests::privileged("kill_9_loses_no_request_and_a_new_daemon_adopts_the_pins") {
        return;
    }
    let topo = lab(3);
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(&web_config(&topo, &[0, 1, 2], None));
    d.start();
    // A fresh start knows no health until the first checks: wait for them.
    for b in ["b0", "b1", "b2"] {
        wait_health(&d, b, "up");
    }
    d.ok_json(&["drain", "b1"]);
    let long = topo.client.run(|| {
        let mut c = Conn::open(SocketAddr::new(IpAddr::V4(addr::VIP), 80), T).expect("connect");
        let b = c.get().expect("request").backend;
        (c, b)
    });
    let load = Load::start(&topo);
    wait_for("some load", T, || {
        let n = d.ok_json(&["status"])["services"][0]["counters"]["new_flows"]
            .as_u64()
            .unwrap();
        if n > 50 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    d.kill9();
    // No daemon: traffic goes on with the last state.
    let during = requests(&topo, 100);
    assert!(
        !during.contains_key("b1"),
        "b1 stays drained without a daemon: {during:?}"
    );
    d.start();
    assert!(
        d.log().contains("adopted"),
        "the new daemon adopts the pins:\n{}",
        d.log()
    );
    let (served, errors) = load.finish();
    assert!(
        errors.is_empty(),
        "{} requests failed across kill -9 and restart: {errors:?}",
        errors.len()
    );
    assert!(served.values().sum::<u64>() > 50);
    assert_eq!(
        d.backend("b1")["admin"],
        "drain",
        "admin state survives the restart"
    );
    let flows = d.ok_json(&["show", "flows", "--limit", "100000"]);
    let flows = flows["flows"].as_array().unwrap();
    assert!(
        flows.len() > 100,
        "the connection table survived: {} flows",
        flows.len()
    );
    let (mut c, was) = long;
    let again = topo.client.run(move || c.get().map(|r| r.backend));
    assert_eq!(
        again.expect("a connection open across the restart still works"),
        was
    );
}

#[test]
fn reload_under_load_and_a_broken_config_is_refused() {
    if !steer_tests::privileged("reload_under_load_and_a_broken_config_is_refused") {
        return;
    }
    let topo = lab(4);
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(&web_config(&topo, &[0, 1, 2], None));
    d.start();
    for b in ["b0", "b1", "b2"] {
        wait_health(&d, b, "up");
    }
    let load = Load::start(&topo);
    wait_for("some load", T, || {
        let n = d.ok_json(&["status"])["services"][0]["counters"]["new_flows"]
            .as_u64()
            .unwrap();
        if n > 30 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    // Add b3 (with no MAC in the config: the daemon finds it in the neighbour table), remove b2.
    let without_mac = web_config(&topo, &[0, 1], None)
        + &format!(
            "[[service.backend]]\nname = \"b3\"\naddress = \"{}\"\n",
            topo.backends[3].addr
        );
    d.write_config(&without_mac);
    let r = d.ok_json(&["reload"]);
    assert_eq!(r["ok"], true);
    wait_health(&d, "b3", "up");
    wait_for("b3 to take connections", T, || {
        let n = d.backend("b3")["counters"]["new_flows"].as_u64().unwrap();
        if n > 5 {
            Ok(())
        } else {
            Err(n.to_string())
        }
    });
    // A broken config is refused with where it is broken; the running one stays.
    std::fs::write(
        &d.config,
        format!(
            "{}\n[[service]]\nname = \"web\"\nvip = \"10.99.1.1\"\nport = \"eighty\"\n",
            d.daemon_table()
        ),
    )
    .unwrap();
    let r = d.ctl(&["reload"]);
    assert_eq!(r.code, 78, "{r:?}");
    let file = d.config.display().to_string();
    assert!(
        r.stderr.contains(&format!("{file}:13:8:")),
        "file:line:column in {r:?}"
    );
    let (served, errors) = load.finish();
    // The only request that may fail is one in flight to b2 at the instant it was removed (its
    // flow is then reset, as for `reject`).
    assert!(
        errors.len() <= 1
            && errors
                .iter()
                .all(|e| e.kind() == io::ErrorKind::ConnectionReset),
        "failures: {errors:?}"
    );
    assert!(served.contains_key("b3"), "{served:?}");
    let after = requests(&topo, 40);
    assert!(!after.contains_key("b2") && after.len() >= 2, "{after:?}");
    assert_eq!(
        d.ok_json(&["status"])["backends"].as_array().unwrap().len(),
        3
    );
}

/// `(stamp, done, valid)` of the pinned presence filter (`steer_common::presence`).
fn presence_rounds(d: &SteerDaemon) -> (u8, u8, bool) {
    use aya::maps::{Array, Map, MapData};
    use steer_common::presence::{DONE, STAMP, VALID};
    let m = MapData::from_pin(d.pin_dir.join(steer_common::map::PRESENCE))
        .expect("pinned presence filter");
    let a: Array<MapData, [u8; 64]> = Array::try_from(Map::Array(m)).expect("an array");
    let l = a.get(&0, 0).expect("line 0");
    (l[STAMP], l[DONE], l[VALID] != 0)
}
