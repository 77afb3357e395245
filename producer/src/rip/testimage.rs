//! A deterministic synthetic RGB test image (no downloads): a hue/brightness field, a grey
//! ramp, a grid of pure and mixed colour patches, concentric rings, fine lines and block
//! letters. Integer arithmetic only, so every machine makes the same pixels.

use std::io::Cursor;
use std::path::Path;

use image::{Rgb, RgbImage};

use super::RipError;

/// 5 × 7 glyphs (bit 4 = leftmost column) for the label.
const GLYPHS: &[(char, [u8; 7])] = &[
    ('S', [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E]),
    ('P', [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10]),
    ('A', [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11]),
    ('T', [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04]),
    ('E', [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F]),
    ('R', [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11]),
    ('I', [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E]),
    (' ', [0; 7]),
];

const LABEL: &str = "SPATE RIP";

/// Fully saturated colour of hue `h` in 0..1536 (six sectors of 256).
fn hue(h: u32) -> [u32; 3] {
    let f = h % 256;
    match (h / 256) % 6 {
        0 => [255, f, 0],
        1 => [255 - f, 255, 0],
        2 => [0, 255, f],
        3 => [0, 255 - f, 255],
        4 => [f, 0, 255],
        _ => [255, 0, 255 - f],
    }
}

/// The test image at `width × height` (both at least 1; 1200 × 1200 is the usual size).
pub fn test_image_rgb(width: u32, height: u32) -> RgbImage {
    let (w, h) = (width.max(1), height.max(1));
    let patches: [[u8; 3]; 16] = [
        [255, 255, 255],
        [0, 255, 255],
        [255, 0, 255],
        [255, 255, 0],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [0, 0, 0],
        [128, 128, 128],
        [64, 64, 64],
        [192, 192, 192],
        [128, 64, 32],
        [32, 96, 160],
        [200, 150, 120],
        [90, 160, 60],
        [20, 20, 40],
    ];
    let label_chars: Vec<[u8; 7]> = LABEL
        .chars()
        .map(|c| GLYPHS.iter().find(|g| g.0 == c).map_or([0; 7], |g| g.1))
        .collect();
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (u64::from(x), u64::from(y));
        let (w, h) = (u64::from(w), u64::from(h));
        let band = y * 100 / h;
        let px: [u32; 3] = if band < 25 {
            // Hue left to right, darkening towards the band's bottom.
            let c = hue((x * 1536 / w) as u32);
            let shade = 255 - (y * 100 / h * 255 / 25) as u32 * 3 / 4;
            c.map(|v| v * shade / 255)
        } else if band < 35 {
            let g = (x * 255 / (w - 1).max(1)) as u32;
            [g, g, g]
        } else if band < 75 {
            let col = (x * 8 / w) as usize;
            let row = ((y - h * 35 / 100) * 2 / (h * 40 / 100).max(1)).min(1) as usize;
            patches[row * 8 + col].map(u32::from)
        } else if x < w / 2 {
            // Concentric rings around the left half's centre, period ~h/40.
            let (cx, cy) = (w / 4, h * 875 / 1000);
            let dx = x.abs_diff(cx);
            let dy = y.abs_diff(cy);
            let r2 = dx * dx + dy * dy;
            let period = (h / 40).max(2);
            let ring = r2.isqrt() / period;
            if ring % 2 == 0 {
                [20, 40, 120]
            } else {
                [250, 240, 220]
            }
        } else {
            let (lx, ly) = (x - w / 2, y - h * 75 / 100);
            let (lw, lh) = (w - w / 2, h - h * 75 / 100);
            // Block letters across the top half of the area, fine lines below.
            let cell = (lw / (label_chars.len() as u64 * 6 + 2)).max(1);
            let text_top = lh / 8;
            if ly >= text_top && ly < text_top + 7 * cell && lx >= cell {
                let gx = (lx - cell) / cell;
                let gy = ((ly - text_top) / cell) as usize;
                let ch = (gx / 6) as usize;
                let col = gx % 6;
                let on =
                    ch < label_chars.len() && col < 5 && label_chars[ch][gy] & (0x10 >> col) != 0;
                if on { [0, 0, 0] } else { [255, 255, 255] }
            } else if ly >= lh / 2 {
                // 1-pixel lines with growing gaps; red and black alternate.
                let gap = 2 + (lx * 8 / lw.max(1));
                if lx % (gap * 2) == 0 {
                    [200, 0, 0]
                } else if (ly + lx / 3) % gap == 0 {
                    [0, 0, 0]
                } else {
                    [255, 255, 255]
                }
            } else {
                [255, 255, 255]
            }
        };
        Rgb(px.map(|v| v.min(255) as u8))
    })
}

/// The test image encoded as PNG bytes.
pub fn test_image_png(width: u32, height: u32) -> Result<Vec<u8>, RipError> {
    let mut png = Vec::new();
    test_image_rgb(width, height)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| RipError::Encode {
            reason: e.to_string(),
        })?;
    Ok(png)
}

/// Writes the test image to `path`; the extension picks the format (png, tif/tiff, jpg/jpeg).
pub fn write_test_image(path: &Path, width: u32, height: u32) -> Result<(), RipError> {
    test_image_rgb(width, height)
        .save(path)
        .map_err(|e| RipError::Encode {
            reason: format!("{}: {e}", path.display()),
        })
}
