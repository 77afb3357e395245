//! A stalled producer must not hold a chunk forever (issue 11/12: a SIGSTOPped producer's
//! granted range kept the scheduler's copy of its task from landing). A peer offers a chunk,
//! is granted it and then sends nothing; a second producer offers the same bytes; the landing
//! asks for the holder to be revoked; the server closes the holder's connection (with
//! [`RawError::Stalled`]), abandons its grant only after its read completed, and the copy
//! lands. Real UNIX sockets, a real io_uring server.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, Kind, Landing, Offered, RawClient, RawConfig, RawError,
    RawServer, Revoke, encode,
};
use spate_ring::pattern;
use spate_runtime::{Arena, FixedBuf};

const CHUNK: usize = 256 << 10;
const DEADLINE: Duration = Duration::from_secs(30);
/// The test landing's patience with a holder while another producer waits.
const HOLD: Duration = Duration::from_millis(200);

#[derive(Default)]
struct Seen {
    /// Who holds the grant, since when.
    holder: Option<(ConnId, Instant)>,
    revoked: Vec<ConnId>,
    abandoned: Vec<(ConnId, ChunkKey)>,
    landed: Vec<(ConnId, ChunkKey, bool)>,
    closed: Vec<(ConnId, Option<String>)>,
}

struct Hold {
    arena: Arena,
    seen: Arc<Mutex<Seen>>,
    revoke: Vec<Revoke>,
}

impl Landing for Hold {
    fn offer(&mut self, conn: ConnId, key: &ChunkKey) -> Offered {
        let mut s = self.seen.lock().unwrap();
        match s.holder {
            None => {
                s.holder = Some((conn, Instant::now()));
                self.arena
                    .alloc()
                    .map_or(Offered::Wait, |b| Offered::Grant(b.into()))
            }
            Some((h, since)) => {
                if h != conn && since.elapsed() >= HOLD && !s.revoked.contains(&h) {
                    s.revoked.push(h);
                    self.revoke.push(Revoke {
                        conn: h,
                        key: *key,
                        held: since.elapsed(),
                    });
                }
                Offered::Wait
            }
        }
    }
    fn landed(&mut self, conn: ConnId, key: &ChunkKey, dest: FixedBuf) {
        let FixedBuf::Arena(b) = dest else {
            panic!("not an arena buffer")
        };
        let ok = pattern::check(
            1,
            u64::from(key.stream),
            key.offset,
            &b.as_slice()[..key.len as usize],
        )
        .is_none();
        self.seen.lock().unwrap().landed.push((conn, *key, ok));
    }
    fn abandoned(&mut self, conn: ConnId, key: &ChunkKey, _dest: FixedBuf) {
        let mut s = self.seen.lock().unwrap();
        s.abandoned.push((conn, *key));
        if s.holder.is_some_and(|(h, _)| h == conn) {
            s.holder = None;
        }
    }
    fn closed(&mut self, conn: ConnId, error: Option<&RawError>) {
        let mut s = self.seen.lock().unwrap();
        s.closed.push((conn, error.map(|e| e.to_string())));
    }
    fn revoked(&mut self) -> Vec<Revoke> {
        std::mem::take(&mut self.revoke)
    }
}

fn wait_until(what: &str, seen: &Mutex<Seen>, f: impl Fn(&Seen) -> bool) {
    let t0 = Instant::now();
    while !f(&seen.lock().unwrap()) {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_holder_that_sends_nothing_is_closed_and_the_copy_lands() {
    let dir = std::env::temp_dir().join(format!("spate-revoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.sock");
    let ep = Endpoint::Unix(path.clone());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s2, stop2, ep2) = (seen.clone(), stop.clone(), ep.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || {
        let mut server = RawServer::new(RawConfig::default()).unwrap();
        server.listen(&ep2).unwrap();
        tx.send(()).unwrap();
        let mut l = Hold {
            arena: Arena::new("t-revoke-dst", CHUNK, 4).unwrap(),
            seen: s2,
            revoke: Vec::new(),
        };
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            server
                .turn(&mut l, Some(Duration::from_millis(10)))
                .unwrap();
        }
    });
    rx.recv().unwrap();
    let key = ChunkKey {
        job: 1,
        stream: 0,
        offset: 0,
        len: CHUNK as u64,
    };

    // The stalled producer: offers the chunk, then says nothing more.
    let mut stalled = UnixStream::connect(&path).unwrap();
    stalled.write_all(&encode(Kind::Offer, &key, None)).unwrap();
    wait_until("the first offer granted", &seen, |s| s.holder.is_some());
    let holder = seen.lock().unwrap().holder.unwrap().0;

    // The copy, from a real client.
    let mut client = RawClient::new(RawConfig::default()).unwrap();
    let src = Arena::new("t-revoke-src", CHUNK, 1).unwrap();
    let mut b = src.alloc().unwrap();
    pattern::fill(1, 0, 0, b.as_mut_slice());
    client
        .send_to(&ep, &Via::any(), key, b.into(), 0)
        .map_err(|r| r.error)
        .unwrap();
    let mut events = Vec::new();
    let t0 = Instant::now();
    let mut acked = false;
    while !acked {
        assert!(t0.elapsed() < DEADLINE, "the copy never landed");
        client
            .turn(Some(Duration::from_millis(20)), &mut events)
            .unwrap();
        for e in events.drain(..) {
            match e {
                ClientEvent::Acked { key: k, .. } => {
                    assert_eq!(k, key);
                    acked = true;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    wait_until("the holder's close", &seen, |s| {
        s.closed.iter().any(|(c, _)| *c == holder)
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();

    let s = seen.lock().unwrap();
    assert_eq!(s.revoked, vec![holder]);
    // The holder's grant was given back, and only its.
    assert_eq!(s.abandoned, vec![(holder, key)]);
    // The copy landed, from the other connection, byte-exact; nothing landed from the holder.
    assert_eq!(s.landed.len(), 1, "{:?}", s.landed);
    let (c, k, ok) = s.landed[0];
    assert!(c != holder && k == key && ok, "{:?}", s.landed);
    let (_, err) = s.closed.iter().find(|(c, _)| *c == holder).unwrap();
    let err = err.as_deref().unwrap_or("");
    assert!(
        err.contains("without sending it while another producer offered it"),
        "{err}"
    );
    // The stalled peer sees its connection closed: end of file after the grant frame.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    stalled.read_to_end(&mut rest).unwrap();
    assert_eq!(
        rest.len(),
        spate_netlib::raw::HEADER_LEN,
        "only the grant came"
    );
    assert_eq!(rest[4], Kind::Grant as u8);
    let _ = std::fs::remove_dir_all(&dir);
}
