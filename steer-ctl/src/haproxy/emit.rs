//! The steer.toml text of a translation, each part with a comment naming the haproxy.cfg lines
//! it comes from.

use std::fmt::Write;

use super::{
    lex::humane,
    translate::{Backend, Observe, Plan, Service},
};
use crate::{
    config::{Check, CheckKind, HttpMethod},
    model::Role,
};

/// Width comments are wrapped to.
const WIDTH: usize = 96;

pub fn toml(plan: &Plan) -> String {
    let mut t = String::new();
    comment(
        &mut t,
        "steer.toml translated from an haproxy.cfg by `steer-ctl config import-haproxy`. Each \
         part names the haproxy.cfg lines it comes from; what could not be translated is listed \
         apart, with its line. Set what is marked TODO, then check the file with `steer-ctl \
         config check --config FILE`.",
    );
    t.push_str("\n[daemon]\n");
    if plan.interfaces.is_empty() {
        comment(
            &mut t,
            "TODO: the interfaces clients' packets arrive on (the haproxy.cfg does not say).",
        );
        t.push_str("interfaces = [\"eth0\"]\n");
    } else {
        let from: Vec<String> = plan
            .interfaces
            .iter()
            .map(|i| format!("line {}", i.line))
            .collect();
        comment(
            &mut t,
            &format!("From `bind … interface` ({}).", from.join(", ")),
        );
        let names: Vec<String> = plan.interfaces.iter().map(|i| q(&i.v)).collect();
        let _ = writeln!(t, "interfaces = [{}]", names.join(", "));
    }
    for s in &plan.services {
        service(&mut t, s);
    }
    t
}

fn service(t: &mut String, s: &Service) {
    t.push('\n');
    comment(t, &format!("{}.", s.origin.join(", ")));
    t.push_str("[[service]]\n");
    let _ = writeln!(t, "name = {}", q(&s.name));
    if s.placeholder {
        comment(
            t,
            "TODO: a placeholder (the haproxy.cfg gives no address): the VIP clients connect to.",
        );
    } else if s.vip.is_loopback() {
        comment(
            t,
            "TODO: a loopback address (haproxy listened on this host only): clients' packets \
             never reach the datapath for it; the VIP clients connect to.",
        );
    }
    let _ = writeln!(t, "vip = {}", q(&s.vip.to_string()));
    let _ = writeln!(t, "port = {}", s.port);
    t.push_str("protocol = \"tcp\"\n");
    if s.nat {
        comment(
            t,
            if matches!(s.observe, Observe::On { .. }) {
                "Full NAT: servers as behind haproxy need no change, and passive health (observe) \
                 needs their replies."
            } else {
                "Full NAT: servers as behind haproxy need no change. mode = \"dsr\" forwards \
                 faster once each server holds the VIP on a loopback with arp_ignore=1 and \
                 listens on the VIP's port."
            },
        );
        t.push_str("mode = \"nat\"\n");
    } else {
        t.push_str("mode = \"dsr\"\n");
    }
    match &s.observe {
        Observe::Unset => {}
        Observe::Off => {
            comment(
                t,
                "No `observe` in the haproxy.cfg: passive health off, as there (in mode nat \
                 with checks, steer's default is on).",
            );
            t.push_str("observe = false\n");
        }
        Observe::On { error_limit, lines } => {
            comment(
                t,
                &format!(
                    "`observe … on-error mark-down` ({}): refused or unanswered connections \
                     mark a backend down at once.",
                    list_lines(lines)
                ),
            );
            t.push_str("observe = true\n");
            let _ = writeln!(t, "error_limit = {error_limit}");
            if let Some(st) = &s.syn_timeout {
                comment(
                    t,
                    &format!(
                        "`timeout connect` (line {}): an attempt unanswered this long has failed.",
                        st.line
                    ),
                );
                let _ = writeln!(t, "syn_timeout = {}", q(&humane(st.v)));
            }
        }
    }
    t.push('\n');
    if s.check.kind == CheckKind::None {
        comment(t, "No server here has `check`: always up, as in haproxy.");
    } else {
        comment(
            t,
            &format!("Health check from {}.", list_lines(&s.check_lines)),
        );
    }
    t.push_str("[service.check]\n");
    for (k, v) in shown(&s.check) {
        let _ = writeln!(t, "{k} = {v}");
    }
    for b in &s.backends {
        backend(t, s, b);
    }
}

fn backend(t: &mut String, s: &Service, b: &Backend) {
    t.push('\n');
    let role = match b.role {
        Role::Pool => String::new(),
        Role::Fallback => {
            " A backup server: new flows go here when no pool backend can take them.".into()
        }
        Role::Maintenance => format!(
            " New flows go here while `steer-ctl maintenance {} on` (never for a failure).",
            s.name
        ),
    };
    comment(t, &format!("{}.{role}", b.origin));
    t.push_str("[[service.backend]]\n");
    let _ = writeln!(t, "name = {}", q(&b.name));
    let _ = writeln!(t, "address = {}", q(&b.address.to_string()));
    if let Some(p) = b.port {
        let _ = writeln!(t, "port = {p}");
    }
    if let Some(w) = b.weight {
        let _ = writeln!(t, "weight = {w}");
    }
    match b.role {
        Role::Pool => {}
        r => {
            let _ = writeln!(t, "role = {}", q(r.as_str()));
        }
    }
    let over = overrides(&s.check, &b.check, b, s.port);
    if !over.is_empty() {
        let kv: Vec<String> = over.iter().map(|(k, v)| format!("{k} = {v}")).collect();
        let _ = writeln!(t, "check = {{ {} }}", kv.join(", "));
    }
}

/// Every field of a check as TOML values.
fn all(c: &Check) -> Vec<(&'static str, String)> {
    let d = |d: crate::config::Dur| q(&humane(d.0));
    let mut v = vec![("type", q(c.kind.as_str()))];
    if let Some(p) = c.port {
        v.push(("port", p.to_string()));
    }
    let method = match c.method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
    };
    v.push(("method", q(method)));
    v.push(("path", q(&c.path)));
    if let Some(h) = &c.host {
        v.push(("host", q(h)));
    }
    let status = if c.status.0 == c.status.1 {
        c.status.0.to_string()
    } else {
        q(&format!("{}-{}", c.status.0, c.status.1))
    };
    v.push(("status", status));
    if let Some(b) = &c.body {
        v.push(("body", q(b)));
    }
    v.push(("interval", d(c.interval)));
    v.push(("fastinterval", d(c.fastinterval)));
    v.push(("downinterval", d(c.downinterval)));
    v.push(("timeout", d(c.timeout)));
    v.push(("rise", c.rise.to_string()));
    v.push(("fall", c.fall.to_string()));
    v
}

const HTTP_ONLY: &[&str] = &["method", "path", "host", "status", "body"];

/// The fields of a check worth writing for its kind.
fn shown(c: &Check) -> Vec<(&'static str, String)> {
    match c.kind {
        CheckKind::None => vec![("type", q("none"))],
        CheckKind::Tcp => all(c)
            .into_iter()
            .filter(|(k, _)| !HTTP_ONLY.contains(k))
            .collect(),
        CheckKind::Http => all(c),
    }
}

/// What a backend's check changes of its service's.
fn overrides(svc: &Check, own: &Check, b: &Backend, port: u16) -> Vec<(&'static str, String)> {
    if own == svc {
        return Vec::new();
    }
    if own.kind == CheckKind::None {
        return vec![("type", q("none"))];
    }
    let base = all(svc);
    let mut out: Vec<(&'static str, String)> = shown(own)
        .into_iter()
        .filter(|kv| !base.contains(kv))
        .collect();
    // An absent Host is the backend's address; the service's would apply otherwise.
    if own.kind == CheckKind::Http && own.host.is_none() && svc.host.is_some() {
        out.push(("host", q(&b.address.to_string())));
    }
    // Checks on the port the backend serves: the service's `port` would apply otherwise.
    if own.port.is_none() && svc.port.is_some() {
        out.push(("port", b.port.unwrap_or(port).to_string()));
    }
    out
}

fn list_lines(lines: &[usize]) -> String {
    match lines {
        [one] => format!("line {one}"),
        many => format!(
            "lines {}",
            many.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `text` as `# ` lines of at most `WIDTH` columns.
fn comment(t: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > WIDTH && line.len() > 1 {
            t.push_str(&line);
            t.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    t.push_str(&line);
    t.push('\n');
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
