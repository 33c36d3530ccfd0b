//! On a host with NAT services, packets not for a service are looked up as backends' replies;
//! those that match no reverse entry pass to the kernel untouched (SPEC.md rule 6). On a host
//! without NAT services the reply program is never entered: a packet that a reverse entry
//! would translate passes untouched.

use std::net::IpAddr;

use steer_common::{global_flags, Globals};
use steer_tests::fixture::{tcp4, udp4};

use crate::nat_common::*;

#[test]
fn not_service() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes.
    run_cases(
        "nat_not_service",
        &[
            (
                "what_matches_no_reverse_entry_passes_untouched",
                what_matches_no_reverse_entry_passes_untouched,
            ),
            (
                "without_a_nat_service_the_reply_program_is_never_entered",
                without_a_nat_service_the_reply_program_is_never_entered,
            ),
        ],
    );
}

fn what_matches_no_reverse_entry_passes_untouched(n: &mut Nat) {
    let c: IpAddr = CLIENT.into();
    let p = n.port_to("web", c, "web-a", 56_000);
    let port = n.establish("web", "web-a", c, p);
    n.backend(passed(
        "a backend's segment to an LB port no flow holds passes",
        n.backend_seg(
            "web-a",
            SNAT.into(),
            if port == 20_000 { 20_001 } else { 20_000 },
            ack(1),
            b"x",
        ),
    ));
    n.backend(passed(
        "a segment from another port of the backend (its ssh) to the flow's source passes",
        tcp_frame(
            mac4(1),
            BE_SIDE_MAC,
            (be4(1), 22),
            (SNAT.into(), port),
            ack(1),
            b"x",
        ),
    ));
    n.backend(passed(
        "a UDP datagram to the LB's own address passes",
        udp_frame(
            mac4(1),
            BE_SIDE_MAC,
            (be4(1), 5353),
            (SNAT.into(), 53),
            b"q",
        ),
    ));
    n.client(passed(
        "a client's segment to an address that is no service passes",
        tcp4(CLIENT, 56_001, std::net::Ipv4Addr::new(10, 0, 0, 99), 80)
            .syn()
            .frame(),
    ));
    n.client(passed(
        "a client's datagram to the LB's own address passes",
        udp4(CLIENT, 56_002, CLI_ADDR, 53, b"q"),
    ));
}

fn without_a_nat_service_the_reply_program_is_never_entered(n: &mut Nat) {
    assert_ne!(
        n.bal().datapath().globals().unwrap().flags & global_flags::NAT,
        0,
        "NAT services set the NAT flag"
    );
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-a", 57_000);
    let port = n.establish("web", "web-a", c, p);
    n.t.bal
        .datapath_mut()
        .put_globals(&Globals::default())
        .unwrap();
    n.backend(passed(
        "with the NAT flag clear, a backend's reply that a reverse entry matches passes untouched",
        n.backend_seg("web-a", SNAT.into(), port, ack(1), b"x"),
    ));
    n.t.bal
        .datapath_mut()
        .put_globals(&Globals {
            flags: global_flags::NAT,
            epoch: 0,
        })
        .unwrap();
    let row = n.to_client(
        "with it set again, the same reply is translated",
        n.backend_seg("web-a", SNAT.into(), port, ack(1), b"x"),
        (vip, 80),
        (c, p),
    );
    n.backend(row);
    // The last NAT service removed clears the flag.
    let reply = n.backend_seg("web-a", SNAT.into(), port, ack(1), b"x");
    let names: Vec<String> = n
        .bal()
        .service_infos()
        .into_iter()
        .map(|s| s.name)
        .collect();
    for name in names {
        n.t.bal.remove_service(&name).unwrap();
    }
    assert_eq!(
        n.bal().datapath().globals().unwrap().flags & global_flags::NAT,
        0
    );
    n.backend(passed(
        "with no NAT service left, the reply passes untouched",
        reply,
    ));
}
