//! `spate bench rip`: throughput of the RIP pipeline (output bytes of all channels per second)
//! on a reference job's geometry, with one thread and with every core.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use spate_producer::rip::{RefJob, Rip, RipParams, ScreenKind, test_image_png};

/// Options of `spate bench rip`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Reference job whose geometry to use (A: 3000², B: 36000², C: 120000² px per channel).
    #[arg(long, default_value = "B", value_parser = ["A", "B", "C", "a", "b", "c"])]
    pub job: String,
    /// Lines to render per measurement (from the middle of the sheet).
    #[arg(long, default_value_t = 2048)]
    pub lines: u32,
    /// Input image (PNG, TIFF, JPEG); default: the synthetic 1200 × 1200 test image.
    #[arg(long)]
    pub input: Option<std::path::PathBuf>,
    /// Drop levels.
    #[arg(long, default_value_t = 4)]
    pub levels: u32,
    /// Screen kind: bayer or blue_noise.
    #[arg(long, default_value = "bayer")]
    pub screen: String,
    /// Apply a non-identity tone curve to every channel (exercises the LUT step).
    #[arg(long)]
    pub curves: bool,
    /// Threads for the "all cores" run (default: available parallelism).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measurements per configuration; the best is reported.
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
    /// Print a JSON report instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    job: String,
    width: u32,
    height: u32,
    channels: usize,
    lines: u32,
    bytes_per_run: u64,
    cores: usize,
    single_thread_s: f64,
    all_cores_s: f64,
    /// Output MB/s (10^6 bytes, all channels) with one thread.
    per_core_mb_per_s: f64,
    /// Output MB/s with every core.
    total_mb_per_s: f64,
    /// total_mb_per_s / cores.
    per_core_at_all_cores_mb_per_s: f64,
    per_core_gbit_per_s: f64,
    total_gbit_per_s: f64,
    /// Output MB per second of CPU time with one thread (robust to other load on the host).
    per_core_cpu_mb_per_s: Option<f64>,
    /// Output MB per second of CPU time summed over all threads, with every core.
    all_cores_cpu_mb_per_s: Option<f64>,
}

/// Nanoseconds on a CPU of the calling thread (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Nanoseconds on a CPU of every thread of this process.
pub(crate) fn process_cpu_ns() -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let s = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Best wall time and best CPU time (of the calling thread when `whole_process` is false,
/// else of all threads) over `repeat` renders.
fn best_of(
    rip: &Rip,
    lines: std::ops::Range<u32>,
    bufs: &mut [Vec<u8>],
    repeat: u32,
    whole_process: bool,
) -> anyhow::Result<(Duration, Option<Duration>)> {
    let cpu = || {
        if whole_process {
            process_cpu_ns()
        } else {
            thread_cpu_ns()
        }
    };
    let mut best = Duration::MAX;
    let mut best_cpu: Option<Duration> = None;
    for _ in 0..repeat.max(1) {
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        let c0 = cpu();
        let t = Instant::now();
        rip.render(lines.clone(), &mut outs)?;
        best = best.min(t.elapsed());
        if let (Some(c0), Some(c1)) = (c0, cpu()) {
            let d = Duration::from_nanos(c1.saturating_sub(c0));
            best_cpu = Some(best_cpu.map_or(d, |b| b.min(d)));
        }
    }
    Ok((best, best_cpu))
}

/// Runs the benchmark; returns the process exit code.
pub fn run(a: Args) -> anyhow::Result<i32> {
    let job = match a.job.to_ascii_uppercase().as_str() {
        "A" => RefJob::A,
        "C" => RefJob::C,
        _ => RefJob::B,
    };
    let screen = match a.screen.as_str() {
        "bayer" => ScreenKind::Bayer,
        "blue_noise" => ScreenKind::BlueNoise,
        other => anyhow::bail!("--screen {other:?}: use bayer or blue_noise"),
    };
    let image = match &a.input {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        None => test_image_png(1200, 1200)?,
    };
    let mut params = RipParams {
        levels: a.levels,
        screen,
        screen_size: if screen == ScreenKind::BlueNoise {
            64
        } else {
            16
        },
        threads: 1,
        ..job.params()
    };
    if a.curves {
        for ch in ["C", "M", "Y", "K"] {
            params
                .curves
                .insert(ch.into(), vec![[0, 0], [64, 50], [128, 110], [255, 255]]);
        }
    }
    let mut rip = Rip::new(params, &image)?;
    let lines = a.lines.clamp(1, rip.height());
    let start = (rip.height() - lines) / 2;
    let range = start..start + lines;
    let per_channel = lines as usize * rip.line_bytes();
    let mut bufs = vec![vec![1u8; per_channel]; rip.channels().len()];
    let bytes = (per_channel * bufs.len()) as u64;

    // Warm up (page in the buffers, build caches).
    best_of(
        &rip,
        range.start..range.start + lines.min(64),
        &mut trimmed(&bufs, lines.min(64), rip.line_bytes()),
        1,
        false,
    )?;
    let (single, single_cpu) = best_of(&rip, range.clone(), &mut bufs, a.repeat, false)?;
    let cores = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rip.set_threads(cores)?;
    let (all, all_cpu) = best_of(&rip, range.clone(), &mut bufs, a.repeat, true)?;

    let mbps = |d: Duration| bytes as f64 / d.as_secs_f64() / 1e6;
    let r = Report {
        job: format!("{job:?}"),
        width: rip.width(),
        height: rip.height(),
        channels: rip.channels().len(),
        lines,
        bytes_per_run: bytes,
        cores,
        single_thread_s: single.as_secs_f64(),
        all_cores_s: all.as_secs_f64(),
        per_core_mb_per_s: mbps(single),
        total_mb_per_s: mbps(all),
        per_core_at_all_cores_mb_per_s: mbps(all) / cores as f64,
        per_core_gbit_per_s: mbps(single) * 8.0 / 1000.0,
        total_gbit_per_s: mbps(all) * 8.0 / 1000.0,
        per_core_cpu_mb_per_s: single_cpu.map(mbps),
        all_cores_cpu_mb_per_s: all_cpu.map(mbps),
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "rip job {}: {} x {} px, {} channels, {} lines ({:.1} MB per run)",
            r.job,
            r.width,
            r.height,
            r.channels,
            r.lines,
            bytes as f64 / 1e6
        );
        println!(
            "  1 thread : {:8.1} MB/s  ({:.2} Gbit/s)  per core",
            r.per_core_mb_per_s, r.per_core_gbit_per_s
        );
        println!(
            "  {} threads: {:8.1} MB/s  ({:.2} Gbit/s)  total, {:.1} MB/s per core",
            cores, r.total_mb_per_s, r.total_gbit_per_s, r.per_core_at_all_cores_mb_per_s
        );
        if let (Some(one), Some(all)) = (r.per_core_cpu_mb_per_s, r.all_cores_cpu_mb_per_s) {
            println!(
                "  per CPU-second (excludes time lost to other load): {one:.1} MB/s with 1 thread, \
                 {all:.1} MB/s with {cores}"
            );
        }
    }
    Ok(0)
}

fn trimmed(bufs: &[Vec<u8>], lines: u32, line_bytes: usize) -> Vec<Vec<u8>> {
    bufs.iter()
        .map(|_| vec![0u8; lines as usize * line_bytes])
        .collect()
}
