//! A real etcd server (Debian's `etcd-server`) for the cluster tests, in a namespace of its
//! own on the topology's bridge; killed when dropped, its data directory removed.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpStream},
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use crate::netns::{wait_for, Netns};

pub struct EtcdServer {
    ns: Netns,
    addr: Ipv4Addr,
    dir: PathBuf,
    child: Option<Child>,
}

impl EtcdServer {
    /// Starts etcd in `ns`, listening on `addr`:2379, and waits until it answers.
    pub fn start(ns: &Netns, addr: Ipv4Addr) -> EtcdServer {
        let dir =
            std::env::temp_dir().join(format!("steer-etcd-{}-{}", ns.name, std::process::id()));
        let mut e = EtcdServer {
            ns: ns.clone(),
            addr,
            dir,
            child: None,
        };
        e.resume();
        e
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://{}:2379", self.addr)
    }

    /// Kills it (the LB hosts then find it unreachable).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data: what was stored is still there.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "etcd already running");
        let client = self.url();
        let peer = format!("http://{}:2380", self.addr);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::temp_dir().join(format!("{}.log", self.ns.name)))
            .expect("etcd log");
        let child = self
            .ns
            .command("etcd")
            .args([
                "--name",
                "steer-test",
                "--data-dir",
                self.dir.to_str().expect("utf-8"),
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &format!("steer-test={peer}"),
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian package etcd-server; `cargo xtask setup` installs it)");
        self.child = Some(child);
        let addr = self.addr;
        let ns = self.ns.clone();
        wait_for(
            "etcd to answer /health",
            Duration::from_secs(20),
            move || ns.run(move || health(addr)),
        );
    }
}

/// `GET /health` answered `"health":"true"`.
fn health(addr: Ipv4Addr) -> Result<(), String> {
    let mut s = TcpStream::connect_timeout(&(addr, 2379).into(), Duration::from_secs(1))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    if out.contains("\"health\":\"true\"") {
        Ok(())
    } else {
        Err(format!("not healthy yet: {out:.200}"))
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
