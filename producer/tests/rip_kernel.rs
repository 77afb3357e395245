//! The `rip` producer kernel: chunked through the Kernel trait it gives the bytes of one
//! sequential `Rip::render`, and parameters that contradict the spec's geometry are refused
//! with an error naming them.

use std::collections::{BTreeMap, HashMap};

use spate_netlib::proto::{JobGeometry, PixelGeometry, Value};
use spate_producer::factory;
use spate_producer::kernel::{KernelError, Output};
use spate_producer::rip::{Rip, RipParams, test_image_png};
use spate_producer::rip_kernel::{build_rip, rip_params};

fn geo(width: u64, height: u64, channels: u32, dpi: Option<(u32, u32)>) -> JobGeometry {
    JobGeometry {
        channels,
        lines: height,
        line_bytes: width,
        pixels: Some(PixelGeometry {
            width,
            height,
            bits: 8,
            dpi,
        }),
    }
}

fn table(entries: &[(&str, Value)]) -> Value {
    Value::Table(
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn inputs() -> HashMap<String, Vec<u8>> {
    HashMap::from([("img.png".to_string(), test_image_png(120, 90).unwrap())])
}

fn param_name(e: KernelError) -> String {
    match e {
        KernelError::Param { name, .. } => name,
        other => panic!("expected a parameter error, got {other:?}"),
    }
}

#[test]
fn chunks_through_the_kernel_equal_one_sequential_render() {
    // 250 × 37 pixels at 100 × 50 dpi, an active ink limit and 3 levels.
    let g = geo(250, 37, 4, Some((100, 50)));
    let params = table(&[
        ("ink_limit", Value::Int(200)),
        ("levels", Value::Int(3)),
        ("threads", Value::Int(2)),
    ]);
    let k = factory::build("rip", &params, &g, &inputs()).unwrap();
    assert_eq!(k.name(), "rip");

    let reference = Rip::new(
        RipParams {
            sheet_width_in: 2.5,
            sheet_height_in: 0.74,
            dpi_x: 100,
            dpi_y: 50,
            ink_limit: 200,
            levels: 3,
            threads: 1,
            ..RipParams::default()
        },
        &test_image_png(120, 90).unwrap(),
    )
    .unwrap();
    assert_eq!((reference.width(), reference.height()), (250, 37));
    let whole = reference.render_to_vecs(0..37).unwrap();

    let w = 250usize;
    let mut got = vec![vec![0u8; w * 37]; 4];
    let mut l0 = 0u64;
    for step in [1u64, 5, 2, 13, 16] {
        let l1 = (l0 + step).min(37);
        let (a, b) = (l0 as usize * w, l1 as usize * w);
        let mut outs: Vec<Output<'_>> = got
            .iter_mut()
            .enumerate()
            .map(|(c, buf)| Output {
                stream: c as u32,
                offset: a as u64,
                buf: &mut buf[a..b],
            })
            .collect();
        k.compute(l0..l1, &mut outs).unwrap();
        l0 = l1;
    }
    assert_eq!(l0, 37);
    assert_eq!(got, whole);
    assert!(got.iter().flatten().all(|&v| v < 3));
}

#[test]
fn geometry_sets_size_and_resolution() {
    // width + height without dpi: 300 dpi default, the sheet follows the pixels.
    let (p, image) = rip_params(&Value::default(), &geo(7, 3, 1, None), Some(2)).unwrap();
    assert_eq!((p.dpi_x, p.dpi_y, p.threads), (300, 300, 2));
    assert_eq!(p.channels, vec!["K".to_string()]);
    assert_eq!(image, None);
    let rip = build_rip(&Value::default(), &geo(7, 3, 1, None), &inputs(), None).unwrap();
    assert_eq!((rip.width(), rip.height()), (7, 3));
    // Odd sizes at odd resolutions still come out exact.
    let rip = build_rip(
        &Value::default(),
        &geo(3001, 2999, 3, Some((301, 299))),
        &inputs(),
        None,
    )
    .unwrap();
    assert_eq!((rip.width(), rip.height()), (3001, 2999));
    // Agreeing explicit values are accepted.
    let ok = table(&[
        ("dpi_x", Value::Int(100)),
        ("sheet_width_in", Value::Float(2.5)),
        ("channels", Value::List(vec![Value::Str("K".into())])),
    ]);
    build_rip(&ok, &geo(250, 10, 1, Some((100, 100))), &inputs(), None).unwrap();
}

#[test]
fn contradicting_or_bad_params_name_the_parameter() {
    let g = geo(250, 37, 4, Some((100, 50)));
    let ins = inputs();
    let err = |params: Value, g: &JobGeometry, ins: &HashMap<String, Vec<u8>>| {
        param_name(
            factory::build("rip", &params, g, ins)
                .map(|k| k.name())
                .unwrap_err(),
        )
    };
    assert_eq!(err(table(&[("dpi_x", Value::Int(300))]), &g, &ins), "dpi_x");
    assert_eq!(err(table(&[("dpi_y", Value::Int(51))]), &g, &ins), "dpi_y");
    assert_eq!(
        err(table(&[("sheet_width_in", Value::Float(3.0))]), &g, &ins),
        "sheet_width_in"
    );
    assert_eq!(
        err(
            table(&[("channels", Value::List(vec![Value::Str("K".into())]))]),
            &g,
            &ins
        ),
        "channels"
    );
    assert_eq!(
        err(Value::default(), &geo(250, 37, 2, Some((100, 50))), &ins),
        "channels"
    );
    let mut bits16 = g;
    if let Some(px) = bits16.pixels.as_mut() {
        px.bits = 16;
        bits16.line_bytes = 500;
    }
    assert_eq!(err(Value::default(), &bits16, &ins), "bits");
    let no_pixels = JobGeometry { pixels: None, ..g };
    assert_eq!(err(Value::default(), &no_pixels, &ins), "sheet");
    assert_eq!(err(table(&[("levels", Value::Int(1))]), &g, &ins), "levels");
    assert_eq!(err(table(&[("gcr", Value::Int(101))]), &g, &ins), "gcr");
    assert_eq!(
        err(table(&[("screen", Value::Str("dots".into()))]), &g, &ins),
        "screen"
    );
    assert_eq!(err(table(&[("seed", Value::Int(1))]), &g, &ins), "seed");
    assert_eq!(err(Value::default(), &g, &HashMap::new()), "inputs");
    let junk = HashMap::from([("x.png".to_string(), b"not an image".to_vec())]);
    assert_eq!(err(Value::default(), &g, &junk), "inputs");
    let mut two = ins.clone();
    two.insert("other.png".into(), Vec::new());
    assert_eq!(err(Value::default(), &g, &two), "image");
    assert_eq!(
        err(table(&[("image", Value::Str("nope.png".into()))]), &g, &two),
        "image"
    );
    // `image` picks among several inputs.
    factory::build(
        "rip",
        &table(&[("image", Value::Str("img.png".into()))]),
        &g,
        &two,
    )
    .unwrap();
    // The message says what to do.
    let msg = factory::build("rip", &table(&[("dpi_x", Value::Int(300))]), &g, &ins)
        .map(|k| k.name())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dpi_x") && msg.contains("100"), "{msg}");
}
