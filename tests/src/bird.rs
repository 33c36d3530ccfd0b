//! BIRD 2 (Debian's `bird2`), a real BGP speaker, in a namespace: started with a config, asked
//! with `birdc`, killed when dropped.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::netns::{wait_for, Netns};

pub struct Bird {
    child: Option<Child>,
    dir: PathBuf,
    sock: PathBuf,
}

impl Bird {
    /// Starts `bird` in `ns` with `conf` and waits until it answers on its control socket.
    pub fn start(ns: &Netns, conf: &str) -> Bird {
        let dir = std::env::temp_dir().join(format!("steer-bird-{}", ns.name));
        std::fs::create_dir_all(&dir).expect("bird dir");
        let cfg = dir.join("bird.conf");
        std::fs::write(&cfg, conf).expect("bird.conf");
        let sock = dir.join("bird.ctl");
        let log = std::fs::File::create(dir.join("bird.log")).expect("bird log");
        let child = ns
            .command("bird")
            .args(["-f", "-c"])
            .arg(&cfg)
            .arg("-s")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bird (Debian package bird2; `cargo xtask setup` installs it)");
        let b = Bird {
            child: Some(child),
            dir,
            sock,
        };
        wait_for("bird to answer", Duration::from_secs(10), || {
            b.try_cmd("show status")
        });
        b
    }

    fn try_cmd(&self, cmd: &str) -> Result<String, String> {
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&self.sock)
            .args(cmd.split_whitespace())
            .output()
            .map_err(|e| format!("birdc: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "birdc {cmd}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// `birdc CMD`'s output.
    pub fn cmd(&self, cmd: &str) -> String {
        self.try_cmd(cmd).unwrap_or_else(|e| e)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("bird.log")).unwrap_or_default()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
