//! The datapath under churn, end to end: connections that end without the LB seeing it, and
//! their client ports reused.

mod common;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
};

use common::*;
use steer_tests::{daemon::SteerDaemon, http::Conn, netns::addr};

const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(addr::VIP), 80);

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
