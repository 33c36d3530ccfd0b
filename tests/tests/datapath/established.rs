//! Rule 1: an established flow stays on its backend — whatever its health, whatever the pool
//! does — until it ends.

use steer_ctl::{AdminState, BackendSpec, Health};
use steer_tests::fixture::{run_frame, tcp4, Delta, Field};

use crate::common::{
    be_mac, establish, fwd, mac, maglev_choice, port_to, table, tcp_key, v4, CLIENT, VIP,
};

#[test]
fn a_backend_marked_down_keeps_its_flows() {
    let Some(mut t) = table("established::a_backend_marked_down_keeps_its_flows") else {
        return;
    };
    let pb = port_to(&t.bal, "web-b", 42_000);
    establish(&mut t, "web-b", pb);
    t.bal.set_health("web-b", Health::Down).unwrap();
    let row = fwd(
        &t.bal,
        "a backend marked down keeps its established flows",
        "web",
        "web-b",
        tcp4(CLIENT, pb, VIP, 80).ack(1).data(b"x").frame(),
        false,
    );
    t.check(row);
    t.finish();
}

#[test]
fn a_pool_change_moves_no_flow() {
    let Some(mut t) = table("established::a_pool_change_moves_no_flow") else {
        return;
    };
    let before: Vec<(u16, String)> = (44_000..44_050)
        .map(|p| (p, maglev_choice(&t.bal, "web", &tcp_key(p))))
        .collect();
    for (p, be) in &before {
        let f = tcp4(CLIENT, *p, VIP, 80).syn().frame();
        let r = run_frame(&mut t.bal, &f.bytes);
        assert_eq!(r.output[0..6], be_mac(&t.bal, be), "set-up SYN on port {p}");
    }
    t.bal
        .add_backend("web", BackendSpec::new("web-d", v4(6), mac(30)))
        .unwrap();
    let (moved_p, moved_from) = before
        .iter()
        .find(|(p, be)| maglev_choice(&t.bal, "web", &tcp_key(*p)) != *be)
        .cloned()
        .expect("adding web-d changes the choice of some port");
    let row = fwd(
        &t.bal,
        "after a backend is added, a flow whose Maglev slot moved stays on its backend",
        "web",
        &moved_from,
        tcp4(CLIENT, moved_p, VIP, 80).ack(1).frame(),
        false,
    );
    t.check(row);
    t.finish();
}

#[test]
fn a_fin_ends_the_flow() {
    let Some(mut t) = table("established::a_fin_ends_the_flow") else {
        return;
    };
    let pf = port_to(&t.bal, "web-a", 48_000);
    t.check(fwd(
        &t.bal,
        "set-up: SYN",
        "web",
        "web-a",
        tcp4(CLIENT, pf, VIP, 80).syn().frame(),
        true,
    ));
    let mut row = fwd(
        &t.bal,
        "a client FIN ends the flow and still reaches the backend",
        "web",
        "web-a",
        tcp4(CLIENT, pf, VIP, 80).ack(1).fin().frame(),
        false,
    );
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 1));
    row.deltas
        .push(Delta::Service("web".into(), Field::EndedFlows, 1));
    t.check(row);
    let mut row = fwd(
        &t.bal,
        "a retransmitted FIN does not end it twice",
        "web",
        "web-a",
        tcp4(CLIENT, pf, VIP, 80).ack(1).fin().frame(),
        false,
    );
    row.deltas
        .push(Delta::Backend("web-a".into(), Field::EndedFlows, 0));
    t.check(row);
    t.bal.set_admin("web-a", AdminState::Drain).unwrap();
    let now = maglev_choice(&t.bal, "web", &tcp_key(pf));
    t.check(fwd(
        &t.bal,
        "a new SYN on an ended flow's 5-tuple is a new flow",
        "web",
        &now,
        tcp4(CLIENT, pf, VIP, 80).syn().frame(),
        true,
    ));
    t.finish();
}
