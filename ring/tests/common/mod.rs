#![allow(dead_code)]
use spate_ring::pattern;
use spate_ring::{Acquired, BackingPref, ReadError, Reader, Reserve, RingConfig, Writer};
use std::time::{Duration, Instant};

pub const SEED: u64 = 42;
pub const STREAM: u64 = 3;

pub fn writer(cap: usize, total: Option<u64>, pref: BackingPref) -> Writer {
    Writer::create(&RingConfig {
        name: "test".into(),
        capacity: cap,
        backing: pref,
        total_len: total,
        pacing: None,
    })
    .unwrap()
}

pub fn attach(w: &Writer) -> Reader {
    let (c, d) = w.dup_fds().unwrap();
    Reader::attach(c, d).unwrap()
}

/// Land `[off, off+len)` filled with the pattern (blocking for room).
pub fn land_pattern(w: &Writer, off: u64, len: usize) {
    match w.reserve(off, len, Some(Duration::from_secs(20))).unwrap() {
        Reserve::Granted(mut g) => {
            let o = g.offset();
            pattern::fill(SEED, STREAM, o, g.as_mut_slice());
            g.land().unwrap();
        }
        Reserve::AlreadyLanded => {}
        Reserve::NoRoom => panic!("no room for [{off}, +{len}) within 20 s"),
    }
}

/// Read to the end, checking the pattern; returns bytes read.
pub fn read_all(r: &mut Reader, max: usize) -> Result<u64, ReadError> {
    let mut n = 0u64;
    loop {
        let len = match r.acquire(1, max, Some(Duration::from_secs(20)))? {
            Acquired::Data(b) => {
                assert_eq!(pattern::check(SEED, STREAM, b.offset, b.data), None);
                assert_eq!(b.offset, n);
                b.data.len()
            }
            Acquired::End => return Ok(n),
            Acquired::TimedOut => panic!("reader timed out at {n}"),
        };
        n += len as u64;
        r.release(len)?;
    }
}

pub fn wait_until(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
