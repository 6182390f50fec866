//! Durations, times and values as people write and read them: `500ms`, `2s`, `5m`, `1h` in flags
//! and logs, RFC 3339 on the wire, outside values cut to a length a log line can hold. Pure
//! functions, shared by configuration, logs and the protocol; none of them can panic on any input.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

/// The longest duration any option accepts: a year. Every deadline is `now` plus at most a few of
/// these, far from where `Instant` or `SystemTime` arithmetic overflows, and no real timeout,
/// interval or grace comes near it.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(365 * 86_400);

/// How `MAX_DURATION` is written in messages (and, by hand, in `--help`).
pub(crate) const MAX_DURATION_TEXT: &str = "365d";

/// A duration: `500ms`, `2s`, `5m`, `1h`, `1h 30m`, or a bare number of seconds; at most
/// [`MAX_DURATION`].
pub(crate) fn parse_duration(v: &str) -> Result<Duration, String> {
    let t = v.trim();
    let parsed = if let Ok(secs) = t.parse::<f64>() {
        // NaN, infinities and negatives fail `try_from_secs_f64`; huge values fail the cap below.
        if secs.is_nan() || secs < 0.0 {
            return Err("expected a non-negative duration".to_string());
        }
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("expected a duration such as 500ms, 2s, 5m or 1h ({e})"))?
    };
    if parsed > MAX_DURATION {
        return Err(format!("at most {MAX_DURATION_TEXT}"));
    }
    Ok(parsed)
}

/// A duration for people, in logs, replies and reports: `500ms`, `9.6s`, `30s`, `1m 50s`,
/// `3h 50m`, `364d 23h`. Rounded to the two largest units (a tenth of a second below a minute),
/// never the nine units of a computed `Duration` (`9s 589ms 451us 748ns`) nor calendar months;
/// anything past a year (no option allows one) reads `more than 365d`.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d > MAX_DURATION {
        return format!("more than {MAX_DURATION_TEXT}");
    }
    let ms = d.as_millis();
    if ms == 0 {
        return "<1ms".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return match tenths % 10 {
            0 => format!("{}s", tenths / 10),
            t => format!("{}.{t}s", tenths / 10),
        };
    }
    // Rounded at each unit before choosing the next, so 59.96 s is `1m`, not `60.0s`.
    let secs = (ms + 500) / 1000;
    if secs < 3600 {
        return two_units(secs / 60, "m", secs % 60, "s");
    }
    let mins = (secs + 30) / 60;
    if mins < 24 * 60 {
        return two_units(mins / 60, "h", mins % 60, "m");
    }
    let hours = (mins + 30) / 60;
    two_units(hours / 24, "d", hours % 24, "h")
}

/// `1m 50s`, or `2m` when the smaller unit is zero.
fn two_units(big: u128, big_unit: &str, small: u128, small_unit: &str) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// The last moment RFC 3339 can write with a four-digit year: 9999-12-31T23:59:59.999Z.
const LAST_WRITABLE: Duration = Duration::from_millis(253_402_300_799_999);

/// A wall-clock time in RFC 3339 with milliseconds, UTC. Times outside what the format can write
/// (before 1970, after 9999) are written as the nearest one it can: a deadline "in the year
/// 586,000" is shown as the end of 9999 rather than panicking in the middle of a reply.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let since_epoch = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .min(LAST_WRITABLE);
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + since_epoch).to_string()
}

/// `now + d` on the wall clock, saturating at the last time [`rfc3339`] can write.
pub(crate) fn wall_after(now: SystemTime, d: Duration) -> SystemTime {
    let last = SystemTime::UNIX_EPOCH + LAST_WRITABLE;
    now.checked_add(d).map_or(last, |t| t.min(last))
}

/// `text` cut to at most `max` bytes (at a character boundary), with what was cut said: a value
/// read from outside (an IMDS body, a notice) may be megabytes, a log line should not be.
pub(crate) fn capped(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

/// An error and its causes on one line: the SDKs nest the useful part several levels down.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_for_people_are_short_and_rounded() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(1), "<1ms"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(999), "999ms"),
            (Duration::from_secs(2), "2s"),
            (Duration::new(9, 589_451_748), "9.6s"),
            (Duration::from_millis(29_600), "29.6s"),
            (Duration::from_millis(29_960), "30s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(59_960), "1m"),
            (Duration::from_secs(110), "1m 50s"),
            (Duration::from_millis(110_400), "1m 50s"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_millis(3_599_600), "1h"),
            (Duration::from_secs(3600 + 30 * 60 + 24), "1h 30m"),
            (Duration::from_secs(13_824), "3h 50m"),
            (Duration::from_secs(86_400), "1d"),
            (Duration::from_secs(365 * 86_400 - 1), "365d"),
            (Duration::from_secs(364 * 86_400 + 23 * 3600), "364d 23h"),
            (MAX_DURATION, "365d"),
            (MAX_DURATION + Duration::from_secs(1), "more than 365d"),
            (Duration::MAX, "more than 365d"),
        ];
        for (d, want) in cases {
            assert_eq!(format_duration(d), want, "{d:?}");
        }
        // What a person reads parses back as the flag it would be, where it is whole.
        for d in [2, 30, 110, 300, 3600, 5400, 86_400] {
            let d = Duration::from_secs(d);
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        for bad in ["", "5x", "-1", "soon", "inf", "NaN", "-0.5"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_past_the_maximum_are_refused_whatever_their_spelling() {
        for huge in [
            "3000000000000000h",
            "366d",
            "31536001",
            "1e300",
            "99999999999999999999999",
            "584542years",
            "8760h 1s",
        ] {
            let err = parse_duration(huge).expect_err(huge);
            assert!(
                err.contains("at most 365d") || err.starts_with("expected a duration"),
                "{huge}: {err}"
            );
        }
        assert_eq!(
            parse_duration("3000000000000000h"),
            Err("at most 365d".to_string())
        );
    }

    #[test]
    fn times_outside_rfc3339_are_written_as_the_nearest_it_can() {
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(18_446_744_073_709);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59.999Z");
        let before = SystemTime::UNIX_EPOCH
            .checked_sub(Duration::from_secs(86_400))
            .expect("a time before 1970");
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let now = SystemTime::now();
        assert_eq!(
            rfc3339(wall_after(now, Duration::MAX)),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            wall_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[test]
    fn long_values_are_capped_at_a_character_boundary() {
        assert_eq!(capped("short", 10), "short");
        let long = "é".repeat(1000);
        let cut = capped(&long, 101);
        assert!(cut.starts_with(&"é".repeat(50)), "{cut}");
        assert!(cut.ends_with("… (2000 bytes in all)"), "{cut}");
        assert!(cut.len() < 140, "{}", cut.len());
    }
}
