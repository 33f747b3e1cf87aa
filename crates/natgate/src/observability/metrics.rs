//! Prometheus metrics: a snapshot of the gateway's counters and gauges, its text exposition
//! (format 0.0.4, written by the `prometheus-client` crate's encoder), and a tiny HTTP/1.0
//! server that serves it at `GET /metrics`.
//!
//! The daemon builds a [`MetricsSnapshot`] on each scrape (from every engine's counters, table
//! sizes and pool usage) through the closure it gives [`MetricsServer::bind`].

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use natgate_core::portmap::upnp;
use natgate_core::portmap::wire::{natpmp, pcp};
use natgate_core::portmap::{PortMapCounters, PortMapDrop};
use natgate_core::{Counters, DropReason, Protocol};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, MetricEncoder,
    NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::control::protocol::{PerProtocol, PoolRow, PortSetRowKind, StatsInfo};

/// Everything one scrape reports.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSnapshot {
    /// Traffic and state counters, summed over engines.
    pub stats: StatsInfo,
    /// Drops, indexed by `DropReason as usize`. Mapping failures are
    /// `drops[DropReason::MappingFailed as usize]`.
    pub drops: [u64; DropReason::COUNT],
    /// Live sessions per protocol.
    pub sessions: PerProtocol,
    /// Live mappings.
    pub mappings: u64,
    /// Use of each external address (as `ctl pools` shows it).
    pub pools: Vec<PoolRow>,
    /// The port-mapping servers' drops and answers.
    pub portmap: PortMapCounters,
}

// By hand: `Default` is derived for arrays of at most 32 elements, and there are more drop
// reasons than that.
impl Default for MetricsSnapshot {
    fn default() -> Self {
        MetricsSnapshot {
            stats: StatsInfo::default(),
            drops: [0; DropReason::COUNT],
            sessions: PerProtocol::default(),
            mappings: 0,
            pools: Vec::new(),
            portmap: PortMapCounters::default(),
        }
    }
}

impl MetricsSnapshot {
    /// The counters of every engine, summed. Table sizes and pools stay empty for the caller
    /// to fill in.
    pub fn from_counters<'a>(counters: impl IntoIterator<Item = &'a Counters>) -> Self {
        let mut s = MetricsSnapshot::default();
        for c in counters {
            s.stats.add(c);
            for (r, n) in c.drops_by_reason() {
                s.drops[r as usize] += n;
            }
        }
        s
    }

    /// The Prometheus text exposition (format 0.0.4), written by `prometheus-client`'s encoder.
    /// Every drop reason is listed, zero ones too, so that rates exist from the first scrape.
    /// It takes the snapshot because the encoder reads a registry, whose collectors own what
    /// they encode.
    pub fn render(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Exposition(self)));
        let mut out = String::new();
        // Only the writer can fail, and writing to a String does not.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

/// A snapshot as the encoder reads it: the registry built for a scrape holds only this
/// collector, which writes the snapshot's families.
#[derive(Debug)]
struct Exposition(MetricsSnapshot);

impl Collector for Exposition {
    fn encode(&self, encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let mut e = Families(encoder);
        let st = &s.stats;
        let directions = [("outbound", st.outbound), ("inbound", st.inbound)];
        let mut f = e.counter("natgate_packets_total", "Packets forwarded, by direction.")?;
        for (dir, t) in directions {
            f.sample(&[("direction", dir)], t.packets)?;
        }
        let mut f = e.counter(
            "natgate_bytes_total",
            "Bytes forwarded (IP total length), by direction.",
        )?;
        for (dir, t) in directions {
            f.sample(&[("direction", dir)], t.bytes)?;
        }
        let mut f = e.counter("natgate_drops_total", "Packets dropped, by reason.")?;
        for r in DropReason::ALL {
            f.sample(&[("reason", r.name())], s.drops[*r as usize])?;
        }
        let pm = &s.portmap;
        let mut f = e.counter(
            "natgate_portmap_dropped_total",
            "PCP, NAT-PMP and UPnP requests not answered, by reason.",
        )?;
        for (r, n) in PortMapDrop::ALL.iter().zip(pm.drops) {
            f.sample(&[("reason", r.name())], n)?;
        }
        let mut f = e.counter(
            "natgate_portmap_answers_total",
            "PCP, NAT-PMP and UPnP answers, by protocol and result code.",
        )?;
        for (c, n) in pcp::ResultCode::ALL.iter().zip(pm.pcp_results) {
            f.sample(&[("protocol", "pcp"), ("result", c.name())], n)?;
        }
        for (c, n) in natpmp::ResultCode::ALL.iter().zip(pm.natpmp_results) {
            f.sample(&[("protocol", "nat-pmp"), ("result", c.name())], n)?;
        }
        for (c, n) in upnp::Outcome::ALL.iter().zip(pm.upnp_results) {
            f.sample(&[("protocol", "upnp"), ("result", c.name())], n)?;
        }
        for (name, help, v) in [
            (
                "natgate_mapping_failures_total",
                "New mappings refused because no external port was free (RFC 6888 REQ-11).",
                s.drops[DropReason::MappingFailed as usize],
            ),
            (
                "natgate_hairpinned_packets_total",
                "Packets hairpinned back inside (also counted as outbound).",
                st.hairpinned_packets,
            ),
            (
                "natgate_icmp_generated_total",
                "ICMP errors the gateway generated.",
                st.icmp_generated,
            ),
            (
                "natgate_tcp_resets_generated_total",
                "TCP resets the gateway sent to refuse a mapping (mapping-failure-reply = tcp-reset).",
                st.tcp_resets_generated,
            ),
            (
                "natgate_refusal_reports_suppressed_total",
                "Refusals not logged because the subscriber was refused for the same reason \
                 earlier in the same second (RFC 6888 REQ-11c, rate-limited).",
                st.refusal_reports_suppressed,
            ),
            (
                "natgate_answers_suppressed_total",
                "ICMP errors and TCP resets to refused packets left out by the answer rate \
                 limits (limits.answer-rate, limits.global-answer-rate).",
                st.answers_suppressed,
            ),
            (
                "natgate_held_packets_total",
                "Packets held (early fragments, unsolicited SYNs).",
                st.held_packets,
            ),
            (
                "natgate_sessions_created_total",
                "Sessions created.",
                st.sessions_created,
            ),
            (
                "natgate_sessions_deleted_total",
                "Sessions deleted.",
                st.sessions_deleted,
            ),
            (
                "natgate_mappings_created_total",
                "Mappings created.",
                st.mappings_created,
            ),
            (
                "natgate_mappings_deleted_total",
                "Mappings deleted.",
                st.mappings_deleted,
            ),
            (
                "natgate_events_lost_total",
                "Translation events lost because the event queue was full.",
                st.events_lost,
            ),
            (
                "natgate_static_sessions_created_total",
                "Sessions static NAT rules created (apart from dynamic sessions).",
                st.static_sessions_created,
            ),
            (
                "natgate_vserver_sessions_created_total",
                "Sessions virtual servers created (apart from dynamic sessions).",
                st.vserver_sessions_created,
            ),
            (
                "natgate_static_sessions_deleted_total",
                "Sessions of static NAT rules and virtual servers deleted.",
                st.static_sessions_deleted,
            ),
            (
                "natgate_to_host_packets_total",
                "Packets given to the host that shares the external address (home gateway).",
                st.to_host_packets,
            ),
            (
                "natgate_exempted_packets_total",
                "Packets forwarded untranslated because a rule exempts them (RFC 6888 REQ-6).",
                st.exempted_packets,
            ),
            (
                "natgate_log_events_lost_total",
                "Translation events lost because the log pipeline's queue was full.",
                st.log_events_lost,
            ),
        ] {
            e.counter(name, help)?.value(v)?;
        }
        if let Some(fp) = &st.fast_path {
            let p = &fp.program;
            let mut f = e.counter(
                "natgate_fast_path_packets_total",
                "Packets the in-kernel fast path carried, by direction.",
            )?;
            for (dir, n) in [("outbound", p.forwarded_out), ("inbound", p.forwarded_in)] {
                f.sample(&[("direction", dir)], n)?;
            }
            let mut f = e.counter(
                "natgate_fast_path_bytes_total",
                "Bytes the in-kernel fast path carried, by direction.",
            )?;
            for (dir, n) in [("outbound", p.bytes_out), ("inbound", p.bytes_in)] {
                f.sample(&[("direction", dir)], n)?;
            }
            let mut f = e.counter(
                "natgate_fast_path_punts_total",
                "Packets the fast path handed to the engine, by reason.",
            )?;
            for (name, n) in p.named() {
                if let Some(reason) = name.strip_prefix("punt_") {
                    f.sample(&[("reason", reason)], n)?;
                }
            }
            e.counter(
                "natgate_fast_path_to_engine_total",
                "Punted packets the fast path handed straight to the engine's TUN.",
            )?
            .value(p.to_engine)?;
            e.counter(
                "natgate_fast_path_xdp_packets_total",
                "Of the packets the fast path carried, those carried at the XDP hook.",
            )?
            .value(p.carried_at_xdp)?;
            e.gauge(
                "natgate_fast_path_flows",
                "Flows the engines handed to the fast path.",
            )?
            .value(fp.flows)?;
            e.gauge(
                "natgate_fast_path_table_capacity",
                "Entries the fast path's table holds at most (two per flow).",
            )?
            .value(p.capacity)?;
        }
        if !st.log_sink_losses.is_empty() {
            let mut f = e.counter(
                "natgate_log_sink_events_lost_total",
                "Translation events a log sink took and could not write or send, by sink and \
                 reason.",
            )?;
            for l in &st.log_sink_losses {
                f.sample(
                    &[("sink", l.sink.as_str()), ("reason", l.reason.as_str())],
                    l.events,
                )?;
            }
        }
        if !st.dataplane_drops.is_empty() {
            let mut f = e.counter(
                "natgate_dataplane_drops_total",
                "Packets the data plane lost outside the engines, by reason.",
            )?;
            for d in &st.dataplane_drops {
                f.sample(&[("reason", d.reason.as_str())], d.packets)?;
            }
        }
        let mut f = e.gauge("natgate_sessions", "Live sessions, by protocol.")?;
        for p in Protocol::ALL {
            f.sample(&[("protocol", p.name())], s.sessions.get(p))?;
        }
        e.gauge("natgate_mappings", "Live mappings.")?
            .value(s.mappings)?;

        let per_proto: [(&'static str, &str, PoolField); 3] = [
            (
                "natgate_pool_ports_in_use",
                "External ports held by live mappings.",
                |r| &r.in_use,
            ),
            (
                "natgate_pool_ports_held_down",
                "External ports released but not yet reusable (RFC 6888 REQ-8).",
                |r| &r.held_down,
            ),
            (
                "natgate_pool_ports_capacity",
                "External ports an address can hand out.",
                |r| &r.capacity,
            ),
        ];
        for (name, help, get) in per_proto {
            let mut f = e.gauge(name, help)?;
            for row in &s.pools {
                let addr = row.address.to_string();
                for p in Protocol::ALL {
                    f.sample(
                        &[("address", addr.as_str()), ("protocol", p.name())],
                        get(row).get(p),
                    )?;
                }
            }
        }
        let mut f = e.gauge(
            "natgate_pool_subscribers",
            "Subscribers with a mapping on an external address.",
        )?;
        for row in &s.pools {
            f.sample(
                &[("address", row.address.to_string().as_str())],
                row.subscribers,
            )?;
        }
        let mut f = e.gauge(
            "natgate_pool_port_sets",
            "Port blocks or deterministic ranges of an external address, by state (in use, held down per RFC 6888 REQ-8, free).",
        )?;
        for row in &s.pools {
            let Some(sets) = &row.port_sets else {
                continue;
            };
            let addr = row.address.to_string();
            let kind = match sets.kind {
                PortSetRowKind::Block => "block",
                PortSetRowKind::Deterministic => "deterministic",
            };
            for (state, n) in [
                ("in-use", sets.in_use),
                ("held-down", sets.held_down),
                ("free", sets.free),
            ] {
                f.sample(
                    &[("address", addr.as_str()), ("kind", kind), ("state", state)],
                    n,
                )?;
            }
        }
        let mut f = e.gauge(
            "natgate_pool_utilisation_ratio",
            "Share of the busiest protocol's ports in use or held down on an external address.",
        )?;
        for row in &s.pools {
            f.sample(
                &[("address", row.address.to_string().as_str())],
                row.utilisation_percent / 100.0,
            )?;
        }
        Ok(())
    }
}

/// Picks one per-protocol figure of a pool row.
type PoolField = fn(&PoolRow) -> &PerProtocol;

/// The families being encoded, one after another.
struct Families<'a>(DescriptorEncoder<'a>);

impl Families<'_> {
    /// Starts a counter family. `name` is the name exported; the encoder appends the `_total`
    /// that ends every counter's name itself, so it is taken off here.
    fn counter(&mut self, name: &'static str, help: &str) -> Result<Family<'_>, fmt::Error> {
        let name = name.strip_suffix("_total").unwrap_or(name);
        self.family(name, help, MetricType::Counter)
    }

    /// Starts a gauge family.
    fn gauge(&mut self, name: &'static str, help: &str) -> Result<Family<'_>, fmt::Error> {
        self.family(name, help, MetricType::Gauge)
    }

    fn family(
        &mut self,
        name: &'static str,
        help: &str,
        kind: MetricType,
    ) -> Result<Family<'_>, fmt::Error> {
        let encoder = self.0.encode_descriptor(name, help, None, kind)?;
        Ok(Family { encoder, kind })
    }
}

/// The samples of one family, written right after its `HELP` and `TYPE` lines.
struct Family<'a> {
    encoder: MetricEncoder<'a>,
    kind: MetricType,
}

/// A sample's value: integers and ratios, for counters and gauges alike.
trait Value: EncodeCounterValue + EncodeGaugeValue {}
impl<V: EncodeCounterValue + EncodeGaugeValue> Value for V {}

impl Family<'_> {
    /// A sample with labels.
    fn sample(&mut self, labels: &impl EncodeLabelSet, v: impl Value) -> fmt::Result {
        let kind = self.kind;
        encode_value(&mut self.encoder.encode_family(labels)?, kind, &v)
    }

    /// The family's only sample, without labels.
    fn value(mut self, v: impl Value) -> fmt::Result {
        encode_value(&mut self.encoder, self.kind, &v)
    }
}

/// Writes `v` as a counter's or a gauge's value.
fn encode_value(m: &mut MetricEncoder, kind: MetricType, v: &impl Value) -> fmt::Result {
    match kind {
        MetricType::Counter => m.encode_counter::<NoLabelSet, _, u64>(v, None),
        _ => m.encode_gauge(v),
    }
}

/// The longest HTTP request head read; Prometheus sends a few hundred bytes.
const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// A scraper that sends or reads nothing for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Scrapes served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 8;

/// Why the metrics listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding the listen address failed.
    #[error("metrics listen address: {0}")]
    Bind(io::Error),
    /// Starting the server thread failed.
    #[error("starting the metrics server: {0}")]
    Spawn(io::Error),
}

type SnapshotFn = dyn Fn() -> MetricsSnapshot + Send + Sync;

/// A running metrics endpoint. [`MetricsServer::shutdown`] (or dropping it) stops it.
pub struct MetricsServer {
    addr: SocketAddr,
    listener: TcpListener,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: AtomicBool,
    conns: Mutex<Vec<(JoinHandle<()>, TcpStream)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MetricsServer {
    /// Listens on `addr` and serves `snapshot()`'s exposition at `GET /metrics`.
    pub fn bind(
        addr: impl ToSocketAddrs,
        snapshot: impl Fn() -> MetricsSnapshot + Send + Sync + 'static,
    ) -> Result<MetricsServer, MetricsError> {
        let listener = TcpListener::bind(addr).map_err(MetricsError::Bind)?;
        let addr = listener.local_addr().map_err(MetricsError::Bind)?;
        let wake = listener.try_clone().map_err(MetricsError::Bind)?;
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let snapshot: Arc<SnapshotFn> = Arc::new(snapshot);
        let s = shared.clone();
        let accept_thread = thread::Builder::new()
            .name("metrics-accept".into())
            .spawn(move || accept_loop(&listener, &s, &snapshot))
            .map_err(MetricsError::Spawn)?;
        Ok(MetricsServer {
            addr,
            listener: wake,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address it listens on (with the actual port if bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening, closes open connections and waits for their threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(accept) = self.accept_thread.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Linux wakes a blocked accept() when the listening socket is shut down.
        let _ = rustix::net::shutdown(&self.listener, rustix::net::Shutdown::Both);
        let _ = accept.join();
        let conns = std::mem::take(&mut *lock(&self.shared.conns));
        for (t, stream) in conns {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: &TcpListener, shared: &Shared, snapshot: &Arc<SnapshotFn>) {
    loop {
        let accepted = listener.accept();
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok((stream, _)) = accepted else {
            // Out of descriptors or an aborted handshake: back off rather than spin.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        let mut conns = lock(&shared.conns);
        conns.retain(|(t, _)| !t.is_finished());
        if conns.len() >= MAX_CONNECTIONS {
            continue; // dropping the stream closes it
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let snap = snapshot.clone();
        if let Ok(t) = thread::Builder::new()
            .name("metrics-conn".into())
            .spawn(move || serve(stream, &*snap))
        {
            conns.push((t, clone));
        }
    }
}

fn serve(mut stream: TcpStream, snapshot: &SnapshotFn) {
    if stream.set_read_timeout(Some(IO_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(IO_TIMEOUT)).is_err()
    {
        return;
    }
    let (response, unread) = match read_head(&mut stream) {
        Ok(head) => (respond(&head, snapshot), false),
        Err(HeadError::TooLarge) => (
            reply(431, "Request Header Fields Too Large", "", None),
            true,
        ),
        Err(HeadError::Io) => return,
    };
    let _ = stream.write_all(&response);
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    if unread {
        // Closing with unread input sends a reset, which can destroy the reply before the
        // client reads it; take a bounded amount of the rest first.
        let _ = io::copy(&mut (&stream).take(64 * 1024), &mut io::sink());
    }
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads up to the blank line that ends the request head.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).map_err(|_| HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Io);
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find_head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = b.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The whole HTTP response for a request head.
fn respond(head: &[u8], snapshot: &SnapshotFn) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return reply(400, "Bad Request", "malformed request line\n", None);
    };
    if !version.starts_with("HTTP/1.") {
        return reply(400, "Bad Request", "HTTP/1.x only\n", None);
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return reply(404, "Not Found", "try /metrics\n", None);
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return reply(
                405,
                "Method Not Allowed",
                "GET or HEAD\n",
                Some("Allow: GET, HEAD"),
            );
        }
    };
    // A panicking snapshot (a bug) must not take the listener with it.
    let Ok(body) = panic::catch_unwind(AssertUnwindSafe(|| snapshot().render())) else {
        return reply(500, "Internal Server Error", "snapshot failed\n", None);
    };
    let mut r = reply_head(200, "OK", prometheus_text::CONTENT_TYPE, body.len(), None);
    if !head_only {
        r.extend_from_slice(body.as_bytes());
    }
    r
}

fn reply(code: u16, reason: &str, body: &str, extra: Option<&str>) -> Vec<u8> {
    let mut r = reply_head(code, reason, "text/plain; charset=utf-8", body.len(), extra);
    r.extend_from_slice(body.as_bytes());
    r
}

fn reply_head(code: u16, reason: &str, ctype: &str, len: usize, extra: Option<&str>) -> Vec<u8> {
    let mut h = format!(
        "HTTP/1.0 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n"
    );
    if let Some(x) = extra {
        h.push_str(x);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgate_core::Direction;
    use natgate_core::alloc::AddressUsage;
    use std::collections::{BTreeMap, BTreeSet};
    use std::net::Ipv4Addr;

    fn snapshot() -> MetricsSnapshot {
        let mut c = Counters::default();
        c.count_forward(Direction::Outbound, 1500);
        c.count_forward(Direction::Inbound, 40);
        c.count_drop(DropReason::Filtered);
        c.count_drop(DropReason::MappingFailed);
        c.count_drop(DropReason::MappingFailed);
        let mut s = MetricsSnapshot::from_counters([&c, &c]);
        s.sessions = PerProtocol {
            icmp: 1,
            tcp: 2,
            udp: 3,
        };
        s.mappings = 4;
        s.stats.log_events_lost = 7;
        s.stats.log_sink_losses = vec![crate::control::protocol::LogSinkLoss {
            sink: "file".into(),
            reason: "no_space".into(),
            events: 11,
        }];
        s.stats.dataplane_drops = vec![crate::control::protocol::DataplaneDrop {
            reason: "tun_tx_dropped".into(),
            packets: 12,
        }];
        s.stats.static_sessions_created = 8;
        s.stats.vserver_sessions_created = 9;
        s.stats.static_sessions_deleted = 10;
        s.stats.exempted_packets = 11;
        let usage = AddressUsage {
            addr: Ipv4Addr::new(198, 51, 100, 1),
            in_use: [0, 6451, 3],
            held_down: [0, 1, 0],
            subscribers: 2,
        };
        s.pools = vec![PoolRow::new(&usage, PerProtocol::port_capacity(false))];
        let blocks = AddressUsage {
            addr: Ipv4Addr::new(198, 51, 100, 2),
            ..usage
        };
        s.pools.push(PoolRow::with_port_sets(
            &blocks,
            &natgate_core::alloc::PortSetUsage {
                addr: blocks.addr,
                kind: natgate_core::alloc::PortSetKind::Block,
                size: 512,
                in_use: 5,
                held_down: 1,
                free: 120,
            },
        ));
        s
    }

    /// Sample values by metric name and sorted labels.
    type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

    fn valid_name(n: &str) -> bool {
        let mut c = n.chars();
        c.next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
    }

    /// One sample line: name, labels, value. Panics on anything the 0.0.4 grammar refuses.
    fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().expect("numeric value");
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let mut labels = BTreeMap::new();
                let mut s = body;
                while !s.is_empty() {
                    let (k, after) = s.split_once("=\"").expect("label=\"");
                    assert!(valid_name(k) && !k.contains(':'), "label name {k:?}");
                    let mut v = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next().expect("closing quote") {
                            (i, '"') => break i,
                            (_, '\\') => match chars.next().expect("escape").1 {
                                'n' => v.push('\n'),
                                c @ ('\\' | '"') => v.push(c),
                                c => panic!("bad escape \\{c}"),
                            },
                            (_, c) => v.push(c),
                        }
                    };
                    assert!(
                        labels.insert(k.to_owned(), v).is_none(),
                        "duplicate label {k}"
                    );
                    s = &after[end + 1..];
                    s = s.strip_prefix(',').unwrap_or(s);
                }
                (name, labels)
            }
        };
        assert!(valid_name(name), "metric name {name:?}");
        (name.to_owned(), labels, value)
    }

    /// Checks the whole exposition's structure; returns every sample by name and labels.
    fn parse(text: &str) -> Samples {
        let mut samples = BTreeMap::new();
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut helped = BTreeSet::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name");
                assert!(helped.insert(name.to_owned()), "second HELP for {name}");
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("name and type");
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(matches!(kind, "counter" | "gauge"), "{kind}");
                assert!(typed.insert(name.to_owned(), kind.to_owned()).is_none());
                current = Some(name.to_owned());
            } else {
                assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
                let (name, labels, v) = parse_sample(line);
                // Samples of a family follow its TYPE line, all together.
                assert_eq!(current.as_deref(), Some(name.as_str()), "{line}");
                assert!(name.starts_with("natgate_"), "{name}");
                assert_eq!(
                    typed[&name] == "counter",
                    name.ends_with("_total"),
                    "{name}"
                );
                let key = (name, labels.into_iter().collect());
                assert!(samples.insert(key, v).is_none(), "duplicate series {line}");
            }
        }
        samples
    }

    fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
        let key = (
            name.to_owned(),
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        );
        *s.get(&key).unwrap_or_else(|| panic!("no {name}{labels:?}"))
    }

    #[test]
    fn port_mapping_drops_and_answers_are_labelled() {
        let mut snap = snapshot();
        snap.portmap.drops[3] = 7;
        snap.portmap.pcp_results[2] = 5;
        snap.portmap.natpmp_results[0] = 9;
        snap.portmap.upnp_results[2] = 4;
        let s = parse(&snap.render());
        let dropped = |r| get(&s, "natgate_portmap_dropped_total", &[("reason", r)]);
        assert_eq!(dropped("rate_limited"), 7.0);
        assert_eq!(dropped("not_served"), 0.0);
        let answers = |p, r| {
            get(
                &s,
                "natgate_portmap_answers_total",
                &[("protocol", p), ("result", r)],
            )
        };
        assert_eq!(answers("pcp", "not_authorized"), 5.0);
        assert_eq!(answers("nat-pmp", "success"), 9.0);
        assert_eq!(answers("pcp", "excessive_remote_peers"), 0.0);
        assert_eq!(answers("upnp", "success"), 4.0);
        assert_eq!(answers("upnp", "conflict"), 0.0);
        assert_eq!(dropped("ssdp_not_search"), 0.0);
    }

    /// The Grafana dashboard shipped in the package asks only for metrics natgate exports, and
    /// groups them only by labels those metrics have: a renamed metric or label breaks it here,
    /// not silently on an operator's screen.
    #[test]
    fn the_grafana_dashboard_asks_for_what_natgate_exports() {
        let mut snap = snapshot();
        snap.stats.fast_path = Some(crate::control::protocol::FastPathStats {
            program: crate::dataplane::fastpath::FastPathCounters::default(),
            flows: 0,
            offers_skipped: 0,
            changes_failed: 0,
        });
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for ((name, l), _) in parse(&snap.render()) {
            labels
                .entry(name)
                .or_default()
                .extend(l.into_iter().map(|(k, _)| k));
        }
        let dash: serde_json::Value =
            serde_json::from_str(include_str!("../../../../packaging/grafana/natgate.json"))
                .expect("the dashboard is JSON");
        let mut exprs = Vec::new();
        for panel in dash["panels"].as_array().expect("panels") {
            for t in panel["targets"].as_array().into_iter().flatten() {
                exprs.push(t["expr"].as_str().expect("expr").to_owned());
            }
        }
        assert!(exprs.len() > 10, "{exprs:?}");
        let word = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        for expr in &exprs {
            let used: Vec<String> = expr
                .match_indices("natgate_")
                .map(|(i, _)| word(&expr[i..]))
                .collect();
            assert!(!used.is_empty(), "{expr}");
            for m in &used {
                assert!(labels.contains_key(m), "{m} in {expr} is not exported");
            }
            for (i, _) in expr.match_indices(" by (") {
                let inner = &expr[i + 5..];
                let inner = &inner[..inner.find(')').expect("closing parenthesis")];
                for l in inner.split(',').map(str::trim) {
                    assert!(
                        used.iter().any(|m| labels[m].contains(l)),
                        "{expr} groups by {l}, which none of its metrics has"
                    );
                }
            }
        }
    }

    #[test]
    fn exposition_is_valid_and_has_every_metric() {
        let text = snapshot().render();
        assert!(text.ends_with('\n'));
        let s = parse(&text);
        // Port blocks: the sets by state, and the capacity is the ports inside them.
        let b = ("address", "198.51.100.2");
        for (state, n) in [("in-use", 5.0), ("held-down", 1.0), ("free", 120.0)] {
            assert_eq!(
                get(
                    &s,
                    "natgate_pool_port_sets",
                    &[b, ("kind", "block"), ("state", state)]
                ),
                n
            );
        }
        assert_eq!(
            get(&s, "natgate_pool_ports_capacity", &[b, ("protocol", "udp")]),
            126.0 * 512.0
        );
        assert_eq!(
            get(&s, "natgate_packets_total", &[("direction", "outbound")]),
            2.0
        );
        assert_eq!(
            get(&s, "natgate_bytes_total", &[("direction", "outbound")]),
            3000.0
        );
        assert_eq!(
            get(&s, "natgate_bytes_total", &[("direction", "inbound")]),
            80.0
        );
        assert_eq!(
            get(&s, "natgate_drops_total", &[("reason", "filtered")]),
            2.0
        );
        assert_eq!(get(&s, "natgate_mapping_failures_total", &[]), 4.0);
        assert_eq!(get(&s, "natgate_log_events_lost_total", &[]), 7.0);
        assert_eq!(
            get(
                &s,
                "natgate_log_sink_events_lost_total",
                &[("reason", "no_space"), ("sink", "file")]
            ),
            11.0
        );
        assert_eq!(
            get(
                &s,
                "natgate_dataplane_drops_total",
                &[("reason", "tun_tx_dropped")]
            ),
            12.0
        );
        for (name, v) in [
            ("natgate_static_sessions_created_total", 8.0),
            ("natgate_vserver_sessions_created_total", 9.0),
            ("natgate_static_sessions_deleted_total", 10.0),
            ("natgate_exempted_packets_total", 11.0),
        ] {
            assert_eq!(get(&s, name, &[]), v, "{name}");
        }
        // Every reason, zero ones too.
        for r in DropReason::ALL {
            get(&s, "natgate_drops_total", &[("reason", r.name())]);
        }
        assert_eq!(
            get(&s, "natgate_drops_total", &[("reason", "no_mapping")]),
            0.0
        );
        assert_eq!(get(&s, "natgate_sessions", &[("protocol", "udp")]), 3.0);
        assert_eq!(get(&s, "natgate_mappings", &[]), 4.0);
        let a = ("address", "198.51.100.1");
        assert_eq!(
            get(&s, "natgate_pool_ports_in_use", &[a, ("protocol", "tcp")]),
            6451.0
        );
        assert_eq!(
            get(
                &s,
                "natgate_pool_ports_held_down",
                &[a, ("protocol", "tcp")]
            ),
            1.0
        );
        assert_eq!(
            get(
                &s,
                "natgate_pool_ports_capacity",
                &[a, ("protocol", "icmp")]
            ),
            65536.0
        );
        assert_eq!(get(&s, "natgate_pool_subscribers", &[a]), 2.0);
        let ratio = get(&s, "natgate_pool_utilisation_ratio", &[a]);
        assert!((ratio - 6452.0 / 64512.0).abs() < 1e-9, "{ratio}");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut snap = MetricsSnapshot::default();
        snap.stats.log_sink_losses = vec![crate::control::protocol::LogSinkLoss {
            sink: "a\"b\\c\nd".into(),
            reason: "no_space".into(),
            events: 1,
        }];
        let text = snap.render();
        let line = text
            .lines()
            .find(|l| l.starts_with("natgate_log_sink_events_lost_total{"))
            .expect("the sink's sample");
        assert_eq!(
            line,
            "natgate_log_sink_events_lost_total{sink=\"a\\\"b\\\\c\\nd\",reason=\"no_space\"} 1"
        );
        let (_, labels, _) = parse_sample(line);
        assert_eq!(labels["sink"], "a\"b\\c\nd");
        parse(&text);
    }

    fn http(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        s.write_all(request).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

    #[test]
    fn serves_metrics_and_refuses_the_rest() {
        let server = MetricsServer::bind("127.0.0.1:0", snapshot).expect("bind");
        let addr = server.local_addr();

        let r = http(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n",
        );
        let (head, body) = r.split_once("\r\n\r\n").expect("head and body");
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{head}"
        );
        assert_eq!(body, snapshot().render());

        let r = http(addr, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(
            r.starts_with("HTTP/1.0 200 OK\r\n") && r.ends_with("\r\n\r\n"),
            "{r}"
        );
        for (req, status) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], "404"),
            (b"POST /metrics HTTP/1.1\r\n\r\n", "405"),
            (b"GET /metrics\r\n\r\n", "400"),
            (b"GET /metrics SPDY/3\n\n", "400"),
        ] {
            let r = http(addr, req);
            assert!(r.starts_with(&format!("HTTP/1.0 {status} ")), "{r}");
        }
        let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        huge.resize(3 * MAX_REQUEST_HEAD, b'a');
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        // The server may close before taking all of it; only its answer matters.
        let _ = s.write_all(&huge);
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        assert!(r.starts_with("HTTP/1.0 431 "), "{r}");

        server.shutdown();
        assert!(TcpStream::connect(addr).is_err());
    }

    #[test]
    fn shutdown_does_not_wait_for_a_silent_client() {
        let server = MetricsServer::bind("127.0.0.1:0", MetricsSnapshot::default).expect("bind");
        let _silent = TcpStream::connect(server.local_addr()).expect("connect");
        // Let the server accept it, so shutdown has a live connection to close.
        thread::sleep(Duration::from_millis(50));
        let start = std::time::Instant::now();
        server.shutdown();
        assert!(start.elapsed() < IO_TIMEOUT, "{:?}", start.elapsed());
    }
}
