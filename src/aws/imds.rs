//! IMDSv2 client: reads instance metadata with a session token.
//!
//! The SDK's `aws_config::imds::Client` does the work: the token `PUT` with its TTL header, the
//! token cache and its refresh before expiry, the endpoint, connect and read timeouts. Three
//! things it does not do, so they are done here:
//! - It keeps a token that IMDS refused with 401 until that token's own expiry (up to six hours),
//!   retrying with it each time: the 401 loop users of other tools hit. On a 401 this client drops
//!   the SDK client, and with it the token cache, builds a new one and tries once more.
//! - It retries inside each call, which would multiply the request rate exactly when IMDS is
//!   struggling. Calls here make one attempt; the poller backs off between rounds.
//! - A token `PUT` that never answers is, on EC2, almost always a hop limit of 1 seen from a
//!   container. That timeout is reported with the fix, not as a bare timeout.
//! - It reads every answer whole: a broken or hostile IMDS serving 100 MB would grow the guard
//!   by that much. Every answer body here is cut off past [`MAX_BODY`] and counted as unreadable.

use std::error::Error as StdError;
use std::sync::Mutex;
use std::time::Duration;

use aws_config::imds::Client;
use aws_config::imds::client::error::ImdsError as SdkImdsError;
use aws_config::provider_config::ProviderConfig;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;

/// The most of one IMDS answer that is read. A notice is a short JSON object and a list of
/// scheduled events a few KiB; anything longer is not IMDS working as documented.
pub const MAX_BODY: usize = 64 * 1024;

/// What a token request that gets no answer usually means. Over IPv4 on EC2 it is almost always
/// a hop limit of 1 seen from a container; over IPv6 the endpoint itself may be off, or the
/// subnet not IPv6, which no answer tells apart from the hop limit.
fn token_timeout_causes(endpoint: &str) -> &'static str {
    let ipv6 = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .starts_with('[');
    if ipv6 {
        "the instance's IPv6 metadata endpoint may be off (HttpProtocolIpv6=enabled), its subnet \
         not IPv6, or, in a container, the metadata hop limit below 2 \
         (--http-put-response-hop-limit 2); --imds-endpoint-mode ipv4 uses the IPv4 endpoint"
    } else {
        "in a container the instance's metadata hop limit must be at least 2 \
         (aws ec2 modify-instance-metadata-options --http-put-response-hop-limit 2)"
    }
}

/// Why a metadata read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "the IMDS token request to {endpoint} got no answer: {}",
        token_timeout_causes(endpoint)
    )]
    TokenTimeout { endpoint: String },
    #[error("IMDS at {endpoint} refused a session token: {detail}")]
    TokenRefused { endpoint: String, detail: String },
    #[error("IMDS at {endpoint} answered {status} for {path}")]
    Status {
        endpoint: String,
        path: String,
        status: u16,
    },
    #[error("IMDS at {endpoint} did not answer {path} in time")]
    Timeout { endpoint: String, path: String },
    #[error("cannot reach IMDS at {endpoint}: {detail}")]
    Unreachable { endpoint: String, detail: String },
    #[error("--imds-endpoint: invalid URL `{endpoint}`: {detail}")]
    InvalidEndpoint { endpoint: String, detail: String },
    #[error("IMDS at {endpoint} answered {path} with more than {} KiB; not read", MAX_BODY / 1024)]
    TooLarge { endpoint: String, path: String },
}

impl ImdsError {
    /// A short label for metrics and rate-limited logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ImdsError::TokenTimeout { .. } => "token-timeout",
            ImdsError::TokenRefused { .. } => "token-refused",
            ImdsError::Status { .. } => "status",
            ImdsError::Timeout { .. } => "timeout",
            ImdsError::Unreachable { .. } => "unreachable",
            ImdsError::InvalidEndpoint { .. } => "invalid-endpoint",
            ImdsError::TooLarge { .. } => "too-large",
        }
    }
}

/// An IMDSv2 client for one endpoint.
pub struct ImdsClient {
    endpoint: String,
    config: ProviderConfig,
    timeout: Duration,
    /// The SDK client; replaced, token cache and all, when IMDS answers 401.
    client: Mutex<Client>,
}

impl ImdsClient {
    /// A client for `endpoint` (`http://169.254.169.254` on EC2) whose requests each give up
    /// after `timeout` to connect and `timeout` to answer.
    pub fn new(endpoint: &str, timeout: Duration) -> Result<Self, ImdsError> {
        // IMDS is plain HTTP on a link-local address: the CA bundle is never read for it.
        let http = bounded(crate::aws::transport::client());
        let config = ProviderConfig::default().with_http_client(http);
        let client = build(&config, endpoint, timeout)?;
        Ok(ImdsClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            config,
            timeout,
            client: Mutex::new(client),
        })
    }

    /// The endpoint, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Reads `/latest/meta-data/{item}`. `Ok(None)` is a 404: the item is absent (no notice).
    pub async fn get(&self, item: &str) -> Result<Option<String>, ImdsError> {
        let path = format!("/latest/meta-data/{item}");
        match self.get_once(&path).await {
            Err(ImdsError::Status { status: 401, .. }) => {
                tracing::debug!(path, "IMDS refused the token (401); getting a new one");
                self.renew()?;
                self.get_once(&path).await
            }
            other => other,
        }
    }

    async fn get_once(&self, path: &str) -> Result<Option<String>, ImdsError> {
        let client = self
            .client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        match client.get(path).await {
            Ok(value) => Ok(Some(value.as_ref().to_string())),
            Err(err) => match self.classify(path, &err) {
                ImdsError::Status { status: 404, .. } => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Drops the SDK client and its cached token.
    fn renew(&self) -> Result<(), ImdsError> {
        let fresh = build(&self.config, &self.endpoint, self.timeout)?;
        *self.client.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }

    fn classify(&self, path: &str, err: &SdkImdsError) -> ImdsError {
        let endpoint = self.endpoint.clone();
        let detail = chain(err);
        let timed_out = detail.contains("timeout") || detail.contains("timed out");
        if detail.contains(LIMIT_TEXT) {
            return ImdsError::TooLarge {
                endpoint,
                path: path.to_string(),
            };
        }
        match err {
            SdkImdsError::ErrorResponse(resp) => ImdsError::Status {
                endpoint,
                path: path.to_string(),
                status: resp.response().status().as_u16(),
            },
            SdkImdsError::FailedToLoadToken(_) if timed_out => ImdsError::TokenTimeout { endpoint },
            SdkImdsError::FailedToLoadToken(t) if t.is_dispatch_failure() => {
                ImdsError::Unreachable { endpoint, detail }
            }
            SdkImdsError::FailedToLoadToken(_) => ImdsError::TokenRefused { endpoint, detail },
            _ if timed_out => ImdsError::Timeout {
                endpoint,
                path: path.to_string(),
            },
            _ => ImdsError::Unreachable { endpoint, detail },
        }
    }
}

fn build(config: &ProviderConfig, endpoint: &str, timeout: Duration) -> Result<Client, ImdsError> {
    let invalid = |detail: String| ImdsError::InvalidEndpoint {
        endpoint: endpoint.to_string(),
        detail,
    };
    let parsed: http::Uri = endpoint
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    if parsed.scheme_str() != Some("http") && parsed.scheme_str() != Some("https") {
        return Err(invalid("expected http://HOST[:PORT]".to_string()));
    }
    Ok(Client::builder()
        .configure(config)
        .endpoint(endpoint)
        .map_err(|e| invalid(e.to_string()))?
        .max_attempts(1)
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .operation_attempt_timeout(timeout * 2)
        .operation_timeout(timeout * 2)
        .build())
}

/// How `http_body_util::Limited` says a body went past its limit (lower-cased, as matched).
const LIMIT_TEXT: &str = "length limit exceeded";

/// `inner`, with every response body cut off past [`MAX_BODY`]: reading further fails with
/// [`LIMIT_TEXT`], so the SDK never holds more than that of one answer.
pub(crate) fn bounded(inner: SharedHttpClient) -> SharedHttpClient {
    SharedHttpClient::new(Bounded(inner))
}

#[derive(Debug)]
struct Bounded<T>(T);

impl HttpClient for Bounded<SharedHttpClient> {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(Bounded(self.0.http_connector(settings, components)))
    }
}

impl HttpConnector for Bounded<SharedHttpConnector> {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let answer = self.0.call(request);
        HttpConnectorFuture::new(async move {
            let response = answer.await?;
            Ok(response
                .map(|body| SdkBody::from_body_1_x(http_body_util::Limited::new(body, MAX_BODY))))
        })
    }
}

/// An error and its causes on one line, lower-cased for matching.
fn chain(err: &dyn StdError) -> String {
    crate::fmt::error_chain(err).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::imds::{Faults, ImdsSim};

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn reads_with_one_token_and_renews_it_after_a_401() {
        let sim = ImdsSim::start().expect("sim");
        let client = ImdsClient::new(&sim.url(), Duration::from_secs(2)).expect("client");
        runtime().block_on(async {
            for _ in 0..5 {
                let id = client.get("instance-id").await.expect("read");
                assert_eq!(id.as_deref(), Some("i-0123456789abcdef0"));
            }
            assert_eq!(sim.tokens_minted(), 1, "the token is reused");
            assert_eq!(
                client.get("spot/instance-action").await,
                Ok(None),
                "404 is no notice"
            );
            sim.expire_tokens();
            let id = client.get("instance-id").await.expect("read after 401");
            assert_eq!(id.as_deref(), Some("i-0123456789abcdef0"));
            assert_eq!(sim.tokens_minted(), 2, "a new token after the 401");
        });
        let requests = sim.requests();
        let gets: Vec<_> = requests.iter().filter(|r| r.method == "GET").collect();
        assert!(
            gets.iter().filter(|r| r.status == 401).count() == 1,
            "{gets:?}"
        );
        assert!(
            gets.iter().all(|r| r.valid_token || r.status == 401),
            "every GET carried a token: {gets:?}"
        );
    }

    #[test]
    fn a_black_holed_token_put_names_the_hop_limit() {
        let sim = ImdsSim::start().expect("sim");
        sim.set_faults(Faults {
            blackhole_token: true,
            ..Faults::default()
        });
        let client = ImdsClient::new(&sim.url(), Duration::from_millis(300)).expect("client");
        let err = runtime()
            .block_on(client.get("instance-id"))
            .expect_err("no token");
        assert_eq!(err.kind(), "token-timeout", "{err}");
        assert!(err.to_string().contains("hop limit"), "{err}");
    }

    #[test]
    fn an_unanswered_ipv6_token_request_is_not_blamed_on_the_hop_limit_alone() {
        let v6 = ImdsError::TokenTimeout {
            endpoint: "http://[fd00:ec2::254]".to_string(),
        }
        .to_string();
        assert!(v6.contains("IPv6 metadata endpoint may be off"), "{v6}");
        assert!(v6.contains("hop limit"), "still one of the causes: {v6}");
        let v4 = ImdsError::TokenTimeout {
            endpoint: "http://169.254.169.254".to_string(),
        }
        .to_string();
        assert!(!v4.contains("IPv6"), "{v4}");
        assert!(v4.contains("hop limit must be at least 2"), "{v4}");
    }

    #[test]
    fn a_dead_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let client = ImdsClient::new(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(300),
        )
        .expect("client");
        let err = runtime()
            .block_on(client.get("instance-id"))
            .expect_err("nothing listens");
        assert!(
            matches!(
                err,
                ImdsError::Unreachable { .. } | ImdsError::TokenTimeout { .. }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn an_answer_past_the_bound_is_not_read() {
        let sim = ImdsSim::start().expect("sim");
        let client = ImdsClient::new(&sim.url(), Duration::from_secs(5)).expect("client");
        let path = "events/maintenance/scheduled";
        runtime().block_on(async {
            sim.set_scheduled_body(Some("x".repeat(MAX_BODY)));
            let whole = client.get(path).await.expect("at the bound is read");
            assert_eq!(whole.map(|b| b.len()), Some(MAX_BODY));
            sim.set_scheduled_body(Some("x".repeat(8 << 20)));
            let err = client.get(path).await.expect_err("past the bound");
            assert_eq!(err.kind(), "too-large", "{err}");
            assert!(err.to_string().contains("64 KiB"), "{err}");
            sim.set_scheduled_body(Some("[]".to_string()));
            assert_eq!(client.get(path).await, Ok(Some("[]".to_string())));
        });
    }

    #[test]
    fn an_invalid_endpoint_is_refused() {
        assert!(matches!(
            ImdsClient::new("ftp://x", Duration::from_secs(1)),
            Err(ImdsError::InvalidEndpoint { .. })
        ));
    }
}
