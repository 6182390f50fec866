//! `agent-guard ctl`: talks to a running guard over its control socket, for operators and
//! scripts. A readable summary by default, the guard's JSON lines with `--json`.
//!
//! Exit status: 0 on success, 1 when the guard refused the request, 2 when no guard answers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::cli::CtlRequest;

/// The guard refused the request.
pub const REFUSED: u8 = 1;
/// No guard answers on the socket.
pub const UNREACHABLE: u8 = 2;

/// What to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Drain { reason: Option<String> },
    Ready,
    Drained,
    Subscribe,
}

impl From<CtlRequest> for Request {
    fn from(request: CtlRequest) -> Request {
        match request {
            CtlRequest::Status => Request::Status,
            CtlRequest::Drain { reason } => Request::Drain { reason },
            CtlRequest::Ready => Request::Ready,
            CtlRequest::Drained => Request::Drained,
            CtlRequest::Subscribe => Request::Subscribe,
        }
    }
}

impl Request {
    fn to_json(&self) -> Value {
        match self {
            Request::Status => json!({"op": "status"}),
            Request::Drain { reason } => match reason {
                Some(r) => json!({"op": "drain", "reason": r}),
                None => json!({"op": "drain"}),
            },
            Request::Ready => json!({"op": "ready"}),
            Request::Drained => json!({"op": "drained"}),
            Request::Subscribe => json!({"op": "subscribe"}),
        }
    }
}

/// Sends `request` to the guard at `socket` and prints the answer; returns the exit status.
pub fn run(socket: &PathBuf, request: CtlRequest, as_json: bool) -> u8 {
    let request = &Request::from(request);
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(err) => {
            eprintln!(
                "agent-guard ctl: no guard is listening on {}: {err}",
                socket.display()
            );
            return UNREACHABLE;
        }
    };
    // A request answers at once; only `subscribe` waits, for as long as the guard runs.
    if *request != Request::Subscribe {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    }
    let mut writer = &stream;
    let mut line = request.to_json().to_string();
    line.push('\n');
    if let Err(err) = writer.write_all(line.as_bytes()) {
        eprintln!(
            "agent-guard ctl: cannot write to {}: {err}",
            socket.display()
        );
        return UNREACHABLE;
    }
    let mut lines = BufReader::new(&stream).lines();
    let first = match lines.next() {
        Some(Ok(l)) => l,
        Some(Err(err)) => {
            eprintln!(
                "agent-guard ctl: no answer from {}: {err}",
                socket.display()
            );
            return UNREACHABLE;
        }
        None => {
            eprintln!(
                "agent-guard ctl: {} closed the connection without an answer",
                socket.display()
            );
            return UNREACHABLE;
        }
    };
    let reply: Value =
        serde_json::from_str(&first).unwrap_or_else(|_| json!({"ok": false, "error": first}));
    if reply.get("ok") != Some(&Value::Bool(true)) {
        let error = reply
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or("refused");
        if as_json {
            println!("{reply}");
        }
        eprintln!("agent-guard ctl: refused: {error}");
        return REFUSED;
    }
    if as_json {
        println!("{reply}");
    } else {
        print!("{}", summary(request, &reply));
    }
    if *request == Request::Subscribe {
        for line in lines {
            let Ok(line) = line else { break };
            if as_json {
                println!("{line}");
            } else if let Ok(event) = serde_json::from_str::<Value>(&line) {
                println!("{}", event_line(&event));
            }
            let _ = std::io::stdout().flush();
        }
    }
    0
}

fn summary(request: &Request, reply: &Value) -> String {
    let s = |k: &str| {
        reply
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string()
    };
    match request {
        Request::Status => {
            let mut out = format!(
                "{}: {} (agent pid {}, up {}s)\n",
                s("name"),
                s("phase"),
                reply
                    .get("agent_pid")
                    .map_or("-".to_string(), Value::to_string),
                reply
                    .get("uptime_s")
                    .map_or("-".to_string(), Value::to_string),
            );
            if let Some(d) = reply.get("drain").filter(|d| !d.is_null()) {
                out.push_str(&format!(
                    "draining: reason {}, deadline {} (in {} ms)\n",
                    d.get("reason").and_then(Value::as_str).unwrap_or("-"),
                    d.get("deadline").and_then(Value::as_str).unwrap_or("-"),
                    d.get("deadline_in_ms")
                        .map_or("-".to_string(), Value::to_string)
                ));
            }
            if let Some(st) = reply.get("status").and_then(Value::as_str) {
                out.push_str(&format!("agent status: {st}\n"));
            }
            if let Some(n) = reply.get("in_flight").and_then(Value::as_u64) {
                out.push_str(&format!("in flight: {n}\n"));
            }
            if let Some(n) = reply.get("subscribers").and_then(Value::as_u64) {
                out.push_str(&format!("subscribers: {n}\n"));
            }
            if reply.get("watchdog_missed") == Some(&Value::Bool(true)) {
                out.push_str("watchdog: MISSED\n");
            }
            out
        }
        Request::Drain { .. } => "drain requested\n".to_string(),
        Request::Ready => match reply.get("ignored").and_then(Value::as_str) {
            Some(why) => format!("ignored: {why}\n"),
            None => "ready\n".to_string(),
        },
        Request::Drained => "drained\n".to_string(),
        Request::Subscribe => format!("subscribed; phase {}\n", s("phase")),
    }
}

fn event_line(event: &Value) -> String {
    let s = |k: &str| {
        event
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("-")
            .to_string()
    };
    match event.get("event").and_then(Value::as_str) {
        Some("phase") => format!("phase {}", s("phase")),
        Some("drain") => format!(
            "drain: reason {}, deadline {} (in {} ms)",
            s("reason"),
            s("deadline"),
            event
                .get("deadline_in_ms")
                .map_or("-".to_string(), Value::to_string)
        ),
        _ => event.to_string(),
    }
}
