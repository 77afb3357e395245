//! Decoding the input image into planar 8-bit source planes.
//!
//! PNG, TIFF and JPEG go through the `image` crate (default memory limits apply), which gives
//! grey or RGB: alpha is composited over white paper, 16-bit samples are reduced to 8 bits.
//! 8- and 16-bit CMYK TIFFs are read with the `tiff` crate and passed through as CMYK (the
//! `image` crate would convert them to RGB). CMYK JPEGs are converted to RGB by the JPEG
//! decoder (the `image` crate offers no CMYK output for JPEG) and then separated again.

use std::io::Cursor;

use super::RipError;

/// Colour model of the decoded source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// One plane: grey (255 = white).
    Grey,
    /// Three planes: R, G, B (255 = full light).
    Rgb,
    /// Four planes: C, M, Y, K (255 = full ink).
    Cmyk,
}

/// A decoded image: one plane per component, row-major, `width * height` bytes each.
#[derive(Debug, Clone)]
pub struct Source {
    /// Colour model.
    pub kind: SourceKind,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The planes (1, 3 or 4).
    pub planes: Vec<Vec<u8>>,
}

fn unreadable(e: impl std::fmt::Display) -> RipError {
    RipError::UnreadableImage {
        reason: e.to_string(),
    }
}

/// Decodes PNG, TIFF or JPEG bytes.
pub fn decode(bytes: &[u8]) -> Result<Source, RipError> {
    if (bytes.starts_with(b"II") || bytes.starts_with(b"MM"))
        && let Some(src) = decode_cmyk_tiff(bytes)?
    {
        return Ok(src);
    }
    let img = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(unreadable)?
        .decode()
        .map_err(unreadable)?;
    let (width, height) = (img.width(), img.height());
    if width == 0 || height == 0 {
        return Err(unreadable("the image has no pixels"));
    }
    let n = width as usize * height as usize;
    use image::ColorType as Ct;
    match img.color() {
        Ct::L8 | Ct::L16 | Ct::La8 | Ct::La16 => {
            let la = img.to_luma_alpha8();
            let mut g = Vec::with_capacity(n);
            g.extend(la.pixels().map(|p| over_white(p.0[0], p.0[1])));
            Ok(Source {
                kind: SourceKind::Grey,
                width,
                height,
                planes: vec![g],
            })
        }
        _ => {
            let rgba = img.to_rgba8();
            let mut planes: Vec<Vec<u8>> = (0..3).map(|_| Vec::with_capacity(n)).collect();
            for p in rgba.pixels() {
                let [r, g, b, a] = p.0;
                planes[0].push(over_white(r, a));
                planes[1].push(over_white(g, a));
                planes[2].push(over_white(b, a));
            }
            Ok(Source {
                kind: SourceKind::Rgb,
                width,
                height,
                planes,
            })
        }
    }
}

/// `v` with coverage `a` composited over white.
fn over_white(v: u8, a: u8) -> u8 {
    let (v, a) = (u32::from(v), u32::from(a));
    ((v * a + 255 * (255 - a) + 127) / 255) as u8
}

/// Reads a CMYK TIFF; `Ok(None)` when the TIFF is not CMYK (the `image` crate takes it).
fn decode_cmyk_tiff(bytes: &[u8]) -> Result<Option<Source>, RipError> {
    use tiff::decoder::{Decoder, DecodingResult};
    let Ok(mut dec) = Decoder::new(Cursor::new(bytes)) else {
        return Ok(None);
    };
    let Ok(tiff::ColorType::CMYK(bits)) = dec.colortype() else {
        return Ok(None);
    };
    let (width, height) = dec.dimensions().map_err(unreadable)?;
    if width == 0 || height == 0 {
        return Err(unreadable("the image has no pixels"));
    }
    let n = width as usize * height as usize;
    let data = dec.read_image().map_err(unreadable)?;
    let mut planes: Vec<Vec<u8>> = (0..4).map(|_| Vec::with_capacity(n)).collect();
    match (bits, data) {
        (8, DecodingResult::U8(v)) if v.len() >= 4 * n => {
            for px in v.chunks_exact(4).take(n) {
                for (p, &s) in planes.iter_mut().zip(px) {
                    p.push(s);
                }
            }
        }
        (16, DecodingResult::U16(v)) if v.len() >= 4 * n => {
            for px in v.chunks_exact(4).take(n) {
                for (p, &s) in planes.iter_mut().zip(px) {
                    p.push(((u32::from(s) * 255 + 32767) / 65535) as u8);
                }
            }
        }
        (bits, _) => {
            return Err(RipError::UnsupportedImage {
                what: format!("CMYK TIFF with {bits}-bit samples (8 and 16 are supported)"),
            });
        }
    }
    Ok(Some(Source {
        kind: SourceKind::Cmyk,
        width,
        height,
        planes,
    }))
}
