//! What an operator set, kept across daemon restarts and reloads: admin states, weights,
//! per-service maintenance — and the ids services and backends hold in the pinned maps.
//! Health is not kept: checks find it again.
//!
//! JSON, written atomically (temporary file in the same directory, fsync, rename).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use crate::model::AdminState;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendState {
    #[serde(default)]
    pub admin: AdminState,
    /// Set by `steer-ctl weight`; the config's weight when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gen: Option<u16>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceState {
    #[serde(default)]
    pub maintenance: bool,
    /// The group `switch` made eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceState>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading the state file {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the state file {0} is not valid: {1}")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("writing the state file {0}: {1}")]
    Write(PathBuf, #[source] std::io::Error),
}

impl State {
    /// Reads the state file; a missing file is an empty state (first start).
    pub fn load(path: &Path) -> Result<State, StateError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| StateError::Parse(path.into(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(StateError::Read(path.into(), e)),
        }
    }

    /// Writes the state file atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let err = |e| StateError::Write(path.into(), e);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
        ));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        let mut text = serde_json::to_vec_pretty(self).expect("state serializes");
        text.push(b'\n');
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn backend(&self, name: &str) -> BackendState {
        self.backends.get(name).cloned().unwrap_or_default()
    }

    pub fn service(&self, name: &str) -> ServiceState {
        self.services.get(name).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_tolerates_a_missing_file() {
        let dir = std::env::temp_dir().join(format!("steer-state-{}", std::process::id()));
        let path = dir.join("state.json");
        assert_eq!(State::load(&path).unwrap(), State::default());
        let mut s = State::default();
        s.backends.insert(
            "web-a".into(),
            BackendState {
                admin: AdminState::Drain,
                weight: Some(3),
                id: Some(4),
                gen: Some(2),
            },
        );
        s.services.insert(
            "web".into(),
            ServiceState {
                maintenance: true,
                group: Some("green".into()),
                id: Some(0),
            },
        );
        s.save(&path).unwrap();
        assert_eq!(State::load(&path).unwrap(), s);
        std::fs::write(&path, b"{\"backends\": 3}").unwrap();
        assert!(matches!(State::load(&path), Err(StateError::Parse(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
