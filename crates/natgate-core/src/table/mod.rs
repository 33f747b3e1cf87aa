//! Session and mapping tables.
//!
//! Everything here is allocated once, at its maximum size, when the engine is built: the packet
//! path never allocates and never rehashes. The building blocks are a keyed [`FlowHasher`], a
//! cache-line [`HashIndex`] that maps a hash to a slot number, a fixed-capacity [`Slab`] that holds
//! the records, and a lazy [`TimerWheel`] that finds idle records. [`NatTable`] (sessions and
//! their mappings, the engine's state), [`StaticSessionTable`] (sessions of static rules and
//! virtual servers) and [`AddressFilter`] combine them.

/// A vector of `n` values made by `f`, its memory reserved first so that running out of it is
/// an error rather than an abort (a table sized by a config the machine cannot hold).
pub(crate) fn try_vec<T>(
    n: usize,
    f: impl FnMut() -> T,
) -> Result<Vec<T>, std::collections::TryReserveError> {
    let mut v = Vec::new();
    v.try_reserve_exact(n)?;
    v.resize_with(n, f);
    Ok(v)
}

mod explicit;
mod index;
mod mapping;
mod nat;
mod session;
mod slab;
mod static_session;
mod wheel;

pub use crate::hash::FlowHasher;
pub use explicit::{Description, ExplicitMapping, ExplicitTable, MappingOrigin, RemotePeer};
pub use index::{HashIndex, IndexFull};
pub use mapping::{AddressFilter, Mapping, MappingId, PortUsers};
pub use nat::{MappingKeys, NatTable};
pub use session::{FlowKey, Session, SessionId, SoftwireId, SoftwireTag, TableFull};
pub use slab::Slab;
pub use static_session::{StaticOrigin, StaticSession, StaticSessionId, StaticSessionTable};
pub use wheel::TimerWheel;

/// Asks the CPU to start loading the cache line holding `p`, so that a later read does not stall.
/// A hint only: it never faults, and is a no-op on targets without a prefetch instruction.
#[inline(always)]
pub(crate) fn prefetch_read<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint that performs no architectural memory access; it cannot fault
    // on any address, so any pointer value (even dangling or out of bounds) is sound here.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
