//! Backend servers started by a script, as an operator's deploy would start them, so that
//! `steer-ctl rollout --exec` can restart them.

use std::path::{Path, PathBuf};

use crate::netns::Topology;

/// Backend servers started by a script (as an operator's deploy would), so that `rollout
/// --exec` can restart them; every one still running is killed on drop.
pub struct Servers {
    dir: PathBuf,
    /// `sh SCRIPT BACKEND VERSION` restarts a backend's server.
    pub script: PathBuf,
}

impl Servers {
    pub fn new(topo: &Topology, dir: &Path, httpd: &Path) -> Servers {
        std::fs::create_dir_all(dir).unwrap();
        for b in &topo.backends {
            std::fs::write(dir.join(format!("{}.ns", b.name)), &b.ns.name).unwrap();
        }
        let script = dir.join("restart.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# restart.sh BACKEND VERSION: stop the backend's server if running, start VERSION, wait until bound.
set -e
d={dir}
ns=$(cat $d/$1.ns)
if [ -f $d/$1.pid ]; then
  pid=$(cat $d/$1.pid)
  kill $pid 2>/dev/null || true
  while kill -0 $pid 2>/dev/null; do sleep 0.02; done
fi
rm -f $d/$1.out
ip netns exec $ns {httpd} --name $1 --version $2 --listen '[::]:80' > $d/$1.out 2>&1 &
echo $! > $d/$1.pid
i=0
while ! grep -q listening $d/$1.out 2>/dev/null; do
  i=$((i+1)); [ $i -lt 250 ] || exit 1
  sleep 0.02
done
"#,
                dir = dir.display(),
                httpd = httpd.display()
            ),
        )
        .unwrap();
        let s = Servers {
            dir: dir.to_path_buf(),
            script,
        };
        for b in &topo.backends {
            s.restart(&b.name, "v1");
        }
        s
    }

    /// Stops backend `name`'s server.
    pub fn stop(&self, name: &str) {
        let pid_file = self.dir.join(format!("{name}.pid"));
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = std::process::Command::new("kill")
                .arg(pid.trim())
                .stderr(std::process::Stdio::null())
                .status();
            let _ = std::fs::remove_file(pid_file);
        }
        // Wait until its port is free: the next server binds it.
        let ns_file = self.dir.join(format!("{name}.ns"));
        if let Ok(ns) = std::fs::read_to_string(ns_file) {
            for _ in 0..250 {
                let out = std::process::Command::new("ip")
                    .args(["netns", "exec", ns.trim(), "ss", "-Htln", "sport = :80"])
                    .output();
                if out.map(|o| o.stdout.is_empty()).unwrap_or(true) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Restarts (or starts) backend `name`'s server as `version`, waiting until it is bound.
    pub fn restart(&self, name: &str, version: &str) {
        let st = std::process::Command::new("sh")
            .arg(&self.script)
            .args([name, version])
            .status()
            .unwrap();
        assert!(st.success(), "restart.sh {name} {version}");
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.extension().is_some_and(|x| x == "pid") {
                if let Some(name) = path.file_stem().and_then(|n| n.to_str()) {
                    self.stop(name);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
