//! The report of `spate bench cluster`: the JSON contract ([`Report`]), the terminal table
//! ([`print_table`]), latency histograms as `.hgrm` files ([`write_hgrm`]), SVG plots
//! ([`write_plots`]) and the progress bar ([`Progress`]).

use super::limits::Topology;
use anyhow::Context;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// Everything one `spate bench cluster` run measured (written as `report.json`; `--json` prints
/// it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Whether this was the short `--quick` run.
    pub quick: bool,
    /// Number of emulated nodes (H).
    pub nodes: usize,
    /// The rate each interface was shaped to, if any (Mbit/s).
    pub link_rate_mbit: Option<u32>,
    /// The job size scale applied to every job.
    pub scale: f64,
    /// The capacities measured in this run.
    pub limits: Limits,
    /// One entry per experiment run.
    pub runs: Vec<Run>,
    /// Where the files were written.
    pub out_dir: String,
    /// The files written (report, histograms, plots).
    pub files: Vec<String>,
    /// Wall time of the whole benchmark.
    pub seconds: f64,
    /// Experiments not run, each with why.
    pub skipped: Vec<String>,
}

/// Capacities measured in the same run, from which the topology limits are computed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Measured payload rate of each link.
    pub links: Vec<LinkFigure>,
    /// Raw transfer over a UNIX socket on one node (for reference: spate's local paths do
    /// not go through the socket).
    pub raw_unix_gbit_per_s: f64,
    /// Memory copy rate, cold to cold (for reference).
    pub memcpy_gbit_per_s: f64,
    /// The local runs' limits: the stages of each run's path, measured alone with its access
    /// pattern.
    #[serde(default)]
    pub local: Vec<LocalLimit>,
}

/// The limit of one local run (job, kernel) from its path's stages (`bench local` explains
/// the model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalLimit {
    /// The job.
    pub job: String,
    /// The kernel.
    pub kernel: String,
    /// The local path it runs on.
    pub path: String,
    /// The kernel alone into ring-sized memory (null: computes nothing).
    pub compute_gbit_per_s: Option<f64>,
    /// One reader's check alone (null: the readers do not look at the bytes).
    pub check_gbit_per_s: Option<f64>,
    /// One copy of the same geometry (the pull path's transfer).
    pub copy_gbit_per_s: f64,
    /// The limit.
    pub limit_gbit_per_s: f64,
}

/// The measured payload rate from node `from` to node `to` on network `net`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinkFigure {
    /// Sending node.
    pub from: usize,
    /// Receiving node.
    pub to: usize,
    /// Which of the node's networks (interfaces).
    pub net: usize,
    /// Measured payload rate.
    pub gbit_per_s: f64,
}

/// One experiment: a job on a topology with a kernel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// The topology (serialised as "local-1x1", "distant-1x1", "1xN", "Nx1" or "NxN").
    pub topology: Topology,
    /// The job's name.
    pub job: String,
    /// The compute kernel (e.g. "null", "rip").
    pub kernel: String,
    /// How chunks reached the consumers on the local topology (zero-copy, pull); null on the
    /// network topologies (through sockets).
    #[serde(default)]
    pub path: Option<String>,
    /// Nodes running producers.
    pub producers: Vec<String>,
    /// Nodes running consumers.
    pub consumers: Vec<String>,
    /// Bytes read by the readers.
    pub bytes: u64,
    /// Duration of the run.
    pub seconds: f64,
    /// Measured throughput.
    pub gbit_per_s: f64,
    /// The topology's limit from the measured capacities; `null` in JSON when unbounded.
    #[serde(with = "unbounded")]
    pub limit_gbit_per_s: f64,
    /// Measured over limit (0 when unbounded).
    pub ratio: f64,
    /// Whether the bytes read were checked correct.
    pub verified: bool,
    /// How they were checked (or why not).
    pub verification: String,
    /// Latency from a chunk's send to its arrival, µs.
    pub chunk_latency_us: Option<Percentiles>,
    /// Latency of control messages, µs.
    pub control_latency_us: Option<Percentiles>,
    /// The constant-speed reading figures, for runs reading at a set speed.
    pub constant_speed: Option<ConstantSpeed>,
    /// Why the run failed, if it did.
    pub error: Option<String>,
}

/// Percentiles of a latency histogram (in the histogram's unit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest value.
    pub max: u64,
}

/// A reader consuming at a set speed: what it got, and how often it waited for data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConstantSpeed {
    /// The speed the reader asked for.
    pub requested_gbit_per_s: f64,
    /// The speed it got.
    pub delivered_gbit_per_s: f64,
    /// Delivered over requested, in percent.
    pub delivered_pct: f64,
    /// Times the reader found no data when it wanted some.
    pub starvations: u64,
    /// Time spent waiting for data.
    pub starvation_seconds: f64,
    /// The same job's throughput read as fast as possible.
    pub unconstrained_gbit_per_s: f64,
    /// Loss of compute power reading at the set speed, in percent of the unconstrained run.
    pub power_loss_pct: f64,
}

/// `f64` fields where `+inf` (unbounded) is written as JSON `null` and read back as `+inf`
/// (JSON has no infinity; serde_json would write `null` and then refuse to read it).
mod unbounded {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::INFINITY))
    }
}

/// The percentiles of `h` (all zero when it is empty).
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    Percentiles {
        count: h.len(),
        p50: h.value_at_quantile(0.5),
        p90: h.value_at_quantile(0.9),
        p99: h.value_at_quantile(0.99),
        p999: h.value_at_quantile(0.999),
        max: h.max(),
    }
}

/// Percentile ticks per half distance to 100%, as HdrHistogram's default.
const TICKS_PER_HALF: u32 = 5;

/// The sub-bucket count of a histogram with `sigfig` significant digits (not exposed by the
/// crate): the power of two at or above 2 × 10^sigfig.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10_u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// The percentile distribution of `h` in HdrHistogram's text format (what Java's
/// `outputPercentileDistribution` writes, scale ratio 1), preceded by a `#` title line.
fn hgrm_text(h: &Histogram<u64>, title: &str) -> String {
    let n = usize::from(h.sigfig());
    let mut s = String::new();
    // `fmt::Write` into a String cannot fail.
    let _ = writeln!(s, "# {title}");
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for v in h.iter_quantiles(TICKS_PER_HALF) {
        let value = v.value_iterated_to() as f64;
        let q = v.quantile_iterated_to();
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.n$} {q:2.12} {:10} {:14.2}",
                cumulative(h, v.value_iterated_to()),
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(
                s,
                "{value:12.n$} {q:2.12} {:10}",
                cumulative(h, v.value_iterated_to())
            );
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.n$}, StdDeviation   = {:12.n$}]",
        h.mean(),
        h.stdev()
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.n$}, Total count    = {:12}]",
        h.max() as f64,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets(h.sigfig())
    );
    s
}

/// Values recorded at or below `value`'s bucket (the "TotalCount" column).
fn cumulative(h: &Histogram<u64>, value: u64) -> u64 {
    h.count_between(0, value)
}

/// Write `h` to `path` as an `.hgrm` percentile distribution (HdrHistogram's text format, read
/// by its online plotter), values in the histogram's unit, with `title` as a `#` comment line.
pub fn write_hgrm(h: &Histogram<u64>, path: &Path, title: &str) -> io::Result<()> {
    std::fs::write(path, hgrm_text(h, title))
}

/// Gbit/s for a table cell: two decimals, `∞` when unbounded.
fn gbit(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.2}")
    } else {
        "∞".to_owned()
    }
}

/// Microseconds as milliseconds with three decimals.
fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

/// Rows of cells printed with each column padded to its widest cell (by characters).
pub(crate) fn print_rows(
    out: &mut dyn Write,
    rows: &[Vec<String>],
    right: &[bool],
) -> io::Result<()> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c].saturating_sub(cell.chars().count());
            if c > 0 {
                line.push_str("  ");
            }
            if right.get(c).copied().unwrap_or(false) {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Print the report as aligned tables: one row per run, then constant-speed reading, the
/// capacities measured, skipped experiments and the files written.
pub fn print_table(r: &Report, out: &mut dyn Write) -> io::Result<()> {
    let link = r
        .link_rate_mbit
        .map_or("unshaped".to_owned(), |m| format!("links {m} Mbit/s"));
    writeln!(
        out,
        "spate bench cluster: {} nodes, {link}, scale {}{}, {:.1} s",
        r.nodes,
        r.scale,
        if r.quick { " (quick)" } else { "" },
        r.seconds
    )?;
    writeln!(out)?;

    let mut rows = vec![
        [
            "topology",
            "job",
            "kernel",
            "Gbit/s",
            "limit",
            "ratio",
            "verified",
            "chunk p50/p99 ms",
            "control p50 ms",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    let mut errors = Vec::new();
    // Constant-speed runs have their own table below.
    for run in r.runs.iter().filter(|run| run.constant_speed.is_none()) {
        let mut row = vec![
            run.topology.to_string(),
            run.job.clone(),
            run.kernel.clone(),
        ];
        if let Some(e) = &run.error {
            row.extend(["-", "-", "-", "✗ failed", "-", "-"].map(str::to_owned));
            errors.push(format!("{} {} {}: {e}", run.topology, run.job, run.kernel));
        } else {
            row.push(gbit(run.gbit_per_s));
            row.push(gbit(run.limit_gbit_per_s));
            row.push(if run.limit_gbit_per_s.is_finite() {
                format!("{:.2}", run.ratio)
            } else {
                "-".to_owned()
            });
            let mark = if run.verified { "✓" } else { "✗" };
            row.push(format!("{mark} {}", run.verification).trim_end().to_owned());
            row.push(
                run.chunk_latency_us
                    .map_or("-".to_owned(), |p| format!("{}/{}", ms(p.p50), ms(p.p99))),
            );
            row.push(run.control_latency_us.map_or("-".to_owned(), |p| ms(p.p50)));
        }
        rows.push(row);
    }
    let right = [false, false, false, true, true, true, false, true, true];
    print_rows(out, &rows, &right)?;
    for e in &errors {
        writeln!(out, "  error: {e}")?;
    }

    let speed: Vec<&Run> = r
        .runs
        .iter()
        .filter(|run| run.constant_speed.is_some())
        .collect();
    if !speed.is_empty() {
        writeln!(out)?;
        writeln!(out, "constant-speed reading")?;
        let mut rows = vec![
            [
                "topology",
                "job",
                "kernel",
                "requested",
                "delivered",
                "delivered %",
                "starvations",
                "starved s",
                "unconstrained",
                "power loss %",
            ]
            .map(str::to_owned)
            .to_vec(),
        ];
        for run in speed {
            if let Some(c) = &run.constant_speed {
                rows.push(vec![
                    run.topology.to_string(),
                    run.job.clone(),
                    run.kernel.clone(),
                    gbit(c.requested_gbit_per_s),
                    gbit(c.delivered_gbit_per_s),
                    format!("{:.1}", c.delivered_pct),
                    c.starvations.to_string(),
                    format!("{:.3}", c.starvation_seconds),
                    gbit(c.unconstrained_gbit_per_s),
                    format!("{:.1}", c.power_loss_pct),
                ]);
            }
        }
        let right = [
            false, false, false, true, true, true, true, true, true, true,
        ];
        print_rows(out, &rows, &right)?;
    }

    writeln!(out)?;
    writeln!(out, "capacities measured (Gbit/s)")?;
    let mut nets: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for l in &r.limits.links {
        nets.entry(l.net).or_default().push(l.gbit_per_s);
    }
    let mut rows = vec![
        ["", "links", "min", "mean", "max"]
            .map(str::to_owned)
            .to_vec(),
    ];
    for (net, v) in &nets {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        rows.push(vec![
            format!("net {net}"),
            v.len().to_string(),
            gbit(min),
            gbit(mean),
            gbit(max),
        ]);
    }
    print_rows(out, &rows, &[false, true, true, true, true])?;
    writeln!(
        out,
        "memcpy {}, raw UNIX socket {} (for reference)",
        gbit(r.limits.memcpy_gbit_per_s),
        gbit(r.limits.raw_unix_gbit_per_s)
    )?;
    for l in &r.limits.local {
        let opt = |v: Option<f64>| v.map_or("-".to_string(), gbit);
        writeln!(
            out,
            "local {} {} on {}: compute {}, check {}, copy {} -> limit {}",
            l.job,
            l.kernel,
            l.path,
            opt(l.compute_gbit_per_s),
            opt(l.check_gbit_per_s),
            gbit(l.copy_gbit_per_s),
            gbit(l.limit_gbit_per_s)
        )?;
    }

    if !r.skipped.is_empty() {
        writeln!(out)?;
        writeln!(out, "skipped")?;
        for s in &r.skipped {
            writeln!(out, "  {s}")?;
        }
    }
    writeln!(out)?;
    writeln!(out, "files written in {}", r.out_dir)?;
    for f in &r.files {
        writeln!(out, "  {f}")?;
    }
    Ok(())
}

/// One group of two bars side by side: a filled one (`value`), a light one (`reference`, not
/// drawn when not finite), and a note above them.
pub(crate) struct BarGroup {
    pub(crate) label: String,
    pub(crate) value: f64,
    pub(crate) reference: f64,
    pub(crate) note: String,
}

/// Legend names and title of a two-bar chart.
pub(crate) struct BarChart<'a> {
    pub(crate) title: String,
    pub(crate) value_name: &'a str,
    pub(crate) reference_name: &'a str,
    pub(crate) y_desc: &'a str,
}

/// Draw `groups` as grouped bars into the SVG file `path`. The y axis is logarithmic when the
/// values span more than [`LOG_SPAN`] (local runs are tens of times faster than shaped links).
pub(crate) fn draw_bars(
    path: &Path,
    chart_text: &BarChart<'_>,
    groups: &[BarGroup],
) -> anyhow::Result<()> {
    use plotters::prelude::*;

    let positive: Vec<f64> = groups
        .iter()
        .flat_map(|g| [g.value, g.reference])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let top = positive.iter().copied().fold(0.0_f64, f64::max);
    let bottom = positive.iter().copied().fold(f64::INFINITY, f64::min);
    let n = i32::try_from(groups.len().max(1)).unwrap_or(i32::MAX / 100);
    let width = u32::try_from(140 * n + 160).unwrap_or(u32::MAX).max(640);

    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart_text.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64);
    // Each group spans 100 units of x (integer: key points need a default-formatted range).
    let x = || (0..n * 100).with_key_points((0..n).map(|i| i * 100 + 50).collect());
    if top > 0.0 && top / bottom > LOG_SPAN {
        let low = 10_f64.powf((bottom / 2.0).log10().floor());
        let chart = builder.build_cartesian_2d(x(), (low..top * 2.0).log_scale())?;
        let y_desc = format!("{} (log scale)", chart_text.y_desc);
        fill_bars(chart, chart_text, &y_desc, groups, low, |y| y * 1.04)?;
    } else {
        let y_max = if top > 0.0 { top * 1.2 } else { 1.0 };
        let chart = builder.build_cartesian_2d(x(), 0.0..y_max)?;
        fill_bars(chart, chart_text, chart_text.y_desc, groups, 0.0, |y| {
            y + y_max * 0.01
        })?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// An axis tick: three significant digits, without trailing zeros (no float noise).
fn tick(y: f64) -> String {
    if y == 0.0 || !y.is_finite() {
        return format!("{y}");
    }
    let decimals = (2 - y.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{y:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Values spanning more than this factor get a logarithmic axis.
const LOG_SPAN: f64 = 20.0;

/// The chart of [`draw_bars`] on either y axis: bars from `base`, notes at `above(top of bar)`.
fn fill_bars<'a, Y>(
    mut chart: plotters::chart::ChartContext<
        'a,
        plotters::backend::SVGBackend<'a>,
        plotters::coord::cartesian::Cartesian2d<
            plotters::coord::combinators::WithKeyPoints<plotters::coord::types::RangedCoordi32>,
            Y,
        >,
    >,
    chart_text: &BarChart<'_>,
    y_desc: &str,
    groups: &[BarGroup],
    base: f64,
    above: impl Fn(f64) -> f64,
) -> anyhow::Result<()>
where
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>
        + plotters::coord::ranged1d::ValueFormatter<f64>,
{
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};

    let value_color = RGBColor(31, 119, 180);
    let reference_color = RGBColor(255, 127, 14);
    let labels: Vec<String> = groups.iter().map(|g| g.label.clone()).collect();
    let label_of = |x: &i32| {
        usize::try_from(x.div_euclid(100))
            .ok()
            .and_then(|i| labels.get(i).cloned())
            .unwrap_or_default()
    };
    let y_label = |y: &f64| tick(*y);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_label_formatter(&label_of)
        .x_label_style(("sans-serif", 13))
        .y_label_formatter(&y_label)
        .max_light_lines(4)
        .y_desc(y_desc)
        .draw()?;

    let note_style =
        TextStyle::from(("sans-serif", 13).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
    let x_of = |i: usize| i32::try_from(i).unwrap_or(i32::MAX / 100) * 100;
    let reference_bar = |i: usize, g: &BarGroup| {
        let x = x_of(i);
        [(x + 50, base), (x + 88, g.reference.max(base))]
    };
    chart
        .draw_series(groups.iter().enumerate().map(|(i, g)| {
            let x = x_of(i);
            Rectangle::new(
                [(x + 12, base), (x + 50, g.value.max(base))],
                value_color.filled(),
            )
        }))?
        .label(chart_text.value_name)
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], value_color.filled()));
    let references = || {
        groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.reference.is_finite())
    };
    chart
        .draw_series(
            references().map(|(i, g)| {
                Rectangle::new(reference_bar(i, g), reference_color.mix(0.3).filled())
            }),
        )?
        .label(chart_text.reference_name)
        .legend(move |(x, y)| {
            Rectangle::new(
                [(x, y - 5), (x + 14, y + 5)],
                reference_color.mix(0.3).filled(),
            )
        });
    chart.draw_series(
        references()
            .map(|(i, g)| Rectangle::new(reference_bar(i, g), reference_color.stroke_width(2))),
    )?;
    chart.draw_series(groups.iter().enumerate().map(|(i, g)| {
        let mut y = g.value.max(base);
        if g.reference.is_finite() {
            y = y.max(g.reference);
        }
        Text::new(g.note.clone(), (x_of(i) + 50, above(y)), note_style.clone())
    }))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// A kernel name usable in a file name.
fn file_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// A run's x-axis label: topology, then job when there is one.
fn run_label(run: &Run) -> String {
    if run.job.is_empty() {
        run.topology.to_string()
    } else {
        format!("{} {}", run.topology, run.job)
    }
}

/// Write SVG plots into `dir`: `throughput-<kernel>.svg` per kernel (measured and limit per
/// topology and job, as the reference's figures 4 and 5) and `constant-speed.svg` when any run
/// read at a set speed. Failed runs are left out. Returns the files written.
pub fn write_plots(r: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let ok: Vec<&Run> = r.runs.iter().filter(|run| run.error.is_none()).collect();
    let mut kernels: Vec<&str> = Vec::new();
    for run in &ok {
        if !kernels.contains(&run.kernel.as_str()) {
            kernels.push(&run.kernel);
        }
    }
    let link = r
        .link_rate_mbit
        .map_or(String::new(), |m| format!(", links {m} Mbit/s"));
    let mut files = Vec::new();
    for kernel in kernels {
        let mut runs: Vec<&Run> = ok
            .iter()
            .copied()
            .filter(|run| run.kernel == kernel && run.constant_speed.is_none())
            .collect();
        runs.sort_by_key(|run| run.topology);
        let groups: Vec<BarGroup> = runs
            .iter()
            .map(|run| BarGroup {
                label: run_label(run),
                value: run.gbit_per_s,
                reference: run.limit_gbit_per_s,
                note: if run.limit_gbit_per_s.is_finite() {
                    format!("{:.2}", run.ratio)
                } else {
                    String::new()
                },
            })
            .collect();
        let path = dir.join(format!("throughput-{}.svg", file_safe(kernel)));
        let text = BarChart {
            title: format!("Throughput, kernel {kernel} ({} nodes{link})", r.nodes),
            value_name: "measured",
            reference_name: "limit",
            y_desc: "Gbit/s",
        };
        draw_bars(&path, &text, &groups)?;
        files.push(path);
    }

    let speed: Vec<BarGroup> = ok
        .iter()
        .filter_map(|run| {
            run.constant_speed.as_ref().map(|c| BarGroup {
                label: format!("{} {}", run_label(run), run.kernel),
                value: c.delivered_gbit_per_s,
                reference: c.requested_gbit_per_s,
                note: format!("{:.0}%", c.delivered_pct),
            })
        })
        .collect();
    if !speed.is_empty() {
        let path = dir.join("constant-speed.svg");
        let text = BarChart {
            title: format!("Constant-speed reading ({} nodes{link})", r.nodes),
            value_name: "delivered",
            reference_name: "requested",
            y_desc: "Gbit/s",
        };
        draw_bars(&path, &text, &speed)?;
        files.push(path);
    }
    Ok(files)
}

/// Write `r` as pretty JSON to `dir/report.json`; returns its path.
pub fn write_report(r: &Report, dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("report.json");
    let write = || -> anyhow::Result<()> {
        let mut f = BufWriter::new(std::fs::File::create(&path)?);
        serde_json::to_writer_pretty(&mut f, r)?;
        f.write_all(b"\n")?;
        f.flush()?;
        Ok(())
    };
    write().with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A progress bar on stderr over the runs, hidden when disabled or stderr is not a terminal.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    /// A bar over `total_runs` runs; `enabled == false` hides it (lines still print).
    pub fn new(total_runs: u64, enabled: bool) -> Self {
        use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
        let bar = if enabled {
            let bar = ProgressBar::with_draw_target(Some(total_runs), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("[{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            {
                bar.set_style(style);
            }
            bar
        } else {
            ProgressBar::hidden()
        };
        Progress { bar }
    }

    /// The suite changed (e.g. the network runs were skipped): `total_runs` in all.
    pub fn set_total(&self, total_runs: u64) {
        self.bar.set_length(total_runs);
    }

    /// A run starts: show its label (e.g. "distant-1x1 B rip").
    pub fn start(&self, label: &str) {
        self.bar.set_message(label.to_owned());
    }

    /// A run is done.
    pub fn done(&self) {
        self.bar.inc(1);
    }

    /// Print a line to stderr above the bar (also when the bar is hidden).
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    /// Remove the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(topology: Topology, job: &str, kernel: &str, gbit: f64, limit: f64) -> Run {
        Run {
            topology,
            job: job.to_owned(),
            kernel: kernel.to_owned(),
            path: (topology == Topology::Local1x1).then(|| "pull".to_owned()),
            producers: vec!["n0".to_owned()],
            consumers: vec!["n1".to_owned(), "n2".to_owned()],
            bytes: 1 << 30,
            seconds: 2.5,
            gbit_per_s: gbit,
            limit_gbit_per_s: limit,
            // Three decimals: serde_json (without `float_roundtrip`) reads some 17-digit floats
            // back an ulp off, which would break the exact round-trip comparison.
            ratio: (super::super::limits::ratio(gbit, limit) * 1000.0).round() / 1000.0,
            verified: true,
            verification: "crc".to_owned(),
            chunk_latency_us: Some(Percentiles {
                count: 100,
                p50: 120,
                p90: 300,
                p99: 800,
                p999: 950,
                max: 1000,
            }),
            control_latency_us: Some(Percentiles {
                count: 10,
                p50: 50,
                p90: 60,
                p99: 70,
                p999: 70,
                max: 70,
            }),
            constant_speed: None,
            error: None,
        }
    }

    fn sample() -> Report {
        let mut speed = run(Topology::NToN, "A", "rip", 1.2, 3.0);
        speed.constant_speed = Some(ConstantSpeed {
            requested_gbit_per_s: 1.0,
            delivered_gbit_per_s: 0.95,
            delivered_pct: 95.0,
            starvations: 3,
            starvation_seconds: 0.125,
            unconstrained_gbit_per_s: 2.5,
            power_loss_pct: 4.0,
        });
        let mut failed = run(Topology::OneToN, "B", "rip", 0.0, 2.0);
        failed.error = Some("consumer n2 did not start".to_owned());
        failed.verified = false;
        Report {
            quick: true,
            nodes: 3,
            link_rate_mbit: Some(1000),
            scale: 0.25,
            limits: Limits {
                links: vec![
                    LinkFigure {
                        from: 0,
                        to: 1,
                        net: 0,
                        gbit_per_s: 0.94,
                    },
                    LinkFigure {
                        from: 1,
                        to: 0,
                        net: 0,
                        gbit_per_s: 0.96,
                    },
                    LinkFigure {
                        from: 0,
                        to: 1,
                        net: 1,
                        gbit_per_s: 0.95,
                    },
                ],
                raw_unix_gbit_per_s: 40.0,
                memcpy_gbit_per_s: 80.0,
                local: vec![LocalLimit {
                    job: "A".to_owned(),
                    kernel: "null".to_owned(),
                    path: "pull".to_owned(),
                    compute_gbit_per_s: None,
                    check_gbit_per_s: None,
                    copy_gbit_per_s: 40.0,
                    limit_gbit_per_s: 40.0,
                }],
            },
            runs: vec![
                run(Topology::Local1x1, "A", "null", 35.0, 40.0),
                run(Topology::Distant1x1, "A", "null", 0.9, 0.95),
                run(Topology::OneToN, "A", "null", 0.9, 0.94),
                run(Topology::NToOne, "A", "null", 1.8, 1.9),
                run(Topology::NToN, "A", "null", 2.0, f64::INFINITY),
                run(Topology::Distant1x1, "B", "rip", 0.5, 0.95),
                failed,
                speed,
            ],
            out_dir: "/tmp/spate-cluster".to_owned(),
            files: vec!["report.json".to_owned(), "throughput-null.svg".to_owned()],
            seconds: 42.0,
            skipped: vec!["NxN C: needs 4 nodes".to_owned()],
        }
    }

    #[test]
    fn report_round_trips_through_json() {
        let r = sample();
        let json = serde_json::to_string_pretty(&r).unwrap();
        let back: Report = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let topologies: Vec<&str> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|run| run["topology"].as_str().unwrap())
            .collect();
        assert_eq!(
            topologies,
            [
                "local-1x1",
                "distant-1x1",
                "1xN",
                "Nx1",
                "NxN",
                "distant-1x1",
                "1xN",
                "NxN"
            ]
        );
        assert_eq!(v["runs"][4]["limit_gbit_per_s"], serde_json::Value::Null);
        assert_eq!(v["runs"][0]["limit_gbit_per_s"], 40.0);
        assert_eq!(v["runs"][7]["constant_speed"]["starvations"], 3);
        assert_eq!(v["limits"]["links"][2]["net"], 1);
    }

    #[test]
    fn write_report_writes_pretty_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = write_report(&sample(), dir.path()).unwrap();
        assert_eq!(path, dir.path().join("report.json"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"quick\": true,"), "{text}");
        assert_eq!(serde_json::from_str::<Report>(&text).unwrap(), sample());
    }

    #[test]
    fn percentiles_of_one_to_a_thousand() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        assert_eq!(
            percentiles(&h),
            Percentiles {
                count: 1000,
                p50: 500,
                p90: 900,
                p99: 990,
                p999: 999,
                max: 1000
            }
        );
        let empty = Histogram::<u64>::new(3).unwrap();
        assert_eq!(percentiles(&empty), Percentiles::default());
    }

    #[test]
    fn hgrm_has_the_hdrhistogram_layout() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chunk.hgrm");
        write_hgrm(&h, &path, "chunk latency (us)").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# chunk latency (us)");
        assert_eq!(
            lines[1],
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines[2], "");
        assert_eq!(
            lines[3],
            "       1.000 0.000000000000          1           1.00"
        );
        let n = lines.len();
        assert_eq!(
            lines[n - 3],
            "#[Mean    =      500.500, StdDeviation   =      288.675]"
        );
        assert_eq!(
            lines[n - 2],
            "#[Max     =     1000.000, Total count    =         1000]"
        );
        assert_eq!(
            lines[n - 1],
            format!(
                "#[Buckets = {:12}, SubBuckets     =         2048]",
                h.buckets()
            )
        );
        assert_eq!(lines[n - 4], "    1000.000 1.000000000000       1000");

        // Parse the rows back: every column grows, the percentiles follow the halving ticks.
        let rows: Vec<(f64, f64, u64)> = lines[3..n - 3]
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                assert!(f.len() == 4 || f.len() == 3, "{l:?}");
                (
                    f[0].parse().unwrap(),
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                )
            })
            .collect();
        assert!(rows.len() > 20, "{} rows", rows.len());
        for w in rows.windows(2) {
            assert!(w[0].0 <= w[1].0, "{w:?}");
            assert!(w[0].1 < w[1].1, "{w:?}");
            assert!(w[0].2 <= w[1].2, "{w:?}");
        }
        assert_eq!(rows[1].1, 0.1);
        assert!(
            rows.iter()
                .any(|r| r.1 == 0.5 && r.0 == 500.0 && r.2 == 500)
        );
        assert_eq!(rows.last().copied(), Some((1000.0, 1.0, 1000)));
    }

    #[test]
    fn table_shows_runs_speeds_limits_and_files() {
        let mut out = Vec::new();
        print_table(&sample(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let line_of = |needle: &str| {
            text.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line {needle:?} in\n{text}"))
                .to_owned()
        };
        let header = line_of("topology");
        assert!(header.contains("Gbit/s") && header.contains("chunk p50/p99 ms"));
        let distant = line_of("distant-1x1  A");
        for cell in ["null", "0.90", "0.95", "✓ crc", "0.120/0.800", "0.050"] {
            assert!(distant.contains(cell), "{cell:?} not in {distant:?}");
        }
        // Columns line up: numbers end under their header, text starts under it.
        let end_of =
            |l: &str, cell: &str| l.find(cell).map(|i| l[..i + cell.len()].chars().count());
        let start_of = |l: &str, cell: &str| l.find(cell).map(|i| l[..i].chars().count());
        let local = line_of("local-1x1");
        assert_eq!(end_of(&header, "Gbit/s"), end_of(&local, "35.00"));
        assert_eq!(end_of(&header, "limit"), end_of(&local, "40.00"));
        assert_eq!(start_of(&header, "verified"), start_of(&distant, "✓"));
        assert_eq!(
            start_of(&header, "verified"),
            start_of(&line_of("Nx1"), "✓")
        );
        let unbounded = line_of("NxN          A    null");
        assert_eq!(end_of(&header, "limit"), end_of(&unbounded, "∞"));
        assert!(text.contains("✗ failed"));
        assert!(text.contains("error: 1xN B rip: consumer n2 did not start"));
        assert!(text.contains("constant-speed reading"));
        let speed = text
            .lines()
            .skip_while(|l| !l.starts_with("constant-speed"))
            .nth(2)
            .unwrap();
        for cell in ["1.00", "0.95", "95.0", "3", "0.125", "2.50", "4.0"] {
            assert!(speed.contains(cell), "{cell:?} not in {speed:?}");
        }
        let net0 = line_of("net 0");
        assert_eq!(
            net0.split_whitespace().collect::<Vec<_>>(),
            ["net", "0", "2", "0.94", "0.95", "0.96"]
        );
        assert!(text.contains("memcpy 80.00, raw UNIX socket 40.00 (for reference)"));
        assert!(
            text.contains("local A null on pull: compute -, check -, copy 40.00 -> limit 40.00")
        );
        assert!(text.contains("  NxN C: needs 4 nodes"));
        assert!(text.contains("files written in /tmp/spate-cluster\n  report.json\n"));
    }

    #[test]
    fn plots_are_svg_with_the_topology_labels() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_plots(&sample(), dir.path()).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "throughput-null.svg",
                "throughput-rip.svg",
                "constant-speed.svg"
            ]
        );
        for f in &files {
            let svg = std::fs::read_to_string(f).unwrap();
            assert!(svg.starts_with("<svg") || svg.starts_with("<?xml"), "{f:?}");
            assert!(svg.trim_end().ends_with("</svg>"), "{f:?}");
        }
        let null = std::fs::read_to_string(&files[0]).unwrap();
        for label in [
            "local-1x1 A",
            "distant-1x1 A",
            "1xN A",
            "Nx1 A",
            "NxN A",
            "measured",
            "limit",
        ] {
            assert!(null.contains(label), "{label:?} missing");
        }
        let rip = std::fs::read_to_string(&files[1]).unwrap();
        assert!(rip.contains("distant-1x1 B"));
        // The constant-speed run has its own plot, not a throughput bar.
        assert!(!rip.contains("NxN A"));
        // The failed run is left out.
        assert!(!rip.contains("1xN B"));
        let speed = std::fs::read_to_string(&files[2]).unwrap();
        assert!(speed.contains("NxN A rip") && speed.contains("95%"));
    }

    #[test]
    fn ticks_have_three_significant_digits() {
        assert_eq!(tick(0.30000000000000004), "0.3");
        assert_eq!(tick(0.001), "0.001");
        assert_eq!(tick(12.5), "12.5");
        assert_eq!(tick(40.0), "40");
        assert_eq!(tick(1234.0), "1234");
        assert_eq!(tick(0.0), "0");
    }

    #[test]
    fn progress_hidden_still_counts() {
        let p = Progress::new(3, false);
        p.start("distant-1x1 B rip");
        p.done();
        p.done();
        assert_eq!(p.bar.position(), 2);
        p.println("a line");
        p.finish();
    }
}
