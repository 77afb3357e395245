//! Writer/reader in one process: ordering, duplicates, backpressure, states, header checks.
mod common;
use common::*;
use proptest::prelude::*;
use spate_ring::header::{self, HeaderError};
use spate_ring::pattern;
use spate_ring::shm::{self, Backing, BackingPref, Mapping, Segment};
use spate_ring::{AbortReason, Acquired, AttachError, ReadError, Reader, Reserve, WriteError};
use std::time::Duration;

const CAP: usize = 2 << 20;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    /// Chunks land in random orders within ring-sized windows, with duplicates; the reader
    /// (another thread, random block sizes) gets exactly the pattern bytes in order.
    #[test]
    fn out_of_order_and_duplicates_give_exact_bytes(
        sizes in prop::collection::vec(1usize..300_000, 1..40),
        seed in any::<u64>(),
        max_read in 1usize..700_000,
    ) {
        let total: u64 = sizes.iter().map(|&s| s as u64).sum();
        let w = writer(CAP, Some(total), BackingPref::NoHugeTlb);
        let mut r = attach(&w);
        let reader = std::thread::spawn(move || read_all(&mut r, max_read));
        // Group chunks into windows of at most the capacity; shuffle each and add duplicates.
        let mut rng = seed;
        let mut next = || { rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); rng >> 33 };
        let mut off = 0u64;
        let mut i = 0;
        while i < sizes.len() {
            let start = off;
            let mut group = Vec::new();
            while i < sizes.len() && off + sizes[i] as u64 - start <= CAP as u64 {
                group.push((off, sizes[i]));
                off += sizes[i] as u64;
                i += 1;
            }
            let n = group.len();
            for k in 0..n { group.push(group[next() as usize % n]); let _ = k; }
            for k in (1..group.len()).rev() { group.swap(k, next() as usize % (k + 1)); }
            for (o, l) in group { land_pattern(&w, o, l); }
        }
        w.finish().unwrap();
        prop_assert_eq!(reader.join().unwrap(), Ok(total));
    }
}

#[test]
fn backpressure_never_grants_unread_bytes() {
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let cap = w.capacity();
    let mut r = attach(&w);
    land_pattern(&w, 0, cap as usize);
    assert_eq!(w.frontier(), cap);
    assert!(matches!(w.try_reserve(cap, 1).unwrap(), Reserve::NoRoom));
    assert!(
        !w.wait_room(cap + 1, Some(Duration::from_millis(30)))
            .unwrap()
    );
    assert!(matches!(
        w.reserve(cap, 1, Some(Duration::from_millis(30))).unwrap(),
        Reserve::NoRoom
    ));
    match r.acquire(4096, 4096, None).unwrap() {
        Acquired::Data(b) => assert_eq!(b.data.len(), 4096),
        other => panic!("{other:?}"),
    }
    r.release(4096).unwrap();
    assert_eq!(w.reader_pos(), 4096);
    assert!(matches!(w.try_reserve(cap, 4097).unwrap(), Reserve::NoRoom));
    let Reserve::Granted(g) = w.try_reserve(cap, 4096).unwrap() else {
        panic!("expected a grant")
    };
    assert_eq!(g.ring_offset(), 0);
    // An overlapping grant while this one is in flight is refused.
    assert!(matches!(
        w.try_reserve(cap + 100, 10),
        Err(WriteError::Busy { .. })
    ));
    drop(g);
    // Below the frontier: a duplicate, dropped; straddling: only the new part is granted.
    assert!(matches!(
        w.try_reserve(100, 10).unwrap(),
        Reserve::AlreadyLanded
    ));
    let Reserve::Granted(g) = w.try_reserve(cap - 10, 20).unwrap() else {
        panic!("expected a grant")
    };
    assert_eq!((g.offset(), g.len(), g.skip()), (cap, 10, 10));
    // Releasing more than was acquired is refused.
    assert!(matches!(
        r.release(cap as usize),
        Err(ReadError::BadRequest(_))
    ));
}

#[test]
fn writer_waits_for_room_on_futex_and_is_woken() {
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let cap = w.capacity();
    let mut r = attach(&w);
    land_pattern(&w, 0, cap as usize);
    let w2 = w.clone();
    let t = std::thread::spawn(move || {
        land_pattern(&w2, cap, 1000);
        w2.finish().unwrap();
    });
    assert_eq!(read_all(&mut r, 1 << 20), Ok(cap + 1000));
    t.join().unwrap();
}

#[test]
fn reader_timeout_end_and_abort_are_distinct() {
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let mut r = attach(&w);
    assert!(matches!(
        r.acquire(1, 10, Some(Duration::from_millis(20))).unwrap(),
        Acquired::TimedOut
    ));
    land_pattern(&w, 0, 10);
    w.finish().unwrap();
    assert!(matches!(r.acquire(1, 100, None).unwrap(), Acquired::Data(b) if b.data.len() == 10));
    r.release(10).unwrap();
    assert!(matches!(r.acquire(1, 100, None).unwrap(), Acquired::End));
    // After the end: what landed lands again idempotently, anything new is refused.
    assert_eq!(w.land(0, 5).unwrap(), 10);
    assert!(matches!(
        w.land(5, 6),
        Err(WriteError::BadRange {
            why: "beyond the total stream length",
            ..
        })
    ));

    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let mut r = attach(&w);
    land_pattern(&w, 0, 10);
    w.abort(AbortReason::ProducerLost);
    assert_eq!(
        r.acquire(1, 100, None).unwrap_err(),
        ReadError::Aborted(AbortReason::ProducerLost)
    );
    // Dropping an unfinished writer aborts with WriterGone.
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let mut r = attach(&w);
    drop(w);
    assert_eq!(
        r.acquire(1, 100, None).unwrap_err(),
        ReadError::Aborted(AbortReason::WriterGone)
    );
}

/// A ring whose end awaits confirmation: the reader that read every byte gets the end only
/// once the writer confirms it; a refusal (the job ended otherwise) is the reader's error, with
/// the writer's words; dropping the writer unconfirmed refuses with WriterGone.
#[test]
fn an_awaited_end_is_returned_only_once_confirmed() {
    let w = writer(CAP, Some(10), BackingPref::NoHugeTlb);
    w.await_confirmation();
    let mut r = attach(&w);
    land_pattern(&w, 0, 10);
    w.finish().unwrap();
    assert!(matches!(r.acquire(1, 100, None).unwrap(), Acquired::Data(b) if b.data.len() == 10));
    r.release(10).unwrap();
    // Every byte read, the end not confirmed: the reader waits (here, up to its timeout).
    assert!(matches!(
        r.acquire(1, 100, Some(Duration::from_millis(30))).unwrap(),
        Acquired::TimedOut
    ));
    // A reader waiting at the end gets it once confirmed.
    let t = std::thread::spawn(move || {
        let got = r.acquire(1, 100, Some(Duration::from_secs(20)));
        matches!(got, Ok(Acquired::End))
    });
    w.confirm_end();
    assert!(t.join().unwrap(), "the reader did not get the end");
    // A later abort has no effect on a confirmed end.
    w.abort_with(AbortReason::JobAborted, "too late");

    // Refused: every byte read, then the job was aborted.
    let (w, mut r) = ended_and_read_awaiting_its_end();
    w.abort_with(
        AbortReason::JobAborted,
        "job 3 was aborted: output node \"c1\" crashed",
    );
    assert_eq!(
        r.acquire(1, 100, None).unwrap_err(),
        ReadError::Aborted(AbortReason::JobAborted)
    );
    assert_eq!(
        r.abort_message().as_deref(),
        Some("job 3 was aborted: output node \"c1\" crashed")
    );

    // Dropped unconfirmed.
    let (w, mut r) = ended_and_read_awaiting_its_end();
    drop(w);
    assert_eq!(
        r.acquire(1, 100, None).unwrap_err(),
        ReadError::Aborted(AbortReason::WriterGone)
    );
}

/// A 10-byte stream whose end awaits confirmation, landed, finished and read to its end.
fn ended_and_read_awaiting_its_end() -> (spate_ring::Writer, Reader) {
    let w = writer(CAP, Some(10), BackingPref::NoHugeTlb);
    w.await_confirmation();
    let mut r = attach(&w);
    land_pattern(&w, 0, 10);
    w.finish().unwrap();
    assert_eq!(read_until_end_or_err(&mut r), Ok(10));
    (w, r)
}

/// Reads what is there without waiting for an end that needs confirming: the bytes read.
fn read_until_end_or_err(r: &mut Reader) -> Result<u64, ReadError> {
    let mut n = 0u64;
    loop {
        match r.acquire(1, 1 << 20, Some(Duration::from_millis(10)))? {
            Acquired::Data(b) => {
                let len = b.data.len();
                n += len as u64;
                r.release(len)?;
            }
            Acquired::End | Acquired::TimedOut => return Ok(n),
        }
    }
}

/// Issue 12, defect 2: a chunk re-sent after its producer died can arrive after the stream
/// completed. Every byte of it has landed: it is a duplicate (acked, dropped), not a refusal.
#[test]
fn a_landed_range_offered_again_after_the_end_is_already_landed() {
    let total = 300_000u64;
    let w = writer(CAP, Some(total), BackingPref::NoHugeTlb);
    let mut r = attach(&w);
    land_pattern(&w, 100_000, 200_000);
    land_pattern(&w, 0, 100_000);
    w.finish().unwrap();
    assert!(w.is_closed());
    assert!(matches!(
        w.try_reserve(100_000, 100_000).unwrap(),
        Reserve::AlreadyLanded
    ));
    assert!(matches!(
        w.reserve(0, total as usize, Some(Duration::ZERO)).unwrap(),
        Reserve::AlreadyLanded
    ));
    assert_eq!(w.land(250_000, 50_000).unwrap(), total);
    // Nothing changed for the reader: the stream reads exactly, then ends.
    assert_eq!(read_all(&mut r, 1 << 20), Ok(total));

    // With no total known, finishing makes the frontier the total: a range beyond it is
    // refused as out of range.
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    land_pattern(&w, 0, 1000);
    w.finish().unwrap();
    assert!(matches!(
        w.try_reserve(500, 500).unwrap(),
        Reserve::AlreadyLanded
    ));
    assert!(matches!(
        w.try_reserve(500, 501),
        Err(WriteError::BadRange {
            why: "beyond the total stream length",
            ..
        })
    ));

    // An aborted stream refuses everything, landed or not: its readers saw the abort.
    let w = writer(CAP, Some(total), BackingPref::NoHugeTlb);
    land_pattern(&w, 0, 1000);
    w.abort(AbortReason::Cancelled);
    assert!(matches!(
        w.try_reserve(0, 1000),
        Err(WriteError::Closed("aborted"))
    ));
    assert!(matches!(
        w.try_reserve(1000, 1000),
        Err(WriteError::Closed("aborted"))
    ));
    assert!(matches!(
        w.land(0, 1000),
        Err(WriteError::Closed("aborted"))
    ));
}

#[test]
fn finish_refuses_gaps_and_total_mismatch() {
    let w = writer(CAP, Some(100), BackingPref::NoHugeTlb);
    land_pattern(&w, 50, 50);
    assert!(matches!(
        w.finish(),
        Err(WriteError::Incomplete {
            frontier: 0,
            pending: 50,
            ..
        })
    ));
    assert!(matches!(
        w.try_reserve(90, 20),
        Err(WriteError::BadRange { .. })
    ));
    land_pattern(&w, 0, 50);
    w.finish().unwrap();
}

#[test]
fn second_reader_refused_then_allowed_after_detach() {
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let r = attach(&w);
    let (c, d) = w.dup_fds().unwrap();
    assert!(matches!(
        Reader::attach(c, d),
        Err(AttachError::ReaderAttached { .. })
    ));
    assert_eq!(w.reader_status(), spate_ring::ReaderStatus::Attached);
    drop(r);
    assert_eq!(w.reader_status(), spate_ring::ReaderStatus::Detached);
    assert!(matches!(
        w.wait_room(u64::MAX, Some(Duration::from_millis(10))),
        Err(WriteError::ReaderGone(spate_ring::ReaderStatus::Detached))
    ));
    let _r = attach(&w);
}

/// Issue 12, defect 1: a reader counts the bytes it read itself. One joining after an earlier
/// reader left starts where that one stopped; a stream read to its end cannot be read again
/// (an error that says so), whatever became of the earlier reader.
#[test]
fn a_late_reader_starts_where_the_last_stopped_and_a_consumed_stream_is_refused() {
    let total = 500_000u64;
    let w = writer(CAP, Some(total), BackingPref::NoHugeTlb);
    land_pattern(&w, 0, total as usize);
    let mut r = attach(&w);
    assert_eq!((r.start_offset(), r.bytes_read()), (0, 0));
    let Acquired::Data(b) = r.acquire(1, 123_457, None).unwrap() else {
        panic!("expected data")
    };
    assert_eq!((b.offset, b.data.len()), (0, 123_457));
    r.release(123_457).unwrap();
    assert_eq!(r.bytes_read(), 123_457);
    drop(r);
    let mut r = attach(&w);
    assert_eq!(
        (r.start_offset(), r.position(), r.bytes_read()),
        (123_457, 123_457, 0)
    );
    w.finish().unwrap();
    let Acquired::Data(b) = r.acquire(1, 1 << 20, None).unwrap() else {
        panic!("expected data")
    };
    assert_eq!(b.offset, 123_457);
    assert_eq!(pattern::check(SEED, STREAM, b.offset, b.data), None);
    let n = b.data.len();
    r.release(n).unwrap();
    assert!(matches!(
        r.acquire(1, 1 << 20, None).unwrap(),
        Acquired::End
    ));
    assert_eq!(r.bytes_read(), total - 123_457);
    let pid = std::process::id();
    drop(r);
    let (c, d) = w.dup_fds().unwrap();
    let e = Reader::attach(c, d).unwrap_err();
    assert!(
        matches!(e, AttachError::Consumed { total: 500_000, pid: p, how: "detached" } if p == pid),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "the stream was already read to its end: an earlier reader (pid {pid}, detached) \
             read and released all 500000 bytes; nothing is left to read"
        )
    );
    // The refused attach took nothing: the writer still sees the earlier reader detached.
    assert_eq!(w.reader_status(), spate_ring::ReaderStatus::Detached);

    // An empty stream: its first reader reads nothing and ends; a second one is refused.
    let w = writer(CAP, Some(0), BackingPref::NoHugeTlb);
    w.finish().unwrap();
    let mut r = attach(&w);
    assert!(matches!(r.acquire(1, 10, None).unwrap(), Acquired::End));
    drop(r);
    let (c, d) = w.dup_fds().unwrap();
    assert!(matches!(
        Reader::attach(c, d),
        Err(AttachError::Consumed { total: 0, .. })
    ));
}

fn corrupt(field: usize, val: &[u8]) -> AttachError {
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let (c, d) = w.dup_fds().unwrap();
    let seg = Segment::from_fd(c.try_clone().unwrap()).unwrap();
    let m = Mapping::map(&seg, true).unwrap();
    // SAFETY: in-bounds write into our own test mapping of the control segment.
    unsafe { std::ptr::copy_nonoverlapping(val.as_ptr(), m.as_ptr().add(field), val.len()) };
    Reader::attach(c, d).unwrap_err()
}

#[test]
fn corrupted_header_is_refused_naming_the_field() {
    let e = corrupt(header::off::MAGIC, b"NOTARING");
    assert!(
        matches!(e, AttachError::Header(HeaderError::BadMagic { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("bad magic"));
    let e = corrupt(header::off::VERSION, &7u32.to_le_bytes());
    assert!(
        matches!(e, AttachError::Header(HeaderError::BadVersion { found: 7 })),
        "{e}"
    );
    assert!(e.to_string().contains("version 7"));
    let e = corrupt(header::off::CAPACITY, &(4096u64).to_le_bytes());
    assert!(
        matches!(
            e,
            AttachError::Header(HeaderError::CapacityMismatch { capacity: 4096, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("capacity 4096"));
    let e = corrupt(header::off::HEADER_LEN, &(8u32).to_le_bytes());
    assert!(
        matches!(
            e,
            AttachError::Header(HeaderError::BadHeaderLen { found: 8 })
        ),
        "{e}"
    );
    let e = corrupt(header::off::BACKING, &(99u32).to_le_bytes());
    assert!(
        matches!(
            e,
            AttachError::Header(HeaderError::BadBacking { found: 99 })
        ),
        "{e}"
    );
    // A control segment that is too small.
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let (_c, d) = w.dup_fds().unwrap();
    let small = Segment::create_small("x", 64).unwrap();
    // (create_small rounds to a page, so use a data segment as the "control" of wrong layout)
    let e = Reader::attach(small.dup_fd().unwrap(), d).unwrap_err();
    assert!(
        matches!(e, AttachError::Header(HeaderError::BadMagic { found: 0 })),
        "{e}"
    );
}

#[test]
fn corrupt_frontier_is_detected_by_reader() {
    let w = writer(CAP, None, BackingPref::NoHugeTlb);
    let (c, d) = w.dup_fds().unwrap();
    let seg = Segment::from_fd(c.try_clone().unwrap()).unwrap();
    let m = Mapping::map(&seg, true).unwrap();
    let mut r = Reader::attach(c, d).unwrap();
    // SAFETY: the frontier is the first u64 of the Ctl block, in bounds of our test mapping.
    unsafe { (m.as_ptr().add(header::CTL_OFFSET) as *mut u64).write_volatile(u64::MAX / 2) };
    assert!(matches!(r.acquire(1, 1, None), Err(ReadError::Corrupt(_))));
}

fn roundtrip(pref: BackingPref) -> Backing {
    let total = 3 * CAP as u64 + 12345;
    let w = writer(CAP, Some(total), pref);
    let mut r = attach(&w);
    assert_eq!(r.backing(), w.backing());
    let w2 = w.clone();
    let t = std::thread::spawn(move || {
        let mut off = 0u64;
        while off < total {
            let len = (total - off).min(777_777) as usize;
            land_pattern(&w2, off, len);
            off += len as u64;
        }
        w2.finish().unwrap();
    });
    assert_eq!(read_all(&mut r, 1 << 20), Ok(total));
    t.join().unwrap();
    w.backing()
}

#[test]
fn shmem_backing_roundtrip() {
    let b = roundtrip(BackingPref::NoHugeTlb);
    assert_ne!(b, Backing::HugeTlb);
}

#[test]
fn hugetlb_backing_roundtrip() {
    let (total, free) = shm::huge_pool();
    if free < 4 {
        eprintln!(
            "SKIP hugetlb_backing_roundtrip: {free} of {total} 2 MiB hugepages free; \
             reserve some with `echo 256 > /proc/sys/vm/nr_hugepages`"
        );
        return;
    }
    assert_eq!(roundtrip(BackingPref::HugeTlbOnly), Backing::HugeTlb);
}
