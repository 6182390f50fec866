//! A fake instance metadata service for tests and `agent-guard drill`, serving loopback only.
//!
//! It follows AWS's documented IMDSv2 behaviour (shared/reference/aws-imds-and-lifecycle.md §2):
//! a token from `PUT /latest/api/token` with a TTL of 1–21600 s (else 400), the TTL echoed in the
//! response header, 403 for a token PUT carrying `X-Forwarded-For` or to a versioned path, 401
//! for a missing, unknown or expired token, 404 for absent items, `text/plain` everywhere. At run
//! time it can change the lifecycle state, post spot and rebalance notices and scheduled events
//! (`[]` when there are none, as on EC2), serve an instance profile's credentials, write notice
//! times afresh on every read as AWS's own mock does, and misbehave on purpose: black-holed token PUTs (the hop-limit symptom), 503 bursts, garbage, slow answers,
//! dropped connections, tokens rejected as if IMDS had restarted.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::SimServer;

/// The token header on metadata requests.
pub const TOKEN_HEADER: &str = "x-aws-ec2-metadata-token";
/// The TTL header on token requests and responses.
pub const TTL_HEADER: &str = "x-aws-ec2-metadata-token-ttl-seconds";

/// IMDS's IPv6 address, `fd00:ec2::254`. A fake can listen on it only where a test gave it to
/// a private network namespace's loopback.
pub const IPV6_ADDR: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254));

/// A scheduled event to list in `events/maintenance/scheduled`.
#[derive(Debug, Clone)]
pub struct ScheduledEvent {
    /// `instance-reboot`, `system-reboot`, `system-maintenance`, `instance-retirement`,
    /// `instance-stop`.
    pub code: String,
    /// `active`, `canceled` or `completed`.
    pub state: String,
    pub event_id: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl ScheduledEvent {
    /// An active event of `code` that may begin at `not_before` and lasts up to two hours.
    pub fn active(code: &str, event_id: &str, not_before: SystemTime) -> ScheduledEvent {
        ScheduledEvent {
            code: code.to_string(),
            state: "active".to_string(),
            event_id: event_id.to_string(),
            not_before,
            not_after: not_before + Duration::from_secs(7200),
        }
    }

    /// The same event in another state (`canceled`, `completed`).
    pub fn with_state(mut self, state: &str) -> ScheduledEvent {
        self.state = state.to_string();
        self
    }

    /// As EC2 writes it: times like `21 Jan 2019 09:00:43 GMT`.
    fn json(&self) -> serde_json::Value {
        use crate::aws::scheduled::format_event_time;
        let description = match self.state.as_str() {
            "canceled" => format!("[Canceled] The instance is scheduled for {}", self.code),
            "completed" => format!("[Completed] The instance is scheduled for {}", self.code),
            _ => format!("The instance is scheduled for {}", self.code),
        };
        serde_json::json!({
            "NotBefore": format_event_time(self.not_before),
            "Code": self.code,
            "Description": description,
            "EventId": self.event_id,
            "NotAfter": format_event_time(self.not_after),
            "State": self.state,
        })
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    /// Whether the request carried a token this fake minted and that had not expired.
    pub valid_token: bool,
    /// The status answered (0 when the connection was dropped or never answered).
    pub status: u16,
    pub at: Instant,
}

/// Misbehaviour to inject; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Token PUTs are accepted and never answered, as when the hop limit is too low.
    pub blackhole_token: bool,
    /// The next N requests get 503.
    pub unavailable: u32,
    /// Metadata answers are random bytes instead of their value.
    pub garbage: bool,
    /// Every answer waits this long first.
    pub delay: Duration,
    /// Connections are closed without an answer.
    pub drop_connections: bool,
    /// Every token is refused with 401, as if IMDS kept restarting.
    pub reject_tokens: bool,
}

/// The fake's state: what the instance's metadata says, and how the service behaves.
#[derive(Debug)]
struct State {
    tokens: HashMap<String, Instant>,
    minted: u64,
    lifecycle_state: Option<String>,
    spot_action: Option<String>,
    rebalance: Option<String>,
    /// The body of `events/maintenance/scheduled` (`None`: 404).
    scheduled: Option<String>,
    /// Spot `time` and rebalance `noticeTime` written afresh on every read, as AWS's own mock
    /// (amazon-ec2-metadata-mock) does: the spot action (if posted) then.
    recompute_times: bool,
    /// The instance profile's role and its credentials' JSON, under `iam/security-credentials/`.
    role: Option<(String, String)>,
    tags_enabled: bool,
    tags: HashMap<String, String>,
    /// `instance-life-cycle`: `on-demand`, `spot`, `scheduled` or `capacity-block`.
    life_cycle: String,
    instance_id: String,
    region: String,
    faults: Faults,
    seen: Vec<Seen>,
}

/// A running fake IMDS. Dropping it stops the server.
pub struct ImdsSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl ImdsSim {
    /// Starts a fake on an ephemeral loopback port.
    pub fn start() -> io::Result<ImdsSim> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a fake on `addr`, which must be a loopback address.
    pub fn start_on(addr: SocketAddr) -> io::Result<ImdsSim> {
        let state = Arc::new(Mutex::new(State {
            tokens: HashMap::new(),
            minted: 0,
            lifecycle_state: Some("InService".to_string()),
            spot_action: None,
            rebalance: None,
            scheduled: Some("[]".to_string()),
            recompute_times: false,
            role: None,
            tags_enabled: false,
            tags: HashMap::new(),
            life_cycle: "on-demand".to_string(),
            instance_id: "i-0123456789abcdef0".to_string(),
            region: "us-east-1".to_string(),
            faults: Faults::default(),
            seen: Vec::new(),
        }));
        let shared = state.clone();
        let server = SimServer::start(addr, "imds", move |io| {
            let state = shared.clone();
            async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { handle(&state, req).await }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            }
        })?;
        Ok(ImdsSim { server, state })
    }

    /// Starts a fake on IMDS's own IPv6 endpoint, `[fd00:ec2::254]:80`, which must be an
    /// address of this host (a test's private network namespace).
    pub fn start_on_ipv6_endpoint() -> io::Result<ImdsSim> {
        Self::start_on(SocketAddr::new(IPV6_ADDR, 80))
    }

    /// The base URL to give `--imds-endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Sets `autoscaling/target-lifecycle-state` (`None`: 404, as on a brand-new instance).
    pub fn set_lifecycle_state(&self, value: Option<&str>) {
        self.lock().lifecycle_state = value.map(str::to_string);
    }

    /// Sets the body of `spot/instance-action` (`None`: 404, no interruption).
    pub fn set_spot_action(&self, body: Option<String>) {
        self.lock().spot_action = body;
    }

    /// Posts a spot interruption of `action` at `time` (RFC 3339), as EC2 writes it.
    pub fn post_spot_interruption(&self, action: &str, time: &str) {
        self.set_spot_action(Some(format!(
            "{{\"action\": \"{action}\", \"time\": \"{time}\"}}"
        )));
    }

    /// Sets the body of `events/recommendations/rebalance` (`None`: 404).
    pub fn set_rebalance(&self, body: Option<String>) {
        self.lock().rebalance = body;
    }

    /// Lists these scheduled events, as EC2 does (an empty list is `[]`).
    pub fn set_scheduled_events(&self, events: &[ScheduledEvent]) {
        let list: Vec<serde_json::Value> = events.iter().map(ScheduledEvent::json).collect();
        self.set_scheduled_body(Some(serde_json::Value::Array(list).to_string()));
    }

    /// Sets the raw body of `events/maintenance/scheduled` (`None`: 404), garbage included.
    pub fn set_scheduled_body(&self, body: Option<String>) {
        self.lock().scheduled = body;
    }

    /// Writes spot `time` (two minutes ahead) and rebalance `noticeTime` (now) afresh, to the
    /// millisecond, on every read of a posted notice, as AWS's own mock does.
    pub fn set_recompute_times(&self, on: bool) {
        self.lock().recompute_times = on;
    }

    /// Gives the instance a role: `iam/security-credentials/` lists it and
    /// `iam/security-credentials/ROLE` serves these credentials, in the documented format,
    /// expiring in six hours.
    pub fn set_role_credentials(&self, role: &str, access_key_id: &str, secret: &str) {
        let expiration =
            humantime::format_rfc3339_seconds(SystemTime::now() + Duration::from_secs(6 * 3600));
        let body = serde_json::json!({
            "Code": "Success",
            "LastUpdated": humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            "Type": "AWS-HMAC",
            "AccessKeyId": access_key_id,
            "SecretAccessKey": secret,
            "Token": "IQoJb3JpZ2luX2VjEDUaCXVzLWVhc3QtMSJHMEUCIQD-sim-token",
            "Expiration": expiration.to_string(),
        });
        self.lock().role = Some((role.to_string(), body.to_string()));
    }

    /// A handle that sets `autoscaling/target-lifecycle-state` from elsewhere (another
    /// simulator's thread: the Auto Scaling fake, when it starts terminating the instance).
    pub fn lifecycle_setter(&self) -> impl Fn(Option<&str>) + Send + Sync + 'static {
        let state = self.state.clone();
        move |value| lock(&state).lifecycle_state = value.map(str::to_string)
    }

    /// Enables or disables instance tags in metadata, and sets one.
    pub fn set_tag(&self, key: &str, value: Option<&str>) {
        let mut state = self.lock();
        state.tags_enabled = true;
        match value {
            Some(v) => state.tags.insert(key.to_string(), v.to_string()),
            None => state.tags.remove(key),
        };
    }

    /// Turns instance tags in metadata on or off (off is EC2's default), keeping the tags.
    pub fn set_tags_enabled(&self, enabled: bool) {
        self.lock().tags_enabled = enabled;
    }

    /// Sets `instance-life-cycle`: `on-demand` (the default) or `spot`.
    pub fn set_instance_life_cycle(&self, value: &str) {
        self.lock().life_cycle = value.to_string();
    }

    /// The instance id and region it reports.
    pub fn set_identity(&self, instance_id: &str, region: &str) {
        let mut state = self.lock();
        state.instance_id = instance_id.to_string();
        state.region = region.to_string();
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Forgets every token, as a restarted IMDS would: the next request with one gets 401.
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// How many tokens were minted so far.
    pub fn tokens_minted(&self) -> u64 {
        self.lock().minted
    }

    /// Every request seen so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the fake's plain data half-written in a way
    // that matters to a test, so a poisoned lock is simply taken over.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

type Answer = Response<Full<Bytes>>;

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Result<Answer, io::Error> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let now = Instant::now();
    let (faults, valid_token) = {
        let mut s = lock(state);
        s.tokens.retain(|_, expiry| *expiry > now);
        let valid = req
            .headers()
            .get(TOKEN_HEADER)
            .and_then(|t| t.to_str().ok())
            .is_some_and(|t| s.tokens.contains_key(t) && !s.faults.reject_tokens);
        (s.faults.clone(), valid)
    };
    // Recorded on arrival: a request the client gives up on (slow answers, black holes) is
    // still a request that reached IMDS.
    let index = {
        let mut s = lock(state);
        s.seen.push(Seen {
            method: method.to_string(),
            path: path.clone(),
            valid_token,
            status: 0,
            at: now,
        });
        s.seen.len() - 1
    };
    let record = |status: u16| {
        if let Some(seen) = lock(state).seen.get_mut(index) {
            seen.status = status;
        }
    };
    if faults.drop_connections {
        record(0);
        return Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "dropped on purpose",
        ));
    }
    let is_token_put = method == Method::PUT && path == "/latest/api/token";
    if is_token_put && faults.blackhole_token {
        record(0);
        std::future::pending::<()>().await;
    }
    if faults.unavailable > 0 {
        lock(state).faults.unavailable -= 1;
        record(503);
        return Ok(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "503 - Service Unavailable",
        ));
    }
    if !faults.delay.is_zero() {
        tokio::time::sleep(faults.delay).await;
    }
    let answer = route(state, &req, &method, &path, valid_token, faults.garbage);
    record(answer.status().as_u16());
    Ok(answer)
}

/// `PUT /latest/api/token`: a token for its TTL, refused as IMDS refuses it.
fn token(state: &Mutex<State>, req: &Request<Incoming>, method: &Method, path: &str) -> Answer {
    if method != Method::PUT {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed");
    }
    // Only /latest/api/token mints tokens; a versioned path is refused, as is any PUT
    // that went through a proxy (X-Forwarded-For).
    if path != "/latest/api/token" || req.headers().contains_key("x-forwarded-for") {
        return text(StatusCode::FORBIDDEN, "403 - Forbidden");
    }
    let ttl = req
        .headers()
        .get(TTL_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ttl| (1..=21_600).contains(ttl));
    let Some(ttl) = ttl else {
        return text(
            StatusCode::BAD_REQUEST,
            "400 - Missing or Invalid Parameters",
        );
    };
    let mut s = lock(state);
    s.minted += 1;
    let token = format!("AQAEA{:016x}{:08x}", pseudo_random(), s.minted);
    s.tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    let mut answer = text(StatusCode::OK, &token);
    answer.headers_mut().insert(
        TTL_HEADER,
        http::HeaderValue::from_str(&ttl.to_string()).expect("digits are a valid header"),
    );
    answer
}

fn route(
    state: &Mutex<State>,
    req: &Request<Incoming>,
    method: &Method,
    path: &str,
    valid_token: bool,
    garbage: bool,
) -> Answer {
    if path.ends_with("/api/token") {
        return token(state, req, method, path);
    }
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "405 - Method Not Allowed");
    }
    // IMDSv2 only: every metadata read needs a live token.
    if !valid_token {
        return text(StatusCode::UNAUTHORIZED, "401 - Unauthorized");
    }
    let s = lock(state);
    let Some(item) = path.strip_prefix("/latest/meta-data/") else {
        return text(StatusCode::NOT_FOUND, "404 - Not Found");
    };
    let value = match item {
        "instance-id" => Some(s.instance_id.clone()),
        "placement/region" => Some(s.region.clone()),
        "placement/availability-zone" => Some(format!("{}a", s.region)),
        "autoscaling/target-lifecycle-state" => s.lifecycle_state.clone(),
        "spot/instance-action" if s.recompute_times => s.spot_action.as_ref().map(|a| {
            let action = serde_json::from_str::<serde_json::Value>(a)
                .ok()
                .and_then(|v| v["action"].as_str().map(str::to_string))
                .unwrap_or_else(|| "terminate".to_string());
            let time =
                humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(120));
            format!("{{\"action\": \"{action}\", \"time\": \"{time}\"}}")
        }),
        "spot/instance-action" => s.spot_action.clone(),
        "events/recommendations/rebalance" if s.recompute_times => s.rebalance.as_ref().map(|_| {
            let now = humantime::format_rfc3339_millis(SystemTime::now());
            format!("{{\"noticeTime\": \"{now}\"}}")
        }),
        "events/recommendations/rebalance" => s.rebalance.clone(),
        "iam/security-credentials" | "iam/security-credentials/" => {
            s.role.as_ref().map(|(role, _)| role.clone())
        }
        "instance-life-cycle" => Some(s.life_cycle.clone()),
        "tags/instance" | "tags/instance/" => Some(tag_keys(&s)),
        "events/maintenance/scheduled" => s.scheduled.clone(),
        _ if item.starts_with("iam/security-credentials/") => s
            .role
            .as_ref()
            .filter(|(role, _)| item.strip_prefix("iam/security-credentials/") == Some(role))
            .map(|(_, body)| body.clone()),
        _ => item
            .strip_prefix("tags/instance/")
            .filter(|_| s.tags_enabled)
            .and_then(|key| s.tags.get(key).cloned()),
    };
    match value {
        Some(_) if garbage => text(StatusCode::OK, "\u{1}\u{2}<html>garbage{{{\u{7f}"),
        Some(v) => text(StatusCode::OK, &v),
        None => text(StatusCode::NOT_FOUND, "404 - Not Found"),
    }
}

/// The `tags/instance` listing: the keys, one a line. With tags off, real IMDS answers this path
/// 200 with an empty body (while `tags/instance/KEY` is 404), so the fake does too.
fn tag_keys(s: &State) -> String {
    if !s.tags_enabled {
        return String::new();
    }
    let mut keys: Vec<&str> = s.tags.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys.join("\n")
}

fn text(status: StatusCode, body: &str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    answer
}

/// Token bytes only need to differ between tokens and runs, not to be secret.
fn pseudo_random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    /// A raw HTTP/1.1 exchange: the fake is tested on the wire, not through a client library
    /// that might paper over what it answers.
    fn exchange(sim: &ImdsSim, head: &str) -> (u16, String, String) {
        let mut stream = TcpStream::connect(sim.addr()).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write!(stream, "{head}\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        stream.read_to_string(&mut out).expect("read");
        let status = out[9..12].parse().expect("status");
        let (headers, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
        (status, headers.to_ascii_lowercase(), body.to_string())
    }

    /// A metadata GET with the session token `t`.
    fn get_with(sim: &ImdsSim, t: &str, path: &str) -> (u16, String, String) {
        exchange(
            sim,
            &format!("GET /latest/meta-data/{path} HTTP/1.1\r\n{TOKEN_HEADER}: {t}"),
        )
    }

    fn token(sim: &ImdsSim) -> String {
        let (status, headers, body) = exchange(
            sim,
            &format!("PUT /latest/api/token HTTP/1.1\r\n{TTL_HEADER}: 60"),
        );
        assert_eq!(status, 200);
        assert!(headers.contains(&format!("{TTL_HEADER}: 60")), "{headers}");
        body
    }

    #[test]
    fn follows_the_documented_token_rules() {
        let sim = ImdsSim::start().expect("sim");
        for ttl in ["0", "21601", "soon"] {
            let (status, _, _) = exchange(
                &sim,
                &format!("PUT /latest/api/token HTTP/1.1\r\n{TTL_HEADER}: {ttl}"),
            );
            assert_eq!(status, 400, "ttl {ttl}");
        }
        let (status, _, _) = exchange(&sim, "PUT /latest/api/token HTTP/1.1");
        assert_eq!(status, 400, "no ttl");
        let (status, _, _) = exchange(
            &sim,
            &format!(
                "PUT /latest/api/token HTTP/1.1\r\n{TTL_HEADER}: 60\r\nX-Forwarded-For: 10.0.0.1"
            ),
        );
        assert_eq!(status, 403, "proxied PUT");
        let (status, _, _) = exchange(
            &sim,
            &format!("PUT /2021-03-23/api/token HTTP/1.1\r\n{TTL_HEADER}: 60"),
        );
        assert_eq!(status, 403, "versioned token path");
        let (status, _, _) = exchange(&sim, "GET /latest/meta-data/instance-id HTTP/1.1");
        assert_eq!(status, 401, "no token");
        let (status, _, _) = exchange(
            &sim,
            &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\n{TOKEN_HEADER}: forged"),
        );
        assert_eq!(status, 401, "unknown token");
        let t = token(&sim);
        let (status, headers, body) = exchange(
            &sim,
            &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\n{TOKEN_HEADER}: {t}"),
        );
        assert_eq!((status, body.as_str()), (200, "i-0123456789abcdef0"));
        assert!(headers.contains("content-type: text/plain"), "{headers}");
        let (status, _, _) = exchange(
            &sim,
            &format!("GET /latest/meta-data/spot/instance-action HTTP/1.1\r\n{TOKEN_HEADER}: {t}"),
        );
        assert_eq!(status, 404, "no interruption");
        sim.expire_tokens();
        let (status, _, _) = exchange(
            &sim,
            &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\n{TOKEN_HEADER}: {t}"),
        );
        assert_eq!(status, 401, "expired token");
    }

    #[test]
    fn tokens_expire_after_their_ttl() {
        let sim = ImdsSim::start().expect("sim");
        let (_, _, t) = exchange(
            &sim,
            &format!("PUT /latest/api/token HTTP/1.1\r\n{TTL_HEADER}: 1"),
        );
        std::thread::sleep(Duration::from_millis(1100));
        let (status, _, _) = exchange(
            &sim,
            &format!("GET /latest/meta-data/instance-id HTTP/1.1\r\n{TOKEN_HEADER}: {t}"),
        );
        assert_eq!(status, 401);
    }

    #[test]
    fn serves_notices_and_tags_when_set() {
        let sim = ImdsSim::start().expect("sim");
        let t = token(&sim);
        let get = |path: &str| get_with(&sim, &t, path);
        assert_eq!(get("autoscaling/target-lifecycle-state").2, "InService");
        sim.set_lifecycle_state(Some("Terminated"));
        assert_eq!(get("autoscaling/target-lifecycle-state").2, "Terminated");
        sim.post_spot_interruption("terminate", "2026-11-28T08:22:00Z");
        assert_eq!(
            get("spot/instance-action").2,
            "{\"action\": \"terminate\", \"time\": \"2026-11-28T08:22:00Z\"}"
        );
        assert_eq!(
            get("tags/instance/aws:autoscaling:groupName").0,
            404,
            "tags are off by default"
        );
        assert_eq!(
            get("events/maintenance/scheduled").2,
            "[]",
            "none, as on EC2"
        );
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_548_061_243);
        sim.set_scheduled_events(&[ScheduledEvent::active(
            "system-reboot",
            "instance-event-0d59937288b749b32",
            at,
        )]);
        let listed: serde_json::Value =
            serde_json::from_str(&get("events/maintenance/scheduled").2).expect("JSON");
        assert_eq!(listed[0]["NotBefore"], "21 Jan 2019 09:00:43 GMT");
        assert_eq!(listed[0]["NotAfter"], "21 Jan 2019 11:00:43 GMT");
        assert_eq!(listed[0]["State"], "active");
        assert_eq!(listed[0]["Code"], "system-reboot");
        assert_eq!(listed[0]["EventId"], "instance-event-0d59937288b749b32");
        sim.set_tag("aws:autoscaling:groupName", Some("workers"));
        assert_eq!(get("tags/instance/aws:autoscaling:groupName").2, "workers");
        sim.set_faults(Faults {
            unavailable: 2,
            ..Faults::default()
        });
        assert_eq!(get("instance-id").0, 503);
        assert_eq!(get("instance-id").0, 503);
        assert_eq!(get("instance-id").0, 200, "the burst is over");
    }

    #[test]
    fn lists_tags_only_when_enabled_and_tells_spot_from_on_demand() {
        let sim = ImdsSim::start().expect("sim");
        let t = token(&sim);
        let get = |path: &str| get_with(&sim, &t, path);
        // Tags off: the listing is 200 and empty, each key 404, as real IMDS answers.
        assert_eq!(
            (get("tags/instance").0, get("tags/instance").2),
            (200, String::new())
        );
        sim.set_tag("aws:autoscaling:groupName", Some("workers"));
        sim.set_tag("Name", Some("w-1"));
        assert_eq!(get("tags/instance").2, "Name\naws:autoscaling:groupName");
        sim.set_tags_enabled(false);
        assert_eq!(get("tags/instance").2, "");
        assert_eq!(get("tags/instance/Name").0, 404);
        assert_eq!(get("instance-life-cycle").2, "on-demand");
        sim.set_instance_life_cycle("spot");
        assert_eq!(get("instance-life-cycle").2, "spot");
    }
}
