//! The control socket end to end over a real Unix socket in a temporary directory: no root, no
//! namespaces. A fake daemon records what it was asked, so the tests can check that bad input
//! reaches nothing.

#![allow(clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natgate::control::cli::{
    CtlArgs, CtlCommand, EXIT_ERROR, EXIT_OK, SessionCommand, TableArgs, run_with,
};
use natgate::control::protocol::{
    FlushQuery, FlushResult, LogLevel, LogLevelArgs, PoolList, ReloadResult, SessionList,
    SessionRow, StatusInfo, TableQuery,
};
use natgate::control::{
    Client, ClientError, ControlError, ControlHandler, Request, Response, Server, ServerError,
    ServerOptions,
};
use natgate_core::Protocol;

/// A daemon stand-in: answers from fixed data and logs every request it handles.
#[derive(Clone, Default)]
struct Fake {
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Fake {
    fn seen(&self) -> Vec<Request> {
        self.seen.lock().expect("lock").clone()
    }
}

fn row(internal: &str, proto: Protocol) -> SessionRow {
    SessionRow {
        proto,
        internal: internal.parse().expect("addr"),
        external: "198.51.100.1:40000".parse().expect("addr"),
        remote: "203.0.113.10:3478".parse().expect("addr"),
        tcp_state: None,
        idle_secs: 1,
        expires_in_secs: 299,
        origin: "dynamic".into(),
    }
}

impl ControlHandler for Fake {
    fn handle(&self, req: Request) -> Result<Response, ControlError> {
        self.seen.lock().expect("lock").push(req.clone());
        match req {
            Request::Status => Ok(Response::Status(StatusInfo {
                version: "test".into(),
                uptime_secs: 5,
                config_path: Some("/etc/natgate.toml".into()),
                preset: Some("rfc6888-cgn".into()),
                workers: 2,
                pool: vec![Ipv4Addr::new(198, 51, 100, 1)],
                sessions: 2,
                mappings: 2,
            })),
            Request::Sessions(q) => {
                let mut l = SessionList {
                    count: 2,
                    sessions: vec![
                        row("100.64.0.10:5000", Protocol::Udp),
                        row("100.64.0.11:5000", Protocol::Udp),
                    ],
                };
                l.finish(&q);
                Ok(Response::Sessions(l))
            }
            Request::Reload => Err(ControlError::Rejected(
                "natgate.toml line 3: pool: at least one external address is needed".into(),
            )),
            Request::Flush(_) => Ok(Response::Flushed(FlushResult {
                sessions: 2,
                mappings: 2,
            })),
            Request::Session(_) => Ok(Response::SessionChanged(FlushResult {
                sessions: 1,
                mappings: 1,
            })),
            // A buggy daemon: answers with the wrong kind of reply.
            Request::Pools => Ok(Response::Reloaded(ReloadResult {
                config_path: "/x".into(),
            })),
            Request::Stats => panic!("handler bug"),
            Request::LogLevel(a) => Ok(Response::LogLevel(a)),
            Request::Mappings(_)
            | Request::Drops(_)
            | Request::Whois(_)
            | Request::Rules
            | Request::Rule(_)
            | Request::VirtualServers
            | Request::VirtualServer(_)
            | Request::Unmap(_)
            | Request::Save
            | Request::VirtualServerCreate(_)
            | Request::VirtualServerDelete(_) => Ok(Response::Pools(PoolList::default())),
        }
    }
}

fn temp_socket() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ctl.sock");
    (dir, path)
}

/// Sends raw bytes and reads one reply line.
fn raw(path: &Path, bytes: &[u8]) -> serde_json::Value {
    let mut s = UnixStream::connect(path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // The server may answer and close before taking everything (too large, too many
    // connections); its reply is what matters.
    let _ = s.write_all(bytes);
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read");
    serde_json::from_str(&line).expect("reply is JSON")
}

#[test]
fn requests_are_answered_in_order_on_one_connection() {
    let (_dir, path) = temp_socket();
    let fake = Fake::default();
    let server = Server::bind(&path, fake.clone()).expect("bind");
    let mut c = Client::connect(&path).expect("connect");
    let Response::Status(s) = c.request(&Request::Status).expect("status") else {
        panic!("wrong reply")
    };
    assert_eq!(s.workers, 2);
    let q = TableQuery {
        limit: Some(1),
        ..TableQuery::default()
    };
    let Response::Sessions(l) = c.request(&Request::Sessions(q.clone())).expect("sessions") else {
        panic!("wrong reply")
    };
    assert_eq!((l.count, l.sessions.len()), (2, 1));
    assert_eq!(fake.seen(), [Request::Status, Request::Sessions(q)]);
    server.shutdown();
}

#[test]
fn socket_is_owner_only_and_removed_on_shutdown() {
    let (dir, _) = temp_socket();
    // The directory is created too, owner-only, as /run/natgate is after a reboot.
    let path = dir.path().join("run/natgate/control.sock");
    let server = Server::bind(&path, Fake::default()).expect("bind");
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let parent = path.parent().expect("parent");
    let dir_mode = std::fs::metadata(parent)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    // A connection left open does not keep shutdown waiting.
    let _idle = UnixStream::connect(&path).expect("connect");
    server.shutdown();
    assert!(!path.exists());
    assert!(matches!(
        Client::connect(&path),
        Err(ClientError::NotRunning { .. })
    ));
}

#[test]
fn stale_socket_is_replaced_but_live_one_refused() {
    let (_dir, path) = temp_socket();
    // A socket file nobody listens on, as a killed daemon leaves it.
    drop(UnixListener::bind(&path).expect("bind"));
    assert!(path.exists());
    let server = Server::bind(&path, Fake::default()).expect("stale socket replaced");
    let second = Server::bind(&path, Fake::default());
    assert!(
        matches!(&second, Err(ServerError::AlreadyRunning(p)) if *p == path),
        "{:?}",
        second.err()
    );
    // The refused second server did not remove the live one's socket.
    Client::connect(&path)
        .expect("still there")
        .request(&Request::Status)
        .expect("status");
    server.shutdown();

    std::fs::write(&path, b"not a socket").expect("write");
    assert!(matches!(
        Server::bind(&path, Fake::default()),
        Err(ServerError::NotASocket(_))
    ));
    assert_eq!(std::fs::read(&path).expect("left alone"), b"not a socket");
}

#[test]
fn malformed_and_unknown_requests_get_errors_and_reach_nothing() {
    let (_dir, path) = temp_socket();
    let fake = Fake::default();
    let server = Server::bind(&path, fake.clone()).expect("bind");
    for (line, id, code) in [
        ("garbage\n", serde_json::Value::Null, "bad_request"),
        (r#"{"id":1,"cmd":"reboot"}"#, 1.into(), "unknown_command"),
        (
            r#"{"id":2,"cmd":"flush","args":{"force":true}}"#,
            2.into(),
            "bad_request",
        ),
        (
            r#"{"id":3,"cmd":"log-level","args":{"level":"loud"}}"#,
            3.into(),
            "bad_request",
        ),
    ] {
        let reply = raw(&path, format!("{}\n", line.trim_end()).as_bytes());
        assert_eq!(reply["id"], id, "{line}");
        assert_eq!(reply["ok"], false, "{line}");
        assert_eq!(reply["error"]["code"], code, "{line}");
    }
    assert!(fake.seen().is_empty(), "{:?}", fake.seen());
    server.shutdown();
}

#[test]
fn errors_from_the_daemon_reach_the_client_intact() {
    let (_dir, path) = temp_socket();
    let server = Server::bind(&path, Fake::default()).expect("bind");
    let mut c = Client::connect(&path).expect("connect");
    match c.request(&Request::Reload) {
        Err(ClientError::Daemon(ControlError::Rejected(m))) => assert!(m.contains("line 3")),
        other => panic!("{other:?}"),
    }
    // A reply of the wrong kind and a panicking handler become internal errors, and the
    // connection keeps working.
    for req in [Request::Pools, Request::Stats] {
        match c.request(&req) {
            Err(ClientError::Daemon(ControlError::Internal(_))) => {}
            other => panic!("{req:?}: {other:?}"),
        }
    }
    c.request(&Request::Status).expect("still serving");
    server.shutdown();
}

#[test]
fn oversized_line_is_refused_and_not_handled() {
    let (_dir, path) = temp_socket();
    let fake = Fake::default();
    let opts = ServerOptions {
        max_line: 1024,
        ..ServerOptions::default()
    };
    let server = Server::bind_with(&path, fake.clone(), opts).expect("bind");
    let mut big = br#"{"id":1,"cmd":"flush","args":{"x":""#.to_vec();
    big.resize(4096, b'a');
    let reply = raw(&path, &big);
    assert_eq!(reply["error"]["code"], "too_large");
    assert!(fake.seen().is_empty());
    // A line just under the limit is fine.
    let mut ok = br#"{"id":1,"cmd":"status"}"#.to_vec();
    ok.resize(1023, b' ');
    ok.push(b'\n');
    assert_eq!(raw(&path, &ok)["ok"], true);
    server.shutdown();
}

#[test]
fn client_leaving_mid_request_changes_nothing() {
    let (_dir, path) = temp_socket();
    let fake = Fake::default();
    let server = Server::bind(&path, fake.clone()).expect("bind");
    {
        let mut s = UnixStream::connect(&path).expect("connect");
        s.write_all(br#"{"id":1,"cmd":"flu"#).expect("write");
        // Dropped here, without a newline.
    }
    {
        // A complete request whose sender does not wait for the answer.
        let mut s = UnixStream::connect(&path).expect("connect");
        s.write_all(b"{\"id\":2,\"cmd\":\"status\"}\n")
            .expect("write");
    }
    // The server is still serving.
    let mut c = Client::connect(&path).expect("connect");
    c.request(&Request::Status).expect("status");
    assert!(!fake.seen().iter().any(|r| matches!(r, Request::Flush(_))));
    server.shutdown();
}

#[test]
fn idle_connections_time_out() {
    let (_dir, path) = temp_socket();
    let opts = ServerOptions {
        read_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let server = Server::bind_with(&path, Fake::default(), opts).expect("bind");
    let mut s = UnixStream::connect(&path).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 1];
    // The server closes the connection: EOF, not our own 5 s timeout.
    assert_eq!(s.read(&mut buf).expect("read"), 0);
    server.shutdown();
}

#[test]
fn a_full_server_closes_its_oldest_idle_connection_for_a_new_one() {
    let (_dir, path) = temp_socket();
    let opts = ServerOptions {
        max_connections: 2,
        ..ServerOptions::default()
    };
    let server = Server::bind_with(&path, Fake::default(), opts).expect("bind");
    let mut held: Vec<Client> = (0..2)
        .map(|_| Client::connect(&path).expect("connect"))
        .collect();
    // Make sure both are registered before the third arrives.
    for c in &mut held {
        c.request(&Request::Status).expect("status");
    }
    let reply = raw(&path, b"{\"id\":1,\"cmd\":\"status\"}\n");
    assert!(reply["error"].is_null(), "the newcomer is served: {reply}");
    // The oldest idle one made room; the other still works.
    assert!(held[0].request(&Request::Status).is_err(), "oldest closed");
    held[1]
        .request(&Request::Status)
        .expect("the younger one stays");
    drop(held);
    server.shutdown();
}

/// A slow client, sending a byte of its request now and then (more often than the idle
/// timeout), is closed once the request has taken longer than `request-timeout`.
#[test]
fn a_slow_client_cannot_hold_a_connection() {
    let (_dir, path) = temp_socket();
    let opts = ServerOptions {
        read_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let server = Server::bind_with(&path, Fake::default(), opts).expect("bind");
    let mut s = UnixStream::connect(&path).expect("connect");
    let started = std::time::Instant::now();
    let request = b"{\"id\":1,\"cmd\":\"status\"}";
    let mut closed = false;
    // One byte every 50 ms: the whole request would take over a second.
    for b in request {
        if s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !closed {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        // EOF (or a reset), not an answer and not our own 5 s timeout.
        match s.read(&mut buf) {
            Ok(n) => assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf[..n])),
            Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(4));
    server.shutdown();
}

/// 32 slow clients fill every slot, sending a byte every 100 ms; an operator's command still
/// gets its answer at once.
#[test]
fn slow_clients_do_not_lock_out_the_operator() {
    let (_dir, path) = temp_socket();
    let server = Server::bind(&path, Fake::default()).expect("bind");
    let mut slow: Vec<UnixStream> = (0..32)
        .map(|_| UnixStream::connect(&path).expect("connect"))
        .collect();
    for _ in 0..3 {
        for s in &mut slow {
            let _ = s.write_all(b" ");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = std::time::Instant::now();
    let reply = raw(&path, b"{\"id\":7,\"cmd\":\"status\"}\n");
    assert!(reply["error"].is_null(), "{reply}");
    assert_eq!(reply["id"], 7);
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(slow);
    server.shutdown();
}

fn ctl(path: &Path, json: bool, command: CtlCommand) -> (u8, String, String) {
    let args = CtlArgs {
        socket: path.to_path_buf(),
        json,
        command,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_with(&args, &mut out, &mut err).expect("run");
    (
        code,
        String::from_utf8(out).expect("utf-8"),
        String::from_utf8(err).expect("utf-8"),
    )
}

#[test]
fn ctl_prints_tables_json_and_error_exit_status() {
    let (_dir, path) = temp_socket();
    let fake = Fake::default();
    let server = Server::bind(&path, fake.clone()).expect("bind");

    let (code, out, _) = ctl(&path, false, CtlCommand::Status);
    assert_eq!(code, EXIT_OK);
    assert!(out.contains("preset    rfc6888-cgn"), "{out}");

    let filters = TableArgs {
        subscriber: Some(Ipv4Addr::new(100, 64, 0, 10)),
        proto: Some(Protocol::Udp),
        external_port: None,
        count: false,
        limit: None,
    };
    let (code, out, _) = ctl(&path, true, CtlCommand::Sessions(filters));
    assert_eq!(code, EXIT_OK);
    let v: serde_json::Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(v["count"], 2);
    assert_eq!(v["sessions"][0]["internal"], "100.64.0.10:5000");
    assert_eq!(v["sessions"][0]["proto"], "udp");
    let Some(Request::Sessions(q)) = fake.seen().last().cloned() else {
        panic!("no sessions request")
    };
    assert_eq!(q.subscriber, Some(Ipv4Addr::new(100, 64, 0, 10)));

    let (code, out, err) = ctl(&path, false, CtlCommand::Reload);
    assert_eq!(code, EXIT_ERROR);
    assert!(out.is_empty());
    assert!(err.contains("rejected") && err.contains("line 3"), "{err}");

    let (code, out, _) = ctl(
        &path,
        false,
        CtlCommand::LogLevel {
            level: LogLevel::Warn,
        },
    );
    assert_eq!((code, out.as_str()), (EXIT_OK, "log level is now warn\n"));
    assert_eq!(
        fake.seen().last(),
        Some(&Request::LogLevel(LogLevelArgs {
            level: LogLevel::Warn
        }))
    );

    let (code, out, _) = ctl(&path, false, CtlCommand::Flush { subscriber: None });
    assert_eq!(
        (code, out.as_str()),
        (EXIT_OK, "flushed 2 sessions and 2 mappings\n")
    );
    let sub = Ipv4Addr::new(100, 64, 0, 10);
    let (code, out, _) = ctl(
        &path,
        false,
        CtlCommand::Flush {
            subscriber: Some(sub),
        },
    );
    assert_eq!(
        (code, out.as_str()),
        (
            EXIT_OK,
            "flushed 2 sessions and 2 mappings of 100.64.0.10\n"
        )
    );
    assert_eq!(
        fake.seen().last(),
        Some(&Request::Flush(FlushQuery {
            subscriber: Some(sub)
        }))
    );
    let internal = SocketAddrV4::new(sub, 5000);
    let remote = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 10), 3478);
    let (code, out, _) = ctl(
        &path,
        false,
        CtlCommand::Session(SessionCommand::Delete {
            proto: Protocol::Udp,
            internal,
            remote,
        }),
    );
    assert_eq!(
        (code, out.as_str()),
        (
            EXIT_OK,
            "deleted udp session 100.64.0.10:5000 -> 203.0.113.10:3478 and its mapping\n"
        )
    );
    server.shutdown();
}

#[test]
fn concurrent_clients_each_get_their_own_answers() {
    let (_dir, path) = temp_socket();
    let fake = Fake::default();
    let server = Server::bind(&path, fake.clone()).expect("bind");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path).expect("connect");
                for i in 0..25 {
                    let level = if (t + i) % 2 == 0 {
                        LogLevel::Info
                    } else {
                        LogLevel::Trace
                    };
                    let req = Request::LogLevel(LogLevelArgs { level });
                    // The fake echoes the level, so a reply out of order would show.
                    let Response::LogLevel(a) = c.request(&req).expect("reply") else {
                        panic!("wrong reply")
                    };
                    assert_eq!(a.level, level);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    assert_eq!(fake.seen().len(), 8 * 25);
    server.shutdown();
}
