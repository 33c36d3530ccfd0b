//! The test-only XDP programs of `tests/ebpf`, built by this crate's `build.rs`:
//! `steer_pass` passes everything, for the peer of a veth that runs steer in native mode (veth
//! only delivers `XDP_TX` frames promptly to a peer with an XDP program); `bench_floor` swaps MACs
//! and transmits, the floor of the datapath benchmark; `bench_wrap` restores a frame and
//! tail-calls the program under test; `swap_slow_reader` reads steer's maps as a packet does but
//! takes a millisecond doing it (`tests/tests/swap.rs` loads it on steer's pinned maps).

use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};

/// The compiled object holding `steer_pass`, `bench_floor`, `bench_wrap` and `swap_slow_reader`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer-aux"));

/// Attaches `steer_pass` to `iface` (in the calling thread's namespace), natively. It stays
/// attached while the returned handle lives. Panics saying what failed.
pub fn attach_pass(iface: &str) -> Ebpf {
    let mut ebpf = Ebpf::load(OBJECT)
        .unwrap_or_else(|e| panic!("load the test programs (root, BPF and BTF needed): {e}"));
    let prog: &mut Xdp = ebpf
        .program_mut("steer_pass")
        .expect("the test object has steer_pass")
        .try_into()
        .expect("steer_pass is an XDP program");
    prog.load()
        .unwrap_or_else(|e| panic!("load steer_pass: {e}"));
    prog.attach(iface, XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attach steer_pass to {iface} in driver mode: {e}"));
    ebpf
}
