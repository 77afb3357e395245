//! The raw protocol machines without I/O: the offer/grant/data/ack and share/pull flows with
//! short reads and writes, protocol violations with their own error, and a property test that
//! pairs a SendMachine with a RecvMachine through random short reads and writes, random
//! answers and random completion order, checking every chunk lands byte-exact exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::os::fd::{AsRawFd, RawFd};

use proptest::prelude::*;
use spate_netlib::auth::{AuthError, Secret};
use spate_netlib::frame::FrameError;
use spate_netlib::raw::{
    ChunkKey, Gate, HEADER_LEN, Kind, Malformed, Msg, PULL_TAIL_LEN, ProtocolError, RecvEvent,
    RecvIo, RecvMachine, RefuseReason, SegmentFrame, SendEvent, SendIo, SendMachine, Subject,
    decode, encode, encode_pull_tail,
};

/// A descriptor that is never used (the machines only hold descriptors).
#[derive(Debug, PartialEq, Eq)]
struct NoFd;
impl AsRawFd for NoFd {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

type Recv = RecvMachine<Vec<u8>, NoFd>;

fn key(off: u64, len: u64) -> ChunkKey {
    ChunkKey {
        job: 7,
        stream: 2,
        offset: off,
        len,
    }
}

fn what<T: std::fmt::Debug>(r: Result<T, ProtocolError>) -> &'static str {
    match r {
        Err(ProtocolError::Violation { what, .. }) => what,
        other => panic!("not a violation: {other:?}"),
    }
}

/// Complete every control write of the sender in full; the bytes and, per write, whether a
/// descriptor went with it.
fn drain_ctl<S, F>(s: &mut SendMachine<S, F>) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    loop {
        match s.poll() {
            Some(SendIo::Write(b)) => {
                s.on_written(b.clone(), b.len()).unwrap();
                out.push((b, false));
            }
            Some(SendIo::Share { frame, .. }) => {
                s.on_written(frame.clone(), frame.len()).unwrap();
                out.push((frame, true));
            }
            Some(SendIo::Read { .. }) | None => return out,
            Some(SendIo::Payload { .. }) => panic!("payload while draining control"),
        }
    }
}

/// The receiver's side of a test: outstanding I/O and the answers it wrote.
struct Rx {
    m: Recv,
    want: Option<usize>,
    answers: Vec<u8>,
}

impl Rx {
    fn new(max: u64) -> Rx {
        Rx {
            m: RecvMachine::new(max),
            want: None,
            answers: Vec::new(),
        }
    }

    /// Poll until a header read is outstanding, completing writes in full on the way.
    fn arm(&mut self) -> usize {
        while self.want.is_none() {
            match self.m.poll() {
                Some(RecvIo::Header { want }) => self.want = Some(want),
                Some(RecvIo::Write(b) | RecvIo::Lend { frame: b, .. }) => {
                    self.m.on_written(b.clone(), b.len()).unwrap();
                    self.answers.extend_from_slice(&b);
                }
                other => panic!("receiver wants {other:?} while control is pending"),
            }
        }
        self.want.unwrap_or(0)
    }

    /// Feed bytes in pieces of at most 13 (header reads may be short too); `fd`: a descriptor
    /// comes with the first byte.
    fn feed(&mut self, bytes: &[u8], mut fd: bool) -> Vec<RecvEvent<Vec<u8>>> {
        let mut ev = Vec::new();
        for piece in bytes.chunks(13) {
            let mut rest = piece;
            while !rest.is_empty() {
                let want = self.arm();
                let n = want.min(rest.len());
                if std::mem::take(&mut fd) {
                    self.m.on_fds(vec![NoFd], false).unwrap();
                }
                self.want = None;
                if let Some(e) = self.m.on_header_bytes(&rest[..n]).unwrap() {
                    ev.push(e);
                }
                rest = &rest[n..];
            }
        }
        ev
    }

    fn take_answers(&mut self) -> Vec<u8> {
        if self.want.is_none() {
            self.arm();
        } else if let Some(RecvIo::Write(b)) = self.m.poll() {
            self.m.on_written(b.clone(), b.len()).unwrap();
            self.answers.extend_from_slice(&b);
        }
        std::mem::take(&mut self.answers)
    }
}

fn pump<F>(s: &mut SendMachine<&'static str, F>, r: &mut Rx) -> Vec<RecvEvent<Vec<u8>>> {
    let mut ev = Vec::new();
    for (b, fd) in drain_ctl(s) {
        ev.extend(r.feed(&b, fd));
    }
    ev
}

#[test]
fn offer_grant_data_ack_with_short_reads_and_writes_resumed() {
    let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
    let mut r = Rx::new(1 << 20);
    let (k1, k2) = (key(0, 10), key(10, 6));
    s.offer(k1, "src1").unwrap();
    s.offer(k2, "src2").unwrap();
    assert_eq!(s.in_flight(), 2);
    // A short control write: the rest goes first next time.
    let Some(SendIo::Write(b)) = s.poll() else {
        panic!()
    };
    assert_eq!(b.len(), 2 * HEADER_LEN);
    s.on_written(b.clone(), 7).unwrap();
    let mut ev = r.feed(&b[..7], false);
    ev.extend(pump(&mut s, &mut r));
    assert_eq!(ev, vec![RecvEvent::Offer(k1), RecvEvent::Offer(k2)]);
    // Nothing granted yet: the sender only waits for answers (its read is armed).
    assert_eq!(s.poll(), None);

    r.m.grant(&k2, vec![0u8; 6]).unwrap();
    r.m.refuse(&k1, RefuseReason::Aborted).unwrap();
    assert!(matches!(
        r.m.grant(&k1, vec![]),
        Err(ProtocolError::Violation { .. })
    ));
    let out = r.take_answers();
    assert_eq!(out.len(), 2 * HEADER_LEN);
    // The sender reads the answers in odd pieces.
    let mut evs = s.on_read(&out[..7]).unwrap();
    // Half an answer: nothing to write yet, the read is armed again.
    assert_eq!(
        s.poll(),
        Some(SendIo::Read {
            want: HEADER_LEN * 16
        })
    );
    evs.extend(s.on_read(&out[7..]).unwrap());
    assert_eq!(
        evs,
        vec![SendEvent::Refused(k1, RefuseReason::Aborted, "src1")]
    );
    // The Data header of k2 goes out, then the payload in two short writes / reads.
    let hdr = Msg::Data(k2).encode();
    assert_eq!(s.poll(), Some(SendIo::Write(hdr.to_vec())));
    s.on_written(hdr.to_vec(), HEADER_LEN).unwrap();
    assert!(r.feed(&hdr, false).is_empty());
    let Some(SendIo::Payload {
        key: pk,
        src,
        at: 0,
        len: 6,
    }) = s.poll()
    else {
        panic!()
    };
    assert_eq!(pk, k2);
    s.on_payload_written(src, 4).unwrap();
    assert!(matches!(
        s.poll(),
        Some(SendIo::Payload { at: 4, len: 2, .. })
    ));
    // (its source comes back with the completion)
    s.on_payload_written("src2", 2).unwrap();
    let Some(RecvIo::Payload {
        key: rk,
        mut dest,
        at: 0,
        len: 6,
    }) = r.m.poll()
    else {
        panic!()
    };
    assert_eq!(rk, k2);
    dest[..4].copy_from_slice(b"abcd");
    assert_eq!(r.m.on_payload(dest, 4).unwrap(), None);
    let Some(RecvIo::Payload {
        mut dest,
        at: 4,
        len: 2,
        ..
    }) = r.m.poll()
    else {
        panic!()
    };
    dest[4..].copy_from_slice(b"ef");
    match r.m.on_payload(dest, 2).unwrap() {
        Some(RecvEvent::Landed(k, d)) => {
            assert_eq!(k, k2);
            assert_eq!(d, b"abcdef");
        }
        other => panic!("{other:?}"),
    }
    let ack = r.take_answers();
    assert_eq!(r.want, Some(HEADER_LEN));
    assert_eq!(
        decode(ack[..].try_into().unwrap(), 1 << 20).unwrap().kind,
        Kind::Ack
    );
    assert_eq!(s.on_read(&ack).unwrap(), vec![SendEvent::Acked(k2, "src2")]);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn protocol_violations_and_malformed_frames_are_errors_of_their_own_kind() {
    let mut r = Rx::new(100);
    r.arm();
    let e = r.m.on_header_bytes(&encode(Kind::Data, &key(0, 5), None));
    assert_eq!(what(e), "data for a chunk that was not granted");
    // A consumer never receives grants.
    let mut r = Rx::new(100);
    r.arm();
    assert_eq!(
        r.m.on_header_bytes(&encode(Kind::Grant, &key(0, 5), None)),
        Err(ProtocolError::Malformed(Malformed::WrongDirection(
            Kind::Grant
        )))
    );
    let mut r = Rx::new(100);
    r.arm();
    assert!(matches!(
        r.m.on_header_bytes(&[0xAB; HEADER_LEN]),
        Err(ProtocolError::Malformed(Malformed::BadMagic(_)))
    ));
    let mut r = Rx::new(100);
    r.arm();
    assert_eq!(
        r.m.on_header_bytes(&encode(Kind::Offer, &key(0, 101), None)),
        Err(ProtocolError::Malformed(Malformed::TooLong {
            len: 101,
            max: 100
        }))
    );
    // Duplicate offer.
    let mut r = Rx::new(100);
    r.feed(&encode(Kind::Offer, &key(0, 5), None), false);
    r.arm();
    let e = r.m.on_header_bytes(&encode(Kind::Offer, &key(0, 5), None));
    assert_eq!(what(e), "offer repeated while outstanding");
    // More header bytes than asked for: the shell misused the machine.
    let mut r = Rx::new(100);
    r.arm();
    assert_eq!(
        r.m.on_header_bytes(&[0; HEADER_LEN + 1]),
        Err(ProtocolError::Misuse("header bytes fed out of turn"))
    );

    // Sender side: an ack for something never sent, a grant never offered.
    let mut s: SendMachine<u8> = SendMachine::new(100);
    let e = s.on_read(&encode(Kind::Ack, &key(0, 5), None));
    assert_eq!(
        e,
        Err(ProtocolError::Violation {
            what: "ack for a chunk that was not sent",
            subject: Subject::Chunk(key(0, 5))
        })
    );
    let mut s: SendMachine<u8> = SendMachine::new(100);
    assert_eq!(
        s.on_read(&encode(Kind::Offer, &key(0, 5), None)),
        Err(ProtocolError::Malformed(Malformed::WrongDirection(
            Kind::Offer
        )))
    );
    let mut s: SendMachine<u8> = SendMachine::new(100);
    assert!(matches!(
        s.offer(key(0, 0), 1),
        Err((ProtocolError::Malformed(Malformed::ZeroLength), 1))
    ));
    s.offer(key(0, 5), 1).unwrap();
    assert!(matches!(
        s.offer(key(0, 5), 2),
        Err((ProtocolError::Violation { .. }, 2))
    ));
}

#[test]
fn eof_mid_payload_and_abandon_return_every_destination() {
    let mut s: SendMachine<u8> = SendMachine::new(100);
    let mut r: RecvMachine<u32, NoFd> = RecvMachine::new(100);
    let (k1, k2) = (key(0, 5), key(5, 5));
    for (k, v) in [(k1, 1), (k2, 2)] {
        s.offer(k, v).unwrap();
        let Some(SendIo::Write(b)) = s.poll() else {
            panic!()
        };
        s.on_written(b.clone(), b.len()).unwrap();
        assert_eq!(r.poll(), Some(RecvIo::Header { want: HEADER_LEN }));
        assert_eq!(r.on_header_bytes(&b).unwrap(), Some(RecvEvent::Offer(k)));
    }
    r.grant(&k1, 10).unwrap();
    r.grant(&k2, 20).unwrap();
    let Some(RecvIo::Write(g)) = r.poll() else {
        panic!()
    };
    r.on_written(g.clone(), g.len()).unwrap();
    assert_eq!(r.poll(), Some(RecvIo::Header { want: HEADER_LEN }));
    r.on_header_bytes(&encode(Kind::Data, &k1, None)).unwrap();
    let Some(RecvIo::Payload { dest, .. }) = r.poll() else {
        panic!()
    };
    assert!(r.mid_frame());
    assert_eq!(
        r.on_payload(dest, 0),
        Err(ProtocolError::Closed { mid_frame: true })
    );
    r.close();
    assert!(!r.busy());
    assert_eq!(r.poll(), None);
    let mut got = r.abandon();
    got.sort();
    assert_eq!(got, vec![(k1, 10), (k2, 20)]);
    assert!(matches!(s.poll(), Some(SendIo::Read { .. })));
    assert_eq!(s.on_eof(), Err(ProtocolError::Closed { mid_frame: false }));
    s.close();
    let mut back = s.abandon();
    back.sort();
    assert_eq!(back, vec![(k1, 1), (k2, 2)]);
}

#[test]
fn offers_queued_while_a_data_header_is_pending_go_after_its_payload() {
    let mut s: SendMachine<u8> = SendMachine::new(100);
    let (k1, k2) = (key(0, 5), key(5, 5));
    s.offer(k1, 1).unwrap();
    drain_ctl(&mut s);
    s.on_read(&encode(Kind::Grant, &k1, None)).unwrap();
    // The Data header of k1 is now due...
    let Some(SendIo::Write(b)) = s.poll() else {
        panic!()
    };
    assert_eq!(
        decode(b[..].try_into().unwrap(), 100).unwrap().kind,
        Kind::Data
    );
    // ...an offer made now must not slip between header and payload.
    s.offer(k2, 2).unwrap();
    s.on_written(b, HEADER_LEN).unwrap();
    let Some(SendIo::Payload {
        key: k,
        src,
        at: 0,
        len: 5,
    }) = s.poll()
    else {
        panic!()
    };
    assert_eq!(k, k1);
    s.on_payload_written(src, 5).unwrap();
    let Some(SendIo::Write(b)) = s.poll() else {
        panic!()
    };
    let f = decode(b[..].try_into().unwrap(), 100).unwrap();
    assert_eq!((f.kind, f.key), (Kind::Offer, k2));
}

fn pull_key(off: u64, len: u64) -> ChunkKey {
    ChunkKey {
        job: 9,
        stream: 1,
        offset: off,
        len,
    }
}

#[test]
fn share_pull_ack_and_unshare_flow() {
    let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
    let mut r = Rx::new(1 << 20);
    // An offer queued before the share still goes out; the share's frame is written first,
    // alone, so its descriptor travels with exactly that frame.
    s.offer(pull_key(0, 10), "offered").unwrap();
    assert!(s.share(3, 8 << 20));
    assert!(!s.share(3, 8 << 20), "shared once per connection");
    s.pull(pull_key(10, 100), "pulled", 3, 4096).unwrap();
    let ctl = drain_ctl(&mut s);
    assert!(ctl[0].1, "the descriptor goes with the first write");
    let f = decode(ctl[0].0[..].try_into().unwrap(), 1 << 20).unwrap();
    assert_eq!((f.kind, f.key.stream, f.key.len), (Kind::Share, 3, 8 << 20));
    let mut ev = Vec::new();
    for (b, fd) in ctl {
        ev.extend(r.feed(&b, fd));
    }
    assert_eq!(
        ev,
        vec![
            RecvEvent::Share {
                seg: 3,
                len: 8 << 20
            },
            RecvEvent::Offer(pull_key(0, 10)),
            RecvEvent::Offer(pull_key(10, 100)),
        ]
    );
    assert!(r.m.has_segment(3) && r.m.segment_fd(3) == Some(&NoFd));
    assert_eq!(s.in_flight(), 2);
    // Granting a pull sends nothing: the machine asks for the copy instead.
    r.m.grant(&pull_key(10, 100), vec![0u8; 100]).unwrap();
    let Some(RecvIo::Copy {
        id,
        key: ck,
        off: 4096,
        dest,
        at: 0,
        len: 100,
        ..
    }) = r.m.poll()
    else {
        panic!()
    };
    assert_eq!(ck, pull_key(10, 100));
    assert!(r.m.busy());
    // Unsharing while the chunk is being copied breaks the protocol.
    let mut r2 = Rx::new(1 << 20);
    let seg3 = SegmentFrame {
        seg: 3,
        len: 8 << 20,
    };
    r2.feed(&Msg::Share(seg3).encode(), true);
    r2.feed(&encode(Kind::Pull, &pull_key(0, 5), None), false);
    r2.feed(&encode_pull_tail(3, 0), false);
    r2.arm();
    let e = r2.m.on_header_bytes(&Msg::Unshare(seg3).encode());
    assert_eq!(
        e,
        Err(ProtocolError::Violation {
            what: "unshare of a segment with chunks in flight",
            subject: Subject::Segment(3)
        })
    );
    // A short copy is resumed; the complete copy lands and acks.
    assert_eq!(r.m.on_copied(id, dest, 60).unwrap(), None);
    let Some(RecvIo::Copy {
        id,
        off,
        dest,
        at: 60,
        len: 40,
        ..
    }) = r.m.poll()
    else {
        panic!()
    };
    assert_eq!(off, 4096 + 60);
    assert!(matches!(
        r.m.on_copied(id, dest, 40).unwrap(),
        Some(RecvEvent::Landed(k, _)) if k == pull_key(10, 100)
    ));
    assert_eq!(
        r.m.on_copied(id, vec![], 1),
        Err(ProtocolError::Misuse("copy completion out of turn"))
    );
    let out = r.take_answers();
    assert_eq!(
        s.on_read(&out).unwrap(),
        vec![SendEvent::Acked(pull_key(10, 100), "pulled")]
    );
    // A pulled chunk can be refused too.
    s.pull(pull_key(110, 100), "again", 3, 0).unwrap();
    pump(&mut s, &mut r);
    r.m.refuse(&pull_key(110, 100), RefuseReason::Aborted)
        .unwrap();
    assert_eq!(
        s.on_read(&r.take_answers()).unwrap(),
        vec![SendEvent::Refused(
            pull_key(110, 100),
            RefuseReason::Aborted,
            "again"
        )]
    );
    // Retire the segment: later pulls from it are violations.
    s.unshare(3, 8 << 20);
    assert_eq!(pump(&mut s, &mut r), vec![RecvEvent::Unshare { seg: 3 }]);
    assert!(!r.m.has_segment(3));
    s.pull(pull_key(300, 1), "late", 3, 0).unwrap();
    let ctl = drain_ctl(&mut s);
    let b = &ctl[0].0;
    r.feed(&b[..HEADER_LEN], false);
    r.arm();
    assert_eq!(
        what(r.m.on_header_bytes(&b[HEADER_LEN..])),
        "pull from a segment that was not shared"
    );
}

#[test]
fn malformed_share_and_pull_frames_are_refused_with_their_own_kind() {
    let seg = |id: u32, len: u64| Msg::Share(SegmentFrame { seg: id, len }).encode();
    // A pull beyond its segment, a segment shared twice, too many segments, an unknown
    // unshare, a share without its descriptor: each a protocol violation of its own.
    let mut r = Rx::new(1 << 20);
    r.feed(&seg(1, 4096), true);
    r.feed(&encode(Kind::Pull, &pull_key(0, 100), None), false);
    assert_eq!(r.arm(), PULL_TAIL_LEN);
    r.want = None;
    assert_eq!(
        what(r.m.on_header_bytes(&encode_pull_tail(1, 4000))),
        "pull beyond the end of its shared segment"
    );
    let mut r = Rx::new(1 << 20);
    r.feed(&seg(1, 4096), true);
    r.arm();
    r.m.on_fds(vec![NoFd], false).unwrap();
    assert_eq!(
        what(r.m.on_header_bytes(&seg(1, 4096))),
        "segment shared twice"
    );
    let mut r = Rx::new(1 << 20);
    for i in 0..spate_netlib::raw::MAX_SEGMENTS as u32 {
        r.feed(&seg(i, 4096), true);
    }
    r.arm();
    r.m.on_fds(vec![NoFd], false).unwrap();
    assert_eq!(
        what(r.m.on_header_bytes(&seg(999, 4096))),
        "too many shared segments"
    );
    let unshare = Msg::Unshare(SegmentFrame {
        seg: 999,
        len: 4096,
    })
    .encode();
    let mut r = Rx::new(1 << 20);
    r.arm();
    assert_eq!(
        what(r.m.on_header_bytes(&unshare)),
        "unshare of a segment that was not shared"
    );
    let mut r = Rx::new(1 << 20);
    r.arm();
    assert_eq!(
        r.m.on_header_bytes(&seg(4, 4096)),
        Err(ProtocolError::Violation {
            what: "shared descriptor missing or not a memory file of the declared size",
            subject: Subject::Segment(4)
        })
    );
    // Descriptors beyond what frames can declare.
    let mut r = Rx::new(1 << 20);
    assert_eq!(
        r.m.on_fds(vec![NoFd], true),
        Err(ProtocolError::ExtraDescriptors)
    );
    // Producers never receive segment frames; a grant for a pulled chunk is a violation.
    let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
    assert_eq!(
        s.on_read(&seg(1, 4096)),
        Err(ProtocolError::Malformed(Malformed::WrongDirection(
            Kind::Share
        )))
    );
    let mut s: SendMachine<&'static str> = SendMachine::new(1 << 20);
    s.pull(pull_key(0, 10), "p", 1, 0).unwrap();
    assert_eq!(
        what(s.on_read(&encode(Kind::Grant, &pull_key(0, 10), None))),
        "grant for a chunk that was not offered"
    );
}

#[test]
fn zero_copy_places_land_only_what_was_placed_on_this_connection() {
    let mut s: SendMachine<&'static str, NoFd> = SendMachine::new(1 << 20);
    let mut r = Rx::new(1 << 20);
    let (k1, k2, k3) = (key(0, 100), key(100, 100), key(200, 100));
    s.reserve(k1).unwrap();
    s.reserve(k2).unwrap();
    assert!(matches!(
        s.reserve(k1),
        Err(ProtocolError::Violation {
            what: "chunk already in flight on this connection",
            ..
        })
    ));
    assert_eq!(
        pump(&mut s, &mut r),
        vec![RecvEvent::Reserve(k1), RecvEvent::Reserve(k2)]
    );
    // A reservation is answered with a place or a refusal, never a grant.
    assert_eq!(
        r.m.grant(&k1, vec![]),
        Err(ProtocolError::Misuse(
            "a reservation is answered with a place or a refusal"
        ))
    );
    // The first place lends the ring (its descriptor travels with exactly that frame).
    r.m.place(&k1, 9, 4096, 4000).unwrap();
    r.m.refuse(&k2, RefuseReason::Fallback).unwrap();
    let Some(RecvIo::Lend { id: 9, seg, frame }) = r.m.poll() else {
        panic!("the lend goes first")
    };
    r.m.on_written(frame.clone(), frame.len()).unwrap();
    let Some(RecvIo::Write(rest)) = r.m.poll() else {
        panic!()
    };
    r.m.on_written(rest.clone(), rest.len()).unwrap();
    // The producer gets the ring, the place (wrapping around the ring's end) and the refusal.
    s.on_fds(vec![NoFd], false).unwrap();
    let mut ev = s.on_read(&frame).unwrap();
    ev.extend(s.on_read(&rest).unwrap());
    assert_eq!(
        ev,
        vec![
            SendEvent::Lent { seg, len: 4096 },
            SendEvent::Placed {
                key: k1,
                seg,
                at: 4000
            },
            SendEvent::ReserveRefused(k2, RefuseReason::Fallback),
        ]
    );
    assert_eq!(s.lent(seg), Some((4096, &NoFd)));
    // While something is placed in it, the ring is not unlent.
    assert!(!r.m.unlend(9));
    // Written: it lands and is acked.
    s.written(k1).unwrap();
    assert_eq!(pump(&mut s, &mut r), vec![RecvEvent::Written(k1)]);
    let ack = r.take_answers();
    assert_eq!(s.on_read(&ack).unwrap(), vec![SendEvent::WrittenAcked(k1)]);
    // A producer cannot land what was not placed for it: a Written for another chunk closes
    // the connection before anything lands.
    r.arm();
    r.want = None;
    assert_eq!(
        r.m.on_header_bytes(&Msg::Written(k3).encode()),
        Err(ProtocolError::Violation {
            what: "written for a chunk that was not placed",
            subject: Subject::Chunk(k3)
        })
    );
    // Nor twice.
    let mut r2 = Rx::new(1 << 20);
    r2.feed(&Msg::Reserve(k1).encode(), false);
    r2.m.place(&k1, 9, 4096, 0).unwrap();
    r2.feed(&Msg::Written(k1).encode(), false);
    r2.arm();
    r2.want = None;
    assert!(matches!(
        r2.m.on_header_bytes(&Msg::Written(k1).encode()),
        Err(ProtocolError::Violation { .. })
    ));
    // Withdrawn: the range goes back, then the ring can be unlent.
    let mut r3 = Rx::new(1 << 20);
    r3.feed(&Msg::Reserve(k2).encode(), false);
    r3.m.place(&k2, 5, 4096, 0).unwrap();
    assert_eq!(
        r3.feed(&Msg::Withdraw(k2).encode(), false),
        vec![RecvEvent::Withdrawn(k2)]
    );
    assert!(r3.m.unlend(5));
    // The producer refuses places that overlap one of its own, or lie outside the ring.
    let mut s: SendMachine<u8, NoFd> = SendMachine::new(1 << 20);
    s.on_fds(vec![NoFd], false).unwrap();
    s.on_read(&Msg::Lend(SegmentFrame { seg: 1, len: 4096 }).encode())
        .unwrap();
    for k in [k1, k2, k3] {
        s.reserve(k).unwrap();
    }
    let place = |k: ChunkKey, at: u64| {
        let mut f = Msg::Place(k).encode().to_vec();
        f.extend_from_slice(&encode_pull_tail(1, at));
        f
    };
    assert_eq!(s.on_read(&place(k1, 4050)).unwrap().len(), 1);
    assert_eq!(
        what(s.on_read(&place(k2, 10))),
        "place overlapping another place",
        "k1 wraps around to [0, 54)"
    );
    let mut s2: SendMachine<u8, NoFd> = SendMachine::new(1 << 20);
    s2.on_fds(vec![NoFd], false).unwrap();
    s2.on_read(&Msg::Lend(SegmentFrame { seg: 1, len: 4096 }).encode())
        .unwrap();
    s2.reserve(k3).unwrap();
    assert_eq!(
        what(s2.on_read(&place(k3, 4096))),
        "place outside its lent segment"
    );
}

// ---- the property test ------------------------------------------------------------------

/// Stream content: byte `i` of stream `s`.
fn content(s: u32, i: u64) -> u8 {
    let x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(s).wrapping_mul(0xc2b2_ae3d);
    (x >> 29) as u8
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What the sender side of the simulation has outstanding.
enum SOut {
    Ctl(Vec<u8>, bool),
    Payload(ChunkKey, usize, usize, usize),
}

/// What the receiver side of the simulation has outstanding.
enum ROut {
    Header(usize),
    Payload(Vec<u8>, usize, usize),
    Copy(u32, ChunkKey, Vec<u8>, usize, usize),
    Write(Vec<u8>, bool),
}

/// How a chunk of the simulation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Socket,
    Pull,
    ZeroCopy,
}

/// One run: `chunks` (stream offset, len, path) sent and answered in random order, with random
/// short reads and writes on both sides. Zero-copy chunks are written by the sender into the
/// "ring" the receiver lent (a shared vector here) at the place it chose.
/// `secrets`: authenticate, the producer with the first, the consumer with the second.
fn simulate(
    seed: u64,
    chunks: &[(u64, u64, Path)],
    corrupt: bool,
    secrets: Option<(&Secret, &Secret)>,
) -> Result<[usize; 3], String> {
    let mut corrupt = corrupt;
    // Chunks landed through the socket, pulled, written in place.
    let mut by_path = [0usize; 3];
    let mut rng = Rng(seed | 1);
    type S = SendMachine<usize, NoFd>;
    let (mut s, mut r): (S, RecvMachine<Vec<u8>, NoFd>) = match secrets {
        None => (SendMachine::new(1 << 16), RecvMachine::new(1 << 16)),
        Some((p, c)) => (
            SendMachine::with_auth(1 << 16, Gate::client(p).unwrap(), "producer-1"),
            RecvMachine::with_auth(1 << 16, Gate::server(c).unwrap()),
        ),
    };
    let mut named = secrets.is_none();
    let stream = 3u32;
    let keys: Vec<ChunkKey> = chunks
        .iter()
        .map(|&(o, l, _)| ChunkKey {
            job: 1,
            stream,
            offset: o,
            len: l,
        })
        .collect();
    // The pulled chunks live in one segment at their stream offset; the lent ring holds the
    // whole stream (places at the stream offset never overlap).
    let seg_len = chunks.iter().map(|c| c.0 + c.1).max().unwrap_or(1);
    let mut ring = vec![0u8; seg_len as usize * 2];
    s.share(5, seg_len);
    let mut next = 0usize;
    let (mut to_r, mut to_s): (VecDeque<u8>, VecDeque<u8>) = (VecDeque::new(), VecDeque::new());
    // Positions in either direction where a descriptor rides along.
    let (mut fd_at, mut fd_back): (VecDeque<usize>, VecDeque<usize>) = Default::default();
    let (mut sent_total, mut recv_total, mut back_total, mut back_read) = (0, 0, 0, 0);
    let mut s_out: Vec<SOut> = Vec::new();
    let mut s_read: Option<usize> = None;
    let mut r_out: Vec<ROut> = Vec::new();
    let mut offers: Vec<ChunkKey> = Vec::new();
    // Places handed to the sender: (key, at), to be written (or withdrawn) later.
    let mut places: Vec<(ChunkKey, u64)> = Vec::new();
    let mut placed_at: BTreeMap<ChunkKey, u64> = BTreeMap::new();
    let mut landed: BTreeMap<ChunkKey, Vec<u8>> = BTreeMap::new();
    let mut done: BTreeMap<ChunkKey, &'static str> = BTreeMap::new();
    for step in 0..400_000 {
        if done.len() == keys.len() {
            break;
        }
        if step == 399_999 {
            return Err(format!("stuck: {} of {} done", done.len(), keys.len()));
        }
        match rng.below(11) {
            0 if next < keys.len() => {
                let k = keys[next];
                match chunks[next].2 {
                    Path::Pull => s
                        .pull(k, next, 5, k.offset)
                        .map_err(|(e, _)| e.to_string())?,
                    Path::Socket => s.offer(k, next).map_err(|(e, _)| e.to_string())?,
                    Path::ZeroCopy => s.reserve(k).map_err(|e| e.to_string())?,
                }
                next += 1;
            }
            1 => {
                while let Some(io) = s.poll() {
                    match io {
                        SendIo::Read { want } => s_read = Some(want),
                        SendIo::Write(b) => s_out.push(SOut::Ctl(b, false)),
                        SendIo::Share { frame, .. } => s_out.push(SOut::Ctl(frame, true)),
                        SendIo::Payload { key, src, at, len } => {
                            s_out.push(SOut::Payload(key, src, at, len))
                        }
                    }
                }
            }
            2 if !s_out.is_empty() => match s_out.remove(0) {
                SOut::Ctl(b, fd) => {
                    let n = 1 + rng.below(b.len() as u64) as usize;
                    if fd {
                        fd_at.push_back(sent_total);
                    }
                    to_r.extend(&b[..n]);
                    sent_total += n;
                    s.on_written(b, n).map_err(|e| e.to_string())?;
                }
                SOut::Payload(k, src, at, len) => {
                    let n = 1 + rng.below(len as u64) as usize;
                    for i in 0..n {
                        let b = content(k.stream, k.offset + (at + i) as u64);
                        // The checker's own test: one flipped bit in transit.
                        to_r.push_back(b ^ u8::from(std::mem::take(&mut corrupt)));
                    }
                    sent_total += n;
                    s.on_payload_written(src, n).map_err(|e| e.to_string())?;
                }
            },
            3 if s_read.is_some() && !to_s.is_empty() => {
                let want = s_read.take().unwrap_or(1);
                let n = 1 + rng.below(want.min(to_s.len()) as u64) as usize;
                while fd_back.front().is_some_and(|p| *p < back_read + n) {
                    fd_back.pop_front();
                    s.on_fds(vec![NoFd], false).map_err(|e| e.to_string())?;
                }
                let b: Vec<u8> = to_s.drain(..n).collect();
                back_read += n;
                for ev in s.on_read(&b).map_err(|e| e.to_string())? {
                    let (k, how) = match ev {
                        SendEvent::Acked(k, i) if keys[i] == k => (k, "acked"),
                        SendEvent::Refused(k, _, i) if keys[i] == k => (k, "refused"),
                        SendEvent::ReserveRefused(k, _) => (k, "refused"),
                        SendEvent::WrittenAcked(k) => (k, "acked"),
                        SendEvent::Placed { key, seg: 1, at } => {
                            places.push((key, at));
                            continue;
                        }
                        SendEvent::Lent { seg: 1, .. } => continue,
                        other => return Err(format!("unexpected {other:?}")),
                    };
                    if done.insert(k, how).is_some() {
                        return Err(format!("{k:?} answered twice"));
                    }
                }
            }
            4 => {
                while let Some(io) = r.poll() {
                    r_out.push(match io {
                        RecvIo::Header { want } => ROut::Header(want),
                        RecvIo::Payload { dest, at, len, .. } => ROut::Payload(dest, at, len),
                        RecvIo::Write(b) => ROut::Write(b, false),
                        RecvIo::Lend { frame, .. } => ROut::Write(frame, true),
                        RecvIo::Copy {
                            id,
                            key,
                            dest,
                            at,
                            len,
                            ..
                        } => ROut::Copy(id, key, dest, at, len),
                    });
                }
            }
            5 | 6 if !r_out.is_empty() => {
                let i = rng.below(r_out.len() as u64) as usize;
                let ready = match &r_out[i] {
                    ROut::Header(_) | ROut::Payload(..) => !to_r.is_empty(),
                    _ => true,
                };
                if !ready {
                    continue;
                }
                let ev = match r_out.remove(i) {
                    ROut::Header(want) => {
                        let n = 1 + rng.below(want.min(to_r.len()) as u64) as usize;
                        while fd_at.front().is_some_and(|p| *p < recv_total + n) {
                            fd_at.pop_front();
                            r.on_fds(vec![NoFd], false).map_err(|e| e.to_string())?;
                        }
                        let b: Vec<u8> = to_r.drain(..n).collect();
                        recv_total += n;
                        r.on_header_bytes(&b).map_err(|e| e.to_string())?
                    }
                    ROut::Payload(mut d, at, len) => {
                        let n = 1 + rng.below(len.min(to_r.len()) as u64) as usize;
                        for (j, b) in to_r.drain(..n).enumerate() {
                            d[at + j] = b;
                        }
                        recv_total += n;
                        r.on_payload(d, n).map_err(|e| e.to_string())?
                    }
                    ROut::Copy(id, k, mut d, at, len) => {
                        let n = 1 + rng.below(len as u64) as usize;
                        for j in 0..n {
                            d[at + j] = content(k.stream, k.offset + (at + j) as u64);
                        }
                        r.on_copied(id, d, n).map_err(|e| e.to_string())?
                    }
                    ROut::Write(b, fd) => {
                        let n = 1 + rng.below(b.len() as u64) as usize;
                        if fd {
                            fd_back.push_back(back_total);
                        }
                        to_s.extend(&b[..n]);
                        back_total += n;
                        r.on_written(b, n).map_err(|e| e.to_string())?;
                        None
                    }
                };
                match ev {
                    Some(RecvEvent::Peer { name }) if !named && name == "producer-1" => {
                        named = true;
                    }
                    Some(RecvEvent::Offer(k) | RecvEvent::Reserve(k)) if named => offers.push(k),
                    Some(RecvEvent::Landed(k, d)) => {
                        let pulled = chunks.iter().any(|c| c.0 == k.offset && c.2 == Path::Pull);
                        by_path[usize::from(pulled)] += 1;
                        if landed.insert(k, d).is_some() {
                            return Err(format!("{k:?} landed twice"));
                        }
                    }
                    Some(RecvEvent::Written(k)) => {
                        // What lands is what the ring holds at the place.
                        let at = placed_at
                            .remove(&k)
                            .ok_or(format!("{k:?} written unplaced"))?;
                        let d = ring[at as usize..(at + k.len) as usize].to_vec();
                        by_path[2] += 1;
                        if landed.insert(k, d).is_some() {
                            return Err(format!("{k:?} landed twice"));
                        }
                    }
                    Some(RecvEvent::Withdrawn(k)) => {
                        placed_at.remove(&k);
                    }
                    Some(RecvEvent::Share { seg: 5, .. }) | None => {}
                    other => return Err(format!("unexpected {other:?}")),
                }
            }
            7 | 8 if !offers.is_empty() => {
                let i = rng.below(offers.len() as u64) as usize;
                let k = offers.swap_remove(i);
                let zc = chunks
                    .iter()
                    .any(|c| c.0 == k.offset && c.2 == Path::ZeroCopy);
                let res = if rng.below(8) == 0 {
                    r.refuse(&k, RefuseReason::OutOfRange)
                } else if zc {
                    placed_at.insert(k, k.offset);
                    r.place(&k, 77, seg_len, k.offset)
                } else {
                    r.grant(&k, vec![0u8; k.len as usize])
                };
                res.map_err(|e| e.to_string())?;
            }
            9 | 10 if !places.is_empty() => {
                // The sender computes a placed chunk into the ring (or gives it back).
                let i = rng.below(places.len() as u64) as usize;
                let (k, at) = places.swap_remove(i);
                if rng.below(10) == 0 {
                    s.withdraw(k).map_err(|e| e.to_string())?;
                    done.insert(k, "withdrawn");
                    continue;
                }
                for j in 0..k.len {
                    ring[(at + j) as usize] = content(k.stream, k.offset + j);
                }
                s.written(k).map_err(|e| e.to_string())?;
            }
            _ => {}
        }
    }
    for (k, d) in &landed {
        let want: Vec<u8> = (0..k.len)
            .map(|i| content(k.stream, k.offset + i))
            .collect();
        if *d != want {
            return Err(format!("{k:?} landed wrong bytes"));
        }
        if done.get(k) != Some(&"acked") {
            return Err(format!("{k:?} landed but was not acked"));
        }
    }
    for (k, how) in &done {
        if *how == "acked" && !landed.contains_key(k) {
            return Err(format!("{k:?} acked but never landed"));
        }
    }
    if s.in_flight() != 0 {
        return Err(format!("{} still in flight", s.in_flight()));
    }
    Ok(by_path)
}

fn chunk_plan() -> impl Strategy<Value = Vec<(u64, u64, Path)>> {
    let path = prop_oneof![Just(Path::Socket), Just(Path::Pull), Just(Path::ZeroCopy)];
    prop::collection::vec((1u64..3000, path), 1..24).prop_map(|v| {
        let mut off = 0;
        v.into_iter()
            .map(|(len, path)| {
                let c = (off, len, path);
                off += len;
                c
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn sender_and_receiver_agree_through_random_short_io(seed in any::<u64>(), chunks in chunk_plan()) {
        let secret = Secret::from_bytes(b"a cluster secret for the test", "test").unwrap();
        let auth = (seed % 2 == 0).then_some((&secret, &secret));
        let r = simulate(seed, &chunks, false, auth);
        prop_assert!(r.is_ok(), "{:?}", r);
    }
}

#[test]
fn the_simulation_catches_a_wrong_byte() {
    // The checker is not vacuous: the same run passes clean and fails with one flipped bit.
    let paths = [Path::Socket, Path::Pull, Path::ZeroCopy];
    let plan: Vec<(u64, u64, Path)> = (0..9)
        .map(|i| (i * 100, 100, paths[i as usize % 3]))
        .collect();
    let by_path = simulate(42, &plan, false, None).unwrap();
    assert!(
        by_path.iter().all(|n| *n > 0),
        "every path carried chunks: {by_path:?}"
    );
    let e = simulate(42, &plan, true, None).unwrap_err();
    assert!(e.ends_with("landed wrong bytes"), "{e}");
}

#[test]
fn a_wrong_secret_lands_nothing_and_both_ends_say_why() {
    let plan: Vec<(u64, u64, Path)> = (0..4).map(|i| (i * 100, 100, Path::ZeroCopy)).collect();
    let a = Secret::from_bytes(b"the cluster secret of the producer", "a").unwrap();
    let b = Secret::from_bytes(b"another secret of the consumer!!", "b").unwrap();
    for seed in 1..20 {
        let e = simulate(seed, &plan, false, Some((&a, &b))).unwrap_err();
        assert!(
            e.starts_with(
                "raw connection authentication: authentication failed: the peer does not share"
            ),
            "{e}"
        );
    }
}

/// A consumer machine with authentication, its opening frame written; returns it.
fn authenticating_consumer(secret: &Secret) -> Rx {
    let mut r = Rx {
        m: RecvMachine::with_auth(1 << 20, Gate::server(secret).unwrap()),
        want: None,
        answers: Vec::new(),
    };
    let hello = r.take_answers();
    assert_eq!(&hello[..4], b"SPAT", "the consumer speaks first");
    r
}

#[test]
fn raw_frames_without_a_handshake_and_garbage_are_refused_before_anything_lands() {
    let secret = Secret::from_bytes(b"a cluster secret for the test", "t").unwrap();
    // A producer that does not authenticate: its first raw frame is not a handshake frame.
    let mut r = authenticating_consumer(&secret);
    let want = r.arm();
    assert_eq!(want, 12, "a control frame header");
    r.want = None;
    let e =
        r.m.on_header_bytes(&encode(Kind::Offer, &key(0, 5), None)[..want]);
    assert!(
        matches!(
            &e,
            Err(ProtocolError::Auth(AuthError::Frame(
                FrameError::BadMagic { .. }
            )))
        ),
        "{e:?}"
    );
    // Garbage.
    let mut r = authenticating_consumer(&secret);
    r.arm();
    r.want = None;
    let e = r.m.on_header_bytes(&[0xff; 12]);
    assert!(matches!(e, Err(ProtocolError::Auth(_))), "{e:?}");
    // Hanging up before authenticating is reported too.
    let mut r = authenticating_consumer(&secret);
    r.arm();
    r.want = None;
    assert!(matches!(r.m.on_eof(), Err(ProtocolError::Auth(_))));
    assert!(!r.m.authenticated());
}

#[test]
fn an_authenticated_producer_must_say_who_it_is_first() {
    let secret = Secret::from_bytes(b"a cluster secret for the test", "t").unwrap();
    let mut s: SendMachine<u8> =
        SendMachine::with_auth(1 << 20, Gate::client(&secret).unwrap(), "p");
    let mut r = Rx {
        m: RecvMachine::with_auth(1 << 20, Gate::server(&secret).unwrap()),
        want: None,
        answers: Vec::new(),
    };
    // The consumer's hello, the producer's answer (in the exact sizes the consumer asks for),
    // the consumer's proof.
    let server_hello = r.take_answers();
    assert!(matches!(s.poll(), Some(SendIo::Read { .. })));
    assert!(s.on_read(&server_hello).unwrap().is_empty());
    let answer: Vec<u8> = drain_ctl(&mut s).into_iter().flat_map(|c| c.0).collect();
    let mut rest = &answer[..];
    while !rest.is_empty() {
        let want = r.arm();
        r.want = None;
        let n = want.min(rest.len());
        assert_eq!(r.m.on_header_bytes(&rest[..n]).unwrap(), None);
        rest = &rest[n..];
    }
    let proof = r.take_answers();
    assert!(r.m.peer_name().is_none() && !r.m.authenticated());
    // Authenticated, but no offer is taken before the hello.
    r.arm();
    r.want = None;
    assert_eq!(
        r.m.on_header_bytes(&encode(Kind::Offer, &key(0, 5), None)),
        Err(ProtocolError::NoHello(Kind::Offer))
    );
    // The producer, given the proof, says who it is before anything else.
    s.offer(key(0, 5), 1).unwrap();
    assert!(s.on_read(&proof).unwrap().is_empty());
    assert!(s.authenticated());
    let ctl = drain_ctl(&mut s);
    assert_eq!(&ctl[0].0[..HEADER_LEN], &Msg::Hello { len: 1 }.encode());
    assert_eq!(&ctl[0].0[HEADER_LEN..], b"p");
    let f = decode(ctl[1].0[..].try_into().unwrap(), 1 << 20).unwrap();
    assert_eq!((f.kind, f.key), (Kind::Offer, key(0, 5)));
}
