//! The service index (`STEER_SVCX_V1`): a packet's service is found by one array lookup when
//! its key alone has the slot, through the services map when several share it, and a key that
//! only shares a service's slot (and its pre-filter bit) is no service.

use std::net::Ipv4Addr;

use steer_common::{hash, outcome, slot_state, ServiceKey, FAMILY_V4, PROTO_TCP};
use steer_ctl::{datapath::slot_of, BackendSpec, Balancer, Datapath, Options, ServiceSpec};
use steer_tests::fixture::{tcp4, Table};

use crate::common::{fwd, mac, passed, v4, CLIENT};

fn key(vip: Ipv4Addr) -> ServiceKey {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&vip.octets());
    ServiceKey {
        addr,
        port_be: 80u16.to_be(),
        proto: PROTO_TCP,
        family: FAMILY_V4,
    }
}

/// The first address of 10.0.0.0/12 after 10.0.0.10 for which `same` holds.
fn find(same: impl Fn(&ServiceKey) -> bool) -> Ipv4Addr {
    (u32::from(Ipv4Addr::new(10, 0, 0, 11))..u32::from(Ipv4Addr::new(10, 16, 0, 0)))
        .map(Ipv4Addr::from)
        .find(|a| same(&key(*a)))
        .expect("an address in 10.0.0.0/12")
}

#[test]
fn services_sharing_an_index_slot_are_told_apart() {
    if !steer_tests::privileged("services::services_sharing_an_index_slot_are_told_apart") {
        return;
    }
    let a = Ipv4Addr::new(10, 0, 0, 10);
    let slot = slot_of(&key(a));
    // Another service's address in the same slot, and an address of no service whose
    // pre-filter bit is the first one's too (so only the index's key tells it apart).
    let b = find(|k| slot_of(k) == slot);
    let bit = |k: &ServiceKey| hash::filter_bit(&k.addr, k.port_be, k.proto);
    let c = find(|k| bit(k) == bit(&key(a)));
    assert_eq!(
        slot_of(&key(c)),
        slot,
        "a filter bit's slot is its top bits"
    );

    let dp = Datapath::load(&Options {
        max_services: 4,
        max_flows: 4096,
        ..Options::default()
    })
    .expect("load the datapath");
    let mut bal = Balancer::new(dp);
    for (name, vip, be) in [("one", a, 1u8), ("two", b, 2)] {
        bal.add_service(ServiceSpec::tcp(name, vip.into(), 80))
            .unwrap();
        bal.add_backend(
            name,
            BackendSpec::new(&format!("{name}-a"), v4(be), mac(be)),
        )
        .unwrap();
        bal.set_health(&format!("{name}-a"), steer_ctl::Health::Up)
            .unwrap();
    }
    // Back to one service in the slot, then two again, checking each state.
    bal.remove_service("two").unwrap();
    let only = bal.datapath().index_slot(slot);
    assert_eq!(
        (only.state, only.key),
        (slot_state::ONE, key(a)),
        "one service in the slot: the index names it"
    );
    let mut t = Table::new(bal);
    let syn = |vip: Ipv4Addr, port: u16| tcp4(CLIENT, port, vip, 80).syn().frame();
    t.check(fwd(
        &t.bal,
        "the slot's one service, from the index",
        "one",
        "one-a",
        syn(a, 1000),
        true,
    ));
    t.check(passed(
        "an address sharing its slot and filter bit is no service",
        syn(c, 1001),
        outcome::PASS_NOT_SERVICE,
    ));
    t.check(passed(
        "nor is the removed service's",
        syn(b, 1002),
        outcome::PASS_NOT_SERVICE,
    ));

    t.bal
        .add_service(ServiceSpec::tcp("two", b.into(), 80))
        .unwrap();
    t.bal
        .add_backend("two", BackendSpec::new("two-a", v4(2), mac(2)))
        .unwrap();
    t.bal.set_health("two-a", steer_ctl::Health::Up).unwrap();
    assert_eq!(
        t.bal.datapath().index_slot(slot).state,
        slot_state::SHARED,
        "two services in the slot: the services map tells them apart"
    );
    t.check(fwd(
        &t.bal,
        "a service of a shared slot",
        "one",
        "one-a",
        syn(a, 1003),
        true,
    ));
    t.check(fwd(
        &t.bal,
        "the other service of that slot",
        "two",
        "two-a",
        syn(b, 1004),
        true,
    ));
    t.check(passed(
        "an address of no service in a shared slot",
        syn(c, 1005),
        outcome::PASS_NOT_SERVICE,
    ));

    t.bal.remove_service("one").unwrap();
    let left = t.bal.datapath().index_slot(slot);
    assert_eq!(
        (left.state, left.key),
        (slot_state::ONE, key(b)),
        "the service left in the slot is named by the index again"
    );
    t.check(fwd(
        &t.bal,
        "the service left, from the index",
        "two",
        "two-a",
        syn(b, 1006),
        true,
    ));
    t.check(passed(
        "the removed one is no service",
        syn(a, 1007),
        outcome::PASS_NOT_SERVICE,
    ));
    t.bal.remove_service("two").unwrap();
    assert_eq!(
        t.bal.datapath().index_slot(slot).state,
        slot_state::EMPTY,
        "no service in the slot"
    );
    t.finish();
}
