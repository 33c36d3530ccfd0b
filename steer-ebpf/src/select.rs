//! Service lookup and backend selection.

use steer_common::{
    hash::{flow_hash, service_slot},
    maglev_index, outcome, svc_flags, Backend, FlowKey, Indexed, Service, ServiceKey, BACKEND_NONE,
    MAGLEV_CHUNK,
};

use crate::{
    maps::{BACKENDS, MAGLEV, SERVICES, SERVICE_INDEX, SERVICE_INFO},
    observe,
    parse::Packet,
    Stop,
};

/// The service a packet is addressed to, with its id.
#[inline(always)]
pub fn lookup_service(pkt: &Packet) -> Result<(u32, &'static Service), Stop> {
    find(&key_of(pkt))
        .map(|svc| (svc.id, svc))
        .ok_or(Stop::Pass(outcome::PASS_NOT_SERVICE))
}

/// `lookup_service` out of line (a BPF call with a frame of its own), for the NAT programs,
/// whose own frames are at the edge of the verifier's 512 bytes of stack for a call chain.
#[inline(never)]
pub fn lookup_service_call(pkt: &Packet) -> Option<&'static Service> {
    find(&key_of(pkt))
}

/// The service with key `key` (its id is its own `id`), out of line as `lookup_service_call`.
#[inline(never)]
pub fn service(key: &ServiceKey) -> Option<&'static Service> {
    find(key)
}

#[inline(always)]
fn key_of(pkt: &Packet) -> ServiceKey {
    ServiceKey {
        addr: pkt.key.dst,
        port_be: pkt.key.dport_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
    }
}

/// The live copy of the settings of the service with key `key`. The index's slot names it
/// (one array lookup) unless several services share the slot.
#[inline(always)]
fn find(key: &ServiceKey) -> Option<&'static Service> {
    let slot = SERVICE_INDEX.get(service_slot(&key.addr, key.port_be, key.proto))?;
    let id = match slot.find(key) {
        Indexed::Id(id) => id,
        // SAFETY: an entry is never replaced while its service lives (`maps::SERVICES`).
        Indexed::Shared => *unsafe { SERVICES.get(key) }?,
        Indexed::None => return None,
    };
    let info = SERVICE_INFO.get(id)?;
    // SAFETY: `live` is a u32 userspace stores whole; the copy it names is not written
    // while a packet that read it may still run (`ServiceInfo`).
    let live = unsafe { core::ptr::read_volatile(&info.live) };
    Some(&info.copies[(live & 1) as usize])
}

/// The backend with id `id`, if that slot holds one.
#[inline(always)]
pub fn backend(id: u32) -> Option<(u32, &'static Backend)> {
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

/// The service's Maglev choice for a flow hash; `None` when the table is empty.
#[inline(always)]
fn maglev_pick(
    svc_id: u32,
    svc: &Service,
    hash: u32,
) -> Result<Option<(u32, &'static Backend)>, Stop> {
    let size = svc.maglev_size;
    if size == 0 {
        return Ok(None);
    }
    let slot = hash % size;
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

/// Further Maglev picks tried when the first one must be avoided (a backend that just failed
/// the flow's attempt, or one passive health took out before steer-ctl republished the table).
const REPICKS: u32 = 4;
/// Step between the hashes of successive picks (the golden ratio's, odd).
const REPICK_STEP: u32 = 0x9e37_79b9;

/// Where a new flow goes: in maintenance, the service's maintenance backend; otherwise its
/// Maglev choice, or the fallback backend when no backend is eligible. `None`: nowhere.
/// (`NAT`: the program of NAT services, the only ones with passive health.)
#[inline(always)]
pub fn choose_new<const NAT: bool>(
    svc_id: u32,
    svc: &Service,
    pkt: &Packet,
) -> Result<Option<(u32, &'static Backend)>, Stop> {
    if svc.flags & svc_flags::MAINTENANCE != 0 {
        return Ok(backend(svc.maintenance).filter(|(_, be)| be.eligible()));
    }
    let hash = flow_hash(&pkt.key);
    match maglev_pick(svc_id, svc, hash)? {
        // NAT: a backend passive health took out, until steer-ctl republishes the table.
        Some((id, _)) if NAT && observe::is_down(svc, id) => {
            Ok(choose_other(svc_id, svc, hash, id).or_else(|| fallback(svc)))
        }
        Some(b) => Ok(Some(b)),
        None => Ok(fallback(svc)),
    }
}

/// The service's fallback backend, when eligible.
#[inline(always)]
fn fallback(svc: &Service) -> Option<(u32, &'static Backend)> {
    backend(svc.fallback).filter(|(_, be)| be.eligible())
}

/// Another eligible backend than `avoid` for a flow of hash `hash`: a few further Maglev
/// picks (weights still apply), each one that passive health has not taken out. `None` when
/// the picks all land on `avoid` (it may be the only backend).
#[inline(always)]
pub fn choose_other(
    svc_id: u32,
    svc: &Service,
    hash: u32,
    avoid: u32,
) -> Option<(u32, &'static Backend)> {
    backend(choose_other_call(svc_id, svc, hash, avoid))
}

/// `choose_other` as a BPF call of its own (its loop is walked once, not at every caller).
/// Returns the backend id, or `BACKEND_NONE`.
#[inline(never)]
fn choose_other_call(svc_id: u32, svc: &Service, hash: u32, avoid: u32) -> u32 {
    for k in 1..=REPICKS {
        if let Ok(Some((id, be))) = maglev_pick(svc_id, svc, hash.wrapping_add(k * REPICK_STEP)) {
            if id != avoid && be.takes_new_flows() && !observe::is_down(svc, id) {
                return id;
            }
        }
    }
    BACKEND_NONE
}

/// Where a failed attempt of a flow on backend `avoid` goes next: in maintenance, nowhere
/// else; otherwise another backend, or the fallback when it is not `avoid`.
#[inline(always)]
pub fn choose_instead(
    svc_id: u32,
    svc: &Service,
    key: &FlowKey,
    avoid: u32,
) -> Result<Option<(u32, &'static Backend)>, Stop> {
    if svc.flags & svc_flags::MAINTENANCE != 0 {
        return Ok(None);
    }
    if let Some(b) = choose_other(svc_id, svc, flow_hash(key), avoid) {
        return Ok(Some(b));
    }
    Ok(fallback(svc).filter(|(id, _)| *id != avoid))
}
