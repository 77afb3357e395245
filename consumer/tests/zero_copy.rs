//! Zero copy into the consumer's rings, with real sockets, a real ring and a reader attached
//! through the hand-off socket: producers compute straight into the places the consumer grants
//! in a ring smaller than the stream, in random order, with duplicates and with producers that
//! die with places they never wrote; the reader checks every byte in order. A range that
//! landed already is not placed again (the producer falls back to pulling it, and nothing is
//! written over bytes the reader may be reading); a producer cannot land a range it was not
//! placed; a consumer that does not lend its rings makes producers fall back.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use spate_consumer::{ConsumerEngine, EngineConfig};
use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, HEADER_LEN, Msg, PlaceEvent, RawClient, RawConfig, RefuseReason,
};
use spate_ring::{Acquired, handoff, pattern};
use spate_runtime::Arena;

const SEED: u64 = 23;
const DEADLINE: Duration = Duration::from_secs(60);
const CHUNK: u64 = 128 << 10;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-zc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn engine(dir: &std::path::Path, lend: bool) -> ConsumerEngine {
    let mut cfg = EngineConfig::new(
        vec![Endpoint::Unix(dir.join("data.sock"))],
        dir.join("handoff.sock"),
    );
    cfg.lend_rings = lend;
    ConsumerEngine::start(cfg).unwrap()
}

fn key(stream: u32, off: u64) -> ChunkKey {
    ChunkKey {
        job: 1,
        stream,
        offset: off,
        len: CHUNK,
    }
}

/// How each chunk a producer sent ended.
#[derive(Debug, Default)]
struct Sent {
    in_place: usize,
    fallback: usize,
    refused: Vec<(ChunkKey, RefuseReason)>,
}

/// A producer: asks for a place for every chunk, computes the pattern straight into it and
/// says it is written; a chunk the consumer will not place is computed into a buffer and
/// pulled instead. With `die_after = Some(n)`, it scribbles over its first `n` places and then
/// dies without saying any is written (its connection closes).
fn producer(ep: &Endpoint, stream: u32, offs: &[u64], die_after: Option<usize>) -> Sent {
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let arena = Arena::new("t-zc-src", CHUNK as usize, 4).unwrap();
    let mut sent = Sent::default();
    let mut todo: Vec<u64> = offs.to_vec();
    todo.reverse();
    let (mut open, mut done, mut dying) = (0usize, 0usize, Vec::new());
    let (mut ev, mut pl) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while done < offs.len() {
        assert!(t0.elapsed() < DEADLINE, "producer timed out");
        while open < 3
            && let Some(off) = todo.pop()
        {
            client
                .reserve_to(ep, &Via::any(), key(stream, off))
                .unwrap();
            open += 1;
        }
        client
            .turn(Some(Duration::from_millis(20)), &mut ev)
            .unwrap();
        client.take_placements(&mut pl);
        for p in pl.drain(..) {
            match p {
                PlaceEvent::Placed {
                    conn,
                    key,
                    mut place,
                } => {
                    if let Some(n) = die_after {
                        place.as_mut_slice().fill(0xEE);
                        dying.push(place);
                        if dying.len() == n {
                            // Dies here: nothing it placed was written.
                            return sent;
                        }
                        continue;
                    }
                    pattern::fill(SEED, u64::from(stream), key.offset, place.as_mut_slice());
                    client.written(conn, key, place).unwrap();
                }
                PlaceEvent::Acked { .. } => {
                    sent.in_place += 1;
                    done += 1;
                    open -= 1;
                }
                PlaceEvent::Refused {
                    key,
                    reason: RefuseReason::Fallback,
                    ..
                } => {
                    let mut b = arena.alloc().expect("a buffer");
                    pattern::fill(SEED, u64::from(stream), key.offset, b.as_mut_slice());
                    client.send_to(ep, &Via::any(), key, b.into(), 0).unwrap();
                }
                PlaceEvent::Refused { key, reason, .. } => {
                    sent.refused.push((key, reason));
                    done += 1;
                    open -= 1;
                }
                PlaceEvent::Failed { key, .. } => panic!("{key:?} failed"),
            }
        }
        for e in ev.drain(..) {
            match e {
                ClientEvent::Acked { .. } => {
                    sent.fallback += 1;
                    done += 1;
                    open -= 1;
                }
                ClientEvent::Refused { key, reason, .. } => {
                    sent.refused.push((key, reason));
                    done += 1;
                    open -= 1;
                }
                ClientEvent::Closed { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    sent
}

/// Read the stream to its end, checking every byte in order.
fn read_all(path: &std::path::Path, key: &str, stream: u32) -> u64 {
    let mut r = handoff::connect(path, key).unwrap();
    let mut n = 0u64;
    loop {
        let len = match r.acquire(1, 1 << 20, Some(DEADLINE)).unwrap() {
            Acquired::Data(b) => {
                assert_eq!(b.offset, n);
                assert_eq!(
                    pattern::check(SEED, u64::from(stream), b.offset, b.data),
                    None,
                    "wrong byte"
                );
                b.data.len()
            }
            Acquired::End => return n,
            Acquired::TimedOut => panic!("reader timed out at {n}"),
        };
        n += len as u64;
        r.release(len).unwrap();
    }
}

/// A seeded shuffle within consecutive blocks of `block` (chunks come roughly in order, as the
/// scheduler hands them out, but never in exact order).
fn shuffle(v: &mut [u64], mut seed: u64, block: usize) {
    for part in v.chunks_mut(block) {
        for i in (1..part.len()).rev() {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            part.swap(i, (seed % (i as u64 + 1)) as usize);
        }
    }
}

#[test]
fn zero_copy_streams_are_byte_exact_under_random_orders_duplicates_and_producer_deaths() {
    let dir = tmpdir("exact");
    let eng = engine(&dir, true);
    let ep = eng.endpoints()[0].clone();
    let chunks = 48u64;
    let total = chunks * CHUNK;
    // A ring of a quarter of the stream: places wrap around its end, and grants wait for the
    // reader to make room.
    let a = eng.alloc(1, 0, total / 4, total).unwrap();
    assert!(a.capacity < total);
    let mut offs: Vec<u64> = (0..chunks).map(|i| i * CHUNK).collect();
    shuffle(&mut offs, 0x5eed, 5);
    // A producer that dies holding places it scribbled over but never said were written.
    let early: Vec<u64> = offs[..3].to_vec();
    let dead = producer(&ep, 0, &early, Some(3));
    assert_eq!((dead.in_place, dead.fallback), (0, 0));
    // The others deliver everything, two at once, overlapping each other (duplicates).
    let (first, second) = (offs[..30].to_vec(), offs[18..].to_vec());
    let (e1, e2) = (ep.clone(), ep.clone());
    let p1 = std::thread::spawn(move || producer(&e1, 0, &first, None));
    let p2 = std::thread::spawn(move || producer(&e2, 0, &second, None));
    assert_eq!(read_all(eng.handoff_path(), &a.key, 0), total);
    let (s1, s2) = (p1.join().unwrap(), p2.join().unwrap());
    // Every range landed in place once, by whoever was placed first; each duplicate found its
    // range landed (or being written) and was pulled and dropped instead, or, once the whole
    // stream had landed, was refused as the stream is closed.
    assert_eq!(s1.in_place + s2.in_place, chunks as usize);
    let late: Vec<_> = s1.refused.iter().chain(&s2.refused).collect();
    assert!(
        late.iter().all(|(_, r)| *r == RefuseReason::Aborted),
        "{late:?}"
    );
    assert_eq!(s1.fallback + s2.fallback + late.len(), 12);
    assert_eq!(eng.landed().in_place, chunks);
    // The stream is complete: a late copy of a landed range is never placed; it goes by the
    // pull path, which drops its bytes and acks it (the stream stays as it was).
    let again = producer(&ep, 0, &[0, CHUNK], None);
    assert!(again.refused.is_empty(), "{:?}", again.refused);
    assert_eq!((again.in_place, again.fallback), (0, 2));
    assert_eq!(eng.landed().in_place, chunks);
    drop(eng);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_range_that_landed_is_pulled_not_placed_and_a_consumer_that_lends_nothing_gets_pulls() {
    let dir = tmpdir("fallback");
    let eng = engine(&dir, true);
    let ep = eng.endpoints()[0].clone();
    let total = 4 * CHUNK;
    let a = eng.alloc(1, 0, total, total).unwrap();
    let s = producer(&ep, 0, &[0, CHUNK], None);
    assert_eq!((s.in_place, s.fallback), (2, 0));
    // The same two ranges again: they landed, so they are not placed (the pull lands them in
    // a scratch buffer and drops them); the new ones are placed.
    let s = producer(&ep, 0, &[CHUNK, 0, 2 * CHUNK, 3 * CHUNK], None);
    assert_eq!((s.in_place, s.fallback), (2, 2));
    assert_eq!(read_all(eng.handoff_path(), &a.key, 0), total);
    drop(eng);

    // A consumer that does not lend its rings: every chunk falls back to the pull path.
    let eng = engine(&dir, false);
    let ep = eng.endpoints()[0].clone();
    let a = eng.alloc(2, 1, total, total).unwrap();
    let offs: Vec<u64> = (0..4).map(|i| i * CHUNK).collect();
    let s = producer_for_job(&ep, 2, 1, &offs);
    assert_eq!((s.in_place, s.fallback), (0, 4));
    assert_eq!(read_all(eng.handoff_path(), &a.key, 1), total);
    assert_eq!(eng.landed().in_place, 0);
    assert_eq!(eng.landed().copied, 4);
    drop(eng);
    let _ = std::fs::remove_dir_all(&dir);
}

/// [`producer`] for another job.
fn producer_for_job(ep: &Endpoint, job: u64, stream: u32, offs: &[u64]) -> Sent {
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let arena = Arena::new("t-zc-src2", CHUNK as usize, offs.len()).unwrap();
    let mut sent = Sent::default();
    let key = |off| ChunkKey {
        job,
        stream,
        offset: off,
        len: CHUNK,
    };
    for off in offs {
        client.reserve_to(ep, &Via::any(), key(*off)).unwrap();
    }
    let (mut ev, mut pl) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    while sent.in_place + sent.fallback < offs.len() {
        assert!(t0.elapsed() < DEADLINE);
        client
            .turn(Some(Duration::from_millis(20)), &mut ev)
            .unwrap();
        client.take_placements(&mut pl);
        for p in pl.drain(..) {
            match p {
                PlaceEvent::Refused {
                    key,
                    reason: RefuseReason::Fallback,
                    ..
                } => {
                    let mut b = arena.alloc().unwrap();
                    pattern::fill(SEED, u64::from(stream), key.offset, b.as_mut_slice());
                    client.send_to(ep, &Via::any(), key, b.into(), 0).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        for e in ev.drain(..) {
            match e {
                ClientEvent::Acked { .. } => sent.fallback += 1,
                ClientEvent::Closed { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    }
    sent
}

#[test]
fn a_producer_cannot_land_a_range_it_was_not_placed() {
    let dir = tmpdir("hostile");
    let eng = engine(&dir, true);
    let Endpoint::Unix(path) = eng.endpoints()[0].clone() else {
        panic!()
    };
    let total = 4 * CHUNK;
    eng.alloc(1, 0, total, total).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    // Reserve the second chunk; the consumer lends the ring and places it.
    s.write_all(&Msg::Reserve(key(0, CHUNK)).encode()).unwrap();
    let mut answer = [0u8; 2 * HEADER_LEN + 16];
    s.read_exact(&mut answer).unwrap();
    let lend = Msg::decode(answer[..HEADER_LEN].try_into().unwrap(), 1 << 30).unwrap();
    let place = Msg::decode(
        answer[HEADER_LEN..2 * HEADER_LEN].try_into().unwrap(),
        1 << 30,
    );
    assert!(matches!(lend, Msg::Lend(_)), "{lend:?}");
    assert_eq!(place, Ok(Msg::Place(key(0, CHUNK))));
    // Claim the first chunk written instead: the connection is closed, nothing lands.
    s.write_all(&Msg::Written(key(0, 0)).encode()).unwrap();
    let mut b = [0u8; 64];
    assert_eq!(s.read(&mut b).unwrap(), 0, "the consumer hangs up");
    // It hung up on the false claim, before landing anything.
    assert_eq!(eng.streams()[0].frontier, 0);
    assert_eq!(eng.landed().in_place, 0);
    // The placed range went back with the connection: a well-behaved producer lands it all.
    let s = producer(
        &eng.endpoints()[0].clone(),
        0,
        &[0, CHUNK, 2 * CHUNK, 3 * CHUNK],
        None,
    );
    assert_eq!(s.in_place, 4);
    assert_eq!(eng.streams()[0].frontier, total);
    drop(eng);
    let _ = std::fs::remove_dir_all(&dir);
}
