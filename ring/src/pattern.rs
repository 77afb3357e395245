//! Deterministic test pattern: byte `o` of stream `stream` under `seed` is byte `o % 8`
//! (little-endian) of the 64-bit word `word(seed, stream, o / 8)`.
//!
//! `word(i) = xorshift(key ^ i·K)` where `key` mixes seed and stream (splitmix64). Every word
//! index gives a distinct word (the map is a bijection of `i`), so misplaced, repeated, stale or
//! zeroed data is caught; filling and checking are a multiply-free add/xor/shift per word on
//! the running product, which the compiler vectorises (many GB/s).

const K: u64 = 0x9E37_79B9_7F4A_7C15;

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(K);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The key of one (seed, stream) pair.
#[inline]
pub fn key(seed: u64, stream: u64) -> u64 {
    splitmix(seed ^ splitmix(stream.wrapping_add(0x5EED)))
}

#[inline(always)]
fn mix(key: u64, prod: u64) -> u64 {
    let x = key ^ prod;
    x ^ (x >> 29) ^ (x << 17)
}

/// Word `index` of the pattern.
#[inline]
pub fn word(seed: u64, stream: u64, index: u64) -> u64 {
    mix(key(seed, stream), index.wrapping_mul(K))
}

/// Byte at stream offset `offset`.
pub fn byte_at(seed: u64, stream: u64, offset: u64) -> u8 {
    word(seed, stream, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fill `buf` with the pattern bytes of stream offsets `[offset, offset + buf.len())`.
pub fn fill(seed: u64, stream: u64, offset: u64, buf: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above; the function is otherwise safe.
        return unsafe { fill_avx2(seed, stream, offset, buf) };
    }
    fill_impl(seed, stream, offset, buf)
}

/// [`fill_impl`] compiled for AVX2 (four words per instruction instead of two).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn fill_avx2(seed: u64, stream: u64, offset: u64, buf: &mut [u8]) {
    fill_impl(seed, stream, offset, buf)
}

#[inline(always)]
fn fill_impl(seed: u64, stream: u64, offset: u64, buf: &mut [u8]) {
    let k = key(seed, stream);
    let mut off = offset;
    let mut rest = buf;
    // Unaligned head: up to the next multiple of 8 of the stream offset.
    let head = ((8 - (off % 8)) % 8).min(rest.len() as u64) as usize;
    if head > 0 {
        let w = mix(k, (off / 8).wrapping_mul(K)).to_le_bytes();
        let s = (off % 8) as usize;
        rest[..head].copy_from_slice(&w[s..s + head]);
        off += head as u64;
        rest = &mut rest[head..];
    }
    let mut prod = (off / 8).wrapping_mul(K);
    let mut chunks = rest.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&mix(k, prod).to_le_bytes());
        prod = prod.wrapping_add(K);
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        let n = tail.len();
        tail.copy_from_slice(&mix(k, prod).to_le_bytes()[..n]);
    }
}

/// Check `buf` against stream offsets `[offset, offset + buf.len())`. Returns the stream
/// offset of the first wrong byte, or `None` when all match.
pub fn check(seed: u64, stream: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above; the function is otherwise safe.
        return unsafe { check_avx2(seed, stream, offset, buf) };
    }
    check_impl(seed, stream, offset, buf)
}

/// [`check_impl`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn check_avx2(seed: u64, stream: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    check_impl(seed, stream, offset, buf)
}

#[inline(always)]
fn check_impl(seed: u64, stream: u64, offset: u64, buf: &[u8]) -> Option<u64> {
    let k = key(seed, stream);
    let first_bad = |base: u64, got: &[u8], want: &[u8]| {
        got.iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .map(|p| base + p as u64)
    };
    let mut off = offset;
    let mut rest = buf;
    let head = ((8 - (off % 8)) % 8).min(rest.len() as u64) as usize;
    if head > 0 {
        let w = mix(k, (off / 8).wrapping_mul(K)).to_le_bytes();
        let s = (off % 8) as usize;
        if let Some(b) = first_bad(off, &rest[..head], &w[s..s + head]) {
            return Some(b);
        }
        off += head as u64;
        rest = &rest[head..];
    }
    // Bulk: compare blocks of 64 words with an OR-reduction (vectorises), locate on mismatch.
    const BLK: usize = 512;
    let mut prod = (off / 8).wrapping_mul(K);
    let mut blocks = rest.chunks_exact(BLK);
    for (bi, b) in (&mut blocks).enumerate() {
        let mut diff = 0u64;
        let mut p = prod;
        for c in b.chunks_exact(8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(c);
            diff |= u64::from_le_bytes(a) ^ mix(k, p);
            p = p.wrapping_add(K);
        }
        if diff != 0 {
            // Locate the byte exactly.
            let base = off + (bi * BLK) as u64;
            let mut want = [0u8; BLK];
            fill(seed, stream, base, &mut want);
            return first_bad(base, b, &want);
        }
        prod = p;
    }
    let done = rest.len() - blocks.remainder().len();
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let base = off + done as u64;
        let mut want = vec![0u8; tail.len()];
        fill(seed, stream, base, &mut want);
        return first_bad(base, tail, &want);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_byte_at_at_any_alignment() {
        for off in 0..20u64 {
            for len in 0..40usize {
                let mut b = vec![0u8; len];
                fill(7, 3, off, &mut b);
                for (i, &x) in b.iter().enumerate() {
                    assert_eq!(x, byte_at(7, 3, off + i as u64), "off {off} i {i}");
                }
                assert_eq!(check(7, 3, off, &b), None);
            }
        }
    }

    #[test]
    fn check_finds_first_bad_offset() {
        let mut b = vec![0u8; 5000];
        fill(1, 2, 1_000_003, &mut b);
        assert_eq!(check(1, 2, 1_000_003, &b), None);
        b[4321] ^= 1;
        b[4999] ^= 1;
        assert_eq!(check(1, 2, 1_000_003, &b), Some(1_000_003 + 4321));
        b[3] ^= 0x80;
        assert_eq!(check(1, 2, 1_000_003, &b), Some(1_000_003 + 3));
        // A different stream or seed or a shifted offset does not match.
        let mut c = vec![0u8; 64];
        fill(1, 2, 0, &mut c);
        assert_eq!(check(1, 3, 0, &c), Some(0));
        assert_eq!(check(2, 2, 0, &c), Some(0));
        assert!(check(1, 2, 8, &c).is_some());
        assert_eq!(check(1, 2, 0, &[0u8; 64]), Some(0));
    }

    #[test]
    fn words_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            assert!(seen.insert(word(0, 0, i)));
        }
    }
}
