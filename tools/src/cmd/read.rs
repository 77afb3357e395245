//! `spate read`: attach to a stream on this node and read it to the end.

use anyhow::Context as _;
use clap::Args as ClapArgs;
use spate_netlib::text::{Quoted, quote};
use spate_producer::rip::{self, Ink};
use spate_ring::handoff;
use spate_ring::{Acquired, ReadError, Reader, pattern};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Exit code: the data did not match the pattern.
pub const EXIT_VERIFY: i32 = crate::exit::VERIFY;
/// Exit code: the writer aborted the stream.
pub const EXIT_ABORTED: i32 = crate::exit::ABORTED;
/// Exit code: the writer died before the end.
pub const EXIT_WRITER_DEAD: i32 = crate::exit::PEER_GONE;

#[derive(ClapArgs, Debug)]
#[command(
    about = "Read a stream from a consumer's shared-memory ring (to a file, stdout, or nowhere)",
    long_about = "Read a stream from a consumer's shared-memory ring, in order, to the end.\n\n\
The consumer daemon on this node holds one ring per stream and hands it to a local reader over \
its hand-off socket (the fds pass with SCM_RIGHTS after a peer-credential check; the data is \
mapped read-only, no copy). `spate read` attaches with --socket and --key, reads every byte, \
writes it to --out (a file, `-` for stdout) or discards it, and reports bytes, time and \
throughput.\n\n\
With --rate it reads at a constant rate like a printer would: block by block, sleeping until \
each block is due (no busy loop). Each time a block is not there when due is a starvation \
event; their number and total duration are reported. After a starvation the schedule restarts \
from the moment the data arrived (a printer cannot catch up). The schedule starts when the \
first block is there (waiting for the job to start is not starvation).\n\n\
With --verify SEED:STREAM every byte is checked against spate's deterministic test pattern \
(the `pattern` kernel's output for that seed and stream index). With --hash the XXH3-128 \
digest of the whole stream is computed while reading (compare it with the digest of the \
expected output, e.g. of a RIP run elsewhere).\n\n\
With --preview PATH.png --width W the stream is also drawn, while it is read, as a small PNG: \
the stream is taken as lines of W pixels of one ink channel (one byte, a drop level below \
--levels, per pixel) and every --scale x --scale box becomes one preview pixel showing its ink \
coverage on white paper (in the ink's colour with --ink). Only one band of --scale lines is \
accumulated at a time, so memory stays small whatever the stream's size. A stream that is not \
a whole number of W-pixel lines gives no preview and an error.\n\n\
The report counts the bytes this reader read (and checked, with --verify or --hash). A reader \
that joins a stream after an earlier reader left reads on from where that one stopped and reports \
that offset; a stream that an earlier reader read to its end cannot be read again (an error, \
exit status 1).\n\n\
The report goes to stdout (to stderr when the data goes to stdout). --json prints it as one \
JSON object: {\"outcome\", \"bytes\", \"start_offset\", \"seconds\", \"gbit_per_s\", \"backing\", \"verified\", \
\"rate_gbit_per_s\", \"starvations\", \"starvation_seconds\", \"error\", \"bad_offset\", \
\"preview\", \"first_data_seconds\", \"active_gbit_per_s\", \"xxh3_128\"} (preview: the PNG \
written, else null; first_data_seconds: from attaching to the first byte; active_gbit_per_s: \
bytes over the time from the first byte to the end; xxh3_128: 32 hex digits with --hash, else \
null; bytes: read by this reader, from the stream offset start_offset).\n\n\
--hgrm FILE writes how long each block was waited for (microseconds, from asking for it to \
having it) as an HdrHistogram percentile distribution (.hgrm text).\n\n\
The socket is the consumer node's RUN_DIR/handoff.sock and the key is 32 hex digits: \
`spate submit` prints the exact command for each stream.\n\n\
Exit status: 0 the stream was read to its end (and the consumer confirmed that the scheduler recorded it); 5 verification failed (the message names the \
first bad offset); 3 the stream was aborted (with the reason; also when every byte was read but \
the job ended otherwise); 4 the writer died before the end, or after every byte was read but \
before it confirmed the end (outcome `end_unconfirmed`: the bytes are whole and checked, the \
job's outcome is the scheduler's, see `spate status`); 2 bad arguments; 1 any other error (cannot attach, output error). `spate --help` has the \
table of every command.",
    after_help = "Examples:\n  \
spate read --socket /run/spate/printer/handoff.sock --key 5f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f --out cyan.raw\n  \
spate read --socket /run/spate/printer/handoff.sock --key 5f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f --rate 2.5Gbit --verify 42:1 --json\n  \
spate read --socket /run/spate/printer/handoff.sock --key 5f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f --out - | my-printer-driver\n  \
spate read --socket /run/spate/printer/handoff.sock --key 5f0c2d9e8a7b6c5d4e3f2a1b0c9d8e7f --preview k.png --width 3000 --ink K"
)]
pub struct Args {
    /// The consumer's hand-off socket (UNIX socket path).
    #[arg(long, env = "SPATE_SOCKET", value_name = "PATH")]
    pub socket: PathBuf,
    /// The stream key (as returned when the job was accepted).
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// Where the bytes go: a file path, `-` for stdout. Default: discard.
    #[arg(long, value_name = "PATH|-")]
    pub out: Option<String>,
    /// Constant read rate, per second, as iperf3 and SI/IEC write it (case matters: b = bit,
    /// B = byte, k = 1000, Ki = 1024): bit, kbit/kb, Mbit/Mb, Gbit/Gb, Tbit/Tb; B, kB, MB, GB,
    /// TB; KiB, MiB, GiB, TiB; an optional "/s", or "ps" (10Gbps, 1GBps). Ambiguous forms
    /// (2.5G, 4KB, 2.5gb) are refused. Examples: 2.5Gbit, 800Mb/s, 1.2GB, 300MiB.
    /// Without --rate, a stream of a job with a rate is read at that rate, starting once the
    /// job's planned prefill is there (the report says `rate_from: "job"`).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Read as fast as possible even when the job has a rate.
    #[arg(long, conflicts_with = "rate")]
    pub no_pace: bool,
    /// Check every byte against the test pattern of seed SEED, stream index STREAM.
    #[arg(long, value_name = "SEED:STREAM", value_parser = parse_verify)]
    pub verify: Option<(u64, u64)>,
    /// Compute the XXH3-128 digest of the stream (`xxh3_128` in the report).
    #[arg(long)]
    pub hash: bool,
    /// Read block size: the pacing granularity with --rate, the largest block otherwise.
    /// Units as for sizes: 4096, 64KiB, 1MiB, 2MB.
    #[arg(long, value_name = "SIZE", default_value = "1MiB", value_parser = parse_size)]
    pub block: u64,
    /// Give up when no data arrives for this many seconds (default: wait as long as the
    /// writer lives).
    #[arg(long, value_name = "SECS")]
    pub idle_timeout: Option<f64>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also write a downscaled PNG preview of the stream (one ink channel) to this file.
    #[arg(long, value_name = "PATH.png", requires = "width")]
    pub preview: Option<PathBuf>,
    /// Pixels per line of the stream (one byte per pixel), for --preview.
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..))]
    pub width: Option<u32>,
    /// Drop levels of the stream's pixels (2..=256; bytes at or above levels-1 are full ink),
    /// for --preview.
    #[arg(long, value_name = "L", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(2..=256))]
    pub levels: u32,
    /// Preview pixels are boxes of S x S stream pixels (default: the smallest S that makes the
    /// preview at most 1024 pixels wide).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    pub scale: Option<u32>,
    /// Draw the preview in this ink's colour (C, M, Y or K; default: grey).
    #[arg(long, value_name = "INK", value_parser = parse_ink)]
    pub ink: Option<Ink>,
    /// Write the per-block waits (microseconds) as an HdrHistogram .hgrm file.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
}

fn parse_ink(s: &str) -> Result<Ink, String> {
    Ink::parse(s).map_err(|e| e.to_string())
}

/// A stream preview built while reading: only the current band of `scale` lines is
/// accumulated; finished bands become one row of coverage values (0..=255) each.
pub struct Preview {
    width: usize,
    scale: usize,
    /// Highest drop level (levels - 1): bytes above it count as full ink.
    top: u64,
    /// Ink sum per preview column of the current band.
    acc: Vec<u64>,
    /// Full lines in the current band.
    band_lines: usize,
    /// Position inside the current line.
    col: usize,
    /// Finished rows of coverage, row after row.
    cover: Vec<u8>,
    lines: u64,
}

impl Preview {
    /// A preview of `width`-pixel lines with drop levels `levels`, `scale` x `scale` boxes.
    pub fn new(width: u32, levels: u32, scale: u32) -> Preview {
        let (width, scale) = (width.max(1) as usize, scale.max(1) as usize);
        Preview {
            width,
            scale,
            top: u64::from(levels.clamp(2, 256) - 1),
            acc: vec![0; width.div_ceil(scale)],
            band_lines: 0,
            col: 0,
            cover: Vec::new(),
            lines: 0,
        }
    }

    /// The default scale: the smallest that keeps the preview at most 1024 pixels wide.
    pub fn auto_scale(width: u32) -> u32 {
        width.div_ceil(1024).max(1)
    }

    /// Adds the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        let (s, top) = (self.scale, self.top);
        while !data.is_empty() {
            let cell = self.col / s;
            let n = data
                .len()
                .min((cell + 1) * s - self.col)
                .min(self.width - self.col);
            self.acc[cell] += data[..n]
                .iter()
                .map(|&v| u64::from(v).min(top))
                .sum::<u64>();
            data = &data[n..];
            self.col += n;
            if self.col == self.width {
                self.col = 0;
                self.lines += 1;
                self.band_lines += 1;
                if self.band_lines == s {
                    self.flush_band();
                }
            }
        }
    }

    fn flush_band(&mut self) {
        let (w, s, rows) = (self.width, self.scale, self.band_lines);
        for (px, a) in self.acc.iter_mut().enumerate() {
            let cols = s.min(w - px * s);
            let full = self.top * (rows * cols) as u64;
            self.cover.push(((*a * 255 + full / 2) / full) as u8);
            *a = 0;
        }
        self.band_lines = 0;
    }

    /// The PNG of everything fed so far (which must be whole lines), in `ink`'s colour.
    pub fn finish(mut self, ink: Option<Ink>) -> anyhow::Result<Vec<u8>> {
        if self.col != 0 {
            anyhow::bail!(
                "preview: the stream ends {} bytes into a line: it is not made of {}-pixel \
                 lines (check --width)",
                self.col,
                self.width
            );
        }
        if self.lines == 0 {
            anyhow::bail!("preview: the stream is empty");
        }
        if self.band_lines > 0 {
            self.flush_band();
        }
        let (pw, ph) = (self.acc.len(), self.cover.len() / self.acc.len());
        // The coverage rows are already averaged: draw them 1:1 as 256-level data.
        rip::preview(&self.cover, pw as u32, ph as u32, 1, 256, ink)
            .map_err(|e| anyhow::anyhow!("preview: {e}"))
    }
}

use spate_bench::parse_size;

/// Parse a rate (the job spec's units, e.g. `2.5Gbit`, `300MB/s`) into bytes per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match spate_scheduler::spec::parse_rate(s) {
        Ok(0) => Err(format!("rate {} must be more than zero", quote(s))),
        Ok(bits) => Ok(bits as f64 / 8.0),
        Err(e) => Err(format!("rate {}: {e}", quote(s))),
    }
}

fn parse_verify(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("bad --verify {}: expected SEED:STREAM, e.g. 42:0", quote(s)))?;
    let seed = a
        .trim()
        .parse()
        .map_err(|_| format!("bad seed {} in --verify", quote(a)))?;
    let stream = b
        .trim()
        .parse()
        .map_err(|_| format!("bad stream index {} in --verify", quote(b)))?;
    Ok((seed, stream))
}

#[derive(Default, serde::Serialize)]
struct Report {
    outcome: &'static str,
    bytes: u64,
    start_offset: u64,
    seconds: f64,
    gbit_per_s: f64,
    backing: String,
    verified: bool,
    rate_gbit_per_s: Option<f64>,
    /// Where the rate came from: "flag" (--rate) or "job" (the job's rate), null: unpaced.
    rate_from: Option<&'static str>,
    /// Bytes waited for before the constant-rate schedule started (the job's prefill).
    prefill_bytes: u64,
    starvations: u64,
    starvation_seconds: f64,
    error: Option<String>,
    bad_offset: Option<u64>,
    preview: Option<String>,
    first_data_seconds: Option<f64>,
    active_gbit_per_s: Option<f64>,
    xxh3_128: Option<String>,
}

enum Fail {
    Verify(u64),
    Read(ReadError),
    Other(anyhow::Error),
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut reader = handoff::connect(&a.socket, &a.key).with_context(|| {
        format!(
            "cannot attach to stream {} at {}",
            quote(&a.key),
            Quoted::path(&a.socket)
        )
    })?;
    let mut out: Option<Box<dyn Write>> = match a.out.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout().lock())),
        Some(p) => {
            Some(Box::new(std::fs::File::create(p).with_context(|| {
                format!("cannot create output {}", quote(p))
            })?))
        }
    };
    let report_to_stderr = a.out.as_deref() == Some("-");
    // A job with a rate tells its readers (in the ring header) its rate and prefill.
    let job_pace = if a.no_pace || a.rate.is_some() {
        None
    } else {
        reader.pacing()
    };
    let pace = Pace {
        rate: a.rate.or(job_pace.map(|p| p.rate_bps as f64 / 8.0)),
        prefill: job_pace.map_or(0, |p| p.prefill.min(reader.capacity())),
    };
    // A paced reader waits for a whole block: with a block of the whole ring it would wait for
    // a ring the writer cannot fill past the bytes the reader still holds, so half at most.
    let most = if pace.rate.is_some() {
        reader.capacity() / 2
    } else {
        reader.capacity()
    };
    let block = a.block.min(most).max(1) as usize;
    let mut rep = Report {
        backing: reader.backing().to_string(),
        rate_gbit_per_s: pace.rate.map(|r| r * 8.0 / 1e9),
        rate_from: match (a.rate, job_pace) {
            (Some(_), _) => Some("flag"),
            (None, Some(_)) => Some("job"),
            (None, None) => None,
        },
        prefill_bytes: pace.prefill,
        ..Report::default()
    };
    let mut preview = match (&a.preview, a.width) {
        (Some(_), Some(w)) => Some(Preview::new(
            w,
            a.levels,
            a.scale.unwrap_or_else(|| Preview::auto_scale(w)),
        )),
        _ => None,
    };
    let t0 = Instant::now();
    let mut hasher = a.hash.then(xxhash_rust::xxh3::Xxh3Default::new);
    let mut first_data = None;
    let mut waits = spate_netlib::hist::new_micros();
    let mut res = read_loop(
        &mut reader,
        &a,
        pace,
        block,
        Sinks {
            out: out.as_mut(),
            preview: preview.as_mut(),
            hasher: hasher.as_mut(),
            first_data: &mut first_data,
            waits: &mut waits,
        },
        &mut rep,
    );
    if res.is_ok()
        && let (Some(p), Some(path)) = (preview, &a.preview)
    {
        let written = p.finish(a.ink).and_then(|png| {
            std::fs::write(path, png)
                .with_context(|| format!("cannot write the preview {}", Quoted::path(path)))
        });
        match written {
            Ok(()) => rep.preview = Some(path.display().to_string()),
            Err(e) => res = Err(Fail::Other(e)),
        }
    }
    if let Some(path) = &a.hgrm {
        let text = spate_netlib::hist::hgrm_text(
            &waits,
            "block wait (us): asking for a block to having it",
        );
        std::fs::write(path, text)
            .with_context(|| format!("cannot write the latency file {}", path.display()))?;
    }
    if let Some(o) = out.as_mut()
        && let Err(e) = o.flush()
    {
        return Err(anyhow::Error::new(e).context("cannot flush output"));
    }
    let secs = t0.elapsed().as_secs_f64();
    // What this reader read, not where the stream stands: an earlier reader may have read the
    // bytes before `start_offset`.
    rep.bytes = reader.bytes_read();
    rep.start_offset = reader.start_offset();
    rep.seconds = secs;
    rep.gbit_per_s = if secs > 0.0 {
        rep.bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    };
    if let Some(f) = first_data {
        let first = f.duration_since(t0).as_secs_f64();
        rep.first_data_seconds = Some(first);
        let active = secs - first;
        if active > 0.0 {
            rep.active_gbit_per_s = Some(rep.bytes as f64 * 8.0 / active / 1e9);
        }
    }
    let code = match res {
        Ok(()) => {
            rep.outcome = "end";
            rep.verified = a.verify.is_some();
            rep.xxh3_128 = hasher.map(|h| format!("{:032x}", h.digest128()));
            0
        }
        Err(Fail::Verify(off)) => {
            rep.outcome = "verify_failed";
            rep.bad_offset = Some(off);
            rep.error = Some(format!(
                "verification failed: first bad byte at offset {off}"
            ));
            EXIT_VERIFY
        }
        Err(Fail::Read(e @ ReadError::Aborted(_))) => {
            rep.outcome = "aborted";
            // The consumer says why in words when the scheduler told it (the job's reason).
            rep.error = Some(match reader.abort_message() {
                Some(m) => format!("stream aborted: {}", Quoted::new(&m).bare()),
                None => e.to_string(),
            });
            EXIT_ABORTED
        }
        Err(Fail::Read(e @ ReadError::Unconfirmed { .. })) => {
            // Every byte is here (and checked): only the job's end is not known.
            rep.outcome = "end_unconfirmed";
            rep.verified = a.verify.is_some();
            rep.xxh3_128 = hasher.map(|h| format!("{:032x}", h.digest128()));
            rep.error = Some(e.to_string());
            EXIT_WRITER_DEAD
        }
        Err(Fail::Read(e @ ReadError::WriterDead { .. })) => {
            rep.outcome = "writer_dead";
            rep.error = Some(e.to_string());
            EXIT_WRITER_DEAD
        }
        Err(Fail::Read(e)) => {
            rep.outcome = "error";
            rep.error = Some(e.to_string());
            1
        }
        Err(Fail::Other(e)) => {
            rep.outcome = "error";
            rep.error = Some(format!("{e:#}"));
            1
        }
    };
    let text = if a.json {
        serde_json::to_string(&rep)?
    } else {
        let from = if rep.start_offset > 0 {
            format!(
                " (from stream offset {}, where an earlier reader stopped)",
                rep.start_offset
            )
        } else {
            String::new()
        };
        let mut s = format!(
            "{} bytes{from} in {:.3} s: {:.2} Gbit/s ({:.1} MB/s), ring backing {}",
            rep.bytes,
            rep.seconds,
            rep.gbit_per_s,
            rep.bytes as f64 / rep.seconds.max(1e-9) / 1e6,
            rep.backing
        );
        if rep.verified {
            s.push_str(", pattern verified");
        }
        if let Some(h) = &rep.xxh3_128 {
            s.push_str(&format!(", xxh3-128 {h}"));
        }
        if let Some(p) = &rep.preview {
            s.push_str(&format!(", preview written to {p}"));
        }
        if let Some(r) = rep.rate_gbit_per_s {
            s.push_str(&format!(
                "\nconstant rate {r:.3} Gbit/s: {} starvation events, {:.3} s starved in total",
                rep.starvations, rep.starvation_seconds
            ));
        }
        s
    };
    if report_to_stderr {
        eprintln!("{text}");
    } else {
        println!("{text}");
    }
    if let Some(e) = &rep.error {
        eprintln!("spate read: {e}");
    }
    Ok(code)
}

/// The constant-rate schedule: bytes per second (None: as fast as possible), and the bytes to
/// wait for before it starts.
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate: Option<f64>,
    prefill: u64,
}

/// Where the bytes read go, besides verification.
struct Sinks<'a> {
    out: Option<&'a mut Box<dyn Write>>,
    preview: Option<&'a mut Preview>,
    hasher: Option<&'a mut xxhash_rust::xxh3::Xxh3Default>,
    /// Set when the first byte is there.
    first_data: &'a mut Option<Instant>,
    /// How long each block was waited for, in microseconds.
    waits: &'a mut hdrhistogram::Histogram<u64>,
}

fn read_loop(
    r: &mut Reader,
    a: &Args,
    pace: Pace,
    block: usize,
    mut sinks: Sinks<'_>,
    rep: &mut Report,
) -> Result<(), Fail> {
    let idle = a.idle_timeout.map(Duration::from_secs_f64);
    // The first data, or the prefill (or the end of a shorter stream): the constant-rate
    // schedule starts here.
    let first = pace.prefill.max(1) as usize;
    match r
        .acquire(first, first.max(block), idle)
        .map_err(Fail::Read)?
    {
        Acquired::TimedOut => {
            return Err(Fail::Other(anyhow::anyhow!(
                "no data for {:?} at offset {}",
                idle.unwrap_or_default(),
                r.position()
            )));
        }
        Acquired::Data(_) | Acquired::End => *sinks.first_data = Some(Instant::now()),
    }
    // Constant-rate schedule: byte `b` (counted from `sched_pos`) is due at
    // `sched_t0 + (b - sched_pos) / rate`.
    let mut sched_t0 = Instant::now();
    let mut sched_pos = 0u64;
    loop {
        let mut min = 1;
        if let Some(rate) = pace.rate {
            let due = sched_t0 + Duration::from_secs_f64((r.position() - sched_pos) as f64 / rate);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            min = block;
            // Is the block there when due?
            let ready = match r.acquire(min, block, Some(Duration::ZERO)) {
                Ok(Acquired::TimedOut) => false,
                Ok(_) => true,
                Err(e) => return Err(Fail::Read(e)),
            };
            if !ready {
                let late_from = Instant::now().max(due);
                match r.acquire(min, block, idle) {
                    Ok(Acquired::TimedOut) => {
                        return Err(Fail::Other(anyhow::anyhow!(
                            "no data for {:?} at offset {}",
                            idle.unwrap_or_default(),
                            r.position()
                        )));
                    }
                    Ok(_) => {}
                    Err(e) => return Err(Fail::Read(e)),
                }
                let now = Instant::now();
                rep.starvations += 1;
                rep.starvation_seconds += now.duration_since(late_from).as_secs_f64();
                sched_t0 = now;
                sched_pos = r.position();
            }
        }
        let asked = Instant::now();
        let got = r.acquire(min, block, idle).map_err(Fail::Read)?;
        if matches!(got, Acquired::Data(_)) {
            sinks
                .waits
                .saturating_record(asked.elapsed().as_micros() as u64);
        }
        let n = match got {
            Acquired::Data(b) => {
                if let Some((seed, stream)) = a.verify
                    && let Some(bad) = pattern::check(seed, stream, b.offset, b.data)
                {
                    return Err(Fail::Verify(bad));
                }
                if let Some(p) = sinks.preview.as_mut() {
                    p.feed(b.data);
                }
                if let Some(h) = sinks.hasher.as_mut() {
                    h.update(b.data);
                }
                if let Some(o) = sinks.out.as_mut() {
                    o.write_all(b.data)
                        .map_err(|e| Fail::Other(anyhow::Error::new(e).context("write output")))?;
                }
                b.data.len()
            }
            Acquired::End => return Ok(()),
            Acquired::TimedOut => {
                return Err(Fail::Other(anyhow::anyhow!(
                    "no data for {:?} at offset {}",
                    idle.unwrap_or_default(),
                    r.position()
                )));
            }
        };
        r.release(n).map_err(Fail::Read)?;
    }
}
