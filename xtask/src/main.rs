//! `cargo xtask`: what cargo alone cannot do — set up a fresh machine, run the privileged tests,
//! run the demo and the benchmarks.
//!
//! xtask must build on a machine that has nothing but stable Rust: it depends on no crate of the
//! workspace (those need the eBPF toolchain that `setup` installs) and runs them through cargo.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

mod setup;

#[derive(Parser)]
#[command(about = "steer's developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what this machine lacks to build and test steer (idempotent; root).
    Setup,
    /// Set up, then run every test (unit, BPF_PROG_TEST_RUN fixtures, network-namespace
    /// end-to-end). Extra arguments go to `cargo test` (e.g. a test name filter).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then run the demo: namespaces, XDP, real HTTP traffic, a table of results.
    /// `cargo xtask demo cluster`: two LB hosts behind ECMP sharing their intent in etcd.
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Set up, then measure: prints a table and writes JSON under target/bench/.
    Bench {
        #[arg(value_enum, default_value = "datapath")]
        what: Bench,
        /// Passed to the bench program (e.g. `restart --rate 100 --delays 1`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// ns per packet of the XDP program (BPF_PROG_TEST_RUN) against a MAC-swap floor.
    Datapath,
    /// steer, nftables DNAT and HAProxy side by side in namespaces: conn/s, req/s, latency,
    /// and a rolling restart under load.
    E2e,
    /// Latency of the daemon's `status` with 0, 100,000 and 1,000,000 flows in the table.
    Control,
    /// A deploy with health checks only: every backend stopped and restarted 1 s and 5 s later
    /// under open-loop load, no balancer command, for HAProxy, steer DSR and steer NAT.
    /// Flags: --rate N, --delays 1,5, --deadline S, --systems a,b.
    Restart,
    /// The whole machine's CPU per connection at a fixed open-loop rate of new connections, for
    /// clients straight to the backends and through steer DSR, steer NAT, nftables DNAT and
    /// HAProxy; each balancer's cost is its figure minus the direct one. Flags: --rate N,
    /// --seconds S, --slice S, --warmup S, --rounds N, --systems a,b.
    Cost,
}

/// Builds binaries of the tests crate, and `steer-ctl` (which the demo and benchmarks drive),
/// in release mode; returns the directory they are in.
fn build_release(bins: &[&str]) -> Result<PathBuf> {
    let mut c = cargo();
    c.args(["build", "--release", "--quiet", "-p", "steer-tests"]);
    for b in bins {
        c.args(["--bin", b]);
    }
    c.args(["-p", "steer-ctl", "--bin", "steer-ctl"]);
    run(c)?;
    Ok(workspace_root().join("target/release"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

fn run(mut c: Command) -> Result<()> {
    let desc = format!("{c:?}");
    let status = c.status().with_context(|| format!("cannot run {desc}"))?;
    if !status.success() {
        bail!("{desc} failed ({status})");
    }
    Ok(())
}

/// Removes network namespaces left behind by killed test runs (their guards could not drop).
fn cleanup_stale_namespaces() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        for prefix in ["steer-t"] {
            let Some(rest) = name.strip_prefix(prefix) else {
                continue;
            };
            let pid = rest.split('-').next().unwrap_or("");
            if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
                continue;
            }
            let _ = Command::new("ip")
                .args(["netns", "del", name])
                .stderr(Stdio::null())
                .status();
            println!("removed stale namespace {name}");
        }
    }
}

/// Removes bpffs pin directories left by killed daemon tests (`/sys/fs/bpf/steer-test-PID-N`).
fn cleanup_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("steer-test-") else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && Path::new("/proc").join(pid).exists() {
            continue;
        }
        let _ = std::fs::remove_dir_all(e.path());
        println!("removed stale pins {}", e.path().display());
    }
}

/// Builds and runs a bench that drives the daemon in namespaces (with `steer-httpd` backends),
/// output directory first, removing what killed runs left before and after.
fn privileged_bench(bin: &str, args: &[String]) -> Result<()> {
    let dir = build_release(&[bin, "steer-httpd"])?;
    cleanup_stale_namespaces();
    cleanup_stale_pins();
    let mut b = Command::new(dir.join(bin));
    b.arg(workspace_root().join("target/bench")).args(args);
    let r = run(b);
    cleanup_stale_namespaces();
    cleanup_stale_pins();
    r
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.task {
        Task::Setup => setup::run(),
        Task::Test { args } => {
            setup::run()?;
            cleanup_stale_namespaces();
            cleanup_stale_pins();
            let start = Instant::now();
            // The daemon tests run the real binary.
            let mut b = cargo();
            b.args(["build", "--quiet", "-p", "steer-ctl", "--bin", "steer-ctl"]);
            run(b)?;
            let mut c = cargo();
            c.arg("test").args(&args);
            // Print what passing tests printed too (the fixture table, per-backend shares),
            // grouped per test rather than interleaved.
            if !args.iter().any(|a| a == "--") {
                c.arg("--");
            }
            c.arg("--show-output");
            let r = run(c);
            cleanup_stale_namespaces();
            cleanup_stale_pins();
            r?;
            println!("all tests passed in {:.1} s", start.elapsed().as_secs_f64());
            Ok(())
        }
        Task::Demo { args } => {
            setup::run()?;
            cleanup_stale_namespaces();
            let bin = build_release(&["steer-demo", "steer-httpd"])?;
            let mut demo = Command::new(bin.join("steer-demo"));
            demo.args(&args);
            run(demo)
        }
        Task::Bench { what, args } => {
            setup::run()?;
            match what {
                Bench::Datapath => {
                    let bin = build_release(&["steer-bench"])?;
                    let mut b = Command::new(bin.join("steer-bench"));
                    b.arg(workspace_root().join("target/bench")).args(&args);
                    run(b)
                }
                Bench::E2e => {
                    setup::apt_packages(&["haproxy", "nftables", "iptables"])?;
                    let bin = build_release(&["steer-bench-e2e", "steer-httpd"])?;
                    cleanup_stale_namespaces();
                    let mut b = Command::new(bin.join("steer-bench-e2e"));
                    b.arg(workspace_root().join("target/bench")).args(&args);
                    let r = run(b);
                    cleanup_stale_namespaces();
                    r
                }
                Bench::Control => privileged_bench("steer-bench-control", &args),
                Bench::Restart => {
                    setup::apt_packages(&["haproxy"])?;
                    privileged_bench("steer-bench-restart", &args)
                }
                Bench::Cost => {
                    setup::apt_packages(&["haproxy", "nftables"])?;
                    privileged_bench("steer-bench-cost", &args)
                }
            }
        }
    }
}
