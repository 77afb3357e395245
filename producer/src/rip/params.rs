//! The RIP's parameters (the job spec's `[params]` table) and their validation.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::RipError;

/// Largest output dimension (pixels per line or lines) the RIP accepts.
pub const MAX_DIM: u64 = 1 << 24;

/// One ink channel. The discriminant is the channel's identity (it picks the screen's offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Ink {
    /// Cyan.
    C = 0,
    /// Magenta.
    M = 1,
    /// Yellow.
    Y = 2,
    /// Black (key).
    K = 3,
}

impl Ink {
    /// All inks in the usual order.
    pub const ALL: [Ink; 4] = [Ink::C, Ink::M, Ink::Y, Ink::K];

    /// The channel's name as the parameters spell it ("C", "M", "Y", "K").
    pub fn name(self) -> &'static str {
        match self {
            Ink::C => "C",
            Ink::M => "M",
            Ink::Y => "Y",
            Ink::K => "K",
        }
    }

    /// Parses a channel name (case-insensitive).
    pub fn parse(name: &str) -> Result<Ink, RipError> {
        match name.trim().to_ascii_uppercase().as_str() {
            "C" => Ok(Ink::C),
            "M" => Ok(Ink::M),
            "Y" => Ok(Ink::Y),
            "K" => Ok(Ink::K),
            _ => Err(RipError::UnknownChannel {
                name: name.to_string(),
            }),
        }
    }

    /// The ink's colour on paper (for previews).
    pub fn tint(self) -> [u8; 3] {
        match self {
            Ink::C => [0, 174, 239],
            Ink::M => [236, 0, 140],
            Ink::Y => [255, 242, 0],
            Ink::K => [0, 0, 0],
        }
    }
}

impl fmt::Display for Ink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The threshold matrix used to screen continuous tone to drop levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScreenKind {
    /// Recursive Bayer (ordered dispersed-dot) matrix.
    #[default]
    Bayer,
    /// Blue-noise-like matrix built by void-and-cluster (deterministic, integer arithmetic).
    BlueNoise,
}

/// The reference jobs of DESIGN.md §8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefJob {
    /// 10 × 10 in at 300 dpi (3000 × 3000 px per channel).
    A,
    /// 40 × 40 in at 900 dpi (36000 × 36000 px per channel).
    B,
    /// 100 × 100 in at 1200 dpi (120000 × 120000 px per channel).
    C,
}

impl RefJob {
    /// Default parameters with this job's sheet size and resolution.
    pub fn params(self) -> RipParams {
        let (inches, dpi) = match self {
            RefJob::A => (10.0, 300),
            RefJob::B => (40.0, 900),
            RefJob::C => (100.0, 1200),
        };
        RipParams {
            sheet_width_in: inches,
            sheet_height_in: inches,
            dpi_x: dpi,
            dpi_y: dpi,
            ..RipParams::default()
        }
    }
}

/// Parameters of the RIP, as carried by a job spec's `[params]` table. Every field has a default.
///
/// ```toml
/// sheet_width_in = 40.0
/// sheet_height_in = 40.0
/// dpi_x = 900
/// dpi_y = 900
/// channels = ["C", "M", "Y", "K"]
/// ink_limit = 300
/// gcr = 100
/// screen = "bayer"
/// screen_size = 16
/// levels = 4
/// [curves]
/// K = [[0, 0], [128, 110], [255, 255]]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RipParams {
    /// Sheet width in inches (default 10).
    pub sheet_width_in: f64,
    /// Sheet height in inches (default 10).
    pub sheet_height_in: f64,
    /// Horizontal resolution in dots per inch (default 300).
    pub dpi_x: u32,
    /// Vertical resolution in dots per inch (default 300).
    pub dpi_y: u32,
    /// Output ink channels in stream order (default `["C", "M", "Y", "K"]`).
    pub channels: Vec<String>,
    /// Tone curve per channel name: control points `[input, output]`, both 0..=255, inputs
    /// strictly increasing, outputs non-decreasing; linear in between, flat outside. Channels
    /// without a curve use the identity.
    pub curves: BTreeMap<String, Vec<[u32; 2]>>,
    /// Total ink limit in percent of one channel's full coverage, summed over the output
    /// channels, 1..=400 (default 300).
    pub ink_limit: u32,
    /// Grey component replacement in percent, 0..=100 (default 100): how much of the common
    /// C/M/Y component of an RGB input goes to K.
    pub gcr: u32,
    /// Threshold matrix kind (default `bayer`).
    pub screen: ScreenKind,
    /// Threshold matrix side N, a power of two in 2..=256 (2..=64 for `blue_noise`) (default 16).
    pub screen_size: u32,
    /// Drop levels of the printer, 2 (binary) ..= 256 (default 4); output bytes are 0..levels.
    pub levels: u32,
    /// Threads used by `Rip::render`: 0 = rayon's global pool (all cores), else a pool of this
    /// many threads (default 0).
    pub threads: usize,
}

impl Default for RipParams {
    fn default() -> Self {
        RipParams {
            sheet_width_in: 10.0,
            sheet_height_in: 10.0,
            dpi_x: 300,
            dpi_y: 300,
            channels: Ink::ALL.iter().map(|i| i.name().to_string()).collect(),
            curves: BTreeMap::new(),
            ink_limit: 300,
            gcr: 100,
            screen: ScreenKind::Bayer,
            screen_size: 16,
            levels: 4,
            threads: 0,
        }
    }
}

/// Validated parameters in the form the pipeline uses.
#[derive(Debug, Clone)]
pub(crate) struct Checked {
    pub width: u32,
    pub height: u32,
    pub channels: Vec<Ink>,
    /// Tone curve LUT per output channel (same order as `channels`); `None` = identity.
    pub luts: Vec<Option<[u8; 256]>>,
    /// Ink limit in units of 0..=255 per channel.
    pub limit: u32,
    /// GCR weight 0..=256.
    pub gcr256: u16,
    pub screen: ScreenKind,
    pub screen_size: u32,
    pub levels: u32,
}

fn dim(param: &'static str, inches: f64, dpi: u32) -> Result<u32, RipError> {
    if !(inches.is_finite() && inches > 0.0) {
        return Err(RipError::BadSheetSize {
            param,
            value: inches,
        });
    }
    let px = (inches * f64::from(dpi)).round();
    if px < 1.0 || px > MAX_DIM as f64 {
        return Err(RipError::OutputSize {
            param,
            pixels: px,
            max: MAX_DIM,
        });
    }
    Ok(px as u32)
}

impl RipParams {
    /// Checks every parameter; the error names the first bad one.
    pub(crate) fn check(&self) -> Result<Checked, RipError> {
        if self.dpi_x == 0 {
            return Err(RipError::ZeroDpi { param: "dpi_x" });
        }
        if self.dpi_y == 0 {
            return Err(RipError::ZeroDpi { param: "dpi_y" });
        }
        let width = dim("sheet_width_in", self.sheet_width_in, self.dpi_x)?;
        let height = dim("sheet_height_in", self.sheet_height_in, self.dpi_y)?;
        if self.channels.is_empty() {
            return Err(RipError::NoChannels);
        }
        let mut channels = Vec::with_capacity(self.channels.len());
        for name in &self.channels {
            let ink = Ink::parse(name)?;
            if channels.contains(&ink) {
                return Err(RipError::DuplicateChannel { name: name.clone() });
            }
            channels.push(ink);
        }
        let mut luts = vec![None; channels.len()];
        for (name, points) in &self.curves {
            let ink = Ink::parse(name).map_err(|_| RipError::CurveForUnknownChannel {
                channel: name.clone(),
            })?;
            let Some(pos) = channels.iter().position(|&c| c == ink) else {
                return Err(RipError::CurveForUnknownChannel {
                    channel: name.clone(),
                });
            };
            if luts[pos].is_some() {
                return Err(RipError::DuplicateCurve {
                    channel: name.clone(),
                });
            }
            luts[pos] = Some(tone_lut(ink, points)?);
        }
        if !(1..=400).contains(&self.ink_limit) {
            return Err(RipError::InkLimitOutOfRange {
                value: self.ink_limit,
            });
        }
        if self.gcr > 100 {
            return Err(RipError::GcrOutOfRange { value: self.gcr });
        }
        let max_size = match self.screen {
            ScreenKind::Bayer => 256,
            ScreenKind::BlueNoise => 64,
        };
        if !(2..=max_size).contains(&self.screen_size) || !self.screen_size.is_power_of_two() {
            return Err(RipError::ScreenSizeInvalid {
                value: self.screen_size,
                max: max_size,
            });
        }
        if !(2..=256).contains(&self.levels) {
            return Err(RipError::LevelsOutOfRange { value: self.levels });
        }
        Ok(Checked {
            width,
            height,
            channels,
            luts,
            limit: (self.ink_limit * 255 + 50) / 100,
            gcr256: ((self.gcr * 256 + 50) / 100) as u16,
            screen: self.screen,
            screen_size: self.screen_size,
            levels: self.levels,
        })
    }
}

/// Builds the 256-entry LUT of a tone curve: linear interpolation between control points
/// (rounded half up), flat before the first and after the last point.
pub fn tone_lut(ink: Ink, points: &[[u32; 2]]) -> Result<[u8; 256], RipError> {
    let channel = ink.name();
    if points.len() < 2 {
        return Err(RipError::ToneCurveTooFewPoints {
            channel,
            points: points.len(),
        });
    }
    for p in points {
        for &v in p {
            if v > 255 {
                return Err(RipError::ToneCurveOutOfRange { channel, value: v });
            }
        }
    }
    for w in points.windows(2) {
        if w[1][0] <= w[0][0] || w[1][1] < w[0][1] {
            return Err(RipError::ToneCurveNotMonotonic { channel });
        }
    }
    let mut lut = [0u8; 256];
    let first = points[0];
    let last = points[points.len() - 1];
    for (i, out) in lut.iter_mut().enumerate() {
        let x = i as u32;
        let v = if x <= first[0] {
            first[1]
        } else if x >= last[0] {
            last[1]
        } else {
            // x lies strictly inside one segment [x0, x1).
            let seg = points
                .windows(2)
                .find(|w| x >= w[0][0] && x < w[1][0])
                .map_or([first, last], |w| [w[0], w[1]]);
            let ([x0, y0], [x1, y1]) = (seg[0], seg[1]);
            let (dx, dy) = (x1 - x0, y1 - y0);
            y0 + (dy * (x - x0) * 2 + dx) / (2 * dx)
        };
        *out = v as u8;
    }
    Ok(lut)
}
