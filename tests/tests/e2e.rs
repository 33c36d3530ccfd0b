//! End to end: real TCP clients and HTTP servers in network namespaces, steered by the XDP
//! program attached in native mode to the LB's interface.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::programs::XdpMode;
use steer_common::outcome;
use steer_ctl::{BackendSpec, Balancer, Datapath, Options, ServiceSpec};
use steer_tests::{
    http,
    netns::{addr, wait_for, Topology, TopologySpec},
};

const HTTPD: &str = env!("CARGO_BIN_EXE_steer-httpd");

/// Loads the datapath, attaches it natively to the LB's eth0, and adds `web` on VIP:80 with
/// every backend of the topology.
fn steer_lb(topo: &Topology) -> Balancer {
    let backends: Vec<(String, IpAddr, [u8; 6])> = topo
        .backends
        .iter()
        .map(|b| (b.name.clone(), IpAddr::V4(b.addr), b.mac))
        .collect();
    let mut bal = topo.lb.run(move || {
        let mut dp = Datapath::load(&Options {
            max_services: 4,
            ..Options::default()
        })
        .expect("load the datapath");
        dp.attach("eth0", XdpMode::Driver)
            .expect("attach XDP (native) to the LB's eth0");
        Balancer::new(dp)
    });
    bal.add_service(ServiceSpec::tcp("web", IpAddr::V4(addr::VIP), 80))
        .unwrap();
    for (name, addr, mac) in backends {
        bal.add_backend("web", BackendSpec::new(&name, addr, mac))
            .unwrap();
    }
    bal
}

#[test]
fn http_requests_are_steered_by_xdp_dsr() {
    if !steer_tests::privileged("http_requests_are_steered_by_xdp_dsr") {
        return;
    }
    let mut topo = Topology::new(&TopologySpec {
        backends: 3,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    for i in 0..3 {
        topo.start_http(Path::new(HTTPD), i);
    }
    let bal = steer_lb(&topo);
    let link = topo.lb.ip(&["link", "show", "eth0"]);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "XDP is not attached in native mode: {link}"
    );

    let tx_before = topo.client.stat("eth0", "tx_packets");
    let vip = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
    let replies = topo.client.run(move || {
        (0..200)
            .map(|i| {
                http::get(vip, Duration::from_secs(5)).map_err(|e| format!("request {i}: {e}"))
            })
            .collect::<Vec<_>>()
    });
    let failures: Vec<&String> = replies.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} of 200 requests failed: {failures:?}",
        failures.len()
    );
    let mut served: BTreeMap<String, u64> = BTreeMap::new();
    for r in replies.iter().flatten() {
        assert_eq!(r.status, 200);
        *served.entry(r.backend.clone()).or_default() += 1;
    }
    println!("requests per backend: {served:?}");
    assert!(served.len() >= 2, "only {served:?} answered");

    // Every packet the client sent went through XDP to a backend, and was counted there.
    let names: Vec<String> = topo.backends.iter().map(|b| b.name.clone()).collect();
    let sent = wait_for(
        "per-backend packet counters to add up to the client's packets",
        Duration::from_secs(5),
        || {
            let sent = topo.client.stat("eth0", "tx_packets") - tx_before;
            let counted: u64 = names
                .iter()
                .map(|n| bal.backend_counters(n).unwrap().packets)
                .sum();
            if counted == sent {
                Ok(sent)
            } else {
                Err(format!("client sent {sent}, backends counted {counted}"))
            }
        },
    );
    println!("client sent {sent} packets, all counted on backends");
    for n in &names {
        let c = bal.backend_counters(n).unwrap();
        assert_eq!(
            c.new_flows,
            served.get(n).copied().unwrap_or(0),
            "backend {n}: SYNs counted vs requests it answered"
        );
    }
    let svc = bal.service_counters("web").unwrap();
    assert_eq!(svc.packets, sent, "service counter vs client packets");
    let outcomes = bal.datapath().outcomes().unwrap();
    assert_eq!(
        outcomes[outcome::TX_FORWARD as usize],
        sent,
        "forwarded outcome vs client packets"
    );
}
