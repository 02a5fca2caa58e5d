//! Parsing of the human units the command line takes, in `tc`'s spelling: durations
//! (`25ms`, `1s`), bit rates (`200mbit`, `1gbit`) and byte sizes (`512k`), plus
//! probabilities written as fractions or percentages.

use std::time::Duration;

use crate::NetemError;

fn bad(what: &str, s: &str, hint: &str) -> NetemError {
    NetemError::InvalidConfig(format!("cannot parse {what} {s:?} ({hint})"))
}

/// Splits `"12.5ms"` into `(12.5, "ms")`, with the unit lower-cased.
fn split_number(s: &str) -> Option<(f64, String)> {
    let s = s.trim();
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(end);
    let value: f64 = num.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((value, unit.trim().to_ascii_lowercase()))
}

/// Parses a duration such as `25ms`, `1s`, `1.5ms`, `300us` or `0` (units: `ns`, `us`,
/// `µs`, `ms`, `s`; a bare number is milliseconds, as one-way delays usually are).
pub fn parse_duration(s: &str) -> Result<Duration, NetemError> {
    const HINT: &str = "e.g. 25ms, 1s, 300us";
    let (value, unit) = split_number(s).ok_or_else(|| bad("duration", s, HINT))?;
    let scale = match unit.as_str() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "" | "ms" => 1e-3,
        "s" | "sec" => 1.0,
        _ => return Err(bad("duration", s, HINT)),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|_| bad("duration", s, HINT))
}

/// Parses a bit rate such as `200mbit`, `1gbit`, `500kbit` or `64000bit` (decimal
/// multiples, like `tc`), or `unlimited` / `0` for no limit (`None`).
pub fn parse_rate(s: &str) -> Result<Option<u64>, NetemError> {
    const HINT: &str = "e.g. 200mbit, 1gbit, unlimited";
    let t = s.trim().to_ascii_lowercase();
    if t == "unlimited" || t == "none" {
        return Ok(None);
    }
    let (value, unit) = split_number(&t).ok_or_else(|| bad("rate", s, HINT))?;
    let scale = match unit.as_str() {
        "" | "bit" | "bps" => 1.0,
        "k" | "kbit" => 1e3,
        "m" | "mbit" => 1e6,
        "g" | "gbit" => 1e9,
        "t" | "tbit" => 1e12,
        _ => return Err(bad("rate", s, HINT)),
    };
    let bps = (value * scale).round();
    if bps == 0.0 {
        return Ok(None);
    }
    if bps > u64::MAX as f64 {
        return Err(bad("rate", s, HINT));
    }
    Ok(Some(bps as u64))
}

/// Parses a byte size such as `512k`, `64kb`, `4m` or `1500` (binary multiples, like
/// `tc`: `k` is 1024 bytes).
pub fn parse_size(s: &str) -> Result<usize, NetemError> {
    const HINT: &str = "e.g. 512k, 4m, 1500";
    let (value, unit) = split_number(s).ok_or_else(|| bad("size", s, HINT))?;
    let scale = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" | "kib" => 1024.0,
        "m" | "mb" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" | "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(bad("size", s, HINT)),
    };
    let bytes = (value * scale).round();
    if bytes > usize::MAX as f64 {
        return Err(bad("size", s, HINT));
    }
    Ok(bytes as usize)
}

/// Parses a probability written as a fraction (`0.01`) or a percentage (`1%`).
pub fn parse_probability(s: &str) -> Result<f64, NetemError> {
    const HINT: &str = "a fraction in [0, 1] such as 0.01, or a percentage such as 1%";
    let t = s.trim();
    let (num, scale) = match t.strip_suffix('%') {
        Some(n) => (n.trim(), 0.01),
        None => (t, 1.0),
    };
    let p: f64 = num.parse().map_err(|_| bad("probability", s, HINT))?;
    let p = p * scale;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad("probability", s, HINT));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("25ms").unwrap(), Duration::from_millis(25));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(
            parse_duration("1.5ms").unwrap(),
            Duration::from_micros(1500)
        );
        assert_eq!(parse_duration("300us").unwrap(), Duration::from_micros(300));
        assert_eq!(parse_duration("300µs").unwrap(), Duration::from_micros(300));
        assert_eq!(parse_duration("75").unwrap(), Duration::from_millis(75));
        assert_eq!(parse_duration(" 5 ms ").unwrap(), Duration::from_millis(5));
        for bad in ["", "ms", "-1ms", "5 parsecs", "1.2.3s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("200mbit").unwrap(), Some(200_000_000));
        assert_eq!(parse_rate("1gbit").unwrap(), Some(1_000_000_000));
        assert_eq!(parse_rate("1.5Gbit").unwrap(), Some(1_500_000_000));
        assert_eq!(parse_rate("500kbit").unwrap(), Some(500_000));
        assert_eq!(parse_rate("64000").unwrap(), Some(64_000));
        assert_eq!(parse_rate("unlimited").unwrap(), None);
        assert_eq!(parse_rate("0").unwrap(), None);
        for bad in ["", "fast", "10mbyte", "-5mbit"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512k").unwrap(), 512 * 1024);
        assert_eq!(parse_size("64kb").unwrap(), 64 * 1024);
        assert_eq!(parse_size("4m").unwrap(), 4 * 1024 * 1024);
        assert_eq!(parse_size("1500").unwrap(), 1500);
        for bad in ["", "k", "12q"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn probabilities() {
        assert_eq!(parse_probability("0.01").unwrap(), 0.01);
        assert!((parse_probability("1%").unwrap() - 0.01).abs() < 1e-15);
        assert_eq!(parse_probability("0").unwrap(), 0.0);
        for bad in ["1.5", "-0.1", "200%", "x", "NaN"] {
            assert!(parse_probability(bad).is_err(), "{bad}");
        }
    }
}
