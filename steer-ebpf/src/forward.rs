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
    let p = eth as *mut u8;
    let mac = be.mac.as_ptr();
    // SAFETY: ptr_at_mut checked that the 12 bytes are in the packet; `Backend::mac` sits at
    // a 4-byte aligned offset of the map value. A word and a halfword per address, not byte
    // copies (the JIT loads and stores unaligned words in the packet natively).
    unsafe {
        let (ours_lo, ours_hi) = (*(p as *const u32), *(p.add(4) as *const u16));
        *(p as *mut u32) = *(mac as *const u32);
        *(p.add(4) as *mut u16) = *(mac.add(4) as *const u16);
        *(p.add(6) as *mut u32) = ours_lo;
        *(p.add(10) as *mut u16) = ours_hi;
    }
    Ok(xdp_action::XDP_TX)
}
