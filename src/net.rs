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

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

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

/// A TCP connection to `host`:`port`, each address the name resolves to tried in turn.
/// `TCP_NODELAY` is set: every request here is written at once and waits for its answer.
pub(crate) async fn tcp(host: Host<'_>, port: u16) -> std::io::Result<TcpStream> {
    let tcp = match host {
        Host::Name(name) => TcpStream::connect((name, port)).await,
        Host::Ip(ip) => TcpStream::connect((ip, port)).await,
    }?;
    // Best effort: a socket without it still works, a little later.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
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
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
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
                });
            }
        });
        addr
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
                    let Ok(mut stream) = acceptor.accept(stream).await else {
                        return;
                    };
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
                });
            }
        });
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
