//! `XDP_PASS` and nothing else, for the peer of a veth that runs steer in native mode.
//!
//! veth hands `XDP_TX` frames to its peer's ring, but only kicks the peer's NAPI when the peer
//! has an XDP program of its own; with none, the frames wait there until unrelated traffic
//! arrives (seen on 6.18: the LB transmitted, the peer counted nothing). Real NICs need none of
//! this. Used by the tests' and the demo's topologies.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn steer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
