//! The notice source `spot/instance-action`: `{"action": "terminate|stop|hibernate", "time":
//! "RFC 3339"}`, a drain whose agent must be gone by the notice time minus `--spot-margin`.
//! It is one notice however its body changes (AWS's own mock recomputes `time` on every read):
//! counted once, updates logged at most once a minute by the poller, and a new time passed on
//! only when it comes earlier.

use std::time::{Duration, Instant, SystemTime};

use super::{Clock, Decision, NoticeRecord, Source, VALUE_SHOWN};
use crate::fmt::{capped, format_duration};
use crate::journal::NoticeKind;
use crate::machine::state::DrainReason;

/// What this source reports.
pub const KIND: NoticeKind = NoticeKind::Spot;

/// How long a spot notice whose time cannot be read is assumed to give: AWS's usual warning.
const SPOT_FALLBACK: Duration = Duration::from_secs(120);

/// The spot interruption notice, once seen.
#[derive(Debug, Clone)]
pub struct Spot {
    margin: Duration,
    last: Option<String>,
    /// The latest SIGKILL time asked for so far.
    kill_by: Option<Instant>,
}

impl Spot {
    pub fn new(margin: Duration) -> Self {
        Spot {
            margin,
            last: None,
            kill_by: None,
        }
    }
}

impl Source for Spot {
    fn kind(&self) -> NoticeKind {
        KIND
    }

    fn path(&self) -> &'static str {
        "spot/instance-action"
    }

    fn read(&mut self, body: Option<&str>, clock: Clock) -> Option<Decision> {
        let body = body?.trim();
        if self.last.as_deref() == Some(body) {
            return None;
        }
        self.last = Some(body.to_string());
        // Losing work is worse than draining early: an unreadable notice still counts, with the
        // two minutes AWS usually gives.
        let (action, notice_at, note_extra) = match parse_spot(body) {
            Some((action, time)) => (capped(&action, 64).into_owned(), time, ""),
            None => (
                "unknown".to_string(),
                clock.wall + SPOT_FALLBACK,
                " (body unreadable: assuming 2 minutes)",
            ),
        };
        let kill_by_sys = notice_at
            .checked_sub(self.margin)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let left = kill_by_sys
            .duration_since(clock.wall)
            .unwrap_or(Duration::ZERO);
        let kill_by = crate::machine::state::later(clock.mono, left);
        let update = self.kill_by.is_some();
        // An update matters only when it leaves less time than the deadline already set.
        let sooner = self.kill_by.is_none_or(|before| kill_by < before);
        if sooner {
            self.kill_by = Some(kill_by);
        }
        let drain = sooner.then_some((DrainReason::SpotInterruption, Some(kill_by)));
        let when = crate::fmt::rfc3339(notice_at);
        let note = match update {
            false => format!(
                "spot interruption notice: {action} at {when}{note_extra}; the agent must be gone within {}",
                format_duration(left)
            ),
            true if sooner => format!(
                "spot interruption notice updated: {action} at {when}{note_extra}; the agent must now be gone within {}",
                format_duration(left)
            ),
            true => format!(
                "spot interruption notice updated: {action} at {when}{note_extra}; the deadline already set stands"
            ),
        };
        Some(Decision {
            record: NoticeRecord {
                kind: KIND,
                value: capped(body, VALUE_SHOWN).into_owned(),
                seen_at: clock.wall,
                drain: Some(DrainReason::SpotInterruption),
            },
            drain,
            note,
            update,
        })
    }
}

/// The action and time of a spot notice, if it is the JSON EC2 writes.
fn parse_spot(body: &str) -> Option<(String, SystemTime)> {
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let action = json.get("action")?.as_str()?.to_string();
    let time = humantime::parse_rfc3339_weak(json.get("time")?.as_str()?).ok()?;
    Some((action, time))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_at(t: SystemTime) -> String {
        let time = humantime::format_rfc3339_millis(t);
        format!("{{\"action\": \"terminate\", \"time\": \"{time}\"}}")
    }

    #[test]
    fn spot_deadline_is_the_notice_time_minus_the_margin() {
        let clock = Clock::now();
        let mut source = Spot::new(Duration::from_secs(10));
        let time = humantime::format_rfc3339_seconds(clock.wall + Duration::from_secs(120));
        let body = format!("{{\"action\": \"terminate\", \"time\": \"{time}\"}}");
        let d = source.read(Some(&body), clock).expect("a notice");
        let (reason, kill_by) = d.drain.expect("a drain");
        assert_eq!(reason, DrainReason::SpotInterruption);
        let left = kill_by.expect("a hard deadline").duration_since(clock.mono);
        // Whole seconds in the notice: between 109 and 110 s after `now`.
        assert!(
            left > Duration::from_secs(108) && left <= Duration::from_secs(110),
            "{left:?}"
        );
        assert_eq!(
            source.read(Some(&body), clock),
            None,
            "the same notice is acted on once"
        );
    }

    #[test]
    fn an_unreadable_spot_notice_still_drains_with_two_minutes() {
        let clock = Clock::now();
        let mut source = Spot::new(Duration::from_secs(10));
        let d = source.read(Some("<html>oops"), clock).expect("a notice");
        let (_, kill_by) = d.drain.expect("a drain");
        assert_eq!(kill_by, Some(clock.mono + Duration::from_secs(110)));
        assert!(d.note.contains("unreadable"), "{}", d.note);
    }

    #[test]
    fn a_past_spot_time_leaves_no_time() {
        let clock = Clock::now();
        let mut source = Spot::new(Duration::from_secs(10));
        let body = "{\"action\":\"stop\",\"time\":\"2020-01-01T00:00:00Z\"}";
        let d = source.read(Some(body), clock).expect("a notice");
        assert_eq!(
            d.drain,
            Some((DrainReason::SpotInterruption, Some(clock.mono)))
        );
    }

    #[test]
    fn a_time_recomputed_on_every_read_is_one_notice_and_only_a_sooner_one_moves_the_deadline() {
        let clock = Clock::now();
        let mut source = Spot::new(Duration::ZERO);
        let first = source
            .read(Some(&body_at(clock.wall + Duration::from_secs(120))), clock)
            .expect("new");
        assert!(!first.update && first.drain.is_some());
        for ms in 1..20 {
            let later = clock.wall + Duration::from_secs(120) + Duration::from_millis(ms * 200);
            let d = source.read(Some(&body_at(later)), clock).expect("update");
            assert!(d.update && d.drain.is_none(), "{ms}: {d:?}");
        }
        let sooner = clock.wall + Duration::from_secs(60);
        let d = source.read(Some(&body_at(sooner)), clock).expect("update");
        assert!(d.update, "{d:?}");
        let (_, kill_by) = d.drain.expect("a sooner deadline is passed on");
        assert!(kill_by < Some(clock.mono + Duration::from_secs(61)));
    }
}
