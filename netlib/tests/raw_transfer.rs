//! Several GiB over raw connections arrive byte-exact (UNIX and TCP loopback), landing through
//! io_uring in registered destination buffers; one sender feeds two consumers, one consumer
//! serves two producers. Over UNIX the consumer pulls chunks from the sender's shared memory
//! (and, with sharing off, takes them through the socket); hostile share frames are refused.

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, HEADER_LEN, Kind, Landing, Offered, RawClient, RawConfig,
    RawError, RawServer, RawStats, encode, encode_pull_tail,
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
    /// Connection errors, when the test expects them.
    errors: Option<Vec<String>>,
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
    fn closed(&mut self, _c: ConnId, error: Option<&RawError>) {
        match (error, &mut self.errors) {
            (Some(e), Some(v)) => v.push(e.to_string()),
            (Some(e), None) => self.bad.push(format!("connection error: {e}")),
            (None, _) => {}
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
            errors: None,
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

/// Send `per_stream` bytes on each (endpoint, stream) target from one client, all at once;
/// `share_local` lets local consumers pull. Returns what went which way.
fn send(targets: Vec<(Endpoint, u32)>, per_stream: u64, share_local: bool) -> RawStats {
    let mut client = RawClient::new(RawConfig {
        share_local,
        ..RawConfig::default()
    })
    .unwrap();
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
    client.stats()
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
    let st = send(vec![(ep1, 0), (ep2, 1)], per, true);
    check(&h1.join().unwrap(), &[0], per);
    check(&h2.join().unwrap(), &[1], per);
    // Every chunk was copied by the consumer from the sender's memory, none went through the
    // socket.
    assert_eq!(
        st,
        RawStats {
            sent: 0,
            pulled: 2 * per / CHUNK as u64
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_gib_over_unix_through_the_socket_when_sharing_is_off() {
    let dir = std::env::temp_dir().join(format!("spate-raw-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let per = (1u64 << 30) - 777;
    let chunks = per.div_ceil(CHUNK as u64);
    let (ep, h) = serve(Endpoint::Unix(dir.join("c.sock")), chunks as usize, 1);
    let st = send(vec![(ep, 4)], per, false);
    check(&h.join().unwrap(), &[4], per);
    assert_eq!(
        st,
        RawStats {
            sent: chunks,
            pulled: 0
        }
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server thread whose landing records connection errors; it stops when `conns` closed.
fn serve_expecting_errors(
    listen: Endpoint,
    conns: usize,
) -> (
    Endpoint,
    std::thread::JoinHandle<(Verify, usize)>,
    mpsc::Receiver<usize>,
) {
    let (tx, rx) = mpsc::channel();
    let (seg_tx, seg_rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut server = RawServer::new(RawConfig::default()).unwrap();
        let arena = Arena::new("t-raw-dst-err", CHUNK, 2).unwrap();
        server.driver().register(arena.region()).unwrap();
        tx.send(server.listen(&listen).unwrap()).unwrap();
        let mut v = Verify {
            arena,
            landed: BTreeSet::new(),
            bad: Vec::new(),
            closed: 0,
            errors: Some(Vec::new()),
        };
        let t0 = Instant::now();
        let mut last = usize::MAX;
        let mut most = 0;
        while v.closed < conns {
            assert!(t0.elapsed() < DEADLINE, "server: timed out");
            server
                .turn(&mut v, Some(Duration::from_millis(20)))
                .unwrap();
            let n = server.shared_segments();
            most = most.max(n);
            if n != last {
                let _ = seg_tx.send(n);
                last = n;
            }
        }
        (v, most)
    });
    (rx.recv().unwrap(), h, seg_rx)
}

#[test]
fn hostile_share_frames_close_the_connection_with_their_error() {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    use std::io::{IoSlice, Write};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    let dir = std::env::temp_dir().join(format!("spate-raw-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ep, h, _) = serve_expecting_errors(Endpoint::Unix(dir.join("c.sock")), 4);
    let Endpoint::Unix(path) = &ep else { panic!() };
    let seg = |len: u64| ChunkKey {
        job: 0,
        stream: 1,
        offset: 0,
        len,
    };
    let share = |s: &UnixStream, len: u64, fd: Option<i32>| {
        let frame = encode(Kind::Share, &seg(len), None);
        let fds = fd.map(|f| [f]);
        let cmsg: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
        sendmsg::<()>(
            s.as_raw_fd(),
            &[IoSlice::new(&frame)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    };
    let wait_eof = |mut s: UnixStream| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut b = [0u8; 64];
        assert_eq!(
            std::io::Read::read(&mut s, &mut b).unwrap(),
            0,
            "server closes"
        );
    };
    // 1. A pipe is not memory.
    let s = UnixStream::connect(path).unwrap();
    let (pr, _pw) = nix::unistd::pipe().unwrap();
    share(&s, 4096, Some(pr.as_raw_fd()));
    wait_eof(s);
    // 2. A share frame without its descriptor.
    let s = UnixStream::connect(path).unwrap();
    share(&s, 4096, None);
    wait_eof(s);
    // 3. A memory file smaller than declared.
    let s = UnixStream::connect(path).unwrap();
    let small = Arena::new("t-raw-small", 2 << 20, 1).unwrap();
    let fd = small.region().share_fd().unwrap().unwrap();
    share(&s, 1 << 30, Some(fd.as_raw_fd()));
    wait_eof(s);
    // 4. A pull from a segment never shared.
    let mut s = UnixStream::connect(path).unwrap();
    let key = ChunkKey {
        job: 1,
        stream: 0,
        offset: 0,
        len: 100,
    };
    let mut frame = encode(Kind::Pull, &key, None).to_vec();
    frame.extend_from_slice(&encode_pull_tail(5, 0));
    assert_eq!(frame.len(), HEADER_LEN + 16);
    s.write_all(&frame).unwrap();
    wait_eof(s);

    let (v, most) = h.join().unwrap();
    let errors = v.errors.unwrap();
    let shared_refused = "raw protocol violation: shared descriptor missing or not a memory file of the declared size";
    assert_eq!(errors.len(), 4, "{errors:?}");
    for e in &errors[..3] {
        assert!(e.starts_with(shared_refused), "{e}");
    }
    assert!(
        errors[3].starts_with("raw protocol violation: pull from a segment that was not shared"),
        "{}",
        errors[3]
    );
    assert_eq!(most, 0, "no hostile descriptor was kept");
    assert!(v.landed.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_freed_source_arena_is_unshared_and_its_descriptor_dropped() {
    let dir = std::env::temp_dir().join(format!("spate-raw-unshare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ep, h, segs) = serve_expecting_errors(Endpoint::Unix(dir.join("c.sock")), 1);
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let mut events = Vec::new();
    let mut offset = 0u64;
    // Send one chunk from arena A, then one from arena B; then free A.
    let mut send_one = |client: &mut RawClient, arena: &Arena| {
        client.driver().register(arena.region()).unwrap();
        let mut b = arena.alloc().unwrap();
        pattern::fill(SEED, 0, offset, &mut b.as_mut_slice()[..CHUNK]);
        let key = ChunkKey {
            job: 1,
            stream: 0,
            offset,
            len: CHUNK as u64,
        };
        let c = client
            .send_to(&ep, &Via::any(), key, b.into(), 0)
            .map_err(|r| r.error)
            .unwrap();
        offset += CHUNK as u64;
        let t0 = Instant::now();
        loop {
            assert!(t0.elapsed() < DEADLINE);
            client
                .turn(Some(Duration::from_millis(50)), &mut events)
                .unwrap();
            if let Some(e) = events.pop() {
                assert!(matches!(e, ClientEvent::Acked { .. }), "{e:?}");
                break;
            }
        }
        c
    };
    let a = Arena::new("t-raw-src-a", CHUNK, 1).unwrap();
    let b = Arena::new("t-raw-src-b", CHUNK, 1).unwrap();
    send_one(&mut client, &a);
    let conn = send_one(&mut client, &b);
    let wait_for = |want: usize| {
        let t0 = Instant::now();
        loop {
            let n = segs.recv_timeout(Duration::from_secs(20)).unwrap();
            if n == want {
                return;
            }
            assert!(t0.elapsed() < DEADLINE);
        }
    };
    wait_for(2);
    drop(a);
    // The driver lets go of A's registration once no buffer of it is in use; then the next
    // turn retires its segment, and the consumer closes its descriptor.
    client.driver().release_unused();
    let t0 = Instant::now();
    loop {
        client
            .turn(Some(Duration::from_millis(20)), &mut events)
            .unwrap();
        if let Ok(n) = segs.try_recv() {
            assert_eq!(n, 1, "only A's segment goes");
            break;
        }
        assert!(t0.elapsed() < DEADLINE, "A was never unshared");
    }
    assert_eq!(client.stats(), RawStats { sent: 0, pulled: 2 });
    client.close(conn);
    while client.connections() > 0 {
        client
            .turn(Some(Duration::from_millis(20)), &mut events)
            .unwrap();
    }
    let (v, _) = h.join().unwrap();
    assert!(v.bad.is_empty() && v.errors.unwrap().is_empty());
    assert_eq!(v.landed.len(), 2);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn two_gib_over_tcp_two_senders_one_consumer() {
    // Odd total so the last chunk of each stream is short.
    let per = (1u64 << 30) - 12345;
    let chunks = per.div_ceil(CHUNK as u64) as usize;
    let (ep, h) = serve("tcp:127.0.0.1:0".parse().unwrap(), 2 * chunks, 2);
    let ep2 = ep.clone();
    let s1 = std::thread::spawn(move || send(vec![(ep2, 5)], per, true));
    // TCP peers may be on other hosts: nothing is shared, everything goes through the socket.
    let st = send(vec![(ep, 6)], per, true);
    assert_eq!(st.pulled, 0);
    s1.join().unwrap();
    check(&h.join().unwrap(), &[5, 6], per);
}
