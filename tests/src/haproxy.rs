//! HAProxy in a namespace, for the benchmarks that compare steer with it: started from a config
//! text, watched through its stats socket, killed on drop.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use crate::netns::{wait_for, Netns};

pub struct Haproxy {
    child: Child,
    /// The stats socket (`stats socket PATH level admin` in the config's `global`).
    pub sock: PathBuf,
    /// The config it runs.
    pub config: String,
}

impl Haproxy {
    /// Writes `config` to `dir/haproxy.cfg` and runs HAProxy on it in the foreground in `ns`
    /// (log to `dir/haproxy.log`). `config` must declare the stats socket `dir/haproxy.sock`;
    /// this waits until it answers.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> Haproxy {
        let sock = dir.join("haproxy.sock");
        assert!(
            config.contains(&format!("stats socket {}", sock.display())),
            "the config must declare the stats socket {}",
            sock.display()
        );
        let f = dir.join("haproxy.cfg");
        std::fs::write(&f, config).expect("write haproxy.cfg");
        let child = ns
            .command("haproxy")
            .args(["-f", f.to_str().expect("utf-8 path"), "-db"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("haproxy.log")).expect("haproxy log"))
            .spawn()
            .expect("start haproxy");
        let mut h = Haproxy {
            child,
            sock,
            config: config.to_string(),
        };
        wait_for(
            "HAProxy's stats socket",
            Duration::from_secs(10),
            || match h.child.try_wait() {
                Ok(Some(st)) => panic!(
                    "haproxy exited ({st}): {}",
                    std::fs::read_to_string(dir.join("haproxy.log")).unwrap_or_default()
                ),
                _ if status(&h.sock).is_empty() => Err("no answer".to_string()),
                _ => Ok(()),
            },
        );
        h
    }

    /// Server name → status of backend `be` ("UP", "DOWN", "UP 1/2", …).
    pub fn status(&self) -> BTreeMap<String, String> {
        status(&self.sock)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server name → status ("UP", "DOWN", "UP 1/2", …) of backend `be`, from HAProxy's stats
/// socket; empty when it does not answer.
pub fn status(sock: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return out;
    };
    if s.write_all(b"show stat\n").is_err() {
        return out;
    }
    for line in BufReader::new(s).lines().map_while(Result::ok) {
        let f: Vec<&str> = line.split(',').collect();
        if f.len() > 17 && f[0] == "be" && f[1] != "BACKEND" {
            out.insert(f[1].to_string(), f[17].to_string());
        }
    }
    out
}
