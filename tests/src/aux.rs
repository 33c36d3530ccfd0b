//! The test-only XDP programs of `tests/ebpf`, built by this crate's `build.rs`:
//! `steer_pass` passes everything, for the peer of a veth that runs steer in native mode (veth
//! only delivers `XDP_TX` frames promptly to a peer with an XDP program); `bench_floor` swaps MACs
//! and transmits, the floor of the datapath benchmark; `bench_wrap` restores a frame and
//! tail-calls the program under test; `fwd_floor` forwards to backends by source port with no
//! state, the floor of the cost benchmark; `swap_slow_reader` reads steer's maps as a packet does
//! but takes a millisecond doing it (`tests/tests/swap.rs` loads it on steer's pinned maps).

use std::net::Ipv4Addr;

use aya::{
    maps::{Array, ProgramArray},
    programs::{ProgramFd, Xdp, XdpMode},
    Ebpf,
};

/// The compiled object holding `steer_pass`, `bench_floor`, `bench_wrap`, `fwd_floor` and
/// `swap_slow_reader`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer-aux"));

fn load() -> Ebpf {
    Ebpf::load(OBJECT)
        .unwrap_or_else(|e| panic!("load the test programs (root, BPF and BTF needed): {e}"))
}

/// Loads `name` from `ebpf` and attaches it to `iface` (in the calling thread's namespace),
/// natively.
fn attach(ebpf: &mut Ebpf, name: &str, iface: &str) {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .unwrap_or_else(|| panic!("the test object has {name}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{name} is an XDP program: {e}"));
    prog.load().unwrap_or_else(|e| panic!("load {name}: {e}"));
    prog.attach(iface, XdpMode::Driver)
        .unwrap_or_else(|e| panic!("attach {name} to {iface} in driver mode: {e}"));
}

/// Attaches `steer_pass` to `iface` (in the calling thread's namespace), natively. It stays
/// attached while the returned handle lives. Panics saying what failed.
pub fn attach_pass(iface: &str) -> Ebpf {
    let mut ebpf = load();
    attach(&mut ebpf, "steer_pass", iface);
    ebpf
}

/// Who `nat_floor` translates between: the VIP, the LB's own address and MAC, the one client,
/// and the backends (address, MAC).
pub struct NatFloor {
    pub vip: Ipv4Addr,
    pub lb: (Ipv4Addr, [u8; 6]),
    pub client: (Ipv4Addr, [u8; 6]),
    pub backends: Vec<(Ipv4Addr, [u8; 6])>,
}

/// Attaches `nat_floor` to `iface` (in the calling thread's namespace), natively. Stays attached
/// while the handle lives.
pub fn attach_nat_floor(iface: &str, f: &NatFloor) -> Ebpf {
    assert!(
        (1..=8).contains(&f.backends.len()),
        "nat_floor takes 1 to 8 backends, not {}",
        f.backends.len()
    );
    let mut cfg = [0u8; 128];
    cfg[0..4].copy_from_slice(&f.vip.octets());
    cfg[4..8].copy_from_slice(&f.lb.0.octets());
    cfg[8..12].copy_from_slice(&f.client.0.octets());
    cfg[12] = f.backends.len() as u8;
    cfg[16..22].copy_from_slice(&f.lb.1);
    cfg[22..28].copy_from_slice(&f.client.1);
    for (i, (a, m)) in f.backends.iter().enumerate() {
        cfg[32 + 10 * i..36 + 10 * i].copy_from_slice(&a.octets());
        cfg[36 + 10 * i..42 + 10 * i].copy_from_slice(m);
    }
    attach_configured("nat_floor", "NAT_FLOOR", cfg, iface)
}

/// Loads the test object, writes `cfg` into the one element of array `map`, and attaches
/// program `name` to `iface`.
fn attach_configured<const N: usize>(name: &str, map: &str, cfg: [u8; N], iface: &str) -> Ebpf {
    let mut ebpf = load();
    let mut m: Array<_, [u8; N]> = ebpf
        .map_mut(map)
        .unwrap_or_else(|| panic!("the test object has {map}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{map} is an array of {N} bytes: {e}"));
    m.set(0, cfg, 0)
        .unwrap_or_else(|e| panic!("write {map}: {e}"));
    attach(&mut ebpf, name, iface);
    ebpf
}

/// Attaches `fwd_floor` to `iface` (in the calling thread's namespace), natively: TCP to `vip`
/// leaves from `own_mac` to the backend a hash of its source port picks. Stays attached while the handle lives.
pub fn attach_fwd_floor(
    iface: &str,
    vip: Ipv4Addr,
    own_mac: [u8; 6],
    backends: &[[u8; 6]],
) -> Ebpf {
    assert!(
        (1..=8).contains(&backends.len()),
        "fwd_floor takes 1 to 8 backends, not {}",
        backends.len()
    );
    let mut cfg = [0u8; 64];
    cfg[0..4].copy_from_slice(&vip.octets());
    cfg[4] = backends.len() as u8;
    cfg[8..14].copy_from_slice(&own_mac);
    for (i, m) in backends.iter().enumerate() {
        cfg[16 + 6 * i..22 + 6 * i].copy_from_slice(m);
    }
    attach_configured("fwd_floor", "FWD_FLOOR", cfg, iface)
}

/// Points `bench_wrap` of the test object `aux` at `target`, with `template` (a bare TCP/IPv4
/// segment, 54 bytes) as the frame it restores; `vary`: each run gets a new source address and
/// port (from the object's own run counter).
pub fn set_wrap_target(aux: &mut Ebpf, target: &ProgramFd, template: &[u8], vary: bool) {
    let mut words = [0u32; 16];
    for (i, w) in words.iter_mut().take(14).enumerate() {
        let mut b = [0u8; 4];
        for (j, x) in b.iter_mut().enumerate() {
            *x = template.get(i * 4 + j).copied().unwrap_or(0);
        }
        *w = u32::from_ne_bytes(b);
    }
    words[14] = vary as u32;
    let mut t: Array<_, [u32; 16]> =
        Array::try_from(aux.map_mut("BENCH_TEMPLATE").expect("BENCH_TEMPLATE")).unwrap();
    t.set(0, words, 0).unwrap();
    let mut progs =
        ProgramArray::try_from(aux.map_mut("BENCH_PROGS").expect("BENCH_PROGS")).unwrap();
    progs.set(0, target, 0).expect("set the wrapper's target");
}
