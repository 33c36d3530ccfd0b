//! Running the real `steer-ctl daemon` in a topology's LB namespace, and its verbs.
//!
//! The daemon runs under `nsenter --net` (not `ip netns exec`, which remounts /sys and hides
//! bpffs pins). Each guard has its own pin directory, state file, socket and metrics port;
//! dropping it kills the daemon, removes its pins (detaching XDP) and its files.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::netns::{wait_for, Netns};

/// The `steer-ctl` binary: `$STEER_CTL_BIN`, or `target/<profile>/steer-ctl` next to the test
/// binary (`cargo xtask test` builds it first).
pub fn steer_ctl_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STEER_CTL_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("own path");
    // Next to a binary of target/<profile>/, or above a test in target/<profile>/deps/.
    let here = exe.parent().expect("a directory").join("steer-ctl");
    let p = if here.exists() {
        here
    } else {
        exe.parent()
            .and_then(|d| d.parent())
            .expect("target/<profile>/deps")
            .join("steer-ctl")
    };
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build -p steer-ctl`; `cargo xtask test` does)",
        p.display()
    );
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A running daemon and everything it owns.
pub struct SteerDaemon {
    pub ns: Netns,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub metrics_port: u16,
    /// Run before the binary (e.g. `prlimit --nofile=1024:1024`).
    pub prefix: Vec<String>,
    /// The XDP interfaces (`[daemon] interfaces`): `eth0` unless set before `write_config`.
    pub interfaces: Vec<String>,
    /// Environment of the daemon's process, besides the test's.
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

/// What a verb printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

impl SteerDaemon {
    /// Paths for a new daemon; `config` gets them substituted for `{pin_dir}`, `{state}`,
    /// `{socket}`, `{metrics}`.
    pub fn new(ns: &Netns) -> SteerDaemon {
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let dir = std::env::temp_dir().join(format!("steer-test-{id}"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        SteerDaemon {
            ns: ns.clone(),
            config: dir.join("steer.toml"),
            socket: dir.join("steer.sock"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/steer-test-{id}")),
            // Each daemon serves metrics on its own namespace's loopback: no clash.
            metrics_port: 9469,
            dir,
            prefix: Vec::new(),
            interfaces: vec!["eth0".into()],
            env: Vec::new(),
            child: None,
        }
    }

    /// The `[daemon]` table for this guard's paths.
    pub fn daemon_table(&self) -> String {
        let interfaces: Vec<String> = self.interfaces.iter().map(|i| format!("{i:?}")).collect();
        format!(
            "[daemon]\ninterfaces = [{}]\npin_dir = \"{}\"\nstate_file = \"{}\"\nsocket = \"{}\"\nmetrics = \"127.0.0.1:{}\"\nmax_flows = 65536\nmax_services = 8\n",
            interfaces.join(", "),
            self.pin_dir.display(),
            self.dir.join("state.json").display(),
            self.socket.display(),
            self.metrics_port
        )
    }

    pub fn write_config(&self, services: &str) {
        std::fs::write(&self.config, format!("{}\n{services}", self.daemon_table()))
            .expect("write config");
    }

    /// Starts the daemon and waits until its socket answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("daemon.log"))
            .expect("log file");
        let child = self
            .daemon_command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start steer-ctl daemon");
        self.child = Some(child);
        wait_for(
            "the daemon to answer on its socket",
            Duration::from_secs(20),
            || {
                if let Some(c) = self.child.as_mut() {
                    if let Ok(Some(st)) = c.try_wait() {
                        panic!("the daemon exited ({st}):\n{}", self.log());
                    }
                }
                let r = self.ctl(&["status"]);
                if r.code == 0 {
                    Ok(())
                } else {
                    Err(r.stderr)
                }
            },
        );
    }

    fn daemon_command(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns.name))
            .args(&self.prefix)
            .arg(steer_ctl_bin())
            .args(["daemon", "--config", self.config.to_str().unwrap()])
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }

    /// Runs another `steer-ctl daemon` on this guard's config and waits (up to `timeout`)
    /// for it to exit: for starts that must be refused. Killed and reported if it runs on.
    pub fn run_refused(&self, timeout: Duration) -> Ran {
        let mut child = self
            .daemon_command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start steer-ctl daemon");
        let start = std::time::Instant::now();
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "a daemon that should have been refused is still running after {timeout:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
    }

    /// SIGKILL: no cleanup at all, as a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the daemon process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let mut c = self.child.take().expect("running");
        wait_for("the daemon to exit", timeout, || match c.try_wait() {
            Ok(Some(st)) => Ok(st.code().unwrap_or(-1)),
            _ => Err("still running".into()),
        })
    }

    /// Runs `steer-ctl --socket S ARGS…` (from the host namespace: the socket is a file).
    pub fn ctl(&self, args: &[&str]) -> Ran {
        let out: Output = Command::new(steer_ctl_bin())
            .args(["--socket", self.socket.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run steer-ctl");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a verb with `--json` and expects exit 0.
    pub fn ok_json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        let r = self.ctl(&a);
        assert_eq!(
            r.code,
            0,
            "steer-ctl {args:?}: {r:?}\ndaemon log:\n{}",
            self.log()
        );
        r.json()
    }

    /// A backend's entry in `status --json`.
    pub fn backend(&self, name: &str) -> serde_json::Value {
        let s = self.ok_json(&["status"]);
        s["backends"]
            .as_array()
            .expect("backends")
            .iter()
            .find(|b| b["name"] == name)
            .unwrap_or_else(|| panic!("no backend {name} in {s}"))
            .clone()
    }

    /// The Prometheus text, scraped from inside the LB namespace.
    /// `scrape`, with a failure to connect or read (a reset) as an error rather than a panic.
    pub fn try_scrape(&self) -> Result<String, String> {
        let port = self.metrics_port;
        self.ns.run(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("connecting: {e}"))?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .map_err(|e| format!("writing: {e}"))?;
            let mut out = String::new();
            s.read_to_string(&mut out)
                .map_err(|e| format!("reading: {e}"))?;
            Ok(out)
        })
    }

    pub fn scrape(&self) -> String {
        let port = self.metrics_port;
        self.ns.run(move || {
            use std::io::{Read, Write};
            let mut s =
                std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        })
    }
}

impl Drop for SteerDaemon {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("daemon log ({}):\n{}", self.dir.display(), self.log());
        }
        let _ = steer_ctl::datapath::unpin_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
