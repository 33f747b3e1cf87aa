//! Linux plumbing for natgate: named network namespaces, a small rtnetlink
//! client, ethtool offload switches, per-namespace sysctls, TUN devices, and
//! the standard lab topology of `shared/TOPOLOGY.md`.
//!
//! Everything that changes network state takes (or must be run inside) a
//! [`netns::Netns`] the caller created, so nothing here touches the host's
//! own interfaces, routes or sysctls by accident.

pub mod ethtool;
pub mod netlink;
pub mod netns;
pub mod probe;
pub mod sysctl;
pub mod topology;
pub mod tun;
