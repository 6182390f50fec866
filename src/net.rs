//! Client connections for the guard's two HTTP clients: the AWS SDK's calls (`aws::transport`)
//! and the health probes (`health::http_get`). A TCP connection to a host and port, then TLS
//! for https with the system's roots; the HTTP/1.1 on top is hyper's connection API, in each
//! caller.
//!
//! Why here, once: both need the same TLS configuration (ring, the system's CA bundle read once
//! per process). The SDK's own HTTP client would bring a second stack beside this one, with
//! HTTP/2, a connection pool and a proxy matcher the guard never uses: 0.8 MB of the binary.
//!
//! Nothing here bounds time: each caller bounds the connect and the handshake as its own
//! contract says (the SDK's connect timeout; a probe's one deadline for the whole GET).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Where to connect: a DNS name (resolved by the system's resolver) or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Host<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

impl<'a> Host<'a> {
    /// The host of a URI as `http::Uri` gives it: an IPv6 address in brackets, an IPv4 address
    /// or a name.
    pub(crate) fn of_uri(host: &'a str) -> Host<'a> {
        let bare = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match bare.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host),
        }
    }

    /// The name a TLS server must prove: the DNS name, or the address itself.
    fn server_name(self) -> Result<ServerName<'static>, TlsError> {
        match self {
            Host::Name(name) => {
                ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName)
            }
            Host::Ip(ip) => Ok(ServerName::from(ip)),
        }
    }
}

/// Why a TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The TLS client could not be set up (not expected with ring's provider).
    #[error("TLS: {0}")]
    Setup(rustls::Error),
    /// The host cannot be a TLS server name.
    #[error("TLS: the host is not a valid server name")]
    ServerName,
    /// The handshake failed: not TLS on the other end, an untrusted or expired certificate, a
    /// certificate for another name.
    #[error("TLS: {}", crate::fmt::error_chain(.0))]
    Handshake(std::io::Error),
}

/// How long an address may go unanswered before the next one is tried beside it (RFC 8305's
/// "connection attempt delay"; hyper's client, which the SDK used before `aws::transport`,
/// waits 300 ms before it tries the other address family).
pub(crate) const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(300);

/// A TCP connection to `host`:`port`. `TCP_NODELAY` is set: every request here is written at
/// once and waits for its answer.
///
/// A name may resolve to several addresses, IPv6 first on most systems. Each is tried in turn,
/// and one that neither answers nor fails within [`NEXT_ADDRESS_AFTER`] does not hold up the
/// next: both go on, and the first connection made wins. Without that, a dual-stack endpoint
/// seen from a network that drops IPv6 would time every call out on its IPv6 address, and a
/// lifecycle hook would never be completed.
pub(crate) async fn tcp(host: Host<'_>, port: u16) -> std::io::Result<TcpStream> {
    let addresses: Vec<SocketAddr> = match host {
        Host::Name(name) => tokio::net::lookup_host((name, port)).await?.collect(),
        Host::Ip(ip) => vec![SocketAddr::new(ip, port)],
    };
    let tcp = connect_any(&addresses, NEXT_ADDRESS_AFTER).await?;
    // Best effort: a socket without it still works, a little later.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The first connection made to one of `addresses`, tried in order, the next one started when
/// the last fails or `after` it started. The attempts that lose are dropped (their sockets
/// closed). All failing: the last error.
async fn connect_any(addresses: &[SocketAddr], after: Duration) -> std::io::Result<TcpStream> {
    let mut pending = addresses.iter().copied();
    let mut attempts = tokio::task::JoinSet::new();
    let mut last_error = None;
    while let Some(address) = pending.next() {
        attempts.spawn(TcpStream::connect(address));
        let more = pending.len() > 0;
        let next_after = tokio::time::sleep(after);
        tokio::pin!(next_after);
        loop {
            tokio::select! {
                ended = attempts.join_next(), if !attempts.is_empty() => {
                    match ended {
                        Some(Ok(Ok(tcp))) => return Ok(tcp),
                        Some(Ok(Err(err))) => last_error = Some(err),
                        Some(Err(join)) => last_error = Some(std::io::Error::other(join)),
                        None => {}
                    }
                    if more {
                        break;
                    }
                }
                () = &mut next_after, if more => break,
                else => break,
            }
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "the name resolved to no address",
        )
    }))
}

/// TLS over `tcp` to `host`, verified against `config`'s roots.
pub(crate) async fn tls(
    config: Arc<rustls::ClientConfig>,
    host: Host<'_>,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = host.server_name()?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(TlsError::Handshake)
}

/// The TLS client configuration with the system's roots, built the first time an https URL is
/// asked for and then shared: it reads and parses the system's CA bundle, which costs
/// milliseconds and several hundred KiB that a guard without HTTPS should never pay. It is read
/// on the calling task's thread, once per process: a few milliseconds, not worth a blocking-pool
/// hand-off. A bundle added after that is not seen until the guard restarts.
pub(crate) fn system_tls() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>> = OnceLock::new();
    CONFIG
        .get_or_init(|| tls_with(system_roots()))
        .clone()
        .map_err(TlsError::Setup)
}

/// The system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are honoured).
///
/// No roots is not an error: in a scratch image without a CA bundle, http:// must still work;
/// https:// then fails to verify, and says why. That is logged once, here.
fn system_roots() -> rustls::RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    let first_error = found.errors.first().map(ToString::to_string);
    if added == 0 {
        tracing::warn!(
            error = first_error.as_deref().unwrap_or("none"),
            "no CA certificates found (copy a bundle in, or set SSL_CERT_FILE): https:// checks and AWS calls will fail, http:// works"
        );
    } else if ignored > 0 || first_error.is_some() {
        tracing::debug!(
            added,
            ignored,
            error = first_error.as_deref().unwrap_or("none"),
            "some CA certificates could not be used"
        );
    }
    roots
}

/// rustls with ring (the process's one TLS stack), `roots`, TLS 1.2 and 1.3, ALPN `http/1.1`:
/// both clients speak HTTP/1.1 only.
pub(crate) fn tls_with(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loopback servers for tests: plain HTTP for the probes' and the SDK transport's tests, and TLS
/// with a certificate of a test CA for the transport's.
#[cfg(test)]
pub(crate) mod test_server {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A loopback port with nothing listening on it (bound, then released at once).
    pub(crate) fn closed_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a port")
            .port()
    }

    /// A loopback server that answers each connection with `answer(request head)`, written
    /// as is, then closes it. Returns its address.
    pub(crate) async fn serve(answer: fn(&str) -> String) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer_one(stream, answer));
            }
        });
        addr
    }

    /// Reads a request head from `stream`, writes `answer(head)` as is, and closes it.
    async fn answer_one<S>(mut stream: S, answer: fn(&str) -> String)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let reply = answer(&String::from_utf8_lossy(&head));
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A test CA and a server configuration whose certificate it signed for `localhost` (made
    /// by the `openssl` command), or `None` with one line where there is no `openssl` (a
    /// failure in CI, which installs it).
    pub(crate) fn tls_pair() -> Option<(rustls::RootCertStore, rustls::ServerConfig)> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = tempfile::tempdir().expect("a scratch directory");
        let script = r#"set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key \
  -out ca.pem -days 2 -subj /CN=agent-guard-test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout leaf.key \
  -out leaf.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext
openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile ext -out leaf.pem 2>/dev/null"#;
        let made = std::process::Command::new("sh")
            .args(["-c", script])
            .current_dir(dir.path())
            .status();
        if !made.is_ok_and(|s| s.success()) {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
            assert!(
                !ci,
                "openssl could not make a test certificate (with CI=true a skip is a failure)"
            );
            eprintln!("SKIPPED: no openssl here to make a test certificate");
            return None;
        }
        let pem = |name: &str| dir.path().join(name);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(pem("ca.pem")).expect("the CA"))
            .expect("the CA as a root");
        let chain = vec![CertificateDer::from_pem_file(pem("leaf.pem")).expect("the leaf")];
        let key = PrivateKeyDer::from_pem_file(pem("leaf.key")).expect("the key");
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("the server's certificate");
        Some((roots, server))
    }

    /// [`serve`] over TLS with `config`.
    pub(crate) async fn serve_tls(
        config: rustls::ServerConfig,
        answer: fn(&str) -> String,
    ) -> std::net::SocketAddr {
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        answer_one(stream, answer).await;
                    }
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A listener on `ip` whose queue of connections is full, so that the kernel drops the next
    /// SYN and a connect to it neither answers nor fails: a path that drops packets. Returns it
    /// and the connections queued (to keep them open), and its address.
    fn stalled(ip: &str) -> (std::net::TcpListener, Vec<std::net::TcpStream>, SocketAddr) {
        let listener = std::net::TcpListener::bind((ip, 0)).expect("bind");
        let address = listener.local_addr().expect("addr");
        // Fill its queue (std listens with a backlog of 128); nothing ever accepts.
        let mut queued = Vec::new();
        for _ in 0..1024 {
            match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(300)) {
                Ok(s) => queued.push(s),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
                Err(e) => panic!("filling the queue: {e}"),
            }
        }
        let probe = std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500));
        assert!(
            probe
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
            "a full queue should leave a connect unanswered: {probe:?}"
        );
        (listener, queued, address)
    }

    #[tokio::test]
    async fn an_address_that_does_not_answer_does_not_hold_up_the_next() {
        let (_held, _queued, silent) = stalled("127.0.0.2");
        // The same port on another loopback address, answering.
        let answering = tokio::net::TcpListener::bind(("127.0.0.1", silent.port()))
            .await
            .expect("bind");
        let good = answering.local_addr().expect("addr");
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            connect_any(&[silent, good], NEXT_ADDRESS_AFTER),
        )
        .await
        .expect("connected well before the silent address's SYN retries end")
        .expect("a connection");
        assert_eq!(tcp.peer_addr().expect("peer"), good);
    }

    #[tokio::test]
    async fn the_first_address_that_answers_in_time_is_the_one_used() {
        let first = tokio::net::TcpListener::bind("127.0.0.2:0")
            .await
            .expect("bind");
        let first = first.local_addr().map(|a| (a, first)).expect("addr");
        let second = tokio::net::TcpListener::bind(("127.0.0.1", first.0.port()))
            .await
            .expect("bind");
        let second = second.local_addr().expect("addr");
        let tcp = connect_any(&[first.0, second], NEXT_ADDRESS_AFTER)
            .await
            .expect("a connection");
        assert_eq!(tcp.peer_addr().expect("peer"), first.0);
    }

    #[tokio::test]
    async fn refused_everywhere_is_the_last_error_and_no_address_is_said() {
        let closed = |ip: &str| {
            let l = std::net::TcpListener::bind((ip, 0)).expect("bind");
            l.local_addr().expect("addr")
        };
        let (a, b) = (closed("127.0.0.1"), closed("127.0.0.2"));
        let err = connect_any(&[a, b], NEXT_ADDRESS_AFTER)
            .await
            .expect_err("nothing listens");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = connect_any(&[], NEXT_ADDRESS_AFTER)
            .await
            .expect_err("no address");
        assert_eq!(err.to_string(), "the name resolved to no address");
    }

    #[test]
    fn a_uri_host_is_a_name_or_an_address() {
        assert_eq!(
            Host::of_uri("autoscaling.us-east-1.amazonaws.com"),
            Host::Name("autoscaling.us-east-1.amazonaws.com")
        );
        assert_eq!(
            Host::of_uri("169.254.169.254"),
            Host::Ip("169.254.169.254".parse().expect("an address"))
        );
        assert_eq!(
            Host::of_uri("[fd00:ec2::254]"),
            Host::Ip("fd00:ec2::254".parse().expect("an address"))
        );
        // Brackets around a name are no address; the resolver will refuse it.
        assert_eq!(Host::of_uri("[nope]"), Host::Name("[nope]"));
    }
}
