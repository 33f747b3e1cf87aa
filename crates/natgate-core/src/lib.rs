//! natgate-core: the sans-IO NAPT44 translation engine of natgate.
//!
//! The engine owns no sockets, threads or clocks. A driver hands it IPv4 datagrams together with
//! the side they arrived on and the current [`Instant`]; the engine rewrites them in place and
//! returns a [`Verdict`]. Timers run when the driver calls [`Engine::handle_timeout`] at or after
//! [`Engine::next_timeout`]; packets the engine builds later (ICMP errors for held SYNs, released
//! fragments) leave through [`Engine::poll_transmit`], and state changes through
//! [`Engine::poll_event`].
//!
//! The layers are visible in the module tree: [`wire`] parses and rewrites bytes, [`table`],
//! [`alloc`], [`tcp_state`] and [`fragment`] hold policy and state, [`rules`] holds the static NAT
//! rules and their compiled lookup, [`engine`] ties them together.

pub mod alloc;
pub mod config;
pub mod counters;
pub mod endpoint;
pub mod engine;
pub mod event;
pub mod fragment;
pub mod hash;
#[cfg(feature = "huge-pages")]
pub mod huge_pages;
pub mod portmap;
pub mod rng;
pub mod rules;
pub mod saved;
pub mod shard;
pub mod stun;
pub mod table;
pub mod tcp_state;
pub mod time;
mod validate;
pub mod verdict;
pub mod vserver;
pub mod wire;

pub use config::{
    Behavior, BehaviorSpec, Config, ConfigError, Limits, Preset, Timers, ValidConfig,
};
pub use counters::{Counters, DropReason};
pub use endpoint::{Direction, Endpoint, Protocol, Side};
pub use engine::{Engine, OutOfMemory, SessionInfo, SessionOrigin};
pub use event::{EndReason, Event};
pub use rng::Rng;
pub use time::Instant;
pub use verdict::Verdict;
