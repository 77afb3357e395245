//! Which chunks a consumer with authenticated data connections takes: only for streams
//! allocated here, and only from producers the scheduler assigned to the job. A producer with
//! the wrong secret, an unassigned producer and a chunk of a stream placed elsewhere land
//! nothing, each with its exact error; the assigned producer's stream is read byte-exact.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use spate_consumer::{ConsumerEngine, EngineConfig};
use spate_netlib::auth::Secret;
use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{ChunkKey, ClientEvent, RawAuth, RawClient, RawConfig, RefuseReason};
use spate_ring::{Acquired, handoff, pattern};
use spate_runtime::Arena;

const SEED: u64 = 11;
const DEADLINE: Duration = Duration::from_secs(60);
const CHUNK: u64 = 256 << 10;

fn secret(s: &str) -> Secret {
    Secret::from_bytes(s.as_bytes(), "test").unwrap()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-adm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Acked,
    Refused(RefuseReason),
    /// The connection failed; its error.
    Failed(String),
}

/// Send `n` chunks of `stream` of `job` to `ep` as producer `name` with secret `s`.
fn send(ep: &Endpoint, s: &Secret, name: &str, job: u64, stream: u32, n: u64) -> Vec<Outcome> {
    let cfg = RawConfig {
        auth: Some(RawAuth::new(s.clone(), name).unwrap()),
        ..RawConfig::default()
    };
    let mut client = RawClient::new(cfg).unwrap();
    let arena = Arena::new("t-adm-src", CHUNK as usize, n as usize).unwrap();
    for i in 0..n {
        let mut b = arena.alloc().unwrap();
        pattern::fill(SEED, u64::from(stream), i * CHUNK, b.as_mut_slice());
        let key = ChunkKey {
            job,
            stream,
            offset: i * CHUNK,
            len: CHUNK,
        };
        client
            .send_to(ep, &Via::any(), key, b.into(), 0)
            .map_err(|r| r.error)
            .unwrap();
    }
    let mut out = Vec::new();
    let mut events = Vec::new();
    let mut error = String::new();
    let t0 = Instant::now();
    while out.len() < n as usize {
        assert!(t0.elapsed() < DEADLINE, "sender timed out: {out:?}");
        client
            .turn(Some(Duration::from_millis(50)), &mut events)
            .unwrap();
        for e in events.drain(..) {
            out.push(match e {
                ClientEvent::Acked { .. } => Outcome::Acked,
                ClientEvent::Refused { reason, .. } => Outcome::Refused(reason),
                ClientEvent::Failed { .. } => Outcome::Failed(error.clone()),
                ClientEvent::Closed { error: e, .. } => {
                    error = e.unwrap_or_default();
                    continue;
                }
            });
        }
    }
    out
}

/// A producer added to a job's set just now may offer before the consumer has the new set (it
/// comes over the control connection): its offers wait for the set, they are not refused.
#[test]
fn an_offer_that_arrives_before_the_set_naming_its_producer_waits_for_it() {
    let dir = tmpdir("late-set");
    let s = secret("the cluster secret of this test");
    let mut cfg = EngineConfig::new(
        vec![Endpoint::Unix(dir.join("data.sock"))],
        dir.join("handoff.sock"),
    );
    cfg.raw.auth = Some(RawAuth::new(s.clone(), "c1").unwrap());
    let eng = ConsumerEngine::start(cfg).unwrap();
    let ep = eng.endpoints()[0].clone();
    let total = 2 * CHUNK;
    let _a = eng.alloc(1, 0, total, total).unwrap();
    eng.set_producers(1, &["p1".to_string()]);
    let (ep2, s2) = (ep.clone(), s.clone());
    let sender = std::thread::spawn(move || send(&ep2, &s2, "p2", 1, 0, 2));
    let t0 = Instant::now();
    while eng.awaiting_assignment() == 0 {
        assert!(
            t0.elapsed() < DEADLINE,
            "p2's offer never waited for the set"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    eng.set_producers(1, &["p1".to_string(), "p2".to_string()]);
    assert_eq!(sender.join().unwrap(), vec![Outcome::Acked; 2]);
    assert_eq!(eng.awaiting_assignment(), 0);
}

#[test]
fn only_assigned_producers_land_chunks_of_streams_placed_here() {
    let dir = tmpdir("assigned");
    let s = secret("the cluster secret of this test");
    let mut cfg = EngineConfig::new(
        vec![
            Endpoint::Unix(dir.join("data.sock")),
            "tcp:127.0.0.1:0".parse().unwrap(),
        ],
        dir.join("handoff.sock"),
    );
    cfg.raw.auth = Some(RawAuth::new(s.clone(), "c1").unwrap());
    let eng = ConsumerEngine::start(cfg).unwrap();
    let (ux, tcp) = (eng.endpoints()[0].clone(), eng.endpoints()[1].clone());
    let total = 4 * CHUNK;
    let a = eng.alloc(1, 0, total, total).unwrap();
    eng.set_producers(1, &["p1".to_string()]);

    // A producer the scheduler did not assign to job 1, over both transports.
    for ep in [&ux, &tcp] {
        assert_eq!(
            send(ep, &s, "p2", 1, 0, 2),
            vec![Outcome::Refused(RefuseReason::NotAssigned); 2]
        );
    }
    // Refused after its grace: no longer counted as waiting for a set.
    assert_eq!(eng.awaiting_assignment(), 0);
    // The assigned producer, for a stream that is not placed on this consumer.
    assert_eq!(
        send(&ux, &s, "p1", 1, 7, 1),
        vec![Outcome::Refused(RefuseReason::UnknownStream)]
    );
    // A producer with another secret.
    let wrong = send(
        &tcp,
        &secret("the secret of another cluster"),
        "p1",
        1,
        0,
        2,
    );
    let why = "raw connection authentication: authentication failed: the peer does not share \
               this node's cluster secret";
    assert_eq!(wrong.len(), 2);
    for o in &wrong {
        assert!(
            matches!(o, Outcome::Failed(e) if e.starts_with(why)),
            "{o:?}"
        );
    }
    // Nothing of all that landed.
    assert_eq!(eng.streams()[0].frontier, 0);

    // The assigned producer's chunks land, and the stream reads byte-exact.
    assert_eq!(send(&ux, &s, "p1", 1, 0, 4), vec![Outcome::Acked; 4]);
    let mut r = handoff::connect(eng.handoff_path(), &a.key).unwrap();
    let mut n = 0u64;
    loop {
        let len = match r.acquire(1, 1 << 20, Some(DEADLINE)).unwrap() {
            Acquired::Data(b) => {
                assert_eq!(pattern::check(SEED, 0, b.offset, b.data), None);
                b.data.len()
            }
            Acquired::End => break,
            Acquired::TimedOut => panic!("reader timed out at {n}"),
        };
        n += len as u64;
        r.release(len).unwrap();
    }
    assert_eq!(n, total);
    drop(eng);
    let _ = std::fs::remove_dir_all(&dir);
}
