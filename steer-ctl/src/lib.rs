//! steer-ctl as a library: the datapath handle, Maglev, and the balancer state that drives them.
//! The `steer-ctl` binary is a thin layer over this.

pub mod balancer;
pub mod checks;
pub mod client;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod maglev;
pub mod metrics;
pub mod proto;
pub mod state;

pub use balancer::{Admin, BackendSpec, Balancer, NoBackend, Proto, Role, ServiceSpec};
pub use datapath::{Datapath, Options};
