//! The health endpoint's HTTP server (hyper 1): accepts connections within limits, routes
//! `/livez`, `/readyz` (`?verbose`), `/health`, `/status` and `/metrics` to the answers built in
//! [`probes`](crate::health::probes) and [`metrics`](crate::health::metrics).
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

use crate::agent::hub::{Hub, status_json};
use crate::health::{metrics, probes};

/// The largest request head read (hyper's minimum buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take to send a request head, including between keep-alive requests.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections open at once; past this, new ones are closed at once.
const MAX_CONNECTIONS: usize = 2048;
/// Serves health requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, hub: Arc<Hub>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut refused_logged: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
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
        tokio::spawn(connection(stream, hub.clone(), slot));
    }
}

/// Serves one connection until the client closes it. `slot` is its place in the limit.
async fn connection(stream: TcpStream, hub: Arc<Hub>, slot: OwnedSemaphorePermit) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req| {
        let hub = hub.clone();
        async move { Ok::<_, Infallible>(respond(&hub, &req)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await;
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
