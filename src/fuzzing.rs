//! The entry points of the fuzz targets in `fuzz/`: each takes the bytes libFuzzer makes up, gives
//! them to one parser of what comes from outside the guard (the control socket, sd_notify, IMDS,
//! the config file, durations, signal names), and checks what must hold for every input besides
//! not panicking. Hidden from the docs and not an API: the parsers themselves stay crate-private.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use crate::agent::control::{self, MAX_EXTEND};
use crate::agent::protocol::{self, Request};
use crate::agent::sdnotify::{self, Notification};
use crate::aws::notices::{Clock, ImdsStatus, NoticeSettings, VALUE_SHOWN, Wiring, sources};
use crate::config::{self, OnRebalance, Settings};
use crate::fmt::{MAX_DURATION, format_duration, parse_duration, rfc3339, wall_after};
use crate::journal::Record;
use crate::machine::state::later;
use crate::process::sig::Sig;

/// A control-socket request line. One that is accepted writes back as a line that reads the
/// same; the framing gives the same lines however the bytes are split, each whole, ending with
/// its newline and at most `MAX_LINE` long.
pub fn control_line(data: &[u8]) {
    if let Ok(request) = Request::parse(data) {
        let line = protocol::to_line(&request).expect("an accepted request serializes");
        assert_eq!(Request::parse(&line).ok(), Some(request), "round trip");
    }
    let chunk = data.first().map_or(1, |b| usize::from(b % 16) + 1);
    let whole = control::frame_lines(data, data.len());
    assert_eq!(whole, control::frame_lines(data, chunk), "split at {chunk}");
    for line in whole.iter().flatten() {
        assert!(line.ends_with(b"\n") && line.len() <= control::MAX_LINE);
        let _ = Request::parse(line);
    }
}

/// An sd_notify datagram. Refused only when it is not UTF-8; at most one notification per line;
/// an extension, capped as `Control` caps it, makes a deadline that can be computed and written.
pub fn sd_notify(data: &[u8]) {
    let Ok(notifications) = sdnotify::parse(data) else {
        assert!(std::str::from_utf8(data).is_err());
        return;
    };
    let lines = data.split(|b| *b == b'\n').count();
    assert!(notifications.len() <= lines);
    for notification in notifications {
        if let Notification::ExtendTimeout(by) = notification {
            let by = by.min(MAX_EXTEND);
            let _ = later(Instant::now(), by);
            assert_eq!(rfc3339(wall_after(SystemTime::now(), by)).len(), 24);
        }
    }
}

/// A body read from IMDS. It is read as scheduled events, then the first byte picks the notice
/// source of the registry and the settings; the rest is the body. Values kept and logged stay
/// short, a spot deadline is never in the past, and the same body twice is news once.
pub fn imds_notice(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let body = String::from_utf8_lossy(rest);
    // The same body as EC2 scheduled events (`events/maintenance/scheduled`): whatever it holds,
    // reading it ends, as events or as an error, never as a panic.
    let _ = crate::aws::scheduled::parse_events(&body);
    let on_rebalance = if pick & 0x80 == 0 {
        OnRebalance::Ignore
    } else {
        OnRebalance::Drain
    };
    let (to, _bodies) = tokio::sync::watch::channel(None);
    let wiring = Wiring {
        settings: NoticeSettings {
            poll: Duration::from_secs(2),
            on_rebalance,
            spot_margin: Duration::from_secs(u64::from(pick >> 2 & 0x1f)),
        },
        scheduled: Some(to),
    };
    let mut all = sources(&wiring);
    let count = all.len();
    let source = &mut all[usize::from(pick) % count];
    let clock = Clock::now();
    if let Some(decision) = source.read(Some(&body), clock) {
        assert!(decision.record.value.len() <= VALUE_SHOWN + 40);
        assert!(
            decision.note.len() <= VALUE_SHOWN + 300,
            "{}",
            decision.note.len()
        );
        if let Some((_, Some(kill_by))) = decision.drain {
            assert!(kill_by >= clock.mono);
        }
        let journal = Record::NoticeSeen {
            kind: decision.record.kind,
            value: decision.record.value.clone(),
            drain: decision.drain.map(|(reason, _)| reason),
        };
        // JSON writes a control character as six: the line stays bounded, if not short.
        assert!(journal.json().len() <= 6 * VALUE_SHOWN + 200);
        let mut status = ImdsStatus::default();
        status.record_notice(decision.record);
        assert_eq!(status.notices_of(status.notices[0].kind), 1);
    }
    assert!(
        source.read(Some(&body), clock).is_none(),
        "the same body is news once"
    );
}

/// A config file. Whatever it says, a value that is accepted is within its bounds, and the
/// `--check-config` listing of it can be written.
pub fn config_file(data: &[u8]) {
    static DEFAULTS: OnceLock<Option<Settings>> = OnceLock::new();
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some(defaults) = DEFAULTS.get_or_init(|| config::default_settings().ok()) else {
        return;
    };
    if let Ok(config) = config::check_file_text(defaults, text) {
        for d in [
            config.stop_timeout,
            config.drain_timeout,
            config.ready_timeout,
            config.imds_poll,
            config.spot_margin,
            config.check_interval,
            config.check_timeout,
        ] {
            assert!(d <= MAX_DURATION);
        }
    }
}

/// A duration as flags, env and files write it. One accepted is at most the maximum, makes a
/// deadline and a wall-clock time that can be written, and reads back from how it is written.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_duration(text) {
        Ok(d) => {
            assert!(d <= MAX_DURATION);
            let now = Instant::now();
            assert!(later(now, d) >= now);
            assert_eq!(rfc3339(wall_after(SystemTime::now(), d)).len(), 24);
            // Shown to people: short whatever the value, and whole values read back.
            let shown = format_duration(d);
            assert!(shown.len() <= 16, "{text:?}: {shown}");
            if d.subsec_nanos() == 0 && d.as_secs() % 60 == 0 && d.as_secs() < 86_400 {
                assert_eq!(parse_duration(&shown), Ok(d), "{text:?}");
            }
        }
        Err(why) => assert!(!why.is_empty()),
    }
}

/// A signal name or number. One accepted is a signal the kernel knows, and its name reads back
/// as the same signal.
pub fn signal(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sig) = text.parse::<Sig>() {
        assert_eq!(Sig::from_raw(sig.raw()), Some(sig));
        assert_eq!(sig.name().parse::<Sig>(), Ok(sig));
    }
}
