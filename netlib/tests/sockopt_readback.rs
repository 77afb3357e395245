//! Socket options are really set: every value is read back with getsockopt.

use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

use socket2::SockRef;
use spate_netlib::sockopt::{
    self, Congestion, SockoptError, Tuning, available_congestion, congestion, set_congestion,
};

fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    (c, s)
}

#[test]
fn message_tuning_sets_nodelay_quickack_and_reno() {
    let (c, _s) = tcp_pair();
    let sr = SockRef::from(&c);
    assert!(!sr.tcp_nodelay().unwrap());
    let a = sockopt::tune_message(&c, &Tuning::default()).unwrap();
    assert_eq!(a.nodelay, Some(true));
    assert_eq!(a.quickack, Some(true));
    // Independent read-back through socket2.
    assert!(sr.tcp_nodelay().unwrap());
    assert!(sr.tcp_quickack().unwrap());
    if available_congestion().iter().any(|c| c == "reno") {
        assert_eq!(a.congestion, Some(Congestion::Set("reno".into())));
        assert_eq!(congestion(&c).unwrap(), "reno");
    } else {
        assert!(matches!(a.congestion, Some(Congestion::Fallback { .. })));
    }
}

#[test]
fn other_congestion_control_and_unknown_one_falls_back() {
    let (c, _s) = tcp_pair();
    let avail = available_congestion();
    assert!(!avail.is_empty());
    let other = avail
        .iter()
        .find(|a| *a != "reno")
        .cloned()
        .unwrap_or("reno".into());
    assert_eq!(
        set_congestion(&c, &other).unwrap(),
        Congestion::Set(other.clone())
    );
    assert_eq!(congestion(&c).unwrap(), other);
    let r = set_congestion(&c, "no-such-cc").unwrap();
    match r {
        Congestion::Fallback { wanted, using, .. } => {
            assert_eq!(wanted, "no-such-cc");
            assert_eq!(using, other);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn raw_tuning_sets_large_buffers_on_tcp_and_unix() {
    let t = Tuning {
        raw_buffer: 4 << 20,
        ..Tuning::default()
    };
    let (c, _s) = tcp_pair();
    let a = sockopt::tune_raw(&c, &t).unwrap();
    let (snd, rcv) = a.buffers.unwrap();
    // The kernel reports double the requested size (bookkeeping overhead).
    assert_eq!(snd, SockRef::from(&c).send_buffer_size().unwrap());
    assert_eq!(rcv, SockRef::from(&c).recv_buffer_size().unwrap());
    let privileged = spate_runtime::memlock::has_cap_ipc_lock();
    if privileged {
        assert_eq!((snd, rcv), (8 << 20, 8 << 20));
    } else {
        assert!(snd >= 200 << 10 && rcv >= 200 << 10);
    }
    assert_eq!(a.nodelay, Some(true));

    let (u, _v) = UnixStream::pair().unwrap();
    let a = sockopt::tune_raw(&u, &t).unwrap();
    assert_eq!(a.nodelay, None);
    assert_eq!(a.congestion, None);
    let (snd, _) = a.buffers.unwrap();
    assert_eq!(snd, SockRef::from(&u).send_buffer_size().unwrap());
    if privileged {
        assert_eq!(snd, 8 << 20);
    }
}

#[test]
fn tcp_options_on_unix_sockets_are_errors_not_panics() {
    let (u, _v) = UnixStream::pair().unwrap();
    assert!(!sockopt::is_tcp(&u).unwrap());
    assert!(matches!(
        sockopt::set_nodelay(&u, true),
        Err(SockoptError::Sys {
            opt: "TCP_NODELAY",
            ..
        })
    ));
    assert_eq!(
        sockopt::tune_message(&u, &Tuning::default()).unwrap(),
        sockopt::Applied::default()
    );
}
