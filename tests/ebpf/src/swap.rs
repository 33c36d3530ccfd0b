//! `swap_slow_reader`: reads what steer's datapath reads for a new flow — the service entry,
//! slots of the Maglev table it names, the backend entries those slots name — but spends about
//! a millisecond between the first reads and the others, as a packet would whose CPU was
//! interrupted (or whose vCPU was descheduled) mid-run. `tests/tests/swap.rs` loads it on steer's
//! own maps (reused from their pins) while it changes the pools, and checks that the balancer
//! waited for it: the table slots and the service entry unchanged under it, the backends they
//! named still ready and up at its end.
//!
//! `swap_lookup_hammer`: looks two services up hundreds of times a run (the service index, and
//! the services map where the index sends it), counting lookups that find nothing, for the test
//! that a service is never missed while the pools change.

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{Array, HashMap},
    programs::XdpContext,
};
use steer_common::{
    hash::service_slot, maglev_index, Backend, Indexed, ServiceInfo, ServiceKey, ServiceSlot,
    FAMILY_V4, MAGLEV_CHUNK, PROTO_TCP,
};

/// steer's maps, by name and type; the test reuses the datapath's pinned ones, so the sizes
/// here do not matter.
#[map(name = "STEER_SVC_V3")]
static SERVICES: HashMap<ServiceKey, u32> = HashMap::with_max_entries(1, 0);
#[map(name = "STEER_SVCX_V1")]
static SERVICE_INDEX: Array<ServiceSlot> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "STEER_SVCI_V1")]
static SERVICE_INFO: Array<ServiceInfo> = Array::with_max_entries(1, BPF_F_MMAPABLE);
#[map(name = "STEER_BE_V2")]
static BACKENDS: Array<Backend> = Array::with_max_entries(1, 0);
#[map(name = "STEER_MAGLEV_V1")]
static MAGLEV: Array<[u32; MAGLEV_CHUNK as usize]> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// Clock reads between the first read and the others: about 20-40 ns each here. A counted loop
/// with no other branch, so the verifier walks it once per iteration without keeping states.
const SPIN: u32 = 40_000;

/// Bits of the result's flags byte.
const TABLE_SLOT_CHANGED: u8 = 1;
const SERVICE_ENTRY_CHANGED: u8 = 2;

/// Input: an Ethernet/IPv4/TCP frame to a service; its source port picks the 16 Maglev slots to
/// read (one array element). Output, over the frame's first bytes (`XDP_TX`): a backend id
/// (u32, little endian) and its admin state and health at the end — the first of the 16 not
/// ready and up then, else the first — the flags byte, and how many of the 16 were not ready
/// and up. `XDP_PASS` when there is nothing to read.
#[xdp]
pub fn swap_slow_reader(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 54 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let mut key = ServiceKey {
        addr: [0; 16],
        port_be: 0,
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    // SAFETY: 54 bytes are in the packet (checked above).
    let idx = unsafe {
        for i in 0..4 {
            key.addr[i] = *((start + 30 + i) as *const u8);
        }
        key.port_be = core::ptr::read_unaligned((start + 36) as *const u16);
        u16::from_be(core::ptr::read_unaligned((start + 34) as *const u16)) as u32
    };
    // SAFETY: a pointer from a map lookup, valid for this run.
    let Some(id) = SERVICES.get_ptr(&key).map(|id| unsafe { *id }) else {
        return xdp_action::XDP_PASS;
    };
    let Some(info) = SERVICE_INFO.get_ptr(id) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above; the copy `live` names, as the datapath reads it.
    let svc = unsafe {
        let live = core::ptr::read_volatile(&(*info).live);
        &(*info).copies[(live & 1) as usize] as *const steer_common::Service
    };
    // SAFETY: pointers from map lookups, valid for this run; read volatile, as the point is
    // to see whether they change.
    unsafe {
        let before = core::ptr::read_volatile(svc);
        if before.maglev_size == 0 {
            return xdp_action::XDP_PASS;
        }
        // Slots first..first+16 of the table, all below its size: one whole element, as
        // tables start at a multiple of MAGLEV_CHUNK.
        let whole = before.maglev_size / MAGLEV_CHUNK * MAGLEV_CHUNK;
        if whole == 0 {
            return xdp_action::XDP_PASS;
        }
        let first = idx * MAGLEV_CHUNK % whole;
        let pos = maglev_index(before.id, before.table_slot & 1, first);
        let Some(chunk) = MAGLEV.get_ptr(pos / MAGLEV_CHUNK) else {
            return xdp_action::XDP_PASS;
        };
        let ids = core::ptr::read_volatile(chunk);
        for _ in 0..SPIN {
            bpf_ktime_get_ns();
        }
        let mut flags = 0;
        if core::ptr::read_volatile(chunk) != ids {
            flags |= TABLE_SLOT_CHANGED;
        }
        if core::ptr::read_volatile(svc) != before {
            flags |= SERVICE_ENTRY_CHANGED;
        }
        let (mut shown, mut bad) = ((ids[0], 0xff, 0xff), 0u8);
        for (i, id) in ids.iter().enumerate() {
            let (admin, health) = match BACKENDS.get_ptr(*id) {
                Some(be) => {
                    let be = core::ptr::read_volatile(be);
                    (be.admin, be.health)
                }
                None => (0xff, 0xff),
            };
            let ok = admin == steer_common::admin::READY && health == steer_common::health::UP;
            if i == 0 || (!ok && bad == 0) {
                shown = (*id, admin, health);
            }
            if !ok {
                bad += 1;
            }
        }
        let out = start as *mut u8;
        for (i, b) in shown.0.to_le_bytes().iter().enumerate() {
            *out.add(i) = *b;
        }
        *out.add(4) = shown.1;
        *out.add(5) = shown.2;
        *out.add(6) = flags;
        *out.add(7) = bad;
    }
    xdp_action::XDP_TX
}

/// Whether the service index, or the services map where the index says several share a slot,
/// finds `key`, and the settings copy it then reads is that service's: the datapath's
/// `select::service`.
#[inline(always)]
fn found(key: &ServiceKey) -> bool {
    let Some(slot) = SERVICE_INDEX.get(service_slot(&key.addr, key.port_be, key.proto)) else {
        return false;
    };
    let id = match slot.find(key) {
        Indexed::Id(id) => id,
        // SAFETY: a pointer from a map lookup, valid for this run.
        Indexed::Shared => match SERVICES.get_ptr(key) {
            Some(id) => unsafe { *id },
            None => return false,
        },
        Indexed::None => return false,
    };
    let Some(info) = SERVICE_INFO.get_ptr(id) else {
        return false;
    };
    // SAFETY: as above; the copy `live` names, as the datapath reads it.
    unsafe {
        let live = core::ptr::read_volatile(&(*info).live);
        core::ptr::read_volatile(&(*info).copies[(live & 1) as usize].id) == id
    }
}

/// Whether the services map itself has `key` (whatever the index says).
#[inline(always)]
fn in_map(key: &ServiceKey) -> bool {
    SERVICES.get_ptr(key).is_some()
}

/// Lookups of each of the two services per run of `swap_lookup_hammer`.
const HAMMER_LOOKUPS: u32 = 128;

/// Input: an Ethernet/IPv4/TCP frame to the first of two services whose VIPs are consecutive
/// addresses (same port). Looks both services up `HAMMER_LOOKUPS` times each, alternating, as
/// the datapath does (the index, the map where a slot is shared, the settings copy) and in the
/// services map itself (which the index bypasses for a slot of one service, but which must
/// never miss either), and writes over the frame's first bytes (`XDP_TX`) how many lookups of
/// each went wrong (two u32, little endian): a service that exists must always be found,
/// with its own settings, whatever the writes of a pool change are doing. Many lookups a run make a rare miss seen far sooner than one SYN a run.
#[xdp]
pub fn swap_lookup_hammer(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + 54 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let mut a = ServiceKey {
        addr: [0; 16],
        port_be: 0,
        proto: PROTO_TCP,
        family: FAMILY_V4,
    };
    // SAFETY: 54 bytes are in the packet (checked above).
    unsafe {
        for i in 0..4 {
            a.addr[i] = *((start + 30 + i) as *const u8);
        }
        a.port_be = core::ptr::read_unaligned((start + 36) as *const u16);
    }
    let mut b = a;
    b.addr[3] = b.addr[3].wrapping_add(1);
    let (mut miss_a, mut miss_b) = (0u32, 0u32);
    for _ in 0..HAMMER_LOOKUPS {
        if !found(&a) || !in_map(&a) {
            miss_a += 1;
        }
        if !found(&b) || !in_map(&b) {
            miss_b += 1;
        }
    }
    // SAFETY: 54 bytes are in the packet (checked above).
    unsafe {
        core::ptr::write_unaligned(start as *mut u32, miss_a.to_le());
        core::ptr::write_unaligned((start + 4) as *mut u32, miss_b.to_le());
    }
    xdp_action::XDP_TX
}
