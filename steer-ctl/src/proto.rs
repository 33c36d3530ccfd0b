//! The control protocol between `steer-ctl` verbs and the daemon: one JSON request per line on
//! the Unix socket, one JSON response line back. Shared by both sides, typed end to end: a
//! client never matches on error text or on state names.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{AdminState, Health, Mode, Proto, Role};

/// Longest request line the daemon reads; longer ones are refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services, backends and counters. (Variants without fields are written `{}` so that
    /// unknown fields are refused for them too: serde lets a unit variant ignore them.)
    Status {},
    /// Flows in the connection table (up to `limit`).
    Flows { limit: usize },
    /// Sets the admin state of a backend, or of every backend of a group (`target`), in one
    /// change.
    Admin { target: String, state: AdminState },
    /// Sets the weight of a backend, or of every backend of a group.
    Weight { target: String, weight: u32 },
    /// Makes only one group of a service's backends eligible (`None`: every group). Refused
    /// when that group has no eligible backend, unless `force`.
    Switch {
        service: String,
        group: Option<String>,
        #[serde(default)]
        force: bool,
    },
    /// Turns a service's maintenance on or off.
    Maintenance { service: String, on: bool },
    /// Re-reads the config file; refused (and nothing changed) if it is invalid or cannot be
    /// applied whole.
    Reload {},
    /// Stops the daemon; with `detach`, also removes the XDP program and the pinned maps.
    Shutdown { detach: bool },
}

/// Why a request failed, for clients that act on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No backend or group of that name.
    UnknownTarget,
    /// No service of that name.
    UnknownService,
    /// The request is valid but would leave the service without what it needs (e.g. a switch
    /// to a group with no eligible backend).
    Refused,
    /// The config file is invalid.
    Config,
    /// The config is valid but cannot be applied (unresolvable MAC, capacity, a setting that
    /// needs a restart); nothing was changed.
    Apply,
    /// Not allowed on the socket.
    Permission,
    /// Bad request line.
    Malformed,
    /// The daemon is too busy (too many connections).
    Busy,
    /// Anything else (a map write failed, the state could not be saved).
    Internal,
}

impl ErrorKind {
    /// The exit code a verb ends with for this error.
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorKind::Config => crate::exit::CONFIG,
            ErrorKind::Permission => crate::exit::NOPERM,
            ErrorKind::Busy => crate::exit::UNAVAILABLE,
            _ => crate::exit::FAILURE,
        }
    }
}

/// The daemon's answer. Every reply has `ok`; when false, `error` says why and `kind` what
/// sort of failure it is.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<FlowInfo>>,
    /// Backends a change applied to (a group stands for its members).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
    /// After a change: the flow scan that will first see it. A `drain --wait` trusts active
    /// flow counts only from this scan on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scan: Option<u64>,
    /// What a reload changed, and notes (settings that win over others, and why).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Response {
    pub fn ok() -> Response {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    pub fn error(kind: ErrorKind, error: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(error.into()),
            kind: Some(kind),
            ..Response::default()
        }
    }

    /// The exit code this reply means.
    pub fn exit_code(&self) -> i32 {
        if self.ok {
            crate::exit::OK
        } else {
            self.kind.map_or(crate::exit::FAILURE, ErrorKind::exit_code)
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub config: String,
    pub services: Vec<ServiceStatus>,
    pub backends: Vec<BackendStatus>,
    /// The scan of the connection table the active-flow counts come from.
    pub flow_scan: FlowScan,
    /// Packets per datapath outcome and event, by name.
    pub datapath: BTreeMap<String, u64>,
    /// With `[cluster]`: this host and the others' published active flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
    /// The window the services' and backends' `rate` cover (the time since an earlier read of
    /// the counters, at least a second when reads come that often); absent on the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_window_ms: Option<u64>,
}

/// Recent rates, over the status's `rate_window_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub packets_per_s: f64,
    pub new_flows_per_s: f64,
}

/// The LB hosts sharing this one's intent (`[cluster]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This host's name.
    pub host: String,
    /// The etcd revision of the intent this host holds.
    pub revision: i64,
    /// The other hosts whose records are alive (their daemons renew them every 500 ms; a
    /// record dies 5 s after its daemon stops).
    pub peers: Vec<PeerStatus>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeerStatus {
    pub host: String,
    /// Its counts come from a flow scan that began after it held the intent of this revision.
    pub revision: i64,
    pub scan: u64,
    /// How long ago its record last changed, as seen here.
    pub age_ms: u64,
    /// Active flows per backend name.
    pub active: BTreeMap<String, u64>,
    /// Backends its checks find up.
    #[serde(default)]
    pub up: Vec<String>,
}

/// The background scan of the connection table that counts active flows per backend.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlowScan {
    /// Number of the last completed scan (0: none yet).
    pub seq: u64,
    /// How old its counts are, in milliseconds.
    pub age_ms: u64,
    /// How long it took.
    pub took_ms: u64,
    /// Flows it read, in both tables.
    pub flows: u64,
    /// Entries of the established table, and its capacity (`daemon.max_flows`).
    #[serde(default)]
    pub established: u64,
    #[serde(default)]
    pub capacity: u64,
    /// Entries of the transient table (half-open and ended flows), and its capacity.
    #[serde(default)]
    pub transient: u64,
    #[serde(default)]
    pub transient_capacity: u64,
    /// DSR connection attempts standing (flows that have seen only SYNs), and the slots they
    /// have.
    #[serde(default)]
    pub attempts: u64,
    #[serde(default)]
    pub attempts_capacity: u64,
    /// The last scan that found the established table full of live connections (at least
    /// 95 % of it not ended and seen within the idle timeout: the LRU then evicts connections
    /// still in use, which cannot be counted); 0 if none has.
    #[serde(default)]
    pub last_full_seq: u64,
    /// Why the last scan failed; the counts are then unknown (`active_flows` absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub ended_flows: u64,
    pub rst_sent: u64,
    /// NAT: attempts the backend refused (a RST answering a SYN).
    #[serde(default)]
    pub refused: u64,
    /// NAT: attempts left unanswered for the service's `syn_timeout`.
    #[serde(default)]
    pub syn_timeouts: u64,
    /// NAT: new flows that found no free source port.
    #[serde(default)]
    pub nat_exhausted: u64,
}

impl From<steer_common::Counters> for Counters {
    fn from(c: steer_common::Counters) -> Self {
        Counters {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            ended_flows: c.ended_flows,
            rst_sent: c.rst_sent,
            refused: c.refused,
            syn_timeouts: c.syn_timeouts,
            nat_exhausted: c.nat_exhausted,
        }
    }
}

/// A NAT service's settings as in force.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NatStatus {
    /// The pool flows leave from; empty: each backend's `snat` (the LB's address facing it).
    pub snat: Vec<String>,
    /// Addresses removed from the pool that keep their slot, so that the flows leaving from
    /// them when they were removed keep their source (until a new address needs the slot;
    /// the daemon does not count those flows: an address stays listed after its last one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snat_retired: Vec<String>,
    /// Source ports, "lo-hi".
    pub snat_ports: String,
    pub observe: bool,
    pub error_limit: u16,
    pub syn_timeout_ms: u32,
    pub recover: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: Proto,
    /// How new flows reach the backends.
    #[serde(default)]
    pub mode: Mode,
    /// NAT settings, in NAT mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatStatus>,
    pub maintenance: bool,
    /// Pool backends in the live Maglev table: eligible, weight > 0, and in the active group.
    pub eligible: usize,
    /// The group `switch` made eligible, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_group: Option<String>,
    /// Fingerprint of the live Maglev table by backend names (16 hex digits): LB hosts with the
    /// same config show the same one, so a flow takes the same backend whichever host gets it.
    #[serde(default)]
    pub table_digest: String,
    pub backends: Vec<String>,
    pub counters: Counters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub service: String,
    pub address: String,
    /// The port the server is reached on (NAT may use another than the VIP's).
    #[serde(default)]
    pub port: u16,
    /// NAT: the LB's own address facing the backend (its flows' source without a pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<String>,
    /// NAT with observe: consecutive failed attempts as the datapath counts them now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_fails: Option<u64>,
    /// Why passive health marked the backend down (until checks bring it back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passive: Option<String>,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub admin: AdminState,
    pub health: Health,
    /// What the backend does now, from its admin state, health, role and its service's
    /// state: `up` (takes new flows), `draining`, `maint`, `rejecting`, `down`, `unchecked`
    /// (no check result yet), `standby` (healthy and ready but takes no new flows: another
    /// group is switched to, the service is in maintenance, or a fallback or maintenance
    /// backend not in use), `weight 0`, `serving` (a fallback or maintenance backend in use).
    #[serde(default)]
    pub state: String,
    /// Why the last check failed, or "ok"; "not checked yet"; "no checks".
    pub check: String,
    /// Checks run since the daemon started.
    pub checks_run: u64,
    /// Last check's latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<f64>,
    /// Failed checks since the daemon started.
    #[serde(default)]
    pub check_failures: u64,
    /// Checks that could not run from this host (no descriptors, no ports).
    #[serde(default)]
    pub checks_not_run: u64,
    /// Health transitions since the daemon started.
    #[serde(default)]
    pub went_down: u64,
    #[serde(default)]
    pub went_up: u64,
    /// Times passive health (NAT `observe`) marked the backend down.
    #[serde(default)]
    pub passive_downs: u64,
    /// The last change of admin state or health ("admin ready → drain", "health up → down:
    /// connect: refused", or "daemon started"), and how long ago: the time in the state.
    #[serde(default)]
    pub last_change: String,
    #[serde(default)]
    pub last_change_ms: u64,
    /// The weight in force.
    pub weight: u32,
    /// The config's weight (differs from `weight` when `steer-ctl weight` set another).
    pub config_weight: u32,
    /// Flows not ended and seen within the service's idle timeout, as of `flow_scan`; absent
    /// when the scan failed or none has completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_flows: Option<u64>,
    pub counters: Counters,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlowInfo {
    pub client: String,
    pub vip: String,
    pub protocol: Proto,
    pub backend: String,
    pub state: String,
    pub idle_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_refuse_unknown_fields_whatever_their_verb() {
        for line in [r#"{"verb":"status"}"#, r#"{"verb":"reload"}"#] {
            let r: Request = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
        for line in [
            r#"{"verb":"status","x":1}"#,
            r#"{"verb":"reload","force":true}"#,
            r#"{"verb":"admin","target":"a","state":"drain","x":1}"#,
        ] {
            let e = serde_json::from_str::<Request>(line).unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{line}: {e}");
        }
    }
}
