//! The RIP (raster image processor) of the digital inkjet printing use case (DESIGN.md §8):
//! one input image becomes one screened 8-bit stream per ink channel.
//!
//! Steps, per output line (everything integer, so any chunking gives the same bytes):
//! 1. **scale**: bilinear, fixed point (8-bit weights). Output pixel centre `o + 0.5` maps to
//!    source coordinate `(o + 0.5) * src / out - 0.5` (clamped at the edges), quantised to
//!    1/256 of a pixel. Source rows are first scaled horizontally (rounded to 8 bits; cached,
//!    as neighbouring lines share them), then blended vertically (rounded to 8 bits).
//! 2. **separate**: RGB → C, M, Y = 255 − R, G, B, then grey component replacement
//!    `K = round(min(C, M, Y) * gcr)` subtracted from C, M, Y (no K channel: gcr = 0; only K:
//!    K = 255 − luma, luma = (77 R + 150 G + 29 B + 128) >> 8). Grey → K = 255 − grey (or
//!    C = M = Y = 255 − grey without a K channel). CMYK → passed through.
//! 3. **linearize**: each output channel through its tone curve's 256-entry LUT.
//! 4. **limit**: when the sum over the output channels exceeds the ink limit L (in 0..=255
//!    units: `round(ink_limit% * 255 / 100)`), every channel v becomes
//!    `(v * floor(L * 65536 / sum)) >> 16`.
//! 5. **screen**: ordered threshold matrix, position-based (see [`screen`]), to drop levels.
//! 6. **arrange**: one output per channel, one byte (the drop level) per pixel, line by line.

mod decode;
mod params;
mod preview;
pub mod screen;
mod testimage;

use std::ops::Range;
use std::sync::Arc;

use rayon::prelude::*;

pub use decode::{Source, SourceKind, decode};
pub use params::{Ink, MAX_DIM, RefJob, RipParams, ScreenKind, tone_lut};
pub use preview::preview;
pub use testimage::{test_image_png, test_image_rgb, write_test_image};

/// Pixels processed per block inside a line (a multiple of every screen size).
pub const BLOCK: usize = 1024;

/// Fewest lines a parallel piece of a render gets (see `Rip::render`).
pub const MIN_PIECE_LINES: usize = 16;

/// Everything that can go wrong building or running the RIP. Parameter errors name the
/// parameter as the job spec's `[params]` table spells it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RipError {
    /// A resolution of zero.
    #[error("{param} is 0: give the resolution in dots per inch (e.g. 300, 900, 1200)")]
    ZeroDpi {
        /// `dpi_x` or `dpi_y`.
        param: &'static str,
    },
    /// A sheet size that is not a positive finite number of inches.
    #[error("{param} = {value} is not a sheet size: give a positive number of inches")]
    BadSheetSize {
        /// `sheet_width_in` or `sheet_height_in`.
        param: &'static str,
        /// The value given.
        value: f64,
    },
    /// Sheet size × resolution gives too few or too many pixels.
    #[error("{param} × dpi gives {pixels} pixels: it must give 1..={max}")]
    OutputSize {
        /// `sheet_width_in` or `sheet_height_in`.
        param: &'static str,
        /// The resulting pixel count.
        pixels: f64,
        /// The largest allowed.
        max: u64,
    },
    /// An empty channel list.
    #[error("channels is empty: name at least one of C, M, Y, K")]
    NoChannels,
    /// A channel name that is not C, M, Y or K.
    #[error("channels: unknown channel {name:?}: use C, M, Y or K")]
    UnknownChannel {
        /// The name given.
        name: String,
    },
    /// A channel named twice.
    #[error("channels: {name:?} is listed twice")]
    DuplicateChannel {
        /// The name given.
        name: String,
    },
    /// A tone curve for a channel that is not output.
    #[error("curves: {channel:?} is not one of the output channels")]
    CurveForUnknownChannel {
        /// The curve's key.
        channel: String,
    },
    /// Two tone curves for the same channel (names differing in case).
    #[error("curves: {channel:?} names a channel that already has a curve")]
    DuplicateCurve {
        /// The second curve's key.
        channel: String,
    },
    /// A tone curve with fewer than two points.
    #[error("curves.{channel}: {points} point(s) given: a tone curve needs at least 2")]
    ToneCurveTooFewPoints {
        /// The channel.
        channel: &'static str,
        /// Number of points given.
        points: usize,
    },
    /// A tone curve coordinate above 255.
    #[error("curves.{channel}: value {value} is out of range: inputs and outputs are 0..=255")]
    ToneCurveOutOfRange {
        /// The channel.
        channel: &'static str,
        /// The value.
        value: u32,
    },
    /// Tone curve inputs not strictly increasing or outputs decreasing.
    #[error(
        "curves.{channel}: not monotonic: inputs must strictly increase and outputs must not decrease"
    )]
    ToneCurveNotMonotonic {
        /// The channel.
        channel: &'static str,
    },
    /// `ink_limit` outside 1..=400.
    #[error("ink_limit = {value} is out of range: give 1..=400 (percent, summed over channels)")]
    InkLimitOutOfRange {
        /// The value given.
        value: u32,
    },
    /// `gcr` above 100.
    #[error("gcr = {value} is out of range: give 0..=100 (percent)")]
    GcrOutOfRange {
        /// The value given.
        value: u32,
    },
    /// `screen_size` not a power of two in range.
    #[error("screen_size = {value} is invalid: give a power of two in 2..={max} for this screen")]
    ScreenSizeInvalid {
        /// The value given.
        value: u32,
        /// Largest size for the chosen screen.
        max: u32,
    },
    /// `levels` outside 2..=256.
    #[error("levels = {value} is out of range: give 2 (binary) ..= 256 drop levels")]
    LevelsOutOfRange {
        /// The value given.
        value: u32,
    },
    /// A thread pool could not be built.
    #[error("threads: cannot start a pool of {threads} threads: {reason}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// Why.
        reason: String,
    },
    /// The input bytes are not a decodable PNG, TIFF or JPEG.
    #[error("input image is unreadable: {reason} (give a PNG, TIFF or JPEG file)")]
    UnreadableImage {
        /// The decoder's message.
        reason: String,
    },
    /// A decodable image of a kind the RIP does not handle.
    #[error("input image is not supported: {what}")]
    UnsupportedImage {
        /// What is not supported.
        what: String,
    },
    /// `render` asked for lines outside the image.
    #[error("lines {start}..{end} are not within the image's 0..{height} lines")]
    LinesOutOfRange {
        /// Range start.
        start: u32,
        /// Range end.
        end: u32,
        /// Image height.
        height: u32,
    },
    /// `render` got the wrong number of outputs.
    #[error("{got} output buffers given for {expected} channels")]
    OutputCount {
        /// Channels.
        expected: usize,
        /// Buffers given.
        got: usize,
    },
    /// `render` got an output buffer of the wrong length.
    #[error("output buffer of channel {channel} is {got} bytes: lines × width = {expected}")]
    OutputLength {
        /// Index of the channel.
        channel: usize,
        /// Needed length.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// `preview` was given inconsistent sizes.
    #[error("preview: {reason}")]
    Preview {
        /// What is wrong.
        reason: String,
    },
    /// Encoding a PNG or writing a file failed.
    #[error("cannot encode or write the image: {reason}")]
    Encode {
        /// Why.
        reason: String,
    },
}

/// How source pixels become the four ink slots (C, M, Y, K).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Separation {
    GreyToK,
    GreyToCmy,
    RgbGcr(u16),
    RgbCmy,
    RgbToK,
    Cmyk,
}

/// Per output column: the two source columns and the weight (0..=255) of the second.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: u32,
    i1: u32,
    w: u16,
}

/// Maps output coordinate `o` of `out` onto a source axis of `src` pixels.
fn tap(o: u32, out: u32, src: u32) -> Tap {
    let pos = ((2 * u64::from(o) + 1) * u64::from(src) * 256 / (2 * u64::from(out))) as i64 - 128;
    if pos < 0 {
        return Tap { i0: 0, i1: 0, w: 0 };
    }
    let i0 = (pos >> 8) as u32;
    if i0 + 1 >= src {
        let last = src - 1;
        return Tap {
            i0: last,
            i1: last,
            w: 0,
        };
    }
    Tap {
        i0,
        i1: i0 + 1,
        w: (pos & 255) as u16,
    }
}

/// A prepared RIP job: decoded source, validated parameters and precomputed tables.
/// `render` computes any range of output lines independently of any other range.
pub struct Rip {
    params: RipParams,
    width: u32,
    height: u32,
    channels: Vec<Ink>,
    levels: u32,
    src: Source,
    sep: Separation,
    cols: Vec<Tap>,
    luts: Vec<Option<[u8; 256]>>,
    limit: Option<u16>,
    recip: Vec<u32>,
    screen_n: u32,
    tiles: Vec<Vec<u8>>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl std::fmt::Debug for Rip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rip")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("channels", &self.channels)
            .field("source", &(self.src.kind, self.src.width, self.src.height))
            .field("params", &self.params)
            .finish()
    }
}

impl Rip {
    /// Validates `params`, decodes `image` (PNG, TIFF or JPEG bytes) and prepares the tables.
    pub fn new(params: RipParams, image: &[u8]) -> Result<Rip, RipError> {
        params.check()?;
        let src = decode(image)?;
        Rip::from_source(params, src)
    }

    /// Like [`Rip::new`] with an already decoded source.
    pub fn from_source(params: RipParams, src: Source) -> Result<Rip, RipError> {
        let c = params.check()?;
        let expect_planes = match src.kind {
            SourceKind::Grey => 1,
            SourceKind::Rgb => 3,
            SourceKind::Cmyk => 4,
        };
        let plane_len = src.width as usize * src.height as usize;
        if src.width == 0
            || src.height == 0
            || src.planes.len() != expect_planes
            || src.planes.iter().any(|p| p.len() != plane_len)
        {
            return Err(RipError::UnsupportedImage {
                what: format!(
                    "{:?} source of {}x{} with {} plane(s) of inconsistent size",
                    src.kind,
                    src.width,
                    src.height,
                    src.planes.len()
                ),
            });
        }
        let has = |i: Ink| c.channels.contains(&i);
        let has_cmy = has(Ink::C) || has(Ink::M) || has(Ink::Y);
        let sep = match src.kind {
            SourceKind::Grey if has(Ink::K) => Separation::GreyToK,
            SourceKind::Grey => Separation::GreyToCmy,
            SourceKind::Rgb if !has_cmy => Separation::RgbToK,
            SourceKind::Rgb if has(Ink::K) => Separation::RgbGcr(c.gcr256),
            SourceKind::Rgb => Separation::RgbCmy,
            SourceKind::Cmyk => Separation::Cmyk,
        };
        let cols = (0..c.width).map(|x| tap(x, c.width, src.width)).collect();
        let max_sum = 255 * c.channels.len() as u32;
        let limit = (c.limit < max_sum).then_some(c.limit as u16);
        let recip = match limit {
            Some(l) => (0..=max_sum)
                .map(|s| (u32::from(l) << 16) / s.max(1))
                .collect(),
            None => Vec::new(),
        };
        let thresholds = screen::thresholds(&screen::ranks(c.screen, c.screen_size));
        let tiles = c
            .channels
            .iter()
            .map(|&ink| screen::tiled(&thresholds, c.screen_size, ink, BLOCK))
            .collect();
        let mut rip = Rip {
            width: c.width,
            height: c.height,
            channels: c.channels,
            levels: c.levels,
            src,
            sep,
            cols,
            luts: c.luts,
            limit,
            recip,
            screen_n: c.screen_size,
            tiles,
            pool: None,
            params,
        };
        rip.set_threads(rip.params.threads)?;
        Ok(rip)
    }

    /// Uses `threads` threads in `render` (0 = rayon's global pool, i.e. all cores).
    pub fn set_threads(&mut self, threads: usize) -> Result<(), RipError> {
        self.pool = if threads == 0 {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .thread_name(|i| format!("rip-{i}"))
                .build()
                .map_err(|e| RipError::ThreadPool {
                    threads,
                    reason: e.to_string(),
                })?;
            Some(Arc::new(pool))
        };
        Ok(())
    }

    /// Threads `render` uses.
    pub fn threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Output width in pixels (= bytes per line per channel).
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Output height in lines.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The output channels, in the order of `render`'s outputs.
    pub fn channels(&self) -> &[Ink] {
        &self.channels
    }

    /// Bytes of one line of one channel (= width).
    pub fn line_bytes(&self) -> usize {
        self.width as usize
    }

    /// Bytes of one whole channel (width × height).
    pub fn channel_bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }

    /// Drop levels: every output byte is below this.
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// The parameters the RIP was built with.
    pub fn params(&self) -> &RipParams {
        &self.params
    }

    /// The decoded source's colour model and size.
    pub fn source(&self) -> (SourceKind, u32, u32) {
        (self.src.kind, self.src.width, self.src.height)
    }

    /// Renders output lines `lines`; `outs[c]` receives channel c's bytes for those lines
    /// (`lines.len() × width` bytes, line after line). Uses the configured threads. The bytes
    /// are the same whatever the range split and thread count.
    pub fn render(&self, lines: Range<u32>, outs: &mut [&mut [u8]]) -> Result<(), RipError> {
        if lines.start > lines.end || lines.end > self.height {
            return Err(RipError::LinesOutOfRange {
                start: lines.start,
                end: lines.end,
                height: self.height,
            });
        }
        if outs.len() != self.channels.len() {
            return Err(RipError::OutputCount {
                expected: self.channels.len(),
                got: outs.len(),
            });
        }
        let w = self.width as usize;
        let n = (lines.end - lines.start) as usize;
        for (channel, o) in outs.iter().enumerate() {
            if o.len() != n * w {
                return Err(RipError::OutputLength {
                    channel,
                    expected: n * w,
                    got: o.len(),
                });
            }
        }
        if n == 0 {
            return Ok(());
        }
        let threads = self.threads();
        // Each piece starts by resampling its first source rows afresh, and waking pool
        // threads costs more than a few lines: small renders (a chunk of a few lines) stay on
        // this thread. Measured with `spate bench rip --lines 7` on 2 cores: split into 1-line
        // pieces, 2 threads made 424 MB/s where one made 1547.
        let pieces = (threads * 4).min(n / MIN_PIECE_LINES);
        if threads <= 1 || pieces <= 1 {
            let mut outs: Vec<&mut [u8]> = outs.iter_mut().map(|o| &mut **o).collect();
            self.render_piece(lines.start, n, &mut outs);
            return Ok(());
        }
        let per = n.div_ceil(pieces);
        let mut tasks: Vec<(u32, usize, Vec<&mut [u8]>)> = (0..n.div_ceil(per))
            .map(|p| {
                let first = p * per;
                let count = per.min(n - first);
                (lines.start + first as u32, count, Vec::new())
            })
            .collect();
        for o in outs.iter_mut() {
            for (task, chunk) in tasks.iter_mut().zip(o.chunks_mut(per * w)) {
                task.2.push(chunk);
            }
        }
        let run = move || {
            tasks
                .into_par_iter()
                .for_each(|(y0, count, mut outs)| self.render_piece(y0, count, &mut outs));
        };
        match &self.pool {
            Some(pool) => pool.install(run),
            None => run(),
        }
        Ok(())
    }

    /// Renders lines `lines` into freshly allocated buffers, one per channel.
    pub fn render_to_vecs(&self, lines: Range<u32>) -> Result<Vec<Vec<u8>>, RipError> {
        let n = lines.end.saturating_sub(lines.start) as usize;
        let mut bufs = vec![vec![0u8; n * self.width as usize]; self.channels.len()];
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        self.render(lines, &mut outs)?;
        Ok(bufs)
    }

    /// Sequentially renders `count` lines from `y0` into `outs` (one slice per channel).
    fn render_piece(&self, y0: u32, count: usize, outs: &mut [&mut [u8]]) {
        let w = self.width as usize;
        let mut s = Scratch::new(self.src.planes.len(), w);
        let lm1 = (self.levels - 1) as u16;
        let slots: Vec<usize> = self.channels.iter().map(|&i| i as usize).collect();
        for line in 0..count {
            let y = y0 + line as u32;
            let t = tap(y, self.height, self.src.height);
            let (a, b) = s.rows(self, t.i0, t.i1);
            let (wa, wb) = (256 - t.w, t.w);
            let trow = (y % self.screen_n) as usize * BLOCK;
            let Scratch { h, ink, sum, .. } = &mut s;
            let (h0, h1) = (&h[a], &h[b]);
            let mut xb = 0;
            while xb < w {
                let n = BLOCK.min(w - xb);
                separate(self.sep, h0, h1, xb, n, wa, wb, ink);
                for (&slot, lut) in slots.iter().zip(&self.luts) {
                    if let Some(lut) = lut {
                        for v in &mut ink[slot][..n] {
                            *v = lut[usize::from(*v)];
                        }
                    }
                }
                if let Some(limit) = self.limit {
                    limit_ink(ink, &slots, n, limit, &self.recip, sum);
                }
                let off = line * w + xb;
                for ((out, &slot), tile) in outs.iter_mut().zip(&slots).zip(&self.tiles) {
                    screen_block(
                        &ink[slot][..n],
                        &tile[trow..trow + n],
                        lm1,
                        &mut out[off..off + n],
                    );
                }
                xb += n;
            }
        }
    }

    /// Scales source row `r` horizontally into `dst` (one buffer per plane). The planes are
    /// packed as 16-bit lanes of a u64 per pixel, so that one pair of loads and two
    /// multiplications blend every plane of a column at once (no lane can overflow:
    /// 255 × 256 + 128 < 65536).
    fn hscale(&self, r: u32, dst: &mut [Vec<u8>], packed: &mut Vec<u64>) {
        let sw = self.src.width as usize;
        let start = r as usize * sw;
        packed.clear();
        packed.resize(sw + 1, 0);
        for (p, plane) in self.src.planes.iter().enumerate() {
            for (acc, &v) in packed.iter_mut().zip(&plane[start..start + sw]) {
                *acc |= u64::from(v) << (16 * p);
            }
        }
        // Column taps at the right edge have weight 0 on this duplicate.
        packed[sw] = packed[sw - 1];
        match dst {
            [g] => hblend::<1>(packed, &self.cols, [g]),
            [r, g, b] => hblend::<3>(packed, &self.cols, [r, g, b]),
            [c, m, y, k] => hblend::<4>(packed, &self.cols, [c, m, y, k]),
            _ => unreachable!("sources have 1, 3 or 4 planes"),
        }
    }
}

/// Horizontal blend of a packed source row into `N` planar rows.
#[inline(always)]
fn hblend<const N: usize>(packed: &[u64], cols: &[Tap], dst: [&mut Vec<u8>; N]) {
    const ROUND: u64 = 0x0080_0080_0080_0080;
    const MASK: u64 = 0x00FF_00FF_00FF_00FF;
    let mut dst: [&mut [u8]; N] = dst.map(|d| &mut d[..cols.len()]);
    for (x, t) in cols.iter().enumerate() {
        let i = t.i0 as usize;
        let (a, b) = (packed[i], packed[i + 1]);
        let w = u64::from(t.w);
        let v = ((a * (256 - w) + b * w + ROUND) >> 8) & MASK;
        for (p, d) in dst.iter_mut().enumerate() {
            d[x] = (v >> (16 * p)) as u8;
        }
    }
}

/// Per-piece working memory: two horizontally scaled source rows and one block of inks.
struct Scratch {
    h: [Vec<Vec<u8>>; 2],
    key: [Option<u32>; 2],
    packed: Vec<u64>,
    ink: [Vec<u8>; 4],
    sum: Vec<u16>,
}

impl Scratch {
    fn new(planes: usize, width: usize) -> Scratch {
        Scratch {
            h: [vec![vec![0; width]; planes], vec![vec![0; width]; planes]],
            key: [None, None],
            packed: Vec::new(),
            ink: std::array::from_fn(|_| vec![0; BLOCK]),
            sum: vec![0; BLOCK],
        }
    }

    /// Slots holding horizontally scaled source rows `r0` and `r1`, scaling them if needed.
    fn rows(&mut self, rip: &Rip, r0: u32, r1: u32) -> (usize, usize) {
        let find = |key: &[Option<u32>; 2], r| key.iter().position(|k| *k == Some(r));
        let s0 = match find(&self.key, r0) {
            Some(s) => s,
            None => {
                let s = if self.key[0] == Some(r1) { 1 } else { 0 };
                rip.hscale(r0, &mut self.h[s], &mut self.packed);
                self.key[s] = Some(r0);
                s
            }
        };
        let s1 = match find(&self.key, r1) {
            Some(s) => s,
            None => {
                let s = 1 - s0;
                rip.hscale(r1, &mut self.h[s], &mut self.packed);
                self.key[s] = Some(r1);
                s
            }
        };
        (s0, s1)
    }
}

#[inline(always)]
fn blend(a: u8, b: u8, wa: u16, wb: u16) -> u8 {
    ((u16::from(a) * wa + u16::from(b) * wb + 128) >> 8) as u8
}

/// Vertical blend of rows `h0`, `h1` at columns `xb..xb+n`, then separation into the ink slots.
#[allow(clippy::too_many_arguments)]
fn separate(
    sep: Separation,
    h0: &[Vec<u8>],
    h1: &[Vec<u8>],
    xb: usize,
    n: usize,
    wa: u16,
    wb: u16,
    ink: &mut [Vec<u8>; 4],
) {
    fn plane(h: &[Vec<u8>], i: usize, xb: usize, n: usize) -> &[u8] {
        &h[i][xb..xb + n]
    }
    let p = |h, i| plane(h, i, xb, n);
    let [ic, im, iy, ik] = ink;
    let (ic, im, iy, ik) = (&mut ic[..n], &mut im[..n], &mut iy[..n], &mut ik[..n]);
    match sep {
        Separation::GreyToK | Separation::GreyToCmy => {
            let (g0, g1) = (p(h0, 0), p(h1, 0));
            let out = if sep == Separation::GreyToK {
                ic.fill(0);
                im.fill(0);
                iy.fill(0);
                &mut *ik
            } else {
                ik.fill(0);
                &mut *ic
            };
            for j in 0..n {
                out[j] = 255 - blend(g0[j], g1[j], wa, wb);
            }
            if sep == Separation::GreyToCmy {
                im.copy_from_slice(ic);
                iy.copy_from_slice(ic);
            }
        }
        Separation::RgbGcr(gcr) => {
            let (r0, g0, b0) = (p(h0, 0), p(h0, 1), p(h0, 2));
            let (r1, g1, b1) = (p(h1, 0), p(h1, 1), p(h1, 2));
            for j in 0..n {
                let c = 255 - blend(r0[j], r1[j], wa, wb);
                let m = 255 - blend(g0[j], g1[j], wa, wb);
                let y = 255 - blend(b0[j], b1[j], wa, wb);
                let k = ((u16::from(c.min(m).min(y)) * gcr + 128) >> 8) as u8;
                ic[j] = c - k;
                im[j] = m - k;
                iy[j] = y - k;
                ik[j] = k;
            }
        }
        Separation::RgbCmy => {
            let (r0, g0, b0) = (p(h0, 0), p(h0, 1), p(h0, 2));
            let (r1, g1, b1) = (p(h1, 0), p(h1, 1), p(h1, 2));
            ik.fill(0);
            for j in 0..n {
                ic[j] = 255 - blend(r0[j], r1[j], wa, wb);
                im[j] = 255 - blend(g0[j], g1[j], wa, wb);
                iy[j] = 255 - blend(b0[j], b1[j], wa, wb);
            }
        }
        Separation::RgbToK => {
            let (r0, g0, b0) = (p(h0, 0), p(h0, 1), p(h0, 2));
            let (r1, g1, b1) = (p(h1, 0), p(h1, 1), p(h1, 2));
            ic.fill(0);
            im.fill(0);
            iy.fill(0);
            for j in 0..n {
                let r = u16::from(blend(r0[j], r1[j], wa, wb));
                let g = u16::from(blend(g0[j], g1[j], wa, wb));
                let b = u16::from(blend(b0[j], b1[j], wa, wb));
                ik[j] = 255 - ((77 * r + 150 * g + 29 * b + 128) >> 8) as u8;
            }
        }
        Separation::Cmyk => {
            for (i, out) in [ic, im, iy, ik].into_iter().enumerate() {
                let (a, b) = (p(h0, i), p(h1, i));
                for j in 0..n {
                    out[j] = blend(a[j], b[j], wa, wb);
                }
            }
        }
    }
}

/// Scales down the output slots of pixels whose total ink exceeds `limit`.
fn limit_ink(
    ink: &mut [Vec<u8>; 4],
    slots: &[usize],
    n: usize,
    limit: u16,
    recip: &[u32],
    sum: &mut [u16],
) {
    let sum = &mut sum[..n];
    sum.fill(0);
    for &s in slots {
        for (acc, &v) in sum.iter_mut().zip(&ink[s][..n]) {
            *acc += u16::from(v);
        }
    }
    let max = sum.iter().copied().max().unwrap_or(0);
    if max <= limit {
        return;
    }
    for (j, &total) in sum.iter().enumerate() {
        if total > limit {
            let f = recip[usize::from(total)];
            for &s in slots {
                let v = &mut ink[s][j];
                *v = ((u32::from(*v) * f) >> 16) as u8;
            }
        }
    }
}

/// Screens one block of one channel.
fn screen_block(ink: &[u8], thr: &[u8], lm1: u16, out: &mut [u8]) {
    for ((o, &v), &t) in out.iter_mut().zip(ink).zip(thr) {
        *o = screen::level(v, t, lm1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_maps_pixel_centres() {
        // 2 source pixels onto 4 output pixels.
        let t: Vec<(u32, u32, u16)> = (0..4)
            .map(|o| tap(o, 4, 2))
            .map(|t| (t.i0, t.i1, t.w))
            .collect();
        assert_eq!(t, vec![(0, 0, 0), (0, 1, 64), (0, 1, 192), (1, 1, 0)]);
        // Identity scale: every output pixel on its source pixel.
        for o in 0..7 {
            let t = tap(o, 7, 7);
            assert_eq!((t.i0, t.w), (o, 0));
        }
    }

    #[test]
    fn div255_is_exact() {
        for x in 0..=65279u16 {
            assert_eq!(screen::div255(x), x / 255, "x = {x}");
        }
    }
}
