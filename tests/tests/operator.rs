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
    // The metrics say the same, each family on its own.
    let m = d.scrape();
    let value = |series: &str| -> f64 {
        m.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{m}"))
    };
    assert_eq!(
        value("steer_backend_health_transitions_total{service=\"web\",backend=\"b1\",to=\"down\"}"),
        1.0
    );
    assert!(
        value("steer_backend_checks_total{service=\"web\",backend=\"b1\",result=\"failed\"}")
            >= 2.0
    );
    assert!(
        value("steer_backend_checks_total{service=\"web\",backend=\"b0\",result=\"ok\"}") >= 2.0
    );
    assert_eq!(
        value("steer_flow_table_capacity{table=\"established\"}"),
        65536.0
    );
    // Every packet under one outcome: forwarded ones at least as many as the backends counted.
    let outcomes: f64 = m
        .lines()
        .filter(|l| l.starts_with("steer_datapath_packets_total{outcome="))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    let forwarded: f64 = m
        .lines()
        .filter(|l| l.starts_with("steer_backend_packets_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!(
        forwarded > 0.0 && outcomes >= forwarded,
        "{outcomes} {forwarded}"
    );
    assert!(m
        .lines()
        .any(|l| l.starts_with("steer_build_info{version=")));

    // `show` answers with `ok` like every verb.
    assert_eq!(d.ok_json(&["show", "backends"])["ok"], true);
    assert_eq!(d.ok_json(&["show", "services"])["ok"], true);
    assert_eq!(d.ok_json(&["show", "flows"])["ok"], true);
}

/// The stats page as an operator sees it: served on the LB's own address (set explicitly),
/// opened from another host in a real Chromium the size of a phone; a `drain` shows on the
/// open page at its next refresh, without anyone reloading it.
#[test]
fn the_stats_page_shows_a_drain_at_its_next_refresh() {
    if !steer_tests::privileged("the_stats_page_shows_a_drain_at_its_next_refresh") {
        return;
    }
    use steer_tests::{browser::Browser, netns::addr};
    let topo = lab(2);
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(&web_config(&topo, &[0, 1], None));
    // The listen address an operator sets to reach the page from elsewhere.
    let cfg = std::fs::read_to_string(&d.config).unwrap().replace(
        "metrics = \"127.0.0.1:9469\"",
        &format!("metrics = \"{}:9469\"", addr::LB),
    );
    std::fs::write(&d.config, cfg).unwrap();
    d.start();
    wait_health(&d, "b0", "up");
    wait_health(&d, "b1", "up");

    let browser = Browser::start(&topo.client, 412, 915);
    let url = format!("http://{}:9469/stats", addr::LB);
    browser.open(&url);
    let state = |b: &Browser, name: &str| -> Result<String, String> {
        let v = b.eval(&format!(
            "const r = document.getElementById('backend-{name}'); return r ? r.dataset.state : null;"
        ))?;
        v.as_str()
            .map(String::from)
            .ok_or_else(|| format!("no row for {name} in the page"))
    };
    assert_eq!(state(&browser, "b0").as_deref(), Ok("up"));
    assert_eq!(state(&browser, "b1").as_deref(), Ok("up"));
    // Readable on a phone: nothing wider than the screen, the rows laid out as cards.
    let width = browser
        .eval("return [document.documentElement.scrollWidth, window.innerWidth]")
        .unwrap();
    assert_eq!(width[1], 412, "the emulated screen");
    assert!(
        width[0].as_u64().unwrap() <= 412,
        "the page is wider than the screen: {width}"
    );
    let head = browser
        .eval("return getComputedStyle(document.querySelector('thead')).display")
        .unwrap();
    assert_eq!(head, "none", "the table head gives way to labelled cards");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(shots.join("stats-page-ready.png"), browser.screenshot()).unwrap();

    // The page refreshes itself: the drain shows without the test navigating.
    let loads = browser.eval("return performance.timeOrigin").unwrap();
    d.ok_json(&["drain", "b0"]);
    let refresh = Duration::from_secs(steer_ctl::stats::REFRESH_S as u64);
    let start = Instant::now();
    wait_for(
        "the open page to show b0 draining",
        refresh * 2 + Duration::from_secs(5),
        || match state(&browser, "b0") {
            Ok(s) if s == "drain" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let took = start.elapsed();
    assert_ne!(
        browser.eval("return performance.timeOrigin").unwrap(),
        loads,
        "the page was loaded again by its own refresh"
    );
    let text = browser
        .eval("return document.getElementById('backend-b0').innerText")
        .unwrap();
    let text = text.as_str().unwrap();
    assert!(
        text.contains("draining") && text.contains("admin ready → drain"),
        "{text}"
    );
    std::fs::write(shots.join("stats-page-drain.png"), browser.screenshot()).unwrap();
    eprintln!(
        "b0 shown draining {} ms after the drain (refresh every {} s); screenshots in {}",
        took.as_millis(),
        refresh.as_secs(),
        shots.display()
    );

    // The same listener: metrics at /metrics, anything else 404.
    let metrics = topo.client.run(move || {
        ureq::get(&format!("http://{}:9469/metrics", addr::LB))
            .call()
            .map_err(|e| e.to_string())
            .map(|r| r.into_string().unwrap())
    });
    assert!(metrics.unwrap().contains("steer_build_info{"));
    let missing = topo.client.run(move || {
        match ureq::get(&format!("http://{}:9469/nothing", addr::LB)).call() {
            Err(ureq::Error::Status(code, _)) => code,
            Ok(r) => r.status(),
            Err(e) => panic!("{e}"),
        }
    });
    assert_eq!(missing, 404);
}

/// What systemd's `Type=notify` relies on: READY=1 once the datapath is attached and the
/// socket answers, a status line, RELOADING=1 around a reload, and a refused reload that
/// makes `steer-ctl reload` (the unit's ExecReload) exit non-zero with the running config
/// kept.
#[test]
fn the_service_manager_is_told_ready_and_a_bad_reload_fails() {
    if !steer_tests::privileged("the_service_manager_is_told_ready_and_a_bad_reload_fails") {
        return;
    }
    use std::os::unix::net::UnixDatagram;
    let mut topo = lab(1);
    let mut d = SteerDaemon::new(&topo.lb);
    let sock_path = d.dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(T)).unwrap();
    // The next notification that is not a bare status update (those come whenever the
    // status line changes: a check result may land between any two steps).
    let next = || -> String {
        let mut buf = [0u8; 4096];
        loop {
            let n = sock
                .recv(&mut buf)
                .expect("a notification within the deadline");
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !m.starts_with("STATUS=") {
                return m;
            }
        }
    };
    let status_until = |want: &str| {
        let mut buf = [0u8; 4096];
        loop {
            let n = sock
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no status {want:?} within the deadline: {e}"));
            if String::from_utf8_lossy(&buf[..n]) == want {
                return;
            }
        }
    };
    d.env
        .push(("NOTIFY_SOCKET".into(), sock_path.display().to_string()));
    d.write_config(&web_config(&topo, &[0], None));
    d.start();
    let ready = next();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    assert!(
        ready
            .lines()
            .any(|l| l.starts_with("STATUS=1 services, 1 backends")),
        "{ready}"
    );
    let pid = ready
        .lines()
        .find_map(|l| l.strip_prefix("MAINPID="))
        .expect("MAINPID");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .unwrap()
            .trim(),
        "steer-ctl"
    );
    // The socket answered before READY was sent: `start` waited for it, and READY came.
    assert_eq!(d.ctl(&["status"]).code, 0);

    // A broken config: the reload is refused, the verb fails, the running config stays.
    let good = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{good}\n[[service]]\nname = \n")).unwrap();
    let r = d.ctl(&["reload"]);
    assert_eq!(r.code, 78, "{r:?}");
    assert!(r.stderr.contains("steer.toml:"), "says where: {r:?}");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    let after = next();
    assert!(after.starts_with("READY=1\nSTATUS=1 services"), "{after}");
    assert!(after.contains("; last reload refused: "), "{after}");
    assert_eq!(after.lines().count(), 2, "one line per assignment: {after}");
    assert_eq!(d.ok_json(&["status"])["services"][0]["name"], "web");
    let served = requests(&topo, 5);
    assert_eq!(served.get("b0"), Some(&5), "{served:?}");

    // The config repaired: the reload goes through and READY says so.
    std::fs::write(&d.config, &good).unwrap();
    assert_eq!(d.ctl(&["reload"]).code, 0);
    assert!(next().starts_with("RELOADING=1"));
    let after = next();
    assert!(after.starts_with("READY=1\nSTATUS=1 services"), "{after}");
    assert!(
        !after.contains("refused"),
        "a good reload clears the note: {after}"
    );

    // The status line follows the daemon: the server stopped, the line says it is down.
    topo.stop_http(0);
    wait_health(&d, "b0", "down");
    status_until("STATUS=1 services, 1 backends (0 in tables, 1 down) on eth0");
}

/// `state` says what a backend does, not only its admin state and health: a healthy ready
/// backend of the group not switched to, or of a service in maintenance, takes no new flow.
#[test]
fn state_tells_standby_backends_from_serving_ones() {
    if !steer_tests::privileged("state_tells_standby_backends_from_serving_ones") {
        return;
    }
    let topo = lab(3);
    let cfg = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", path = \"/\", interval = \"500ms\", fastinterval = \"100ms\", timeout = \"500ms\", rise = 1, fall = 1 }}\n\n{}{}{}",
        steer_tests::netns::addr::VIP,
        backend_toml(&topo, 0, "b0", "group = \"blue\""),
        backend_toml(&topo, 1, "b1", "group = \"green\""),
        backend_toml(&topo, 2, "sorry", "role = \"maintenance\""),
    );
    let d = started(&topo, &cfg);
    for b in ["b0", "b1", "sorry"] {
        wait_health(&d, b, "up");
    }
    let states = |d: &SteerDaemon| -> Vec<String> {
        ["b0", "b1", "sorry"]
            .iter()
            .map(|b| d.backend(b)["state"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(states(&d), ["up", "up", "standby"]);
    d.ok_json(&["switch", "web", "green"]);
    assert_eq!(states(&d), ["standby", "up", "standby"]);
    let served = requests(&topo, 10);
    assert_eq!(served.get("b1"), Some(&10), "{served:?}");
    d.ok_json(&["maintenance", "web", "on"]);
    assert_eq!(states(&d), ["standby", "standby", "serving"]);
    d.ok_json(&["maintenance", "web", "off"]);
    d.ok_json(&["drain", "b1"]);
    assert_eq!(states(&d), ["standby", "draining", "standby"]);
}
