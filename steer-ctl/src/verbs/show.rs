//! `status` and `show services|backends|flows`. With --json, one object with `ok`: `status`
//! is the daemon's status with `"ok": true` added; `show` wraps its list
//! (`{"ok": true, "backends": […]}`).

use serde_json::{json, Value};
use steer_ctl::{
    proto::{BackendStatus, FlowScan, Request, ServiceStatus, Status},
    stats::{age, per_s},
};

use super::{out, Ctx};
use crate::cli::ShowWhat;

fn fetch(ctx: &Ctx) -> Result<Status, i32> {
    ctx.call(&Request::Status {})?.status.ok_or_else(|| {
        ctx.fail_msg(
            "the daemon's answer is not understood: a status reply without a status",
            "protocol",
            steer_ctl::exit::FAILURE,
        )
    })
}

/// Columns aligned to their widest cell; `right` columns are numbers.
struct Table {
    head: Vec<(&'static str, bool)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(head: &[(&'static str, bool)]) -> Table {
        Table {
            head: head.to_vec(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn lines(&self) -> Vec<String> {
        let mut width: Vec<usize> = self.head.iter().map(|(h, _)| h.len()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len() - 1;
            let mut s = String::new();
            for (i, c) in cells.into_iter().enumerate() {
                let (w, right) = (width[i], self.head[i].1);
                if i > 0 {
                    s.push_str("  ");
                }
                if right {
                    s += &format!("{c:>w$}");
                } else if i == last {
                    s += c;
                } else {
                    s += &format!("{c:<w$}");
                }
            }
            s
        };
        let mut out = vec![line(self.head.iter().map(|(h, _)| *h).collect())];
        out.extend(
            self.rows
                .iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        );
        out
    }

    fn print(&self) {
        for l in self.lines() {
            out(l);
        }
    }
}

fn services_table(services: &[ServiceStatus]) -> Table {
    let mut t = Table::new(&[
        ("SERVICE", false),
        ("ADDRESS", false),
        ("PROTO", false),
        ("MODE", false),
        ("MAINTENANCE", false),
        ("GROUP", false),
        ("ELIGIBLE", true),
        ("PACKETS", true),
        ("NEW FLOWS", true),
        ("NEW/S", true),
        ("TABLE", false),
    ]);
    for v in services {
        let addr = if v.vip.contains(':') {
            format!("[{}]:{}", v.vip, v.port)
        } else {
            format!("{}:{}", v.vip, v.port)
        };
        t.row(vec![
            v.name.clone(),
            addr,
            v.protocol.to_string(),
            v.mode.to_string(),
            if v.maintenance { "on" } else { "off" }.into(),
            v.active_group.clone().unwrap_or_else(|| "-".into()),
            v.eligible.to_string(),
            v.counters.packets.to_string(),
            v.counters.new_flows.to_string(),
            per_s(v.rate.map(|r| r.new_flows_per_s)),
            v.table_digest.get(..8).unwrap_or("-").to_string(),
        ]);
    }
    t
}

/// "3", or "3 (config 1)" when `steer-ctl weight` changed it.
fn weight(b: &BackendStatus) -> String {
    if b.weight == b.config_weight {
        b.weight.to_string()
    } else {
        format!("{} (config {})", b.weight, b.config_weight)
    }
}

fn backends_table(backends: &[BackendStatus]) -> Table {
    let mut t = Table::new(&[
        ("BACKEND", false),
        ("SERVICE", false),
        ("GROUP", false),
        ("ADDRESS", false),
        ("ROLE", false),
        ("ADMIN", false),
        ("HEALTH", false),
        ("STATE", false),
        ("SINCE", true),
        ("WEIGHT", true),
        ("ACTIVE", true),
        ("NEW/S", true),
        ("PACKETS", true),
        ("FAILS", true),
        ("DOWNS", true),
        ("CHECK", false),
    ]);
    for b in backends {
        t.row(vec![
            b.name.clone(),
            b.service.clone(),
            b.group.clone().unwrap_or_else(|| "-".into()),
            b.address.clone(),
            b.role.to_string(),
            b.admin.to_string(),
            b.health.to_string(),
            // What it does now (a healthy ready backend of a group not switched to: standby).
            b.state.clone(),
            // Time in the state: since the last change of admin state or health.
            age(b.last_change_ms),
            weight(b),
            // Unknown when the last flow scan failed or none has completed yet.
            b.active_flows.map_or("?".to_string(), |n| n.to_string()),
            per_s(b.rate.map(|r| r.new_flows_per_s)),
            b.counters.packets.to_string(),
            b.check_failures.to_string(),
            b.went_down.to_string(),
            // Passive health's mark-down says more than the last check until checks bring
            // the backend back.
            b.passive.clone().unwrap_or_else(|| b.check.clone()),
        ]);
    }
    t
}

/// Where the ACTIVE column comes from.
fn flow_scan_line(f: &FlowScan) -> String {
    match (&f.error, f.seq) {
        (Some(e), _) => format!("flow scan: failed ({e}); active flows unknown"),
        (None, 0) => "flow scan: none completed yet; active flows unknown".into(),
        (None, seq) => format!(
            "flow scan: #{seq}, {} ms ago, {} flows read in {} ms; established {} of {}{}, transient (ended, NAT half-open) {} of {}, attempts (DSR half-open) {} of {}",
            f.age_ms,
            f.flows,
            f.took_ms,
            f.established,
            f.capacity,
            if f.last_full_seq > 0 && f.last_full_seq + 1 >= seq {
                " (full: evicting)"
            } else {
                ""
            },
            f.transient,
            f.transient_capacity,
            f.attempts,
            f.attempts_capacity
        ),
    }
}

/// `{"ok": true, …}` with the fields of `value` (an object).
fn ok_with(value: impl serde::Serialize) -> Value {
    let mut v = json!({"ok": true});
    if let Value::Object(fields) = serde_json::to_value(value).expect("serializes") {
        v.as_object_mut().expect("object").extend(fields);
    }
    v
}

pub fn status(ctx: &Ctx) -> Result<(), i32> {
    let s = fetch(ctx)?;
    if ctx.json {
        out(ok_with(&s));
        return Ok(());
    }
    out(format!("config: {}", s.config));
    out(flow_scan_line(&s.flow_scan));
    out("");
    services_table(&s.services).print();
    out("");
    backends_table(&s.backends).print();
    Ok(())
}

pub fn show(ctx: &Ctx, what: ShowWhat, limit: usize) -> Result<(), i32> {
    match what {
        ShowWhat::Services => {
            let s = fetch(ctx)?;
            if ctx.json {
                out(json!({"ok": true, "services": s.services}));
            } else {
                services_table(&s.services).print();
            }
        }
        ShowWhat::Backends => {
            let s = fetch(ctx)?;
            if ctx.json {
                out(json!({"ok": true, "backends": s.backends, "flow_scan": s.flow_scan}));
            } else {
                out(flow_scan_line(&s.flow_scan));
                backends_table(&s.backends).print();
            }
        }
        ShowWhat::Flows => {
            let flows = ctx
                .call(&Request::Flows { limit })?
                .flows
                .unwrap_or_default();
            if ctx.json {
                out(json!({"ok": true, "flows": flows}));
            } else {
                let mut t = Table::new(&[
                    ("CLIENT", false),
                    ("VIP", false),
                    ("PROTO", false),
                    ("BACKEND", false),
                    ("STATE", false),
                    ("IDLE MS", true),
                ]);
                for f in flows {
                    t.row(vec![
                        f.client,
                        f.vip,
                        f.protocol.to_string(),
                        f.backend,
                        f.state,
                        f.idle_ms.to_string(),
                    ]);
                }
                t.print();
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steer_ctl::{model::Mode, AdminState, Health};

    #[test]
    fn backends_table_is_aligned_with_group_weight_and_unknown_counts() {
        let b = |name: &str, group: Option<&str>, w: u32, active: Option<u64>| BackendStatus {
            name: name.into(),
            service: "web".into(),
            address: "10.0.0.1".into(),
            group: group.map(String::from),
            admin: AdminState::Drain,
            health: Health::Unknown,
            state: "draining".into(),
            check: "not checked yet".into(),
            weight: w,
            config_weight: 1,
            active_flows: active,
            last_change_ms: 185_000,
            check_failures: 4,
            went_down: 1,
            rate: Some(steer_ctl::proto::Rate {
                packets_per_s: 10.0,
                new_flows_per_s: 2.5,
            }),
            ..BackendStatus::default()
        };
        let lines = backends_table(&[
            b("a-very-long-backend-name", Some("blue"), 3, Some(12)),
            b("b1", None, 1, None),
        ])
        .lines();
        let passive = BackendStatus {
            passive: Some("passive: 3 consecutive refused or unanswered attempts".into()),
            ..b("n1", None, 1, Some(0))
        };
        assert!(
            backends_table(&[passive]).lines()[1]
                .ends_with("  passive: 3 consecutive refused or unanswered attempts"),
            "the passive reason stands for the check while it holds"
        );
        assert_eq!(
            lines,
            vec![
                "BACKEND                   SERVICE  GROUP  ADDRESS   ROLE  ADMIN  HEALTH   STATE     SINCE        WEIGHT  ACTIVE  NEW/S  PACKETS  FAILS  DOWNS  CHECK",
                "a-very-long-backend-name  web      blue   10.0.0.1  pool  drain  unknown  draining  3m05s  3 (config 1)      12    2.5        0      4      1  not checked yet",
                "b1                        web      -      10.0.0.1  pool  drain  unknown  draining  3m05s             1       ?    2.5        0      4      1  not checked yet",
            ]
        );
    }

    #[test]
    fn services_show_their_mode() {
        let s = |name: &str, mode| ServiceStatus {
            name: name.into(),
            vip: "10.0.0.10".into(),
            port: 80,
            mode,
            ..ServiceStatus::default()
        };
        let lines = services_table(&[s("web", Mode::Dsr), s("api", Mode::Nat)]).lines();
        assert_eq!(
            lines,
            vec![
                "SERVICE  ADDRESS       PROTO  MODE  MAINTENANCE  GROUP  ELIGIBLE  PACKETS  NEW FLOWS  NEW/S  TABLE",
                "web      10.0.0.10:80  tcp    dsr   off          -             0        0          0      -  -",
                "api      10.0.0.10:80  tcp    nat   off          -             0        0          0      -  -",
            ]
        );
    }

    #[test]
    fn ages_read_in_two_units() {
        let cases = [
            (850, "850ms"),
            (42_000, "42s"),
            (184_000, "3m04s"),
            (7_500_000, "2h05m"),
            (273_600_000, "3d04h"),
        ];
        for (ms, want) in cases {
            assert_eq!(age(ms), want);
        }
    }

    #[test]
    fn json_status_is_an_object_with_ok() {
        let v = ok_with(Status::default());
        assert_eq!(v["ok"], true);
        assert!(
            v["backends"].is_array() && v["flow_scan"]["seq"] == 0,
            "{v}"
        );
    }
}
