//! The hand-off server serves every client at once (issue 12, defect 8): idle, slow and
//! vanished clients delay no reader; a client that never completes its request is dropped
//! after the request timeout, and the one waiting longest when too many wait. Every refused
//! client is told to the refusal hook (the consumer logs it).
mod common;
use common::*;
use spate_ring::handoff::{self, HandoffConfig, HandoffServer};
use spate_ring::{Acquired, BackingPref, ReaderStatus};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

const CAP: usize = 2 << 20;

fn sock_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("spate-handoff-{}-{name}.sock", std::process::id()))
}

fn request(key: &str) -> Vec<u8> {
    let mut v = b"SPHO\x01".to_vec();
    v.extend_from_slice(&(key.len() as u16).to_le_bytes());
    v.extend_from_slice(key.as_bytes());
    v
}

/// Whether the server has answered (or closed) this client yet, without waiting.
fn answered(c: &UnixStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let r = match (&*c).read(&mut b) {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("reading the client socket: {e}"),
    };
    c.set_nonblocking(false).unwrap();
    r
}

/// The server's reply to this client: (status, message), waiting for it at most 20 s.
fn reply(c: &UnixStream) -> (u8, String) {
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = [0u8; 7];
    (&*c).read_exact(&mut head).expect("a reply");
    assert_eq!(&head[..4], b"SPHO");
    let mut msg = vec![0u8; u16::from_le_bytes([head[5], head[6]]) as usize];
    (&*c).read_exact(&mut msg).unwrap();
    (head[4], String::from_utf8(msg).unwrap())
}

#[test]
fn idle_slow_and_vanished_clients_delay_no_reader() {
    let path = sock_path("idle");
    let w = writer(CAP, Some(1 << 20), BackingPref::NoHugeTlb);
    let w2 = writer(CAP, Some(1 << 20), BackingPref::NoHugeTlb);
    // A request timeout far longer than the test: every idle client is still waiting at the end.
    let cfg = HandoffConfig {
        request_timeout: Duration::from_secs(600),
        ..HandoffConfig::default()
    };
    let srv = HandoffServer::bind(&path, cfg).unwrap();
    srv.publish("s", &w).unwrap();
    srv.publish("t", &w2).unwrap();
    land_pattern(&w, 0, 1 << 20);
    w.finish().unwrap();
    // 200 clients that connect and send nothing, 20 that send part of a request, 20 that
    // connect and go away at once.
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let partial: Vec<UnixStream> = (0..20)
        .map(|i| {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(&request("t")[..1 + i % 7]).unwrap();
            c
        })
        .collect();
    for _ in 0..20 {
        drop(UnixStream::connect(&path).unwrap());
    }
    // A reader connecting after all of them attaches (the client gives up after 10 s) and
    // reads its stream.
    let mut r = handoff::connect(&path, "s").unwrap();
    assert_eq!(w.reader_status(), ReaderStatus::Attached);
    assert_eq!(read_all(&mut r, 1 << 20), Ok(1 << 20));
    // It was served while every idle and partial client was still waiting, unanswered.
    assert!(idle.iter().chain(&partial).all(|c| !answered(c)));
    // A slow client finishing its request is served too: one byte at a time.
    let slow = &partial[3];
    for b in &request("t")[4..] {
        (&*slow).write_all(&[*b]).unwrap();
    }
    assert_eq!(reply(slow), (0, String::new()));
    // An unknown key is answered as such while the others still wait.
    let mut other = UnixStream::connect(&path).unwrap();
    other.write_all(&request("nope")).unwrap();
    assert_eq!(reply(&other), (1, "nope".to_string()));
    assert!(idle.iter().all(|c| !answered(c)));
}

#[test]
fn a_client_that_never_completes_its_request_is_dropped_after_the_timeout() {
    let path = sock_path("timeout");
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let cfg = HandoffConfig {
        request_timeout: Duration::from_millis(200),
        ..HandoffConfig::default()
    };
    let srv = HandoffServer::bind(&path, cfg).unwrap();
    srv.publish("s", &w).unwrap();
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"SPH").unwrap();
    assert_eq!(
        reply(&c),
        (3, "no complete request within 200ms".to_string())
    );
    let mut b = [0u8; 1];
    assert_eq!((&c).read(&mut b).unwrap(), 0, "then the server closes it");
    // The server goes on serving.
    let mut r = handoff::connect(&path, "s").unwrap();
    land_pattern(&w, 0, 4096);
    assert!(matches!(
        r.acquire(4096, 4096, Some(Duration::from_secs(20))).unwrap(),
        Acquired::Data(b) if b.data.len() == 4096
    ));
}

#[test]
fn too_many_waiting_clients_push_out_the_one_waiting_longest() {
    let path = sock_path("many");
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let cfg = HandoffConfig {
        max_pending: 4,
        request_timeout: Duration::from_secs(600),
        ..HandoffConfig::default()
    };
    let srv = HandoffServer::bind(&path, cfg).unwrap();
    srv.publish("s", &w).unwrap();
    let idle: Vec<UnixStream> = (0..5)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // The fifth pushed out the first; the reader (sixth) pushes out the second and is served.
    let r = handoff::connect(&path, "s").unwrap();
    assert_eq!(r.position(), 0);
    let dropped = "4 clients were waiting to send their request; the one waiting longest (this \
                   one) was dropped";
    for c in &idle[..2] {
        assert_eq!(reply(c), (3, dropped.to_string()));
    }
    assert!(idle[2..].iter().all(|c| !answered(c)));
}

#[test]
fn every_refused_client_is_told_to_the_refusal_hook() {
    use spate_ring::handoff::RefusalHook;
    use std::sync::{Arc, Mutex};
    let path = sock_path("hook");
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let told: Arc<Mutex<Vec<String>>> = Arc::default();
    let t2 = told.clone();
    let cfg = HandoffConfig {
        request_timeout: Duration::from_millis(200),
        on_refused: Some(RefusalHook(Arc::new(move |why: &str| {
            t2.lock().unwrap().push(why.to_string());
        }))),
        ..HandoffConfig::default()
    };
    let srv = HandoffServer::bind(&path, cfg).unwrap();
    srv.publish("s", &w).unwrap();
    // Garbage, a wrong key, an incomplete request that times out; and one good reader, which
    // is not a refusal.
    let mut g = UnixStream::connect(&path).unwrap();
    g.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    assert_eq!(reply(&g).0, 3);
    let mut k = UnixStream::connect(&path).unwrap();
    k.write_all(&request("nope")).unwrap();
    assert_eq!(reply(&k).0, 1);
    let mut t = UnixStream::connect(&path).unwrap();
    t.write_all(b"SPHO").unwrap();
    assert_eq!(reply(&t).0, 3);
    let _r = handoff::connect(&path, "s").unwrap();
    // The hook runs on the server's thread after the reply: wait for it, with a deadline.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while told.lock().unwrap().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let me = std::process::id();
    assert_eq!(
        *told.lock().unwrap(),
        vec![
            format!("client pid {me}: expected a SPHO v1 request"),
            format!("client pid {me}: no stream with key \"nope\" is published here"),
            format!("client pid {me}: no complete request within 200ms"),
        ]
    );
}
