//! NAT's daemon side: what the datapath asks of the host and cannot do itself. The watcher
//! reads two maps the datapath writes (both mmapped, so a read is memory reads, no syscall):
//! passive health (`STEER_OBS_V1`), whose backends at their service's `error_limit` are
//! reported to the run loop to be marked down, and the next hops the datapath found no
//! neighbour for (`STEER_NEIGH_V1`), which the kernel is asked to resolve. It reads them when
//! the datapath sends a note (`STEER_NOTE_V1`, a ring buffer it sleeps on), and once a second
//! in case a note was lost (the ring full). Also: forwarding on the XDP interfaces
//! (`bpf_fib_lookup` needs it) and next hops resolved ahead of the first packet.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use steer_common::{note, NeighWant, Note, Observed, FAMILY_V4, FAMILY_V6, NEIGH_SLOTS};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, info, warn};

use super::{health::PassiveDown, os};
use crate::{
    config::{Config, PortRange},
    datapath::Mapped,
    model::Mode,
};

/// How often the maps are read when the datapath's notes cannot be waited on.
pub const POLL: Duration = Duration::from_millis(5);
/// How often they are read anyway while waiting on notes (a note that found the ring full
/// was lost).
pub const SLOW_POLL: Duration = Duration::from_secs(1);
/// A next hop is probed at most this often (the kernel's own ARP retries run meanwhile).
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// A backend whose passive health is watched: NAT, in a service with `observe` on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub id: u32,
    pub name: String,
    /// The service's `error_limit`.
    pub limit: u64,
}

/// The poller's view of the datapath and of what to watch.
pub struct Watcher {
    observed: Arc<Mapped<Observed>>,
    neigh: Arc<Mapped<NeighWant>>,
    /// The datapath's notes, until `run` takes them.
    notes: Mutex<Option<RingBuf<MapData>>>,
    list: Mutex<Arc<Vec<Watched>>>,
    /// Whether any service is NAT: only NAT flows write `observed` and `neigh`, so without one
    /// the poller sleeps (200 wake-ups a second cost an idle DSR host CPU for nothing).
    nat: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
}

static PROBE_LOG: os::Throttle = os::Throttle::new(Duration::from_secs(60));

impl Watcher {
    pub fn new(
        observed: Arc<Mapped<Observed>>,
        neigh: Arc<Mapped<NeighWant>>,
        notes: Option<RingBuf<MapData>>,
    ) -> Arc<Self> {
        Arc::new(Watcher {
            observed,
            neigh,
            notes: Mutex::new(notes),
            list: Mutex::new(Arc::new(Vec::new())),
            nat: std::sync::atomic::AtomicBool::new(false),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Replaces the backends watched, and says whether any service is NAT (after every change
    /// of the config or the balancer).
    pub fn set(&self, list: Vec<Watched>, nat: bool) {
        *self.list.lock().expect("watch list") = Arc::new(list);
        if !self.nat.swap(nat, std::sync::atomic::Ordering::SeqCst) && nat {
            self.wake.notify_one();
        }
    }

    /// Reads the maps at each note (or every `POLL` without the notes), until the task is
    /// aborted. Each backend at its limit is reported once per climb: again once its count
    /// has fallen below the limit (checks reset it before it is eligible again), or when its
    /// last failure is another than the one reported (the count was reset and climbed back
    /// between two reads), or a note says it climbed to the limit anew.
    pub async fn run(self: Arc<Self>, tx: mpsc::UnboundedSender<PassiveDown>) {
        let notes = self.notes.lock().expect("notes").take();
        // SAFETY: the ring buffer owns its map's file descriptor, open while it lives, and
        // always answers that one.
        let mut notes = notes.and_then(|r| match unsafe {
            AsyncFd::register_with_interest(r, tokio::io::Interest::READABLE)
        } {
            Ok(fd) => Some(fd),
            Err(e) => {
                warn!(error = %e, "cannot wait on the datapath's notes: reading its maps every 5 ms");
                None
            }
        });
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        // Backend id → the time of the last failure when it was reported.
        let mut reported: BTreeMap<u32, u64> = BTreeMap::new();
        let mut seqs = vec![0u64; NEIGH_SLOTS as usize];
        let mut probed: HashMap<(IpAddr, u32), Instant> = HashMap::new();
        loop {
            if !self.nat.load(std::sync::atomic::Ordering::SeqCst) {
                // No NAT service: nothing to watch until one is configured (`set` wakes this;
                // the timeout only bounds a missed wake-up).
                let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
                continue;
            }
            match notes.as_mut() {
                Some(fd) => {
                    if let Ok(Ok(mut ready)) =
                        tokio::time::timeout(SLOW_POLL, fd.readable_mut()).await
                    {
                        take_notes(ready.get_inner_mut(), &mut reported);
                        ready.clear_ready();
                        // A note committed between the read and the clear woke nobody: read
                        // again (a later one finds the ring read up to it, and wakes).
                        take_notes(ready.get_inner_mut(), &mut reported);
                    }
                }
                None => {
                    tick.tick().await;
                }
            }
            let list = self.list.lock().expect("watch list").clone();
            for (id, name, fails) in self.over_limit(&list, &mut reported) {
                debug!(backend = %name, id, fails, "passive health: at the error limit");
                if tx.send(PassiveDown { backend: name, id }).is_err() {
                    return;
                }
            }
            for (addr, ifindex) in self.new_wants(&mut seqs) {
                let now = Instant::now();
                if probed
                    .get(&(addr, ifindex))
                    .is_some_and(|t| now.duration_since(*t) < PROBE_EVERY)
                {
                    continue;
                }
                probed.insert((addr, ifindex), now);
                resolve(addr, ifindex, "the datapath found no neighbour entry");
            }
            probed.retain(|_, t| t.elapsed() < PROBE_EVERY);
        }
    }

    /// Watched backends at or over their limit and not reported on this climb: (id, name,
    /// fails).
    fn over_limit(
        &self,
        list: &[Watched],
        reported: &mut BTreeMap<u32, u64>,
    ) -> Vec<(u32, String, u64)> {
        let mut out = Vec::new();
        let mut watched = BTreeSet::new();
        for w in list {
            if w.id as usize >= self.observed.len() {
                continue;
            }
            watched.insert(w.id);
            let o = self.observed.get(w.id);
            if o.fails >= w.limit {
                if reported.insert(w.id, o.last_fail_ns) != Some(o.last_fail_ns) {
                    out.push((w.id, w.name.clone(), o.fails));
                }
            } else {
                reported.remove(&w.id);
            }
        }
        reported.retain(|id, _| watched.contains(id));
        out
    }

    /// Slots written since the last poll: (next hop, interface index).
    fn new_wants(&self, seqs: &mut [u64]) -> Vec<(IpAddr, u32)> {
        let mut out = Vec::new();
        for (i, last) in seqs.iter_mut().enumerate().take(self.neigh.len()) {
            let Some(w) = self.neigh.get(i) else {
                continue;
            };
            if w.seq == *last || w.seq == 0 {
                continue;
            }
            *last = w.seq;
            let addr = match w.family as u8 {
                FAMILY_V4 => IpAddr::from([w.addr[0], w.addr[1], w.addr[2], w.addr[3]]),
                FAMILY_V6 => IpAddr::from(w.addr),
                _ => continue,
            };
            out.push((addr, w.ifindex));
        }
        out
    }
}

/// Reads every note in the ring. A backend noted at its limit climbed there anew: it is to be
/// reported again, whatever was reported before.
fn take_notes(ring: &mut RingBuf<MapData>, reported: &mut BTreeMap<u32, u64>) {
    while let Some(item) = ring.next() {
        if item.len() != std::mem::size_of::<Note>() {
            continue;
        }
        // SAFETY: a whole `Note` (checked), plain integers; the ring's bytes need not be
        // aligned for it.
        let n: Note = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if n.kind == note::PASSIVE {
            reported.remove(&n.id);
        }
    }
}

/// Asks the kernel to resolve next hop `addr` on `ifindex`, saying why (once a minute per
/// address).
fn resolve(addr: IpAddr, ifindex: u32, why: &str) {
    let r = os::probe_neighbour(addr, ifindex);
    if let Some(held) = PROBE_LOG.allow(&addr.to_string()) {
        match &r {
            Ok(()) => {
                info!(next_hop = %addr, ifindex, held_back = held, reason = why, "resolving a NAT next hop")
            }
            Err(e) => {
                warn!(next_hop = %addr, ifindex, error = %e, held_back = held, reason = why, "cannot ask the kernel to resolve a NAT next hop")
            }
        }
    }
}

/// Whether `cfg` has NAT services of each family: (IPv4, IPv6).
fn nat_families(cfg: &Config) -> (bool, bool) {
    let nat = cfg.services.iter().filter(|s| s.mode() == Mode::Nat);
    let (mut v4, mut v6) = (false, false);
    for s in nat {
        if s.vip.get_ref().is_ipv4() {
            v4 = true;
        } else {
            v6 = true;
        }
    }
    (v4, v6)
}

/// Readies the host for the NAT services of `cfg`: forwarding on on every XDP interface for
/// their families (`bpf_fib_lookup` answers "forwarding disabled" for an ingress interface
/// without it), each backend's next hop resolved ahead of its first packet (`routes`: the
/// route to each NAT backend), and a warning when a service's source ports overlap the
/// kernel's own ephemeral ports. Returns lines for the log.
pub fn prepare(cfg: &Config, routes: &BTreeMap<IpAddr, (IpAddr, os::Route)>) -> Vec<String> {
    let mut notes = Vec::new();
    let (v4, v6) = nat_families(cfg);
    for iface in &cfg.daemon.interfaces {
        for (on, is_v6) in [(v4, false), (v6, true)] {
            if !on {
                continue;
            }
            let key = format!(
                "net.{}.conf.{iface}.forwarding",
                if is_v6 { "ipv6" } else { "ipv4" }
            );
            match os::enable_forwarding(iface, is_v6) {
                Ok(true) => {
                    info!(sysctl = %key, "set to 1: NAT services route their packets through the kernel's FIB (and the kernel now forwards what arrives on this interface for other hosts: filter it if it must not)");
                    if is_v6 && os::sysctl(&format!("net/ipv6/conf/{iface}/accept_ra")).as_deref() == Some("1") {
                        notes.push(format!(
                            "{iface}: with IPv6 forwarding on, accept_ra = 1 ignores router advertisements: set net.ipv6.conf.{iface}.accept_ra = 2 if this host takes its IPv6 address or default route from them"
                        ));
                    }
                }
                Ok(false) => {}
                Err(e) => notes.push(format!(
                    "cannot set {key} to 1 ({e}): NAT packets arriving on {iface} will be dropped as unroutable"
                )),
            }
        }
    }
    let neighbours = os::neighbours(&[]).unwrap_or_default();
    for (dst, (_, route)) in routes {
        let hop = route.next_hop(*dst);
        if !neighbours.contains_key(&hop) {
            resolve(
                hop,
                route.oif,
                "a NAT backend's next hop, before its first packet",
            );
        }
    }
    if let Some((lo, hi)) = os::local_port_range() {
        for s in cfg.services.iter() {
            let Some(n) = s.nat(&cfg.daemon) else {
                continue;
            };
            let PortRange(a, b) = n.ports;
            if a <= hi && lo <= b {
                notes.push(format!(
                    "service {}: snat_ports {a}-{b} overlaps the kernel's ephemeral ports {lo}-{hi} (net.ipv4.ip_local_port_range): a connection of this host (a health check) and a NAT flow to the same backend could take the same port; move one of the ranges",
                    s.name.get_ref()
                ));
            }
        }
    }
    notes
}

/// Resets the backend's side of the NAT flows of backends just rejected or removed (`(id,
/// gen)`). The datapath answers a rejected flow's packets with a RST each way, but a RST the
/// backend accepts must carry a sequence number in its window, which only the backend's own
/// segments tell; a backend waiting on a kept-alive connection sends none. So each open flow
/// is sent one bare ACK out of the window, from its LB address and port: the backend answers
/// it with an ACK of its own (RFC 9293 §3.10.7.4), which the datapath turns into an
/// acceptable RST (or, were the flow's entries gone, the LB's kernel resets it, having no
/// socket on that port). A second round after the backend's rate limit on such answers
/// (`tcp_invalid_ratelimit`, 500 ms) catches a lost one. Runs on a thread of its own: a large
/// NAT table takes a while to walk.
pub fn reset_backend_sides(table: crate::datapath::NatTable, gone: Vec<(u32, u16)>) {
    std::thread::spawn(move || {
        for round in 0..2 {
            if round > 0 {
                std::thread::sleep(Duration::from_millis(600));
            }
            let mut sent = 0usize;
            for (id, gen) in &gone {
                let keys = match table.open_tcp_replies_of(*id, *gen) {
                    Ok(k) => k,
                    Err(e) => {
                        warn!(error = %e, "reading the NAT table to reset rejected flows");
                        return;
                    }
                };
                for k in &keys {
                    match os::send_bare_ack(k) {
                        Ok(()) => sent += 1,
                        Err(e) => debug!(error = %e, "nudging a rejected flow's backend"),
                    }
                }
            }
            debug!(sent, round, "rejected NAT flows: backends' sides nudged");
        }
    });
}
