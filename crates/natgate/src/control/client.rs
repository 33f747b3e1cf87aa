//! The control socket's client: one connection, requests answered in order.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::ControlError;
use super::protocol::{self, ReplyError, Request, Response};

/// The longest reply line the client reads: a full session table is large, but not unbounded.
const MAX_REPLY_LINE: u64 = 1 << 30;

/// Why a request got no answer from the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket: the daemon is not running (or runs with another socket).
    #[error(
        "cannot connect to {path}: no natgate daemon is listening there (is it running? is --socket right?): {source}"
    )]
    NotRunning {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The socket exists but we may not use it.
    #[error(
        "cannot connect to {path}: permission denied; the socket is owner-only, run as the daemon's user (root)"
    )]
    PermissionDenied {
        /// The socket.
        path: PathBuf,
    },
    /// Connecting failed otherwise.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Sending or receiving failed, or the daemon closed the connection.
    #[error("control connection: {0}")]
    Io(#[from] io::Error),
    /// The daemon's reply could not be read.
    #[error(transparent)]
    Reply(#[from] ReplyError),
    /// The reply answered another request.
    #[error("reply id {got:?} does not match request id {want}")]
    IdMismatch {
        /// The request's id.
        want: u64,
        /// The reply's id.
        got: Option<u64>,
    },
    /// The daemon answered with an error.
    #[error(transparent)]
    Daemon(#[from] ControlError),
}

impl ClientError {
    /// Whether the daemon could not be reached at all (as opposed to answering badly).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ClientError::NotRunning { .. }
                | ClientError::PermissionDenied { .. }
                | ClientError::Connect { .. }
        )
    }
}

/// A connection to the daemon's control socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`, with a 30 s timeout for each reply.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NotRunning {
                path: path.into(),
                source,
            },
            io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path: path.into() },
            _ => ClientError::Connect {
                path: path.into(),
                source,
            },
        })?;
        let client = Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        };
        client.set_timeout(Some(Duration::from_secs(30)))?;
        Ok(client)
    }

    /// How long to wait for a reply (`None`: forever).
    pub fn set_timeout(&self, t: Option<Duration>) -> Result<(), ClientError> {
        self.writer.set_read_timeout(t)?;
        self.writer.set_write_timeout(t)?;
        Ok(())
    }

    /// Sends `req` and waits for its answer. A daemon's error reply is
    /// [`ClientError::Daemon`].
    pub fn request(&mut self, req: &Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = protocol::encode_request(id, req).map_err(ReplyError::Malformed)?;
        let sent = writeln!(self.writer, "{line}").and_then(|()| self.writer.flush());
        // Even if sending failed, the server may have said why it closed (e.g. too many
        // connections) before we wrote: that reply explains more than a broken pipe.
        let mut buf = Vec::new();
        let got = (&mut self.reader)
            .take(MAX_REPLY_LINE)
            .read_until(b'\n', &mut buf);
        if buf.last() != Some(&b'\n') {
            sent?;
            got?;
            return Err(ClientError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection without a complete reply",
            )));
        }
        let (got, answer) = protocol::decode_reply(&buf, req.command())?;
        // An id-less reply is an error the server could not tie to a request (e.g. too large).
        if got.is_some() && got != Some(id) {
            return Err(ClientError::IdMismatch { want: id, got });
        }
        Ok(answer?)
    }
}
