//! The daemon's configuration: TOML, every table closed (`deny_unknown_fields`), every error
//! reported with file, line and column and what was expected.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de, Deserialize, Deserializer};
use toml::Spanned;

use crate::{
    maglev,
    model::{Mode, NoBackend, Proto, Role},
};

/// Where a config file puts things by default.
pub const DEFAULT_CONFIG: &str = "/etc/steer/steer.toml";

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Every problem found in a config file (or why it could not be read).
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// A duration written as a human string: "2s", "500ms", "1m 30s".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            de::Error::custom(format!(
                "expected a duration such as \"2s\" or \"500ms\", found {s:?} ({e})"
            ))
        })
    }
}

/// A MAC address written as "02:00:00:00:00:01".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mac(pub [u8; 6]);

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            de::Error::custom(format!(
                "expected a MAC address such as \"02:00:5e:00:53:01\", found {s:?}"
            ))
        };
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(bad());
            }
            m[i] = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        Ok(Mac(m))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeCfg {
    /// In the driver (fastest; veth and most NICs).
    Native,
    /// In the kernel's generic path (any interface, slower).
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Tcp,
    Http,
    /// No checks: the backend is always up.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
}

/// Expected HTTP status: one code (200) or an inclusive range ("200-399").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange(pub u16, pub u16);

impl StatusRange {
    pub fn contains(&self, s: u16) -> bool {
        (self.0..=self.1).contains(&s)
    }
}

impl<'de> Deserialize<'de> for StatusRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(u16),
            Range(String),
        }
        let bad = |s: &str| {
            de::Error::custom(format!(
                "expected a status such as 200 or a range such as \"200-399\", found {s:?}"
            ))
        };
        match Raw::deserialize(d)? {
            Raw::One(n) if (100..=599).contains(&n) => Ok(StatusRange(n, n)),
            Raw::One(n) => Err(bad(&n.to_string())),
            Raw::Range(s) => {
                let (a, b) = s.split_once('-').ok_or_else(|| bad(&s))?;
                let (a, b): (u16, u16) = (
                    a.trim().parse().map_err(|_| bad(&s))?,
                    b.trim().parse().map_err(|_| bad(&s))?,
                );
                if !(100..=599).contains(&a) || !(a..=599).contains(&b) {
                    return Err(bad(&s));
                }
                Ok(StatusRange(a, b))
            }
        }
    }
}

/// An inclusive range of ports written as "10000-32767" (or one port, "10000").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || {
            de::Error::custom(format!(
                "expected a port range such as \"10000-32767\", found {s:?}"
            ))
        };
        let (a, b) = s.split_once('-').unwrap_or((&s, &s));
        let a: u16 = a.trim().parse().map_err(|_| bad())?;
        let b: u16 = b.trim().parse().map_err(|_| bad())?;
        Ok(PortRange(a, b))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// A health check, per service (backends may override any field).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Check {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// Port to check; the service's port when absent.
    pub port: Option<u16>,
    pub method: HttpMethod,
    pub path: String,
    pub host: Option<String>,
    pub status: StatusRange,
    /// The body must contain this.
    pub body: Option<String>,
    pub interval: Dur,
    /// Interval while a state change is under way (some results up, some down).
    pub fastinterval: Dur,
    /// Interval while down.
    pub downinterval: Dur,
    pub timeout: Dur,
    /// Consecutive successes to go up.
    pub rise: u32,
    /// Consecutive failures to go down.
    pub fall: u32,
}

/// Bounds of a check's intervals and timeout: under 10ms checks spin ("0s" would never
/// sleep), over an hour a dead server would go unseen for that long.
const CHECK_MIN: Duration = Duration::from_millis(10);
const CHECK_MAX: Duration = Duration::from_secs(3600);
/// Largest `rise` and `fall`.
const COUNT_MAX: u32 = 100;

impl Check {
    /// What is wrong with this check of a `proto` service: each problem with the key to point
    /// at and the one to point at when the first is not written.
    fn problems(&self, proto: Proto) -> Vec<(&'static str, &'static str, String)> {
        let mut p = Vec::new();
        if self.port == Some(0) {
            p.push((
                "port",
                "port",
                "check.port must be from 1 to 65535, found 0".into(),
            ));
        }
        if proto == Proto::Udp && self.kind != CheckKind::None && self.port.is_none() {
            p.push((
                "type",
                "type",
                format!(
                    "the service is UDP and {} check connects over TCP, so checking the \
                     service's port means nothing: set check.port to a TCP port the server \
                     answers on, or type = \"none\"",
                    if self.kind == CheckKind::Http {
                        "an http"
                    } else {
                        "a tcp"
                    }
                ),
            ));
        }
        let d = |d: Dur| humantime::format_duration(d.0).to_string();
        let timings = [
            ("interval", self.interval),
            ("fastinterval", self.fastinterval),
            ("downinterval", self.downinterval),
            ("timeout", self.timeout),
        ];
        let mut timings_ok = true;
        for (key, v) in timings {
            if !(CHECK_MIN..=CHECK_MAX).contains(&v.0) {
                timings_ok = false;
                p.push((
                    key,
                    key,
                    format!("check.{key} must be from 10ms to 1h, found {}", d(v)),
                ));
            }
        }
        if timings_ok {
            for (key, v) in [
                ("interval", self.interval),
                ("downinterval", self.downinterval),
            ] {
                if self.timeout.0 > v.0 {
                    p.push((
                        "timeout",
                        key,
                        // Checks of a backend run one after the other: a probe, then a sleep.
                        format!(
                            "check.timeout {} is longer than check.{key} {}: a server that \
                             stops answering would be checked every {}, not every {}; make the \
                             timeout at most the {key}",
                            d(self.timeout),
                            d(v),
                            d(Dur(self.timeout.0 + v.0)),
                            d(v)
                        ),
                    ));
                }
            }
        }
        for (key, v) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=COUNT_MAX).contains(&v) {
                p.push((
                    key,
                    key,
                    format!("check.{key} must be from 1 to {COUNT_MAX}, found {v}"),
                ));
            }
        }
        p
    }
}

impl CheckKind {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckKind::Tcp => "tcp",
            CheckKind::Http => "http",
            CheckKind::None => "none",
        }
    }
}

impl Default for Check {
    fn default() -> Self {
        Check {
            kind: CheckKind::Tcp,
            port: None,
            method: HttpMethod::Get,
            path: "/".into(),
            host: None,
            status: StatusRange(200, 399),
            body: None,
            interval: Dur(Duration::from_secs(2)),
            fastinterval: Dur(Duration::from_millis(500)),
            downinterval: Dur(Duration::from_secs(2)),
            timeout: Dur(Duration::from_secs(1)),
            rise: 2,
            fall: 3,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendCfg {
    pub name: Spanned<String>,
    pub address: Spanned<IpAddr>,
    /// Resolved from the LB's neighbour table when absent.
    pub mac: Option<Mac>,
    #[serde(default = "one")]
    pub weight: u32,
    pub group: Option<String>,
    #[serde(default = "pool")]
    pub role: Spanned<Role>,
    /// NAT: the port the server listens on (the service's port when absent). A DSR backend
    /// answers on the VIP's own port, so there it must be absent or the service's port.
    pub port: Option<u16>,
    /// Overrides of the service's check.
    pub check: Option<toml::Table>,
}

fn one() -> u32 {
    1
}

fn pool() -> Spanned<Role> {
    Spanned::new(0..0, Role::Pool)
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceCfg {
    pub name: Spanned<String>,
    pub vip: Spanned<IpAddr>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Proto,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default = "maglev_default")]
    pub maglev_size: Spanned<u32>,
    #[serde(default = "idle_default")]
    pub idle_timeout: Dur,
    #[serde(default)]
    pub no_backend: NoBackend,
    #[serde(default)]
    pub check: Check,
    /// NAT: LB addresses the service's flows leave from (a pool, same family as the VIP).
    /// Absent: `daemon.snat` for the VIP's family, else the LB's own address facing each
    /// backend.
    pub snat: Option<Vec<IpAddr>>,
    /// NAT: LB source ports of the service's flows.
    pub snat_ports: Option<PortRange>,
    /// NAT: passive health (refused or unanswered attempts count as failures).
    pub observe: Option<bool>,
    /// NAT: consecutive failed attempts that mark a backend down (with `observe`).
    pub error_limit: Option<u32>,
    /// NAT: an attempt with no SYN-ACK after this long has failed (with `observe`).
    pub syn_timeout: Option<Dur>,
    /// NAT: refused-connection recovery (a backend's RST to a SYN is hidden from the client
    /// while another backend can take its retransmission).
    pub recover: Option<bool>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendCfg>,
}

/// NAT defaults: source ports below the kernel's default ephemeral range (32768-60999), so
/// the LB's own connections (health checks) never take a port a NAT flow holds.
pub const DEFAULT_SNAT_PORTS: PortRange = PortRange(10_000, 32_767);
pub const DEFAULT_ERROR_LIMIT: u32 = 3;
pub const DEFAULT_SYN_TIMEOUT: Duration = Duration::from_secs(1);
/// Bounds of `error_limit`.
const ERROR_LIMIT_MAX: u32 = 1000;
/// Bounds of `syn_timeout`: under 100ms a SYN-ACK on a slow path is taken for a failure; a
/// client gives up on an attempt after about two minutes.
const SYN_TIMEOUT_MIN: Duration = Duration::from_millis(100);
const SYN_TIMEOUT_MAX: Duration = Duration::from_secs(60);
/// Lowest NAT source port: the well-known and registered-by-convention ports stay the host's.
const SNAT_PORT_MIN: u16 = 1024;

/// A NAT service's settings, with every default filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatCfg {
    /// The pool flows leave from; empty: each backend's facing address.
    pub pool: Vec<IpAddr>,
    pub ports: PortRange,
    pub observe: bool,
    pub error_limit: u32,
    pub syn_timeout: Duration,
    pub recover: bool,
}

fn maglev_default() -> Spanned<u32> {
    Spanned::new(0..0, steer_common::MAGLEV_DEFAULT_SIZE)
}
fn idle_default() -> Dur {
    Dur(Duration::from_secs(
        steer_common::DEFAULT_IDLE_TIMEOUT_S as u64,
    ))
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonCfg {
    /// Interfaces the datapath is attached to.
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpModeCfg,
    /// bpffs directory for the pinned maps and link.
    pub pin_dir: PathBuf,
    pub state_file: PathBuf,
    pub socket: PathBuf,
    /// Group allowed on the control socket besides root (socket mode 0660).
    pub socket_group: Option<String>,
    /// Address of the Prometheus endpoint and the stats page: loopback `127.0.0.1:9469` by
    /// default, another address only when set explicitly, `"off"` for none.
    #[serde(deserialize_with = "metrics_addr")]
    pub metrics: Option<std::net::SocketAddr>,
    pub max_flows: u32,
    pub max_services: u32,
    /// NAT: host-wide source pool (IPv4 and IPv6 addresses, up to `NAT_POOL_MAX` of each)
    /// for NAT services that have no `snat` of their own.
    pub snat: Vec<IpAddr>,
    /// Routing table where the daemon keeps a blackhole route per VIP while its service can
    /// take new flows, for a BGP speaker (BIRD, GoBGP) to export: the host is announced only
    /// while its datapath is attached and has somewhere to send new flows. Off when absent.
    pub announce_table: Option<u32>,
}

/// Where metrics and the stats page are served unless `[daemon] metrics` says otherwise.
pub const DEFAULT_METRICS: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9469);

/// `metrics = "ADDRESS:PORT"` or `metrics = "off"`.
fn metrics_addr<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s == "off" {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "expected an address and port (\"127.0.0.1:9469\", \"[::1]:9469\") or \"off\", found {s:?}"
        ))
    })
}

impl Default for DaemonCfg {
    fn default() -> Self {
        DaemonCfg {
            interfaces: Vec::new(),
            xdp_mode: XdpModeCfg::Native,
            pin_dir: "/sys/fs/bpf/steer".into(),
            state_file: "/var/lib/steer/state.json".into(),
            socket: "/run/steer/steer.sock".into(),
            socket_group: None,
            metrics: Some(DEFAULT_METRICS),
            max_flows: steer_common::MAX_FLOWS,
            max_services: steer_common::MAX_SERVICES,
            snat: Vec::new(),
            announce_table: None,
        }
    }
}

/// `[cluster]`: where the LB hosts keep the operator's intent.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterCfg {
    /// etcd client URLs (`http://HOST:PORT`), tried in turn.
    pub etcd: Vec<String>,
    /// Key prefix of this cluster's intent (one etcd may serve several).
    #[serde(default = "cluster_prefix_default")]
    pub prefix: String,
    /// This LB host's name to the others (default: the host name).
    #[serde(default)]
    pub host: Option<String>,
}

impl ClusterCfg {
    /// `host`, or the kernel's host name.
    pub fn host_name(&self) -> String {
        self.host.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        })
    }
}

fn cluster_prefix_default() -> String {
    "/steer/".into()
}

impl ClusterCfg {
    /// Adds the errors in `[cluster]` (at `at`) to `r`.
    fn validate(&self, at: &Node, r: &mut Report) {
        let urls = at.get("etcd");
        if self.etcd.is_empty() {
            r.at(
                urls.or(at).span.clone(),
                "cluster.etcd is empty: list the etcd client URLs, such as \
                 etcd = [\"http://10.0.0.2:2379\"]"
                    .to_string(),
            );
        }
        for (i, u) in self.etcd.iter().enumerate() {
            let ok = u
                .strip_prefix("http://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace));
            if !ok {
                r.at(
                    urls.at(i).span.clone(),
                    format!(
                        "cluster.etcd: {u:?} is not an http:// URL (etcd's client URL; TLS is \
                         not supported yet)"
                    ),
                );
            }
        }
        if let Some(h) = &self.host {
            if h.is_empty() || h.contains(['/', ' ']) {
                r.at(
                    at.get("host").span.clone(),
                    format!("cluster.host must be a name without '/' or spaces, found {h:?}"),
                );
            }
        }
        if !self.prefix.starts_with('/') {
            r.at(
                at.get("prefix").span.clone(),
                format!(
                    "cluster.prefix must start with '/', found {:?}",
                    self.prefix
                ),
            );
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonCfg,
    /// Several LB hosts sharing the operator's intent in etcd; absent: the state file alone.
    #[serde(default)]
    pub cluster: Option<ClusterCfg>,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceCfg>,
    /// The file it was read from (not in the TOML).
    #[serde(skip)]
    pub path: PathBuf,
}

impl Config {
    /// Every backend with its service, in config order.
    pub fn backends(&self) -> impl Iterator<Item = (&ServiceCfg, &BackendCfg)> {
        self.services
            .iter()
            .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
    }

    /// The backend of that name, with its service.
    pub fn backend(&self, name: &str) -> Option<(&ServiceCfg, &BackendCfg)> {
        self.backends().find(|(_, b)| b.name.get_ref() == name)
    }

    /// The service of that name.
    pub fn service(&self, name: &str) -> Option<&ServiceCfg> {
        self.services.iter().find(|s| s.name.get_ref() == name)
    }
}

/// 1-based line and column (in characters) of byte `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |nl| nl + 1);
    (line, before[start..].chars().count() + 1)
}

/// The config text as a tree of spanned values. The typed structs keep most values without a
/// span (their types are what the daemon reads), so errors find their position here, by key.
#[derive(Debug)]
struct Node {
    /// Where the value is in the text (a table's: its header or braces).
    span: Range<usize>,
    kids: Kids,
}

#[derive(Debug)]
enum Kids {
    Table(BTreeMap<String, Node>),
    Array(Vec<Node>),
    Leaf,
}

/// What an absent key's lookup finds: the start of the file.
static NOWHERE: Node = Node {
    span: 0..0,
    kids: Kids::Leaf,
};

impl Node {
    /// The value of `key` in this table, or `NOWHERE`.
    fn get(&self, key: &str) -> &Node {
        match &self.kids {
            Kids::Table(t) => t.get(key).unwrap_or(&NOWHERE),
            _ => &NOWHERE,
        }
    }

    /// Item `i` of this array, or `NOWHERE`.
    fn at(&self, i: usize) -> &Node {
        match &self.kids {
            Kids::Array(a) => a.get(i).unwrap_or(&NOWHERE),
            _ => &NOWHERE,
        }
    }

    fn is_present(&self) -> bool {
        !std::ptr::eq(self, &NOWHERE)
    }

    /// This node if it is in the text, else `other`.
    fn or<'a>(&'a self, other: &'a Node) -> &'a Node {
        if self.is_present() {
            self
        } else {
            other
        }
    }
}

impl<'de> Deserialize<'de> for Kids {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Kids;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a TOML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Kids, E> {
                Ok(Kids::Leaf)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Kids, E> {
                Ok(Kids::Leaf)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Kids, E> {
                Ok(Kids::Leaf)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Kids, E> {
                Ok(Kids::Leaf)
            }
            fn visit_str<E>(self, _: &str) -> Result<Kids, E> {
                Ok(Kids::Leaf)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Kids, A::Error> {
                let mut v = Vec::new();
                while let Some(n) = a.next_element::<Spanned<Kids>>()? {
                    v.push(n.into());
                }
                Ok(Kids::Array(v))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Kids, A::Error> {
                let mut t = BTreeMap::new();
                while let Some((k, n)) = a.next_entry::<String, Spanned<Kids>>()? {
                    t.insert(k, n.into());
                }
                Ok(Kids::Table(t))
            }
        }
        d.deserialize_any(V)
    }
}

impl From<Spanned<Kids>> for Node {
    fn from(s: Spanned<Kids>) -> Node {
        Node {
            span: s.span(),
            kids: s.into_inner(),
        }
    }
}

/// The errors found so far in one text.
struct Report<'a> {
    text: &'a str,
    file: &'a Path,
    errors: Vec<ConfigError>,
}

impl Report<'_> {
    /// An error at the start of `span` (line 1, column 1 for `NOWHERE`'s).
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message: message.into(),
        });
    }

    /// Every error, in the order of the text.
    fn finish(mut self) -> ConfigErrors {
        self.errors.sort_by_key(|e| (e.line, e.column));
        ConfigErrors(self.errors)
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: 0,
                column: 0,
                message: format!("cannot read the config: {e}"),
            }])
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` only names it in errors. Every error is
    /// reported, in the order of the text, each at the value it is about; a TOML syntax or
    /// type error stops the parse, so it is reported alone.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigErrors> {
        let mut r = Report {
            text,
            file: path,
            errors: Vec::new(),
        };
        let mut cfg: Config = match toml::from_str(text) {
            Ok(c) => c,
            Err(e) => {
                r.at(e.span().unwrap_or(0..0), e.message().trim_end());
                return Err(r.finish());
            }
        };
        cfg.path = path.to_path_buf();
        // The text parsed as a `Config`, so it parses as a tree too, but for a datetime in a
        // backend's check (which `Spanned` cannot carry): then errors point at line 1.
        let doc = Node {
            span: 0..0,
            kids: toml::from_str(text).unwrap_or(Kids::Leaf),
        };
        cfg.daemon.validate(doc.get("daemon"), &mut r);
        if let Some(c) = &cfg.cluster {
            c.validate(doc.get("cluster"), &mut r);
        }
        let mut seen = Seen {
            max_services: cfg.daemon.max_services,
            total_services: cfg.services.len(),
            total_backends: cfg.services.iter().map(|s| s.backends.len()).sum(),
            ..Seen::default()
        };
        for (i, s) in cfg.services.iter().enumerate() {
            s.validate(doc.get("service").at(i), &mut seen, &mut r);
        }
        if r.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(r.finish())
        }
    }
}

/// What the services before the one being checked already use, and the limits on counts.
#[derive(Default)]
struct Seen {
    services: BTreeSet<String>,
    backends: BTreeSet<String>,
    listeners: BTreeSet<(IpAddr, u16, Proto)>,
    max_services: u32,
    total_services: usize,
    total_backends: usize,
}

/// Longest service, backend or group name.
const NAME_MAX: usize = 64;

/// Why `name` cannot name a service, backend or group (`what`), if it cannot. Names reach
/// shell commands (`rollout --exec`), URLs and metric labels, so they hold only characters
/// that mean nothing there.
fn name_problem(what: &str, name: &str) -> Option<String> {
    const ALLOWED: &str = "names may hold only ASCII letters, digits, '.', '_' and '-'";
    if name.is_empty() {
        Some(format!("{what} name is empty; {ALLOWED}"))
    } else if name.len() > NAME_MAX {
        Some(format!(
            "{what} name {name:?} is {} bytes long; at most {NAME_MAX} are allowed",
            name.len()
        ))
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(format!(
            "{what} name {name:?} holds {c:?}; {ALLOWED} (names reach shell commands and URLs)"
        ))
    } else if name == "." || name == ".." {
        Some(format!(
            "{what} name {name:?} is not allowed: in a path or URL it means a directory"
        ))
    } else {
        None
    }
}

/// Why `ip` cannot be a VIP or a backend's address, if it cannot.
fn not_unicast(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("unspecified")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if matches!(ip, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// Bounds of a service's `idle_timeout`: a flow idle this long is gone.
const IDLE_MIN: Duration = Duration::from_secs(1);
const IDLE_MAX: Duration = Duration::from_secs(24 * 3600);

/// Largest `daemon.max_flows`. The connection table is preallocated at about 100 bytes a flow
/// (a 40-byte key, a 16-byte value and the kernel's LRU element around them), so 64 Mi flows
/// already hold some 6.7 GB of kernel memory; a larger number is a typo.
pub const MAX_FLOWS_LIMIT: u32 = 64 << 20;

/// Largest `daemon.max_services`. Each service preallocates two Maglev tables (the one in use
/// and the next) of 65,537 four-byte slots, 512 KiB whatever its size, so 1024 services hold
/// 512 MiB of kernel memory before the first flow.
pub const MAX_SERVICES_LIMIT: u32 = 1024;

/// Longest interface name the kernel takes (IFNAMSIZ less its NUL).
const IFNAME_MAX: usize = 15;

/// Why the kernel would refuse `name` as an interface name (its `dev_valid_name`), if it would.
fn ifname_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("it is empty".into())
    } else if name.len() > IFNAME_MAX {
        Some(format!(
            "it is {} bytes long and the kernel allows at most {IFNAME_MAX}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not allowed".into())
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || c.is_whitespace())
            .map(|c| format!("it holds {c:?}, and '/', ':' and whitespace are not allowed"))
    }
}

impl XdpModeCfg {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpModeCfg::Native => "native",
            XdpModeCfg::Generic => "generic",
        }
    }
}

impl DaemonCfg {
    /// The `[daemon]` settings that differ in `new` and that only a restart applies (the
    /// datapath's attachment and map sizes, the daemon's files and socket), one line each in
    /// the form `"max_flows: 65536 → 131072"`. `metrics` and `socket_group` apply live.
    pub fn restart_needed(&self, new: &DaemonCfg) -> Vec<String> {
        let mut out = Vec::new();
        // One line when `self.$key` and `new.$key` differ, named after the field (its key).
        macro_rules! diff {
            ($key:ident, $show:expr) => {
                if self.$key != new.$key {
                    let show = $show;
                    let (old, new) = (show(&self.$key), show(&new.$key));
                    out.push(format!("{}: {old} → {new}", stringify!($key)));
                }
            };
        }
        let path = |p: &PathBuf| p.display().to_string();
        diff!(interfaces, |v: &Vec<String>| format!("{v:?}"));
        diff!(xdp_mode, |m: &XdpModeCfg| m.as_str().to_string());
        diff!(pin_dir, path);
        diff!(state_file, path);
        diff!(socket, path);
        diff!(max_flows, u32::to_string);
        diff!(max_services, u32::to_string);
        diff!(announce_table, |t: &Option<u32>| t
            .map_or("none".into(), |t| t.to_string()));
        out
    }

    /// Adds the errors in `[daemon]` (at `at`) to `r`.
    fn validate(&self, at: &Node, r: &mut Report) {
        let ifaces = at.get("interfaces");
        if self.interfaces.is_empty() {
            r.at(
                ifaces.or(at).span.clone(),
                format!(
                    "daemon.interfaces is {}: the datapath would run nowhere; list the \
                     interfaces clients' packets arrive on, such as interfaces = [\"eth0\"]",
                    if ifaces.is_present() {
                        "empty"
                    } else {
                        "missing"
                    }
                ),
            );
        }
        for (i, name) in self.interfaces.iter().enumerate() {
            let span = ifaces.at(i).span.clone();
            if let Some(why) = ifname_problem(name) {
                r.at(
                    span,
                    format!("daemon.interfaces: {name:?} is not an interface name: {why}"),
                );
            } else if self.interfaces[..i].contains(name) {
                r.at(span, format!("daemon.interfaces lists {name:?} twice"));
            }
        }
        if !(1..=MAX_FLOWS_LIMIT).contains(&self.max_flows) {
            r.at(
                at.get("max_flows").span.clone(),
                format!(
                    "daemon.max_flows must be from 1 to {MAX_FLOWS_LIMIT} (64 Mi flows, about \
                     100 bytes each, preallocated), found {}",
                    self.max_flows
                ),
            );
        }
        if let Some(t) = self.announce_table {
            // 0 is unspecified; 253-255 are the kernel's default, main and local tables.
            if t == 0 || (253..=255).contains(&t) {
                r.at(
                    at.get("announce_table").span.clone(),
                    format!(
                        "daemon.announce_table must be a routing table of its own (not 0, 253 \
                         default, 254 main or 255 local), found {t}"
                    ),
                );
            }
        }
        if !(1..=MAX_SERVICES_LIMIT).contains(&self.max_services) {
            r.at(
                at.get("max_services").span.clone(),
                format!(
                    "daemon.max_services must be from 1 to {MAX_SERVICES_LIMIT} (each service \
                     preallocates 512 KiB of Maglev tables), found {}",
                    self.max_services
                ),
            );
        }
        let snat = at.get("snat");
        for (i, a) in self.snat.iter().enumerate() {
            let span = snat.at(i).span.clone();
            if let Some(why) = not_unicast(*a) {
                r.at(
                    span,
                    format!("daemon.snat: {a} is {why}; give addresses of this host"),
                );
            } else if self.snat[..i].contains(a) {
                r.at(span, format!("daemon.snat lists {a} twice"));
            } else if self.snat[..i]
                .iter()
                .filter(|o| o.is_ipv4() == a.is_ipv4())
                .count()
                == steer_common::NAT_POOL_MAX
            {
                r.at(
                    span,
                    format!(
                        "daemon.snat holds more than {} {} addresses; {a} is the first beyond \
                         them",
                        steer_common::NAT_POOL_MAX,
                        if a.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                );
            }
        }
        if let Some(m) = self.metrics {
            if m.port() == 0 {
                r.at(
                    at.get("metrics").span.clone(),
                    format!("daemon.metrics needs a port (9469 is steer's), found {m}"),
                );
            }
        }
    }
}

impl ServiceCfg {
    /// Adds the errors in this service (at `at`) to `r`.
    fn validate(&self, at: &Node, seen: &mut Seen, r: &mut Report) {
        let name = self.name.get_ref();
        let vip = *self.vip.get_ref();
        if let Some(e) = name_problem("service", name) {
            r.at(self.name.span(), e);
        }
        if !seen.services.insert(name.clone()) {
            r.at(
                self.name.span(),
                format!("service name {name:?} is used twice"),
            );
        }
        let max = seen.max_services;
        if seen.services.len() == max as usize + 1 && (1..=MAX_SERVICES_LIMIT).contains(&max) {
            r.at(
                self.name.span(),
                format!(
                    "the config has {} services but daemon.max_services is {max}; service \
                     {name:?} is the first beyond it",
                    seen.total_services
                ),
            );
        }
        if let Some(why) = not_unicast(vip) {
            r.at(
                self.vip.span(),
                format!("vip {vip} is {why}; a VIP must be a unicast address clients send to"),
            );
        }
        if self.port == 0 {
            r.at(
                at.get("port").span.clone(),
                "port must be from 1 to 65535, found 0",
            );
        }
        if !seen.listeners.insert((vip, self.port, self.protocol)) {
            r.at(
                self.vip.span(),
                format!(
                    "another service already has {}/{}",
                    SocketAddr::new(vip, self.port),
                    self.protocol
                ),
            );
        }
        let size = *self.maglev_size.get_ref();
        if !maglev::is_prime(size) || !(3..=steer_common::MAGLEV_MAX_SIZE).contains(&size) {
            r.at(
                self.maglev_size.span(),
                format!(
                    "maglev_size must be a prime from 3 to {}, found {size}",
                    steer_common::MAGLEV_MAX_SIZE
                ),
            );
        }
        let idle = self.idle_timeout.0;
        if !(IDLE_MIN..=IDLE_MAX).contains(&idle) {
            r.at(
                at.get("idle_timeout").span.clone(),
                format!(
                    "idle_timeout must be from 1s to 24h, found {}",
                    humantime::format_duration(idle)
                ),
            );
        }
        self.validate_nat(at, r);
        let chk = at.get("check");
        for (key, alt, message) in self.check.problems(self.protocol) {
            let span = chk.get(key).or(chk.get(alt)).or(chk);
            r.at(span.or(at.get("protocol")).span.clone(), message);
        }
        for j in 0..self.backends.len() {
            self.validate_backend(j, at.get("backend").at(j), seen, r);
        }
    }

    /// Adds the errors in the NAT settings of this service (at `at`) to `r`: in NAT mode,
    /// their values; in DSR mode, any that is set (they would do nothing).
    fn validate_nat(&self, at: &Node, r: &mut Report) {
        let vip = *self.vip.get_ref();
        if self.mode == Mode::Dsr {
            let set = [
                ("snat", self.snat.is_some()),
                ("snat_ports", self.snat_ports.is_some()),
                ("error_limit", self.error_limit.is_some()),
                ("syn_timeout", self.syn_timeout.is_some()),
                ("observe", self.observe == Some(true)),
                ("recover", self.recover == Some(true)),
            ];
            for (key, is_set) in set {
                if is_set {
                    r.at(
                        at.get(key).span.clone(),
                        format!(
                            "{key} is a NAT setting, but service {:?} is in mode \"dsr\" (its \
                             replies bypass this host, which sees no refusal and no reply): \
                             set mode = \"nat\", or remove {key}",
                            self.name.get_ref()
                        ),
                    );
                }
            }
            return;
        }
        let snat = at.get("snat");
        let pool = self.snat.as_deref().unwrap_or_default();
        if self.snat.is_some() && pool.is_empty() {
            r.at(
                snat.span.clone(),
                "snat is empty: list the LB addresses the service's flows leave from, or \
                 remove it to use the address facing each backend",
            );
        }
        for (i, a) in pool.iter().enumerate() {
            let span = snat.at(i).span.clone();
            if a.is_ipv4() != vip.is_ipv4() {
                r.at(
                    span,
                    format!(
                        "snat: {a} is {} but the service's VIP {vip} is not; a NAT service's \
                         flows leave from addresses of the VIP's family",
                        if a.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                );
            } else if let Some(why) = not_unicast(*a) {
                r.at(
                    span,
                    format!("snat: {a} is {why}; give addresses of this host"),
                );
            } else if pool[..i].contains(a) {
                r.at(span, format!("snat lists {a} twice"));
            } else if i == steer_common::NAT_POOL_MAX {
                r.at(
                    span,
                    format!(
                        "snat holds {} addresses; at most {} are allowed, and {a} is the first \
                         beyond them",
                        pool.len(),
                        steer_common::NAT_POOL_MAX
                    ),
                );
            }
        }
        if let Some(PortRange(lo, hi)) = self.snat_ports {
            let span = at.get("snat_ports").span.clone();
            if lo > hi {
                r.at(
                    span,
                    format!("snat_ports {lo}-{hi} is empty: the first port is above the last"),
                );
            } else if lo < SNAT_PORT_MIN {
                r.at(
                    span,
                    format!(
                        "snat_ports {lo}-{hi} starts below {SNAT_PORT_MIN}: ports under \
                         {SNAT_PORT_MIN} are the host's own services'; start at {SNAT_PORT_MIN} \
                         or above"
                    ),
                );
            }
        }
        if self.observe == Some(true) && self.check.kind == CheckKind::None {
            r.at(
                at.get("observe").span.clone(),
                "observe = true needs health checks: it marks a backend down, and only checks \
                 bring it back; give the service a check, or set observe = false",
            );
        }
        if let Some(n) = self.error_limit {
            if !(1..=ERROR_LIMIT_MAX).contains(&n) {
                r.at(
                    at.get("error_limit").span.clone(),
                    format!("error_limit must be from 1 to {ERROR_LIMIT_MAX}, found {n}"),
                );
            }
        }
        if let Some(t) = self.syn_timeout {
            if !(SYN_TIMEOUT_MIN..=SYN_TIMEOUT_MAX).contains(&t.0) {
                r.at(
                    at.get("syn_timeout").span.clone(),
                    format!(
                        "syn_timeout must be from 100ms to 1m, found {}",
                        humantime::format_duration(t.0)
                    ),
                );
            }
        }
    }

    /// The NAT settings of this service with every default filled in (`daemon` gives the
    /// host-wide pool); `None` in DSR mode.
    pub fn nat(&self, daemon: &DaemonCfg) -> Option<NatCfg> {
        if self.mode != Mode::Nat {
            return None;
        }
        let v4 = self.vip.get_ref().is_ipv4();
        let pool = match &self.snat {
            Some(p) => p.clone(),
            None => daemon
                .snat
                .iter()
                .filter(|a| a.is_ipv4() == v4)
                .copied()
                .collect(),
        };
        Some(NatCfg {
            pool,
            ports: self.snat_ports.unwrap_or(DEFAULT_SNAT_PORTS),
            observe: self.observes(),
            error_limit: self.error_limit.unwrap_or(DEFAULT_ERROR_LIMIT),
            syn_timeout: self.syn_timeout.map_or(DEFAULT_SYN_TIMEOUT, |d| d.0),
            recover: self.recover.unwrap_or(true),
        })
    }

    /// Whether passive health is on: in NAT mode, by default when the service has active
    /// checks (only they bring back a backend it took down).
    pub fn observes(&self) -> bool {
        self.mode == Mode::Nat && self.observe.unwrap_or(self.check.kind != CheckKind::None)
    }

    /// The port a backend listens on: its own `port` (NAT), else the service's.
    pub fn port_of(&self, b: &BackendCfg) -> u16 {
        b.port.unwrap_or(self.port)
    }

    /// Adds the errors in backend `j` (at `at`) to `r`.
    fn validate_backend(&self, j: usize, at: &Node, seen: &mut Seen, r: &mut Report) {
        let b = &self.backends[j];
        let bname = b.name.get_ref();
        if let Some(e) = name_problem("backend", bname) {
            r.at(b.name.span(), e);
        }
        if !seen.backends.insert(bname.clone()) {
            r.at(
                b.name.span(),
                format!("backend name {bname:?} is used twice (backend names are unique per host)"),
            );
        }
        if seen.backends.len() == steer_common::MAX_BACKENDS as usize + 1 {
            r.at(
                b.name.span(),
                format!(
                    "the config has {} backends but steer holds at most {}; backend {bname:?} \
                     is the first beyond it",
                    seen.total_backends,
                    steer_common::MAX_BACKENDS
                ),
            );
        }
        let addr = *b.address.get_ref();
        let vip = *self.vip.get_ref();
        if addr.is_ipv4() != vip.is_ipv4() {
            r.at(
                b.address.span(),
                format!(
                    "backend {bname:?} is {} but its service's VIP {vip} is not",
                    if addr.is_ipv4() { "IPv4" } else { "IPv6" },
                ),
            );
        } else if addr == vip {
            r.at(
                b.address.span(),
                format!(
                    "backend {bname:?}: address {addr} is the service's VIP; give the server's \
                     own address"
                ),
            );
        } else if let Some(why) = not_unicast(addr) {
            r.at(
                b.address.span(),
                format!(
                    "backend {bname:?}: address {addr} is {why}; give the server's own unicast \
                     address"
                ),
            );
        } else if let Some(o) = self.backends[..j]
            .iter()
            .find(|o| *o.address.get_ref() == addr)
        {
            r.at(
                b.address.span(),
                format!(
                    "backend {bname:?} has the address of backend {:?}, {addr}: the backends \
                     of a service must be different servers",
                    o.name.get_ref()
                ),
            );
        }
        match (self.mode, b.port) {
            (_, Some(0)) => r.at(
                at.get("port").span.clone(),
                format!("backend {bname:?}: port must be from 1 to 65535, found 0"),
            ),
            (Mode::Dsr, Some(p)) if p != self.port => r.at(
                at.get("port").span.clone(),
                format!(
                    "backend {bname:?}: port {p} differs from the service's port {}, but in mode \
                     \"dsr\" the server answers on the VIP's own port (the packet is not \
                     rewritten); set mode = \"nat\" to reach it on port {p}, or remove port",
                    self.port
                ),
            ),
            _ => {}
        }
        if self.mode == Mode::Nat && b.mac.is_some() {
            r.at(
                at.get("mac").span.clone(),
                format!(
                    "backend {bname:?}: mac is for mode \"dsr\"; in mode \"nat\" the next hop \
                     and its MAC come from the kernel's routes and neighbours (the backend may \
                     be in another subnet): remove mac"
                ),
            );
        }
        let role = b.role();
        if role != Role::Pool {
            if self.backends[..j].iter().any(|o| o.role() == role) {
                r.at(
                    b.role.span(),
                    format!(
                        "service {:?} has more than one {role} backend",
                        self.name.get_ref()
                    ),
                );
            }
            if b.group.is_some() {
                r.at(
                    at.get("group").span.clone(),
                    format!(
                        "backend {bname:?} is the service's {role} backend; a group applies \
                         only to pool backends"
                    ),
                );
            }
        }
        if let Some(g) = &b.group {
            if let Some(e) = name_problem("group", g) {
                r.at(
                    at.get("group").span.clone(),
                    format!("backend {bname:?}: {e}"),
                );
            }
        }
        if let Some(t) = &b.check {
            match self.check_for(t) {
                Err(e) => r.at(
                    at.get("check").span.clone(),
                    format!("backend {bname:?}: check: {e}"),
                ),
                Ok(merged) if merged.kind == CheckKind::None && self.observes() => r.at(
                    at.get("check").span.clone(),
                    format!(
                        "backend {bname:?}: check type \"none\" in a service with observe on: \
                         passive health could mark it down and nothing would bring it back; \
                         give it a check, or set observe = false on the service"
                    ),
                ),
                Ok(merged) => {
                    // What is wrong with the service's check is said once, at the service.
                    let inherited: Vec<String> = self
                        .check
                        .problems(self.protocol)
                        .into_iter()
                        .map(|p| p.2)
                        .collect();
                    for (_, _, message) in merged.problems(self.protocol) {
                        if !inherited.contains(&message) {
                            r.at(
                                at.get("check").span.clone(),
                                format!("backend {bname:?}: {message}"),
                            );
                        }
                    }
                }
            }
        }
    }

    pub fn proto(&self) -> Proto {
        self.protocol
    }

    pub fn no_backend(&self) -> NoBackend {
        self.no_backend
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The check of one of this service's backends: the service's, with the backend's
    /// overrides. `None` when it has no checks (`type = "none"`: always up).
    pub fn check_of(&self, b: &BackendCfg) -> Option<Check> {
        let c = match &b.check {
            // `parse` refuses invalid overrides; were one here, the service's check stands.
            Some(t) => self.check_for(t).unwrap_or_else(|_| self.check.clone()),
            None => self.check.clone(),
        };
        (c.kind != CheckKind::None).then_some(c)
    }

    /// The check of a backend: the service's, with the backend's overrides applied.
    pub fn check_for(&self, overrides: &toml::Table) -> Result<Check, String> {
        let mut base =
            toml::Table::try_from(CheckSer::from(&self.check)).map_err(|e| e.to_string())?;
        for (k, v) in overrides {
            base.insert(k.clone(), v.clone());
        }
        Check::deserialize(toml::Value::Table(base)).map_err(|e| e.to_string())
    }
}

impl BackendCfg {
    pub fn role(&self) -> Role {
        *self.role.get_ref()
    }
}

/// `Check` written back as TOML values, to merge a backend's overrides over it.
#[derive(serde::Serialize)]
struct CheckSer {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u16>,
    method: &'static str,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<String>,
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    interval: String,
    fastinterval: String,
    downinterval: String,
    timeout: String,
    rise: u32,
    fall: u32,
}

impl From<&Check> for CheckSer {
    fn from(c: &Check) -> Self {
        let d = |d: Dur| humantime::format_duration(d.0).to_string();
        CheckSer {
            kind: c.kind.as_str(),
            port: c.port,
            method: match c.method {
                HttpMethod::Get => "GET",
                HttpMethod::Head => "HEAD",
            },
            path: c.path.clone(),
            host: c.host.clone(),
            status: format!("{}-{}", c.status.0, c.status.1),
            body: c.body.clone(),
            interval: d(c.interval),
            fastinterval: d(c.fastinterval),
            downinterval: d(c.downinterval),
            timeout: d(c.timeout),
            rise: c.rise,
            fall: c.fall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigErrors> {
        Config::parse(s, Path::new("steer.toml"))
    }

    const GOOD: &str = r#"
[daemon]
interfaces = ["eth0"]

[[service]]
name = "web"
vip = "10.0.0.10"
port = 80
check = { type = "http", path = "/health", status = "200-299", interval = "1s", rise = 2, fall = 2 }

[[service.backend]]
name = "web-a"
address = "10.0.0.11"
mac = "02:00:00:00:00:11"

[[service.backend]]
name = "web-b"
address = "10.0.0.12"
weight = 2
check = { path = "/ready" }

[[service.backend]]
name = "sorry"
address = "10.0.0.50"
role = "maintenance"
"#;

    #[test]
    fn parses_a_good_config_with_defaults() {
        let c = parse(GOOD).unwrap();
        let s = &c.services[0];
        assert_eq!(s.port, 80);
        assert_eq!(*s.maglev_size.get_ref(), 65_537);
        assert_eq!(s.check.kind, CheckKind::Http);
        assert_eq!(s.check.status, StatusRange(200, 299));
        assert_eq!(s.check.timeout, Dur(Duration::from_secs(1)));
        assert_eq!(s.backends[0].mac, Some(Mac([2, 0, 0, 0, 0, 0x11])));
        assert_eq!(s.backends[1].weight, 2);
        let chk = s.check_for(s.backends[1].check.as_ref().unwrap()).unwrap();
        assert_eq!(chk.path, "/ready");
        assert_eq!(chk.interval, Dur(Duration::from_secs(1)));
        assert_eq!(s.backends[2].role(), Role::Maintenance);
        assert_eq!(c.daemon.socket, PathBuf::from("/run/steer/steer.sock"));
    }

    fn first_error(s: &str) -> String {
        parse(s).unwrap_err().0[0].to_string()
    }

    /// `services` with a valid `[daemon]` after them, so their lines stay as written.
    fn with_daemon(services: &str) -> String {
        format!("{services}\n[daemon]\ninterfaces = [\"eth0\"]\n")
    }

    fn errors(s: &str) -> Vec<String> {
        match parse(s) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn the_daemon_must_run_somewhere() {
        assert_eq!(
            errors("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n"),
            [
                "steer.toml:1:1: daemon.interfaces is missing: the datapath would run nowhere; \
              list the interfaces clients' packets arrive on, such as interfaces = [\"eth0\"]"
            ]
        );
        assert_eq!(
            errors("# no interfaces yet\n[daemon]\nxdp_mode = \"generic\"\n"),
            [
                "steer.toml:2:1: daemon.interfaces is missing: the datapath would run nowhere; \
              list the interfaces clients' packets arrive on, such as interfaces = [\"eth0\"]"
            ]
        );
        assert_eq!(
            errors("[daemon]\ninterfaces = []\n"),
            [
                "steer.toml:2:14: daemon.interfaces is empty: the datapath would run nowhere; \
              list the interfaces clients' packets arrive on, such as interfaces = [\"eth0\"]"
            ]
        );
    }

    #[test]
    fn the_announce_table_is_one_of_its_own() {
        assert_eq!(
            errors("[daemon]\ninterfaces = [\"eth0\"]\nannounce_table = 254\n"),
            ["steer.toml:3:18: daemon.announce_table must be a routing table of its own (not 0, 253 default, 254 main or 255 local), found 254"]
        );
        assert!(errors("[daemon]\ninterfaces = [\"eth0\"]\nannounce_table = 250\n").is_empty());
    }

    #[test]
    fn a_cluster_needs_etcd_urls_it_can_speak_to() {
        assert_eq!(
            errors("[daemon]\ninterfaces = [\"eth0\"]\n[cluster]\netcd = [\"https://10.0.0.2:2379\", \"10.0.0.3:2379\"]\nprefix = \"steer\"\n"),
            [
                "steer.toml:4:9: cluster.etcd: \"https://10.0.0.2:2379\" is not an http:// URL (etcd's client URL; TLS is not supported yet)",
                "steer.toml:4:34: cluster.etcd: \"10.0.0.3:2379\" is not an http:// URL (etcd's client URL; TLS is not supported yet)",
                "steer.toml:5:10: cluster.prefix must start with '/', found \"steer\"",
            ]
        );
        assert_eq!(
            errors("[daemon]\ninterfaces = [\"eth0\"]\n[cluster]\netcd = []\n"),
            ["steer.toml:4:8: cluster.etcd is empty: list the etcd client URLs, such as etcd = [\"http://10.0.0.2:2379\"]"]
        );
        assert!(errors(
            "[daemon]\ninterfaces = [\"eth0\"]\n[cluster]\netcd = [\"http://10.0.0.2:2379\"]\n"
        )
        .is_empty());
    }

    #[test]
    fn interface_names_are_ones_the_kernel_takes() {
        assert_eq!(
            errors("[daemon]\ninterfaces = [\"eth0\", \"\", \"a-very-long-name0\", \"br/0\", \"eth 1\", \"eth0:1\", \"..\", \"eth0\", \"veth-0123456789\"]\n"),
            [
                "steer.toml:2:23: daemon.interfaces: \"\" is not an interface name: it is empty",
                "steer.toml:2:27: daemon.interfaces: \"a-very-long-name0\" is not an interface name: it is 17 bytes long and the kernel allows at most 15",
                "steer.toml:2:48: daemon.interfaces: \"br/0\" is not an interface name: it holds '/', and '/', ':' and whitespace are not allowed",
                "steer.toml:2:56: daemon.interfaces: \"eth 1\" is not an interface name: it holds ' ', and '/', ':' and whitespace are not allowed",
                "steer.toml:2:65: daemon.interfaces: \"eth0:1\" is not an interface name: it holds ':', and '/', ':' and whitespace are not allowed",
                "steer.toml:2:75: daemon.interfaces: \"..\" is not an interface name: \".\" and \"..\" are not allowed",
                "steer.toml:2:81: daemon.interfaces lists \"eth0\" twice",
            ]
        );
    }

    #[test]
    fn table_sizes_are_bounded() {
        assert_eq!(
            errors("[daemon]\ninterfaces = [\"eth0\"]\nmax_flows = 0\nmax_services = 0\n"),
            [
                "steer.toml:3:13: daemon.max_flows must be from 1 to 67108864 (64 Mi flows, about 100 bytes each, preallocated), found 0",
                "steer.toml:4:16: daemon.max_services must be from 1 to 1024 (each service preallocates 512 KiB of Maglev tables), found 0",
            ]
        );
        assert_eq!(
            errors(
                "[daemon]\ninterfaces = [\"eth0\"]\nmax_flows = 67108865\nmax_services = 1025\n"
            )
            .len(),
            2
        );
        assert!(parse(
            "[daemon]\ninterfaces = [\"eth0\"]\nmax_flows = 67108864\nmax_services = 1024\n"
        )
        .is_ok());
    }

    #[test]
    fn unknown_field_is_refused_with_its_position() {
        let e = first_error(
            "[[service]]\nname = \"web\"\nvip = \"10.0.0.1\"\nport = 80\nprot = \"tcp\"\n",
        );
        assert!(e.starts_with("steer.toml:5:1: unknown field `prot`"), "{e}");
    }

    #[test]
    fn bad_values_say_what_was_expected() {
        let e = first_error("[[service]]\nname = \"web\"\nvip = \"10.0.0.300\"\nport = 80\n");
        assert!(
            e.starts_with("steer.toml:3:7:") && e.contains("IP address"),
            "{e}"
        );
        let e = first_error(
            "[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\nidle_timeout = \"soon\"\n",
        );
        assert!(e.contains("expected a duration"), "{e}");
        let e = first_error("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\nmac = \"02:00\"\n");
        assert!(
            e.starts_with("steer.toml:8:7:") && e.contains("MAC address"),
            "{e}"
        );
        let e = first_error("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\ncheck = { status = \"700\" }\n");
        assert!(e.contains("expected a status"), "{e}");
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let e = first_error(&with_daemon(
            "[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\nmaglev_size = 1000\n",
        ));
        assert_eq!(
            e,
            "steer.toml:5:15: maglev_size must be a prime from 3 to 65537, found 1000"
        );
        let errs = parse(&with_daemon(
            "[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\n[[service.backend]]\nname = \"a\"\naddress = \"fd00::2\"\n",
        ))
        .unwrap_err();
        let all = errs.to_string();
        assert!(
            all.contains("steer.toml:9:8: backend name \"a\" is used twice"),
            "{all}"
        );
        assert!(
            all.contains("steer.toml:10:11: backend \"a\" is IPv6"),
            "{all}"
        );
    }

    #[test]
    fn metrics_on_loopback_unless_set_explicitly() {
        let daemon = |t: &str| {
            parse(&format!("[daemon]\ninterfaces = [\"eth0\"]\n{t}"))
                .unwrap()
                .daemon
                .metrics
        };
        assert_eq!(daemon(""), Some("127.0.0.1:9469".parse().unwrap()));
        assert_eq!(
            daemon("metrics = \"0.0.0.0:9469\"\n"),
            Some("0.0.0.0:9469".parse().unwrap())
        );
        assert_eq!(daemon("metrics = \"off\"\n"), None);
        let e = first_error("[daemon]\nmetrics = \"localhost\"\ninterfaces = [\"eth0\"]\n");
        assert!(
            e.starts_with("steer.toml:2:11: expected an address and port"),
            "{e}"
        );
        let e = first_error("[daemon]\nmetrics = \"[::1]:0\"\ninterfaces = [\"eth0\"]\n");
        assert_eq!(
            e,
            "steer.toml:2:11: daemon.metrics needs a port (9469 is steer's), found [::1]:0"
        );
    }

    #[test]
    fn every_error_is_reported_in_the_order_of_the_text() {
        let errs = parse("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\nmaglev_size = 4\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.3\"\n[daemon]\nmetrics = \"10.0.0.1:0\"\ninterfaces = [\"eth0\"]\n").unwrap_err();
        let at: Vec<(usize, usize)> = errs.0.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(at, [(5, 15), (10, 8), (13, 11)], "{errs}");
    }

    #[test]
    fn maintenance_is_never_the_fallback_server() {
        let e = first_error(&with_daemon("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.backend]]\nname = \"m\"\naddress = \"10.0.0.9\"\nrole = \"maintenance\"\n[[service.backend]]\nname = \"f\"\naddress = \"10.0.0.9\"\nrole = \"fallback\"\n"));
        assert!(e.contains("must be different servers"), "{e}");
    }

    #[test]
    fn roles_are_named_as_written() {
        let e = first_error(&with_daemon("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.backend]]\nname = \"m\"\naddress = \"10.0.0.8\"\nrole = \"maintenance\"\n[[service.backend]]\nname = \"n\"\naddress = \"10.0.0.9\"\nrole = \"maintenance\"\n"));
        assert_eq!(
            e,
            "steer.toml:12:8: service \"w\" has more than one maintenance backend"
        );
        let c = parse(&with_daemon("[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 53\nprotocol = \"udp\"\nno_backend = \"drop\"\ncheck = { type = \"none\" }\n")).unwrap();
        let s = &c.services[0];
        assert_eq!(
            (s.proto(), s.no_backend(), s.mode()),
            (Proto::Udp, NoBackend::Drop, Mode::Dsr)
        );
    }

    #[test]
    fn a_backend_is_a_server_of_its_own() {
        let errs = errors(&with_daemon(
            r#"[[service]]
name = "w"
vip = "10.0.0.1"
port = 80
[[service.backend]]
name = "a"
address = "10.0.0.2"
[[service.backend]]
name = "sorry"
address = "10.0.0.2"
role = "maintenance"
[[service.backend]]
name = "self"
address = "10.0.0.1"
[[service.backend]]
name = "any"
address = "0.0.0.0"
role = "fallback"
"#,
        ));
        assert_eq!(
            errs,
            [
                "steer.toml:10:11: backend \"sorry\" has the address of backend \"a\", 10.0.0.2: the backends of a service must be different servers",
                "steer.toml:14:11: backend \"self\": address 10.0.0.1 is the service's VIP; give the server's own address",
                "steer.toml:17:11: backend \"any\": address 0.0.0.0 is unspecified; give the server's own unicast address",
            ]
        );
        // The same address in two services is two services of one server: fine.
        assert_eq!(
            errors(&with_daemon(
                "[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\n[[service]]\nname = \"x\"\nvip = \"10.0.0.1\"\nport = 81\n[[service.backend]]\nname = \"b\"\naddress = \"10.0.0.2\"\n"
            )),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_vip_is_a_unicast_address_on_a_real_port() {
        let errs = errors(&with_daemon(
            "[[service]]\nname = \"a\"\nvip = \"0.0.0.0\"\nport = 0\n[[service]]\nname = \"b\"\nvip = \"224.0.0.1\"\nport = 80\n[[service]]\nname = \"c\"\nvip = \"255.255.255.255\"\nport = 80\n[[service]]\nname = \"d\"\nvip = \"::\"\nport = 80\n[[service]]\nname = \"e\"\nvip = \"ff02::1\"\nport = 80\n",
        ));
        assert_eq!(
            errs,
            [
                "steer.toml:3:7: vip 0.0.0.0 is unspecified; a VIP must be a unicast address clients send to",
                "steer.toml:4:8: port must be from 1 to 65535, found 0",
                "steer.toml:7:7: vip 224.0.0.1 is multicast; a VIP must be a unicast address clients send to",
                "steer.toml:11:7: vip 255.255.255.255 is the broadcast address; a VIP must be a unicast address clients send to",
                "steer.toml:15:7: vip :: is unspecified; a VIP must be a unicast address clients send to",
                "steer.toml:19:7: vip ff02::1 is multicast; a VIP must be a unicast address clients send to",
            ]
        );
    }

    #[test]
    fn names_are_safe_in_shells_and_urls() {
        let long = "x".repeat(65);
        let errs = errors(&with_daemon(&format!(
            r#"[[service]]
name = "web site"
vip = "10.0.0.1"
port = 80
[[service.backend]]
name = ""
address = "10.0.0.2"
[[service.backend]]
name = "{long}"
address = "10.0.0.3"
group = "blue;rm -rf /"
[[service.backend]]
name = ".."
address = "10.0.0.4"
[[service.backend]]
name = "web-a_1.b"
address = "10.0.0.5"
group = "Green-2"
"#
        )));
        let allowed = "names may hold only ASCII letters, digits, '.', '_' and '-'";
        assert_eq!(
            errs,
            [
                format!("steer.toml:2:8: service name \"web site\" holds ' '; {allowed} (names reach shell commands and URLs)"),
                format!("steer.toml:6:8: backend name is empty; {allowed}"),
                format!("steer.toml:9:8: backend name \"{long}\" is 65 bytes long; at most 64 are allowed"),
                format!("steer.toml:11:9: backend \"{long}\": group name \"blue;rm -rf /\" holds ';'; {allowed} (names reach shell commands and URLs)"),
                "steer.toml:13:8: backend name \"..\" is not allowed: in a path or URL it means a directory".to_string(),
            ]
        );
    }

    #[test]
    fn groups_are_for_pool_backends() {
        let errs = errors(&with_daemon(
            "[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\n[[service.backend]]\nname = \"m\"\naddress = \"10.0.0.2\"\nrole = \"maintenance\"\ngroup = \"blue\"\n",
        ));
        assert_eq!(
            errs,
            ["steer.toml:9:9: backend \"m\" is the service's maintenance backend; a group applies only to pool backends"]
        );
    }

    #[test]
    fn idle_timeout_is_bounded() {
        let svc = |t: &str| {
            errors(&with_daemon(&format!(
                "[[service]]\nname = \"w\"\nvip = \"10.0.0.1\"\nport = 80\nidle_timeout = \"{t}\"\n"
            )))
        };
        assert_eq!(
            svc("500ms"),
            ["steer.toml:5:16: idle_timeout must be from 1s to 24h, found 500ms"]
        );
        assert_eq!(
            svc("25h"),
            ["steer.toml:5:16: idle_timeout must be from 1s to 24h, found 1day 1h"]
        );
        assert!(svc("1s").is_empty() && svc("24h").is_empty());
    }

    #[test]
    fn counts_are_within_the_maps() {
        let mut text = String::from("[daemon]\ninterfaces = [\"eth0\"]\nmax_services = 2\n");
        for (i, s) in ["a", "b", "c", "d"].iter().enumerate() {
            text += &format!(
                "[[service]]\nname = \"{s}\"\nvip = \"10.0.0.1\"\nport = {}\n",
                80 + i
            );
        }
        assert_eq!(
            errors(&text),
            ["steer.toml:13:8: the config has 4 services but daemon.max_services is 2; service \"c\" is the first beyond it"]
        );
        let mut text = String::from("[daemon]\ninterfaces = [\"eth0\"]\n");
        for s in 0..2 {
            text += &format!("[[service]]\nname = \"s{s}\"\nvip = \"fd00:ff::{s}\"\nport = 80\n");
            for b in 0..2050 {
                text += &format!(
                    "[[service.backend]]\nname = \"b{s}-{b}\"\naddress = \"fd00:{s}::{b:x}\"\n"
                );
            }
        }
        assert_eq!(
            errors(&text),
            ["steer.toml:12300:8: the config has 4100 backends but steer holds at most 4096; backend \"b1-2046\" is the first beyond it"]
        );
    }

    #[test]
    fn checks_of_a_udp_service_need_a_tcp_port() {
        let udp = |check: &str| {
            errors(&with_daemon(&format!(
                "[[service]]\nname = \"dns\"\nvip = \"10.0.0.1\"\nport = 53\nprotocol = \"udp\"\n{check}"
            )))
        };
        let why = "the service is UDP and a tcp check connects over TCP, so checking the service's port means nothing: set check.port to a TCP port the server answers on, or type = \"none\"";
        assert_eq!(udp(""), [format!("steer.toml:5:12: {why}")]);
        assert_eq!(
            udp("[service.check]\nrise = 3\n"),
            [format!("steer.toml:6:1: {why}")]
        );
        assert_eq!(
            udp("check = { type = \"http\", path = \"/\" }\n"),
            [format!(
                "steer.toml:6:18: {}",
                why.replace("a tcp", "an http")
            )]
        );
        assert!(udp("check = { type = \"tcp\", port = 5353 }\n").is_empty());
        assert!(udp("check = { type = \"http\", port = 8080 }\n").is_empty());
        assert!(udp("check = { type = \"none\" }\n").is_empty());
        // A backend that overrides the type without a port is told at its check.
        assert_eq!(
            udp("check = { type = \"none\" }\n[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\ncheck = { type = \"tcp\" }\n"),
            [format!("steer.toml:10:9: backend \"a\": {why}")]
        );
        assert_eq!(
            udp("check = { type = \"tcp\", port = 0 }\n"),
            ["steer.toml:6:32: check.port must be from 1 to 65535, found 0"]
        );
    }

    #[test]
    fn check_timings_are_sane() {
        let errs = errors(&with_daemon(
            r#"[[service]]
name = "w"
vip = "10.0.0.1"
port = 80
[service.check]
interval = "0s"
fastinterval = "5ms"
downinterval = "2h"
timeout = "1s"
rise = 0
fall = 101
[[service]]
name = "x"
vip = "10.0.0.1"
port = 81
check = { interval = "500ms", downinterval = "800ms" }
"#,
        ));
        assert_eq!(
            errs,
            [
                "steer.toml:6:12: check.interval must be from 10ms to 1h, found 0s",
                "steer.toml:7:16: check.fastinterval must be from 10ms to 1h, found 5ms",
                "steer.toml:8:16: check.downinterval must be from 10ms to 1h, found 2h",
                "steer.toml:10:8: check.rise must be from 1 to 100, found 0",
                "steer.toml:11:8: check.fall must be from 1 to 100, found 101",
                "steer.toml:16:22: check.timeout 1s is longer than check.interval 500ms: a server that stops answering would be checked every 1s 500ms, not every 500ms; make the timeout at most the interval",
                "steer.toml:16:46: check.timeout 1s is longer than check.downinterval 800ms: a server that stops answering would be checked every 1s 800ms, not every 800ms; make the timeout at most the downinterval",
            ]
        );
    }

    #[test]
    fn a_backends_check_is_checked_once_merged() {
        let errs = errors(&with_daemon(
            r#"[[service]]
name = "w"
vip = "10.0.0.1"
port = 80
check = { timeout = "3s" }
[[service.backend]]
name = "a"
address = "10.0.0.2"
check = { path = "/ready" }
[[service.backend]]
name = "b"
address = "10.0.0.3"
check = { interval = "10s", downinterval = "10s", rise = 0 }
[[service.backend]]
name = "c"
address = "10.0.0.4"
check = { interval = "10s", downinterval = "10s", timeout = "2h" }
"#,
        ));
        assert_eq!(
            errs,
            [
                // Once at the service, not again at backend "a" which inherits it.
                "steer.toml:5:21: check.timeout 3s is longer than check.interval 2s: a server that stops answering would be checked every 5s, not every 2s; make the timeout at most the interval",
                "steer.toml:5:21: check.timeout 3s is longer than check.downinterval 2s: a server that stops answering would be checked every 5s, not every 2s; make the timeout at most the downinterval",
                "steer.toml:13:9: backend \"b\": check.rise must be from 1 to 100, found 0",
                "steer.toml:17:9: backend \"c\": check.timeout must be from 10ms to 1h, found 2h",
            ]
        );
    }

    #[test]
    fn restart_needed_lists_what_only_a_restart_applies() {
        let old = DaemonCfg {
            interfaces: vec!["eth0".into()],
            max_flows: 65_536,
            ..DaemonCfg::default()
        };
        assert!(old.restart_needed(&old.clone()).is_empty());
        // Applied live: not listed.
        let live = DaemonCfg {
            metrics: Some("127.0.0.1:9469".parse().unwrap()),
            socket_group: Some("steer".into()),
            ..old.clone()
        };
        assert!(old.restart_needed(&live).is_empty());
        let new = DaemonCfg {
            interfaces: vec!["eth0".into(), "eth1".into()],
            xdp_mode: XdpModeCfg::Generic,
            pin_dir: "/sys/fs/bpf/steer2".into(),
            state_file: "/var/lib/steer/s.json".into(),
            socket: "/run/steer/s.sock".into(),
            max_flows: 131_072,
            max_services: 128,
            ..live
        };
        assert_eq!(
            old.restart_needed(&new),
            [
                "interfaces: [\"eth0\"] → [\"eth0\", \"eth1\"]",
                "xdp_mode: native → generic",
                "pin_dir: /sys/fs/bpf/steer → /sys/fs/bpf/steer2",
                "state_file: /var/lib/steer/state.json → /var/lib/steer/s.json",
                "socket: /run/steer/steer.sock → /run/steer/s.sock",
                "max_flows: 65536 → 131072",
                "max_services: 64 → 128",
            ]
        );
    }

    /// A NAT service named "n" with `extra` lines, and `backends`, after a valid `[daemon]`.
    fn nat(extra: &str, backends: &str) -> Vec<String> {
        errors(&with_daemon(&format!(
            "[[service]]\nname = \"n\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"nat\"\n{extra}{backends}"
        )))
    }

    #[test]
    fn nat_with_nothing_else_set_takes_the_defaults() {
        let c = parse(&with_daemon(
            "[[service]]\nname = \"n\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"nat\"\n[[service.backend]]\nname = \"a\"\naddress = \"192.168.7.2\"\n",
        ))
        .unwrap();
        let s = &c.services[0];
        assert_eq!(s.mode(), Mode::Nat);
        assert_eq!(
            s.nat(&c.daemon),
            Some(NatCfg {
                pool: vec![],
                ports: PortRange(10_000, 32_767),
                observe: true,
                error_limit: 3,
                syn_timeout: Duration::from_secs(1),
                recover: true,
            })
        );
        assert_eq!(s.port_of(&s.backends[0]), 80);
        // DSR has no NAT settings.
        let c = parse(GOOD).unwrap();
        assert_eq!(c.services[0].nat(&c.daemon), None);
    }

    #[test]
    fn nat_settings_are_read() {
        let c = parse(&with_daemon(
            r#"[[service]]
name = "n"
vip = "fd00::1"
port = 443
mode = "nat"
snat = ["fd00::a", "fd00::b"]
snat_ports = "20000-20999"
observe = false
error_limit = 10
syn_timeout = "1500ms"
recover = false
[[service.backend]]
name = "a"
address = "fd01::2"
port = 8443
"#,
        ))
        .unwrap();
        let s = &c.services[0];
        let n = s.nat(&c.daemon).unwrap();
        assert_eq!(
            n.pool,
            [
                "fd00::a".parse::<IpAddr>().unwrap(),
                "fd00::b".parse().unwrap()
            ]
        );
        assert_eq!(n.ports, PortRange(20_000, 20_999));
        assert_eq!((n.observe, n.error_limit, n.recover), (false, 10, false));
        assert_eq!(n.syn_timeout, Duration::from_millis(1500));
        assert_eq!(s.port_of(&s.backends[0]), 8443);
        assert!(
            nat("snat_ports = \"20000\"\n", "").is_empty(),
            "one port is a range"
        );
    }

    #[test]
    fn the_host_pool_serves_nat_services_of_its_family_without_their_own() {
        let c = parse(
            r#"[daemon]
interfaces = ["eth0"]
snat = ["10.9.0.1", "fd09::1", "10.9.0.2"]
[[service]]
name = "v4"
vip = "10.0.0.1"
port = 80
mode = "nat"
[[service]]
name = "v6"
vip = "fd00::1"
port = 80
mode = "nat"
[[service]]
name = "own"
vip = "10.0.0.1"
port = 81
mode = "nat"
snat = ["10.8.0.1"]
"#,
        )
        .unwrap();
        let pool = |i: usize| c.services[i].nat(&c.daemon).unwrap().pool;
        let ips = |v: &[&str]| {
            v.iter()
                .map(|a| a.parse::<IpAddr>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(pool(0), ips(&["10.9.0.1", "10.9.0.2"]));
        assert_eq!(pool(1), ips(&["fd09::1"]));
        assert_eq!(pool(2), ips(&["10.8.0.1"]));
    }

    #[test]
    fn nat_settings_are_checked_where_they_are_written() {
        assert_eq!(
            nat(
                "snat = [\"fd00::1\", \"10.1.0.1\", \"10.1.0.1\", \"224.0.0.1\"]\nsnat_ports = \"500-2000\"\nerror_limit = 0\nsyn_timeout = \"50ms\"\n",
                ""
            ),
            [
                "steer.toml:6:9: snat: fd00::1 is IPv6 but the service's VIP 10.0.0.1 is not; a NAT service's flows leave from addresses of the VIP's family",
                "steer.toml:6:32: snat lists 10.1.0.1 twice",
                "steer.toml:6:44: snat: 224.0.0.1 is multicast; give addresses of this host",
                "steer.toml:7:14: snat_ports 500-2000 starts below 1024: ports under 1024 are the host's own services'; start at 1024 or above",
                "steer.toml:8:15: error_limit must be from 1 to 1000, found 0",
                "steer.toml:9:15: syn_timeout must be from 100ms to 1m, found 50ms",
            ]
        );
        assert_eq!(
            nat("snat_ports = \"30000-20000\"\nerror_limit = 1001\nsyn_timeout = \"2m\"\nsnat = []\n", ""),
            [
                "steer.toml:6:14: snat_ports 30000-20000 is empty: the first port is above the last",
                "steer.toml:7:15: error_limit must be from 1 to 1000, found 1001",
                "steer.toml:8:15: syn_timeout must be from 100ms to 1m, found 2m",
                "steer.toml:9:8: snat is empty: list the LB addresses the service's flows leave from, or remove it to use the address facing each backend",
            ]
        );
        let nine: Vec<String> = (1..=9).map(|i| format!("\"10.1.0.{i}\"")).collect();
        assert_eq!(
            nat(&format!("snat = [{}]\n", nine.join(", ")), ""),
            ["steer.toml:6:105: snat holds 9 addresses; at most 8 are allowed, and 10.1.0.9 is the first beyond them"]
        );
        let e = first_error(&with_daemon("[[service]]\nname = \"n\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"nat\"\nsnat_ports = \"low-high\"\n"));
        assert!(
            e.starts_with("steer.toml:6:14:")
                && e.contains("expected a port range such as \"10000-32767\""),
            "{e}"
        );
        let e = first_error(&with_daemon(
            "[[service]]\nname = \"n\"\nvip = \"10.0.0.1\"\nport = 80\nmode = \"proxy\"\n",
        ));
        assert!(
            e.starts_with("steer.toml:5:8:") && e.contains("unknown variant `proxy`"),
            "{e}"
        );
    }

    #[test]
    fn nat_settings_in_dsr_mode_are_refused() {
        let errs = errors(&with_daemon(
            "[[service]]\nname = \"d\"\nvip = \"10.0.0.1\"\nport = 80\nsnat = [\"10.1.0.1\"]\nobserve = true\nrecover = true\nerror_limit = 3\nsyn_timeout = \"1s\"\nsnat_ports = \"10000-20000\"\n",
        ));
        let why = |k: &str, at: &str| {
            format!("steer.toml:{at}: {k} is a NAT setting, but service \"d\" is in mode \"dsr\" (its replies bypass this host, which sees no refusal and no reply): set mode = \"nat\", or remove {k}")
        };
        assert_eq!(
            errs,
            [
                why("snat", "5:8"),
                why("observe", "6:11"),
                why("recover", "7:11"),
                why("error_limit", "8:15"),
                why("syn_timeout", "9:15"),
                why("snat_ports", "10:14"),
            ]
        );
        // Turning them off says nothing wrong.
        assert!(errors(&with_daemon(
            "[[service]]\nname = \"d\"\nvip = \"10.0.0.1\"\nport = 80\nobserve = false\nrecover = false\n"
        ))
        .is_empty());
    }

    #[test]
    fn a_backends_port_is_for_nat_and_its_mac_for_dsr() {
        let be = "[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\n";
        assert_eq!(
            errors(&with_daemon(&format!(
                "[[service]]\nname = \"d\"\nvip = \"10.0.0.1\"\nport = 80\n{be}port = 8080\n"
            ))),
            ["steer.toml:8:8: backend \"a\": port 8080 differs from the service's port 80, but in mode \"dsr\" the server answers on the VIP's own port (the packet is not rewritten); set mode = \"nat\" to reach it on port 8080, or remove port"]
        );
        // The service's own port is fine in DSR.
        assert!(errors(&with_daemon(&format!(
            "[[service]]\nname = \"d\"\nvip = \"10.0.0.1\"\nport = 80\n{be}port = 80\n"
        )))
        .is_empty());
        assert_eq!(
            nat("", &format!("{be}port = 0\nmac = \"02:00:00:00:00:02\"\n")),
            [
                "steer.toml:9:8: backend \"a\": port must be from 1 to 65535, found 0",
                "steer.toml:10:7: backend \"a\": mac is for mode \"dsr\"; in mode \"nat\" the next hop and its MAC come from the kernel's routes and neighbours (the backend may be in another subnet): remove mac",
            ]
        );
        assert!(nat("", &format!("{be}port = 8080\n")).is_empty());
    }

    #[test]
    fn passive_health_needs_checks_to_come_back() {
        assert_eq!(
            nat("observe = true\ncheck = { type = \"none\" }\n", ""),
            ["steer.toml:6:11: observe = true needs health checks: it marks a backend down, and only checks bring it back; give the service a check, or set observe = false"]
        );
        // Without checks, observe is off by default.
        let c = parse(&with_daemon("[[service]]\nname = \"n\"\nvip = \"10.0.0.1\"\nport = 53\nprotocol = \"udp\"\nmode = \"nat\"\ncheck = { type = \"none\" }\n")).unwrap();
        assert!(!c.services[0].nat(&c.daemon).unwrap().observe);
        assert_eq!(
            nat("", "[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\ncheck = { type = \"none\" }\n"),
            ["steer.toml:9:9: backend \"a\": check type \"none\" in a service with observe on: passive health could mark it down and nothing would bring it back; give it a check, or set observe = false on the service"]
        );
        assert!(nat("observe = false\n", "[[service.backend]]\nname = \"a\"\naddress = \"10.0.0.2\"\ncheck = { type = \"none\" }\n").is_empty());
    }

    #[test]
    fn the_host_pool_is_checked() {
        let mut pool: Vec<String> = (1..=9).map(|i| format!("\"10.1.0.{i}\"")).collect();
        pool.push("\"fd00::1\"".into());
        pool.push("\"fd00::1\"".into());
        pool.push("\"0.0.0.0\"".into());
        let errs = errors(&format!(
            "[daemon]\ninterfaces = [\"eth0\"]\nsnat = [{}]\n",
            pool.join(", ")
        ));
        assert_eq!(
            errs,
            [
                "steer.toml:3:105: daemon.snat holds more than 8 IPv4 addresses; 10.1.0.9 is the first beyond them",
                "steer.toml:3:128: daemon.snat lists fd00::1 twice",
                "steer.toml:3:139: daemon.snat: 0.0.0.0 is unspecified; give addresses of this host",
            ]
        );
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/steer.toml");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    }
}
