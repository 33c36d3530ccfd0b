//! From haproxy's proxies to steer's services: a service per bind address of a frontend (or
//! listen), with the servers of the backend its connections go to; backup servers become the
//! service's fallback, a backend of backup servers only its maintenance backend. What cannot
//! be said in steer.toml is noted with its line.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use super::{
    lex::{humane, Host, Port},
    parse::{At, ChkProto, Kind, Layer, OnError, Parsed, Proxy, Server, Settings},
    Notes,
};
use crate::{
    config::{Check, CheckKind, Dur, HttpMethod, StatusRange},
    model::Role,
};

/// The steer config to write.
#[derive(Debug)]
pub struct Plan {
    /// From `bind … interface X`; empty: a placeholder is written.
    pub interfaces: Vec<At<String>>,
    pub services: Vec<Service>,
}

#[derive(Debug)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    /// The haproxy.cfg gave no address (`bind *:80`, or no bind at all): `vip` is a
    /// placeholder.
    pub placeholder: bool,
    pub port: u16,
    pub nat: bool,
    /// Where it came from: `frontend web (line 3)`, `bind *:80 (line 4)`, ….
    pub origin: Vec<String>,
    pub check: Check,
    /// The lines the service's check comes from.
    pub check_lines: Vec<usize>,
    pub observe: Observe,
    /// With observe: haproxy's `timeout connect`.
    pub syn_timeout: Option<At<Duration>>,
    pub backends: Vec<Backend>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Observe {
    /// Not written (DSR, or no checks).
    Unset,
    /// NAT with checks, but haproxy did not observe: written `false`, as haproxy had it.
    Off,
    On {
        error_limit: u32,
        lines: Vec<usize>,
    },
}

#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub address: IpAddr,
    /// NAT: the server's port, when it is not the service's.
    pub port: Option<u16>,
    pub weight: Option<u32>,
    pub role: Role,
    pub check: Check,
    /// `server web1 (line 19)`.
    pub origin: String,
}

/// haproxy's check defaults.
const INTER: Duration = Duration::from_secs(2);
const RISE: u32 = 2;
const FALL: u32 = 3;
const ERROR_LIMIT: u32 = 10;
/// steer's bounds (config.rs).
const CHECK_MIN: Duration = Duration::from_millis(10);
const CHECK_MAX: Duration = Duration::from_secs(3600);
const COUNT_MAX: u32 = 100;
const ERROR_LIMIT_MAX: u32 = 1000;
const SYN_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const SYN_TIMEOUT_MAX: Duration = Duration::from_secs(60);
const NAME_MAX: usize = 64;

/// A server as a steer backend, before its name is chosen.
struct Candidate<'a> {
    server: &'a Server,
    owner: &'a Proxy,
    address: IpAddr,
    port: u16,
    role: Role,
}

struct Tr<'a> {
    notes: &'a mut Notes,
    /// Backends and listens by name.
    backends: BTreeMap<&'a str, &'a Proxy>,
    /// Those a service was made from.
    used: BTreeSet<*const Proxy>,
    service_names: BTreeSet<String>,
    backend_names: BTreeSet<String>,
    /// VIP and port of each service so far, with its name and line.
    listeners: BTreeMap<(IpAddr, u16), (String, usize)>,
    /// Every address written in the file: never a placeholder.
    written: BTreeSet<IpAddr>,
    /// Lines used or noted so far: the other consumed lines are listed as unused.
    handled: BTreeSet<usize>,
    /// The backends each server became, by its line.
    made: BTreeMap<usize, Made>,
    services: Vec<Service>,
}

/// A service to make.
struct Want {
    /// Its name, before it is made unique.
    base: String,
    host: Host,
    port: u16,
    /// The line of the bind (or of the backend, for a standalone one).
    line: usize,
    origin: Vec<String>,
    /// A backend no frontend uses (its placeholder VIP is noted apart).
    standalone: bool,
}

/// The backends a server became.
struct Made {
    server: String,
    disabled: bool,
    /// Backend and service names.
    backends: Vec<(String, String)>,
}

/// Where a frontend's connections go.
struct Route<'a> {
    proxy: &'a Proxy,
    /// The line that sends them there (`use_backend`, `default_backend`), or the listen's.
    line: usize,
    what: String,
}

pub fn translate(parsed: &Parsed, notes: &mut Notes) -> Plan {
    let mut written = BTreeSet::new();
    for p in &parsed.proxies {
        for b in &p.binds {
            if let Host::Ip(ip) = b.host {
                written.insert(ip);
            }
        }
        for s in &p.servers {
            if let Host::Ip(ip) = s.host {
                written.insert(ip);
            }
        }
    }
    let mut tr = Tr {
        notes,
        backends: BTreeMap::new(),
        used: BTreeSet::new(),
        service_names: BTreeSet::new(),
        backend_names: BTreeSet::new(),
        listeners: BTreeMap::new(),
        written,
        handled: BTreeSet::new(),
        made: BTreeMap::new(),
        services: Vec::new(),
    };
    for p in parsed.proxies.iter().filter(|p| p.is_backend()) {
        if let Some(first) = tr.backends.get(p.name.as_str()) {
            tr.notes.skip(
                p.line,
                format!(
                    "{} {}: a backend of that name is already at line {}",
                    p.kind.as_str(),
                    p.name,
                    first.line
                ),
            );
        } else {
            tr.backends.insert(&p.name, p);
        }
    }
    for p in parsed.proxies.iter().filter(|p| p.kind != Kind::Backend) {
        tr.frontend(p);
    }
    for p in parsed.proxies.iter().filter(|p| p.is_backend()) {
        let first = tr
            .backends
            .get(p.name.as_str())
            .is_some_and(|f| std::ptr::eq(*f, p));
        if first && !tr.used.contains(&(p as *const Proxy)) {
            tr.standalone(p);
        }
    }
    for (line, m) in std::mem::take(&mut tr.made) {
        let Made {
            server,
            disabled,
            backends: made,
        } = m;
        let cmds = |verb: &str| {
            made.iter()
                .map(|(b, _)| format!("`steer-ctl {verb} {b}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if made.len() > 1 {
            let each: Vec<String> = made.iter().map(|(b, s)| format!("{b} ({s})")).collect();
            tr.notice(
                line,
                format!(
                    "server {server} is a backend of {} services, as {}: a steer backend \
                     belongs to one service, so drain each ({})",
                    made.len(),
                    each.join(", "),
                    cmds("drain")
                ),
            );
        }
        if disabled {
            tr.skip(
                line,
                format!(
                    "server {server}: disabled: steer.toml holds no admin state; once the \
                     daemon runs, {} (admin states persist)",
                    cmds("maint")
                ),
            );
        }
    }
    for (line, what) in &parsed.consumed {
        if !tr.handled.contains(line) {
            let why = if what.starts_with("timeout connect") || what.starts_with("contimeout") {
                "steer makes no connection to servers for clients (they connect through it): \
                 this time is used only for checks with `timeout check`, and as syn_timeout \
                 with observe — neither applies here"
            } else {
                "used by no translated service (it applies to no server translated with \
                 `check`, or its section makes no service)"
            };
            tr.notes.skip(*line, format!("{what}: {why}"));
        }
    }
    for i in &parsed.interfaces {
        tr.handled.insert(i.line);
    }
    Plan {
        interfaces: parsed.interfaces.clone(),
        services: tr.services,
    }
}

/// `name` with what a steer name may not hold replaced by '-'.
fn sanitize(name: &str, fallback: &str) -> String {
    let mut n: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    // Room for a suffix that makes it unique.
    n.truncate(NAME_MAX - 16);
    if n.is_empty() || n == "." || n == ".." {
        fallback.into()
    } else {
        n
    }
}

/// `base`, or the first of `base-2`, `base-3`, … not in `taken`; taken from then on.
fn unique(taken: &mut BTreeSet<String>, base: &str) -> String {
    let mut name = base.to_string();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    taken.insert(name.clone());
    name
}

/// All of a backend's servers are `backup`: the maintenance-site pattern.
fn backups_only(p: &Proxy) -> bool {
    !p.servers.is_empty() && p.servers.iter().all(is_backup)
}

fn is_backup(s: &Server) -> bool {
    s.opts.backup.as_ref().is_some_and(|b| b.v)
}

fn is_checked(s: &Server) -> bool {
    s.opts.check.as_ref().is_some_and(|c| c.v)
}

impl<'a> Tr<'a> {
    fn skip(&mut self, line: usize, message: String) {
        self.handled.insert(line);
        self.notes.skip(line, message);
    }

    fn notice(&mut self, line: usize, message: String) {
        self.handled.insert(line);
        self.notes.notice(line, message);
    }

    /// Marks the lines a chosen server's settings come from as used.
    fn use_server(&mut self, s: &Server) {
        let o = &s.opts;
        let lines = [
            Some(s.line),
            o.check.as_ref().map(|x| x.line),
            o.port.as_ref().map(|x| x.line),
            o.inter.as_ref().map(|x| x.line),
            o.fastinter.as_ref().map(|x| x.line),
            o.downinter.as_ref().map(|x| x.line),
            o.rise.as_ref().map(|x| x.line),
            o.fall.as_ref().map(|x| x.line),
            o.weight.as_ref().map(|x| x.line),
            o.backup.as_ref().map(|x| x.line),
            o.disabled.as_ref().map(|x| x.line),
        ];
        self.handled.extend(lines.into_iter().flatten());
    }

    fn frontend(&mut self, fe: &'a Proxy) {
        let what = format!("{} {}", fe.kind.as_str(), fe.name);
        // The binds and rules of a frontend that makes no service are said by its entry.
        let own_lines: Vec<usize> = fe
            .binds
            .iter()
            .map(|b| b.line)
            .chain(fe.rules.iter().map(|r| r.line))
            .collect();
        if let Some(line) = fe.disabled {
            self.handled.extend(&own_lines);
            self.skip(
                line,
                format!("{what} is disabled (nothing listens on its binds)"),
            );
            return;
        }
        if fe.binds.is_empty() {
            if fe.kind == Kind::Frontend {
                self.skip(
                    fe.line,
                    format!("{what}: no bind line with an address and port that steer can serve"),
                );
            }
            // A listen without binds is a backend (translated on its own if nothing uses it).
            return;
        }
        let Some((primary, maint)) = self.route(fe) else {
            self.handled.extend(&own_lines);
            self.skip(
                fe.line,
                format!(
                    "{what}: its connections go to no backend steer can use (no default_backend \
                     or use_backend without a condition); so its binds make no service"
                ),
            );
            return;
        };
        self.used.insert(primary.proxy);
        self.handled.insert(primary.line);
        if let Some(m) = &maint {
            self.used.insert(m.proxy);
            self.handled.insert(m.line);
        }
        let multi = fe.binds.len() > 1;
        // Wildcard binds by port: `bind :80` and `bind :::80` are one service.
        let mut wild: BTreeMap<u16, usize> = BTreeMap::new();
        for b in &fe.binds {
            if let Host::Any { .. } = b.host {
                if let Some(first) = wild.get(&b.port) {
                    self.skip(
                        b.line,
                        format!(
                            "bind {}: every address of the host, as the bind of line {first} \
                             already: one service serves both",
                            b.text
                        ),
                    );
                    continue;
                }
                wild.insert(b.port, b.line);
            }
            let base = sanitize(&fe.name, "service");
            let base = if multi {
                format!("{base}-{}", b.port)
            } else {
                base
            };
            let mut origin = vec![
                format!("{what} (line {})", fe.line),
                format!("bind {} (line {})", b.text, b.line),
            ];
            if !std::ptr::eq(primary.proxy, fe) {
                origin.push(format!("{} (line {})", primary.what, primary.line));
            }
            if let Some(m) = &maint {
                origin.push(format!("maintenance: {} (line {})", m.what, m.line));
            }
            let want = Want {
                base,
                host: b.host.clone(),
                port: b.port,
                line: b.line,
                origin,
                standalone: false,
            };
            self.service(want, &primary, maint.as_ref());
        }
    }

    /// The backend a frontend sends its connections to, and its maintenance backend.
    fn route(&mut self, fe: &'a Proxy) -> Option<(Route<'a>, Option<Route<'a>>)> {
        let mut primary: Option<Route<'a>> = None;
        let mut maint: Option<Route<'a>> = None;
        let mut rules: Vec<(usize, &str, Option<&str>, &str)> = fe
            .rules
            .iter()
            .map(|r| (r.line, r.target.as_str(), r.cond.as_deref(), "use_backend"))
            .collect();
        if let Some(d) = &fe.settings.default_backend {
            rules.push((d.line, d.v.as_str(), None, "default_backend"));
        }
        for (line, target, cond, kw) in rules {
            let Some(&be) = self.backends.get(target) else {
                self.skip(
                    line,
                    format!(
                        "{kw} {target}: no backend or listen section is named {target:?}; not \
                         translated"
                    ),
                );
                continue;
            };
            let route = Route {
                proxy: be,
                line,
                what: format!("{kw} {target}"),
            };
            let maint_like = backups_only(be) && maint.is_none();
            match (cond, &primary) {
                (None, None) => primary = Some(route),
                (None, Some(p)) if !maint_like => self.skip(
                    line,
                    format!(
                        "{kw} {target}: never reached: line {} already sends every connection \
                         to {}",
                        p.line, p.proxy.name
                    ),
                ),
                (Some(c), _) if !maint_like => self.skip(
                    line,
                    format!(
                        "{kw} {target} {c}: steer cannot choose a backend by a condition (ACL); \
                         every connection to a VIP and port goes to one pool"
                    ),
                ),
                (cond, _) => {
                    if let Some(c) = cond {
                        self.skip(
                            line,
                            format!(
                                "{kw} {target} {c}: the condition is not translated: {target} \
                                 (backup servers only) becomes the maintenance backend, used \
                                 while `steer-ctl maintenance SERVICE on`"
                            ),
                        );
                    }
                    maint = Some(route);
                }
            }
        }
        if primary.is_none() && fe.kind == Kind::Listen && !fe.servers.is_empty() {
            primary = Some(Route {
                proxy: fe,
                line: fe.line,
                what: format!("listen {}", fe.name),
            });
        } else if fe.kind == Kind::Listen && !fe.servers.is_empty() {
            if let Some(p) = &primary {
                self.skip(
                    fe.line,
                    format!(
                        "listen {}: its own servers are never used: line {} sends every \
                         connection to {}",
                        fe.name, p.line, p.proxy.name
                    ),
                );
            }
        }
        // A maintenance backend alone is the pool (and its backups the fallback).
        if primary.is_none() {
            primary = maint.take();
        }
        let primary = primary?;
        if maint
            .as_ref()
            .is_some_and(|m| std::ptr::eq(m.proxy, primary.proxy))
        {
            maint = None;
        }
        if let Some(m) = &maint {
            self.notice(
                m.line,
                format!(
                    "{}: its servers are all backup, so it becomes the maintenance backend: \
                     steer sends new flows there only while `steer-ctl maintenance SERVICE on`, \
                     never because the servers of {} are down (for a failure, a backup server \
                     in {} becomes the fallback)",
                    m.what, primary.proxy.name, primary.proxy.name
                ),
            );
        }
        Some((primary, maint))
    }

    /// A backend no translated frontend uses: a service of its own on a placeholder VIP.
    fn standalone(&mut self, be: &'a Proxy) {
        let what = format!("{} {}", be.kind.as_str(), be.name);
        if be.servers.is_empty() {
            self.skip(
                be.line,
                format!("{what}: no server lines and no translated frontend uses it"),
            );
            return;
        }
        let port = be.servers.iter().find_map(|s| match (&s.host, s.port) {
            (Host::Ip(_), Port::One(p)) => Some(p),
            _ => None,
        });
        let Some(port) = port else {
            self.skip(
                be.line,
                format!(
                    "{what}: no translated frontend uses it, and none of its servers has an IP \
                     address and port to make a service of"
                ),
            );
            return;
        };
        let route = Route {
            proxy: be,
            line: be.line,
            what: what.clone(),
        };
        let v6 = be
            .servers
            .iter()
            .find_map(|s| match s.host {
                Host::Ip(ip) => Some(ip.is_ipv6()),
                _ => None,
            })
            .unwrap_or(false);
        self.used.insert(be);
        let want = Want {
            base: sanitize(&be.name, "service"),
            host: Host::Any { v6 },
            port,
            line: be.line,
            origin: vec![format!("{what} (line {}), used by no frontend", be.line)],
            standalone: true,
        };
        self.service(want, &route, None);
    }

    /// A placeholder VIP of the family asked for, for `port`: one from the documentation
    /// ranges (192.0.2.0/24, 2001:db8::/32) that the file does not use.
    fn placeholder(&self, v6: bool, port: u16) -> IpAddr {
        (1u16..=254)
            .map(|n| {
                if v6 {
                    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, n))
                } else {
                    IpAddr::V4(Ipv4Addr::new(192, 0, 2, n as u8))
                }
            })
            .find(|ip| !self.written.contains(ip) && !self.listeners.contains_key(&(*ip, port)))
            .unwrap_or(if v6 {
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 1, 0))
            } else {
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 255))
            })
    }

    fn service(&mut self, want: Want, primary: &Route<'a>, maint: Option<&Route<'a>>) {
        let Want {
            base,
            host,
            port,
            line,
            origin,
            standalone,
        } = want;
        let (vip, placeholder) = match host {
            Host::Ip(ip) => (ip, false),
            Host::Any { v6 } => {
                // The servers' family (a VIP and its backends share one), else the bind's.
                let v6 = primary
                    .proxy
                    .servers
                    .iter()
                    .find_map(|s| match s.host {
                        Host::Ip(ip) => Some(ip.is_ipv6()),
                        _ => None,
                    })
                    .unwrap_or(v6);
                (self.placeholder(v6, port), true)
            }
            // `bind` keeps only addresses.
            Host::Name(_) | Host::Other(_) => return,
        };
        if let Some((other, at)) = self.listeners.get(&(vip, port)) {
            self.skip(
                line,
                format!(
                    "{vip}:{port}: service {other} (from line {at}) already serves this address \
                     and port"
                ),
            );
            return;
        }
        let name = unique(&mut self.service_names, &base);
        self.listeners.insert((vip, port), (name.clone(), line));
        self.handled.insert(line);
        if placeholder {
            let what = if standalone {
                "no translated frontend sends connections to this backend"
            } else {
                "no address to serve (every address of the host)"
            };
            self.notice(
                line,
                format!(
                    "{what}: service {name} has the placeholder VIP {vip} (port {port}); set \
                     the VIP clients connect to"
                ),
            );
        } else if vip.is_loopback() {
            self.notice(
                line,
                format!(
                    "{vip} is a loopback address: clients' packets never reach the XDP datapath \
                     for it; give service {name} the VIP clients connect to"
                ),
            );
        }

        // The servers, in the roles they get.
        let mut picked: Vec<Candidate<'a>> = Vec::new();
        let pool = primary.proxy.servers.iter().filter(|s| !is_backup(s));
        for s in pool {
            if let Some(c) = self.candidate(s, primary.proxy, vip, port, Role::Pool, &picked) {
                picked.push(c);
            }
        }
        let mut fallback: Option<(String, usize)> = None;
        for s in primary.proxy.servers.iter().filter(|s| is_backup(s)) {
            if let Some((first, at)) = &fallback {
                self.skip(
                    s.line,
                    format!(
                        "server {}: backup: steer has one fallback backend per service (server \
                         {first}, line {at})",
                        s.name
                    ),
                );
                continue;
            }
            if let Some(c) = self.candidate(s, primary.proxy, vip, port, Role::Fallback, &picked) {
                fallback = Some((s.name.clone(), s.line));
                picked.push(c);
            }
        }
        if let Some(m) = maint {
            let mut chosen: Option<(String, usize)> = None;
            for s in &m.proxy.servers {
                if let Some((first, at)) = &chosen {
                    self.skip(
                        s.line,
                        format!(
                            "server {}: steer has one maintenance backend per service (server \
                             {first}, line {at})",
                            s.name
                        ),
                    );
                    continue;
                }
                if let Some(c) = self.candidate(s, m.proxy, vip, port, Role::Maintenance, &picked) {
                    chosen = Some((s.name.clone(), s.line));
                    picked.push(c);
                }
            }
        }

        // Checks: the service's is its first checked pool server's; the others say how
        // theirs differs.
        let checks: Vec<(Check, Vec<usize>)> = picked
            .iter()
            .map(|c| self.check(c.server, &c.owner.settings))
            .collect();
        for c in &picked {
            self.use_server(c.server);
        }
        for (_, lines) in &checks {
            self.handled.extend(lines);
        }
        let svc_check = picked
            .iter()
            .zip(&checks)
            .filter(|(_, (k, _))| k.kind != CheckKind::None)
            .min_by_key(|(c, _)| c.role != Role::Pool)
            .map(|(_, k)| k.clone())
            .unwrap_or_else(|| (none_check(), Vec::new()));

        let observe = self.observe(&picked, &checks, &name);
        // haproxy is a proxy: its servers answer it, hold no VIP and need no sysctl. Full NAT
        // is the mode that keeps them as they are; DSR (faster) needs each server changed, so
        // the output only suggests it.
        let nat = true;
        let observe = match observe {
            Observe::Unset if nat && svc_check.0.kind != CheckKind::None => Observe::Off,
            o => o,
        };
        // haproxy's connect timeout fails an attempt that observe then counts: steer's
        // syn_timeout.
        let syn_timeout = match (&observe, &primary.proxy.settings.timeout_connect) {
            (Observe::On { .. }, Some(t)) => {
                let c = t.v.clamp(SYN_TIMEOUT_MIN, SYN_TIMEOUT_MAX);
                if c != t.v {
                    self.notice(
                        t.line,
                        format!(
                            "timeout connect {}: steer's syn_timeout is from 100ms to 1m; {} is \
                             used",
                            humane(t.v),
                            humane(c)
                        ),
                    );
                }
                self.handled.insert(t.line);
                Some(At { v: c, line: t.line })
            }
            _ => None,
        };

        let mut backends = Vec::new();
        for (c, (check, _)) in picked.iter().zip(checks) {
            let s = c.server;
            let base = sanitize(&s.name, "backend");
            // A server several services share is a backend of each, under another name.
            let bname = [
                base.clone(),
                format!("{base}-{port}"),
                format!("{base}-{name}"),
            ]
            .into_iter()
            .find(|n| !self.backend_names.contains(n))
            .unwrap_or_else(|| format!("{base}-{name}"));
            let bname = unique(&mut self.backend_names, &bname);
            let disabled = s.opts.disabled.as_ref().is_some_and(|d| d.v);
            self.made
                .entry(s.line)
                .or_insert_with(|| Made {
                    server: s.name.clone(),
                    disabled,
                    backends: Vec::new(),
                })
                .backends
                .push((bname.clone(), name.clone()));
            backends.push(Backend {
                name: bname,
                address: c.address,
                port: (nat && c.port != port).then_some(c.port),
                weight: s.opts.weight.as_ref().map(|w| w.v),
                role: c.role,
                check,
                origin: format!(
                    "{} {}, server {} (line {})",
                    c.owner.kind.as_str(),
                    c.owner.name,
                    s.name,
                    s.line
                ),
            });
        }
        self.services.push(Service {
            name,
            vip,
            placeholder,
            port,
            nat,
            origin,
            check: svc_check.0,
            check_lines: svc_check.1,
            observe,
            syn_timeout,
            backends,
        });
    }

    /// `s` as a backend of the service on `vip`:`port`, or why not (noted).
    fn candidate(
        &mut self,
        s: &'a Server,
        owner: &'a Proxy,
        vip: IpAddr,
        port: u16,
        role: Role,
        picked: &[Candidate<'a>],
    ) -> Option<Candidate<'a>> {
        let name = &s.name;
        let why = match &s.host {
            Host::Name(n) => Err(format!(
                "server {name}: address {n:?} is a host name; steer needs the server's IP \
                 address: resolve it and add the backend"
            )),
            Host::Other(a) => Err(format!("server {name}: {a} is not an IP address")),
            Host::Any { .. } => Err(format!(
                "server {name}: no address (0.0.0.0 or *: haproxy's transparent mode); steer \
                 needs the server's IP address"
            )),
            Host::Ip(ip) if ip.is_ipv4() != vip.is_ipv4() => Err(format!(
                "server {name}: {ip} is {} but the service's VIP {vip} is not",
                if ip.is_ipv4() { "IPv4" } else { "IPv6" }
            )),
            Host::Ip(ip) if *ip == vip => Err(format!("server {name}: {ip} is the VIP itself")),
            Host::Ip(ip) => Ok(*ip),
        };
        let p = match s.port {
            Port::Same => Ok(port),
            Port::One(p) => Ok(p),
            Port::Offset(o) => u16::try_from(i32::from(port) + o)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!("server {name}: port offset {o:+} from {port} is out of range")
                }),
            Port::Range(..) => Err(format!("server {name}: a port range")),
        };
        let (address, sport) = match (why, p) {
            (Ok(a), Ok(p)) => (a, p),
            (Err(e), _) | (_, Err(e)) => {
                self.skip(s.line, e);
                return None;
            }
        };
        let same = picked
            .iter()
            .find(|c| c.address == address && c.port == sport)
            .or_else(|| picked.iter().find(|c| c.address == address));
        if let Some(o) = same {
            let msg = if o.port != sport {
                format!(
                    "server {name}: the address {address} of server {} (line {}), on port {sport} \
                     instead of {}: the backends of a steer service are different addresses (it \
                     adopts and drains them by address); give this server an address of its own, \
                     or make it a service of its own",
                    o.server.name, o.server.line, o.port
                )
            } else if role == Role::Fallback && o.role == Role::Pool {
                format!(
                    "server {name}: a backup of server {} (line {}) on the same address {address}: \
                     the same server, checked on another port so that failing a check on purpose \
                     moves traffic — the trick steer replaces: `steer-ctl drain {}`, restart, \
                     `steer-ctl ready {} --wait-healthy`",
                    o.server.name, o.server.line, o.server.name, o.server.name
                )
            } else {
                format!(
                    "server {name}: same address {address} as server {} (line {}): the backends \
                     of a steer service are different servers (and a maintenance server is never \
                     one of them)",
                    o.server.name, o.server.line
                )
            };
            self.skip(s.line, msg);
            return None;
        }
        Some(Candidate {
            server: s,
            owner,
            address,
            port: sport,
            role,
        })
    }

    /// The steer check of server `s` of a proxy with settings `set`, with the lines it comes
    /// from.
    fn check(&mut self, s: &Server, set: &Settings) -> (Check, Vec<usize>) {
        let o = &s.opts;
        if !is_checked(s) {
            return (none_check(), Vec::new());
        }
        let mut lines = BTreeSet::from([s.line]);
        let mut add = |l: Option<usize>| {
            if let Some(l) = l {
                lines.insert(l);
            }
        };
        let http = set.chk.as_ref().is_some_and(|c| c.v == ChkProto::Http);
        add(set.chk.as_ref().map(|c| c.line));
        if http {
            if let (None, Some(chk)) = (&set.method, &set.chk) {
                self.notice(
                    chk.line,
                    "option httpchk: haproxy checks with OPTIONS when no method is given; steer \
                     checks with GET or HEAD: GET is used"
                        .into(),
                );
            }
            add(set.method.as_ref().map(|c| c.line));
            add(set.path.as_ref().map(|c| c.line));
            add(set.host.as_ref().map(|c| c.line));
            add(set.expect.status.as_ref().map(|c| c.line));
            add(set.expect.body.as_ref().map(|c| c.line));
        }
        add(o.check.as_ref().map(|x| x.line));
        for x in [&o.inter, &o.fastinter, &o.downinter] {
            add(x.as_ref().map(|x| x.line));
        }
        for x in [&o.rise, &o.fall] {
            add(x.as_ref().map(|x| x.line));
        }
        add(o.port.as_ref().map(|x| x.line));
        let line_of = |x: Option<usize>| x.unwrap_or(s.line);
        let inter = self.time(o.inter.as_ref(), INTER, "inter");
        let fast = self.time(o.fastinter.as_ref(), inter, "fastinter");
        let down = self.time(o.downinter.as_ref(), inter, "downinter");
        let rise = self.count(o.rise.as_ref(), RISE, "rise");
        let fall = self.count(o.fall.as_ref(), FALL, "fall");
        // haproxy: the whole check within `inter`; with `timeout check`, the connect within
        // min(timeout connect, inter) and the response within `timeout check` after it.
        let mut timeout = match &set.timeout_check {
            Some(tc) => {
                add(Some(tc.line));
                add(set.timeout_connect.as_ref().map(|c| c.line));
                let connect = set
                    .timeout_connect
                    .as_ref()
                    .map_or(inter, |c| c.v.min(inter));
                if http {
                    connect + tc.v
                } else {
                    connect
                }
            }
            None => inter,
        };
        let limit = inter.min(down);
        if timeout > limit {
            let at = match &set.timeout_check {
                Some(tc) => tc.line,
                None => line_of(o.downinter.as_ref().map(|d| d.line)),
            };
            self.notice(
                at,
                format!(
                    "server {}: the check may take {} in haproxy; steer's check timeout is at \
                     most its interval and downinterval: {} is used",
                    s.name,
                    humane(timeout),
                    humane(limit)
                ),
            );
            timeout = limit;
        }
        timeout = timeout.max(CHECK_MIN);
        let check = Check {
            kind: if http {
                CheckKind::Http
            } else {
                CheckKind::Tcp
            },
            port: o.port.as_ref().map(|p| p.v),
            method: match set.method.as_ref().map(|m| m.v.as_str()) {
                Some("HEAD") => HttpMethod::Head,
                _ => HttpMethod::Get,
            },
            path: set.path.as_ref().map_or("/".into(), |p| p.v.clone()),
            host: set.host.as_ref().map(|h| h.v.clone()),
            status: set
                .expect
                .status
                .as_ref()
                .map_or(StatusRange(200, 399), |s| StatusRange(s.v.0, s.v.1)),
            body: set.expect.body.as_ref().map(|b| b.v.clone()),
            interval: Dur(inter),
            fastinterval: Dur(fast),
            downinterval: Dur(down),
            timeout: Dur(timeout),
            rise,
            fall,
        };
        (check, lines.into_iter().collect())
    }

    /// A check time within steer's bounds (noted when it is not).
    fn time(&mut self, v: Option<&At<Duration>>, default: Duration, what: &str) -> Duration {
        let Some(v) = v else {
            return default;
        };
        let c = v.v.clamp(CHECK_MIN, CHECK_MAX);
        if c != v.v {
            self.notice(
                v.line,
                format!(
                    "{what} {}: steer's check times are from 10ms to 1h; {} is used",
                    humane(v.v),
                    humane(c)
                ),
            );
        }
        c
    }

    fn count(&mut self, v: Option<&At<u32>>, default: u32, what: &str) -> u32 {
        let Some(v) = v else {
            return default;
        };
        let c = v.v.clamp(1, COUNT_MAX);
        if c != v.v {
            self.notice(
                v.line,
                format!(
                    "{what} {}: steer's is from 1 to {COUNT_MAX}; {c} is used",
                    v.v
                ),
            );
        }
        c
    }

    /// The service's passive health from its servers' `observe`: steer's (NAT only) marks a
    /// backend down at once after `error_limit` refused or unanswered connections in a row,
    /// which is haproxy's `on-error mark-down`; anything else is noted as not translated.
    fn observe(
        &mut self,
        picked: &[Candidate<'a>],
        checks: &[(Check, Vec<usize>)],
        svc: &str,
    ) -> Observe {
        // Each backend's: None (no observe), Some(Ok((limit, line, layer))) or noted.
        let mut each = Vec::new();
        for c in picked {
            let o = &c.server.opts;
            let Some(layer) = &o.observe else {
                if let Some(e) = o
                    .on_error
                    .as_ref()
                    .map(|e| e.line)
                    .or(o.error_limit.as_ref().map(|e| e.line))
                {
                    self.skip(
                        e,
                        format!(
                            "server {}: on-error and error-limit work only with observe (in \
                             haproxy too)",
                            c.server.name
                        ),
                    );
                }
                each.push((c, None));
                continue;
            };
            let on_error = o.on_error.as_ref().map_or(OnError::FailCheck, |e| e.v);
            let limit = o.error_limit.as_ref().map_or(ERROR_LIMIT, |e| e.v);
            let layer_s = match layer.v {
                Layer::L4 => "layer4",
                Layer::L7 => "layer7",
            };
            if !is_checked(c.server) {
                self.skip(
                    layer.line,
                    format!(
                        "server {}: observe without check: steer's passive health needs checks \
                         (only they bring a backend back)",
                        c.server.name
                    ),
                );
                each.push((c, None));
                continue;
            }
            if on_error != OnError::MarkDown {
                let does = match on_error {
                    OnError::FastInter => "switches to fastinter checks",
                    OnError::SuddenDeath => "fails one check short of down",
                    _ => "counts as one failed check",
                };
                self.skip(
                    layer.line,
                    format!(
                        "server {}: observe {layer_s} with on-error {}: in haproxy {limit} \
                         errors {does}; steer's observe marks a backend down at once after \
                         error_limit refused or unanswered connections (on-error mark-down): \
                         not the same",
                        c.server.name,
                        on_error.as_str()
                    ),
                );
                each.push((c, None));
                continue;
            }
            each.push((c, Some((limit, layer.line, layer.v))));
        }
        let pool: Vec<_> = each.iter().filter(|(c, _)| c.role == Role::Pool).collect();
        let first = pool.first().and_then(|(_, o)| *o);
        let Some((limit, _, _)) = first else {
            for (c, o) in &each {
                if let Some((_, line, _)) = o {
                    self.skip(
                        *line,
                        format!(
                            "server {}: observe: steer's applies to a whole service, and the \
                             pool servers of service {svc} do not observe",
                            c.server.name
                        ),
                    );
                }
            }
            return Observe::Unset;
        };
        let same = pool.iter().all(|(_, o)| o.is_some_and(|o| o.0 == limit));
        let unchecked = picked
            .iter()
            .zip(checks)
            .find(|(_, (k, _))| k.kind == CheckKind::None)
            .map(|(c, _)| c.server);
        if !same || unchecked.is_some() {
            let why = match unchecked {
                Some(u) if same => format!(
                    "steer's observe needs every backend of the service checked, and server {} \
                     (line {}) is not",
                    u.name, u.line
                ),
                _ => format!(
                    "steer's applies to a whole service, and the pool servers of service {svc} \
                     do not all observe with on-error mark-down and the same error-limit"
                ),
            };
            for (c, o) in &each {
                if let Some((_, line, _)) = o {
                    self.skip(*line, format!("server {}: observe: {why}", c.server.name));
                }
            }
            return Observe::Unset;
        }
        let mut lines = BTreeSet::new();
        for (c, o) in &each {
            let Some((_, line, layer)) = o else { continue };
            lines.insert(*line);
            if *layer == Layer::L7 {
                self.skip(
                    *line,
                    format!(
                        "server {}: observe layer7: steer sees refused and unanswered \
                         connections but not HTTP responses: only that part is translated \
                         (observe = true, error_limit, mode nat)",
                        c.server.name
                    ),
                );
            }
            let o = &c.server.opts;
            lines.extend(o.on_error.as_ref().map(|e| e.line));
            lines.extend(o.error_limit.as_ref().map(|e| e.line));
        }
        let error_limit = if !(1..=ERROR_LIMIT_MAX).contains(&limit) {
            let c = limit.clamp(1, ERROR_LIMIT_MAX);
            if let Some((_, line, _)) = first {
                self.notice(
                    line,
                    format!(
                        "error-limit {limit}: steer's is from 1 to {ERROR_LIMIT_MAX}; {c} is used"
                    ),
                );
            }
            c
        } else {
            limit
        };
        self.handled.extend(&lines);
        Observe::On {
            error_limit,
            lines: lines.into_iter().collect(),
        }
    }
}

/// No checks: always up (haproxy's server without `check`).
fn none_check() -> Check {
    Check {
        kind: CheckKind::None,
        ..Check::default()
    }
}
