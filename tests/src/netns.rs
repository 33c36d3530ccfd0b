//! Network-namespace topologies for end-to-end tests and the demo.
//!
//! ```text
//!   client ──┐                    ┌── backend 0 (VIP on lo)
//!            ├── bridge (switch) ─┼── backend 1 (VIP on lo)
//!   lb (XDP)─┘                    └── …
//! ```
//!
//! Every node is a namespace with one interface, `eth0`, whose peer sits on a bridge in a switch
//! namespace, so nothing touches the host's own namespace and several topologies (with the same
//! addresses) can run side by side. Names are unique per process and call; `Topology` deletes
//! every namespace it made, and stops every process it started, when dropped — also on panic.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::Path,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Prefix of every namespace this module creates; `cleanup_stale` removes leftovers by it.
pub const NS_PREFIX: &str = "steer-t";

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{args:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A MAC address as `ip` writes it (`02:99:00:00:00:07`).
pub fn mac_string(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// `ip [-n NS] neigh replace ADDR lladdr MAC dev DEV nud permanent`: a neighbour entry that no
/// ARP or NDP exchange changes (in namespace `ns`, or this process's own).
pub fn set_neighbour(ns: Option<&Netns>, dev: &str, addr: &str, mac: [u8; 6]) {
    let mac = mac_string(mac);
    let mut v = vec!["ip"];
    if let Some(ns) = ns {
        v.extend_from_slice(&["-n", &ns.name]);
    }
    v.extend_from_slice(&[
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
    sh(&v);
}

/// A network namespace, by name (`/run/netns/NAME`).
#[derive(Clone, Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    fn create(name: String) -> Netns {
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS…`
    pub fn ip(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    /// A permanent neighbour entry on `dev` (`set_neighbour`).
    pub fn neighbour(&self, dev: &str, addr: &str, mac: [u8; 6]) {
        set_neighbour(Some(self), dev, addr, mac);
    }

    /// Runs a command inside the namespace (`ip netns exec`, which also gives it this
    /// namespace's /sys).
    pub fn exec(&self, args: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(args);
        sh(&v)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")]);
    }

    /// A `Command` that runs `program` in this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets it opens and
    /// interfaces it names are this namespace's.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Reads one of `eth0`'s statistics (e.g. `tx_packets`).
    pub fn stat(&self, iface: &str, name: &str) -> u64 {
        let s = self.exec(&["cat", &format!("/sys/class/net/{iface}/statistics/{name}")]);
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("bad statistic {name} of {iface}: {s:?}"))
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns {path}: {}", std::io::Error::last_os_error());
    }
}

/// Addresses of a topology. Every topology uses the same ones: they live in its own namespaces.
pub mod addr {
    use super::*;

    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    pub const LB: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 3);
    /// The router of `Topology::add_ecmp`, between the client and the LB hosts.
    pub const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 4);

    /// Host number of LB host `k`: 3 for the first (`Topology::lb`), then 5, 6, … (the
    /// router is 4, backends from 10).
    pub fn lb_host(k: usize) -> u8 {
        if k == 0 {
            3
        } else {
            4 + k as u8
        }
    }

    pub fn lb(k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, lb_host(k))
    }
    /// First service VIP; service `i` has `10.99.1.(1+i)`.
    pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 99, 1, 1);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);
    pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 3);
    pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 1, 0, 0, 0, 0, 1);

    /// Host number of backend `i` (client 2, LB 3).
    pub fn backend_host(i: usize) -> u8 {
        10 + i as u8
    }

    pub fn backend(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 99, 0, backend_host(i))
    }

    pub fn backend6(i: usize) -> Ipv6Addr {
        Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, backend_host(i) as u16)
    }

    /// The MAC given to the node with host number `host`.
    pub fn mac(host: u8) -> [u8; 6] {
        [0x02, 0x99, 0, 0, 0, host]
    }

    pub fn mac_str(host: u8) -> String {
        super::mac_string(mac(host))
    }

    pub fn vip(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 99, 1, 1 + i as u8))
    }
}

/// One backend node.
pub struct BackendNode {
    pub ns: Netns,
    pub name: String,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub mac: [u8; 6],
}

/// What to build.
#[derive(Clone, Debug)]
pub struct TopologySpec {
    pub backends: usize,
    /// VIPs each backend holds on its loopback (for DSR).
    pub vips: Vec<IpAddr>,
    /// Give every node IPv6 addresses; without it, IPv6 is disabled on the nodes' links, so a
    /// client sends nothing the test did not ask for.
    pub ipv6: bool,
}

impl Default for TopologySpec {
    fn default() -> Self {
        TopologySpec {
            backends: 3,
            vips: vec![IpAddr::V4(addr::VIP), IpAddr::V6(addr::VIP6)],
            ipv6: true,
        }
    }
}

/// A client, an LB and backends on one bridge, torn down on drop.
pub struct Topology {
    pub switch: Netns,
    pub client: Netns,
    pub lb: Netns,
    /// The LB hosts after `lb` (`add_ecmp`), hosts 5, 6, …
    pub more_lbs: Vec<Netns>,
    /// The router spreading the VIPs over the LB hosts (`add_ecmp`).
    pub router: Option<Netns>,
    pub backends: Vec<BackendNode>,
    id: String,
    namespaces: Vec<Netns>,
    children: Vec<Child>,
    /// `steer-httpd` of each backend, by backend index.
    servers: std::collections::BTreeMap<usize, Child>,
    peer_prog: Option<aya::Ebpf>,
    /// The same for the further LB hosts' peers.
    more_peer_progs: Vec<aya::Ebpf>,
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Topology {
    pub fn new(spec: &TopologySpec) -> Topology {
        let id = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut t = Topology {
            switch: Netns {
                name: String::new(),
            },
            client: Netns {
                name: String::new(),
            },
            lb: Netns {
                name: String::new(),
            },
            more_lbs: Vec::new(),
            router: None,
            backends: Vec::new(),
            id: id.clone(),
            namespaces: Vec::new(),
            children: Vec::new(),
            servers: Default::default(),
            peer_prog: None,
            more_peer_progs: Vec::new(),
        };
        // From here on, a panic drops `t`, which deletes whatever was made.
        t.switch = t.ns(format!("{id}-sw"));
        t.switch.ip(&["link", "add", "br0", "type", "bridge"]);
        t.switch.ip(&["link", "set", "br0", "up"]);

        t.client = t.node(&id, "c", 2, spec.ipv6);
        t.lb = t.node(&id, "lb", 3, spec.ipv6);
        for i in 0..spec.backends {
            let host = addr::backend_host(i);
            let ns = t.node(&id, &format!("b{i}"), host, spec.ipv6);
            for vip in spec.vips.iter().filter(|v| spec.ipv6 || v.is_ipv4()) {
                let cidr = match vip {
                    IpAddr::V4(v) => format!("{v}/32"),
                    IpAddr::V6(v) => format!("{v}/128"),
                };
                ns.ip(&["addr", "add", &cidr, "dev", "lo"]);
            }
            // Backends know the client's MAC, as the client knows the LB's: the client sends
            // nothing a test did not ask for (tests count its packets).
            ns.neighbour("eth0", &addr::CLIENT.to_string(), addr::mac(2));
            if spec.ipv6 {
                ns.neighbour("eth0", &addr::CLIENT6.to_string(), addr::mac(2));
            }
            // Hold the VIP without answering ARP for it or using it as an ARP source.
            for iface in ["all", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{iface}.arp_ignore"), "1");
                ns.sysctl(&format!("net.ipv4.conf.{iface}.arp_announce"), "2");
            }
            t.backends.push(BackendNode {
                ns,
                name: format!("b{i}"),
                addr: addr::backend(i),
                addr6: addr::backend6(i),
                mac: addr::mac(host),
            });
        }

        // The client reaches the VIPs through the LB; its checksums are complete (as from a
        // real NIC), because XDP_TX forwards the frame as it is.
        // The LB's MAC is fixed, so the client never needs to ask for it.
        t.client
            .ip(&["route", "add", "10.99.1.0/24", "via", &addr::LB.to_string()]);
        t.client
            .neighbour("eth0", &addr::LB.to_string(), addr::mac(3));
        if spec.ipv6 {
            let lb6 = addr::LB6.to_string();
            t.client
                .ip(&["-6", "route", "add", "fd00:99:1::/64", "via", &lb6]);
            t.client.neighbour("eth0", &lb6, addr::mac(3));
        }
        t.client.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        // Native XDP_TX on a veth is delivered promptly only to a peer with an XDP program.
        t.peer_prog = Some(t.switch.run(|| crate::aux::attach_pass("p-lb")));
        t
    }

    /// Puts a router (host 4) between the client and `1 + extra` LB hosts (`lb`, then hosts 5,
    /// 6, …, all on the bridge with the backends), as in front of a fleet: the client reaches the
    /// VIPs through the router, whose route to them has one next hop per LB host and hashes on
    /// the 5-tuple (`fib_multipath_hash_policy=1`). A next hop whose neighbour entry fails
    /// (`fib_multipath_use_neigh=1`, ARP timers of a few hundred ms) is skipped, so an LB host
    /// whose link is cut loses its flows to the others within about two seconds. IPv4.
    pub fn add_ecmp(&mut self, extra: usize) {
        self.add_router(extra, true);
    }

    /// `add_ecmp`, with the router's multipath route only when `static_route` (without it, a
    /// routing protocol is to install the routes to the VIPs).
    pub fn add_router(&mut self, extra: usize, static_route: bool) {
        let id = self.id.clone();
        let router = self.node(&id, "r", 4, false);
        for k in 1..=extra {
            let lb = self.node(&id, &format!("lb{k}"), addr::lb_host(k), false);
            self.more_lbs.push(lb);
            let peer = format!("p-lb{k}");
            let prog = self.switch.run(move || crate::aux::attach_pass(&peer));
            self.more_peer_progs.push(prog);
        }
        // A frame for a host whose port went down is not flooded to the other LB hosts (a
        // switch floods unknown unicast; the bridge learned the cut host's MAC on its port):
        // steer's XDP, on a veth that hands it every frame, would take a flooded frame for
        // the cut host and mask the router's own failover, which is what is under test.
        for k in 0..=extra {
            let port = if k == 0 {
                "p-lb".to_string()
            } else {
                format!("p-lb{k}")
            };
            self.switch
                .exec(&["bridge", "link", "set", "dev", &port, "flood", "off"]);
        }
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        router.sysctl("net.ipv4.fib_multipath_use_neigh", "1");
        // The client and the LB hosts share its link: no redirects sending the client past it.
        for iface in ["all", "eth0"] {
            router.sysctl(&format!("net.ipv4.conf.{iface}.send_redirects"), "0");
        }
        for (k, v) in [
            ("base_reachable_time_ms", "1000"),
            ("delay_first_probe_time", "1"),
            ("retrans_time_ms", "100"),
            ("ucast_solicit", "2"),
            ("mcast_solicit", "2"),
        ] {
            router.sysctl(&format!("net.ipv4.neigh.eth0.{k}"), v);
        }
        let mut route = vec!["route".to_string(), "add".into(), "10.99.1.0/24".into()];
        for k in 0..=extra {
            route.extend(["nexthop".into(), "via".into(), addr::lb(k).to_string()]);
        }
        let route: Vec<&str> = route.iter().map(String::as_str).collect();
        if static_route {
            router.ip(&route);
        }
        // Frames the LB hosts forward from XDP must carry complete checksums, as from a NIC.
        router.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        for iface in ["all", "eth0"] {
            self.client
                .sysctl(&format!("net.ipv4.conf.{iface}.accept_redirects"), "0");
        }
        self.client.ip(&[
            "route",
            "replace",
            "10.99.1.0/24",
            "via",
            &addr::ROUTER.to_string(),
        ]);
        self.client
            .neighbour("eth0", &addr::ROUTER.to_string(), addr::mac(4));
        self.router = Some(router);
    }

    /// A further host on the bridge (10.99.0.HOST, IPv4 only), for a service the test runs
    /// (etcd, say).
    pub fn add_host(&mut self, role: &str, host: u8) -> Netns {
        let id = self.id.clone();
        self.node(&id, role, host, false)
    }

    /// Every LB host: `lb`, then those `add_ecmp` added.
    pub fn lbs(&self) -> Vec<&Netns> {
        std::iter::once(&self.lb).chain(&self.more_lbs).collect()
    }

    fn ns(&mut self, name: String) -> Netns {
        let ns = Netns::create(name);
        self.namespaces.push(ns.clone());
        ns
    }

    /// Takes the `XDP_PASS` program off the LB's peer veth (`p-lb`). Only frames the LB sends
    /// with `XDP_TX` need it; every frame the LB's kernel sends would pay for it (veth then
    /// runs it on each, copying those with too little headroom), so a lab whose balancer never
    /// sends from XDP does without.
    pub fn detach_peer_pass(&mut self) {
        self.peer_prog = None;
    }

    /// A namespace with `eth0` on the bridge, addresses 10.99.0.HOST/24 and fd00:99::HOST/64.
    fn node(&mut self, id: &str, role: &str, host: u8, ipv6: bool) -> Netns {
        let ns = self.ns(format!("{id}-{role}"));
        let peer = format!("p-{role}");
        // No IPv6 autoconfiguration: no router solicitations, no DAD, no link-local address.
        ns.sysctl("net.ipv6.conf.all.accept_ra", "0");
        ns.sysctl("net.ipv6.conf.default.accept_ra", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.addr_gen_mode", "1");
        if !ipv6 {
            ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        }
        self.switch.ip(&[
            "link",
            "add",
            &peer,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns.name,
            "address",
            &addr::mac_str(host),
        ]);
        self.switch
            .ip(&["link", "set", &peer, "master", "br0", "up"]);
        ns.ip(&["addr", "add", &format!("10.99.0.{host}/24"), "dev", "eth0"]);
        if ipv6 {
            let a = format!("fd00:99::{host:x}/64");
            ns.ip(&["addr", "add", &a, "dev", "eth0", "nodad"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
        ns
    }

    /// Starts `steer-httpd` on backend `i`, listening on port 80 of every address, and waits
    /// until it is bound.
    pub fn start_http(&mut self, httpd: &Path, i: usize) {
        let name = self.backends[i].name.clone();
        self.start_http_named(httpd, i, &name, "v1");
    }

    /// Starts `steer-httpd` on backend `i` answering as `name` and `version`.
    pub fn start_http_named(&mut self, httpd: &Path, i: usize, name: &str, version: &str) {
        let args = ["--name", name, "--version", version, "--listen", "[::]:80"];
        self.spawn_server_on(i, httpd, &args);
    }

    /// Starts `program ARGS…` as backend `i`'s server, stopping the one it had first.
    pub fn spawn_server_on(&mut self, i: usize, program: &Path, args: &[&str]) {
        self.stop_http(i);
        let ns = self.backends[i].ns.clone();
        let child = self.spawn(&ns, program, args);
        self.servers.insert(i, child);
    }

    /// Stops backend `i`'s server (SIGKILL: no goodbye to its clients).
    pub fn stop_http(&mut self, i: usize) {
        if let Some(mut c) = self.servers.remove(&i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a server process in `ns` and waits until it prints `listening`; it is stopped when
    /// the topology drops.
    pub fn spawn_server(&mut self, ns: &Netns, program: &Path, args: &[&str]) {
        let child = self.spawn(ns, program, args);
        self.children.push(child);
    }

    fn spawn(&mut self, ns: &Netns, program: &Path, args: &[&str]) -> Child {
        spawn_listening(ns, program, args)
    }
}

/// Starts `program ARGS…` in `ns` and waits until it prints `listening` (10 s at most).
pub fn spawn_listening(ns: &Netns, program: &Path, args: &[&str]) -> Child {
    let mut child = ns
        .command(program.to_str().expect("utf-8 path"))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program:?} in {}: {e}", ns.name));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(l) if l.starts_with("listening") => child,
        Ok(l) => {
            let _ = child.kill();
            panic!("{program:?} in {} did not start: {l:?}", ns.name)
        }
        Err(_) => {
            let _ = child.kill();
            panic!(
                "{program:?} in {} did not report listening in 10 s",
                ns.name
            )
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.peer_prog = None;
        self.more_peer_progs.clear();
        for c in self.children.iter_mut().chain(self.servers.values_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes namespaces left by test processes that no longer run (killed before their guards
/// could drop). Returns how many were removed.
pub fn cleanup_stale() -> usize {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return 0;
    };
    let mut n = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: u32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if pid != 0 && Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if Command::new("ip")
            .args(["netns", "del", name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            n += 1;
        }
    }
    n
}

/// Polls `cond` every few milliseconds until it returns `Ok` or `timeout` passes; the panic
/// then says what `cond` last reported.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match cond() {
            Ok(v) => return v,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Addresses of a NAT topology (`NatTopology`). The client's link is the DSR topology's.
pub mod nat_addr {
    use super::*;

    /// The LB's address on the backends' link when it has a link of its own (two arms).
    pub const LB_BACK: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
    pub const LB_BACK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x97, 0, 0, 0, 0, 0, 1);
    /// The subnet behind the router, and the router's address in it.
    pub const ROUTED_NET: &str = "10.98.0.0/24";
    pub const ROUTED_NET6: &str = "fd00:98::/64";
    pub const ROUTER_IN: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 1);
    pub const ROUTER_IN6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, 1);
    /// The router's host number on the backends' link.
    pub const ROUTER_HOST: u8 = 254;
}

/// What a `NatTopology` holds.
#[derive(Clone, Debug)]
pub struct NatSpec {
    /// Clients on the LB's `eth0` and backends on its `eth1` (two links, XDP on both);
    /// otherwise one interface, `eth0`, for both.
    pub two_arms: bool,
    /// Backends on the LB's backend-facing link: `b0`, `b1`, …
    pub local: usize,
    /// Backends in another subnet behind a router namespace, numbered after the local ones.
    pub routed: usize,
}

/// One backend of a NAT topology: unmodified (no VIP, no ARP sysctls), its default route
/// through the router, never through the LB.
pub struct NatBackend {
    pub ns: Netns,
    pub name: String,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    /// Behind the router, in `nat_addr::ROUTED_NET`.
    pub routed: bool,
}

impl NatBackend {
    pub fn ip(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.addr6)
        } else {
            IpAddr::V4(self.addr)
        }
    }
}

/// A NAT lab, torn down on drop (namespaces, and every server started in it):
///
/// ```text
///   one arm:   client ─┐                       two arms:  client ── br0 ── lb eth0
///              lb eth0 ─┼─ br0 ─┬─ b0, b1, …                          lb eth1 ── br1 ─┬─ b0, b1, …
///              router ──┘       │                                     router ─────────┘
///              router ── br2 ── bR, …  (10.98.0.0/24)                 router ── br2 ── bR, …
/// ```
///
/// The client routes the VIPs (10.99.1.0/24, fd00:99:1::/64) through the LB; the LB routes
/// the routed subnet through the router; every backend's default route is the router. Veths
/// as PLATFORM.md says: TX checksum offload off where frames XDP forwards are sent (client,
/// backends, router), and an XDP program (NAPI) on the peers of the LB's interfaces, so that
/// `XDP_TX` and `XDP_REDIRECT` deliver.
pub struct NatTopology {
    pub switch: Netns,
    pub client: Netns,
    pub lb: Netns,
    pub router: Netns,
    pub backends: Vec<NatBackend>,
    /// The LB's XDP interfaces: `eth0`, and `eth1` with two arms.
    pub interfaces: Vec<String>,
    namespaces: Vec<Netns>,
    servers: std::collections::BTreeMap<usize, Child>,
    peer_progs: Vec<aya::Ebpf>,
}

impl NatTopology {
    pub fn new(spec: &NatSpec) -> NatTopology {
        let id = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let blank = || Netns {
            name: String::new(),
        };
        let mut t = NatTopology {
            switch: blank(),
            client: blank(),
            lb: blank(),
            router: blank(),
            backends: Vec::new(),
            interfaces: vec!["eth0".into()],
            namespaces: Vec::new(),
            servers: Default::default(),
            peer_progs: Vec::new(),
        };
        // From here on, a panic drops `t`, which deletes whatever was made.
        t.switch = t.ns(format!("{id}-sw"));
        let bridges = if spec.two_arms {
            &["br0", "br1", "br2"][..]
        } else {
            &["br0", "br2"][..]
        };
        for br in bridges {
            t.switch.ip(&["link", "add", br, "type", "bridge"]);
            t.switch.ip(&["link", "set", br, "up"]);
        }
        // The backends' link: the client's (one arm) or the LB's second one.
        let (back_br, back4, back6) = if spec.two_arms {
            ("br1", "10.97.0", "fd00:97:")
        } else {
            ("br0", "10.99.0", "fd00:99:")
        };

        t.client = t.node(format!("{id}-c"));
        t.link(
            &t.client,
            "eth0",
            "c",
            "br0",
            "10.99.0.2/24",
            "fd00:99::2/64",
        );
        t.client
            .ip(&["route", "add", "10.99.1.0/24", "via", &addr::LB.to_string()]);
        t.client.ip(&[
            "-6",
            "route",
            "add",
            "fd00:99:1::/64",
            "via",
            &addr::LB6.to_string(),
        ]);

        t.lb = t.node(format!("{id}-lb"));
        t.link(&t.lb, "eth0", "lb0", "br0", "10.99.0.3/24", "fd00:99::3/64");
        if spec.two_arms {
            let (a4, a6) = (nat_addr::LB_BACK, nat_addr::LB_BACK6);
            t.link(
                &t.lb,
                "eth1",
                "lb1",
                "br1",
                &format!("{a4}/24"),
                &format!("{a6}/64"),
            );
            t.interfaces.push("eth1".into());
        }
        // XDP_TX and XDP_REDIRECT out of the LB's interfaces deliver only to a peer with
        // NAPI. (`ethtool -K PEER gro on` was not enough here: frames the LB's eth0 counted
        // as xdp_tx never reached its peer; an XDP program on the peer, as in `Topology`, is.)
        let peers: Vec<String> = (0..t.interfaces.len())
            .map(|i| format!("p-lb{i}"))
            .collect();
        t.peer_progs = t
            .switch
            .run(move || peers.iter().map(|p| crate::aux::attach_pass(p)).collect());

        let h = nat_addr::ROUTER_HOST;
        let (router4, router6) = (format!("{back4}.{h}"), format!("{back6}:{h:x}"));
        t.router = t.node(format!("{id}-r"));
        // A router solicits the neighbours it forwards to from a link-local address: without
        // one, it sends no neighbour solicitation and forwards no IPv6 at all.
        t.router.sysctl("net.ipv6.conf.default.addr_gen_mode", "0");
        t.link(
            &t.router,
            "eth0",
            "r0",
            back_br,
            &format!("{router4}/24"),
            &format!("{router6}/64"),
        );
        t.link(
            &t.router,
            "eth1",
            "r1",
            "br2",
            &format!("{}/24", nat_addr::ROUTER_IN),
            &format!("{}/64", nat_addr::ROUTER_IN6),
        );
        t.router.sysctl("net.ipv4.ip_forward", "1");
        t.router.sysctl("net.ipv6.conf.all.forwarding", "1");
        t.lb.ip(&["route", "add", nat_addr::ROUTED_NET, "via", &router4]);
        t.lb.ip(&["-6", "route", "add", nat_addr::ROUTED_NET6, "via", &router6]);

        for i in 0..spec.local + spec.routed {
            let host = addr::backend_host(i);
            let routed = i >= spec.local;
            let ns = t.node(format!("{id}-b{i}"));
            let (a4, a6, br, gw4, gw6) = if routed {
                (
                    Ipv4Addr::new(10, 98, 0, host),
                    Ipv6Addr::new(0xfd00, 0x98, 0, 0, 0, 0, 0, host as u16),
                    "br2",
                    nat_addr::ROUTER_IN.to_string(),
                    nat_addr::ROUTER_IN6.to_string(),
                )
            } else {
                (
                    format!("{back4}.{host}").parse().unwrap(),
                    format!("{back6}:{host:x}").parse().unwrap(),
                    back_br,
                    router4.clone(),
                    router6.clone(),
                )
            };
            t.link(
                &ns,
                "eth0",
                &format!("b{i}"),
                br,
                &format!("{a4}/24"),
                &format!("{a6}/64"),
            );
            ns.ip(&["route", "add", "default", "via", &gw4]);
            ns.ip(&["-6", "route", "add", "default", "via", &gw6]);
            t.backends.push(NatBackend {
                ns,
                name: format!("b{i}"),
                addr: a4,
                addr6: a6,
                routed,
            });
        }
        t
    }

    fn ns(&mut self, name: String) -> Netns {
        let ns = Netns::create(name);
        self.namespaces.push(ns.clone());
        ns
    }

    /// A namespace with IPv6 but no autoconfiguration (no router solicitations, no DAD, no
    /// link-local addresses): nodes send nothing a test did not cause.
    fn node(&mut self, name: String) -> Netns {
        let ns = self.ns(name);
        ns.sysctl("net.ipv6.conf.all.accept_ra", "0");
        ns.sysctl("net.ipv6.conf.default.accept_ra", "0");
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
        ns.sysctl("net.ipv6.conf.default.addr_gen_mode", "1");
        ns
    }

    /// Gives `ns` an interface `iface` whose peer `p-PEER` is on bridge `br`, with addresses
    /// `v4` and `v6`. Frames it sends carry complete checksums (TX offload off), as XDP
    /// forwards them as they are.
    fn link(&self, ns: &Netns, iface: &str, peer: &str, br: &str, v4: &str, v6: &str) {
        let peer = format!("p-{peer}");
        self.switch.ip(&[
            "link", "add", &peer, "type", "veth", "peer", "name", iface, "netns", &ns.name,
        ]);
        self.switch.ip(&["link", "set", &peer, "master", br, "up"]);
        ns.ip(&["addr", "add", v4, "dev", iface]);
        ns.ip(&["addr", "add", v6, "dev", iface, "nodad"]);
        ns.ip(&["link", "set", iface, "up"]);
        if ns.name != self.lb.name {
            ns.exec(&["ethtool", "-K", iface, "tx", "off"]);
        }
    }

    /// The LB's address facing the backends (routed ones too: their router is on that
    /// link), which NAT flows leave from by default.
    pub fn lb_facing(&self, v6: bool) -> IpAddr {
        match (self.interfaces.len() > 1, v6) {
            (true, false) => IpAddr::V4(nat_addr::LB_BACK),
            (true, true) => IpAddr::V6(nat_addr::LB_BACK6),
            (false, false) => IpAddr::V4(addr::LB),
            (false, true) => IpAddr::V6(addr::LB6),
        }
    }

    /// Starts `steer-httpd` on backend `i`, answering as its name on `port` of every address,
    /// and waits until it is bound (stopping the server it had first).
    pub fn start_http(&mut self, httpd: &Path, i: usize, port: u16) {
        let (name, listen) = (self.backends[i].name.clone(), format!("[::]:{port}"));
        self.start_server(i, httpd, &["--name", &name, "--listen", &listen]);
    }

    /// Starts `program ARGS…` as backend `i`'s server (stopping the one it had first) and
    /// waits until it prints `listening`.
    pub fn start_server(&mut self, i: usize, program: &Path, args: &[&str]) {
        self.kill_server(i);
        let child = spawn_listening(&self.backends[i].ns, program, args);
        self.servers.insert(i, child);
    }

    /// SIGKILLs backend `i`'s server and reaps it; the host stays up (its kernel refuses new
    /// connections to the port).
    pub fn kill_server(&mut self, i: usize) {
        if let Some(mut c) = self.servers.remove(&i) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatTopology {
    fn drop(&mut self) {
        self.peer_progs.clear();
        for c in self.servers.values_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stderr(Stdio::null())
                .status();
        }
    }
}
