//! Latency histograms on the wire and on disk: HdrHistogram's V2 serialization (what
//! [`crate::proto::Message::JobStats`] carries instead of raw samples) and its `.hgrm` text
//! percentile distribution (what `submit --hgrm`, `read --hgrm` and `bench` write).

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};

/// Why a serialized histogram could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistError {
    /// The bytes are not a V2 histogram.
    #[error("not a serialized histogram: {0}")]
    Decode(String),
    /// Serializing failed.
    #[error("cannot serialize the histogram: {0}")]
    Encode(String),
}

/// A histogram of microseconds from 1 µs to one hour, 3 significant digits.
pub fn new_micros() -> Histogram<u64> {
    // Bounds are constants that the crate accepts (low >= 1, high >= 2 * low, sigfig <= 5).
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

/// `h` in HdrHistogram's V2 serialization (uncompressed).
pub fn encode(h: &Histogram<u64>) -> Result<Vec<u8>, HistError> {
    let mut out = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut out)
        .map_err(|e| HistError::Encode(format!("{e:?}")))?;
    Ok(out)
}

/// A histogram from its V2 serialization.
pub fn decode(bytes: &[u8]) -> Result<Histogram<u64>, HistError> {
    let mut r = bytes;
    Deserializer::new()
        .deserialize(&mut r)
        .map_err(|e| HistError::Decode(format!("{e:?}")))
}

/// Percentile ticks per half distance to 100%, as HdrHistogram's default.
const TICKS_PER_HALF: u32 = 5;

/// The sub-bucket count of a histogram with `sigfig` significant digits (not exposed by the
/// crate): the power of two at or above 2 × 10^sigfig.
fn sub_buckets(sigfig: u8) -> u64 {
    (2 * 10_u64.pow(u32::from(sigfig))).next_power_of_two()
}

/// The percentile distribution of `h` in HdrHistogram's text format (what Java's
/// `outputPercentileDistribution` writes, scale ratio 1), preceded by a `#` title line.
pub fn hgrm_text(h: &Histogram<u64>, title: &str) -> String {
    let n = usize::from(h.sigfig());
    let mut s = String::new();
    // `fmt::Write` into a String cannot fail.
    let _ = writeln!(s, "# {title}");
    let _ = write!(
        s,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    for v in h.iter_quantiles(TICKS_PER_HALF) {
        let value = v.value_iterated_to() as f64;
        let q = v.quantile_iterated_to();
        let count = h.count_between(0, v.value_iterated_to());
        if q < 1.0 {
            let _ = writeln!(
                s,
                "{value:12.n$} {q:2.12} {count:10} {:14.2}",
                1.0 / (1.0 - q)
            );
        } else {
            let _ = writeln!(s, "{value:12.n$} {q:2.12} {count:10}");
        }
    }
    let _ = writeln!(
        s,
        "#[Mean    = {:12.n$}, StdDeviation   = {:12.n$}]",
        h.mean(),
        h.stdev()
    );
    let _ = writeln!(
        s,
        "#[Max     = {:12.n$}, Total count    = {:12}]",
        h.max() as f64,
        h.len()
    );
    let _ = writeln!(
        s,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets(h.sigfig())
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_survives_the_wire_exactly() {
        let mut h = new_micros();
        for v in [1u64, 7, 250, 250, 10_000, 3_000_000] {
            h.record(v).unwrap();
        }
        let bytes = encode(&h).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.len(), 6);
        assert_eq!(back.max(), h.max());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back, h);
        assert!(decode(b"not a histogram").is_err());
        assert!(decode(&bytes[..bytes.len() / 2]).is_err());
    }

    #[test]
    fn hgrm_text_ends_with_the_totals() {
        let mut h = new_micros();
        for v in 1..=100u64 {
            h.record(v).unwrap();
        }
        let t = hgrm_text(&h, "chunk latency (us)");
        assert!(t.starts_with("# chunk latency (us)\n"), "{t}");
        assert!(
            t.contains("#[Max     =      100.000, Total count    =          100]"),
            "{t}"
        );
        assert!(
            t.contains("     100.000 1.000000000000        100\n"),
            "{t}"
        );
    }
}
