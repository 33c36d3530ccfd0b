//! The operator's intent shared by several LB hosts, in etcd (`[cluster]`). Each backend's and
//! each service's intent is one key under the prefix (`backend/NAME`, `service/NAME`, JSON), so
//! two hosts changing different backends at once never undo each other; a host writes only
//! the keys its change touched. Every daemon watches the prefix and applies what others wrote.
//! Health is never shared: each host checks from where it stands.
//!
//! etcd is spoken to through its JSON gateway (`/v3/kv/range`, `/v3/kv/txn`, `/v3/watch`):
//! plain HTTP, so no gRPC stack. When etcd cannot be reached the host fails static — it keeps
//! forwarding with its last intent, refuses admin changes ("cluster store unreachable"), and
//! catches up once it is back; a daemon that starts meanwhile starts from its local copy
//! (`daemon.state_file`).

use std::{
    collections::BTreeMap,
    io::BufRead,
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::store::{BackendIntent, FileStore, Intent, IntentStore, ServiceIntent, StoreError};

/// How long a read or write may take before etcd counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts to watch again after the stream broke.
const RETRY: Duration = Duration::from_secs(1);
/// Life of a host's record without renewal: a host whose daemon stops is gone from the others'
/// view this long after.
const HOST_TTL_S: i64 = 5;
/// Key (under the prefix) whose presence says the cluster has an intent: a host starting
/// then takes it, even all defaults, rather than its local copy.
const MARKER: &str = "intent";

/// A client of one etcd cluster's JSON gateway (tries each endpoint in turn).
#[derive(Clone)]
pub struct Etcd {
    endpoints: Vec<String>,
    agent: ureq::Agent,
}

/// The keys under a prefix and the revision they were read at.
pub struct Snapshot {
    pub kvs: Vec<(String, Vec<u8>)>,
    pub revision: i64,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn unb64(v: &Value) -> Result<Vec<u8>, String> {
    B64.decode(v.as_str().unwrap_or(""))
        .map_err(|e| format!("etcd sent bad base64: {e}"))
}

/// `"123"` (the gateway's int64) or `123`.
fn int(v: &Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

/// The key right after every key starting with `prefix` (etcd's `range_end` for a prefix).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    pub fn new(endpoints: &[String]) -> Etcd {
        Etcd {
            endpoints: endpoints
                .iter()
                .map(|e| e.trim_end_matches('/').to_string())
                .collect(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(TIMEOUT)
                .timeout(TIMEOUT)
                .build(),
        }
    }

    /// Where it is, for messages.
    pub fn describe(&self) -> String {
        self.endpoints.join(", ")
    }

    /// POSTs `body` to `path` on the first endpoint that answers.
    fn call(&self, path: &str, body: &Value) -> Result<Value, String> {
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            match self
                .agent
                .post(&format!("{ep}{path}"))
                .send_string(&body.to_string())
            {
                Ok(r) => {
                    let text = r.into_string().map_err(|e| format!("{ep}: {e}"))?;
                    return serde_json::from_str(&text)
                        .map_err(|e| format!("{ep}: not JSON ({e}): {text:.200}"));
                }
                Err(ureq::Error::Status(code, r)) => {
                    let text = r.into_string().unwrap_or_default();
                    errors.push(format!("{ep}: HTTP {code}: {text:.200}"));
                }
                Err(e) => errors.push(format!("{ep}: {e}")),
            }
        }
        Err(errors.join("; "))
    }

    /// Every key under `prefix`, with the store's revision.
    pub fn range(&self, prefix: &str) -> Result<Snapshot, String> {
        let r = self.call(
            "/v3/kv/range",
            &json!({"key": b64(prefix.as_bytes()), "range_end": b64(&prefix_end(prefix))}),
        )?;
        let mut kvs = Vec::new();
        for kv in r["kvs"].as_array().into_iter().flatten() {
            let key = String::from_utf8_lossy(&unb64(&kv["key"])?).into_owned();
            kvs.push((key, unb64(&kv["value"])?));
        }
        Ok(Snapshot {
            kvs,
            revision: int(&r["header"]["revision"]),
        })
    }

    /// Puts and deletes keys in one transaction: all or none. Returns the store's revision
    /// after it (`None`: nothing to write).
    pub fn write(
        &self,
        puts: &[(String, Vec<u8>)],
        deletes: &[String],
    ) -> Result<Option<i64>, String> {
        let mut ops: Vec<Value> = puts
            .iter()
            .map(|(k, v)| json!({"request_put": {"key": b64(k.as_bytes()), "value": b64(v)}}))
            .collect();
        ops.extend(
            deletes
                .iter()
                .map(|k| json!({"request_delete_range": {"key": b64(k.as_bytes())}})),
        );
        if ops.is_empty() {
            return Ok(None);
        }
        let r = self.call("/v3/kv/txn", &json!({"success": ops}))?;
        if r["succeeded"].as_bool() == Some(false) {
            return Err(format!("transaction not applied: {r}"));
        }
        Ok(Some(int(&r["header"]["revision"])))
    }

    /// A lease of `ttl_s` seconds.
    fn grant(&self, ttl_s: i64) -> Result<i64, String> {
        let r = self.call("/v3/lease/grant", &json!({"TTL": ttl_s.to_string()}))?;
        match int(&r["ID"]) {
            0 => Err(format!("no lease granted: {r}")),
            id => Ok(id),
        }
    }

    /// Renews lease `id`; false when it has expired.
    fn keepalive(&self, id: i64) -> Result<bool, String> {
        let r = self.call("/v3/lease/keepalive", &json!({"ID": id.to_string()}))?;
        Ok(int(&r["result"]["TTL"]) > 0)
    }

    fn put_leased(&self, key: &str, value: &[u8], lease: i64) -> Result<(), String> {
        self.call(
            "/v3/kv/put",
            &json!({"key": b64(key.as_bytes()), "value": b64(value), "lease": lease.to_string()}),
        )
        .map(|_| ())
    }

    /// Follows changes under `prefix` from revision `from`, calling `batch` with each batch of
    /// changes (`(key, Some(value))` for a put, `(key, None)` for a delete), until the stream
    /// breaks (its error is returned) or `batch` returns true (stop).
    fn watch(
        &self,
        prefix: &str,
        from: i64,
        mut batch: impl FnMut(Vec<(String, Option<Vec<u8>>)>, i64) -> bool,
    ) -> Result<(), String> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix)),
            "start_revision": from.to_string(),
        }});
        // A stream: no overall timeout (it is idle while nothing changes).
        let agent = ureq::AgentBuilder::new().timeout_connect(TIMEOUT).build();
        let mut last = String::new();
        for ep in &self.endpoints {
            let resp = match agent
                .post(&format!("{ep}/v3/watch"))
                .send_string(&body.to_string())
            {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{ep}: {e}");
                    continue;
                }
            };
            let reader = std::io::BufReader::new(resp.into_reader());
            for line in reader.lines() {
                let line = line.map_err(|e| format!("{ep}: watch stream: {e}"))?;
                let v: Value = serde_json::from_str(&line)
                    .map_err(|e| format!("{ep}: watch stream not JSON ({e}): {line:.200}"))?;
                let r = &v["result"];
                if r["canceled"].as_bool() == Some(true) || v.get("error").is_some() {
                    return Err(format!("{ep}: watch ended: {v}"));
                }
                let mut changes = Vec::new();
                for ev in r["events"].as_array().into_iter().flatten() {
                    let key = String::from_utf8_lossy(&unb64(&ev["kv"]["key"])?).into_owned();
                    if ev["type"].as_str() == Some("DELETE") {
                        changes.push((key, None));
                    } else {
                        changes.push((key, Some(unb64(&ev["kv"]["value"])?)));
                    }
                }
                if !changes.is_empty() && batch(changes, int(&r["header"]["revision"])) {
                    return Ok(());
                }
            }
            return Err(format!("{ep}: watch stream closed"));
        }
        Err(last)
    }
}

/// Where an intent lives under the prefix.
fn backend_key(prefix: &str, name: &str) -> String {
    format!("{prefix}backend/{name}")
}

fn service_key(prefix: &str, name: &str) -> String {
    format!("{prefix}service/{name}")
}

/// Reads one key into `intent`; a key that is not ours or not valid is skipped (and said).
fn absorb(intent: &mut Intent, prefix: &str, key: &str, value: Option<&[u8]>) {
    let Some(rest) = key.strip_prefix(prefix) else {
        return;
    };
    if let Some(name) = rest.strip_prefix("backend/") {
        match value.map(serde_json::from_slice::<BackendIntent>) {
            None => {
                intent.backends.remove(name);
            }
            Some(Ok(b)) => {
                intent.backends.insert(name.to_string(), b);
            }
            Some(Err(e)) => {
                warn!(key, error = %e, "cluster store: ignoring a key that is not a backend's intent")
            }
        }
    } else if let Some(name) = rest.strip_prefix("service/") {
        match value.map(serde_json::from_slice::<ServiceIntent>) {
            None => {
                intent.services.remove(name);
            }
            Some(Ok(s)) => {
                intent.services.insert(name.to_string(), s);
            }
            Some(Err(e)) => {
                warn!(key, error = %e, "cluster store: ignoring a key that is not a service's intent")
            }
        }
    }
}

/// The intent the keys of a snapshot hold.
fn intent_of(prefix: &str, snap: &Snapshot) -> Intent {
    let mut i = Intent::default();
    for (k, v) in &snap.kvs {
        absorb(&mut i, prefix, k, Some(v));
    }
    i
}

/// The keys to put and delete to go from `old` to `new` (both compacted).
fn diff(prefix: &str, old: &Intent, new: &Intent) -> (Vec<(String, Vec<u8>)>, Vec<String>) {
    let (mut old, mut new) = (old.clone(), new.clone());
    old.compact();
    new.compact();
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    for (n, b) in &new.backends {
        if old.backends.get(n) != Some(b) {
            puts.push((
                backend_key(prefix, n),
                serde_json::to_vec(b).expect("serializes"),
            ));
        }
    }
    for n in old
        .backends
        .keys()
        .filter(|n| !new.backends.contains_key(*n))
    {
        deletes.push(backend_key(prefix, n));
    }
    for (n, s) in &new.services {
        if old.services.get(n) != Some(s) {
            puts.push((
                service_key(prefix, n),
                serde_json::to_vec(s).expect("serializes"),
            ));
        }
    }
    for n in old
        .services
        .keys()
        .filter(|n| !new.services.contains_key(*n))
    {
        deletes.push(service_key(prefix, n));
    }
    (puts, deletes)
}

/// What a host publishes for the others (`{prefix}hosts/{host}`, JSON, under a lease that its
/// daemon renews): its active flows per backend, from a flow scan that began after it held the
/// cluster's intent of `revision`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub revision: i64,
    pub scan: u64,
    pub active: BTreeMap<String, u64>,
    /// Backends its own checks find up.
    #[serde(default)]
    pub up: Vec<String>,
}

/// The cluster as this host sees it: its name, the revision of the intent it holds, the other
/// hosts' records; and how it publishes its own. Cheap to clone.
#[derive(Clone)]
pub struct ClusterHandle {
    etcd: Etcd,
    prefix: String,
    host: String,
    revision: Arc<AtomicI64>,
    peers: Arc<Mutex<BTreeMap<String, (HostRecord, Instant)>>>,
    lease: Arc<Mutex<Option<i64>>>,
}

impl ClusterHandle {
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The etcd revision of the intent this host holds.
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::SeqCst)
    }

    fn held_at(&self, revision: i64) {
        self.revision.fetch_max(revision, Ordering::SeqCst);
    }

    /// The other hosts whose records live: name, record, time since it last changed here.
    pub fn peers(&self) -> Vec<(String, HostRecord, Duration)> {
        self.peers
            .lock()
            .expect("peers")
            .iter()
            .filter(|(h, _)| **h != self.host)
            .map(|(h, (r, at))| (h.clone(), r.clone(), at.elapsed()))
            .collect()
    }

    /// Publishes this host's record under its lease (granted again when it has expired).
    /// Blocking: a few ms, up to the client's timeout when etcd is away.
    pub fn publish(&self, record: &HostRecord) -> Result<(), String> {
        let mut lease = self.lease.lock().expect("lease");
        let live = match *lease {
            Some(id) => self.etcd.keepalive(id)?,
            None => false,
        };
        if !live {
            *lease = Some(self.etcd.grant(HOST_TTL_S)?);
        }
        let id = lease.expect("granted above");
        let value = serde_json::to_vec(record).expect("serializes");
        self.etcd
            .put_leased(&format!("{}hosts/{}", self.prefix, self.host), &value, id)
    }

    /// Reads a `hosts/` key into the peers; true if it was one.
    fn absorb_host(&self, key: &str, value: Option<&[u8]>) -> bool {
        let Some(host) = key
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix("hosts/"))
        else {
            return false;
        };
        let mut peers = self.peers.lock().expect("peers");
        match value.map(serde_json::from_slice::<HostRecord>) {
            None => {
                peers.remove(host);
            }
            Some(Ok(r)) => {
                peers.insert(host.to_string(), (r, Instant::now()));
            }
            Some(Err(e)) => {
                warn!(key, error = %e, "cluster store: ignoring a host record that is not one")
            }
        }
        true
    }
}

/// The intent in etcd, with a local copy for starts while etcd is away.
pub struct EtcdStore {
    etcd: Etcd,
    prefix: String,
    local: FileStore,
    /// What this daemon holds now (loaded, put, or applied from another host): a put writes
    /// only what differs from it, so a change from another host that this daemon has not
    /// applied yet is never written back over.
    held: Arc<Mutex<Intent>>,
    cluster: ClusterHandle,
}

impl EtcdStore {
    /// `prefix` ends with '/' (added if not); `host` names this LB host to the others.
    pub fn new(endpoints: &[String], prefix: &str, host: &str, local: FileStore) -> EtcdStore {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let etcd = Etcd::new(endpoints);
        EtcdStore {
            cluster: ClusterHandle {
                etcd: etcd.clone(),
                prefix: prefix.clone(),
                host: host.to_string(),
                revision: Arc::new(AtomicI64::new(0)),
                peers: Arc::default(),
                lease: Arc::default(),
            },
            etcd,
            prefix,
            local,
            held: Arc::new(Mutex::new(Intent::default())),
        }
    }

    fn unreachable(&self, e: String) -> StoreError {
        StoreError::Cluster(format!(
            "cluster store unreachable (etcd {}): {e}",
            self.etcd.describe()
        ))
    }
}

impl IntentStore for EtcdStore {
    fn load(&self) -> Result<Option<Intent>, StoreError> {
        let (found, held) = match self.etcd.range(&self.prefix) {
            Ok(snap) => {
                self.cluster.held_at(snap.revision);
                for (k, v) in &snap.kvs {
                    self.cluster.absorb_host(k, Some(v));
                }
                let i = intent_of(&self.prefix, &snap);
                let marker = format!("{}{MARKER}", self.prefix);
                if !snap.kvs.iter().any(|(k, _)| *k == marker) {
                    // A new cluster: this host's last copy, if any, is put there by the
                    // daemon's first write.
                    (self.local.load()?, i)
                } else {
                    (Some(i.clone()), i)
                }
            }
            Err(e) => {
                warn!(
                    error = %e,
                    local = %self.local.describe(),
                    "cluster store unreachable: starting from the local copy (fail static)"
                );
                let local = self.local.load()?;
                (local.clone(), local.unwrap_or_default())
            }
        };
        *self.held.lock().expect("held") = held;
        Ok(found)
    }

    fn put(&mut self, intent: &Intent) -> Result<(), StoreError> {
        let held = self.held.lock().expect("held").clone();
        let (mut puts, deletes) = diff(&self.prefix, &held, intent);
        // Says the cluster has an intent, even one that is all defaults (no other key).
        puts.push((format!("{}{MARKER}", self.prefix), b"1".to_vec()));
        let rev = self
            .etcd
            .write(&puts, &deletes)
            .map_err(|e| self.unreachable(e))?;
        if let Some(r) = rev {
            self.cluster.held_at(r);
        }
        *self.held.lock().expect("held") = intent.clone();
        if let Err(e) = self.local.put(intent) {
            warn!(error = %e, "cannot keep the local copy of the cluster's intent");
        }
        Ok(())
    }

    fn held(&mut self, intent: &Intent, revision: i64) {
        self.cluster.held_at(revision);
        let mut h = self.held.lock().expect("held");
        if *h != *intent {
            *h = intent.clone();
            if let Err(e) = self.local.put(intent) {
                warn!(error = %e, "cannot keep the local copy of the cluster's intent");
            }
        }
    }

    fn shared(&self) -> bool {
        true
    }

    fn cluster(&self) -> Option<ClusterHandle> {
        Some(self.cluster.clone())
    }

    fn watch(&mut self) -> Option<tokio::sync::mpsc::UnboundedReceiver<(Intent, i64)>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let etcd = self.etcd.clone();
        let prefix = self.prefix.clone();
        let cluster = self.cluster.clone();
        std::thread::Builder::new()
            .name("steer-etcd-watch".into())
            .spawn(move || {
                let mut down = false;
                loop {
                    // Read everything, hand it over, then follow the changes from there; after
                    // a break, start over (what changed meanwhile comes with the read).
                    let snap = match etcd.range(&prefix) {
                        Ok(s) => s,
                        Err(e) => {
                            if !down {
                                warn!(error = %e, "cluster store unreachable: forwarding with the last intent until it is back");
                                down = true;
                            }
                            std::thread::sleep(RETRY);
                            continue;
                        }
                    };
                    if down {
                        info!("cluster store reachable again: catching up");
                        down = false;
                    }
                    cluster.peers.lock().expect("peers").clear();
                    for (k, v) in &snap.kvs {
                        cluster.absorb_host(k, Some(v));
                    }
                    let mut intent = intent_of(&prefix, &snap);
                    if tx.send((intent.clone(), snap.revision)).is_err() {
                        return;
                    }
                    let mut gone = false;
                    let r = etcd.watch(&prefix, snap.revision + 1, |changes, rev| {
                        let mut touched = false;
                        for (k, v) in changes {
                            if !cluster.absorb_host(&k, v.as_deref()) {
                                absorb(&mut intent, &prefix, &k, v.as_deref());
                                touched = true;
                            }
                        }
                        if touched {
                            gone = tx.send((intent.clone(), rev)).is_err();
                        }
                        gone
                    });
                    if gone {
                        return;
                    }
                    if let Err(e) = r {
                        warn!(error = %e, "cluster store: watch broken, reading again");
                    }
                    std::thread::sleep(RETRY);
                }
            })
            .ok()?;
        Some(rx)
    }

    fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.etcd.describe(), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::AdminState;

    #[test]
    fn a_put_writes_only_what_changed_and_deletes_what_says_nothing() {
        let mut old = Intent::default();
        old.backend_mut("b0").admin = AdminState::Drain;
        old.backend_mut("b1").admin = AdminState::Maint;
        let mut new = old.clone();
        new.backend_mut("b0").admin = AdminState::Ready;
        new.backend_mut("b2").admin = AdminState::Reject;
        new.service_mut("web").maintenance = true;
        let (puts, deletes) = diff("/steer/", &old, &new);
        let keys: Vec<&str> = puts.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["/steer/backend/b2", "/steer/service/web"]);
        assert_eq!(deletes, ["/steer/backend/b0"]);
        let mut back = old.clone();
        for (k, v) in &puts {
            absorb(&mut back, "/steer/", k, Some(v));
        }
        for k in &deletes {
            absorb(&mut back, "/steer/", k, None);
        }
        new.compact();
        assert_eq!(back, new);
        // Keys of other prefixes and values that are not intents are left alone.
        absorb(&mut back, "/steer/", "/other/backend/b1", None);
        absorb(&mut back, "/steer/", "/steer/backend/b1", Some(b"not json"));
        assert_eq!(back, new);
    }

    #[test]
    fn a_prefix_ends_just_after_its_last_key() {
        assert_eq!(prefix_end("/steer/"), b"/steer0");
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80");
    }
}
