//! Durations and times as people write and read them: `500ms`, `2s`, `5m`, `1h` in flags and
//! logs, RFC 3339 on the wire. Pure functions, shared by configuration, logs and the protocol.

use std::time::{Duration, SystemTime};

/// A duration: `500ms`, `2s`, `5m`, `1h`, `1h 30m`, or a bare number of seconds.
pub(crate) fn parse_duration(v: &str) -> Result<Duration, String> {
    let t = v.trim();
    if let Ok(secs) = t.parse::<f64>() {
        return if (0.0..1e12).contains(&secs) {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err("expected a non-negative duration".to_string())
        };
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("expected a duration such as 500ms, 2s, 5m or 1h ({e})"))
}

/// Formats a duration the way it is written in flags: `30s`, `1m 30s`, `500ms`.
pub(crate) fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A wall-clock time in RFC 3339 with milliseconds, UTC.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        for bad in ["", "5x", "-1", "soon", "inf"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
