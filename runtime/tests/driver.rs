//! The io_uring driver against real sockets.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use spate_runtime::{
    Arena, Completion, Driver, DriverConfig, FixedBuf, Notifier, Op, Output, RuntimeError,
};

fn wait_one(d: &mut Driver) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.is_empty() {
        assert!(Instant::now() < deadline, "no completion within 20 s");
        d.wait(Some(Duration::from_secs(1)), &mut out).unwrap();
    }
    assert_eq!(out.len(), 1, "{out:?}");
    out.pop().unwrap()
}

#[test]
fn fixed_write_and_read_move_exact_bytes_and_return_buffers() {
    let mut d = Driver::new(&DriverConfig::default()).unwrap();
    let arena = Arena::new("t-drv", 64 * 1024, 2).unwrap();
    d.register(arena.region()).unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let mut src = arena.alloc().unwrap();
    for (i, x) in src.as_mut_slice().iter_mut().enumerate() {
        *x = (i * 7 % 251) as u8;
    }
    let expect = src.as_slice().to_vec();
    let dst = arena.alloc().unwrap();
    d.push(
        1,
        Op::WriteFixed {
            fd: a.as_raw_fd(),
            buf: src.into(),
            at: 0,
            len: 64 * 1024,
        },
    )
    .unwrap();
    let c = wait_one(&mut d);
    assert_eq!((c.tag, c.result.unwrap()), (1, 64 * 1024));
    assert!(matches!(c.output, Output::Fixed(FixedBuf::Arena(_))));
    // Read in pieces (first 1000 bytes, then the rest) to exercise resuming at an offset.
    let mut dst: FixedBuf = dst.into();
    let mut got = 0usize;
    while got < 64 * 1024 {
        let len = if got == 0 { 1000 } else { 64 * 1024 - got };
        d.push(
            2,
            Op::ReadFixed {
                fd: b.as_raw_fd(),
                buf: dst,
                at: got,
                len,
            },
        )
        .unwrap();
        let c = wait_one(&mut d);
        assert_eq!(c.tag, 2);
        got += c.result.unwrap() as usize;
        let Output::Fixed(b) = c.output else {
            panic!("no buffer back")
        };
        dst = b;
    }
    let FixedBuf::Arena(dst) = dst else { panic!() };
    assert_eq!(dst.as_slice(), &expect[..]);
    assert_eq!(d.inflight(), 0);
}

#[test]
fn recv_send_timeout_and_poll_wake() {
    let mut d = Driver::new(&DriverConfig::default()).unwrap();
    let (a, mut b) = UnixStream::pair().unwrap();
    d.push(
        7,
        Op::Send {
            fd: a.as_raw_fd(),
            buf: b"hello".to_vec(),
            at: 1,
        },
    )
    .unwrap();
    let c = wait_one(&mut d);
    assert_eq!(c.tag, 7);
    assert_eq!(c.result.unwrap(), 4);
    let mut got = [0u8; 4];
    b.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ello");

    b.write_all(b"xyz").unwrap();
    d.push(
        8,
        Op::Recv {
            fd: a.as_raw_fd(),
            buf: Vec::with_capacity(16),
            flags: 0,
        },
    )
    .unwrap();
    let c = wait_one(&mut d);
    assert_eq!(c.result.unwrap(), 3);
    let Output::Vec(v) = c.output else { panic!() };
    assert_eq!(v, b"xyz");

    let t0 = Instant::now();
    d.push(
        9,
        Op::Timeout {
            after: Duration::from_millis(30),
        },
    )
    .unwrap();
    let c = wait_one(&mut d);
    assert_eq!((c.tag, c.result.unwrap()), (9, 0));
    assert!(t0.elapsed() >= Duration::from_millis(30));

    // A thread blocked in wait(None) is woken by a notifier from another thread.
    let n = Notifier::new().unwrap();
    d.push(10, Op::PollIn { fd: n.fd() }).unwrap();
    let n2 = n.clone();
    let h = std::thread::spawn(move || n2.notify());
    let mut out = Vec::new();
    d.wait(None, &mut out).unwrap();
    h.join().unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].tag, 10);
    assert_eq!(n.drain(), 1);
}

#[test]
fn cancel_and_accept_connect() {
    let mut d = Driver::new(&DriverConfig::default()).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let id = d
        .push(
            1,
            Op::Recv {
                fd: a.as_raw_fd(),
                buf: Vec::with_capacity(8),
                flags: 0,
            },
        )
        .unwrap();
    d.submit().unwrap();
    d.push(2, Op::Cancel { target: id }).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < 2 && Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(200)), &mut out).unwrap();
    }
    out.sort_by_key(|c| c.tag);
    assert_eq!(
        out[0].result.as_ref().unwrap_err().raw_os_error(),
        Some(libc::ECANCELED)
    );
    assert_eq!(out[1].result.as_ref().unwrap(), &0);

    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    d.push(3, Op::Accept { fd: l.as_raw_fd() }).unwrap();
    d.push(
        4,
        Op::Connect {
            fd: s.as_raw_fd(),
            addr: addr.into(),
        },
    )
    .unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < 2 && Instant::now() < deadline {
        d.wait(Some(Duration::from_millis(200)), &mut out).unwrap();
    }
    out.sort_by_key(|c| c.tag);
    assert!(out[0].result.is_ok());
    assert!(matches!(out[0].output, Output::Fd(_)));
    assert_eq!(out[1].result.as_ref().unwrap(), &0);
}

#[test]
fn frozen_buffers_cannot_be_read_into_and_ranges_are_checked() {
    let mut d = Driver::new(&DriverConfig::default()).unwrap();
    let arena = Arena::new("t-frozen", 4096, 1).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    let f = arena.alloc().unwrap().freeze();
    let e = d
        .push(
            1,
            Op::ReadFixed {
                fd: a.as_raw_fd(),
                buf: f.into(),
                at: 0,
                len: 10,
            },
        )
        .unwrap_err();
    assert!(matches!(e, RuntimeError::InvalidBuffer(_)), "{e}");
    // The buffer went back to the arena with the failed op.
    let b = arena.alloc().unwrap();
    let e = d
        .push(
            2,
            Op::WriteFixed {
                fd: a.as_raw_fd(),
                buf: b.into(),
                at: 4000,
                len: 100,
            },
        )
        .unwrap_err();
    assert!(matches!(e, RuntimeError::InvalidBuffer(_)), "{e}");
    assert_eq!(d.inflight(), 0);
}

#[test]
fn dropping_a_driver_with_pending_reads_is_safe() {
    let arena = Arena::new("t-drop", 4096, 1).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    {
        let mut d = Driver::new(&DriverConfig::default()).unwrap();
        d.push(
            1,
            Op::ReadFixed {
                fd: a.as_raw_fd(),
                buf: arena.alloc().unwrap().into(),
                at: 0,
                len: 4096,
            },
        )
        .unwrap();
        d.submit().unwrap();
        assert_eq!(arena.free_count(), 0);
    }
    // Cancelled and completed during drop: the buffer is back and nothing is registered.
    assert_eq!(arena.free_count(), 1);
}

/// Receive up to 16 bytes and `max_fds` descriptors from `s`.
fn recv_fds(d: &mut Driver, s: &UnixStream, max_fds: usize) -> Completion {
    d.push(
        0,
        Op::RecvFds {
            fd: s.as_raw_fd(),
            buf: Vec::with_capacity(16),
            flags: 0,
            max_fds,
        },
    )
    .unwrap();
    wait_one(d)
}

#[test]
fn descriptors_pass_with_sendmsg_and_recvmsg_and_shared_regions_read_at_offsets() {
    use std::os::fd::OwnedFd;
    let mut d = Driver::new(&DriverConfig::default()).unwrap();
    // A region whose file a peer may read: fill it, pass its read-only descriptor over a UNIX
    // socket, take it on the other side, and read a range of it at a file offset.
    let src = Arena::new("t-drv-share", 2 << 20, 1).unwrap();
    let mut s = src.alloc().unwrap();
    for (i, x) in s.as_mut_slice().iter_mut().enumerate() {
        *x = (i * 13 % 253) as u8;
    }
    let expect = s.as_slice()[12345..12345 + 70000].to_vec();
    let ro: OwnedFd = src
        .region()
        .share_fd()
        .unwrap()
        .expect("an arena is a whole memfd");
    let (a, b) = UnixStream::pair().unwrap();
    d.push(
        1,
        Op::SendFds {
            fd: a.as_raw_fd(),
            buf: b"share".to_vec(),
            fds: vec![ro],
        },
    )
    .unwrap();
    let c = wait_one(&mut d);
    assert_eq!(c.result.unwrap(), 5);
    assert!(matches!(c.output, Output::Vec(ref v) if v == b"share"));
    let c = recv_fds(&mut d, &b, 4);
    let Output::VecFds(bytes, mut fds, truncated) = c.output else {
        panic!("{:?}", c.output)
    };
    assert_eq!(
        (bytes.as_slice(), fds.len(), truncated),
        (&b"share"[..], 1, false)
    );
    let got_fd = fds.pop().unwrap();
    // The passed descriptor is read-only: writing through it fails.
    let mut f = std::fs::File::from(got_fd.try_clone().unwrap());
    assert!(f.write_all(b"x").is_err());

    let dst_arena = Arena::new("t-drv-share-dst", 128 * 1024, 1).unwrap();
    d.register(dst_arena.region()).unwrap();
    let dst = dst_arena.alloc().unwrap();
    d.push(
        3,
        Op::ReadFixedAt {
            fd: got_fd.as_raw_fd(),
            buf: dst.into(),
            at: 100,
            len: 70000,
            off: 12345,
        },
    )
    .unwrap();
    let c = wait_one(&mut d);
    assert_eq!(c.result.unwrap(), 70000);
    let Output::Fixed(FixedBuf::Arena(dst)) = c.output else {
        panic!()
    };
    assert_eq!(&dst.as_slice()[100..70100], &expect[..]);
    // A read past the end of the file returns 0 bytes, not garbage.
    d.push(
        4,
        Op::ReadFixedAt {
            fd: got_fd.as_raw_fd(),
            buf: dst.into(),
            at: 0,
            len: 4096,
            off: src.region().len() as u64,
        },
    )
    .unwrap();
    assert_eq!(wait_one(&mut d).result.unwrap(), 0);

    // Bytes without descriptors come back with none; more descriptors than asked for are
    // reported as truncated (the kernel closes the extra ones).
    (&a).write_all(b"plain").unwrap();
    let c = recv_fds(&mut d, &b, 1);
    assert!(
        matches!(c.output, Output::VecFds(ref v, ref f, false) if v == b"plain" && f.is_empty())
    );
    // Room for one descriptor rounds up to 8 bytes of control data, which holds two: send
    // three.
    let three: Vec<OwnedFd> = (0..3)
        .map(|_| src.region().share_fd().unwrap().unwrap())
        .collect();
    d.push(
        6,
        Op::SendFds {
            fd: a.as_raw_fd(),
            buf: b"three".to_vec(),
            fds: three,
        },
    )
    .unwrap();
    wait_one(&mut d).result.unwrap();
    let c = recv_fds(&mut d, &b, 1);
    assert!(
        matches!(c.output, Output::VecFds(ref v, ref f, true) if v == b"three" && f.len() == 2),
        "{:?}",
        c.output
    );
}
