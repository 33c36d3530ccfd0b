//! Service lookup and backend selection.

use steer_common::{
    hash::flow_hash, maglev_index, outcome, Backend, Service, ServiceKey, BACKEND_NONE,
    MAGLEV_CHUNK,
};

use crate::{
    maps::{BACKENDS, MAGLEV, SERVICES},
    parse::Packet,
    Stop,
};

/// The service a packet is addressed to, with its id.
#[inline(always)]
pub fn lookup_service(pkt: &Packet) -> Result<(u32, &'static Service), Stop> {
    let key = ServiceKey {
        addr: pkt.key.dst,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    // SAFETY: service entries are only replaced whole by userspace (map update is atomic per
    // element for hash maps with preallocation).
    match unsafe { SERVICES.get(&key) } {
        Some(svc) => Ok((svc.id, svc)),
        None => Err(Stop::Pass(outcome::PASS_NOT_SERVICE)),
    }
}

/// Chooses the backend for a packet from the service's live Maglev table.
#[inline(always)]
pub fn select_backend(
    svc_id: u32,
    svc: &Service,
    pkt: &Packet,
) -> Result<(u32, &'static Backend), Stop> {
    let size = svc.maglev_size;
    if size == 0 {
        return Err(Stop::Drop(outcome::DROP_NO_BACKEND));
    }
    let slot = flow_hash(&pkt.key) % size;
    let pos = maglev_index(svc_id, svc.table_slot & 1, slot);
    let be_id = match MAGLEV.get(pos / MAGLEV_CHUNK) {
        Some(chunk) => chunk[(pos % MAGLEV_CHUNK) as usize],
        None => return Err(Stop::Drop(outcome::DROP_BAD_BACKEND)),
    };
    if be_id == BACKEND_NONE {
        return Err(Stop::Drop(outcome::DROP_NO_BACKEND));
    }
    backend(be_id)
}

/// The backend with id `id`, if that slot holds one.
#[inline(always)]
pub fn backend(id: u32) -> Result<(u32, &'static Backend), Stop> {
    match BACKENDS.get(id) {
        Some(be) if be.admin != steer_common::admin::NONE => Ok((id, be)),
        _ => Err(Stop::Drop(outcome::DROP_BAD_BACKEND)),
    }
}
