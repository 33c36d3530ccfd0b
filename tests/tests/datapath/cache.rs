//! The flow cache (per CPU, in front of the services map and the connection table) must never
//! change what happens to a packet: every rule holds for a flow whose packets were being
//! forwarded from the cache when something changed — a backend rejected or removed, the
//! service removed, the flow ended and its 5-tuple reused on another CPU, time passing.

use std::time::{Duration, Instant};

use steer_common::{outcome, FlowKey};
use steer_ctl::{AdminState, Balancer};
use steer_tests::fixture::{run_frame, tcp4, Delta, Field, OnCpu};

use crate::common::{establish, fwd, passed, port_to, rst_frame, rst_row, tcp_key, CLIENT, VIP};

/// Sends data packets of the `web` flow from `port` until this CPU's cache holds it (the first
/// data packet after the handshake fills it; the next ones are served from it), as rows.
fn cache_it(t: &mut steer_tests::fixture::Table, be: &str, port: u16) {
    for i in 0..2 {
        let row = fwd(
            &t.bal,
            &format!("set-up: data packet {i} (fills, then hits the cache)"),
            "web",
            be,
            tcp4(CLIENT, port, VIP, 80).ack(1).data(b"GET /").frame(),
            false,
        );
        t.check(row);
    }
    assert!(
        !cached(&t.bal, &tcp_key(port)).is_empty(),
        "the flow is in a CPU's cache after its data packets"
    );
}

/// The connection table's `last_seen_ns` of the `web` flow from `port`.
fn last_seen(bal: &Balancer, port: u16) -> u64 {
    bal.datapath()
        .flow(&tcp_key(port))
        .unwrap()
        .expect("the flow is in the table")
        .last_seen_ns
}

fn cached(bal: &Balancer, k: &FlowKey) -> Vec<usize> {
    bal.datapath()
        .cached(k)
        .unwrap()
        .into_iter()
        .map(|(cpu, _)| cpu)
        .collect()
}

#[test]
fn cached_flow_follows_reject_and_removal() {
    let Some(mut t) = crate::common::table("cache::cached_flow_follows_reject_and_removal") else {
        return;
    };
    let pr = port_to(&t.bal, "web-c", 46_000);
    establish(&mut t, "web-c", pr);
    cache_it(&mut t, "web-c", pr);
    t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, a cached flow's data packet is answered with a RST",
        tcp4(CLIENT, pr, VIP, 80).ack(777).data(b"GET /").frame(),
        rst_frame(VIP.into(), CLIENT.into(), pr, 777, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::Packets, 0),
        ],
    ));

    let pb = port_to(&t.bal, "web-b", 47_000);
    establish(&mut t, "web-b", pb);
    cache_it(&mut t, "web-b", pb);
    t.bal.remove_backend("web-b").unwrap();
    t.check(rst_row(
        "after removal, a cached flow's data packet is answered with a RST",
        tcp4(CLIENT, pb, VIP, 80).ack(900).data(b"GET /").frame(),
        rst_frame(VIP.into(), CLIENT.into(), pb, 900, None),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    t.finish();
}

#[test]
fn cached_flow_of_a_removed_service_is_passed() {
    let Some(mut t) = crate::common::table("cache::cached_flow_of_a_removed_service_is_passed")
    else {
        return;
    };
    let pa = port_to(&t.bal, "web-a", 41_000);
    establish(&mut t, "web-a", pa);
    cache_it(&mut t, "web-a", pa);
    t.bal.remove_service("web").unwrap();
    t.check(passed(
        "after the service is removed, its cached flow's packets are for no service",
        tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"GET /").frame(),
        outcome::PASS_NOT_SERVICE,
    ));
    t.finish();
}

#[test]
fn cached_flow_ends_then_starts_again() {
    let Some(mut t) = crate::common::table("cache::cached_flow_ends_then_starts_again") else {
        return;
    };
    let pa = port_to(&t.bal, "web-a", 41_000);
    establish(&mut t, "web-a", pa);
    cache_it(&mut t, "web-a", pa);
    let row = fwd(
        &t.bal,
        "the client's FIN of a cached flow takes the full path (the flow ends)",
        "web",
        "web-a",
        tcp4(CLIENT, pa, VIP, 80).ack(1).fin().frame(),
        false,
    );
    let mut row = row;
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 1));
    t.check(row);
    assert!(
        !t.bal.datapath().is_established(&tcp_key(pa)),
        "an ended flow is no longer established"
    );
    let row = fwd(
        &t.bal,
        "the last ACK of the ended flow still goes to its backend",
        "web",
        "web-a",
        tcp4(CLIENT, pa, VIP, 80).ack(2).frame(),
        false,
    );
    t.check(row);
    t.finish();
}

/// Another CPU ends a cached flow and a new connection reuses its 5-tuple for another backend:
/// the first CPU's cached copy must not send the new connection's packets to the old backend.
#[test]
fn a_change_on_another_cpu_voids_the_cached_copy() {
    let Some(mut t) = crate::common::table("cache::a_change_on_another_cpu_voids_the_cached_copy")
    else {
        return;
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs two CPUs, found {cpus}");
    let pa = port_to(&t.bal, "web-a", 41_000);
    {
        let _on = OnCpu::pin(0);
        establish(&mut t, "web-a", pa);
        // Drained before the flow is cached (a service change voids every cache): the flow
        // stays on web-a, a new connection on its 5-tuple would go elsewhere.
        t.bal.set_admin("web-a", AdminState::Drain).unwrap();
        cache_it(&mut t, "web-a", pa);
        assert_eq!(cached(&t.bal, &tcp_key(pa)), vec![0], "cached on CPU 0");
    }
    {
        let _on = OnCpu::pin(1);
        let mut row = fwd(
            &t.bal,
            "CPU 1: the client resets the connection",
            "web",
            "web-a",
            tcp4(CLIENT, pa, VIP, 80).ack(1).rst().frame(),
            false,
        );
        row.deltas
            .push(Delta::Backend("web-a".into(), Field::EndedFlows, 1));
        t.check(row);
        let now = crate::common::maglev_choice(&t.bal, "web", &tcp_key(pa));
        assert_ne!(now, "web-a");
        let row = fwd(
            &t.bal,
            "CPU 1: a new connection on the same 5-tuple goes to another backend",
            "web",
            &now,
            tcp4(CLIENT, pa, VIP, 80).syn().frame(),
            true,
        );
        t.check(row);
        let row = fwd(
            &t.bal,
            "CPU 1: its handshake completes",
            "web",
            &now,
            tcp4(CLIENT, pa, VIP, 80).ack(1).frame(),
            false,
        );
        t.check(row);
        {
            let _on0 = OnCpu::pin(0);
            let row = fwd(
                &t.bal,
                "CPU 0: the new connection's data goes to its backend, not the cached one",
                "web",
                &now,
                tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"GET /").frame(),
                false,
            );
            t.check(row);
        }
    }
    t.finish();
}

/// Served from the cache, a flow's entry in the connection table is still refreshed (idle
/// ageing and drain's active counts read it): at most `REFRESH` (200 ms) behind.
#[test]
fn cached_flow_keeps_its_table_entry_fresh() {
    let Some(mut t) = crate::common::table("cache::cached_flow_keeps_its_table_entry_fresh") else {
        return;
    };
    let pa = port_to(&t.bal, "web-a", 41_000);
    let _on = OnCpu::pin(0);
    establish(&mut t, "web-a", pa);
    cache_it(&mut t, "web-a", pa);
    let first = last_seen(&t.bal, pa);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut sent = 0;
    loop {
        let r = run_frame(
            &mut t.bal,
            &tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"x").frame().bytes,
        );
        assert_eq!(r.action, steer_tests::fixture::XDP_TX);
        sent += 1;
        let now = last_seen(&t.bal, pa);
        if now > first {
            // Refreshed no sooner than the cache's refresh period (50 jiffies: 50 ms at HZ=1000).
            assert!(
                now - first >= 40_000_000,
                "refreshed after {} ms: packets were not served from the cache",
                (now - first) / 1_000_000
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the table's last_seen did not move in 5 s of packets ({sent} sent)"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.finish();
}

/// The handshake's ACK, which establishes the flow, fills this CPU's cache: the request after
/// it (in a short connection, most of what the client sends) is served from there, the same
/// bytes and counters as the full path's. Seen by the table's `last_seen`: a packet served
/// from the cache leaves it as the ACK wrote it, the full path would move it.
#[test]
fn the_handshakes_ack_fills_the_cache() {
    let Some(mut t) = crate::common::table("cache::the_handshakes_ack_fills_the_cache") else {
        return;
    };
    let _on = OnCpu::pin(0);
    // A try is conclusive when the clock moved between the ACK and the request (the table's
    // clock is coarse) and the cache's refresh period (50 jiffies: at least 50 ms) did not
    // pass; a loaded machine may need a few.
    let mut conclusive = false;
    for k in 0..20 {
        let pa = port_to(&t.bal, "web-a", 42_000 + 20 * k);
        establish(&mut t, "web-a", pa);
        let acked = Instant::now();
        assert_eq!(
            cached(&t.bal, &tcp_key(pa)),
            vec![0],
            "the handshake's ACK filled CPU 0's cache"
        );
        let at_ack = last_seen(&t.bal, pa);
        // (Time passing is what is measured here: the coarse clock ticks every 4 ms at HZ=250.)
        std::thread::sleep(Duration::from_millis(12));
        let row = fwd(
            &t.bal,
            "the request after the handshake: sent from the cache, as the full path sends it",
            "web",
            "web-a",
            tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"GET /").frame(),
            false,
        );
        t.check(row);
        let took = acked.elapsed();
        let after = last_seen(&t.bal, pa);
        if took < Duration::from_millis(40) {
            assert_eq!(
                after,
                at_ack,
                "the request took the full path (last_seen moved {} µs after {took:?})",
                (after - at_ack) / 1000
            );
            conclusive = true;
            break;
        }
    }
    assert!(
        conclusive,
        "20 tries, each slower than the cache's refresh period"
    );
    t.finish();
}
