//! The producer engines against a real consumer engine: compute+expel of pattern chunks over
//! UNIX and TCP arrive byte-exact; failing targets give TaskFailed, not a hang; the control
//! handler preloads from local paths and the file service and pairs Compute with Expel.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use spate_consumer::{ConsumerEngine, EngineConfig as ConsumerConfig};
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{
    ChunkIndex, DataEndpoint, ExpelTarget, InputSource, InputSpec, JobGeometry, JobId, LineRange,
    Message, StreamIndex, TaskId, TaskKind, Value,
};
use spate_producer::daemon::ProducerNode;
use spate_producer::engine::{EngineConfig, ProducerEngine, Task};
use spate_producer::kernel::Pattern;
use spate_ring::{Acquired, handoff, pattern};

const SEED: u64 = 99;
const DEADLINE: Duration = Duration::from_secs(60);

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("spate-prod-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn data_endpoint(ep: &Endpoint) -> DataEndpoint {
    match ep {
        Endpoint::Unix(p) => DataEndpoint::Unix { path: p.clone() },
        Endpoint::Tcp { .. } => DataEndpoint::Tcp {
            addr: ep.resolve().unwrap()[0],
            interface: None,
        },
    }
}

/// Targets of chunk `lines` for `channels` streams of `line_bytes` per line, stream `s` going
/// to `eps[s % eps.len()]`.
fn targets(lines: LineRange, line_bytes: u64, eps: &[DataEndpoint]) -> Vec<ExpelTarget> {
    let n = (lines.end - lines.start) * line_bytes;
    (0..eps.len() as u32)
        .map(|s| ExpelTarget {
            stream: StreamIndex(s),
            consumer: "c1".into(),
            endpoint: eps[s as usize].clone(),
            source: None,
            chunk_offset: u64::from(s) * n,
            stream_offset: lines.start * line_bytes,
            len: n,
        })
        .collect()
}

fn read_all(path: &Path, key: &str, stream: u32) -> u64 {
    let mut r = handoff::connect(path, key).unwrap();
    let mut n = 0u64;
    loop {
        let len = match r.acquire(1, 1 << 20, Some(DEADLINE)).unwrap() {
            Acquired::Data(b) => {
                assert_eq!(b.offset, n);
                assert_eq!(
                    pattern::check(SEED, u64::from(stream), b.offset, b.data),
                    None
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

/// Wait for one report per task id in `want`.
fn reports(rx: &Receiver<Message>, want: usize) -> BTreeMap<u64, Message> {
    let mut got = BTreeMap::new();
    let end = Instant::now() + DEADLINE;
    while got.len() < want {
        let left = end.saturating_duration_since(Instant::now());
        let m = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("only {} of {want} reports: {got:?}", got.len()));
        let id = match &m {
            Message::TaskDone { task, .. } | Message::TaskFailed { task, .. } => task.0,
            other => panic!("unexpected report {other:?}"),
        };
        assert!(got.insert(id, m).is_none(), "two reports for task {id}");
    }
    got
}

#[test]
fn pattern_chunks_computed_and_expelled_over_unix_and_tcp_arrive_byte_exact() {
    let dir = tmpdir("ok");
    let cons = ConsumerEngine::start(ConsumerConfig::new(
        vec![
            Endpoint::Unix(dir.join("data.sock")),
            "tcp:127.0.0.1:0".parse().unwrap(),
        ],
        dir.join("handoff.sock"),
    ))
    .unwrap();
    let (line_bytes, lines) = (4099u64, 2000u64);
    let total = line_bytes * lines;
    // Stream 0 over UNIX with a ring smaller than the stream, stream 1 over TCP.
    let a0 = cons.alloc(7, 0, 2 << 20, total).unwrap();
    let a1 = cons.alloc(7, 1, total, total).unwrap();
    let eps: Vec<DataEndpoint> = cons.endpoints().iter().map(data_endpoint).collect();

    let (tx, rx) = mpsc::channel();
    let eng = ProducerEngine::start(EngineConfig::default(), tx).unwrap();
    let kernel: Arc<Pattern> = Arc::new(Pattern { seed: SEED });
    let step = 97u64;
    let mut n = 0;
    // Chunks out of order, pairwise swapped (1, 0, 3, 2, ...). (The scheduler hands out
    // chunks within the ring's window: chunks far ahead would hold every chunk buffer while
    // waiting for room that only the chunks behind them can make.)
    let starts: Vec<u64> = (0..lines).step_by(step as usize).collect();
    let order: Vec<u64> = starts
        .chunks(2)
        .flat_map(|p| p.iter().rev().copied())
        .collect();
    for (i, s) in order.iter().enumerate() {
        let l = LineRange {
            start: *s,
            end: (*s + step).min(lines),
        };
        eng.submit(Task {
            task: TaskId(i as u64),
            job: JobId(7),
            chunk: ChunkIndex(s / step),
            lines: l,
            targets: targets(l, line_bytes, &eps),
            kernel: kernel.clone(),
        })
        .unwrap();
        n += 1;
    }
    let hp = cons.handoff_path().to_path_buf();
    let k0 = a0.key.clone();
    let r0 = std::thread::spawn(move || read_all(&hp, &k0, 0));
    assert_eq!(read_all(cons.handoff_path(), &a1.key, 1), total);
    assert_eq!(r0.join().unwrap(), total);
    let got = reports(&rx, n);
    let mut bytes = 0;
    for m in got.values() {
        match m {
            Message::TaskDone {
                kind: TaskKind::Expel,
                job: JobId(7),
                bytes: b,
                ..
            } => bytes += b,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(bytes, 2 * total);
    drop(eng);
    drop(cons);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failing_targets_give_task_failed_not_a_hang() {
    let dir = tmpdir("fail");
    let cons = ConsumerEngine::start(ConsumerConfig::new(
        vec![Endpoint::Unix(dir.join("data.sock"))],
        dir.join("handoff.sock"),
    ))
    .unwrap();
    let good = data_endpoint(&cons.endpoints()[0]);
    let (tx, rx) = mpsc::channel();
    let eng = ProducerEngine::start(EngineConfig::default(), tx).unwrap();
    let kernel: Arc<Pattern> = Arc::new(Pattern { seed: SEED });
    let l = LineRange { start: 0, end: 10 };
    // 1: nobody listens there. 2: the consumer has no such stream. 3: a stream that is
    // released while the producer waits for room (its reader never reads).
    let nowhere = DataEndpoint::Unix {
        path: dir.join("nobody.sock"),
    };
    eng.submit(Task {
        task: TaskId(1),
        job: JobId(1),
        chunk: ChunkIndex(0),
        lines: l,
        targets: targets(l, 100, &[nowhere]),
        kernel: kernel.clone(),
    })
    .unwrap();
    eng.submit(Task {
        task: TaskId(2),
        job: JobId(2),
        chunk: ChunkIndex(0),
        lines: l,
        targets: targets(l, 100, std::slice::from_ref(&good)),
        kernel: kernel.clone(),
    })
    .unwrap();
    let got = reports(&rx, 2);
    match &got[&1] {
        Message::TaskFailed {
            retryable: true,
            reason,
            ..
        } => assert!(reason.contains("nobody.sock"), "{reason}"),
        other => panic!("{other:?}"),
    }
    match &got[&2] {
        Message::TaskFailed {
            retryable: false,
            reason,
            ..
        } => assert!(reason.contains("UnknownStream"), "{reason}"),
        other => panic!("{other:?}"),
    }

    cons.alloc(3, 0, 2 << 20, 8 << 20).unwrap();
    for (i, start) in [(3u64, 0u64), (4, 64)] {
        let l = LineRange {
            start,
            end: start + 64,
        };
        eng.submit(Task {
            task: TaskId(i),
            job: JobId(3),
            chunk: ChunkIndex(i),
            lines: l,
            targets: targets(l, 32 << 10, std::slice::from_ref(&good)),
            kernel: kernel.clone(),
        })
        .unwrap();
    }
    // The first 2 MiB fit the ring; the second chunk waits for room that never comes.
    let got = reports(&rx, 1);
    assert!(matches!(got[&3], Message::TaskDone { bytes: 2097152, .. }));
    assert_eq!(cons.release(3, spate_ring::AbortReason::Cancelled), 1);
    let got = reports(&rx, 1);
    match &got[&4] {
        Message::TaskFailed {
            retryable: false, ..
        } => {}
        other => panic!("{other:?}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn table(entries: &[(&str, Value)]) -> Value {
    Value::Table(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

#[test]
fn control_handler_preloads_and_pairs_compute_with_expel() {
    let dir = tmpdir("ctl");
    let (tx, rx) = mpsc::channel();
    let mut node = ProducerNode::new(ProducerEngine::start(EngineConfig::default(), tx).unwrap());
    let geometry = JobGeometry {
        channels: 1,
        lines: 10,
        line_bytes: 10,
        pixels: None,
    };
    let local = dir.join("input.bin");
    std::fs::write(&local, b"local bytes").unwrap();
    let preload = Message::Preload {
        job: JobId(5),
        kernel: "pattern".into(),
        params: table(&[("seed", Value::Int(3))]),
        geometry,
        inputs: vec![
            InputSpec {
                name: "a".into(),
                source: InputSource::LocalPath { path: local },
            },
            InputSpec {
                name: "b".into(),
                source: InputSource::FileService { size: 6 },
            },
        ],
    };
    let r = node.handle(&preload).unwrap();
    assert_eq!(
        r,
        vec![Message::FetchInput {
            job: JobId(5),
            name: "b".into(),
            offset: 0,
            len: 6
        }]
    );
    let chunk = |offset: u64, data: &[u8], last| Message::InputChunk {
        job: JobId(5),
        name: "b".into(),
        offset,
        data: data.to_vec(),
        last,
    };
    assert_eq!(node.handle(&chunk(0, b"abc", false)).unwrap(), vec![]);
    assert_eq!(
        node.handle(&chunk(3, b"def", true)).unwrap(),
        vec![Message::Preloaded { job: JobId(5) }]
    );
    assert_eq!(node.ready_jobs(), vec![JobId(5)]);
    // An Expel without its Compute, and one for a job that is not here.
    let expel = |task, job| Message::Expel {
        task: TaskId(task),
        job: JobId(job),
        chunk: ChunkIndex(0),
        targets: vec![],
    };
    assert!(matches!(
        &node.handle(&expel(1, 5)).unwrap()[..],
        [Message::TaskFailed { retryable: true, reason, .. }] if reason.contains("without its Compute")
    ));
    node.handle(&Message::Compute {
        task: TaskId(2),
        job: JobId(6),
        chunk: ChunkIndex(0),
        lines: LineRange { start: 0, end: 1 },
    })
    .unwrap();
    assert!(matches!(
        &node.handle(&expel(2, 6)).unwrap()[..],
        [Message::TaskFailed { reason, .. }] if reason.contains("not preloaded")
    ));
    // A task whose targets are empty is refused by the engine, through the outbox.
    node.handle(&Message::Compute {
        task: TaskId(3),
        job: JobId(5),
        chunk: ChunkIndex(0),
        lines: LineRange { start: 0, end: 1 },
    })
    .unwrap();
    assert_eq!(node.handle(&expel(3, 5)).unwrap(), vec![]);
    let m = rx.recv_timeout(DEADLINE).unwrap();
    assert!(
        matches!(
            m,
            Message::TaskFailed {
                task: TaskId(3),
                retryable: false,
                ..
            }
        ),
        "{m:?}"
    );

    // Bad preloads: short input, unknown kernel, missing local file.
    let mut p = preload.clone();
    if let Message::Preload { job, .. } = &mut p {
        *job = JobId(8);
    }
    node.handle(&p).unwrap();
    let r = node
        .handle(&Message::InputChunk {
            job: JobId(8),
            name: "b".into(),
            offset: 0,
            data: b"ab".to_vec(),
            last: true,
        })
        .unwrap();
    assert!(
        matches!(&r[..], [Message::PreloadFailed { reason, .. }] if reason.contains("ended at 2 of 6"))
    );
    let r = node
        .handle(&Message::Preload {
            job: JobId(9),
            kernel: "nope".into(),
            params: Value::default(),
            geometry,
            inputs: vec![],
        })
        .unwrap();
    assert!(
        matches!(&r[..], [Message::PreloadFailed { reason, .. }] if reason.contains("unknown kernel"))
    );
    let r = node
        .handle(&Message::Preload {
            job: JobId(10),
            kernel: "null".into(),
            params: Value::default(),
            geometry,
            inputs: vec![InputSpec {
                name: "x".into(),
                source: InputSource::LocalPath {
                    path: dir.join("missing"),
                },
            }],
        })
        .unwrap();
    assert!(
        matches!(&r[..], [Message::PreloadFailed { reason, .. }] if reason.contains("missing"))
    );
    assert!(node.handle(&Message::Heartbeat).is_none());
    node.handle(&Message::Unload { job: JobId(5) }).unwrap();
    assert!(node.ready_jobs().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
