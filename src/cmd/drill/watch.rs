//! Watching the drilled guard from outside, as a load balancer and an operator would: its JSON
//! log (for the journal records it carries), its control socket (phases), its `/readyz`, and its
//! exit. Everything seen is recorded as a timed [`Observation`].

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use crate::agent::protocol;
use crate::config::Config;
use crate::journal::Record;
use crate::model::status::Status;

use super::verdict::{Observation, Timed};

/// Everything observed so far, shared with the reader threads.
#[derive(Clone, Default)]
pub struct Observations {
    seen: Arc<Mutex<Vec<Timed>>>,
    /// The guard's last log message, to explain an early exit.
    last_message: Arc<Mutex<Option<String>>>,
}

impl Observations {
    pub fn push(&self, at: SystemTime, what: Observation) {
        self.lock().push(Timed { at, what });
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Timed>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether anything observed so far matches.
    pub fn any(&self, pick: impl Fn(&Observation) -> bool) -> bool {
        self.lock().iter().any(|o| pick(&o.what))
    }

    /// The first journal record that matches.
    pub fn record(&self, pick: impl Fn(&Record) -> bool) -> Option<Record> {
        self.lock().iter().find_map(|o| match &o.what {
            Observation::Guard(r) if pick(r) => Some(r.clone()),
            _ => None,
        })
    }

    /// The last observed phase.
    pub fn last_phase(&self) -> Option<crate::machine::state::PhaseName> {
        self.lock().iter().rev().find_map(|o| match o.what {
            Observation::Phase(p) => Some(p),
            _ => None,
        })
    }

    pub fn last_message(&self) -> String {
        self.last_message
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    /// Everything, in time order.
    pub fn sorted(&self) -> Vec<Timed> {
        let mut all = self.lock().clone();
        all.sort_by_key(|o| o.at);
        all
    }
}

/// Reads the guard's JSON log lines as they come, keeping the journal records they carry.
pub fn collect_logs(guard: &mut Child, verbose: bool, observations: &Observations) {
    let Some(stderr) = guard.stderr.take() else {
        return;
    };
    let sink = observations.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if verbose {
                eprintln!("{line}");
            }
            let Ok(fields) = serde_json::from_str::<Value>(&line) else {
                // Not ours (a panic message, say): keep it visible.
                eprintln!("{line}");
                continue;
            };
            let time = fields
                .get("time")
                .and_then(Value::as_str)
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                .unwrap_or_else(SystemTime::now);
            if let Some(message) = fields.get("message").and_then(Value::as_str) {
                *sink.last_message.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(message.to_string());
            }
            let record = fields
                .get("event")
                .and_then(|e| serde_json::from_value::<Record>(e.clone()).ok());
            if let Some(record) = record {
                sink.push(time, Observation::Guard(record));
            }
        }
    });
}

/// How long [`subscribe`] keeps trying to connect.
const CONNECT_WITHIN: Duration = Duration::from_secs(5);

/// Subscribes on the control socket and records each phase as it comes. The socket's file
/// appears at `bind`, a moment before `listen`: a connection refused in between is tried again.
pub fn subscribe(socket: &Path, observations: &Observations) {
    let start = Instant::now();
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(stream) => break stream,
            Err(_) if start.elapsed() < CONNECT_WITHIN => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => return,
        }
    };
    if write_request(&mut stream, &protocol::Request::Subscribe).is_err() {
        return;
    }
    let sink = observations.clone();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stream).lines();
        // The confirmation carries the phase the subscription began in; events follow.
        if let Some(Ok(first)) = lines.next()
            && let Ok(protocol::Reply {
                phase: Some(phase), ..
            }) = serde_json::from_str(&first)
        {
            sink.push(SystemTime::now(), Observation::Phase(phase));
        }
        for line in lines {
            let Ok(line) = line else { break };
            if let Ok(protocol::Event::Phase { phase }) = serde_json::from_str(&line) {
                sink.push(SystemTime::now(), Observation::Phase(phase));
            }
        }
    });
}

fn write_request(
    stream: &mut std::os::unix::net::UnixStream,
    request: &protocol::Request,
) -> std::io::Result<()> {
    let line = protocol::to_line(request).map_err(std::io::Error::other)?;
    stream.write_all(&line)
}

/// The guard's health address, from its `status` reply.
pub fn health_addr(socket: &Path) -> Option<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write_request(&mut stream, &protocol::Request::Status).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let status: Status = serde_json::from_str(&line).ok()?;
    status.health_listen
}

/// Polls `/readyz` until it answers 503 (recorded), the guard exits, or 30 s pass.
pub fn watch_readiness(addr: &str, guard: &mut Child, observations: &Observations) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if runtime.block_on(readyz(addr)) == Some(503) {
            observations.push(SystemTime::now(), Observation::ReadinessLost);
            return;
        }
        if guard.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `GET /readyz` with hyper's HTTP/1 client; the status, or `None` within 2 s.
async fn readyz(addr: &str) -> Option<u16> {
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.ok()?;
        tokio::spawn(connection);
        let request = http::Request::get("/readyz")
            .header(http::header::HOST, "drill")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().as_u16())
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

/// Polls `done` every 10 ms for up to `within`; whether it became true.
pub fn wait(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// Sends `signal` to the drilled guard (our own child).
pub fn signal(guard: &Child, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(guard.id()) else {
        return;
    };
    // SAFETY: kill(2) on our own child's pid, which it holds until we wait for it.
    unsafe { libc::kill(pid, signal) };
}

/// Waits for the guard to exit within its own bounds; past them, stops it as an operator would:
/// SIGTERM twice (the second kills the agent), then SIGKILL. Returns its status.
pub fn finish(guard: &mut Child, config: &Config, deregistration: Duration) -> Option<u8> {
    // The guard may wait the simulated deregistration out after its agent is gone.
    let bound = config
        .drain_timeout
        .saturating_add(config.stop_timeout)
        .saturating_add(Duration::from_secs(90))
        .saturating_add(deregistration);
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = guard.try_wait() {
            break Some(status);
        }
        if start.elapsed() > bound {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(status) = status {
        return status.code().and_then(|c| u8::try_from(c).ok());
    }
    for _ in 0..2 {
        signal(guard, libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = guard.kill();
    let _ = guard.wait();
    None
}
