//! The notice source `events/recommendations/rebalance`: `{"noticeTime": "RFC 3339"}`, reported,
//! and a drain with `--on-rebalance drain`. It is one notice however its body changes (AWS's own
//! mock recomputes `noticeTime` on every read): counted once, and its updates logged at most
//! once a minute by the poller.

use super::{Clock, Decision, NoticeRecord, Source, VALUE_SHOWN};
use crate::config::settings::OnRebalance;
use crate::fmt::capped;
use crate::journal::NoticeKind;
use crate::machine::state::DrainReason;

/// What this source reports.
pub const KIND: NoticeKind = NoticeKind::Rebalance;

/// The rebalance recommendation, once seen.
#[derive(Debug, Clone)]
pub struct Rebalance {
    on_rebalance: OnRebalance,
    last: Option<String>,
}

impl Rebalance {
    pub fn new(on_rebalance: OnRebalance) -> Self {
        Rebalance {
            on_rebalance,
            last: None,
        }
    }
}

impl Source for Rebalance {
    fn kind(&self) -> NoticeKind {
        KIND
    }

    fn path(&self) -> &'static str {
        "events/recommendations/rebalance"
    }

    fn read(&mut self, body: Option<&str>, clock: Clock) -> Option<Decision> {
        let body = body?.trim();
        if self.last.as_deref() == Some(body) {
            return None;
        }
        let update = self.last.replace(body.to_string()).is_some();
        let value = capped(body, VALUE_SHOWN).into_owned();
        if update {
            // The drain (if any) was asked for with the first body.
            return Some(Decision {
                record: NoticeRecord {
                    kind: KIND,
                    value,
                    seen_at: clock.wall,
                    drain: None,
                },
                drain: None,
                note: "rebalance recommendation updated (still one recommendation)".to_string(),
                update: true,
            });
        }
        let drain = (self.on_rebalance == OnRebalance::Drain).then_some(DrainReason::Rebalance);
        Some(Decision {
            record: NoticeRecord {
                kind: KIND,
                value,
                seen_at: clock.wall,
                drain,
            },
            drain: drain.map(|r| (r, None)),
            note: match drain {
                Some(_) => "rebalance recommendation: draining (--on-rebalance drain)".to_string(),
                None => {
                    "rebalance recommendation: reported only (--on-rebalance ignore)".to_string()
                }
            },
            update: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebalance_drains_only_when_asked() {
        let clock = Clock::now();
        let body = Some("{\"noticeTime\": \"2026-11-28T08:22:00Z\"}");
        let mut ignore = Rebalance::new(OnRebalance::Ignore);
        let d = ignore.read(body, clock).expect("reported");
        assert_eq!(d.drain, None);
        assert_eq!(d.record.kind, NoticeKind::Rebalance);
        let mut drain = Rebalance::new(OnRebalance::Drain);
        let d = drain.read(body, clock).expect("a drain");
        assert_eq!(d.drain, Some((DrainReason::Rebalance, None)));
        assert_eq!(drain.read(body, clock), None);
    }

    #[test]
    fn a_body_that_changes_on_every_read_is_one_notice() {
        let clock = Clock::now();
        let mut source = Rebalance::new(OnRebalance::Drain);
        let first = source
            .read(Some("{\"noticeTime\": \"1\"}"), clock)
            .expect("new");
        assert!(!first.update && first.drain.is_some());
        for n in 2..50 {
            let body = format!("{{\"noticeTime\": \"{n}\"}}");
            let d = source.read(Some(&body), clock).expect("an update");
            assert!(d.update, "{n}");
            assert_eq!(d.drain, None, "drained once");
        }
    }
}
