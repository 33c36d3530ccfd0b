//! steer's XDP datapath.
//!
//! `steer` reads like Katran's `balancer_ingress`: bounds-check and parse, find the service,
//! choose a backend, forward, and count exactly one outcome per packet. It never returns
//! `XDP_ABORTED`: anything it cannot handle is passed to the kernel or dropped with a counted
//! reason.
#![no_std]
#![no_main]

mod forward;
mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use steer_common::outcome;

/// Why processing stopped before a packet was forwarded.
pub enum Stop {
    /// Hand the packet to the kernel untouched, counting `outcome`.
    Pass(u32),
    /// Drop the packet, counting `outcome`.
    Drop(u32),
}

#[xdp]
pub fn steer(ctx: XdpContext) -> u32 {
    let (action, why) = match try_steer(&ctx) {
        Ok(action) => (action, outcome::TX_FORWARD),
        Err(Stop::Pass(why)) => (xdp_action::XDP_PASS, why),
        Err(Stop::Drop(why)) => (xdp_action::XDP_DROP, why),
    };
    stats::count_outcome(why);
    action
}

#[inline(always)]
fn try_steer(ctx: &XdpContext) -> Result<u32, Stop> {
    let pkt = parse::parse(ctx)?;
    let (svc_id, svc) = select::lookup_service(&pkt)?;
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats::count_service(svc_id, len, &pkt);
    let (be_id, be) = select::select_backend(svc_id, svc, &pkt)?;
    stats::count_backend(be_id, len, &pkt);
    forward::forward_dsr(ctx, be)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
