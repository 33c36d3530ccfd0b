//! What an operator looks at during a deploy, through the real binary: `show`/`status` with
//! time in state, check failures and rates; the metrics families; the stats page in a real
//! browser; the daemon's readiness notification to its service manager.

mod common;

use std::time::{Duration, Instant};

use common::*;
use steer_tests::{daemon::SteerDaemon, netns::wait_for};

fn started(topo: &steer_tests::netns::Topology, cfg: &str) -> SteerDaemon {
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(cfg);
    d.start();
    d
}

#[test]
fn status_tells_time_in_state_check_failures_and_rates() {
    if !steer_tests::privileged("status_tells_time_in_state_check_failures_and_rates") {
        return;
    }
    let mut topo = lab(2);
    let d = started(&topo, &web_config(&topo, &[0, 1], None));
    wait_health(&d, "b0", "up");
    wait_health(&d, "b1", "up");
    let b0 = d.backend("b0");
    assert_eq!(b0["last_change"], "health unknown → up: ok", "{b0}");
    assert_eq!(b0["went_up"], 1, "{b0}");

    // A server that stops: its checks fail, it goes down, and the change says why.
    topo.stop_http(1);
    wait_health(&d, "b1", "down");
    let b1 = d.backend("b1");
    let change = b1["last_change"].as_str().unwrap();
    assert!(change.starts_with("health up → down: "), "{b1}");
    assert_eq!(b1["went_down"], 1, "{b1}");
    // fall = 2: two failed checks at least took it down.
    assert!(b1["check_failures"].as_u64().unwrap() >= 2, "{b1}");
    assert!(b1["last_change_ms"].as_u64().unwrap() < 10_000, "{b1}");

    // An operator's drain is a change of its own, and time in state starts again.
    let before = d.backend("b0")["last_change_ms"].as_u64().unwrap();
    d.ok_json(&["drain", "b0"]);
    let b0 = d.backend("b0");
    assert_eq!(b0["last_change"], "admin ready → drain", "{b0}");
    assert!(b0["last_change_ms"].as_u64().unwrap() <= before, "{b0}");
    d.ok_json(&["ready", "b0"]);
    assert_eq!(d.backend("b0")["last_change"], "admin drain → ready");

    // Rates: 40 connections between two reads at least a second apart.
    d.ok_json(&["status"]);
    let start = Instant::now();
    let served = requests(&topo, 40);
    assert_eq!(served.get("b0"), Some(&40), "{served:?}");
    wait_for("a second since the first read", T, || {
        if start.elapsed() >= Duration::from_millis(1100) {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    });
    let s = d.ok_json(&["status"]);
    let window = s["rate_window_ms"].as_f64().expect("a rate window") / 1000.0;
    let svc = s["services"][0]["rate"]["new_flows_per_s"]
        .as_f64()
        .unwrap();
    let be = s["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "b0")
        .unwrap()["rate"]["new_flows_per_s"]
        .as_f64()
        .unwrap();
    assert_eq!((svc * window).round(), 40.0, "{s}");
    assert_eq!((be * window).round(), 40.0, "{s}");

    // The text table has the columns.
    let r = d.ctl(&["show", "backends"]);
    assert_eq!(r.code, 0, "{r:?}");
    let head = r.stdout.lines().nth(1).unwrap();
    for col in ["GROUP", "SINCE", "NEW/S", "FAILS", "DOWNS"] {
        assert!(head.contains(col), "{head}");
    }
    // `show` answers with `ok` like every verb.
    assert_eq!(d.ok_json(&["show", "backends"])["ok"], true);
    assert_eq!(d.ok_json(&["show", "services"])["ok"], true);
    assert_eq!(d.ok_json(&["show", "flows"])["ok"], true);
}
