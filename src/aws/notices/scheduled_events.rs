//! The notice source `events/maintenance/scheduled`: its body goes on, when it changes, to
//! `maintenance`, which decides and acts (see [`crate::aws::scheduled`]). A 404 lists no events:
//! it is handed on as `[]`, so that a drain planned for an event that vanished is called off,
//! and that is said once.

use tokio::sync::watch;

use super::{Clock, Decision, Source};
use crate::journal::NoticeKind;

/// What this source reports (`maintenance` records each new event).
pub const KIND: NoticeKind = NoticeKind::ScheduledEvent;

/// Hands the bodies on to `maintenance`.
pub struct ScheduledEvents {
    to: watch::Sender<Option<String>>,
}

impl ScheduledEvents {
    pub fn new(to: watch::Sender<Option<String>>) -> Self {
        ScheduledEvents { to }
    }
}

impl Source for ScheduledEvents {
    fn kind(&self) -> NoticeKind {
        KIND
    }

    fn path(&self) -> &'static str {
        crate::aws::scheduled::PATH
    }

    fn read(&mut self, body: Option<&str>, _: Clock) -> Option<Decision> {
        let listed = self
            .to
            .borrow()
            .as_deref()
            .is_some_and(|b| b.trim() != "[]");
        if body.is_none() && listed {
            tracing::info!(
                "IMDS {} answered 404: no events listed; read as [] (a drain planned for an event is called off)",
                crate::aws::scheduled::PATH
            );
        }
        let body = body.unwrap_or("[]");
        self.to.send_if_modified(|last| {
            let new = last.as_deref() != Some(body);
            if new {
                *last = Some(body.to_string());
            }
            new
        });
        None
    }
}
