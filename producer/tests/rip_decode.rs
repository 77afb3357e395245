//! Decoding PNG, TIFF (RGB and CMYK) and JPEG inputs generated here with the encoders.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat};
use spate_producer::rip::{Rip, RipParams, SourceKind, decode, test_image_rgb};

fn encode(img: &DynamicImage, fmt: ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), fmt).unwrap();
    out
}

fn params() -> RipParams {
    RipParams {
        sheet_width_in: 1.0,
        sheet_height_in: 1.0,
        dpi_x: 100,
        dpi_y: 80,
        threads: 1,
        ..RipParams::default()
    }
}

#[test]
fn png_tiff_and_jpeg_decode_to_the_same_pixels_as_the_image_crate() {
    let rgb = DynamicImage::ImageRgb8(test_image_rgb(64, 48));
    let png = encode(&rgb, ImageFormat::Png);
    let tif = encode(&rgb, ImageFormat::Tiff);
    let from_png = decode(&png).unwrap();
    assert_eq!(
        (from_png.kind, from_png.width, from_png.height),
        (SourceKind::Rgb, 64, 48)
    );
    let raw = rgb.to_rgb8();
    let r_plane: Vec<u8> = raw.pixels().map(|p| p.0[0]).collect();
    assert_eq!(from_png.planes[0], r_plane);
    // Lossless formats give identical RIP output.
    let a = Rip::new(params(), &png)
        .unwrap()
        .render_to_vecs(0..80)
        .unwrap();
    let b = Rip::new(params(), &tif)
        .unwrap()
        .render_to_vecs(0..80)
        .unwrap();
    assert_eq!(a, b);

    // JPEG is lossy: its output equals the RIP of the JPEG decoder's pixels.
    let jpg = encode(&rgb, ImageFormat::Jpeg);
    let src = decode(&jpg).unwrap();
    assert_eq!((src.kind, src.width, src.height), (SourceKind::Rgb, 64, 48));
    let decoded = image::load_from_memory(&jpg).unwrap();
    let via_png = encode(
        &DynamicImage::ImageRgb8(decoded.to_rgb8()),
        ImageFormat::Png,
    );
    assert_eq!(
        Rip::new(params(), &jpg)
            .unwrap()
            .render_to_vecs(0..80)
            .unwrap(),
        Rip::new(params(), &via_png)
            .unwrap()
            .render_to_vecs(0..80)
            .unwrap()
    );
}

#[test]
fn grey_and_alpha_inputs() {
    let grey = DynamicImage::ImageLuma8(image::GrayImage::from_fn(5, 3, |x, y| {
        image::Luma([(x * 50 + y) as u8])
    }));
    for fmt in [ImageFormat::Png, ImageFormat::Tiff, ImageFormat::Jpeg] {
        let src = decode(&encode(&grey, fmt)).unwrap();
        assert_eq!(
            (src.kind, src.width, src.height),
            (SourceKind::Grey, 5, 3),
            "{fmt:?}"
        );
        if fmt != ImageFormat::Jpeg {
            assert_eq!(src.planes[0], grey.to_luma8().into_raw());
        }
    }
    // Alpha composites over white paper: transparent black is white, half alpha is mid grey.
    let rgba = DynamicImage::ImageRgba8(
        image::RgbaImage::from_raw(3, 1, vec![0, 0, 0, 0, 0, 0, 0, 255, 0, 0, 0, 128]).unwrap(),
    );
    let src = decode(&encode(&rgba, ImageFormat::Png)).unwrap();
    assert_eq!(src.kind, SourceKind::Rgb);
    assert_eq!(src.planes[0], vec![255, 0, 127]);
}

#[test]
fn cmyk_tiff_passes_through() {
    let raw: Vec<u8> = (0..4 * 6).map(|i| (i * 10) as u8).collect();
    let mut buf = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut buf)
        .unwrap()
        .write_image::<tiff::encoder::colortype::CMYK8>(3, 2, &raw)
        .unwrap();
    let src = decode(buf.get_ref()).unwrap();
    assert_eq!((src.kind, src.width, src.height), (SourceKind::Cmyk, 3, 2));
    assert_eq!(src.planes[0], vec![0, 40, 80, 120, 160, 200]);
    assert_eq!(src.planes[3], vec![30, 70, 110, 150, 190, 230]);

    // 16-bit CMYK is reduced to 8 bits with rounding.
    let raw16: Vec<u16> = vec![0, 257, 65535, 32896];
    let mut buf = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut buf)
        .unwrap()
        .write_image::<tiff::encoder::colortype::CMYK16>(1, 1, &raw16)
        .unwrap();
    let src = decode(buf.get_ref()).unwrap();
    assert_eq!(src.kind, SourceKind::Cmyk);
    let px: Vec<u8> = src.planes.iter().map(|p| p[0]).collect();
    assert_eq!(px, vec![0, 1, 255, 128]);
}
