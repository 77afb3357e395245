//! Liveness of the other side: a pidfd (readable once the process has exited, even as an
//! unreaped zombie, and immune to pid reuse) and, optionally, the hand-off connection (EOF or
//! hang-up when the peer died).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Open a pidfd for `pid`; `None` if the process does not exist (or pidfds are unsupported).
pub(crate) fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    if pid == 0 {
        return None;
    }
    // SAFETY: plain syscall with integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if r < 0 {
        return None;
    }
    // SAFETY: r is a fresh fd owned by us.
    Some(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// Whether the process behind `pidfd` has exited.
pub(crate) fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    poll_now(pidfd.as_raw_fd(), libc::POLLIN) != 0
}

/// Whether a connected stream socket has seen EOF / hang-up (the peer closed or died). The
/// hand-off protocol sends nothing after the hand-off, so readable means EOF.
pub(crate) fn socket_closed(fd: i32) -> bool {
    poll_now(fd, libc::POLLIN | libc::POLLRDHUP) != 0
}

fn poll_now(fd: i32, events: i16) -> i16 {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    if n <= 0 { 0 } else { p.revents }
}

/// This process's pid.
pub(crate) fn my_pid() -> u32 {
    std::process::id()
}
