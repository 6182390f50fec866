//! The control socket: a Unix stream socket speaking one JSON object per line, through which the
//! agent hears of drains and reports on itself, and an operator drains by hand (`agent-guard
//! ctl`). The protocol is in README ("Talking to the guard").
//!
//! Bad input never harms the guard: peers of other users are refused, a line is at most 64 KiB,
//! a connection must send its first line within 10 s, at most 64 connections are served at once,
//! and every malformed request gets a one-line error reply.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, broadcast, mpsc};

use crate::agent::hub::{Announcement, DrainInfo, Hub};
use crate::agent::unixsock;
use crate::machine::state::{DrainReason, Event, PhaseName, ReadyOn};

/// The longest request line.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a new connection may take to send its first line.
const FIRST_LINE_WITHIN: Duration = Duration::from_secs(10);
/// How long a connection that is not subscribed may stay silent between requests.
const IDLE_WITHIN: Duration = Duration::from_secs(300);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// The longest `extend` accepted in one request.
const MAX_EXTEND: Duration = Duration::from_secs(48 * 3600);

/// What the control server needs from the rest of the guard.
#[derive(Clone)]
pub struct Control {
    pub hub: Arc<Hub>,
    pub events: mpsc::Sender<Event>,
    pub ready_on: ReadyOn,
}

/// Serves `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, control: Control) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (mut stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "control socket: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let peer = stream.peer_cred().ok();
        let peer_uid = peer.map(|c| c.uid());
        let peer_pid = peer.and_then(|c| c.pid());
        if !peer_uid.is_some_and(unixsock::peer_allowed) {
            tracing::warn!(uid = ?peer_uid, "control socket: refused a peer of another user");
            let _ = reply(&mut stream, &refusal("permission denied")).await;
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            let _ = reply(&mut stream, &refusal("too many connections; try again")).await;
            continue;
        };
        let control = control.clone();
        tokio::spawn(async move {
            connection(stream, &control, peer_pid).await;
            drop(slot);
        });
    }
}

fn refusal(error: &str) -> Value {
    json!({"ok": false, "error": error})
}

async fn reply(stream: &mut UnixStream, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes()).await
}

/// One line read from a client.
enum Read {
    Line(Vec<u8>),
    TooLong,
    Closed,
    Idle,
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R, within: Duration) -> Read {
    let mut buf = Vec::new();
    let limited = (&mut *reader).take(MAX_LINE as u64 + 1);
    let mut limited = limited;
    match tokio::time::timeout(within, limited.read_until(b'\n', &mut buf)).await {
        Err(_) => Read::Idle,
        Ok(Err(_)) | Ok(Ok(0)) => Read::Closed,
        Ok(Ok(_)) if buf.len() > MAX_LINE => Read::TooLong,
        Ok(Ok(_)) if !buf.ends_with(b"\n") => Read::Closed, // EOF before the end of the line
        Ok(Ok(_)) => Read::Line(buf),
    }
}

async fn connection(stream: UnixStream, control: &Control, peer_pid: Option<i32>) {
    let (read_half, mut write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let mut within = FIRST_LINE_WITHIN;
    let mut subscription = None;
    loop {
        let line = match subscription.as_mut() {
            None => read_line(&mut reader, within).await,
            Some(rx) => {
                // A subscriber may also send requests (`drained`) on the same connection.
                tokio::select! {
                    line = read_line(&mut reader, Duration::from_secs(u64::MAX / 4)) => line,
                    announcement = next_announcement(rx) => {
                        let Some(value) = announcement else { return };
                        if write(&mut write_half, &value).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        let bytes = match line {
            Read::Line(bytes) => bytes,
            Read::TooLong => {
                let _ = write(&mut write_half, &refusal("request line longer than 64 KiB")).await;
                return;
            }
            Read::Idle => {
                let _ = write(&mut write_half, &refusal("no request in time; closing")).await;
                return;
            }
            Read::Closed => return,
        };
        within = IDLE_WITHIN;
        let (answer, subscribe) = handle(&bytes, control).await;
        // The subscription exists before its confirmation is sent: a client that starts a drain
        // on seeing "subscribed" must already count as listening.
        let mut current_drain = None;
        if subscribe && subscription.is_none() {
            // Only the agent's own processes make a drain wait for them.
            let from_agent = match (peer_pid, control.hub.agent_pid()) {
                (Some(peer), Some(agent)) => {
                    crate::process::child::process_group_of(peer) == Some(agent)
                }
                _ => false,
            };
            subscription = Some(control.hub.subscribe_owned(from_agent));
            // A subscriber that arrives mid-drain hears of it at once.
            let draining = control.hub.phase.borrow().name() == PhaseName::Draining;
            current_drain = control.hub.report().drain.clone().filter(|_| draining);
        }
        if write(&mut write_half, &answer).await.is_err() {
            return;
        }
        if let Some(info) = current_drain
            && write(&mut write_half, &drain_event(&info)).await.is_err()
        {
            return;
        }
    }
}

async fn write(w: &mut tokio::net::unix::OwnedWriteHalf, value: &Value) -> std::io::Result<()> {
    let mut line = value.to_string();
    line.push('\n');
    w.write_all(line.as_bytes()).await
}

async fn next_announcement(rx: &mut crate::agent::hub::OwnedSubscription) -> Option<Value> {
    match rx.rx.recv().await {
        Ok(Announcement::Phase(phase)) => Some(json!({"event": "phase", "phase": phase})),
        Ok(Announcement::Drain(info)) => Some(drain_event(&info)),
        // A subscriber this far behind is told how much it missed, and carries on.
        Err(broadcast::error::RecvError::Lagged(n)) => {
            Some(json!({"event": "lagged", "missed": n}))
        }
        Err(broadcast::error::RecvError::Closed) => None,
    }
}

/// The drain event as the protocol gives it.
pub fn drain_event(info: &DrainInfo) -> Value {
    json!({
        "event": "drain",
        "reason": info.reason.as_str(),
        "deadline": humantime::format_rfc3339_millis(info.deadline).to_string(),
        "deadline_in_ms": info.deadline_at.saturating_duration_since(Instant::now()).as_millis() as u64,
    })
}

/// Answers one request; the flag says whether it was `subscribe`.
async fn handle(bytes: &[u8], control: &Control) -> (Value, bool) {
    let request: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return (refusal(&format!("invalid JSON: {e}")), false),
    };
    let Some(op) = request.get("op").and_then(Value::as_str) else {
        return (refusal("missing \"op\""), false);
    };
    let send = |event: Event| {
        let events = control.events.clone();
        async move {
            // The supervisor outlives this server; a closed channel means the run is over.
            events.send(event).await.is_ok()
        }
    };
    match op {
        "status" => (crate::agent::hub::status_json(&control.hub), false),
        "subscribe" => (
            json!({"ok": true, "subscribed": true, "phase": control.hub.phase.borrow().name().as_str()}),
            true,
        ),
        "ready" => {
            if control.ready_on != ReadyOn::Notify {
                return (
                    json!({"ok": true, "ignored": "readiness comes from --ready-on, not from the agent"}),
                    false,
                );
            }
            control.hub.report().ready_source.get_or_insert("control");
            send(Event::Ready).await;
            (json!({"ok": true}), false)
        }
        "drained" => {
            send(Event::Drained).await;
            (json!({"ok": true}), false)
        }
        "busy" => match request.get("in_flight").and_then(Value::as_u64) {
            Some(n) => {
                control.hub.report().in_flight = Some((n, SystemTime::now()));
                (json!({"ok": true}), false)
            }
            None => (refusal("\"in_flight\" must be a whole number ≥ 0"), false),
        },
        "extend" => match request.get("seconds").and_then(Value::as_f64) {
            Some(s) if s > 0.0 && s.is_finite() => {
                let by = Duration::from_secs_f64(s).min(MAX_EXTEND);
                send(Event::Extend(by)).await;
                (json!({"ok": true}), false)
            }
            _ => (refusal("\"seconds\" must be a number > 0"), false),
        },
        "drain" => {
            let note = request.get("reason").and_then(Value::as_str).unwrap_or("");
            tracing::info!(note, "drain requested on the control socket");
            send(Event::Drain {
                reason: DrainReason::Operator,
                hard_deadline: None,
            })
            .await;
            (json!({"ok": true}), false)
        }
        other => (
            refusal(&format!(
                "unknown op `{other}` (expected status, subscribe, ready, drained, busy, extend or drain)"
            )),
            false,
        ),
    }
}
