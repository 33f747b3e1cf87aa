//! The engine's own notion of time.
//!
//! The core never reads a clock: the driver passes an [`Instant`] into every call. An instant is a
//! count of milliseconds since an origin the driver picks (process start, say); only differences
//! between instants matter. Sessions keep their timestamps as whole seconds ([`Instant::as_secs`])
//! so that a session record stays small; every RFC timer is specified in seconds anyway.

use core::ops::{Add, Sub};
use core::time::Duration;

/// A point in time, in milliseconds since a driver-chosen origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant {
    millis: u64,
}

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant { millis: 0 };

    /// An instant `millis` milliseconds after the origin.
    pub const fn from_millis(millis: u64) -> Self {
        Instant { millis }
    }

    /// An instant `secs` seconds after the origin.
    pub const fn from_secs(secs: u64) -> Self {
        Instant {
            millis: secs.saturating_mul(1000),
        }
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// Whole seconds since the origin, saturated to `u32` (136 years).
    pub const fn as_secs(self) -> u32 {
        let secs = self.millis / 1000;
        if secs > u32::MAX as u64 {
            u32::MAX
        } else {
            secs as u32
        }
    }

    /// The time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.millis.saturating_sub(earlier.millis))
    }
}

impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, rhs: Duration) -> Instant {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_add(ms),
        }
    }
}

impl Sub<Duration> for Instant {
    type Output = Instant;
    fn sub(self, rhs: Duration) -> Instant {
        let ms = u64::try_from(rhs.as_millis()).unwrap_or(u64::MAX);
        Instant {
            millis: self.millis.saturating_sub(ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Instant::from_secs(5);
        assert_eq!((t - Duration::from_secs(10)), Instant::ZERO);
        assert_eq!(
            Instant::from_millis(u64::MAX) + Duration::from_secs(1),
            Instant::from_millis(u64::MAX)
        );
        assert_eq!(Instant::from_millis(u64::MAX).as_secs(), u32::MAX);
        assert_eq!(Instant::from_millis(2999).as_secs(), 2);
        assert_eq!(
            Instant::from_secs(3).saturating_since(Instant::from_secs(1)),
            Duration::from_secs(2)
        );
    }
}
