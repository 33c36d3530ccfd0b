//! OS plumbing of the daemon: bpffs, the single-instance lock, the open-file limit,
//! interfaces, peer credentials, and MAC addresses from the kernel's neighbour table (netlink).

use std::{
    collections::BTreeMap,
    ffi::CString,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tracing::info;

use super::DaemonError;

/// Mounts bpffs on /sys/fs/bpf if `pin_dir` is under it and nothing is mounted there.
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), DaemonError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let root = Path::new("/sys/fs/bpf");
    if !pin_dir.starts_with(root) {
        return Ok(());
    }
    let c = CString::new("/sys/fs/bpf").expect("no NUL");
    // SAFETY: statfs on a valid path into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = CString::new("bpf").expect("no NUL");
    // SAFETY: mounting bpffs with valid C strings.
    let r = unsafe {
        libc::mount(
            fstype.as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(DaemonError::Bpffs(format!(
            "cannot mount bpffs on /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        )));
    }
    info!("mounted bpffs on /sys/fs/bpf");
    Ok(())
}

/// The single-instance lock: an exclusive `flock` on the pin directory, taken before the
/// daemon reads or writes anything. Held until dropped (or the process dies).
pub struct InstanceLock {
    _fd: OwnedFd,
    /// The directory was made by this lock (removed again if start-up fails).
    pub created: bool,
    pub dir: PathBuf,
}

pub fn lock_instance(pin_dir: &Path) -> Result<InstanceLock, DaemonError> {
    let created = !pin_dir.exists();
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| DaemonError::Bpffs(format!("{}: {e}", pin_dir.display())))?;
    let c = CString::new(pin_dir.as_os_str().as_encoded_bytes())
        .map_err(|_| DaemonError::Bpffs("pin_dir holds a NUL byte".into()))?;
    // SAFETY: open with a valid C string; the result is checked.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(DaemonError::Bpffs(format!(
            "{}: {}",
            pin_dir.display(),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(DaemonError::AlreadyRunning(pin_dir.to_path_buf()));
        }
        return Err(DaemonError::Bpffs(format!(
            "locking {}: {e}",
            pin_dir.display()
        )));
    }
    Ok(InstanceLock {
        _fd: fd,
        created,
        dir: pin_dir.to_path_buf(),
    })
}

/// Raises the soft open-file limit to the hard one: health checks, the control socket and
/// the metrics endpoint all need descriptors. Returns the limit in force.
pub fn raise_nofile() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit {
            rlim_cur: r.rlim_max,
            rlim_max: r.rlim_max,
        };
        // SAFETY: valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            return want.rlim_cur;
        }
    }
    r.rlim_cur
}

/// Interfaces of `names` that do not exist in this network namespace.
pub fn missing_interfaces(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            let Ok(c) = CString::new(n.as_str()) else {
                return true;
            };
            // SAFETY: valid C string.
            unsafe { libc::if_nametoindex(c.as_ptr()) == 0 }
        })
        .cloned()
        .collect()
}

pub fn group_id(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: getgrnam with a valid C string; the result is read at once.
    let g = unsafe { libc::getgrnam(c.as_ptr()) };
    (!g.is_null()).then(|| unsafe { (*g).gr_gid })
}

/// Whether a peer may use the control socket: root, the daemon's own user, or a member of
/// `group` — by primary or supplementary group (the usual `usermod -aG steer alice`).
pub fn peer_allowed(uid: u32, gid: u32, pid: Option<i32>, group: Option<u32>) -> bool {
    // SAFETY: getuid has no preconditions.
    if uid == 0 || uid == unsafe { libc::getuid() } {
        return true;
    }
    let Some(g) = group else {
        return false;
    };
    if gid == g {
        return true;
    }
    let Some(pid) = pid else {
        return false;
    };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|l| l.split_whitespace().any(|x| x.parse() == Ok(g)))
        })
        .unwrap_or(false)
}

// Neighbour table through rtnetlink (linux/rtnetlink.h, linux/neighbour.h).
const RTM_GETNEIGH: u16 = 30;
const RTM_NEWNEIGH: u16 = 28;
const NLMSG_DONE: u16 = 3;
const NLMSG_ERROR: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NUD_INCOMPLETE: u16 = 0x01;
const NUD_FAILED: u16 = 0x20;

/// The neighbour table: address → MAC, for entries that have one (not incomplete or failed).
/// An entry on one of `ifindexes` wins over one on another interface (a multi-homed host can
/// know an address elsewhere); entries on other interfaces are kept too, marked `false`, for
/// setups where the XDP interface is a lower device (a VLAN, a bridge port, a bond slave).
pub fn neighbours(ifindexes: &[u32]) -> std::io::Result<BTreeMap<IpAddr, ([u8; 6], bool)>> {
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // nlmsghdr (16) + ndmsg (12): a dump of every family.
    let mut req = [0u8; 28];
    req[0..4].copy_from_slice(&28u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETNEIGH.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    // SAFETY: sending a buffer we own.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = BTreeMap::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > msgs.len() {
                return Ok(out);
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR if len >= 20 => {
                    let errno = i32::from_ne_bytes(msgs[16..20].try_into().expect("4 bytes"));
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
                RTM_NEWNEIGH if len >= 28 => {
                    let family = msgs[16];
                    let ifindex = u32::from_ne_bytes(msgs[20..24].try_into().expect("4 bytes"));
                    let state = u16::from_ne_bytes(msgs[24..26].try_into().expect("2 bytes"));
                    let (mut dst, mut mac) = (None, None);
                    let mut attrs = &msgs[28..len];
                    while attrs.len() >= 4 {
                        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                        let akind = u16::from_ne_bytes([attrs[2], attrs[3]]);
                        if alen < 4 || alen > attrs.len() {
                            break;
                        }
                        let v = &attrs[4..alen];
                        match (akind, family as i32, v.len()) {
                            (NDA_DST, libc::AF_INET, 4) => {
                                dst = Some(IpAddr::from(<[u8; 4]>::try_from(v).expect("4")))
                            }
                            (NDA_DST, libc::AF_INET6, 16) => {
                                dst = Some(IpAddr::from(<[u8; 16]>::try_from(v).expect("16")))
                            }
                            (NDA_LLADDR, _, 6) => mac = Some(<[u8; 6]>::try_from(v).expect("6")),
                            _ => {}
                        }
                        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
                    }
                    let ours = ifindexes.is_empty() || ifindexes.contains(&ifindex);
                    if let (Some(d), Some(m)) = (dst, mac) {
                        let valid = state & (NUD_INCOMPLETE | NUD_FAILED) == 0 && m != [0; 6];
                        let better = out.get(&d).is_none_or(|(_, o): &([u8; 6], bool)| !o);
                        if valid && better {
                            out.insert(d, (m, ours));
                        }
                    }
                }
                _ => {}
            }
            msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
        }
    }
}

/// MACs of `addrs` from the neighbour table, asking the kernel to resolve the ones it does
/// not know (a UDP datagram to the discard port makes it send ARP or neighbour
/// solicitations), all at once, until `deadline`. Unresolved addresses are absent.
pub fn resolve_macs(
    addrs: &[IpAddr],
    interfaces: &[String],
    within: Duration,
) -> BTreeMap<IpAddr, [u8; 6]> {
    let ifindexes: Vec<u32> = interfaces
        .iter()
        .filter_map(|n| {
            let c = CString::new(n.as_str()).ok()?;
            // SAFETY: valid C string.
            let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
            (i != 0).then_some(i)
        })
        .collect();
    let want: Vec<IpAddr> = addrs.to_vec();
    let mut found = BTreeMap::new();
    let deadline = Instant::now() + within;
    let mut asked = false;
    loop {
        let mut elsewhere = BTreeMap::new();
        if let Ok(n) = neighbours(&ifindexes) {
            for a in &want {
                match n.get(a) {
                    Some((m, true)) => {
                        found.insert(*a, *m);
                    }
                    Some((m, false)) => {
                        elsewhere.insert(*a, *m);
                    }
                    None => {}
                }
            }
        }
        let done = want
            .iter()
            .all(|a| found.contains_key(a) || elsewhere.contains_key(a));
        if done || Instant::now() >= deadline {
            for (a, m) in elsewhere {
                if let std::collections::btree_map::Entry::Vacant(e) = found.entry(a) {
                    tracing::warn!(address = %a, "MAC found on an interface steer does not run on (a VLAN or bridge above it?): using it");
                    e.insert(m);
                }
            }
            return found;
        }
        if !asked {
            for a in want.iter().filter(|a| !found.contains_key(a)) {
                let bind: SocketAddr = if a.is_ipv4() {
                    "0.0.0.0:0".parse().expect("address")
                } else {
                    "[::]:0".parse().expect("address")
                };
                if let Ok(s) = std::net::UdpSocket::bind(bind) {
                    let _ = s.send_to(b"", SocketAddr::new(*a, 9));
                }
            }
            asked = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// Routes and addresses through rtnetlink (linux/rtnetlink.h, linux/if_addr.h).
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PREFSRC: u16 = 7;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RT_SCOPE_UNIVERSE: u8 = 0;

/// Sends one rtnetlink request and calls `f(type, message)` on every answer (a message is the
/// whole netlink message, its header included) until the answer ends: `NLMSG_DONE` for a
/// dump, the first message otherwise.
fn netlink_talk(req: &[u8], dump: bool, mut f: impl FnMut(u16, &[u8])) -> std::io::Result<()> {
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sending a buffer we own.
    if unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut msgs = &buf[..n as usize];
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
            if len < 16 || len > msgs.len() {
                return Ok(());
            }
            match kind {
                NLMSG_DONE => return Ok(()),
                NLMSG_ERROR if len >= 20 => {
                    let errno = i32::from_ne_bytes(msgs[16..20].try_into().expect("4 bytes"));
                    return if errno == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::from_raw_os_error(-errno))
                    };
                }
                _ => f(kind, &msgs[..len]),
            }
            if !dump {
                return Ok(());
            }
            msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
        }
    }
}

/// The attributes after a fixed header of `fixed` bytes: (type, value).
fn rtattrs(msg: &[u8], fixed: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut attrs = msg.get(16 + fixed..).unwrap_or_default();
    while attrs.len() >= 4 {
        let alen = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let akind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if alen < 4 || alen > attrs.len() {
            break;
        }
        out.push((akind, &attrs[4..alen]));
        attrs = &attrs[((alen + 3) & !3).min(attrs.len())..];
    }
    out
}

// Notifications of changes that may change a `bpf_fib_lookup` answer (linux/rtnetlink.h).
const RTM_DELNEIGH: u16 = 29;
/// `ndm_state` values `bpf_fib_lookup` takes a neighbour's MAC in (`NUD_VALID`): permanent,
/// noarp, reachable, probe, stale, delay.
const NUD_VALID: u16 = 0x80 | 0x40 | 0x02 | 0x10 | 0x04 | 0x08;
/// Groups beyond the first 32 bits of `nl_groups`, joined one by one (`NETLINK_ADD_MEMBERSHIP`):
/// IPv6 rules, IPv4 and IPv6 forwarding settings (netconf), nexthop objects.
const EXTRA_GROUPS: [u32; 4] = [
    libc::RTNLGRP_IPV6_RULE,
    libc::RTNLGRP_IPV4_NETCONF,
    libc::RTNLGRP_IPV6_NETCONF,
    libc::RTNLGRP_NEXTHOP,
];
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;

/// A change the kernel announced that may change where `bpf_fib_lookup` sends a packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetChange {
    /// A neighbour entry: its interface and address, and its link-layer address while the
    /// FIB would use it (`None`: no longer valid, or deleted).
    Neighbour {
        ifindex: u32,
        addr: IpAddr,
        lladdr: Option<Vec<u8>>,
    },
    /// A route, rule, nexthop, address, link or forwarding setting changed, or notifications
    /// were lost (the socket's buffer overran).
    Other,
}

/// A non-blocking rtnetlink socket subscribed to the notifications that may change a FIB
/// lookup's answer: neighbours, links, addresses, routes and rules of both families, nexthop
/// objects, forwarding settings.
pub fn net_changes_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; its fields are set below.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as u16;
    sa.nl_groups = (libc::RTMGRP_LINK
        | libc::RTMGRP_NEIGH
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV4_RULE
        | libc::RTMGRP_IPV6_IFADDR
        | libc::RTMGRP_IPV6_ROUTE) as u32;
    // SAFETY: binding our socket to a sockaddr_nl of the size given.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    for group in EXTRA_GROUPS {
        // SAFETY: a c_uint option of the size given. A kernel without the group refuses it:
        // what it cannot announce, it cannot change.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&group as *const u32).cast(),
                std::mem::size_of::<u32>() as u32,
            );
        }
    }
    Ok(fd)
}

/// Reads every notification waiting on `fd` (a `net_changes_socket`): `Ok(changes)` once it
/// would block; an overrun buffer (ENOBUFS) reads as `NetChange::Other`.
pub fn read_net_changes(fd: &OwnedFd) -> std::io::Result<Vec<NetChange>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: receiving into a buffer we own.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(out),
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => {
                    out.push(NetChange::Other);
                    continue;
                }
                _ => return Err(e),
            }
        }
        out.extend(parse_net_changes(&buf[..n as usize]));
    }
}

/// The changes one datagram of rtnetlink notifications announces.
pub fn parse_net_changes(mut msgs: &[u8]) -> Vec<NetChange> {
    let mut out = Vec::new();
    while msgs.len() >= 16 {
        let len = u32::from_ne_bytes(msgs[0..4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(msgs[4..6].try_into().expect("2 bytes"));
        if len < 16 || len > msgs.len() {
            break;
        }
        let msg = &msgs[..len];
        match kind {
            NLMSG_DONE | NLMSG_ERROR => {}
            RTM_NEWNEIGH | RTM_DELNEIGH if len >= 28 => {
                let ifindex = u32::from_ne_bytes(msg[20..24].try_into().expect("4 bytes"));
                let state = u16::from_ne_bytes(msg[24..26].try_into().expect("2 bytes"));
                let attrs = rtattrs(msg, 12);
                let addr = attrs
                    .iter()
                    .find(|(k, _)| *k == NDA_DST)
                    .and_then(|(_, v)| ip_of(v));
                let lladdr = attrs
                    .iter()
                    .find(|(k, _)| *k == NDA_LLADDR)
                    .map(|(_, v)| v.to_vec());
                // (A neighbour without an address is a bridge's FDB entry: no FIB answer.)
                if let Some(addr) = addr {
                    out.push(NetChange::Neighbour {
                        ifindex,
                        addr,
                        lladdr: lladdr.filter(|_| kind == RTM_NEWNEIGH && state & NUD_VALID != 0),
                    });
                }
            }
            _ => out.push(NetChange::Other),
        }
        msgs = &msgs[((len + 3) & !3).min(msgs.len())..];
    }
    out
}

fn ip_of(v: &[u8]) -> Option<IpAddr> {
    match v.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(v).expect("4"))),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(v).expect("16"))),
        _ => None,
    }
}

/// How this host reaches an address, as `ip route get ADDR` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The route's preferred source (RTA_PREFSRC), if it names one.
    pub prefsrc: Option<IpAddr>,
    /// The output interface.
    pub oif: u32,
    /// The gateway, when the address is not on a link of this host.
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// The neighbour the kernel must know to send to `dst` this way.
    pub fn next_hop(&self, dst: IpAddr) -> IpAddr {
        self.gateway.unwrap_or(dst)
    }
}

/// The kernel's route to `dst` (RTM_GETROUTE, what `ip route get` asks).
pub fn route_get(dst: IpAddr) -> std::io::Result<Route> {
    let (family, bytes): (u8, Vec<u8>) = match dst {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    // nlmsghdr (16) + rtmsg (12) + RTA_DST.
    let len = 16 + 12 + 4 + bytes.len();
    let mut req = vec![0u8; len];
    req[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = family;
    req[17] = (bytes.len() * 8) as u8; // rtm_dst_len
    req[28..30].copy_from_slice(&((4 + bytes.len()) as u16).to_ne_bytes());
    req[30..32].copy_from_slice(&RTA_DST.to_ne_bytes());
    req[32..].copy_from_slice(&bytes);
    let mut route = None;
    netlink_talk(&req, false, |kind, msg| {
        if kind != RTM_NEWROUTE {
            return;
        }
        let mut r = Route {
            prefsrc: None,
            oif: 0,
            gateway: None,
        };
        for (k, v) in rtattrs(msg, 12) {
            match k {
                RTA_PREFSRC => r.prefsrc = ip_of(v),
                RTA_GATEWAY => r.gateway = ip_of(v),
                RTA_OIF if v.len() == 4 => {
                    r.oif = u32::from_ne_bytes(v.try_into().expect("4 bytes"))
                }
                _ => {}
            }
        }
        route = Some(r);
    })?;
    route.ok_or_else(|| std::io::Error::other("no answer to RTM_GETROUTE"))
}

/// The first address of interface `ifindex` in `v4`'s family and of global scope.
pub fn first_address(ifindex: u32, v4: bool) -> std::io::Result<Option<IpAddr>> {
    // nlmsghdr (16) + ifaddrmsg (8): a dump of one family.
    let mut req = [0u8; 24];
    req[0..4].copy_from_slice(&24u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETADDR.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = if v4 { libc::AF_INET } else { libc::AF_INET6 } as u8;
    let mut found = None;
    netlink_talk(&req, true, |kind, msg| {
        if kind != RTM_NEWADDR || msg.len() < 24 || found.is_some() {
            return;
        }
        let scope = msg[19];
        let index = u32::from_ne_bytes(msg[20..24].try_into().expect("4 bytes"));
        if index != ifindex || scope != RT_SCOPE_UNIVERSE {
            return;
        }
        let attrs = rtattrs(msg, 8);
        let get = |want| {
            attrs
                .iter()
                .find(|(k, _)| *k == want)
                .and_then(|(_, v)| ip_of(v))
        };
        found = get(IFA_LOCAL).or_else(|| get(IFA_ADDRESS));
    })?;
    Ok(found.filter(|a| a.is_ipv4() == v4))
}

/// The LB's own address facing `dst`, as `ip route get` finds it: the route's preferred
/// source, else the first global address of its output interface. With the route.
pub fn facing_address(dst: IpAddr) -> std::io::Result<(IpAddr, Route)> {
    let r = route_get(dst)?;
    let src = match r.prefsrc {
        Some(a) => Some(a),
        None => first_address(r.oif, dst.is_ipv4())?,
    };
    src.map(|a| (a, r)).ok_or_else(|| {
        std::io::Error::other(format!(
            "the route to {dst} names no source and its interface (index {}) has no address",
            r.oif
        ))
    })
}

/// The facing address of every address of `dsts` that has a route (the others are absent,
/// with why in the log), and the route itself.
pub fn facing_addresses(dsts: &[IpAddr]) -> BTreeMap<IpAddr, (IpAddr, Route)> {
    let mut out = BTreeMap::new();
    for d in dsts {
        match facing_address(*d) {
            Ok(x) => {
                out.insert(*d, x);
            }
            Err(e) => tracing::warn!(address = %d, error = %e, "no route from this host"),
        }
    }
    out
}

/// Makes the kernel resolve neighbour `addr` on interface `ifindex` (ARP or neighbour
/// solicitation): one byte to its discard port from a socket bound to that interface. The
/// kernel queues the datagram while it resolves and sends it when it has the MAC.
pub fn probe_neighbour(addr: IpAddr, ifindex: u32) -> std::io::Result<()> {
    let (domain, level, opt) = if addr.is_ipv4() {
        (libc::AF_INET, libc::IPPROTO_IP, libc::IP_UNICAST_IF)
    } else {
        (libc::AF_INET6, libc::IPPROTO_IPV6, libc::IPV6_UNICAST_IF)
    };
    // SAFETY: plain socket call; the result is checked.
    let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if ifindex != 0 {
        // Both options take the index in network order (the kernel `ntohl`s it; seen: a
        // host-order index fails with EADDRNOTAVAIL).
        let v: u32 = ifindex.to_be();
        // SAFETY: a u32 option value of the right size.
        let r =
            unsafe { libc::setsockopt(fd.as_raw_fd(), level, opt, (&v as *const u32).cast(), 4) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let sock = std::net::UdpSocket::from(fd);
    let to = match addr {
        IpAddr::V4(a) => SocketAddr::from((a, 9)),
        // A link-local next hop needs its interface as the scope.
        IpAddr::V6(a) => SocketAddr::V6(std::net::SocketAddrV6::new(a, 9, 0, ifindex)),
    };
    sock.send_to(&[0], to).map(|_| ())
}

/// Sets `net.ipv4.conf.IFACE.forwarding` (or the IPv6 one) to 1. Returns whether it was off.
pub fn enable_forwarding(iface: &str, v6: bool) -> std::io::Result<bool> {
    let path = format!(
        "/proc/sys/net/{}/conf/{iface}/forwarding",
        if v6 { "ipv6" } else { "ipv4" }
    );
    let cur = std::fs::read_to_string(&path)?;
    if cur.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(&path, "1")?;
    Ok(true)
}

/// A sysctl's value under /proc/sys (`path` with '/'), trimmed.
pub fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`), if it can be read.
pub fn local_port_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|x| x.parse().ok());
    Some((it.next()??, it.next()??))
}

/// Logs a repeated message at most once per `every` per key, saying how many were held back.
pub struct Throttle {
    every: Duration,
    seen: std::sync::Mutex<BTreeMap<String, (Instant, u64)>>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Self {
        Throttle {
            every,
            seen: std::sync::Mutex::new(BTreeMap::new()),
        }
    }

    /// `Some(held back since the last one)` when this occurrence of `key` should be logged.
    pub fn allow(&self, key: &str) -> Option<u64> {
        let mut seen = self.seen.lock().expect("throttle lock");
        let now = Instant::now();
        match seen.get_mut(key) {
            Some((at, held)) if now.duration_since(*at) < self.every => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(key.to_string(), (now, 0));
                Some(0)
            }
        }
    }
}

/// Sends one bare TCP ACK (sequence and acknowledgment 0, out of any window) for the reply
/// 5-tuple `k` of a NAT flow, from the LB's side: source = `k.dst`:`k.dport_be` (the LB
/// address and source port), destination = `k.src`:`k.sport_be` (the backend). Through a raw
/// socket bound (freely: a pool address need not be local) to the LB address; the checksum
/// is computed here for IPv4 and by the kernel for IPv6 (`IPV6_CHECKSUM`).
pub fn send_bare_ack(k: &steer_common::FlowKey) -> std::io::Result<()> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let v4 = k.family == steer_common::FAMILY_V4;
    let (lb, be): (IpAddr, IpAddr) = if v4 {
        let a = |b: &[u8; 16]| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
        (a(&k.dst), a(&k.src))
    } else {
        (
            IpAddr::V6(Ipv6Addr::from(k.dst)),
            IpAddr::V6(Ipv6Addr::from(k.src)),
        )
    };
    let domain = if v4 {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::RAW, Some(socket2::Protocol::TCP))?;
    if v4 {
        sock.set_freebind(true)?;
    } else {
        sock.set_freebind_ipv6(true)?;
        let offset: libc::c_int = 16;
        // SAFETY: a valid socket and an int option.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::IPPROTO_IPV6,
                libc::IPV6_CHECKSUM,
                (&offset as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    sock.bind(&SocketAddr::new(lb, 0).into())?;
    let mut seg = [0u8; 20];
    seg[0..2].copy_from_slice(&k.dport_be.to_ne_bytes());
    seg[2..4].copy_from_slice(&k.sport_be.to_ne_bytes());
    // seq 0, ack 0; data offset 5 words; ACK; window 0.
    seg[12] = 5 << 4;
    seg[13] = 0x10;
    if v4 {
        let mut sum: u32 = 6 + 20;
        for w in k.dst[..4]
            .chunks(2)
            .chain(k.src[..4].chunks(2))
            .chain(seg.chunks(2))
        {
            sum += u16::from_be_bytes([w[0], w[1]]) as u32;
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        seg[16..18].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }
    sock.send_to(&seg, &SocketAddr::new(be, 0).into())?;
    Ok(())
}

/// This host's name, for the stats page.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

/// Tells the service manager (systemd's `Type=notify`) about the daemon: `READY=1`,
/// `RELOADING=1`, `STOPPING=1`, `STATUS=…`, one assignment per line. A no-op without
/// `$NOTIFY_SOCKET`; a failure is logged, never fatal (the daemon works without a manager).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        let sock = std::os::unix::net::UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(e) = sent {
        tracing::warn!(socket = ?path, error = %e, "cannot notify the service manager");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow("a"), Some(0));
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("a"), None);
        assert_eq!(t.allow("b"), Some(0));
    }

    #[test]
    fn the_route_to_loopback_comes_from_loopback() {
        // `ip route get 127.0.0.1`: a local route out of `lo`, source 127.0.0.1.
        let (src, r) = facing_address("127.0.0.1".parse().unwrap()).expect("RTM_GETROUTE");
        assert_eq!(src, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.gateway, None);
        assert_ne!(r.oif, 0);
        assert_eq!(
            first_address(r.oif, true).unwrap(),
            None,
            "lo's 127.0.0.1 is host scope"
        );
    }

    #[test]
    fn the_neighbour_table_can_be_read() {
        // Whatever this host has; the dump itself must work unprivileged.
        neighbours(&[]).expect("RTM_GETNEIGH dump");
    }
}
