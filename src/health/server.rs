//! The health endpoint's HTTP server (hyper 1): accepts connections within limits, routes
//! `/livez`, `/readyz` (`?verbose`), `/health`, `/status` and `/metrics` to the answers built in
//! [`probes`](crate::health::probes) and [`metrics`](crate::health::metrics), and stops when told.
//!
//! Every answer is built from snapshots, never from a probe made for the request, so it takes
//! microseconds even while a dependency hangs. The server stays bounded under abuse: a request
//! head is at most 16 KiB and must arrive within 5 s, and at most 2048 connections per serving
//! thread are open at once.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::status::status;
use crate::health::views::Views;
use crate::health::{metrics, probes};

/// The largest request head read (hyper's minimum buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, including between keep-alive requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; past this, new ones are closed at once.
const MAX_CONNECTIONS: usize = 2048;
/// How long requests in flight may take to finish once the server is told to stop. Answers take
/// microseconds; this only bounds writing to a client that reads slowly, and a half-sent head.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

/// How many threads serve the health endpoint. Two: a load balancer's probes and a scrape of
/// `/metrics` are answered on both cores, and never wait for the supervisor's thread.
const THREADS: usize = 2;

/// A connection accepted for a serving thread, with its place in that thread's limit. It goes
/// over as a std stream: a tokio one stays tied to the reactor of the thread that accepted it.
type Handoff = (std::net::TcpStream, OwnedSemaphorePermit);

/// A serving thread as the accepting loop sees it: where its connections go, and its limit.
struct Worker {
    streams: mpsc::UnboundedSender<Handoff>,
    slots: Arc<Semaphore>,
}

/// A serving thread's end of the hand-over, and the loop's. The channel needs no bound of its
/// own: each connection in it holds a permit of `slots`.
fn worker() -> (Worker, mpsc::UnboundedReceiver<Handoff>) {
    let (streams, handed) = mpsc::unbounded_channel();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    (Worker { streams, slots }, handed)
}

/// Serves `listener` on threads of their own, each with its own single-threaded runtime, until
/// `shutdown`. Readiness then answers at the load balancer's pace even while the supervisor's
/// thread is busy (a signal storm, a flood on the control socket). The first thread also
/// accepts, and hands each connection to the thread with the fewest: threads that each accepted
/// on the shared socket took whatever the kernel woke them for, and a load balancer's or a
/// benchmark's keep-alive connections could all land on one thread while the other core idled
/// (SO_REUSEPORT would spread them by hash, but would also let a second guard of the same user
/// bind the port silently instead of failing). Each thread has its own connection limit. The
/// returned handle ends when the threads do.
pub fn serve_on_own_thread(
    listener: TcpListener,
    views: Arc<Views>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Each thread holds a clone of `alive` until its work ends; the returned task ends when the
    // last is dropped. No thread of this runtime's blocking pool sits joining them.
    let (alive, mut ended) = mpsc::channel::<()>(1);
    // Taken off this runtime's reactor here, registered with the first thread's own there.
    match listener.into_std() {
        Ok(listener) => start_threads(listener, views, shutdown, alive),
        Err(err) => {
            tracing::error!(error = %err, "health endpoint: cannot start its threads; it is not served");
        }
    }
    tokio::spawn(async move { while ended.recv().await.is_some() {} })
}

fn start_threads(
    listener: std::net::TcpListener,
    views: Arc<Views>,
    shutdown: CancellationToken,
    alive: mpsc::Sender<()>,
) {
    let mut workers = Vec::with_capacity(THREADS);
    for _ in 1..THREADS {
        let (worker, handed) = worker();
        let (views, shutdown, alive) = (views.clone(), shutdown.clone(), alive.clone());
        let started = spawn(move || {
            on_own_runtime(serve_handed(handed, views, shutdown));
            drop(alive);
        });
        if started {
            workers.push(worker);
        }
    }
    let (own, handed) = worker();
    workers.insert(0, own);
    let started = spawn(move || {
        on_own_runtime(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::join!(
                        accept(listener, workers, shutdown.clone()),
                        serve_handed(handed, views, shutdown),
                    );
                }
                Err(err) => {
                    tracing::error!(error = %err, "health endpoint: cannot listen; it is not served");
                }
            }
        });
        drop(alive);
    });
    if !started {
        // The other threads end with `shutdown`, having been handed nothing.
        tracing::error!("health endpoint: cannot start its threads; it is not served");
    }
}

/// Starts a serving thread; `false` when the OS gives none (the others serve). The thread is
/// not joined: it signals its end through what `serving` drops.
fn spawn(serving: impl FnOnce() + Send + 'static) -> bool {
    std::thread::Builder::new()
        .name("health".to_string())
        .spawn(serving)
        .is_ok()
}

/// Runs `serving` on a single-threaded runtime of this thread's own.
fn on_own_runtime(serving: impl std::future::Future<Output = ()>) {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(serving),
        Err(err) => {
            tracing::error!(error = %err, "health endpoint: cannot start a runtime for a thread");
        }
    }
}

/// Accepts on `listener` until `shutdown` is cancelled, handing each connection to the worker
/// with the most free places; when even that one is full, the connection is closed at once.
async fn accept(listener: TcpListener, mut workers: Vec<Worker>, shutdown: CancellationToken) {
    let mut refused_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %err, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Off this thread's reactor, to be registered with the serving thread's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(error = %err, "health endpoint: cannot hand a connection over");
                continue;
            }
        };
        let Some(worker) = workers.iter().max_by_key(|w| w.slots.available_permits()) else {
            break;
        };
        let Ok(slot) = worker.slots.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "health endpoint: connection limit reached; closing new connections"
                );
                refused_logged = Some(Instant::now());
            }
            continue; // dropping the stream closes it
        };
        if worker.streams.send((stream, slot)).is_err() {
            // That thread is gone (its runtime did not start): this connection closes, the next
            // go to the others.
            workers.retain(|w| !w.streams.is_closed());
            if workers.is_empty() {
                tracing::error!("health endpoint: no thread left to serve it; it is not served");
                break;
            }
        }
    }
    // New connections are refused from here on.
    drop(listener);
}

/// Serves the connections handed over on `handed` until `shutdown` is cancelled, then lets
/// requests in flight finish for at most [`SHUTDOWN_GRACE`], and returns.
async fn serve_handed(
    mut handed: mpsc::UnboundedReceiver<Handoff>,
    views: Arc<Views>,
    shutdown: CancellationToken,
) {
    // Every connection waits on this thread's own token: waiting on a token polls it at each
    // wake-up, under its locks, and one token shared by both threads' connections made them
    // take the same two locks at every request.
    let shutdown = shutdown.child_token();
    let connections = TaskTracker::new();
    loop {
        let (stream, slot) = tokio::select! {
            () = shutdown.cancelled() => break,
            got = handed.recv() => match got {
                Some(got) => got,
                // The accepting loop ended before `shutdown`: serve what is open until then.
                None => {
                    shutdown.cancelled().await;
                    break;
                }
            },
        };
        // Still non-blocking, as accepted: registered with this thread's reactor.
        match TcpStream::from_std(stream) {
            Ok(stream) => {
                connections.spawn(connection(stream, views.clone(), shutdown.clone(), slot));
            }
            Err(err) => tracing::warn!(error = %err, "health endpoint: cannot serve a connection"),
        }
    }
    // Connections handed over but not started are closed with the channel.
    drop(handed);
    connections.close();
    // Each connection bounds itself by SHUTDOWN_GRACE; this deadline only guards that promise.
    let all_closed = connections.wait();
    if tokio::time::timeout(SHUTDOWN_GRACE * 2, all_closed)
        .await
        .is_err()
    {
        tracing::debug!(
            open = connections.len(),
            "health endpoint: connections still open at shutdown"
        );
    }
}

/// Serves one connection until the client closes it, or until `shutdown`; then lets its
/// request in flight finish for at most [`SHUTDOWN_GRACE`]. `slot` is its place in the limit.
async fn connection(
    stream: TcpStream,
    views: Arc<Views>,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let heads = HeadClock::new(HEADER_READ_TIMEOUT);
    let service = {
        let heads = heads.clone();
        // Answered at once, so the request borrows the `Views` instead of cloning a handle to it.
        service_fn(move |req| {
            heads.arrived();
            std::future::ready(Ok::<_, Infallible>(respond(&views, &req)))
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        // Head and body in one buffer, sent with one plain write: the bodies are small, and
        // copying them costs less than queueing them for a vectored write.
        .writev(false)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        biased;
        _ = conn.as_mut() => {}
        // Closed without an answer, as hyper's own timeout does.
        () = heads.overdue() => {}
        () = shutdown.cancelled() => {
            // Idle keep-alive connections close now; a request in flight is answered first.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
    drop(slot);
}

/// The head timeout: a connection whose next request head has not arrived in full within
/// [`HEADER_READ_TIMEOUT`] of the last one (or of its opening) is closed. hyper's own
/// `header_read_timeout` does the same but arms a new timer for every request (an allocation,
/// and two trips under the timer wheel's lock: 3-4% of the CPU time of a /readyz answer under
/// wrk); this one notes the time of each head, and its timer goes off at most once per timeout
/// and then looks at the time noted. Unlike hyper's, its clock also runs while an answer is
/// written: a client that leaves an answer too big for the socket's buffers unread for 5 s is
/// cut off as well.
#[derive(Clone)]
struct HeadClock {
    opened: Instant,
    timeout: Duration,
    /// Microseconds from `opened` to the last request head.
    last: Arc<AtomicU64>,
}

impl HeadClock {
    fn new(timeout: Duration) -> Self {
        HeadClock {
            opened: Instant::now(),
            timeout,
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A request head has arrived in full.
    fn arrived(&self) {
        let since = u64::try_from(self.opened.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last.store(since, Ordering::Relaxed);
    }

    /// Ends once no head has arrived for the timeout.
    async fn overdue(&self) {
        let mut deadline = self.opened + self.timeout;
        loop {
            tokio::time::sleep_until(deadline.into()).await;
            let last = Duration::from_micros(self.last.load(Ordering::Relaxed));
            let due = self.opened + last + self.timeout;
            if due <= deadline {
                return;
            }
            deadline = due;
        }
    }
}

type Reply = Response<Full<Bytes>>;

/// Routes one request. Only GET and HEAD; every answer is `no-store`, since it is a moment's.
fn respond(views: &Views, req: &Request<Incoming>) -> Reply {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut reply = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        reply
            .headers_mut()
            .insert(header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    let verbose = req.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
    });
    let mut reply = match req.uri().path() {
        "/livez" => probe(probes::livez(views, verbose), "text/plain; charset=utf-8"),
        "/readyz" => probe(probes::readyz(views, verbose), "text/plain; charset=utf-8"),
        "/health" => probe(probes::health(views), "application/health+json"),
        "/status" => body(
            StatusCode::OK,
            "application/json",
            status(views).json().into(),
        ),
        "/metrics" => body(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(views).into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    };
    reply.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    if head {
        *reply.body_mut() = Full::new(Bytes::new());
    }
    reply
}

/// A probe's answer: 200 when it passes, else 503 (what load balancers and kubelets read).
fn probe(answer: probes::Answer, content_type: &'static str) -> Reply {
    let status = if answer.ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    body(status, content_type, answer.body)
}

fn text(status: StatusCode, text: &'static str) -> Reply {
    body(status, "text/plain; charset=utf-8", Cow::Borrowed(text))
}

/// An answer; a static body is sent from where it lies, without a copy on the heap.
fn body(status: StatusCode, content_type: &'static str, body: Cow<'static, str>) -> Reply {
    let body = match body {
        Cow::Borrowed(body) => Bytes::from_static(body.as_bytes()),
        Cow::Owned(body) => Bytes::from(body),
    };
    let mut reply = Response::new(Full::new(body));
    *reply.status_mut() = status;
    reply.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    reply
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::watch;

    use crate::machine::state::Phase;

    use super::*;

    fn views() -> Arc<Views> {
        hub_in(Phase::Ready).1
    }

    /// A views, and the phase's sender to change it with.
    fn hub_in(phase: Phase) -> (watch::Sender<Phase>, Arc<Views>) {
        let (set_phase, phase) = watch::channel(phase);
        (set_phase, Arc::new(Views::fixed("agent", phase)))
    }

    /// One request on a keep-alive connection: the status line, the head, and the body.
    async fn ask(stream: &mut TcpStream, method: &str, target: &str) -> (String, String, String) {
        let request = format!("{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("an answer in time")
                .expect("read");
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                continue;
            };
            // The answer to HEAD has no body, whatever its head says.
            let length: usize = if method == "HEAD" {
                0
            } else {
                head.lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .expect("a content-length")
                    .parse()
                    .expect("a number")
            };
            if body.len() >= length {
                let status = head.lines().next().unwrap_or_default().to_string();
                return (status, head.to_lowercase(), body.to_string());
            }
        }
    }

    #[tokio::test]
    async fn the_head_timeout_runs_from_the_last_head() {
        let timeout = Duration::from_millis(200);
        let heads = HeadClock::new(timeout);
        let overdue = heads.overdue();
        let mut overdue = std::pin::pin!(overdue);
        // Heads every 100 ms for longer than the timeout: not overdue.
        for _ in 0..5 {
            let wait = tokio::time::timeout(Duration::from_millis(100), overdue.as_mut()).await;
            assert!(wait.is_err(), "overdue although a head came 100 ms ago");
            heads.arrived();
        }
        // Then none: overdue, a timeout after the last head and not before.
        let last = Instant::now();
        tokio::time::timeout(Duration::from_secs(5), overdue)
            .await
            .expect("overdue once no head comes");
        assert!(
            last.elapsed() >= timeout - Duration::from_millis(5),
            "{:?}",
            last.elapsed()
        );
    }

    #[tokio::test]
    async fn readiness_flips_on_the_very_next_request() {
        let (set_phase, views) = hub_in(Phase::Ready);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = serve_on_own_thread(listener, views, shutdown.clone());
        // A failed assertion must not leave the server's threads (and the test) running.
        let _stop = shutdown.clone().drop_guard();
        let mut client = TcpStream::connect(addr).await.expect("connect");

        let (status, head, body) = ask(&mut client, "GET", "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "ok\n")
        );
        assert!(
            head.contains("content-type: text/plain; charset=utf-8"),
            "{head}"
        );
        assert!(head.contains("cache-control: no-store"), "{head}");
        let (status, _, body) = ask(&mut client, "GET", "/readyz?verbose").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "[+]phase ok\nreadyz check passed\n");

        set_phase.send_replace(Phase::Starting {
            warm_until: None,
            give_up_at: None,
        });
        let (status, head, body) = ask(&mut client, "GET", "/readyz").await;
        assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
        assert_eq!(body, "readyz check failed\n");
        assert!(head.contains("cache-control: no-store"), "{head}");
        let (status, _, body) = ask(&mut client, "HEAD", "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 503 Service Unavailable", "")
        );
        let (_, _, body) = ask(&mut client, "GET", "/readyz?x=1&verbose=1").await;
        assert_eq!(body, "[-]phase failed: starting\nreadyz check failed\n");

        set_phase.send_replace(Phase::Ready);
        let (status, _, body) = ask(&mut client, "GET", "/readyz").await;
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 200 OK", "ok\n")
        );
        let (status, head, body) = ask(&mut client, "POST", "/readyz").await;
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(head.contains("allow: get, head"), "{head}");
        assert_eq!(body, "method not allowed\n");

        shutdown.cancel();
        server.await.expect("the server ends without panicking");
    }

    #[tokio::test]
    async fn on_cancel_it_stops_accepting_and_returns_within_its_grace() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = serve_on_own_thread(listener, views(), shutdown.clone());
        let _stop = shutdown.clone().drop_guard();

        // A keep-alive client, idle after one answer.
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        idle.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 512];
        let n = idle.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &buf[..n]);
        // A slow client: half a head, then nothing (it would hold on for 5 s otherwise).
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        tokio::task::yield_now().await;

        let told = Instant::now();
        shutdown.cancel();
        tokio::time::timeout(Duration::from_millis(1500), server)
            .await
            .expect("serve returns within its grace")
            .expect("and does not panic");
        assert!(told.elapsed() <= SHUTDOWN_GRACE * 2, "{:?}", told.elapsed());
        assert!(
            TcpStream::connect(addr).await.is_err(),
            "no new connection once stopped"
        );
        // Both old connections were closed by the server.
        for stream in [&mut idle, &mut slow] {
            let read = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        }
    }

    /// Waits until `total` connections in all were handed over to `threads`, and keeps them
    /// open in `held` (a dropped one frees its place).
    async fn handed_over(
        threads: &mut [mpsc::UnboundedReceiver<Handoff>; 2],
        held: &mut [Vec<Handoff>; 2],
        total: usize,
    ) {
        while held[0].len() + held[1].len() < total {
            tokio::task::yield_now().await;
            for (thread, held) in threads.iter_mut().zip(held.iter_mut()) {
                held.extend(std::iter::from_fn(|| thread.try_recv().ok()));
            }
        }
    }

    #[tokio::test]
    async fn each_connection_goes_to_the_thread_with_the_fewest() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let ((first, first_got), (second, second_got)) = (worker(), worker());
        let accepting = tokio::spawn(accept(listener, vec![first, second], shutdown.clone()));
        let mut threads = [first_got, second_got];
        let mut held = [Vec::new(), Vec::new()];
        let mut clients = Vec::new();
        for n in 1..=6 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            handed_over(&mut threads, &mut held, n).await;
        }
        assert_eq!((held[0].len(), held[1].len()), (3, 3));
        // Two of the first thread's connections close: the next two go there.
        held[0].truncate(1);
        for n in 5..=6 {
            clients.push(TcpStream::connect(addr).await.expect("connect"));
            handed_over(&mut threads, &mut held, n).await;
        }
        assert_eq!((held[0].len(), held[1].len()), (3, 3));
        shutdown.cancel();
        accepting.await.expect("the loop ends without panicking");
    }
}
