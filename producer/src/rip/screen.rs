//! Ordered threshold matrices and the position-based screening rule.
//!
//! A matrix of side N holds the ranks 0..N² (each once). Rank r becomes the additive threshold
//! `t = 254 - floor(r * 255 / N²)` in 0..=254, and a channel value v (0..=255, 255 = full ink)
//! becomes the drop level `(v * (levels - 1) + t) / 255` (integer division): 0 for v = 0,
//! `levels - 1` for v = 255, and in between the fraction of pixels at the higher of two
//! neighbouring levels follows v. For binary screens a drop is set where `v > floor(r*255/N²)`.
//!
//! The threshold of output pixel (x, y) of ink i is the matrix entry at
//! `((x + dx_i) mod N, (y + dy_i) mod N)` with a fixed offset per ink (so that inks do not
//! print on the same pattern): it depends only on the position and the ink.

use super::params::{Ink, ScreenKind};

/// Ranks 0..N² of an N × N matrix, row-major.
pub fn ranks(kind: ScreenKind, n: u32) -> Vec<u32> {
    match kind {
        ScreenKind::Bayer => bayer(n),
        ScreenKind::BlueNoise => blue_noise(n),
    }
}

/// The recursive Bayer matrix: `M2n = [[4M, 4M+2], [4M+3, 4M+1]]`.
pub fn bayer(n: u32) -> Vec<u32> {
    let n = n as usize;
    let mut m = vec![0u32; 1];
    let mut side = 1usize;
    while side < n {
        let s2 = side * 2;
        let mut next = vec![0u32; s2 * s2];
        for y in 0..s2 {
            for x in 0..s2 {
                let base = 4 * m[(y % side) * side + (x % side)];
                let add = [[0, 2], [3, 1]][y / side][x / side];
                next[y * s2 + x] = base + add;
            }
        }
        m = next;
        side = s2;
    }
    m
}

/// A blue-noise-like rank matrix by void filling: starting from one dot, each next rank goes
/// to the empty cell with the least "energy" (sum of a decreasing kernel of the toroidal
/// distance to every placed dot), ties to the lowest index. Integer arithmetic only, so the
/// matrix is the same on every machine.
pub fn blue_noise(n: u32) -> Vec<u32> {
    let n = n as usize;
    let cells = n * n;
    // Kernel as a function of the toroidal squared distance.
    let kernel = |d2: u64| -> u64 { (1u64 << 40) / ((4 + d2) * (4 + d2) * (4 + d2)) };
    let mut kvals = vec![0u64; cells];
    for dy in 0..n {
        for dx in 0..n {
            let ddx = dx.min(n - dx) as u64;
            let ddy = dy.min(n - dy) as u64;
            kvals[dy * n + dx] = kernel(ddx * ddx + ddy * ddy);
        }
    }
    let mut energy = vec![0u64; cells];
    let mut rank = vec![u32::MAX; cells];
    let mut p = 0usize;
    for r in 0..cells as u32 {
        rank[p] = r;
        let (px, py) = (p % n, p / n);
        for y in 0..n {
            let dy = (y + n - py) % n;
            let row = &kvals[dy * n..(dy + 1) * n];
            for (x, e) in energy[y * n..(y + 1) * n].iter_mut().enumerate() {
                *e += row[(x + n - px) % n];
            }
        }
        // Next: the empty cell with the least energy (lowest index on ties).
        let mut best_e = u64::MAX;
        for (q, (&e, &rk)) in energy.iter().zip(&rank).enumerate() {
            if rk == u32::MAX && e < best_e {
                best_e = e;
                p = q;
            }
        }
    }
    rank
}

/// Additive thresholds (0..=254) from ranks.
pub fn thresholds(ranks: &[u32]) -> Vec<u8> {
    let total = ranks.len() as u64;
    ranks
        .iter()
        .map(|&r| (254 - (u64::from(r) * 255 / total)) as u8)
        .collect()
}

/// The offset (dx, dy) of ink `ink`'s matrix for side `n`.
pub fn ink_offset(ink: Ink, n: u32) -> (u32, u32) {
    let i = ink as u32;
    ((i * (n * 3 / 8 + 1)) % n, (i * (n * 5 / 8)) % n)
}

/// For one ink: N rows, each the thresholds of columns 0..`tile` (a multiple of N) on that
/// matrix row, so a block of `tile` pixels starting at a multiple of `tile` reads its
/// thresholds contiguously. Row r serves output lines y with `y mod N == r`.
pub fn tiled(thresholds: &[u8], n: u32, ink: Ink, tile: usize) -> Vec<u8> {
    let (dx, dy) = ink_offset(ink, n);
    let n = n as usize;
    let mut out = vec![0u8; n * tile];
    for r in 0..n {
        let my = (r + dy as usize) % n;
        for (j, t) in out[r * tile..(r + 1) * tile].iter_mut().enumerate() {
            *t = thresholds[my * n + (j + dx as usize) % n];
        }
    }
    out
}

/// Exact `x / 255` for `x <= 65279` in u16 arithmetic (vectorizes).
#[inline(always)]
pub fn div255(x: u16) -> u16 {
    (x + 1 + (x >> 8)) >> 8
}

/// The drop level of value `v` against additive threshold `t` for `levels - 1 = lm1`.
#[inline(always)]
pub fn level(v: u8, t: u8, lm1: u16) -> u8 {
    div255(u16::from(v) * lm1 + u16::from(t)) as u8
}
