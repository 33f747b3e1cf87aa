//! STUN for NAT behaviour discovery: the lab's probe asks a STUN server on the far side of a
//! NAT what its packets look like there (RFC 5389 Binding, RFC 5780 CHANGE-REQUEST,
//! OTHER-ADDRESS, RESPONSE-ORIGIN, RESPONSE-PORT).
//!
//! [`wire`] parses and writes messages; [`StunServer`] decides a request's answer and the
//! socket it leaves from. Both are sans-IO: the driver owns the sockets.

mod server;
pub mod wire;

pub use server::{Reply, ServerAddresses, SocketId, StunServer, Which};
