//! The pre-filter: one array lookup tells most packets for no service (and no NAT flow) to
//! pass, before the services map's hash lookup. Written by steer-ctl (`map::FILTER`).

use steer_common::{
    hash::{filter_bit, nat_filter_bit},
    FlowKey,
};

use crate::maps::FILTER;

/// Whether bit `b` of the filter is set.
#[inline(always)]
fn bit(b: u32) -> bool {
    FILTER
        .get(b >> 6)
        .is_some_and(|w| (*w >> (b & 63)) & 1 != 0)
}

/// False when no service has the packet's destination address, port and protocol.
#[inline(always)]
pub fn maybe_service(key: &FlowKey) -> bool {
    bit(filter_bit(&key.dst, key.dport_be, key.proto))
}

/// False when no NAT flow leaves from the packet's destination address (so it is no
/// backend's reply).
#[inline(always)]
pub fn maybe_nat_reply(key: &FlowKey) -> bool {
    bit(filter_bit(&key.dst, 0, 0))
}

/// False when no NAT service has the packet's destination address, port and protocol (so its
/// flow is in no NAT cache).
#[inline(always)]
pub fn maybe_nat_service(key: &FlowKey) -> bool {
    bit(nat_filter_bit(&key.dst, key.dport_be, key.proto))
}
