//! Service lookup and backend selection.

use steer_common::{
    hash::flow_hash, maglev_index, outcome, svc_flags, Backend, Service, ServiceKey, BACKEND_NONE,
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
    // SAFETY: service entries are only replaced whole by userspace.
    match unsafe { SERVICES.get(&key) } {
        Some(svc) => Ok((svc.id, svc)),
        None => Err(Stop::Pass(outcome::PASS_NOT_SERVICE)),
    }
}

/// The backend with id `id`, if that slot holds one.
#[inline(always)]
fn backend(id: u32) -> Option<(u32, &'static Backend)> {
    match BACKENDS.get(id) {
        Some(be) if be.admin != steer_common::admin::NONE => Some((id, be)),
        _ => None,
    }
}

/// The backend a flow is pinned to, unless it has been removed (slot empty, or given to
/// another backend since).
#[inline(always)]
pub fn flow_backend(id: u32, gen: u16) -> Option<(u32, &'static Backend)> {
    backend(id).filter(|(_, be)| be.gen == gen)
}

/// The service's Maglev choice for a packet; `None` when the table is empty.
#[inline(always)]
fn maglev_pick(
    svc_id: u32,
    svc: &Service,
    pkt: &Packet,
) -> Result<Option<(u32, &'static Backend)>, Stop> {
    let size = svc.maglev_size;
    if size == 0 {
        return Ok(None);
    }
    let slot = flow_hash(&pkt.key) % size;
    let pos = maglev_index(svc_id, svc.table_slot & 1, slot);
    let be_id = match MAGLEV.get(pos / MAGLEV_CHUNK) {
        Some(chunk) => chunk[(pos % MAGLEV_CHUNK) as usize],
        None => return Err(Stop::Drop(outcome::DROP_BAD_BACKEND)),
    };
    if be_id == BACKEND_NONE {
        return Ok(None);
    }
    match backend(be_id) {
        Some(b) => Ok(Some(b)),
        None => Err(Stop::Drop(outcome::DROP_BAD_BACKEND)),
    }
}

/// Where a new flow goes: in maintenance, the service's maintenance backend; otherwise its
/// Maglev choice, or the fallback backend when no backend is eligible. `None`: nowhere.
#[inline(always)]
pub fn choose_new(
    svc_id: u32,
    svc: &Service,
    pkt: &Packet,
) -> Result<Option<(u32, &'static Backend)>, Stop> {
    if svc.flags & svc_flags::MAINTENANCE != 0 {
        return Ok(backend(svc.maintenance).filter(|(_, be)| be.eligible()));
    }
    if let Some(b) = maglev_pick(svc_id, svc, pkt)? {
        return Ok(Some(b));
    }
    Ok(backend(svc.fallback).filter(|(_, be)| be.eligible()))
}
