//! The guard's own log lines on stderr, in text or JSON, each marked `agent-guard[NAME]` so that
//! they cannot be mistaken for the agent's, which share the same stream.

use std::fmt::Write as _;
use std::time::SystemTime;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;

mod writer;

pub use writer::{dropped_lines, flush};

/// The guard's own log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. `level` is a plain level or `target=level` directives (as
/// `RUST_LOG` writes them), already validated. Directives go through `Targets`, not `EnvFilter`:
/// the guard needs no span or field filters, and `EnvFilter` brings two regex crates (about
/// 230 KiB of the static binary).
pub fn init(name: &str, format: LogFormat, level: &str) {
    let line = Line {
        name: name.to_string(),
        format,
    };
    let label = name.to_string();
    let notice = move |dropped, total| dropped_notice(&label, format, dropped, total).into_bytes();
    let builder = tracing_subscriber::fmt()
        .with_writer(writer::Queued::start(Box::new(notice)))
        .with_ansi(false)
        .event_format(line);
    // A second init (tests running in one process) keeps the first subscriber.
    let _ = match plain_level(level) {
        Some(level) => builder.with_max_level(level).try_init(),
        None => {
            let targets = directives(level)
                .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
            builder
                .with_max_level(LevelFilter::TRACE)
                .finish()
                .with(targets)
                .try_init()
                .map_err(Into::into)
        }
    };
}

/// The line that says log lines were lost to a stalled stderr, in the guard's own format.
fn dropped_notice(name: &str, format: LogFormat, dropped: u64, total: u64) -> String {
    let time = humantime::format_rfc3339_millis(SystemTime::now());
    let message = format!("dropped {dropped} log line(s): stderr was not read fast enough");
    match format {
        LogFormat::Text => {
            format!("{time} agent-guard[{name}] WARN  {message} dropped_total={total}\n")
        }
        LogFormat::Json => {
            let line = serde_json::json!({
                "time": time.to_string(),
                "level": "WARN",
                "source": "agent-guard",
                "name": name,
                "message": message,
                "dropped_total": total,
            });
            format!("{line}\n")
        }
    }
}

/// `target=level` directives, comma-separated, with an optional bare default level
/// (`info,agent_guard::aws=debug`).
pub fn directives(text: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    text.trim().parse::<Targets>()
}

/// `error`, `warn`, `info`, `debug`, `trace` or `off`, as a level filter.
pub fn plain_level(level: &str) -> Option<LevelFilter> {
    level.trim().parse::<LevelFilter>().ok()
}

/// Formats one event as one line.
struct Line {
    name: String,
    format: LogFormat,
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let time = humantime::format_rfc3339_millis(SystemTime::now());
        let level = event.metadata().level();
        match self.format {
            LogFormat::Text => {
                let mut fields = TextFields::default();
                event.record(&mut fields);
                write!(
                    writer,
                    "{time} agent-guard[{}] {level:<5} {}",
                    self.name, fields.message
                )?;
                writeln!(writer, "{}", fields.rest)
            }
            LogFormat::Json => {
                let mut fields = JsonFields::default();
                event.record(&mut fields);
                let mut object = serde_json::Map::new();
                object.insert("time".into(), time.to_string().into());
                object.insert("level".into(), level.as_str().into());
                object.insert("source".into(), "agent-guard".into());
                object.insert("name".into(), self.name.clone().into());
                object.extend(fields.0);
                writeln!(writer, "{}", serde_json::Value::Object(object))
            }
        }
    }
}

/// `message k=v k2=v2`, with values quoted when they hold spaces.
#[derive(Default)]
struct TextFields {
    message: String,
    rest: String,
}

/// The field that carries a [`crate::journal::Record`]: for tools, so the text format omits it.
const JOURNAL: &str = "journal";

impl Visit for TextFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == JOURNAL {
            return;
        }
        if field.name() == "message" {
            self.message.push_str(value);
        } else if value.contains(char::is_whitespace) || value.is_empty() {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.record_str(field, &format!("{value:?}"));
        }
    }
}

#[derive(Default)]
struct JsonFields(serde_json::Map<String, serde_json::Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == JOURNAL {
            // The journal record is JSON already: embed it as an object, `"event": {…}`.
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(&text) {
                self.0.insert("event".into(), record);
            }
            return;
        }
        self.0.insert(field.name().into(), text.into());
    }
}

#[cfg(test)]
mod directive_tests {
    use tracing::Level;

    use super::*;

    #[test]
    fn rust_log_style_directives_parse_and_filter_by_target() {
        let targets = directives("warn,agent_guard::aws=debug").expect("valid directives");
        assert!(targets.would_enable("agent_guard::aws::lifecycle", &Level::DEBUG));
        assert!(!targets.would_enable("agent_guard::aws::lifecycle", &Level::TRACE));
        assert!(!targets.would_enable("hyper", &Level::INFO));
        assert!(targets.would_enable("hyper", &Level::WARN));
        assert!(directives("agent_guard=loud").is_err());
        assert_eq!(plain_level(" debug "), Some(LevelFilter::DEBUG));
        assert_eq!(plain_level("agent_guard=debug"), None);
    }
}
