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
    /// The unit is ambiguous or wrongly cased (`2.5G`, `4KB`, `2.5gb`): `b` is a bit and `B`
    /// a byte, `k` is 1000 and `Ki` 1024.
    #[error(
        "ambiguous unit \"{unit}\": units are case-sensitive (b = bit, B = byte, k = 1000, \
         Ki = 1024); write {options}"
    )]
    Ambiguous {
        /// The unit as written.
        unit: String,
        /// What it may have meant.
        options: String,
    },
    /// A rate was written without a unit.
    #[error("\"{0}\" has no unit: write e.g. 2.5Gbit (bits per second) or 300MB/s (bytes)")]
    NoRateUnit(String),
    /// The value is not a whole number of bytes.
    #[error("\"{0}\" is not a whole number of bytes")]
    NotWhole(String),
    /// The value does not fit in 64 bits.
    #[error("\"{0}\" is too large")]
    Overflow(String),
}

const SIZE_UNITS: &str = "B, kB, MB, GB, TB (bytes, powers of 1000), KiB, MiB, GiB, TiB (bytes, \
powers of 1024), bit or b, kbit or kb, Mbit or Mb, Gbit or Gb, Tbit or Tb (bits, powers of 1000)";
const DURATION_UNITS: &str = "us, ms, s, min";

/// Size of one unit in bits. Units are case-sensitive, as SI, IEC and iperf3 write them:
/// `b` is a bit and `B` a byte; `k` (lower case) is 1000, `Ki` 1024.
fn unit_bits(unit: &str) -> Option<u128> {
    const K: u128 = 1000;
    const KI: u128 = 1024;
    Some(match unit {
        "" | "B" => 8,
        "kB" => 8 * K,
        "MB" => 8 * K * K,
        "GB" => 8 * K * K * K,
        "TB" => 8 * K * K * K * K,
        "KiB" => 8 * KI,
        "MiB" => 8 * KI * KI,
        "GiB" => 8 * KI * KI * KI,
        "TiB" => 8 * KI * KI * KI * KI,
        "b" | "bit" => 1,
        "kb" | "kbit" => K,
        "Mb" | "Mbit" => K * K,
        "Gb" | "Gbit" => K * K * K,
        "Tb" | "Tbit" => K * K * K * K,
        _ => return None,
    })
}

/// What an ambiguous or wrongly cased unit may have meant, for the error message.
fn meant(unit: &str) -> Option<String> {
    let prefix = match unit.chars().next()?.to_ascii_lowercase() {
        'k' => 'k',
        'm' => 'M',
        'g' => 'G',
        't' => 'T',
        'b' if unit.eq_ignore_ascii_case("bit") || unit.eq_ignore_ascii_case("b") => {
            return Some("B (bytes) or bit (bits)".into());
        }
        _ => return None,
    };
    let rest = &unit[1..];
    let known = ["", "b", "B", "bit", "iB", "ib", "IB", "BIT", "Bit", "i"];
    if !known.iter().any(|k| rest.eq_ignore_ascii_case(k)) {
        return None;
    }
    let bin = prefix.to_ascii_uppercase();
    Some(format!(
        "{prefix}B (bytes, 1000-based), {bin}iB (bytes, 1024-based) or {prefix}bit (bits)"
    ))
}

fn unit_error(unit: &str) -> UnitError {
    match meant(unit) {
        Some(options) => UnitError::Ambiguous {
            unit: unit.to_string(),
            options,
        },
        None => UnitError::UnknownUnit {
            unit: unit.to_string(),
            known: SIZE_UNITS,
        },
    }
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
/// bit units (`b`, `bit`, `Mb`, `Mbit`, ...) must come to a whole number of bytes. Units are
/// case-sensitive as SI, IEC and iperf3 write them; ambiguous ones (`4K`, `4KB`, `4mb`) are
/// refused with what they may have meant. A plain number is bytes.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let (mantissa, scale, unit) = split_number(s)?;
    let bits = unit_bits(unit).ok_or_else(|| unit_error(unit))?;
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
/// The `/s` suffix is optional, and `ps` may follow `b` or `B` (`10Gbps` is 10 gigabits per
/// second, `1GBps` one gigabyte per second); the units are those of [`parse_size`], a unit is
/// required. The result is rounded to the nearest bit per second.
pub fn parse_rate(s: &str) -> Result<u64, UnitError> {
    let t = s.trim();
    let t = match t.strip_suffix("/s") {
        Some(r) => r,
        None if t.ends_with("bps") || t.ends_with("Bps") => &t[..t.len() - 2],
        None => t,
    };
    let (mantissa, scale, unit) = split_number(t)?;
    if unit.is_empty() {
        return Err(UnitError::NoRateUnit(s.trim().to_string()));
    }
    let bits = unit_bits(unit).ok_or_else(|| unit_error(unit))?;
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
        assert_eq!(parse_size("1kB"), Ok(1000));
        assert_eq!(parse_size("8kb"), Ok(1000));
        assert_eq!(parse_size("8Mb"), Ok(1_000_000));
        assert_eq!(parse_size("16b"), Ok(2));
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
        // b is a bit, B a byte (iperf3, SI): 2.5Gb is 2.5 gigabits, not gigabytes.
        assert_eq!(parse_rate("2.5Gb"), Ok(2_500_000_000));
        assert_eq!(parse_rate("2.5GB"), Ok(20_000_000_000));
        assert_eq!(parse_rate("1GBps"), Ok(8_000_000_000));
        assert_eq!(parse_rate("100MiB/s"), Ok(100 * 8 * (1 << 20)));
        assert_eq!(
            parse_rate("2400"),
            Err(UnitError::NoRateUnit("2400".into()))
        );
        assert!(matches!(
            parse_rate("3 furlongs"),
            Err(UnitError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn ambiguous_units_are_refused_listing_what_is_meant() {
        for (input, unit) in [
            ("2.5G", "G"),
            ("4K", "K"),
            ("4KB", "KB"),
            ("2.5gb", "gb"),
            ("1mib", "mib"),
            ("1GIB", "GIB"),
            ("3M", "M"),
        ] {
            match parse_size(input) {
                Err(UnitError::Ambiguous { unit: u, options }) => {
                    assert_eq!(u, unit, "{input}");
                    assert!(options.contains("iB (bytes, 1024-based)"), "{options}");
                    assert!(options.contains("bit (bits)"), "{options}");
                }
                other => panic!("{input}: {other:?}"),
            }
        }
        let e = parse_rate("2.5G").unwrap_err().to_string();
        assert_eq!(
            e,
            "ambiguous unit \"G\": units are case-sensitive (b = bit, B = byte, k = 1000, \
             Ki = 1024); write GB (bytes, 1000-based), GiB (bytes, 1024-based) or Gbit (bits)"
        );
        let e = parse_size("4KB").unwrap_err().to_string();
        assert!(
            e.contains("write kB (bytes, 1000-based), KiB (bytes, 1024-based) or kbit"),
            "{e}"
        );
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
