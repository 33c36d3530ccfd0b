//! Helpers shared by the daemon test files: configs, a lab of backends, client load.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use steer_tests::{
    daemon::SteerDaemon,
    http::{self, Conn},
    netns::{addr, wait_for, Topology, TopologySpec},
};

pub const HTTPD: &str = env!("CARGO_BIN_EXE_steer-httpd");
pub const T: Duration = Duration::from_secs(10);

pub fn backend_toml(topo: &Topology, i: usize, name: &str, extra: &str) -> String {
    let b = &topo.backends[i];
    format!(
        "[[service.backend]]\nname = \"{name}\"\naddress = \"{}\"\nmac = \"{}\"\n{extra}\n",
        b.addr,
        addr::mac_str(addr::backend_host(i))
    )
}

/// `web` on the VIP with pool backends `pool` and, if given, a maintenance backend; fast checks.
pub fn web_config(topo: &Topology, pool: &[usize], maint: Option<usize>) -> String {
    let mut s = format!(
        "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n\
         check = {{ type = \"http\", path = \"/\", interval = \"500ms\", fastinterval = \"100ms\", downinterval = \"500ms\", timeout = \"500ms\", rise = 2, fall = 2 }}\n\n",
        addr::VIP
    );
    for &i in pool {
        s += &backend_toml(topo, i, &format!("b{i}"), "");
    }
    if let Some(i) = maint {
        s += &backend_toml(topo, i, "maint", "role = \"maintenance\"");
    }
    s
}

pub fn lab(backends: usize) -> Topology {
    let mut topo = Topology::new(&TopologySpec {
        backends,
        vips: vec![IpAddr::V4(addr::VIP)],
        ipv6: false,
    });
    for i in 0..backends {
        topo.start_http(Path::new(HTTPD), i);
    }
    topo
}

pub fn requests(topo: &Topology, n: usize) -> BTreeMap<String, u64> {
    let to = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
    topo.client.run(move || {
        let mut served = BTreeMap::new();
        for i in 0..n {
            let r = http::get(to, T).unwrap_or_else(|e| panic!("request {i}: {e}"));
            *served.entry(r.backend).or_default() += 1;
        }
        served
    })
}

/// `requests`, adding who answered to `tally`.
pub fn counted(
    topo: &Topology,
    tally: &mut BTreeMap<String, u64>,
    n: usize,
) -> BTreeMap<String, u64> {
    let served = requests(topo, n);
    for (b, k) in &served {
        *tally.entry(b.clone()).or_default() += k;
    }
    served
}

pub fn wait_health(d: &SteerDaemon, name: &str, want: &str) -> serde_json::Value {
    wait_for(&format!("{name} to be {want}"), T, || {
        let b = d.backend(name);
        if b["health"] == want {
            Ok(b)
        } else {
            Err(format!("{b}"))
        }
    })
}

/// Requests answered per backend, and the requests that failed.
pub type Tally = (BTreeMap<String, u64>, Vec<io::Error>);

/// Steady load of new connections from the client until stopped; counts what happened.
pub struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Tally>>,
}

impl Load {
    pub fn start(topo: &Topology) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let (s, client) = (stop.clone(), topo.client.clone());
        let to = SocketAddr::new(IpAddr::V4(addr::VIP), 80);
        let handle = std::thread::spawn(move || {
            client.run(move || {
                let mut served = BTreeMap::new();
                let mut errors = Vec::new();
                while !s.load(Ordering::Relaxed) {
                    match http::get(to, T) {
                        Ok(r) => *served.entry(r.backend).or_default() += 1,
                        Err(e) => errors.push(e),
                    }
                }
                (served, errors)
            })
        });
        Load {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

pub const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(addr::VIP), 80);

/// Opens `n` kept-alive connections from the client and makes one request on each; returns
/// them with the backend that answered.
pub fn open_conns(topo: &Topology, n: usize) -> Vec<(Conn, String)> {
    topo.client.run(move || {
        (0..n)
            .map(|i| {
                let mut c = Conn::open(VIP, T).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let r = c
                    .get()
                    .unwrap_or_else(|e| panic!("request on connection {i}: {e}"));
                (c, r.backend)
            })
            .collect()
    })
}

/// Every connection still answers, by the same backend.
pub fn all_alive(conns: &mut [(Conn, String)], when: &str) {
    for (i, (c, b)) in conns.iter_mut().enumerate() {
        let r = c
            .get()
            .unwrap_or_else(|e| panic!("{when}: connection {i} (on {b}) broke: {e}"));
        assert_eq!(&r.backend, b, "{when}: connection {i} moved");
    }
}
