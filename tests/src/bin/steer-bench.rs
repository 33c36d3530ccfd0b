//! `cargo xtask bench datapath`: nanoseconds per packet of the XDP datapath, measured by the
//! kernel (`BPF_PROG_TEST_RUN`'s `duration`), next to a bare MAC-swap `XDP_TX` program (the
//! floor) measured in the same run.
//!
//! Paths whose packet is unchanged by a run (an established flow, a packet for no service, the
//! floor) are timed as one call repeating 1,000,000 times. Paths that must see a fresh packet
//! each time — a new SYN (a repeated SYN would hit the connection table after the first run)
//! and the RST answer (the frame is rewritten into the RST) — run behind `bench_wrap`, which
//! restores the frame, makes its 5-tuple new, and tail-calls the datapath; the wrapper's own
//! cost, measured by tail-calling the floor program instead, is subtracted. Every verdict is
//! checked, and the datapath's counters must show that each run took the path named.

use std::{net::Ipv4Addr, path::PathBuf};

use aya::{
    maps::{Array, ProgramArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use steer_ctl::{BackendSpec, Balancer, Datapath, Options, ServiceSpec};
use steer_tests::fixture::{tcp4, udp4, XDP_PASS, XDP_TX};

const REPEAT: u32 = 1_000_000;
const ROUNDS: usize = 3;
const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 20);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
/// Source of the single-run SYNs: never the established flow's address.
const CLIENT2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 8);

fn run(prog: &mut Xdp, frame: &[u8], repeat: u32) -> (u32, u64, Vec<u8>) {
    let mut out = vec![0u8; frame.len() + 256];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::new()
        })
        .expect("BPF_PROG_TEST_RUN");
    out.truncate(r.data_size_out as usize);
    (r.return_value, r.duration.as_nanos() as u64, out)
}

/// ns per run of one call repeating `REPEAT` times; checks the verdict.
fn repeated(prog: &mut Xdp, frame: &[u8], want: u32, what: &str) -> f64 {
    let (action, ns, _) = run(prog, frame, REPEAT);
    assert_eq!(action, want, "{what}: unexpected verdict");
    ns as f64
}

/// Points `bench_wrap` at `target` with `template` as the frame it restores.
fn set_target(aux: &mut Ebpf, target: &aya::programs::ProgramFd, template: &[u8]) {
    let mut words = [0u32; 14];
    for (i, w) in words.iter_mut().enumerate() {
        let mut b = [0u8; 4];
        for (j, x) in b.iter_mut().enumerate() {
            *x = template.get(i * 4 + j).copied().unwrap_or(0);
        }
        *w = u32::from_ne_bytes(b);
    }
    let mut t: Array<_, [u32; 14]> =
        Array::try_from(aux.map_mut("BENCH_TEMPLATE").expect("BENCH_TEMPLATE")).unwrap();
    t.set(0, words, 0).unwrap();
    let mut progs =
        ProgramArray::try_from(aux.map_mut("BENCH_PROGS").expect("BENCH_PROGS")).unwrap();
    progs.set(0, target, 0).expect("set the wrapper's target");
}

/// ns per run of `bench_wrap` repeating `REPEAT` times.
fn wrapped(aux: &mut Ebpf, want: u32, what: &str) -> f64 {
    let wrap: &mut Xdp = aux.program_mut("bench_wrap").unwrap().try_into().unwrap();
    let frame = vec![0u8; 54];
    repeated(wrap, &frame, want, what)
}

/// Backends web-0..2 of service `web`.
fn add_three_backends(bal: &mut Balancer) {
    for i in 0..3u8 {
        let addr = Ipv4Addr::new(10, 1, 0, i + 1).into();
        bal.add_backend(
            "web",
            BackendSpec::new(&format!("web-{i}"), addr, [2, 0xbe, 0, 0, 0, i + 1]),
        )
        .unwrap();
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("steer-bench: needs root (BPF)");
        std::process::exit(1);
    }
    let out_dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/bench"));

    let mut aux = Ebpf::load(steer_tests::aux::OBJECT).expect("load the helper programs");
    for name in ["bench_floor", "bench_wrap"] {
        let p: &mut Xdp = aux
            .program_mut(name)
            .expect(name)
            .try_into()
            .expect("an XDP program");
        p.load().unwrap_or_else(|e| panic!("load {name}: {e}"));
    }

    let dp = Datapath::load(&Options {
        max_services: 4,
        // Room for every timed SYN: the new-flow path is timed without LRU eviction
        // (`STEER_BENCH_FLOWS=N` times it with a smaller, evicting table).
        max_flows: std::env::var("STEER_BENCH_FLOWS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ROUNDS as u32 * REPEAT + (1 << 16)),
        ..Options::default()
    })
    .expect("load the datapath");
    let mut bal = Balancer::new(dp);
    bal.add_service(ServiceSpec::tcp("web", VIP.into(), 80))
        .unwrap();
    bal.add_service(ServiceSpec::tcp("empty", EMPTY_VIP.into(), 80))
        .unwrap();
    add_three_backends(&mut bal);

    let syn = tcp4(CLIENT, 40_000, VIP, 80).syn().frame().bytes;
    let established = tcp4(CLIENT, 40_000, VIP, 80)
        .ack(1)
        .data(b"GET / HTTP/1.1\r\n\r\n")
        .frame()
        .bytes;
    let not_ours = udp4(CLIENT, 40_000, Ipv4Addr::new(10, 0, 0, 99), 53, b"query").bytes;
    // The wrapper's templates: SYNs from a client address no other flow uses.
    let syn_tpl = tcp4(CLIENT2, 1, VIP, 80).syn().frame().bytes;
    let rst_tpl = tcp4(CLIENT2, 1, EMPTY_VIP, 80).syn().frame().bytes;
    {
        // Establish the flow the repeated runs hit.
        let prog = bal.datapath_mut().program();
        run(prog, &syn, 1);
        run(prog, &established, 1);
    }
    let steer_fd = bal
        .datapath_mut()
        .program()
        .fd()
        .expect("datapath fd")
        .try_clone()
        .expect("dup fd");
    let floor_fd = {
        let p: &mut Xdp = aux.program_mut("bench_floor").unwrap().try_into().unwrap();
        p.fd().unwrap().try_clone().unwrap()
    };

    // Profiling aid: `STEER_BENCH_ONLY=established perf record -a -- steer-bench` runs that path
    // alone, long enough to sample.
    if std::env::var("STEER_BENCH_ONLY").as_deref() == Ok("established") {
        for _ in 0..10 {
            repeated(
                bal.datapath_mut().program(),
                &established,
                XDP_TX,
                "established",
            );
        }
        return;
    }
    let (mut r_floor, mut r_wrap, mut r_est, mut r_pass, mut r_syn, mut r_rst) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        {
            let floor: &mut Xdp = aux.program_mut("bench_floor").unwrap().try_into().unwrap();
            r_floor.push(repeated(floor, &syn, XDP_TX, "floor"));
        }
        set_target(&mut aux, &floor_fd, &syn_tpl);
        r_wrap.push(wrapped(&mut aux, XDP_TX, "wrapper + floor"));

        let new_before = bal.service_counters("web").unwrap().new_flows;
        let prog = bal.datapath_mut().program();
        r_est.push(repeated(prog, &established, XDP_TX, "established"));
        let prog = bal.datapath_mut().program();
        r_pass.push(repeated(prog, &not_ours, XDP_PASS, "not for a service"));
        let new_mid = bal.service_counters("web").unwrap().new_flows;
        assert_eq!(
            new_mid, new_before,
            "the established runs must all hit the connection table"
        );

        set_target(&mut aux, &steer_fd, &syn_tpl);
        r_syn.push(wrapped(&mut aux, XDP_TX, "new SYN"));
        let new_after = bal.service_counters("web").unwrap().new_flows;
        assert_eq!(
            new_after - new_mid,
            REPEAT as u64,
            "every timed SYN must be a new flow"
        );

        let rst_before = bal.service_counters("empty").unwrap().rst_sent;
        set_target(&mut aux, &steer_fd, &rst_tpl);
        r_rst.push(wrapped(&mut aux, XDP_TX, "RST for a SYN"));
        let rst_after = bal.service_counters("empty").unwrap().rst_sent;
        assert_eq!(
            rst_after - rst_before,
            REPEAT as u64,
            "every timed SYN must be answered by a RST"
        );
    }

    let floor_ns = median(r_floor);
    let wrapper_ns = (median(r_wrap) - floor_ns).max(0.0);
    let established_ns = median(r_est);
    let pass_ns = median(r_pass);
    let syn_ns = median(r_syn) - wrapper_ns;
    let rst_ns = median(r_rst) - wrapper_ns;

    println!("steer datapath, BPF_PROG_TEST_RUN, kernel ns per packet (median of {ROUNDS} rounds of {REPEAT})");
    println!();
    println!(
        "{:<36} {:>8} {:>10} {:>8}",
        "path", "ns", "× floor", "target"
    );
    let row = |name: &str, ns: f64, target: &str| {
        println!(
            "{:<36} {:>8.1} {:>10.2} {:>8}",
            name,
            ns,
            ns / floor_ns,
            target
        );
    };
    row("floor: MAC swap + XDP_TX", floor_ns, "");
    row("established TCP packet", established_ns, "≤ 2×");
    row("new SYN (Maglev + flow insert)", syn_ns, "≤ 3×");
    row("SYN, no backend: RST from XDP", rst_ns, "");
    row("not for any service (XDP_PASS)", pass_ns, "");
    println!();
    println!(
        "new SYN and RST run behind bench_wrap (restore frame, new 5-tuple, tail call); its \
         {wrapper_ns:.1} ns, measured against the floor, is subtracted"
    );

    // Userspace: active flows per backend, read from a table of 100,000 flows (drain --wait
    // polls this).
    let active_ms = {
        // New flows start in the transient table (a quarter of max_flows): room for all.
        let dp = Datapath::load(&Options {
            max_services: 2,
            max_flows: 1 << 19,
            ..Options::default()
        })
        .expect("load a second datapath");
        let mut b2 = Balancer::new(dp);
        b2.add_service(ServiceSpec::tcp("web", VIP.into(), 80))
            .unwrap();
        add_three_backends(&mut b2);
        let fd = b2
            .datapath_mut()
            .program()
            .fd()
            .unwrap()
            .try_clone()
            .unwrap();
        // Flows met mid-connection (not half-open SYNs), which count as active.
        let tpl = tcp4(Ipv4Addr::new(192, 0, 2, 9), 1, VIP, 80)
            .ack(1)
            .frame()
            .bytes;
        set_target(&mut aux, &fd, &tpl);
        let wrap: &mut Xdp = aux.program_mut("bench_wrap").unwrap().try_into().unwrap();
        let (action, _, _) = run(wrap, &[0u8; 54], 100_000);
        assert_eq!(action, XDP_TX);
        let mut times = Vec::new();
        let mut total = 0;
        for _ in 0..5 {
            let t = std::time::Instant::now();
            total = b2.active_flows().unwrap().values().sum::<u64>();
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        assert_eq!(total, 100_000, "every flow is active");
        median(times)
    };
    println!("active flows per backend, 100,000 flows in the table: {active_ms:.1} ms per read");

    std::fs::create_dir_all(&out_dir).expect("create the bench directory");
    let json = format!(
        "{{\"floor_ns\": {floor_ns:.1}, \"established_ns\": {established_ns:.1}, \"syn_ns\": {syn_ns:.1}, \
         \"rst_ns\": {rst_ns:.1}, \"pass_ns\": {pass_ns:.1}, \"wrapper_ns\": {wrapper_ns:.1}, \"active_flows_100k_ms\": {active_ms:.2}, \
         \"repeat\": {REPEAT}, \"rounds\": {ROUNDS}}}\n"
    );
    let path = out_dir.join("datapath.json");
    std::fs::write(&path, json).expect("write datapath.json");
    println!("wrote {}", path.display());
}
