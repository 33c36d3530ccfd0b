//! Rules 1 and 4: admin states. `drain` and `maint` keep established flows while new flows avoid
//! the backend; `reject` — and removal, which is treated as reject — answers every further
//! packet of the backend's flows with a RST.

use steer_common::{outcome, Counters};
use steer_ctl::{AdminState, BackendSpec};
use steer_tests::fixture::{tcp4, Delta, Field};

use crate::common::{
    dropped, establish, fwd, mac, maglev_choice, port_to, rst_frame, rst_row, table, tcp_key, v4,
    CLIENT, VIP,
};

#[test]
fn drain_and_maint_keep_flows() {
    let Some(mut t) = table("admin::drain_and_maint_keep_flows") else {
        return;
    };
    let pa = port_to(&t.bal, "web-a", 41_000);
    establish(&mut t, "web-a", pa);
    let fresh_a = port_to(&t.bal, "web-a", 43_000);
    t.bal.set_admin("web-a", AdminState::Drain).unwrap();
    let row = fwd(
        &t.bal,
        "after drain, a data packet of a flow on the drained backend still goes there",
        "web",
        "web-a",
        tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"more").frame(),
        false,
    );
    t.check(row);
    let now = maglev_choice(&t.bal, "web", &tcp_key(fresh_a));
    assert_ne!(now, "web-a", "a drained backend is out of the Maglev table");
    let row = fwd(
        &t.bal,
        "after drain, a SYN that used to map to the drained backend goes elsewhere",
        "web",
        &now,
        tcp4(CLIENT, fresh_a, VIP, 80).syn().frame(),
        true,
    );
    t.check(row);
    t.bal.set_admin("web-a", AdminState::Maint).unwrap();
    let row = fwd(
        &t.bal,
        "in maint, flows on the backend still go there",
        "web",
        "web-a",
        tcp4(CLIENT, pa, VIP, 80).ack(1).data(b"more").frame(),
        false,
    );
    t.check(row);
    t.finish();
}

#[test]
fn reject_answers_with_rst() {
    let Some(mut t) = table("admin::reject_answers_with_rst") else {
        return;
    };
    let pr = port_to(&t.bal, "web-c", 46_000);
    establish(&mut t, "web-c", pr);
    t.bal.set_admin("web-c", AdminState::Reject).unwrap();
    t.check(rst_row(
        "after reject, a data packet is answered with a RST (seq = its ACK)",
        tcp4(CLIENT, pr, VIP, 80).ack(777).data(b"GET /").frame(),
        rst_frame(VIP.into(), CLIENT.into(), pr, 777, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::Packets, 0),
            Delta::Backend("web-c".into(), Field::EndedFlows, 1),
            Delta::Service("web".into(), Field::RstSent, 1),
        ],
    ));
    t.check(rst_row(
        "…and so is the next one, without counting the flow's end twice",
        tcp4(CLIENT, pr, VIP, 80).ack(800).frame(),
        rst_frame(VIP.into(), CLIENT.into(), pr, 800, None),
        vec![
            Delta::Backend("web-c".into(), Field::RstSent, 1),
            Delta::Backend("web-c".into(), Field::EndedFlows, 0),
        ],
    ));
    t.check(rst_row(
        "…and so is one longer than a page (its tail in fragments): the RST is bare headers",
        tcp4(CLIENT, pr, VIP, 80)
            .ack(900)
            .data(&[0x55; 4000])
            .frame(),
        rst_frame(VIP.into(), CLIENT.into(), pr, 900, None),
        vec![Delta::Backend("web-c".into(), Field::RstSent, 1)],
    ));
    t.check(dropped(
        "a RST from the client to a rejected backend's flow is not answered",
        tcp4(CLIENT, pr, VIP, 80).rst().frame(),
        outcome::DROP_REJECTED,
    ));
    t.finish();
}

#[test]
fn a_removed_backend_is_treated_as_reject() {
    let Some(mut t) = table("admin::a_removed_backend_is_treated_as_reject") else {
        return;
    };
    t.bal
        .add_backend("web", BackendSpec::new("web-d", v4(6), mac(30)))
        .unwrap();
    let row = fwd(
        &t.bal,
        "set-up: SYN to web-d",
        "web",
        "web-d",
        tcp4(CLIENT, port_to(&t.bal, "web-d", 47_000), VIP, 80)
            .syn()
            .frame(),
        true,
    );
    let pd = port_to(&t.bal, "web-d", 47_000);
    t.check(row);
    t.check(fwd(
        &t.bal,
        "set-up: ACK",
        "web",
        "web-d",
        tcp4(CLIENT, pd, VIP, 80).ack(1).frame(),
        false,
    ));
    let old_id = t.bal.backend_id("web-d").unwrap();
    t.bal.remove_backend("web-d").unwrap();
    t.check(rst_row(
        "a data packet of a removed backend's flow is answered with a RST",
        tcp4(CLIENT, pd, VIP, 80).ack(55).data(b"x").frame(),
        rst_frame(VIP.into(), CLIENT.into(), pd, 55, None),
        vec![Delta::Service("web".into(), Field::RstSent, 1)],
    ));
    // Its id, reused by a new backend, does not inherit the old flows.
    t.bal
        .add_backend("web", BackendSpec::new("web-e", v4(7), mac(31)))
        .unwrap();
    assert_eq!(
        t.bal.backend_id("web-e").unwrap(),
        old_id,
        "the new backend reuses the removed one's id (else the next row proves nothing)"
    );
    assert_eq!(
        t.bal.backend_counters("web-e").unwrap(),
        Counters::default(),
        "a reused id starts with zeroed counters"
    );
    t.check(rst_row(
        "a new backend given a removed backend's id does not inherit its flows",
        tcp4(CLIENT, pd, VIP, 80).ack(56).frame(),
        rst_frame(VIP.into(), CLIENT.into(), pd, 56, None),
        vec![Delta::Backend("web-e".into(), Field::Packets, 0)],
    ));
    t.finish();
}
