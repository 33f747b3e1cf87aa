//! What the gateway tells its operators: Prometheus metrics, translation events as JSON lines,
//! and the log sinks (syslog, IPFIX, the port-block log behind `whois`).

pub mod eventlog;
pub mod logsink;
pub mod metrics;
