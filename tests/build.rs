//! Builds the test-only XDP programs (`tests/ebpf`, package `steer-test-ebpf`) with the pinned
//! nightly and embeds them in this crate (`aux::OBJECT`), as steer-ctl's build.rs does for the
//! datapath.

use aya_build::{Package, Toolchain};

/// The nightly that builds eBPF crates here: its LLVM (22) matches bpf-linker's. Keep in step
/// with `steer-ctl/build.rs` and `xtask`'s set-up.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [Package {
            name: "steer-test-ebpf",
            root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/ebpf"),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
}
