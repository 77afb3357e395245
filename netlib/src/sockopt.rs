//! Socket options for spate's connections, each verified by reading it back (getsockopt):
//! the functions return what the kernel actually set.
//!
//! - message connections: TCP_NODELAY, TCP_QUICKACK, congestion control (`reno` by default);
//! - raw connections: large send/receive buffers (plus NODELAY and congestion on TCP).

use std::io;
use std::os::fd::AsFd;

use socket2::{Domain, SockRef};

/// The congestion control spate asks for by default (the kernel's New Reno).
pub const DEFAULT_CONGESTION: &str = "reno";

/// Socket option errors.
#[derive(Debug, thiserror::Error)]
pub enum SockoptError {
    /// setsockopt/getsockopt failed.
    #[error("{opt}: {source}")]
    Sys {
        /// The option.
        opt: &'static str,
        /// Why.
        source: io::Error,
    },
    /// The option was set but reading it back shows another value.
    #[error("{opt} did not take: asked {asked}, kernel reports {got}")]
    NotApplied {
        /// The option.
        opt: &'static str,
        /// What we asked for.
        asked: String,
        /// What we read back.
        got: String,
    },
}

fn sys(opt: &'static str) -> impl FnOnce(io::Error) -> SockoptError {
    move |source| SockoptError::Sys { opt, source }
}

/// Whether the socket is TCP (IPv4/IPv6) rather than UNIX.
pub fn is_tcp(fd: impl AsFd) -> Result<bool, SockoptError> {
    let d = SockRef::from(&fd).domain().map_err(sys("SO_DOMAIN"))?;
    Ok(d == Domain::IPV4 || d == Domain::IPV6)
}

/// Set TCP_NODELAY; returns the value read back.
pub fn set_nodelay(fd: impl AsFd, on: bool) -> Result<bool, SockoptError> {
    let s = SockRef::from(&fd);
    s.set_tcp_nodelay(on).map_err(sys("TCP_NODELAY"))?;
    let got = s.tcp_nodelay().map_err(sys("TCP_NODELAY"))?;
    check("TCP_NODELAY", on, got)
}

/// Set TCP_QUICKACK; returns the value read back. (The kernel may leave quick-ack mode again
/// after interactive exchanges: message loops re-arm it after each receive.)
pub fn set_quickack(fd: impl AsFd, on: bool) -> Result<bool, SockoptError> {
    let s = SockRef::from(&fd);
    s.set_tcp_quickack(on).map_err(sys("TCP_QUICKACK"))?;
    let got = s.tcp_quickack().map_err(sys("TCP_QUICKACK"))?;
    check("TCP_QUICKACK", on, got)
}

fn check<T: PartialEq + std::fmt::Debug>(
    opt: &'static str,
    asked: T,
    got: T,
) -> Result<T, SockoptError> {
    if asked == got {
        Ok(got)
    } else {
        Err(SockoptError::NotApplied {
            opt,
            asked: format!("{asked:?}"),
            got: format!("{got:?}"),
        })
    }
}

/// Congestion controls this kernel offers (/proc/sys/net/ipv4/tcp_available_congestion_control).
pub fn available_congestion() -> Vec<String> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// The outcome of asking for a congestion control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Congestion {
    /// The requested algorithm is in use.
    Set(String),
    /// The kernel lacks it; the socket keeps `using`.
    Fallback {
        /// Asked for.
        wanted: String,
        /// In use (read back).
        using: String,
        /// What the kernel offers.
        available: Vec<String>,
    },
}

impl Congestion {
    /// The algorithm in use.
    pub fn in_use(&self) -> &str {
        match self {
            Congestion::Set(s) => s,
            Congestion::Fallback { using, .. } => using,
        }
    }
    /// A message for the log when falling back.
    pub fn fallback_message(&self) -> Option<String> {
        match self {
            Congestion::Set(_) => None,
            Congestion::Fallback {
                wanted,
                using,
                available,
            } => Some(format!(
                "congestion control {wanted:?} is not available on this kernel (available: {}); \
                 using {using:?}. Load it with `modprobe tcp_{wanted}` or configure one of the available ones",
                available.join(" ")
            )),
        }
    }
}

/// Read the socket's congestion control.
pub fn congestion(fd: impl AsFd) -> Result<String, SockoptError> {
    let v = SockRef::from(&fd)
        .tcp_congestion()
        .map_err(sys("TCP_CONGESTION"))?;
    let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
    Ok(String::from_utf8_lossy(&v[..end]).into_owned())
}

/// Ask for congestion control `name`; falls back (with a message) when the kernel lacks it.
pub fn set_congestion(fd: impl AsFd, name: &str) -> Result<Congestion, SockoptError> {
    let s = SockRef::from(&fd);
    match s.set_tcp_congestion(name.as_bytes()) {
        Ok(()) => {
            let got = congestion(&fd)?;
            check("TCP_CONGESTION", name.to_string(), got).map(Congestion::Set)
        }
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)) => {
            let c = Congestion::Fallback {
                wanted: name.to_string(),
                using: congestion(&fd)?,
                available: available_congestion(),
            };
            if let Some(m) = c.fallback_message() {
                tracing::warn!("{m}");
            }
            Ok(c)
        }
        Err(e) => Err(sys("TCP_CONGESTION")(e)),
    }
}

/// Set the send and receive buffer sizes (SO_SNDBUFFORCE/SO_RCVBUFFORCE when privileged, so
/// net.core.{w,r}mem_max does not cap them; else the plain options). Returns the sizes read
/// back (the kernel reports twice the usable size it accounts).
pub fn set_buffers(fd: impl AsFd, snd: usize, rcv: usize) -> Result<(usize, usize), SockoptError> {
    use std::os::fd::AsRawFd;
    let raw = fd.as_fd().as_raw_fd();
    let force = |opt: libc::c_int, v: usize| -> bool {
        let v = v.min(i32::MAX as usize / 2) as libc::c_int;
        // SAFETY: setsockopt with a valid fd and a pointer/length to an int on our stack.
        unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    let s = SockRef::from(&fd);
    if !force(libc::SO_SNDBUFFORCE, snd) {
        s.set_send_buffer_size(snd).map_err(sys("SO_SNDBUF"))?;
    }
    if !force(libc::SO_RCVBUFFORCE, rcv) {
        s.set_recv_buffer_size(rcv).map_err(sys("SO_RCVBUF"))?;
    }
    Ok((
        s.send_buffer_size().map_err(sys("SO_SNDBUF"))?,
        s.recv_buffer_size().map_err(sys("SO_RCVBUF"))?,
    ))
}

/// What was applied to a connection (read back).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// TCP_NODELAY (TCP only).
    pub nodelay: Option<bool>,
    /// TCP_QUICKACK (TCP message connections only).
    pub quickack: Option<bool>,
    /// Congestion control (TCP only).
    pub congestion: Option<Congestion>,
    /// SO_SNDBUF and SO_RCVBUF as read back (raw connections).
    pub buffers: Option<(usize, usize)>,
}

/// Tuning of raw and message connections.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Congestion control for TCP.
    pub congestion: String,
    /// Socket buffer size for raw connections (bytes, each direction).
    pub raw_buffer: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            congestion: DEFAULT_CONGESTION.to_string(),
            raw_buffer: 8 << 20,
        }
    }
}

/// Message connection: NODELAY, QUICKACK and congestion control on TCP; nothing on UNIX.
pub fn tune_message(fd: impl AsFd, t: &Tuning) -> Result<Applied, SockoptError> {
    if !is_tcp(&fd)? {
        return Ok(Applied::default());
    }
    Ok(Applied {
        nodelay: Some(set_nodelay(&fd, true)?),
        quickack: Some(set_quickack(&fd, true)?),
        congestion: Some(set_congestion(&fd, &t.congestion)?),
        buffers: None,
    })
}

/// Raw connection: large buffers; on TCP also NODELAY and congestion control.
pub fn tune_raw(fd: impl AsFd, t: &Tuning) -> Result<Applied, SockoptError> {
    let buffers = Some(set_buffers(&fd, t.raw_buffer, t.raw_buffer)?);
    if !is_tcp(&fd)? {
        return Ok(Applied {
            buffers,
            ..Applied::default()
        });
    }
    Ok(Applied {
        nodelay: Some(set_nodelay(&fd, true)?),
        quickack: None,
        congestion: Some(set_congestion(&fd, &t.congestion)?),
        buffers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_message_names_alternatives() {
        let c = Congestion::Fallback {
            wanted: "reno".into(),
            using: "cubic".into(),
            available: vec!["cubic".into(), "bbr".into()],
        };
        assert_eq!(c.in_use(), "cubic");
        let m = c.fallback_message().unwrap();
        assert!(m.contains("\"reno\" is not available"), "{m}");
        assert!(m.contains("available: cubic bbr"), "{m}");
        assert_eq!(Congestion::Set("reno".into()).fallback_message(), None);
    }
}
