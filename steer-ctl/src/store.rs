//! The operator's intent — admin states, weights, maintenance, the active group — kept apart
//! from this host's allocation (map ids and generations, which live in the pinned maps).
//! Intent is what several LB hosts will share; it sits behind `IntentStore` (load, put,
//! watch) so the daemon does not care where it lives. The first store is a JSON file
//! (`daemon.state_file`), written atomically; health is never stored (checks find it again).

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::AdminState;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendIntent {
    #[serde(default)]
    pub admin: AdminState,
    /// Set by `steer-ctl weight`; the config's weight when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// The config's weight when `weight` was set: once the config says something else, the
    /// config wins again (an edited config is the newer word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_weight: Option<u32>,
    /// Written by earlier versions (map ids now come from the pinned maps); read and dropped.
    #[serde(default, skip_serializing)]
    id: Option<u32>,
    #[serde(default, skip_serializing)]
    gen: Option<u16>,
}

impl BackendIntent {
    pub fn with_admin(admin: AdminState) -> Self {
        BackendIntent {
            admin,
            ..Default::default()
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceIntent {
    #[serde(default)]
    pub maintenance: bool,
    /// The group `switch` made eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing)]
    id: Option<u32>,
}

/// What operators asked for, by service and backend name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intent {
    #[serde(default)]
    pub services: BTreeMap<String, ServiceIntent>,
    #[serde(default)]
    pub backends: BTreeMap<String, BackendIntent>,
}

impl Intent {
    pub fn backend(&self, name: &str) -> BackendIntent {
        self.backends.get(name).cloned().unwrap_or_default()
    }

    pub fn service(&self, name: &str) -> ServiceIntent {
        self.services.get(name).cloned().unwrap_or_default()
    }

    pub fn backend_mut(&mut self, name: &str) -> &mut BackendIntent {
        self.backends.entry(name.to_string()).or_default()
    }

    pub fn service_mut(&mut self, name: &str) -> &mut ServiceIntent {
        self.services.entry(name.to_string()).or_default()
    }

    /// The weight in force for a backend whose config weight is `config`, and whether an
    /// operator's `steer-ctl weight` is what sets it.
    pub fn weight(&self, name: &str, config: u32) -> (u32, bool) {
        match self.backends.get(name) {
            Some(BackendIntent {
                weight: Some(w),
                config_weight,
                ..
            }) if config_weight.is_none_or(|c| c == config) => (*w, true),
            _ => (config, false),
        }
    }

    /// Drops entries that say nothing (ready, no weight; maintenance off, no group), so the
    /// stored intent stays small and readable.
    pub fn compact(&mut self) {
        self.backends
            .retain(|_, b| b.admin != AdminState::Ready || b.weight.is_some());
        self.services
            .retain(|_, s| s.maintenance || s.group.is_some());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("reading the state file {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    #[error("the state file {0} is not valid: {1}")]
    Parse(PathBuf, #[source] serde_json::Error),
    #[error("writing the state file {0}: {1}")]
    Write(PathBuf, #[source] std::io::Error),
    /// The cluster's store (etcd) could not be read or written.
    #[error("{0}")]
    Cluster(String),
}

/// Where the operator's intent lives.
pub trait IntentStore: Send {
    /// The stored intent; `None` when nothing was ever stored (first start, or a lost file).
    fn load(&self) -> Result<Option<Intent>, StoreError>;
    /// Stores the whole intent; when this fails, nothing was changed.
    fn put(&mut self, intent: &Intent) -> Result<(), StoreError>;
    /// Changes made by others (another host), if the store can tell: the whole intent after
    /// each, with the store's revision.
    fn watch(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(Intent, i64)>> {
        None
    }
    /// The daemon now holds `intent`, as stored at `revision` (applied from `watch`).
    fn held(&mut self, _intent: &Intent, _revision: i64) {}
    /// The other hosts sharing it, when it is shared.
    fn cluster(&self) -> Option<crate::cluster::ClusterHandle> {
        None
    }
    /// Whether other hosts share it (a write may then fail for want of the network; the daemon
    /// still starts, from what `load` found).
    fn shared(&self) -> bool {
        false
    }
    /// Where it lives, for messages.
    fn describe(&self) -> String;
}

/// Intent in a JSON file, written atomically (temporary file, fsync, rename, fsync of the
/// directory).
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: &Path) -> Self {
        FileStore { path: path.into() }
    }
}

impl IntentStore for FileStore {
    fn load(&self) -> Result<Option<Intent>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| StoreError::Parse(self.path.clone(), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Read(self.path.clone(), e)),
        }
    }

    fn put(&mut self, intent: &Intent) -> Result<(), StoreError> {
        let path = &self.path;
        let err = |e| StoreError::Write(path.clone(), e);
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let tmp = dir.join(format!(
            ".{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
        ));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        let mut text = serde_json::to_vec_pretty(intent).expect("intent serializes");
        text.push(b'\n');
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("state file {}", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_tolerates_a_missing_file_and_reads_the_old_format() {
        let dir = std::env::temp_dir().join(format!("steer-store-{}", std::process::id()));
        let path = dir.join("state.json");
        let mut store = FileStore::new(&path);
        assert_eq!(store.load().unwrap(), None);
        let mut s = Intent::default();
        s.backend_mut("web-a").admin = AdminState::Drain;
        s.backend_mut("web-a").weight = Some(3);
        s.service_mut("web").maintenance = true;
        s.service_mut("web").group = Some("green".into());
        store.put(&s).unwrap();
        assert_eq!(store.load().unwrap(), Some(s));
        // Earlier versions kept map ids here.
        std::fs::write(
            &path,
            br#"{"services":{"web":{"maintenance":false,"id":0}},"backends":{"b0":{"admin":"maint","id":4,"gen":2}}}"#,
        )
        .unwrap();
        let old = store.load().unwrap().unwrap();
        assert_eq!(old.backend("b0").admin, AdminState::Maint);
        std::fs::write(&path, b"{\"backends\": 3}").unwrap();
        assert!(matches!(store.load(), Err(StoreError::Parse(..))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_edited_config_weight_wins_over_an_older_override() {
        let mut s = Intent::default();
        assert_eq!(s.weight("a", 1), (1, false));
        let b = s.backend_mut("a");
        b.weight = Some(5);
        b.config_weight = Some(1);
        assert_eq!(s.weight("a", 1), (5, true));
        assert_eq!(s.weight("a", 2), (2, false));
    }
}
