//! Writer and reader in separate processes (this test binary re-executed as the child), hand-off
//! over a UNIX socket, and `kill -9` of either side.
mod common;
use common::*;
use spate_ring::handoff::{self, HandoffConfig, HandoffError, HandoffServer};
use spate_ring::{Acquired, BackingPref, ReadError, ReaderStatus, WriteError};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHILD_ENV: &str = "SPATE_RING_TEST_CHILD";
const CAP: usize = 2 << 20;

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spate-ring-{}-{name}.sock", std::process::id()))
}

/// Entry point of the child processes (does nothing in a normal test run).
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (role, path) = spec.split_once(':').unwrap();
    let path = Path::new(path);
    let ready = || {
        println!("READY");
        std::io::stdout().flush().unwrap();
    };
    match role {
        "writer-full" | "writer-hang" => {
            let total = if role == "writer-full" {
                8 * CAP as u64 + 999
            } else {
                1 << 30
            };
            let w = writer(CAP, Some(total), BackingPref::NoHugeTlb);
            let srv = HandoffServer::bind(path, HandoffConfig::default()).unwrap();
            srv.publish("s", &w).unwrap();
            ready();
            if role == "writer-hang" {
                land_pattern(&w, 0, 1 << 20);
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            // Pairs of chunks landed second-first.
            let chunk = 300_001u64;
            let mut off = 0;
            while off < total {
                let a = chunk.min(total - off);
                let b = chunk.min(total - off - a);
                if b > 0 {
                    land_pattern(&w, off + a, b as usize);
                }
                land_pattern(&w, off, a as usize);
                off += a + b;
            }
            w.finish().unwrap();
            wait_until("reader to detach", Duration::from_secs(30), || {
                w.reader_status() != ReaderStatus::Attached
            });
        }
        "writer-unconfirmed" => {
            // Every byte landed and the end awaits a confirmation this writer never gives.
            let w = writer(CAP, Some(1000), BackingPref::NoHugeTlb);
            w.await_confirmation();
            let srv = HandoffServer::bind(path, HandoffConfig::default()).unwrap();
            srv.publish("s", &w).unwrap();
            land_pattern(&w, 0, 1000);
            w.finish().unwrap();
            ready();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        "reader-hang" => {
            let mut r = handoff::connect(path, "s").unwrap();
            assert!(matches!(
                r.acquire(1, 100, None).unwrap(),
                Acquired::Data(_)
            ));
            ready();
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        r => panic!("unknown child role {r}"),
    }
    std::process::exit(0);
}

#[allow(clippy::zombie_processes)] // the caller waits for (or kills and waits) the child
fn spawn(role: &str, path: &Path) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{role}:{}", path.display()))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "child {role} exited early"
        );
        if line.trim_end().ends_with("READY") {
            return c;
        }
    }
}

#[test]
fn separate_processes_stream_is_exact() {
    let path = sock_path("full");
    let mut c = spawn("writer-full", &path);
    assert!(matches!(
        handoff::connect(&path, "nope"),
        Err(HandoffError::UnknownKey(k)) if k == "nope"
    ));
    let mut r = handoff::connect(&path, "s").unwrap();
    assert_ne!(r.writer_pid(), std::process::id());
    assert!(matches!(
        handoff::connect(&path, "s"),
        Err(HandoffError::Busy(_))
    ));
    assert_eq!(read_all(&mut r, 1 << 20), Ok(8 * CAP as u64 + 999));
    drop(r);
    assert!(c.wait().unwrap().success());
    assert!(
        !path.exists(),
        "socket path must be unlinked on clean shutdown"
    );
}

#[test]
fn kill_9_writer_makes_reader_fail_with_dead_writer() {
    let path = sock_path("killw");
    let mut c = spawn("writer-hang", &path);
    let mut r = handoff::connect(&path, "s").unwrap();
    let n = match r
        .acquire(1 << 20, 1 << 20, Some(Duration::from_secs(20)))
        .unwrap()
    {
        Acquired::Data(b) => b.data.len(),
        other => panic!("{other:?}"),
    };
    r.release(n).unwrap();
    c.kill().unwrap(); // SIGKILL; not reaped yet (a zombie still counts as dead)
    let t = Instant::now();
    let e = r.acquire(1, 1, None).unwrap_err();
    assert!(
        matches!(e, ReadError::WriterDead { at, .. } if at == 1 << 20),
        "{e}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    c.wait().unwrap();
    // The crash left a stale socket file: a new server replaces it.
    assert!(path.exists());
    let s = HandoffServer::bind(&path, HandoffConfig::default()).unwrap();
    drop(s);
    assert!(!path.exists());
}

#[test]
fn a_writer_killed_before_confirming_the_end_leaves_the_reader_unconfirmed() {
    let path = sock_path("unconf");
    let mut c = spawn("writer-unconfirmed", &path);
    let mut r = handoff::connect(&path, "s").unwrap();
    let mut n = 0;
    while n < 1000 {
        match r
            .acquire(1, 1 << 20, Some(Duration::from_secs(20)))
            .unwrap()
        {
            Acquired::Data(b) => {
                let len = b.data.len();
                n += len;
                r.release(len).unwrap();
            }
            other => panic!("at {n}: {other:?}"),
        }
    }
    // Every byte read; the writer lives and has not confirmed: no end yet.
    assert!(matches!(
        r.acquire(1, 1, Some(Duration::from_millis(50))).unwrap(),
        Acquired::TimedOut
    ));
    c.kill().unwrap();
    let e = r.acquire(1, 1, None).unwrap_err();
    assert!(matches!(e, ReadError::Unconfirmed { at: 1000, .. }), "{e}");
    c.wait().unwrap();
}

#[test]
fn kill_9_reader_is_seen_by_writer() {
    let path = sock_path("killr");
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let srv = HandoffServer::bind(&path, HandoffConfig::default()).unwrap();
    srv.publish("s", &w).unwrap();
    land_pattern(&w, 0, CAP);
    let mut c = spawn("reader-hang", &path);
    assert_eq!(w.reader_status(), ReaderStatus::Attached);
    assert!(w.reader_alive());
    c.kill().unwrap();
    wait_until(
        "writer to see the reader dead",
        Duration::from_secs(5),
        || w.reader_status() == ReaderStatus::Dead,
    );
    assert!(matches!(
        w.wait_room(CAP as u64 + 1, Some(Duration::from_secs(5))),
        Err(WriteError::ReaderGone(ReaderStatus::Dead))
    ));
    c.wait().unwrap();
    // A new reader may attach and resume where the dead one was.
    let r = handoff::connect(&path, "s").unwrap();
    assert_eq!(r.position(), 0);
}
