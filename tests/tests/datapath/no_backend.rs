//! Rule 3, last resort: a service with no backend at all answers a SYN with RST|ACK, or drops it
//! when configured to; anything but a SYN is dropped.

use steer_common::outcome;
use steer_tests::fixture::{tcp4, Delta, Field};

use crate::common::{dropped, rst_frame, rst_row, table, CLIENT, EMPTY_VIP, QUIET_VIP};

#[test]
fn no_backend() {
    let Some(mut t) = table("no_backend::no_backend") else {
        return;
    };
    t.check(rst_row(
        "a SYN to a service with no backend is answered with RST|ACK",
        tcp4(CLIENT, 40_000, EMPTY_VIP, 80).syn().frame(),
        rst_frame(EMPTY_VIP.into(), CLIENT.into(), 40_000, 0, Some(1001)),
        vec![Delta::Service("empty".into(), Field::RstSent, 1)],
    ));
    t.check(dropped(
        "a non-SYN to a service with no backend is dropped",
        tcp4(CLIENT, 40_000, EMPTY_VIP, 80).ack(1).frame(),
        outcome::DROP_NO_BACKEND,
    ));
    t.check(dropped(
        "a SYN to a no-backend service set to drop is dropped",
        tcp4(CLIENT, 40_000, QUIET_VIP, 80).syn().frame(),
        outcome::DROP_NO_BACKEND,
    ));
    t.finish();
}
