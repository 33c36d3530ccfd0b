//! Next hops the NAT flow cache holds copies of. The datapath's NAT cache keeps, for each
//! direction of an established flow, what `bpf_fib_lookup` answered (next hop MAC, egress
//! interface and its MAC, the route's MTU) so that a packet need not ask again. The kernel
//! tells of what may change such an answer over rtnetlink; this task follows it and voids
//! every cached copy (`Datapath::void_caches`, which moves `Globals::epoch`) when:
//! - a neighbour's link-layer address changes (a router's failover, a gratuitous ARP), or it
//!   is no longer valid (failed, incomplete, deleted) — a neighbour going round reachable,
//!   stale, delay, probe with the same address changes no answer (`bpf_fib_lookup` takes any
//!   valid state) and voids nothing; a neighbour seen for the first time voids too (it may
//!   have changed before this task knew it);
//! - anything else it subscribed to: a route, rule, nexthop object, address, link or
//!   forwarding setting, or notifications were lost.
//!
//! Only while some service is NAT (DSR services read no FIB). If the socket cannot be opened,
//! or while the daemon is down, a cached answer still lasts at most the cache's refresh
//! (50 jiffies: 200 ms at HZ=250).

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use tokio::io::{unix::AsyncFd, Interest};
use tracing::{debug, warn};

use super::{os, os::NetChange, Daemon};

/// What the task knows of the neighbours: their link-layer addresses while valid.
#[derive(Default)]
pub struct Neighbours {
    known: HashMap<(u32, IpAddr), Vec<u8>>,
}

impl Neighbours {
    /// Whether `c` may change an answer the FIB gave before it (then cached copies must go),
    /// and records it.
    pub fn changes_answers(&mut self, c: &NetChange) -> bool {
        match c {
            NetChange::Neighbour {
                ifindex,
                addr,
                lladdr: Some(ll),
            } => self.known.insert((*ifindex, *addr), ll.clone()).as_ref() != Some(ll),
            NetChange::Neighbour {
                ifindex,
                addr,
                lladdr: None,
            } => self.known.remove(&(*ifindex, *addr)).is_some(),
            NetChange::Other => true,
        }
    }
}

/// Follows the kernel's notifications until the task is aborted (module doc).
pub async fn run(daemon: Arc<Daemon>) {
    let fd = match os::net_changes_socket().and_then(|fd| {
        // SAFETY: an open descriptor this `AsyncFd` owns (an `OwnedFd`) until it is dropped.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(std::io::Error::from)
    }) {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot follow the kernel's route and neighbour changes: NAT flows' cached next hops are renewed every 200 ms only");
            return;
        }
    };
    let mut neighbours = Neighbours::default();
    loop {
        let mut ready = match fd.readable().await {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "route and neighbour changes: socket failed");
                return;
            }
        };
        let changes = match os::read_net_changes(fd.get_ref()) {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "route and neighbour changes: cannot read");
                return;
            }
        };
        ready.clear_ready();
        // Every change read at once is recorded; one voiding stands for them all.
        let mut void = false;
        for c in &changes {
            void |= neighbours.changes_answers(c);
        }
        if !void {
            continue;
        }
        let d = daemon.clone();
        let r = tokio::task::spawn_blocking(move || {
            let mut core = d.core.lock().expect("core lock");
            if !core.has_nat() {
                return Ok(false);
            }
            core.bal.datapath_mut().void_caches().map(|()| true)
        })
        .await;
        match r {
            Ok(Ok(true)) => debug!(
                changes = changes.len(),
                "a next hop may have changed: cached NAT flows voided"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => warn!(error = %e, "cannot void the flow caches after a next hop change"),
            Err(e) => warn!(error = %e, "voiding the flow caches"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn neigh(addr: &str, ll: Option<[u8; 6]>) -> NetChange {
        NetChange::Neighbour {
            ifindex: 2,
            addr: addr.parse().unwrap(),
            lladdr: ll.map(|m| m.to_vec()),
        }
    }

    #[test]
    fn only_a_new_mac_or_a_lost_neighbour_changes_answers() {
        let mut n = Neighbours::default();
        let a = [2, 0, 0, 0, 0, 1];
        assert!(n.changes_answers(&neigh("10.0.0.1", Some(a))), "first seen");
        assert!(
            !n.changes_answers(&neigh("10.0.0.1", Some(a))),
            "same MAC (reachable → stale)"
        );
        assert!(
            n.changes_answers(&neigh("10.0.0.1", Some([2, 0, 0, 0, 0, 2]))),
            "new MAC"
        );
        assert!(
            n.changes_answers(&neigh("10.0.0.1", None)),
            "no longer valid"
        );
        assert!(
            !n.changes_answers(&neigh("10.0.0.1", None)),
            "still not valid (nothing cached could use it)"
        );
        assert!(n.changes_answers(&NetChange::Other), "a route");
    }

    #[test]
    fn notifications_are_parsed() {
        // RTM_NEWNEIGH: nlmsghdr, ndmsg (AF_INET, ifindex 3, NUD_STALE), NDA_DST, NDA_LLADDR.
        let mut m = vec![0u8; 16];
        m[4..6].copy_from_slice(&28u16.to_ne_bytes());
        m.extend_from_slice(&[2, 0, 0, 0]);
        m.extend_from_slice(&3u32.to_ne_bytes());
        m.extend_from_slice(&0x04u16.to_ne_bytes());
        m.extend_from_slice(&[0, 1]);
        m.extend_from_slice(&8u16.to_ne_bytes());
        m.extend_from_slice(&1u16.to_ne_bytes());
        m.extend_from_slice(&[10, 0, 0, 9]);
        m.extend_from_slice(&10u16.to_ne_bytes());
        m.extend_from_slice(&2u16.to_ne_bytes());
        m.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0, 0]);
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        // RTM_NEWROUTE, no body to speak of.
        let mut r = vec![0u8; 28];
        r[0..4].copy_from_slice(&28u32.to_ne_bytes());
        r[4..6].copy_from_slice(&24u16.to_ne_bytes());
        m.extend_from_slice(&r);
        assert_eq!(
            os::parse_net_changes(&m),
            vec![
                NetChange::Neighbour {
                    ifindex: 3,
                    addr: "10.0.0.9".parse().unwrap(),
                    lladdr: Some(vec![2, 0, 0, 0, 0, 9]),
                },
                NetChange::Other,
            ]
        );
        // The same neighbour failed: no link-layer address the FIB would use.
        m[24..26].copy_from_slice(&0x20u16.to_ne_bytes());
        assert_eq!(
            os::parse_net_changes(&m[..len as usize]),
            vec![NetChange::Neighbour {
                ifindex: 3,
                addr: "10.0.0.9".parse().unwrap(),
                lladdr: None,
            }]
        );
    }
}
