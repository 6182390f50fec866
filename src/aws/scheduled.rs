//! EC2 scheduled events (`events/maintenance/scheduled`) as data: the body IMDS serves read into
//! [`ScheduledEvent`]s, and what each active one calls for under `--on-maintenance`, decided by
//! the [`Planner`] on the current list — a replacement, a drain at NotBefore minus the margin that
//! a canceled (or vanished) event calls off, or a report; an event that is active again after
//! that is planned again. No I/O: `maintenance` acts on the steps, and all of it is tested here
//! as tables.

use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::config::settings::OnMaintenance;
use crate::names::named_enum;

/// The path polled with the other notices.
pub const PATH: &str = "events/maintenance/scheduled";

/// More events than EC2 ever lists for one instance; a longer list is not believed.
const MAX_EVENTS: usize = 32;
/// Events remembered (so that a listed EventId is not acted on again); the oldest finished go
/// first.
const MAX_TRACKED: usize = 64;
/// External text kept and logged is cut to this many characters.
const MAX_TEXT: usize = 128;

named_enum! {
    /// An event's `Code`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
    pub enum EventCode {
        InstanceReboot = "instance-reboot",
        SystemReboot = "system-reboot",
        SystemMaintenance = "system-maintenance",
        InstanceRetirement = "instance-retirement",
        InstanceStop = "instance-stop",
        /// A code EC2 does not document (yet): still an event that disrupts the instance.
        Other = "other",
    }
}

impl EventCode {
    fn from_wire(code: &str) -> EventCode {
        code.parse().unwrap_or(EventCode::Other)
    }
}

named_enum! {
    /// An event's `State`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum EventState {
        Active = "active",
        Canceled = "canceled",
        Completed = "completed",
        /// A state EC2 does not document: not acted on.
        Other = "other",
    }
}

impl EventState {
    fn from_wire(state: &str) -> EventState {
        state.parse().unwrap_or(EventState::Other)
    }
}

/// One scheduled event as IMDS lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledEvent {
    /// `EventId` (`instance-event-0d59937288b749b32`), cut to [`MAX_TEXT`].
    pub id: String,
    pub code: EventCode,
    /// The code as written, cut to [`MAX_TEXT`] (it names an undocumented one).
    pub code_text: String,
    pub state: EventState,
    /// The earliest the event may begin.
    pub not_before: SystemTime,
    pub not_after: Option<SystemTime>,
    pub description: String,
}

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON array of events")]
    NotAnArray,
    #[error("more than {MAX_EVENTS} events")]
    TooMany,
    #[error("event {index}: {why}")]
    BadEvent { index: usize, why: String },
}

/// The body of `events/maintenance/scheduled`: a JSON array, `[]` when there is nothing.
pub fn parse_events(body: &str) -> Result<Vec<ScheduledEvent>, ParseError> {
    let json: Value =
        serde_json::from_str(body.trim()).map_err(|e| ParseError::NotJson(cap(&e.to_string())))?;
    let items = json.as_array().ok_or(ParseError::NotAnArray)?;
    if items.len() > MAX_EVENTS {
        return Err(ParseError::TooMany);
    }
    items
        .iter()
        .enumerate()
        .map(|(index, item)| parse_event(item).map_err(|why| ParseError::BadEvent { index, why }))
        .collect()
}

fn parse_event(item: &Value) -> Result<ScheduledEvent, String> {
    let text = |key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no {key}"))
    };
    let id = text("EventId")?.trim();
    if id.is_empty() {
        return Err("an empty EventId".to_string());
    }
    let code = text("Code")?;
    let not_before = text("NotBefore")?;
    let not_before = parse_event_time(not_before)
        .ok_or_else(|| format!("NotBefore `{}` is not a time", cap(not_before)))?;
    Ok(ScheduledEvent {
        id: cap(id),
        code: EventCode::from_wire(code),
        code_text: cap(code),
        state: EventState::from_wire(text("State")?),
        not_before,
        not_after: text("NotAfter").ok().and_then(parse_event_time),
        description: text("Description").map(cap).unwrap_or_default(),
    })
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// A time as IMDS writes scheduled events' times: `21 Jan 2019 09:00:43 GMT` (the day may be
/// one digit). `None` for anything else.
pub fn parse_event_time(text: &str) -> Option<SystemTime> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let [day, month, year, clock, "GMT"] = parts.as_slice() else {
        return None;
    };
    let day: i64 = day.parse().ok()?;
    let month = MONTHS.iter().position(|m| m == month)? as i64 + 1;
    let year: i64 = year.parse().ok().filter(|y| (1970..=9999).contains(y))?;
    let hms: Vec<i64> = clock
        .split(':')
        .map(|p| p.parse().ok().filter(|_| p.len() == 2))
        .collect::<Option<_>>()?;
    let [h, m, s] = hms.as_slice() else {
        return None;
    };
    if *h > 23 || *m > 59 || *s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    // 31 Feb and the like do not survive the round trip.
    if civil_from_days(days) != (year, month, day) {
        return None;
    }
    let secs = u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// A time as IMDS writes it in scheduled events (for the simulator and for logs).
pub fn format_event_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rest = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    let month = MONTHS[usize::try_from(m - 1).unwrap_or(0).min(11)];
    format!(
        "{d} {month} {y} {:02}:{:02}:{:02} GMT",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01: (year, month, day).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// At most [`MAX_TEXT`] characters of external text.
fn cap(text: &str) -> String {
    text.chars().take(MAX_TEXT).collect()
}

/// Why the guard stopped caring about an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Canceled,
    Completed,
    /// No longer listed.
    Gone,
}

impl Over {
    pub fn as_str(self) -> &'static str {
        match self {
            Over::Canceled => "canceled",
            Over::Completed => "completed",
            Over::Gone => "no longer listed",
        }
    }
}

/// What the guard does about one event. Every state with a `drain_at` drains then, unless the
/// event is over first: with `replace` it is the backstop for a group that does not replace
/// the instance in time (its ReplaceUnhealthy process suspended, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// `--on-maintenance report`: nothing but the report.
    Reported,
    /// First seen when already over: nothing to do.
    Ignored,
    /// `SetInstanceHealth` is being called.
    Replacing { drain_at: SystemTime },
    /// The group accepted Unhealthy and replaces the instance.
    Replaced { drain_at: SystemTime },
    /// A drain is due then.
    DrainAt(SystemTime),
    /// The drain began.
    Draining,
    /// The event ended before anything else was done about it.
    Over(Over),
}

impl Handling {
    /// The drain still to come, if any.
    pub fn drain_at(self) -> Option<SystemTime> {
        match self {
            Handling::Replacing { drain_at }
            | Handling::Replaced { drain_at }
            | Handling::DrainAt(drain_at) => Some(drain_at),
            _ => None,
        }
    }

    /// The name in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Handling::Reported => "reported",
            Handling::Ignored => "ignored",
            Handling::Replacing { .. } => "replacing",
            Handling::Replaced { .. } => "marked-unhealthy",
            Handling::DrainAt(_) => "drain-scheduled",
            Handling::Draining => "draining",
            Handling::Over(Over::Canceled) => "canceled",
            Handling::Over(Over::Completed) => "completed",
            Handling::Over(Over::Gone) => "gone",
        }
    }
}

/// An event and what the guard does about it, for `/status` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    pub event: ScheduledEvent,
    pub handling: Handling,
    /// Whether the event is in the latest list read.
    pub listed: bool,
}

/// What a new active event calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Report,
    /// Call `SetInstanceHealth`; drain at `drain_at` if the group has not acted by then.
    Replace {
        drain_at: SystemTime,
    },
    Drain {
        at: SystemTime,
    },
}

/// A decision about the events just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A new active event.
    New {
        event: ScheduledEvent,
        action: Action,
    },
    /// A new event that is already canceled or completed (or in an unknown state).
    Ignored { event: ScheduledEvent },
    /// An event ended; `drain_canceled` when a drain still to come was called off.
    Over {
        event: ScheduledEvent,
        why: Over,
        drain_canceled: bool,
    },
}

/// Decides what each event read means: each EventId is acted on once while it stays active,
/// and again when it comes back active after it ended.
#[derive(Debug, Clone)]
pub struct Planner {
    mode: OnMaintenance,
    margin: Duration,
    tracked: Vec<Tracked>,
}

impl Planner {
    pub fn new(mode: OnMaintenance, margin: Duration) -> Planner {
        Planner {
            mode,
            margin,
            tracked: Vec::new(),
        }
    }

    /// Every event seen, oldest first.
    pub fn tracked(&self) -> &[Tracked] {
        &self.tracked
    }

    /// The latest list read (all of it: a missing event is one that went away).
    pub fn read(&mut self, events: &[ScheduledEvent]) -> Vec<Step> {
        let mut steps = Vec::new();
        for event in events {
            match self.tracked.iter().position(|t| t.event.id == event.id) {
                None => steps.push(self.first_sight(event)),
                Some(i) => steps.extend(self.again(i, event)),
            }
        }
        for t in &mut self.tracked {
            t.listed = events.iter().any(|e| e.id == t.event.id);
            if !t.listed && endable(t.handling) {
                steps.push(end(t, Over::Gone));
            }
        }
        self.forget_oldest();
        steps
    }

    fn first_sight(&mut self, event: &ScheduledEvent) -> Step {
        let (handling, step) = if event.state == EventState::Active {
            self.plan(event)
        } else {
            let event = event.clone();
            (Handling::Ignored, Step::Ignored { event })
        };
        self.tracked.push(Tracked {
            event: event.clone(),
            handling,
            listed: true,
        });
        step
    }

    /// What an active event calls for under the mode.
    fn plan(&self, event: &ScheduledEvent) -> (Handling, Step) {
        // Saturating: a margin longer than all of time means at once.
        let drain_at = event
            .not_before
            .checked_sub(self.margin)
            .filter(|t| *t >= SystemTime::UNIX_EPOCH)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (handling, action) = match self.mode {
            OnMaintenance::Report => (Handling::Reported, Action::Report),
            OnMaintenance::Replace => (
                Handling::Replacing { drain_at },
                Action::Replace { drain_at },
            ),
            OnMaintenance::Drain => (Handling::DrainAt(drain_at), Action::Drain { at: drain_at }),
        };
        let event = event.clone();
        (handling, Step::New { event, action })
    }

    /// A known event read again. Its end calls off what was planned; an event active again
    /// after it ended (one poll `canceled` or unlisted, as a flapping IMDS shows) is planned
    /// again: the decision is on the current list, not on the history. A drain that began
    /// stays begun.
    fn again(&mut self, i: usize, event: &ScheduledEvent) -> Option<Step> {
        let rearm = event.state == EventState::Active
            && matches!(
                self.tracked[i].handling,
                Handling::Over(_) | Handling::Ignored
            );
        if rearm {
            let (handling, step) = self.plan(event);
            let t = &mut self.tracked[i];
            (t.event, t.handling) = (event.clone(), handling);
            return Some(step);
        }
        let t = &mut self.tracked[i];
        t.event = event.clone();
        let why = match event.state {
            EventState::Canceled => Over::Canceled,
            EventState::Completed => Over::Completed,
            EventState::Active | EventState::Other => return None,
        };
        endable(t.handling).then(|| end(t, why))
    }

    /// `SetInstanceHealth` was accepted.
    pub fn replaced(&mut self, id: &str) {
        if let Some(t) = self.find(id)
            && let Handling::Replacing { drain_at } = t.handling
        {
            t.handling = Handling::Replaced { drain_at };
        }
    }

    /// `SetInstanceHealth` was refused or impossible: the event is handled as with `drain`. The
    /// drain's time, unless the event ended meanwhile.
    pub fn refused(&mut self, id: &str) -> Option<SystemTime> {
        let t = self.find(id)?;
        let Handling::Replacing { drain_at } = t.handling else {
            return None;
        };
        t.handling = Handling::DrainAt(drain_at);
        Some(drain_at)
    }

    /// The earliest drain still to come.
    pub fn next_drain(&self) -> Option<SystemTime> {
        self.tracked
            .iter()
            .filter_map(|t| t.handling.drain_at())
            .min()
    }

    /// The events whose drain is due at `now`; they are draining from here on.
    pub fn due(&mut self, now: SystemTime) -> Vec<ScheduledEvent> {
        let mut due = Vec::new();
        for t in &mut self.tracked {
            if t.handling.drain_at().is_some_and(|at| at <= now) {
                t.handling = Handling::Draining;
                due.push(t.event.clone());
            }
        }
        due
    }

    fn find(&mut self, id: &str) -> Option<&mut Tracked> {
        self.tracked.iter_mut().find(|t| t.event.id == id)
    }

    /// Keeps the memory bounded: the oldest events that need nothing more go first.
    fn forget_oldest(&mut self) {
        while self.tracked.len() > MAX_TRACKED {
            match self
                .tracked
                .iter()
                .position(|t| !t.listed && finished(t.handling))
            {
                Some(i) => self.tracked.remove(i),
                None => self.tracked.remove(0),
            };
        }
    }
}

/// Whether nothing more will be done about an event.
fn finished(handling: Handling) -> bool {
    matches!(
        handling,
        Handling::Ignored | Handling::Draining | Handling::Over(_)
    )
}

/// Whether an event's end is news: it is still handled, or its drain began (the drain can
/// still be called off while the agent has not heard of it).
fn endable(handling: Handling) -> bool {
    !finished(handling) || handling == Handling::Draining
}

/// Ends a tracked event: any drain still to come is called off. (An instance already marked
/// Unhealthy stays so: the group's replacement cannot be called back.)
fn end(t: &mut Tracked, why: Over) -> Step {
    let drain_canceled = t.handling.drain_at().is_some();
    t.handling = Handling::Over(why);
    Step::Over {
        event: t.event.clone(),
        why,
        drain_canceled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    /// 21 Jan 2019 09:00:43 GMT, the documented example.
    fn jan21() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_548_061_243)
    }

    fn event(id: &str, state: EventState) -> ScheduledEvent {
        ScheduledEvent {
            id: id.to_string(),
            code: EventCode::SystemReboot,
            code_text: "system-reboot".to_string(),
            state,
            not_before: jan21(),
            not_after: None,
            description: String::new(),
        }
    }

    #[test]
    fn event_times_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("21 Jan 2019 09:00:43 GMT", Some(1_548_061_243)),
            ("2 Jan 2006 15:04:05 GMT", Some(1_136_214_245)),
            ("02 Jan 2006 15:04:05 GMT", Some(1_136_214_245)),
            ("29 Feb 2024 00:00:00 GMT", Some(1_709_164_800)),
            ("1 Jan 1970 00:00:00 GMT", Some(0)),
            ("29 Feb 2023 00:00:00 GMT", None),
            ("31 Apr 2024 00:00:00 GMT", None),
            ("21 Jan 2019 09:00:43 UTC", None),
            ("21 Jan 2019 9:00:43 GMT", None),
            ("21 Jan 2019 24:00:00 GMT", None),
            ("21 January 2019 09:00:43 GMT", None),
            ("2019-01-21T09:00:43Z", None),
            ("", None),
        ];
        for (text, want) in cases {
            let got = parse_event_time(text).map(|t| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_secs()
            });
            assert_eq!(got, *want, "{text:?}");
            if let Some(secs) = want
                && !text.starts_with('0')
            {
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(*secs);
                assert_eq!(format_event_time(t), *text, "round trip");
            }
        }
    }

    #[test]
    fn bodies_table() {
        let documented = r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","Description":"scheduled reboot","EventId":"instance-event-0d59937288b749b32","NotAfter":"21 Jan 2019 09:17:23 GMT","State":"active"}]"#;
        let events = parse_events(documented).expect("the documented example");
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.id, "instance-event-0d59937288b749b32");
        assert_eq!(
            (e.code, e.state),
            (EventCode::SystemReboot, EventState::Active)
        );
        assert_eq!(e.not_before, jan21());
        assert_eq!(e.not_after, Some(jan21() + Duration::from_secs(1000)));
        assert_eq!(e.description, "scheduled reboot");
        assert_eq!(parse_events("[]"), Ok(vec![]));
        assert_eq!(parse_events(" []\n"), Ok(vec![]));
        let odd = r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"host-on-fire","EventId":"e-1","State":"smouldering"}]"#;
        let odd = parse_events(odd).expect("unknown words are read");
        assert_eq!(
            (odd[0].code, odd[0].state),
            (EventCode::Other, EventState::Other)
        );
        assert_eq!(odd[0].code_text, "host-on-fire");
        let long_id = format!(
            r#"[{{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"instance-stop","EventId":"{}","State":"active"}}]"#,
            "x".repeat(5000)
        );
        assert_eq!(parse_events(&long_id).expect("read")[0].id.len(), MAX_TEXT);
        let too_many = format!(
            "[{}]",
            vec![&documented[1..documented.len() - 1]; 33].join(",")
        );
        type Is = fn(&ParseError) -> bool;
        let bad: &[(&str, Is)] = &[
            ("\u{1}\u{2}<html>garbage{{{", |e| {
                matches!(e, ParseError::NotJson(_))
            }),
            ("", |e| matches!(e, ParseError::NotJson(_))),
            (r#"{"Code":"system-reboot"}"#, |e| {
                *e == ParseError::NotAnArray
            }),
            ("[1]", |e| {
                matches!(e, ParseError::BadEvent { index: 0, .. })
            }),
            (
                r#"[{"Code":"system-reboot","EventId":"e","State":"active"}]"#,
                |e| e.to_string() == "event 0: no NotBefore",
            ),
            (
                r#"[{"NotBefore":"soon","Code":"system-reboot","EventId":"e","State":"active"}]"#,
                |e| e.to_string().contains("is not a time"),
            ),
            (
                r#"[{"NotBefore":"21 Jan 2019 09:00:43 GMT","Code":"system-reboot","EventId":" ","State":"active"}]"#,
                |e| e.to_string().contains("empty EventId"),
            ),
            (&too_many, |e| *e == ParseError::TooMany),
        ];
        for (body, is) in bad {
            let err = parse_events(body).expect_err(body);
            assert!(is(&err), "{body:?}: {err:?}");
        }
    }

    /// The actions each step asks for, in a short form for tables.
    fn short(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::New { event, action } => match action {
                    Action::Report => format!("report {}", event.id),
                    Action::Replace { .. } => format!("replace {}", event.id),
                    Action::Drain { .. } => format!("drain {}", event.id),
                },
                Step::Ignored { event } => format!("ignore {}", event.id),
                Step::Over {
                    event,
                    why,
                    drain_canceled,
                } => format!("over {} {} {drain_canceled}", event.id, why.as_str()),
            })
            .collect()
    }

    #[test]
    fn each_event_id_is_acted_on_once_while_active_table() {
        use EventState::{Active, Canceled, Completed};
        let a = |state| event("a", state);
        let b = |state| event("b", state);
        // (mode, successive lists read, the steps of each read)
        type Reads = Vec<Vec<ScheduledEvent>>;
        let cases: Vec<(OnMaintenance, Reads, Vec<Vec<&str>>)> = vec![
            (
                OnMaintenance::Replace,
                vec![vec![a(Active)], vec![a(Active)], vec![a(Active), b(Active)]],
                vec![vec!["replace a"], vec![], vec!["replace b"]],
            ),
            (
                OnMaintenance::Drain,
                vec![vec![a(Active)], vec![a(Canceled)], vec![a(Active)]],
                vec![
                    vec!["drain a"],
                    vec!["over a canceled true"],
                    vec!["drain a"],
                ],
            ),
            // Flapping: unlisted for one poll, then active again, is planned again.
            (
                OnMaintenance::Drain,
                vec![vec![a(Active)], vec![], vec![a(Active)], vec![a(Active)]],
                vec![
                    vec!["drain a"],
                    vec!["over a no longer listed true"],
                    vec!["drain a"],
                    vec![],
                ],
            ),
            (
                OnMaintenance::Replace,
                vec![vec![a(Active)], vec![a(Canceled)], vec![a(Active)]],
                vec![
                    vec!["replace a"],
                    vec!["over a canceled true"],
                    vec!["replace a"],
                ],
            ),
            (
                OnMaintenance::Drain,
                vec![vec![a(Active)], vec![]],
                vec![vec!["drain a"], vec!["over a no longer listed true"]],
            ),
            (
                OnMaintenance::Report,
                vec![vec![a(Active)], vec![a(Completed)]],
                vec![vec!["report a"], vec!["over a completed false"]],
            ),
            (
                OnMaintenance::Drain,
                vec![vec![a(Completed), b(Canceled)], vec![a(Active)], vec![]],
                vec![
                    vec!["ignore a", "ignore b"],
                    vec!["drain a"],
                    vec!["over a no longer listed true"],
                ],
            ),
            (
                OnMaintenance::Drain,
                vec![vec![event("c", EventState::Other)]],
                vec![vec!["ignore c"]],
            ),
        ];
        for (mode, reads, want) in cases {
            let mut planner = Planner::new(mode, 10 * MIN);
            let got: Vec<Vec<String>> = reads
                .iter()
                .map(|list| short(&planner.read(list)))
                .collect();
            assert_eq!(got, want, "{mode:?} {reads:?}");
        }
    }

    #[test]
    fn a_drain_is_due_at_not_before_minus_the_margin_and_not_before() {
        let mut planner = Planner::new(OnMaintenance::Drain, 10 * MIN);
        let steps = planner.read(&[event("a", EventState::Active)]);
        let at = jan21() - 10 * MIN;
        assert_eq!(short(&steps), ["drain a"]);
        assert_eq!(planner.next_drain(), Some(at));
        assert!(
            planner.due(at - Duration::from_millis(1)).is_empty(),
            "not before"
        );
        assert_eq!(planner.due(at).len(), 1);
        assert_eq!(planner.tracked()[0].handling, Handling::Draining);
        assert!(planner.due(at + MIN).is_empty(), "once");
        assert_eq!(planner.next_drain(), None);
        // A drain that began has nothing still to come (`drain_canceled` false), but its end is
        // news: the actor calls the begun drain off, which holds only while the agent has not
        // heard of it.
        let steps = planner.read(&[event("a", EventState::Canceled)]);
        assert_eq!(short(&steps), ["over a canceled false"], "{steps:?}");
        // A margin longer than the time left: due at once.
        let mut planner = Planner::new(OnMaintenance::Drain, Duration::from_secs(u64::MAX / 4));
        planner.read(&[event("a", EventState::Active)]);
        assert_eq!(planner.next_drain(), Some(SystemTime::UNIX_EPOCH));
    }

    #[test]
    fn replace_falls_back_to_a_drain_and_keeps_a_backstop_when_it_works() {
        let mut planner = Planner::new(OnMaintenance::Replace, MIN);
        planner.read(&[
            event("a", EventState::Active),
            event("b", EventState::Active),
        ]);
        let at = jan21() - MIN;
        assert_eq!(planner.refused("a"), Some(at));
        assert_eq!(planner.refused("a"), None, "once");
        assert_eq!(planner.tracked()[0].handling, Handling::DrainAt(at));
        planner.replaced("b");
        assert_eq!(
            planner.tracked()[1].handling,
            Handling::Replaced { drain_at: at }
        );
        assert_eq!(planner.refused("b"), None, "replaced already");
        // Both drain at NotBefore minus the margin, unless they end first.
        let steps = planner.read(&[event("a", EventState::Active)]);
        assert_eq!(short(&steps), ["over b no longer listed true"]);
        assert_eq!(planner.due(at).len(), 1);
        assert_eq!(planner.refused("zzz"), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut planner = Planner::new(OnMaintenance::Report, MIN);
        for n in 0..200 {
            planner.read(&[event(&format!("e{n}"), EventState::Active)]);
        }
        assert!(planner.tracked().len() <= MAX_TRACKED);
        assert_eq!(
            planner.tracked().last().map(|t| t.event.id.as_str()),
            Some("e199")
        );
        assert!(
            planner
                .read(&[event("e199", EventState::Active)])
                .is_empty()
        );
    }
}
