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
