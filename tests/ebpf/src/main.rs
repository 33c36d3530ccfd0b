//! XDP programs that only steer's tests and benchmarks load; embedded in `steer-tests` as
//! `steer_tests::aux::OBJECT`, never in steer-ctl.
//!
//! `steer_pass`: `XDP_PASS` and nothing else, for the peer of a veth that runs steer in native
//! mode. veth hands `XDP_TX` frames to its peer's ring, but only kicks the peer's NAPI when the peer
//! has an XDP program of its own; with none, the frames wait there until unrelated traffic
//! arrives (seen on 6.18: the LB transmitted, the peer counted nothing). Real NICs need none of
//! this. Used by the tests' and the demo's topologies.
//!
//! `bench_floor` and `bench_wrap`: the floor of `cargo xtask bench datapath` and the wrapper that
//! lets it time paths which rewrite their packet; `bench_floor_words`, a stricter floor.
//!
//! `fwd_floor` and `nat_floor`: the floors of `cargo xtask bench cost`, a DSR forwarder and a
//! NAT forwarder (one client) without any state.
//!
//! `swap_slow_reader` (module `swap`): a packet of steer that takes a millisecond between reading
//! the service entry and reading the rest, for the swap test; `swap_lookup_hammer`, services
//! looked up hundreds of times a run.
#![no_std]
#![no_main]

mod swap;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, ProgramArray},
    programs::XdpContext,
};

#[xdp]
pub fn steer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor of `cargo xtask bench datapath`: swap the MACs and send the frame back, the least
/// any XDP forwarder does.
#[xdp]
pub fn bench_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let p = start as *mut [u8; 12];
    // SAFETY: the 12 bytes are in the packet (checked above).
    let macs = unsafe { &mut *p };
    let mut tmp = [0u8; 6];
    tmp.copy_from_slice(&macs[0..6]);
    macs.copy_within(6..12, 0);
    macs[6..12].copy_from_slice(&tmp);
    xdp_action::XDP_TX
}

/// `bench_floor` with the MACs swapped a word and a halfword at a time, as steer rewrites
/// them (`bench_floor`'s byte copies compile to 36 instructions): a stricter floor, printed
/// beside the first.
#[xdp]
pub fn bench_floor_words(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 bytes are in the packet (checked above); the JIT loads and stores
    // unaligned words.
    unsafe {
        let (dst_hi, dst_lo) = (start as *mut u32, (start + 4) as *mut u16);
        let (src_hi, src_lo) = ((start + 6) as *mut u32, (start + 10) as *mut u16);
        let (hi, lo) = (*dst_hi, *dst_lo);
        *dst_hi = *src_hi;
        *dst_lo = *src_lo;
        *src_hi = hi;
        *src_lo = lo;
    }
    xdp_action::XDP_TX
}

/// `fwd_floor`'s settings, written by the bench: bytes 0..4 the VIP as it sits in a packet,
/// byte 4 the number of backends (1 to 8), 8..14 the LB's MAC, then backend `i`'s MAC at
/// `16 + 6 i`.
#[map(name = "FWD_FLOOR")]
static FWD_FLOOR: Array<[u8; 64]> = Array::with_max_entries(1, 0);

/// The least an XDP balancer in DSR mode does: a TCP/IPv4 frame to the VIP (no IP options) goes
/// back out to the MAC of a backend picked by a hash of its source port; everything else passes. No
/// flow table, no
/// health, no counters: what a live connection costs beyond this is the balancer's own work.
#[xdp]
pub fn fwd_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    // Ethernet (14), IPv4 without options (20), the TCP source port (2).
    if start + 36 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let Some(cfg) = FWD_FLOOR.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let p = start as *mut u8;
    // SAFETY: the 36 bytes read or written are in the packet (checked above).
    unsafe {
        // EtherType IPv4, version 4 with a 20-byte header, protocol TCP, destination the VIP.
        if *p.add(12) != 0x08
            || *p.add(13) != 0
            || *p.add(14) != 0x45
            || *p.add(23) != 6
            || *p.add(30) != cfg[0]
            || *p.add(31) != cfg[1]
            || *p.add(32) != cfg[2]
            || *p.add(33) != cfg[3]
        {
            return xdp_action::XDP_PASS;
        }
        let n = cfg[4] as u16;
        if n == 0 || n > 8 {
            return xdp_action::XDP_PASS;
        }
        // A 16-bit hash of the source port (Fibonacci), times n, over 65536: below n, in
        // bounds the verifier can follow (it loses them through a `%` by a register).
        let port = u16::from_be_bytes([*p.add(34), *p.add(35)]) as u32;
        let i = ((((port * 0x9e37) & 0xffff) * n as u32) >> 16) as usize;
        for k in 0..6 {
            *p.add(k) = cfg[16 + 6 * i + k];
            *p.add(6 + k) = cfg[8 + k];
        }
    }
    xdp_action::XDP_TX
}

/// `nat_floor`'s settings, written by the bench: bytes 0..4 the VIP, 4..8 the LB's address, 8..12
/// the client's address (each as it sits in a packet), byte 12 the number of backends (1 to
/// 8), 16..22 the LB's MAC, 22..28 the client's MAC, then backend `i`'s address at `32 + 10 i`
/// and its MAC at `36 + 10 i`.
#[map(name = "NAT_FLOOR")]
static NAT_FLOOR: Array<[u8; 128]> = Array::with_max_entries(1, 0);

/// One's-complement sum of the 16-bit halves of `w`, folded to 16 bits, plus `acc`.
#[inline(always)]
fn csum_add(acc: u32, w: u32) -> u32 {
    acc + (w >> 16) + (w & 0xffff)
}

/// The least an XDP balancer in NAT mode does, for one client: a TCP/IPv4 frame to the VIP (no
/// IP options) leaves for the backend a hash of its source port picks, from the LB's address;
/// a frame from port 80 to the LB's address (a backend's reply) leaves for the client, from
/// the VIP. Addresses and MACs rewritten, both checksums updated incrementally; ports kept.
/// No flow table, no source ports, no health, no counters: what a NAT connection costs beyond
/// this is the balancer's own work.
#[xdp]
pub fn nat_floor(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    // Ethernet (14), IPv4 without options (20), TCP up to its checksum (18).
    if start + 52 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let Some(cfg) = NAT_FLOOR.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let p = start as *mut u8;
    // SAFETY: the 52 bytes read or written are in the packet (checked above); the JIT loads
    // and stores unaligned words.
    unsafe {
        if *p.add(12) != 0x08 || *p.add(13) != 0 || *p.add(14) != 0x45 || *p.add(23) != 6 {
            return xdp_action::XDP_PASS;
        }
        let word =
            |b: &[u8; 128], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let src = *(p.add(26) as *const u32);
        let dst = *(p.add(30) as *const u32);
        let (new_src, new_dst, mac_at) = if dst == word(cfg, 0) {
            let n = cfg[12] as u32;
            if n == 0 || n > 8 {
                return xdp_action::XDP_PASS;
            }
            // As `fwd_floor`: a 16-bit hash of the source port, times n, over 65536.
            let port = u16::from_be_bytes([*p.add(34), *p.add(35)]) as u32;
            let i = ((((port * 0x9e37) & 0xffff) * n) >> 16) as usize & 7;
            (word(cfg, 4), word(cfg, 32 + 10 * i), 36 + 10 * i)
        } else if dst == word(cfg, 4) && *p.add(34) == 0 && *p.add(35) == 80 {
            (word(cfg, 0), word(cfg, 8), 22)
        } else {
            return xdp_action::XDP_PASS;
        };
        // RFC 1624: HC' = ~(~HC + ~m + m'), for both addresses; the TCP checksum covers them
        // through its pseudo-header, so the same difference applies to both.
        let mut d = 0u32;
        d = csum_add(d, !src);
        d = csum_add(d, !dst);
        d = csum_add(d, new_src);
        d = csum_add(d, new_dst);
        for off in [24usize, 50] {
            let c = p.add(off) as *mut u16;
            let mut x = csum_add(d, !(*c) as u32 & 0xffff);
            x = (x & 0xffff) + (x >> 16);
            x = (x & 0xffff) + (x >> 16);
            *c = !(x as u16);
        }
        *(p.add(26) as *mut u32) = new_src;
        *(p.add(30) as *mut u32) = new_dst;
        for k in 0..6 {
            *p.add(k) = cfg[mac_at + k];
            *p.add(6 + k) = cfg[16 + k];
        }
    }
    xdp_action::XDP_TX
}

/// Length of the frames `bench_wrap` restores: a bare TCP/IPv4 segment.
const BENCH_LEN: usize = 54;

/// The frame `bench_wrap` restores before each run (words 0..14), then its flags (word 14,
/// `BENCH_VARY`). Written by the bench.
#[map(name = "BENCH_TEMPLATE")]
static BENCH_TEMPLATE: Array<[u32; 16]> = Array::with_max_entries(1, 0);

/// `bench_wrap`'s flag: give each run a new 5-tuple (else the template is restored as it is).
const BENCH_VARY: u32 = 1;

/// Runs so far (shared by all CPUs, as test runs move between them): makes each run's 5-tuple
/// new.
#[map(name = "BENCH_SEQ")]
static BENCH_SEQ: Array<u32> = Array::with_max_entries(1, 0);

/// The program under test, at index 0. Written by the bench.
#[map(name = "BENCH_PROGS")]
static BENCH_PROGS: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// Lets `BPF_PROG_TEST_RUN` repeat a path that rewrites its packet or must see a new flow:
/// restores the template frame (a bare TCP/IPv4 segment), with `BENCH_VARY` gives it a source
/// address and port never used before (the run number; checksums updated), and tail-calls the program under test. Its own cost is measured by
/// pointing it at `bench_floor`.
#[xdp]
pub fn bench_wrap(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + BENCH_LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let (Some(t), Some(seq)) = (BENCH_TEMPLATE.get(0), BENCH_SEQ.get_ptr_mut(0)) else {
        return xdp_action::XDP_PASS;
    };
    let p = start as *mut u32;
    // SAFETY: BENCH_LEN bytes are in the packet (checked above); 13 words and a halfword.
    unsafe {
        for (i, w) in t.iter().take(13).enumerate() {
            *p.add(i) = *w;
        }
        *((start + 52) as *mut u16) = t[13] as u16;
        if t[14] & BENCH_VARY != 0 {
            let n = *seq;
            *seq = n.wrapping_add(1);
            // Source port (bytes 34..36) and the low half of the IPv4 source (28..30), with
            // the IPv4 header checksum (24..26) and the TCP checksum (50..52) kept right.
            let (port, addr) = ((start + 34) as *mut u16, (start + 28) as *mut u16);
            let (ip_sum, tcp_sum) = ((start + 24) as *mut u16, (start + 50) as *mut u16);
            let (new_port, new_addr) = ((n as u16).to_be(), ((n >> 16) as u16).to_be());
            *ip_sum = csum_replace(*ip_sum, *addr, new_addr);
            *tcp_sum = csum_replace(csum_replace(*tcp_sum, *addr, new_addr), *port, new_port);
            *port = new_port;
            *addr = new_addr;
        }
        BENCH_PROGS.tail_call(&ctx, 0);
    }
    xdp_action::XDP_ABORTED
}

/// A ones' complement checksum `sum` after one of its 16-bit words changes from `old` to `new`
/// (RFC 1624, eqn. 3); byte order does not matter as long as all three are in the same one.
#[inline(always)]
fn csum_replace(sum: u16, old: u16, new: u16) -> u16 {
    let mut s = (!sum) as u32 + (!old) as u32 + new as u32;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
