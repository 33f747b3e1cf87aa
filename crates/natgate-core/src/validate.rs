//! Validation: a config is valid when each setting is, and when the engine built from it fits
//! the memory it is allowed (`limits.max-memory`, RFC 6888 REQ-4). The second check needs the
//! engine's memory model, so validation sits above both the config's types and the engine: the
//! engine takes a [`ValidConfig`] without depending on how one is made.

use crate::config::{Config, ConfigError, MAX_TABLE_ENTRIES, ValidConfig};
use crate::engine::MemoryModel;

impl Config {
    /// Checks every rule; returns the first violation.
    pub fn validate(self) -> Result<ValidConfig, ConfigError> {
        if self.pool.is_empty() {
            return Err(ConfigError::EmptyPool);
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.pool {
            if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
                return Err(ConfigError::BadPoolAddress(*a));
            }
            if !seen.insert(*a) {
                return Err(ConfigError::DuplicatePoolAddress(*a));
            }
        }
        if seen.contains(&self.inside_address) {
            return Err(ConfigError::InsideAddressInPool(self.inside_address));
        }
        self.check_behavior()?;
        self.check_limits()?;
        self.allocation.check(&self.pool)?;
        self.check_memory()?;
        self.check_virtual_servers()?;
        if let Some(d) = &self.ds_lite {
            d.check()?;
            if self.behavior.port_overlapping {
                // A shared port goes back to the allocator in the name of the inside host it
                // was allocated for, which a softwire's hosts cannot be named by.
                return Err(ConfigError::OutOfRange {
                    setting: "port-overlapping",
                    why: "not with [ds-lite]: a softwire's ports are not shared".into(),
                });
            }
        }
        Ok(ValidConfig::checked(self))
    }

    /// Sets `max-sessions` to the most that `max-memory` has room for, for a config file that
    /// gives a memory limit and leaves `max-sessions` out; `max-mappings` is lowered to it if
    /// above. Returns the value chosen. The estimate is the engine's own accounting (see
    /// [`MemoryModel`]), so the engine built from the result fits. Fails when there is no
    /// memory limit, or when not even 8 sessions fit.
    pub fn fit_sessions_to_memory(&mut self) -> Result<u32, ConfigError> {
        let Some(limit) = self.limits.max_memory else {
            return Err(ConfigError::OutOfRange {
                setting: "max-sessions",
                why: "deriving it needs max-memory".into(),
            });
        };
        let model = self.memory_model(limit)?;
        let mappings = self.limits.max_mappings;
        let need = |n: u32| model.usage(n, mappings.min(n)).total();
        // The largest n (a multiple of 8, where the estimate is exact) whose need fits.
        let (mut lo, mut hi) = (0u32, MAX_TABLE_ENTRIES / 8);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if need(mid * 8) <= limit {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo == 0 {
            return Err(ConfigError::MemoryLimit {
                need: need(8),
                limit,
                detail: model.usage(8, 8).to_string(),
            });
        }
        let n = lo * 8;
        self.limits.max_sessions = n;
        self.limits.max_mappings = mappings.min(n);
        Ok(n)
    }

    /// Refuses a config whose engine would take more than `max-memory` (RFC 6888 REQ-4: the
    /// operator bounds the state, and a bound the machine cannot hold is no bound).
    fn check_memory(&self) -> Result<(), ConfigError> {
        let Some(limit) = self.limits.max_memory else {
            return Ok(());
        };
        let model = self.memory_model(limit)?;
        let usage = model.usage(self.limits.max_sessions, self.limits.max_mappings);
        if usage.total() > limit {
            return Err(ConfigError::MemoryLimit {
                need: usage.total(),
                limit,
                detail: usage.to_string(),
            });
        }
        Ok(())
    }

    /// The memory model of this config, refusing first, without building anything, a config
    /// whose fixed parts alone exceed `limit`.
    fn memory_model(&self, limit: u64) -> Result<MemoryModel, ConfigError> {
        let floor = MemoryModel::floor(self);
        if floor > limit {
            return Err(ConfigError::MemoryLimit {
                need: floor,
                limit,
                detail: "at least: held fragments, transmit slots and the subscriber table \
                         alone, before sessions and mappings"
                    .into(),
            });
        }
        Ok(MemoryModel::of(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn cfg() -> Config {
        Config::new(
            vec![Ipv4Addr::new(198, 51, 100, 1)],
            Ipv4Addr::new(100, 64, 0, 1),
        )
    }

    #[test]
    fn rfc6888_req4_max_memory_refuses_with_the_computed_need() {
        let mut c = cfg();
        c.limits.max_sessions = 1 << 20;
        c.limits.max_mappings = 1 << 20;
        let need = MemoryModel::of(&c).usage(1 << 20, 1 << 20).total();
        c.limits.max_memory = Some(need);
        assert!(c.clone().validate().is_ok(), "exactly enough");
        c.limits.max_memory = Some(need - 1);
        let err = c.clone().validate().expect_err("one byte short");
        assert!(
            matches!(err, ConfigError::MemoryLimit { need: n, limit, .. } if n == need && limit == need - 1),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&need.to_string()) && msg.contains("sessions"),
            "{msg}"
        );
        // Absurd fixed parts are refused from a bound, before anything is reserved.
        c.limits.max_held_fragments = u32::MAX;
        c.limits.max_memory = Some(1 << 30);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::MemoryLimit { need, .. }) if need > 1 << 30
        ));
    }

    #[test]
    fn rfc6888_req4_max_sessions_derived_from_max_memory() {
        let mut c = cfg();
        assert!(c.fit_sessions_to_memory().is_err(), "needs max-memory");
        let limit = 64 << 20;
        c.limits.max_memory = Some(limit);
        let n = c.fit_sessions_to_memory().expect("fits");
        assert_eq!(c.limits.max_sessions, n);
        assert_eq!(c.limits.max_mappings, n, "mappings lowered with it");
        assert!(n.is_multiple_of(8) && n > 100_000, "{n}");
        let model = MemoryModel::of(&c);
        assert!(model.usage(n, n).total() <= limit);
        assert!(
            model.usage(n + 8, n + 8).total() > limit,
            "the most that fits"
        );
        // The engine built from it holds what the estimate says, within the limit.
        let v = c.validate().expect("valid");
        let e = crate::Engine::new(v, 1);
        assert!(e.memory_usage().total() <= limit);
        assert_eq!(e.memory_usage(), model.usage(n, n));
        // Too little for any table at all.
        let mut tiny = cfg();
        tiny.limits.max_memory = Some(1 << 20);
        assert!(matches!(
            tiny.fit_sessions_to_memory(),
            Err(ConfigError::MemoryLimit { .. })
        ));
    }
}
