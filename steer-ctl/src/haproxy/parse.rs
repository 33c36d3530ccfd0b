//! haproxy.cfg read into its sections: `defaults` settings carried into the proxies after
//! them, and each `frontend`, `backend` and `listen` with its binds, routing rules, servers and
//! check settings. Every line that steer has no use for is noted here, once, with its reason.

use std::{collections::BTreeMap, time::Duration};

use super::{
    lex::{self, Host, Port},
    Notes,
};

/// A value with the line it was written on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct At<T> {
    pub v: T,
    pub line: usize,
}

fn at<T>(v: T, line: usize) -> Option<At<T>> {
    Some(At { v, line })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    L4,
    L7,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    FastInter,
    FailCheck,
    SuddenDeath,
    MarkDown,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::FastInter => "fastinter",
            OnError::FailCheck => "fail-check",
            OnError::SuddenDeath => "sudden-death",
            OnError::MarkDown => "mark-down",
        }
    }
}

/// What a `server` or `default-server` line says that steer can use.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    pub check: Option<At<bool>>,
    /// Checks on another port.
    pub port: Option<At<u16>>,
    pub inter: Option<At<Duration>>,
    pub fastinter: Option<At<Duration>>,
    pub downinter: Option<At<Duration>>,
    pub rise: Option<At<u32>>,
    pub fall: Option<At<u32>>,
    pub weight: Option<At<u32>>,
    pub backup: Option<At<bool>>,
    pub disabled: Option<At<bool>>,
    pub observe: Option<At<Layer>>,
    pub on_error: Option<At<OnError>>,
    pub error_limit: Option<At<u32>>,
}

impl ServerOpts {
    /// These options with `over`'s written over them.
    fn overlay(&self, over: &ServerOpts) -> ServerOpts {
        fn pick<T: Clone>(a: &Option<T>, b: &Option<T>) -> Option<T> {
            b.clone().or_else(|| a.clone())
        }
        ServerOpts {
            check: pick(&self.check, &over.check),
            port: pick(&self.port, &over.port),
            inter: pick(&self.inter, &over.inter),
            fastinter: pick(&self.fastinter, &over.fastinter),
            downinter: pick(&self.downinter, &over.downinter),
            rise: pick(&self.rise, &over.rise),
            fall: pick(&self.fall, &over.fall),
            weight: pick(&self.weight, &over.weight),
            backup: pick(&self.backup, &over.backup),
            disabled: pick(&self.disabled, &over.disabled),
            observe: pick(&self.observe, &over.observe),
            on_error: pick(&self.on_error, &over.on_error),
            error_limit: pick(&self.error_limit, &over.error_limit),
        }
    }
}

/// The kind of health check a proxy asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChkProto {
    /// `option httpchk`.
    Http,
    /// Anything else (a TCP connect, `tcp-check`, a protocol check steer does not have).
    Tcp,
}

/// What an HTTP check expects.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    pub status: Option<At<(u16, u16)>>,
    pub body: Option<At<String>>,
}

/// The settings a `defaults` section hands to the proxies after it.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    pub chk: Option<At<ChkProto>>,
    /// `GET` or `HEAD` (others are noted and replaced by GET); none: haproxy's OPTIONS.
    pub method: Option<At<String>>,
    pub path: Option<At<String>>,
    pub host: Option<At<String>>,
    pub expect: Expect,
    /// Set once the proxy has its own `http-check expect` rules (the inherited ones are then
    /// dropped, as haproxy does).
    own_expect: bool,
    pub default_server: ServerOpts,
    pub timeout_check: Option<At<Duration>>,
    pub timeout_connect: Option<At<Duration>>,
    pub default_backend: Option<At<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Frontend,
    Backend,
    Listen,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Frontend => "frontend",
            Kind::Backend => "backend",
            Kind::Listen => "listen",
        }
    }
}

/// One address of a `bind` line.
#[derive(Clone, Debug)]
pub struct Bind {
    pub line: usize,
    /// As written.
    pub text: String,
    pub host: Host,
    pub port: u16,
}

/// A `use_backend` line.
#[derive(Clone, Debug)]
pub struct UseBackend {
    pub line: usize,
    pub target: String,
    /// The `if`/`unless` condition as written; `None` when there is none (or it is `if TRUE`).
    pub cond: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Server {
    pub line: usize,
    pub name: String,
    pub host: Host,
    pub port: Port,
    /// With the `default-server` lines before it applied.
    pub opts: ServerOpts,
}

#[derive(Clone, Debug)]
pub struct Proxy {
    pub kind: Kind,
    pub name: String,
    pub line: usize,
    pub binds: Vec<Bind>,
    pub rules: Vec<UseBackend>,
    pub servers: Vec<Server>,
    pub settings: Settings,
    /// Line of a `disabled` keyword.
    pub disabled: Option<usize>,
}

impl Proxy {
    pub fn is_backend(&self) -> bool {
        self.kind != Kind::Frontend
    }
}

/// The whole file.
#[derive(Debug, Default)]
pub struct Parsed {
    pub proxies: Vec<Proxy>,
    /// Interfaces named by `bind … interface X`.
    pub interfaces: Vec<At<String>>,
    /// Whether any line was not blank or a comment.
    pub any_text: bool,
    /// The first line that is neither blank, a comment nor in a section.
    pub first_stray: Option<At<String>>,
    /// Lines of defaults and proxies taken in whole (no part noted as skipped), by summary:
    /// the translation says which it used, and the others are listed as unused.
    pub consumed: BTreeMap<usize, String>,
}

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "resolvers",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
    "crt-store",
    "log-forward",
    "fcgi-app",
    "traces",
    "acme",
];

enum Current {
    None,
    Global,
    Defaults(Option<String>),
    Proxy(Box<Proxy>),
    /// A section steer has no use for: its header, first and last line.
    Other(String, usize, usize),
}

struct Parser<'a> {
    notes: &'a mut Notes,
    out: Parsed,
    cur: Current,
    /// The settings of the last `defaults` section (and of the one being read).
    defaults: Settings,
    named: BTreeMap<String, Settings>,
}

/// Reads the sections of `text`, noting in `notes` every line that is not used.
pub fn parse(text: &str, notes: &mut Notes) -> Parsed {
    let mut p = Parser {
        notes,
        out: Parsed::default(),
        cur: Current::None,
        defaults: Settings::default(),
        named: BTreeMap::new(),
    };
    for (i, raw) in text.lines().enumerate() {
        let no = i + 1;
        let w = match lex::words(raw) {
            Ok(w) => w,
            Err(e) => {
                p.out.any_text = true;
                p.notes
                    .skip(no, format!("cannot read the line: {e} in {:?}", raw.trim()));
                continue;
            }
        };
        if w.is_empty() {
            continue;
        }
        p.out.any_text = true;
        if SECTIONS.contains(&w[0].as_str()) {
            p.finish();
            p.start(&w, no);
        } else {
            p.line(&w, no);
        }
    }
    p.finish();
    p.out
}

/// The first words of a line, for messages: `cookie SERVERID indirect`.
pub fn summary(w: &[String]) -> String {
    let s = w.iter().take(4).cloned().collect::<Vec<_>>().join(" ");
    let s = s.replace(['\r', '\n'], " ");
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(59).collect::<String>())
    } else if w.len() > 4 {
        format!("{s} …")
    } else {
        s
    }
}

impl Parser<'_> {
    fn start(&mut self, w: &[String], no: usize) {
        // `frontend NAME from DEFAULTS`, `defaults [NAME] from DEFAULTS` (haproxy 2.5's named
        // defaults).
        let from_at = w.iter().position(|x| x == "from");
        let from = from_at.and_then(|i| w.get(i + 1)).cloned();
        let name = w.get(1).filter(|_| from_at != Some(1)).cloned();
        let base = match &from {
            Some(d) => match self.named.get(d) {
                Some(s) => s.clone(),
                None => {
                    self.notes.skip(
                        no,
                        format!(
                            "{}: no defaults section named {d:?} before this line; the last \
                             defaults section is used",
                            summary(w)
                        ),
                    );
                    self.defaults.clone()
                }
            },
            None => self.defaults.clone(),
        };
        self.cur = match w[0].as_str() {
            "global" => Current::Global,
            "defaults" => {
                // A defaults section starts from nothing, or from the one it names.
                self.defaults = if from.is_some() {
                    base
                } else {
                    Settings::default()
                };
                Current::Defaults(name)
            }
            kw @ ("frontend" | "backend" | "listen") => {
                let kind = match kw {
                    "frontend" => Kind::Frontend,
                    "backend" => Kind::Backend,
                    _ => Kind::Listen,
                };
                let Some(name) = name else {
                    self.notes.skip(
                        no,
                        format!("{kw}: expected a name after {kw:?}, found none; section skipped"),
                    );
                    self.cur = Current::Other(String::new(), no, no);
                    return;
                };
                let mut base = base;
                base.own_expect = false;
                if kind == Kind::Backend {
                    base.default_backend = None;
                }
                let mut proxy = Proxy {
                    kind,
                    name,
                    line: no,
                    binds: Vec::new(),
                    rules: Vec::new(),
                    servers: Vec::new(),
                    settings: base,
                    disabled: None,
                };
                // The old form `listen NAME ADDRESS:PORT`.
                if kind == Kind::Listen && from.is_none() {
                    if let Some(addr) = w.get(2) {
                        bind(&mut proxy, &mut self.out, self.notes, addr, &w[3..], w, no);
                    }
                }
                Current::Proxy(Box::new(proxy))
            }
            _ => Current::Other(summary(w), no, no),
        };
    }

    fn finish(&mut self) {
        match std::mem::replace(&mut self.cur, Current::None) {
            Current::Proxy(p) => self.out.proxies.push(*p),
            Current::Defaults(Some(name)) => {
                self.named.insert(name, self.defaults.clone());
            }
            Current::Other(header, from, to) if !header.is_empty() => {
                let kw = header.split(' ').next().unwrap_or_default();
                let why = match kw {
                    "resolvers" => {
                        "steer needs servers' addresses, not names to resolve: write the \
                         addresses"
                    }
                    "peers" => {
                        "stick-table synchronisation: steer has no stick tables (several LB \
                         hosts share their state in etcd: [cluster])"
                    }
                    "userlist" => "HTTP authentication: steer does not read requests",
                    "mailers" => "e-mail alerts: steer's metrics and logs are watched instead",
                    "http-errors" | "cache" => {
                        "HTTP: steer forwards TCP and does not read requests"
                    }
                    _ => "no steer equivalent",
                };
                let lines = if to > from {
                    format!("lines {from}-{to}")
                } else {
                    format!("line {from}")
                };
                self.notes
                    .skip(from, format!("section {header} ({lines}): {why}"));
            }
            _ => {}
        }
    }

    fn line(&mut self, w: &[String], no: usize) {
        match &mut self.cur {
            Current::None => {
                if self.out.first_stray.is_none() {
                    self.out.first_stray = at(summary(w), no);
                }
                self.notes.skip(
                    no,
                    format!(
                        "{}: outside any section (expected global, defaults, frontend, \
                         backend or listen first)",
                        summary(w)
                    ),
                );
            }
            Current::Global => self
                .notes
                .skip(no, format!("{}: {}", summary(w), global(w))),
            Current::Other(_, _, last) => *last = no,
            Current::Defaults(_) => {
                let mut d = std::mem::take(&mut self.defaults);
                setting(&mut d, None, &mut self.out, self.notes, w, no);
                self.defaults = d;
            }
            Current::Proxy(p) => {
                let mut s = std::mem::take(&mut p.settings);
                setting(&mut s, Some(p), &mut self.out, self.notes, w, no);
                p.settings = s;
            }
        }
        // What needs no service to mean something: `mode tcp` is steer's only mode; `disabled`
        // is said by the translation.
        let always = matches!(
            (w[0].as_str(), w.get(1).map(String::as_str)),
            ("mode", Some("tcp")) | ("disabled", _)
        );
        if matches!(self.cur, Current::Defaults(_) | Current::Proxy(_))
            && !always
            && !self.notes.has_skip(no)
        {
            self.out.consumed.insert(no, summary(w));
        }
    }
}

/// Why a `global` setting means nothing to steer.
fn global(w: &[String]) -> &'static str {
    match w[0].as_str() {
        "log" | "log-tag" | "log-send-hostname" => {
            "steer-ctl logs through tracing (STEER_LOG) and counts traffic in its metrics"
        }
        "maxconn" | "maxconnrate" | "maxsessrate" | "maxpipes" => "steer does not cap connections",
        "stats" => {
            "the daemon's stats page (/stats) and metrics (/metrics) on daemon.metrics, and \
             `steer-ctl show backends`, instead"
        }
        "daemon" | "master-worker" | "pidfile" | "user" | "group" | "uid" | "gid" | "chroot" => {
            "the steer-ctl daemon runs as a service (systemd), with its own [daemon] settings"
        }
        kw if kw.starts_with("ssl-") || kw.starts_with("ca-") || kw.starts_with("crt-") => {
            "TLS: steer forwards TCP untouched"
        }
        kw if kw.starts_with("tune.") || kw.starts_with("nb") || kw.starts_with("cpu-") => {
            "haproxy process tuning: no steer equivalent"
        }
        _ => "haproxy process setting with no steer equivalent",
    }
}

/// One line of a `defaults`, `frontend`, `backend` or `listen` section (`proxy` is `None` in
/// `defaults`).
fn setting(
    s: &mut Settings,
    mut proxy: Option<&mut Proxy>,
    out: &mut Parsed,
    notes: &mut Notes,
    w: &[String],
    no: usize,
) {
    let kind = proxy.as_ref().map(|p| p.kind);
    let section = kind.map_or("defaults", Kind::as_str);
    let line = summary(w);
    let arg = |i: usize| w.get(i).map(String::as_str);
    // A keyword that belongs to other sections.
    let misplaced = |notes: &mut Notes, ok: &str| {
        notes.skip(
            no,
            format!("{line}: not valid in a {section} section (only in {ok}); ignored"),
        );
    };
    match w[0].as_str() {
        "mode" => match arg(1) {
            Some("tcp") => {}
            Some("http") => notes.skip(
                no,
                format!(
                    "{line}: steer balances TCP connections (layer 4) and does not parse HTTP: \
                     what haproxy does with requests is not done"
                ),
            ),
            _ => notes.skip(no, format!("{line}: expected mode tcp or http")),
        },
        "bind" => match proxy.as_deref_mut() {
            Some(p) if p.kind != Kind::Backend => match arg(1) {
                Some(a) => bind(p, out, notes, a, &w[2..], w, no),
                None => notes.skip(
                    no,
                    "bind: expected an address such as 10.0.0.10:80, found none".into(),
                ),
            },
            _ => misplaced(notes, "frontend and listen"),
        },
        "server" => match proxy.as_deref_mut() {
            Some(p) if p.kind != Kind::Frontend => server(p, s, notes, w, no),
            _ => misplaced(notes, "backend and listen"),
        },
        "default-server" => {
            if kind == Some(Kind::Frontend) {
                misplaced(notes, "defaults, backend and listen");
            } else {
                let mut skipped = Vec::new();
                let o = server_opts(&w[1..], no, &mut skipped);
                s.default_server = s.default_server.overlay(&o);
                if !skipped.is_empty() {
                    notes.skip(no, format!("default-server: {}", skipped.join("; ")));
                }
            }
        }
        "use_backend" => match proxy.as_deref_mut() {
            Some(p) if p.kind != Kind::Backend => match arg(1) {
                Some(target) => {
                    let cond = match w.get(2..).unwrap_or_default() {
                        [] => None,
                        [k, t] if k == "if" && t == "TRUE" => None,
                        rest => Some(rest.join(" ")),
                    };
                    p.rules.push(UseBackend {
                        line: no,
                        target: target.into(),
                        cond,
                    });
                }
                None => notes.skip(
                    no,
                    "use_backend: expected a backend name, found none".into(),
                ),
            },
            _ => misplaced(notes, "frontend and listen"),
        },
        "default_backend" => {
            if kind == Some(Kind::Backend) {
                misplaced(notes, "defaults, frontend and listen");
            } else if let Some(b) = arg(1) {
                s.default_backend = at(b.into(), no);
            } else {
                notes.skip(
                    no,
                    "default_backend: expected a backend name, found none".into(),
                );
            }
        }
        "option" => option(s, notes, w, no),
        "no" if arg(1) == Some("option") => match arg(2) {
            Some("httpchk") => {
                // Back to haproxy's default: a TCP connect.
                s.chk = at(ChkProto::Tcp, no);
                s.method = None;
                s.path = None;
                s.host = None;
            }
            _ => notes.skip(no, format!("{line}: {}", reason(&w[1..]))),
        },
        "http-check" => http_check(s, notes, w, no),
        "timeout" | "contimeout" => {
            let (what, value) = if w[0] == "contimeout" {
                (Some("connect"), arg(1))
            } else {
                (arg(1), arg(2))
            };
            match what {
                Some(k @ ("check" | "connect")) => match value.map(lex::duration) {
                    Some(Ok(d)) if k == "check" => s.timeout_check = at(d, no),
                    Some(Ok(d)) => s.timeout_connect = at(d, no),
                    Some(Err(e)) => notes.skip(no, format!("{line}: {e}")),
                    None => notes.skip(no, format!("{line}: expected a time, found none")),
                },
                _ => notes.skip(no, format!("{line}: {}", reason(w))),
            }
        }
        "disabled" => match proxy {
            Some(p) if p.kind == Kind::Backend => notes.skip(
                no,
                format!(
                    "{line}: steer has no disabled backend; its servers are translated as \
                     usual: once the daemon runs, `steer-ctl maint` them"
                ),
            ),
            Some(p) => p.disabled = Some(no),
            None => notes.skip(no, format!("{line}: {}", reason(w))),
        },
        _ => notes.skip(no, format!("{line}: {}", reason(w))),
    }
}

/// A `bind` line (or the address of `listen NAME ADDRESS`): `addrs` is a comma-separated list.
fn bind(
    p: &mut Proxy,
    out: &mut Parsed,
    notes: &mut Notes,
    addrs: &str,
    opts: &[String],
    w: &[String],
    no: usize,
) {
    let line = summary(w);
    if opts.iter().any(|o| o == "ssl") {
        notes.skip(
            no,
            format!(
                "{line}: haproxy terminates TLS on this bind (ssl); steer forwards the TCP \
                 stream untouched, so the servers would have to speak TLS here"
            ),
        );
        return;
    }
    let mut unused = Vec::new();
    let mut i = 0;
    while i < opts.len() {
        if opts[i] == "interface" {
            if let Some(ifname) = opts.get(i + 1) {
                if !out.interfaces.iter().any(|x| &x.v == ifname) {
                    out.interfaces.push(At {
                        v: ifname.clone(),
                        line: no,
                    });
                }
                i += 2;
                continue;
            }
        }
        unused.push(opts[i].clone());
        i += 1;
    }
    let mut problems = Vec::new();
    for a in addrs.split(',').filter(|a| !a.is_empty()) {
        match lex::address(a) {
            Ok((Host::Other(_), _)) => problems.push(format!(
                "{a}: not an IP address and port (steer serves a VIP and port)"
            )),
            Ok((Host::Name(n), _)) => problems.push(format!(
                "{a}: {n:?} is a name; steer's VIP must be an address: write it"
            )),
            Ok((_, Port::Same | Port::Offset(_))) => {
                problems.push(format!("{a}: expected a port such as :80, found none"))
            }
            Ok((_, Port::Range(x, y))) => problems.push(format!(
                "{a}: a port range ({x}-{y}); steer serves one port per service: add a \
                 service per port"
            )),
            Ok((host, Port::One(port))) => p.binds.push(Bind {
                line: no,
                text: a.into(),
                host,
                port,
            }),
            Err(e) => problems.push(e),
        }
    }
    if !unused.is_empty() {
        problems.push(format!(
            "bind options {} not translated (steer listens in XDP, not on a socket)",
            unused.join(" ")
        ));
    }
    if !problems.is_empty() {
        notes.skip(no, format!("{line}: {}", problems.join("; ")));
    }
}

/// A `server NAME ADDRESS [options]` line.
fn server(p: &mut Proxy, s: &Settings, notes: &mut Notes, w: &[String], no: usize) {
    let (Some(name), Some(addr)) = (w.get(1), w.get(2)) else {
        notes.skip(
            no,
            format!(
                "{}: expected `server NAME ADDRESS[:PORT] [options]`",
                summary(w)
            ),
        );
        return;
    };
    let (host, port) = match lex::address(addr) {
        Ok(a) => a,
        Err(e) => {
            notes.skip(no, format!("server {name}: {e}"));
            return;
        }
    };
    let mut skipped = Vec::new();
    let own = server_opts(&w[3..], no, &mut skipped);
    if !skipped.is_empty() {
        notes.skip(no, format!("server {name}: {}", skipped.join("; ")));
    }
    p.servers.push(Server {
        line: no,
        name: name.clone(),
        host,
        port,
        opts: s.default_server.overlay(&own),
    });
}

/// Server options that take no argument.
const FLAGS: &[&str] = &[
    "check",
    "no-check",
    "backup",
    "no-backup",
    "disabled",
    "enabled",
    "ssl",
    "no-ssl",
    "check-ssl",
    "no-check-ssl",
    "send-proxy",
    "no-send-proxy",
    "send-proxy-v2",
    "no-send-proxy-v2",
    "send-proxy-v2-ssl",
    "send-proxy-v2-ssl-cn",
    "check-send-proxy",
    "agent-check",
    "no-agent-check",
    "tfo",
    "allow-0rtt",
    "non-stick",
    "stick",
    "no-ssl-reuse",
    "ssl-reuse",
    "tls-tickets",
    "no-tls-tickets",
    "check-via-socks4",
    "force-sslv3",
    "force-tlsv10",
    "force-tlsv11",
    "force-tlsv12",
    "force-tlsv13",
    "no-sslv3",
    "no-tlsv10",
    "no-tlsv11",
    "no-tlsv12",
    "no-tlsv13",
    "no-verifyhost",
];

/// Server options that take one argument (besides the ones read below).
const WITH_ARG: &[&str] = &[
    "addr",
    "agent-addr",
    "agent-inter",
    "agent-port",
    "agent-send",
    "alpn",
    "ca-file",
    "check-alpn",
    "check-proto",
    "check-sni",
    "ciphers",
    "ciphersuites",
    "cookie",
    "crl-file",
    "crt",
    "curves",
    "guid",
    "hash-key",
    "id",
    "init-addr",
    "init-state",
    "log-proto",
    "max-reuse",
    "maxconn",
    "maxqueue",
    "minconn",
    "namespace",
    "npn",
    "on-marked-down",
    "on-marked-up",
    "pool-conn-name",
    "pool-low-conn",
    "pool-max-conn",
    "pool-purge-delay",
    "proto",
    "proxy-v2-options",
    "redir",
    "resolve-net",
    "resolve-opts",
    "resolve-prefer",
    "resolvers",
    "shard",
    "sigalgs",
    "client-sigalgs",
    "slowstart",
    "sni",
    "socks4",
    "source",
    "usesrc",
    "interface",
    "ssl-max-ver",
    "ssl-min-ver",
    "tcp-ut",
    "track",
    "verify",
    "verifyhost",
    "ws",
];

/// The options of a `server` or `default-server` line (after its address): what steer uses,
/// and in `skipped` what it does not, each with its reason.
fn server_opts(w: &[String], no: usize, skipped: &mut Vec<String>) -> ServerOpts {
    let mut o = ServerOpts::default();
    let mut i = 0;
    while i < w.len() {
        let kw = w[i].as_str();
        let next = w.get(i + 1).map(String::as_str);
        let takes_arg = match kw {
            "check" | "no-check" | "backup" | "no-backup" | "disabled" | "enabled" => false,
            "port" | "inter" | "fastinter" | "downinter" | "rise" | "fall" | "weight"
            | "observe" | "on-error" | "error-limit" => true,
            k if FLAGS.contains(&k) => false,
            k if WITH_ARG.contains(&k) => true,
            // Unknown: it takes an argument unless a known keyword (or nothing) follows.
            _ => next.is_some_and(|n| !FLAGS.contains(&n) && !WITH_ARG.contains(&n)),
        };
        let value = if takes_arg { next } else { None };
        if takes_arg && value.is_none() {
            skipped.push(format!("{kw}: expected a value after it, found none"));
            break;
        }
        let v = value.unwrap_or_default();
        let shown = if takes_arg {
            format!("{kw} {v}")
        } else {
            kw.to_string()
        };
        let count = |skipped: &mut Vec<String>| -> Option<u32> {
            match v.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    skipped.push(format!("{shown}: expected a number, found {v:?}"));
                    None
                }
            }
        };
        let time = |skipped: &mut Vec<String>| -> Option<Duration> {
            match lex::duration(v) {
                Ok(d) => Some(d),
                Err(e) => {
                    skipped.push(format!("{kw}: {e}"));
                    None
                }
            }
        };
        match kw {
            "check" => o.check = at(true, no),
            "no-check" => o.check = at(false, no),
            "backup" => o.backup = at(true, no),
            "no-backup" => o.backup = at(false, no),
            "disabled" => o.disabled = at(true, no),
            "enabled" => o.disabled = at(false, no),
            "port" => match v.parse::<u16>() {
                Ok(p) if p > 0 => o.port = at(p, no),
                _ => skipped.push(format!("{shown}: expected a port from 1 to 65535")),
            },
            "inter" => o.inter = time(skipped).and_then(|d| at(d, no)),
            "fastinter" => o.fastinter = time(skipped).and_then(|d| at(d, no)),
            "downinter" => o.downinter = time(skipped).and_then(|d| at(d, no)),
            "rise" => o.rise = count(skipped).and_then(|n| at(n, no)),
            "fall" => o.fall = count(skipped).and_then(|n| at(n, no)),
            "weight" => o.weight = count(skipped).and_then(|n| at(n, no)),
            "error-limit" => o.error_limit = count(skipped).and_then(|n| at(n, no)),
            "observe" => match v {
                "layer4" => o.observe = at(Layer::L4, no),
                "layer7" => o.observe = at(Layer::L7, no),
                _ => skipped.push(format!("{shown}: expected layer4 or layer7")),
            },
            "on-error" => match v {
                "fastinter" => o.on_error = at(OnError::FastInter, no),
                "fail-check" => o.on_error = at(OnError::FailCheck, no),
                "sudden-death" => o.on_error = at(OnError::SuddenDeath, no),
                "mark-down" => o.on_error = at(OnError::MarkDown, no),
                _ => skipped.push(format!(
                    "{shown}: expected fastinter, fail-check, sudden-death or mark-down"
                )),
            },
            _ => skipped.push(format!("{shown} ({})", server_reason(kw))),
        }
        i += if takes_arg { 2 } else { 1 };
    }
    o
}

/// Why a server option has no steer equivalent.
fn server_reason(kw: &str) -> &'static str {
    match kw {
        "cookie" => "cookie persistence is HTTP; steer keeps each connection on its backend",
        "maxconn" | "maxqueue" | "minconn" => "steer does not cap or queue connections",
        "slowstart" => "steer gives a returning backend its full weight at once",
        "addr" => "steer checks the backend's own address (a check port is kept)",
        "track" => "steer checks each backend itself",
        "redir" => "HTTP redirection: steer does not read requests",
        "on-marked-down" | "on-marked-up" => {
            "steer lets a down backend's flows go on; `steer-ctl reject` cuts them"
        }
        "resolvers" | "resolve-prefer" | "resolve-opts" | "resolve-net" | "init-addr" => {
            "steer takes addresses, not names to resolve"
        }
        "id" | "guid" | "hash-key" | "shard" | "init-state" => "no meaning for steer",
        "source" | "usesrc" | "interface" | "namespace" => {
            "the source of connections to the server: in mode nat, the service's snat"
        }
        kw if kw.starts_with("send-proxy") || kw == "proxy-v2-options" => {
            "steer writes no PROXY header (in mode dsr the server sees the client's address)"
        }
        kw if kw.starts_with("agent-") => {
            "steer has no agent checks; a server can call `steer-ctl drain`/`weight` itself"
        }
        "ssl" | "check-ssl" | "verify" | "verifyhost" | "sni" | "check-sni" | "ca-file" | "crt"
        | "crl-file" | "alpn" | "check-alpn" | "npn" | "ciphers" | "ciphersuites" | "curves"
        | "sigalgs" | "client-sigalgs" | "ssl-min-ver" | "ssl-max-ver" => {
            "TLS to the server: steer forwards the client's bytes untouched, and checks in \
             plain TCP or HTTP"
        }
        kw if kw.starts_with("force-") || kw.starts_with("no-tls") || kw.contains("ssl") => {
            "TLS to the server: steer forwards the client's bytes untouched"
        }
        _ => "steer opens no connection to the server for a client, so this has no equivalent",
    }
}

/// `option …`.
fn option(s: &mut Settings, notes: &mut Notes, w: &[String], no: usize) {
    let line = summary(w);
    match w.get(1).map(String::as_str) {
        Some("httpchk") => {
            s.chk = at(ChkProto::Http, no);
            // `option httpchk`, `option httpchk URI`, `option httpchk METHOD URI [VERSION]`.
            // No method: haproxy's OPTIONS, said at the translation (`http-check send` may
            // set one).
            let (method, uri, version) = match &w[2..] {
                [] => (None, "/", None),
                [uri] => (None, uri.as_str(), None),
                [m, uri] => (Some(m.as_str()), uri.as_str(), None),
                [m, uri, v, ..] => (Some(m.as_str()), uri.as_str(), Some(v.as_str())),
            };
            s.method = method.and_then(|m| method_at(m, &line, notes, no));
            s.path = path_at(uri, &line, notes, no);
            s.host = None;
            if let Some(v) = version {
                // The version may carry headers: `HTTP/1.1\r\nHost:\ www`.
                let mut other = Vec::new();
                for h in v.split("\r\n").skip(1).filter(|h| !h.is_empty()) {
                    match h.split_once(':') {
                        Some((n, value)) if n.trim().eq_ignore_ascii_case("host") => {
                            s.host = host_at(value.trim(), &line, notes, no);
                        }
                        _ => other.push(h.to_string()),
                    }
                }
                if !other.is_empty() {
                    notes.skip(
                        no,
                        format!(
                            "{line}: check headers {other:?} not translated (steer's HTTP \
                             check sends only Host)"
                        ),
                    );
                }
            }
        }
        Some("tcp-check") => s.chk = at(ChkProto::Tcp, no),
        Some(
            kind @ ("ssl-hello-chk" | "mysql-check" | "pgsql-check" | "redis-check" | "smtpchk"
            | "ldap-check" | "spop-check" | "external-check"),
        ) => {
            s.chk = at(ChkProto::Tcp, no);
            notes.skip(
                no,
                format!(
                    "{line}: steer has no {kind}; a TCP connect check (type = \"tcp\") is used \
                     instead"
                ),
            );
        }
        _ => notes.skip(no, format!("{line}: {}", reason(w))),
    }
}

fn method_at(m: &str, line: &str, notes: &mut Notes, no: usize) -> Option<At<String>> {
    match m.to_ascii_uppercase().as_str() {
        u @ ("GET" | "HEAD") => at(u.into(), no),
        _ => {
            notes.skip(
                no,
                format!(
                    "{line}: check method {m} not translated (steer checks with GET or HEAD); \
                     GET is used"
                ),
            );
            at("GET".into(), no)
        }
    }
}

fn path_at(p: &str, line: &str, notes: &mut Notes, no: usize) -> Option<At<String>> {
    if p.starts_with('/') && !p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        at(p.into(), no)
    } else {
        notes.skip(
            no,
            format!("{line}: check path {p:?} not translated (expected one starting with '/'); \"/\" is used"),
        );
        None
    }
}

fn host_at(h: &str, line: &str, notes: &mut Notes, no: usize) -> Option<At<String>> {
    if !h.is_empty() && !h.chars().any(|c| c.is_whitespace() || c.is_control()) {
        at(h.into(), no)
    } else {
        notes.skip(
            no,
            format!("{line}: check Host header {h:?} not translated (expected a host name)"),
        );
        None
    }
}

/// `http-check …`.
fn http_check(s: &mut Settings, notes: &mut Notes, w: &[String], no: usize) {
    let line = summary(w);
    match w.get(1).map(String::as_str) {
        Some("send") => {
            let mut i = 2;
            let mut other = Vec::new();
            while i < w.len() {
                let v = w.get(i + 1).map(String::as_str).unwrap_or_default();
                match w[i].as_str() {
                    "meth" => s.method = method_at(v, &line, notes, no),
                    "uri" => s.path = path_at(v, &line, notes, no).or(s.path.take()),
                    "ver" => {}
                    "hdr" => {
                        let value = w.get(i + 2).map(String::as_str).unwrap_or_default();
                        if v.eq_ignore_ascii_case("host") {
                            s.host = host_at(value, &line, notes, no);
                        } else {
                            other.push(format!("hdr {v} {value}"));
                        }
                        i += 1;
                    }
                    k => other.push(format!("{k} {v}")),
                }
                i += 2;
            }
            if !other.is_empty() {
                notes.skip(
                    no,
                    format!(
                        "{line}: {} not translated (steer's HTTP check sends a method, a path \
                         and a Host header)",
                        other.join(", ")
                    ),
                );
            }
        }
        Some("expect") => expect(s, notes, &w[2..], &line, no),
        _ => notes.skip(
            no,
            format!("{line}: steer's HTTP check has a method, path, Host, status and body only"),
        ),
    }
}

/// `http-check expect [params] [!] MATCH PATTERN`.
fn expect(s: &mut Settings, notes: &mut Notes, w: &[String], line: &str, no: usize) {
    if !s.own_expect {
        // A proxy's own expect rules replace those of its defaults.
        s.expect = Expect::default();
        s.own_expect = true;
    }
    let mut i = 0;
    // haproxy 2.2's parameters before the match: `min-recv 10 comment "…" ok-status L7OK …`.
    while i + 1 < w.len()
        && matches!(
            w[i].as_str(),
            "min-recv"
                | "comment"
                | "ok-status"
                | "error-status"
                | "tout-status"
                | "on-success"
                | "on-error"
                | "status-code"
        )
    {
        i += 2;
    }
    let rest = &w[i..];
    let fail = |notes: &mut Notes, why: &str| notes.skip(no, format!("{line}: {why}"));
    match rest {
        [neg, ..] if neg == "!" => fail(
            notes,
            "a negated expectation has no steer equivalent (steer expects a status range and a \
             body substring)",
        ),
        [m, pattern] if m == "status" => match status_list(pattern) {
            Some(r) => set_status(s, notes, r, line, no),
            None => fail(
                notes,
                &format!(
                    "status {pattern:?} not translated (steer expects one code or one range \
                     such as 200-399)"
                ),
            ),
        },
        [m, pattern] if m == "rstatus" => match status_regex(pattern) {
            Some(r) => set_status(s, notes, r, line, no),
            None => fail(
                notes,
                &format!(
                    "rstatus {pattern:?} not translated: steer expects one code or one range, \
                     and this expression is not one (such as ^2 or ^[23]..)"
                ),
            ),
        },
        [m, pattern] if m == "string" => {
            if s.expect.body.is_some() {
                fail(
                    notes,
                    "steer's check expects one body substring; the first is kept",
                );
            } else if pattern.chars().any(char::is_control) {
                fail(notes, "a body with control characters is not translated");
            } else {
                s.expect.body = at(pattern.clone(), no);
            }
        }
        [m, ..] => fail(
            notes,
            &format!(
                "expect {m} not translated (steer expects a status range and a body substring)"
            ),
        ),
        [] => fail(notes, "expected a match such as `status 200`, found none"),
    }
}

fn set_status(s: &mut Settings, notes: &mut Notes, r: (u16, u16), line: &str, no: usize) {
    if s.expect.status.is_some() {
        notes.skip(
            no,
            format!("{line}: steer's check expects one status range; the first is kept"),
        );
    } else {
        s.expect.status = at(r, no);
    }
}

/// `200`, `200-399` or a list whose codes and ranges make one range (`200,201-204`).
pub fn status_list(p: &str) -> Option<(u16, u16)> {
    let mut parts: Vec<(u16, u16)> = Vec::new();
    for part in p.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        if !(100..=599).contains(&a) || !(a..=599).contains(&b) {
            return None;
        }
        parts.push((a, b));
    }
    parts.sort_unstable();
    let mut it = parts.into_iter();
    let mut cur = it.next()?;
    for (a, b) in it {
        if a > cur.1 + 1 {
            return None;
        }
        cur.1 = cur.1.max(b);
    }
    Some(cur)
}

/// A status regular expression that is a range of codes: `^2`, `^2..`, `^[23]`, `^2[0-9]{2}$`,
/// `^(2|3)\d\d$`, `^200$`.
pub fn status_regex(p: &str) -> Option<(u16, u16)> {
    let anchored = p.starts_with('^');
    let body = p.trim_start_matches('^').trim_end_matches('$');
    // Each position: the digits it allows.
    let mut pos: Vec<Vec<u8>> = Vec::new();
    let any: Vec<u8> = (0..=9).collect();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        let set: Vec<u8> = match c {
            '0'..='9' => vec![c as u8 - b'0'],
            '.' => any.clone(),
            '\\' => match chars.next()? {
                'd' => any.clone(),
                _ => return None,
            },
            '[' => {
                let mut set = Vec::new();
                let mut prev: Option<u8> = None;
                loop {
                    match chars.next()? {
                        ']' => break,
                        '-' => {
                            let lo = prev?;
                            let hi = chars.next()?.to_digit(10)? as u8;
                            set.extend(lo..=hi);
                            prev = None;
                        }
                        d => {
                            let d = d.to_digit(10)? as u8;
                            set.push(d);
                            prev = Some(d);
                        }
                    }
                }
                set
            }
            '(' => {
                let mut set = Vec::new();
                loop {
                    let d = chars.next()?.to_digit(10)? as u8;
                    set.push(d);
                    match chars.next()? {
                        '|' => {}
                        ')' => break,
                        _ => return None,
                    }
                }
                set
            }
            _ => return None,
        };
        // `{n}` repeats the position.
        let mut times = 1;
        if chars.peek() == Some(&'{') {
            chars.next();
            let n: String = chars.by_ref().take_while(|c| *c != '}').collect();
            times = n.parse::<usize>().ok().filter(|t| *t <= 3)?;
        }
        for _ in 0..times {
            pos.push(set.clone());
        }
    }
    if pos.is_empty() || pos.len() > 3 || (pos.len() < 3 && !anchored) {
        return None;
    }
    while pos.len() < 3 {
        pos.push(any.clone());
    }
    // A range: fixed leading digits, then one contiguous class, then anything.
    let contiguous = |s: &Vec<u8>| {
        let mut s = s.clone();
        s.sort_unstable();
        s.dedup();
        let (first, last) = (*s.first()?, *s.last()?);
        s.windows(2)
            .all(|w| w[1] == w[0] + 1)
            .then_some((first, last))
    };
    let full = |s: &Vec<u8>| {
        let mut s = s.clone();
        s.sort_unstable();
        s.dedup();
        s == any
    };
    let mut lo = 0u16;
    let mut hi = 0u16;
    let mut free = false;
    for set in &pos {
        let (a, b) = contiguous(set)?;
        if free && !full(set) {
            return None;
        }
        if a != b {
            free = true;
        }
        lo = lo * 10 + u16::from(a);
        hi = hi * 10 + u16::from(b);
    }
    let (lo, hi) = (lo.max(100), hi.min(599));
    (lo <= hi).then_some((lo, hi))
}

/// Why a proxy keyword has no steer equivalent.
pub fn reason(w: &[String]) -> &'static str {
    let kw = w[0].as_str();
    let sub = w.get(1).map(String::as_str).unwrap_or_default();
    match kw {
        "acl" => "ACLs choose by what a connection carries; steer sends every connection to a VIP:port to one pool",
        "use-server" => "server choice by ACL: steer chooses by Maglev hash",
        "balance" => match sub {
            "source" | "uri" | "url_param" | "hdr" | "random" | "rdp-cookie" | "hash" => {
                "steer always balances by a Maglev hash of each connection (its addresses and \
                 ports), not by this key"
            }
            _ => "steer always balances by a Maglev hash of each connection (consistent, weighted)",
        },
        "hash-type" | "hash-balance-factor" => "steer always uses Maglev hashing",
        "cookie" | "appsession" | "stick-table" | "stick" | "persist" | "dynamic-cookie-key" => {
            "persistence: steer keeps each connection on its backend, not a client across connections"
        }
        "compression" | "filter" | "cache-store" | "cache-use" => {
            "HTTP processing: steer forwards TCP (layer 4) and does not read requests"
        }
        "errorfile" | "errorloc" | "errorloc302" | "errorloc303" | "errorfiles" => {
            "error pages are HTTP; steer answers a connection it cannot place with a RST \
             (no_backend) — for a page, give the service a fallback or maintenance backend"
        }
        "log" | "log-format" | "log-format-sd" | "log-tag" | "capture" | "declare"
        | "unique-id-format" | "unique-id-header" | "error-log-format" => {
            "per-request logging: steer logs its own events and counts traffic in metrics"
        }
        "maxconn" | "fullconn" | "rate-limit" | "backlog" => {
            "steer does not cap or queue connections"
        }
        "timeout" | "clitimeout" | "srvtimeout" => {
            "steer does not time out connections; a flow idle for the service's idle_timeout \
             is forgotten, not closed (only check and connect times are used)"
        }
        "retries" => {
            "steer sends a client's retransmitted SYN to another backend by itself when its \
             first one cannot take it"
        }
        "stats" | "monitor-uri" | "monitor" | "monitor-net" => {
            "haproxy's status page: the daemon's own at /stats (and /metrics) on daemon.metrics, \
             and `steer-ctl show backends`"
        }
        "description" | "id" | "enabled" | "guid" => "no meaning for steer",
        "source" => "the source of connections to servers: in mode nat, the service's snat",
        "email-alert" => "steer's metrics and logs are watched instead",
        "redirect" => "HTTP redirection: steer does not read requests",
        "server-template" => "servers from DNS: steer takes each server's address",
        "dispatch" => "give the server a `server` line",
        "option" => match sub {
            "redispatch" => {
                "steer re-steers a client's retransmitted SYN by itself when its backend \
                 cannot take it"
            }
            "forwardfor" | "originalto" => {
                "steer does not change the stream: in mode dsr servers see the client's own \
                 address (in nat, steer's)"
            }
            "httplog" | "tcplog" | "dontlognull" | "dontlog-normal" | "log-separate-errors"
            | "log-health-checks" | "logasap" | "httpslog" => {
                "per-request logging: steer logs its own events and counts traffic in metrics"
            }
            "allbackups" => {
                "steer has one fallback backend per service; the other backups are listed"
            }
            "tcpka" | "clitcpka" | "srvtcpka" | "splice-auto" | "splice-request"
            | "splice-response" | "nolinger" | "abortonclose" | "tcp-smart-accept"
            | "tcp-smart-connect" => {
                "TCP socket handling: steer does not terminate connections"
            }
            "persist" | "prefer-last-server" => {
                "persistence: steer keeps each connection on its backend"
            }
            "transparent" => "steer forwards to the backends it is given",
            _ if sub.starts_with("http") || sub == "forceclose" || sub == "accept-invalid-http-request" => {
                "HTTP processing: steer forwards TCP (layer 4) and does not read requests"
            }
            _ => "no steer equivalent",
        },
        kw if kw.starts_with("http-")
            || kw.starts_with("req")
            || kw.starts_with("rsp")
            || kw == "block" =>
        {
            "HTTP processing: steer forwards TCP (layer 4) and does not read requests"
        }
        kw if kw.starts_with("tcp-") => {
            "connection rules and content inspection: steer does not filter connections"
        }
        _ => "no steer equivalent",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_expressions() {
        assert_eq!(status_list("200"), Some((200, 200)));
        assert_eq!(status_list("200-399"), Some((200, 399)));
        assert_eq!(status_list("200,201-204"), Some((200, 204)));
        assert_eq!(status_list("200,404"), None);
        assert_eq!(status_list("abc"), None);
        assert_eq!(status_regex("^2"), Some((200, 299)));
        assert_eq!(status_regex("^[23]"), Some((200, 399)));
        assert_eq!(status_regex(r"^2\d\d$"), Some((200, 299)));
        assert_eq!(status_regex("^2[0-9]{2}$"), Some((200, 299)));
        assert_eq!(status_regex("^(2|3)"), Some((200, 399)));
        assert_eq!(status_regex("^20[0-4]$"), Some((200, 204)));
        assert_eq!(status_regex("^200$"), Some((200, 200)));
        assert_eq!(status_regex("2.."), Some((200, 299)));
        assert_eq!(status_regex("2"), None, "unanchored: matches 120 too");
        assert_eq!(status_regex("^2[05]0"), None, "200 and 250 only");
        assert_eq!(status_regex("^[2-3]0[0-1]"), None, "200, 201, 300, 301");
        assert_eq!(status_regex("^(200|302)$"), None);
        assert_eq!(status_regex("^[]"), None);
        assert_eq!(status_regex("^2{999999999}"), None);
    }
}
