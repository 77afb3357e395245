//! Several GiB over raw connections arrive byte-exact (UNIX and TCP loopback), landing through
//! io_uring in registered destination buffers; one sender feeds two consumers, one consumer
//! serves two producers.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, Landing, Offered, RawClient, RawConfig, RawServer,
};
use spate_ring::pattern;
use spate_runtime::{Arena, FixedBuf};

const CHUNK: usize = 4 << 20;
const SEED: u64 = 0x5eed;
const DEADLINE: Duration = Duration::from_secs(240);

struct Verify {
    arena: Arena,
    landed: BTreeSet<(u32, u64)>,
    bad: Vec<String>,
    closed: usize,
}

impl Landing for Verify {
    fn offer(&mut self, _c: ConnId, _key: &ChunkKey) -> Offered {
        match self.arena.alloc() {
            Some(b) => Offered::Grant(b.into()),
            None => Offered::Wait,
        }
    }
    fn landed(&mut self, _c: ConnId, key: &ChunkKey, dest: FixedBuf) {
        let FixedBuf::Arena(b) = dest else {
            self.bad.push("not an arena buffer".into());
            return;
        };
        let got = &b.as_slice()[..key.len as usize];
        if let Some(off) = pattern::check(SEED, key.stream as u64, key.offset, got) {
            self.bad
                .push(format!("stream {} wrong byte at {off}", key.stream));
        }
        if !self.landed.insert((key.stream, key.offset)) {
            self.bad.push(format!("duplicate {key:?}"));
        }
        // Dropping `b` frees the destination for the next grant.
    }
    fn closed(&mut self, _c: ConnId, error: Option<&spate_netlib::raw::RawError>) {
        if let Some(e) = error {
            self.bad.push(format!("connection error: {e}"));
        }
        self.closed += 1;
    }
}

/// Run a server on its own thread until `expect` chunks landed and `conns` connections closed.
fn serve(
    listen: Endpoint,
    expect: usize,
    conns: usize,
) -> (Endpoint, std::thread::JoinHandle<Verify>) {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut server = RawServer::new(RawConfig::default()).unwrap();
        let arena = Arena::new("t-raw-dst", CHUNK, 6).unwrap();
        server.driver().register(arena.region()).unwrap();
        let ep = server.listen(&listen).unwrap();
        tx.send(ep).unwrap();
        let mut v = Verify {
            arena,
            landed: BTreeSet::new(),
            bad: Vec::new(),
            closed: 0,
        };
        let t0 = Instant::now();
        while v.landed.len() < expect || v.closed < conns {
            assert!(
                t0.elapsed() < DEADLINE,
                "server: timed out, {} landed",
                v.landed.len()
            );
            server
                .turn(&mut v, Some(Duration::from_millis(100)))
                .unwrap();
            assert!(v.bad.is_empty(), "{:?}", v.bad);
        }
        v
    });
    (rx.recv().unwrap(), h)
}

/// Send `per_stream` bytes on each (endpoint, stream) target from one client, all at once.
fn send(targets: Vec<(Endpoint, u32)>, per_stream: u64) {
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let arena = Arena::new("t-raw-src", CHUNK, 8).unwrap();
    client.driver().register(arena.region()).unwrap();
    let mut next: Vec<u64> = vec![0; targets.len()];
    let mut acked = 0u64;
    let total_chunks = targets.len() as u64 * per_stream.div_ceil(CHUNK as u64);
    let mut events = Vec::new();
    let t0 = Instant::now();
    let mut conns = Vec::new();
    while acked < total_chunks {
        assert!(t0.elapsed() < DEADLINE, "client: timed out at {acked} acks");
        // Round-robin over targets while buffers are free.
        for (i, (ep, stream)) in targets.iter().enumerate() {
            if next[i] >= per_stream {
                continue;
            }
            let Some(mut b) = arena.alloc() else { break };
            let len = (per_stream - next[i]).min(CHUNK as u64);
            pattern::fill(
                SEED,
                *stream as u64,
                next[i],
                &mut b.as_mut_slice()[..len as usize],
            );
            let key = ChunkKey {
                job: 1,
                stream: *stream,
                offset: next[i],
                len,
            };
            let c = client
                .send_to(ep, &Via::any(), key, b.into(), 0)
                .map_err(|r| r.error)
                .unwrap();
            if !conns.contains(&c) {
                conns.push(c);
            }
            next[i] += len;
        }
        client
            .turn(Some(Duration::from_millis(100)), &mut events)
            .unwrap();
        for e in events.drain(..) {
            match e {
                ClientEvent::Acked { .. } => acked += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert_eq!(client.in_flight(), 0);
    for c in conns {
        client.close(c);
    }
    // Let the closes go out (the server counts them).
    let t1 = Instant::now();
    while client.connections() > 0 && t1.elapsed() < Duration::from_secs(10) {
        client
            .turn(Some(Duration::from_millis(10)), &mut events)
            .unwrap();
    }
}

fn check(v: &Verify, streams: &[u32], per_stream: u64) {
    assert!(v.bad.is_empty(), "{:?}", v.bad);
    let want: BTreeSet<(u32, u64)> = streams
        .iter()
        .flat_map(|s| (0..per_stream).step_by(CHUNK).map(move |o| (*s, o)))
        .collect();
    assert_eq!(v.landed, want);
    assert_eq!(v.arena.free_count(), 6, "every destination returned");
}

#[test]
fn two_gib_over_unix_one_sender_two_consumers() {
    let dir = std::env::temp_dir().join(format!("spate-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let per = 1u64 << 30;
    let (ep1, h1) = serve(
        Endpoint::Unix(dir.join("c1.sock")),
        (per / CHUNK as u64) as usize,
        1,
    );
    let (ep2, h2) = serve(
        Endpoint::Unix(dir.join("c2.sock")),
        (per / CHUNK as u64) as usize,
        1,
    );
    send(vec![(ep1, 0), (ep2, 1)], per);
    check(&h1.join().unwrap(), &[0], per);
    check(&h2.join().unwrap(), &[1], per);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_gib_over_tcp_two_senders_one_consumer() {
    // Odd total so the last chunk of each stream is short.
    let per = (1u64 << 30) - 12345;
    let chunks = per.div_ceil(CHUNK as u64) as usize;
    let (ep, h) = serve("tcp:127.0.0.1:0".parse().unwrap(), 2 * chunks, 2);
    let ep2 = ep.clone();
    let s1 = std::thread::spawn(move || send(vec![(ep2, 5)], per));
    send(vec![(ep, 6)], per);
    s1.join().unwrap();
    check(&h.join().unwrap(), &[5, 6], per);
}
