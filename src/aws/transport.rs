//! The AWS SDK's HTTP client: each request on a connection of its own, HTTP/1.1 over `net`
//! (TCP, then TLS with the system's roots for https).
//!
//! Why not the SDK's own (`aws-smithy-http-client`): it brings HTTP/2, a pooled client and a
//! proxy matcher, 0.8 MB of the binary, for a guard that makes a few calls per instance life
//! (the hook's, a heartbeat a minute while an agent drains) and reads IMDS on a link-local
//! address every few seconds. A new connection per request costs a TCP handshake (and, to AWS,
//! a TLS one); it also leaves no idle connection to go stale between two heartbeats. It goes
//! through no proxy, as the SDK's client built by `aws::context` did not either: an instance
//! reaches the Auto Scaling and ELB APIs directly or through VPC endpoints.
//!
//! Time is bounded as the SDK asks ([`HttpConnectorSettings`]) and as its own client bounded it,
//! both counted from the call: the connect timeout covers resolving, TCP and TLS, the read
//! timeout everything until the answer's head; the SDK bounds the whole attempt itself. A name
//! that resolves to several addresses does not wait on one that drops packets (`net::tcp`). The connection is driven by a task that the answer's body
//! owns: dropping the answer, read or not, or the call before it is answered, ends that task
//! and closes the socket, so a server that stops mid-answer leaves nothing behind.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use aws_smithy_runtime_api::client::connection::{CaptureSmithyConnection, ConnectionMetadata};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Uri};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::net;

/// The client every SDK client and the IMDS client are built with.
pub(crate) fn client() -> SharedHttpClient {
    SharedHttpClient::new(Transport)
}

/// The SDK's [`HttpClient`]: hands out a connector with the SDK's timeouts.
#[derive(Debug, Clone)]
struct Transport;

impl HttpClient for Transport {
    /// Named in the SDK's user agent (`md/http#agent-guard-<version>`), as its own client named
    /// hyper.
    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        Some(ConnectorMetadata::new(
            "agent-guard",
            Some(env!("CARGO_PKG_VERSION").into()),
        ))
    }

    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Connector {
            tls: None,
            connect_timeout: settings.connect_timeout(),
            read_timeout: settings.read_timeout(),
        })
    }
}

/// One connector per SDK client, with that client's timeouts.
#[derive(Debug, Clone)]
struct Connector {
    /// The TLS configuration for https; `None` (always, but in tests): the system's roots
    /// ([`net::system_tls`]), read when the first https request is made.
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
}

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let connector = self.clone();
        HttpConnectorFuture::new(async move { connector.exchange(request).await })
    }
}

impl Connector {
    /// Connects (TCP, then TLS for https) within the connect timeout, sends `request` and
    /// returns the answer with its body still to be read. Both timeouts count from the call, as
    /// the SDK's own client counts them: the connect timeout covers resolving, TCP and TLS
    /// together, the read timeout everything until the answer's head.
    async fn exchange(self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let started = Instant::now();
        let connect_by = self.connect_timeout.map(|after| Limit { started, after });
        let read_by = self.read_timeout.map(|after| Limit { started, after });
        let request = request
            .try_into_http1x()
            .map_err(|e| ConnectorError::user(e.into()))?;
        // The SDK marks the connection of an answer it classes transient for closure (its
        // connection-poisoning interceptor), and logs an ERROR for every such answer when no
        // connection was registered. Each connection here serves one request and closes with
        // its answer: there is nothing to mark, so the one registered does nothing.
        if let Some(capture) = request.extensions().get::<CaptureSmithyConnection>() {
            capture.set_connection_retriever(|| {
                Some(
                    ConnectionMetadata::builder()
                        .proxied(false)
                        .poison_fn(|| {})
                        .build(),
                )
            });
        }
        let (mut parts, body) = request.into_parts();
        let https = match parts.uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            other => return Err(user(format!("scheme {other:?} is neither http nor https"))),
        };
        let uri = parts.uri.clone();
        let host = uri
            .host()
            .ok_or_else(|| user("the URL has no host".into()))?;
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        if !parts.headers.contains_key(HOST) {
            parts.headers.insert(HOST, host_header(&uri)?);
        }
        // Origin-form, as hyper's client made it: the path and query; the host went into `Host`.
        parts.uri = match uri.path_and_query() {
            Some(target) if target.as_str() != "/" => {
                let mut origin = http::uri::Parts::default();
                origin.path_and_query = Some(target.clone());
                Uri::from_parts(origin).map_err(|e| ConnectorError::user(e.into()))?
            }
            _ => Uri::from_static("/"),
        };
        let request = http::Request::from_parts(parts, body);

        let host = net::Host::of_uri(host);
        let tcp = within(connect_by, "connect", async {
            net::tcp(host, port)
                .await
                .map_err(|e| ConnectorError::io(e.into()))
        })
        .await?;
        if !https {
            return send(tcp, request, read_by).await;
        }
        let config = match self.tls {
            Some(config) => config,
            None => net::system_tls().map_err(|e| ConnectorError::other(e.into(), None))?,
        };
        let tls = within(connect_by, "connect", async {
            net::tls(config, host, tcp)
                .await
                .map_err(|e| ConnectorError::io(e.into()))
        })
        .await?;
        send(tls, request, read_by).await
    }
}

/// `Host` as the legacy hyper client wrote it for the SDK: the host, and the port unless it is
/// the scheme's default (SigV4 signs the header as sent).
fn host_header(uri: &Uri) -> Result<HeaderValue, ConnectorError> {
    let host = uri.host().unwrap_or_default();
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    let value = match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_string(),
    };
    HeaderValue::try_from(value).map_err(|e| ConnectorError::user(e.into()))
}

fn user(text: String) -> ConnectorError {
    ConnectorError::user(text.into())
}

/// A timeout of the SDK's, counted from the call.
#[derive(Debug, Clone, Copy)]
struct Limit {
    started: Instant,
    after: Duration,
}

/// `work` within `limit` (no limit: `None`); past it, a timeout the SDK classifies as one.
async fn within<T>(
    limit: Option<Limit>,
    what: &'static str,
    work: impl Future<Output = Result<T, ConnectorError>>,
) -> Result<T, ConnectorError> {
    let Some(limit) = limit else {
        return work.await;
    };
    match tokio::time::timeout_at(limit.started + limit.after, work).await {
        Ok(done) => done,
        Err(_) => Err(ConnectorError::timeout(
            format!(
                "{what} timed out after {}",
                crate::fmt::format_duration(limit.after)
            )
            .into(),
        )),
    }
}

/// Sends `request` on `io` and returns the answer once its head is read (within `read_by`).
async fn send<S>(
    io: S,
    request: http::Request<SdkBody>,
    read_by: Option<Limit>,
) -> Result<HttpResponse, ConnectorError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(hyper_error)?;
    // The connection's errors reach the request or the body that waits on it.
    let connection = Driven(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let response = within(read_by, "reading the answer", async {
        sender.send_request(request).await.map_err(hyper_error)
    })
    .await?;
    let response = response.map(|body| {
        SdkBody::from_body_1_x(Answer {
            body,
            _connection: connection,
        })
    });
    HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
}

/// The SDK's classes for hyper's errors, as its own client gives them: the SDK decides from
/// them whether an attempt may be retried.
fn hyper_error(err: hyper::Error) -> ConnectorError {
    let has_io = {
        let mut cause = std::error::Error::source(&err);
        let mut found = false;
        while let Some(e) = cause {
            found |= e.is::<std::io::Error>();
            cause = e.source();
        }
        found
    };
    if err.is_timeout() {
        ConnectorError::timeout(err.into())
    } else if err.is_user() {
        ConnectorError::user(err.into())
    } else if err.is_closed() || err.is_canceled() || has_io {
        ConnectorError::io(err.into())
    } else if err.is_incomplete_message() {
        ConnectorError::other(
            err.into(),
            Some(aws_smithy_types::retry::ErrorKind::TransientError),
        )
    } else {
        ConnectorError::other(err.into(), None)
    }
}

/// The task that drives one connection; it ends (and the socket closes) when this is dropped.
#[derive(Debug)]
struct Driven(tokio::task::JoinHandle<()>);

impl Drop for Driven {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An answer's body, which owns its connection's task.
#[derive(Debug)]
struct Answer {
    body: Incoming,
    _connection: Driven,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::net::test_server::{closed_port, serve, serve_tls, tls_pair};

    /// Enough for every test here: loopback answers in microseconds.
    const WITHIN: Duration = Duration::from_secs(10);

    fn connector(tls: Option<Arc<rustls::ClientConfig>>, read: Option<Duration>) -> Connector {
        Connector {
            tls,
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: read,
        }
    }

    fn post(url: &str, body: &'static str) -> HttpRequest {
        let request = http::Request::post(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(SdkBody::from(body))
            .expect("a request");
        HttpRequest::try_from(request).expect("an SDK request")
    }

    /// The status and the whole body of an answer, within [`WITHIN`].
    async fn call(
        connector: &Connector,
        request: HttpRequest,
    ) -> Result<(u16, String), ConnectorError> {
        tokio::time::timeout(WITHIN, async {
            let response = connector.call(request).await?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(ConnectorError::io)?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        })
        .await
        .expect("the call ends")
    }

    /// Answers with the request's head and body back, so a test reads what went out.
    fn echo(head: &str) -> String {
        let shown = head.replace("\r\n", "|");
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{shown}",
            shown.len()
        )
    }

    #[tokio::test]
    async fn a_request_goes_out_in_origin_form_with_its_host_and_the_answer_comes_back() {
        let addr = serve(echo).await;
        let url = format!("http://{addr}/a/path?Action=X&Version=2011-01-01");
        let (status, seen) = call(&connector(None, None), post(&url, "Action=X"))
            .await
            .expect("an answer");
        assert_eq!(status, 200);
        assert!(
            seen.starts_with("POST /a/path?Action=X&Version=2011-01-01 HTTP/1.1|"),
            "{seen}"
        );
        // The port is not the scheme's default, so it is part of Host (and of what SigV4 signs).
        assert!(seen.contains(&format!("|host: {addr}|")), "{seen}");
        assert!(seen.contains("|content-length: 8|"), "{seen}");
    }

    /// The SDK's connection-poisoning interceptor asks for the connection of every answer it
    /// classes transient (a 5xx, a throttle, a cut answer), and logs an ERROR when there is none.
    #[tokio::test]
    async fn every_request_registers_its_connection_for_the_sdk() {
        let addr = serve(echo).await;
        let capture = CaptureSmithyConnection::new();
        let mut request = post(&format!("http://{addr}/"), "");
        request.add_extension(capture.clone());
        assert!(capture.get().is_none());
        call(&connector(None, None), request)
            .await
            .expect("an answer");
        let connection = capture.get().expect("a connection registered");
        // Marking it does nothing: it served its one request and is closed.
        connection.poison();
    }

    #[test]
    fn host_names_the_port_only_when_it_is_not_the_schemes_default() {
        let host = |uri: &str| {
            let uri: Uri = uri.parse().expect("a URI");
            host_header(&uri)
                .expect("a Host")
                .to_str()
                .expect("text")
                .to_string()
        };
        assert_eq!(
            host("https://autoscaling.us-east-1.amazonaws.com/"),
            "autoscaling.us-east-1.amazonaws.com"
        );
        assert_eq!(
            host("https://autoscaling.us-east-1.amazonaws.com:443/"),
            "autoscaling.us-east-1.amazonaws.com"
        );
        assert_eq!(
            host("http://169.254.169.254/latest/api/token"),
            "169.254.169.254"
        );
        assert_eq!(host("http://127.0.0.1:8080/"), "127.0.0.1:8080");
        assert_eq!(host("http://[fd00:ec2::254]/latest"), "[fd00:ec2::254]");
        assert_eq!(host("https://localhost:80/"), "localhost:80");
    }

    #[tokio::test]
    async fn a_refused_connection_is_an_io_error_the_sdk_may_retry() {
        let url = format!("http://127.0.0.1:{}/", closed_port());
        let err = call(&connector(None, None), post(&url, ""))
            .await
            .expect_err("nothing listens");
        assert!(err.is_io(), "{err:?}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_is_a_timeout_after_the_read_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Accepts and holds the connection, answering nothing.
        let held = tokio::spawn(async move { listener.accept().await });
        let url = format!("http://{addr}/");
        let started = std::time::Instant::now();
        let err = call(
            &connector(None, Some(Duration::from_millis(300))),
            post(&url, ""),
        )
        .await
        .expect_err("no answer");
        assert!(err.is_timeout(), "{err:?}");
        assert!(err.to_string().contains("timeout") || format!("{err:?}").contains("timed out"));
        assert!(started.elapsed() >= Duration::from_millis(300));
        held.abort();
    }

    #[tokio::test]
    async fn an_answer_dropped_half_read_closes_its_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // Promises 100 bytes, sends 5, then waits for the client to hang up.
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("a client");
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst";
            stream.write_all(head.as_bytes()).await.expect("write");
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        });
        let connector = connector(None, None);
        let response =
            tokio::time::timeout(WITHIN, connector.call(post(&format!("http://{addr}/"), "")))
                .await
                .expect("an answer in time")
                .expect("an answer");
        let mut body = response.into_body();
        let first = tokio::time::timeout(WITHIN, body.frame())
            .await
            .expect("a frame in time")
            .expect("a frame")
            .expect("data");
        assert_eq!(
            first.into_data().expect("data"),
            Bytes::from_static(b"first")
        );
        drop(body);
        let closed = tokio::time::timeout(WITHIN, server)
            .await
            .expect("the server sees the connection closed")
            .expect("the server task");
        assert!(closed);
    }

    #[tokio::test]
    async fn https_is_verified_against_the_roots_and_the_name() {
        let Some((roots, server)) = tls_pair() else {
            return;
        };
        let addr = serve_tls(server, echo).await;
        let config = net::tls_with(roots).expect("a client configuration");
        let connector = connector(Some(config), None);
        let url = format!("https://localhost:{}/tls", addr.port());
        let (status, seen) = call(&connector, post(&url, "Action=Y"))
            .await
            .expect("an answer over TLS");
        assert_eq!(status, 200);
        assert!(seen.starts_with("POST /tls HTTP/1.1|"), "{seen}");
        // The certificate names localhost, not the address.
        let url = format!("https://127.0.0.1:{}/tls", addr.port());
        let err = call(&connector, post(&url, ""))
            .await
            .expect_err("a certificate for another name");
        assert!(format!("{err:?}").contains("NotValidForName"), "{err:?}");
    }

    #[tokio::test]
    async fn https_with_roots_that_do_not_hold_its_ca_is_refused() {
        let Some((_, server)) = tls_pair() else {
            return;
        };
        let addr = serve_tls(server, echo).await;
        let config = net::tls_with(rustls::RootCertStore::empty()).expect("a configuration");
        let url = format!("https://localhost:{}/", addr.port());
        let err = call(&connector(Some(config), None), post(&url, ""))
            .await
            .expect_err("an untrusted certificate");
        assert!(format!("{err:?}").contains("UnknownIssuer"), "{err:?}");
    }
}
