//! Maglev table swaps under load: SYNs run through the real program (`BPF_PROG_TEST_RUN`) from
//! one thread per core while another thread changes the pools of two services as fast as the
//! balancer lets it — backends removed and re-added, rejected, drained, marked down, reweighted,
//! singly and in batches (a reload). Every SYN must be forwarded to a backend of its own service
//! that was in that service's table at some moment of the SYN's run: before the update in
//! progress or after it, never one in neither table, never a freed slot ("bad backend"), never
//! another service's backend, never dropped or answered with a RST (each pool keeps two backends
//! that are never touched).

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use steer_common::{map, outcome};
use steer_ctl::{AdminState, BackendSpec, Balancer, Datapath, Health, Options, ServiceSpec};
use steer_tests::fixture::{tcp4, XDP_TX};

/// How long traffic runs while the pools change.
const RUN: Duration = Duration::from_secs(8);
/// How long the slow reader reads while the pools change.
const SLOW_RUN: Duration = Duration::from_secs(4);
/// A small prime table: a rebuild costs little, so updates come as fast as the balancer allows.
const MAGLEV_SIZE: u32 = 1021;
/// States of the pools remembered for readers (a run spans far fewer).
const HISTORY: u64 = 4096;

struct Svc {
    name: &'static str,
    vip: Ipv4Addr,
}

const SERVICES: [Svc; 2] = [
    Svc {
        name: "web",
        vip: Ipv4Addr::new(10, 0, 0, 10),
    },
    Svc {
        name: "api",
        vip: Ipv4Addr::new(10, 0, 0, 11),
    },
];
/// Backends per service: the first `STABLE` are never touched.
const PER_SERVICE: usize = 5;
const STABLE: usize = 2;

/// Backend `i` of service `s`: bit `s * PER_SERVICE + i` of a set.
fn bit(s: usize, i: usize) -> u64 {
    1 << (s * PER_SERVICE + i)
}

fn name(s: usize, i: usize) -> String {
    format!("{}-{i}", SERVICES[s].name)
}

fn mac(s: usize, i: usize) -> [u8; 6] {
    [0x02, 0xbe, 0, 0, s as u8 + 1, i as u8 + 1]
}

fn spec(s: usize, i: usize) -> BackendSpec {
    BackendSpec::new(
        &name(s, i),
        IpAddr::V4(Ipv4Addr::new(10, 1, s as u8, i as u8 + 1)),
        mac(s, i),
    )
}

/// The backend (service, index) a destination MAC names.
fn backend_of(mac: &[u8]) -> Option<(usize, usize)> {
    (0..SERVICES.len())
        .flat_map(|s| (0..PER_SERVICE).map(move |i| (s, i)))
        .find(|(s, i)| self::mac(*s, *i) == mac)
}

/// The sets of backends in the tables, as the updater changes them: state `n` is at
/// `history[n % HISTORY]`; `seq` is the latest state published. While an update runs, its state
/// holds the union of the tables before and after it.
struct Pools {
    seq: AtomicU64,
    history: Vec<AtomicU64>,
}

impl Pools {
    fn publish(&self, set: u64) {
        let n = self.seq.load(Ordering::Relaxed) + 1;
        self.history[(n % HISTORY) as usize].store(set, Ordering::Relaxed);
        self.seq.store(n, Ordering::Release);
    }

    /// Backends in a table at some moment between states `from` and `to`; `None` if the
    /// history no longer holds them.
    fn between(&self, from: u64, to: u64) -> Option<u64> {
        if to - from >= HISTORY / 2 {
            return None;
        }
        Some(
            (from..=to)
                .map(|n| self.history[(n % HISTORY) as usize].load(Ordering::Relaxed))
                .fold(0, |a, b| a | b),
        )
    }
}

/// A backend's state as the updater set it.
#[derive(Clone, Copy)]
struct Be {
    present: bool,
    ready: bool,
    up: bool,
}

impl Be {
    fn in_table(&self) -> bool {
        self.present && self.ready && self.up
    }
}

/// Runs one frame through the program by its fd (`BPF_PROG_TEST_RUN`, repeat 1): the balancer
/// itself belongs to the updater thread.
fn test_run(prog_fd: i32, input: &[u8], out: &mut [u8]) -> (u32, usize) {
    #[repr(C)]
    #[derive(Default)]
    struct Attr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    let mut attr = Attr {
        prog_fd: prog_fd as u32,
        data_size_in: input.len() as u32,
        data_size_out: out.len() as u32,
        data_in: input.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..Attr::default()
    };
    // SAFETY: attr is a valid bpf_attr for BPF_PROG_TEST_RUN; the buffers outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    assert_eq!(
        r,
        0,
        "BPF_PROG_TEST_RUN: {}",
        std::io::Error::last_os_error()
    );
    (attr.retval, attr.data_size_out as usize)
}

/// What a SYN that went wrong did.
const KINDS: [&str; 5] = [
    "not forwarded",
    "answered with a RST",
    "to an unknown MAC",
    "to another service's backend",
    "to a backend in neither table",
];

#[derive(Default)]
struct Traffic {
    syns: u64,
    retries: u64,
    violations: [u64; KINDS.len()],
    /// The first few, described.
    examples: Vec<String>,
    /// SYNs whose run spanned more states than the history holds (not checked).
    unchecked: u64,
}

/// Sends SYNs of new flows (and, one in eight, a retransmission of a recent one) to both
/// services until `stop`, checking each answer against the pools.
fn traffic(thread: u8, prog_fd: i32, pools: &Pools, stop: &AtomicBool) -> Traffic {
    let templates: Vec<Vec<u8>> = SERVICES
        .iter()
        .map(|s| {
            tcp4(Ipv4Addr::new(100, 64, 0, 1), 1, s.vip, 80)
                .syn()
                .frame()
                .bytes
        })
        .collect();
    let mut t = Traffic::default();
    let mut out = vec![0u8; 512];
    let mut recent: Vec<(usize, Vec<u8>)> = Vec::new();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let (s, frame) = if i.is_multiple_of(8) && !recent.is_empty() {
            t.retries += 1;
            recent[(i / 8) as usize % recent.len()].clone()
        } else {
            // A 5-tuple of its own: client 100.64+thread.x.y, port from the rest of `i`.
            // (Checksums are left as the template's: the datapath does not check them.)
            let s = (i % SERVICES.len() as u64) as usize;
            let n = i / SERVICES.len() as u64;
            let mut f = templates[s].clone();
            f[26..30].copy_from_slice(&[100, 64 + thread, (n >> 8) as u8, n as u8]);
            f[34..36].copy_from_slice(&(1024 + (n >> 16) as u16 % 60_000).to_be_bytes());
            if recent.len() < 64 {
                recent.push((s, f.clone()));
            } else {
                recent[(i % 64) as usize] = (s, f.clone());
            }
            (s, f)
        };
        t.syns += 1;
        let from = pools.seq.load(Ordering::Acquire);
        let (action, len) = test_run(prog_fd, &frame, &mut out);
        let to = pools.seq.load(Ordering::Acquire);
        let Some(allowed) = pools.between(from, to) else {
            t.unchecked += 1;
            continue;
        };
        let wrong = if action != XDP_TX || len != frame.len() {
            Some((0, format!("action {action}, {len} bytes out")))
        } else if out[0..6] == frame[6..12] {
            Some((1, String::new()))
        } else {
            match backend_of(&out[0..6]) {
                None => Some((2, format!("{:02x?}", &out[0..6]))),
                Some((bs, bi)) if bs != s => Some((3, name(bs, bi))),
                Some((bs, bi)) if allowed & bit(bs, bi) == 0 => {
                    Some((4, format!("{} (states {from}..={to})", name(bs, bi))))
                }
                Some(_) => None,
            }
        };
        if let Some((kind, what)) = wrong {
            t.violations[kind] += 1;
            if t.examples.len() < 5 {
                t.examples.push(format!(
                    "SYN to {}: {} {what}",
                    SERVICES[s].name, KINDS[kind]
                ));
            }
        }
    }
    t
}

#[derive(Default)]
struct Updates {
    /// Balancer calls (a batch counts each call in it).
    calls: u64,
    batches: u64,
    slowest: Duration,
}

/// One change of the pools.
#[derive(Clone)]
enum Change {
    Remove(usize, usize),
    Add(usize, usize),
    Admin(usize, usize, AdminState),
    Health(usize, usize, Health),
    Weight(usize, usize, u32),
    /// Changes applied in one batch, as a reload does.
    Batch(Vec<Change>),
}

type State = [[Be; PER_SERVICE]; SERVICES.len()];

impl Change {
    /// What the change does to the tables.
    fn expect(&self, st: &mut State) {
        match *self {
            Change::Remove(s, i) => st[s][i].present = false,
            Change::Add(s, i) => st[s][i].present = true,
            Change::Admin(s, i, a) => st[s][i].ready = a == AdminState::Ready,
            Change::Health(s, i, h) => st[s][i].up = h == Health::Up,
            Change::Weight(..) => {}
            Change::Batch(ref all) => all.iter().for_each(|c| c.expect(st)),
        }
    }

    /// Makes the change; returns the number of balancer calls.
    fn apply(&self, bal: &mut Balancer) -> u64 {
        match *self {
            Change::Remove(s, i) => bal.remove_backend(&name(s, i)).unwrap(),
            Change::Add(s, i) => {
                bal.add_backend(SERVICES[s].name, spec(s, i)).unwrap();
            }
            Change::Admin(s, i, a) => bal.set_admin(&name(s, i), a).unwrap(),
            Change::Health(s, i, h) => bal.set_health(&name(s, i), h).unwrap(),
            Change::Weight(s, i, w) => bal.set_weight(&name(s, i), w).unwrap(),
            Change::Batch(ref all) => {
                bal.begin_batch();
                let n: u64 = all.iter().map(|c| c.apply(bal)).sum();
                bal.commit().unwrap();
                return n;
            }
        }
        1
    }
}

fn table_set(st: &State) -> u64 {
    let mut m = 0;
    for (s, row) in st.iter().enumerate() {
        for (i, b) in row.iter().enumerate() {
            if b.in_table() {
                m |= bit(s, i);
            }
        }
    }
    m
}

/// Changes the pools until `stop`: each step takes a touched backend (index `STABLE..`) of one
/// service out — removed, rejected, drained, down — and back in, or reweights it, or does both
/// in two batches that change both services at once.
fn update(bal: &mut Balancer, pools: &Pools, stop: &AtomicBool) -> Updates {
    let mut st: State = [[Be {
        present: true,
        ready: true,
        up: true,
    }; PER_SERVICE]; SERVICES.len()];
    let mut u = Updates::default();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut step = 0u64;
    while !stop.load(Ordering::Relaxed) {
        step += 1;
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let s = (step % 2) as usize;
        let touched = (PER_SERVICE - STABLE) as u64;
        let i = STABLE + (rng % touched) as usize;
        let j = STABLE + ((rng >> 16) % touched) as usize;
        let (out, back) = match (rng >> 8) % 6 {
            0 => (Change::Remove(s, i), Change::Add(s, i)),
            1 => (
                Change::Admin(s, i, AdminState::Reject),
                Change::Admin(s, i, AdminState::Ready),
            ),
            2 => (
                Change::Admin(s, i, AdminState::Drain),
                Change::Admin(s, i, AdminState::Ready),
            ),
            3 => (
                Change::Health(s, i, Health::Down),
                Change::Health(s, i, Health::Up),
            ),
            4 => (Change::Weight(s, i, 3), Change::Weight(s, i, 1)),
            _ => (
                Change::Batch(vec![
                    Change::Remove(0, i),
                    Change::Admin(1, j, AdminState::Reject),
                    Change::Weight(1, STABLE, 2),
                ]),
                Change::Batch(vec![
                    Change::Add(0, i),
                    Change::Admin(1, j, AdminState::Ready),
                    Change::Weight(1, STABLE, 1),
                ]),
            ),
        };
        for change in [out, back] {
            let before = table_set(&st);
            change.expect(&mut st);
            // While the call runs a packet may see the table before it or the one after.
            pools.publish(before | table_set(&st));
            let t = Instant::now();
            u.calls += change.apply(bal);
            u.slowest = u.slowest.max(t.elapsed());
            if matches!(change, Change::Batch(_)) {
                u.batches += 1;
            }
            pools.publish(table_set(&st));
        }
    }
    u
}

/// The service index's slot of a service's key (TCP port 80).
fn index_slot(vip: Ipv4Addr) -> u32 {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&vip.octets());
    steer_common::hash::service_slot(&addr, 80u16.to_be(), steer_common::PROTO_TCP)
}

/// An address whose service shares the first service's index slot: with a service there
/// (`setup`), the first service is found through the services map (`SHARED`), the second
/// through the index alone (`ONE`), so the tests run both paths.
fn twin_vip() -> Ipv4Addr {
    let slot = index_slot(SERVICES[0].vip);
    (u32::from(Ipv4Addr::new(10, 0, 1, 0))..u32::from(Ipv4Addr::new(10, 16, 0, 0)))
        .map(Ipv4Addr::from)
        .find(|a| index_slot(*a) == slot)
        .expect("an address in 10.0.0.0/12 with the first service's slot")
}

/// A datapath (its maps pinned in `pin_dir`, if given) serving both services, every backend
/// ready and up, and a third service with no backend in the first one's index slot.
fn setup(pin_dir: Option<PathBuf>) -> Balancer {
    let dp = Datapath::load(&Options {
        max_services: 4,
        max_flows: 1 << 16,
        pin_dir,
    })
    .expect("load the datapath");
    let mut bal = Balancer::new(dp);
    for (s, svc) in SERVICES.iter().enumerate() {
        bal.add_service(ServiceSpec {
            maglev_size: MAGLEV_SIZE,
            ..ServiceSpec::tcp(svc.name, svc.vip.into(), 80)
        })
        .unwrap();
        for i in 0..PER_SERVICE {
            bal.add_backend(svc.name, spec(s, i)).unwrap();
        }
    }
    bal.add_service(ServiceSpec::tcp("twin", twin_vip().into(), 80))
        .unwrap();
    bal
}

/// Runs `update` on its own thread until `stop`; joined, it gives the balancer back.
fn spawn_updater(
    mut bal: Balancer,
    pools: &Arc<Pools>,
    stop: &Arc<AtomicBool>,
) -> thread::JoinHandle<(Balancer, Updates)> {
    let (pools, stop) = (pools.clone(), stop.clone());
    thread::spawn(move || {
        let u = update(&mut bal, &pools, &stop);
        (bal, u)
    })
}

fn new_pools() -> Arc<Pools> {
    let pools = Arc::new(Pools {
        seq: AtomicU64::new(0),
        history: (0..HISTORY).map(|_| AtomicU64::new(0)).collect(),
    });
    // Every backend is in its table to begin with.
    pools.publish((0..SERVICES.len()).fold(0, |m, s| m | (bit(s, PER_SERVICE) - bit(s, 0))));
    pools
}

#[test]
fn syns_never_reach_a_backend_in_neither_table_while_pools_change() {
    if !steer_tests::privileged("syns_never_reach_a_backend_in_neither_table_while_pools_change") {
        return;
    }
    let mut bal = setup(None);
    let prog = bal
        .datapath_mut()
        .program()
        .fd()
        .expect("program fd")
        .try_clone()
        .expect("dup the program fd");
    let outcomes_before = bal.datapath().outcomes().unwrap();
    let pools = new_pools();
    let stop = Arc::new(AtomicBool::new(false));
    let updater = spawn_updater(bal, &pools, &stop);
    let senders: Vec<_> = (0..2u8)
        .map(|n| {
            let (pools, stop) = (pools.clone(), stop.clone());
            let fd = prog.as_fd().as_raw_fd();
            thread::spawn(move || traffic(n, fd, &pools, &stop))
        })
        .collect();
    let start = Instant::now();
    thread::sleep(RUN);
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<Traffic> = senders.into_iter().map(|h| h.join().unwrap()).collect();
    let (bal, u) = updater.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    drop(prog);

    let after = bal.datapath().outcomes().unwrap();
    let moved = |o: u32| after[o as usize] - outcomes_before[o as usize];
    let syns: u64 = sent.iter().map(|t| t.syns).sum();
    let retries: u64 = sent.iter().map(|t| t.retries).sum();
    let unchecked: u64 = sent.iter().map(|t| t.unchecked).sum();
    let kinds: Vec<u64> = (0..KINDS.len())
        .map(|k| sent.iter().map(|t| t.violations[k]).sum())
        .collect();
    let violations: u64 = kinds.iter().sum();
    let by_kind: Vec<String> = KINDS
        .iter()
        .zip(&kinds)
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    println!(
        "swap hammer: {syns} SYNs ({retries} retransmitted, {unchecked} unchecked) in {secs:.1} s \
         while {} balancer calls ({} batches) changed the pools, slowest {:.1} ms",
        u.calls,
        u.batches,
        u.slowest.as_secs_f64() * 1e3
    );
    println!(
        "  forwarded {}, bad backend {}, no backend {}, RST {}, rejected {}, not a service {}; \
         {violations} SYNs went where they must not ({})",
        moved(outcome::TX_FORWARD),
        moved(outcome::DROP_BAD_BACKEND),
        moved(outcome::DROP_NO_BACKEND),
        moved(outcome::TX_RST),
        moved(outcome::DROP_REJECTED),
        moved(outcome::PASS_NOT_SERVICE),
        by_kind.join(", "),
    );
    let examples: Vec<&String> = sent.iter().flat_map(|t| &t.examples).collect();
    assert!(
        violations == 0
            && moved(outcome::DROP_BAD_BACKEND) == 0
            && moved(outcome::DROP_NO_BACKEND) == 0
            && moved(outcome::TX_RST) == 0,
        "{violations} of {syns} SYNs went where they must not, e.g. {examples:#?}"
    );
    assert!(u.calls >= 50, "the pools changed only {} times", u.calls);
    assert!(syns >= 10_000, "only {syns} SYNs");
}

/// Removes a pin directory when dropped.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = steer_ctl::datapath::unpin_all(&self.0);
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// steer's datapath serving both services (`setup`) with its maps pinned in a directory of the
/// test's own (`tag`), and the test program `prog` loaded on its pinned maps: the pins, the
/// balancer, the test object and the program's fd (valid while the object lives).
fn on_pins(tag: &str, prog: &str) -> (Pins, Balancer, aya::Ebpf, i32) {
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/steer-test-{}-{tag}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).expect("make the pin directory");
    let pins = Pins(dir.clone());
    let bal = setup(Some(dir.clone()));
    let mut loader = aya::EbpfLoader::new();
    for m in [
        map::SERVICES,
        map::SERVICE_INDEX,
        map::SERVICE_INFO,
        map::BACKENDS,
        map::MAGLEV,
    ] {
        loader.map_pin_path(m, dir.join(m));
    }
    let mut aux = loader
        .load(steer_tests::aux::OBJECT)
        .expect("load the test programs on steer's pinned maps");
    let p: &mut aya::programs::Xdp = aux
        .program_mut(prog)
        .unwrap_or_else(|| panic!("the test object has {prog}"))
        .try_into()
        .unwrap_or_else(|e| panic!("{prog} is an XDP program: {e}"));
    p.load().unwrap_or_else(|e| panic!("load {prog}: {e}"));
    let fd = p.fd().expect("program fd").as_fd().as_raw_fd();
    (pins, bal, aux, fd)
}

/// A packet that takes a millisecond between reading the service entry and reading the table
/// slot and backend entry (the test program `swap_slow_reader`, on steer's pinned maps) — as one
/// interrupted mid-run, or on a descheduled vCPU, would — while the pools change as in the test
/// above: the balancer must wait for it, so the slot and the service entry do not change under
/// it, and the backend the slot named is still ready and up when it reads it. Far likelier to
/// catch a missing or misplaced wait than packets of a few hundred nanoseconds.
#[test]
fn a_slow_packet_finds_what_the_table_it_read_named() {
    if !steer_tests::privileged("a_slow_packet_finds_what_the_table_it_read_named") {
        return;
    }
    let (pins, bal, aux, fd) = on_pins("swap", "swap_slow_reader");
    let frames: Vec<Vec<u8>> = SERVICES
        .iter()
        .map(|s| {
            tcp4(Ipv4Addr::new(100, 64, 0, 1), 0, s.vip, 80)
                .syn()
                .frame()
                .bytes
        })
        .collect();

    let pools = new_pools();
    let stop = Arc::new(AtomicBool::new(false));
    let updater = spawn_updater(bal, &pools, &stop);
    let start = Instant::now();
    let (mut runs, mut wrong, mut examples) = (0u64, 0u64, Vec::new());
    let mut out = vec![0u8; 512];
    while start.elapsed() < SLOW_RUN {
        let s = runs as usize % SERVICES.len();
        let mut f = frames[s].clone();
        // The Maglev slots to read: all of them in turn, 16 at a time.
        f[34..36].copy_from_slice(&((runs / 2) as u16).to_be_bytes());
        let (action, _) = test_run(fd, &f, &mut out);
        runs += 1;
        let be_id = u32::from_le_bytes(out[0..4].try_into().unwrap());
        let (admin, health, flags, bad) = (out[4], out[5], out[6], out[7]);
        let ok = action == XDP_TX && flags == 0 && bad == 0;
        if !ok {
            wrong += 1;
            if examples.len() < 5 {
                examples.push(format!(
                    "{}: action {action}, {bad} of 16 backends not ready and up at the end, \
                     e.g. {be_id}: admin {admin}, health {health}; flags {flags:#x} (1: table \
                     slots changed, 2: service entry changed)",
                    SERVICES[s].name
                ));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (bal, u) = updater.join().unwrap();
    drop(aux);
    drop(bal);
    drop(pins);
    println!(
        "slow reader: {runs} reads of {:.2} ms each while {} balancer calls ({} batches) \
         changed the pools; {wrong} saw something change under them",
        secs * 1e3 / runs as f64,
        u.calls,
        u.batches
    );
    assert!(
        wrong == 0,
        "{wrong} of {runs} slow reads saw the table, the service entry or the backend change \
         under them, e.g. {examples:#?}"
    );
    assert!(u.calls >= 20, "the pools changed only {} times", u.calls);
}

/// How long the lookup hammer runs while the pools change.
const HAMMER_RUN: Duration = Duration::from_secs(4);

/// The services' lookup itself, hammered: while the pools change as in the tests above (every
/// flip publishes a service's settings anew), two threads look both services up
/// (`swap_lookup_hammer`: the service index, and the services map where a slot is shared — the
/// first service's, which `setup`'s third service shares —; 256 lookups a run, on steer's
/// pinned maps). Before the services map held ids alone, a lookup
/// racing a flip's replacement of an entry now and then found nothing (19 in 1.75 billion). A lookup of a service that exists must never
/// find nothing: a packet that did would be passed to the kernel as for no service.
#[test]
fn service_lookups_never_miss_while_pools_change() {
    if !steer_tests::privileged("service_lookups_never_miss_while_pools_change") {
        return;
    }
    let (pins, bal, aux, fd) = on_pins("lookups", "swap_lookup_hammer");
    assert_eq!(
        u32::from(SERVICES[1].vip),
        u32::from(SERVICES[0].vip) + 1,
        "the hammer looks up the VIP after the frame's"
    );
    let states = SERVICES.map(|s| bal.datapath().index_slot(index_slot(s.vip)).state);
    assert_eq!(
        states,
        [
            steer_common::slot_state::SHARED,
            steer_common::slot_state::ONE
        ],
        "one service found through the services map, the other through the index alone"
    );
    let frame = tcp4(Ipv4Addr::new(100, 64, 0, 1), 1, SERVICES[0].vip, 80)
        .syn()
        .frame()
        .bytes;

    let pools = new_pools();
    let stop = Arc::new(AtomicBool::new(false));
    let updater = spawn_updater(bal, &pools, &stop);
    let start = Instant::now();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let frame = frame.clone();
            thread::spawn(move || {
                let (mut runs, mut misses) = (0u64, [0u64; 2]);
                let mut out = vec![0u8; 512];
                while start.elapsed() < HAMMER_RUN {
                    let (action, _) = test_run(fd, &frame, &mut out);
                    assert_eq!(action, XDP_TX, "the hammer read its frame");
                    runs += 1;
                    misses[0] += u32::from_le_bytes(out[0..4].try_into().unwrap()) as u64;
                    misses[1] += u32::from_le_bytes(out[4..8].try_into().unwrap()) as u64;
                }
                (runs, misses)
            })
        })
        .collect();
    let results: Vec<(u64, [u64; 2])> = readers.into_iter().map(|h| h.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    let (bal, u) = updater.join().unwrap();
    drop(aux);
    drop(bal);
    drop(pins);
    let runs: u64 = results.iter().map(|r| r.0).sum();
    let misses: [u64; 2] = [0, 1].map(|s| results.iter().map(|r| r.1[s]).sum());
    println!(
        "lookup hammer: {} lookups in {runs} runs while {} balancer calls ({} batches) \
         changed the pools; missed: {} of {}, {} of {}",
        runs * 256,
        u.calls,
        u.batches,
        misses[0],
        SERVICES[0].name,
        misses[1],
        SERVICES[1].name
    );
    assert!(
        misses == [0, 0],
        "{} lookups of services that exist found nothing",
        misses[0] + misses[1]
    );
    assert!(u.calls >= 50, "the pools changed only {} times", u.calls);
}
