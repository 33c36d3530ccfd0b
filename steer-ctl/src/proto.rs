//! The control protocol between `steer-ctl` verbs and the daemon: one JSON request per line on
//! the Unix socket, one JSON response line back. Shared by both sides.

use serde::{Deserialize, Serialize};

use crate::state::AdminState;

/// Longest request line the daemon reads; longer ones are refused.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verb", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Services, backends and counters.
    Status,
    /// Flows in the connection table (up to `limit`).
    Flows { limit: usize },
    /// Sets a backend's admin state.
    Admin { backend: String, state: AdminState },
    /// Sets a backend's weight.
    Weight { backend: String, weight: u32 },
    /// Makes only one group of a service's backends eligible (`None`: every group).
    Switch {
        service: String,
        group: Option<String>,
    },
    /// Turns a service's maintenance on or off.
    Maintenance { service: String, on: bool },
    /// Re-reads the config file; refused (and nothing changed) if it is invalid.
    Reload,
    /// Stops the daemon; with `detach`, also removes the XDP program and the pinned maps.
    Shutdown { detach: bool },
}

/// The daemon's answer. `ok` false: `error` says why; `code` is the exit code the verb should
/// end with (1 failure, 78 bad config).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<FlowInfo>>,
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

    pub fn error(code: u8, error: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(error.into()),
            code: Some(code),
            ..Response::default()
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub config: String,
    pub services: Vec<ServiceStatus>,
    pub backends: Vec<BackendStatus>,
    /// Packets per datapath outcome and event, by name.
    pub datapath: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub ended_flows: u64,
    pub rst_sent: u64,
}

impl From<steer_common::Counters> for Counters {
    fn from(c: steer_common::Counters) -> Self {
        Counters {
            packets: c.packets,
            bytes: c.bytes,
            new_flows: c.new_flows,
            ended_flows: c.ended_flows,
            rst_sent: c.rst_sent,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub maintenance: bool,
    /// Pool backends that may take new flows now.
    pub eligible: usize,
    /// The group `switch` made eligible, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_group: Option<String>,
    pub backends: Vec<String>,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    pub service: String,
    pub address: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub admin: AdminState,
    /// "up" or "down".
    pub health: String,
    /// Why the last check failed, or "ok".
    pub check: String,
    /// Checks run since the daemon started.
    pub checks_run: u64,
    /// Last check's latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check_ms: Option<f64>,
    pub weight: u32,
    /// Flows not ended and seen within the service's idle timeout.
    pub active_flows: u64,
    pub counters: Counters,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FlowInfo {
    pub client: String,
    pub vip: String,
    pub protocol: String,
    pub backend: String,
    pub state: String,
    pub idle_ms: u64,
}
