//! steer-ctl as a library: the datapath handle, Maglev, the balancer that drives them, the
//! config, the intent store, the control protocol and the daemon. The `steer-ctl` binary is a
//! thin layer over this.

pub mod balancer;
pub mod checks;
pub mod client;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod deploy;
pub mod exit;
pub mod haproxy;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod stats;
pub mod store;

pub use balancer::{BackendSpec, Balancer, ServiceSpec};
pub use datapath::{Datapath, Options};
pub use model::{AdminState, Health, Mode, NoBackend, Proto, Role};
