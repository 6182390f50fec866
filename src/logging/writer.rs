//! The guard's log writer: a thread of its own behind a bounded queue, so that no log write
//! can block a decision.
//!
//! A write to stderr blocks when whoever reads it stalls (a full pipe, a stopped terminal, a
//! wedged journald). Written from the supervisor's runtime, one such write stopped every
//! decision: a TERM-ignoring agent was never SIGKILLed. So each line is handed to a queue of
//! [`QUEUE_LINES`] lines and written by one thread; when the queue is full the line is dropped
//! and counted ([`dropped_lines`], `agent_guard_log_lines_dropped_total`), and once stderr
//! moves again one line says how many were lost.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tracing_subscriber::fmt::MakeWriter;

/// How many lines may wait for stderr: enough for any burst of the guard's own, small enough
/// (lines are at most a few KiB) to bound the memory a stalled reader can cost.
pub const QUEUE_LINES: usize = 1024;

static SENDER: OnceLock<SyncSender<Vec<u8>>> = OnceLock::new();
static QUEUED: AtomicU64 = AtomicU64::new(0);
static DONE: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Woken after each written line, so that [`flush`] returns the moment its lines are out
/// (polling cost every exit up to a poll's period).
static WRITTEN: (Mutex<()>, Condvar) = (Mutex::new(()), Condvar::new());

/// Lines dropped since start because stderr was not read fast enough.
pub fn dropped_lines() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Waits, at most `within`, for the lines queued so far to be written: the guard's last words
/// before it exits. A stalled stderr costs the exit `within`, never more.
pub fn flush(within: Duration) {
    if SENDER.get().is_none() {
        return;
    }
    let target = QUEUED.load(Ordering::Acquire);
    let give_up = Instant::now() + within;
    let (lock, written) = &WRITTEN;
    let mut held = lock.lock().unwrap_or_else(PoisonError::into_inner);
    while DONE.load(Ordering::Acquire) < target {
        let Some(left) = give_up.checked_duration_since(Instant::now()) else {
            return;
        };
        held = written
            .wait_timeout(held, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The `MakeWriter` of the guard's subscriber: every event becomes one queued line.
#[derive(Clone, Copy)]
pub struct Queued;

impl Queued {
    /// Starts the writer thread; `notice(dropped, total)` formats the line that says lines
    /// were dropped. Without a thread (it cannot be spawned) lines go to stderr directly.
    pub fn start(notice: Box<dyn Fn(u64, u64) -> Vec<u8> + Send>) -> Queued {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || write_lines(&rx, &*notice));
        if spawned.is_ok() {
            let _ = SENDER.set(tx);
        }
        Queued
    }
}

/// The writer thread: each line to stderr in order; after a drop, a line saying so.
fn write_lines(rx: &Receiver<Vec<u8>>, notice: &dyn Fn(u64, u64) -> Vec<u8>) {
    let mut reported = 0;
    while let Ok(line) = rx.recv() {
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > reported {
            let _ = std::io::stderr().write_all(&notice(dropped - reported, dropped));
            reported = dropped;
        }
        // A failed write (stderr closed) loses the line; nothing else can be done with it.
        let _ = std::io::stderr().write_all(&line);
        let (lock, written) = &WRITTEN;
        let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
        DONE.fetch_add(1, Ordering::Release);
        written.notify_all();
    }
}

/// One event's line, queued when the formatter is done with it.
pub struct Line(Vec<u8>);

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        if line.is_empty() {
            return;
        }
        let Some(tx) = SENDER.get() else {
            let _ = std::io::stderr().write_all(&line);
            return;
        };
        match tx.try_send(line) {
            Ok(()) => {
                QUEUED.fetch_add(1, Ordering::Release);
            }
            Err(TrySendError::Full(_)) => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
            // The thread is gone (it cannot be, short of a panic in a write): straight out.
            Err(TrySendError::Disconnected(line)) => {
                let _ = std::io::stderr().write_all(&line);
            }
        }
    }
}

impl<'a> MakeWriter<'a> for Queued {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}
