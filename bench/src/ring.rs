//! `spate bench ring`: one writer process landing a pattern stream in chunks (pairs landed
//! second-first, so the frontier logic works), one reader process (this binary re-executed
//! with `--role reader`) acquiring and verifying every byte; against single-threaded memcpy of
//! the same buffer size, measured in the same run.
//!
//! Fairness: the writer *produces* each chunk in place (pattern fill straight into the ring,
//! as a kernel or a recv would), the reader *consumes* each byte (pattern check, i.e. it reads
//! all of it). memcpy reads and writes every byte once, on one core; the ring does the same
//! work split over two processes, plus the ring's bookkeeping and waiting.

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use spate_ring::handoff::{self, HandoffConfig, HandoffServer};
use spate_ring::{Acquired, BackingPref, ReaderStatus, Reserve, RingConfig, Writer, pattern};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SEED: u64 = 0x5eed;
const STREAM: u64 = 0;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Bytes to stream (e.g. 8GiB, 512MiB).
    #[arg(long, default_value = "8GiB", value_parser = parse_size)]
    pub bytes: u64,
    /// Chunk size the writer lands (e.g. 4MiB).
    #[arg(long, default_value = "4MiB", value_parser = parse_size)]
    pub chunk: u64,
    /// Ring capacity (default: 16 chunks).
    #[arg(long, value_parser = parse_size)]
    pub capacity: Option<u64>,
    /// Never use hugetlb pages (plain shmem, THP advised).
    #[arg(long)]
    pub no_hugetlb: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    #[arg(long, hide = true, default_value = "writer")]
    pub role: String,
    #[arg(long, hide = true)]
    pub socket: Option<PathBuf>,
}

pub use crate::parse_size;

#[derive(serde::Serialize, serde::Deserialize, Default, Debug, Clone, Copy)]
struct Pct {
    p50: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl Pct {
    fn of(h: &Histogram<u64>) -> Pct {
        Pct {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize, Debug)]
struct ReaderOut {
    bytes: u64,
    seconds: f64,
    acquire_ns: Pct,
    release_ns: Pct,
    waits: u64,
    bad_offset: Option<u64>,
    error: Option<String>,
}

#[derive(serde::Serialize)]
struct Report {
    gbit_per_s: f64,
    memcpy_gbit_per_s: f64,
    ratio: f64,
    backing: String,
    bytes: u64,
    chunk: u64,
    capacity: u64,
    seconds: f64,
    writer_seconds: f64,
    acquire_ns: Pct,
    release_ns: Pct,
    reader_waits: u64,
    fill_gbit_per_s: f64,
    check_gbit_per_s: f64,
}

pub fn run(a: Args) -> anyhow::Result<i32> {
    match a.role.as_str() {
        "writer" => writer(a),
        "reader" => reader(a),
        r => bail!("unknown --role {r}"),
    }
}

fn gbit(bytes: u64, secs: f64) -> f64 {
    bytes as f64 * 8.0 / secs.max(1e-9) / 1e9
}

fn writer(a: Args) -> anyhow::Result<i32> {
    crate::pin_one_side(false);
    let chunk = a.chunk.max(1);
    let capacity = a.capacity.unwrap_or(chunk.saturating_mul(16));
    if chunk > capacity / 2 {
        bail!("--chunk {chunk} must be at most half of the ring capacity {capacity}");
    }
    let w = Writer::create(&RingConfig {
        name: "spate-bench-ring".into(),
        capacity: capacity as usize,
        backing: if a.no_hugetlb {
            BackingPref::NoHugeTlb
        } else {
            BackingPref::Auto
        },
        total_len: Some(a.bytes),
        pacing: None,
    })?;
    let capacity = w.capacity();
    if let Some(why) = w.fallback_reason() {
        eprintln!("note: ring is {} because {why}", w.backing());
    }
    let sock = std::env::temp_dir().join(format!("spate-bench-ring-{}.sock", std::process::id()));
    let srv = HandoffServer::bind(&sock, HandoffConfig::default())?;
    srv.publish("bench", &w)?;
    // Pre-fault the ring (both sides would otherwise pay page faults in the first lap only).
    prefault(&w)?;

    let mut child = Command::new(std::env::current_exe()?)
        .args(["bench", "ring", "--role", "reader", "--bytes"])
        .arg(a.bytes.to_string())
        .arg("--chunk")
        .arg(chunk.to_string())
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .context("spawn the reader process")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while w.reader_status() == ReaderStatus::NotAttached {
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            bail!("reader process did not attach");
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    let t0 = Instant::now();
    let mut off = 0u64;
    let mut pair = 0u64;
    while off < a.bytes {
        let first = chunk.min(a.bytes - off);
        let second = chunk.min(a.bytes - off - first);
        // Every other pair lands second-first (out of order).
        let order = if pair % 2 == 1 && second > 0 {
            [(off + first, second), (off, first)]
        } else {
            [(off, first), (off + first, second)]
        };
        for (o, l) in order {
            if l == 0 {
                continue;
            }
            match w.reserve(o, l as usize, None)? {
                Reserve::Granted(mut g) => {
                    let go = g.offset();
                    pattern::fill(SEED, STREAM, go, g.as_mut_slice());
                    g.land()?;
                }
                other => bail!("unexpected reservation outcome {other:?} at {o}"),
            }
        }
        off += first + second;
        pair += 1;
    }
    w.finish()?;
    let writer_secs = t0.elapsed().as_secs_f64();
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("reader stdout")?).read_line(&mut line)?;
    let status = child.wait()?;
    drop(srv);
    let r: ReaderOut = serde_json::from_str(line.trim())
        .with_context(|| format!("reader process ({status}) reported {line:?}"))?;
    if let Some(e) = r.error {
        bail!("reader failed: {e}");
    }
    if let Some(b) = r.bad_offset {
        bail!("reader found a wrong byte at offset {b}");
    }
    if r.bytes != a.bytes {
        bail!("reader read {} bytes, expected {}", r.bytes, a.bytes);
    }

    let (memcpy, fill, check) = baselines(capacity as usize, chunk as usize, a.bytes);
    let g = gbit(r.bytes, r.seconds);
    let rep = Report {
        gbit_per_s: g,
        memcpy_gbit_per_s: memcpy,
        ratio: g / memcpy,
        backing: w.backing().to_string(),
        bytes: a.bytes,
        chunk,
        capacity,
        seconds: r.seconds,
        writer_seconds: writer_secs,
        acquire_ns: r.acquire_ns,
        release_ns: r.release_ns,
        reader_waits: r.waits,
        fill_gbit_per_s: fill,
        check_gbit_per_s: check,
    };
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "ring: {:.0} MiB in {:.0} KiB chunks (every other pair out of order), ring {:.0} MiB on {}",
            mib(a.bytes),
            chunk as f64 / 1024.0,
            mib(capacity),
            rep.backing
        );
        println!("  writer fills the pattern in place; reader (other process) verifies every byte");
        println!("ring     {:8.2} Gbit/s  ({:.3} s)", g, r.seconds);
        println!(
            "memcpy   {:8.2} Gbit/s  (one thread, {:.0} MiB buffers, same run)",
            memcpy,
            mib(capacity)
        );
        println!("ratio    {:8.3}", rep.ratio);
        println!(
            "pattern  fill {:.1} Gbit/s, check {:.1} Gbit/s (one thread)",
            fill, check
        );
        let p = |n: &str, x: Pct| {
            println!(
                "{n} ns: p50 {} p99 {} p99.9 {} max {}",
                x.p50, x.p99, x.p999, x.max
            )
        };
        p("acquire", rep.acquire_ns);
        p("release", rep.release_ns);
        println!("reader waits (acquire found < 1 chunk): {}", r.waits);
    }
    Ok(0)
}

fn prefault(w: &Writer) -> anyhow::Result<()> {
    // Land nothing: just touch every page through grants of the first lap, then give them
    // back unlanded (dropping a grant returns its range).
    let cap = w.capacity();
    let step = 2 << 20;
    let mut o = 0;
    while o < cap {
        let l = step.min(cap - o);
        if let Reserve::Granted(mut g) = w.try_reserve(o, l as usize)? {
            g.as_mut_slice().fill(0);
        }
        o += l;
    }
    Ok(())
}

/// Single-threaded memcpy, pattern fill and pattern check over buffers of the ring's size.
fn baselines(cap: usize, chunk: usize, bytes: u64) -> (f64, f64, f64) {
    let src = vec![1u8; cap];
    let mut dst = vec![0u8; cap];
    dst.copy_from_slice(&src); // fault in
    let total = bytes.min(4 << 30);
    let run = |f: &mut dyn FnMut(usize, usize)| {
        let t = Instant::now();
        let mut done = 0u64;
        let mut o = 0usize;
        while done < total {
            let l = chunk.min(cap - o);
            f(o, l);
            done += l as u64;
            o = (o + l) % cap;
        }
        gbit(done, t.elapsed().as_secs_f64())
    };
    let memcpy = run(&mut |o, l| dst[o..o + l].copy_from_slice(&src[o..o + l]));
    let fill = run(&mut |o, l| pattern::fill(SEED, STREAM, o as u64, &mut dst[o..o + l]));
    let mut bad = 0u64;
    let check = run(&mut |o, l| {
        bad += pattern::check(SEED, STREAM, o as u64, &dst[o..o + l]).is_some() as u64
    });
    std::hint::black_box((&dst, bad));
    (memcpy, fill, check)
}

fn reader(a: Args) -> anyhow::Result<i32> {
    crate::pin_one_side(true);
    let sock = a.socket.context("--socket is required for --role reader")?;
    let mut r = handoff::connect(&sock, "bench")?;
    let chunk = a.chunk.min(r.capacity()) as usize;
    let mut acq = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut rel = acq.clone();
    let mut waits = 0u64;
    let mut out = ReaderOut {
        bytes: 0,
        seconds: 0.0,
        acquire_ns: Pct::default(),
        release_ns: Pct::default(),
        waits: 0,
        bad_offset: None,
        error: None,
    };
    let t0 = Instant::now();
    loop {
        let t = Instant::now();
        if r.frontier() - r.position() < chunk as u64 {
            waits += 1;
        }
        let n = match r.acquire(1, chunk, None) {
            Ok(Acquired::Data(b)) => {
                let _ = acq.record(t.elapsed().as_nanos() as u64);
                if let Some(bad) = pattern::check(SEED, STREAM, b.offset, b.data) {
                    out.bad_offset = Some(bad);
                    break;
                }
                b.data.len()
            }
            Ok(Acquired::End) => break,
            Ok(Acquired::TimedOut) => continue,
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        };
        let t = Instant::now();
        if let Err(e) = r.release(n) {
            out.error = Some(e.to_string());
            break;
        }
        let _ = rel.record(t.elapsed().as_nanos() as u64);
    }
    out.seconds = t0.elapsed().as_secs_f64();
    out.bytes = r.position();
    out.acquire_ns = Pct::of(&acq);
    out.release_ns = Pct::of(&rel);
    out.waits = waits;
    println!("{}", serde_json::to_string(&out)?);
    Ok(0)
}
