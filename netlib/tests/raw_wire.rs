//! The raw frame codec: every kind round-trips; malformed headers are refused with their own
//! error; and a fuzz-style run of random and mutated headers never panics, and what decodes
//! re-encodes to the same bytes.

use proptest::prelude::*;
use spate_netlib::raw::{
    ChunkKey, HEADER_LEN, Kind, Malformed, Msg, RefuseReason, SegmentFrame, decode,
    decode_pull_tail, encode, encode_pull_tail,
};

fn key(off: u64, len: u64) -> ChunkKey {
    ChunkKey {
        job: 7,
        stream: 2,
        offset: off,
        len,
    }
}

#[test]
fn codec_round_trips_and_refuses_malformed_headers() {
    let k = key(4096, 100);
    for kind in [Kind::Offer, Kind::Data, Kind::Grant, Kind::Ack] {
        let f = decode(&encode(kind, &k, None), 1 << 20).unwrap();
        assert_eq!((f.kind, f.key, f.reason), (kind, k, None));
    }
    let f = decode(
        &encode(Kind::Refuse, &k, Some(RefuseReason::OutOfRange)),
        1 << 20,
    )
    .unwrap();
    assert_eq!(f.reason, Some(RefuseReason::OutOfRange));

    let mut h = encode(Kind::Offer, &k, None);
    h[0] = b'X';
    assert_eq!(decode(&h, 1 << 20), Err(Malformed::BadMagic(*b"XPRW")));
    let mut h = encode(Kind::Offer, &k, None);
    h[4] = 99;
    assert_eq!(decode(&h, 1 << 20), Err(Malformed::UnknownKind(99)));
    h[4] = 0;
    assert_eq!(decode(&h, 1 << 20), Err(Malformed::UnknownKind(0)));
    let mut h = encode(Kind::Offer, &k, None);
    h[21] = 1;
    assert_eq!(decode(&h, 1 << 20), Err(Malformed::Reserved));
    let mut h = encode(Kind::Ack, &k, None);
    h[5] = 1;
    assert_eq!(decode(&h, 1 << 20), Err(Malformed::Reserved));
    assert_eq!(
        decode(&encode(Kind::Offer, &key(0, 0), None), 10),
        Err(Malformed::ZeroLength)
    );
    assert_eq!(
        decode(&encode(Kind::Offer, &key(0, 11), None), 10),
        Err(Malformed::TooLong { len: 11, max: 10 })
    );
    assert_eq!(
        decode(&encode(Kind::Offer, &key(u64::MAX, 2), None), 10),
        Err(Malformed::Overflow)
    );
}

#[test]
fn segment_frames_have_a_type_of_their_own() {
    let s = SegmentFrame {
        seg: 3,
        len: 1 << 40,
    };
    // A segment may be longer than any chunk.
    let h = Msg::Share(s).encode();
    assert_eq!(Msg::decode(&h, 1 << 20), Ok(Msg::Share(s)));
    assert_eq!(
        Msg::decode(&Msg::Unshare(s).encode(), 1 << 20),
        Ok(Msg::Unshare(s))
    );
    // The flat view shows the id as the stream.
    let f = decode(&h, 1 << 20).unwrap();
    assert_eq!((f.kind, f.key.stream, f.key.len), (Kind::Share, 3, 1 << 40));
    let mut bad = h;
    bad[8] = 1; // a job on a segment frame
    assert_eq!(Msg::decode(&bad, 1 << 20), Err(Malformed::Reserved));
    assert_eq!(
        Msg::decode(
            &Msg::Share(SegmentFrame { seg: 1, len: 0 }).encode(),
            1 << 20
        ),
        Err(Malformed::ZeroLength)
    );
    let mut t = encode_pull_tail(7, 99);
    assert_eq!(decode_pull_tail(&t), Ok((7, 99)));
    t[5] = 1;
    assert_eq!(decode_pull_tail(&t), Err(Malformed::Reserved));
}

fn any_msg() -> impl Strategy<Value = Msg> {
    let k = (any::<u64>(), any::<u32>(), 0u64..1 << 50, 1u64..=1 << 20).prop_map(
        |(job, stream, offset, len)| ChunkKey {
            job,
            stream,
            offset,
            len,
        },
    );
    let s = (any::<u32>(), 1u64..u64::MAX).prop_map(|(seg, len)| SegmentFrame { seg, len });
    prop_oneof![
        k.clone().prop_map(Msg::Offer),
        k.clone().prop_map(Msg::Data),
        k.clone().prop_map(Msg::Grant),
        (k.clone(), any::<u8>())
            .prop_map(|(k, c)| Msg::Refuse(k, RefuseReason::from_code(c.max(1)))),
        k.clone().prop_map(Msg::Ack),
        s.clone().prop_map(Msg::Share),
        s.clone().prop_map(Msg::Unshare),
        k.clone().prop_map(Msg::Pull),
        (1u64..=255).prop_map(|len| Msg::Hello { len }),
        k.clone().prop_map(Msg::Reserve),
        s.clone().prop_map(Msg::Lend),
        k.clone().prop_map(Msg::Place),
        k.clone().prop_map(Msg::Written),
        s.prop_map(Msg::Unlend),
        k.prop_map(Msg::Withdraw),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes: decoding never panics; anything that decodes re-encodes identically.
    #[test]
    fn random_headers_never_panic_and_decoded_ones_reencode(bytes in any::<[u8; HEADER_LEN]>(),
                                                            magic in any::<bool>(),
                                                            kind in 0u8..18) {
        let mut h = bytes;
        if magic {
            h[..4].copy_from_slice(b"SPRW");
            h[4] = kind;
        }
        if let Ok(m) = Msg::decode(&h, 1 << 20) {
            prop_assert_eq!(m.encode(), h);
            prop_assert_eq!(decode(&h, 1 << 20).unwrap().kind, m.kind());
        } else {
            prop_assert!(decode(&h, 1 << 20).is_err());
        }
    }

    /// Valid frames round-trip; any single flipped bit either decodes to a different frame
    /// that re-encodes to the mutated bytes, or is refused: never silently the same frame.
    #[test]
    fn valid_frames_round_trip_and_mutations_are_caught(m in any_msg(), bit in 0usize..HEADER_LEN * 8) {
        let h = m.encode();
        prop_assert_eq!(Msg::decode(&h, 1 << 20), Ok(m));
        let mut x = h;
        x[bit / 8] ^= 1 << (bit % 8);
        if let Ok(m2) = Msg::decode(&x, 1 << 20) {
            prop_assert_ne!(m2, m);
            prop_assert_eq!(m2.encode(), x);
        }
    }
}
