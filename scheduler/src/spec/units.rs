//! Parsers for the quantities written in job specs: sizes ("4MiB", "1.5GB", "200Mbit"),
//! rates ("2.5Gbit", "300MB/s") and durations ("500ms", "2s").
//!
//! Numbers are plain decimals (`12`, `1.5`); no sign, no exponent. Arithmetic is exact
//! (integers), so `"1.5GB"` is exactly 1 500 000 000 bytes and `"1.3MiB"` (1363148.8 bytes) is
//! refused rather than silently rounded.

use std::time::Duration;

/// Why a size, rate or duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// Nothing was written.
    #[error("empty value: write a number with a unit, e.g. \"4MiB\"")]
    Empty,
    /// The number part is not a plain decimal.
    #[error("\"{0}\" does not start with a plain decimal number (like 4 or 1.5)")]
    BadNumber(String),
    /// The unit is not one we know.
    #[error("unknown unit \"{unit}\" (known: {known})")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
        /// The units accepted here.
        known: &'static str,
    },
    /// The value is not a whole number of bytes.
    #[error("\"{0}\" is not a whole number of bytes")]
    NotWhole(String),
    /// The value does not fit in 64 bits.
    #[error("\"{0}\" is too large")]
    Overflow(String),
}

const SIZE_UNITS: &str = "B, kB, MB, GB, TB, KiB, MiB, GiB, TiB, bit, kbit, Mbit, Gbit, Tbit";
const DURATION_UNITS: &str = "us, ms, s, min";

/// Size of one unit in bits, by lower-cased name.
fn unit_bits(unit: &str) -> Option<u128> {
    const K: u128 = 1000;
    const KI: u128 = 1024;
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 8,
        "kb" | "k" => 8 * K,
        "mb" | "m" => 8 * K * K,
        "gb" | "g" => 8 * K * K * K,
        "tb" | "t" => 8 * K * K * K * K,
        "kib" => 8 * KI,
        "mib" => 8 * KI * KI,
        "gib" => 8 * KI * KI * KI,
        "tib" => 8 * KI * KI * KI * KI,
        "bit" => 1,
        "kbit" => K,
        "mbit" => K * K,
        "gbit" => K * K * K,
        "tbit" => K * K * K * K,
        _ => return None,
    })
}

/// A decimal as `mantissa / 10^scale`, and the rest of the string (the unit).
fn split_number(s: &str) -> Result<(u128, u32, &str), UnitError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let bad = || UnitError::BadNumber(s.to_string());
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() || frac.contains('.') || (num.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    if int.len() + frac.len() > 24 {
        return Err(UnitError::Overflow(s.to_string()));
    }
    let mut mantissa: u128 = 0;
    for c in int.chars().chain(frac.chars()) {
        // Digits only here: the scan above stopped at the first non-digit, non-dot.
        mantissa = mantissa * 10 + u128::from(c.to_digit(10).ok_or_else(bad)?);
    }
    // `frac.len() <= 24` from the check above.
    let scale = frac.len() as u32;
    Ok((mantissa, scale, unit.trim()))
}

/// Reads a size in bytes: `"4MiB"`, `"1.5GB"`, `"200Mbit"`, `"4096"` (bytes).
///
/// Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB..TiB) powers of 1024;
/// bit units must come to a whole number of bytes. Units are case-insensitive.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let (mantissa, scale, unit) = split_number(s)?;
    let bits = unit_bits(unit).ok_or_else(|| UnitError::UnknownUnit {
        unit: unit.to_string(),
        known: SIZE_UNITS,
    })?;
    let over = || UnitError::Overflow(s.trim().to_string());
    let num = mantissa.checked_mul(bits).ok_or_else(over)?;
    let den = 8 * 10u128.pow(scale);
    if num % den != 0 {
        return Err(UnitError::NotWhole(s.trim().to_string()));
    }
    u64::try_from(num / den).map_err(|_| over())
}

/// Reads a rate in bits per second: `"2.5Gbit"`, `"300MB/s"`, `"10Gbps"`.
///
/// The `/s` suffix is optional (`bps` means bit/s); the units are those of [`parse_size`]. The result is
/// rounded to the nearest bit per second.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let t = match t.strip_suffix("bps") {
        Some(r) => format!("{r}bit"),
        None => t.strip_suffix("/s").unwrap_or(t).to_string(),
    };
    let (mantissa, scale, unit) = split_number(&t)?;
    let bits = unit_bits(unit).ok_or_else(|| UnitError::UnknownUnit {
        unit: unit.to_string(),
        known: SIZE_UNITS,
    })?;
    let over = || UnitError::Overflow(s.trim().to_string());
    let num = mantissa.checked_mul(bits).ok_or_else(over)?;
    let den = 10u128.pow(scale);
    u64::try_from((num + den / 2) / den).map_err(|_| over())
}

/// Reads a duration: `"500ms"`, `"2s"`, `"1.5s"`, `"100us"`, `"2min"` (rounded to the
/// nearest microsecond).
pub fn parse_duration(s: &str) -> Result<Duration, UnitError> {
    let (mantissa, scale, unit) = split_number(s)?;
    let micros: u128 = match unit {
        "us" | "µs" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "min" => 60_000_000,
        _ => {
            return Err(UnitError::UnknownUnit {
                unit: unit.to_string(),
                known: DURATION_UNITS,
            });
        }
    };
    let over = || UnitError::Overflow(s.trim().to_string());
    let num = mantissa.checked_mul(micros).ok_or_else(over)?;
    let den = 10u128.pow(scale);
    let us = u64::try_from((num + den / 2) / den).map_err(|_| over())?;
    Ok(Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("1.5GB"), Ok(1_500_000_000));
        assert_eq!(parse_size("200Mbit"), Ok(25_000_000));
        assert_eq!(parse_size("72Mbit"), Ok(9_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 1 GiB "), Ok(1 << 30));
        assert_eq!(parse_size("0.5KiB"), Ok(512));
        assert_eq!(parse_size("16TiB"), Ok(16 << 40));
        assert_eq!(parse_size("1kb"), Ok(1000));
    }

    #[test]
    fn bad_sizes() {
        assert_eq!(parse_size(""), Err(UnitError::Empty));
        assert_eq!(parse_size("MiB"), Err(UnitError::BadNumber("MiB".into())));
        assert_eq!(
            parse_size("-4MiB"),
            Err(UnitError::BadNumber("-4MiB".into()))
        );
        assert_eq!(
            parse_size("1.2.3MB"),
            Err(UnitError::BadNumber("1.2.3MB".into()))
        );
        assert_eq!(parse_size("4.MB"), Err(UnitError::BadNumber("4.MB".into())));
        assert!(matches!(
            parse_size("4 parsecs"),
            Err(UnitError::UnknownUnit { unit, .. }) if unit == "parsecs"
        ));
        assert_eq!(
            parse_size("1.3MiB"),
            Err(UnitError::NotWhole("1.3MiB".into()))
        );
        assert_eq!(parse_size("3bit"), Err(UnitError::NotWhole("3bit".into())));
        assert_eq!(
            parse_size("20000000TiB"),
            Err(UnitError::Overflow("20000000TiB".into()))
        );
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("2.5Gbit"), Ok(2_500_000_000));
        assert_eq!(parse_rate("2.5Gbit/s"), Ok(2_500_000_000));
        assert_eq!(parse_rate("10Gbps"), Ok(10_000_000_000));
        assert_eq!(parse_rate("300MB/s"), Ok(2_400_000_000));
        assert_eq!(parse_rate("1.0000001bit"), Ok(1));
        assert!(matches!(
            parse_rate("3 furlongs"),
            Err(UnitError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("2min"), Ok(Duration::from_secs(120)));
        assert!(matches!(
            parse_duration("5h"),
            Err(UnitError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_duration("5"),
            Err(UnitError::UnknownUnit { .. })
        ));
    }
}
