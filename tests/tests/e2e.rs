//! End to end: real TCP clients and HTTP servers in network namespaces, steered by the XDP
//! program attached in native mode to the LB's interface.

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::programs::XdpMode;
use steer_common::{hash::flow_hash, outcome, FlowKey, PROTO_TCP};
use steer_ctl::{
    balancer::addr_bytes, AdminState as Admin, BackendSpec, Balancer, Datapath, Health, Options,
    Role, ServiceSpec,
};
use steer_tests::{
    http::{self, Conn},
    netns::{addr, wait_for, Topology, TopologySpec},
};

const HTTPD: &str = env!("CARGO_BIN_EXE_steer-httpd");
const T: Duration = Duration::from_secs(5);

/// Loads the datapath and attaches it natively to the LB's eth0.
fn load_lb(topo: &Topology) -> Balancer {
    topo.lb.run(move || {
        let mut dp = Datapath::load(&Options {
            max_services: 4,
            max_flows: 16_384,
            ..Options::default()
        })
        .expect("load the datapath");
        dp.attach("eth0", XdpMode::Driver)
            .expect("attach XDP (native) to the LB's eth0");
        Balancer::new(dp)
    })
}

/// Adds service `name` on `vip`:80 with backends `pool` (indexes into the topology) and an
/// optional maintenance backend.
fn add_service(
    bal: &mut Balancer,
    topo: &Topology,
    name: &str,
    vip: IpAddr,
    pool: &[usize],
    maint: Option<usize>,
) {
    bal.add_service(ServiceSpec::tcp(name, vip, 80)).unwrap();
    let v6 = vip.is_ipv6();
    let members = pool
        .iter()
        .map(|i| (*i, Role::Pool))
        .chain(maint.map(|i| (i, Role::Maintenance)));
    for (i, role) in members {
        let b = &topo.backends[i];
        let a = if v6 {
            IpAddr::V6(b.addr6)
        } else {
            IpAddr::V4(b.addr)
        };
        bal.add_backend(
            name,
            BackendSpec {
                role,
                ..BackendSpec::new(&format!("{name}-{}", b.name), a, b.mac)
            },
        )
        .unwrap();
    }
}

fn topology(backends: usize, vips: Vec<IpAddr>, ipv6: bool) -> Topology {
    let mut topo = Topology::new(&TopologySpec {
        backends,
        vips,
        ipv6,
    });
    for i in 0..backends {
        topo.start_http(Path::new(HTTPD), i);
    }
    topo
}

/// Sends `n` requests on new connections from the client; returns replies per backend, and
/// panics on the first failure.
fn requests(topo: &Topology, vip: IpAddr, n: usize) -> BTreeMap<String, u64> {
    let to = SocketAddr::new(vip, 80);
    topo.client.run(move || {
        let mut served = BTreeMap::new();
        for i in 0..n {
            let r = http::get(to, T).unwrap_or_else(|e| panic!("request {i} to {to}: {e}"));
            assert_eq!(r.status, 200);
            *served.entry(r.backend).or_default() += 1;
        }
        served
    })
}

/// Opens `n` kept-alive connections from the client; each has answered once.
fn open_conns(topo: &Topology, vip: IpAddr, n: usize) -> Vec<(Conn, String)> {
    let to = SocketAddr::new(vip, 80);
    topo.client.run(move || {
        (0..n)
            .map(|_| {
                let mut c = Conn::open(to, T).expect("connect");
                let r = c.get().expect("first request");
                (c, r.backend)
            })
            .collect()
    })
}

fn key_v4(sport: u16, vip: IpAddr) -> FlowKey {
    let (src, family) = addr_bytes(IpAddr::V4(addr::CLIENT));
    let (dst, _) = addr_bytes(vip);
    FlowKey {
        src,
        dst,
        sport_be: sport.to_be(),
        dport_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family,
        _pad: [0; 2],
    }
}

#[test]
fn http_requests_are_steered_by_xdp_dsr() {
    if !steer_tests::privileged("http_requests_are_steered_by_xdp_dsr") {
        return;
    }
    let topo = topology(3, vec![IpAddr::V4(addr::VIP)], false);
    let mut bal = load_lb(&topo);
    add_service(
        &mut bal,
        &topo,
        "web",
        IpAddr::V4(addr::VIP),
        &[0, 1, 2],
        None,
    );
    let link = topo.lb.ip(&["link", "show", "eth0"]);
    assert!(
        link.contains("prog/xdp") && !link.contains("xdpgeneric"),
        "XDP is not attached in native mode: {link}"
    );

    let tx_before = topo.client.stat("eth0", "tx_packets");
    let served = requests(&topo, IpAddr::V4(addr::VIP), 200);
    println!("requests per backend: {served:?}");
    assert!(served.len() >= 2, "only {served:?} answered");

    // Every packet the client sent went through XDP to a backend, and was counted there.
    let names: Vec<String> = topo
        .backends
        .iter()
        .map(|b| format!("web-{}", b.name))
        .collect();
    let sent = wait_for(
        "per-backend packet counters to add up to the client's packets",
        T,
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
    for (n, b) in names.iter().zip(&topo.backends) {
        let c = bal.backend_counters(n).unwrap();
        let answered = served.get(&b.name).copied().unwrap_or(0);
        assert_eq!(
            c.new_flows, answered,
            "backend {n}: new flows vs requests it answered"
        );
        assert_eq!(
            c.ended_flows, answered,
            "backend {n}: ended flows vs requests it answered"
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

#[test]
fn drained_backend_keeps_its_connections_and_gets_no_new_ones() {
    if !steer_tests::privileged("drained_backend_keeps_its_connections_and_gets_no_new_ones") {
        return;
    }
    let vip = IpAddr::V4(addr::VIP);
    let topo = topology(3, vec![vip], false);
    let mut bal = load_lb(&topo);
    add_service(&mut bal, &topo, "web", vip, &[0, 1, 2], None);
    let mut conns = open_conns(&topo, vip, 24);
    assert!(
        conns.iter().any(|(_, b)| b == "b0"),
        "no connection reached b0"
    );
    let on_b0 = conns.iter().filter(|(_, b)| b == "b0").count() as u64;
    wait_for("b0's connections to show as active", T, || {
        let n = bal.active_flows().unwrap()["web-b0"];
        if n == on_b0 {
            Ok(())
        } else {
            Err(format!("{n} active, {on_b0} open"))
        }
    });

    bal.set_admin("web-b0", Admin::Drain).unwrap();
    let conns = topo.client.run(move || {
        for (c, was) in conns.iter_mut() {
            let r = c
                .get()
                .unwrap_or_else(|e| panic!("connection on {was} broke after drain: {e}"));
            assert_eq!(&r.backend, was, "an established connection moved");
        }
        conns
    });
    let served = requests(&topo, vip, 60);
    assert!(
        !served.contains_key("b0"),
        "new connections reached the drained backend: {served:?}"
    );
    assert_eq!(
        bal.active_flows().unwrap()["web-b0"],
        on_b0,
        "drain --wait would see the open flows"
    );
    drop(conns); // the client closes: b0's flows end
    wait_for("b0's flows to end", T, || {
        let n = bal.active_flows().unwrap()["web-b0"];
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} still active"))
        }
    });
}

#[test]
fn rejected_backend_resets_established_connections_at_once() {
    if !steer_tests::privileged("rejected_backend_resets_established_connections_at_once") {
        return;
    }
    let vip = IpAddr::V4(addr::VIP);
    let topo = topology(3, vec![vip], false);
    let mut bal = load_lb(&topo);
    add_service(&mut bal, &topo, "web", vip, &[0, 1, 2], None);
    let conns = open_conns(&topo, vip, 24);
    bal.set_admin("web-b1", Admin::Reject).unwrap();
    let results = topo.client.run(move || {
        conns
            .into_iter()
            .map(|(mut c, was)| (was, c.get().map(|r| r.backend)))
            .collect::<Vec<_>>()
    });
    let mut reset = 0;
    for (was, r) in results {
        match (was.as_str(), r) {
            ("b1", Err(e)) => {
                assert_eq!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset,
                    "b1's connection failed by {e}, not a reset"
                );
                reset += 1;
            }
            ("b1", Ok(b)) => panic!("a connection on the rejected b1 still got an answer from {b}"),
            (_, Err(e)) => panic!("a connection on {was} failed: {e}"),
            (_, Ok(b)) => assert_eq!(b, was),
        }
    }
    assert!(reset > 0, "no connection was on b1");
    assert!(bal.backend_counters("web-b1").unwrap().rst_sent >= reset);
    let served = requests(&topo, vip, 40);
    assert!(
        !served.contains_key("b1"),
        "new connections reached the rejected backend: {served:?}"
    );
}

#[test]
fn maintenance_on_one_service_leaves_another_alone() {
    if !steer_tests::privileged("maintenance_on_one_service_leaves_another_alone") {
        return;
    }
    let (web, api) = (addr::vip(0), addr::vip(1));
    let mut topo = Topology::new(&TopologySpec {
        backends: 4,
        vips: vec![web, api],
        ipv6: false,
    });
    for i in 0..3 {
        topo.start_http(Path::new(HTTPD), i);
    }
    topo.start_http_named(Path::new(HTTPD), 3, "maint", "v1");
    let mut bal = load_lb(&topo);
    add_service(&mut bal, &topo, "web", web, &[0, 1, 2], Some(3));
    add_service(&mut bal, &topo, "api", api, &[0, 1, 2], None);
    let mut conns = open_conns(&topo, web, 6);

    bal.set_maintenance("web", true).unwrap();
    let served = requests(&topo, web, 30);
    assert_eq!(
        served.keys().collect::<Vec<_>>(),
        ["maint"],
        "web in maintenance: {served:?}"
    );
    let served = requests(&topo, api, 30);
    assert!(
        !served.contains_key("maint") && served.len() >= 2,
        "api must be untouched: {served:?}"
    );
    conns = topo.client.run(move || {
        for (c, was) in conns.iter_mut() {
            assert_eq!(
                &c.get()
                    .expect("established connection during maintenance")
                    .backend,
                was
            );
        }
        conns
    });
    bal.set_maintenance("web", false).unwrap();
    let served = requests(&topo, web, 30);
    assert!(!served.contains_key("maint"), "maintenance off: {served:?}");
    drop(conns);
}

#[test]
fn removing_and_adding_a_backend_breaks_no_other_connection() {
    if !steer_tests::privileged("removing_and_adding_a_backend_breaks_no_other_connection") {
        return;
    }
    let vip = IpAddr::V4(addr::VIP);
    let topo = topology(3, vec![vip], false);
    let mut bal = load_lb(&topo);
    add_service(&mut bal, &topo, "web", vip, &[0, 1, 2], None);
    let conns = open_conns(&topo, vip, 30);
    let b = &topo.backends[1];
    bal.remove_backend("web-b1").unwrap();
    let conns = topo.client.run(move || {
        conns
            .into_iter()
            .filter(|(_, was)| was != "b1")
            .map(|(mut c, was)| {
                let r = c.get().unwrap_or_else(|e| {
                    panic!("{was}'s connection broke when b1 was removed: {e}")
                });
                assert_eq!(r.backend, was);
                (c, was)
            })
            .collect::<Vec<_>>()
    });
    assert!(!requests(&topo, vip, 30).contains_key("b1"));
    bal.add_backend("web", BackendSpec::new("web-b1", IpAddr::V4(b.addr), b.mac))
        .unwrap();
    let kept = conns.len();
    topo.client.run(move || {
        for (mut c, was) in conns {
            let r = c
                .get()
                .unwrap_or_else(|e| panic!("{was}'s connection broke when b1 came back: {e}"));
            assert_eq!(
                r.backend, was,
                "an established connection moved when b1 came back"
            );
        }
    });
    assert!(
        kept >= 10,
        "too few connections survived to prove anything ({kept})"
    );
    assert!(
        requests(&topo, vip, 60).contains_key("b1"),
        "b1 takes new connections again"
    );
}

#[test]
fn syn_to_a_dead_backend_is_redispatched_when_it_is_marked_down() {
    if !steer_tests::privileged("syn_to_a_dead_backend_is_redispatched_when_it_is_marked_down") {
        return;
    }
    let vip = IpAddr::V4(addr::VIP);
    let mut topo = topology(3, vec![vip], false);
    let mut bal = load_lb(&topo);
    add_service(&mut bal, &topo, "web", vip, &[0, 1, 2], None);
    // b2 dies without a word: its server is gone and its link is down, so SYNs sent to it get
    // no RST, no SYN-ACK, nothing.
    topo.stop_http(2);
    topo.backends[2].ns.ip(&["link", "set", "eth0", "down"]);
    let table = bal.live_table("web").unwrap();
    let b2 = bal.backend_id("web-b2").unwrap();
    let ports: Vec<u16> = (20_000..40_000)
        .filter(|p| table[(flow_hash(&key_v4(*p, vip)) % table.len() as u32) as usize] == b2)
        .take(5)
        .collect();
    let to = SocketAddr::new(vip, 80);
    let client = topo.client.clone();
    let attempts = std::thread::spawn(move || {
        client.run(move || {
            let handles: Vec<_> = ports
                .into_iter()
                .map(|p| {
                    std::thread::spawn(move || {
                        let s = http::connect_from(p, to, Duration::from_secs(20))
                            .map_err(|e| format!("connect from port {p}: {e}"))?;
                        let mut c = Conn::from_stream(s);
                        c.get()
                            .map(|r| r.backend)
                            .map_err(|e| format!("request from port {p}: {e}"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    // The SYNs are pinned to b2 in the connection table; then the health check fails it.
    wait_for("the first SYNs to be pinned to b2", T, || {
        let n = bal.active_flows().unwrap()["web-b2"];
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n} of 5 pinned"))
        }
    });
    bal.set_health("web-b2", Health::Down).unwrap();
    let results = attempts.join().unwrap();
    for r in &results {
        let b = r.as_ref().unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(b, "b2");
    }
    assert!(bal.datapath().outcomes().unwrap()[steer_common::event::REDISPATCH as usize] >= 5);
}

#[test]
fn ipv6_requests_are_steered() {
    if !steer_tests::privileged("ipv6_requests_are_steered") {
        return;
    }
    let vip = IpAddr::V6(addr::VIP6);
    let topo = topology(3, vec![vip], true);
    let mut bal = load_lb(&topo);
    add_service(&mut bal, &topo, "web6", vip, &[0, 1, 2], None);
    let served = requests(&topo, vip, 100);
    println!("IPv6 requests per backend: {served:?}");
    assert!(served.len() >= 2, "only {served:?} answered");
    let conns = open_conns(&topo, vip, 12);
    bal.set_admin("web6-b0", Admin::Drain).unwrap();
    topo.client.run(move || {
        for (mut c, was) in conns {
            assert_eq!(c.get().expect("IPv6 connection after drain").backend, was);
        }
    });
    assert!(!requests(&topo, vip, 40).contains_key("b0"));
}
