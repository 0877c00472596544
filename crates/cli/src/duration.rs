//! Human durations for flags: `250ms`, `5s`, `2m`, `1h`, or a plain number of seconds.

use std::time::Duration;

/// Parses `250ms`, `1.5s`, `2m`, `1h` or `3` (seconds).
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 500ms, 5s, 2m)"))?;
    if !n.is_finite() || n < 0.0 {
        return Err(format!("`{s}` must be a non-negative duration"));
    }
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse("3").unwrap(), Duration::from_secs(3));
        assert!(parse("x").is_err());
        assert!(parse("5 parsecs").is_err());
        assert!(parse("-1s").is_err());
    }
}
