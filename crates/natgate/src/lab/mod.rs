//! The NAT lab: the standard topology in network namespaces, probes that send real traffic
//! through it, and the demo that puts both to work.

pub mod demo;
pub mod probe;
pub mod topology;
