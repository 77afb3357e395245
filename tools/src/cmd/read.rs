//! `spate read`: attach to a stream on this node and read it to the end.

use anyhow::Context as _;
use clap::Args as ClapArgs;
use spate_ring::handoff;
use spate_ring::{Acquired, ReadError, Reader, pattern};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Exit code: the data did not match the pattern.
pub const EXIT_VERIFY: i32 = 2;
/// Exit code: the writer aborted the stream.
pub const EXIT_ABORTED: i32 = 3;
/// Exit code: the writer died before the end.
pub const EXIT_WRITER_DEAD: i32 = 4;

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
from the moment the data arrived (a printer cannot catch up).\n\n\
With --verify SEED:STREAM every byte is checked against spate's deterministic test pattern \
(the `pattern` kernel's output for that seed and stream index).\n\n\
The report goes to stdout (to stderr when the data goes to stdout). --json prints it as one \
JSON object: {\"outcome\", \"bytes\", \"seconds\", \"gbit_per_s\", \"backing\", \"verified\", \
\"rate_gbit_per_s\", \"starvations\", \"starvation_seconds\", \"error\", \"bad_offset\"}.\n\n\
Exit status: 0 the stream was read to its end; 2 verification failed (the message names the \
first bad offset); 3 the stream was aborted (with the reason); 4 the writer died before the \
end; 1 any other error (cannot attach, bad arguments, output error).",
    after_help = "Examples:\n  \
spate read --socket /run/spate/consumer.sock --key job7/0 --out image.c.raw\n  \
spate read --socket /run/spate/consumer.sock --key job7/1 --rate 2.5Gbit --verify 42:1 --json\n  \
spate read --socket /run/spate/consumer.sock --key job7/2 --out - | my-printer-driver"
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
    /// Constant read rate, per second. Units: bit, kbit, Mbit, Gbit, Tbit (decimal bits);
    /// B, kB, MB, GB (decimal bytes); KiB, MiB, GiB (binary bytes), case-insensitive; an
    /// optional "/s" suffix, or "bps" for bits. Examples: 2.5Gbit, 800Mbit/s, 1.2GB, 300MiB.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Check every byte against the test pattern of seed SEED, stream index STREAM.
    #[arg(long, value_name = "SEED:STREAM", value_parser = parse_verify)]
    pub verify: Option<(u64, u64)>,
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
}

use spate_bench::parse_size;

/// Parse a rate (the job spec's units, e.g. `2.5Gbit`, `300MB/s`) into bytes per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    match spate_scheduler::spec::parse_rate(s) {
        Ok(0) => Err(format!("rate {s:?} must be more than zero")),
        Ok(bits) => Ok(bits as f64 / 8.0),
        Err(e) => Err(format!("rate {s:?}: {e}")),
    }
}

fn parse_verify(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once(':')
        .ok_or_else(|| format!("bad --verify {s:?}: expected SEED:STREAM, e.g. 42:0"))?;
    let seed = a
        .trim()
        .parse()
        .map_err(|_| format!("bad seed {a:?} in --verify"))?;
    let stream = b
        .trim()
        .parse()
        .map_err(|_| format!("bad stream index {b:?} in --verify"))?;
    Ok((seed, stream))
}

#[derive(Default, serde::Serialize)]
struct Report {
    outcome: &'static str,
    bytes: u64,
    seconds: f64,
    gbit_per_s: f64,
    backing: String,
    verified: bool,
    rate_gbit_per_s: Option<f64>,
    starvations: u64,
    starvation_seconds: f64,
    error: Option<String>,
    bad_offset: Option<u64>,
}

enum Fail {
    Verify(u64),
    Read(ReadError),
    Other(anyhow::Error),
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let mut reader = handoff::connect(&a.socket, &a.key).with_context(|| {
        format!(
            "cannot attach to stream {:?} at {}",
            a.key,
            a.socket.display()
        )
    })?;
    let mut out: Option<Box<dyn Write>> = match a.out.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout().lock())),
        Some(p) => Some(Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create output {p}"))?,
        )),
    };
    let report_to_stderr = a.out.as_deref() == Some("-");
    let block = (a.block.min(reader.capacity())).max(1) as usize;
    let mut rep = Report {
        backing: reader.backing().to_string(),
        rate_gbit_per_s: a.rate.map(|r| r * 8.0 / 1e9),
        ..Report::default()
    };
    let t0 = Instant::now();
    let res = read_loop(&mut reader, &a, block, out.as_mut(), &mut rep);
    if let Some(o) = out.as_mut()
        && let Err(e) = o.flush()
    {
        return Err(anyhow::Error::new(e).context("cannot flush output"));
    }
    let secs = t0.elapsed().as_secs_f64();
    rep.bytes = reader.position();
    rep.seconds = secs;
    rep.gbit_per_s = if secs > 0.0 {
        rep.bytes as f64 * 8.0 / secs / 1e9
    } else {
        0.0
    };
    let code = match res {
        Ok(()) => {
            rep.outcome = "end";
            rep.verified = a.verify.is_some();
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
            rep.error = Some(e.to_string());
            EXIT_ABORTED
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
        let mut s = format!(
            "{} bytes in {:.3} s: {:.2} Gbit/s ({:.1} MB/s), ring backing {}",
            rep.bytes,
            rep.seconds,
            rep.gbit_per_s,
            rep.bytes as f64 / rep.seconds.max(1e-9) / 1e6,
            rep.backing
        );
        if rep.verified {
            s.push_str(", pattern verified");
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

fn read_loop(
    r: &mut Reader,
    a: &Args,
    block: usize,
    mut out: Option<&mut Box<dyn Write>>,
    rep: &mut Report,
) -> Result<(), Fail> {
    let idle = a.idle_timeout.map(Duration::from_secs_f64);
    // Constant-rate schedule: byte `b` (counted from `sched_pos`) is due at
    // `sched_t0 + (b - sched_pos) / rate`.
    let mut sched_t0 = Instant::now();
    let mut sched_pos = 0u64;
    loop {
        let mut min = 1;
        if let Some(rate) = a.rate {
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
        let n = match r.acquire(min, block, idle).map_err(Fail::Read)? {
            Acquired::Data(b) => {
                if let Some((seed, stream)) = a.verify
                    && let Some(bad) = pattern::check(seed, stream, b.offset, b.data)
                {
                    return Err(Fail::Verify(bad));
                }
                if let Some(o) = out.as_mut() {
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
