//! The control socket: a Unix stream socket speaking one JSON object per line (the types are in
//! `agent::protocol`), through which the agent hears of drains and reports on itself, and an
//! operator drains by hand (`agent-guard ctl`). The protocol is in docs/reference.md ("Talking to the guard").
//!
//! Bad input never harms the guard: peers of other users are refused, a line is at most 64 KiB,
//! a connection must send its first line within 10 s, at most 64 connections are served at once,
//! and every malformed request gets a one-line error reply.
//!
//! Shutdown is decided elsewhere and told through a `CancellationToken`: the server stops
//! accepting, each subscriber is sent what was already announced (the last of it `exited`) within
//! `FAREWELL_WITHIN`, and `serve` returns once every connection is closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use tokio::sync::watch;

use crate::agent::protocol::{self, Event, Reply, Request};
use crate::agent::report::Reports;
use crate::agent::unixsock;
use crate::machine::announce::{Announcer, Subscription};
use crate::machine::state::{self, DrainReason, Phase, PhaseName, ReadyOn};
use crate::model::run::{Announcement, DrainInfo, RunStats};
use crate::model::status::Status;

/// The longest request line, its newline included.
pub const MAX_LINE: usize = 64 * 1024;
/// How long a new connection may take to send its first line.
const FIRST_LINE_WITHIN: Duration = Duration::from_secs(10);
/// How long a connection that is not subscribed may stay silent between requests.
const IDLE_WITHIN: Duration = Duration::from_secs(300);
/// Connections served at once.
const MAX_CONNECTIONS: usize = 64;
/// The longest extension granted in one request, by either socket (`extend`,
/// `EXTEND_TIMEOUT_USEC`): 48 hours, the longest a lifecycle hook can be held. More is taken as
/// this much, so no agent can push a deadline out of reach of the clock or the RFC 3339 format.
pub const MAX_EXTEND: Duration = Duration::from_secs(48 * 3600);
/// How long a connection may take, once shutdown is decided, to send what is still due: a
/// client that stopped reading must not hold up the guard's exit.
const FAREWELL_WITHIN: Duration = Duration::from_secs(1);

/// The whole state as the `status` reply shows it; built where every snapshot can be read (the
/// composition root hands it in), so that this layer need not know them all.
pub type StatusFn = Arc<dyn Fn() -> Status + Send + Sync>;

/// What the control server needs from the rest of the guard.
#[derive(Clone)]
pub struct Control {
    /// Events to the supervisor.
    pub events: mpsc::Sender<state::Event>,
    pub ready_on: ReadyOn,
    /// The agent's reports: written here (and by sd_notify), nowhere else.
    pub reports: Reports,
    /// The supervisor's phase, run and announcements, read.
    pub phase: watch::Receiver<Phase>,
    pub run: watch::Receiver<RunStats>,
    pub announcer: Announcer,
    /// `--watchdog`.
    pub watchdog: Option<Duration>,
    /// The `status` reply.
    pub status: StatusFn,
}

/// What the agent's words mean, whichever socket they came by (this one or sd_notify), so the
/// two protocols cannot drift apart; each keeps only its own parsing and validation.
impl Control {
    /// The agent says it is ready (`source` is shown in `status`). That counts only with
    /// `--ready-on notify`; otherwise nothing happens and this returns false.
    pub async fn agent_ready(&self, source: &'static str) -> bool {
        if self.ready_on != ReadyOn::Notify {
            return false;
        }
        self.reports.update(|r| {
            r.ready_source.get_or_insert(source);
        });
        self.tell(state::Event::Ready).await;
        true
    }

    /// The agent has finished its work.
    pub async fn agent_drained(&self) {
        self.tell(state::Event::Drained).await;
    }

    /// The agent holds `in_flight` units of work.
    pub fn agent_busy(&self, in_flight: u64) {
        self.reports
            .update(|r| r.in_flight = Some((in_flight, SystemTime::now())));
    }

    /// The agent asks for `by` more time: at most [`MAX_EXTEND`], whichever socket it came by.
    pub async fn agent_extend(&self, by: Duration) {
        self.tell(state::Event::Extend(by.min(MAX_EXTEND))).await;
    }

    /// Whether the agent missed its `--watchdog` deadline (or triggered it). Between an exit
    /// and a restart no agent runs to feed it: nothing is missed then.
    pub fn watchdog_missed(&self, now: Instant) -> bool {
        let between_runs = matches!(*self.phase.borrow(), Phase::Restarting(_));
        let started = self.run.borrow().agent_started;
        self.reports
            .get()
            .watchdog_missed(self.watchdog, started, !between_runs, now)
    }

    async fn tell(&self, event: state::Event) {
        // The supervisor outlives the servers; a closed channel means the run is over.
        let _ = self.events.send(event).await;
    }
}

/// Serves `listener` until `shutdown` is cancelled; returns once every connection is closed
/// (each within `FAREWELL_WITHIN` of the cancellation).
pub async fn serve(listener: UnixListener, control: Control, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let mut stream = match accepted {
            Ok((stream, _)) => stream,
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
            refuse(&mut stream, "permission denied").await;
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refuse(&mut stream, "too many connections; try again").await;
            continue;
        };
        let (control, shutdown) = (control.clone(), shutdown.clone());
        connections.spawn(async move {
            connection(stream, &control, peer_pid, &shutdown).await;
            drop(slot);
        });
    }
    // Nobody new gets in; those inside finish, each under its own bound.
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Answers a connection that will not be served. A fresh socket's buffer takes one short line
/// at once, so this does not wait on the client.
async fn refuse(stream: &mut UnixStream, error: &str) {
    if let Ok(line) = protocol::to_line(&Reply::refused(error)) {
        let _ = stream.write_all(&line).await;
    }
}

/// One client, from its first line to its last, or to the guard's shutdown.
async fn connection(
    stream: UnixStream,
    control: &Control,
    peer_pid: Option<i32>,
    shutdown: &CancellationToken,
) {
    let mut conn = Connection::new(stream);
    tokio::select! {
        // The client left, broke a rule, or stopped taking replies: nothing more to say.
        () = conn.serve(control, peer_pid) => return,
        () = shutdown.cancelled() => {}
    }
    // Everything `serve` may have been interrupted in is cancel-safe (see `Connection`), so the
    // farewell starts from a whole state: no line half read, no line torn.
    let _ = tokio::time::timeout(FAREWELL_WITHIN, conn.farewell()).await;
}

/// A connection's state, kept outside any one `select!` so that losing a race loses nothing: the
/// reader holds a request line read in part, the outbox the part of a line not yet written, and
/// the subscription every announcement not yet received.
struct Connection {
    lines: FramedRead<OwnedReadHalf, RequestLines>,
    writer: OwnedWriteHalf,
    outbox: Vec<u8>,
    subscription: Option<Subscription>,
}

/// What reading the next request gave.
enum Read {
    Line(BytesMut),
    TooLong,
    Closed,
    Idle,
}

impl Connection {
    fn new(stream: UnixStream) -> Connection {
        let (read_half, writer) = stream.into_split();
        Connection {
            lines: FramedRead::new(read_half, RequestLines::default()),
            writer,
            outbox: Vec::new(),
            subscription: None,
        }
    }

    /// Answers requests (and, once subscribed, passes announcements on) until the client goes.
    async fn serve(&mut self, control: &Control, peer_pid: Option<i32>) {
        let mut within = Some(FIRST_LINE_WITHIN);
        loop {
            let read = match self.subscription.as_mut() {
                None => next_request(&mut self.lines, within).await,
                // A subscriber may also send requests (`drained`) on the same connection; it is
                // never idle, as it may wait for a drain for days.
                Some(subscription) => tokio::select! {
                    read = next_request(&mut self.lines, None) => read,
                    received = subscription.rx.recv() => {
                        let event = match received {
                            Ok(announcement) => event_of(announcement),
                            // A subscriber this far behind is told how much it missed.
                            Err(RecvError::Lagged(missed)) => Event::Lagged { missed },
                            Err(RecvError::Closed) => return,
                        };
                        if self.send(&event).await.is_err() {
                            return;
                        }
                        continue;
                    }
                },
            };
            let line = match read {
                Read::Line(line) => line,
                Read::TooLong => {
                    let _ = self
                        .send(&Reply::refused("request line longer than 64 KiB"))
                        .await;
                    return;
                }
                Read::Idle => {
                    let _ = self
                        .send(&Reply::refused("no request in time; closing"))
                        .await;
                    return;
                }
                Read::Closed => return,
            };
            within = Some(IDLE_WITHIN);
            if self.request(&line, control, peer_pid).await.is_err() {
                return;
            }
        }
    }

    /// Answers one request line.
    async fn request(
        &mut self,
        line: &[u8],
        control: &Control,
        peer_pid: Option<i32>,
    ) -> io::Result<()> {
        let request = match Request::parse(line) {
            Ok(request) => request,
            Err(error) => return self.send(&Reply::refused(error)).await,
        };
        // The subscription exists before its confirmation is sent: a client that starts a drain
        // on seeing "subscribed" must already count as listening.
        let mut current_drain = None;
        if request == Request::Subscribe && self.subscription.is_none() {
            // Only the agent's own processes make a drain wait for them.
            let agent_pid = control.run.borrow().agent_pid;
            let from_agent = match (peer_pid, agent_pid) {
                (Some(peer), Some(agent)) => {
                    crate::process::child::process_group_of(peer) == Some(agent)
                }
                _ => false,
            };
            self.subscription = Some(control.announcer.subscribe(from_agent));
            // A subscriber that arrives mid-drain hears of it at once.
            let draining = control.phase.borrow().name() == PhaseName::Draining;
            current_drain = control.run.borrow().drain.clone().filter(|_| draining);
        }
        self.send(&answer(request, control).await).await?;
        if let Some(info) = current_drain {
            self.send(&drain_event(&info)).await?;
        }
        Ok(())
    }

    /// Sends one message, after whatever is still in the outbox.
    async fn send(&mut self, message: &impl Serialize) -> io::Result<()> {
        self.queue(message)?;
        self.flush().await
    }

    fn queue(&mut self, message: &impl Serialize) -> io::Result<()> {
        self.outbox.extend(protocol::to_line(message)?);
        Ok(())
    }

    /// Writes the outbox out. With `write`, not `write_all`: `write` is cancel-safe, so when
    /// shutdown interrupts, the unwritten rest of a line stays here for the farewell.
    async fn flush(&mut self) -> io::Result<()> {
        while !self.outbox.is_empty() {
            let written = self.writer.write(&self.outbox).await?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.outbox.drain(..written);
        }
        Ok(())
    }

    /// The guard is stopping: a subscriber gets every announcement already made (the last of
    /// them `exited`), then the connection closes. The caller bounds how long this may take.
    async fn farewell(&mut self) {
        let mut due = Vec::new();
        if let Some(subscription) = self.subscription.as_mut() {
            loop {
                match subscription.rx.try_recv() {
                    Ok(announcement) => due.push(event_of(announcement)),
                    Err(TryRecvError::Lagged(missed)) => due.push(Event::Lagged { missed }),
                    Err(TryRecvError::Empty | TryRecvError::Closed) => break,
                }
            }
        }
        for event in &due {
            if self.queue(event).is_err() {
                break;
            }
        }
        let _ = self.flush().await;
    }
}

/// The next request line, or why there is none. Cancel-safe: a line read in part stays in the
/// reader's buffer.
async fn next_request(
    lines: &mut FramedRead<OwnedReadHalf, RequestLines>,
    within: Option<Duration>,
) -> Read {
    use futures_core::Stream;
    let next = std::future::poll_fn(|cx| Pin::new(&mut *lines).poll_next(cx));
    let frame = match within {
        Some(within) => match tokio::time::timeout(within, next).await {
            Ok(frame) => frame,
            Err(_) => return Read::Idle,
        },
        None => next.await,
    };
    match frame {
        Some(Ok(Frame::Line(line))) => Read::Line(line),
        Some(Ok(Frame::TooLong)) => Read::TooLong,
        Some(Err(_)) | None => Read::Closed,
    }
}

/// Request lines as the protocol frames them: bytes up to and including `\n`, at most `MAX_LINE`
/// of them. Not `LinesCodec`: that one makes bytes that are not UTF-8 an I/O error (here they get
/// the "invalid JSON" answer like any bad line) and hands over a last line cut short by EOF
/// (here that is no request).
#[derive(Default)]
struct RequestLines {
    /// How far the buffer has been searched for `\n` already.
    searched: usize,
}

enum Frame {
    Line(BytesMut),
    TooLong,
}

impl Decoder for RequestLines {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        let window = buf.len().min(MAX_LINE);
        let from = self.searched.min(window);
        match buf[from..window].iter().position(|&b| b == b'\n') {
            Some(at) => {
                self.searched = 0;
                Ok(Some(Frame::Line(buf.split_to(from + at + 1))))
            }
            None if buf.len() > MAX_LINE => Ok(Some(Frame::TooLong)),
            None => {
                self.searched = window;
                Ok(None)
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<Frame>> {
        let frame = self.decode(buf)?;
        if frame.is_none() {
            // A line cut short by EOF is no request.
            buf.clear();
            self.searched = 0;
        }
        Ok(frame)
    }
}

/// The request lines in `input` as a connection frames them, fed `chunk` bytes at a time as a slow
/// client writes them, up to the end of the input; `None` for a line over `MAX_LINE`, which ends
/// the connection. For the fuzz target (`crate::fuzzing`).
pub(crate) fn frame_lines(input: &[u8], chunk: usize) -> Vec<Option<Vec<u8>>> {
    let mut codec = RequestLines::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            match frame {
                Frame::Line(line) => out.push(Some(line.to_vec())),
                Frame::TooLong => {
                    out.push(None);
                    return out;
                }
            }
        }
    }
    if let Ok(Some(Frame::Line(line))) = codec.decode_eof(&mut buf) {
        out.push(Some(line.to_vec()));
    }
    out
}

/// A reply: most are a `Reply`; `status` is the whole state (which says `"ok":true` itself).
#[derive(Serialize)]
#[serde(untagged)]
enum Answer {
    Reply(Reply),
    Status(Box<Status>),
}

impl From<Reply> for Answer {
    fn from(reply: Reply) -> Answer {
        Answer::Reply(reply)
    }
}

/// Does what `request` asks and says how it went.
async fn answer(request: Request, control: &Control) -> Answer {
    match request {
        Request::Status => Answer::Status(Box::new((control.status)())),
        Request::Subscribe => Reply::subscribed(control.phase.borrow().name()).into(),
        Request::Ready => {
            if control.agent_ready("control").await {
                Reply::ok().into()
            } else {
                Reply::ignored("readiness comes from --ready-on, not from the agent").into()
            }
        }
        Request::Drained => {
            control.agent_drained().await;
            Reply::ok().into()
        }
        Request::Busy { in_flight } => {
            control.agent_busy(in_flight);
            Reply::ok().into()
        }
        Request::Extend { seconds } => {
            // `seconds` is finite and > 0; one too large for a Duration is simply the most.
            let by = Duration::try_from_secs_f64(seconds).unwrap_or(MAX_EXTEND);
            control.agent_extend(by).await;
            Reply::ok().into()
        }
        Request::Drain { reason, deregister } => {
            let note = reason.as_deref().unwrap_or("");
            tracing::info!(note, deregister, "drain requested on the control socket");
            control
                .tell(state::Event::Drain {
                    reason: DrainReason::Operator,
                    hard_deadline: None,
                    deregister,
                })
                .await;
            Reply::ok().into()
        }
    }
}

/// An announcement as subscribers hear it.
fn event_of(announcement: Announcement) -> Event {
    match announcement {
        Announcement::Phase(phase) => Event::Phase { phase },
        Announcement::Drain(info) => drain_event(&info),
    }
}

/// The drain event, its deadline both as a time and from now.
fn drain_event(info: &DrainInfo) -> Event {
    Event::Drain {
        reason: info.reason,
        deadline: crate::fmt::rfc3339(info.deadline),
        deadline_in_ms: info
            .deadline_at
            .saturating_duration_since(Instant::now())
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], eof: bool) -> Vec<Result<Vec<u8>, &'static str>> {
        let mut codec = RequestLines::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        // Fed a byte at a time, the way a slow client writes.
        for &b in input {
            buf.extend_from_slice(&[b]);
            while let Some(frame) = codec.decode(&mut buf).expect("decode") {
                match frame {
                    Frame::Line(line) => out.push(Ok(line.to_vec())),
                    Frame::TooLong => return [out, vec![Err("too long")]].concat(),
                }
            }
        }
        if eof && let Some(Frame::Line(line)) = codec.decode_eof(&mut buf).expect("eof") {
            out.push(Ok(line.to_vec()));
        }
        out
    }

    #[test]
    fn lines_are_split_at_newlines_and_a_partial_last_line_is_dropped() {
        let got = frames(b"{\"op\":\"status\"}\n\xff\n{\"op\":", true);
        assert_eq!(
            got,
            vec![
                Ok(b"{\"op\":\"status\"}\n".to_vec()),
                Ok(b"\xff\n".to_vec())
            ]
        );
    }

    #[test]
    fn a_line_is_at_most_max_line_bytes_with_its_newline() {
        let mut fits = vec![b'x'; MAX_LINE - 1];
        fits.push(b'\n');
        assert_eq!(frames(&fits, false), vec![Ok(fits.clone())]);
        let mut over = vec![b'x'; MAX_LINE];
        over.push(b'\n');
        assert_eq!(frames(&over, false), vec![Err("too long")]);
        // Exactly MAX_LINE bytes and then EOF: the client left mid-line, nothing to answer.
        assert_eq!(frames(&over[..MAX_LINE], true), vec![]);
    }
}
