//! The control plane's socket: a Unix stream socket speaking newline-delimited JSON
//! (`docs/control-protocol.md`), the server the daemon runs, the client `natgate ctl` uses, and
//! the CLI itself.
//!
//! The daemon implements [`ControlHandler`] and hands it to [`Server::bind`]; the server owns the
//! socket file, reads one request per line, and writes one reply per line. Everything about the
//! wire (framing, size limits, malformed input) is handled here, so the handler only ever sees a
//! well-formed [`Request`].
//!
//! ```no_run
//! use natgate::control::{Client, ControlError, ControlHandler, Request, Response, Server};
//!
//! struct Daemon;
//! impl ControlHandler for Daemon {
//!     fn handle(&self, req: Request) -> Result<Response, ControlError> {
//!         Err(ControlError::Unavailable(format!("{} is not implemented", req.command())))
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::bind("/run/natgate.sock", Daemon)?;
//! let mut client = Client::connect("/run/natgate.sock")?;
//! let answer = client.request(&Request::Status)?;
//! # let _ = answer;
//! server.shutdown();
//! # Ok(())
//! # }
//! ```

pub mod cli;
mod client;
pub mod protocol;
mod render;
mod server;
pub mod static_nat;

pub use client::{Client, ClientError};
pub use protocol::{Command, Request, Response};
pub use server::{Server, ServerError, ServerOptions};

pub use crate::config::DEFAULT_SOCKET;

/// What the daemon does with a request. Called from the connection's thread; several
/// connections may call it at once.
pub trait ControlHandler: Send + Sync + 'static {
    /// Answers `req`. The response's variant must match the request's command (a mismatch is
    /// reported to the client as an internal error). A request that fails must change nothing.
    fn handle(&self, req: Request) -> Result<Response, ControlError>;
}

/// Why a request was not answered. Each variant has a stable code on the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The request line is not a valid request (`bad_request`).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The `cmd` is not one the daemon knows (`unknown_command`).
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The request line is longer than the limit (`too_large`).
    #[error("request longer than {0} bytes")]
    TooLarge(usize),
    /// The daemon refused the change, e.g. a reload with an invalid config; nothing changed
    /// (`rejected`).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The daemon cannot answer now (busy, shutting down, a worker not answering)
    /// (`unavailable`).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Something went wrong inside the daemon (`internal`).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ControlError {
    /// The code on the wire.
    pub const fn code(&self) -> &'static str {
        match self {
            ControlError::BadRequest(_) => "bad_request",
            ControlError::UnknownCommand(_) => "unknown_command",
            ControlError::TooLarge(_) => "too_large",
            ControlError::Rejected(_) => "rejected",
            ControlError::Unavailable(_) => "unavailable",
            ControlError::Internal(_) => "internal",
        }
    }

    /// The message on the wire: the error without its code's prefix.
    pub fn message(&self) -> String {
        match self {
            ControlError::BadRequest(m)
            | ControlError::Rejected(m)
            | ControlError::Unavailable(m)
            | ControlError::Internal(m) => m.clone(),
            ControlError::UnknownCommand(c) => format!("unknown command {c:?}"),
            ControlError::TooLarge(n) => format!("request longer than {n} bytes"),
        }
    }

    /// The error a reply with `code` and `message` stands for. An unknown code (from a newer
    /// daemon) is kept as an internal error that names it.
    pub fn from_code(code: &str, message: String) -> Self {
        match code {
            "bad_request" => ControlError::BadRequest(message),
            "unknown_command" => ControlError::UnknownCommand(
                message
                    .strip_prefix("unknown command ")
                    .and_then(|q| serde_json::from_str(q).ok())
                    .unwrap_or(message),
            ),
            "too_large" => ControlError::TooLarge(
                message
                    .split_whitespace()
                    .find_map(|w| w.parse().ok())
                    .unwrap_or(protocol::MAX_REQUEST_LINE),
            ),
            "rejected" => ControlError::Rejected(message),
            "unavailable" => ControlError::Unavailable(message),
            "internal" => ControlError::Internal(message),
            other => ControlError::Internal(format!("{other}: {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_survives_the_wire() {
        let errors = [
            ControlError::BadRequest("x".into()),
            ControlError::UnknownCommand("reboot".into()),
            ControlError::TooLarge(65536),
            ControlError::Rejected("pool: empty".into()),
            ControlError::Unavailable("shutting down".into()),
            ControlError::Internal("oops".into()),
        ];
        for e in errors {
            assert_eq!(ControlError::from_code(e.code(), e.message()), e);
        }
        assert_eq!(
            ControlError::from_code("teapot", "short".into()),
            ControlError::Internal("teapot: short".into())
        );
    }
}
