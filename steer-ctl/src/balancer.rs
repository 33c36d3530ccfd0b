//! Desired state of services and backends, kept in step with the datapath's maps.
//!
//! `Balancer` owns a `Datapath`. Every change goes through it: it allocates ids, writes the
//! backend entries, and rebuilds a service's Maglev table from its eligible backends whenever
//! their set or weights change, writing the table the datapath is not reading and then flipping
//! the service to it (one map update: packets see the old table or the new one, never a mix).

use std::{collections::BTreeMap, net::IpAddr};

use steer_common::{
    admin, health, Backend, Counters, Service, ServiceKey, BACKEND_NONE, FAMILY_V4, FAMILY_V6,
    MAGLEV_DEFAULT_SIZE, MAX_BACKENDS, MODE_DSR, PROTO_TCP, PROTO_UDP,
};

use crate::{
    datapath::{Datapath, DatapathError},
    maglev::{self, MaglevError},
};

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn number(self) -> u8 {
        match self {
            Proto::Tcp => PROTO_TCP,
            Proto::Udp => PROTO_UDP,
        }
    }
}

/// A service to add.
#[derive(Clone, Debug)]
pub struct ServiceSpec {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub proto: Proto,
    /// Prime, at most `steer_common::MAGLEV_MAX_SIZE`.
    pub maglev_size: u32,
}

impl ServiceSpec {
    pub fn tcp(name: &str, vip: IpAddr, port: u16) -> Self {
        ServiceSpec {
            name: name.to_string(),
            vip,
            port,
            proto: Proto::Tcp,
            maglev_size: MAGLEV_DEFAULT_SIZE,
        }
    }
}

/// A backend to add to a service.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub name: String,
    pub addr: IpAddr,
    pub mac: [u8; 6],
    pub weight: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BalancerError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Maglev(#[from] MaglevError),
    #[error("no service named {0:?}")]
    UnknownService(String),
    #[error("no backend named {0:?}")]
    UnknownBackend(String),
    #[error("a service named {0:?} already exists")]
    DuplicateService(String),
    #[error("service {0:?} already has the address {1}:{2}")]
    DuplicateVip(String, IpAddr, u16),
    #[error("a backend named {0:?} already exists (backend names are unique per host)")]
    DuplicateBackend(String),
    #[error("no room for another {0} (limit {1})")]
    Full(&'static str, u32),
    #[error("backend {backend:?} is {backend_family} but service {service:?} is {service_family}")]
    FamilyMismatch {
        backend: String,
        backend_family: &'static str,
        service: String,
        service_family: &'static str,
    },
}

type Result<T, E = BalancerError> = std::result::Result<T, E>;

/// Splits an address into the datapath's 16-byte form and family.
pub fn addr_bytes(ip: IpAddr) -> ([u8; 16], u8) {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            b[..4].copy_from_slice(&v4.octets());
            (b, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn family_name(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

struct ServiceState {
    spec: ServiceSpec,
    id: u32,
    key: ServiceKey,
    value: Service,
    /// Backend names, in the order added.
    backends: Vec<String>,
}

struct BackendState {
    spec: BackendSpec,
    id: u32,
    service: String,
    entry: Backend,
}

/// Services and backends, applied to a datapath.
pub struct Balancer {
    dp: Datapath,
    services: BTreeMap<String, ServiceState>,
    backends: BTreeMap<String, BackendState>,
}

impl Balancer {
    pub fn new(dp: Datapath) -> Self {
        Balancer {
            dp,
            services: BTreeMap::new(),
            backends: BTreeMap::new(),
        }
    }

    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    pub fn datapath_mut(&mut self) -> &mut Datapath {
        &mut self.dp
    }

    /// Adds a service with no backends (new flows to it are dropped until one is added).
    pub fn add_service(&mut self, spec: ServiceSpec) -> Result<u32> {
        if self.services.contains_key(&spec.name) {
            return Err(BalancerError::DuplicateService(spec.name));
        }
        if let Some(other) = self.services.values().find(|s| {
            s.spec.vip == spec.vip && s.spec.port == spec.port && s.spec.proto == spec.proto
        }) {
            return Err(BalancerError::DuplicateVip(
                other.spec.name.clone(),
                spec.vip,
                spec.port,
            ));
        }
        if !maglev::is_prime(spec.maglev_size) || spec.maglev_size > steer_common::MAGLEV_MAX_SIZE {
            return Err(MaglevError::BadSize(spec.maglev_size).into());
        }
        let max = self.dp.max_services();
        let id = (0..max)
            .find(|i| self.services.values().all(|s| s.id != *i))
            .ok_or(BalancerError::Full("service", max))?;
        let (addr, family) = addr_bytes(spec.vip);
        let key = ServiceKey {
            addr,
            port_be: spec.port.to_be(),
            proto: spec.proto.number(),
            family,
        };
        let value = Service {
            id,
            flags: 0,
            maglev_size: 0,
            table_slot: 0,
            fallback: BACKEND_NONE,
            maintenance: BACKEND_NONE,
            idle_timeout_s: 30,
            mode: MODE_DSR,
        };
        let name = spec.name.clone();
        self.services.insert(
            name.clone(),
            ServiceState {
                spec,
                id,
                key,
                value,
                backends: Vec::new(),
            },
        );
        if let Err(e) = self.rebuild(&name) {
            self.services.remove(&name);
            return Err(e);
        }
        Ok(id)
    }

    /// Adds a backend to a service, ready and up, and puts it in the service's table.
    pub fn add_backend(&mut self, service: &str, spec: BackendSpec) -> Result<u32> {
        if self.backends.contains_key(&spec.name) {
            return Err(BalancerError::DuplicateBackend(spec.name));
        }
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        if svc.spec.vip.is_ipv4() != spec.addr.is_ipv4() {
            return Err(BalancerError::FamilyMismatch {
                backend: spec.name,
                backend_family: family_name(spec.addr),
                service: service.to_string(),
                service_family: family_name(svc.spec.vip),
            });
        }
        let svc_id = svc.id;
        let id = (0..MAX_BACKENDS)
            .find(|i| self.backends.values().all(|b| b.id != *i))
            .ok_or(BalancerError::Full("backend", MAX_BACKENDS))?;
        let (addr, family) = addr_bytes(spec.addr);
        let entry = Backend {
            addr,
            mac: spec.mac,
            family,
            admin: admin::READY,
            health: health::UP,
            service: svc_id,
            ..Backend::EMPTY
        };
        self.dp.put_backend(id, &entry)?;
        let name = spec.name.clone();
        self.backends.insert(
            name.clone(),
            BackendState {
                spec,
                id,
                service: service.to_string(),
                entry,
            },
        );
        self.services
            .get_mut(service)
            .expect("checked above")
            .backends
            .push(name.clone());
        if let Err(e) = self.rebuild(service) {
            self.remove_backend(&name).ok();
            return Err(e);
        }
        Ok(id)
    }

    /// Takes a backend out of its service's table and frees its id.
    pub fn remove_backend(&mut self, name: &str) -> Result<()> {
        let be = self
            .backends
            .remove(name)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))?;
        if let Some(svc) = self.services.get_mut(&be.service) {
            svc.backends.retain(|b| b != name);
        }
        self.rebuild(&be.service)?;
        self.dp.put_backend(be.id, &Backend::EMPTY)?;
        Ok(())
    }

    /// Sets a backend's Maglev weight (0 keeps it out of the table).
    pub fn set_weight(&mut self, name: &str, weight: u32) -> Result<()> {
        let be = self
            .backends
            .get_mut(name)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))?;
        be.spec.weight = weight;
        let service = be.service.clone();
        self.rebuild(&service)
    }

    /// The id of a backend.
    pub fn backend_id(&self, name: &str) -> Result<u32> {
        self.backends
            .get(name)
            .map(|b| b.id)
            .ok_or_else(|| BalancerError::UnknownBackend(name.to_string()))
    }

    /// The name of the backend with id `id`.
    pub fn backend_name(&self, id: u32) -> Option<String> {
        self.backends
            .values()
            .find(|b| b.id == id)
            .map(|b| b.spec.name.clone())
    }

    /// The id of a service.
    pub fn service_id(&self, name: &str) -> Result<u32> {
        self.services
            .get(name)
            .map(|s| s.id)
            .ok_or_else(|| BalancerError::UnknownService(name.to_string()))
    }

    /// Counters of a backend, summed over CPUs.
    pub fn backend_counters(&self, name: &str) -> Result<Counters> {
        Ok(self.dp.backend_counters(self.backend_id(name)?)?)
    }

    /// Counters of a service, summed over CPUs.
    pub fn service_counters(&self, name: &str) -> Result<Counters> {
        Ok(self.dp.service_counters(self.service_id(name)?)?)
    }

    /// The live Maglev table of a service, as backend ids.
    pub fn live_table(&self, service: &str) -> Result<Vec<u32>> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        Ok(self
            .dp
            .read_table(svc.id, svc.value.table_slot, svc.value.maglev_size)?)
    }

    /// Rebuilds a service's table from its eligible backends, writes it to the idle slot and
    /// makes it live.
    fn rebuild(&mut self, service: &str) -> Result<()> {
        let svc = self
            .services
            .get(service)
            .ok_or_else(|| BalancerError::UnknownService(service.to_string()))?;
        let entries: Vec<maglev::Entry<'_>> = svc
            .backends
            .iter()
            .filter_map(|n| self.backends.get(n))
            .filter(|b| b.entry.eligible())
            .map(|b| maglev::Entry {
                name: &b.spec.name,
                weight: b.spec.weight,
                id: b.id,
            })
            .collect();
        let table = maglev::build(svc.spec.maglev_size, &entries)?;
        let (id, key) = (svc.id, svc.key);
        let mut value = svc.value;
        value.table_slot ^= 1;
        value.maglev_size = svc.spec.maglev_size;
        self.dp.write_table(id, value.table_slot, &table)?;
        self.dp.put_service(&key, &value)?;
        self.services
            .get_mut(service)
            .expect("looked up above")
            .value = value;
        Ok(())
    }
}
