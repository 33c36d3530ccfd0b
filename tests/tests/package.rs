//! The Debian package of `cargo xtask package`, installed with `dpkg -i` into a throwaway copy
//! of this machine's root: an overlay of `/` with a tmpfs on top, in a mount namespace of its
//! own, entered with `chroot`. Its maintainer scripts really run (the group is created, the
//! unit registered) and the machine is left untouched: the namespace, and every file the
//! package wrote, go when the guard drops (or when this process dies).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::Instant,
};

use steer_tests::daemon::Ran;

/// The .deb to install: `$STEER_DEB` (`cargo xtask test` builds the package and sets it), else
/// the newest target/debian/steer_*.deb (`cargo xtask package`).
fn find_deb() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("STEER_DEB") {
        let p = PathBuf::from(p);
        assert!(p.exists(), "STEER_DEB is {}, which is missing", p.display());
        return Some(p);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debian");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("steer_") && name.ends_with(".deb")
        })
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// A copy-on-write root: `/` under an overlay whose upper layer is a tmpfs, mounted in a
/// private mount namespace held by a shell that waits on its stdin; /run, /tmp and /root are
/// empty (so no systemd runs there, and no Rust toolchain is in root's home). Dropping the guard (or
/// this process dying) closes that stdin: the shell exits, and the namespace and everything in
/// it go with it.
struct Scratch {
    holder: Child,
    stdin: Option<ChildStdin>,
}

/// Where the root is, inside the namespace (whose /tmp is a tmpfs of its own).
const ROOT: &str = "/tmp/root";

impl Scratch {
    fn new() -> Scratch {
        let script = format!(
            "set -e
mount -t tmpfs steer-pkg-test /tmp
mkdir /tmp/upper /tmp/work {ROOT}
mount -t overlay overlay -o lowerdir=/,upperdir=/tmp/upper,workdir=/tmp/work {ROOT}
mount --rbind /dev {ROOT}/dev
mount -t proc proc {ROOT}/proc
mount -t tmpfs tmpfs {ROOT}/run
mount -t tmpfs tmpfs {ROOT}/tmp
mount -t tmpfs tmpfs {ROOT}/root
echo ready
read -r _ || true
"
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("unshare");
        let stdin = holder.stdin.take();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the holder's stdout");
        if line.trim() != "ready" {
            let out = holder.wait_with_output().expect("holder's output");
            panic!(
                "could not make the scratch root: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Scratch { holder, stdin }
    }

    /// A command run in the namespace (the host's view, with the scratch root at `ROOT`).
    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--mount=/proc/{}/ns/mnt", self.holder.id()))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", "/root")
            .env("LC_ALL", "C.UTF-8")
            .env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    /// Runs `script` with `sh -e` inside the scratch root.
    fn sh(&self, script: &str) -> Ran {
        self.run(&["sh", "-ec", script])
    }

    /// Runs a command inside the scratch root.
    fn run(&self, argv: &[&str]) -> Ran {
        let out = self
            .nsenter()
            .args(["chroot", ROOT])
            .args(argv)
            .output()
            .expect("nsenter chroot");
        Ran {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs `script` inside the root and panics unless it succeeds; returns its stdout.
    fn ok(&self, script: &str) -> String {
        let r = self.sh(script);
        assert_eq!(r.code, 0, "`{script}` failed: {r:?}");
        r.stdout
    }

    /// The bytes of `path` inside the root.
    fn read(&self, path: &str) -> Vec<u8> {
        let out = self
            .nsenter()
            .args(["cat", &format!("{ROOT}{path}")])
            .output()
            .expect("nsenter cat");
        assert!(out.status.success(), "cannot read {path}: {out:?}");
        out.stdout
    }

    /// Whether `path` exists inside the root.
    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e '{path}' || test -L '{path}'"))
            .code
            == 0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if !matches!(self.holder.try_wait(), Ok(Some(_))) {
            // The shell returns from `read` at once; `wait` reaps it (kill first, in case).
            let _ = self.holder.kill();
        }
        let _ = self.holder.wait();
    }
}

/// What the package installs (besides the conffile): none of it may remain after `dpkg -r`.
const FILES: &[&str] = &[
    "/usr/sbin/steer-ctl",
    "/usr/lib/systemd/system/steer.service",
    "/usr/share/man/man8/steer-ctl.8.gz",
    "/usr/share/man/man5/steer.toml.5.gz",
    "/usr/share/bash-completion/completions/steer-ctl",
    "/usr/share/zsh/vendor-completions/_steer-ctl",
    "/usr/share/fish/vendor_completions.d/steer-ctl.fish",
    "/usr/share/doc/steer/copyright",
    "/usr/share/doc/steer/examples/steer.toml",
    "/usr/share/doc/steer/PROTOCOL.md",
];

const CONFIG: &str = "/etc/steer/steer.toml";

#[test]
fn deb_package_installs_in_a_clean_root_works_and_goes_away_cleanly() {
    if !steer_tests::privileged("deb_package_installs_in_a_clean_root_works_and_goes_away_cleanly")
    {
        return;
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let Some(deb) = find_deb() else {
        assert!(
            !ci,
            "no target/debian/steer_*.deb and CI=true forbids skipping: `cargo xtask test` \
             builds it (`cargo xtask package`)"
        );
        eprintln!("SKIPPED: no target/debian/steer_*.deb; run `cargo xtask package` first");
        return;
    };
    let start = Instant::now();
    let root = Scratch::new();
    assert_eq!(
        root.sh("dpkg-query -W steer").code,
        1,
        "steer is already installed on this machine: the scratch root is not clean"
    );
    let copy = root
        .nsenter()
        .arg("cp")
        .arg(&deb)
        .arg(format!("{ROOT}/tmp/steer.deb"))
        .status()
        .expect("cp");
    assert!(copy.success(), "copy {} into the root", deb.display());

    // Install: the maintainer scripts run, nothing starts.
    let install = root.ok("dpkg -i /tmp/steer.deb 2>&1");
    println!("dpkg -i:\n{install}");
    for f in FILES {
        assert!(root.exists(f), "{f} is not installed");
    }
    let depends = root.ok("dpkg-query -W -f '${Depends}' steer");
    assert!(
        depends.contains("libc6") && depends.contains("adduser"),
        "Depends: {depends}"
    );
    let conffiles = root.ok("dpkg-query -W -f '${Conffiles}' steer");
    assert!(conffiles.contains(CONFIG), "conffiles: {conffiles}");
    let group = root.ok("getent group steer");
    let gid: u32 = group.split(':').nth(2).unwrap().parse().unwrap();
    assert!(gid < 1000, "steer is not a system group: {group}");
    assert!(
        !root.exists("/etc/systemd/system/multi-user.target.wants/steer.service"),
        "the unit must not be enabled before the config names the interfaces"
    );

    // The binary, with its eBPF object embedded (an ELF whose machine is BPF, 247), runs
    // where there is no Rust toolchain, and takes the shipped config as is.
    let bin = root.read("/usr/sbin/steer-ctl");
    assert!(
        bin.windows(20)
            .any(|w| w.starts_with(b"\x7fELF") && w[5] == 1 && w[18..20] == [247, 0]),
        "no eBPF object in /usr/sbin/steer-ctl"
    );
    assert!(
        !root.exists("/root/.rustup") && root.sh("command -v bpf-linker").code != 0,
        "the root must have no Rust toolchain"
    );
    let version = root.ok("steer-ctl --version");
    assert_eq!(
        version.trim(),
        format!("steer-ctl {}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        root.ok("command -v steer-ctl").trim(),
        "/usr/sbin/steer-ctl"
    );
    let check = root.ok(&format!("steer-ctl config check --config {CONFIG}"));
    assert!(check.contains("ok (0 services"), "{check}");
    root.ok("steer-ctl config check");
    // The commented reference the README points to is shipped, and valid.
    root.ok("steer-ctl config check --config /usr/share/doc/steer/examples/steer.toml");

    // The unit as systemd reads it: every command exists, the man pages it names too.
    let verify = root.sh("systemd-analyze verify /usr/lib/systemd/system/steer.service");
    assert!(
        verify.code == 0 && verify.stderr.trim().is_empty(),
        "systemd-analyze verify: {verify:?}"
    );
    let unit = root.ok("cat /usr/lib/systemd/system/steer.service");
    for line in [
        "Type=notify",
        "NotifyAccess=main",
        "ExecReload=/usr/sbin/steer-ctl reload",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line} in the unit");
    }

    // The man pages render without a warning, and steer-ctl(8) has every verb with its flags.
    for page in [
        "/usr/share/man/man8/steer-ctl.8.gz",
        "/usr/share/man/man5/steer.toml.5.gz",
    ] {
        let r = root.sh(&format!(
            "zcat {page} | groff -man -Tutf8 -ww -rLL=100n -P-cbou"
        ));
        assert!(
            r.code == 0 && r.stderr.is_empty(),
            "{page} does not render cleanly: {}",
            r.stderr
        );
        assert!(r.stdout.contains("SEE ALSO"), "{page}: {}", r.stdout);
    }
    let man8 =
        root.ok("zcat /usr/share/man/man8/steer-ctl.8.gz | groff -man -Tascii -rLL=200n -P-cbou");
    for text in [
        "steer-ctl drain [--wait] [--timeout] [--min] <TARGET>",
        "steer-ctl config check",
        "--wait-healthy",
        "steer-ctl man [PAGE]",
    ] {
        assert!(man8.contains(text), "steer-ctl(8) lacks {text:?}:\n{man8}");
    }

    // Completions from where each shell looks for them: bash's file (sourced, as
    // bash-completion would), fish's and zsh's vendor directories (found by the shells).
    let bash = root.run(&[
        "bash",
        "-c",
        ". /usr/share/bash-completion/completions/steer-ctl
         COMP_WORDS=(steer-ctl drain --); COMP_CWORD=2
         _steer__ctl steer-ctl -- drain
         printf '%s\\n' \"${COMPREPLY[@]}\"",
    ]);
    assert!(bash.stdout.lines().any(|l| l == "--wait"), "bash: {bash:?}");
    let fish = root.ok("fish -c 'complete -C \"steer-ctl drain --\"'");
    assert!(
        fish.lines().any(|l| l.starts_with("--wait")),
        "fish: {fish}"
    );
    let zsh = root.ok(
        "zsh -fc 'autoload -Uz compinit && compinit -u -D && print -r -- ${_comps[steer-ctl]}'",
    );
    assert_eq!(zsh.trim(), "_steer-ctl", "zsh's compinit maps steer-ctl to");

    // Reinstall over an edited config: the operator's file stays, the postinst runs again.
    root.ok(&format!("echo '# edited' >> {CONFIG}"));
    root.ok("dpkg -i /tmp/steer.deb >/dev/null 2>&1");
    assert!(root.ok(&format!("cat {CONFIG}")).ends_with("# edited\n"));

    // Remove: everything but the conffile goes; the state stays until purge.
    root.ok("mkdir -p /var/lib/steer && echo '{}' > /var/lib/steer/state.json");
    root.ok("dpkg -r steer >/dev/null 2>&1");
    for f in FILES {
        assert!(!root.exists(f), "{f} remains after dpkg -r");
    }
    assert!(root.exists(CONFIG), "dpkg -r must keep the conffile");
    assert!(root.exists("/var/lib/steer/state.json"));
    let status = root.ok("dpkg-query -W -f '${Status}' steer");
    assert_eq!(status, "deinstall ok config-files");

    // Purge: the conffile, the state and the unit's mask go; the group stays (Debian practice).
    root.ok("dpkg -P steer >/dev/null 2>&1");
    for f in [
        CONFIG,
        "/etc/steer",
        "/var/lib/steer",
        "/etc/systemd/system/steer.service",
    ] {
        assert!(!root.exists(f), "{f} remains after dpkg -P");
    }
    assert_eq!(
        root.sh("dpkg-query -W steer").code,
        1,
        "still known to dpkg"
    );
    let leftovers =
        root.ok("grep -rl steer /var/lib/systemd/deb-systemd-helper-* 2>/dev/null || true");
    assert!(
        leftovers.trim().is_empty(),
        "systemd helper state: {leftovers}"
    );
    root.ok("getent group steer >/dev/null");
    println!(
        "{}: installed, checked, removed and purged in {:.1} s",
        deb.display(),
        start.elapsed().as_secs_f64()
    );
}
