//! Fuzz harness bodies, kept in a library so that the libFuzzer targets and a plain
//! `cargo test` loop (which needs neither nightly nor cargo-fuzz) run the same code.

pub mod engine_process;
pub mod portmap_request;
pub mod shard_owner;
pub mod stun_message;
pub mod upnp_request;

use natgate_core::config::Ipv4Prefix;
use natgate_core::{Config, Engine};
use std::net::Ipv4Addr;

/// The engine behind the port-mapping targets: one pool address, room for a few mappings,
/// subscribers in 100.64.0.0/10 (returned), explicit mappings on or off.
fn port_mapping_engine(explicit_mappings: bool) -> (Engine, Ipv4Prefix) {
    let mut c = Config::new(
        vec![Ipv4Addr::new(198, 51, 100, 1)],
        Ipv4Addr::new(100, 64, 0, 1),
    );
    c.limits.max_sessions = 64;
    c.limits.max_mappings = 64;
    c.limits.max_static_sessions = 64;
    let Some(inside) = Ipv4Prefix::new(Ipv4Addr::new(100, 64, 0, 0), 10) else {
        panic!("the fixed prefix is valid");
    };
    c.inside_networks = vec![inside];
    c.explicit_mappings = explicit_mappings;
    let Ok(cfg) = c.validate() else {
        panic!("the fixed config is valid");
    };
    (Engine::new(cfg, 1), inside)
}
