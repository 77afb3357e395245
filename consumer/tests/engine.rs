//! The consumer engine without a scheduler: raw senders deliver pattern chunks out of order
//! from several connections, a ring reader attached through the hand-off socket verifies every
//! byte in order; a ring smaller than the stream applies backpressure; duplicates land
//! idempotently; unknown and released streams are refused.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use spate_consumer::{ConsumerEngine, EngineConfig};
use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{ChunkKey, ClientEvent, RawClient, RawConfig, RefuseReason};
use spate_ring::{AbortReason, Acquired, ReadError, ReaderStatus, handoff, pattern};
use spate_runtime::Arena;

const SEED: u64 = 7;
const DEADLINE: Duration = Duration::from_secs(60);

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-cons-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn engine(dir: &std::path::Path, tcp: bool) -> ConsumerEngine {
    let mut listen = vec![Endpoint::Unix(dir.join("data.sock"))];
    if tcp {
        listen.push("tcp:127.0.0.1:0".parse().unwrap());
    }
    ConsumerEngine::start(EngineConfig::new(listen, dir.join("handoff.sock"))).unwrap()
}

/// What happened to one chunk.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Acked,
    Refused(RefuseReason),
    Failed,
}

/// Send `chunks` (offset, len) of `stream` of `job` to `ep` from one connection, offering as
/// many at once as the buffers allow; returns each chunk's outcome in the order given.
fn send(ep: &Endpoint, job: u64, stream: u32, chunks: &[(u64, u64)]) -> Vec<Outcome> {
    let max = chunks.iter().map(|c| c.1).max().unwrap_or(1) as usize;
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let arena = Arena::new("t-cons-src", max, 6).unwrap();
    let mut out: Vec<Option<Outcome>> = chunks.iter().map(|_| None).collect();
    let mut next = 0;
    let mut events = Vec::new();
    let t0 = Instant::now();
    while out.iter().any(Option::is_none) {
        assert!(t0.elapsed() < DEADLINE, "sender timed out: {out:?}");
        while next < chunks.len() {
            let Some(mut b) = arena.alloc() else { break };
            let (off, len) = chunks[next];
            pattern::fill(
                SEED,
                u64::from(stream),
                off,
                &mut b.as_mut_slice()[..len as usize],
            );
            let key = ChunkKey {
                job,
                stream,
                offset: off,
                len,
            };
            client
                .send_to(ep, &Via::any(), key, b.into(), 0)
                .map_err(|r| r.error)
                .unwrap();
            next += 1;
        }
        client
            .turn(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        for e in events.drain(..) {
            let (key, o) = match e {
                ClientEvent::Acked { key, .. } => (key, Outcome::Acked),
                ClientEvent::Refused { key, reason, .. } => (key, Outcome::Refused(reason)),
                ClientEvent::Failed { key, .. } => (key, Outcome::Failed),
                ClientEvent::Closed { .. } => continue,
            };
            let i = chunks
                .iter()
                .position(|c| *c == (key.offset, key.len))
                .unwrap();
            out[i] = Some(o);
        }
    }
    out.into_iter().map(Option::unwrap).collect()
}

/// Read a stream to its end, checking every byte in order; returns the byte count.
fn read_all(path: &std::path::Path, key: &str, stream: u32, max: usize) -> Result<u64, ReadError> {
    let mut r = handoff::connect(path, key).unwrap();
    let mut n = 0u64;
    loop {
        let len = match r.acquire(1, max, Some(DEADLINE))? {
            Acquired::Data(b) => {
                assert_eq!(b.offset, n);
                assert_eq!(
                    pattern::check(SEED, u64::from(stream), b.offset, b.data),
                    None,
                    "wrong byte"
                );
                b.data.len()
            }
            Acquired::End => return Ok(n),
            Acquired::TimedOut => panic!("reader timed out at {n}"),
        };
        n += len as u64;
        r.release(len)?;
    }
}

fn chunks(total: u64, size: u64) -> Vec<(u64, u64)> {
    (0..total)
        .step_by(size as usize)
        .map(|o| (o, size.min(total - o)))
        .collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn out_of_order_chunks_from_two_connections_arrive_in_order() {
    let dir = tmpdir("ooo");
    let eng = engine(&dir, true);
    let total = (6u64 << 20) + 12_345;
    let a = eng.alloc(1, 3, total, total).unwrap();
    assert!(a.capacity >= total);
    let all = chunks(total, 256 << 10);
    // Odd chunks in reverse order over UNIX; even chunks shuffled over TCP.
    let odd: Vec<_> = all.iter().skip(1).step_by(2).rev().copied().collect();
    let mut even: Vec<_> = all.iter().step_by(2).copied().collect();
    even.rotate_left(5);
    even.swap(0, 3);
    let (ux, tcp) = (eng.endpoints()[0].clone(), eng.endpoints()[1].clone());
    assert!(matches!(tcp, Endpoint::Tcp { .. }));
    let t1 = std::thread::spawn(move || send(&ux, 1, 3, &odd));
    let t2 = std::thread::spawn(move || send(&tcp, 1, 3, &even));
    let n = read_all(eng.handoff_path(), &a.key, 3, 1 << 20).unwrap();
    assert_eq!(n, total);
    assert!(t1.join().unwrap().iter().all(|o| *o == Outcome::Acked));
    assert!(t2.join().unwrap().iter().all(|o| *o == Outcome::Acked));
    let s = eng.streams();
    assert_eq!(s.len(), 1);
    assert_eq!(
        (s[0].frontier, s[0].read_pos, s[0].closed),
        (total, total, true)
    );
    drop(eng);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ring_smaller_than_the_stream_delivers_everything_while_the_reader_reads() {
    let dir = tmpdir("bp");
    let eng = engine(&dir, false);
    let total = (24u64 << 20) + 777;
    let a = eng.alloc(2, 0, 2 << 20, total).unwrap();
    assert_eq!(a.capacity, 2 << 20, "ring of 2 MiB for a 24 MiB stream");
    let all = chunks(total, 512 << 10);
    // Two connections, each with its chunks interleaved: both run far ahead of the reader.
    let first: Vec<_> = all.iter().step_by(2).copied().collect();
    let second: Vec<_> = all.iter().skip(1).step_by(2).copied().collect();
    let (e1, e2) = (eng.endpoints()[0].clone(), eng.endpoints()[0].clone());
    let t1 = std::thread::spawn(move || send(&e1, 2, 0, &first));
    let t2 = std::thread::spawn(move || send(&e2, 2, 0, &second));
    // Nothing can land beyond the ring before the reader attaches.
    wait_until("the ring to fill", || {
        eng.streams()[0].frontier >= (2 << 20) - (512 << 10)
    });
    assert!(eng.streams()[0].frontier <= 2 << 20);
    let n = read_all(eng.handoff_path(), &a.key, 0, 256 << 10).unwrap();
    assert_eq!(n, total);
    assert!(t1.join().unwrap().iter().all(|o| *o == Outcome::Acked));
    assert!(t2.join().unwrap().iter().all(|o| *o == Outcome::Acked));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn duplicates_land_idempotently_and_unknown_or_released_streams_are_refused() {
    let dir = tmpdir("dup");
    let eng = engine(&dir, false);
    let ep = eng.endpoints()[0].clone();
    let total = 1u64 << 20;
    let a = eng.alloc(3, 1, total, total).unwrap();
    let c = 64u64 << 10;
    // First half, then a whole duplicate and a range overlapping the frontier.
    let first: Vec<_> = chunks(total / 2, c);
    assert!(send(&ep, 3, 1, &first).iter().all(|o| *o == Outcome::Acked));
    wait_until("the first half", || eng.streams()[0].frontier == total / 2);
    let again = vec![(0, c), (total / 2 - c / 2, c)];
    assert_eq!(
        send(&ep, 3, 1, &again),
        vec![Outcome::Acked, Outcome::Acked]
    );
    assert_eq!(eng.streams()[0].frontier, total / 2 + c / 2);
    let rest: Vec<_> = chunks(total, c)
        .into_iter()
        .filter(|(o, _)| *o >= total / 2 + c)
        .chain([(total / 2 + c / 2, c / 2)])
        .collect();
    assert!(send(&ep, 3, 1, &rest).iter().all(|o| *o == Outcome::Acked));
    assert_eq!(
        read_all(eng.handoff_path(), &a.key, 1, 1 << 20).unwrap(),
        total
    );

    // Unknown stream, a range beyond the stream, then a released stream.
    assert_eq!(
        send(&ep, 99, 0, &[(0, 100)]),
        vec![Outcome::Refused(RefuseReason::UnknownStream)]
    );
    let b = eng.alloc(4, 0, 4 << 20, 1 << 20).unwrap();
    assert_eq!(
        send(&ep, 4, 0, &[(1 << 20, 100)]),
        vec![Outcome::Refused(RefuseReason::OutOfRange)]
    );
    let mut r = handoff::connect(eng.handoff_path(), &b.key).unwrap();
    wait_until("the reader to be seen", || {
        eng.streams()
            .iter()
            .any(|s| s.job == 4 && s.reader == ReaderStatus::Attached)
    });
    assert_eq!(eng.release(4, AbortReason::Cancelled), 1);
    assert_eq!(
        r.acquire(1, 100, Some(DEADLINE)).unwrap_err(),
        ReadError::Aborted(AbortReason::Cancelled)
    );
    assert_eq!(
        send(&ep, 4, 0, &[(0, 100)]),
        vec![Outcome::Refused(RefuseReason::UnknownStream)]
    );
    assert!(eng.streams().iter().all(|s| s.job != 4));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Issue 12, defect 2: a chunk re-sent after its producer died may arrive after its stream
/// completed (every byte landed, the ring finished). It must be acked as already landed, not
/// refused as aborted: the job delivered every byte.
#[test]
fn a_chunk_resent_after_its_stream_completed_is_acked() {
    let dir = tmpdir("late");
    let eng = engine(&dir, false);
    let ep = eng.endpoints()[0].clone();
    let total = 1u64 << 20;
    let a = eng.alloc(6, 2, total, total).unwrap();
    let c = 128u64 << 10;
    assert!(
        send(&ep, 6, 2, &chunks(total, c))
            .iter()
            .all(|o| *o == Outcome::Acked)
    );
    wait_until("the stream to finish", || eng.streams()[0].closed);
    // The late copies: before anyone read, after the reader read everything.
    assert_eq!(
        send(&ep, 6, 2, &[(3 * c, c), (total - c, c)]),
        vec![Outcome::Acked, Outcome::Acked]
    );
    assert_eq!(
        read_all(eng.handoff_path(), &a.key, 2, 1 << 20).unwrap(),
        total
    );
    assert_eq!(send(&ep, 6, 2, &[(0, c)]), vec![Outcome::Acked]);
    let s = eng.streams();
    assert_eq!(
        (s[0].frontier, s[0].read_pos, s[0].closed),
        (total, total, true)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn allocation_errors_name_the_problem() {
    let dir = tmpdir("alloc");
    let mut cfg = EngineConfig::new(
        vec![Endpoint::Unix(dir.join("data.sock"))],
        dir.join("handoff.sock"),
    );
    cfg.ring_budget = 4 << 20;
    let eng = ConsumerEngine::start(cfg).unwrap();
    eng.alloc(1, 0, 4 << 20, 100 << 20).unwrap();
    let e = eng.alloc(1, 1, 2 << 20, 100 << 20).unwrap_err();
    assert!(matches!(
        e,
        spate_consumer::ConsumerError::Budget {
            asked: 2097152,
            used: 4194304,
            budget: 4194304
        }
    ));
    assert!(e.to_string().contains("--ring-budget"), "{e}");
    assert!(matches!(
        eng.alloc(1, 0, 1 << 20, 1 << 20).unwrap_err(),
        spate_consumer::ConsumerError::Exists { job: 1, stream: 0 }
    ));
    assert!(matches!(
        eng.alloc(2, 0, 0, 1).unwrap_err(),
        spate_consumer::ConsumerError::ZeroCapacity { job: 2, stream: 0 }
    ));
    // A zero-length stream is finished at once.
    let z = eng.release(1, AbortReason::Cancelled);
    assert_eq!(z, 1);
    let a = eng.alloc(5, 0, 1 << 20, 0).unwrap();
    assert_eq!(read_all(eng.handoff_path(), &a.key, 0, 100).unwrap(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
