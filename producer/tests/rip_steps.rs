//! The RIP's steps against small hand-checked images.

use std::io::Cursor;

use spate_producer::rip::{Ink, Rip, RipError, RipParams, ScreenKind, screen, tone_lut};

fn png_rgb(w: u32, h: u32, px: &[[u8; 3]]) -> Vec<u8> {
    let raw: Vec<u8> = px.iter().flatten().copied().collect();
    let img = image::RgbImage::from_raw(w, h, raw).unwrap();
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn png_grey(w: u32, h: u32, px: &[u8]) -> Vec<u8> {
    let img = image::GrayImage::from_raw(w, h, px.to_vec()).unwrap();
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn tiff_cmyk(w: u32, h: u32, px: &[[u8; 4]]) -> Vec<u8> {
    let raw: Vec<u8> = px.iter().flatten().copied().collect();
    let mut out = Cursor::new(Vec::new());
    let mut enc = tiff::encoder::TiffEncoder::new(&mut out).unwrap();
    enc.write_image::<tiff::encoder::colortype::CMYK8>(w, h, &raw)
        .unwrap();
    out.into_inner()
}

/// Parameters that output exactly `w × h` pixels (1 dpi) with an identity screen
/// (256 levels: level = value) so that the colour steps can be read back.
fn exact(w: u32, h: u32, channels: &[&str]) -> RipParams {
    RipParams {
        sheet_width_in: f64::from(w),
        sheet_height_in: f64::from(h),
        dpi_x: 1,
        dpi_y: 1,
        channels: channels.iter().map(|s| s.to_string()).collect(),
        levels: 256,
        ink_limit: 400,
        threads: 1,
        ..RipParams::default()
    }
}

/// Per pixel, the values of every channel.
fn pixels(rip: &Rip) -> Vec<Vec<u8>> {
    let out = rip.render_to_vecs(0..rip.height()).unwrap();
    (0..out[0].len())
        .map(|i| out.iter().map(|c| c[i]).collect())
        .collect()
}

#[test]
fn tone_curve_lut_values() {
    let id = tone_lut(Ink::C, &[[0, 0], [255, 255]]).unwrap();
    assert!(id.iter().enumerate().all(|(i, &v)| v as usize == i));

    let half = tone_lut(Ink::M, &[[0, 0], [128, 64], [255, 255]]).unwrap();
    // Segment 0..128 has slope 1/2, rounded half up.
    assert_eq!(&half[0..6], &[0, 1, 1, 2, 2, 3]);
    assert_eq!(half[64], 32);
    assert_eq!(half[127], 64); // 63.5 rounds up
    assert_eq!(half[128], 64);
    // Segment 128..255: 64 + 191 * (x - 128) / 127.
    assert_eq!(half[192], 64 + 96); // 96.25
    assert_eq!(half[200], 64 + 108); // 108.28
    assert_eq!(half[255], 255);

    // Flat outside the control points.
    let clip = tone_lut(Ink::K, &[[10, 20], [200, 220]]).unwrap();
    assert!(clip[..=10].iter().all(|&v| v == 20));
    assert!(clip[200..].iter().all(|&v| v == 220));
    assert_eq!(clip[105], 120);
}

#[test]
fn tone_curve_applies_per_channel() {
    let mut p = exact(2, 1, &["C", "M", "Y", "K"]);
    p.gcr = 0;
    p.curves
        .insert("M".into(), vec![[0, 0], [128, 64], [255, 255]]);
    // Grey 128 → C = M = Y = 127 (no GCR); the M curve maps 127 to 64.
    let rip = Rip::new(p, &png_rgb(2, 1, &[[128, 128, 128], [255, 0, 255]])).unwrap();
    assert_eq!(
        pixels(&rip),
        vec![vec![127, 64, 127, 0], vec![0, 255, 0, 0]]
    );
}

#[test]
fn separation_of_pure_colours() {
    let colours = [
        [255, 255, 255], // white
        [0, 255, 255],   // cyan
        [255, 0, 255],   // magenta
        [255, 255, 0],   // yellow
        [255, 0, 0],     // red
        [0, 0, 255],     // blue
        [0, 0, 0],       // black
        [128, 128, 128], // grey
    ];
    let png = png_rgb(8, 1, &colours);
    let rip = Rip::new(exact(8, 1, &["C", "M", "Y", "K"]), &png).unwrap();
    assert_eq!(
        pixels(&rip),
        vec![
            vec![0, 0, 0, 0],
            vec![255, 0, 0, 0],
            vec![0, 255, 0, 0],
            vec![0, 0, 255, 0],
            vec![0, 255, 255, 0],
            vec![255, 255, 0, 0],
            vec![0, 0, 0, 255], // full GCR: all black goes to K
            vec![0, 0, 0, 127],
        ]
    );

    // Half GCR: K = round(min * 128 / 256), subtracted from C, M, Y.
    let mut p = exact(8, 1, &["C", "M", "Y", "K"]);
    p.gcr = 50;
    let rip = Rip::new(p, &png).unwrap();
    let px = pixels(&rip);
    assert_eq!(px[6], vec![127, 127, 127, 128]);
    assert_eq!(px[7], vec![63, 63, 63, 64]);

    // Without K: plain complement. Only K: 255 - luma.
    let rip = Rip::new(exact(8, 1, &["Y", "C", "M"]), &png).unwrap();
    assert_eq!(pixels(&rip)[4], vec![255, 0, 255]);
    assert_eq!(pixels(&rip)[6], vec![255, 255, 255]);
    let rip = Rip::new(exact(8, 1, &["K"]), &png).unwrap();
    let k: Vec<u8> = pixels(&rip).into_iter().map(|p| p[0]).collect();
    // luma = (77 R + 150 G + 29 B + 128) >> 8
    assert_eq!(k, vec![0, 77, 149, 29, 178, 226, 255, 127]);

    // Grey input: K only, or process grey without K.
    let grey = png_grey(3, 1, &[0, 100, 255]);
    let rip = Rip::new(exact(3, 1, &["C", "M", "Y", "K"]), &grey).unwrap();
    assert_eq!(
        pixels(&rip),
        vec![vec![0, 0, 0, 255], vec![0, 0, 0, 155], vec![0, 0, 0, 0]]
    );
    let rip = Rip::new(exact(3, 1, &["C", "M"]), &grey).unwrap();
    assert_eq!(
        pixels(&rip),
        vec![vec![255, 255], vec![155, 155], vec![0, 0]]
    );

    // CMYK input passes through, channels picked by name.
    let cmyk = tiff_cmyk(2, 1, &[[10, 20, 30, 40], [200, 0, 50, 255]]);
    let rip = Rip::new(exact(2, 1, &["K", "C"]), &cmyk).unwrap();
    assert_eq!(pixels(&rip), vec![vec![40, 10], vec![255, 200]]);
}

#[test]
fn ink_limit_arithmetic() {
    // Black without GCR: C = M = Y = 255, sum 765 > 510 (200 %).
    let mut p = exact(2, 1, &["C", "M", "Y", "K"]);
    p.gcr = 0;
    p.ink_limit = 200;
    let rip = Rip::new(p, &png_rgb(2, 1, &[[0, 0, 0], [0, 255, 128]])).unwrap();
    let f = (510u32 << 16) / 765; // 43690
    let v = ((255 * f) >> 16) as u8;
    assert_eq!(v, 169);
    // The second pixel (C 255 + Y 127 = 382) is under the limit and unchanged.
    assert_eq!(pixels(&rip), vec![vec![v, v, v, 0], vec![255, 0, 127, 0]]);

    // CMYK 400 % limited to 300 % (765): factor 49152/65536 = 0.75 → 191 each.
    let mut p = exact(2, 1, &["C", "M", "Y", "K"]);
    p.ink_limit = 300;
    let cmyk = tiff_cmyk(2, 1, &[[255, 255, 255, 255], [255, 200, 100, 50]]);
    let rip = Rip::new(p.clone(), &cmyk).unwrap();
    let px = pixels(&rip);
    assert_eq!(px[0], vec![191, 191, 191, 191]);
    // 605: under the limit.
    assert_eq!(px[1], vec![255, 200, 100, 50]);

    // Uneven channels: 255 + 200 + 100 + 255 = 810 > 765: f = 765 * 65536 / 810 = 61895.
    let cmyk = tiff_cmyk(1, 1, &[[255, 200, 100, 255]]);
    let rip = Rip::new(
        exact(1, 1, &["C", "M", "Y", "K"]).clone_with_limit(300),
        &cmyk,
    )
    .unwrap();
    let f = (765u32 << 16) / 810;
    assert_eq!(f, 61895);
    let want: Vec<u8> = [255u32, 200, 100, 255]
        .iter()
        .map(|&v| ((v * f) >> 16) as u8)
        .collect();
    assert_eq!(want, vec![240, 188, 94, 240]);
    assert_eq!(pixels(&rip)[0], want);

    // The limit counts only the output channels, after the tone curves.
    let mut p = exact(1, 1, &["C", "M"]);
    p.ink_limit = 150; // 383
    p.curves.insert("C".into(), vec![[0, 0], [255, 128]]);
    let cmyk = tiff_cmyk(1, 1, &[[255, 255, 255, 255]]);
    let rip = Rip::new(p, &cmyk).unwrap();
    // C = 128, M = 255: sum 383 is exactly the limit: unchanged.
    assert_eq!(pixels(&rip)[0], vec![128, 255]);
}

trait WithLimit {
    fn clone_with_limit(&self, limit: u32) -> RipParams;
}
impl WithLimit for RipParams {
    fn clone_with_limit(&self, limit: u32) -> RipParams {
        RipParams {
            ink_limit: limit,
            ..self.clone()
        }
    }
}

#[test]
fn scaling_tiny_images_exactly() {
    // 2 × 1 grey [0, 255] onto 4 × 1: pixel centres at -0.25, 0.25, 0.75, 1.25 source px.
    let rip = Rip::new(exact(4, 1, &["K"]), &png_grey(2, 1, &[0, 255])).unwrap();
    let g: Vec<u8> = rip.render_to_vecs(0..1).unwrap()[0]
        .iter()
        .map(|k| 255 - k)
        .collect();
    assert_eq!(g, vec![0, 64, 191, 255]);

    // 2 × 2 onto 4 × 4: rows are scaled horizontally (rounded), then blended vertically.
    let rip = Rip::new(exact(4, 4, &["K"]), &png_grey(2, 2, &[0, 255, 255, 255])).unwrap();
    let g: Vec<u8> = rip.render_to_vecs(0..4).unwrap()[0]
        .iter()
        .map(|k| 255 - k)
        .collect();
    #[rustfmt::skip]
    let want = vec![
        0, 64, 191, 255,
        64, 112, 207, 255,
        191, 207, 239, 255,
        255, 255, 255, 255,
    ];
    assert_eq!(g, want);

    // Downscale 4 × 1 → 2 × 1: centres at 0.5 and 2.5 source px.
    let rip = Rip::new(exact(2, 1, &["K"]), &png_grey(4, 1, &[0, 100, 200, 250])).unwrap();
    let g: Vec<u8> = rip.render_to_vecs(0..1).unwrap()[0]
        .iter()
        .map(|k| 255 - k)
        .collect();
    assert_eq!(g, vec![50, 225]);

    // Non-integer ratio 3 → 2 onto 1 dpi × 0.5: sizes are rounded from inches × dpi.
    let p = RipParams {
        sheet_width_in: 1.5,
        sheet_height_in: 0.5,
        dpi_x: 2,
        dpi_y: 2,
        ..exact(1, 1, &["K"])
    };
    let rip = Rip::new(p, &png_grey(3, 1, &[0, 120, 240])).unwrap();
    assert_eq!((rip.width(), rip.height()), (3, 1));
    let g: Vec<u8> = rip.render_to_vecs(0..1).unwrap()[0]
        .iter()
        .map(|k| 255 - k)
        .collect();
    assert_eq!(g, vec![0, 120, 240]);
}

fn flat_grey(w: u32, h: u32, v: u8) -> Vec<u8> {
    png_grey(w, h, &vec![v; (w * h) as usize])
}

#[test]
fn screen_flat_half_grey_gives_half_the_drops() {
    // Grey 128 → K = 127; binary 16 × 16 Bayer: a drop where 127 > rank * 255 / 256,
    // i.e. for ranks 0..=127: exactly half of every 16 × 16 tile.
    let p = RipParams {
        levels: 2,
        screen_size: 16,
        ..exact(64, 32, &["K"])
    };
    let rip = Rip::new(p, &flat_grey(8, 8, 128)).unwrap();
    let k = &rip.render_to_vecs(0..32).unwrap()[0];
    assert!(k.iter().all(|&v| v <= 1));
    assert_eq!(k.iter().filter(|&&v| v == 1).count(), 64 * 32 / 2);
    // Each tile half full too (position-based: any 16 × 16 window).
    let tile: usize = (0..16)
        .map(|y| {
            k[(5 + y) * 64 + 7..(5 + y) * 64 + 23]
                .iter()
                .map(|&v| v as usize)
                .sum::<usize>()
        })
        .sum();
    assert_eq!(tile, 128);

    // Four levels: 127 * 3 = 381 = 255 + 126: level 2 where t >= 129 (ranks 0..=126), else 1.
    let p = RipParams {
        levels: 4,
        screen_size: 16,
        ..exact(32, 32, &["K"])
    };
    let rip = Rip::new(p, &flat_grey(4, 4, 128)).unwrap();
    let k = &rip.render_to_vecs(0..32).unwrap()[0];
    let count = |lv: u8| k.iter().filter(|&&v| v == lv).count();
    assert_eq!(
        (count(0), count(1), count(2), count(3)),
        (0, 129 * 4, 127 * 4, 0)
    );

    // Paper stays empty, solid ink is the top level, for every levels count.
    for levels in [2, 3, 4, 7, 16, 256] {
        for kind in [ScreenKind::Bayer, ScreenKind::BlueNoise] {
            let p = RipParams {
                levels,
                screen: kind,
                screen_size: 8,
                ..exact(16, 16, &["K"])
            };
            let white = Rip::new(p.clone(), &flat_grey(2, 2, 255)).unwrap();
            assert!(
                white.render_to_vecs(0..16).unwrap()[0]
                    .iter()
                    .all(|&v| v == 0)
            );
            let black = Rip::new(p.clone(), &flat_grey(2, 2, 0)).unwrap();
            let top = (levels - 1) as u8;
            assert!(
                black.render_to_vecs(0..16).unwrap()[0]
                    .iter()
                    .all(|&v| v == top)
            );
            // A gradient never leaves 0..levels and is monotonic in coverage.
            let ramp: Vec<u8> = (0..=255).collect();
            let r = Rip::new(
                RipParams {
                    ..exact(256, 16, &["K"])
                }
                .with(levels, kind),
                &png_grey(256, 1, &ramp),
            )
            .unwrap();
            let out = &r.render_to_vecs(0..16).unwrap()[0];
            assert!(out.iter().all(|&v| u32::from(v) < levels));
        }
    }
}

trait With {
    fn with(self, levels: u32, kind: ScreenKind) -> RipParams;
}
impl With for RipParams {
    fn with(self, levels: u32, kind: ScreenKind) -> RipParams {
        RipParams {
            levels,
            screen: kind,
            screen_size: 8,
            ..self
        }
    }
}

#[test]
fn screen_matrices_are_permutations() {
    for n in [2u32, 4, 8, 16, 32, 64] {
        for kind in [ScreenKind::Bayer, ScreenKind::BlueNoise] {
            let mut r = screen::ranks(kind, n);
            r.sort_unstable();
            assert_eq!(r, (0..n * n).collect::<Vec<_>>(), "{kind:?} {n}");
        }
    }
    assert_eq!(screen::bayer(2), vec![0, 2, 3, 1]);
    assert_eq!(
        screen::bayer(4),
        vec![0, 8, 2, 10, 12, 4, 14, 6, 3, 11, 1, 9, 15, 7, 13, 5]
    );
    // Thresholds: 254 - floor(rank * 255 / N²).
    assert_eq!(screen::thresholds(&[0, 2, 3, 1]), vec![254, 127, 63, 191]);
    // The level rule.
    assert_eq!(screen::level(0, 254, 3), 0);
    assert_eq!(screen::level(255, 0, 3), 3);
    assert_eq!(screen::level(127, 129, 3), 2);
    assert_eq!(screen::level(127, 128, 3), 1);
}

#[test]
fn inks_use_different_screen_offsets() {
    // Grey 128 in CMY without K: the three channels carry the same value but are screened
    // with different matrix offsets, so they do not print on the same pattern.
    let p = RipParams {
        levels: 2,
        ..exact(16, 16, &["C", "M", "Y"])
    };
    let rip = Rip::new(p, &flat_grey(2, 2, 128)).unwrap();
    let out = rip.render_to_vecs(0..16).unwrap();
    assert_ne!(out[0], out[1]);
    assert_ne!(out[1], out[2]);
    for c in &out {
        assert_eq!(c.iter().filter(|&&v| v == 1).count(), 128);
    }
}

#[test]
fn render_checks_its_arguments() {
    let rip = Rip::new(exact(4, 3, &["C", "K"]), &flat_grey(2, 2, 9)).unwrap();
    let mut a = vec![0u8; 8];
    let mut b = vec![0u8; 8];
    assert!(matches!(
        rip.render(2..4, &mut [&mut a, &mut b]),
        Err(RipError::LinesOutOfRange {
            start: 2,
            end: 4,
            height: 3
        })
    ));
    assert!(matches!(
        rip.render(0..2, &mut [&mut a]),
        Err(RipError::OutputCount {
            expected: 2,
            got: 1
        })
    ));
    let mut short = vec![0u8; 7];
    assert!(matches!(
        rip.render(1..3, &mut [&mut a, &mut short]),
        Err(RipError::OutputLength {
            channel: 1,
            expected: 8,
            got: 7
        })
    ));
    assert!(rip.render(1..3, &mut [&mut a, &mut b]).is_ok());
    assert_eq!(rip.channels(), &[Ink::C, Ink::K]);
    assert_eq!((rip.width(), rip.height(), rip.line_bytes()), (4, 3, 4));
}
