//! `agent-guard ctl`: talks to a running guard over its control socket, for operators and
//! scripts. A readable summary by default, the guard's JSON lines with `--json`.
//!
//! Exit status: 0 on success, 1 when the guard refused the request, 2 when no guard answers.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::agent::protocol::{self, Event, Reply, Request};
use crate::cli::CtlRequest;
use crate::model::status::Status;

/// The guard refused the request.
pub const REFUSED: u8 = 1;
/// No guard answers on the socket.
pub const UNREACHABLE: u8 = 2;

/// The protocol's request for what the operator asked.
fn request_for(request: CtlRequest) -> Request {
    match request {
        CtlRequest::Status => Request::Status,
        CtlRequest::Drain { reason, deregister } => Request::Drain { reason, deregister },
        CtlRequest::Ready => Request::Ready,
        CtlRequest::Drained => Request::Drained,
        CtlRequest::Subscribe => Request::Subscribe,
    }
}

/// Sends `request` to the guard at `socket` and prints the answer; returns the exit status.
// Not inlined into `main`, whose stack frame every supervising guard keeps resident for life
// (see `spawn_made` in lib.rs).
#[inline(never)]
pub fn run(socket: &PathBuf, request: CtlRequest, as_json: bool) -> u8 {
    let request = &request_for(request);
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
    let subscribe = *request == Request::Subscribe;
    if !subscribe {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    }
    let mut writer = &stream;
    let sent = protocol::to_line(request)
        .map_err(std::io::Error::from)
        .and_then(|line| writer.write_all(&line));
    if let Err(err) = sent {
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
    // The whole line for `--json` and the status summary; its head, typed, for the rest.
    let body: Value = serde_json::from_str(&first)
        .unwrap_or_else(|_| serde_json::json!({"ok": false, "error": first}));
    let reply = Reply::deserialize(&body).unwrap_or_default();
    if !reply.ok {
        if as_json {
            println!("{body}");
        }
        let error = reply.error.as_deref().unwrap_or("refused");
        eprintln!("agent-guard ctl: refused: {error}");
        return REFUSED;
    }
    if as_json {
        println!("{body}");
    } else {
        print!("{}", summary(request, &reply, &body));
    }
    if subscribe {
        for line in lines {
            let Ok(line) = line else { break };
            if as_json {
                println!("{line}");
            } else if let Some(text) = event_line(&line) {
                println!("{text}");
            }
            let _ = std::io::stdout().flush();
        }
    }
    0
}

/// The readable answer to `request`: `reply` is its typed head, `body` the whole line (the
/// `status` body is read as the guard wrote it: [`Status`]).
fn summary(request: &Request, reply: &Reply, body: &Value) -> String {
    match request {
        Request::Status => match Status::deserialize(body) {
            Ok(status) => status_summary(&status),
            // A guard of another version: its JSON as it is.
            Err(_) => format!("{body}\n"),
        },
        Request::Drain { .. } => "drain requested\n".to_string(),
        Request::Ready => match &reply.ignored {
            Some(why) => format!("ignored: {why}\n"),
            None => "ready\n".to_string(),
        },
        Request::Drained => "drained\n".to_string(),
        Request::Subscribe => format!(
            "subscribed; phase {}\n",
            reply.phase.map_or("-", |p| p.as_str())
        ),
        // `ctl` does not send these; an answer to them is just "ok".
        Request::Busy { .. } | Request::Extend { .. } => "ok\n".to_string(),
    }
}

/// A value as JSON shows it: the number, or `null`.
fn or_null(v: Option<impl std::fmt::Display>) -> String {
    v.map_or_else(|| "null".to_string(), |v| v.to_string())
}

fn status_summary(s: &Status) -> String {
    let mut out = format!(
        "{}: {} (agent pid {}, up {}s)\n",
        s.name,
        s.phase.as_str(),
        or_null(s.agent_pid),
        s.uptime_s,
    );
    if let Some(d) = &s.drain {
        out.push_str(&format!(
            "draining: reason {}, deadline {} (in {} ms)\n",
            d.reason.as_str(),
            d.deadline,
            d.deadline_in_ms
        ));
    }
    if let Some(st) = &s.status {
        out.push_str(&format!("agent status: {st}\n"));
    }
    if let Some(n) = s.in_flight {
        out.push_str(&format!("in flight: {n}\n"));
    }
    out.push_str(&format!("subscribers: {}\n", s.subscribers));
    if s.watchdog_missed {
        out.push_str("watchdog: MISSED\n");
    }
    if s.restart.restarting {
        out.push_str(&format!(
            "restarting: attempt {}, next in {} ms (last exit {})\n",
            or_null(s.restart.attempt),
            or_null(s.restart.next_in_ms),
            or_null(s.agent_exit)
        ));
    }
    if let Some(c) = &s.on_drain {
        out.push_str(&format!(
            "on-drain command: pid {}, {} (status {})\n",
            c.pid,
            c.state,
            or_null(c.status)
        ));
    }
    out.push_str(&lifecycle_summary(s));
    out
}

/// The termination hook's line, while its work waits (for the wait state, or other guards).
fn lifecycle_summary(s: &Status) -> String {
    let Some(lifecycle) = &s.lifecycle else {
        return String::new();
    };
    let hook = lifecycle
        .terminate_hook
        .as_ref()
        .map_or("-", |h| h.name.as_str());
    match &lifecycle.waiting_for {
        Some(waiting) => format!("lifecycle hook {hook}: {}\n", waiting.text),
        None => String::new(),
    }
}

/// One event as a readable line; other JSON is shown as it is, and a line that is not JSON at
/// all is skipped.
fn event_line(line: &str) -> Option<String> {
    match serde_json::from_str::<Event>(line) {
        Ok(Event::Phase { phase }) => Some(format!("phase {}", phase.as_str())),
        Ok(Event::Drain {
            reason,
            deadline,
            deadline_in_ms,
        }) => Some(format!(
            "drain: reason {}, deadline {deadline} (in {deadline_in_ms} ms)",
            reason.as_str()
        )),
        Ok(Event::Lagged { .. }) | Err(_) => serde_json::from_str::<Value>(line)
            .ok()
            .map(|v| v.to_string()),
    }
}
