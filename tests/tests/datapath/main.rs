//! SPEC.md's datapath rules as `BPF_PROG_TEST_RUN` fixtures: each row is a frame in, the action
//! and frame out, and the counters that must move. One module per rule; each `#[test]` loads a
//! datapath of its own (`common::table`), so a broken row cannot leak state into another rule's
//! rows, and changes it between rows (drain, reject, maintenance…) as an operator would.
//!
//! One test binary (linking one per rule would be slow); shared set-up lives in `common`.

mod common;

mod admin;
mod attempts;
mod cache;
mod established;
mod fuzz;
mod ipv6;
mod maintenance_fallback;
mod nat_cache;
mod nat_common;
mod nat_heal;
mod nat_icmp;
mod nat_not_service;
mod nat_ports;
mod nat_recovery;
mod nat_rules;
mod nat_translation;
mod new_flows;
mod no_backend;
mod options;
mod parse;
mod presence;
mod redispatch;
mod services;
mod tables;
mod udp;
mod vlan;
