//! Endpoints: `unix:PATH` locally, `tcp:HOST:PORT` remotely; connect (optionally through a
//! named interface or from a named source address) and listen.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};

/// Where a daemon listens or a connection goes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// A UNIX stream socket at a filesystem path.
    Unix(PathBuf),
    /// A TCP address: host name or IP literal, and port.
    Tcp {
        /// Host name or IP address (IPv6 without brackets).
        host: String,
        /// Port (0 = any, for listening).
        port: u16,
    },
}

/// Errors of parsing, connecting and listening.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// Text that is not `unix:PATH` or `tcp:HOST:PORT`.
    #[error("invalid endpoint {input:?}: {reason} (expected `unix:PATH` or `tcp:HOST:PORT`)")]
    Parse {
        /// The text.
        input: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The host name does not resolve.
    #[error("cannot resolve {endpoint}: {source}")]
    Resolve {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// An interface or source address was asked for a UNIX endpoint.
    #[error("{endpoint}: an interface or source address only applies to tcp endpoints")]
    ViaOnUnix {
        /// The endpoint.
        endpoint: String,
    },
    /// SO_BINDTODEVICE failed.
    #[error("cannot bind to interface {device:?}: {source}{hint}")]
    Device {
        /// Interface name.
        device: String,
        /// Why.
        source: io::Error,
        /// How to fix it.
        hint: &'static str,
    },
    /// Connecting failed.
    #[error("cannot connect to {endpoint}{via}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// Interface/source description (may be empty).
        via: String,
        /// Why.
        source: io::Error,
    },
    /// Listening failed.
    #[error("cannot listen on {endpoint}: {source}")]
    Listen {
        /// The endpoint.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// Another socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        source: io::Error,
    },
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| EndpointError::Parse {
            input: s.to_string(),
            reason,
        };
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| err("missing `unix:` or `tcp:` prefix"))?;
        match scheme {
            "unix" => {
                if rest.is_empty() {
                    return Err(err("empty socket path"));
                }
                if rest.contains('\0') {
                    return Err(err("socket path contains a NUL byte"));
                }
                Ok(Endpoint::Unix(PathBuf::from(rest)))
            }
            "tcp" => {
                let (host, port) = rest
                    .rsplit_once(':')
                    .ok_or_else(|| err("missing `:PORT`"))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| err("port is not a number in 0..=65535"))?;
                let host = match host.strip_prefix('[') {
                    Some(h) => h
                        .strip_suffix(']')
                        .ok_or_else(|| err("unclosed `[` in host"))?,
                    None => host,
                };
                if host.is_empty() {
                    return Err(err("empty host"));
                }
                if host.contains(':') && host.parse::<IpAddr>().is_err() {
                    return Err(err("host with `:` is not an IPv6 address"));
                }
                if host.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(err("host contains whitespace or `/`"));
                }
                Ok(Endpoint::Tcp {
                    host: host.to_string(),
                    port,
                })
            }
            _ => Err(err("unknown scheme")),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Endpoint::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Tcp {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

/// How a TCP connection must leave this node: through a named interface (SO_BINDTODEVICE)
/// and/or from a given source address. The scheduler tells producers which NIC to use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Via {
    /// Interface name, e.g. `eth1`.
    pub device: Option<String>,
    /// Source address to bind before connecting.
    pub source: Option<IpAddr>,
}

impl Via {
    /// No constraint.
    pub fn any() -> Via {
        Via::default()
    }
    /// Through interface `dev`.
    pub fn device(dev: impl Into<String>) -> Via {
        Via {
            device: Some(dev.into()),
            source: None,
        }
    }
    /// From source address `ip`.
    pub fn source(ip: IpAddr) -> Via {
        Via {
            device: None,
            source: Some(ip),
        }
    }
    fn is_any(&self) -> bool {
        self.device.is_none() && self.source.is_none()
    }
    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(d) = &self.device {
            s += &format!(" via interface {d}");
        }
        if let Some(a) = &self.source {
            s += &format!(" from {a}");
        }
        s
    }
}

/// A connected stream socket of either kind.
#[derive(Debug)]
pub enum Stream {
    /// UNIX.
    Unix(UnixStream),
    /// TCP.
    Tcp(TcpStream),
}

impl Stream {
    /// Whether it is TCP.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Stream::Tcp(_))
    }
    /// Give up the socket.
    pub fn into_fd(self) -> OwnedFd {
        match self {
            Stream::Unix(s) => s.into(),
            Stream::Tcp(s) => s.into(),
        }
    }
    /// Shut down both directions.
    pub fn shutdown(&self) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Tcp(s) => s.as_fd(),
        }
    }
}
impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}
impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}
impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A listening socket of either kind. A UNIX listener removes its socket file on drop.
#[derive(Debug)]
pub enum Listener {
    /// UNIX, with its path.
    Unix(UnixListener, PathBuf),
    /// TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Accept one connection (blocking).
    pub fn accept(&self) -> io::Result<Stream> {
        match self {
            Listener::Unix(l, _) => l.accept().map(|(s, _)| Stream::Unix(s)),
            Listener::Tcp(l) => l.accept().map(|(s, _)| Stream::Tcp(s)),
        }
    }
    /// The endpoint peers connect to (the real port when listening on port 0).
    pub fn local_endpoint(&self) -> io::Result<Endpoint> {
        match self {
            Listener::Unix(_, p) => Ok(Endpoint::Unix(p.clone())),
            Listener::Tcp(l) => l.local_addr().map(Endpoint::from),
        }
    }
    /// Whether it accepts TCP connections.
    pub fn is_tcp(&self) -> bool {
        matches!(self, Listener::Tcp(_))
    }
    /// Set non-blocking mode.
    pub fn set_nonblocking(&self, nb: bool) -> io::Result<()> {
        match self {
            Listener::Unix(l, _) => l.set_nonblocking(nb),
            Listener::Tcp(l) => l.set_nonblocking(nb),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Unix(l, _) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }
}
impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Endpoint {
    /// Resolve a TCP endpoint to socket addresses.
    pub fn resolve(&self) -> Result<Vec<SocketAddr>, EndpointError> {
        match self {
            Endpoint::Unix(_) => Ok(Vec::new()),
            Endpoint::Tcp { host, port } => (host.as_str(), *port)
                .to_socket_addrs()
                .map(|a| a.collect())
                .map_err(|source| EndpointError::Resolve {
                    endpoint: self.to_string(),
                    source,
                }),
        }
    }

    /// Connect (blocking, with an optional timeout), leaving through `via`.
    pub fn connect(&self, via: &Via, timeout: Option<Duration>) -> Result<Stream, EndpointError> {
        let cerr = |source| EndpointError::Connect {
            endpoint: self.to_string(),
            via: via.describe(),
            source,
        };
        match self {
            Endpoint::Unix(p) => {
                if !via.is_any() {
                    return Err(EndpointError::ViaOnUnix {
                        endpoint: self.to_string(),
                    });
                }
                let s = Socket::new(Domain::UNIX, Type::STREAM.cloexec(), None).map_err(cerr)?;
                let addr = SockAddr::unix(p).map_err(cerr)?;
                match timeout {
                    Some(t) => s.connect_timeout(&addr, t),
                    None => s.connect(&addr),
                }
                .map_err(cerr)?;
                Ok(Stream::Unix(UnixStream::from(OwnedFd::from(s))))
            }
            Endpoint::Tcp { .. } => {
                let addrs = self.resolve()?;
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addrs {
                    if let Some(src) = via.source
                        && src.is_ipv4() != a.is_ipv4()
                    {
                        continue;
                    }
                    let s = Socket::new(Domain::for_address(a), Type::STREAM.cloexec(), None)
                        .map_err(cerr)?;
                    if let Some(dev) = &via.device {
                        s.bind_device(Some(dev.as_bytes())).map_err(|source| {
                            let hint = match source.raw_os_error() {
                                Some(libc::EPERM) => {
                                    ": SO_BINDTODEVICE needs CAP_NET_RAW (run as root or grant it)"
                                }
                                Some(libc::ENODEV) => ": no such interface on this node",
                                _ => "",
                            };
                            EndpointError::Device {
                                device: dev.clone(),
                                source,
                                hint,
                            }
                        })?;
                    }
                    if let Some(src) = via.source {
                        s.bind(&SocketAddr::new(src, 0).into()).map_err(cerr)?;
                    }
                    let r = match timeout {
                        Some(t) => s.connect_timeout(&a.into(), t),
                        None => s.connect(&a.into()),
                    };
                    match r {
                        Ok(()) => return Ok(Stream::Tcp(TcpStream::from(OwnedFd::from(s)))),
                        Err(e) => last = e,
                    }
                }
                Err(cerr(last))
            }
        }
    }

    /// Listen. A stale UNIX socket file (nobody accepting) is replaced; a live one is an error.
    pub fn listen(&self) -> Result<Listener, EndpointError> {
        let lerr = |source| EndpointError::Listen {
            endpoint: self.to_string(),
            source,
        };
        match self {
            Endpoint::Unix(p) => {
                // A socket whose owner was just killed can still accept for a moment: the
                // kernel tears down the dead process's io_uring (and the accept it held)
                // after the process is gone. Such a socket is retried for a while; a live
                // owner keeps it, and then it is an error.
                let until = std::time::Instant::now() + STALE_GRACE;
                loop {
                    remove_stale(p);
                    match UnixListener::bind(p) {
                        Ok(l) => return Ok(Listener::Unix(l, p.clone())),
                        Err(e)
                            if e.kind() == io::ErrorKind::AddrInUse
                                && std::time::Instant::now() < until =>
                        {
                            std::thread::sleep(std::time::Duration::from_millis(50));
                        }
                        Err(e) => return Err(lerr(e)),
                    }
                }
            }
            Endpoint::Tcp { .. } => {
                let addrs = self.resolve()?;
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for a in addrs {
                    match TcpListener::bind(a) {
                        Ok(l) => return Ok(Listener::Tcp(l)),
                        Err(e) => last = e,
                    }
                }
                Err(lerr(last))
            }
        }
    }
}

/// How long a UNIX socket that still accepts is retried before it counts as in use.
const STALE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

fn remove_stale(p: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(p)
        && m.file_type().is_socket()
        && let Err(e) = UnixStream::connect(p)
        && e.kind() == io::ErrorKind::ConnectionRefused
    {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "unix:/run/spate/c.sock",
            "tcp:10.0.0.1:7000",
            "tcp:node-3.lan:7000",
            "tcp:[::1]:9",
        ] {
            let e: Endpoint = s.parse().unwrap();
            assert_eq!(e.to_string(), s);
        }
        assert_eq!(
            "tcp:[fe80::1]:80".parse::<Endpoint>().unwrap(),
            Endpoint::Tcp {
                host: "fe80::1".into(),
                port: 80
            }
        );
        assert_eq!(
            "unix:rel/x".parse::<Endpoint>().unwrap(),
            Endpoint::Unix("rel/x".into())
        );
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let reason = |s: &str| match s.parse::<Endpoint>() {
            Err(EndpointError::Parse { reason, .. }) => reason,
            other => panic!("{s}: {other:?}"),
        };
        assert_eq!(reason("/tmp/x"), "missing `unix:` or `tcp:` prefix");
        assert_eq!(reason("udp:1.2.3.4:5"), "unknown scheme");
        assert_eq!(reason("unix:"), "empty socket path");
        assert_eq!(reason("tcp:1.2.3.4"), "missing `:PORT`");
        assert_eq!(
            reason("tcp:1.2.3.4:99999"),
            "port is not a number in 0..=65535"
        );
        assert_eq!(reason("tcp::80"), "empty host");
        assert_eq!(reason("tcp:[::1:80"), "unclosed `[` in host");
        assert_eq!(reason("tcp:a:b:80"), "host with `:` is not an IPv6 address");
        let msg = "tcp:x".parse::<Endpoint>().unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid endpoint \"tcp:x\": missing `:PORT` (expected `unix:PATH` or `tcp:HOST:PORT`)"
        );
    }

    #[test]
    fn listen_connect_both_kinds() {
        let dir = std::env::temp_dir().join(format!("spate-ep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let u = Endpoint::Unix(dir.join("s.sock"));
        let l = u.listen().unwrap();
        let mut c = u
            .connect(&Via::any(), Some(Duration::from_secs(5)))
            .unwrap();
        let mut s = l.accept().unwrap();
        c.write_all(b"ping").unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"ping");
        assert!(matches!(
            u.connect(&Via::device("lo"), None),
            Err(EndpointError::ViaOnUnix { .. })
        ));
        drop(l);
        assert!(!dir.join("s.sock").exists());

        let t: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
        let l = t.listen().unwrap();
        let ep = l.local_endpoint().unwrap();
        let via = Via::source("127.0.0.1".parse().unwrap());
        let c = ep.connect(&via, Some(Duration::from_secs(5))).unwrap();
        assert!(c.is_tcp());
        let _s = l.accept().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
