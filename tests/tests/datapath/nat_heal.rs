//! The two halves of a NAT translation live and die together (issue 10, item 3): a flow whose
//! reverse entry was lost has it written again by its next packet, and one whose forward entry
//! was lost has it written again by the backend's next reply; a reverse entry that was given to
//! another flow meanwhile is never shared — the old flow's packets are dropped.

use std::net::IpAddr;

use steer_common::{event, nat_flags, outcome, NatRev};
use steer_tests::fixture::Delta;

use crate::nat_common::*;

#[test]
fn heal() {
    // One datapath for the module's cases (each load verifies four programs); each case
    // uses clients, ports or services of its own and puts back what it changes.
    run_cases(
        "nat_heal",
        &[
            ("both_halves_heal", both_halves_heal),
            (
                "a_reverse_entry_given_to_another_flow_is_a_conflict",
                a_reverse_entry_given_to_another_flow_is_a_conflict,
            ),
            (
                "a_reverse_half_pointing_at_the_wrong_table_still_finds_its_flow",
                a_reverse_half_pointing_at_the_wrong_table_still_finds_its_flow,
            ),
        ],
    );
}

fn both_halves_heal(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    let p = n.port_to("web", c, "web-b", 48_000);
    let port = n.establish("web", "web-b", c, p);
    let k = key(c, p, vip, 80, TCP);
    let rk = n.rev_key("web-b", SNAT.into(), port, TCP);

    // The reverse half evicted: the client's next packet writes it again.
    n.t.bal.datapath_mut().remove_nat_reverse(&rk).unwrap();
    let mut row = n.to_backend(
        "a packet of a flow whose reverse entry was lost goes on, and writes it again",
        "web",
        "web-b",
        from_client(c, p, vip, ack(1), b"GET /"),
        false,
        Some(port),
    );
    row.deltas.push(Delta::Outcome(event::NAT_HEALED, 1));
    n.client(row);
    let rev = n.reverse(&rk).expect("the reverse entry is back");
    assert_eq!(
        (rev.client, rev.client_port_be, rev.vip, rev.vip_port_be),
        (k.src, k.sport_be, k.dst, k.dport_be),
        "written again for this flow"
    );
    let row = n.to_client(
        "the backend's reply is translated by it",
        n.backend_seg("web-b", SNAT.into(), port, ack(6), b"200"),
        (vip, 80),
        (c, p),
    );
    n.backend(row);

    // The forward half evicted: the backend's next reply writes it again.
    n.t.bal.datapath_mut().remove_flow(&k).unwrap();
    let mut row = n.to_client(
        "a backend's reply whose flow entry was lost goes on, and writes it again",
        n.backend_seg("web-b", SNAT.into(), port, ack(6), b"more"),
        (vip, 80),
        (c, p),
    );
    row.deltas.push(Delta::Outcome(event::NAT_HEALED, 1));
    n.backend(row);
    assert_eq!(
        n.nat_of(&k),
        ("web-b".to_string(), port),
        "the flow entry is back, on its backend and source"
    );
    let row = n.to_backend(
        "the client's next packet uses it (and establishes it again)",
        "web",
        "web-b",
        from_client(c, p, vip, ack(1), b"next"),
        false,
        Some(port),
    );
    n.client(row);
    assert!(n.bal().datapath().is_established(&k));
}

fn a_reverse_entry_given_to_another_flow_is_a_conflict(n: &mut Nat) {
    let one = vip(61);
    let (c, c2): (IpAddr, IpAddr) = (CLIENT.into(), CLIENT2.into());
    let port = n.establish("one", "one-a", c, 48_100);
    assert_eq!(port, ONE_PORT);
    // Flow A's reverse entry lost; flow B is given the (only) port.
    let rk = n.rev_key("one-a", SNAT.into(), ONE_PORT, TCP);
    n.t.bal.datapath_mut().remove_nat_reverse(&rk).unwrap();
    let row = n.to_backend(
        "another client's new flow takes the port the lost reverse entry freed",
        "one",
        "one-a",
        from_client(c2, 48_101, one, syn(), &[]),
        true,
        Some(ONE_PORT),
    );
    n.client(row);
    n.client(dropped(
        "the first flow's next packet is dropped, not delivered into the other flow",
        from_client(c, 48_100, one, ack(1), b"GET /"),
        outcome::DROP_NAT_CONFLICT,
        vec![
            Delta::Outcome(event::NAT_CONFLICT, 1),
            Delta::Outcome(event::NAT_HEALED, 0),
        ],
    ));
    assert_eq!(
        u16::from_be(n.reverse(&rk).unwrap().client_port_be),
        48_101,
        "the reverse entry stays the other flow's"
    );
    let row = n.to_client(
        "the backend's answer on the port goes to the other flow's client",
        n.backend_seg("one-a", SNAT.into(), ONE_PORT, syn_ack(1001), &[]),
        (one, 80),
        (c2, 48_101),
    );
    n.backend(row);
}

/// A reply looks its client's half up first in the table the reverse half's flags point at
/// (the transient one for an attempt not yet answered, or once the client has sent its FIN).
/// Flags that point at the wrong table (a lost flag write, a move that failed) cost a second
/// lookup, never the flow: the reply is translated, nothing is healed, the flow stays where it
/// is.
fn a_reverse_half_pointing_at_the_wrong_table_still_finds_its_flow(n: &mut Nat) {
    let (vip, c): (IpAddr, IpAddr) = (VIP.into(), CLIENT.into());
    // (What is wrong, flags set, flags cleared.)
    let wrong = [
        (
            "an answered attempt's SYN-ACK never recorded",
            0,
            nat_flags::SYN_ACK,
        ),
        (
            "the client's FIN recorded, the flow not moved",
            nat_flags::FIN_CLIENT,
            0,
        ),
    ];
    for (i, (what, set, clear)) in wrong.into_iter().enumerate() {
        // A flow of its own for each case.
        let p = n.port_to("web", c, "web-b", 48_200 + 20 * i as u16);
        let port = n.establish("web", "web-b", c, p);
        let k = key(c, p, vip, 80, TCP);
        let rk = n.rev_key("web-b", SNAT.into(), port, TCP);
        let rev = n.reverse(&rk).expect("the flow's reverse half");
        assert!(
            rev.syn_ns != 0 && rev.flags & nat_flags::SYN_ACK != 0,
            "set-up: an attempt the backend answered"
        );
        // (Writing it voids every cached copy: the reply takes the full path.)
        n.t.bal
            .datapath_mut()
            .put_nat_reverse(
                &rk,
                &NatRev {
                    flags: (rev.flags | set) & !clear,
                    ..rev
                },
            )
            .unwrap();
        let mut row = n.to_client(
            &format!("{what}: the backend's reply is translated to its client"),
            n.backend_seg("web-b", SNAT.into(), port, ack(6), b"200"),
            (vip, 80),
            (c, p),
        );
        row.deltas.push(Delta::Outcome(event::NAT_HEALED, 0));
        n.backend(row);
        assert!(
            n.bal().datapath().is_established(&k),
            "{what}: the flow is still established"
        );
        assert_eq!(n.nat_of(&k), ("web-b".to_string(), port), "{what}");
    }
}
