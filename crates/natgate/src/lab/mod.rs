//! The NAT lab: the standard topology in network namespaces, probes that send real traffic
//! through it, the demo that puts both to work, and NAT behaviour discovery (a STUN server
//! for WAN hosts and the client that classifies the NATs in front of a host).

pub mod cli;
pub mod demo;
pub mod discovery;
pub mod probe;
pub mod stun_server;
pub mod topology;
