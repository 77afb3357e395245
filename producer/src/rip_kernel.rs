//! `rip` as a producer [`Kernel`]: the job's `[params]` table and geometry become
//! [`RipParams`], the job's input image becomes a prepared [`Rip`], and each chunk's lines are
//! rendered once, all channels together (the ink limit couples them), straight into the chunk
//! buffers.
//!
//! The spec's geometry wins: the RIP's output is exactly `width × height` pixels of 8 bits per
//! channel. Parameters that would say otherwise (`dpi_x`, `sheet_width_in`, `channels`, ...) are
//! refused with an error naming them, so a job never silently renders something other than what
//! its streams were sized for.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

use spate_netlib::proto::{JobGeometry, Value};

use crate::kernel::{Kernel, KernelError, Output};
use crate::rip::{Rip, RipError, RipParams, ScreenKind};

/// The `[params]` key that names which input is the image when a job has several inputs.
pub const IMAGE_PARAM: &str = "image";

fn param(name: &str, problem: impl Into<String>) -> KernelError {
    KernelError::Param {
        name: name.to_string(),
        problem: problem.into(),
    }
}

fn uint(name: &str, v: &Value) -> Result<u32, KernelError> {
    match v.as_int() {
        Some(i) if (0..=i64::from(u32::MAX)).contains(&i) => Ok(i as u32),
        _ => Err(param(name, "must be a non-negative integer")),
    }
}

fn float(name: &str, v: &Value) -> Result<f64, KernelError> {
    v.as_float()
        .ok_or_else(|| param(name, "must be a number (inches)"))
}

fn curve(name: &str, v: &Value) -> Result<Vec<[u32; 2]>, KernelError> {
    let bad = || {
        param(
            name,
            "must be a list of [input, output] pairs of integers 0..=255",
        )
    };
    let list = v.as_list().ok_or_else(bad)?;
    list.iter()
        .map(|p| match p.as_list() {
            Some([a, b]) => Ok([uint(name, a)?, uint(name, b)?]),
            _ => Err(bad()),
        })
        .collect()
}

/// The parameters a job's `[params]` table gives explicitly (every key optional).
fn parse_table(params: &Value) -> Result<(RipParams, Given), KernelError> {
    let table = match params {
        Value::Table(t) => t,
        _ => return Err(param("params", "must be a table")),
    };
    let mut p = RipParams::default();
    let mut given = Given::default();
    for (key, v) in table {
        let k = key.as_str();
        match k {
            "sheet_width_in" => {
                p.sheet_width_in = float(k, v)?;
                given.sheet_width = true;
            }
            "sheet_height_in" => {
                p.sheet_height_in = float(k, v)?;
                given.sheet_height = true;
            }
            "dpi_x" => {
                p.dpi_x = uint(k, v)?;
                given.dpi_x = true;
            }
            "dpi_y" => {
                p.dpi_y = uint(k, v)?;
                given.dpi_y = true;
            }
            "channels" => {
                let list = v
                    .as_list()
                    .ok_or_else(|| param(k, "must be a list of channel names (C, M, Y, K)"))?;
                p.channels = list
                    .iter()
                    .map(|c| {
                        c.as_str()
                            .map(str::to_string)
                            .ok_or_else(|| param(k, "must be a list of channel names (C, M, Y, K)"))
                    })
                    .collect::<Result<_, _>>()?;
                given.channels = true;
            }
            "curves" => {
                let Value::Table(t) = v else {
                    return Err(param(k, "must be a table: channel = [[in, out], ...]"));
                };
                p.curves = t
                    .iter()
                    .map(|(ch, c)| Ok((ch.clone(), curve(&format!("curves.{ch}"), c)?)))
                    .collect::<Result<BTreeMap<_, _>, KernelError>>()?;
            }
            "ink_limit" => p.ink_limit = uint(k, v)?,
            "gcr" => p.gcr = uint(k, v)?,
            "screen" => {
                p.screen = match v.as_str() {
                    Some("bayer") => ScreenKind::Bayer,
                    Some("blue_noise") => ScreenKind::BlueNoise,
                    _ => return Err(param(k, "must be \"bayer\" or \"blue_noise\"")),
                }
            }
            "screen_size" => p.screen_size = uint(k, v)?,
            "levels" => p.levels = uint(k, v)?,
            "threads" => {
                p.threads = uint(k, v)? as usize;
                given.threads = true;
            }
            IMAGE_PARAM => {
                given.image = Some(
                    v.as_str()
                        .ok_or_else(|| param(k, "must be the name of one of the job's inputs"))?
                        .to_string(),
                );
            }
            other => {
                return Err(param(
                    other,
                    "is not a rip parameter (known: sheet_width_in, sheet_height_in, dpi_x, \
                     dpi_y, channels, curves, ink_limit, gcr, screen, screen_size, levels, \
                     threads, image)",
                ));
            }
        }
    }
    Ok((p, given))
}

/// Which keys the table set explicitly.
#[derive(Debug, Default)]
struct Given {
    sheet_width: bool,
    sheet_height: bool,
    dpi_x: bool,
    dpi_y: bool,
    channels: bool,
    threads: bool,
    image: Option<String>,
}

/// The parameter a [`RipError`] is about, as the `[params]` table spells it.
fn rip_error_param(e: &RipError) -> &'static str {
    match e {
        RipError::ZeroDpi { param }
        | RipError::BadSheetSize { param, .. }
        | RipError::OutputSize { param, .. } => param,
        RipError::NoChannels
        | RipError::UnknownChannel { .. }
        | RipError::DuplicateChannel { .. } => "channels",
        RipError::CurveForUnknownChannel { .. }
        | RipError::DuplicateCurve { .. }
        | RipError::ToneCurveTooFewPoints { .. }
        | RipError::ToneCurveOutOfRange { .. }
        | RipError::ToneCurveNotMonotonic { .. } => "curves",
        RipError::InkLimitOutOfRange { .. } => "ink_limit",
        RipError::GcrOutOfRange { .. } => "gcr",
        RipError::ScreenSizeInvalid { .. } => "screen_size",
        RipError::LevelsOutOfRange { .. } => "levels",
        RipError::ThreadPool { .. } => "threads",
        RipError::UnreadableImage { .. } | RipError::UnsupportedImage { .. } => "inputs",
        _ => "params",
    }
}

/// Converts a [`RipError`] into a [`KernelError::Param`] naming the parameter.
pub fn param_error(e: RipError) -> KernelError {
    param(rip_error_param(&e), e.to_string())
}

/// Default ink channels for a channel count.
fn default_channels(n: u32) -> Option<Vec<String>> {
    let names: &[&str] = match n {
        1 => &["K"],
        3 => &["C", "M", "Y"],
        4 => &["C", "M", "Y", "K"],
        _ => return None,
    };
    Some(names.iter().map(|s| s.to_string()).collect())
}

/// Maps a job's `[params]` table and geometry onto [`RipParams`] whose output is exactly the
/// geometry's `width × height` pixels of 8 bits in `geometry.channels` channels.
///
/// The spec's geometry wins; a parameter that contradicts it is refused with an error naming
/// that parameter. `threads` (e.g. the producer's compute cores) overrides the table's
/// `threads` unless the table sets it; `None` and no table value mean 0 (all cores).
/// Returns the parameters and the input name the table picked with `image`, if any.
pub fn rip_params(
    params: &Value,
    geometry: &JobGeometry,
    threads: Option<usize>,
) -> Result<(RipParams, Option<String>), KernelError> {
    let (mut p, given) = parse_table(params)?;
    let Some(px) = geometry.pixels else {
        return Err(param(
            "sheet",
            "the rip kernel needs a pixel geometry: give sheet + dpi, or width + height, in \
             the job spec",
        ));
    };
    if px.bits != 8 {
        return Err(param(
            "bits",
            format!(
                "the rip kernel writes 8 bits per pixel, the spec asks for {}",
                px.bits
            ),
        ));
    }
    if px.height != geometry.lines || px.width != geometry.line_bytes {
        return Err(param(
            "line_bytes",
            format!(
                "the geometry's {} lines of {} bytes do not match its {}x{} pixels of 8 bits",
                geometry.lines, geometry.line_bytes, px.width, px.height
            ),
        ));
    }
    let max = crate::rip::MAX_DIM;
    if px.width == 0 || px.height == 0 || px.width > max || px.height > max {
        return Err(param(
            "sheet",
            format!(
                "{}x{} pixels: the rip kernel renders 1..={max} pixels each way",
                px.width, px.height
            ),
        ));
    }
    // Channels.
    if given.channels {
        if p.channels.len() as u64 != u64::from(geometry.channels) {
            return Err(param(
                "channels",
                format!(
                    "{} channel(s) listed but the job spec has channels = {}: list exactly \
                     that many or change the spec",
                    p.channels.len(),
                    geometry.channels
                ),
            ));
        }
    } else {
        p.channels = default_channels(geometry.channels).ok_or_else(|| {
            param(
                "channels",
                format!(
                    "the job spec has channels = {}: name them in [params] channels = [...] \
                     (C, M, Y, K)",
                    geometry.channels
                ),
            )
        })?;
    }
    // Resolution and sheet size, per axis.
    let spec_dpi = px.dpi;
    let axis = |pixels: u64,
                dpi: &mut u32,
                inches: &mut f64,
                dpi_given: bool,
                sheet_given: bool,
                spec: Option<u32>,
                dpi_name: &str,
                sheet_name: &str|
     -> Result<(), KernelError> {
        if let Some(d) = spec {
            if dpi_given && *dpi != d {
                return Err(param(
                    dpi_name,
                    format!(
                        "{} contradicts the job spec's dpi {d}: drop it or make them equal",
                        *dpi
                    ),
                ));
            }
            *dpi = d;
        }
        if *dpi == 0 {
            return Err(param(
                dpi_name,
                "is 0: give the resolution in dots per inch",
            ));
        }
        if sheet_given {
            let got = (*inches * f64::from(*dpi)).round();
            if !(got.is_finite() && got == pixels as f64) {
                return Err(param(
                    sheet_name,
                    format!(
                        "{} in at {} dpi gives {got} pixels but the job spec has {pixels}: drop \
                         it or make them agree",
                        *inches, *dpi
                    ),
                ));
            }
        }
        *inches = pixels as f64 / f64::from(*dpi);
        Ok(())
    };
    axis(
        px.width,
        &mut p.dpi_x,
        &mut p.sheet_width_in,
        given.dpi_x,
        given.sheet_width,
        spec_dpi.map(|d| d.0),
        "dpi_x",
        "sheet_width_in",
    )?;
    axis(
        px.height,
        &mut p.dpi_y,
        &mut p.sheet_height_in,
        given.dpi_y,
        given.sheet_height,
        spec_dpi.map(|d| d.1),
        "dpi_y",
        "sheet_height_in",
    )?;
    if !given.threads {
        p.threads = threads.unwrap_or(0);
    }
    Ok((p, given.image))
}

/// Picks the image among the job's inputs: the one `image` names, else the only one.
fn pick_image<'a>(
    named: Option<&str>,
    inputs: &'a HashMap<String, Vec<u8>>,
) -> Result<&'a [u8], KernelError> {
    if let Some(n) = named {
        return inputs.get(n).map(Vec::as_slice).ok_or_else(|| {
            param(
                IMAGE_PARAM,
                format!("{n:?} is not one of the job's inputs: add it to `inputs`"),
            )
        });
    }
    let mut it = inputs.values();
    match (it.next(), it.next()) {
        (Some(only), None) => Ok(only),
        (None, _) => Err(param(
            "inputs",
            "the rip kernel needs the input image: inputs = [\"image.png\"] in the job spec",
        )),
        (Some(_), Some(_)) => Err(param(
            IMAGE_PARAM,
            "the job has several inputs: name the image with [params] image = \"...\"",
        )),
    }
}

/// What preload would find wrong with a rip job, checked before it is admitted: its
/// parameters, and that its image is among the inputs and is an image (its header decodes);
/// `read` gives an input's bytes.
pub fn check_rip(
    params: &Value,
    geometry: &JobGeometry,
    inputs: &[String],
    read: &dyn Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<(), KernelError> {
    let (_, image) = rip_params(params, geometry, None)?;
    let name = match (image, inputs) {
        (Some(n), _) if inputs.contains(&n) => n,
        (Some(n), _) => {
            return Err(param(
                IMAGE_PARAM,
                format!("{n:?} is not one of the job's inputs: add it to `inputs`"),
            ));
        }
        (None, [only]) => only.clone(),
        (None, []) => {
            return Err(param(
                "inputs",
                "the rip kernel needs the input image: inputs = [\"image.png\"] in the job spec",
            ));
        }
        (None, _) => {
            return Err(param(
                IMAGE_PARAM,
                "the job has several inputs: name the image with [params] image = \"...\"",
            ));
        }
    };
    let bytes = read(&name).map_err(|e| param("inputs", format!("{name:?}: {e}")))?;
    image::ImageReader::new(std::io::Cursor::new(&bytes))
        .with_guessed_format()
        .map_err(|e| param("inputs", format!("{name:?}: {e}")))?
        .into_dimensions()
        .map_err(|e| {
            param(
                "inputs",
                format!("{name:?} is not an image the rip kernel reads (PNG, TIFF, JPEG): {e}"),
            )
        })?;
    Ok(())
}

/// Builds the [`Rip`] a job describes (see [`rip_params`]) and checks that its output is
/// exactly the geometry's.
pub fn build_rip(
    params: &Value,
    geometry: &JobGeometry,
    inputs: &HashMap<String, Vec<u8>>,
    threads: Option<usize>,
) -> Result<Rip, KernelError> {
    let (p, image) = rip_params(params, geometry, threads)?;
    let bytes = pick_image(image.as_deref(), inputs)?;
    let rip = Rip::new(p, bytes).map_err(param_error)?;
    let want = geometry.pixels.map(|px| (px.width, px.height));
    let got = (u64::from(rip.width()), u64::from(rip.height()));
    if want != Some(got) {
        return Err(param(
            "sheet",
            format!(
                "the RIP would render {}x{} pixels, the job spec asks for {want:?}",
                got.0, got.1
            ),
        ));
    }
    Ok(rip)
}

/// The `rip` kernel.
#[derive(Debug)]
pub struct RipKernel {
    rip: Rip,
}

impl RipKernel {
    /// Builds the kernel of a job (see [`build_rip`]).
    pub fn new(
        params: &Value,
        geometry: &JobGeometry,
        inputs: &HashMap<String, Vec<u8>>,
        threads: Option<usize>,
    ) -> Result<RipKernel, KernelError> {
        Ok(RipKernel {
            rip: build_rip(params, geometry, inputs, threads)?,
        })
    }

    /// The prepared RIP.
    pub fn rip(&self) -> &Rip {
        &self.rip
    }
}

impl Kernel for RipKernel {
    fn name(&self) -> &'static str {
        "rip"
    }

    fn compute(&self, lines: Range<u64>, outs: &mut [Output<'_>]) -> Result<(), KernelError> {
        let (Ok(start), Ok(end)) = (u32::try_from(lines.start), u32::try_from(lines.end)) else {
            return Err(KernelError::Shape(format!(
                "lines {}..{} are beyond the image",
                lines.start, lines.end
            )));
        };
        let mut bufs: Vec<&mut [u8]> = outs.iter_mut().map(|o| &mut *o.buf).collect();
        self.rip
            .render(start..end, &mut bufs)
            .map_err(|e| KernelError::Shape(e.to_string()))
    }
}
