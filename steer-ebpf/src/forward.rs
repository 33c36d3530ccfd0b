//! Forwarding modes.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use steer_common::{outcome, Backend};

use crate::{parse::ptr_at_mut, Stop};

/// L2 direct server return: destination MAC := the backend's, source MAC := ours (the address
/// the frame was sent to), out the way it came. L3 and L4 stay untouched; the backend holds the
/// VIP on a loopback and answers the client directly.
#[inline(always)]
pub fn forward_dsr(ctx: &XdpContext, be: &Backend) -> Result<u32, Stop> {
    let eth = ptr_at_mut::<[u8; 12]>(ctx, 0).ok_or(Stop::Pass(outcome::PASS_MALFORMED))?;
    // SAFETY: ptr_at_mut checked that the 12 bytes are in the packet.
    let macs = unsafe { &mut *eth };
    let mut ours = [0u8; 6];
    ours.copy_from_slice(&macs[0..6]);
    macs[0..6].copy_from_slice(&be.mac);
    macs[6..12].copy_from_slice(&ours);
    Ok(xdp_action::XDP_TX)
}
