//! Reconciling: making the balancer (and through it the datapath) hold what the config and
//! the operator's intent say — as a diff applied in place, all or nothing.
//!
//! Every change goes through here: daemon start (against what the pinned maps hold), a
//! reload (a new config), a verb (a new intent). `check` finds everything that would stop the
//! change from applying whole — MACs, capacities, stale intent — before anything is written;
//! `apply` then changes only what differs, in one batch: each touched service is published
//! once, whole. A setting change never resets a flow or forgets health; only a removed
//! backend's (or service's) flows end.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use steer_common::{svc_flags, MAX_BACKENDS};

use crate::{
    balancer::{addr_bytes, pool_slots, BackendSpec, Balancer, NatSpec, ServiceSpec},
    config::{BackendCfg, Config, DaemonCfg, ServiceCfg},
    datapath::Datapath,
    model::{AdminState, Health, Mode},
    store::Intent,
};

/// Why a change cannot be applied; nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
    #[error("applying failed part way (the datapath holds what was applied): {0}")]
    Datapath(#[from] crate::balancer::BalancerError),
}

/// Everything a reconcile needs besides the balancer.
pub struct Desired<'a> {
    pub cfg: &'a Config,
    pub intent: &'a Intent,
    /// MACs resolved from the neighbour table, by backend address (DSR backends).
    pub macs: &'a BTreeMap<IpAddr, [u8; 6]>,
    /// The LB's own address facing each NAT backend (`ip route get`'s source), by backend
    /// address. A backend kept across a change and absent here keeps the one it has.
    pub snat: &'a BTreeMap<IpAddr, IpAddr>,
    /// Health to give a backend that is added now (adopted, or unknown until checked).
    pub initial_health: &'a dyn Fn(&str) -> Health,
}

pub fn service_spec(s: &ServiceCfg, daemon: &DaemonCfg) -> ServiceSpec {
    let nat = match s.nat(daemon) {
        Some(n) => NatSpec {
            pool: n.pool,
            slots: Vec::new(),
            port_lo: n.ports.0,
            port_hi: n.ports.1,
            observe: n.observe,
            error_limit: n.error_limit.min(u16::MAX as u32) as u16,
            syn_timeout_ms: n.syn_timeout.as_millis().min(u32::MAX as u128) as u32,
            recover: n.recover,
        },
        None => NatSpec::default(),
    };
    ServiceSpec {
        name: s.name.get_ref().clone(),
        vip: *s.vip.get_ref(),
        port: s.port,
        proto: s.proto(),
        maglev_size: *s.maglev_size.get_ref(),
        idle_timeout_s: s.idle_timeout.0.as_secs().max(1) as u32,
        no_backend: s.no_backend(),
        mode: s.mode(),
        nat,
    }
}

/// Whether a backend has health checks (otherwise it is always up).
pub fn is_checked(s: &ServiceCfg, b: &BackendCfg) -> bool {
    s.check_of(b).is_some()
}

/// Addresses of backends whose MAC must come from the neighbour table: no MAC in the config,
/// and not already known to `bal` (if any) at the same address.
pub fn macs_needed(bal: Option<&Balancer>, cfg: &Config) -> Vec<IpAddr> {
    // A NAT backend has no MAC to keep (it may be turning into a DSR one).
    let known = |name: &str, addr: IpAddr| {
        bal.and_then(|bal| bal.backend_spec(name))
            .is_some_and(|k| k.addr == addr && k.mac != [0; 6])
    };
    cfg.backends()
        .filter(|(s, _)| s.mode() == Mode::Dsr)
        .map(|(_, b)| (b, *b.address.get_ref()))
        .filter(|(b, addr)| b.mac.is_none() && !known(b.name.get_ref(), *addr))
        .map(|(_, addr)| addr)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Addresses of the NAT backends, whose facing LB address (and next hop) is looked up at
/// every start and reload: routes change.
pub fn nat_backends(cfg: &Config) -> Vec<IpAddr> {
    cfg.backends()
        .filter(|(s, _)| s.mode() == Mode::Nat)
        .map(|(_, b)| *b.address.get_ref())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether `b` is the same service as `a` for the datapath: the same address, port and
/// protocol, and the same forwarding mode (a flow cannot change how it is forwarded).
fn same_key(a: &ServiceSpec, b: &ServiceSpec) -> bool {
    a.vip == b.vip && a.port == b.port && a.proto == b.proto && a.mode == b.mode
}

/// What `check` found: the intent corrected where it names what no longer exists, and notes
/// that say so.
pub struct Checked {
    pub intent: Intent,
    pub notes: Vec<String>,
}

/// Everything that would stop `d` from applying whole, found without writing anything.
pub fn check(bal: &Balancer, d: &Desired) -> Result<Checked, ApplyError> {
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let mut intent = d.intent.clone();
    let cfg = d.cfg;

    let max_services = bal.datapath().max_services() as usize;
    if cfg.services.len() > max_services {
        errors.push(format!(
            "{} services, but the datapath holds {max_services} (daemon.max_services)",
            cfg.services.len()
        ));
    }
    let current: BTreeMap<String, crate::balancer::BackendInfo> = bal
        .backend_infos()
        .into_iter()
        .map(|b| (b.name.clone(), b))
        .collect();
    let mut added = 0usize;
    for s in &cfg.services {
        let spec = service_spec(s, &cfg.daemon);
        let svc_kept = bal
            .service_spec(&spec.name)
            .is_some_and(|o| same_key(o, &spec));
        let nat = spec.mode == Mode::Nat;
        for b in &s.backends {
            let name = b.name.get_ref();
            let addr = *b.address.get_ref();
            let kept = svc_kept
                && current.get(name).is_some_and(|c| {
                    c.addr == addr && c.service == spec.name && c.port == s.port_of(b)
                });
            if !kept {
                added += 1;
            }
            if !nat && b.mac.is_none() && !kept && !d.macs.contains_key(&addr) {
                errors.push(format!(
                    "backend {name}: no MAC address in the config, and {addr} does not answer ARP or neighbour solicitation (is it up, on this host's L2 segment?)"
                ));
            }
            let had_snat = kept && current.get(name).is_some_and(|c| c.snat.is_some());
            if nat && spec.nat.pool.is_empty() && !had_snat && !d.snat.contains_key(&addr) {
                errors.push(format!(
                    "backend {name}: this host has no route to {addr}, so NAT has no address of its own to send its flows from (add a route, or give service {} an snat pool)",
                    spec.name
                ));
            }
        }
        // Stale intent: a group or maintenance the config no longer allows.
        let si = intent.service(&spec.name);
        if let Some(g) = &si.group {
            if !s.backends.iter().any(|b| b.group.as_deref() == Some(g)) {
                notes.push(format!(
                    "service {}: the switched-to group {g} is gone from the config: every group takes new flows",
                    spec.name
                ));
                intent.service_mut(&spec.name).group = None;
            }
        }
        if si.maintenance
            && !s
                .backends
                .iter()
                .any(|b| b.role() == crate::model::Role::Maintenance)
        {
            notes.push(format!(
                "service {}: maintenance was on, but the service has no maintenance backend any more: off",
                spec.name
            ));
            intent.service_mut(&spec.name).maintenance = false;
        }
    }
    // Ids freed by this change are not given out again before it is published.
    let free = MAX_BACKENDS as usize - current.len();
    if added > free {
        errors.push(format!(
            "{added} backends to add, but only {free} backend slots are free (limit {MAX_BACKENDS}; slots of removed backends are reused after the change): apply it in two steps"
        ));
    }
    // Names in the intent that the config no longer has are dropped.
    let names: BTreeSet<&String> = cfg.backends().map(|(_, b)| b.name.get_ref()).collect();
    intent.backends.retain(|n, _| names.contains(n));
    intent.services.retain(|n, _| cfg.service(n).is_some());
    intent.compact();
    if errors.is_empty() {
        Ok(Checked { intent, notes })
    } else {
        Err(ApplyError::Refused(errors))
    }
}

/// Applies `d` (already `check`ed, with its corrected intent) in one batch. Returns a line per
/// change made.
pub fn apply(bal: &mut Balancer, d: &Desired) -> Result<Vec<String>, ApplyError> {
    bal.begin_batch();
    let mut changes = Vec::new();
    let r = apply_batched(bal, d, &mut changes);
    let c = bal.commit();
    r?;
    c?;
    Ok(changes)
}

fn apply_batched(
    bal: &mut Balancer,
    d: &Desired,
    changes: &mut Vec<String>,
) -> Result<(), ApplyError> {
    let cfg = d.cfg;
    let wanted: BTreeMap<&String, &ServiceCfg> =
        cfg.services.iter().map(|s| (s.name.get_ref(), s)).collect();

    // Services gone, or moved to another address or mode (another service: its flows end).
    for old in bal.service_infos() {
        let new = wanted.get(&old.name).map(|s| service_spec(s, &cfg.daemon));
        let keep = new
            .as_ref()
            .is_some_and(|n| bal.service_spec(&old.name).is_some_and(|o| same_key(o, n)));
        if !keep {
            bal.remove_service(&old.name)?;
            match new {
                Some(n) if n.mode != old.mode => changes.push(format!(
                    "service {}: mode {} → {}: replaced (its flows end: a connection cannot change how it is forwarded)",
                    old.name, old.mode, n.mode
                )),
                _ => changes.push(format!("service {}: removed", old.name)),
            }
        }
    }
    // Backends gone, readdressed or moved to another service (another server: flows end).
    // By name, once: this runs on every change, and a host may have thousands of backends.
    let backend_cfg: BTreeMap<&String, (&ServiceCfg, &BackendCfg)> = cfg
        .backends()
        .map(|(s, b)| (b.name.get_ref(), (s, b)))
        .collect();
    for old in bal.backend_infos() {
        let keep = backend_cfg.get(&old.name).is_some_and(|(s, b)| {
            s.name.get_ref() == &old.service
                && *b.address.get_ref() == old.addr
                && s.port_of(b) == old.port
        });
        if !keep {
            bal.remove_backend(&old.name)?;
            changes.push(format!("backend {}: removed", old.name));
        }
    }
    for s in &cfg.services {
        let mut spec = service_spec(s, &cfg.daemon);
        let nat = spec.mode == Mode::Nat;
        let name = spec.name.clone();
        if let Some(o) = bal.service_spec(&name) {
            // Pool addresses keep their slots (flows record the slot of their source), and
            // removed ones stay in theirs while their flows may go on.
            spec.nat.slots = pool_slots(o.nat.slots(), &spec.nat.pool);
        }
        match bal.service_spec(&name) {
            Some(o) if *o == spec => {}
            Some(_) => {
                bal.update_service(spec)?;
                changes.push(format!("service {name}: settings changed in place"));
            }
            None => {
                bal.add_service(spec)?;
                changes.push(format!("service {name}: added"));
            }
        }
        for b in &s.backends {
            let bname = b.name.get_ref();
            let addr = *b.address.get_ref();
            let intent = d.intent.backend(bname);
            let (weight, _) = d.intent.weight(bname, b.weight);
            match bal.backend_spec(bname).cloned() {
                Some(cur) => {
                    let spec = BackendSpec {
                        mac: b.mac.map(|m| m.0).unwrap_or(cur.mac),
                        weight,
                        role: b.role(),
                        group: b.group.clone(),
                        snat: if nat {
                            d.snat.get(&addr).copied().or(cur.snat)
                        } else {
                            None
                        },
                        ..cur.clone()
                    };
                    if spec.mac != cur.mac
                        || spec.weight != cur.weight
                        || spec.role != cur.role
                        || spec.group != cur.group
                    {
                        changes.push(format!("backend {bname}: updated in place"));
                    }
                    if let (Some(old), Some(new)) = (cur.snat, spec.snat) {
                        if old != new {
                            changes.push(format!(
                                "backend {bname}: this host's address facing it is now {new} (was {old}): new flows leave from it"
                            ));
                        }
                    }
                    bal.update_backend_spec(spec)?;
                    bal.set_admin(bname, intent.admin)?;
                }
                None => {
                    // NAT backends need none: the datapath asks the kernel's FIB.
                    let mac = if nat {
                        [0; 6]
                    } else {
                        b.mac
                            .map(|m| m.0)
                            .or_else(|| d.macs.get(&addr).copied())
                            .expect("checked: every new backend has a MAC")
                    };
                    let health = if is_checked(s, b) {
                        (d.initial_health)(bname)
                    } else {
                        Health::Up
                    };
                    bal.add_backend(
                        &name,
                        BackendSpec {
                            name: bname.clone(),
                            addr,
                            mac,
                            weight,
                            role: b.role(),
                            group: b.group.clone(),
                            admin: intent.admin,
                            health,
                            port: Some(s.port_of(b)),
                            snat: if nat {
                                d.snat.get(&addr).copied()
                            } else {
                                None
                            },
                        },
                    )?;
                    changes.push(format!("backend {bname}: added ({health})"));
                }
            }
        }
        let si = d.intent.service(&name);
        bal.set_active_group(&name, si.group.as_deref())?;
        // Maintenance last: its backend must be in place first.
        bal.set_maintenance(&name, si.maintenance)?;
    }
    Ok(())
}

/// What the maps pinned by a daemon that ran before say about the services and backends of
/// `cfg`: ids and generations (flows name backends by them), admin states, health and
/// maintenance. Services are matched by address, port and protocol; backends by service and
/// address (unique within a service).
#[derive(Debug, Default)]
pub struct Adopted {
    pub service_ids: BTreeMap<String, u32>,
    pub backend_ids: BTreeMap<String, (u32, u16)>,
    pub admin: BTreeMap<String, AdminState>,
    pub health: BTreeMap<String, Health>,
    pub maintenance: BTreeMap<String, bool>,
    /// Generation of every slot in use, named in the config or not.
    pub generations: Vec<(u32, u16)>,
}

pub fn adopt(dp: &Datapath, cfg: &Config) -> Result<Adopted, crate::datapath::DatapathError> {
    let services = dp.service_entries()?;
    let backends = dp.backend_entries()?;
    let mut out = Adopted {
        generations: dp.backend_generations()?,
        ..Default::default()
    };
    for s in &cfg.services {
        let spec = service_spec(s, &cfg.daemon);
        let (addr, family) = addr_bytes(spec.vip);
        // A pinned service of another mode is another service: its flows cannot follow.
        let Some((_, v)) = services.iter().find(|(k, v)| {
            k.addr == addr
                && k.family == family
                && k.port_be == spec.port.to_be()
                && k.proto == spec.proto.number()
                && v.mode == spec.mode.code()
        }) else {
            continue;
        };
        out.service_ids.insert(spec.name.clone(), v.id);
        out.maintenance
            .insert(spec.name.clone(), v.flags & svc_flags::MAINTENANCE != 0);
        for b in &s.backends {
            let (baddr, bfam) = addr_bytes(*b.address.get_ref());
            let port_be = s.port_of(b).to_be();
            if let Some((id, e)) = backends.iter().find(|(_, e)| {
                e.service == v.id && e.addr == baddr && e.family == bfam && e.port_be == port_be
            }) {
                let name = b.name.get_ref().clone();
                out.backend_ids.insert(name.clone(), (*id, e.gen));
                if let Some(a) = AdminState::from_code(e.admin) {
                    out.admin.insert(name.clone(), a);
                }
                out.health.insert(name, Health::from_code(e.health));
            }
        }
    }
    Ok(out)
}

impl Adopted {
    /// The intent the pinned maps record, for a daemon whose state file is gone.
    pub fn intent(&self) -> Intent {
        let mut i = Intent::default();
        for (n, a) in &self.admin {
            i.backend_mut(n).admin = *a;
        }
        for (n, m) in &self.maintenance {
            i.service_mut(n).maintenance = *m;
        }
        i.compact();
        i
    }
}
