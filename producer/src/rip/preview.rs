//! Preview of one screened channel stream as a small PNG (ink coverage on white paper).

use std::io::Cursor;

use super::{Ink, RipError};

/// Renders one channel's stream (`width × height` drop levels in 0..`levels`) as PNG bytes,
/// downscaled by `scale` (each preview pixel averages a `scale × scale` box). Coverage is
/// drawn on white paper: in grey when `ink` is `None`, else in the ink's colour.
pub fn preview(
    data: &[u8],
    width: u32,
    height: u32,
    scale: u32,
    levels: u32,
    ink: Option<Ink>,
) -> Result<Vec<u8>, RipError> {
    let bad = |reason: String| Err(RipError::Preview { reason });
    if width == 0 || height == 0 || scale == 0 {
        return bad(format!(
            "width {width}, height {height} and scale {scale} must all be positive"
        ));
    }
    if !(2..=256).contains(&levels) {
        return bad(format!("levels = {levels} is out of range 2..=256"));
    }
    let (w, h, s) = (width as usize, height as usize, scale as usize);
    if data.len() != w * h {
        return bad(format!(
            "the stream has {} bytes but width × height = {}",
            data.len(),
            w * h
        ));
    }
    let (pw, ph) = (w.div_ceil(s), h.div_ceil(s));
    let top = u64::from(levels - 1);
    let mut cover = vec![0u8; pw * ph];
    let mut acc = vec![0u64; pw];
    for py in 0..ph {
        acc.fill(0);
        let rows = s.min(h - py * s);
        for line in data[py * s * w..].chunks_exact(w).take(rows) {
            for (a, cell) in acc.iter_mut().zip(line.chunks(s)) {
                *a += cell.iter().map(|&v| u64::from(v).min(top)).sum::<u64>();
            }
        }
        for (px, &a) in acc.iter().enumerate() {
            let cols = s.min(w - px * s);
            let full = top * (rows * cols) as u64;
            cover[py * pw + px] = ((a * 255 + full / 2) / full) as u8;
        }
    }
    let mut png = Vec::new();
    let enc = |e: image::ImageError| RipError::Encode {
        reason: e.to_string(),
    };
    match ink {
        None => {
            let img: Vec<u8> = cover.iter().map(|&c| 255 - c).collect();
            image::GrayImage::from_raw(pw as u32, ph as u32, img)
                .ok_or_else(|| RipError::Encode {
                    reason: "preview buffer size".into(),
                })?
                .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(enc)?;
        }
        Some(ink) => {
            let tint = ink.tint();
            let mut img = Vec::with_capacity(pw * ph * 3);
            for &c in &cover {
                for &t in &tint {
                    let absorb = u32::from(255 - t) * u32::from(c);
                    img.push(255 - ((absorb + 127) / 255) as u8);
                }
            }
            image::RgbImage::from_raw(pw as u32, ph as u32, img)
                .ok_or_else(|| RipError::Encode {
                    reason: "preview buffer size".into(),
                })?
                .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
                .map_err(enc)?;
        }
    }
    Ok(png)
}
