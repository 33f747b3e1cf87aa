//! NAT behaviour discovery (RFC 5780 section 4, and more): STUN Binding requests from fresh
//! UDP sockets of this host to a server with two addresses and two ports, and from what comes
//! back (and what does not) the mapping, filtering, hairpinning, port and pooling behaviour of
//! the NAT(s) in front of the host, and optionally the mapping lifetime.
//!
//! Every test uses fresh sockets, so that one test's mappings and filter state do not open
//! the way for the next; every wait is bounded by the per-request timeout and try count.

pub mod report;

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use natgate_core::rng::Rng;
use natgate_core::stun::wire::{Attribute, Class, Message, TransactionId};

use report::{Lifetime, Report, Sample};

/// Most datagrams read while waiting for one answer.
const MAX_READS: usize = 1000;
/// Fresh mappings made back to back for the port delta.
const DELTA_SOCKETS: usize = 4;
/// Most sockets the lifetime measurement keeps open.
const MAX_LIFETIME_CHECKS: u64 = 64;
/// What a hairpinned probe carries, so it is told apart from stray STUN.
const HAIRPIN_PAYLOAD: &[u8] = b"natgate-hairpin";

/// How to probe.
#[derive(Debug, Clone, Copy)]
pub struct ProbeOptions {
    /// The STUN server's primary address; its other one comes from OTHER-ADDRESS.
    pub server: SocketAddr,
    /// How long to wait for each answer before sending again.
    pub timeout: Duration,
    /// How often to send a request (or a hairpin probe) before concluding nothing comes.
    pub tries: u32,
    /// Measure the mapping lifetime, with this bound and step.
    pub lifetime: Option<LifetimeOptions>,
}

/// Bounds of the lifetime measurement: one fresh mapping is checked after each multiple of
/// `step` idle, up to `max` (at most [`MAX_LIFETIME_CHECKS`] checks; the step grows if needed).
#[derive(Debug, Clone, Copy)]
pub struct LifetimeOptions {
    /// The longest idle time checked.
    pub max: Duration,
    /// The time between checks.
    pub step: Duration,
}

/// Why discovery could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A socket call failed.
    #[error("{what}: {source}")]
    Io {
        /// The step that failed.
        what: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The server never answered a plain Binding request.
    #[error("no answer from the STUN server at {0}")]
    NoAnswer(SocketAddr),
    /// The server's answer lacks what discovery needs.
    #[error("the STUN server at {server} sent no {what}")]
    Incomplete {
        /// The server.
        server: SocketAddr,
        /// The missing attribute.
        what: &'static str,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> DiscoveryError {
    move |source| DiscoveryError::Io { what, source }
}

/// What a success response said.
#[derive(Debug, Clone, Copy)]
struct Answer {
    mapped: SocketAddr,
    other: Option<SocketAddr>,
}

/// A fresh UDP socket of this host and the requests it sends.
struct Client {
    sock: UdpSocket,
    local: SocketAddr,
}

impl Client {
    /// A socket on `host`, the address this host reaches the server from, so that its local
    /// address is the one a NAT sees (and a hairpinned packet with an internal source is
    /// recognised).
    fn new(host: IpAddr) -> Result<Client, DiscoveryError> {
        let sock = UdpSocket::bind((host, 0)).map_err(io_err("binding a socket"))?;
        let local = sock
            .local_addr()
            .map_err(io_err("reading the local address"))?;
        Ok(Client { sock, local })
    }

    /// Sends one Binding request (`attributes`) to `to`, `opts.tries` times at most, and
    /// returns the success response to it, or `None` if none came.
    fn binding(
        &self,
        rng: &mut Rng,
        opts: &ProbeOptions,
        to: SocketAddr,
        attributes: Vec<Attribute>,
    ) -> Result<Option<Answer>, DiscoveryError> {
        let transaction = new_transaction(rng);
        let bytes = Message::binding_request(transaction, attributes)
            .encode()
            .map_err(|e| io_err("writing a request")(io::Error::other(e)))?;
        for _ in 0..opts.tries.max(1) {
            self.sock
                .send_to(&bytes, to)
                .map_err(io_err("sending a request"))?;
            if let Some(a) = self.answer(transaction, opts.timeout)? {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Waits up to `timeout` for the success response to `transaction`.
    fn answer(
        &self,
        transaction: TransactionId,
        timeout: Duration,
    ) -> Result<Option<Answer>, DiscoveryError> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 1500];
        for _ in 0..MAX_READS {
            let Some((n, _)) = recv_until(&self.sock, &mut buf, deadline)? else {
                return Ok(None);
            };
            let Ok(m) = Message::parse(&buf[..n]) else {
                continue;
            };
            if m.transaction != transaction || m.class != Class::Success {
                continue;
            }
            let Some(mapped) = m.mapped_address() else {
                continue;
            };
            let other = m.find(|a| match a {
                Attribute::OtherAddress(x) => Some(*x),
                _ => None,
            });
            return Ok(Some(Answer { mapped, other }));
        }
        Ok(None)
    }
}

/// A random transaction id (RFC 5389 section 6: uniformly random, so that answers to earlier
/// requests are told apart).
fn new_transaction(rng: &mut Rng) -> TransactionId {
    let mut t = [0u8; 12];
    for chunk in t.chunks_mut(8) {
        let r = rng.next_u64().to_be_bytes();
        chunk.copy_from_slice(&r[..chunk.len()]);
    }
    TransactionId(t)
}

/// Receives one datagram before `deadline`; `None` when it passes.
fn recv_until(
    sock: &UdpSocket,
    buf: &mut [u8],
    deadline: Instant,
) -> Result<Option<(usize, SocketAddr)>, DiscoveryError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(None);
    }
    sock.set_read_timeout(Some(left))
        .map_err(io_err("setting a read timeout"))?;
    match sock.recv_from(buf) {
        Ok(r) => Ok(Some(r)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            Ok(None)
        }
        // An ICMP error queued for the socket (a port unreachable from the NAT itself, say):
        // nothing arrived.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
        Err(e) => Err(io_err("receiving")(e)),
    }
}

/// The address this host sends to `server` from (the routing table's choice).
fn source_address(server: SocketAddr) -> Result<IpAddr, DiscoveryError> {
    let probe = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io_err("binding a socket"))?;
    probe
        .connect(server)
        .map_err(io_err("finding the route to the server"))?;
    Ok(probe
        .local_addr()
        .map_err(io_err("reading the local address"))?
        .ip())
}

/// Runs every test against `opts.server` from the current network namespace.
pub fn discover(opts: &ProbeOptions) -> Result<Report, DiscoveryError> {
    let seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    let mut rng = Rng::new(seed);
    let rng = &mut rng;
    let primary = opts.server;
    let host = source_address(primary)?;
    let mut samples = Vec::new();

    // Mapping, RFC 5780 section 4.3: one socket to (A1, P1), (A2, P1), (A2, P2).
    let s = Client::new(host)?;
    let t1 = s
        .binding(rng, opts, primary, vec![])?
        .ok_or(DiscoveryError::NoAnswer(primary))?;
    let other = t1.other.ok_or(DiscoveryError::Incomplete {
        server: primary,
        what: "OTHER-ADDRESS",
    })?;
    samples.push(Sample {
        local: s.local,
        mapped: t1.mapped,
    });
    let alt_addr_primary_port = SocketAddr::new(other.ip(), primary.port());
    let t2 = s
        .binding(rng, opts, alt_addr_primary_port, vec![])?
        .ok_or(DiscoveryError::NoAnswer(alt_addr_primary_port))?;
    let t3 = s
        .binding(rng, opts, other, vec![])?
        .ok_or(DiscoveryError::NoAnswer(other))?;
    let mapping = report::mapping(t1.mapped, t2.mapped, t3.mapped);

    // Filtering, RFC 5780 section 4.4: a fresh socket asks (A1, P1) to answer from the other
    // address and port, then from the other port only.
    let f = Client::new(host)?;
    let change = |ip, port| vec![Attribute::ChangeRequest { ip, port }];
    let other_address_came = f.binding(rng, opts, primary, change(true, true))?.is_some();
    let other_port_came = other_address_came
        || f.binding(rng, opts, primary, change(false, true))?
            .is_some();
    let filtering = report::filtering(other_address_came, other_port_came);

    // Hairpinning, RFC 5780 section 4.5: two fresh sockets learn their mapped addresses and
    // send to each other's; sending both ways lets the probe through any filtering.
    let h1 = Client::new(host)?;
    let h2 = Client::new(host)?;
    let m1 = h1
        .binding(rng, opts, primary, vec![])?
        .ok_or(DiscoveryError::NoAnswer(primary))?
        .mapped;
    let m2 = h2
        .binding(rng, opts, primary, vec![])?
        .ok_or(DiscoveryError::NoAnswer(primary))?
        .mapped;
    samples.push(Sample {
        local: h1.local,
        mapped: m1,
    });
    samples.push(Sample {
        local: h2.local,
        mapped: m2,
    });
    let seen = hairpin(&h1, &h2, m1, m2, opts)?;
    let hairpinning = report::hairpinning(seen, h1.local, mapping, filtering);

    // Port delta: fresh mappings back to back.
    let mut delta_ports = Vec::new();
    for _ in 0..DELTA_SOCKETS {
        let c = Client::new(host)?;
        let m = c
            .binding(rng, opts, primary, vec![])?
            .ok_or(DiscoveryError::NoAnswer(primary))?
            .mapped;
        delta_ports.push(m.port());
        samples.push(Sample {
            local: c.local,
            mapped: m,
        });
    }

    let lifetime = match opts.lifetime {
        Some(l) => Some(measure_lifetime(rng, host, opts, l)?),
        None => None,
    };

    Ok(Report {
        server: primary,
        other,
        mapping,
        filtering,
        hairpinning,
        port_preservation: report::preservation(&samples),
        port_parity: report::parity(&samples),
        port_delta: report::port_delta(&delta_ports),
        pooling: report::pooling(&samples),
        lifetime,
        samples,
    })
}

/// Sends [`HAIRPIN_PAYLOAD`] from `h1` to `m2` and from `h2` to `m1`, `opts.tries` rounds at
/// most; the source the first to arrive came from, as if `h1`'s had arrived at `h2` (a
/// packet from `h2` with `h2`'s internal source stands for `h1`'s internal address).
fn hairpin(
    h1: &Client,
    h2: &Client,
    m1: SocketAddr,
    m2: SocketAddr,
    opts: &ProbeOptions,
) -> Result<Option<SocketAddr>, DiscoveryError> {
    let mut buf = [0u8; 1500];
    for _ in 0..opts.tries.max(1) {
        // A send may fail with what a NAT without hairpinning caused (an ICMP error queued
        // from an earlier round); the probe goes on.
        let _ = h1.sock.send_to(HAIRPIN_PAYLOAD, m2);
        let _ = h2.sock.send_to(HAIRPIN_PAYLOAD, m1);
        for (receiver, sender) in [(h2, h1), (h1, h2)] {
            let deadline = Instant::now() + opts.timeout / 2;
            for _ in 0..MAX_READS {
                let Some((n, from)) = recv_until(&receiver.sock, &mut buf, deadline)? else {
                    break;
                };
                if &buf[..n] == HAIRPIN_PAYLOAD {
                    return Ok(Some(if from == sender.local { h1.local } else { from }));
                }
            }
        }
    }
    Ok(None)
}

/// RFC 5780 section 4.6: fresh mappings, all made now, each checked once after its own idle
/// time by an answer the server sends to it on request of another socket (RESPONSE-PORT), so
/// that no check refreshes the mapping it checks before its time.
fn measure_lifetime(
    rng: &mut Rng,
    host: IpAddr,
    opts: &ProbeOptions,
    l: LifetimeOptions,
) -> Result<Lifetime, DiscoveryError> {
    let max = l.max.as_secs().max(1);
    let step = l
        .step
        .as_secs()
        .max(1)
        .max(max.div_ceil(MAX_LIFETIME_CHECKS));
    let start = Instant::now();
    let mut watched = Vec::new();
    for k in 1..=max / step {
        let c = Client::new(host)?;
        let Some(a) = c.binding(rng, opts, opts.server, vec![])? else {
            continue;
        };
        watched.push((k * step, c, a.mapped));
    }
    let asker = Client::new(host)?;
    let mut checks = Vec::new();
    let mut buf = [0u8; 1500];
    for (idle, c, mapped) in &watched {
        let due = start + Duration::from_secs(*idle);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        // The answer goes to the asker's mapped address with the watched mapping's port: the
        // watched socket's while its mapping lives (the same external address under paired
        // pooling). The asker is only the messenger; its own mapping does not matter.
        let request = Message::binding_request(
            new_transaction(rng),
            vec![Attribute::ResponsePort(mapped.port())],
        )
        .encode()
        .map_err(|e| io_err("writing a request")(io::Error::other(e)))?;
        let mut alive = false;
        for _ in 0..opts.tries.max(1) {
            asker
                .sock
                .send_to(&request, opts.server)
                .map_err(io_err("sending a request"))?;
            let deadline = Instant::now() + opts.timeout;
            for _ in 0..MAX_READS {
                let Some((n, _)) = recv_until(&c.sock, &mut buf, deadline)? else {
                    break;
                };
                if Message::parse(&buf[..n]).is_ok_and(|m| m.class == Class::Success) {
                    alive = true;
                    break;
                }
            }
            if alive {
                break;
            }
        }
        checks.push((*idle, alive));
        if !alive {
            break;
        }
    }
    Ok(report::lifetime(&checks))
}
