//! The datapath under churn, end to end: connections that end without the LB seeing it, and
//! their client ports reused.

mod common;

use std::io::{Read, Write};

use common::*;
use steer_tests::{
    daemon::SteerDaemon,
    http::Conn,
    netns::{addr, Topology},
};

#[test]
fn reused_ports_of_connections_reset_by_the_backend_never_reach_a_drained_backend() {
    if !steer_tests::privileged(
        "reused_ports_of_connections_reset_by_the_backend_never_reach_a_drained_backend",
    ) {
        return;
    }
    let mut topo = lab(2);
    let mut d = SteerDaemon::new(&topo.lb);
    d.write_config(&web_config(&topo, &[0, 1], None));
    d.start();
    wait_health(&d, "b0", "up");
    wait_health(&d, "b1", "up");
    // Connections from known ports, each answered once, then reset by its backend: the RST
    // goes straight to the client, so the LB's entries stay "established".
    let ports: Vec<u16> = (41_000..41_060).collect();
    let on: Vec<(u16, String)> = {
        let ports = ports.clone();
        topo.client.run(move || {
            ports
                .iter()
                .map(|&p| {
                    let mut c =
                        Conn::open_from(p, VIP, T).unwrap_or_else(|e| panic!("port {p}: {e}"));
                    let b = c.get().unwrap_or_else(|e| panic!("port {p}: {e}")).backend;
                    let mut s = c.stream().try_clone().unwrap();
                    s.write_all(b"GET /control/reset HTTP/1.1\r\nHost: steer\r\n\r\n")
                        .unwrap();
                    let mut buf = [0u8; 64];
                    let r = s.read(&mut buf);
                    assert!(
                        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
                            || matches!(r, Ok(0)),
                        "port {p}: expected a reset, got {r:?}"
                    );
                    (p, b)
                })
                .collect()
        })
    };
    let on_b0 = on.iter().filter(|(_, b)| b == "b0").count();
    assert!(on_b0 > 5, "some were on b0: {on:?}");
    // b0 is drained and its server stopped (a deploy); the same client ports connect again.
    d.ok_json(&["drain", "b0"]);
    topo.stop_http(0);
    let again: Vec<Result<String, String>> = topo.client.run(move || {
        ports
            .iter()
            .map(|&p| {
                let mut c = Conn::open_from(p, VIP, T).map_err(|e| format!("port {p}: {e}"))?;
                c.get()
                    .map(|r| r.backend)
                    .map_err(|e| format!("port {p}: {e}"))
            })
            .collect()
    });
    let failed: Vec<&String> = again.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:?}",
        failed.len(),
        again.len()
    );
    assert!(again.iter().all(|r| r.as_ref().is_ok_and(|b| b == "b1")));
    let s = d.ok_json(&["status"]);
    assert!(
        s["datapath"]["stale_syn"].as_u64().unwrap() >= on_b0 as u64,
        "counted: {}",
        s["datapath"]
    );
}

/// Sends `n` TCP SYNs to the VIP from random spoofed sources, from the calling thread's
/// namespace, through a raw socket.
fn spoofed_syns(n: usize, seed: u64) -> usize {
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr::VIP.octets()),
        },
        sin_zero: [0; 8],
    };
    let mut s = seed | 1;
    let mut sent = 0;
    for _ in 0..n {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        let src = [
            ((s >> 56) as u8).max(1),
            (s >> 48) as u8,
            (s >> 40) as u8,
            (s >> 32) as u8,
        ];
        let mut pkt = Vec::with_capacity(40);
        etherparse::PacketBuilder::ipv4(src, addr::VIP.octets(), 64)
            .tcp((s as u16) | 1024, 80, s as u32, 65_535)
            .syn()
            .write(&mut pkt, &[])
            .unwrap();
        // SAFETY: sending a buffer we own to a valid address.
        let r = unsafe {
            libc::sendto(
                fd,
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if r > 0 {
            sent += 1;
        }
    }
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(fd) };
    sent
}

/// A daemon over `web` (b0, b1) with a 4,096-flow table, and the long-lived connections that
/// landed on b0.
fn small_table_with_b0_connections(topo: &Topology) -> (SteerDaemon, Vec<(Conn, String)>) {
    let mut d = SteerDaemon::new(&topo.lb);
    let cfg = format!("{}\n{}", d.daemon_table(), web_config(topo, &[0, 1], None))
        .replace("max_flows = 65536", "max_flows = 4096");
    std::fs::write(&d.config, cfg).unwrap();
    d.start();
    wait_health(&d, "b0", "up");
    wait_health(&d, "b1", "up");
    let mut conns = open_conns(topo, 60);
    conns.retain(|(_, b)| b == "b0");
    (d, conns)
}

#[test]
fn a_spoofed_syn_flood_breaks_no_established_connection_of_a_drained_backend() {
    if !steer_tests::privileged(
        "a_spoofed_syn_flood_breaks_no_established_connection_of_a_drained_backend",
    ) {
        return;
    }
    let topo = lab(2);
    let (d, mut conns) = small_table_with_b0_connections(&topo);
    assert!(
        conns.len() >= 10,
        "enough connections on b0: {}",
        conns.len()
    );
    d.ok_json(&["drain", "b0"]);
    let load = Load::start(&topo);
    let flood = 10 * 4096;
    let sent = topo.client.run(move || spoofed_syns(flood, 0x5eed));
    assert!(sent >= flood * 99 / 100, "sent {sent} of {flood}");
    let (served, errors) = load.finish();
    let ok: u64 = served.values().sum();
    let failed = errors.len() as u64;
    let kept = conns.len();
    all_alive(&mut conns, "after a SYN flood of 10 x max_flows");
    let s = d.ok_json(&["status"]);
    println!(
        "flood: {sent} spoofed SYNs; established connections of the drained b0 kept: {kept} of {kept}; \
         legitimate new connections: {ok} ok, {failed} failed ({:.2} %); tables: {}",
        100.0 * ok as f64 / (ok + failed).max(1) as f64,
        s["flow_scan"]
    );
    assert!(
        failed * 100 <= (ok + failed),
        "legitimate connections must keep succeeding (>= 99 %): {ok} ok, {failed} failed: {:?}",
        &errors[..errors.len().min(3)]
    );
    assert!(
        !served.contains_key("b0"),
        "no new connection to a drained backend: {served:?}"
    );
}

#[test]
fn a_churn_of_short_connections_evicts_no_long_lived_one() {
    if !steer_tests::privileged("a_churn_of_short_connections_evicts_no_long_lived_one") {
        return;
    }
    let topo = lab(2);
    let (d, mut conns) = small_table_with_b0_connections(&topo);
    d.ok_json(&["drain", "b0"]);
    // Three times the table's capacity in short connections, each opened and closed.
    let n = 3 * 4096;
    let served = requests(&topo, n);
    assert_eq!(served.values().sum::<u64>(), n as u64);
    let kept = conns.len();
    all_alive(
        &mut conns,
        "after a churn of 3 x max_flows short connections",
    );
    let s = d.ok_json(&["status"]);
    println!(
        "churn: {n} short connections through a 4,096-flow table; long-lived connections of the drained b0 kept: {kept} of {kept}; flow_miss {}",
        s["datapath"]["flow_miss"]
    );
    assert_eq!(
        s["datapath"]["flow_miss"], 0,
        "no established entry was evicted"
    );
}

#[test]
fn drain_wait_right_after_an_unannounced_restart_does_not_wait_for_refused_attempts() {
    if !steer_tests::privileged(
        "drain_wait_right_after_an_unannounced_restart_does_not_wait_for_refused_attempts",
    ) {
        return;
    }
    let mut topo = lab(2);
    let mut d = SteerDaemon::new(&topo.lb);
    // Slow checks, so the restart below goes unnoticed by them: only its refused attempts remain.
    let cfg = web_config(&topo, &[0, 1], None).replace(
        "interval = \"500ms\", fastinterval = \"100ms\", downinterval = \"500ms\"",
        "interval = \"30s\", fastinterval = \"10s\", downinterval = \"30s\"",
    );
    d.write_config(&cfg);
    d.start();
    wait_health(&d, "b0", "up");
    let load = Load::start(&topo);
    // b0's server dies and comes back a moment later, unannounced: the attempts it refused
    // meanwhile stay in the table as SYN-only entries.
    topo.stop_http(0);
    std::thread::sleep(std::time::Duration::from_millis(300)); // the outage itself
    topo.start_http(std::path::Path::new(HTTPD), 0);
    let r = d.ctl(&["--json", "drain", "b0", "--wait", "--timeout", "20s"]);
    let (_, errors) = load.finish();
    assert_eq!(r.code, 0, "{r:?}");
    let v = r.json();
    println!(
        "drain --wait right after an unannounced restart: {} ms ({} connections refused during the outage)",
        v["waited_ms"],
        errors.len()
    );
    assert!(
        !errors.is_empty(),
        "the outage refused some attempts: the case under test"
    );
}
