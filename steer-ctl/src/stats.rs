//! The stats page: what HAProxy's `stats uri` gives operators, for steer. Read-only HTML
//! rendered from the daemon's status on each request, one table per service, one row per
//! backend, colour-coded by state, refreshing itself (a meta refresh: no JavaScript, no
//! external asset), laid out as cards on a phone.

use std::fmt::Write as _;

use crate::{
    model::Role,
    proto::{BackendStatus, ServiceStatus, Status},
};

/// Seconds between the page's refreshes.
pub const REFRESH_S: u32 = 2;

/// Text for HTML, attribute values included.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// "850ms", "42s", "3m04s", "2h05m", "3d04h".
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// A rate as a cell: "-" before there is one.
pub fn per_s(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r < 10.0 && r.fract() != 0.0 => format!("{r:.1}"),
        Some(r) => format!("{r:.0}"),
    }
}

/// The class a row is coloured by, and its one-word label, from the daemon's `state`.
pub fn row_state(b: &BackendStatus) -> (&'static str, &'static str) {
    match b.state.as_str() {
        "up" => ("up", "up"),
        "serving" => ("up", "serving"),
        "draining" => ("drain", "draining"),
        "maint" => ("maint", "in maintenance"),
        "rejecting" => ("reject", "rejecting"),
        "down" => ("down", "down"),
        "standby" => ("standby", "standby"),
        "weight 0" => ("standby", "weight 0"),
        _ => ("unknown", "not checked yet"),
    }
}

const STYLE: &str = r#"
:root { color-scheme: light; font-family: system-ui, -apple-system, "Segoe UI", sans-serif; }
body { margin: 0; padding: 0.75rem; background: #f4f5f7; color: #1d2330; overflow-wrap: anywhere; }
h1 { font-size: 1.2rem; margin: 0 0 0.25rem; }
h2 { font-size: 1.05rem; margin: 1.25rem 0 0.4rem; }
.meta { color: #555d6b; font-size: 0.85rem; margin: 0.1rem 0; }
.badge { display: inline-block; padding: 0.05rem 0.45rem; border-radius: 0.6rem; font-size: 0.8rem;
         margin-left: 0.35rem; background: #dfe3ea; }
.badge.warn { background: #ffd98a; } .badge.bad { background: #f3a3a3; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 0.9rem; }
th, td { padding: 0.35rem 0.5rem; border-bottom: 1px solid #e3e6eb; text-align: left; white-space: nowrap; }
th { background: #2c3442; color: #fff; font-weight: 600; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
tr.up td:first-child { border-left: 6px solid #2e9d4f; }   tr.up { background: #eef9f1; }
tr.drain td:first-child { border-left: 6px solid #e0a100; } tr.drain { background: #fff6dc; }
tr.maint td:first-child { border-left: 6px solid #5b7bd5; } tr.maint { background: #eaf0ff; }
tr.down td:first-child { border-left: 6px solid #d23b3b; }  tr.down { background: #fde8e8; }
tr.reject td:first-child { border-left: 6px solid #8e2fbf; } tr.reject { background: #f5e8fc; }
tr.unknown td:first-child { border-left: 6px solid #9aa2ae; } tr.unknown { background: #f1f2f4; }
tr.standby td:first-child { border-left: 6px solid #3a9aa6; } tr.standby { background: #e9f6f7; }
.state { font-weight: 600; }
.why { color: #555d6b; font-size: 0.8rem; white-space: normal; }
.legend span { display: inline-block; margin-right: 0.6rem; font-size: 0.8rem; }
.legend i { display: inline-block; width: 0.8rem; height: 0.8rem; vertical-align: -0.1rem; margin-right: 0.2rem; border-radius: 0.15rem; }
@media (max-width: 760px) {
  table, thead, tbody, tr, td { display: block; width: auto; }
  thead { display: none; }
  tr { margin: 0 0 0.6rem; border-radius: 0.4rem; border: 1px solid #d5d9e0; }
  td { border: none; padding: 0.2rem 0.6rem; white-space: normal; }
  td.n { text-align: left; }
  td::before { content: attr(data-label) ": "; color: #555d6b; font-weight: 400; }
  td:first-child::before { content: ""; }
  td:first-child { font-size: 1.05rem; font-weight: 600; }
}
"#;

const COLUMNS: [&str; 12] = [
    "backend",
    "state",
    "since",
    "last check",
    "weight",
    "group",
    "active flows",
    "new flows/s",
    "new flows",
    "check failures",
    "downs",
    "passive health",
];

fn service_head(s: &ServiceStatus, o: &mut String) {
    let addr = if s.vip.contains(':') {
        format!("[{}]:{}", s.vip, s.port)
    } else {
        format!("{}:{}", s.vip, s.port)
    };
    let _ = write!(
        o,
        "<section class=\"service\" id=\"service-{}\"><h2>{} <span class=\"meta\">{}/{} {}</span>",
        esc(&s.name),
        esc(&s.name),
        esc(&addr),
        s.protocol,
        s.mode
    );
    if s.maintenance {
        o.push_str("<span class=\"badge warn\">maintenance on</span>");
    }
    if s.eligible == 0 {
        o.push_str("<span class=\"badge bad\">no eligible backend</span>");
    } else {
        let _ = write!(o, "<span class=\"badge\">{} eligible</span>", s.eligible);
    }
    if let Some(g) = &s.active_group {
        let _ = write!(o, "<span class=\"badge\">group {}</span>", esc(g));
    }
    let _ = write!(
        o,
        "<span class=\"badge\">{} new flows/s</span></h2>",
        per_s(s.rate.map(|r| r.new_flows_per_s))
    );
}

fn backend_row(b: &BackendStatus, o: &mut String) {
    let (class, label) = row_state(b);
    let role = match b.role {
        Role::Pool => String::new(),
        r => format!(" <span class=\"badge\">{r}</span>"),
    };
    let check = match b.check_ms {
        Some(ms) if b.check != "no checks" => format!("{} ({ms:.1} ms)", b.check),
        _ => b.check.clone(),
    };
    let weight = if b.weight == b.config_weight {
        b.weight.to_string()
    } else {
        format!("{} (config {})", b.weight, b.config_weight)
    };
    let passive = if b.passive_downs > 0 || b.counters.refused > 0 || b.counters.syn_timeouts > 0 {
        format!(
            "{} down, {} refused, {} unanswered",
            b.passive_downs, b.counters.refused, b.counters.syn_timeouts
        )
    } else {
        "–".into()
    };
    let cells: [(String, bool); 12] = [
        (format!("{}{role}", esc(&b.name)), false),
        (
            format!(
                "<span class=\"state\">{label}</span><div class=\"why\">admin {}, health {}</div>",
                b.admin, b.health
            ),
            false,
        ),
        (
            format!(
                "{}<div class=\"why\">{}</div>",
                age(b.last_change_ms),
                esc(&b.last_change)
            ),
            false,
        ),
        (
            format!(
                "<span class=\"why\">{}</span>",
                esc(b.passive.as_deref().unwrap_or(&check))
            ),
            false,
        ),
        (esc(&weight), true),
        (esc(b.group.as_deref().unwrap_or("–")), false),
        (b.active_flows.map_or("?".into(), |n| n.to_string()), true),
        (per_s(b.rate.map(|r| r.new_flows_per_s)), true),
        (b.counters.new_flows.to_string(), true),
        (b.check_failures.to_string(), true),
        (b.went_down.to_string(), true),
        (esc(&passive), false),
    ];
    let _ = write!(
        o,
        "<tr class=\"{class}\" id=\"backend-{}\" data-state=\"{class}\">",
        esc(&b.name)
    );
    for ((cell, numeric), label) in cells.iter().zip(COLUMNS) {
        let _ = write!(
            o,
            "<td data-label=\"{label}\"{}>{cell}</td>",
            if *numeric { " class=\"n\"" } else { "" }
        );
    }
    o.push_str("</tr>");
}

/// The page for `status`, as seen by `host`.
pub fn render(status: &Status, host: &str) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <title>steer on {h}</title><style>{STYLE}</style></head><body>\
         <h1>steer on {h}</h1>",
        h = esc(host)
    );
    let f = &status.flow_scan;
    let _ = write!(
        o,
        "<p class=\"meta\">config {} · refreshes every {REFRESH_S} s · flow table {} of {} established, {} attempts",
        esc(&status.config),
        f.established,
        f.capacity,
        f.attempts
    );
    if let Some(e) = &f.error {
        let _ = write!(
            o,
            " · <b>flow scan failed: {}</b> (active flows unknown)",
            esc(e)
        );
    }
    o.push_str("</p>");
    if let Some(c) = &status.cluster {
        let peers: Vec<String> = c.peers.iter().map(|p| esc(&p.host)).collect();
        let _ = write!(
            o,
            "<p class=\"meta\">cluster host {} · intent revision {} · peers: {}</p>",
            esc(&c.host),
            c.revision,
            if peers.is_empty() {
                "none alive".into()
            } else {
                peers.join(", ")
            }
        );
    }
    o.push_str(
        "<p class=\"legend\"><span><i style=\"background:#2e9d4f\"></i>up</span>\
         <span><i style=\"background:#e0a100\"></i>draining</span>\
         <span><i style=\"background:#5b7bd5\"></i>maintenance</span>\
         <span><i style=\"background:#d23b3b\"></i>down</span>\
         <span><i style=\"background:#8e2fbf\"></i>rejecting</span>\
         <span><i style=\"background:#3a9aa6\"></i>standby (takes no new flows)</span>\
         <span><i style=\"background:#9aa2ae\"></i>not checked yet</span></p>",
    );
    for s in &status.services {
        service_head(s, &mut o);
        o.push_str("<table><thead><tr>");
        for c in COLUMNS {
            let _ = write!(o, "<th>{c}</th>");
        }
        o.push_str("</tr></thead><tbody>");
        for b in status.backends.iter().filter(|b| b.service == s.name) {
            backend_row(b, &mut o);
        }
        o.push_str("</tbody></table></section>");
    }
    o.push_str("</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(name: &str, state: &str) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            service: "web".into(),
            state: state.into(),
            check: "ok".into(),
            weight: 1,
            config_weight: 1,
            last_change: "admin ready → drain".into(),
            ..BackendStatus::default()
        }
    }

    #[test]
    fn rows_are_coloured_by_what_the_backend_does() {
        let cases = [
            ("up", "up"),
            ("serving", "up"),
            ("down", "down"),
            ("unchecked", "unknown"),
            ("draining", "drain"),
            ("maint", "maint"),
            ("rejecting", "reject"),
            ("standby", "standby"),
            ("weight 0", "standby"),
        ];
        for (state, want) in cases {
            assert_eq!(row_state(&backend("a", state)).0, want, "{state}");
        }
    }

    #[test]
    fn the_page_has_a_row_per_backend_and_escapes_what_it_shows() {
        let status = Status {
            config: "/etc/steer/<x>.toml".into(),
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "10.0.0.10".into(),
                port: 80,
                maintenance: true,
                eligible: 1,
                ..ServiceStatus::default()
            }],
            backends: vec![
                backend("web-a", "up"),
                BackendStatus {
                    check: "http: status 503 <b>".into(),
                    ..backend("web-b", "draining")
                },
            ],
            ..Status::default()
        };
        let page = render(&status, "lb1");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"2\">"));
        assert!(page.contains("name=\"viewport\""));
        assert!(
            page.contains("<tr class=\"up\" id=\"backend-web-a\""),
            "{page}"
        );
        assert!(
            page.contains("<tr class=\"drain\" id=\"backend-web-b\""),
            "{page}"
        );
        assert!(page.contains("maintenance on"));
        assert!(page.contains("/etc/steer/&lt;x&gt;.toml"));
        assert!(page.contains("http: status 503 &lt;b&gt;"));
        assert!(!page.contains("<b>\""));
        // No external asset: nothing is fetched from elsewhere.
        assert!(!page.contains("src=") && !page.contains("href="), "{page}");
    }
}
