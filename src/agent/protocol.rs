//! The control socket's wire protocol as types: the requests a client sends, the replies and
//! events it reads, one JSON object per line (docs/reference.md, "Talking to the guard").
//!
//! The server (`agent::control`) and `agent-guard ctl` speak through these types, so the protocol
//! is written down once (the drill still writes its two requests by hand). Pure: no I/O, nothing
//! above `machine::state` imported.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::machine::state::{DrainReason, PhaseName};
use crate::names::named_enum;

/// One request line, `{"op":"…", …}`. Fields other than those named here are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// The whole state (the same body as `/status`).
    Status,
    /// Receive events on this connection from now on.
    Subscribe,
    /// The agent is ready (counts with `--ready-on notify` only).
    Ready,
    /// The agent has finished its work: stop it now rather than at the drain deadline.
    Drained,
    /// The agent holds this much work.
    Busy { in_flight: u64 },
    /// More time before the drain deadline (or the stop grace); must be > 0.
    Extend { seconds: f64 },
    /// Drain now, as an operator. The reason is only a note for the log, so a reason that is not
    /// a string is ignored rather than refused (as the server always did).
    Drain {
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            deserialize_with = "text_or_none"
        )]
        reason: Option<String>,
        /// Deregister the instance from its load balancers' target groups first, and tell the
        /// agent once they stopped sending (`ctl drain --deregister`).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        deregister: bool,
    },
}

named_enum! {
    /// A request's `op`, in the order the error for an unknown one lists them. The names are
    /// read here and written by serde's `rename_all` on [`Request`]; [`Request::op`] (exhaustive)
    /// and a test that every op's request is written with its name keep the two one list.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Op {
        Status = "status",
        Subscribe = "subscribe",
        Ready = "ready",
        Drained = "drained",
        Busy = "busy",
        Extend = "extend",
        Drain = "drain",
    }
}

/// "status, subscribe, … or drain", for the unknown op's error.
fn every_op() -> String {
    match Op::NAMES.split_last() {
        Some((last, init)) => format!("{} or {last}", init.join(", ")),
        None => String::new(),
    }
}

/// Why a request line was refused. The texts are part of the protocol: clients and tests match
/// them, so they stay as they were when each field was checked by hand.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid JSON: {0}")]
    InvalidJson(serde_json::Error),
    #[error("missing \"op\"")]
    MissingOp,
    #[error("unknown op `{0}` (expected {ops})", ops = every_op())]
    UnknownOp(String),
    #[error("\"in_flight\" must be a whole number ≥ 0")]
    InFlight,
    #[error("\"seconds\" must be a number > 0")]
    Seconds,
}

impl Request {
    /// Reads one request line (trailing newline or not).
    ///
    /// In two steps, because serde's own errors for an internally tagged enum would not say which
    /// rule was broken: first the JSON and the `op` (a missing or unknown op has its own answer),
    /// then the typed fields, whose only way to fail is the one field each op checks.
    pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
        let value: Value = serde_json::from_slice(line).map_err(RequestError::InvalidJson)?;
        let op = match value.get("op") {
            Some(Value::String(op)) => op.as_str(),
            _ => return Err(RequestError::MissingOp),
        };
        let Ok(op) = op.parse::<Op>() else {
            return Err(RequestError::UnknownOp(op.to_string()));
        };
        // Only `busy` and `extend` have a field that can be wrong (`drain`'s note cannot).
        let field_error = if op == Op::Busy {
            RequestError::InFlight
        } else {
            RequestError::Seconds
        };
        let request = Request::deserialize(&value).map_err(|_| field_error)?;
        match request {
            Request::Extend { seconds } if !(seconds > 0.0 && seconds.is_finite()) => {
                Err(RequestError::Seconds)
            }
            request => Ok(request),
        }
    }
}

// Only the tests ask a request for its op; compiled with them, the exhaustive match makes a
// new request variant name its op.
#[cfg(test)]
impl Request {
    /// The request's op.
    pub fn op(&self) -> Op {
        match self {
            Request::Status => Op::Status,
            Request::Subscribe => Op::Subscribe,
            Request::Ready => Op::Ready,
            Request::Drained => Op::Drained,
            Request::Busy { .. } => Op::Busy,
            Request::Extend { .. } => Op::Extend,
            Request::Drain { .. } => Op::Drain,
        }
    }
}

/// A string, or `None` for anything else (absent, null, a number…).
fn text_or_none<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(text) => Some(text),
        _ => None,
    })
}

/// The reply to every request but `status` (whose body is `model::status::Status`, `ok` included):
/// `{"ok":true,…}` or `{"ok":false,"error":"…"}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Missing counts as a refusal, for a client reading a line it does not understand.
    #[serde(default)]
    pub ok: bool,
    /// Why the request was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `subscribe`: events follow on this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<bool>,
    /// `subscribe`: the phase when the subscription began (also in the `status` body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<PhaseName>,
    /// `ready`: why the request changed nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
}

impl Reply {
    /// Done.
    pub fn ok() -> Reply {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    /// Refused, and why.
    pub fn refused(error: impl std::fmt::Display) -> Reply {
        Reply {
            ok: false,
            error: Some(error.to_string()),
            ..Reply::default()
        }
    }

    /// Subscribed, in `phase`.
    pub fn subscribed(phase: PhaseName) -> Reply {
        Reply {
            subscribed: Some(true),
            phase: Some(phase),
            ..Reply::ok()
        }
    }

    /// Accepted but without effect, and why.
    pub fn ignored(why: &str) -> Reply {
        Reply {
            ignored: Some(why.to_string()),
            ..Reply::ok()
        }
    }
}

/// What a subscriber hears, `{"event":"…", …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    /// The phase changed to this.
    Phase { phase: PhaseName },
    /// A drain started, or its deadline moved.
    Drain {
        reason: DrainReason,
        /// The deadline as an RFC 3339 time with milliseconds.
        deadline: String,
        /// The same deadline from now, for clients without a good clock.
        deadline_in_ms: u64,
    },
    /// The subscriber fell behind and missed this many events; it hears the rest.
    Lagged { missed: u64 },
}

/// `message` as one protocol line, newline included.
pub fn to_line(message: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Request, String> {
        Request::parse(line.as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn every_op_parses_and_extra_fields_are_ignored() {
        let cases = [
            (r#"{"op":"status"}"#, Request::Status),
            (r#"{"op":"subscribe","x":1}"#, Request::Subscribe),
            (r#"{"op":"ready","x":[1]}"#, Request::Ready),
            ("{\"op\":\"drained\"}\r\n", Request::Drained),
            (
                r#"{"in_flight":7,"op":"busy"}"#,
                Request::Busy { in_flight: 7 },
            ),
            (
                r#"{"op":"extend","seconds":30}"#,
                Request::Extend { seconds: 30.0 },
            ),
            (
                r#"{"op":"extend","seconds":0.5}"#,
                Request::Extend { seconds: 0.5 },
            ),
            (
                r#"{"op":"drain"}"#,
                Request::Drain {
                    reason: None,
                    deregister: false,
                },
            ),
            (
                r#"{"op":"drain","reason":null}"#,
                Request::Drain {
                    reason: None,
                    deregister: false,
                },
            ),
            (
                r#"{"op":"drain","reason":42}"#,
                Request::Drain {
                    reason: None,
                    deregister: false,
                },
            ),
            (
                r#"{"op":"drain","reason":"test"}"#,
                Request::Drain {
                    deregister: false,
                    reason: Some("test".into()),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{line}");
        }
    }

    #[test]
    fn each_broken_rule_has_its_own_answer() {
        let cases = [
            ("not json", "invalid JSON: "),
            ("", "invalid JSON: "),
            ("{}", "missing \"op\""),
            (r#"{"op":5}"#, "missing \"op\""),
            (r#"["status"]"#, "missing \"op\""),
            (r#""status""#, "missing \"op\""),
            (
                r#"{"op":"launch-missiles"}"#,
                "unknown op `launch-missiles` (expected status, subscribe, ready, drained, busy, extend or drain)",
            ),
            (r#"{"op":"Status"}"#, "unknown op `Status`"),
            (
                r#"{"op":"busy"}"#,
                "\"in_flight\" must be a whole number ≥ 0",
            ),
            (r#"{"op":"busy","in_flight":-3}"#, "\"in_flight\" must be"),
            (r#"{"op":"busy","in_flight":1.5}"#, "\"in_flight\" must be"),
            (r#"{"op":"busy","in_flight":"3"}"#, "\"in_flight\" must be"),
            (r#"{"op":"extend"}"#, "\"seconds\" must be a number > 0"),
            (r#"{"op":"extend","seconds":0}"#, "\"seconds\" must be"),
            (r#"{"op":"extend","seconds":-1}"#, "\"seconds\" must be"),
            (r#"{"op":"extend","seconds":"5"}"#, "\"seconds\" must be"),
        ];
        for (line, want) in cases {
            let got = parse(line).expect_err(line);
            assert!(got.starts_with(want), "{line}: {got}");
        }
    }

    #[test]
    fn the_unknown_op_error_lists_every_op() {
        let text = RequestError::UnknownOp("x".into()).to_string();
        assert_eq!(
            text,
            "unknown op `x` (expected status, subscribe, ready, drained, busy, extend or drain)"
        );
    }

    /// One request of each op (the match is exhaustive, so a new op needs one here).
    fn example(op: Op) -> Request {
        match op {
            Op::Status => Request::Status,
            Op::Subscribe => Request::Subscribe,
            Op::Ready => Request::Ready,
            Op::Drained => Request::Drained,
            Op::Busy => Request::Busy { in_flight: 1 },
            Op::Extend => Request::Extend { seconds: 1.0 },
            Op::Drain => Request::Drain {
                reason: None,
                deregister: false,
            },
        }
    }

    #[test]
    fn every_op_is_written_with_its_name_and_parses_back() {
        for (op, name) in Op::ALL.into_iter().zip(Op::NAMES) {
            assert_eq!(name.parse::<Op>(), Ok(op));
            let request = example(op);
            assert_eq!(request.op(), op);
            let line = to_line(&request).expect("serializes");
            let json: Value = serde_json::from_slice(&line).expect("JSON");
            assert_eq!(json["op"], name, "{request:?}");
            assert_eq!(Request::parse(&line).ok(), Some(request));
        }
    }

    #[test]
    fn requests_round_trip_and_an_absent_reason_is_left_out() {
        let requests = [
            Request::Status,
            Request::Subscribe,
            Request::Ready,
            Request::Drained,
            Request::Busy { in_flight: 3 },
            Request::Extend { seconds: 2.5 },
            Request::Drain {
                reason: None,
                deregister: false,
            },
            Request::Drain {
                deregister: false,
                reason: Some("why".into()),
            },
        ];
        for request in requests {
            let line = to_line(&request).expect("serializes");
            assert_eq!(Request::parse(&line).ok(), Some(request));
        }
        let drain = to_line(&Request::Drain {
            reason: None,
            deregister: false,
        })
        .expect("serializes");
        assert_eq!(drain, b"{\"op\":\"drain\"}\n");
    }

    #[test]
    fn events_and_replies_have_their_wire_shape() {
        let lines = [
            (
                to_line(&Event::Phase {
                    phase: PhaseName::Exited,
                }),
                r#"{"event":"phase","phase":"exited"}"#,
            ),
            (
                to_line(&Event::Drain {
                    reason: DrainReason::ScaleIn,
                    deadline: "2026-01-01T00:00:00.000Z".into(),
                    deadline_in_ms: 45_000,
                }),
                r#"{"event":"drain","reason":"scale-in","deadline":"2026-01-01T00:00:00.000Z","deadline_in_ms":45000}"#,
            ),
            (
                to_line(&Event::Lagged { missed: 3 }),
                r#"{"event":"lagged","missed":3}"#,
            ),
            (to_line(&Reply::ok()), r#"{"ok":true}"#),
            (
                to_line(&Reply::refused("no")),
                r#"{"ok":false,"error":"no"}"#,
            ),
            (
                to_line(&Reply::subscribed(PhaseName::Ready)),
                r#"{"ok":true,"subscribed":true,"phase":"ready"}"#,
            ),
            (
                to_line(&Reply::ignored("why")),
                r#"{"ok":true,"ignored":"why"}"#,
            ),
        ];
        for (line, want) in lines {
            let line = line.expect("serializes");
            assert_eq!(String::from_utf8_lossy(&line), format!("{want}\n"));
            let back: Value = serde_json::from_slice(&line).expect("JSON");
            if back.get("event").is_some() {
                serde_json::from_value::<Event>(back).expect("an event reads back");
            } else {
                serde_json::from_value::<Reply>(back).expect("a reply reads back");
            }
        }
    }

    /// Numbers read exactly (serde_json's `float_roundtrip`): a request written back reads as
    /// the same request. The fuzz target found 1e-88, which the default, faster parse read as
    /// 1.0000000000000001e-88.
    #[test]
    fn extend_seconds_round_trip_exactly() {
        for seconds in [
            1e-88,
            0.1,
            2.5,
            1.7976931348623157e308,
            5e-324,
            123.45678901234568,
        ] {
            let request = Request::Extend { seconds };
            let line = to_line(&request).expect("serializes");
            assert_eq!(Request::parse(&line).ok(), Some(request), "{seconds:e}");
        }
    }
}
