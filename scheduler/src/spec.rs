//! Job specs: the TOML a user submits, validated into a [`JobPlan`].
//!
//! Every invalid field is refused with a [`SpecError`] that names the field by its path
//! (`stream[2]`, `chunk`, `split.lines`, ...) and says what is wrong.
//!
//! # A full example
//!
//! ```toml
//! name = "poster"                  # optional, for humans (at most 128 characters)
//! kernel = "rip"                   # "pattern" | "null" | "rip"
//! inputs = ["poster.tiff"]         # files served by the scheduler's file service
//!
//! # Geometry: the output is `channels` ink channels, each `lines` lines of `line_bytes`
//! # bytes. Write exactly ONE of these forms:
//! #   size = "1GiB"                      bytes per channel (pattern/null only); lines of
//! #                                      `line_bytes` (default 64 KiB, or the whole size
//! #                                      when smaller); size must be a multiple of it
//! #   lines = 1000, line_bytes = "4KiB"  explicit
//! #   width = 36000, height = 36000      pixels: a line is `width` pixels of `bits` bits
//! #   sheet = "40x40in", dpi = 900       pixels = sheet length (in, cm or mm) x dpi, rounded;
//! #                                      sheet is "<width>x<height><unit>", width runs
//! #                                      across a line, height along the feed (the lines)
//! # The rip kernel needs one of the two pixel forms.
//! sheet = "40x40in"
//! dpi = 900                        # or "1200x600" (across x along)
//! bits = 8                         # bits per pixel per channel: 1, 2, 4, 8 or 16 (default 8)
//! channels = 4                     # default 4 for rip (CMYK), 1 for pattern/null
//!
//! # Split into streams: "channel" (default: one stream per channel) or { lines = N }: each
//! # channel cut into N contiguous line ranges, one stream each. Streams are numbered
//! # channel-major: stream = channel * N + range.
//! split = "channel"
//!
//! node = "printer"                 # default consumer node of every stream
//!
//! chunk = "200Mbit"                # optional: bytes of ONE channel per task, rounded down to
//!                                  # whole lines; or { lines = 100 }; else the policy picks
//! rate = "2.5Gbit"                 # optional: every stream is read at this rate (per second);
//!                                  # the scheduler admits the job only if it can feed it
//! latency = "2s"                   # optional chunk latency bound (task created -> released
//!                                  # in order); with a rate both must hold, else refused
//! policy = "tclo"                  # optional: "tclo" (default) | "load-balance"
//! on_reader_death = "abort"        # "abort" (default) | "keep"
//!
//! [[stream]]                       # optional, in stream order: overrides for stream 0, 1, ...
//! node = "printer-cyan"            # (TOML: tables come after the top-level keys)
//!
//! [params]                         # kernel parameters, passed through to producers
//! ink_limit = 2.8
//! ```
//!
//! A task computes one chunk: a line range `[l0, l1)` of ALL channels at once, and delivers one
//! [`Piece`] (stream, offset, len) per channel. Chunks never straddle a line range of
//! `split = { lines = N }`, so each chunk touches exactly one stream per channel.

mod units;

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;

pub use units::{UnitError, parse_duration, parse_rate, parse_size};

/// Most streams one job may have (channels x line ranges).
pub const MAX_STREAMS: u64 = 1024;
/// Most channels one job may have.
pub const MAX_CHANNELS: u64 = 64;
/// Largest spec text accepted.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// Default line length for `size = ...` when `line_bytes` is not given.
pub const DEFAULT_LINE_BYTES: u64 = 64 << 10;

/// A refused spec: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {kind}", spate_netlib::text::Quoted::new(field).bare())]
pub struct SpecError {
    /// Path of the offending field, e.g. `stream[2]`, `split.lines`, or `(spec)` for the whole.
    pub field: String,
    /// What is wrong.
    pub kind: SpecErrorKind,
}

/// What is wrong with a field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecErrorKind {
    /// Not valid TOML, or a value of the wrong type (the parser's message).
    #[error("{}", spate_netlib::text::Quoted::new(.0).bare().max(400))]
    Syntax(String),
    /// A field the spec does not have (typo?); the error's `field` is its path.
    #[error("no such field (known: {})", spate_netlib::text::Quoted::new(known).bare().max(400))]
    UnknownField {
        /// The field as written.
        name: String,
        /// The fields allowed at this place.
        known: String,
    },
    /// A required field is absent.
    #[error("missing: {hint}")]
    Missing {
        /// How to fix it.
        hint: String,
    },
    /// The kernel is not one we have.
    #[error(
        "unknown kernel {} (known: pattern, null, rip)",
        spate_netlib::text::quote(name)
    )]
    UnknownKernel {
        /// The kernel as written.
        name: String,
    },
    /// A value that must be positive is zero.
    #[error("{} must be > 0", spate_netlib::text::quote(value))]
    NotPositive {
        /// The value as written.
        value: String,
    },
    /// A size, rate or duration that could not be read.
    #[error("{}", spate_netlib::text::Quoted::new(&.0.to_string()).bare().max(400))]
    Unit(#[from] UnitError),
    /// Two fields that cannot be used together.
    #[error("cannot be used together with `{}`: {hint}", spate_netlib::text::Quoted::new(other).bare())]
    Conflict {
        /// The other field.
        other: String,
        /// How to fix it.
        hint: String,
    },
    /// Any other invalid value.
    #[error("{} is invalid: {}", spate_netlib::text::quote(value), spate_netlib::text::Quoted::new(reason).bare().max(400))]
    Invalid {
        /// The value as written.
        value: String,
        /// Why, and where possible how to fix it.
        reason: String,
    },
}

impl SpecError {
    fn new(field: impl Into<String>, kind: SpecErrorKind) -> Self {
        SpecError {
            field: field.into(),
            kind,
        }
    }
    fn invalid(field: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::new(
            field,
            SpecErrorKind::Invalid {
                value: value.to_string(),
                reason: reason.into(),
            },
        )
    }
    fn missing(field: impl Into<String>, hint: impl Into<String>) -> Self {
        Self::new(field, SpecErrorKind::Missing { hint: hint.into() })
    }
    fn conflict(field: &str, other: &str, hint: impl Into<String>) -> Self {
        Self::new(
            field,
            SpecErrorKind::Conflict {
                other: other.to_string(),
                hint: hint.into(),
            },
        )
    }
    fn not_positive(field: impl Into<String>, value: impl ToString) -> Self {
        Self::new(
            field,
            SpecErrorKind::NotPositive {
                value: value.to_string(),
            },
        )
    }
}

/// The kernel that computes the job's chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// A deterministic test pattern (checkable by readers).
    Pattern,
    /// Zeros (or whatever is in the buffer): measures the pipeline alone.
    Null,
    /// The raster image processor: input image to per-ink halftone bitmaps.
    Rip,
}

impl Kernel {
    /// The name used in specs.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Pattern => "pattern",
            Kernel::Null => "null",
            Kernel::Rip => "rip",
        }
    }
}

/// What happens to a job when a reader of one of its streams dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReaderDeath {
    /// Abort the job (default).
    #[default]
    Abort,
    /// Keep the job; a new reader may attach.
    Keep,
}

/// Pixel geometry (for `width`/`height` and `sheet`/`dpi` specs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pixels {
    /// Pixels across one line.
    pub width: u64,
    /// Pixels along the feed (= lines).
    pub height: u64,
    /// Bits per pixel per channel.
    pub bits: u32,
    /// Resolution (across, along) in dots per inch, when given.
    pub dpi: Option<(u32, u32)>,
}

/// The shape of the job's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Geometry {
    /// Ink channels.
    pub channels: u32,
    /// Lines per channel.
    pub lines: u64,
    /// Bytes per line.
    pub line_bytes: u64,
    /// The pixel geometry the lines come from, if the spec gave one.
    pub pixels: Option<Pixels>,
}

impl Geometry {
    /// Bytes of one channel.
    pub fn channel_bytes(&self) -> u64 {
        self.lines * self.line_bytes
    }
}

/// One output stream of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPlan {
    /// Index of the stream in the job (channel-major).
    pub index: u32,
    /// The channel it carries.
    pub channel: u32,
    /// The lines of that channel it carries.
    pub lines: Range<u64>,
    /// Name of the consumer node that receives it.
    pub node: String,
    /// Total length in bytes.
    pub len: u64,
}

/// A validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobPlan {
    /// Optional human name.
    pub name: Option<String>,
    /// The kernel.
    pub kernel: Kernel,
    /// Kernel parameters, unchecked here (the kernel validates them).
    pub params: toml::Table,
    /// Input file names, relative to the scheduler's file service root.
    pub inputs: Vec<String>,
    /// Shape of the output.
    pub geometry: Geometry,
    /// Line ranges each channel is cut into (1 for `split = "channel"`).
    pub parts: u32,
    /// The streams, in index order.
    pub streams: Vec<StreamPlan>,
    /// Chunk size in lines when the spec sets one.
    pub chunk_lines: Option<u64>,
    /// Constant read rate per stream, in bits per second.
    pub rate_bps: Option<u64>,
    /// Latency bound.
    pub latency: Option<Duration>,
    /// The scheduling policy asked for (None: the scheduler's default).
    pub policy: Option<String>,
    /// What to do when a reader dies.
    pub on_reader_death: ReaderDeath,
}

/// One stream's share of a chunk: `len` bytes at `offset` of stream `stream`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Piece {
    /// Stream index.
    pub stream: u32,
    /// Channel the bytes come from.
    pub channel: u32,
    /// Byte offset in the stream.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// One chunk: lines `[l0, l1)` of all channels, and where each channel's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Chunk index in the job.
    pub index: u64,
    /// Line range, in channel lines.
    pub lines: Range<u64>,
    /// One piece per channel.
    pub pieces: Vec<Piece>,
}

/// How a job is cut into chunks, once the chunk size is known.
///
/// Chunks are numbered part by part: part 0's chunks first. Inside a part, chunk `rank` r
/// covers lines `part_start + r * chunk_lines ..` (the last one may be shorter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    chunk_lines: u64,
    channels: u32,
    line_bytes: u64,
    /// Per part: its line range and the index of its first chunk.
    parts: Vec<(Range<u64>, u64)>,
    count: u64,
}

impl Layout {
    /// Lines per chunk (the last chunk of each part may be shorter).
    pub fn chunk_lines(&self) -> u64 {
        self.chunk_lines
    }
    /// Total chunks.
    pub fn chunk_count(&self) -> u64 {
        self.count
    }
    /// Number of parts (line ranges per channel).
    pub fn parts(&self) -> u32 {
        // At most MAX_STREAMS parts.
        self.parts.len() as u32
    }
    /// Chunks in part `part`.
    pub fn part_chunks(&self, part: u32) -> u64 {
        let p = part as usize;
        let next = self.parts.get(p + 1).map_or(self.count, |x| x.1);
        self.parts.get(p).map_or(0, |x| next - x.1)
    }
    /// `(part, rank in part)` of chunk `index`.
    pub fn locate(&self, index: u64) -> Option<(u32, u64)> {
        if index >= self.count {
            return None;
        }
        let p = self.parts.partition_point(|x| x.1 <= index) - 1;
        Some((p as u32, index - self.parts[p].1))
    }
    /// Chunk index of `(part, rank)`.
    pub fn index(&self, part: u32, rank: u64) -> Option<u64> {
        (rank < self.part_chunks(part)).then(|| self.parts[part as usize].1 + rank)
    }
    /// Bytes of one piece of chunk `(part, rank)`.
    pub fn piece_len(&self, part: u32, rank: u64) -> u64 {
        self.lines_of(part, rank)
            .map_or(0, |r| (r.end - r.start) * self.line_bytes)
    }
    /// Offset in its stream of the first byte of chunk `(part, rank)`.
    pub fn piece_offset(&self, rank: u64) -> u64 {
        rank * self.chunk_lines * self.line_bytes
    }
    /// Largest piece of any chunk.
    pub fn max_piece_bytes(&self) -> u64 {
        self.parts
            .iter()
            .map(|(r, _)| (r.end - r.start).min(self.chunk_lines) * self.line_bytes)
            .max()
            .unwrap_or(0)
    }
    fn lines_of(&self, part: u32, rank: u64) -> Option<Range<u64>> {
        let (range, _) = self.parts.get(part as usize)?;
        let l0 = range.start + rank * self.chunk_lines;
        (l0 < range.end).then(|| l0..(l0 + self.chunk_lines).min(range.end))
    }
    /// Chunk `index`: its lines and pieces.
    pub fn chunk(&self, index: u64) -> Option<Chunk> {
        let (part, rank) = self.locate(index)?;
        let lines = self.lines_of(part, rank)?;
        let offset = self.piece_offset(rank);
        let len = (lines.end - lines.start) * self.line_bytes;
        let parts = self.parts();
        let pieces = (0..self.channels)
            .map(|channel| Piece {
                stream: channel * parts + part,
                channel,
                offset,
                len,
            })
            .collect();
        Some(Chunk {
            index,
            lines,
            pieces,
        })
    }
}

impl JobPlan {
    /// Parses and validates a TOML spec.
    pub fn parse(text: &str) -> Result<JobPlan, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::invalid(
                "(spec)",
                format!("{} bytes", text.len()),
                format!("a spec may have at most {MAX_SPEC_BYTES} bytes"),
            ));
        }
        let raw = parse_raw(text)?;
        validate(raw)
    }

    /// Line range `[b_p, b_{p+1})` of part `part` in every channel.
    pub fn part_lines(&self, part: u32) -> Range<u64> {
        part_range(self.geometry.lines, self.parts, part)
    }

    /// Cuts the job into chunks of `chunk_lines` lines (clamped to `1..=lines`).
    pub fn layout(&self, chunk_lines: u64) -> Layout {
        let chunk_lines = chunk_lines.clamp(1, self.geometry.lines.max(1));
        let mut parts = Vec::with_capacity(self.parts as usize);
        let mut first = 0;
        for p in 0..self.parts {
            let r = self.part_lines(p);
            let n = (r.end - r.start).div_ceil(chunk_lines);
            parts.push((r, first));
            first += n;
        }
        Layout {
            chunk_lines,
            channels: self.geometry.channels,
            line_bytes: self.geometry.line_bytes,
            parts,
            count: first,
        }
    }

    /// Total output bytes, all streams.
    pub fn total_bytes(&self) -> u64 {
        self.streams.iter().map(|s| s.len).sum()
    }

    /// The kernel parameters as TOML text (for producers).
    pub fn params_toml(&self) -> String {
        toml::to_string(&self.params).unwrap_or_default()
    }
}

fn part_range(lines: u64, parts: u32, p: u32) -> Range<u64> {
    let at = |i: u32| (u128::from(lines) * u128::from(i) / u128::from(parts.max(1))) as u64;
    at(p)..at(p + 1)
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) form

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    kernel: Option<String>,
    #[serde(default)]
    params: toml::Table,
    #[serde(default)]
    inputs: Vec<String>,
    channels: Option<i64>,
    size: Option<toml::Value>,
    lines: Option<i64>,
    line_bytes: Option<toml::Value>,
    width: Option<i64>,
    height: Option<i64>,
    sheet: Option<String>,
    dpi: Option<toml::Value>,
    bits: Option<i64>,
    split: Option<toml::Value>,
    node: Option<String>,
    #[serde(default)]
    stream: Vec<RawStream>,
    chunk: Option<toml::Value>,
    rate: Option<toml::Value>,
    latency: Option<toml::Value>,
    policy: Option<String>,
    on_reader_death: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStream {
    node: Option<String>,
}

fn parse_raw(text: &str) -> Result<RawSpec, SpecError> {
    let de = toml::Deserializer::parse(text).map_err(|e| syntax_error(text, "(spec)", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        syntax_error(text, &path, &inner)
    })
}

fn syntax_error(text: &str, path: &str, e: &toml::de::Error) -> SpecError {
    let msg = e.message().trim().to_string();
    let field = if path.is_empty() || path == "." {
        "(spec)"
    } else {
        path
    };
    if let Some(rest) = msg.strip_prefix("unknown field `")
        && let Some((name, tail)) = rest.split_once('`')
    {
        let known = tail
            .trim_start_matches(", expected ")
            .trim_start_matches("one of ")
            .replace('`', "");
        // serde_path_to_error stops at the table holding the unknown key.
        // Depending on where the parser noticed, the key may already be in the path.
        let full = if field == "(spec)" || field == name {
            name.to_string()
        } else if field.ends_with(&format!(".{name}")) {
            field.to_string()
        } else {
            format!("{field}.{name}")
        };
        return SpecError::new(
            full,
            SpecErrorKind::UnknownField {
                name: name.to_string(),
                known,
            },
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let f = if field == "(spec)" {
            name.to_string()
        } else {
            format!("{field}.{name}")
        };
        return SpecError::missing(f, "this field is required");
    }
    let msg = msg.replace("expected i64", "expected an integer");
    let msg = match e.span() {
        Some(span) if field == "(spec)" => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{msg} (line {line}, column {col})")
        }
        _ => msg,
    };
    SpecError::new(field, SpecErrorKind::Syntax(msg))
}

// ---------------------------------------------------------------------------------------------
// Validation

fn positive(field: &str, v: i64) -> Result<u64, SpecError> {
    if v <= 0 {
        Err(SpecError::not_positive(field, v))
    } else {
        Ok(v as u64)
    }
}

/// A size written as an integer (bytes) or a string with a unit.
fn size_value(field: &str, v: &toml::Value) -> Result<u64, SpecError> {
    let n = match v {
        toml::Value::Integer(i) => positive(field, *i)?,
        toml::Value::String(s) => {
            parse_size(s).map_err(|e| SpecError::new(field, SpecErrorKind::Unit(e)))?
        }
        other => {
            return Err(SpecError::invalid(
                field,
                other,
                "write a size like \"4MiB\" or a number of bytes",
            ));
        }
    };
    if n == 0 {
        return Err(SpecError::not_positive(field, v_text(v)));
    }
    Ok(n)
}

fn v_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_name(field: &str, s: &str, what: &str, max: usize) -> Result<(), SpecError> {
    if s.is_empty() || s.len() > max || s.chars().any(|c| c.is_control()) {
        return Err(SpecError::invalid(
            field,
            s,
            format!("{what} must be 1 to {max} characters without control characters"),
        ));
    }
    Ok(())
}

fn check_node_name(field: &str, s: &str) -> Result<(), SpecError> {
    check_name(field, s, "a node name", 64)?;
    if s.chars().any(char::is_whitespace) {
        return Err(SpecError::invalid(field, s, "a node name has no spaces"));
    }
    Ok(())
}

fn check_input(field: &str, s: &str) -> Result<(), SpecError> {
    check_name(field, s, "an input name", 255)?;
    if s.starts_with('/') || s.split('/').any(|c| c == ".." || c.is_empty()) {
        return Err(SpecError::invalid(
            field,
            s,
            "an input is a relative path inside the file service root (no '/' at the start, no '..', no empty parts)",
        ));
    }
    Ok(())
}

/// Pixels (across, along) of a sheet like "10x10in", "210x297mm" or "8.5x11in" at `dpi`,
/// rounded to the nearest pixel.
fn sheet_pixels(sheet: &str, dpi: (u32, u32)) -> Result<(u64, u64), SpecError> {
    let bad = |why: &str| SpecError::invalid("sheet", sheet, why.to_string());
    let s = sheet.trim();
    let (unit, tenths_mm_per_unit) = if let Some(r) = s.strip_suffix("in") {
        (r, 254u128)
    } else if let Some(r) = s.strip_suffix("mm") {
        (r, 10)
    } else if let Some(r) = s.strip_suffix("cm") {
        (r, 100)
    } else {
        return Err(bad(
            "write <width>x<height><unit> with unit in, cm or mm, e.g. \"10x10in\"",
        ));
    };
    let (w, h) = unit
        .split_once(['x', 'X'])
        .ok_or_else(|| bad("write <width>x<height><unit>, e.g. \"10x10in\""))?;
    let px = |len: &str, dpi: u32| -> Result<u64, SpecError> {
        let len = len.trim();
        let (m, scale) =
            decimal(len).ok_or_else(|| bad("the sheet sides must be plain decimals"))?;
        // pixels = len[unit] * (tenths_mm_per_unit / 254) [in/unit] * dpi, rounded.
        let num = m * tenths_mm_per_unit * u128::from(dpi);
        let den = 254 * 10u128.pow(scale);
        let p = (num + den / 2) / den;
        if p == 0 {
            return Err(bad("the sheet is smaller than one pixel"));
        }
        u64::try_from(p).map_err(|_| bad("too large"))
    };
    Ok((px(w, dpi.0)?, px(h, dpi.1)?))
}

/// A plain decimal as (mantissa, scale).
fn decimal(s: &str) -> Option<(u128, u32)> {
    let (i, f) = s.split_once('.').unwrap_or((s, ""));
    if i.is_empty()
        || i.len() + f.len() > 18
        || !i.chars().chain(f.chars()).all(|c| c.is_ascii_digit())
        || (s.contains('.') && f.is_empty())
    {
        return None;
    }
    let m = format!("{i}{f}").parse().ok()?;
    Some((m, f.len() as u32))
}

fn dpi_value(v: &toml::Value) -> Result<(u32, u32), SpecError> {
    let one = |x: i64| -> Result<u32, SpecError> {
        if x <= 0 {
            return Err(SpecError::not_positive("dpi", x));
        }
        u32::try_from(x)
            .ok()
            .filter(|&d| d <= 100_000)
            .ok_or_else(|| SpecError::invalid("dpi", x, "at most 100000"))
    };
    match v {
        toml::Value::Integer(d) => {
            let d = one(*d)?;
            Ok((d, d))
        }
        toml::Value::String(s) => {
            let (a, b) = s.split_once(['x', 'X']).ok_or_else(|| {
                SpecError::invalid(
                    "dpi",
                    s,
                    "write a number (300) or \"<across>x<along>\" (\"1200x600\")",
                )
            })?;
            let p = |t: &str| {
                t.trim()
                    .parse::<i64>()
                    .map_err(|_| {
                        SpecError::invalid("dpi", s, "write a number (300) or \"<across>x<along>\"")
                    })
                    .and_then(one)
            };
            Ok((p(a)?, p(b)?))
        }
        other => Err(SpecError::invalid(
            "dpi",
            other,
            "write a number (300) or \"<across>x<along>\" (\"1200x600\")",
        )),
    }
}

fn validate(raw: RawSpec) -> Result<JobPlan, SpecError> {
    if let Some(n) = &raw.name {
        check_name("name", n, "a job name", 128)?;
    }
    let kernel = match raw.kernel.as_deref() {
        None => {
            return Err(SpecError::missing(
                "kernel",
                "set kernel = \"pattern\", \"null\" or \"rip\"",
            ));
        }
        Some("pattern") => Kernel::Pattern,
        Some("null") => Kernel::Null,
        Some("rip") => Kernel::Rip,
        Some(other) => {
            return Err(SpecError::new(
                "kernel",
                SpecErrorKind::UnknownKernel {
                    name: other.to_string(),
                },
            ));
        }
    };
    let params_len = toml::to_string(&raw.params).map(|s| s.len()).unwrap_or(0);
    if params_len > 64 << 10 {
        return Err(SpecError::invalid(
            "params",
            format!("{params_len} bytes"),
            "kernel parameters may take at most 64 KiB",
        ));
    }
    if raw.inputs.len() > 256 {
        return Err(SpecError::invalid(
            "inputs",
            raw.inputs.len(),
            "at most 256 inputs",
        ));
    }
    for (i, input) in raw.inputs.iter().enumerate() {
        let f = format!("inputs[{i}]");
        check_input(&f, input)?;
        if raw.inputs[..i].contains(input) {
            return Err(SpecError::invalid(f, input, "listed twice"));
        }
    }

    let geometry = geometry(&raw, kernel)?;

    // Split.
    let parts: u64 = match &raw.split {
        None => 1,
        Some(toml::Value::String(s)) if s == "channel" => 1,
        Some(toml::Value::Table(t)) => {
            if let Some(k) = t.keys().find(|k| *k != "lines") {
                return Err(SpecError::new(
                    format!("split.{k}"),
                    SpecErrorKind::UnknownField {
                        name: k.clone(),
                        known: "lines".into(),
                    },
                ));
            }
            match t.get("lines") {
                Some(toml::Value::Integer(n)) => positive("split.lines", *n)?,
                Some(other) => {
                    return Err(SpecError::invalid(
                        "split.lines",
                        other,
                        "write a whole number of line ranges",
                    ));
                }
                None => {
                    return Err(SpecError::missing(
                        "split.lines",
                        "write split = { lines = N }",
                    ));
                }
            }
        }
        Some(other) => {
            return Err(SpecError::invalid(
                "split",
                v_text(other),
                "write split = \"channel\" or split = { lines = N }",
            ));
        }
    };
    if parts > geometry.lines {
        return Err(SpecError::invalid(
            "split.lines",
            parts,
            format!(
                "more line ranges than the {} lines of a channel",
                geometry.lines
            ),
        ));
    }
    let n_streams = u64::from(geometry.channels) * parts;
    if n_streams > MAX_STREAMS {
        return Err(SpecError::invalid(
            "split.lines",
            parts,
            format!(
                "{} channels x {parts} ranges = {n_streams} streams, more than the {MAX_STREAMS} allowed",
                geometry.channels
            ),
        ));
    }
    // n_streams <= MAX_STREAMS fits u32.
    let parts = parts as u32;

    // Nodes.
    if let Some(n) = &raw.node {
        check_node_name("node", n)?;
    }
    if raw.stream.len() as u64 > n_streams {
        return Err(SpecError::invalid(
            format!("stream[{n_streams}]"),
            "[[stream]]",
            format!(
                "the job has only {n_streams} streams ({} channels x {parts} line ranges)",
                geometry.channels
            ),
        ));
    }
    let mut streams = Vec::with_capacity(n_streams as usize);
    for c in 0..geometry.channels {
        for p in 0..parts {
            let index = c * parts + p;
            let entry = raw.stream.get(index as usize);
            let node = match entry.and_then(|e| e.node.as_ref()) {
                Some(n) => {
                    check_node_name(&format!("stream[{index}].node"), n)?;
                    n.clone()
                }
                None => raw.node.clone().ok_or_else(|| {
                    SpecError::missing(
                        format!("stream[{index}].node"),
                        "name the consumer node: node = \"...\" at the top, or in a [[stream]] entry",
                    )
                })?,
            };
            let lines = part_range(geometry.lines, parts, p);
            let len = (lines.end - lines.start) * geometry.line_bytes;
            streams.push(StreamPlan {
                index,
                channel: c,
                lines,
                node,
                len,
            });
        }
    }

    // Chunk.
    let chunk_lines = match &raw.chunk {
        None => None,
        Some(toml::Value::Table(t)) => {
            if let Some(k) = t.keys().find(|k| *k != "lines") {
                return Err(SpecError::new(
                    format!("chunk.{k}"),
                    SpecErrorKind::UnknownField {
                        name: k.clone(),
                        known: "lines".into(),
                    },
                ));
            }
            match t.get("lines") {
                Some(toml::Value::Integer(n)) => Some(positive("chunk.lines", *n)?),
                Some(other) => {
                    return Err(SpecError::invalid(
                        "chunk.lines",
                        other,
                        "write a whole number of lines",
                    ));
                }
                None => {
                    return Err(SpecError::missing(
                        "chunk.lines",
                        "write chunk = { lines = N }",
                    ));
                }
            }
        }
        Some(v) => {
            let bytes = size_value("chunk", v)?;
            if bytes < geometry.line_bytes {
                return Err(SpecError::invalid(
                    "chunk",
                    v_text(v),
                    format!("smaller than one line ({} bytes)", geometry.line_bytes),
                ));
            }
            Some(bytes / geometry.line_bytes)
        }
    }
    .map(|l| l.min(geometry.lines));

    let rate_bps = match &raw.rate {
        None => None,
        Some(toml::Value::String(s)) => {
            let r = parse_rate(s).map_err(|e| SpecError::new("rate", SpecErrorKind::Unit(e)))?;
            if r == 0 {
                return Err(SpecError::not_positive("rate", s));
            }
            Some(r)
        }
        Some(other) => {
            return Err(SpecError::invalid(
                "rate",
                other,
                "write a rate with a unit, e.g. \"2.5Gbit\"",
            ));
        }
    };
    let latency = match &raw.latency {
        None => None,
        Some(toml::Value::String(s)) => {
            let d =
                parse_duration(s).map_err(|e| SpecError::new("latency", SpecErrorKind::Unit(e)))?;
            if d.is_zero() {
                return Err(SpecError::not_positive("latency", s));
            }
            Some(d)
        }
        Some(other) => {
            return Err(SpecError::invalid(
                "latency",
                other,
                "write a duration with a unit, e.g. \"500ms\"",
            ));
        }
    };
    if let Some(p) = &raw.policy
        && (p.is_empty() || p.len() > 32 || !p.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
    {
        return Err(SpecError::invalid(
            "policy",
            p,
            "write a policy name, e.g. \"tclo\" or \"load-balance\"",
        ));
    }
    let on_reader_death = match raw.on_reader_death.as_deref() {
        None | Some("abort") => ReaderDeath::Abort,
        Some("keep") => ReaderDeath::Keep,
        Some(other) => {
            return Err(SpecError::invalid(
                "on_reader_death",
                other,
                "write \"abort\" or \"keep\"",
            ));
        }
    };

    Ok(JobPlan {
        name: raw.name,
        kernel,
        params: raw.params,
        inputs: raw.inputs,
        geometry,
        parts,
        streams,
        chunk_lines,
        rate_bps,
        latency,
        policy: raw.policy,
        on_reader_death,
    })
}

fn geometry(raw: &RawSpec, kernel: Kernel) -> Result<Geometry, SpecError> {
    let channels = match raw.channels {
        None if kernel == Kernel::Rip => 4,
        None => 1,
        Some(c) => {
            let c = positive("channels", c)?;
            if c > MAX_CHANNELS {
                return Err(SpecError::invalid(
                    "channels",
                    c,
                    format!("at most {MAX_CHANNELS} channels"),
                ));
            }
            c as u32
        }
    };
    let pixel_form = raw.width.is_some() || raw.height.is_some() || raw.sheet.is_some();
    // Which form: report conflicts by the first field of each form present.
    let forms: Vec<&str> = [
        ("size", raw.size.is_some()),
        ("lines", raw.lines.is_some()),
        ("width", raw.width.is_some() || raw.height.is_some()),
        ("sheet", raw.sheet.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(n, _)| *n)
    .collect();
    if forms.len() > 1 {
        return Err(SpecError::conflict(
            forms[1],
            forms[0],
            "give the geometry one way: size, lines + line_bytes, width + height, or sheet + dpi",
        ));
    }
    if !pixel_form && let Some(b) = raw.bits {
        return Err(SpecError::invalid(
            "bits",
            b,
            "bits only go with width + height or sheet + dpi",
        ));
    }
    if pixel_form {
        if raw.line_bytes.is_some() {
            return Err(SpecError::conflict(
                "line_bytes",
                forms[0],
                "with a pixel geometry a line is width x bits; drop line_bytes",
            ));
        }
        let bits = match raw.bits {
            None => 8,
            Some(b @ (1 | 2 | 4 | 8 | 16)) => b as u32,
            Some(b) => {
                return Err(SpecError::invalid(
                    "bits",
                    b,
                    "bits per pixel must be 1, 2, 4, 8 or 16",
                ));
            }
        };
        let dpi = raw.dpi.as_ref().map(dpi_value).transpose()?;
        let (width, height) = if let Some(sheet) = &raw.sheet {
            let dpi = dpi.ok_or_else(|| SpecError::missing("dpi", "a sheet size needs dpi = N"))?;
            sheet_pixels(sheet, dpi)?
        } else {
            let w = raw
                .width
                .ok_or_else(|| SpecError::missing("width", "give width and height in pixels"))?;
            let h = raw
                .height
                .ok_or_else(|| SpecError::missing("height", "give width and height in pixels"))?;
            (positive("width", w)?, positive("height", h)?)
        };
        let line_bytes = width
            .checked_mul(u64::from(bits))
            .map(|b| b.div_ceil(8))
            .ok_or_else(|| SpecError::invalid("width", width, "too large"))?;
        check_total(channels, height, line_bytes)?;
        return Ok(Geometry {
            channels,
            lines: height,
            line_bytes,
            pixels: Some(Pixels {
                width,
                height,
                bits,
                dpi,
            }),
        });
    }
    if raw.dpi.is_some() {
        return Err(SpecError::invalid(
            "dpi",
            raw.dpi.as_ref().map(v_text).unwrap_or_default(),
            "dpi only goes with sheet = \"...\" or width + height",
        ));
    }
    if kernel == Kernel::Rip {
        let field = forms.first().copied().unwrap_or("sheet");
        return Err(SpecError::invalid(
            field,
            "rip",
            "the rip kernel needs a pixel geometry: sheet + dpi, or width + height",
        ));
    }
    let (lines, line_bytes) = if let Some(size) = &raw.size {
        let size = size_value("size", size)?;
        let line_bytes = match &raw.line_bytes {
            Some(v) => size_value("line_bytes", v)?,
            None => DEFAULT_LINE_BYTES.min(size),
        };
        if size % line_bytes != 0 {
            return Err(SpecError::invalid(
                "size",
                v_text(raw.size.as_ref().unwrap_or(&toml::Value::Integer(0))),
                format!(
                    "{size} bytes is not a whole number of {line_bytes}-byte lines: set line_bytes to a divisor"
                ),
            ));
        }
        (size / line_bytes, line_bytes)
    } else if let Some(lines) = raw.lines {
        let lines = positive("lines", lines)?;
        let line_bytes = match &raw.line_bytes {
            Some(v) => size_value("line_bytes", v)?,
            None => {
                return Err(SpecError::missing(
                    "line_bytes",
                    "lines needs line_bytes = ...",
                ));
            }
        };
        (lines, line_bytes)
    } else {
        return Err(SpecError::missing(
            "size",
            "give the output size: size = \"1GiB\", or lines + line_bytes",
        ));
    };
    check_total(channels, lines, line_bytes)?;
    Ok(Geometry {
        channels,
        lines,
        line_bytes,
        pixels: None,
    })
}

fn check_total(channels: u32, lines: u64, line_bytes: u64) -> Result<(), SpecError> {
    lines
        .checked_mul(line_bytes)
        .and_then(|b| b.checked_mul(u64::from(channels)))
        .map(|_| ())
        .ok_or_else(|| SpecError::invalid("lines", lines, "the output does not fit in 2^64 bytes"))
}
