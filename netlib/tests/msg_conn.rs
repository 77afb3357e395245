//! MsgConn over real sockets (UNIX pair, TCP loopback) with a thread per side.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use spate_netlib::auth::{AuthError, Handshake, Peer, Role, Secret, Side};
use spate_netlib::frame::{FrameError, encode_message};
use spate_netlib::msg::{MsgConfig, MsgConn, MsgError};
use spate_netlib::proto::*;

fn secret(s: &str) -> Secret {
    Secret::from_bytes(s.as_bytes(), "test").unwrap()
}
const S1: &str = "0123456789abcdef-cluster";
const S2: &str = "0123456789abcdef-CLUSTER";

fn sequence() -> Vec<Message> {
    vec![
        Message::Join(NodeInfo {
            name: "node-a".into(),
            host: HostId(42),
            roles: NodeRoles {
                producer: true,
                consumer: true,
            },
            cores: 2,
            interfaces: vec![Interface {
                name: "lo".into(),
                addr: "127.0.0.1".parse().unwrap(),
            }],
            compute: ComputeCapacity {
                cores: 2,
                bytes_per_sec: 1 << 30,
            },
            ring_budget: 1 << 30,
            data_endpoints: vec![DataEndpoint::Tcp {
                addr: "127.0.0.1:7001".parse().unwrap(),
                interface: Some("lo".into()),
            }],
            handoff_socket: Some("/run/spate/a.sock".into()),
            nic_bytes_per_sec: 0,
            ports: 0,
            hugepages: Default::default(),
        }),
        Message::Heartbeat,
        // Larger than the 64 KiB read buffer: needs several reads.
        Message::InputChunk {
            job: JobId(1),
            name: "img".into(),
            offset: 0,
            data: (0..INPUT_CHUNK_MAX).map(|i| (i % 251) as u8).collect(),
            last: true,
        },
        Message::TaskDone {
            task: TaskId(9),
            job: JobId(1),
            kind: TaskKind::Compute,
            bytes: 1 << 20,
            micros: 1234,
            compute_micros: 0,
            cpu_micros: 0,
            pieces: vec![],
        },
        Message::Quit {
            reason: "bye".into(),
        },
    ]
}

/// Server side of the echo test: answers every message with Ack { job: i } in order, until
/// the client closes, then returns what it got and how the end looked.
fn echo_server<S: std::io::Read + Write>(mut conn: MsgConn<S>) -> (Vec<Message>, MsgError) {
    let mut got = Vec::new();
    loop {
        match conn.recv() {
            Ok(m) => {
                got.push(m);
                conn.send(&Message::Ack {
                    job: JobId(got.len() as u64),
                })
                .unwrap();
            }
            Err(e) => return (got, e),
        }
    }
}

fn client_session<S: std::io::Read + Write>(mut conn: MsgConn<S>) {
    for (i, m) in sequence().iter().enumerate() {
        conn.send(m).unwrap();
        assert_eq!(
            conn.recv().unwrap(),
            Message::Ack {
                job: JobId(i as u64 + 1)
            }
        );
    }
    // Dropping `conn` closes the socket: the server sees a clean EOF.
}

#[test]
fn unix_pair_handshake_and_messages() {
    let (a, b) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let server = s.spawn(|| {
            let conn = MsgConn::server(b, &secret(S1), Role::Scheduler).unwrap();
            assert_eq!(
                conn.peer(),
                Peer {
                    role: Role::Daemon,
                    version: PROTOCOL_VERSION
                }
            );
            echo_server(conn)
        });
        let conn = MsgConn::client(a, &secret(S1), Role::Daemon).unwrap();
        assert_eq!(conn.peer().role, Role::Scheduler);
        client_session(conn);
        let (got, end) = server.join().unwrap();
        assert_eq!(got, sequence());
        assert!(matches!(end, MsgError::Closed), "{end:?}");
    });
}

#[test]
fn tcp_loopback_handshake_and_messages() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::scope(|s| {
        let server = s.spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let conn =
                MsgConn::server_with(stream, &secret(S1), Role::Scheduler, &MsgConfig::default())
                    .unwrap();
            assert_eq!(conn.peer().role, Role::User);
            echo_server(conn)
        });
        let stream = TcpStream::connect(addr).unwrap();
        let conn =
            MsgConn::client_with(stream, &secret(S1), Role::User, &MsgConfig::default()).unwrap();
        client_session(conn);
        let (got, end) = server.join().unwrap();
        assert_eq!(got, sequence());
        assert!(matches!(end, MsgError::Closed), "{end:?}");
    });
}

#[test]
fn wrong_secret_fails_on_both_ends() {
    let (a, b) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let server = s.spawn(|| MsgConn::server(b, &secret(S1), Role::Scheduler).map(|_| ()));
        let client = MsgConn::client(a, &secret(S2), Role::Daemon).map(|_| ());
        assert!(
            matches!(client, Err(MsgError::Auth(AuthError::WrongSecret))),
            "{client:?}"
        );
        let server = server.join().unwrap();
        assert!(
            matches!(server, Err(MsgError::Auth(AuthError::WrongSecret))),
            "{server:?}"
        );
    });
}

#[test]
fn version_mismatch_fails_on_both_ends() {
    let (a, b) = UnixStream::pair().unwrap();
    let newer = PROTOCOL_VERSION + 1;
    thread::scope(|s| {
        let server = s.spawn(|| {
            let hs =
                Handshake::with_version(Side::Server, &secret(S1), Role::Scheduler, [9; 32], newer);
            MsgConn::handshake(b, hs, &MsgConfig::default()).map(|_| ())
        });
        let client = MsgConn::client(a, &secret(S1), Role::Daemon).map(|_| ());
        match client {
            Err(MsgError::Auth(AuthError::VersionMismatch { ours, theirs })) => {
                assert_eq!((ours, theirs), (PROTOCOL_VERSION, newer));
            }
            other => panic!("{other:?}"),
        }
        match server.join().unwrap() {
            Err(MsgError::Auth(AuthError::VersionMismatch { ours, theirs })) => {
                assert_eq!((ours, theirs), (newer, PROTOCOL_VERSION));
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn peer_leaving_mid_frame_is_truncated_and_sends_fail_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let server = s.spawn(|| {
            let mut conn = MsgConn::server(b, &secret(S1), Role::Scheduler).unwrap();
            let first = conn.recv().unwrap();
            let second = conn.recv().map(|_| ()).unwrap_err();
            // The connection stays failed with the same error.
            let third = conn.recv().map(|_| ()).unwrap_err();
            (first, second, third, conn)
        });
        let mut conn = MsgConn::client(a, &secret(S1), Role::Daemon).unwrap();
        conn.send(&Message::Heartbeat).unwrap();
        let frame = encode_message(&Message::Ready { job: JobId(300) }).unwrap();
        conn.get_mut().write_all(&frame[..frame.len() - 1]).unwrap();
        drop(conn);
        let (first, second, third, mut conn) = server.join().unwrap();
        assert_eq!(first, Message::Heartbeat);
        let truncated = FrameError::Truncated {
            have: frame.len() - 1,
            need: frame.len(),
        };
        assert!(
            matches!(&second, MsgError::Frame(e) if *e == truncated),
            "{second:?}"
        );
        assert!(
            matches!(&third, MsgError::Frame(e) if *e == truncated),
            "{third:?}"
        );
        // Writing to the departed peer is a clean Closed too.
        let sent = conn.send(&Message::Heartbeat);
        assert!(matches!(sent, Err(MsgError::Closed)), "{sent:?}");
    });
}

#[test]
fn recv_timeout_keeps_partial_frames() {
    let (a, b) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let server = s.spawn(|| MsgConn::server(b, &secret(S1), Role::Scheduler).unwrap());
        let mut client = MsgConn::client(a, &secret(S1), Role::Daemon).unwrap();
        let mut server = server.join().unwrap();

        let t0 = Instant::now();
        assert_eq!(
            server.recv_timeout(Duration::from_millis(50)).unwrap(),
            None
        );
        assert!(t0.elapsed() >= Duration::from_millis(50));

        let frame = encode_message(&Message::Cancel { job: JobId(5) }).unwrap();
        client.get_mut().write_all(&frame[..7]).unwrap();
        assert_eq!(
            server.recv_timeout(Duration::from_millis(20)).unwrap(),
            None
        );
        client.get_mut().write_all(&frame[7..]).unwrap();
        assert_eq!(
            server.recv_timeout(Duration::from_secs(30)).unwrap(),
            Some(Message::Cancel { job: JobId(5) })
        );
        // Plain blocking recv still works afterwards.
        client.send(&Message::Heartbeat).unwrap();
        assert_eq!(server.recv().unwrap(), Message::Heartbeat);
        drop(client);
        assert!(matches!(
            server.recv_timeout(Duration::from_secs(30)),
            Err(MsgError::Closed)
        ));
    });
}

#[test]
fn silent_client_times_out_the_handshake() {
    let (_a, b) = UnixStream::pair().unwrap();
    let config = MsgConfig {
        handshake_timeout: Some(Duration::from_millis(100)),
        ..MsgConfig::default()
    };
    let t0 = Instant::now();
    let r = MsgConn::server_with(b, &secret(S1), Role::Scheduler, &config).map(|_| ());
    assert!(
        matches!(r, Err(MsgError::Timeout(d)) if d == Duration::from_millis(100)),
        "{r:?}"
    );
    assert!(t0.elapsed() >= Duration::from_millis(100));
}

#[test]
fn non_spate_peer_is_bad_magic() {
    let (mut a, b) = UnixStream::pair().unwrap();
    a.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    let r = MsgConn::server(b, &secret(S1), Role::Scheduler).map(|_| ());
    assert!(
        matches!(&r, Err(MsgError::Frame(FrameError::BadMagic { found })) if found == b"GET "),
        "{r:?}"
    );
}

#[test]
fn peer_gone_before_handshake_is_closed() {
    let (a, b) = UnixStream::pair().unwrap();
    drop(a);
    let r = MsgConn::client(b, &secret(S1), Role::Daemon).map(|_| ());
    assert!(matches!(r, Err(MsgError::Closed)), "{r:?}");
}

#[test]
fn split_halves_work_from_two_threads() {
    let (a, b) = UnixStream::pair().unwrap();
    thread::scope(|s| {
        let server = s.spawn(|| {
            let conn = MsgConn::server(b, &secret(S1), Role::Scheduler).unwrap();
            echo_server(conn)
        });
        let conn = MsgConn::client(a, &secret(S1), Role::Daemon).unwrap();
        let (mut rx, mut tx) = conn.split().unwrap();
        assert_eq!(rx.peer().role, Role::Scheduler);
        assert_eq!(tx.peer().role, Role::Scheduler);
        let n = sequence().len();
        let receiver = s.spawn(move || (0..n).map(|_| rx.recv().unwrap()).collect::<Vec<_>>());
        for m in sequence() {
            tx.send(&m).unwrap();
        }
        let acks = receiver.join().unwrap();
        let expected: Vec<Message> = (1..=n as u64)
            .map(|i| Message::Ack { job: JobId(i) })
            .collect();
        assert_eq!(acks, expected);
        drop(tx);
        let (got, end) = server.join().unwrap();
        assert_eq!(got, sequence());
        assert!(matches!(end, MsgError::Closed), "{end:?}");
    });
}
