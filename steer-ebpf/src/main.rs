//! steer's XDP datapath.
//!
//! `steer` reads like Katran's `balancer_ingress`: parse, find the service, find the flow or
//! choose a backend for it, forward (or answer with a RST), and count exactly one outcome per
//! packet. It never returns `XDP_ABORTED`: anything it cannot handle is passed to the kernel or
//! dropped with a counted reason. SPEC.md's datapath rules are cited as (rule N).
#![no_std]
// Atomic OR and AND on a flow's flags: BPF has 64-bit atomics but no CAS, so core's atomic types
// offer no fetch_or here; the intrinsics lower to BPF_ATOMIC instructions.
#![allow(internal_features)]
#![feature(core_intrinsics)]
#![no_main]

mod addr;
mod attempt;
mod cache;
mod chain;
mod csum;
mod fib;
mod filter;
mod flow;
mod forward;
mod hop;
mod icmp;
mod maps;
mod nat;
mod natcache;
mod note;
mod observe;
mod parse;
mod presence;
mod rst;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use steer_common::{
    event, flow_flags, global_flags, handoff, outcome, prog, svc_flags, Backend, Flow, Service,
    BACKEND_NONE, MODE_NAT,
};

use crate::{nat::Nat, parse::Packet};

/// Why processing stopped without sending the packet back out.
#[derive(Clone, Copy)]
pub enum Stop {
    /// Hand the packet to the kernel untouched, counting `outcome`.
    Pass(u32),
    /// Drop the packet, counting `outcome`.
    Drop(u32),
}

/// The action to return and the outcome to count for it.
type Verdict = (u32, u32);

// Each program's function is `#[inline(always)]`: `#[xdp]` wraps it in the program's own
// entry, and LLVM left these (large) ones out of line, a BPF-to-BPF call per packet: a second
// JIT prologue and epilogue, and the packet's state spilled around it — 7 to 8 ns of an
// established packet's 54 and of a passed packet's 38 (`cargo xtask bench datapath`).

/// The entry program, attached to the interfaces: DSR services here; NAT services' packets
/// and (on a host with NAT services) packets not for a service go to their own programs.
#[xdp]
#[inline(always)]
pub fn steer(ctx: XdpContext) -> u32 {
    finish(try_steer::<false>(&ctx))
}

/// Packets to a NAT service (tail-called by `steer`).
#[xdp]
#[inline(always)]
pub fn steer_nat(ctx: XdpContext) -> u32 {
    finish(try_steer::<true>(&ctx))
}

/// A NAT service's packet that starts or moves a flow (tail-called by `steer_nat`).
#[xdp]
#[inline(always)]
pub fn steer_nat_new(ctx: XdpContext) -> u32 {
    finish(nat_new(&ctx))
}

/// Packets not for a service on a host with NAT services: backends' replies, translated back
/// (tail-called by `steer`).
#[xdp]
#[inline(always)]
pub fn steer_reply(ctx: XdpContext) -> u32 {
    finish(parse::parse(&ctx).and_then(|pkt| {
        if pkt.is_icmp() {
            icmp::translate(&ctx, &pkt)
        } else {
            nat::reply(&ctx, &pkt, flow::now())
        }
    }))
}

/// Counts the outcome, and returns the action.
#[inline(always)]
fn finish(r: Result<Verdict, Stop>) -> u32 {
    let (action, why) = match r {
        Ok(v) => v,
        Err(Stop::Pass(why)) => (xdp_action::XDP_PASS, why),
        Err(Stop::Drop(why)) => (xdp_action::XDP_DROP, why),
    };
    stats::count_outcome(why);
    action
}

/// The program for DSR services (`NAT` false) or for NAT services (`NAT` true): the same
/// rules; NAT's sends translate, and its new flows are handed to `steer_nat_new`.
#[inline(always)]
fn try_steer<const NAT: bool>(ctx: &XdpContext) -> Result<Verdict, Stop> {
    let pkt = parse::parse(ctx)?;
    let (for_service, nat_service) = if NAT {
        (true, false)
    } else {
        filter::maybe_service_nat(&pkt.key)
    };
    // Read before anything the caches hold is: their epoch voids them after a change.
    let host = cache::host();
    let nat_host = host.flags & global_flags::NAT != 0;
    if !NAT {
        // On a NAT host, an established NAT flow's packets (to a NAT service, or a backend's
        // replies to an address NAT flows leave from) are rewritten and sent from this CPU's
        // copy as `steer_nat` or `steer_reply` would send them.
        let flagged = nat_host
            && if for_service {
                nat_service
            } else {
                filter::maybe_nat_reply(&pkt.key)
            };
        if flagged && natcache::may_hold(&pkt) {
            if let Some(v) = natcache::serve(ctx, &pkt, cache::hash(&pkt.key), host.epoch) {
                return v;
            }
        }
        if !for_service {
            return not_service(ctx, &pkt, nat_host, flagged);
        }
    }
    // One hash places the 5-tuple in the flow caches, the flow epochs and the attempts.
    let hash = cache::hash(&pkt.key);
    let probe = if !cache::may_hold(&pkt) {
        // (A SYN, FIN or RST is never served from a cache, nor fills one.)
        cache::Probe::NONE
    } else if NAT {
        // The NAT cache's fill (`natcache::begin`) reads what the flow epoch was before the
        // flow's entry is read.
        cache::probe(hash, host.epoch)
    } else {
        let probe = cache::probe(hash, host.epoch);
        if let Some((svc_id, be_id, be)) = cache::lookup(&pkt, probe) {
            // An established DSR flow this CPU saw lately (the connection table's entry was
            // refreshed then): counted and forwarded as the full path would.
            let len = (ctx.data_end() - ctx.data()) as u64;
            stats::count_service(svc_id, len);
            stats::count_backend(be_id, len);
            return forward::forward_dsr(ctx, be).map(|a| (a, outcome::TX_FORWARD));
        }
        probe
    };
    let now = flow::now();
    // (NAT's frame is at the edge of the stack a call chain may use: out of line there.)
    let found = if NAT {
        select::lookup_service_call(&pkt)
            .map(|s| (s.id, s))
            .ok_or(Stop::Pass(outcome::PASS_NOT_SERVICE))
    } else {
        select::lookup_service(&pkt)
    };
    let (svc_id, svc) = match found {
        Ok(s) => s,
        Err(_) if !NAT => {
            let reply = nat_host && filter::maybe_nat_reply(&pkt.key);
            return not_service(ctx, &pkt, nat_host, reply);
        }
        Err(e) => return Err(e),
    };
    if !NAT && svc.mode == MODE_NAT {
        chain::tail_call(ctx, prog::NAT);
        return Err(Stop::Drop(outcome::DROP_NO_PROGRAM));
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    stats::count_service(svc_id, len);
    if !NAT && pkt.is_tcp() {
        // DSR connection attempts live in their own array (`attempt`).
        if pkt.is_syn() && !pkt.ends_flow() {
            return steer_syn(ctx, &pkt, hash, svc_id, svc, len, now);
        }
        let slot = attempt::slot(hash);
        if attempt::marked(slot) {
            if let Some(a) = attempt::find(slot, &pkt.key, now) {
                return steer_attempt(ctx, &pkt, probe, slot, svc_id, a, len, now);
            }
        }
    }
    // A SYN whose 5-tuple the presence filter rules out skips the established table (a
    // miss there is the costliest part of a new flow on a full table).
    let established = if pkt.is_syn() && !presence::may_be_established(hash) {
        None
    } else {
        flow::lookup_flow(&pkt.key)
    };
    if let Some(f) = established {
        return steer_established::<NAT>(ctx, &pkt, probe, svc_id, svc, f, len, now);
    }
    if let Some(f) = flow::lookup_transient(&pkt.key) {
        return steer_transient::<NAT>(ctx, &pkt, probe, svc_id, svc, f, len, now);
    }
    if pkt.is_tcp() && !pkt.is_syn() {
        // Mid-connection with no entry: LB restarted, another LB host, or evicted (rule 2).
        stats::count_event(event::FLOW_MISS);
    }
    steer_new::<NAT>(ctx, &pkt, svc_id, svc, None, handoff::NONE, len, now)
}

/// A packet for no service: on a host with NAT services (`nat_host`), a backend's reply (to
/// an address NAT flows leave from: `reply`, by the pre-filter) or an ICMP error goes to
/// `steer_reply`; anything else is passed.
#[inline(always)]
fn not_service(
    ctx: &XdpContext,
    pkt: &Packet,
    nat_host: bool,
    reply: bool,
) -> Result<Verdict, Stop> {
    if nat_host && (pkt.is_icmp() || reply) {
        chain::tail_call(ctx, prog::REPLY);
    }
    Err(Stop::Pass(outcome::PASS_NOT_SERVICE))
}

/// A NAT service's new or moved flow, handed over by `steer_nat` with a `Handoff`: chosen
/// (elsewhere than the backend it failed on, for a recovered attempt), given a source, pinned,
/// translated and sent.
#[inline(always)]
fn nat_new(ctx: &XdpContext) -> Result<Verdict, Stop> {
    let pkt = parse::parse(ctx)?;
    let svc = select::lookup_service_call(&pkt).ok_or(Stop::Pass(outcome::PASS_NOT_SERVICE))?;
    let svc_id = svc.id;
    let h = chain::handoff().ok_or(Stop::Drop(outcome::DROP_NO_PROGRAM))?;
    let now = flow::now();
    let existing = match h.table {
        handoff::ESTABLISHED => flow::lookup_flow(&pkt.key),
        handoff::TRANSIENT => flow::lookup_transient(&pkt.key),
        _ => None,
    };
    let mut chosen = None;
    if h.avoid != BACKEND_NONE {
        chosen = select::choose_instead(svc_id, svc, &pkt.key, h.avoid)?;
        if chosen.is_some() {
            stats::count_event(event::RECOVERED);
        }
    }
    if chosen.is_none() {
        chosen = select::choose_new::<true>(svc_id, svc, &pkt)?;
    }
    match chosen {
        Some(b) => steer_to::<true>(ctx, &pkt, svc_id, svc, existing, b, h.len, now),
        None => no_backend(ctx, &pkt, svc_id, svc),
    }
}

/// UDP has no end: a flow idle past the service's timeout is over (counted).
#[inline(always)]
fn idle_expired(pkt: &Packet, flow: &Flow, svc: &Service, now: u64) -> bool {
    let expired = !pkt.is_tcp()
        && now.saturating_sub(flow.last_seen_ns) > svc.idle_timeout_s as u64 * 1_000_000_000;
    if expired {
        stats::count_event(event::IDLE_EXPIRED);
    }
    expired
}

/// A packet of a flow in the established table (rules 1, 4, 5).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn steer_established<const NAT: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    probe: cache::Probe,
    svc_id: u32,
    svc: &Service,
    f: *mut Flow,
    len: u64,
    now: u64,
) -> Result<Verdict, Stop> {
    // SAFETY: pointer from the map lookup, valid for this run.
    let flow = unsafe { *f };
    if idle_expired(pkt, &flow, svc, now) {
        return steer_new::<NAT>(
            ctx,
            pkt,
            svc_id,
            svc,
            Some(f),
            handoff::ESTABLISHED,
            len,
            now,
        );
    }
    // A SYN on an established flow's 5-tuple is not a retry: the old connection ended without
    // the LB seeing it (reset by the backend in DSR). A new connection, steered afresh, so a
    // SYN never goes to a backend only because an old connection did (rule 5).
    if pkt.is_syn() {
        if flow.flags & flow_flags::ENDED == 0 {
            // The old connection ended unseen: count its end, so new minus ended stays the
            // backend's open flows.
            stats::count_event(event::STALE_SYN);
            stats::count_ended(
                svc_id,
                select::flow_backend(flow.backend, flow.gen).map(|b| b.0),
            );
        }
        if NAT {
            nat::release(pkt, svc_id, &flow);
        }
        flow::forget(pkt);
        return steer_new::<NAT>(ctx, pkt, svc_id, svc, None, handoff::NONE, len, now);
    }
    match select::flow_backend(flow.backend, flow.gen) {
        Some((be_id, be)) if be.keeps_flows() => {
            let mut fill = false;
            if flow::touch_flow(f, pkt, now) {
                stats::count_ended(svc_id, Some(be_id));
                flow::retire(pkt, f);
            } else if !NAT && flow.flags & flow_flags::ENDED == 0 && !Nat::of(&flow).is_nat() {
                cache::fill(pkt, probe, svc_id, flow.backend, flow.gen);
            } else if NAT
                && flow.flags & (flow_flags::ENDED | flow_flags::SYN_ONLY) == 0
                && Nat::of(&flow).is_nat()
                && natcache::may_hold(pkt)
            {
                // An open NAT flow's packet: its way out is put together as it is sent, for
                // this CPU's NAT cache.
                natcache::begin(pkt, probe, svc_id, be_id, flow.gen);
                fill = true;
            }
            stats::count_backend(be_id, len);
            send::<NAT>(ctx, pkt, svc_id, be_id, be, &flow, now, fill)
        }
        // Rejected or removed (rule 4): the rest of the flow is reset.
        rejected => reset_flow(ctx, pkt, svc_id, rejected.map(|(id, _)| id), f, true, now),
    }
}

/// A DSR service's SYN (rules 2, 3, 5): a new connection, or the retransmission of an attempt.
#[inline(always)]
fn steer_syn(
    ctx: &XdpContext,
    pkt: &Packet,
    hash: u32,
    svc_id: u32,
    svc: &Service,
    len: u64,
    now: u64,
) -> Result<Verdict, Stop> {
    let established = if presence::may_be_established(hash) {
        flow::lookup_flow(&pkt.key)
    } else {
        None
    };
    if let Some(f) = established {
        // An established flow's 5-tuple: not a retry; the old connection ended without the
        // LB seeing it (reset by the backend in DSR). Its end is counted, so that new minus
        // ended stays the backend's open flows, and the SYN takes a fresh choice (rule 5).
        // SAFETY: pointer from the map lookup, valid for this run.
        let flow = unsafe { *f };
        if flow.flags & flow_flags::ENDED == 0 {
            stats::count_event(event::STALE_SYN);
            stats::count_ended(
                svc_id,
                select::flow_backend(flow.backend, flow.gen).map(|b| b.0),
            );
        }
        flow::forget(pkt);
    }
    let slot = attempt::slot(hash);
    let mut left = None;
    if let Some((b, gen)) = attempt::find(slot, &pkt.key, now) {
        match select::flow_backend(b, gen) {
            Some((be_id, be)) if be.keeps_flows() && be.takes_new_flows() => {
                // A retransmitted SYN: its attempt stays with its backend.
                attempt::pin(slot, &pkt.key, be_id, gen, now);
                stats::count_backend(be_id, len);
                return forward::forward_dsr(ctx, be).map(|a| (a, outcome::TX_FORWARD));
            }
            // Its backend no longer takes new flows (drained, down, weight 0, another group
            // switched to, maintenance; rejected or removed): steered again (rule 5).
            gone => {
                stats::count_event(event::REDISPATCH);
                left = Some(gone.map(|(id, _)| id));
            }
        }
    }
    match select::choose_new::<false>(svc_id, svc, pkt)? {
        Some((be_id, be)) => {
            if left.is_none() && attempt::held_by_other(slot, &pkt.key, now) {
                stats::count_event(event::ATTEMPT_EVICTED);
            }
            attempt::pin(slot, &pkt.key, be_id, be.gen, now);
            // An older connection on this 5-tuple may still be cached on some CPU (its
            // established entry evicted rather than forgotten): void it.
            cache::invalidate_hash(hash);
            if let Some(old) = left {
                stats::count_ended(svc_id, old);
            }
            stats::count_new_flow(svc_id, be_id);
            stats::count_backend(be_id, len);
            forward::forward_dsr(ctx, be).map(|a| (a, outcome::TX_FORWARD))
        }
        None => no_backend(ctx, pkt, svc_id, svc),
    }
}

/// A packet of a DSR connection attempt that is not a SYN: the handshake's ACK (established
/// from now on), or the attempt's end (the client's RST; a RST from steer when its backend
/// was rejected or removed) (rules 4, 5).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn steer_attempt(
    ctx: &XdpContext,
    pkt: &Packet,
    probe: cache::Probe,
    slot: u32,
    svc_id: u32,
    (b, gen): (u32, u16),
    len: u64,
    now: u64,
) -> Result<Verdict, Stop> {
    match select::flow_backend(b, gen) {
        Some((be_id, be)) if be.keeps_flows() => {
            if pkt.ends_flow() {
                stats::count_ended(svc_id, Some(be_id));
                flow::record_ended(pkt, be_id, gen, flow::ends_with(pkt), now);
                attempt::clear(slot, &pkt.key);
            } else if flow::establish(pkt, be_id, gen, now) {
                attempt::clear(slot, &pkt.key);
                // Cached from the handshake's ACK on, so that the request after it (in a short
                // connection, most of what the client sends) is served from this CPU's cache.
                // (`probe` was read before the attempt was; establishing moves no flow epoch.)
                cache::fill(pkt, probe, svc_id, b, gen);
            }
            stats::count_backend(be_id, len);
            forward::forward_dsr(ctx, be).map(|a| (a, outcome::TX_FORWARD))
        }
        rejected => {
            let be_id = rejected.map(|(id, _)| id);
            let verdict = rst::reply_rst(ctx, pkt)?;
            stats::count_ended(svc_id, be_id);
            flow::record_ended(pkt, b, gen, flow_flags::RST, now);
            attempt::clear(slot, &pkt.key);
            stats::count_rst(svc_id, be_id);
            Ok((verdict, outcome::TX_RST))
        }
    }
}

/// A packet of a flow in the transient table: a connection attempt (SYN only) or a flow that
/// has ended (rules 4, 5).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn steer_transient<const NAT: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    probe: cache::Probe,
    svc_id: u32,
    svc: &Service,
    f: *mut Flow,
    len: u64,
    now: u64,
) -> Result<Verdict, Stop> {
    // SAFETY: pointer from the map lookup, valid for this run.
    let flow = unsafe { *f };
    if idle_expired(pkt, &flow, svc, now) {
        return steer_new::<NAT>(ctx, pkt, svc_id, svc, Some(f), handoff::TRANSIENT, len, now);
    }
    // Not ended: an attempt (SYN only), or a flow met mid-way that has not been promoted yet.
    let half_open = flow.flags & flow_flags::ENDED == 0;
    if pkt.is_syn() && flow.flags & flow_flags::SYN_ONLY == 0 {
        // Not a retry of an attempt: a new connection on the 5-tuple of one that ended, or of
        // one met mid-way whose end the LB did not see (rule 5).
        if half_open {
            stats::count_event(event::STALE_SYN);
        }
        return steer_new::<NAT>(ctx, pkt, svc_id, svc, Some(f), handoff::TRANSIENT, len, now);
    }
    match select::flow_backend(flow.backend, flow.gen) {
        Some((be_id, be)) if be.keeps_flows() => {
            if pkt.is_syn() && (!be.takes_new_flows() || NAT && observe::is_down(svc, be_id)) {
                // A retransmitted SYN whose backend no longer takes new flows (drained, down,
                // weight 0, another group switched to, maintenance, or taken out by passive
                // health): steered again (rule 5).
                stats::count_event(event::REDISPATCH);
                return steer_new::<NAT>(
                    ctx,
                    pkt,
                    svc_id,
                    svc,
                    Some(f),
                    handoff::TRANSIENT,
                    len,
                    now,
                );
            }
            if NAT
                && pkt.is_syn()
                && Nat::of(&flow).is_nat()
                && svc.flags & (svc_flags::OBSERVE | svc_flags::RECOVER) != 0
                && nat::attempt_failed(pkt, svc_id, svc, &flow, now)
                && svc.flags & svc_flags::RECOVER != 0
            {
                // NAT: the backend refused this attempt or left it unanswered; the client's
                // retransmission goes to another backend when one can take it.
                chain::new_flow(ctx, handoff::TRANSIENT, be_id, len);
                return Err(Stop::Drop(outcome::DROP_NO_PROGRAM));
            }
            let mut fill = false;
            if half_open && !pkt.is_syn() && !pkt.ends_flow() {
                // The handshake completed: established from now on. A NAT flow's way out is
                // put together as this ACK is sent, so that the request after it (in a short
                // connection, most of what the client sends) is served from this CPU's NAT
                // cache. (`probe` was read before the transient entry was; the promotion
                // moves no flow epoch.)
                fill = flow::promote(pkt, f, now)
                    && NAT
                    && Nat::of(&flow).is_nat()
                    && natcache::may_hold(pkt);
                if fill {
                    natcache::begin(pkt, probe, svc_id, be_id, flow.gen);
                }
            } else if flow::touch_flow(f, pkt, now) {
                stats::count_ended(svc_id, Some(be_id));
            }
            stats::count_backend(be_id, len);
            send::<NAT>(ctx, pkt, svc_id, be_id, be, &flow, now, fill)
        }
        rejected => {
            if pkt.is_syn() {
                // A new attempt leaves a rejected or removed backend (rule 5).
                stats::count_event(event::REDISPATCH);
                return steer_new::<NAT>(
                    ctx,
                    pkt,
                    svc_id,
                    svc,
                    Some(f),
                    handoff::TRANSIENT,
                    len,
                    now,
                );
            }
            reset_flow(ctx, pkt, svc_id, rejected.map(|(id, _)| id), f, false, now)
        }
    }
}

/// Answers a packet of a rejected or removed backend's flow with a RST (TCP) or drops it
/// (UDP), and records that the flow ended (rule 4).
#[inline(always)]
fn reset_flow(
    ctx: &XdpContext,
    pkt: &Packet,
    svc_id: u32,
    be_id: Option<u32>,
    f: *mut Flow,
    established: bool,
    now: u64,
) -> Result<Verdict, Stop> {
    if !pkt.is_tcp() {
        return Err(Stop::Drop(outcome::DROP_REJECTED));
    }
    let verdict = rst::reply_rst(ctx, pkt)?;
    cache::invalidate(&pkt.key);
    if flow::mark_reset(f, now) {
        stats::count_ended(svc_id, be_id);
        if established {
            flow::retire(pkt, f);
        }
    }
    stats::count_rst(svc_id, be_id);
    Ok((verdict, outcome::TX_RST))
}

/// Sends a packet of a known flow to its backend the way the flow started: translated if it
/// is a NAT flow (`fill`: a NAT cache fill was begun for it), by MAC otherwise.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn send<const NAT: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    svc_id: u32,
    be_id: u32,
    be: &Backend,
    flow: &Flow,
    now: u64,
    fill: bool,
) -> Result<Verdict, Stop> {
    let nat = Nat::of(flow);
    if NAT && nat.is_nat() {
        return nat::forward(ctx, pkt, svc_id, be_id, be, nat, now, fill);
    }
    forward::forward_dsr(ctx, be).map(|a| (a, outcome::TX_FORWARD))
}

/// A packet that starts a flow: a SYN, a mid-flow packet the table does not know (LB restarted,
/// or came via another LB), or a flow being moved (rules 2, 3, 5). `existing` is the flow's
/// entry, in `table`. A NAT service's is handed to `steer_nat_new`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn steer_new<const NAT: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    svc_id: u32,
    svc: &Service,
    existing: Option<*mut Flow>,
    table: u32,
    len: u64,
    now: u64,
) -> Result<Verdict, Stop> {
    if NAT {
        chain::new_flow(ctx, table, BACKEND_NONE, len);
        return Err(Stop::Drop(outcome::DROP_NO_PROGRAM));
    }
    match select::choose_new::<false>(svc_id, svc, pkt)? {
        Some(b) => steer_to::<false>(ctx, pkt, svc_id, svc, existing, b, len, now),
        None => no_backend(ctx, pkt, svc_id, svc),
    }
}

/// A new flow that no backend can take (rule 3): a SYN is answered with a RST unless the
/// service says drop.
#[inline(always)]
fn no_backend(ctx: &XdpContext, pkt: &Packet, svc_id: u32, svc: &Service) -> Result<Verdict, Stop> {
    if pkt.is_syn() && svc.flags & svc_flags::NO_BACKEND_DROP == 0 {
        let verdict = rst::reply_rst(ctx, pkt).map_err(|_| Stop::Drop(outcome::DROP_NO_BACKEND))?;
        stats::count_rst(svc_id, None);
        return Ok((verdict, outcome::TX_RST));
    }
    Err(Stop::Drop(outcome::DROP_NO_BACKEND))
}

/// Pins a flow (new, or moved: `existing`) to backend `be_id` and sends the packet there. A
/// NAT flow first gets its source (an exhausted pool answers a SYN with a RST).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn steer_to<const NAT: bool>(
    ctx: &XdpContext,
    pkt: &Packet,
    svc_id: u32,
    svc: &Service,
    existing: Option<*mut Flow>,
    (be_id, be): (u32, &Backend),
    len: u64,
    now: u64,
) -> Result<Verdict, Stop> {
    let nat = if NAT && svc.mode == MODE_NAT {
        match nat::allocate(pkt, svc_id, svc, be_id, be, now) {
            Some(n) => n,
            None => {
                stats::count_event(event::NAT_EXHAUSTED);
                stats::count_nat_exhausted(svc_id, be_id);
                if !pkt.is_syn() {
                    return Err(Stop::Drop(outcome::DROP_NAT_EXHAUSTED));
                }
                let verdict = rst::reply_rst(ctx, pkt)
                    .map_err(|_| Stop::Drop(outcome::DROP_NAT_EXHAUSTED))?;
                stats::count_rst(svc_id, None);
                return Ok((verdict, outcome::TX_RST));
            }
        }
    } else {
        Nat::NONE
    };
    match existing {
        Some(f) => {
            // The entry's old flow is over (redispatched, idle, or a new connection on its
            // 5-tuple): count its end unless it was counted already, so that new minus ended
            // stays each backend's open flows; a NAT flow's old source is freed.
            // SAFETY: pointer from the map lookup, valid for this run.
            let old = unsafe { *f };
            if old.flags & flow_flags::ENDED == 0 {
                stats::count_ended(
                    svc_id,
                    select::flow_backend(old.backend, old.gen).map(|b| b.0),
                );
            }
            // (Unless the new flow took the old one's port back: its reverse entry, just
            // written, is the new flow's.)
            let same_source = old.backend == be_id
                && old.gen == be.gen
                && old.nat_port_be == nat.port_be
                && old.nat_addr == nat.addr;
            if NAT && !same_source {
                nat::release(pkt, svc_id, &old);
            }
            flow::repin_flow(f, pkt, be_id, be.gen, nat, now)
        }
        None => flow::insert_flow(pkt, be_id, be.gen, nat, now),
    }
    stats::count_new_flow(svc_id, be_id);
    if pkt.ends_flow() {
        // A flow whose first packet is its FIN or RST begins and ends here.
        stats::count_ended(svc_id, Some(be_id));
    }
    stats::count_backend(be_id, len);
    if NAT && nat.is_nat() {
        return nat::forward(ctx, pkt, svc_id, be_id, be, nat, now, false);
    }
    forward::forward_dsr(ctx, be).map(|a| (a, outcome::TX_FORWARD))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
