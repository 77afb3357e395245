//! Parameters: defaults, the job spec's TOML form, and bad values refused with their name.

use spate_producer::rip::{Ink, RefJob, Rip, RipError, RipParams, ScreenKind, test_image_png};

fn img() -> Vec<u8> {
    test_image_png(16, 16).unwrap()
}

fn refused(p: RipParams) -> RipError {
    Rip::new(p, &img()).unwrap_err()
}

#[test]
fn defaults_and_toml() {
    let d = RipParams::default();
    assert_eq!(
        (d.sheet_width_in, d.sheet_height_in, d.dpi_x, d.dpi_y),
        (10.0, 10.0, 300, 300)
    );
    assert_eq!(d.channels, vec!["C", "M", "Y", "K"]);
    assert_eq!(
        (d.ink_limit, d.gcr, d.levels, d.screen_size, d.threads),
        (300, 100, 4, 16, 0)
    );
    assert_eq!(d.screen, ScreenKind::Bayer);
    assert!(d.curves.is_empty());

    let p: RipParams = toml::from_str(
        r#"
        sheet_width_in = 40.0
        sheet_height_in = 40.0
        dpi_x = 900
        dpi_y = 900
        channels = ["K"]
        screen = "blue_noise"
        screen_size = 64
        levels = 2
        [curves]
        K = [[0, 0], [128, 110], [255, 255]]
        "#,
    )
    .unwrap();
    assert_eq!(p.dpi_x, 900);
    assert_eq!(p.screen, ScreenKind::BlueNoise);
    assert_eq!(p.curves["K"], vec![[0, 0], [128, 110], [255, 255]]);
    assert_eq!(p.ink_limit, 300); // default kept
    let empty: RipParams = toml::from_str("").unwrap();
    assert_eq!(empty, RipParams::default());
    let err = toml::from_str::<RipParams>("dpi = 300").unwrap_err();
    assert!(err.to_string().contains("unknown field `dpi`"), "{err}");

    let b = RefJob::B.params();
    let rip = Rip::new(b, &img()).unwrap();
    assert_eq!((rip.width(), rip.height()), (36000, 36000));
    assert_eq!(rip.channel_bytes(), 36000 * 36000);
    assert_eq!(rip.channels(), &Ink::ALL);
}

#[test]
fn bad_parameters_are_refused_by_name() {
    let d = RipParams::default;
    let e = refused(RipParams { dpi_x: 0, ..d() });
    assert_eq!(e, RipError::ZeroDpi { param: "dpi_x" });
    assert!(e.to_string().contains("dpi_x"));
    assert_eq!(
        refused(RipParams { dpi_y: 0, ..d() }),
        RipError::ZeroDpi { param: "dpi_y" }
    );

    let e = refused(RipParams {
        ink_limit: 401,
        ..d()
    });
    assert_eq!(e, RipError::InkLimitOutOfRange { value: 401 });
    assert!(e.to_string().starts_with("ink_limit = 401"), "{e}");
    assert_eq!(
        refused(RipParams {
            ink_limit: 0,
            ..d()
        }),
        RipError::InkLimitOutOfRange { value: 0 }
    );

    let e = refused(RipParams {
        channels: vec!["C".into(), "Orange".into()],
        ..d()
    });
    assert_eq!(
        e,
        RipError::UnknownChannel {
            name: "Orange".into()
        }
    );
    assert!(e.to_string().contains("channels") && e.to_string().contains("Orange"));
    assert_eq!(
        refused(RipParams {
            channels: vec!["K".into(), "k".into()],
            ..d()
        }),
        RipError::DuplicateChannel { name: "k".into() }
    );
    assert_eq!(
        refused(RipParams {
            channels: vec![],
            ..d()
        }),
        RipError::NoChannels
    );

    assert!(matches!(
        refused(RipParams {
            sheet_width_in: -1.0,
            ..d()
        }),
        RipError::BadSheetSize {
            param: "sheet_width_in",
            ..
        }
    ));
    assert!(matches!(
        refused(RipParams {
            sheet_height_in: f64::NAN,
            ..d()
        }),
        RipError::BadSheetSize {
            param: "sheet_height_in",
            ..
        }
    ));
    assert!(matches!(
        refused(RipParams {
            sheet_width_in: 0.001,
            ..d()
        }),
        RipError::OutputSize {
            param: "sheet_width_in",
            ..
        }
    ));
    assert!(matches!(
        refused(RipParams {
            sheet_height_in: 1e9,
            ..d()
        }),
        RipError::OutputSize {
            param: "sheet_height_in",
            ..
        }
    ));

    assert_eq!(
        refused(RipParams { gcr: 101, ..d() }),
        RipError::GcrOutOfRange { value: 101 }
    );
    assert_eq!(
        refused(RipParams { levels: 1, ..d() }),
        RipError::LevelsOutOfRange { value: 1 }
    );
    assert_eq!(
        refused(RipParams { levels: 257, ..d() }),
        RipError::LevelsOutOfRange { value: 257 }
    );
    assert_eq!(
        refused(RipParams {
            screen_size: 12,
            ..d()
        }),
        RipError::ScreenSizeInvalid {
            value: 12,
            max: 256
        }
    );
    assert_eq!(
        refused(RipParams {
            screen: ScreenKind::BlueNoise,
            screen_size: 128,
            ..d()
        }),
        RipError::ScreenSizeInvalid {
            value: 128,
            max: 64
        }
    );
}

#[test]
fn bad_tone_curves_are_refused_by_name() {
    let with = |ch: &str, pts: Vec<[u32; 2]>| {
        let mut p = RipParams::default();
        p.curves.insert(ch.into(), pts);
        refused(p)
    };
    let e = with("M", vec![[0, 0], [128, 200], [200, 100]]);
    assert_eq!(e, RipError::ToneCurveNotMonotonic { channel: "M" });
    assert!(e.to_string().starts_with("curves.M"), "{e}");
    assert_eq!(
        with("C", vec![[0, 0], [0, 10], [255, 255]]),
        RipError::ToneCurveNotMonotonic { channel: "C" }
    );
    assert_eq!(
        with("Y", vec![[0, 0], [300, 255]]),
        RipError::ToneCurveOutOfRange {
            channel: "Y",
            value: 300
        }
    );
    assert_eq!(
        with("K", vec![[0, 0]]),
        RipError::ToneCurveTooFewPoints {
            channel: "K",
            points: 1
        }
    );
    assert_eq!(
        with("X", vec![[0, 0], [255, 255]]),
        RipError::CurveForUnknownChannel {
            channel: "X".into()
        }
    );
    let mut p = RipParams::default();
    p.curves.insert("K".into(), vec![[0, 0], [255, 255]]);
    p.curves.insert("k".into(), vec![[0, 0], [255, 200]]);
    assert_eq!(
        refused(p),
        RipError::DuplicateCurve {
            channel: "k".into()
        }
    );
    // A curve for a valid ink that is not output.
    let mut p = RipParams {
        channels: vec!["K".into()],
        ..RipParams::default()
    };
    p.curves.insert("C".into(), vec![[0, 0], [255, 255]]);
    assert_eq!(
        refused(p),
        RipError::CurveForUnknownChannel {
            channel: "C".into()
        }
    );
}

#[test]
fn unreadable_images_are_refused() {
    let p = RipParams::default;
    for bytes in [
        &b""[..],
        b"not an image at all",
        b"\x89PNG\r\n\x1a\nbroken",
        b"II*\0garbage",
    ] {
        let e = Rip::new(p(), bytes).unwrap_err();
        assert!(
            matches!(e, RipError::UnreadableImage { .. }),
            "{bytes:?}: {e:?}"
        );
        assert!(e.to_string().starts_with("input image is unreadable"));
    }
    // Parameters are checked before the image is decoded.
    assert_eq!(
        Rip::new(RipParams { dpi_x: 0, ..p() }, b"junk").unwrap_err(),
        RipError::ZeroDpi { param: "dpi_x" }
    );
}
