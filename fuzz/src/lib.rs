//! Fuzz harness bodies, kept in a library so that the libFuzzer targets and a plain
//! `cargo test` loop (which needs neither nightly nor cargo-fuzz) run the same code.

pub mod engine_process;
pub mod portmap_request;
pub mod shard_owner;
pub mod stun_message;
pub mod upnp_request;
