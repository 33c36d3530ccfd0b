//! Idempotent set-up of a fresh machine (Debian 12, root): Debian packages, the pinned nightly
//! with rust-src that builds the eBPF object, bpf-linker, cargo-deb, and a mounted bpffs. Each step checks
//! first and installs only what is missing, printing one line per thing it installed; with
//! everything present it takes well under 2 seconds. See ../shared/PLATFORM.md for why each
//! piece is pinned as it is.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _, Result};

/// Keep in step with `steer-ctl/build.rs` and `tests/build.rs`.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Builds with stable 1.95 (its rust-version is 1.85).
const CARGO_DEB_VERSION: &str = "3.8.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages the build, tests and demo use: LLVM 22 for bpf-linker, iproute2 and ethtool
/// for the namespace topologies, wrk for load, etcd and BIRD for the cluster tests and demo;
/// dpkg-dev for cargo-deb (`dpkg-shlibdeps` finds the package's dependencies), and groff, zsh
/// and fish for the tests of the man pages and shell completions.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "ethtool",
    "iputils-ping",
    "wrk",
    "etcd-server",
    "bird2",
    "dpkg-dev",
    "groff-base",
    "zsh",
    "fish",
    // The stats page's test opens it in a real headless browser.
    "chromium",
    "chromium-driver",
];

fn quiet(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn must(what: &str, hint: &str, cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("{what}: cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}). To do it by hand, run:\n    {hint}");
    }
    Ok(())
}

fn is_root() -> bool {
    quiet("id", &["-u"])
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!(
            "steer's set-up, tests and demo need root (BPF, XDP, network namespaces, apt). \
             Run again as root, e.g. `sudo -E cargo xtask test`."
        );
    }
    apt()?;
    toolchain()?;
    bpf_linker()?;
    cargo_deb()?;
    bpffs()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    quiet("dpkg-query", &["-W", "-f=${Status}", pkg])
        .map(|s| s.contains("install ok installed"))
        .unwrap_or(false)
}

fn apt() -> Result<()> {
    apt_packages(APT_PACKAGES)
}

/// Installs the Debian packages of `list` that are missing.
pub fn apt_packages(list: &[&str]) -> Result<()> {
    let missing: Vec<&str> = list.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let hint = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    must(
        "apt-get update",
        &hint,
        Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null()),
    )?;
    must(
        "apt-get install",
        &hint,
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null()),
    )?;
    for p in &missing {
        println!("setup: installed {p} (apt)");
    }
    Ok(())
}

fn toolchain() -> Result<()> {
    let has_toolchain = quiet("rustup", &["toolchain", "list"])
        .map(|s| s.lines().any(|l| l.starts_with(EBPF_TOOLCHAIN)))
        .unwrap_or(false);
    let has_src = has_toolchain
        && quiet(
            "rustup",
            &["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"],
        )
        .map(|root| {
            std::path::Path::new(root.trim())
                .join("lib/rustlib/src/rust/library/core")
                .is_dir()
        })
        .unwrap_or(false);
    if has_toolchain && has_src {
        return Ok(());
    }
    let hint =
        format!("rustup toolchain install {EBPF_TOOLCHAIN} --profile minimal --component rust-src");
    must(
        "installing the eBPF toolchain",
        &hint,
        Command::new("rustup").args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
    )?;
    println!("setup: installed Rust {EBPF_TOOLCHAIN} with rust-src (rustup)");
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let version = quiet("bpf-linker", &["--version"]).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let hint = format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install bpf-linker --version {BPF_LINKER_VERSION} \
         --locked --no-default-features --features llvm-22"
    );
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} (about a minute)");
    must(
        "installing bpf-linker",
        &hint,
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
                "--no-default-features",
                "--features",
                "llvm-22",
                "--quiet",
            ])
            .env("LLVM_PREFIX", LLVM_PREFIX)
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER"),
    )?;
    println!("setup: installed bpf-linker {BPF_LINKER_VERSION} (cargo install)");
    Ok(())
}

/// cargo-deb, which `cargo xtask package` (and so `cargo xtask test`) builds the .deb with.
fn cargo_deb() -> Result<()> {
    let version = quiet("cargo-deb", &["--version"]).unwrap_or_default();
    if version.contains(CARGO_DEB_VERSION) {
        return Ok(());
    }
    let hint = format!("cargo install cargo-deb --version {CARGO_DEB_VERSION} --locked");
    println!("setup: building cargo-deb {CARGO_DEB_VERSION} (a few minutes)");
    must(
        "installing cargo-deb",
        &hint,
        Command::new("cargo")
            .args([
                "install",
                "cargo-deb",
                "--version",
                CARGO_DEB_VERSION,
                "--locked",
                "--quiet",
            ])
            .env_remove("RUSTC")
            .env_remove("RUSTC_WRAPPER"),
    )?;
    println!("setup: installed cargo-deb {CARGO_DEB_VERSION} (cargo install)");
    Ok(())
}

fn bpffs() -> Result<()> {
    if Command::new("mountpoint")
        .args(["-q", "/sys/fs/bpf"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
    {
        return Ok(());
    }
    must(
        "mounting bpffs",
        "mount -t bpf bpf /sys/fs/bpf",
        Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]),
    )?;
    println!("setup: mounted bpffs on /sys/fs/bpf");
    Ok(())
}
