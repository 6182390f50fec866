//! The health endpoint's HTTP server (hyper 1): accepts connections within limits, routes
//! `/livez`, `/readyz` (`?verbose`), `/health`, `/status` and `/metrics` to the answers built in
//! [`probes`](crate::health::probes) and [`metrics`](crate::health::metrics), and stops when told.
//!
//! Every answer is built from snapshots, never from a probe made for the request, so it takes
//! microseconds even while a dependency hangs. The server stays bounded under abuse: a request
//! head is at most 16 KiB and must arrive within 5 s, and at most 2048 connections are open at
//! once.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agent::hub::{Hub, status_json};
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

/// Serves `listener` on threads of their own, each with its own single-threaded runtime and
/// accepting on the same socket, until `shutdown`. Readiness then answers at the load
/// balancer's pace even while the supervisor's thread is busy (a signal storm, a flood on the
/// control socket). Each thread has its own connection limit. The returned handle ends when the
/// threads do.
pub fn serve_on_own_thread(
    listener: TcpListener,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    // Taken off this runtime's reactor here, registered with each thread's own there.
    let listener = listener.into_std();
    tokio::task::spawn_blocking(move || {
        let listener = match listener {
            Ok(listener) => listener,
            Err(err) => {
                tracing::error!(error = %err, "health endpoint: cannot start its threads; it is not served");
                return;
            }
        };
        let threads: Vec<_> = (0..THREADS)
            .filter_map(|_| {
                let listener = listener.try_clone().ok()?;
                let (hub, shutdown) = (hub.clone(), shutdown.clone());
                std::thread::Builder::new()
                    .name("health".to_string())
                    .spawn(move || serve_blocking(listener, hub, shutdown))
                    .ok()
            })
            .collect();
        if threads.is_empty() {
            tracing::error!("health endpoint: cannot start its threads; it is not served");
        }
        for thread in threads {
            let _ = thread.join();
        }
    })
}

/// One serving thread: its own runtime, until `shutdown`.
fn serve_blocking(listener: std::net::TcpListener, hub: Arc<Hub>, shutdown: CancellationToken) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "health endpoint: cannot start a runtime for a thread");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(listener) {
            Ok(listener) => serve(listener, hub, shutdown).await,
            Err(err) => tracing::error!(error = %err, "health endpoint: cannot listen on a thread"),
        }
    });
}

/// Serves health requests on `listener` until `shutdown` is cancelled, then stops accepting,
/// lets requests in flight finish for at most [`SHUTDOWN_GRACE`], and returns.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
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
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(
                    limit = MAX_CONNECTIONS,
                    "health endpoint: connection limit reached; closing new connections"
                );
                refused_logged = Some(Instant::now());
            }
            continue; // dropping the stream closes it
        };
        connections.spawn(connection(stream, hub.clone(), shutdown.clone(), slot));
    }
    // New connections are refused from here on.
    drop(listener);
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
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    slot: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let hub = hub.clone();
        async move { Ok::<_, Infallible>(respond(&hub, &req)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            // Idle keep-alive connections close now; a request in flight is answered first.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
    drop(slot);
}

type Reply = Response<Full<Bytes>>;

/// Routes one request. Only GET and HEAD; every answer is `no-store`, since it is a moment's.
fn respond(hub: &Hub, req: &Request<Incoming>) -> Reply {
    let head = req.method() == Method::HEAD;
    if req.method() != Method::GET && !head {
        let mut reply = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_string(),
        );
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
        "/livez" => probe(probes::livez(hub, verbose), "text/plain; charset=utf-8"),
        "/readyz" => probe(probes::readyz(hub, verbose), "text/plain; charset=utf-8"),
        "/health" => probe(probes::health(hub), "application/health+json"),
        "/status" => body(
            StatusCode::OK,
            "application/json",
            status_json(hub).to_string(),
        ),
        "/metrics" => body(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(hub),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_string()),
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

fn text(status: StatusCode, text: String) -> Reply {
    body(status, "text/plain; charset=utf-8", text)
}

fn body(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
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

    use crate::aws::notices::ImdsStatus;
    use crate::health::checks::Snapshot;
    use crate::machine::state::Phase;

    use super::*;

    fn hub() -> Arc<Hub> {
        Arc::new(Hub::new(
            "agent",
            watch::channel(Phase::Ready).1,
            None,
            watch::channel(ImdsStatus::default()).1,
            watch::channel(Snapshot::default()).1,
        ))
    }

    #[tokio::test]
    async fn on_cancel_it_stops_accepting_and_returns_within_its_grace() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, hub(), shutdown.clone()));

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
}
