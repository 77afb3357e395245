//! The synthetic test image and the stream preview.

use spate_producer::rip::{
    Ink, Rip, RipError, RipParams, preview, test_image_png, test_image_rgb, write_test_image,
};

#[test]
fn test_image_is_deterministic_and_has_its_features() {
    let a = test_image_rgb(1200, 1200);
    assert_eq!(a, test_image_rgb(1200, 1200));
    assert_eq!(
        test_image_png(120, 100).unwrap(),
        test_image_png(120, 100).unwrap()
    );
    // Hue field: top left red; grey ramp band: left black, right white.
    assert_eq!(a.get_pixel(0, 0).0, [255, 0, 0]);
    assert_eq!(a.get_pixel(0, 360).0, [0, 0, 0]);
    assert_eq!(a.get_pixel(1199, 360).0, [255, 255, 255]);
    // Patches: white, cyan, magenta, yellow, red, green, blue, black across the first row.
    let row: Vec<[u8; 3]> = (0..8).map(|i| a.get_pixel(i * 150 + 75, 500).0).collect();
    assert_eq!(
        row,
        vec![
            [255, 255, 255],
            [0, 255, 255],
            [255, 0, 255],
            [255, 255, 0],
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [0, 0, 0]
        ]
    );
    // Letters and lines: the bottom right area has black pixels, rings have two colours.
    let br = (600..1200).flat_map(|x| (900..1200).map(move |y| (x, y)));
    assert!(br.clone().any(|(x, y)| a.get_pixel(x, y).0 == [0, 0, 0]));
    assert!(br.clone().any(|(x, y)| a.get_pixel(x, y).0 == [200, 0, 0]));
    assert_eq!(a.get_pixel(300, 1050).0, [20, 40, 120]);

    let dir = std::env::temp_dir().join(format!("spate-rip-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for ext in ["png", "tif", "jpg"] {
        let path = dir.join(format!("t.{ext}"));
        write_test_image(&path, 40, 30).unwrap();
        let back = image::open(&path).unwrap();
        assert_eq!((back.width(), back.height()), (40, 30));
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(matches!(
        write_test_image(std::path::Path::new("/nonexistent-dir/x.png"), 4, 4),
        Err(RipError::Encode { .. })
    ));
}

#[test]
fn preview_averages_coverage() {
    // 4 × 2 stream of levels 0..4 (top level 3), scale 2: two preview pixels.
    let data = [0, 3, 3, 3, 3, 0, 3, 3];
    let png = preview(&data, 4, 2, 2, 4, None).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (2, 1));
    // Left box: 6 of 12 → coverage round(127.5) = 128 → 127; right box: full → 0.
    assert_eq!(img.into_raw(), vec![127, 0]);

    // Tinted, with a partial box at the edge: 3 × 1, scale 2 → 2 pixels.
    let png = preview(&[1, 1, 0], 3, 1, 2, 2, Some(Ink::M)).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (2, 1));
    assert_eq!(img.get_pixel(0, 0).0, Ink::M.tint());
    assert_eq!(img.get_pixel(1, 0).0, [255, 255, 255]);

    assert!(matches!(
        preview(&data, 4, 3, 2, 4, None),
        Err(RipError::Preview { .. })
    ));
    assert!(matches!(
        preview(&data, 4, 2, 0, 4, None),
        Err(RipError::Preview { .. })
    ));

    // A RIP stream previews to roughly the source's darkness.
    let p = RipParams {
        sheet_width_in: 1.0,
        sheet_height_in: 1.0,
        dpi_x: 64,
        dpi_y: 64,
        channels: vec!["K".into()],
        threads: 1,
        ..RipParams::default()
    };
    let grey = image::GrayImage::from_pixel(4, 4, image::Luma([64]));
    let mut png = Vec::new();
    grey.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let rip = Rip::new(p, &png).unwrap();
    let k = &rip.render_to_vecs(0..64).unwrap()[0];
    let pv = preview(k, 64, 64, 16, rip.levels(), None).unwrap();
    let img = image::load_from_memory(&pv).unwrap().to_luma8();
    assert!(
        img.pixels().all(|p| p.0[0].abs_diff(64) <= 2),
        "{:?}",
        img.into_raw()
    );
}
