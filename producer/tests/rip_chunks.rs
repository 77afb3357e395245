//! Any chunking and any thread count give the bytes of one sequential run.

use proptest::prelude::*;
use spate_producer::rip::{Rip, RipParams, ScreenKind, test_image_png};

/// Configurations that exercise every path: upscale with blocks of partial width, curves and
/// an active ink limit, downscale, K only, blue noise.
fn configs() -> Vec<RipParams> {
    let mut curves = std::collections::BTreeMap::new();
    curves.insert("C".to_string(), vec![[0, 0], [100, 140], [255, 255]]);
    curves.insert("K".to_string(), vec![[0, 10], [255, 240]]);
    vec![
        RipParams {
            sheet_width_in: 2.5,
            sheet_height_in: 1.0,
            dpi_x: 1000, // 2500 px: two full blocks and a partial one
            dpi_y: 150,
            levels: 4,
            ..RipParams::default()
        },
        RipParams {
            sheet_width_in: 7.0,
            sheet_height_in: 9.0,
            dpi_x: 30,
            dpi_y: 20,
            gcr: 0,
            ink_limit: 180,
            curves,
            levels: 3,
            screen: ScreenKind::BlueNoise,
            screen_size: 32,
            ..RipParams::default()
        },
        RipParams {
            sheet_width_in: 1.0,
            sheet_height_in: 1.0,
            dpi_x: 47, // downscale from the 120 × 90 source
            dpi_y: 61,
            channels: vec!["K".into()],
            levels: 2,
            screen_size: 256,
            ..RipParams::default()
        },
    ]
}

fn source() -> Vec<u8> {
    test_image_png(120, 90).unwrap()
}

fn sequential(p: &RipParams, img: &[u8]) -> (Rip, Vec<Vec<u8>>) {
    let mut rip = Rip::new(p.clone(), img).unwrap();
    rip.set_threads(1).unwrap();
    let all = rip.render_to_vecs(0..rip.height()).unwrap();
    (rip, all)
}

/// Renders `rip` in the chunks that `cuts` (sorted line numbers) make, with `threads`.
fn chunked(rip: &mut Rip, cuts: &[u32], threads: usize) -> Vec<Vec<u8>> {
    rip.set_threads(threads).unwrap();
    let w = rip.line_bytes();
    let mut out = vec![Vec::new(); rip.channels().len()];
    let mut bounds = vec![0];
    bounds.extend(cuts.iter().map(|&c| c.min(rip.height())));
    bounds.push(rip.height());
    bounds.sort_unstable();
    for win in bounds.windows(2) {
        let (a, b) = (win[0], win[1]);
        let mut bufs = vec![vec![0xEEu8; (b - a) as usize * w]; out.len()];
        let mut outs: Vec<&mut [u8]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
        rip.render(a..b, &mut outs).unwrap();
        for (o, b) in out.iter_mut().zip(bufs) {
            o.extend(b);
        }
    }
    out
}

#[test]
fn whole_render_is_the_same_on_every_thread_count() {
    let img = source();
    for p in configs() {
        let (mut rip, seq) = sequential(&p, &img);
        for threads in [2, 3, 5] {
            assert_eq!(
                chunked(&mut rip, &[], threads),
                seq,
                "{threads} threads, {p:?}"
            );
        }
        // Every line alone.
        let cuts: Vec<u32> = (1..rip.height()).collect();
        assert_eq!(chunked(&mut rip, &cuts, 2), seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn random_chunks_equal_sequential(
        which in 0usize..3,
        cuts in proptest::collection::vec(0u32..200, 0..12),
        threads in 1usize..5,
    ) {
        let img = source();
        let p = &configs()[which];
        let (mut rip, seq) = sequential(p, &img);
        prop_assert_eq!(chunked(&mut rip, &cuts, threads), seq);
    }
}
