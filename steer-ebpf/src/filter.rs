//! The pre-filter: one array lookup tells most packets for no service (and no NAT flow) to
//! pass, before the services map's hash lookup. Written by steer-ctl (`map::FILTER`).

use steer_common::{hash::filter_bit, FlowKey};

use crate::maps::FILTER;

/// Whether bit `b` of the filter is set.
#[inline(always)]
fn bit(b: u32) -> bool {
    FILTER
        .get(b >> 6)
        .is_some_and(|w| (*w >> (b & 63)) & 1 != 0)
}

/// False when no NAT flow leaves from the packet's destination address (so it is no
/// backend's reply).
#[inline(always)]
pub fn maybe_nat_reply(key: &FlowKey) -> bool {
    bit(filter_bit(&key.dst, 0, 0))
}

/// Whether a service may have the packet's destination address, port and protocol (false:
/// none has), and whether it may be a NAT service (its flows may be in the NAT flow cache):
/// its bit and the neighbour bit (`hash::nat_filter_bit`), from one word.
#[inline(always)]
pub fn maybe_service_nat(key: &FlowKey) -> (bool, bool) {
    let b = filter_bit(&key.dst, key.dport_be, key.proto);
    FILTER.get(b >> 6).map_or((false, false), |w| {
        ((*w >> (b & 63)) & 1 != 0, (*w >> ((b ^ 1) & 63)) & 1 != 0)
    })
}
