//! `spate bench local`: a local job end to end (scheduler, producer and consumer daemons and a
//! reader, each its own process) on each local path (`zero-copy`, `pull`, `socket`), every byte
//! verified (pattern) or hashed and compared with a sequential run (rip), each run compared
//! with the limit of its path measured in the same run.
//!
//! Limits. Every stage of a path is measured alone, with the access pattern it has in the job:
//! - compute: the kernel into ring-sized memory in the job's pieces (one thread, and, for a
//!   kernel that uses several, with its threads);
//! - check: what the reader does (pattern check or XXH3-128) over ring-sized memory;
//! - copy (pull): one memory copy from the producer's chunk buffers into ring-sized memory, on
//!   one thread and on as many threads as there are streams (up to the cores): the consumer's
//!   pulls are io_uring reads of the producer's segment that the kernel may run on its worker
//!   threads side by side, so one thread's copy is not the path's limit;
//! - socket: a raw UNIX socket transfer (blocking, both ends pinned), which keeps two cores
//!   busy with its two copies.
//!
//! A path can go no faster than its slowest stage, nor than the machine's cores can do the
//! work of all stages together: `limit = min(min over stages of rate × threads,
//! cores / Σ core-seconds per byte)` ([`limit`]). Zero copy has two stages (compute, check),
//! pull three (compute, copy, check), socket three (compute, the two-core transfer, check). A
//! ratio above 1.0 means the limit is wrong, and is reported as such.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use spate_netlib::endpoint::Endpoint;
use spate_netlib::proto::{JobGeometry, JobOutcome, JobState, Message, NodeState, Value};
use spate_producer::engine::LocalPath;
use spate_producer::kernel::{Kernel, Output};
use spate_scheduler::server::user::{User, load_secret};

use crate::cluster::{Proc, ReaderReport, wait_for};

/// Arguments of `spate bench local`.
#[derive(clap::Args, Debug, Clone)]
#[command(
    after_help = "Examples:\n  spate bench local\n  spate bench local --kernel rip --json\n  \
spate bench local --paths zero-copy,pull --bytes 8GiB"
)]
pub struct Args {
    /// Kernel: pattern (every byte verified) or rip (hashed and compared with a sequential
    /// run).
    #[arg(long, default_value = "pattern", value_parser = ["pattern", "rip"])]
    pub kernel: String,
    /// Bytes of the job (one stream of 36000-byte lines, job B's width).
    #[arg(long, default_value = "4GiB", value_parser = crate::parse_size)]
    pub bytes: u64,
    /// Paths to run, in order.
    #[arg(long, value_delimiter = ',', default_value = "zero-copy,pull,socket")]
    pub paths: Vec<String>,
    /// Lines per chunk (default: what the scheduler's policy picks).
    #[arg(long)]
    pub chunk_lines: Option<u64>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// One stage of a path, measured alone.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Stage {
    /// Gbit/s on one core.
    pub per_core: f64,
    /// Cores it uses at once.
    pub threads: f64,
}

impl Stage {
    /// A stage of one thread.
    pub fn one(gbit: f64) -> Stage {
        Stage {
            per_core: gbit,
            threads: 1.0,
        }
    }
}

/// The limit of a pipeline of `stages` on `cores` cores (Gbit/s): no faster than its slowest
/// stage, nor than the cores can do the work of all stages (core-seconds per bit summed).
pub fn limit(stages: &[Stage], cores: f64) -> f64 {
    let slowest = stages
        .iter()
        .map(|s| s.per_core * s.threads.min(cores))
        .fold(f64::INFINITY, f64::min);
    let work: f64 = stages.iter().map(|s| 1.0 / s.per_core).sum();
    slowest.min(cores / work)
}

/// The stages of `path`: compute (None: computes nothing), the copy (pull) or the socket
/// transfer (socket), check.
pub fn stages(
    path: LocalPath,
    compute: Option<Stage>,
    copy: Stage,
    socket: Stage,
    check: Option<Stage>,
) -> Vec<Stage> {
    let mut v: Vec<Stage> = compute.into_iter().collect();
    match path {
        LocalPath::ZeroCopy => {}
        LocalPath::Pull => v.push(copy),
        // Two copies, one on each side of the socket: the work both threads did.
        LocalPath::Socket => v.push(socket),
    }
    v.extend(check);
    v
}

/// Ring-sized memory as the consumer gets it (hugepages when reserved).
fn ring_memory(bytes: usize) -> anyhow::Result<spate_runtime::ArenaBuf> {
    let a = spate_runtime::Arena::new("spate-bench-local-ring", bytes, 1)?;
    let mut b = a.alloc().context("ring-sized memory")?;
    b.as_mut_slice().fill(0);
    Ok(b)
}

fn gbit(bytes: u64, d: Duration) -> f64 {
    bytes as f64 * 8.0 / d.as_secs_f64().max(1e-9) / 1e9
}

/// The kernel alone, computing `bytes` in pieces of `lines` lines (`line_bytes` each, one
/// piece per channel) into ring-sized memory (one ring per channel), cycling; Gbit/s.
pub fn compute_rate(
    k: &dyn Kernel,
    rings: &mut [spate_runtime::ArenaBuf],
    line_bytes: u64,
    lines: u64,
    total_lines: u64,
    bytes: u64,
) -> anyhow::Result<f64> {
    let piece = (lines * line_bytes) as usize;
    let ring = rings.first().map_or(0, |r| r.len());
    if piece == 0 || piece > ring {
        bail!("a piece of {piece} bytes does not fit a ring of {ring}");
    }
    let slots = ring / piece;
    let t = Instant::now();
    let (mut done, mut line, mut slot) = (0u64, 0u64, 0usize);
    while done < bytes {
        let n = lines.min(total_lines - line);
        let at = slot * piece;
        let len = (n * line_bytes) as usize;
        let mut outs: Vec<Output<'_>> = rings
            .iter_mut()
            .enumerate()
            .map(|(i, r)| Output {
                stream: i as u32,
                offset: line * line_bytes,
                buf: &mut r.as_mut_slice()[at..at + len],
            })
            .collect();
        k.compute(line..line + n, &mut outs)
            .map_err(|e| anyhow!("kernel {}: {e}", k.name()))?;
        done += (len * outs.len()) as u64;
        line = (line + n) % total_lines;
        slot = (slot + 1) % slots;
    }
    Ok(gbit(done, t.elapsed()))
}

/// What the reader does with each block (`pattern`: check it; `rip`: hash it), alone, on
/// data as it finds it: a piece just written into ring-sized memory (the producer's output,
/// still in the shared cache when it fits). Only the check is timed; Gbit/s.
pub fn check_rate(check: &str, ring: &mut [u8], piece: usize, bytes: u64) -> f64 {
    const BLOCK: usize = 1 << 20;
    let piece = piece.clamp(1, ring.len());
    let slots = ring.len() / piece;
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    let (mut done, mut slot, mut bad) = (0u64, 0usize, 0usize);
    let mut spent = Duration::ZERO;
    while done < bytes {
        let at = slot * piece;
        let p = &mut ring[at..at + piece];
        spate_ring::pattern::fill(PATTERN_SEED, 0, at as u64, p);
        let t = Instant::now();
        for (i, block) in p.chunks(BLOCK).enumerate() {
            if check == "pattern" {
                let off = (at + i * BLOCK) as u64;
                bad +=
                    usize::from(spate_ring::pattern::check(PATTERN_SEED, 0, off, block).is_some());
            } else {
                h.update(block);
            }
        }
        spent += t.elapsed();
        done += piece as u64;
        slot = (slot + 1) % slots;
    }
    std::hint::black_box((h.digest128(), bad));
    gbit(done, spent)
}

/// One copy from the producer's chunk buffers (`buffers` of `piece` bytes, each just written,
/// as the kernel leaves it) into ring-sized memory, in pieces, cycling both. Only the copy is
/// timed; Gbit/s.
pub fn copy_rate(ring: &mut [u8], piece: usize, buffers: usize, bytes: u64) -> f64 {
    let piece = piece.clamp(1, ring.len());
    let mut src = vec![0u8; piece * buffers.max(1)];
    let slots = (ring.len() / piece).max(1);
    let (mut done, mut i) = (0u64, 0usize);
    let mut spent = Duration::ZERO;
    while done < bytes {
        let s = (i % buffers.max(1)) * piece;
        let d = (i % slots) * piece;
        spate_ring::pattern::fill(PATTERN_SEED, 0, s as u64, &mut src[s..s + piece]);
        let t = Instant::now();
        ring[d..d + piece].copy_from_slice(&src[s..s + piece]);
        spent += t.elapsed();
        done += piece as u64;
        i += 1;
    }
    std::hint::black_box(&ring);
    gbit(done, spent)
}

/// The same copy on one thread per ring at once (each from buffers of its own, filled once),
/// `bytes` in all; Gbit/s over the wall time from a common start to the last thread's end.
pub fn parallel_copy_rate(
    rings: &mut [spate_runtime::ArenaBuf],
    piece: usize,
    buffers: usize,
    bytes: u64,
) -> f64 {
    let n = rings.len().max(1) as u64;
    let go = std::sync::Barrier::new(rings.len());
    let start = std::sync::OnceLock::new();
    let each = bytes.div_ceil(n);
    std::thread::scope(|s| {
        for r in rings.iter_mut() {
            let (go, start) = (&go, &start);
            s.spawn(move || {
                let ring = r.as_mut_slice();
                let piece = piece.clamp(1, ring.len());
                let mut src = vec![0u8; piece * buffers.max(1)];
                spate_ring::pattern::fill(PATTERN_SEED, 0, 0, &mut src);
                let slots = (ring.len() / piece).max(1);
                go.wait();
                start.get_or_init(Instant::now);
                let (mut done, mut i) = (0u64, 0usize);
                while done < each {
                    let at = (i % buffers.max(1)) * piece;
                    let d = (i % slots) * piece;
                    ring[d..d + piece].copy_from_slice(&src[at..at + piece]);
                    done += piece as u64;
                    i += 1;
                }
                std::hint::black_box(&ring);
            });
        }
    });
    let wall = start.get().map_or(Duration::ZERO, |t| t.elapsed());
    gbit(each * n, wall)
}

/// CPU time (user + system) of the calling thread.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    match getrusage(UsageWho::RUSAGE_THREAD) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::new(tv.tv_sec() as u64, tv.tv_usec() as u32 * 1000)
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// A transfer of `bytes` through a UNIX stream socket between two threads (blocking, 4 MiB
/// writes, unpinned as the daemons are): the socket path's two copies. The stage's work is
/// the CPU time both threads spent, its rate the wall time.
pub fn socket_stage(bytes: u64) -> anyhow::Result<Stage> {
    use std::io::{Read, Write};
    const PIECE: usize = 4 << 20;
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().context("socketpair")?;
    let go = std::sync::Barrier::new(2);
    std::thread::scope(|s| {
        let w = s.spawn(|| -> std::io::Result<Duration> {
            let src = vec![0x5au8; PIECE];
            go.wait();
            let c0 = thread_cpu();
            let mut left = bytes;
            while left > 0 {
                let n = PIECE.min(left as usize);
                a.write_all(&src[..n])?;
                left -= n as u64;
            }
            Ok(thread_cpu() - c0)
        });
        let r = s.spawn(|| -> std::io::Result<(Duration, Duration)> {
            let mut dst = vec![0u8; PIECE];
            go.wait();
            let (t0, c0) = (Instant::now(), thread_cpu());
            let mut left = bytes;
            while left > 0 {
                let n = PIECE.min(left as usize);
                b.read_exact(&mut dst[..n])?;
                left -= n as u64;
            }
            std::hint::black_box(&dst);
            Ok((t0.elapsed(), thread_cpu() - c0))
        });
        let wcpu = w.join().map_err(|_| anyhow!("socket writer panicked"))??;
        let (wall, rcpu) = r.join().map_err(|_| anyhow!("socket reader panicked"))??;
        let cpu = (wcpu + rcpu).as_secs_f64().max(1e-9);
        let bits = bytes as f64 * 8.0;
        Ok(Stage {
            per_core: bits / cpu / 1e9,
            threads: cpu / wall.as_secs_f64().max(1e-9),
        })
    })
}

/// The best of `n` measurements: a limit is what the machine can do, and a shared machine is
/// noisy.
fn best(n: usize, mut f: impl FnMut() -> anyhow::Result<f64>) -> anyhow::Result<f64> {
    let mut b: f64 = 0.0;
    for _ in 0..n {
        b = b.max(f()?);
    }
    Ok(b)
}

/// What a local job's path can do: its stages measured alone, as the job runs them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    /// The kernel alone into ring-sized memory with its threads (None: it computes nothing).
    pub compute_gbit_per_s: Option<f64>,
    /// The reader's check alone, one reader (None: the readers do not look at the bytes).
    pub check_gbit_per_s: Option<f64>,
    /// One copy of the same geometry (the pull path's transfer), with as many copies at once as
    /// the path can run (one per stream, up to the cores).
    pub copy_gbit_per_s: f64,
    /// A raw UNIX socket transfer (the socket path's).
    pub socket_gbit_per_s: f64,
    /// Cores the socket transfer kept busy (its CPU time over its wall time).
    pub socket_cores: f64,
    /// Ring size per stream.
    pub ring_bytes: u64,
    /// Piece size (one channel of a chunk).
    pub piece_bytes: u64,
    /// Readers reading at once (one per stream).
    pub streams: usize,
    #[serde(skip)]
    compute: Option<Stage>,
    #[serde(skip)]
    copy: Stage,
}

impl Measured {
    /// The limit of `path` on `cores` cores.
    pub fn limit(&self, path: LocalPath, cores: usize) -> f64 {
        let check = self.check_gbit_per_s.map(|r| Stage {
            per_core: r,
            threads: self.streams as f64,
        });
        let socket = Stage {
            per_core: self.socket_gbit_per_s / self.socket_cores.max(1e-9),
            threads: self.socket_cores,
        };
        let st = stages(path, self.compute, self.copy, socket, check);
        limit(&st, cores as f64)
    }
}

/// Measure the stages of a local job given by its `spec` (ring sizes as the policy gives them:
/// four pieces per producer per stream), over `bytes` each. `files` holds the job's inputs.
/// `check`: what readers do with the bytes (`pattern`, `xxh3`, or `none`).
pub fn measure(spec: &str, files: &Path, check: &str, bytes: u64) -> anyhow::Result<Measured> {
    let plan = spate_scheduler::spec::JobPlan::parse(spec)
        .map_err(|e| anyhow!("the bench's own job spec is invalid: {e}"))?;
    let g = spate_scheduler::server::job_geometry(&plan);
    let kernel = plan.kernel.name();
    let streams = plan.streams.len().max(1);
    let lines = plan
        .chunk_lines
        .unwrap_or((MAX_PIECE / g.line_bytes).max(1))
        .min(g.lines);
    let piece = lines * g.line_bytes;
    let huge = spate_ring::shm::HUGE_PAGE as u64;
    let stream_len = g.lines * g.line_bytes;
    let ring_bytes = (piece * RING_FACTOR).min(stream_len).div_ceil(huge) * huge;
    let mut rings = (0..g.channels)
        .map(|_| ring_memory(ring_bytes as usize))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (compute, compute_gbit) = if kernel == "null" {
        (None, None)
    } else {
        let (one, many) = kernels(spec, files)?;
        // The RIP is slow: fewer bytes keep its measurement short.
        let bytes = if kernel == "rip" {
            bytes.min(256 << 20)
        } else {
            bytes
        };
        let mut rate = |k: &dyn Kernel| {
            best(3, || {
                compute_rate(k, &mut rings, g.line_bytes, lines, g.lines, bytes)
            })
        };
        let c1 = rate(one.as_ref())?;
        let cn = match &many {
            Some(k) => rate(k.as_ref())?,
            None => c1,
        };
        // The kernel runs with its threads; where they do not help (a loaded machine), at the
        // rate of one.
        let st = Stage {
            per_core: c1,
            threads: (cn / c1).max(1.0),
        };
        (Some(st), Some(cn.max(c1)))
    };
    let ring = rings[0].as_mut_slice();
    let check_gbit = match check {
        "none" => None,
        c => Some(best(3, || Ok(check_rate(c, ring, piece as usize, bytes)))?),
    };
    // The producer keeps 3 chunk buffers of `channels` pieces.
    let copy1 = best(3, || {
        Ok(copy_rate(
            ring,
            piece as usize,
            3 * g.channels as usize,
            bytes,
        ))
    })?;
    // Pulls of several streams at once (one ring each), up to the cores.
    let cores = crate::all_cores().len().max(1);
    let side_by_side = streams.min(rings.len()).min(cores);
    let copy_n = if side_by_side > 1 {
        best(3, || {
            Ok(parallel_copy_rate(
                &mut rings[..side_by_side],
                piece as usize,
                3,
                bytes,
            ))
        })?
    } else {
        copy1
    };
    let copy = Stage {
        per_core: copy1,
        threads: (copy_n / copy1).max(1.0),
    };
    drop(rings);
    let mut socket = socket_stage(bytes)?;
    for _ in 0..2 {
        let s = socket_stage(bytes)?;
        if s.per_core * s.threads > socket.per_core * socket.threads {
            socket = s;
        }
    }
    Ok(Measured {
        compute_gbit_per_s: compute_gbit,
        check_gbit_per_s: check_gbit,
        copy_gbit_per_s: copy.per_core * copy.threads,
        socket_gbit_per_s: socket.per_core * socket.threads,
        socket_cores: socket.threads,
        ring_bytes,
        piece_bytes: piece,
        streams,
        compute,
        copy,
    })
}

const PATTERN_SEED: u64 = 42;
const INPUT: &str = "sheet.png";
const WIDTH: u64 = 36_000;
/// The policy's defaults (scheduler `LoadBalanceConfig`): pieces up to 25 MB, rings of four
/// pieces per producer.
const MAX_PIECE: u64 = 25_000_000;
const RING_FACTOR: u64 = 4;

/// One run of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Run {
    /// zero-copy, pull or socket.
    pub path: String,
    /// pattern or rip.
    pub kernel: String,
    /// Bytes of the stream.
    pub bytes: u64,
    /// Submission to the reader's last byte.
    pub seconds: f64,
    /// Throughput.
    pub gbit_per_s: f64,
    /// The kernel alone into ring-sized memory (with its threads).
    pub compute_gbit_per_s: f64,
    /// The reader's check alone.
    pub check_gbit_per_s: f64,
    /// One copy of the same geometry (the pull path's transfer).
    pub copy_gbit_per_s: f64,
    /// A raw UNIX socket transfer (the socket path's).
    pub socket_gbit_per_s: f64,
    /// The limit of this path from the stages above.
    pub limit_gbit_per_s: f64,
    /// Throughput over limit.
    pub ratio: f64,
    /// False when the ratio is above 1: then the limit is wrong.
    pub limit_holds: bool,
    /// Every byte checked (pattern) or the stream's XXH3-128 equal to a sequential run (rip).
    pub verified: bool,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// The report (`--json`).
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Cores of this machine the limits count.
    pub cores: usize,
    /// Ring size the job gets.
    pub ring_bytes: u64,
    /// Piece (chunk) size.
    pub piece_bytes: u64,
    /// How the ring memory is backed.
    pub backing: String,
    /// The runs.
    pub runs: Vec<Run>,
}

/// Run the benchmark; 0 when every run was verified.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let paths: Vec<LocalPath> = a
        .paths
        .iter()
        .map(|p| p.parse().map_err(anyhow::Error::msg))
        .collect::<anyhow::Result<_>>()?;
    let total_lines = a.bytes.div_ceil(WIDTH).max(1);
    let bytes = total_lines * WIDTH;
    let lines = a
        .chunk_lines
        .unwrap_or((MAX_PIECE / WIDTH).max(1))
        .clamp(1, total_lines);
    let dir = std::env::temp_dir().join(format!("spate-bench-local-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("files"))?;
    let _cleanup = RemoveDir(dir.clone());
    if a.kernel == "rip" {
        spate_producer::rip::write_test_image(&dir.join("files").join(INPUT), 1200, 1200)
            .map_err(|e| anyhow!("writing the input image: {e}"))?;
    }
    let spec = spec(&a.kernel, total_lines, lines);

    // The stages, each alone, as the job will run them.
    let say = |s: &str| {
        if !a.json {
            eprintln!("spate bench local: {s}");
        }
    };
    say("measuring the stages alone (compute, check, copy, socket)");
    let check = if a.kernel == "pattern" {
        "pattern"
    } else {
        "xxh3"
    };
    let m = measure(&spec, &dir.join("files"), check, bytes.min(1 << 30))?;
    let cores = crate::all_cores().len().max(1);
    let backing = spate_runtime::Arena::new("spate-bench-local-probe", 4096, 1)
        .map(|a| a.backing().to_string())
        .unwrap_or_default();
    let (one, many) = kernels(&spec, &dir.join("files"))?;
    let reference = many.unwrap_or(one);
    let geometry = spate_scheduler::server::job_geometry(
        &spate_scheduler::spec::JobPlan::parse(&spec).map_err(|e| anyhow!("{e}"))?,
    );

    let want_digest = if a.kernel == "rip" {
        say("hashing a sequential run of the RIP (the reference)");
        Some(sequential_digest(reference.as_ref(), &geometry)?)
    } else {
        None
    };
    let exe = std::env::current_exe().context("locating the spate binary")?;
    let mut runs = Vec::new();
    for path in paths {
        say(&format!("{path}: running the job"));
        let lim = m.limit(path, cores);
        let r = one_run(
            &exe,
            &dir,
            path,
            &spec,
            &a.kernel,
            bytes,
            want_digest.as_deref(),
        );
        let (seconds, verified, error) = match r {
            Ok((s, v)) => (
                s,
                v,
                (!v).then(|| "the stream differs from what was expected".into()),
            ),
            Err(e) => (0.0, false, Some(format!("{e:#}"))),
        };
        let g = if seconds > 0.0 {
            gbit(bytes, Duration::from_secs_f64(seconds))
        } else {
            0.0
        };
        runs.push(Run {
            path: path.to_string(),
            kernel: a.kernel.clone(),
            bytes,
            seconds,
            gbit_per_s: g,
            compute_gbit_per_s: m.compute_gbit_per_s.unwrap_or(0.0),
            check_gbit_per_s: m.check_gbit_per_s.unwrap_or(0.0),
            copy_gbit_per_s: m.copy_gbit_per_s,
            socket_gbit_per_s: m.socket_gbit_per_s,
            limit_gbit_per_s: lim,
            ratio: g / lim,
            limit_holds: g <= lim,
            verified,
            error,
        });
    }
    let rep = Report {
        cores,
        ring_bytes: m.ring_bytes,
        piece_bytes: m.piece_bytes,
        backing,
        runs,
    };
    if a.json {
        println!("{}", serde_json::to_string(&rep)?);
    } else {
        print_table(&rep);
    }
    Ok(if rep.runs.iter().all(|r| r.verified) {
        0
    } else {
        1
    })
}

fn print_table(rep: &Report) {
    println!(
        "spate bench local: one stream, pieces of {:.1} MB, ring {:.0} MiB ({}), {} cores",
        rep.piece_bytes as f64 / 1e6,
        rep.ring_bytes as f64 / (1u64 << 20) as f64,
        rep.backing,
        rep.cores
    );
    println!(
        "  {:<10} {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7}  verified",
        "path", "kernel", "Gbit/s", "compute", "check", "transfer", "limit", "ratio"
    );
    for r in &rep.runs {
        let transfer = match r.path.as_str() {
            "pull" => format!("{:.2}", r.copy_gbit_per_s),
            "socket" => format!("{:.2}", r.socket_gbit_per_s),
            _ => "-".into(),
        };
        let ratio = if r.limit_holds {
            format!("{:.2}", r.ratio)
        } else {
            format!("{:.2} WRONG LIMIT", r.ratio)
        };
        println!(
            "  {:<10} {:<8} {:>9.2} {:>9.2} {:>9.2} {:>9} {:>9.2} {:>7}  {}",
            r.path,
            r.kernel,
            r.gbit_per_s,
            r.compute_gbit_per_s,
            r.check_gbit_per_s,
            transfer,
            r.limit_gbit_per_s,
            ratio,
            match (&r.error, r.verified) {
                (Some(e), _) => format!("no: {e}"),
                (None, true) => "yes".into(),
                (None, false) => "no".into(),
            }
        );
    }
}

/// The job: one stream of `total_lines` lines of [`WIDTH`] bytes (one 8-bit channel).
fn spec(kernel: &str, total_lines: u64, lines: u64) -> String {
    let mut s = format!(
        "name = \"bench-local\"\nkernel = \"{kernel}\"\nwidth = {WIDTH}\nheight = {total_lines}\n\
         bits = 8\nchannels = 1\nsplit = \"channel\"\nnode = \"c0\"\nchunk = {{ lines = {lines} }}\n"
    );
    if kernel == "rip" {
        // One ink: one stream, one reader (the RIP computes the inks of a line together).
        s.push_str(&format!(
            "inputs = [\"{INPUT}\"]\n\n[params]\nchannels = [\"K\"]\n"
        ));
    } else {
        s.push_str(&format!("\n[params]\nseed = {PATTERN_SEED}\n"));
    }
    s
}

type Kernels = (Box<dyn Kernel>, Option<Box<dyn Kernel>>);

/// The job's kernel with one thread, and with its own threads when it uses several.
fn kernels(spec: &str, files: &Path) -> anyhow::Result<Kernels> {
    let plan = spate_scheduler::spec::JobPlan::parse(spec)
        .map_err(|e| anyhow!("the bench's own job spec is invalid: {e}"))?;
    let geometry = spate_scheduler::server::job_geometry(&plan);
    let params: Value = spate_scheduler::server::table_to_value(&plan.params);
    let kernel = plan.kernel.name();
    let mut inputs = HashMap::new();
    for name in &plan.inputs {
        inputs.insert(name.clone(), std::fs::read(files.join(name))?);
    }
    let build = |t| {
        spate_producer::factory::build_with_threads(kernel, &params, &geometry, &inputs, t)
            .map_err(|e| anyhow!("building the {kernel} kernel: {e}"))
    };
    let one = build(Some(1))?;
    let many = (kernel == "rip").then(|| build(None)).transpose()?;
    Ok((one, many))
}

/// The XXH3-128 of the whole stream, computed in order (the RIP's output for one ink).
fn sequential_digest(k: &dyn Kernel, g: &JobGeometry) -> anyhow::Result<String> {
    let batch = ((16u64 << 20) / g.line_bytes).max(1);
    let mut buf = vec![0u8; (batch * g.line_bytes) as usize];
    let mut h = xxhash_rust::xxh3::Xxh3Default::new();
    let mut line = 0;
    while line < g.lines {
        let n = batch.min(g.lines - line);
        let len = (n * g.line_bytes) as usize;
        let mut outs = [Output {
            stream: 0,
            offset: line * g.line_bytes,
            buf: &mut buf[..len],
        }];
        k.compute(line..line + n, &mut outs)
            .map_err(|e| anyhow!("reference render: {e}"))?;
        h.update(&buf[..len]);
        line += n;
    }
    Ok(format!("{:032x}", h.digest128()))
}

/// One job on fresh daemons with `path`: (seconds from submission to the reader's end,
/// verified).
fn one_run(
    exe: &Path,
    dir: &Path,
    path: LocalPath,
    spec: &str,
    kernel: &str,
    bytes: u64,
    digest: Option<&str>,
) -> anyhow::Result<(f64, bool)> {
    let run = dir.join(path.name());
    std::fs::create_dir_all(run.join("logs"))?;
    let sock = run.join("sched.sock");
    let ep = Endpoint::Unix(sock.clone());
    let mut procs = Vec::new();
    let mut c = Command::new(exe);
    c.args(["scheduler", "--listen"])
        .arg(ep.to_string())
        .arg("--files")
        .arg(dir.join("files"));
    procs.push(Proc::spawn(
        "scheduler",
        c,
        &run.join("logs/scheduler.log"),
    )?);
    let secret_file = run.join("sched.sock.secret");
    wait_for(Duration::from_secs(20), "the scheduler's socket", || {
        Ok(sock.exists() && secret_file.exists())
    })?;
    for (name, role) in [("c0", "--consumer"), ("p0", "--producer")] {
        let mut c = Command::new(exe);
        c.args(["node", "--name", name, role, "--local-path", path.name()])
            .arg("--scheduler")
            .arg(ep.to_string())
            .arg("--secret-file")
            .arg(&secret_file)
            .arg("--run-dir")
            .arg(run.join(name))
            .args(["--ring-budget", "2GiB"]);
        procs.push(Proc::spawn(name, c, &run.join(format!("logs/{name}.log")))?);
    }
    let secret = load_secret(None, &ep)?;
    let mut user = User::connect(&ep, &secret, Duration::from_secs(10))?;
    wait_for(Duration::from_secs(30), "both nodes to join", || {
        for p in &mut procs {
            if !p.alive() {
                bail!(
                    "the {} daemon exited (see {})",
                    p.name,
                    run.join("logs").display()
                );
            }
        }
        let nodes = user.request(&Message::Status { job: None }, |m| match m {
            Message::StatusReply { nodes, .. } => Some(nodes),
            _ => None,
        })?;
        Ok(nodes.iter().filter(|n| n.state == NodeState::Alive).count() == 2)
    })?;
    let inputs = if kernel == "rip" {
        vec![INPUT.to_string()]
    } else {
        vec![]
    };
    let t0 = Instant::now();
    let accepted = user.request(
        &Message::Submit {
            spec_toml: spec.to_string(),
            inputs,
        },
        |m| match m {
            Message::Accepted { job, streams, .. } => Some(Ok((job, streams))),
            Message::Refused { message, .. } | Message::Error { message, .. } => {
                Some(Err(message.clone()))
            }
            _ => None,
        },
    )?;
    let (id, streams) = accepted.map_err(|m| anyhow!("job refused: {m}"))?;
    let s = streams.first().context("the job has no stream")?.clone();
    let mut c = Command::new(exe);
    c.args(["read", "--json", "--idle-timeout", "120", "--socket"])
        .arg(&s.handoff)
        .args(["--key", &s.key.to_string()]);
    if kernel == "pattern" {
        c.arg("--verify").arg(format!("{PATTERN_SEED}:0"));
    } else {
        c.arg("--hash");
    }
    let reader = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the reader")?;
    user.send(&Message::Ready { job: id })?;
    let out = reader
        .wait_with_output()
        .context("waiting for the reader")?;
    let seconds = t0.elapsed().as_secs_f64();
    let r = ReaderReport::parse(&s, &out)?;
    if r.outcome != "end" {
        bail!(
            "the reader ended {}: {}",
            r.outcome,
            r.error.unwrap_or_default()
        );
    }
    // The job ends: Done once delivered.
    user.send(&Message::Watch { job: id })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = false;
    loop {
        if Instant::now() > deadline {
            bail!("job {} did not end within 60 s of its last byte", id.0);
        }
        match user.recv()? {
            Message::JobUpdate(st) if st.job == id && st.state == JobState::Delivered && !done => {
                user.send(&Message::Done { job: id })?;
                done = true;
            }
            Message::JobEnded { job, outcome } if job == id => {
                if outcome != JobOutcome::Completed {
                    bail!("job ended {outcome:?}");
                }
                break;
            }
            _ => {}
        }
    }
    let verified = r.bytes == bytes
        && match digest {
            Some(d) => r.digest.as_deref() == Some(d),
            None => r.verified,
        };
    Ok((seconds, verified))
}

struct RemoveDir(PathBuf);
impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_the_slowest_stage_or_the_work_of_all_on_the_cores() {
        let s = |g| Stage::one(g);
        // Zero copy: compute and check on their own cores; the slower one bounds.
        assert_eq!(limit(&[s(40.0), s(80.0)], 2.0), 40.0);
        // Three single-thread stages on two cores: the work of all bounds first.
        // 2 / (1/60 + 1/60 + 1/60) = 40.
        assert!((limit(&[s(60.0), s(60.0), s(60.0)], 2.0) - 40.0).abs() < 1e-9);
        // One core: everything in turn.
        assert!((limit(&[s(40.0), s(40.0)], 1.0) - 20.0).abs() < 1e-9);
        // A stage with two threads goes twice as fast, and costs as much work per bit.
        let rip = Stage {
            per_core: 10.0,
            threads: 2.0,
        };
        assert!((limit(&[rip, s(100.0)], 2.0) - 2.0 / (0.1 + 0.01)).abs() < 1e-9);
        // It cannot use more cores than there are.
        assert_eq!(limit(&[rip], 1.0), 10.0);
    }

    #[test]
    fn each_path_has_its_stages() {
        let c = Some(Stage::one(50.0));
        let r = Some(Stage::one(100.0));
        // A socket transfer of 40 Gbit/s that kept 1.6 cores busy.
        let sock = Stage {
            per_core: 25.0,
            threads: 1.6,
        };
        // One copy of 70 Gbit/s; two at once make 1.5 times that.
        let copy = Stage {
            per_core: 70.0,
            threads: 1.5,
        };
        assert_eq!(stages(LocalPath::ZeroCopy, c, copy, sock, r).len(), 2);
        let pull = stages(LocalPath::Pull, c, copy, sock, r);
        assert_eq!(pull[1], copy);
        let socket = stages(LocalPath::Socket, c, copy, sock, r);
        assert_eq!(socket[1], sock);
        // The socket transfer alone bounds at its measured rate.
        assert!((limit(&socket[1..2], 2.0) - 40.0).abs() < 1e-9);
        // A path that neither computes nor checks is bounded by its transfer alone.
        assert!(
            (limit(&stages(LocalPath::Pull, None, copy, sock, None), 2.0) - 105.0).abs() < 1e-9
        );
        // On one core, one copy at a time.
        assert!((limit(&stages(LocalPath::Pull, None, copy, sock, None), 1.0) - 70.0).abs() < 1e-9);
    }
}
