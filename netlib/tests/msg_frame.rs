//! The frame decoder refuses bad input with the exact error kind, never panics, never buffers
//! more than its limit, and stays failed (same error) until reset.

use proptest::prelude::*;
use spate_netlib::frame::{
    DEFAULT_MAX_FRAME, Encoder, Frame, FrameDecoder, FrameError, FrameKind, HEADER_LEN, MAGIC,
    encode_message,
};
use spate_netlib::proto::{JobId, Message, PROTOCOL_VERSION};

fn header(version: u16, kind: u8, flags: u8, len: u32) -> Vec<u8> {
    let mut h = MAGIC.to_vec();
    h.extend(version.to_be_bytes());
    h.push(kind);
    h.push(flags);
    h.extend(len.to_be_bytes());
    h
}

/// Feed all of `bytes`, collecting messages until the first error.
fn feed(dec: &mut FrameDecoder, bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
    let mut input = bytes;
    let mut out = Vec::new();
    while let Some(m) = dec.decode_message(&mut input)? {
        out.push(m);
    }
    Ok(out)
}

/// After an error the decoder refuses everything with that same error, even valid frames,
/// holds no bytes, and works again after reset.
fn assert_stays_failed(dec: &mut FrameDecoder, err: &FrameError) {
    assert_eq!(dec.error(), Some(err));
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.buffer_capacity(), 0);
    let good = encode_message(&Message::Heartbeat).unwrap();
    assert_eq!(feed(dec, &good), Err(err.clone()));
    assert_eq!(dec.finish(), Err(err.clone()));
    dec.reset();
    assert!(dec.is_idle());
    assert_eq!(feed(dec, &good), Ok(vec![Message::Heartbeat]));
}

#[test]
fn bad_magic_is_detected_at_the_first_wrong_byte() {
    let mut dec = FrameDecoder::default();
    let mut input: &[u8] = b"SPXT and more";
    let err = dec.decode_frame(&mut input).unwrap_err();
    assert_eq!(
        err,
        FrameError::BadMagic {
            found: b"SPXT".to_vec()
        }
    );
    assert_stays_failed(&mut dec, &err);

    // Byte by byte, the third byte already fails.
    let mut dec = FrameDecoder::default();
    assert_eq!(feed(&mut dec, b"S"), Ok(vec![]));
    assert_eq!(feed(&mut dec, b"P"), Ok(vec![]));
    let err = feed(&mut dec, b"X").unwrap_err();
    assert_eq!(
        err,
        FrameError::BadMagic {
            found: b"SPX".to_vec()
        }
    );

    // An HTTP request on the control port.
    let mut dec = FrameDecoder::default();
    let err = feed(&mut dec, b"GET / HTTP/1.1\r\n").unwrap_err();
    assert_eq!(
        err,
        FrameError::BadMagic {
            found: b"GET ".to_vec()
        }
    );
}

#[test]
fn malformed_headers_are_bad_header() {
    for (h, reason) in [
        (header(PROTOCOL_VERSION, 0, 0, 0), "unknown frame kind 0"),
        (header(PROTOCOL_VERSION, 3, 0, 0), "unknown frame kind 3"),
        (
            header(PROTOCOL_VERSION, 2, 0x80, 0),
            "reserved flags set (0x80)",
        ),
    ] {
        let mut dec = FrameDecoder::default();
        let err = feed(&mut dec, &h).unwrap_err();
        assert_eq!(
            err,
            FrameError::BadHeader {
                reason: reason.into()
            }
        );
        assert_stays_failed(&mut dec, &err);
    }
}

#[test]
fn eof_mid_frame_is_truncated() {
    let frame = encode_message(&Message::Ready { job: JobId(300) }).unwrap();
    assert_eq!(frame.len(), HEADER_LEN + 3);
    // Inside the header, inside the payload.
    for (cut, need) in [(1, HEADER_LEN), (11, HEADER_LEN), (13, HEADER_LEN + 3)] {
        let mut dec = FrameDecoder::default();
        assert_eq!(feed(&mut dec, &frame[..cut]), Ok(vec![]));
        assert!(!dec.is_idle());
        let err = dec.finish().unwrap_err();
        assert_eq!(err, FrameError::Truncated { have: cut, need });
        assert_stays_failed(&mut dec, &err);
    }
    // At a frame boundary the end is clean.
    let mut dec = FrameDecoder::default();
    assert_eq!(
        feed(&mut dec, &frame),
        Ok(vec![Message::Ready { job: JobId(300) }])
    );
    assert_eq!(dec.finish(), Ok(()));
}

#[test]
fn oversized_frame_is_refused_from_its_header_without_allocating() {
    let mut dec = FrameDecoder::new(1000);
    let err = feed(&mut dec, &header(PROTOCOL_VERSION, 2, 0, 1001)).unwrap_err();
    assert_eq!(
        err,
        FrameError::Oversized {
            len: 1001,
            max: 1000
        }
    );
    assert_stays_failed(&mut dec, &err);

    let mut dec = FrameDecoder::default();
    let err = feed(&mut dec, &header(PROTOCOL_VERSION, 1, 0, u32::MAX)).unwrap_err();
    assert_eq!(
        err,
        FrameError::Oversized {
            len: u32::MAX.into(),
            max: DEFAULT_MAX_FRAME
        }
    );

    // Exactly the limit is fine, and memory follows the bytes actually received.
    let mut dec = FrameDecoder::new(1000);
    assert_eq!(
        feed(&mut dec, &header(PROTOCOL_VERSION, 1, 0, 1000)),
        Ok(vec![])
    );
    assert_eq!(dec.buffer_capacity(), 0);
    let mut input: &[u8] = &[7u8; 100];
    assert_eq!(dec.decode_frame(&mut input), Ok(None));
    assert!(dec.buffer_capacity() >= 100 && dec.buffer_capacity() <= 1000);
    let mut input: &[u8] = &[7u8; 2000];
    let frame = dec.decode_frame(&mut input).unwrap().unwrap();
    assert_eq!(frame.payload.len(), 1000);
    assert_eq!(
        input.len(),
        1100,
        "bytes after the frame stay with the caller"
    );
}

#[test]
fn encoder_refuses_oversized_payloads_and_leaves_output_untouched() {
    let enc = Encoder::new(16);
    let mut out = b"prefix".to_vec();
    let msg = Message::Submit {
        spec_toml: "x".repeat(40),
        inputs: vec![],
    };
    let err = enc
        .encode_into(FrameKind::Message, &msg, &mut out)
        .unwrap_err();
    // Variant tag, string length, 40 bytes, empty-vector length.
    assert_eq!(err, FrameError::Oversized { len: 43, max: 16 });
    assert_eq!(out, b"prefix");
}

#[test]
fn message_frame_of_another_version_is_unknown_version() {
    let mut bytes = encode_message(&Message::Heartbeat).unwrap();
    bytes[4..6].copy_from_slice(&(PROTOCOL_VERSION + 1).to_be_bytes());
    let mut dec = FrameDecoder::default();
    let err = feed(&mut dec, &bytes).unwrap_err();
    assert_eq!(
        err,
        FrameError::UnknownVersion {
            got: PROTOCOL_VERSION + 1,
            expected: PROTOCOL_VERSION
        }
    );
    assert_stays_failed(&mut dec, &err);

    // Handshake frames pass through with their version: the handshake reports the mismatch.
    let mut h = header(PROTOCOL_VERSION + 1, 1, 0, 2);
    h.extend([1, 2]);
    let mut dec = FrameDecoder::default();
    let mut input = &h[..];
    assert_eq!(
        dec.decode_frame(&mut input),
        Ok(Some(Frame {
            version: PROTOCOL_VERSION + 1,
            kind: FrameKind::Handshake,
            payload: vec![1, 2]
        }))
    );
}

#[test]
fn undecodable_payloads_are_malformed() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        // No variant 200 (postcard reports unknown variants this vaguely).
        (vec![200, 1], "Serde Deserialization Error"),
        (vec![], "Hit the end of buffer, expected more data"),
        // Ready { job } with the varint cut short.
        (vec![8, 0x80], "Hit the end of buffer, expected more data"),
        // Heartbeat followed by garbage.
        (vec![3, 0], "1 trailing bytes after the value"),
        // Submit { spec_toml: invalid UTF-8 }.
        (vec![5, 1, 0xff, 0], "Tried to parse invalid utf-8"),
    ];
    for (payload, detail) in cases {
        let mut bytes = header(PROTOCOL_VERSION, 2, 0, payload.len() as u32);
        bytes.extend(&payload);
        let mut dec = FrameDecoder::default();
        let err = feed(&mut dec, &bytes).unwrap_err();
        assert_eq!(
            err,
            FrameError::Malformed {
                kind: FrameKind::Message,
                detail: detail.into()
            },
            "payload {payload:?}"
        );
        assert_stays_failed(&mut dec, &err);
    }
}

#[test]
fn handshake_frame_on_an_authenticated_connection_is_unexpected_kind() {
    let bytes = Encoder::default()
        .encode(FrameKind::Handshake, &Message::Heartbeat)
        .unwrap();
    let mut dec = FrameDecoder::default();
    let err = feed(&mut dec, &bytes).unwrap_err();
    assert_eq!(
        err,
        FrameError::UnexpectedKind {
            expected: FrameKind::Message,
            got: FrameKind::Handshake
        }
    );
    assert_stays_failed(&mut dec, &err);
}

/// Feed `bytes` in pieces of `step`, checking the memory bound at every step; returns the
/// messages and the first error, if any.
fn feed_checked(max: u32, bytes: &[u8], step: usize) -> (Vec<Message>, Option<FrameError>) {
    let mut dec = FrameDecoder::new(max);
    let mut msgs = Vec::new();
    for piece in bytes.chunks(step.max(1)) {
        let mut input = piece;
        loop {
            let r = dec.decode_message(&mut input);
            assert!(dec.buffer_capacity() <= max as usize);
            assert!(dec.buffered() <= HEADER_LEN + max as usize);
            match r {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break,
                Err(e) => {
                    assert_eq!(dec.error(), Some(&e));
                    assert_eq!(dec.decode_message(&mut &b"SPAT"[..]), Err(e.clone()));
                    return (msgs, Some(e));
                }
            }
        }
    }
    match dec.finish() {
        Ok(()) => (msgs, None),
        Err(e) => {
            assert!(matches!(e, FrameError::Truncated { .. }));
            (msgs, Some(e))
        }
    }
}

fn valid_stream() -> Vec<u8> {
    let mut s = Vec::new();
    for m in [
        Message::Heartbeat,
        Message::Ready {
            job: JobId(1 << 40),
        },
        Message::Submit {
            spec_toml: "[job]\nkernel = \"pattern\"\n".into(),
            inputs: vec!["a".into(), "b".into()],
        },
        Message::Cancel { job: JobId(3) },
    ] {
        s.extend(encode_message(&m).unwrap());
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_or_overallocate(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        max in 0u32..64,
        step in 1usize..40,
    ) {
        feed_checked(max, &bytes, step);
    }

    #[test]
    fn arbitrary_bytes_after_a_valid_header_never_panic(
        payload in prop::collection::vec(any::<u8>(), 0..200),
        step in 1usize..40,
    ) {
        let mut bytes = header(PROTOCOL_VERSION, 2, 0, payload.len() as u32);
        bytes.extend(&payload);
        let (msgs, err) = feed_checked(256, &bytes, step);
        // Either one message or Malformed: the frame itself is complete.
        match err {
            None => prop_assert_eq!(msgs.len(), 1),
            Some(e) => prop_assert!(matches!(e, FrameError::Malformed { .. }), "{e:?}"),
        }
    }

    #[test]
    fn mutated_valid_streams_fail_cleanly(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<prop::sample::Index>(),
        step in 1usize..40,
    ) {
        let mut bytes = valid_stream();
        for (i, b) in &flips {
            let i = i.index(bytes.len());
            bytes[i] = *b;
        }
        let keep = cut.index(bytes.len() + 1);
        bytes.truncate(keep);
        let (msgs, err) = feed_checked(128, &bytes, step);
        if flips.is_empty() && keep == valid_stream().len() {
            prop_assert_eq!(msgs.len(), 4);
            prop_assert!(err.is_none());
        }
    }
}
