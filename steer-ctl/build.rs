//! Builds the XDP object (`steer-ebpf`) with the pinned nightly and embeds it in steer-ctl.

use aya_build::{Package, Toolchain};

/// The nightly that builds the eBPF crate here: its LLVM (22) matches bpf-linker's. Keep in step
/// with `xtask`'s set-up.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../steer-ebpf");
    println!("cargo:rerun-if-changed={root}/../steer-common/src");
    aya_build::build_ebpf(
        [Package {
            name: "steer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
