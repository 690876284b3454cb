//! Parses sizes given on the command line (`32m`, `1g`, `4096`).

use crate::error::{Error, Result};

/// Bytes from a number with an optional `k`, `m`, `g` (binary) suffix, as docker reads them.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_lowercase() {
                'b' => 1,
                'k' => 1 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => {
                    return Err(Error::usage(format!(
                        "bad size {s:?}: unknown suffix {c:?}"
                    )))
                }
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| Error::usage(format!("bad size {s:?}: expected a number with k, m or g")))?;
    let bytes = n
        .checked_mul(mult)
        .ok_or_else(|| Error::usage(format!("size {s:?} is too large")))?;
    if bytes == 0 {
        return Err(Error::usage(format!("size {s:?} must be above zero")));
    }
    Ok(bytes)
}

/// A size for listings: `1.5M`, `320K`.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let unit = UNITS.get(u).copied().unwrap_or("B");
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes() {
        assert_eq!(parse_size("32m").ok(), Some(32 << 20));
        assert_eq!(parse_size("32M").ok(), Some(32 << 20));
        assert_eq!(parse_size("1g").ok(), Some(1 << 30));
        assert_eq!(parse_size("4k").ok(), Some(4096));
        assert_eq!(parse_size("4096").ok(), Some(4096));
    }

    #[test]
    fn refuses_garbage() {
        assert!(parse_size("").is_err());
        assert!(parse_size("m").is_err());
        assert!(parse_size("12x").is_err());
        assert!(parse_size("-1m").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("99999999999999g").is_err());
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(12), "12B");
        assert_eq!(human(2048), "2.0K");
        assert_eq!(human(3 << 20), "3.0M");
    }
}
