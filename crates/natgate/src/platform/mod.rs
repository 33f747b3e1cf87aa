//! The Linux the gateway is built on: network namespaces, rtnetlink, sysctls and ethtool.
//! Each talks to the kernel directly (no `ip`, no `ethtool` binary).

pub mod ethtool;
pub mod netlink;
pub mod netns;
pub mod sysctl;
