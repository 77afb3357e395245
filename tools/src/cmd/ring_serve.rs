//! `spate ring-serve` (hidden): a stand-alone ring writer for tests and demos of `spate read`.
//! Creates a ring, serves it on a hand-off socket under one key, waits for a reader, lands a
//! pattern stream (chunk pairs landed second-first), and finishes — or aborts, dies, or
//! corrupts a byte on request. With `--hold` it serves on after the end until stdin closes.

use clap::Args as ClapArgs;
use spate_ring::handoff::{HandoffConfig, HandoffServer};
use spate_ring::{AbortReason, BackingPref, ReaderStatus, Reserve, RingConfig, Writer, pattern};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Hand-off socket path to serve on.
    #[arg(long)]
    pub socket: PathBuf,
    /// Stream key.
    #[arg(long, default_value = "s")]
    pub key: String,
    /// Stream length in bytes.
    #[arg(long, value_parser = spate_bench::parse_size)]
    pub bytes: u64,
    /// Ring capacity.
    #[arg(long, default_value = "4MiB", value_parser = spate_bench::parse_size)]
    pub capacity: u64,
    /// Chunk size.
    #[arg(long, default_value = "256KiB", value_parser = spate_bench::parse_size)]
    pub chunk: u64,
    /// Pattern seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pattern stream index.
    #[arg(long, default_value_t = 0)]
    pub stream: u64,
    /// Do not use hugetlb pages.
    #[arg(long)]
    pub no_hugetlb: bool,
    /// Abort (reason: cancelled) once this many bytes have landed.
    #[arg(long)]
    pub abort_at: Option<u64>,
    /// Exit abruptly (like a crash: no cleanup) once this many bytes have landed.
    #[arg(long)]
    pub die_at: Option<u64>,
    /// Flip one byte at this stream offset.
    #[arg(long)]
    pub corrupt_at: Option<u64>,
    /// After the end, keep serving (readers may come and go) until stdin closes.
    #[arg(long)]
    pub hold: bool,
    /// Tell readers the job's rate (bits/s) as a scheduler's plan would.
    #[arg(long)]
    pub pace_bps: Option<u64>,
    /// With --pace-bps: the prefill readers wait for.
    #[arg(long, default_value_t = 0)]
    pub prefill: u64,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    let w = Writer::create(&RingConfig {
        name: format!("spate-ring-serve-{}", a.key),
        capacity: a.capacity as usize,
        backing: if a.no_hugetlb {
            BackingPref::NoHugeTlb
        } else {
            BackingPref::Auto
        },
        total_len: Some(a.bytes),
        pacing: a.pace_bps.map(|rate_bps| spate_ring::header::Pacing {
            rate_bps,
            prefill: a.prefill,
        }),
    })?;
    let srv = HandoffServer::bind(&a.socket, HandoffConfig::default())?;
    srv.publish(&a.key, &w)?;
    println!("READY backing={}", w.backing());
    std::io::stdout().flush()?;
    wait(&w, "a reader to attach", |s| s != ReaderStatus::NotAttached)?;
    let chunk = a.chunk.clamp(1, w.capacity() / 2);
    let mut off = 0u64;
    while off < a.bytes {
        let first = chunk.min(a.bytes - off);
        let second = chunk.min(a.bytes - off - first);
        for (o, l) in [(off + first, second), (off, first)] {
            if l > 0 {
                land(&w, o, l, &a)?;
            }
        }
        off += first + second;
        if a.abort_at.is_some_and(|x| off >= x) {
            w.abort(AbortReason::Cancelled);
            break;
        }
        if a.die_at.is_some_and(|x| off >= x) {
            std::process::exit(9);
        }
    }
    if !w.is_closed() {
        w.finish()?;
    }
    if a.hold {
        std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink())?;
    } else {
        wait(&w, "the reader to detach", |s| s != ReaderStatus::Attached)?;
    }
    drop(srv);
    Ok(0)
}

fn land(w: &Writer, off: u64, len: u64, a: &Args) -> anyhow::Result<()> {
    match w.reserve(off, len as usize, None)? {
        Reserve::Granted(mut g) => {
            let o = g.offset();
            let s = g.as_mut_slice();
            pattern::fill(a.seed, a.stream, o, s);
            if let Some(c) = a.corrupt_at
                && (o..o + s.len() as u64).contains(&c)
            {
                s[(c - o) as usize] ^= 0xFF;
            }
            g.land()?;
        }
        Reserve::AlreadyLanded | Reserve::NoRoom => {}
    }
    Ok(())
}

fn wait(w: &Writer, what: &str, done: impl Fn(ReaderStatus) -> bool) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    while !done(w.reader_status()) {
        anyhow::ensure!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
