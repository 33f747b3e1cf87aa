//! The sockets of the lab's STUN server: one UDP socket per (address, port) pair of
//! [`ServerAddresses`], each datagram handed to the sans-IO [`StunServer`] and its answer sent
//! from the socket it names.

use std::io;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use natgate_core::stun::{ServerAddresses, SocketId, StunServer};
use rustix::event::{PollFd, PollFlags, Timespec, poll};

/// Longest wait in `poll`, so a deadline is noticed within this time.
const MAX_WAIT: Duration = Duration::from_millis(200);

/// The server's sockets and its logic.
pub struct StunService {
    server: StunServer,
    sockets: Vec<(SocketId, UdpSocket)>,
}

/// What the server did, for its exit report and for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StunStats {
    /// Datagrams read.
    pub received: u64,
    /// Answers sent.
    pub answered: u64,
}

impl StunService {
    /// Binds every socket of `addresses` (in the current network namespace).
    pub fn bind(addresses: ServerAddresses) -> io::Result<Self> {
        let sockets = addresses
            .sockets()
            .into_iter()
            .map(|(id, a)| {
                let s = UdpSocket::bind(a)?;
                s.set_nonblocking(true)?;
                Ok((id, s))
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(StunService {
            server: StunServer::new(addresses, concat!("natgate ", env!("CARGO_PKG_VERSION"))),
            sockets,
        })
    }

    /// Answers requests until `deadline` (forever without one) or until `stop` says so.
    pub fn serve(
        &self,
        deadline: Option<Instant>,
        stop: &dyn Fn() -> bool,
    ) -> io::Result<StunStats> {
        let mut stats = StunStats::default();
        let mut buf = [0u8; natgate_core::stun::wire::MAX_MESSAGE];
        while !stop() && deadline.is_none_or(|d| Instant::now() < d) {
            let wait = deadline
                .map_or(MAX_WAIT, |d| d.saturating_duration_since(Instant::now()))
                .min(MAX_WAIT);
            let mut fds: Vec<PollFd<'_>> = self
                .sockets
                .iter()
                .map(|(_, s)| PollFd::new(s, PollFlags::IN))
                .collect();
            let timeout = Timespec::try_from(wait).map_err(io::Error::other)?;
            match poll(&mut fds, Some(&timeout)) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
            for ((on, sock), ready) in self.sockets.iter().zip(ready) {
                if !ready {
                    continue;
                }
                // Drain what is queued, a bounded number at a time.
                for _ in 0..64 {
                    let (n, client) = match sock.recv_from(&mut buf) {
                        Ok(r) => r,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) => return Err(e),
                    };
                    stats.received += 1;
                    let Some(reply) = self.server.handle(*on, client, &buf[..n]) else {
                        continue;
                    };
                    let from = self.sockets.iter().find(|(id, _)| *id == reply.from);
                    if let Some((_, out)) = from
                        && out.send_to(&reply.bytes, reply.to).is_ok()
                    {
                        stats.answered += 1;
                    }
                }
            }
        }
        Ok(stats)
    }
}
