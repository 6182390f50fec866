//! What every simulated AWS Query API shares (Auto Scaling, Elastic Load Balancing v2): the
//! form-encoded POST with `Action` and `Version`, the SigV4 `Authorization` header the real
//! services require, and the XML envelopes of an answer and of an `ErrorResponse`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::SimServer;

/// Serves an API on `addr` (loopback only) over HTTP/1.1: every request of every connection is
/// answered by `handle`, with the simulator's shared `state`.
pub(crate) fn serve<S, F, Fut>(
    addr: SocketAddr,
    name: &str,
    state: Arc<Mutex<S>>,
    handle: F,
) -> io::Result<SimServer>
where
    S: Send + 'static,
    F: Fn(Arc<Mutex<S>>, Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Answer> + Send + 'static,
{
    SimServer::start(addr, name, move |io| {
        let (state, handle) = (state.clone(), handle.clone());
        async move {
            let service = service_fn(move |req| {
                let answer = handle(state.clone(), req);
                async move { Ok::<_, std::convert::Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .await;
        }
    })
}

/// One Query API: its XML namespace, its `Version`, and the service name SigV4 signs for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Api {
    pub xmlns: &'static str,
    pub version: &'static str,
    pub signing_name: &'static str,
}

/// An HTTP answer of a simulator.
pub(crate) type Answer = Response<Full<Bytes>>;

/// One call as a simulator saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    pub params: BTreeMap<String, String>,
    pub status: u16,
    /// The error code, for an error answer.
    pub error: Option<String>,
    pub at: Instant,
    /// The access key id the request was signed with: which caller made it.
    pub caller: Option<String>,
}

/// A request read: its parameters, whether it was signed for the API, and by whom.
pub(crate) struct Form {
    pub params: BTreeMap<String, String>,
    pub action: String,
    pub signed: bool,
    pub caller: Option<String>,
}

/// Reads a Query request, or the error AWS answers for a wrong method or an oversized body.
pub(crate) async fn read(api: Api, req: Request<Incoming>) -> Result<Form, Reply> {
    if req.method() != Method::POST {
        return Err(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Sender",
            "InvalidAction",
            "only POST is supported",
        ));
    }
    let signed = signed(&req, api.signing_name);
    let caller = caller(&req);
    let Ok(body) = Limited::new(req.into_body(), 1 << 20).collect().await else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "MalformedQueryString",
            "body too large",
        ));
    };
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body.to_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    Ok(Form {
        params,
        action,
        signed,
        caller,
    })
}

/// The refusal AWS gives an unsigned request or one of another API version, if any.
pub(crate) fn unauthenticated(api: Api, form: &Form) -> Option<Reply> {
    if !form.signed {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Sender",
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        ));
    }
    if form.params.get("Version").map(String::as_str) != Some(api.version) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "InvalidAction",
            &format!("Version must be {}", api.version),
        ));
    }
    None
}

fn xml(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/xml"),
    );
    answer
}

/// Text made safe for an XML element.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "ff028e98-1dc1-11e6-89f3-{:012x}",
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// An answer before it is rendered: the call log records the error code from here.
pub(crate) enum Reply {
    Ok {
        action: String,
        result: String,
    },
    Error {
        status: StatusCode,
        kind: &'static str,
        code: &'static str,
        message: String,
    },
}

impl Reply {
    pub(crate) fn code(&self) -> Option<String> {
        match self {
            Reply::Ok { .. } => None,
            Reply::Error { code, .. } => Some(code.to_string()),
        }
    }

    pub(crate) fn render(self, api: Api) -> Answer {
        let xmlns = api.xmlns;
        match self {
            Reply::Ok { action, result } => xml(
                StatusCode::OK,
                format!(
                    "<{action}Response xmlns=\"{xmlns}\"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
                    request_id()
                ),
            ),
            Reply::Error {
                status,
                kind,
                code,
                message,
            } => xml(
                status,
                format!(
                    "<ErrorResponse xmlns=\"{xmlns}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                    escape(&message),
                    request_id()
                ),
            ),
        }
    }
}

pub(crate) fn error(
    status: StatusCode,
    kind: &'static str,
    code: &'static str,
    message: &str,
) -> Reply {
    Reply::Error {
        status,
        kind,
        code,
        message: message.to_string(),
    }
}

pub(crate) fn success(action: &str, result: &str) -> Reply {
    Reply::Ok {
        action: action.to_string(),
        result: result.to_string(),
    }
}

pub(crate) fn validation(message: &str) -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "Sender",
        "ValidationError",
        message,
    )
}

/// 403 `AccessDenied` in the words IAM uses for an action the role may not call.
pub(crate) fn denied(service: &str, action: &str) -> Reply {
    error(
        StatusCode::FORBIDDEN,
        "Sender",
        "AccessDenied",
        &format!(
            "User: arn:aws:sts::123456789012:assumed-role/agent/i-0123456789abcdef0 is not authorized to perform: {service}:{action} because no identity-based policy allows the {service}:{action} action"
        ),
    )
}

/// The access key id a SigV4 `Authorization` header names (`Credential=AKID/date/…`).
fn caller(req: &Request<Incoming>) -> Option<String> {
    let auth = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    credential.split('/').next().map(str::to_string)
}

/// Whether the request carries a SigV4 Authorization header for `service`.
fn signed(req: &Request<Incoming>, service: &str) -> bool {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("AWS4-HMAC-SHA256 ")
                && v.contains("Credential=")
                && v.contains(&format!("/{service}/aws4_request"))
                && v.contains("SignedHeaders=")
                && v.contains("Signature=")
        })
}
