//! `[allocation]`: how external ports are handed out (RFC 6888 port blocks, RFC 7422
//! deterministic NAT, or any free port).

use super::ConfigError;
pub use crate::endpoint::Ipv4Prefix;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::net::Ipv4Addr;

/// Ports 1024-65535: what port blocks and deterministic ranges are carved from.
const NON_WELL_KNOWN_PORTS: u32 = 65536 - 1024;

/// The allocation policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Allocation {
    /// Any free port of the pool, mapping by mapping (the behaviour settings apply).
    #[default]
    Dynamic,
    /// Per-subscriber port blocks (RFC 6888 REQ-4, REQ-13..15).
    PortBlock(PortBlockSpec),
    /// Deterministic NAT (RFC 7422).
    Deterministic(DeterministicSpec),
}

/// Port-block parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PortBlockSpec {
    /// Ports per block, 2..=64512 (blocks are carved from 1024-65535).
    pub block_size: u16,
    /// Most blocks a subscriber may hold (RFC 6888 REQ-4), at least 1.
    pub max_blocks_per_subscriber: u16,
}

/// Deterministic NAT parameters (RFC 7422).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct DeterministicSpec {
    /// The subscribers' prefix, e.g. `100.64.0.0/24`.
    pub inside: Ipv4Prefix,
    /// The external prefix the inside prefix maps onto, e.g. `198.51.100.0/28`; every address of
    /// it must be in the pool.
    pub outside: Ipv4Prefix,
    /// Ports per subscriber; by default as many as fit:
    /// `floor(64512 / ceil(inside hosts / outside addresses))`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports_per_subscriber: Option<u16>,
    /// Port blocks on the pool addresses outside `outside`, for subscribers whose range is full.
    /// These (and only these) are logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<PortBlockSpec>,
}

impl DeterministicSpec {
    /// Subscribers per outside address: `ceil(2^(32 - inside.len) / 2^(32 - outside.len))`.
    pub fn subscribers_per_address(&self) -> u64 {
        let hosts = self.inside.size();
        let addrs = self.outside.size();
        hosts.div_ceil(addrs)
    }

    /// The ports each subscriber gets: the configured size or
    /// `floor(64512 / subscribers_per_address)`; zero when the prefixes do not fit.
    pub fn ports_per_subscriber(&self) -> u64 {
        let most = u64::from(NON_WELL_KNOWN_PORTS) / self.subscribers_per_address().max(1);
        self.ports_per_subscriber.map_or(most, u64::from)
    }
}

fn out_of_range(setting: &'static str, why: String) -> ConfigError {
    ConfigError::OutOfRange { setting, why }
}

impl PortBlockSpec {
    /// Checks the sizes; `keys` names the block-size and max-blocks settings in errors.
    fn check(&self, keys: [&'static str; 2]) -> Result<(), ConfigError> {
        if !(2..=NON_WELL_KNOWN_PORTS).contains(&u32::from(self.block_size)) {
            return Err(out_of_range(
                keys[0],
                format!(
                    "{} is not in 2..=64512 (blocks are carved from ports 1024-65535)",
                    self.block_size
                ),
            ));
        }
        let per_address = NON_WELL_KNOWN_PORTS / u32::from(self.block_size);
        let max = u32::from(self.max_blocks_per_subscriber);
        if max == 0 || max > per_address {
            return Err(out_of_range(
                keys[1],
                format!(
                    "{max} is not in 1..={per_address}: a subscriber's blocks share one address \
                     (RFC 6888 REQ-2), which has {per_address} blocks of {}",
                    self.block_size
                ),
            ));
        }
        Ok(())
    }
}

impl Allocation {
    /// Checks the parameters against the pool.
    pub(crate) fn check(&self, pool: &[Ipv4Addr]) -> Result<(), ConfigError> {
        match self {
            Allocation::Dynamic => Ok(()),
            Allocation::PortBlock(b) => b.check([
                "allocation.block-size",
                "allocation.max-blocks-per-subscriber",
            ]),
            Allocation::Deterministic(d) => {
                let spa = d.subscribers_per_address();
                if spa > u64::from(NON_WELL_KNOWN_PORTS) {
                    return Err(out_of_range(
                        "allocation.outside",
                        format!(
                            "{} inside addresses on {} outside addresses leave no port per \
                             subscriber (RFC 7422)",
                            d.inside.size(),
                            d.outside.size()
                        ),
                    ));
                }
                let most = u64::from(NON_WELL_KNOWN_PORTS) / spa;
                if let Some(p) = d.ports_per_subscriber
                    && (p == 0 || u64::from(p) > most)
                {
                    return Err(out_of_range(
                        "allocation.ports-per-subscriber",
                        format!(
                            "{p} is not in 1..={most}: {spa} subscribers share each outside \
                             address's 64512 ports 1024-65535"
                        ),
                    ));
                }
                if d.outside.size() > pool.len() as u64 {
                    return Err(out_of_range(
                        "allocation.outside",
                        format!(
                            "{} has {} addresses, more than the pool's {}; all must be in the pool",
                            d.outside,
                            d.outside.size(),
                            pool.len()
                        ),
                    ));
                }
                let in_pool: HashSet<Ipv4Addr> = pool.iter().copied().collect();
                for off in 0..d.outside.size() {
                    let a = d.outside.nth(u32::try_from(off).unwrap_or(u32::MAX));
                    if let Some(a) = a
                        && !in_pool.contains(&a)
                    {
                        return Err(out_of_range(
                            "allocation.outside",
                            format!("{a} is in {} but not in the pool", d.outside),
                        ));
                    }
                }
                let extra = pool.iter().find(|a| !d.outside.contains(**a));
                match (&d.overflow, extra) {
                    (Some(o), Some(_)) => o.check([
                        "allocation.overflow.block-size",
                        "allocation.overflow.max-blocks-per-subscriber",
                    ]),
                    (Some(_), None) => Err(out_of_range(
                        "allocation.overflow",
                        "needs pool addresses outside the outside prefix".into(),
                    )),
                    (None, Some(a)) => Err(out_of_range(
                        "pool",
                        format!(
                            "{a} is outside {} and there is no overflow to use it",
                            d.outside
                        ),
                    )),
                    (None, None) => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn pool(n: u32) -> Vec<Ipv4Addr> {
        (0..n)
            .map(|i| Ipv4Addr::from_bits(0xC633_6400 + i))
            .collect()
    }

    fn with(pool: Vec<Ipv4Addr>, allocation: Allocation) -> Result<(), ConfigError> {
        let mut c = Config::new(pool, Ipv4Addr::new(100, 64, 255, 1));
        c.allocation = allocation;
        c.validate().map(|_| ())
    }

    fn setting(r: Result<(), ConfigError>) -> &'static str {
        match r {
            Err(ConfigError::OutOfRange { setting, .. }) => setting,
            other => panic!("{other:?}"),
        }
    }

    fn blocks(block_size: u16, max_blocks_per_subscriber: u16) -> PortBlockSpec {
        PortBlockSpec {
            block_size,
            max_blocks_per_subscriber,
        }
    }

    fn det(inside: &str, outside: &str) -> DeterministicSpec {
        DeterministicSpec {
            inside: inside.parse().expect("prefix"),
            outside: outside.parse().expect("prefix"),
            ports_per_subscriber: None,
            overflow: None,
        }
    }

    #[test]
    fn port_block_sizes_are_checked() {
        assert_eq!(with(pool(1), Allocation::PortBlock(blocks(512, 4))), Ok(()));
        assert_eq!(
            with(pool(1), Allocation::PortBlock(blocks(64512, 1))),
            Ok(())
        );
        assert_eq!(
            setting(with(pool(1), Allocation::PortBlock(blocks(1, 4)))),
            "allocation.block-size"
        );
        assert_eq!(
            setting(with(pool(1), Allocation::PortBlock(blocks(65000, 1)))),
            "allocation.block-size"
        );
        for max in [0, 127] {
            assert_eq!(
                setting(with(pool(1), Allocation::PortBlock(blocks(512, max)))),
                "allocation.max-blocks-per-subscriber"
            );
        }
        assert_eq!(Allocation::default(), Allocation::Dynamic);
    }

    #[test]
    fn rfc7422_deterministic_prefixes_must_fit_the_pool() {
        let d = det("100.64.0.0/24", "198.51.100.0/28");
        assert_eq!(
            (d.subscribers_per_address(), d.ports_per_subscriber()),
            (16, 4032)
        );
        assert_eq!(with(pool(16), Allocation::Deterministic(d)), Ok(()));
        // An outside address missing from the pool; a pool address with no use.
        assert_eq!(
            setting(with(pool(15), Allocation::Deterministic(d))),
            "allocation.outside"
        );
        assert_eq!(
            setting(with(pool(17), Allocation::Deterministic(d))),
            "pool"
        );
        // Overflow needs addresses of its own, and valid blocks.
        let mut o = d;
        o.overflow = Some(blocks(512, 2));
        assert_eq!(with(pool(17), Allocation::Deterministic(o)), Ok(()));
        assert_eq!(
            setting(with(pool(16), Allocation::Deterministic(o))),
            "allocation.overflow"
        );
        o.overflow = Some(blocks(512, 0));
        assert_eq!(
            setting(with(pool(17), Allocation::Deterministic(o))),
            "allocation.overflow.max-blocks-per-subscriber"
        );
        // Sizes.
        let mut p = d;
        p.ports_per_subscriber = Some(4033);
        assert_eq!(
            setting(with(pool(16), Allocation::Deterministic(p))),
            "allocation.ports-per-subscriber"
        );
        p.ports_per_subscriber = Some(1000);
        assert_eq!(with(pool(16), Allocation::Deterministic(p)), Ok(()));
        let big = det("10.0.0.0/8", "198.51.100.0/32");
        assert_eq!(
            setting(with(pool(1), Allocation::Deterministic(big))),
            "allocation.outside"
        );
    }
}
