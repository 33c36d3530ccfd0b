//! Announcing the VIPs through an existing BGP speaker: while a service can take new flows on
//! this host (its datapath attached, a backend eligible, or maintenance on), the daemon keeps
//! a blackhole route for its VIP in `daemon.announce_table`, tagged with protocol 250; the
//! speaker (BIRD's `kernel` protocol with `learn`, or GoBGP's zebra-less `table` import) exports
//! what that table holds. The routes never carry traffic on this host: the table is not in its
//! rules. `shutdown --detach` withdraws them and holds the datapath a moment, so the routers
//! move the traffic before the program goes; a daemon that merely stops (or dies) leaves them,
//! as its datapath goes on forwarding from the pinned link, and the next daemon takes them
//! over without withdrawing them.

use std::{collections::BTreeSet, net::IpAddr, process::Command, time::Duration};

use tracing::{info, warn};

/// The routes' protocol number (`ip route … proto 250`): what marks them as steer's.
const PROTO: &str = "250";
/// How long `shutdown --detach` waits after withdrawing before the datapath goes.
pub const HOLD: Duration = Duration::from_secs(2);

pub struct Announcer {
    table: String,
    installed: BTreeSet<IpAddr>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn family(a: &IpAddr) -> &'static str {
    if a.is_ipv4() {
        "-4"
    } else {
        "-6"
    }
}

fn prefix(a: &IpAddr) -> String {
    match a {
        IpAddr::V4(v) => format!("{v}/32"),
        IpAddr::V6(v) => format!("{v}/128"),
    }
}

impl Announcer {
    /// `ip route VERB blackhole VIP table T proto 250`: this daemon's route for `vip`.
    fn route(&self, verb: &str, vip: &IpAddr) -> Result<(), String> {
        let p = prefix(vip);
        ip(&[
            family(vip),
            "route",
            verb,
            "blackhole",
            &p,
            "table",
            &self.table,
            "proto",
            PROTO,
        ])
    }

    /// Takes over the routes a daemon before left (they stay announced: a restart does not
    /// flap the routers); the first `sync` withdraws those no longer wanted.
    pub fn new(table: u32) -> Announcer {
        let table = table.to_string();
        let mut installed = BTreeSet::new();
        for f in ["-4", "-6"] {
            let out = Command::new("ip")
                .args([f, "route", "show", "table", &table, "proto", PROTO])
                .output();
            let Ok(out) = out else { continue };
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                // "blackhole 10.0.0.10 proto 250 …"
                let mut w = line.split_whitespace();
                if w.next() != Some("blackhole") {
                    continue;
                }
                if let Some(a) = w
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<IpAddr>().ok())
                {
                    installed.insert(a);
                }
            }
        }
        Announcer { table, installed }
    }

    fn flush(&self) {
        for f in ["-4", "-6"] {
            if let Err(e) = ip(&[f, "route", "flush", "table", &self.table, "proto", PROTO]) {
                warn!(error = %e, "cannot flush the announced routes");
            }
        }
    }

    /// Announces exactly `want`; false when a route could not be changed (tried again at the
    /// next call).
    pub fn sync(&mut self, want: &BTreeSet<IpAddr>) -> bool {
        let mut ok = true;
        for a in want.difference(&self.installed.clone()) {
            match self.route("replace", a) {
                Ok(()) => {
                    info!(vip = %a, table = %self.table, "announced");
                    self.installed.insert(*a);
                }
                Err(e) => {
                    warn!(vip = %a, error = %e, "cannot announce");
                    ok = false;
                }
            }
        }
        for a in self.installed.difference(want).copied().collect::<Vec<_>>() {
            match self.route("del", &a) {
                Ok(()) => info!(vip = %a, "withdrawn"),
                Err(e) => {
                    warn!(vip = %a, error = %e, "cannot withdraw");
                    ok = false;
                }
            }
            self.installed.remove(&a);
        }
        ok
    }

    /// Withdraws every VIP.
    pub fn withdraw_all(&mut self) {
        self.sync(&BTreeSet::new());
        self.flush();
    }
}
