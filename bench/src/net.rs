//! `spate bench net`: raw connections through io_uring (WriteFixed → ReadFixed into
//! registered hugepage destination buffers, with the offer/grant/ack flow control, threads
//! pinned one per core) against plain blocking std sockets (1 MiB writes of the same chunks),
//! in the same run, between two processes. Over UNIX sockets the raw connection does what
//! spate's local producers do: the receiver pulls each chunk with one io_uring copy from the
//! sender's shared buffer memory (`Share`/`Pull`); the same transfer with the payload through
//! the socket is measured too (`socket_gbit_per_s`). The baseline runs twice: as a plain program does
//! (unpinned threads: `baseline_gbit_per_s`, `ratio`) and pinned to the same cores as the
//! io_uring path (`pinned_baseline_gbit_per_s`, `pinned_ratio`), which isolates what io_uring
//! itself gains. The receiver is this same binary re-executed with the hidden `--role receiver`.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use spate_netlib::endpoint::{Endpoint, Via};
use spate_netlib::raw::{
    ChunkKey, ClientEvent, ConnId, Landing, Offered, RawClient, RawConfig, RawServer,
};
use spate_runtime::{Arena, FixedBuf};

const BASELINE_WRITE: usize = 1 << 20;

/// Arguments of `spate bench net`.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Bytes to move in each transfer (e.g. 8GiB, 512MiB).
    #[arg(long, default_value = "8GiB", value_parser = parse_size)]
    pub bytes: u64,
    /// Chunk size (e.g. 4MiB).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub chunk: u64,
    /// Transport: unix or tcp (loopback).
    #[arg(long, default_value = "unix", value_parser = ["unix", "tcp"])]
    pub transport: String,
    /// Chunks in flight (source buffers at the sender, destination buffers at the receiver).
    #[arg(long, default_value_t = 4)]
    pub depth: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Raw connections without the cluster-secret handshake (to measure what it costs; spate
    /// daemons always authenticate).
    #[arg(long)]
    pub no_auth: bool,
    /// Internal: the receiving process.
    #[arg(long, hide = true)]
    pub role: Option<String>,
}

/// Environment variable that hands the receiver process the run's generated secret.
const SECRET_ENV: &str = "SPATE_BENCH_NET_SECRET";

/// The credentials of this side's raw connections (None with `--no-auth`).
fn raw_auth(a: &Args, name: &str) -> anyhow::Result<Option<spate_netlib::raw::RawAuth>> {
    if a.no_auth {
        return Ok(None);
    }
    let hex = std::env::var(SECRET_ENV).with_context(|| format!("{SECRET_ENV} is not set"))?;
    let secret = spate_netlib::auth::Secret::from_bytes(hex.as_bytes(), SECRET_ENV)?;
    Ok(Some(
        spate_netlib::raw::RawAuth::new(secret, name).map_err(anyhow::Error::msg)?,
    ))
}

pub use crate::parse_size;

/// Run the benchmark (or, with `--role receiver`, its receiving side).
pub fn run(a: Args) -> anyhow::Result<i32> {
    if a.chunk > a.bytes || a.chunk > (1 << 30) {
        bail!("--chunk must be at most --bytes and at most 1GiB");
    }
    if a.depth == 0 {
        bail!("--depth must be at least 1");
    }
    match a.role.as_deref() {
        Some("receiver") => receiver(&a),
        Some(r) => bail!("unknown role {r:?}"),
        None => sender(&a),
    }
}

struct Sink {
    arena: Arena,
    landed: u64,
    bytes: u64,
    closed: usize,
    error: Option<String>,
}

impl Landing for Sink {
    fn offer(&mut self, _c: ConnId, _k: &ChunkKey) -> Offered {
        match self.arena.alloc() {
            Some(b) => Offered::Grant(b.into()),
            None => Offered::Wait,
        }
    }
    fn landed(&mut self, _c: ConnId, k: &ChunkKey, _dest: FixedBuf) {
        // The consumer would commit the range to its ring here; the buffer goes back.
        self.landed += 1;
        self.bytes += k.len;
    }
    fn closed(&mut self, _c: ConnId, error: Option<&spate_netlib::raw::RawError>) {
        self.closed += 1;
        self.error = error.map(|e| e.to_string());
    }
}

fn receiver(a: &Args) -> anyhow::Result<i32> {
    crate::pin_one_side(true);
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let (raw_ep, std_ep): (Endpoint, Endpoint) = match a.transport.as_str() {
        "unix" => (
            Endpoint::Unix(dir.join(format!("spate-bench-net-{pid}-raw.sock"))),
            Endpoint::Unix(dir.join(format!("spate-bench-net-{pid}-std.sock"))),
        ),
        _ => ("tcp:127.0.0.1:0".parse()?, "tcp:127.0.0.1:0".parse()?),
    };
    let mut server = RawServer::new(RawConfig {
        auth: raw_auth(a, "bench-receiver")?,
        ..RawConfig::default()
    })?;
    let arena = Arena::new("spate-bench-net-dst", a.chunk as usize, a.depth)?;
    server.driver().register(arena.region())?;
    let raw_ep = server.listen(&raw_ep)?;
    let std_l = std_ep.listen()?;
    let std_ep = std_l.local_endpoint()?;
    println!("READY {raw_ep} {std_ep} {}", arena.backing());
    std::io::stdout().flush()?;

    let mut sink = Sink {
        arena,
        landed: 0,
        bytes: 0,
        closed: 0,
        error: None,
    };
    // One raw transfer per connection, one after the other: over UNIX pulled, then through
    // the socket; over TCP through the socket.
    let transfers = raw_transfers(a);
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.closed < transfers {
        if Instant::now() > deadline {
            bail!("receiver: timed out after {} bytes", sink.bytes);
        }
        server.turn(&mut sink, Some(Duration::from_millis(200)))?;
        if let Some(e) = &sink.error {
            bail!("receiver: raw connection failed: {e}");
        }
        if sink.bytes < sink.closed as u64 * a.bytes {
            bail!(
                "receiver: sender closed after {} of {} bytes",
                sink.bytes,
                sink.closed as u64 * a.bytes
            );
        }
    }

    // Baselines: blocking reads of the same bytes into the same (hugepage) buffers, in turn, as
    // the io_uring path uses them (one hot buffer would flatter the baseline with cache hits).
    // First as a plain program runs (threads unpinned), then pinned like the io_uring path.
    let mut dsts = Vec::new();
    while let Some(b) = sink.arena.alloc() {
        dsts.push(b);
    }
    if dsts.is_empty() {
        bail!("receiver: no destination buffer for the baseline");
    }
    for pinned in [false, true] {
        if pinned {
            crate::pin_one_side(true);
        } else {
            crate::unpin();
        }
        let mut s = std_l.accept()?;
        let mut left = a.bytes;
        let mut i = 0;
        while left > 0 {
            let n = left.min(a.chunk) as usize;
            let k = i % dsts.len();
            let buf = &mut dsts[k].as_mut_slice()[..n];
            for piece in buf.chunks_mut(BASELINE_WRITE) {
                s.read_exact(piece)?;
            }
            left -= n as u64;
            i += 1;
        }
        s.write_all(b"k")?;
    }
    Ok(0)
}

fn raw_transfers(a: &Args) -> usize {
    if a.transport == "unix" { 2 } else { 1 }
}

#[derive(serde::Serialize)]
struct Report {
    transport: String,
    bytes: u64,
    chunk: u64,
    depth: usize,
    /// How the raw connection moved the payload: "pull" (UNIX: one copy from the sender's
    /// shared memory) or "socket".
    payload: String,
    gbit_per_s: f64,
    /// The io_uring raw path with the payload through the socket (equals `gbit_per_s` on TCP).
    socket_gbit_per_s: f64,
    /// Plain blocking time / io_uring socket-payload time.
    socket_ratio: f64,
    /// One thread copying the same bytes with memcpy between buffers of the same geometry
    /// (`depth` source and `depth` destination chunks, hugepages): the limit of the pull path,
    /// which is one copy.
    memcpy_gbit_per_s: f64,
    /// `gbit_per_s / memcpy_gbit_per_s`.
    of_memcpy: f64,
    baseline_gbit_per_s: f64,
    ratio: f64,
    pinned_baseline_gbit_per_s: f64,
    pinned_ratio: f64,
    latency_us: Latency,
    src_backing: String,
    dst_backing: String,
    ring_mode: String,
    /// Raw connections ran the cluster-secret handshake.
    authenticated: bool,
}

#[derive(serde::Serialize)]
struct Latency {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

fn gbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64() / 1e9
}

fn sender(a: &Args) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("locating the spate binary")?;
    let secret = spate_netlib::auth::Secret::generate()?;
    let hex = String::from_utf8_lossy(secret.expose()).into_owned();
    let mut cmd = Command::new(exe);
    cmd.env(SECRET_ENV, &hex);
    let mut child = cmd
        .args([
            "bench",
            "net",
            "--role",
            "receiver",
            "--transport",
            &a.transport,
            "--bytes",
            &a.bytes.to_string(),
            "--chunk",
            &a.chunk.to_string(),
            "--depth",
            &a.depth.to_string(),
        ])
        .args(a.no_auth.then_some("--no-auth"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the receiver process")?;
    let out = child.stdout.take().context("receiver stdout")?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    let parts: Vec<&str> = line.split_whitespace().collect();
    if parts.len() < 3 || parts[0] != "READY" {
        let _ = child.kill();
        bail!("receiver did not start (said {line:?})");
    }
    let raw_ep: Endpoint = parts[1].parse()?;
    let std_ep: Endpoint = parts[2].parse()?;
    let dst_backing = parts[3..].join(" ");
    crate::pin_one_side(false);

    let auth = if a.no_auth {
        None
    } else {
        Some(spate_netlib::raw::RawAuth::new(secret, "bench-sender").map_err(anyhow::Error::msg)?)
    };
    let r = measure(a, &raw_ep, &std_ep, auth.as_ref());
    let status = child.wait()?;
    let m = r?;
    if !status.success() {
        bail!("receiver failed: {status}");
    }
    let (uring, socket, base, pinned) = (m.uring, m.socket, m.base, m.pinned);
    let hist = m.hist;
    let rep = Report {
        transport: a.transport.clone(),
        bytes: a.bytes,
        chunk: a.chunk,
        depth: a.depth,
        payload: m.payload.into(),
        gbit_per_s: gbit(a.bytes, uring),
        socket_gbit_per_s: gbit(a.bytes, socket),
        socket_ratio: base.as_secs_f64() / socket.as_secs_f64(),
        memcpy_gbit_per_s: gbit(a.bytes, m.memcpy),
        of_memcpy: m.memcpy.as_secs_f64() / uring.as_secs_f64(),
        baseline_gbit_per_s: gbit(a.bytes, base),
        ratio: base.as_secs_f64() / uring.as_secs_f64(),
        pinned_baseline_gbit_per_s: gbit(a.bytes, pinned),
        pinned_ratio: pinned.as_secs_f64() / uring.as_secs_f64(),
        latency_us: Latency {
            p50: hist.value_at_quantile(0.5),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
        },
        src_backing: m.src_backing,
        dst_backing,
        ring_mode: m.mode,
        authenticated: auth.is_some(),
    };
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        println!(
            "spate bench net: {} GiB in {} MiB chunks over {} (depth {})",
            a.bytes as f64 / (1u64 << 30) as f64,
            a.chunk as f64 / (1u64 << 20) as f64,
            a.transport,
            a.depth
        );
        let row = |what: &str, g: f64, note: String| {
            println!(
                "{}",
                format!("  {what:<58} {g:7.2} Gbit/s  {note}").trim_end()
            )
        };
        if m.payload == "pull" {
            row(
                "io_uring raw, receiver pulls from the sender's memfd",
                rep.gbit_per_s,
                format!("{:.2}x plain, {:.2} of memcpy", rep.ratio, rep.of_memcpy),
            );
            row(
                "io_uring raw, payload through the socket",
                rep.socket_gbit_per_s,
                format!("{:.2}x plain", rep.socket_ratio),
            );
        } else {
            row(
                "io_uring raw (WriteFixed -> ReadFixed, flow control)",
                rep.gbit_per_s,
                format!("{:.2}x plain", rep.ratio),
            );
        }
        row(
            "plain blocking std sockets (1 MiB writes)",
            rep.baseline_gbit_per_s,
            String::new(),
        );
        row(
            "the same, pinned to the same cores as io_uring",
            rep.pinned_baseline_gbit_per_s,
            format!("io_uring {:.2}x it", rep.pinned_ratio),
        );
        row(
            "memcpy, one thread, same buffer geometry",
            rep.memcpy_gbit_per_s,
            String::new(),
        );
        println!(
            "  chunk latency offer→ack (us): p50 {}  p99 {}  p99.9 {}  max {}",
            rep.latency_us.p50, rep.latency_us.p99, rep.latency_us.p999, rep.latency_us.max
        );
        println!(
            "  buffers: source {}, destination {}; ring {}",
            rep.src_backing, rep.dst_backing, rep.ring_mode
        );
        println!(
            "  raw connections: {}",
            if rep.authenticated {
                "authenticated with a generated cluster secret (--no-auth: without)"
            } else {
                "not authenticated (--no-auth)"
            }
        );
    }
    Ok(0)
}

struct Measured {
    /// The raw path spate uses on this transport.
    uring: Duration,
    /// The raw path with the payload through the socket.
    socket: Duration,
    base: Duration,
    pinned: Duration,
    /// Chunk latencies of `uring`.
    hist: Histogram<u64>,
    memcpy: Duration,
    payload: &'static str,
    src_backing: String,
    mode: String,
}

fn measure(
    a: &Args,
    raw_ep: &Endpoint,
    std_ep: &Endpoint,
    auth: Option<&spate_netlib::raw::RawAuth>,
) -> anyhow::Result<Measured> {
    let arena = Arena::new("spate-bench-net-src", a.chunk as usize, a.depth)?;
    // Fill every source buffer once (content is not what is measured).
    let mut bufs = Vec::new();
    while let Some(mut b) = arena.alloc() {
        for (i, x) in b.as_mut_slice().iter_mut().enumerate() {
            *x = (i % 251) as u8;
        }
        bufs.push(b);
    }
    let unix = a.transport == "unix";
    let (uring, hist, mode, bufs) = raw_transfer(a, raw_ep, bufs, &arena, unix, auth)?;
    let (socket, bufs) = if unix {
        let (t, _, _, bufs) = raw_transfer(a, raw_ep, bufs, &arena, false, auth)?;
        (t, bufs)
    } else {
        (uring, bufs)
    };

    // Baselines: plain blocking std sockets (default options), 1 MiB writes of the same chunks
    // from the same source buffers in turn; first unpinned (as a plain program runs), then
    // pinned to the same cores as the io_uring path.
    if bufs.is_empty() {
        bail!("no source buffer left for the baseline");
    }
    let mut times = [Duration::ZERO; 2];
    for (t, pinned) in times.iter_mut().zip([false, true]) {
        if pinned {
            crate::pin_one_side(false);
        } else {
            crate::unpin();
        }
        let mut s = std_ep.connect(&Via::any(), Some(Duration::from_secs(5)))?;
        let t1 = Instant::now();
        let mut left = a.bytes;
        let mut i = 0;
        while left > 0 {
            let n = left.min(a.chunk) as usize;
            for piece in bufs[i % bufs.len()].as_slice()[..n].chunks(BASELINE_WRITE) {
                s.write_all(piece)?;
            }
            left -= n as u64;
            i += 1;
        }
        let mut ack = [0u8; 1];
        s.read_exact(&mut ack)?;
        *t = t1.elapsed();
    }
    // The memory limit: one copy of the same bytes between buffers of the same geometry.
    let dst = Arena::new("spate-bench-net-memcpy", a.chunk as usize, a.depth)?;
    let mut dsts = Vec::new();
    while let Some(mut b) = dst.alloc() {
        b.as_mut_slice().fill(0);
        dsts.push(b);
    }
    let t2 = Instant::now();
    let (mut left, mut i) = (a.bytes, 0usize);
    while left > 0 {
        let n = left.min(a.chunk) as usize;
        let k = i % dsts.len().min(bufs.len());
        dsts[k].as_mut_slice()[..n].copy_from_slice(&bufs[k].as_slice()[..n]);
        left -= n as u64;
        i += 1;
    }
    let memcpy = t2.elapsed();
    std::hint::black_box(&dsts);
    Ok(Measured {
        uring,
        socket,
        memcpy,
        base: times[0],
        pinned: times[1],
        hist,
        payload: if unix { "pull" } else { "socket" },
        src_backing: arena.backing().to_string(),
        mode,
    })
}

/// One raw transfer of `a.bytes` on a fresh connection, `pull` (share the source memory with
/// the local receiver) or through the socket; the source buffers come back.
fn raw_transfer(
    a: &Args,
    raw_ep: &Endpoint,
    mut bufs: Vec<spate_runtime::ArenaBuf>,
    arena: &Arena,
    pull: bool,
    auth: Option<&spate_netlib::raw::RawAuth>,
) -> anyhow::Result<(
    Duration,
    Histogram<u64>,
    String,
    Vec<spate_runtime::ArenaBuf>,
)> {
    crate::pin_one_side(false);
    let mut client = RawClient::new(RawConfig {
        share_local: pull,
        auth: auth.cloned(),
        ..RawConfig::default()
    })?;
    client.driver().register(arena.region())?;
    let mode = format!("{:?}", client.driver().mode());
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let conn = client.connection(raw_ep, &Via::any())?;
    let chunks = a.bytes.div_ceil(a.chunk);
    let mut started = std::collections::HashMap::new();
    let (mut sent, mut acked, mut offset) = (0u64, 0u64, 0u64);
    let mut events = Vec::new();
    let t0 = Instant::now();
    while acked < chunks {
        while sent < chunks
            && let Some(b) = bufs.pop()
        {
            let len = (a.bytes - offset).min(a.chunk);
            let key = ChunkKey {
                job: 1,
                stream: 0,
                offset,
                len,
            };
            started.insert(offset, Instant::now());
            client
                .send(conn, key, b.into(), 0)
                .map_err(|r| r.error)
                .context("offering a chunk")?;
            offset += len;
            sent += 1;
        }
        client.turn(Some(Duration::from_secs(1)), &mut events)?;
        for e in events.drain(..) {
            match e {
                ClientEvent::Acked { key, buf, .. } => {
                    acked += 1;
                    if let Some(t) = started.remove(&key.offset) {
                        hist.saturating_record(t.elapsed().as_micros() as u64);
                    }
                    if let FixedBuf::Arena(b) = buf {
                        bufs.push(b);
                    }
                }
                other => bail!("raw transfer failed: {other:?}"),
            }
        }
        if t0.elapsed() > Duration::from_secs(600) {
            bail!("raw transfer timed out after {acked} chunks");
        }
    }
    let uring = t0.elapsed();
    client.close(conn);
    while client.connections() > 0 {
        client.turn(Some(Duration::from_millis(50)), &mut events)?;
    }
    let st = client.stats();
    let (want_pulled, want_sent) = if pull { (chunks, 0) } else { (0, chunks) };
    if (st.pulled, st.sent) != (want_pulled, want_sent) {
        bail!(
            "raw transfer took the wrong path: {} chunks pulled, {} sent through the socket",
            st.pulled,
            st.sent
        );
    }
    Ok((uring, hist, mode, bufs))
}
