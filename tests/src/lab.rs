//! One balancer in namespaces of its own, for the benchmarks that set steer beside the tools it
//! replaces (`bench e2e`, `bench cost`): a `Topology` (client, LB, three backends on a bridge),
//! `steer-httpd` on every backend (started by `Servers`' script, so a deploy can restart them),
//! and the balancer under test on the LB — or none, for the baseline. Everything is undone when
//! the `Lab` drops, also on panic.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{
    aux, cpu,
    daemon::{steer_ctl_bin, SteerDaemon},
    haproxy::Haproxy,
    netns::{addr, wait_for, Netns, Topology, TopologySpec},
    servers::Servers,
};

pub const BACKENDS: usize = 3;

/// What sits between the client and the backends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Balancer {
    /// Nothing: the client connects to the backends' own addresses, over the bridge.
    Direct,
    /// `fwd_floor` on the LB: XDP DSR with no state at all.
    XdpFloor,
    /// `nat_floor` on the LB: XDP NAT with no state at all (addresses rewritten both ways for
    /// the one client; backends unmodified).
    XdpNatFloor,
    /// The LB's kernel forwarding the VIP to the backends by an ECMP route (hashing the
    /// 5-tuple), no conntrack: the kernel's least DSR; backends hold the VIP.
    KernelFloor,
    /// steer (XDP, DSR), the real daemon; backends hold the VIP.
    Steer,
    /// steer with `mode = "nat"`, backends unmodified.
    SteerNat,
    /// nftables DNAT on the LB; the backends route replies back through it.
    Nftables,
    /// nftables DNAT by connection hash plus masquerade, backends unmodified: what steer's NAT
    /// mode replaces.
    NftDnat,
    /// HAProxy in TCP mode (`check inter 2000 fall 2 rise 2`).
    Haproxy,
    /// The same, checking port 8080, which each backend redirects to 80 (see `redirect`).
    HaproxyIptables,
}

impl Balancer {
    pub fn key(self) -> &'static str {
        match self {
            Balancer::Direct => "direct",
            Balancer::XdpFloor => "xdp-floor",
            Balancer::XdpNatFloor => "xdp-nat-floor",
            Balancer::KernelFloor => "kernel-floor",
            Balancer::Steer => "steer",
            Balancer::SteerNat => "steer-nat",
            Balancer::Nftables => "nftables",
            Balancer::NftDnat => "nft-dnat",
            Balancer::Haproxy => "haproxy",
            Balancer::HaproxyIptables => "haproxy_iptables",
        }
    }

    pub fn is_steer(self) -> bool {
        matches!(self, Balancer::Steer | Balancer::SteerNat)
    }

    pub fn is_nftables(self) -> bool {
        matches!(self, Balancer::Nftables | Balancer::NftDnat)
    }

    pub fn is_haproxy(self) -> bool {
        matches!(self, Balancer::Haproxy | Balancer::HaproxyIptables)
    }

    /// Sends frames with `XDP_TX` from the LB's `eth0`.
    pub fn sends_from_xdp(self) -> bool {
        matches!(
            self,
            Balancer::XdpFloor | Balancer::XdpNatFloor | Balancer::Steer | Balancer::SteerNat
        )
    }

    /// Backends hold the VIP on their loopback (with the ARP sysctls): DSR.
    pub fn dsr(self) -> bool {
        matches!(
            self,
            Balancer::XdpFloor | Balancer::KernelFloor | Balancer::Steer
        )
    }
}

/// How a lab is set up beyond what its balancer needs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Setup {
    /// As `bench e2e` has always run: an `XDP_PASS` program and GRO on the LB's switch-side veth
    /// (`p-lb`) whatever the balancer; the kernel's default bridge, which hands every frame to
    /// netfilter (`bridge-nf-call-iptables` and the like); steer checking every 300 ms (100 ms
    /// while a backend changes state), for a quick deploy.
    E2e,
    /// Only what each system needs, for measuring what it costs: the `XDP_PASS` program on
    /// `p-lb` only for a balancer that sends with `XDP_TX` (veth needs it then, PLATFORM.md), so
    /// the others' frames take veth's plain path; a bridge without netfilter calls, as the
    /// switch it stands for has none; steer checking every 2 s, as HAProxy does
    /// (`inter 2000`).
    Lean,
}

/// One lab. Fields drop in order: the balancer, the servers (whose pid files are under `dir`),
/// the namespaces, then `dir`.
pub struct Lab {
    pub balancer: Balancer,
    pub steer: Option<SteerDaemon>,
    pub haproxy: Option<Haproxy>,
    floor: Option<aya::Ebpf>,
    pub servers: Servers,
    pub topo: Topology,
    pub dir: PathBuf,
    _files: RemoveOnDrop,
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `steer-httpd`, next to the running binary.
pub fn httpd() -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name("steer-httpd")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

impl Lab {
    /// Builds the namespaces, starts the servers and the balancer, and waits until the
    /// balancer reports every backend up. A config this steer refuses is an `Err` (the row's
    /// answer); anything else that fails panics.
    pub fn new(balancer: Balancer, setup: Setup) -> Result<Lab, String> {
        let mut topo = Topology::new(&TopologySpec {
            backends: BACKENDS,
            vips: if balancer.dsr() {
                vec![IpAddr::V4(addr::VIP)]
            } else {
                Vec::new()
            },
            ipv6: false,
        });
        // Frames forwarded from XDP must carry complete checksums, as from a real NIC
        // (PLATFORM.md); the client's veth already sends them. Every lab alike.
        for b in &topo.backends {
            b.ns.exec(&["ethtool", "-K", "eth0", "tx", "off"]);
        }
        match setup {
            Setup::E2e => {
                topo.switch.exec(&["ethtool", "-K", "p-lb", "gro", "on"]);
            }
            Setup::Lean => {
                if !balancer.sends_from_xdp() {
                    topo.detach_peer_pass();
                }
                for t in ["arptables", "iptables", "ip6tables"] {
                    topo.switch
                        .sysctl(&format!("net.bridge.bridge-nf-call-{t}"), "0");
                }
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "steer-lab-{}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed),
            balancer.key()
        ));
        std::fs::create_dir_all(&dir).expect("lab dir");
        let servers = Servers::new(&topo, &dir.join("servers"), &httpd());
        let mut lab = Lab {
            balancer,
            steer: None,
            haproxy: None,
            floor: None,
            servers,
            topo,
            dir: dir.clone(),
            _files: RemoveOnDrop(dir),
        };
        match balancer {
            Balancer::Direct => {}
            Balancer::XdpFloor => {
                let macs: Vec<[u8; 6]> = lab.topo.backends.iter().map(|b| b.mac).collect();
                let own = addr::mac(3);
                lab.floor = Some(
                    lab.topo
                        .lb
                        .run(move || aux::attach_fwd_floor("eth0", addr::VIP, own, &macs)),
                );
            }
            Balancer::XdpNatFloor => {
                let f = aux::NatFloor {
                    vip: addr::VIP,
                    lb: (addr::LB, addr::mac(3)),
                    client: (addr::CLIENT, addr::mac(2)),
                    backends: lab.topo.backends.iter().map(|b| (b.addr, b.mac)).collect(),
                };
                lab.floor = Some(lab.topo.lb.run(move || aux::attach_nat_floor("eth0", &f)));
            }
            Balancer::KernelFloor => lab.start_ecmp(),
            Balancer::Steer | Balancer::SteerNat => lab.start_steer(setup)?,
            Balancer::Nftables | Balancer::NftDnat => lab.start_nftables(),
            Balancer::Haproxy | Balancer::HaproxyIptables => lab.start_haproxy(),
        }
        Ok(lab)
    }

    /// Where the client sends its connections: the VIP, or (`Direct`) each backend in turn.
    pub fn targets(&self) -> Vec<SocketAddr> {
        if self.balancer == Balancer::Direct {
            self.topo
                .backends
                .iter()
                .map(|b| SocketAddr::new(IpAddr::V4(b.addr), 80))
                .collect()
        } else {
            vec![SocketAddr::new(IpAddr::V4(addr::VIP), 80)]
        }
    }

    /// The inode numbers of this lab's network namespaces: its processes are the ones in them.
    pub fn netns_inodes(&self) -> Vec<u64> {
        let t = &self.topo;
        [&t.switch, &t.client, &t.lb]
            .into_iter()
            .chain(t.backends.iter().map(|b| &b.ns))
            .filter_map(|n| cpu::netns_inode(&n.name))
            .collect()
    }

    fn start_steer(&mut self, setup: Setup) -> Result<(), String> {
        let nat = self.balancer == Balancer::SteerNat;
        let mut d = SteerDaemon::new(&self.topo.lb);
        let check = match setup {
            Setup::E2e => "interval = \"300ms\", fastinterval = \"100ms\", downinterval = \"300ms\", timeout = \"300ms\"",
            Setup::Lean => "interval = \"2s\", fastinterval = \"2s\", downinterval = \"2s\", timeout = \"1s\"",
        };
        let mut cfg = format!(
            "[[service]]\nname = \"web\"\nvip = \"{}\"\nport = 80\n{}\
             check = {{ type = \"tcp\", {check}, rise = 2, fall = 2 }}\n",
            addr::VIP,
            if nat { "mode = \"nat\"\n" } else { "" }
        );
        for (i, b) in self.topo.backends.iter().enumerate() {
            cfg += &format!(
                "[[service.backend]]\nname = \"{}\"\naddress = \"{}\"\n",
                b.name, b.addr,
            );
            // DSR sends frames to the backend's MAC; NAT finds the next hop in the FIB.
            if !nat {
                cfg += &format!("mac = \"{}\"\n", addr::mac_str(addr::backend_host(i)));
            }
        }
        d.write_config(&cfg);
        // A config this steer refuses is the row's answer, not a crash.
        let out = Command::new(steer_ctl_bin())
            .args(["config", "check", "--config"])
            .arg(&d.config)
            .output()
            .map_err(|e| format!("cannot run steer-ctl config check: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "config refused: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        d.start();
        // A fresh daemon knows no health until the first checks: measure from there.
        for b in &self.topo.backends {
            wait_for(
                &format!("{} to be checked up", b.name),
                Duration::from_secs(10),
                || match d.backend(&b.name)["health"].as_str() {
                    Some("up") => Ok(()),
                    other => Err(format!("{other:?}")),
                },
            );
        }
        self.steer = Some(d);
        Ok(())
    }

    /// The LB forwards, out of the interface it received on, without telling the sender to go
    /// direct (no ICMP redirects).
    fn forward(&self) {
        for k in [
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.send_redirects=0",
            "net.ipv4.conf.eth0.send_redirects=0",
        ] {
            self.topo.lb.exec(&["sysctl", "-q", "-w", k]);
        }
    }

    fn start_ecmp(&mut self) {
        self.forward();
        let lb = &self.topo.lb;
        // Hash the 5-tuple, not just the addresses: one client spreads over the backends.
        lb.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        let vip = format!("{}/32", addr::VIP);
        let hops: Vec<String> = self
            .topo
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        let mut args = vec!["route", "add", vip.as_str()];
        for h in &hops {
            args.extend_from_slice(&["nexthop", "via", h, "dev", "eth0"]);
        }
        lb.ip(&args);
    }

    fn start_nftables(&mut self) {
        self.forward();
        let lb = &self.topo.lb;
        let targets: Vec<String> = self
            .topo
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| format!("{i} : {}", b.addr))
            .collect();
        let rules = if self.balancer == Balancer::Nftables {
            format!(
                "table ip steer_bench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  ip daddr {} tcp dport 80 dnat to numgen inc mod {BACKENDS} map {{ {} }}\n }}\n}}\n",
                addr::VIP,
                targets.join(", ")
            )
        } else {
            // What steer's NAT mode replaces: a hash of the connection picks the backend, and
            // masquerade makes the LB the source, so backends need no route or VIP.
            format!(
                "table ip steer_bench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  ip daddr {} tcp dport 80 dnat to jhash ip saddr . tcp sport mod {BACKENDS} map {{ {} }}\n }}\n chain post {{\n  type nat hook postrouting priority srcnat;\n  ct status dnat masquerade\n }}\n}}\n",
                addr::VIP,
                targets.join(", ")
            )
        };
        let f = self.dir.join("rules.nft");
        std::fs::write(&f, rules).expect("write rules.nft");
        lb.exec(&["nft", "-f", f.to_str().expect("utf-8 path")]);
        if self.balancer == Balancer::Nftables {
            // Replies go back through the LB, which un-NATs them.
            for b in &self.topo.backends {
                b.ns.ip(&[
                    "route",
                    "add",
                    &format!("{}/32", addr::CLIENT),
                    "via",
                    &addr::LB.to_string(),
                ]);
            }
        }
    }

    fn start_haproxy(&mut self) {
        let lb = &self.topo.lb;
        lb.ip(&["addr", "add", &format!("{}/32", addr::VIP), "dev", "lo"]);
        let iptables = self.balancer == Balancer::HaproxyIptables;
        let check_port = if iptables { 8080 } else { 80 };
        if iptables {
            for b in &self.topo.backends {
                redirect(&b.ns, true);
            }
        }
        let mut cfg = format!(
            "global\n  maxconn 4096\n  stats socket {}/haproxy.sock level admin\n\
             defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind {}:80\n  default_backend be\n\
             backend be\n  balance roundrobin\n",
            self.dir.display(),
            addr::VIP
        );
        for b in &self.topo.backends {
            cfg += &format!(
                "  server {} {}:80 check port {check_port} inter 2000 fall 2 rise 2\n",
                b.name, b.addr
            );
        }
        let h = Haproxy::start(lb, &self.dir, &cfg);
        wait_for(
            "HAProxy to see every server UP",
            Duration::from_secs(10),
            || {
                let st = h.status();
                if st.values().filter(|s| s.starts_with("UP")).count() == BACKENDS {
                    Ok(())
                } else {
                    Err(format!("{st:?}"))
                }
            },
        );
        self.haproxy = Some(h);
    }
}

/// The iptables trick's rule on a backend: connections to the check port 8080 are redirected to
/// the server's port 80; deleting it fails HAProxy's check.
pub fn redirect(ns: &Netns, add: bool) {
    ns.exec(&[
        "iptables",
        "-t",
        "nat",
        if add { "-A" } else { "-D" },
        "PREROUTING",
        "-p",
        "tcp",
        "--dport",
        "8080",
        "-j",
        "REDIRECT",
        "--to-ports",
        "80",
    ]);
}
