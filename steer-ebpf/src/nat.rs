//! NAT mode (SPEC.md, forwarding modes: `nat`): a flow's packets leave with the backend's
//! address and port as destination and an LB address and port as source, so unmodified
//! backends in any subnet answer the LB, which translates their replies back.
//!
//! The two halves of a translation: the forward half is the flow's own entry (`Flow::nat_*`,
//! in the flow tables, keyed by the client's 5-tuple); the reverse half is a `NatRev` in the
//! `NAT` table, keyed by the reply's 5-tuple. The reverse half is written first (it is what
//! makes a source port taken), and each half, when used, looks the other up: one found
//! missing (evicted) is written again from its partner, so they live and die together, and
//! a source port that was given away meanwhile is never used by two flows.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering::Relaxed};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::bpf_get_prandom_u32,
    programs::XdpContext,
};
use steer_common::{
    event, flow_flags, nat_flags, outcome, svc_flags, Backend, Flow, FlowKey, NatRev, Service,
    ServiceKey, FAMILY_V4, NAT_ADDR_BACKEND, NAT_POOL_MAX, NAT_PORT_TRIES, NAT_REUSE_NS, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    addr::same,
    cache,
    csum::{swap_addr, Delta},
    fib, flow,
    maps::{NAT, NAT_CURSOR, POOLS},
    natcache, observe,
    parse::{ptr_at_mut, Packet},
    rst, select, stats, Stop, Verdict,
};

/// A flow's NAT source: port (network order) and which LB address (`Flow::nat_addr`).
#[derive(Clone, Copy)]
pub struct Nat {
    pub port_be: u16,
    pub addr: u16,
}

impl Nat {
    /// A DSR flow: no translation.
    pub const NONE: Nat = Nat {
        port_be: 0,
        addr: 0,
    };

    #[inline(always)]
    pub fn of(flow: &Flow) -> Nat {
        Nat {
            port_be: flow.nat_port_be,
            addr: flow.nat_addr,
        }
    }

    /// Whether the flow is translated (NAT flows always have a non-zero source port).
    #[inline(always)]
    pub fn is_nat(self) -> bool {
        self.port_be != 0
    }

    #[inline(always)]
    fn pack(self) -> u32 {
        self.port_be as u32 | (self.addr as u32) << 16
    }

    #[inline(always)]
    fn unpack(v: u32) -> Nat {
        Nat {
            port_be: v as u16,
            addr: (v >> 16) as u16,
        }
    }
}

/// A flow's service id, backend id and NAT source in one word (BPF calls take five
/// arguments at most).
#[inline(always)]
fn ids(svc_id: u32, be_id: u32, nat: Nat) -> u64 {
    (svc_id as u64 & 0xffff) | (be_id as u64 & 0xffff) << 16 | (nat.pack() as u64) << 32
}

/// The LB address a flow of service `svc_id` to `be` leaves from.
#[inline(always)]
fn source(svc_id: u32, be: &Backend, addr: u16) -> Option<[u8; 16]> {
    if addr == NAT_ADDR_BACKEND {
        return Some(be.snat);
    }
    let pool = POOLS.get(svc_id)?;
    // Any slot holding an address: a retired one's flows keep their source.
    if addr as u32 >= pool.slots || addr as usize >= NAT_POOL_MAX {
        return None;
    }
    // The mask repeats the bound for the verifier on a fresh load: LLVM folds the compare
    // above into one on a register the verifier cannot relate to the index.
    // SAFETY: reading a local.
    let i = unsafe { core::ptr::read_volatile(&addr) } as usize & (NAT_POOL_MAX - 1);
    Some(pool.addrs[i])
}

/// The LB address (and so the source a backend knows) of a NAT flow of service `svc_id`.
#[inline(always)]
pub fn source_of(svc_id: u32, be: &Backend, nat: Nat) -> Option<[u8; 16]> {
    source(svc_id, be, nat.addr)
}

/// The reverse half a backend's reply 5-tuple `key` belongs to, if any.
#[inline(always)]
pub fn reverse_ptr(key: &FlowKey) -> Option<*mut NatRev> {
    NAT.get_ptr_mut(key)
}

/// The 5-tuple of the backend's replies to a flow: backend → LB address and source port.
#[inline(always)]
fn reply_key(pkt: &Packet, be: &Backend, src: &[u8; 16], port_be: u16) -> FlowKey {
    FlowKey {
        src: be.addr,
        dst: *src,
        sport_be: be.port_be,
        dport_be: port_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    }
}

/// The reverse half of the client's flow `pkt` on backend `be_id`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn reverse_of(
    pkt: &Packet,
    svc_id: u32,
    be_id: u32,
    gen: u16,
    nat: Nat,
    syn_ns: u64,
    idle_ns: u64,
    now: u64,
) -> NatRev {
    NatRev {
        client: pkt.key.src,
        vip: pkt.key.dst,
        client_port_be: pkt.key.sport_be,
        vip_port_be: pkt.key.dport_be,
        svc: svc_id as u16,
        nat_addr: nat.addr,
        backend: be_id,
        gen,
        flags: 0,
        syn_ns,
        ended_ns: 0,
        last_ns: now,
        idle_ns: if pkt.is_tcp() { 0 } else { idle_ns },
    }
}

/// Records a packet of a NAT flow on its reverse half `r` (of reply 5-tuple `key`): when it
/// passed (to the second), and whether it ends the flow — a RST either way, or the second
/// side's FIN (a half-closed flow goes on: its port is not free while one side may still
/// send). A change of its flags voids the flow's cached copies.
#[inline(always)]
fn touch_reverse(r: *mut NatRev, key: &FlowKey, pkt: &Packet, from_client: bool, now: u64) {
    // SAFETY: a pointer from a lookup of the caller, valid for this run; plain stores (two
    // CPUs racing write the same times; a lost flag bit delays a port's reuse, no more).
    unsafe {
        if now > (*r).last_ns + 1_000_000_000 {
            (*r).last_ns = now;
        }
        if !pkt.is_tcp() || !pkt.ends_flow() || (*r).ended_ns != 0 {
            return;
        }
        let both = nat_flags::FIN_CLIENT | nat_flags::FIN_BACKEND;
        let flags = (*r).flags
            | if from_client {
                nat_flags::FIN_CLIENT
            } else {
                nat_flags::FIN_BACKEND
            };
        (*r).flags = flags;
        if pkt.is_rst() || flags & both == both {
            (*r).ended_ns = now;
        }
    }
    cache::invalidate(key);
}

/// Whether reverse entry `r` stands for the client's flow `pkt` on backend `be_id`.
#[inline(always)]
fn is_ours(r: &NatRev, pkt: &Packet, be_id: u32, gen: u16) -> bool {
    r.client_port_be == pkt.key.sport_be
        && r.backend == be_id
        && r.gen == gen
        && same(&r.client, &pkt.key.src)
}

/// Gives a new flow of `pkt` to backend `be_id` a source: an LB address (the service's pool,
/// or the backend's own) and a free port of the service's range, whose reverse entry is
/// written here, before the flow's own. A port whose flow ended `NAT_REUSE_NS` ago is free
/// again. `None`: no free port among `NAT_PORT_TRIES` (the pool is exhausted).
#[inline(always)]
pub fn allocate(
    pkt: &Packet,
    svc_id: u32,
    svc: &Service,
    be_id: u32,
    be: &Backend,
    now: u64,
) -> Option<Nat> {
    let v = allocate_call(pkt, ids(svc_id, be_id, Nat::NONE), svc, be, now);
    (v != 0).then(|| Nat::unpack(v))
}

/// `allocate` as a BPF call of its own (its loop of map updates keeps its own stack).
/// Returns a packed `Nat`, 0 for none.
#[inline(never)]
fn allocate_call(pkt: &Packet, ids: u64, svc: &Service, be: &Backend, now: u64) -> u32 {
    let (svc_id, be_id) = (ids as u32 & 0xffff, (ids >> 16) as u32 & 0xffff);
    // SAFETY: helper without preconditions.
    let random = unsafe { bpf_get_prandom_u32() };
    let (addr, src) = if svc.flags & svc_flags::NAT_POOL != 0 {
        // One of the slots new flows take, and its address, from one read of the pool (a
        // second, as `source` makes, could see a pool being rewritten by a reload with a
        // new slot in `active` but not yet in `slots`).
        let Some(chosen) = POOLS.get(svc_id).and_then(|pool| {
            let n = (random >> 16).checked_rem(pool.count)?;
            let i = pool.active[n as usize & (NAT_POOL_MAX - 1)] as usize & (NAT_POOL_MAX - 1);
            Some((i as u16, pool.addrs[i]))
        }) else {
            return 0;
        };
        chosen
    } else {
        (NAT_ADDR_BACKEND, be.snat)
    };
    let (lo, hi) = (svc.nat_port_lo as u32, svc.nat_port_hi as u32);
    if lo == 0 || hi < lo {
        return 0;
    }
    let range = hi - lo + 1;
    if range == 0 {
        return 0;
    }
    // Ports are handed out in turn from the backend's cursor, shared by every CPU (from a
    // random start the first time), so a port comes back as late as the range allows: the
    // backend may hold the old connection in TIME_WAIT for a minute (when it closed first),
    // and a new client's SYN on that 4-tuple is accepted only if its sequence number happens
    // to be higher than the old connection's. (At more new flows per second to one backend
    // than the range holds ports per minute, such collisions come back: more LB addresses in
    // a pool, or a wider range, push that rate up.) Per-CPU cursors walked into the ports
    // another CPU had just handed out: seen as failed connections at 2,000 new flows/s.
    let cursor = NAT_CURSOR.get_ptr_mut(be_id);
    // Moved by one with a compare-and-swap from the value read (BPF here has an add that
    // returns nothing): a read then an add left a window in which the vCPU could be
    // preempted while the other CPUs handed out hundreds of ports, which this flow then
    // tried first (seen: SYNs refused for want of a free port with the range 93 % taken).
    // A swap that fails gives the value the cursor has now, to try again; after four, it
    // is moved by an add from the last value seen. `seen`: the cursor as this CPU left it
    // (0: not started), the port to start from one before it (one value live across the
    // loop rather than two: this call's frame is at the edge of BPF's 512-byte stack).
    // SAFETY: a map value of this run, an aligned u64.
    let seen = match cursor.map(|c| (c, unsafe { core::ptr::read_volatile(c) })) {
        Some((c, first)) if first != 0 => {
            let mut n = first;
            let mut moved = false;
            for _ in 0..4 {
                let (now_n, ok) = unsafe {
                    atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(c, n, n.wrapping_add(1))
                };
                if ok {
                    moved = true;
                    break;
                }
                n = now_n;
            }
            if !moved {
                unsafe { atomic_xadd::<u64, u64, { Relaxed }>(c, 1) };
            }
            n.wrapping_add(1)
        }
        _ => 0,
    };
    let moved = seen != 0;
    let start = if moved {
        (seen as u32).wrapping_sub(1)
    } else {
        random
    };
    let syn_ns = if pkt.is_syn() { now } else { 0 };
    // The reverse entry is the same whatever the port (the port is in its key).
    let idle_ns = svc.idle_timeout_s as u64 * 1_000_000_000;
    let rev = reverse_of(
        pkt,
        svc_id,
        be_id,
        be.gen,
        Nat { port_be: 0, addr },
        syn_ns,
        idle_ns,
        now,
    );
    let mut key = reply_key(pkt, be, &src, 0);
    // A port whose flow ended NAT_REUSE_NS ago is free again: with ports in turn, it is the
    // one the longest ended among those tried.
    let mut taken: u16 = 0;
    for i in 0..NAT_PORT_TRIES {
        // The first half of the tries follows the cursor; the second half starts at random,
        // so a run of ports still held (long connections opened one after another) never
        // blocks new flows: once past it, the cursor moves to where a port was found.
        let base = if i < NAT_PORT_TRIES / 2 {
            start
        } else {
            random
        };
        let port_be = ((lo + base.wrapping_add(i) % range) as u16).to_be();
        key.dport_be = port_be;
        if take(&key, &rev, now) {
            taken = port_be;
            break;
        }
    }
    if taken == 0 {
        return 0;
    }
    // The port's reverse half is new (or replaces an ended flow's, or one evicted while its
    // flow was cached somewhere): cached copies of the flows it stood for are void.
    cache::invalidate(&key);
    let next = (u16::from_be(taken) as u32 - lo + 1) % range;
    if let Some(c) = cursor.filter(|_| !moved || next != start.wrapping_add(1) % range) {
        // The first port handed out, or ports were skipped (still held): the cursor moves
        // past the one taken (plus `range`, which changes no port, so it is never 0, "not
        // started") — unless another CPU moved it meanwhile (a compare-and-swap): a store
        // would undo that CPU's progress and send the next flows back over ports just
        // handed out (seen: a flow finding none free in 60,000 taken at once by two CPUs).
        // SAFETY: a map value of this run, an aligned u64.
        unsafe { atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(c, seen, (next + range) as u64) };
    }
    Nat {
        port_be: taken,
        addr,
    }
    .pack()
}

/// Takes the source port of reverse key `key` for the flow `rev` stands for, if it is free:
/// nobody's, or its last flow's, which ended `NAT_REUSE_NS` ago or (UDP) was idle past its
/// timeout. Of the CPUs trying a port at once, one takes it: the insert that fails if another
/// wrote the key first, or the claim of the old entry (below). (One window stays open: an old
/// entry claimed, then removed — evicted by the LRU's forced shrink, or by `release` — before
/// the claimer's write, lets another CPU insert the key meanwhile, which the write replaces:
/// that flow's packets then meet an entry not theirs and are dropped as `NAT_CONFLICT`,
/// never delivered into the other flow.)
///
/// The entry is looked up first: an insert into an LRU table takes a free element (evicting
/// one from a full table) before it finds the key there, so trying an insert on a port that
/// holds an entry — every port, once a backend's range has gone round — cost an element's
/// round trip through the LRU lists for nothing.
#[inline(never)]
fn take(key: &FlowKey, rev: &NatRev, now: u64) -> bool {
    match NAT.get_ptr_mut(key) {
        None => NAT.insert(key, rev, BPF_NOEXIST as u64).is_ok(),
        Some(old) => claim(old, now) && NAT.insert(key, rev, BPF_ANY as u64).is_ok(),
    }
}

/// Whether the port of reverse entry `old` is free — its flow ended `NAT_REUSE_NS` ago
/// (since its last packet, if later), or it is a UDP flow idle past its service's timeout —
/// and this CPU claimed it: its `last_ns` moved to `now` by a compare-and-swap, which makes
/// the entry look busy to any other CPU trying the port (only one swap can succeed), as a
/// late packet of the old flow would (its `last_ns` moved) make this claim fail.
#[inline(always)]
fn claim(old: *mut NatRev, now: u64) -> bool {
    // SAFETY: pointer from the lookup, valid for this run.
    let (ended, last, idle) = unsafe { ((*old).ended_ns, (*old).last_ns, (*old).idle_ns) };
    let free = if ended != 0 {
        now.saturating_sub(if last > ended { last } else { ended }) > NAT_REUSE_NS
    } else {
        idle != 0 && now.saturating_sub(last) > idle
    };
    // SAFETY: as above; an aligned u64 of a map value.
    free && unsafe {
        atomic_cxchg::<u64, { Relaxed }, { Relaxed }>(&raw mut (*old).last_ns, last, now)
    }
    .1
}

/// Frees the source of a flow that moves to another backend or ends its 5-tuple's use (its
/// reverse entry, if it is still this flow's).
#[inline(always)]
pub fn release(pkt: &Packet, svc_id: u32, old: &Flow) {
    let nat = Nat::of(old);
    if !nat.is_nat() {
        return;
    }
    let Some((_, be)) = select::flow_backend(old.backend, old.gen) else {
        return;
    };
    let Some(src) = source(svc_id, be, nat.addr) else {
        return;
    };
    let key = reply_key(pkt, be, &src, nat.port_be);
    // SAFETY: pointer from the lookup, valid for this run.
    let ours = NAT
        .get_ptr_mut(&key)
        .is_some_and(|r| is_ours(unsafe { &*r }, pkt, old.backend, old.gen));
    if ours {
        let _ = NAT.remove(&key);
        cache::invalidate(&key);
    }
}

/// Sends a packet of the client's flow to its backend, translated: the flow's reverse entry
/// is checked first (written again if it was evicted; a port given to another flow meanwhile
/// drops the packet rather than deliver it into that flow). `fill`: a NAT cache fill was begun
/// for the packet (`natcache::begin`); each step adds its part, and it is kept if it was sent.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn forward(
    ctx: &XdpContext,
    pkt: &Packet,
    svc_id: u32,
    be_id: u32,
    be: &Backend,
    nat: Nat,
    now: u64,
    fill: bool,
) -> Result<Verdict, Stop> {
    let ids = ids(svc_id, be_id, nat);
    let stopped = forward_call(ctx, pkt, ids, be, now);
    if stopped == HEAL {
        heal_reverse(pkt, ids, be, now);
    } else if stopped != 0 {
        return Ok(fib::unpack(stopped));
    }
    if fill {
        natcache::rewritten(ctx, pkt);
    }
    // Sent from here rather than from the call: the FIB request's stack and the call's are
    // never on the stack at once.
    let src = source(svc_id, be, nat.addr).ok_or(Stop::Drop(outcome::DROP_NAT_CONFLICT))?;
    let route = fib::Route::new(pkt.key.family, pkt.key.proto, pkt.l3_off, false).fill(fill);
    let verdict = fib::unpack(fib::send(ctx, &src, &be.addr, route));
    if fill {
        natcache::commit(pkt);
    }
    Ok(verdict)
}

/// `forward_call`'s answer when the packet is translated but the flow's reverse half is
/// missing (never a packed verdict: those carry an XDP action other than 0 in the low word).
const HEAL: u64 = 1 << 63;

/// Checks the flow's reverse half and translates the packet (a BPF call of its own). Returns
/// 0 when the packet is ready to send, `HEAL` when it is but the reverse half is to be
/// written again, else the `fib::pack`ed verdict that stopped it.
#[inline(never)]
fn forward_call(ctx: &XdpContext, pkt: &Packet, ids: u64, be: &Backend, now: u64) -> u64 {
    let (svc_id, be_id) = (ids as u32 & 0xffff, (ids >> 16) as u32 & 0xffff);
    let nat = Nat::unpack((ids >> 32) as u32);
    let Some(src) = source(svc_id, be, nat.addr) else {
        return fib::pack(Err(Stop::Drop(outcome::DROP_NAT_CONFLICT)));
    };
    let key = reply_key(pkt, be, &src, nat.port_be);
    // Read before the reverse half is: a change of it after this voids a cached copy.
    natcache::other(pkt, &key);
    let mut heal = 0;
    let mut open = false;
    match NAT.get_ptr_mut(&key) {
        Some(r) => {
            // SAFETY: pointer from the lookup, valid for this run.
            let rev = unsafe { &*r };
            if !is_ours(rev, pkt, be_id, be.gen) {
                stats::count_event(event::NAT_CONFLICT);
                return fib::pack(Err(Stop::Drop(outcome::DROP_NAT_CONFLICT)));
            }
            open = rev.ended_ns == 0
                && rev.flags & (nat_flags::FIN_CLIENT | nat_flags::FIN_BACKEND) == 0;
            touch_reverse(r, &key, pkt, true, now);
        }
        None => heal = HEAL,
    }
    if open {
        // (For a fill begun for this packet.)
        natcache::other_open(pkt, None);
    }
    match rewrite(ctx, pkt, &src, &be.addr, nat.port_be, be.port_be) {
        Ok(()) => heal,
        Err(e) => fib::pack(Err(e)),
    }
}

/// A flow's reverse half was lost (evicted) while its forward half lives: written again
/// (from the packet before translation). A BPF call of its own (a rare path).
#[inline(never)]
fn heal_reverse(pkt: &Packet, ids: u64, be: &Backend, now: u64) {
    let (svc_id, be_id) = (ids as u32 & 0xffff, (ids >> 16) as u32 & 0xffff);
    let nat = Nat::unpack((ids >> 32) as u32);
    let Some(src) = source(svc_id, be, nat.addr) else {
        return;
    };
    let key = reply_key(pkt, be, &src, nat.port_be);
    // The packet is to a service: its idle timeout, for a UDP flow.
    let idle_ns =
        select::lookup_service_call(pkt).map_or(0, |s| s.idle_timeout_s as u64 * 1_000_000_000);
    let rev = reverse_of(pkt, svc_id, be_id, be.gen, nat, 0, idle_ns, now);
    if NAT.insert(&key, &rev, BPF_NOEXIST as u64).is_ok() {
        cache::invalidate(&key);
        stats::count_event(event::NAT_HEALED);
    }
}

/// Whether the attempt of NAT flow `flow` (a client retransmitting its SYN) has failed: its
/// backend refused it, or left it unanswered for the service's `syn_timeout` (counted here
/// once, as a failure of the backend).
#[inline(always)]
pub fn attempt_failed(pkt: &Packet, svc_id: u32, svc: &Service, flow: &Flow, now: u64) -> bool {
    if flow.flags & flow_flags::REFUSED != 0 {
        return true;
    }
    if svc.syn_timeout_ms == 0 {
        return false;
    }
    let Some((be_id, be)) = select::flow_backend(flow.backend, flow.gen) else {
        return false;
    };
    let nat = Nat::of(flow);
    let Some(src) = source(svc_id, be, nat.addr) else {
        return false;
    };
    let Some(r) = NAT.get_ptr_mut(&reply_key(pkt, be, &src, nat.port_be)) else {
        return false;
    };
    // SAFETY: pointer from the lookup, valid for this run.
    let rev = unsafe { *r };
    if rev.flags & nat_flags::SYN_ACK != 0
        || rev.syn_ns == 0
        || now.saturating_sub(rev.syn_ns) < svc.syn_timeout_ms as u64 * 1_000_000
    {
        return false;
    }
    if rev.flags & nat_flags::FAILED == 0 {
        // SAFETY: as above; two CPUs counting the same timeout is harmless.
        unsafe { (*r).flags = rev.flags | nat_flags::FAILED };
        stats::count_event(event::SYN_TIMEOUT);
        stats::count_backend_syn_timeout(be_id);
        observe::failed(svc, be_id, now);
    }
    true
}

/// A packet that is not for a service: on a host with NAT services, a backend's reply to a
/// translated flow is translated back and sent to the client. Anything else is passed as not
/// for a service.
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Packet, now: u64) -> Result<Verdict, Stop> {
    if natcache::may_hold(pkt) {
        // A NAT cache fill for the reply, should it belong to an open flow: the epochs read
        // before the reverse half is (and the host's, before the FIB is asked).
        let hash = cache::hash(&pkt.key);
        natcache::begin(pkt, cache::probe(hash, cache::host().epoch), 0, 0, 0);
    }
    let v = reply_call(ctx, pkt, now);
    if v != REPLY_READY {
        return Ok(fib::unpack(v));
    }
    natcache::rewritten(ctx, pkt);
    let route = fib::Route::new(pkt.key.family, pkt.key.proto, pkt.l3_off, true)
        .fill(natcache::may_hold(pkt));
    let verdict = fib::unpack(fib::send_packet(ctx, route));
    natcache::commit(pkt);
    Ok(verdict)
}

/// `reply_call`'s answer when the reply is translated and ready to send (never a packed
/// verdict: those carry a non-zero XDP action in the low word).
const REPLY_READY: u64 = 0;

/// Checks and translates a backend's reply (a BPF call of its own, whose stack is gone by
/// the time the FIB is asked). Returns `REPLY_READY`, or the `fib::pack`ed verdict that
/// stopped it.
#[inline(never)]
fn reply_call(ctx: &XdpContext, pkt: &Packet, now: u64) -> u64 {
    match try_reply(ctx, pkt, now) {
        Ok(None) => REPLY_READY,
        Ok(Some(v)) => fib::pack(Ok(v)),
        Err(e) => fib::pack(Err(e)),
    }
}

/// A reply's checks, state updates and translation: `None` when it is ready to send, `Some`
/// when it was answered instead (a RST to the backend of a rejected flow), `Err` when it
/// stopped.
#[inline(always)]
fn try_reply(ctx: &XdpContext, pkt: &Packet, now: u64) -> Result<Option<Verdict>, Stop> {
    let not_service = Stop::Pass(outcome::PASS_NOT_SERVICE);
    if pkt.key.proto != PROTO_TCP && pkt.key.proto != PROTO_UDP {
        return Err(not_service);
    }
    let Some(r) = NAT.get_ptr_mut(&pkt.key) else {
        return Err(not_service);
    };
    // SAFETY: pointer from the lookup, valid for this run.
    let rev = unsafe { *r };
    let client = FlowKey {
        src: rev.client,
        dst: rev.vip,
        sport_be: rev.client_port_be,
        dport_be: rev.vip_port_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    // Read before the forward half is: a change of it after this voids a cached copy.
    natcache::other(pkt, &client);
    // The reverse half tells which table the forward half is in: the transient one for an
    // attempt its backend has not answered yet, or once the client has sent its FIN or RST
    // (the flow moved there at that packet); the established one otherwise. That table is
    // looked in first, the other when it misses: the order saves a miss (a cold bucket on
    // a large table) and changes no answer. A flow is in one table at a time but for the
    // instant of a move, when either copy is a state the flow was just in.
    let transient_first = pkt.is_tcp()
        && (rev.syn_ns != 0 && rev.flags & nat_flags::SYN_ACK == 0
            || rev.flags & nat_flags::FIN_CLIENT != 0);
    let f = if transient_first {
        match flow::lookup_transient(&client) {
            Some(f) => Some(f),
            None => flow::lookup_flow(&client).inspect(|&f| established_reply(pkt, &rev, f)),
        }
    } else {
        match flow::lookup_flow(&client) {
            Some(f) => {
                established_reply(pkt, &rev, f);
                Some(f)
            }
            None => flow::lookup_transient(&client),
        }
    };
    let attempt = match f {
        Some(f) => {
            // SAFETY: pointer from the lookup, valid for this run.
            let fl = unsafe { *f };
            if fl.backend != rev.backend
                || fl.gen != rev.gen
                || fl.nat_port_be != pkt.key.dport_be
                || fl.nat_addr != rev.nat_addr
            {
                // The client's flow has moved on (its attempt went to another backend): this
                // port is no longer its. The kernel answers the late reply with a RST, which
                // ends the old attempt on the backend.
                return Err(not_service);
            }
            fl.flags & flow_flags::SYN_ONLY != 0
        }
        None => {
            heal_flow(&client, &rev, pkt.key.dport_be, now);
            false
        }
    };
    let Some((be_id, _)) =
        select::flow_backend(rev.backend, rev.gen).filter(|(_, b)| b.keeps_flows())
    else {
        // Rejected or removed (rule 4): the backend's half of the flow is reset too.
        if !pkt.is_tcp() {
            return Err(Stop::Drop(outcome::DROP_REJECTED));
        }
        let verdict = rst::reply_rst(ctx, pkt)?;
        stats::count_rst(rev.svc as u32, None);
        return Ok(Some((verdict, outcome::TX_RST)));
    };
    touch_reverse(r, &pkt.key, pkt, false, now);
    if pkt.is_tcp() {
        if attempt && pkt.is_syn_ack() {
            if rev.flags & nat_flags::SYN_ACK == 0 {
                // SAFETY: as above.
                unsafe { (*r).flags = rev.flags | nat_flags::SYN_ACK };
            }
            observe::answered(be_id);
        } else if attempt
            && pkt.is_rst()
            && refused(pkt, r, be_id, f.unwrap_or(core::ptr::null_mut()), now)
        {
            return Err(Stop::Drop(outcome::DROP_REFUSED));
        }
    }
    rewrite(
        ctx,
        pkt,
        &rev.vip,
        &rev.client,
        rev.vip_port_be,
        rev.client_port_be,
    )?;
    Ok(None)
}

/// A reply whose client's half `f` is in the established table: when the flow is open and
/// both halves are each other's, a NAT cache fill begun for this reply may be kept.
#[inline(always)]
fn established_reply(pkt: &Packet, rev: &NatRev, f: *mut Flow) {
    // SAFETY: pointer from the lookup, valid for this run.
    let fl = unsafe { &*f };
    if fl.flags & (flow_flags::ENDED | flow_flags::SYN_ONLY) == 0
        && rev.ended_ns == 0
        && rev.flags & (nat_flags::FIN_CLIENT | nat_flags::FIN_BACKEND) == 0
        && fl.backend == rev.backend
        && fl.gen == rev.gen
        && fl.nat_port_be == pkt.key.dport_be
        && fl.nat_addr == rev.nat_addr
    {
        // An established, open flow, both halves each other's: for a NAT cache fill begun
        // for this reply (sent only if its backend keeps flows).
        natcache::other_open(pkt, Some((rev.svc as u32, rev.backend, rev.gen)));
    }
}

/// The forward half of a flow was lost (evicted) while its reverse half lives: written again
/// in the transient table, from which the client's next packet promotes it. A BPF call of
/// its own (a rare path).
#[inline(never)]
fn heal_flow(client: &FlowKey, rev: &NatRev, port_be: u16, now: u64) {
    let f = Flow {
        backend: rev.backend,
        gen: rev.gen,
        flags: if rev.ended_ns != 0 {
            flow_flags::ENDED
        } else {
            0
        },
        last_seen_ns: now,
        nat_port_be: port_be,
        nat_addr: rev.nat_addr,
        _pad: 0,
    };
    if flow::insert_transient(client, &f) {
        cache::invalidate(client);
        stats::count_event(event::NAT_HEALED);
    }
}

/// A backend answered a connection attempt with a RST: a refusal, counted as a failure of
/// the backend. With recovery on and another backend able to take the attempt, the RST is
/// not shown to the client (true: drop it) and the flow `f` is marked, so that the client's
/// retransmitted SYN goes to that other backend.
#[inline(always)]
fn refused(pkt: &Packet, r: *mut NatRev, be_id: u32, f: *mut Flow, now: u64) -> bool {
    // SAFETY: pointer from the caller's lookup, valid for this run.
    let rev = unsafe { &mut *r };
    let key = ServiceKey {
        addr: rev.vip,
        port_be: rev.vip_port_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
    };
    let Some(svc) = select::service(&key) else {
        return false;
    };
    let svc_id = svc.id;
    // Counted, as an unanswered attempt is, only where the service observes or recovers.
    if svc.flags & (svc_flags::OBSERVE | svc_flags::RECOVER) == 0 {
        return false;
    }
    stats::count_event(event::REFUSED);
    stats::count_backend_refused(be_id);
    if rev.flags & nat_flags::FAILED == 0 {
        rev.flags |= nat_flags::FAILED;
        observe::failed(svc, be_id, now);
    }
    if f.is_null() || svc.flags & svc_flags::RECOVER == 0 {
        return false;
    }
    let client = FlowKey {
        src: rev.client,
        dst: rev.vip,
        sport_be: rev.client_port_be,
        dport_be: rev.vip_port_be,
        proto: pkt.key.proto,
        family: pkt.key.family,
        _pad: [0; 2],
    };
    if !matches!(
        select::choose_instead(svc_id, svc, &client, be_id),
        Ok(Some(_))
    ) {
        return false;
    }
    flow::mark(f, flow_flags::REFUSED);
    true
}

/// Rewrites the packet's addresses and ports to `src`:`sport` → `dst`:`dport`, updating the
/// IPv4 header checksum and the TCP or UDP checksum (its pseudo-header) incrementally.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    pkt: &Packet,
    src: &[u8; 16],
    dst: &[u8; 16],
    sport_be: u16,
    dport_be: u16,
) -> Result<(), Stop> {
    let v4 = pkt.key.family == FAMILY_V4;
    // The old addresses are read from the packet as they are replaced, a word at a time.
    let addrs = if v4 {
        let ip = ptr_at_mut::<[u8; 20]>(ctx, pkt.l3_off)
            .ok_or(Stop::Pass(outcome::PASS_MALFORMED))? as *mut u8;
        // SAFETY: the 20 bytes were checked by ptr_at_mut.
        unsafe {
            let d = swap_addr(ip.add(12), src, 1, Delta::default());
            let d = swap_addr(ip.add(16), dst, 1, d);
            let c = ip.add(10) as *mut u16;
            *c = d.apply(*c);
            d
        }
    } else {
        let ip = ptr_at_mut::<[u8; 40]>(ctx, pkt.l3_off)
            .ok_or(Stop::Pass(outcome::PASS_MALFORMED))? as *mut u8;
        // SAFETY: the 40 bytes were checked by ptr_at_mut.
        unsafe {
            let d = swap_addr(ip.add(8), src, 4, Delta::default());
            swap_addr(ip.add(24), dst, 4, d)
        }
    };
    let d = addrs
        .word16(pkt.key.sport_be, sport_be)
        .word16(pkt.key.dport_be, dport_be);
    if pkt.is_tcp() {
        let l4 = ptr_at_mut::<[u8; 20]>(ctx, pkt.l4_off)
            .ok_or(Stop::Pass(outcome::PASS_MALFORMED))? as *mut u8;
        // SAFETY: the 20 bytes were checked by ptr_at_mut.
        unsafe {
            *(l4 as *mut u16) = sport_be;
            *(l4.add(2) as *mut u16) = dport_be;
            let c = l4.add(16) as *mut u16;
            *c = d.apply(*c);
        }
    } else {
        let l4 = ptr_at_mut::<[u8; 8]>(ctx, pkt.l4_off)
            .ok_or(Stop::Pass(outcome::PASS_MALFORMED))? as *mut u8;
        // SAFETY: the 8 bytes were checked by ptr_at_mut.
        unsafe {
            *(l4 as *mut u16) = sport_be;
            *(l4.add(2) as *mut u16) = dport_be;
            let c = l4.add(6) as *mut u16;
            let old = *c;
            // IPv4 UDP without a checksum keeps none; a computed 0 is sent as 0xffff.
            if !(v4 && old == 0) {
                let new = d.apply(old);
                *c = if new == 0 { 0xffff } else { new };
            }
        }
    }
    Ok(())
}
