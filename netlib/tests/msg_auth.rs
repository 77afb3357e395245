//! The sans-IO handshake: mutual authentication, wrong secret, replay, reflection, version
//! mismatch; and secret loading.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;

use spate_netlib::auth::{
    AuthError, Handshake, HandshakeMsg, HandshakeState, MIN_SECRET_LEN, NONCE_LEN, Peer,
    RejectReason, Role, Secret, SecretError, Side, permission_warning,
};
use spate_netlib::frame::{Encoder, Frame, FrameDecoder, FrameError, FrameKind, encode_message};
use spate_netlib::proto::{Message, PROTOCOL_VERSION};

fn secret(s: &str) -> Secret {
    Secret::from_bytes(s.as_bytes(), "test").unwrap()
}
const S1: &str = "correct horse battery staple";
const S2: &str = "correct horse battery stapler";

/// Decode the single frame in `bytes`.
fn frame(bytes: &[u8]) -> Frame {
    let mut dec = FrameDecoder::default();
    let mut input = bytes;
    let f = dec.decode_frame(&mut input).unwrap().unwrap();
    assert!(input.is_empty(), "exactly one frame");
    f
}

fn msg(bytes: &[u8]) -> HandshakeMsg {
    frame(bytes).decode().unwrap()
}

fn hs_frame(m: &HandshakeMsg) -> Frame {
    frame(&Encoder::default().encode(FrameKind::Handshake, m).unwrap())
}

/// Deliver everything `from` has queued to `to`.
fn deliver(from: &mut Handshake, to: &mut Handshake) -> Result<(), AuthError> {
    let out = from.take_output();
    assert!(!out.is_empty(), "{:?} has nothing to send", from.side());
    to.on_frame(&frame(&out)).map(|_| ())
}

const NC: [u8; NONCE_LEN] = [0xc1; NONCE_LEN];
const NS: [u8; NONCE_LEN] = [0x5e; NONCE_LEN];

#[test]
fn right_secret_authenticates_both_ways() {
    let mut server = Handshake::server(&secret(S1), Role::Scheduler).unwrap();
    let mut client = Handshake::client(&secret(S1), Role::Daemon).unwrap();
    assert!(!client.has_output(), "the server speaks first");
    deliver(&mut server, &mut client).unwrap(); // ServerHello
    assert_eq!(client.state(), &HandshakeState::InProgress);
    deliver(&mut client, &mut server).unwrap(); // ClientHello
    assert_eq!(
        server.state(),
        &HandshakeState::Authenticated(Peer {
            role: Role::Daemon,
            version: PROTOCOL_VERSION
        })
    );
    deliver(&mut server, &mut client).unwrap(); // ServerProof
    assert_eq!(
        client.peer(),
        Some(Peer {
            role: Role::Scheduler,
            version: PROTOCOL_VERSION
        })
    );
    assert!(!client.has_output() && !server.has_output());
}

#[test]
fn the_secret_never_crosses_the_wire() {
    let s = secret(S1);
    let mut server = Handshake::server_with_nonce(&s, Role::Scheduler, NS);
    let mut client = Handshake::client_with_nonce(&s, Role::User, NC);
    let mut wire: Vec<u8> = Vec::new();
    let hello = server.take_output();
    wire.extend(&hello);
    client.on_frame(&frame(&hello)).unwrap();
    let ch = client.take_output();
    wire.extend(&ch);
    server.on_frame(&frame(&ch)).unwrap();
    let sp = server.take_output();
    wire.extend(&sp);
    client.on_frame(&frame(&sp)).unwrap();
    assert!(client.peer().is_some());
    assert!(!wire.windows(S1.len()).any(|w| w == S1.as_bytes()));
    // Deterministic nonces give a deterministic transcript: the proofs are distinct HMACs.
    let HandshakeMsg::ClientHello { proof: pc, .. } = msg(&ch) else {
        panic!("not a ClientHello")
    };
    let HandshakeMsg::ServerProof { proof: ps } = msg(&sp) else {
        panic!("not a ServerProof")
    };
    assert_ne!(pc, ps);
    assert_eq!(
        msg(&hello),
        HandshakeMsg::ServerHello {
            version: PROTOCOL_VERSION,
            role: Role::Scheduler,
            nonce: NS
        }
    );
}

#[test]
fn wrong_secret_fails_on_both_sides() {
    let mut server = Handshake::server(&secret(S1), Role::Scheduler).unwrap();
    let mut client = Handshake::client(&secret(S2), Role::Daemon).unwrap();
    deliver(&mut server, &mut client).unwrap();
    assert_eq!(
        deliver(&mut client, &mut server),
        Err(AuthError::WrongSecret)
    );
    assert_eq!(
        server.state(),
        &HandshakeState::Failed(AuthError::WrongSecret)
    );
    // The server's Reject tells the client.
    let out = server.take_output();
    assert_eq!(
        msg(&out),
        HandshakeMsg::Reject {
            reason: RejectReason::WrongSecret
        }
    );
    assert_eq!(
        client.on_frame(&frame(&out)).map(|_| ()),
        Err(AuthError::WrongSecret)
    );
    assert_eq!(
        client.state(),
        &HandshakeState::Failed(AuthError::WrongSecret)
    );
    // Failed is terminal: any further frame gives the same error.
    assert_eq!(
        server
            .on_frame(&hs_frame(&HandshakeMsg::ServerProof { proof: [0; 32] }))
            .map(|_| ()),
        Err(AuthError::WrongSecret)
    );
}

#[test]
fn impostor_server_is_detected_by_the_client() {
    let mut client = Handshake::client(&secret(S1), Role::Daemon).unwrap();
    let mut fake = Handshake::server(&secret(S2), Role::Scheduler).unwrap();
    deliver(&mut fake, &mut client).unwrap();
    let _client_hello = client.take_output();
    let bogus = HandshakeMsg::ServerProof { proof: [7; 32] };
    assert_eq!(
        client.on_frame(&hs_frame(&bogus)).map(|_| ()),
        Err(AuthError::WrongSecret)
    );
    assert!(!client.has_output());
}

#[test]
fn replayed_client_hello_fails() {
    let s = secret(S1);
    // A recorded, successful session.
    let mut server1 = Handshake::server_with_nonce(&s, Role::Scheduler, NS);
    let mut client1 = Handshake::client(&s, Role::Daemon).unwrap();
    deliver(&mut server1, &mut client1).unwrap();
    let recorded = client1.take_output();
    server1.on_frame(&frame(&recorded)).unwrap();
    assert!(server1.peer().is_some());
    // Replayed to a new server session (fresh nonce): refused.
    let mut server2 = Handshake::server(&s, Role::Scheduler).unwrap();
    let _hello = server2.take_output();
    assert_eq!(
        server2.on_frame(&frame(&recorded)).map(|_| ()),
        Err(AuthError::WrongSecret)
    );
}

#[test]
fn replayed_server_proof_fails() {
    let s = secret(S1);
    let mut server1 = Handshake::server_with_nonce(&s, Role::Scheduler, NS);
    let mut client1 = Handshake::client(&s, Role::Daemon).unwrap();
    let hello = server1.take_output();
    client1.on_frame(&frame(&hello)).unwrap();
    deliver(&mut client1, &mut server1).unwrap();
    let proof = server1.take_output();
    client1.on_frame(&frame(&proof)).unwrap();
    assert!(client1.peer().is_some());
    // An attacker replays the recorded server side to a new client (fresh client nonce).
    let mut client2 = Handshake::client(&s, Role::Daemon).unwrap();
    client2.on_frame(&frame(&hello)).unwrap();
    let _ch = client2.take_output();
    assert_eq!(
        client2.on_frame(&frame(&proof)).map(|_| ()),
        Err(AuthError::WrongSecret)
    );
}

#[test]
fn reflected_client_proof_fails() {
    let s = secret(S1);
    let mut client = Handshake::client_with_nonce(&s, Role::Daemon, NC);
    // A fake server that does not know the secret reflects the client's own proof back.
    client
        .on_frame(&hs_frame(&HandshakeMsg::ServerHello {
            version: PROTOCOL_VERSION,
            role: Role::Scheduler,
            nonce: NS,
        }))
        .unwrap();
    let HandshakeMsg::ClientHello { proof, .. } = msg(&client.take_output()) else {
        panic!("not a ClientHello")
    };
    assert_eq!(
        client
            .on_frame(&hs_frame(&HandshakeMsg::ServerProof { proof }))
            .map(|_| ()),
        Err(AuthError::WrongSecret)
    );
}

#[test]
fn echoed_nonce_is_refused() {
    let s = secret(S1);
    let mut client = Handshake::client_with_nonce(&s, Role::Daemon, NC);
    let err = client
        .on_frame(&hs_frame(&HandshakeMsg::ServerHello {
            version: PROTOCOL_VERSION,
            role: Role::Scheduler,
            nonce: NC,
        }))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");

    let mut server = Handshake::server_with_nonce(&s, Role::Scheduler, NS);
    let err = server
        .on_frame(&hs_frame(&HandshakeMsg::ClientHello {
            version: PROTOCOL_VERSION,
            role: Role::Daemon,
            nonce: NS,
            proof: [0; 32],
        }))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");
}

#[test]
fn tampered_role_fails() {
    // A man in the middle upgrades a User to a Daemon: the proof no longer matches.
    let s = secret(S1);
    let mut server = Handshake::server(&s, Role::Scheduler).unwrap();
    let mut client = Handshake::client(&s, Role::User).unwrap();
    deliver(&mut server, &mut client).unwrap();
    let HandshakeMsg::ClientHello {
        version,
        nonce,
        proof,
        ..
    } = msg(&client.take_output())
    else {
        panic!("not a ClientHello")
    };
    let tampered = HandshakeMsg::ClientHello {
        version,
        role: Role::Daemon,
        nonce,
        proof,
    };
    assert_eq!(
        server.on_frame(&hs_frame(&tampered)).map(|_| ()),
        Err(AuthError::WrongSecret)
    );
}

#[test]
fn version_mismatch_is_its_own_error_on_both_sides() {
    let s = secret(S1);
    let newer = PROTOCOL_VERSION + 1;
    let mut server = Handshake::with_version(Side::Server, &s, Role::Scheduler, NS, newer);
    let mut client = Handshake::client(&s, Role::Daemon).unwrap();
    assert_eq!(
        deliver(&mut server, &mut client),
        Err(AuthError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: newer
        })
    );
    assert_eq!(
        deliver(&mut client, &mut server),
        Err(AuthError::VersionMismatch {
            ours: newer,
            theirs: PROTOCOL_VERSION
        })
    );

    // Header says our version but the hello claims another: still a mismatch.
    let mut client = Handshake::client(&s, Role::Daemon).unwrap();
    let lie = hs_frame(&HandshakeMsg::ServerHello {
        version: 9,
        role: Role::Scheduler,
        nonce: NS,
    });
    assert_eq!(lie.version, PROTOCOL_VERSION);
    assert_eq!(
        client.on_frame(&lie).map(|_| ()),
        Err(AuthError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs: 9
        })
    );
    assert_eq!(
        msg(&client.take_output()),
        HandshakeMsg::Reject {
            reason: RejectReason::VersionMismatch {
                version: PROTOCOL_VERSION
            }
        }
    );
}

#[test]
fn out_of_order_and_foreign_frames_are_protocol_errors() {
    let s = secret(S1);
    let mut client = Handshake::client(&s, Role::Daemon).unwrap();
    let err = client
        .on_frame(&hs_frame(&HandshakeMsg::ServerProof { proof: [0; 32] }))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");
    let reject = client.take_output();
    assert_eq!(
        msg(&reject),
        HandshakeMsg::Reject {
            reason: RejectReason::Protocol
        }
    );
    // The other side learns it was rejected.
    let mut server = Handshake::server(&s, Role::Scheduler).unwrap();
    let err = server.on_frame(&frame(&reject)).map(|_| ()).unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err:?}");

    // A message frame before authentication.
    let mut server = Handshake::server(&s, Role::Scheduler).unwrap();
    let early = frame(&encode_message(&Message::Heartbeat).unwrap());
    assert_eq!(
        server.on_frame(&early).map(|_| ()),
        Err(AuthError::Frame(FrameError::UnexpectedKind {
            expected: FrameKind::Handshake,
            got: FrameKind::Message
        }))
    );

    // A handshake frame whose payload is garbage.
    let mut server = Handshake::server(&s, Role::Scheduler).unwrap();
    let garbage = Frame {
        version: PROTOCOL_VERSION,
        kind: FrameKind::Handshake,
        payload: vec![1, 0],
    };
    let err = server.on_frame(&garbage).map(|_| ()).unwrap_err();
    assert!(
        matches!(err, AuthError::Frame(FrameError::Malformed { .. })),
        "{err:?}"
    );
}

// ---- secrets --------------------------------------------------------------------------------

#[test]
fn secret_debug_is_redacted() {
    let s = secret(S1);
    assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    assert!(!format!("{:?}", Some(&s)).contains("horse"));
}

#[test]
fn secret_validation() {
    assert!(matches!(
        Secret::from_bytes(b"  \n", "x"),
        Err(SecretError::Empty { .. })
    ));
    assert!(matches!(
        Secret::from_bytes(b"short\n", "x"),
        Err(SecretError::TooShort { len: 5, .. })
    ));
    let s = Secret::from_bytes(b"  0123456789abcdef\n", "x").unwrap();
    assert_eq!(s.expose(), b"0123456789abcdef");
    assert_eq!(s.expose().len(), MIN_SECRET_LEN);
    let g = Secret::generate().unwrap();
    assert_eq!(g.expose().len(), 64);
    assert_ne!(g, Secret::generate().unwrap());
}

#[test]
fn secret_file_loading_and_permission_warning() {
    let dir = std::env::temp_dir().join(format!("spate-proto-secret-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    let mut f = std::fs::File::create(&path).unwrap();
    writeln!(f, "{S1}").unwrap();
    drop(f);

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(permission_warning(&path, &meta), None);
    assert_eq!(Secret::load(Some(&path)).unwrap(), secret(S1));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    let warning = permission_warning(&path, &meta).unwrap();
    assert!(warning.contains("mode 644"), "{warning}");
    assert!(warning.contains("chmod 600"), "{warning}");
    // Still loads (a warning, not an error).
    assert_eq!(Secret::from_file(&path).unwrap(), secret(S1));

    std::fs::write(&path, "").unwrap();
    assert!(matches!(
        Secret::from_file(&path),
        Err(SecretError::Empty { .. })
    ));
    assert!(matches!(
        Secret::from_file(&dir.join("missing")),
        Err(SecretError::Read { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}
