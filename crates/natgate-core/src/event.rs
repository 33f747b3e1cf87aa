//! Events the engine queues for the driver to drain with
//! [`Engine::poll_event`](crate::Engine::poll_event): the raw material of translation logs.

use crate::endpoint::{Endpoint, Protocol};
use crate::time::Instant;

/// Something that happened to the translation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A mapping (internal endpoint -> external endpoint) was created.
    MappingCreated {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The endpoint it appears as outside.
        external: Endpoint,
    },
    /// A mapping was deleted (its last session ended).
    MappingDeleted {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The endpoint it appeared as outside.
        external: Endpoint,
    },
    /// A session (one remote endpoint through a mapping) was created.
    SessionCreated {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The external endpoint.
        external: Endpoint,
        /// The remote endpoint.
        remote: Endpoint,
    },
    /// A session was deleted (timed out or flushed).
    SessionDeleted {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// The external endpoint.
        external: Endpoint,
        /// The remote endpoint.
        remote: Endpoint,
    },
    /// A mapping could not be made; the packet was dropped (RFC 6888 REQ-11: tell management).
    MappingFailed {
        /// When.
        at: Instant,
        /// Protocol.
        proto: Protocol,
        /// The subscriber's endpoint.
        internal: Endpoint,
        /// Whom it tried to reach.
        remote: Endpoint,
    },
}
