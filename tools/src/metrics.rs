//! The `/metrics` endpoint of the daemons (`--metrics ADDR`): a small HTTP server (tiny_http)
//! on its own thread that encodes a [`prometheus::Registry`] in the Prometheus text format
//! (0.0.4, what Prometheus scrapes and `promtool check metrics` reads) on every
//! `GET /metrics`. Off unless asked for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use prometheus::{Encoder as _, Registry, TextEncoder};

/// Parses `--metrics ADDR`: `HOST:PORT` (`127.0.0.1:9464`, `0.0.0.0:9464`, `[::1]:9464`).
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    let mut it = s
        .to_socket_addrs()
        .map_err(|e| format!("metrics address {s:?}: {e} (want HOST:PORT, e.g. 127.0.0.1:9464)"))?;
    it.next()
        .ok_or_else(|| format!("metrics address {s:?} resolves to nothing"))
}

/// A running metrics endpoint; stops when dropped.
pub struct MetricsServer {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Serves `registry` at `http://ADDR/metrics`. `before` runs before each encoding (to
    /// refresh gauges sampled on demand).
    pub fn start(
        addr: SocketAddr,
        registry: Registry,
        before: impl Fn() + Send + 'static,
    ) -> anyhow::Result<MetricsServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .context("the metrics server is not on an IP address")?;
        let server = Arc::new(server);
        let s2 = server.clone();
        let thread = std::thread::Builder::new()
            .name("spate-metrics".into())
            .spawn(move || serve(&s2, &registry, &before))
            .context("spawning the metrics thread")?;
        Ok(MetricsServer {
            server,
            addr: bound,
            thread: Some(thread),
        })
    }

    /// The address it listens on (port 0 resolved).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(server: &tiny_http::Server, registry: &Registry, before: &dyn Fn()) {
    loop {
        let req = match server.recv() {
            Ok(r) => r,
            Err(_) => return, // unblocked (stopping) or the socket failed
        };
        let path = req.url().split('?').next().unwrap_or("");
        let response = if req.method() != &tiny_http::Method::Get {
            text(405, "only GET is served here\n".into(), "text/plain")
        } else if path == "/metrics" {
            before();
            let enc = TextEncoder::new();
            let mut body = Vec::new();
            match enc.encode(&registry.gather(), &mut body) {
                Ok(()) => text(
                    200,
                    String::from_utf8_lossy(&body).into_owned(),
                    enc.format_type(),
                ),
                Err(e) => text(
                    500,
                    format!("cannot encode the metrics: {e}\n"),
                    "text/plain",
                ),
            }
        } else {
            text(
                404,
                "not found: metrics are at /metrics\n".into(),
                "text/plain",
            )
        };
        let _ = req.respond(response);
    }
}

fn text(code: u16, body: String, ctype: &str) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let mut r = tiny_http::Response::from_string(body).with_status_code(code);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], ctype.as_bytes()) {
        r.add_header(h);
    }
    r
}

/// GET `http://ADDR/metrics` (tests and `spate status` helpers): the body, or an error.
#[cfg(test)]
pub fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    use std::io::{Read as _, Write as _};
    let five = std::time::Duration::from_secs(5);
    let mut s = std::net::TcpStream::connect_timeout(&addr, five)?;
    s.set_read_timeout(Some(five))?;
    write!(
        s,
        "GET /metrics HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::IntCounter;

    #[test]
    fn serves_the_registry_and_refreshes_before_each_scrape() {
        let registry = Registry::new_custom(Some("spate".into()), None).unwrap();
        let c = IntCounter::new("test_things_total", "Things counted").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        let c2 = c.clone();
        let srv = MetricsServer::start(parse_addr("127.0.0.1:0").unwrap(), registry, move || {
            c2.inc();
        })
        .unwrap();
        let body = scrape(srv.addr()).unwrap();
        assert!(
            body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
            "{body}"
        );
        assert!(body.contains("\nspate_test_things_total 1\n"), "{body}");
        let body = scrape(srv.addr()).unwrap();
        assert!(body.contains("\nspate_test_things_total 2\n"), "{body}");
        assert!(
            body.contains("\n# TYPE spate_test_things_total counter\n"),
            "{body}"
        );
        drop(srv);
    }

    #[test]
    fn bad_addresses_are_refused_with_the_form_wanted() {
        let e = parse_addr("9464").unwrap_err();
        assert!(e.contains("want HOST:PORT"), "{e}");
    }
}
