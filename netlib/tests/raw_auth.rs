//! Authenticated raw connections over real sockets (UNIX and TCP): a producer with the cluster
//! secret lands its chunks and is known by its node name; a wrong secret, a producer that does
//! not authenticate, a garbage peer and a silent one land nothing, and both ends report the
//! exact error.

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spate_netlib::auth::Secret;
use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, Landing, Offered, RawAuth, RawClient, RawConfig, RawError,
    RawServer,
};
use spate_ring::pattern;
use spate_runtime::{Arena, FixedBuf};

const CHUNK: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(60);

fn secret(s: &str) -> Secret {
    Secret::from_bytes(s.as_bytes(), "test").unwrap()
}

#[derive(Default)]
struct Seen {
    /// (conn, name) in the order they were identified.
    names: Vec<(ConnId, String)>,
    /// Chunks landed, with the name of the connection they came on.
    landed: Vec<(ChunkKey, Option<String>)>,
    closed: Vec<Option<String>>,
    bad: Vec<String>,
}

struct Recorder {
    arena: Arena,
    seen: Seen,
}

impl Landing for Recorder {
    fn offer(&mut self, conn: ConnId, key: &ChunkKey) -> Offered {
        if !self.seen.names.iter().any(|(c, _)| *c == conn) {
            self.seen
                .bad
                .push(format!("offer {key:?} before the hello"));
        }
        self.arena
            .alloc()
            .map_or(Offered::Wait, |b| Offered::Grant(b.into()))
    }
    fn landed(&mut self, conn: ConnId, key: &ChunkKey, dest: FixedBuf) {
        let FixedBuf::Arena(b) = dest else {
            return;
        };
        if pattern::check(
            1,
            u64::from(key.stream),
            key.offset,
            &b.as_slice()[..key.len as usize],
        )
        .is_some()
        {
            self.seen.bad.push(format!("wrong bytes in {key:?}"));
        }
        let name = self
            .seen
            .names
            .iter()
            .find(|(c, _)| *c == conn)
            .map(|(_, n)| n.clone());
        self.seen.landed.push((*key, name));
    }
    fn identified(&mut self, conn: ConnId, name: &str) {
        self.seen.names.push((conn, name.to_string()));
    }
    fn closed(&mut self, _conn: ConnId, error: Option<&RawError>) {
        self.seen.closed.push(error.map(|e| e.to_string()));
    }
}

/// A consumer with secret `s` on a UNIX and a TCP endpoint, until `closes` connections closed.
fn consumer(
    dir: &std::path::Path,
    s: &Secret,
    closes: usize,
) -> (Vec<Endpoint>, std::thread::JoinHandle<Seen>) {
    let (tx, rx) = mpsc::channel();
    let cfg = RawConfig {
        auth: Some(RawAuth::new(s.clone(), "printer").unwrap()),
        handshake_timeout: Duration::from_millis(500),
        ..RawConfig::default()
    };
    let unix = Endpoint::Unix(dir.join("data.sock"));
    let h = std::thread::spawn(move || {
        let mut server = RawServer::new(cfg).unwrap();
        let arena = Arena::new("t-auth-dst", CHUNK, 4).unwrap();
        server.driver().register(arena.region()).unwrap();
        let eps = vec![
            server.listen(&unix).unwrap(),
            server.listen(&"tcp:127.0.0.1:0".parse().unwrap()).unwrap(),
        ];
        tx.send(eps).unwrap();
        let mut r = Recorder {
            arena,
            seen: Seen::default(),
        };
        let t0 = Instant::now();
        while r.seen.closed.len() < closes {
            assert!(
                t0.elapsed() < DEADLINE,
                "consumer timed out: {:?}",
                r.seen.closed
            );
            server
                .turn(&mut r, Some(Duration::from_millis(50)))
                .unwrap();
        }
        r.seen
    });
    (rx.recv().unwrap(), h)
}

/// Send `n` pattern chunks of stream `stream` to `ep`; returns every event until each chunk is
/// acked, refused or failed and the connection is closed.
fn produce(ep: &Endpoint, auth: Option<RawAuth>, stream: u32, n: u64) -> Vec<ClientEvent> {
    let mut client = RawClient::new(RawConfig {
        auth,
        handshake_timeout: Duration::from_secs(5),
        ..RawConfig::default()
    })
    .unwrap();
    let arena = Arena::new("t-auth-src", CHUNK, n as usize).unwrap();
    let mut conn = None;
    for i in 0..n {
        let mut b = arena.alloc().unwrap();
        let off = i * CHUNK as u64;
        pattern::fill(1, u64::from(stream), off, b.as_mut_slice());
        let key = ChunkKey {
            job: 1,
            stream,
            offset: off,
            len: CHUNK as u64,
        };
        let c = client
            .send_to(ep, &Via::any(), key, b.into(), 0)
            .map_err(|r| r.error)
            .unwrap();
        conn = Some(c);
    }
    let mut events = Vec::new();
    let mut answered = 0;
    let t0 = Instant::now();
    while answered < n || client.connections() > 0 {
        assert!(t0.elapsed() < DEADLINE, "producer timed out: {events:?}");
        if answered == n
            && let Some(c) = conn.take()
        {
            client.close(c);
        }
        let mut ev = Vec::new();
        client
            .turn(Some(Duration::from_millis(50)), &mut ev)
            .unwrap();
        answered += ev
            .iter()
            .filter(|e| !matches!(e, ClientEvent::Closed { .. }))
            .count() as u64;
        events.extend(ev);
    }
    events
}

fn tmp(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("spate-rawauth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn closed_errors(ev: &[ClientEvent]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            ClientEvent::Closed { error, .. } => error.clone(),
            _ => None,
        })
        .collect()
}

#[test]
fn the_cluster_secret_admits_a_named_producer_over_unix_and_tcp() {
    let dir = tmp("ok");
    let s = secret("the cluster secret, 32 bytes long");
    let (eps, h) = consumer(&dir, &s, 2);
    for (i, ep) in eps.iter().enumerate() {
        let auth = RawAuth::new(s.clone(), &format!("rip{i}")).unwrap();
        let ev = produce(ep, Some(auth), i as u32, 3);
        let acked = ev
            .iter()
            .filter(|e| matches!(e, ClientEvent::Acked { .. }))
            .count();
        assert_eq!(acked, 3, "{ev:?}");
        assert_eq!(closed_errors(&ev), Vec::<String>::new());
    }
    let seen = h.join().unwrap();
    assert!(seen.bad.is_empty(), "{:?}", seen.bad);
    let names: Vec<&str> = seen.names.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["rip0", "rip1"]);
    assert_eq!(seen.landed.len(), 6);
    for (k, name) in &seen.landed {
        assert_eq!(name.as_deref(), Some(format!("rip{}", k.stream).as_str()));
    }
    assert_eq!(seen.closed, vec![None, None]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_secret_lands_nothing_and_both_ends_say_so() {
    let dir = tmp("wrong");
    let (eps, h) = consumer(&dir, &secret("the cluster secret, 32 bytes long"), 2);
    let wrong = RawAuth::new(secret("not the secret of this cluster!"), "intruder").unwrap();
    let why = "raw connection authentication: authentication failed: the peer does not share \
               this node's cluster secret";
    for ep in &eps {
        let ev = produce(ep, Some(wrong.clone()), 0, 2);
        let failed = ev
            .iter()
            .filter(|e| matches!(e, ClientEvent::Failed { .. }))
            .count();
        assert_eq!(failed, 2, "{ev:?}");
        let errs = closed_errors(&ev);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].starts_with(why), "{errs:?}");
    }
    let seen = h.join().unwrap();
    assert!(seen.landed.is_empty() && seen.names.is_empty());
    for e in &seen.closed {
        assert!(e.as_deref().is_some_and(|e| e.starts_with(why)), "{e:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn producers_without_a_handshake_garbage_and_silent_peers_are_refused() {
    let dir = tmp("noauth");
    let (eps, h) = consumer(&dir, &secret("the cluster secret, 32 bytes long"), 3);
    // 1. A producer that does not authenticate: raw frames where a handshake belongs.
    let ev = produce(&eps[0], None, 0, 1);
    assert!(
        ev.iter().any(|e| matches!(e, ClientEvent::Failed { .. })),
        "{ev:?}"
    );
    let errs = closed_errors(&ev);
    assert_eq!(errs.len(), 1);
    // It reads the consumer's handshake frame as a raw frame.
    assert!(
        errs[0].starts_with("malformed raw frame: bad magic"),
        "{errs:?}"
    );
    // 2. Garbage on the TCP port.
    let Endpoint::Tcp { .. } = &eps[1] else {
        panic!()
    };
    let addr = eps[1].resolve().unwrap()[0];
    let mut g = std::net::TcpStream::connect(addr).unwrap();
    g.write_all(&[0x5a; 200]).unwrap();
    // 3. A peer that connects and stays silent.
    let silent = std::net::TcpStream::connect(addr).unwrap();
    let seen = h.join().unwrap();
    drop((g, silent));
    assert!(seen.landed.is_empty() && seen.names.is_empty());
    let mut closed: Vec<String> = seen
        .closed
        .into_iter()
        .map(|e| e.unwrap_or_default())
        .collect();
    closed.sort();
    assert_eq!(closed.len(), 3);
    let bad_magic = "raw connection authentication: handshake frame: bad frame magic";
    let n_magic = closed.iter().filter(|e| e.starts_with(bad_magic)).count();
    assert_eq!(n_magic, 2, "the raw producer and the garbage: {closed:?}");
    assert!(
        closed
            .iter()
            .any(|e| e.starts_with("no authenticated hello within 500ms")),
        "{closed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
