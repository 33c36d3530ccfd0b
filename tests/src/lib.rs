//! Test support for steer: the `BPF_PROG_TEST_RUN` fixture runner, network-namespace
//! topologies, a small HTTP client, and the test-only XDP programs. Used by the tests in
//! `tests/tests/`, the demo and the benchmarks.

pub mod aux;
pub mod bird;
pub mod browser;
pub mod cpu;
pub mod daemon;
pub mod etcd;
pub mod fixture;
pub mod haproxy;
pub mod http;
pub mod lab;
pub mod netns;
pub mod openloop;
pub mod relay;
pub mod servers;

/// Whether this process can load BPF programs and make namespaces. When it cannot: under
/// `CI=true` the caller's test fails loudly; elsewhere it is reported as skipped (returns false).
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        return true;
    }
    let ci = std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false);
    if ci {
        panic!("{test}: needs root (BPF, network namespaces), and CI=true forbids skipping");
    }
    eprintln!("SKIPPED {test}: needs root (run `cargo xtask test`)");
    false
}
