//! Issue 12, defect 3: a consumer that restarts between jobs must not abort the next job. A
//! producer's pooled connection to the consumer that went away is noticed and dropped while it
//! is idle, and the death of an established connection starts no reconnect back-off, so the
//! next chunks go over a fresh connection to the new consumer process. Real sockets, a real
//! restart (the first server is dropped, a second one listens on the same path).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, Landing, Offered, RawClient, RawConfig, RawError, RawServer,
};
use spate_runtime::{Arena, FixedBuf};

const CHUNK: usize = 256 << 10;
const DEADLINE: Duration = Duration::from_secs(30);
/// What the scheduler allows before it aborts a job (`chunk N failed 3 times`).
const ATTEMPTS: u32 = 3;

struct Count {
    arena: Arena,
    landed: Arc<AtomicUsize>,
}

impl Landing for Count {
    fn offer(&mut self, _c: ConnId, _k: &ChunkKey) -> Offered {
        self.arena
            .alloc()
            .map_or(Offered::Wait, |b| Offered::Grant(b.into()))
    }
    fn landed(&mut self, _c: ConnId, _k: &ChunkKey, _d: FixedBuf) {
        self.landed.fetch_add(1, Ordering::SeqCst);
    }
    fn closed(&mut self, _c: ConnId, _e: Option<&RawError>) {}
}

/// A consumer serving `ep` on its own thread until `stop`; counts what lands.
struct Consumer {
    stop: Arc<AtomicBool>,
    landed: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Consumer {
    fn start(ep: &Endpoint) -> Consumer {
        let (stop, landed) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (s2, l2, ep) = (stop.clone(), landed.clone(), ep.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut server = RawServer::new(RawConfig::default()).unwrap();
            let arena = Arena::new("t-reconnect-dst", CHUNK, 4).unwrap();
            server.listen(&ep).unwrap();
            tx.send(()).unwrap();
            let mut l = Count { arena, landed: l2 };
            while !s2.load(Ordering::SeqCst) {
                server
                    .turn(&mut l, Some(Duration::from_millis(10)))
                    .unwrap();
            }
            // Dropping the server closes the listener and every connection: the process is
            // gone as far as the producer can tell.
        });
        rx.recv().unwrap();
        Consumer {
            stop,
            landed,
            thread: Some(thread),
        }
    }

    fn kill(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

/// Deliver one chunk per stream of `job` as the producer and scheduler do: a chunk that fails
/// (or cannot be sent) is sent again, up to [`ATTEMPTS`] times. Returns each chunk's attempts.
fn job(client: &mut RawClient, arena: &Arena, ep: &Endpoint, job: u64, streams: u32) -> Vec<u32> {
    let mut attempts: BTreeMap<u32, u32> = BTreeMap::new();
    let mut todo: Vec<u32> = (0..streams).collect();
    let mut acked = 0;
    let mut events = Vec::new();
    let t0 = Instant::now();
    while acked < streams {
        assert!(t0.elapsed() < DEADLINE, "job {job}: timed out");
        for stream in todo.drain(..) {
            let n = attempts.entry(stream).or_insert(0);
            *n += 1;
            assert!(
                *n <= ATTEMPTS,
                "job {job}: stream {stream} failed {ATTEMPTS} times"
            );
            let key = ChunkKey {
                job,
                stream,
                offset: 0,
                len: CHUNK as u64,
            };
            let b = arena.alloc().expect("a source buffer");
            if let Err(r) = client.send_to(ep, &Via::any(), key, b.into(), 0) {
                panic!(
                    "job {job}: stream {stream} (attempt {n}) refused at once: {}",
                    r.error
                );
            }
        }
        client
            .turn(Some(Duration::from_millis(20)), &mut events)
            .unwrap();
        for e in events.drain(..) {
            match e {
                ClientEvent::Acked { .. } => acked += 1,
                ClientEvent::Failed { key, .. } => todo.push(key.stream),
                ClientEvent::Refused { key, reason, .. } => panic!("{key:?} refused: {reason:?}"),
                ClientEvent::Closed { .. } => {}
            }
        }
    }
    attempts.into_values().collect()
}

#[test]
fn a_consumer_restarted_between_jobs_gets_the_next_job_whole() {
    let dir = std::env::temp_dir().join(format!("spate-reconnect-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ep = Endpoint::Unix(dir.join("data.sock"));
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let arena = Arena::new("t-reconnect-src", CHUNK, 8).unwrap();

    // Job 1 on the first consumer process; then it restarts.
    let c = Consumer::start(&ep);
    assert_eq!(job(&mut client, &arena, &ep, 1, 4), vec![1; 4]);
    assert_eq!(client.connections(), 1, "the connection stays pooled");
    c.kill();
    // Between jobs the producer notices that its idle pooled connection is gone.
    let t0 = Instant::now();
    let mut events = Vec::new();
    while client.connections() > 0 {
        assert!(
            t0.elapsed() < DEADLINE,
            "the idle pooled connection to the dead consumer was never noticed"
        );
        client
            .turn(Some(Duration::from_millis(20)), &mut events)
            .unwrap();
    }
    let c = Consumer::start(&ep);
    // Job 2: every chunk goes through at the first attempt.
    assert_eq!(job(&mut client, &arena, &ep, 2, 4), vec![1; 4]);
    assert_eq!(c.landed.load(Ordering::SeqCst), 4);

    // The same restart with the next job's chunks sent before the producer had a chance to
    // notice: the chunks on the dead connection fail once, and go over a fresh connection at
    // once (no back-off after an established connection died).
    c.kill();
    let c = Consumer::start(&ep);
    let tries = job(&mut client, &arena, &ep, 3, 4);
    assert!(tries.iter().all(|n| *n <= 2), "{tries:?}");
    assert_eq!(c.landed.load(Ordering::SeqCst), 4);
    c.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
