//! One type per concept, shared by the config, the balancer, the intent store and the control
//! protocol: admin state, health, role, protocol, what to do with no backend, forwarding mode.
//! Each is written in TOML and JSON as its lowercase name, and maps to the datapath's number.

use std::fmt;

use serde::{Deserialize, Serialize};
use steer_common::{admin, health, PROTO_TCP, PROTO_UDP};

/// Admin state of a backend, set by an operator and kept by the intent store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// Takes new flows when healthy.
    #[default]
    Ready,
    /// No new flows; its flows go on; checks go on.
    Drain,
    /// Like drain, with checks paused (the server is being worked on).
    Maint,
    /// No new flows, and every further packet of its flows is answered with a RST.
    Reject,
}

impl AdminState {
    /// The datapath's number (`steer_common::admin`).
    pub fn code(self) -> u8 {
        match self {
            AdminState::Ready => admin::READY,
            AdminState::Drain => admin::DRAIN,
            AdminState::Maint => admin::MAINT,
            AdminState::Reject => admin::REJECT,
        }
    }

    /// From the datapath's number; `None` for an empty slot.
    pub fn from_code(c: u8) -> Option<AdminState> {
        match c {
            admin::READY => Some(AdminState::Ready),
            admin::DRAIN => Some(AdminState::Drain),
            admin::MAINT => Some(AdminState::Maint),
            admin::REJECT => Some(AdminState::Reject),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AdminState::Ready => "ready",
            AdminState::Drain => "drain",
            AdminState::Maint => "maint",
            AdminState::Reject => "reject",
        }
    }
}

/// Health of a backend as its checks found it. `Unknown` until the first result: not
/// eligible, so a restarted daemon never puts a dead server back before checking it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    #[default]
    Unknown,
    Up,
    Down,
}

impl Health {
    pub fn code(self) -> u8 {
        match self {
            Health::Up => health::UP,
            Health::Down => health::DOWN,
            Health::Unknown => health::UNKNOWN,
        }
    }

    pub fn from_code(c: u8) -> Health {
        match c {
            health::UP => Health::Up,
            health::DOWN => Health::Down,
            _ => Health::Unknown,
        }
    }

    pub fn from_up(up: bool) -> Health {
        if up {
            Health::Up
        } else {
            Health::Down
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// The part a backend plays in its service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// In the Maglev table when eligible.
    #[default]
    Pool,
    /// Takes new flows when no pool backend is eligible (a failure).
    Fallback,
    /// Takes every new flow while the service is in maintenance (never for a failure).
    Maintenance,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Pool => "pool",
            Role::Fallback => "fallback",
            Role::Maintenance => "maintenance",
        }
    }
}

/// Transport protocol of a service.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    #[default]
    Tcp,
    Udp,
}

impl Proto {
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// What a service does with a new connection when no backend can take it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NoBackend {
    /// Answer a SYN with a RST from XDP: the client fails at once.
    #[default]
    Reset,
    /// Drop it: the client retries until its timeout.
    Drop,
}

/// How a service forwards to its backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// L2 direct server return.
    #[default]
    Dsr,
    /// Full NAT: destination rewritten to the backend's address and port, source to an LB
    /// address and port; replies come back through the LB.
    Nat,
}

impl Mode {
    /// The datapath's number (`Service::mode`).
    pub fn code(self) -> u32 {
        match self {
            Mode::Dsr => steer_common::MODE_DSR,
            Mode::Nat => steer_common::MODE_NAT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(AdminState, Health, Role, Proto, Mode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_json_and_codes() {
        for a in [
            AdminState::Ready,
            AdminState::Drain,
            AdminState::Maint,
            AdminState::Reject,
        ] {
            let j = serde_json::to_string(&a).unwrap();
            assert_eq!(j, format!("\"{a}\""));
            assert_eq!(serde_json::from_str::<AdminState>(&j).unwrap(), a);
            assert_eq!(AdminState::from_code(a.code()), Some(a));
        }
        for h in [Health::Unknown, Health::Up, Health::Down] {
            assert_eq!(Health::from_code(h.code()), h);
            assert_eq!(serde_json::to_string(&h).unwrap(), format!("\"{h}\""));
        }
        assert_eq!(AdminState::from_code(admin::NONE), None);
        assert_eq!(Role::Maintenance.to_string(), "maintenance");
        for m in [Mode::Dsr, Mode::Nat] {
            assert_eq!(serde_json::to_string(&m).unwrap(), format!("\"{m}\""));
        }
        assert_eq!(Mode::Nat.code(), steer_common::MODE_NAT);
    }
}
