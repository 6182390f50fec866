//! One HTTP/1.1 GET over a fresh connection: the checks' probes (`--check NAME=http(s)://…`,
//! `--child-health`) and the doctor's look at who holds the health port.
//!
//! Why not a general HTTP client: a probe must see the service as a new client would (no pooled
//! connection hides a dead listener), it goes through no proxy, and it needs a status and at
//! most a small body. The connection (TCP, then TLS with the system's roots) is `net`'s, shared
//! with the AWS SDK's transport, so this is one module rather than a second HTTP stack.
//!
//! Nothing here bounds time: every caller wraps the whole GET (resolving, connecting, TLS, each
//! redirect, the body) in its own timeout, so one deadline and one message cover all of it.
//!
//! Errors never carry the URL: it may hold a password or a token in its query.

use std::net::IpAddr;
use std::pin::pin;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{ACCEPT, AUTHORIZATION, HOST, LOCATION, USER_AGENT};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use url::Url;

use crate::fmt::error_chain;
use crate::net;

/// Redirects followed before giving up: a health URL behind a login or a trailing-slash
/// redirect needs one or two; more than this is a loop or a misconfiguration.
pub(crate) const MAX_REDIRECTS: usize = 5;

/// The most of a body that is read. A health document (Spring's actuator, health+json) is a
/// few KiB even with details; a body larger than this is not one, and is not held in memory.
pub(crate) const BODY_LIMIT: usize = 64 * 1024;

/// Sent with every request, so a service's logs can tell the guard's probes from real clients.
const AGENT: &str = concat!("agent-guard/", env!("CARGO_PKG_VERSION"));

/// What came back for a GET, after any redirects.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    /// The body of a 2xx answer when it was asked for and is at most [`BODY_LIMIT`] long;
    /// `None` otherwise (a larger body is left unread: it cannot be a health document).
    pub body: Option<Bytes>,
}

/// Why a GET brought back no status. `Display` is one line that names the stage and the OS or
/// protocol error, with the causes on the same line (so no variant has a `#[source]`, which
/// would print them twice), and never the URL.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The URL's scheme is neither `http` nor `https`.
    #[error("request: scheme `{0}` is neither http nor https")]
    Scheme(String),
    /// The URL names no host to connect to.
    #[error("connect: the URL has no host")]
    NoHost,
    /// Resolving the host or the TCP connect failed (the OS error names neither).
    #[error("connect: {}", error_chain(.0))]
    Connect(std::io::Error),
    /// TLS could not be set up, or its handshake failed: not TLS on the other end, an
    /// untrusted or expired certificate, a certificate for another name.
    #[error("{0}")]
    Tls(net::TlsError),
    /// The request could not be written, or the answer was not HTTP or was cut short.
    #[error("HTTP: {}", error_chain(.0))]
    Http(hyper::Error),
    /// The request could not be built from the URL.
    #[error("HTTP: {}", error_chain(.0))]
    Request(http::Error),
    /// A redirect that is not followed.
    #[error("redirect: {0}")]
    Redirect(Redirect),
}

/// Why a redirect is not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Redirect {
    #[error("more than {MAX_REDIRECTS}")]
    TooMany,
    /// The `Location` is not visible ASCII.
    #[error("a Location header that is not text")]
    NotText,
    /// The `Location` does not parse, even relative to the URL that answered.
    #[error("a Location that is not a URL ({0})")]
    NotUrl(url::ParseError),
    /// Only `http` and `https` are followed.
    #[error("to scheme `{0}`, which is neither http nor https")]
    Scheme(String),
}

/// GETs `url` over a new connection, following up to [`MAX_REDIRECTS`] redirects, and returns
/// the status (any status: the caller judges it) and, with `read_body`, a 2xx answer's body.
///
/// The URL's user and password, if any, are sent as HTTP Basic credentials, and only to the
/// URL's own origin: a redirect to another scheme, host or port does not get them.
pub(crate) async fn get(url: &Url, read_body: bool) -> Result<Answer, GetError> {
    let authorization = basic_auth(url);
    let origin = url.origin();
    let mut current = url.clone();
    let mut redirects = 0;
    loop {
        let credentials = authorization
            .as_ref()
            .filter(|_| current.origin() == origin);
        match exchange(&current, credentials, read_body).await? {
            Step::Answer(answer) => return Ok(answer),
            Step::Redirect(_) if redirects == MAX_REDIRECTS => {
                return Err(GetError::Redirect(Redirect::TooMany));
            }
            Step::Redirect(location) => {
                current = follow(&current, &location).map_err(GetError::Redirect)?;
                redirects += 1;
            }
        }
    }
}

/// What one request came back with.
enum Step {
    Answer(Answer),
    /// A redirect to follow, with its `Location`.
    Redirect(HeaderValue),
}

/// The URL a redirect's `Location` points to, resolved against the URL that answered.
fn follow(current: &Url, location: &HeaderValue) -> Result<Url, Redirect> {
    let text = location.to_str().map_err(|_| Redirect::NotText)?;
    let next = current.join(text).map_err(Redirect::NotUrl)?;
    match next.scheme() {
        "http" | "https" => Ok(next),
        other => Err(Redirect::Scheme(other.to_string())),
    }
}

/// One request on its own connection: connect, TLS for https, the request, the answer.
async fn exchange(
    url: &Url,
    authorization: Option<&HeaderValue>,
    read_body: bool,
) -> Result<Step, GetError> {
    let https = match url.scheme() {
        "http" => false,
        "https" => true,
        other => return Err(GetError::Scheme(other.to_string())),
    };
    let host = url.host().ok_or(GetError::NoHost)?;
    let port = url.port_or_known_default().ok_or(GetError::NoHost)?;
    let request = request(url, authorization)?;
    let host = match host {
        url::Host::Domain(name) => net::Host::Name(name),
        url::Host::Ipv4(ip) => net::Host::Ip(IpAddr::V4(ip)),
        url::Host::Ipv6(ip) => net::Host::Ip(IpAddr::V6(ip)),
    };
    let tcp = net::tcp(host, port).await.map_err(GetError::Connect)?;
    if !https {
        return send(tcp, request, read_body).await;
    }
    let config = net::system_tls().map_err(GetError::Tls)?;
    let tls = net::tls(config, host, tcp).await.map_err(GetError::Tls)?;
    send(tls, request, read_body).await
}

/// The GET for `url`: origin-form target (path and query; never the user, password or
/// fragment), `Host` as the URL writes it, the guard's `User-Agent`.
fn request(
    url: &Url,
    authorization: Option<&HeaderValue>,
) -> Result<Request<Empty<Bytes>>, GetError> {
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    // Host and an explicit port (the URL drops a scheme's default one); IPv6 in brackets.
    let host = &url[url::Position::BeforeHost..url::Position::AfterPort];
    let mut builder = Request::get(target)
        .header(HOST, host)
        .header(USER_AGENT, AGENT)
        .header(ACCEPT, "*/*");
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value.clone());
    }
    builder.body(Empty::new()).map_err(GetError::Request)
}

/// Sends `request` on `io` and reads the answer.
///
/// The connection is driven here, beside the exchange, rather than on a spawned task: when the
/// caller's timeout drops this future, the socket closes with it, and a service that never
/// answers leaves nothing behind.
async fn send<S>(io: S, request: Request<Empty<Bytes>>, read_body: bool) -> Result<Step, GetError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(GetError::Http)?;
    let exchange = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        if status.is_redirection()
            && matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
            && let Some(location) = response.headers().get(LOCATION)
        {
            return Ok(Step::Redirect(location.clone()));
        }
        let body = if read_body && status.is_success() {
            read_limited(response.into_body()).await?
        } else {
            None
        };
        Ok(Step::Answer(Answer { status, body }))
    };
    let mut exchange = pin!(exchange);
    let mut connection = pin!(connection);
    tokio::select! {
        biased;
        step = &mut exchange => step.map_err(GetError::Http),
        ended = &mut connection => match ended {
            // The connection is done (the server closed it, or handed a failure to the request):
            // what is left of the answer is already buffered, or the exchange fails at once.
            Ok(()) => exchange.await.map_err(GetError::Http),
            Err(err) => Err(GetError::Http(err)),
        },
    }
}

/// The whole body if it is at most [`BODY_LIMIT`] long; `None` as soon as it is longer.
async fn read_limited(mut body: hyper::body::Incoming) -> Result<Option<Bytes>, hyper::Error> {
    let mut read = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if read.len() + data.len() > BODY_LIMIT {
                return Ok(None);
            }
            read.extend_from_slice(&data);
        }
    }
    Ok(Some(read.freeze()))
}

/// `Authorization: Basic …` from the URL's user and password (percent-decoded), as a browser or
/// curl would send them; `None` when the URL has neither.
fn basic_auth(url: &Url) -> Option<HeaderValue> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let mut pair: Vec<u8> = percent_encoding::percent_decode_str(url.username()).collect();
    pair.push(b':');
    pair.extend(percent_encoding::percent_decode_str(
        url.password().unwrap_or_default(),
    ));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    // Kept out of hyper's debug output.
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::test_server::{closed_port, serve};

    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Enough for every test here: loopback answers in microseconds.
    const WITHIN: Duration = Duration::from_secs(10);

    /// The request target of a request head.
    fn target(head: &str) -> &str {
        head.split(' ').nth(1).unwrap_or_default()
    }

    /// `/hop/N` redirects (relatively) to `/hop/N-1`; `/hop/0` answers 200 with `done`.
    fn hops(head: &str) -> String {
        let n: u32 = target(head)
            .strip_prefix("/hop/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if n == 0 {
            "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone".to_string()
        } else {
            format!(
                "HTTP/1.1 302 Found\r\nLocation: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                n - 1
            )
        }
    }

    async fn get_within(url: &str, read_body: bool) -> Result<Answer, GetError> {
        let url = Url::parse(url).expect("a URL");
        tokio::time::timeout(WITHIN, get(&url, read_body))
            .await
            .expect("an answer in time")
    }

    #[tokio::test]
    async fn follows_five_redirects_and_refuses_a_sixth() {
        let addr = serve(hops).await;
        let answer = get_within(&format!("http://{addr}/hop/5"), true)
            .await
            .expect("five redirects are followed");
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body.as_deref(), Some(&b"done"[..]));
        let err = get_within(&format!("http://{addr}/hop/6"), true)
            .await
            .expect_err("a sixth is not");
        assert!(
            matches!(err, GetError::Redirect(Redirect::TooMany)),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "redirect: more than 5");
    }

    #[tokio::test]
    async fn a_redirect_elsewhere_than_http_is_refused() {
        let addr = serve(|_| {
            "HTTP/1.1 301 Moved\r\nLocation: ftp://files.invalid/\r\nContent-Length: 0\r\n\r\n"
                .to_string()
        })
        .await;
        let err = get_within(&format!("http://{addr}/"), false)
            .await
            .expect_err("not followed");
        assert_eq!(
            err.to_string(),
            "redirect: to scheme `ftp`, which is neither http nor https"
        );
    }

    #[tokio::test]
    async fn sends_host_agent_and_url_credentials_to_their_origin_only() {
        // Echoes the request head as the body; `/away` redirects to another port (origin).
        let other = serve(|head| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                head.len()
            )
        })
        .await;
        let echo = serve(|head| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{head}",
                head.len()
            )
        })
        .await;
        let answer = get_within(&format!("http://ad%3Amin:pw@{echo}/p?q=1#frag"), true)
            .await
            .expect("an answer");
        let head = String::from_utf8(answer.body.expect("a body").to_vec()).expect("text");
        assert!(head.starts_with("GET /p?q=1 HTTP/1.1\r\n"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains(&format!("host: {echo}\r\n")), "{head}");
        assert!(
            lower.contains(concat!(
                "user-agent: agent-guard/",
                env!("CARGO_PKG_VERSION")
            )),
            "{head}"
        );
        // base64("ad:min:pw")
        assert!(head.contains("YWQ6bWluOnB3"), "{head}");

        // The same credentials, redirected to another port: not sent there.
        let bounce = serve(|head| {
            let port = target(head).trim_start_matches("/to/");
            format!(
                "HTTP/1.1 307 Temporary\r\nLocation: http://127.0.0.1:{port}/\r\nContent-Length: 0\r\n\r\n"
            )
        })
        .await;
        let answer = get_within(&format!("http://u:pw@{bounce}/to/{}", other.port()), true)
            .await
            .expect("an answer");
        let head = String::from_utf8(answer.body.expect("a body").to_vec()).expect("text");
        assert!(
            !head.to_ascii_lowercase().contains("authorization"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_not_kept() {
        let addr = serve(|_| {
            let body = "x".repeat(BODY_LIMIT + 1);
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        })
        .await;
        let answer = get_within(&format!("http://{addr}/"), true)
            .await
            .expect("an answer");
        assert_eq!(answer.status, StatusCode::OK);
        assert!(answer.body.is_none());
    }

    #[tokio::test]
    async fn errors_name_the_stage_and_never_the_url() {
        let closed = closed_port();
        let err = get_within(
            &format!("http://admin:hunter2@127.0.0.1:{closed}/h?token=s3cr3t"),
            false,
        )
        .await
        .expect_err("refused");
        let text = err.to_string();
        assert!(text.starts_with("connect: "), "{text}");
        assert!(text.contains("os error"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t") && !text.contains("admin"),
            "{text}"
        );

        // An answer that is not HTTP.
        let addr = serve(|_| "SSH-2.0-OpenSSH\r\n\r\n".to_string()).await;
        let err = get_within(&format!("http://u:hunter2@{addr}/"), false)
            .await
            .expect_err("not HTTP");
        let text = err.to_string();
        assert!(text.starts_with("HTTP: "), "{text}");
        assert!(!text.contains("hunter2") && !text.contains('\n'), "{text}");
    }

    #[tokio::test]
    async fn https_to_a_listener_that_is_not_tls_fails_at_the_tls_stage() {
        // Answers the ClientHello with plain HTTP, as a plain service on the port would (the
        // hello holds no blank line, so `serve` would never answer: this answers any bytes).
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let plain = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let err = get_within(&format!("https://u:hunter2@{plain}/health"), false)
            .await
            .expect_err("not TLS");
        let text = err.to_string();
        assert!(matches!(err, GetError::Tls(_)), "{err:?}");
        assert!(text.starts_with("TLS: "), "{text}");
        assert!(!text.contains("hunter2") && !text.contains('\n'), "{text}");
    }
}
