//! Translations of configurations on the patterns users bring (a server doubled as its own
//! backup on a status port, a maintenance site, checks only with `observe layer7`) and of the
//! haproxy features around them. Every translation must pass steer's own `config check`.

use std::{net::IpAddr, path::Path, time::Duration};

use super::*;
use crate::{
    config::{BackendCfg, Check, CheckKind, Config, Dur, HttpMethod, ServiceCfg, StatusRange},
    model::{Mode, Role},
};

/// The config text without its first newline: line 1 is the first line written.
fn cfg(s: &str) -> &str {
    s.strip_prefix('\n').unwrap_or(s)
}

/// Imports `text` and loads the result as `steer-ctl config check` does.
fn import_ok(text: &str) -> (Import, Config) {
    let imp = match import(cfg(text)) {
        Ok(i) => i,
        Err(e) => panic!("import failed: {e}"),
    };
    match Config::parse(&imp.toml, Path::new("imported.toml")) {
        Ok(c) => (imp, c),
        Err(e) => panic!(
            "the imported steer.toml does not pass config check:\n{e}\n---\n{}",
            imp.toml
        ),
    }
}

fn skipped_lines(imp: &Import) -> Vec<usize> {
    imp.skipped.iter().map(|n| n.line).collect()
}

fn notice_lines(imp: &Import) -> Vec<usize> {
    imp.notices.iter().map(|n| n.line).collect()
}

/// The not-translated entry of `line`.
fn skipped(imp: &Import, line: usize) -> &str {
    match imp.skipped.iter().find(|n| n.line == line) {
        Some(n) => &n.message,
        None => panic!("line {line} is not listed as skipped: {:#?}", imp.skipped),
    }
}

fn notice(imp: &Import, line: usize) -> &str {
    match imp.notices.iter().find(|n| n.line == line) {
        Some(n) => &n.message,
        None => panic!("line {line} has no notice: {:#?}", imp.notices),
    }
}

fn svc<'a>(c: &'a Config, name: &str) -> &'a ServiceCfg {
    match c.service(name) {
        Some(s) => s,
        None => panic!(
            "no service {name:?}; there are {:?}",
            c.services
                .iter()
                .map(|s| s.name.get_ref())
                .collect::<Vec<_>>()
        ),
    }
}

fn be<'a>(s: &'a ServiceCfg, name: &str) -> &'a BackendCfg {
    match s.backends.iter().find(|b| b.name.get_ref() == name) {
        Some(b) => b,
        None => panic!(
            "service {} has no backend {name:?}; it has {:?}",
            s.name.get_ref(),
            s.backends
                .iter()
                .map(|b| b.name.get_ref())
                .collect::<Vec<_>>()
        ),
    }
}

fn names(s: &ServiceCfg) -> Vec<&str> {
    s.backends
        .iter()
        .map(|b| b.name.get_ref().as_str())
        .collect()
}

/// The check a backend gets (the service's with its overrides), `None` for no checks.
fn check(s: &ServiceCfg, b: &str) -> Option<Check> {
    s.check_of(be(s, b))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

fn ms(n: u64) -> Dur {
    Dur(Duration::from_millis(n))
}

// --- The three patterns -------------------------------------------------------------------

/// Each server is listed twice: checked on a status port (which the deploy makes fail on
/// purpose) and as a `backup` of itself checked on its service port.
const DOUBLED_BACKUP: &str = r"
backend app
    balance roundrobin
    server app1 10.1.0.11:8080 check port 9001 inter 3000
    server app2 10.1.0.12:8080 check port 9002 inter 3000
    server app1-bk 10.1.0.11:8080 check inter 3000 backup
    server app2-bk 10.1.0.12:8080 check inter 3000 backup

frontend www
    bind 10.1.0.10:8080
    default_backend app
";

#[test]
fn a_server_doubled_as_its_own_backup_keeps_the_status_port_check_and_drops_the_double() {
    let (imp, c) = import_ok(DOUBLED_BACKUP);
    assert_eq!(c.services.len(), 1);
    let s = svc(&c, "www");
    assert_eq!(*s.vip.get_ref(), ip("10.1.0.10"));
    assert_eq!(s.port, 8080);
    assert_eq!(s.mode, Mode::Nat, "servers as they were behind haproxy");
    assert_eq!(
        names(s),
        ["app1", "app2"],
        "no fallback: the backups are the same servers"
    );
    assert_eq!(*be(s, "app1").address.get_ref(), ip("10.1.0.11"));
    assert_eq!(*be(s, "app2").address.get_ref(), ip("10.1.0.12"));
    let a1 = check(s, "app1").expect("app1 is checked");
    assert_eq!(a1.kind, CheckKind::Tcp);
    assert_eq!(a1.port, Some(9001), "checked on the status port");
    assert_eq!(a1.interval, secs(3), "inter 3000 is milliseconds");
    assert_eq!(a1.downinterval, secs(3));
    assert_eq!(a1.timeout, secs(3));
    assert_eq!((a1.rise, a1.fall), (2, 3), "haproxy's defaults");
    assert_eq!(check(s, "app2").map(|c| c.port), Some(Some(9002)));
    assert_eq!(skipped_lines(&imp), [2, 5, 6]);
    assert!(skipped(&imp, 2).contains("Maglev"));
    assert!(skipped(&imp, 5).contains("backup of server app1 (line 3)"));
    assert!(skipped(&imp, 5).contains("steer-ctl drain app1"));
    assert!(skipped(&imp, 6).contains("backup of server app2 (line 4)"));
    assert!(notice_lines(&imp).is_empty(), "{:?}", imp.notices);
    assert!(imp.toml.contains("# backend app, server app1 (line 3)."));
}

/// Two server processes on one host (ports 7000 and 7001), each also a `backup` of itself:
/// steer's backends are addresses, so the second and its backup are listed with why, and a
/// backup is matched to the server on its own port.
const ONE_HOST_TWO_PORTS: &str = r"
frontend www
    bind 10.1.1.10:80
    default_backend app
backend app
    server a 10.1.1.11:7000 check port 7100
    server b 10.1.1.11:7001 check port 7101
    server a-bk 10.1.1.11:7000 check backup
    server b-bk 10.1.1.11:7001 check backup
";

#[test]
fn servers_sharing_an_address_on_other_ports_are_listed_with_the_right_twin() {
    let (imp, c) = import_ok(ONE_HOST_TWO_PORTS);
    let s = svc(&c, "www");
    assert_eq!(names(s), ["a"]);
    assert_eq!(skipped_lines(&imp), [6, 7, 8]);
    assert!(
        skipped(&imp, 6)
            .contains("the address 10.1.1.11 of server a (line 5), on port 7001 instead of 7000"),
        "{}",
        skipped(&imp, 6)
    );
    assert!(skipped(&imp, 7).contains("backup of server a (line 5)"));
    // b-bk is b's twin, not a's: b is not a backend, so it is told apart by its port.
    assert!(
        skipped(&imp, 8).contains("on port 7001 instead of 7000"),
        "{}",
        skipped(&imp, 8)
    );
}

/// A site whose maintenance page is a backend of backup servers only, chosen when the
/// application's servers are all down.
const MAINTENANCE: &str = r"
defaults
    mode http
    timeout connect 4s
    timeout check 2s
    option httpchk HEAD /ping
frontend portal
    bind 10.2.0.10:443 ssl crt /etc/haproxy/portal.pem
    bind 10.2.0.10:80
    use_backend portal_maint if { nbsrv(portal_app) lt 1 }
    default_backend portal_app
backend portal_app
    server p1 10.2.0.11:80 check inter 5s
    server p2 10.2.0.12:80 check inter 5s
backend portal_maint
    server sorry 10.2.0.50:80 backup
";

#[test]
fn a_maintenance_site_becomes_the_maintenance_backend() {
    let (imp, c) = import_ok(MAINTENANCE);
    assert_eq!(c.services.len(), 1, "the TLS bind is not translated");
    let s = svc(&c, "portal");
    assert_eq!((*s.vip.get_ref(), s.port), (ip("10.2.0.10"), 80));
    assert_eq!(s.mode, Mode::Nat);
    assert_eq!(names(s), ["p1", "p2", "sorry"]);
    let sorry = be(s, "sorry");
    assert_eq!(sorry.role(), Role::Maintenance);
    assert_eq!(*sorry.address.get_ref(), ip("10.2.0.50"));
    assert_eq!(
        check(s, "sorry"),
        None,
        "no `check` on it: always up, as in haproxy"
    );
    assert_eq!(be(s, "p1").role(), Role::Pool);
    let p1 = check(s, "p1").expect("p1 is checked");
    assert_eq!(p1.kind, CheckKind::Http);
    assert_eq!(p1.method, HttpMethod::Head);
    assert_eq!(p1.path, "/ping");
    assert_eq!(
        p1.status,
        StatusRange(200, 399),
        "haproxy's default: 2xx and 3xx"
    );
    assert_eq!(p1.interval, secs(5));
    // haproxy: connect within min(4s, 5s), then 2s for the answer: 6s, over steer's bound.
    assert_eq!(p1.timeout, secs(5));
    assert_eq!(skipped_lines(&imp), [2, 7, 9]);
    assert!(skipped(&imp, 2).contains("layer 4"));
    assert!(skipped(&imp, 7).contains("TLS"));
    assert!(skipped(&imp, 9).contains("the condition is not translated"));
    assert_eq!(notice_lines(&imp), [4, 9]);
    assert!(notice(&imp, 4).contains("6s"));
    assert!(notice(&imp, 9).contains("steer-ctl maintenance SERVICE on"));
}

/// Checks only, with passive health on real traffic (`observe layer7 … mark-down`), servers on
/// another port than the bind's, and no VIP on the bind.
const CHECKS_ONLY: &str = r"
global
    maxconn 4096
    log /dev/log local0
defaults
    mode http
    timeout connect 3000
    timeout client 30s
    default-server inter 1s fall 2 rise 6 downinter 20s
frontend api
    bind *:8080
    default_backend api_servers
backend api_servers
    balance leastconn
    option httpchk GET /status
    server a1 10.3.0.21:9090 check observe layer7 on-error mark-down error-limit 5
    server a2 10.3.0.22:9090 check observe layer7 on-error mark-down error-limit 5
";

#[test]
fn checks_only_with_observe_layer7_become_a_nat_service_with_passive_health() {
    let (imp, c) = import_ok(CHECKS_ONLY);
    let s = svc(&c, "api");
    assert_eq!(
        *s.vip.get_ref(),
        ip("192.0.2.1"),
        "a documented placeholder"
    );
    assert!(imp.toml.contains("# TODO: a placeholder"));
    assert_eq!(s.port, 8080);
    assert_eq!(s.mode, Mode::Nat, "servers on 9090 and observe");
    assert_eq!(s.observe, Some(true));
    assert_eq!(s.error_limit, Some(5));
    assert_eq!(s.syn_timeout, Some(secs(3)), "timeout connect 3000");
    assert_eq!(be(s, "a1").port, Some(9090));
    assert_eq!(be(s, "a2").port, Some(9090));
    let k = check(s, "a1").expect("checked");
    assert_eq!(
        (k.kind, k.method, k.path.as_str()),
        (CheckKind::Http, HttpMethod::Get, "/status")
    );
    assert_eq!(k.interval, secs(1));
    assert_eq!(k.fastinterval, secs(1), "fastinter defaults to inter");
    assert_eq!(k.downinterval, secs(20));
    assert_eq!(k.timeout, secs(1));
    assert_eq!((k.rise, k.fall), (6, 2));
    assert_eq!(check(s, "a2"), Some(k));
    assert_eq!(skipped_lines(&imp), [2, 3, 5, 7, 13, 15, 16]);
    assert!(skipped(&imp, 15).contains("observe layer7"));
    assert!(skipped(&imp, 15).contains("not HTTP responses"));
    assert_eq!(notice_lines(&imp), [10]);
    assert!(notice(&imp, 10).contains("192.0.2.1"));
}

#[test]
fn observe_with_the_default_on_error_is_not_translated() {
    let text = r"
frontend f
    bind 10.3.1.10:80
    default_backend b
backend b
    server a 10.3.1.11:8080 check observe layer4
    server b 10.3.1.12:8080 check observe layer4 on-error fastinter
";
    let (imp, c) = import_ok(text);
    let s = svc(&c, "f");
    assert_eq!(s.mode, Mode::Nat, "servers on another port");
    assert_eq!(
        s.observe,
        Some(false),
        "haproxy did not mark down: steer's default is off"
    );
    assert_eq!(skipped_lines(&imp), [5, 6]);
    assert!(skipped(&imp, 5).contains("on-error fail-check"));
    assert!(skipped(&imp, 6).contains("on-error fastinter"));
}

// --- Weights, defaults, default-server ----------------------------------------------------

#[test]
fn weights_and_default_server_of_defaults_and_of_the_section() {
    let text = r"
defaults
    mode tcp
    default-server check inter 4s weight 10
    timeout check 1s
listen db
    bind 10.4.0.10:5432
    default-server fall 5
    server w1 10.4.0.11:5432 weight 30
    server w2 10.4.0.12
    server w3 10.4.0.13:5432 weight 0 no-check
";
    let (imp, c) = import_ok(text);
    let s = svc(&c, "db");
    assert_eq!(
        (*s.vip.get_ref(), s.port, s.mode),
        (ip("10.4.0.10"), 5432, Mode::Nat)
    );
    assert_eq!(names(s), ["w1", "w2", "w3"]);
    assert_eq!(be(s, "w1").weight, 30);
    assert_eq!(be(s, "w2").weight, 10, "from defaults' default-server");
    assert_eq!(be(s, "w3").weight, 0);
    let k = check(s, "w1").expect("checked by default-server");
    assert_eq!(
        (k.kind, k.interval, k.fall, k.rise),
        (CheckKind::Tcp, secs(4), 5, 2)
    );
    assert_eq!(
        k.timeout,
        secs(4),
        "a TCP check connects within min(connect, inter)"
    );
    assert_eq!(check(s, "w2"), Some(k));
    assert_eq!(check(s, "w3"), None, "no-check");
    assert!(imp.skipped.is_empty(), "{:#?}", imp.skipped);
}

/// Each `defaults` section starts afresh; a proxy takes the last one before it.
const INHERITANCE: &str = r"
defaults
    option httpchk GET /health HTTP/1.1\r\nHost:\ www.example.com
    http-check expect status 200
    default-server inter 3s
frontend a
    bind 10.5.0.10:80
    default_backend web
backend web
    server w1 10.5.0.11:80 check
backend plain
    no option httpchk
    server p1 10.5.0.21:80 check
defaults
    timeout connect 1s
frontend b
    bind 10.5.0.20:80
    default_backend plain
backend late
    option httpchk
    server l1 10.5.0.31:80 check
";

#[test]
fn defaults_are_inherited_until_the_next_defaults_section() {
    let (imp, c) = import_ok(INHERITANCE);
    let a = svc(&c, "a");
    let k = check(a, "w1").expect("checked");
    assert_eq!(k.kind, CheckKind::Http);
    assert_eq!((k.method, k.path.as_str()), (HttpMethod::Get, "/health"));
    assert_eq!(
        k.host.as_deref(),
        Some("www.example.com"),
        "Host from the version string"
    );
    assert_eq!(k.status, StatusRange(200, 200));
    assert_eq!(k.interval, secs(3));
    let b = svc(&c, "b");
    assert_eq!(names(b), ["p1"]);
    let p = check(b, "p1").expect("checked");
    assert_eq!(p.kind, CheckKind::Tcp, "no option httpchk");
    assert_eq!(p.interval, secs(3), "plain came before the second defaults");
    // `late` comes after the second defaults (inter back to 2s) and no frontend uses it.
    let late = svc(&c, "late");
    assert_eq!((*late.vip.get_ref(), late.port), (ip("192.0.2.1"), 80));
    let l = check(late, "l1").expect("checked");
    assert_eq!(
        (l.kind, l.method, l.path.as_str()),
        (CheckKind::Http, HttpMethod::Get, "/")
    );
    assert_eq!(l.interval, secs(2));
    assert_eq!(
        l.status,
        StatusRange(200, 399),
        "the first defaults' expect is gone"
    );
    assert_eq!(skipped_lines(&imp), [14]);
    assert!(skipped(&imp, 14).contains("timeout connect 1s"));
    assert_eq!(notice_lines(&imp), [18, 19]);
    assert!(notice(&imp, 18).contains("placeholder VIP 192.0.2.1"));
    assert!(notice(&imp, 19).contains("OPTIONS"));
}

// --- HTTP checks ----------------------------------------------------------------------------

#[test]
fn http_check_send_and_expect_rstatus() {
    let text = r"
backend api
    option httpchk
    http-check send meth HEAD uri /healthz ver HTTP/1.1 hdr Host api.internal hdr X-Probe 1
    http-check expect rstatus ^2
    server a 10.6.0.11:80 check fastinter 500 downinter 10s rise 3 fall 4
frontend f
    bind 10.6.0.10:80
    default_backend api
";
    let (imp, c) = import_ok(text);
    let k = check(svc(&c, "f"), "a").expect("checked");
    assert_eq!(k.kind, CheckKind::Http);
    assert_eq!(k.method, HttpMethod::Head);
    assert_eq!(k.path, "/healthz");
    assert_eq!(k.host.as_deref(), Some("api.internal"));
    assert_eq!(k.status, StatusRange(200, 299));
    assert_eq!(
        (k.interval, k.fastinterval, k.downinterval),
        (secs(2), ms(500), secs(10))
    );
    assert_eq!((k.rise, k.fall), (3, 4));
    assert_eq!(skipped_lines(&imp), [3]);
    assert!(skipped(&imp, 3).contains("hdr X-Probe 1"));
    assert!(
        notice_lines(&imp).is_empty(),
        "the method is set: {:?}",
        imp.notices
    );
}

#[test]
fn http_check_expectations_steer_cannot_say_are_listed() {
    let text = r"
frontend f
    bind 10.6.1.10:80
    default_backend b
backend b
    option httpchk GET /ready
    http-check expect string ready
    http-check expect rstatus ^(200|302)$
    http-check expect ! status 500
    http-check disable-on-404
    server a 10.6.1.11:80 check
";
    let (imp, c) = import_ok(text);
    let k = check(svc(&c, "f"), "a").expect("checked");
    assert_eq!(k.body.as_deref(), Some("ready"));
    assert_eq!(
        k.status,
        StatusRange(200, 399),
        "no expectation steer can say: the default"
    );
    assert_eq!(skipped_lines(&imp), [7, 8, 9]);
    assert!(skipped(&imp, 7).contains("^(200|302)$"));
    assert!(skipped(&imp, 8).contains("negated"));
}

#[test]
fn check_settings_no_checked_server_uses_are_listed_as_unused() {
    let text = r"
frontend f
    bind 10.6.2.10:80
    default_backend b
backend b
    http-check expect status 204
    timeout check 3s
    server a 10.6.2.11:80
";
    let (imp, c) = import_ok(text);
    assert_eq!(check(svc(&c, "f"), "a"), None, "no `check`: always up");
    assert_eq!(skipped_lines(&imp), [5, 6]);
    assert!(skipped(&imp, 5).contains("used by no translated service"));
}

// --- Servers --------------------------------------------------------------------------------

#[test]
fn backup_servers_make_one_fallback() {
    let text = r"
frontend f
    bind 10.10.0.10:80
    default_backend b
backend b
    server s1 10.10.0.11:80 check
    server s2 10.10.0.12:80 check weight 3
    server spare1 10.10.0.50:80 check backup
    server spare2 10.10.0.51:80 check backup
";
    let (imp, c) = import_ok(text);
    let s = svc(&c, "f");
    assert_eq!(names(s), ["s1", "s2", "spare1"]);
    assert_eq!(be(s, "spare1").role(), Role::Fallback);
    assert_eq!(*be(s, "spare1").address.get_ref(), ip("10.10.0.50"));
    assert_eq!(be(s, "s2").weight, 3);
    assert_eq!(skipped_lines(&imp), [8]);
    assert!(skipped(&imp, 8).contains("one fallback backend per service (server spare1, line 7)"));
}

#[test]
fn host_names_and_unusable_addresses_are_listed() {
    let text = r"
frontend f
    bind 10.11.0.10:80
    default_backend b
backend b
    server ok 10.11.0.11:80 check
    server named web2.example.com:80 check
    server sock unix@/run/app.sock
    server v6 [2001:db8::12]:80 check
    server dup 10.11.0.11:80 check disabled
    server off 10.11.0.13:80 check disabled
";
    let (imp, c) = import_ok(text);
    let s = svc(&c, "f");
    assert_eq!(names(s), ["ok", "off"]);
    assert_eq!(skipped_lines(&imp), [6, 7, 8, 9, 10]);
    assert!(skipped(&imp, 6).contains("\"web2.example.com\" is a host name"));
    assert!(skipped(&imp, 7).contains("not an IP address"));
    assert!(skipped(&imp, 8).contains("IPv6"));
    assert!(skipped(&imp, 9).contains("same address 10.11.0.11 as server ok (line 5)"));
    assert!(skipped(&imp, 10).contains("steer-ctl maint off"));
}

#[test]
fn a_server_on_another_port_makes_a_nat_service() {
    let text = r"
listen app
    bind 10.12.0.10:80
    server a 10.12.0.11:8080 check port 8081 inter 2s
    server b 10.12.0.12 check
";
    let (imp, c) = import_ok(text);
    let s = svc(&c, "app");
    assert_eq!(s.mode, Mode::Nat);
    assert_eq!(be(s, "a").port, Some(8080));
    assert_eq!(
        be(s, "b").port,
        None,
        "no port: the client's, the service's"
    );
    assert_eq!(check(s, "a").and_then(|k| k.port), Some(8081));
    assert_eq!(
        check(s, "b").and_then(|k| k.port),
        Some(80),
        "its own port, not a's 8081"
    );
    assert_eq!(s.observe, Some(false));
    assert!(imp.skipped.is_empty(), "{:#?}", imp.skipped);
}

// --- Frontends ------------------------------------------------------------------------------

#[test]
fn acl_use_backend_is_listed_and_its_backend_gets_a_service_of_its_own() {
    let text = r"
frontend web
    bind 10.8.0.10:80
    acl is_api path_beg /api
    use_backend api if is_api
    default_backend site
backend site
    server s1 10.8.0.11:80 check
backend api
    server a1 10.8.0.21:80 check
";
    let (imp, c) = import_ok(text);
    let web = svc(&c, "web");
    assert_eq!(names(web), ["s1"]);
    let api = svc(&c, "api");
    assert_eq!((*api.vip.get_ref(), api.port), (ip("192.0.2.1"), 80));
    assert_eq!(names(api), ["a1"]);
    assert_eq!(skipped_lines(&imp), [3, 4]);
    assert!(skipped(&imp, 3).contains("ACLs"));
    assert!(skipped(&imp, 4).contains("use_backend api if is_api: steer cannot choose"));
    assert_eq!(notice_lines(&imp), [8]);
    assert!(notice(&imp, 8).contains("placeholder VIP 192.0.2.1"));
}

#[test]
fn a_default_backend_that_does_not_exist_is_listed() {
    let text = r"
frontend f
    bind 10.9.0.10:80
    default_backend nope
backend other
    server o 10.9.0.11:80
";
    let (imp, c) = import_ok(text);
    assert_eq!(c.services.len(), 1);
    let other = svc(&c, "other");
    assert_eq!(check(other, "o"), None);
    assert_eq!(skipped_lines(&imp), [1, 3]);
    assert!(skipped(&imp, 3).contains("no backend or listen section is named \"nope\""));
    assert!(skipped(&imp, 1).contains("frontend f"));
}

#[test]
fn several_binds_make_several_services_with_unique_names() {
    let text = r"
frontend web
    bind :80
    bind 10.13.0.10:80,10.13.0.11:80
    bind :::80 v4v6
    bind 10.13.0.12:8000-8010
    default_backend b
backend b
    server s1 10.13.0.21:80 check
";
    let (imp, c) = import_ok(text);
    let got: Vec<(&str, IpAddr, u16)> = c
        .services
        .iter()
        .map(|s| (s.name.get_ref().as_str(), *s.vip.get_ref(), s.port))
        .collect();
    assert_eq!(
        got,
        [
            ("web-80", ip("192.0.2.1"), 80),
            ("web-80-2", ip("10.13.0.10"), 80),
            ("web-80-3", ip("10.13.0.11"), 80),
        ]
    );
    assert_eq!(names(svc(&c, "web-80-3")), ["s1-web-80-3"]);
    assert_eq!(skipped_lines(&imp), [4, 5]);
    assert!(
        skipped(&imp, 4).contains("as the bind of line 2"),
        "{}",
        skipped(&imp, 4)
    );
    assert!(skipped(&imp, 5).contains("port range"));
    assert!(notice(&imp, 2).contains("192.0.2.1"));
    assert!(notice(&imp, 8).contains("a backend of 3 services, as s1 (web-80), s1-80 (web-80-2)"));
}

#[test]
fn interface_on_a_bind_names_the_datapath_interface() {
    let (_, c) = import_ok(
        r"
listen l
    bind 10.14.0.10:80 interface ens3
    server s 10.14.0.11:80
",
    );
    assert_eq!(c.daemon.interfaces, ["ens3"]);
}

#[test]
fn without_an_interface_the_output_says_to_set_one() {
    let (imp, c) = import_ok(DOUBLED_BACKUP);
    assert_eq!(c.daemon.interfaces, ["eth0"]);
    assert!(imp.toml.contains("# TODO: the interfaces"));
}

// --- Not haproxy ----------------------------------------------------------------------------

#[test]
fn an_empty_file_or_another_format_is_an_error() {
    assert!(matches!(import(""), Err(ImportError::Empty)));
    assert!(matches!(
        import("# a comment\n\n   \n"),
        Err(ImportError::Empty)
    ));
    match import("[[service]]\nname = \"web\"\n") {
        Err(e @ ImportError::NotHaproxy { line: 1, .. }) => {
            let m = e.to_string();
            assert!(m.contains("expected an haproxy.cfg"), "{m}");
            assert!(m.contains("[[service]]"), "{m}");
        }
        other => panic!("expected NotHaproxy at line 1, got {other:?}"),
    }
    match import("global\n    maxconn 100\nfrontend f\n    bind 10.0.0.1:80\n") {
        Err(ImportError::Nothing { skipped }) => {
            let lines: Vec<usize> = skipped.iter().map(|n| n.line).collect();
            assert_eq!(lines, [2, 3]);
        }
        other => panic!("expected Nothing, got {other:?}"),
    }
}

#[test]
fn lines_it_cannot_read_are_listed() {
    let text = r#"
frontend f
    bind 10.15.0.10:80
    http-request set-header X-A "unclosed
    default_backend b
backend b
    server s 10.15.0.11:80
"#;
    let (imp, _) = import_ok(text);
    assert_eq!(skipped_lines(&imp), [3]);
    assert!(skipped(&imp, 3).contains("not closed"));
}

#[test]
fn every_line_is_used_or_listed() {
    // Each non-blank line of each pattern is either cited in the output or listed.
    for text in [DOUBLED_BACKUP, MAINTENANCE, CHECKS_ONLY, INHERITANCE] {
        let (imp, _) = import_ok(text);
        for (i, line) in cfg(text).lines().enumerate() {
            let no = i + 1;
            let header = ["frontend", "backend", "listen", "defaults", "global"]
                .iter()
                .any(|h| line.starts_with(h));
            if line.trim().is_empty() || header {
                continue;
            }
            let cited = imp.toml.contains(&format!("line {no})"))
                || imp.toml.contains(&format!("line {no}."))
                || imp.toml.contains(&format!(" {no},"))
                || imp.toml.contains(&format!(" {no}."))
                || imp.toml.contains(&format!(" {no})"));
            let listed = imp.skipped.iter().chain(&imp.notices).any(|n| n.line == no);
            assert!(
                cited || listed,
                "line {no} {line:?} is neither used nor listed:\n{}",
                imp.toml
            );
        }
    }
}
