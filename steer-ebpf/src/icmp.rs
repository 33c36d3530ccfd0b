//! ICMP errors about NAT flows, translated so that path MTU discovery and unreachable
//! reports work through the LB (SPEC.md, `nat`).
//!
//! Two cases, told apart by the packet the error quotes:
//! - It quotes a translated packet the LB sent to a backend (LB address and source port →
//!   backend): it came from the backend or a router on the way, addressed to the LB. Sent on
//!   to the client, quoting the client's own packet (client → VIP); its source becomes the VIP
//!   when it was the backend (a router's address stays, as on any path).
//! - It quotes a reply the LB sent to a client (VIP → client): it came from a router on the
//!   client's side, addressed to the VIP. Sent on to the backend, quoting the backend's own
//!   reply (backend → LB address and source port), from that LB address.
//!
//! The quoted IP header and ports, the outer addresses, and the checksums that cover them
//! (outer IPv4 header, ICMP — with ICMPv6's pseudo-header —, quoted IPv4 header) are updated
//! incrementally. The quoted TCP or UDP checksum is left as it was: no stack checks it, and
//! the quote is often cut before it.

use aya_ebpf::programs::XdpContext;
use steer_common::{event, outcome, FlowKey, ServiceKey, FAMILY_V4, PROTO_TCP, PROTO_UDP};

use crate::{
    addr::same,
    csum::{swap_addr, Delta},
    fib, flow,
    maps::ICMP_PLAN,
    nat,
    parse::{ptr_at_mut, Packet, PROTO_ICMP, PROTO_ICMPV6},
    select, stats, Stop, Verdict,
};

/// ICMP types that quote the packet they are about: destination unreachable (fragmentation
/// needed, port unreachable, …) and time exceeded.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
/// ICMPv6: destination unreachable, packet too big, time exceeded.
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;

/// ICMP header: type, code, checksum, then 4 bytes (unused, or the MTU).
const ICMP_LEN: usize = 8;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;

#[inline(always)]
fn bytes(w: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, plain integers.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(w) }
}

/// How an ICMP error is to be rewritten: the quote as it is and as it becomes, and the outer
/// addresses. Kept in this CPU's `ICMP_PLAN` slot rather than on the stack (the reply
/// program's calls would not fit in 512 bytes with it); filled by `plan_to_client` or
/// `plan_to_backend`, then applied by `rewrite`.
#[derive(Clone, Copy)]
pub struct Plan {
    old: FlowKey,
    quote: FlowKey,
    src: [u8; 16],
    dst: [u8; 16],
}

/// An ICMP error about a NAT flow, translated and sent on; anything else is passed as not for
/// a service.
#[inline(always)]
pub fn translate(ctx: &XdpContext, pkt: &Packet) -> Result<Verdict, Stop> {
    let to_client = match translate_call(ctx, pkt) {
        TO_CLIENT => true,
        TO_BACKEND => false,
        stopped => return Ok(fib::unpack(stopped)),
    };
    // Each step a call of its own from here, so that no two of their stacks are nested.
    let stopped = rewrite_call(ctx, pkt);
    if stopped != 0 {
        return Ok(fib::unpack(stopped));
    }
    stats::count_event(event::ICMP_TRANSLATED);
    // Sent from here: the FIB request's stack is never on top of the translation's.
    let route = fib::Route::new(pkt.key.family, pkt.key.proto, pkt.l3_off, to_client);
    Ok(fib::unpack(fib::send_packet(ctx, route)))
}

/// `translate_call`'s answers besides a `fib::pack`ed verdict (whose low word is a non-zero
/// XDP action): rewritten, to be sent to the client; rewritten, to be sent to the backend.
const TO_CLIENT: u64 = 1 << 62;
const TO_BACKEND: u64 = 1 << 61;

/// Finds the flow an ICMP error is about and plans its rewrite (a BPF call of its own, so
/// that the reply program's frame stays small). Returns `TO_CLIENT`, `TO_BACKEND`, or the
/// `fib::pack`ed verdict that stopped it.
#[inline(never)]
fn translate_call(ctx: &XdpContext, pkt: &Packet) -> u64 {
    match try_translate(ctx, pkt) {
        Ok(true) => TO_CLIENT,
        Ok(false) => TO_BACKEND,
        Err(e) => fib::pack(Err(e)),
    }
}

/// True: to be rewritten for the client; false: for the backend.
#[inline(always)]
fn try_translate(ctx: &XdpContext, pkt: &Packet) -> Result<bool, Stop> {
    let not_service = Stop::Pass(outcome::PASS_NOT_SERVICE);
    let v4 = pkt.key.family == FAMILY_V4;
    let proto = if v4 { PROTO_ICMP } else { PROTO_ICMPV6 };
    if pkt.key.proto != proto {
        return Err(not_service);
    }
    let (icmp, q) = message(ctx, pkt).ok_or(not_service)?;
    // SAFETY: `message` checked the ICMP header.
    let ty = unsafe { *icmp };
    let quoting = if v4 {
        ty == ICMP_DEST_UNREACH || ty == ICMP_TIME_EXCEEDED
    } else {
        ty == ICMPV6_DEST_UNREACH || ty == ICMPV6_PACKET_TOO_BIG || ty == ICMPV6_TIME_EXCEEDED
    };
    // SAFETY: `message` checked the quoted header's first byte.
    let first = unsafe { *q };
    let bare = if v4 { first == 0x45 } else { first >> 4 == 6 };
    if !quoting || !bare {
        return Err(not_service);
    }
    // SAFETY: this CPU's slot, used by this packet only.
    let plan = unsafe { &mut *ICMP_PLAN.get_ptr_mut(0).ok_or(not_service)? };
    plan.old = quoted_key(q, if v4 { IPV4_LEN } else { IPV6_LEN }, v4);
    if plan.old.proto != PROTO_TCP && plan.old.proto != PROTO_UDP {
        return Err(not_service);
    }
    plan.quote = plan.old;
    // The quote's source is the LB's (a translated packet to a backend) when the reverse
    // entry of its replies exists; otherwise it may be a VIP's (a reply to a client).
    let to_client = if plan_to_client(pkt, plan) {
        true
    } else if plan_to_backend(plan) {
        false
    } else {
        return Err(not_service);
    };
    Ok(to_client)
}

/// Applies this CPU's plan: the quote, then the outer header (two BPF calls, whose stacks
/// are never nested). Returns 0, or the `fib::pack`ed verdict that stopped it.
#[inline(always)]
fn rewrite_call(ctx: &XdpContext, pkt: &Packet) -> u64 {
    let inner = rewrite_quote(ctx, pkt);
    if inner == u64::MAX {
        return fib::pack(Err(Stop::Pass(outcome::PASS_MALFORMED)));
    }
    rewrite_outer(ctx, pkt, inner)
}

/// This CPU's plan.
#[inline(always)]
fn plan() -> Option<&'static Plan> {
    // SAFETY: this CPU's slot, filled by `translate_call` for this packet.
    ICMP_PLAN.get_ptr_mut(0).map(|p| unsafe { &*p })
}

/// The ICMP header and the quoted packet's IP header, with the bare IP header and 8 bytes of
/// TCP or UDP checked to be in the frame.
#[inline(always)]
fn message(ctx: &XdpContext, pkt: &Packet) -> Option<(*mut u8, *mut u8)> {
    let icmp = ptr_at_mut::<[u8; ICMP_LEN]>(ctx, pkt.l4_off)? as *mut u8;
    let q = if pkt.key.family == FAMILY_V4 {
        ptr_at_mut::<[u8; IPV4_LEN + 8]>(ctx, pkt.l4_off + ICMP_LEN)? as *mut u8
    } else {
        ptr_at_mut::<[u8; IPV6_LEN + 8]>(ctx, pkt.l4_off + ICMP_LEN)? as *mut u8
    };
    Some((icmp, q))
}

/// An error quoting a translated packet the LB sent to a backend: for the client, quoting the
/// client's own packet, from the VIP when the backend itself sent it (a router's address
/// stays). False when the quote is no NAT flow's.
#[inline(never)]
fn plan_to_client(pkt: &Packet, plan: &mut Plan) -> bool {
    let quoted = &plan.old;
    let reply = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        sport_be: quoted.dport_be,
        dport_be: quoted.sport_be,
        ..*quoted
    };
    let Some(r) = nat::reverse_ptr(&reply) else {
        return false;
    };
    // SAFETY: pointer from the lookup, valid for this run.
    let r = unsafe { &*r };
    plan.src = if same(&pkt.key.src, &quoted.dst) {
        r.vip
    } else {
        pkt.key.src
    };
    plan.quote.src = r.client;
    plan.quote.dst = r.vip;
    plan.quote.sport_be = r.client_port_be;
    plan.quote.dport_be = r.vip_port_be;
    plan.dst = r.client;
    true
}

/// An error quoting a reply the LB sent to a client: for the backend, quoting the backend's
/// own reply, from the LB address that flow uses. False when the quote is no NAT flow's.
#[inline(never)]
fn plan_to_backend(plan: &mut Plan) -> bool {
    let quoted = &plan.old;
    let client = FlowKey {
        src: quoted.dst,
        dst: quoted.src,
        sport_be: quoted.dport_be,
        dport_be: quoted.sport_be,
        ..*quoted
    };
    let Some(f) = flow::lookup_flow(&client).or_else(|| flow::lookup_transient(&client)) else {
        return false;
    };
    // SAFETY: pointer from the lookup, valid for this run.
    let nat = nat::Nat::of(unsafe { &*f });
    // SAFETY: as above.
    let (backend, gen) = unsafe { ((*f).backend, (*f).gen) };
    if !nat.is_nat() {
        return false;
    }
    let key = ServiceKey {
        addr: client.dst,
        port_be: client.dport_be,
        proto: client.proto,
        family: client.family,
    };
    let Some(svc_id) = select::service(&key).map(|s| s.id) else {
        return false;
    };
    let Some((_, be)) = select::flow_backend(backend, gen) else {
        return false;
    };
    let Some(lb) = nat::source_of(svc_id, be, nat) else {
        return false;
    };
    plan.quote.src = be.addr;
    plan.quote.dst = lb;
    plan.quote.sport_be = be.port_be;
    plan.quote.dport_be = nat.port_be;
    plan.src = lb;
    plan.dst = be.addr;
    true
}

/// The 5-tuple of the quoted packet (its IP header at `q`, ports `l4` bytes after).
#[inline(always)]
fn quoted_key(q: *mut u8, l4: usize, v4: bool) -> FlowKey {
    // SAFETY: the caller checked the bare IP header and 8 bytes after it.
    unsafe {
        let (src, dst, proto) = if v4 {
            (
                [*(q.add(12) as *const u32), 0, 0, 0],
                [*(q.add(16) as *const u32), 0, 0, 0],
                *q.add(9),
            )
        } else {
            let mut s = [0u32; 4];
            let mut d = [0u32; 4];
            for i in 0..4 {
                s[i] = *(q.add(8 + 4 * i) as *const u32);
                d[i] = *(q.add(24 + 4 * i) as *const u32);
            }
            (s, d, *q.add(6))
        };
        FlowKey {
            src: bytes(src),
            dst: bytes(dst),
            sport_be: *(q.add(l4) as *const u16),
            dport_be: *(q.add(l4 + 2) as *const u16),
            proto,
            family: if v4 {
                FAMILY_V4
            } else {
                steer_common::FAMILY_V6
            },
            _pad: [0; 2],
        }
    }
}

/// Rewrites the quote as planned, with the quoted IPv4 header's checksum. Returns the change
/// to the ICMP message (for its checksum), or `u64::MAX` when the packet is not as checked.
#[inline(never)]
fn rewrite_quote(ctx: &XdpContext, pkt: &Packet) -> u64 {
    // Keeps LLVM from passing the packet pointers in, narrowed like the 32-bit context fields
    // they are loaded from (the verifier refuses the shifts that would widen them again).
    let ctx = core::hint::black_box(ctx);
    let (Some((_, q)), Some(plan)) = (message(ctx, pkt), plan()) else {
        return u64::MAX;
    };
    let (old, new) = (&plan.old, &plan.quote);
    let v4 = pkt.key.family == FAMILY_V4;
    // The quote's addresses are read from the packet as they are replaced; its ports from
    // the plan.
    let q_l4 = if v4 { IPV4_LEN } else { IPV6_LEN };
    let mut inner = Delta::default()
        .word16(old.sport_be, new.sport_be)
        .word16(old.dport_be, new.dport_be);
    // SAFETY: `message` checked the bare quoted IP header and 8 bytes after it.
    unsafe {
        if v4 {
            let addrs = swap_addr(q.add(12), &new.src, 1, Delta::default());
            let addrs = swap_addr(q.add(16), &new.dst, 1, addrs);
            let c = q.add(10) as *mut u16;
            let before = *c;
            let after = addrs.apply(before);
            *c = after;
            inner = inner.plus(addrs).word16(before, after);
        } else {
            inner = swap_addr(q.add(8), &new.src, 4, inner);
            inner = swap_addr(q.add(24), &new.dst, 4, inner);
        }
        *(q.add(q_l4) as *mut u16) = new.sport_be;
        *(q.add(q_l4 + 2) as *mut u16) = new.dport_be;
    }
    inner.sum()
}

/// Rewrites the outer addresses as planned, with the outer IPv4 header's checksum and the
/// ICMP checksum (`inner`: what changed inside the message; ICMPv6's also covers the outer
/// addresses). Returns 0, or the `fib::pack`ed verdict that stopped it.
#[inline(never)]
fn rewrite_outer(ctx: &XdpContext, pkt: &Packet, inner: u64) -> u64 {
    // As in `rewrite_quote`.
    let ctx = core::hint::black_box(ctx);
    let malformed = fib::pack(Err(Stop::Pass(outcome::PASS_MALFORMED)));
    let (Some((icmp, _)), Some(plan)) = (message(ctx, pkt), plan()) else {
        return malformed;
    };
    let (src, dst) = (&plan.src, &plan.dst);
    let inner = Delta::from_sum(inner);
    // SAFETY: `message` checked the ICMP header; the IP header is checked here.
    unsafe {
        let icmp_sum = icmp.add(2) as *mut u16;
        if pkt.key.family == FAMILY_V4 {
            let Some(ip) = ptr_at_mut::<[u8; IPV4_LEN]>(ctx, pkt.l3_off) else {
                return malformed;
            };
            let ip = ip as *mut u8;
            let outer = swap_addr(ip.add(12), src, 1, Delta::default());
            let outer = swap_addr(ip.add(16), dst, 1, outer);
            let c = ip.add(10) as *mut u16;
            *c = outer.apply(*c);
            *icmp_sum = inner.apply(*icmp_sum);
        } else {
            let Some(ip) = ptr_at_mut::<[u8; IPV6_LEN]>(ctx, pkt.l3_off) else {
                return malformed;
            };
            let ip = ip as *mut u8;
            // ICMPv6's checksum covers the pseudo-header too.
            let all = swap_addr(ip.add(8), src, 4, inner);
            let all = swap_addr(ip.add(24), dst, 4, all);
            *icmp_sum = all.apply(*icmp_sum);
        }
    }
    0
}
