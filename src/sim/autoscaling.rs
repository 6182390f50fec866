//! A fake of the Auto Scaling API's lifecycle calls, for tests and `agent-guard drill`; loopback
//! only. moto (5.2.5) implements neither `CompleteLifecycleAction` nor
//! `RecordLifecycleActionHeartbeat` and skips the wait states, so this fake stands in for them.
//!
//! It follows the AWS Query protocol and the documented semantics
//! (shared/reference/aws-imds-and-lifecycle.md §3): form-encoded POSTs with `Action` and
//! `Version=2011-01-01`, a SigV4 `Authorization` header required, XML answers and
//! `ErrorResponse`s; groups, hooks with `HeartbeatTimeout`, `GlobalTimeout` and `DefaultResult`;
//! per-instance wait states, a heartbeat extending the timeout by the heartbeat timeout, the
//! default result applied on timeout, `ValidationError` outside a wait state; `SetInstanceHealth`
//! Unhealthy replacing an InService instance through its termination hook (a listener hears
//! the new target state, for the IMDS fake). Faults can be injected (`Throttling`, 5xx,
//! `AccessDenied`), and every call is logged with its time. The Describe calls `agent-guard
//! doctor` reads answer in the API reference's shape, groups with their instance lifecycle
//! policy (`RetentionTriggers.TerminateHookAbandon`) included.
//!
//! A group can hold several instances, and as a group with a load balancer does, it can
//! deregister a terminating instance first and only enter the wait state after the target
//! group's deregistration delay (AWS user guide, "How lifecycle hooks work", steps 4–5): until
//! then the instance is `Terminating` and the lifecycle calls answer "No active Lifecycle
//! Action found". An account-wide token bucket can answer `Throttling`, as Auto Scaling's API
//! rate does for every tool of an account; every state an instance enters is logged with its
//! time.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use super::SimServer;

const XMLNS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

/// A lifecycle hook.
#[derive(Debug, Clone)]
pub struct Hook {
    pub name: String,
    /// `LAUNCHING` or `TERMINATING`.
    pub transition: &'static str,
    pub heartbeat_timeout: Duration,
    pub global_timeout: Duration,
    /// `CONTINUE` or `ABANDON`.
    pub default_result: &'static str,
}

impl Hook {
    /// A hook with AWS's defaults: heartbeat timeout 3600 s, global timeout the smaller of 48 h
    /// and 100 heartbeat timeouts, default result ABANDON.
    pub fn new(name: &str, transition: &'static str) -> Hook {
        Hook {
            name: name.to_string(),
            transition,
            heartbeat_timeout: Duration::from_secs(3600),
            global_timeout: Duration::from_secs(172_800),
            default_result: "ABANDON",
        }
    }

    /// Sets the heartbeat timeout, and the global timeout that follows from it.
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> Hook {
        self.heartbeat_timeout = timeout;
        self.global_timeout = (timeout * 100).min(Duration::from_secs(172_800));
        self
    }
}

/// A lifecycle action waiting for completion.
#[derive(Debug, Clone)]
struct Pending {
    hook: String,
    token: String,
    deadline: Instant,
    global_deadline: Instant,
}

#[derive(Debug, Clone)]
struct Instance {
    state: String,
    protected: bool,
    action: Option<Pending>,
    /// Deregistration from the load balancer under way: the wait state comes at this time.
    deregistering: Option<Deregistering>,
}

/// A termination held back by the deregistration delay.
#[derive(Debug, Clone)]
struct Deregistering {
    until: Instant,
    hook: Option<Hook>,
    token: String,
    wait_state: &'static str,
    done_state: &'static str,
}

#[derive(Debug, Clone, Default)]
struct Group {
    hooks: BTreeMap<String, Hook>,
    instances: BTreeMap<String, Instance>,
    /// `InstanceLifecyclePolicy.RetentionTriggers.TerminateHookAbandon`: `retain` or
    /// `terminate`; `None` when the group has no instance lifecycle policy.
    terminate_hook_abandon: Option<String>,
    /// The load balancer's deregistration delay before a terminating instance's wait state.
    deregistration_delay: Duration,
}

/// An account-wide token bucket: `rate` calls a second, up to `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.refilled).as_secs_f64() * self.limit.rate;
        self.tokens = (self.tokens + earned).min(self.limit.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// A state an instance entered, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub instance: String,
    pub state: String,
    pub at: Instant,
}

/// Faults to inject; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// The next N calls get 400 `Throttling`.
    pub throttle: u32,
    /// The next N calls get 500 `InternalFailure`.
    pub server_errors: u32,
    /// These actions are refused with 403 `AccessDenied`, as without the IAM permission.
    pub denied: BTreeSet<String>,
    /// These actions get 400 `Throttling`, every call, for as long as they are listed (one
    /// action throttled for minutes while the others answer).
    pub throttled: BTreeSet<String>,
}

/// One call as the fake saw it.
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

/// How an instance's lifecycle action ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub instance: String,
    pub hook: String,
    pub result: String,
    /// `false` when the timeout applied the default result.
    pub by_call: bool,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    groups: BTreeMap<String, Group>,
    faults: Faults,
    calls: Vec<Call>,
    completions: Vec<Completion>,
    next_token: u64,
    /// Health set with `SetInstanceHealth`, by instance: `Healthy` or `Unhealthy`.
    health: BTreeMap<String, String>,
    /// Instances set Unhealthy (`SetInstanceHealth`).
    unhealthy: BTreeSet<String>,
    /// Hears each target lifecycle state the group itself sets (a replacement).
    target_listener: TargetListener,
    bucket: Option<Bucket>,
    transitions: Vec<Transition>,
}

/// A listener's callback: `(instance, target lifecycle state)`.
type OnTarget = Box<dyn Fn(&str, &str) + Send>;

/// What hears the target lifecycle states the fake sets by itself.
#[derive(Default)]
struct TargetListener(Option<OnTarget>);

impl std::fmt::Debug for TargetListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "listener" } else { "none" })
    }
}

impl State {
    /// Sets an instance's state and logs the transition.
    fn enter(&mut self, id: &str, state: &str, at: Instant) {
        self.transitions.push(Transition {
            instance: id.to_string(),
            state: state.to_string(),
            at,
        });
    }
}

/// A running fake Auto Scaling API. Dropping it stops the server.
pub struct AutoScalingSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl AutoScalingSim {
    /// Starts a fake on an ephemeral loopback port.
    pub fn start() -> io::Result<AutoScalingSim> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Starts a fake on `addr`, which must be a loopback address.
    pub fn start_on(addr: SocketAddr) -> io::Result<AutoScalingSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let server = SimServer::start(addr, "autoscaling", move |io| {
            let state = shared.clone();
            async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, std::convert::Infallible>(handle(&state, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), service)
                    .await;
            }
        })?;
        Ok(AutoScalingSim { server, state })
    }

    /// The URL to give `AWS_ENDPOINT_URL_AUTO_SCALING`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Adds a group (if new) and a hook to it.
    pub fn put_hook(&self, group: &str, hook: Hook) {
        lock(&self.state)
            .groups
            .entry(group.to_string())
            .or_default()
            .hooks
            .insert(hook.name.clone(), hook);
    }

    /// Adds an instance in `state` to `group`.
    pub fn add_instance(&self, group: &str, id: &str, state: &str) {
        let mut s = lock(&self.state);
        s.groups
            .entry(group.to_string())
            .or_default()
            .instances
            .insert(
                id.to_string(),
                Instance {
                    state: state.to_string(),
                    protected: false,
                    action: None,
                    deregistering: None,
                },
            );
        s.enter(id, state, Instant::now());
    }

    /// Sets the group's deregistration delay (the target group's `deregistration_delay`): a
    /// terminating instance stays `Terminating` this long before its wait state.
    pub fn set_deregistration_delay(&self, group: &str, delay: Duration) {
        lock(&self.state)
            .groups
            .entry(group.to_string())
            .or_default()
            .deregistration_delay = delay;
    }

    /// Limits the whole account's calls to a token bucket (`None`: no limit). A call without a
    /// token is answered `Throttling`, and takes none.
    pub fn set_rate_limit(&self, limit: Option<RateLimit>) {
        lock(&self.state).bucket = limit.map(|limit| Bucket {
            limit,
            tokens: limit.burst,
            refilled: Instant::now(),
        });
    }

    /// Sets the group's instance lifecycle policy: what an ABANDONed termination hook does to
    /// the instance, `retain` (it stays in `Terminating:Retained`, running) or `terminate`.
    pub fn set_terminate_hook_abandon(&self, group: &str, action: &str) {
        lock(&self.state)
            .groups
            .entry(group.to_string())
            .or_default()
            .terminate_hook_abandon = Some(action.to_string());
    }

    /// Starts a transition: the instance waits in `wait_state` if a hook of `transition` exists,
    /// else goes straight to `done_state`. A termination first deregisters for the group's
    /// deregistration delay, in `pre_state`.
    fn transition(&self, group: &str, id: &str, transition: &str, states: [&'static str; 3]) {
        let mut s = lock(&self.state);
        start_transition(&mut s, group, id, transition, states);
    }

    /// Calls `listener(instance, state)` with each target lifecycle state the group sets by
    /// itself (today: `Terminated` when it replaces an Unhealthy instance), as IMDS would show
    /// it. It runs on the fake's thread and must not call back into this fake.
    pub fn on_target_state(&self, listener: impl Fn(&str, &str) + Send + 'static) {
        lock(&self.state).target_listener = TargetListener(Some(Box::new(listener)));
    }

    /// Whether the instance was set Unhealthy.
    pub fn unhealthy(&self, id: &str) -> bool {
        lock(&self.state).unhealthy.contains(id)
    }

    /// A scale-out launch: `Pending:Wait` with a launch hook, else `InService`.
    pub fn launch(&self, group: &str, id: &str) {
        self.transition(
            group,
            id,
            LAUNCHING,
            ["Pending", "Pending:Wait", "InService"],
        );
    }

    /// A launch into the warm pool: `Warmed:Pending:Wait` with a launch hook.
    pub fn launch_into_warm_pool(&self, group: &str, id: &str) {
        self.transition(
            group,
            id,
            LAUNCHING,
            ["Warmed:Pending", "Warmed:Pending:Wait", "Warmed:Stopped"],
        );
    }

    /// A scale-in: `Terminating:Wait` with a termination hook, else `Terminated`; with a
    /// deregistration delay, `Terminating` first, for that long.
    pub fn terminate(&self, group: &str, id: &str) {
        self.transition(
            group,
            id,
            TERMINATING,
            ["Terminating", "Terminating:Wait", "Terminated"],
        );
    }

    /// The instance's lifecycle state, with timeouts applied.
    pub fn instance_state(&self, id: &str) -> Option<String> {
        let mut s = lock(&self.state);
        expire(&mut s, Instant::now());
        s.groups
            .values()
            .find_map(|g| g.instances.get(id))
            .map(|i| i.state.clone())
    }

    /// Whether the instance is protected from scale-in.
    pub fn protected(&self, id: &str) -> Option<bool> {
        let s = lock(&self.state);
        s.groups
            .values()
            .find_map(|g| g.instances.get(id))
            .map(|i| i.protected)
    }

    /// Sets an instance's scale-in protection directly, as an earlier run would have left it.
    pub fn set_protected(&self, id: &str, protected: bool) {
        let mut s = lock(&self.state);
        if let Some(i) = s.groups.values_mut().find_map(|g| g.instances.get_mut(id)) {
            i.protected = protected;
        }
    }

    /// The health last set with `SetInstanceHealth` for the instance, if any.
    pub fn health(&self, id: &str) -> Option<String> {
        lock(&self.state).health.get(id).cloned()
    }

    /// Replaces the injected faults.
    pub fn set_faults(&self, faults: Faults) {
        lock(&self.state).faults = faults;
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// Every lifecycle action that ended, by call or by timeout.
    pub fn completions(&self) -> Vec<Completion> {
        let mut s = lock(&self.state);
        expire(&mut s, Instant::now());
        s.completions.clone()
    }

    /// Every state an instance entered, in order, with deregistration delays and timeouts
    /// applied.
    pub fn transitions(&self) -> Vec<Transition> {
        let mut s = lock(&self.state);
        expire(&mut s, Instant::now());
        s.transitions.clone()
    }
}

/// [`AutoScalingSim::transition`] on the locked state: the instance waits in `wait_state` if a
/// hook of `transition` exists, else goes straight to `done_state`; a termination first
/// deregisters for the group's deregistration delay, in `pre_state`.
fn start_transition(
    s: &mut State,
    group: &str,
    id: &str,
    transition: &str,
    states: [&'static str; 3],
) {
    let [pre_state, wait_state, done_state] = states;
    s.next_token += 1;
    let token = format!("c0ffee00-0000-4000-8000-{:012x}", s.next_token);
    let Some(g) = s.groups.get_mut(group) else {
        return;
    };
    let hook = g
        .hooks
        .values()
        .find(|h| h.transition == transition)
        .cloned();
    let delay = if transition == TERMINATING {
        g.deregistration_delay
    } else {
        Duration::ZERO
    };
    let now = Instant::now();
    let instance = g.instances.entry(id.to_string()).or_insert(Instance {
        state: "Pending".to_string(),
        protected: false,
        action: None,
        deregistering: None,
    });
    let held = Deregistering {
        until: now + delay,
        hook,
        token,
        wait_state,
        done_state,
    };
    if delay.is_zero() {
        enter_wait(instance, held, now);
    } else {
        instance.state = pre_state.to_string();
        instance.action = None;
        instance.deregistering = Some(held);
    }
    let state = instance.state.clone();
    s.enter(id, &state, now);
}

/// The instance enters its wait state (or, without a hook, the state after it).
fn enter_wait(instance: &mut Instance, held: Deregistering, at: Instant) {
    instance.deregistering = None;
    match held.hook {
        Some(hook) => {
            instance.state = held.wait_state.to_string();
            instance.action = Some(Pending {
                hook: hook.name.clone(),
                token: held.token,
                deadline: at + hook.heartbeat_timeout,
                global_deadline: at + hook.global_timeout,
            });
        }
        None => {
            instance.state = held.done_state.to_string();
            instance.action = None;
        }
    }
}

/// Ends every deregistration whose delay is over (at the moment it ended), then applies the
/// default result to every action past its timeout.
fn expire(s: &mut State, now: Instant) {
    let mut entered = Vec::new();
    for group in s.groups.values_mut() {
        for (id, instance) in group.instances.iter_mut() {
            if let Some(held) = instance.deregistering.take_if(|d| d.until <= now) {
                let at = held.until;
                enter_wait(instance, held, at);
                entered.push((id.clone(), instance.state.clone(), at));
            }
        }
    }
    let mut ended = Vec::new();
    for group in s.groups.values_mut() {
        for (id, instance) in group.instances.iter_mut() {
            let Some(action) = &instance.action else {
                continue;
            };
            if now < action.deadline && now < action.global_deadline {
                continue;
            }
            let default = group
                .hooks
                .get(&action.hook)
                .map_or("ABANDON", |h| h.default_result);
            let at = action.deadline.min(action.global_deadline);
            ended.push(Completion {
                instance: id.clone(),
                hook: action.hook.clone(),
                result: default.to_string(),
                by_call: false,
                at: now,
            });
            let state = instance.state.clone();
            instance.state = after(&state, default);
            instance.action = None;
            entered.push((id.clone(), instance.state.clone(), at));
        }
    }
    s.completions.extend(ended);
    for (id, state, at) in entered {
        s.enter(&id, &state, at);
    }
}

/// The state after a wait state ends with `result`.
fn after(wait_state: &str, result: &str) -> String {
    match (wait_state, result) {
        ("Pending:Wait", "CONTINUE") => "InService",
        ("Pending:Wait", _) => "Terminating",
        ("Warmed:Pending:Wait", "CONTINUE") => "Warmed:Stopped",
        ("Warmed:Pending:Wait", _) => "Terminating",
        _ => "Terminating:Proceed",
    }
    .to_string()
}

type Answer = Response<Full<Bytes>>;

fn xml(status: StatusCode, body: String) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body)));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/xml"),
    );
    answer
}

fn escape(text: &str) -> String {
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
enum Reply {
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
    fn code(&self) -> Option<String> {
        match self {
            Reply::Ok { .. } => None,
            Reply::Error { code, .. } => Some(code.to_string()),
        }
    }

    fn render(self) -> Answer {
        match self {
            Reply::Ok { action, result } => xml(
                StatusCode::OK,
                format!(
                    "<{action}Response xmlns=\"{XMLNS}\"><{action}Result>{result}</{action}Result><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></{action}Response>",
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
                    "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{code}</Code><Message>{}</Message></Error><RequestId>{}</RequestId></ErrorResponse>",
                    escape(&message),
                    request_id()
                ),
            ),
        }
    }
}

fn error(status: StatusCode, kind: &'static str, code: &'static str, message: &str) -> Reply {
    Reply::Error {
        status,
        kind,
        code,
        message: message.to_string(),
    }
}

fn success(action: &str, result: &str) -> Reply {
    Reply::Ok {
        action: action.to_string(),
        result: result.to_string(),
    }
}

fn validation(message: &str) -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "Sender",
        "ValidationError",
        message,
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

/// Whether the request carries a SigV4 Authorization header for this service.
fn signed(req: &Request<Incoming>) -> bool {
    req.headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.starts_with("AWS4-HMAC-SHA256 ")
                && v.contains("Credential=")
                && v.contains("/autoscaling/aws4_request")
                && v.contains("SignedHeaders=")
                && v.contains("Signature=")
        })
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Answer {
    if req.method() != Method::POST {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Sender",
            "InvalidAction",
            "only POST is supported",
        )
        .render();
    }
    let has_signature = signed(&req);
    let caller = caller(&req);
    let body = match Limited::new(req.into_body(), 1 << 20).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Sender",
                "MalformedQueryString",
                "body too large",
            )
            .render();
        }
    };
    let params: BTreeMap<String, String> = form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let action = params.get("Action").cloned().unwrap_or_default();
    let now = Instant::now();
    let mut s = lock(state);
    expire(&mut s, now);
    let reply = answer(&mut s, &action, &params, has_signature, now);
    let error = reply.code();
    let answer = reply.render();
    s.calls.push(Call {
        action,
        params,
        status: answer.status().as_u16(),
        error,
        at: now,
        caller,
    });
    answer
}

/// The Query API's answer: authentication and injected faults first, then the action.
fn answer(
    s: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
    has_signature: bool,
    now: Instant,
) -> Reply {
    if let Some(refused) = refusal(s, action, params, has_signature, now) {
        return refused;
    }
    match action {
        "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat" => {
            lifecycle_action(s, action, params, now)
        }
        "DescribeAutoScalingInstances" => describe_instances(s, action, params),
        "DescribeAutoScalingGroups" => describe_groups(s, action, params),
        "DescribeLifecycleHooks" => describe_hooks(s, action, params),
        "SetInstanceProtection" => set_protection(s, action, params),
        "SetInstanceHealth" => set_instance_health(s, action, params),
        other => error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "InvalidAction",
            &format!("The action {other} is not valid for this web service."),
        ),
    }
}

/// A missing signature, a wrong version, or an injected fault, as AWS would answer them.
fn refusal(
    s: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
    has_signature: bool,
    now: Instant,
) -> Option<Reply> {
    if !has_signature {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Sender",
            "MissingAuthenticationToken",
            "Request is missing Authentication Token",
        ));
    }
    if params.get("Version").map(String::as_str) != Some("2011-01-01") {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "InvalidAction",
            "Version must be 2011-01-01",
        ));
    }
    if s.faults.denied.contains(action) {
        return Some(error(
            StatusCode::FORBIDDEN,
            "Sender",
            "AccessDenied",
            &format!(
                "User: arn:aws:sts::123456789012:assumed-role/agent/i-0123456789abcdef0 is not authorized to perform: autoscaling:{action} because no identity-based policy allows the autoscaling:{action} action"
            ),
        ));
    }
    if s.faults.throttled.contains(action) || s.bucket.as_mut().is_some_and(|b| !b.take(now)) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "Throttling",
            "Rate exceeded",
        ));
    }
    if s.faults.throttle > 0 {
        s.faults.throttle -= 1;
        return Some(error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "Throttling",
            "Rate exceeded",
        ));
    }
    if s.faults.server_errors > 0 {
        s.faults.server_errors -= 1;
        return Some(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Receiver",
            "InternalFailure",
            "An internal error occurred",
        ));
    }
    None
}

fn lifecycle_action(
    s: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
    now: Instant,
) -> Reply {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let complete = action == "CompleteLifecycleAction";
    let result = get("LifecycleActionResult");
    if complete && result != "CONTINUE" && result != "ABANDON" {
        return validation("LifecycleActionResult must be CONTINUE or ABANDON");
    }
    let (group_name, hook_name) = (get("AutoScalingGroupName"), get("LifecycleHookName"));
    let (instance_id, token) = (get("InstanceId"), get("LifecycleActionToken"));
    if instance_id.is_empty() && token.is_empty() {
        return validation("Either InstanceId or LifecycleActionToken must be specified");
    }
    let not_found = if instance_id.is_empty() {
        format!("No active Lifecycle Action found with token {token}")
    } else {
        format!("No active Lifecycle Action found with instance ID {instance_id}")
    };
    let Some(group) = s.groups.get_mut(group_name) else {
        return validation(&not_found);
    };
    let hook = group.hooks.get(hook_name).cloned();
    let found = group.instances.iter_mut().find(|(id, i)| {
        i.action.as_ref().is_some_and(|a| {
            a.hook == hook_name
                && (id.as_str() == instance_id || (!token.is_empty() && a.token == token))
        })
    });
    let (Some((id, instance)), Some(hook)) = (found, hook) else {
        return validation(&not_found);
    };
    let id = id.clone();
    if complete {
        let state = instance.state.clone();
        instance.state = after(&state, result);
        instance.action = None;
        let entered = instance.state.clone();
        s.enter(&id, &entered, now);
        s.completions.push(Completion {
            instance: id,
            hook: hook_name.to_string(),
            result: result.to_string(),
            by_call: true,
            at: now,
        });
    } else if let Some(a) = instance.action.as_mut() {
        // "Extends the timeout by the length of time defined using PutLifecycleHook",
        // never past the global timeout.
        a.deadline = (now + hook.heartbeat_timeout).min(a.global_deadline);
    }
    success(action, "")
}

fn describe_instances(s: &State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let wanted: BTreeSet<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("InstanceIds.member."))
        .map(|(_, v)| v.as_str())
        .collect();
    let mut members = String::new();
    for (group_name, group) in &s.groups {
        for (id, i) in &group.instances {
            if !wanted.is_empty() && !wanted.contains(id.as_str()) {
                continue;
            }
            members.push_str(&format!(
                    "<member><InstanceId>{}</InstanceId><InstanceType>m5.large</InstanceType><AutoScalingGroupName>{}</AutoScalingGroupName><AvailabilityZone>us-east-1a</AvailabilityZone><LifecycleState>{}</LifecycleState><HealthStatus>{}</HealthStatus><ProtectedFromScaleIn>{}</ProtectedFromScaleIn></member>",
                    escape(id),
                    escape(group_name),
                    escape(&i.state),
                    if s.unhealthy.contains(id) { "UNHEALTHY" } else { "HEALTHY" },
                    i.protected
                ));
        }
    }
    success(
        action,
        &format!("<AutoScalingInstances>{members}</AutoScalingInstances>"),
    )
}

/// `DescribeAutoScalingGroups`, in the shape of the API reference: the groups named (all when
/// none are), each with its instances and, when set, its instance lifecycle policy. An unknown
/// name is no error: it is just not in the list. The fake does not model capacity, so the sizes
/// follow the instances. Note the group's `HealthStatus` is `Healthy`, where
/// `DescribeAutoScalingInstances` says `HEALTHY`: AWS spells them so.
fn describe_groups(s: &State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let wanted: BTreeSet<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("AutoScalingGroupNames.member."))
        .map(|(_, v)| v.as_str())
        .collect();
    let mut members = String::new();
    for (name, group) in &s.groups {
        if !wanted.is_empty() && !wanted.contains(name.as_str()) {
            continue;
        }
        let mut instances = String::new();
        for (id, i) in &group.instances {
            instances.push_str(&format!(
                "<member><InstanceId>{}</InstanceId><InstanceType>m5.large</InstanceType><AvailabilityZone>us-east-1a</AvailabilityZone><LifecycleState>{}</LifecycleState><HealthStatus>Healthy</HealthStatus><ProtectedFromScaleIn>{}</ProtectedFromScaleIn></member>",
                escape(id),
                escape(&i.state),
                i.protected
            ));
        }
        let policy = group.terminate_hook_abandon.as_ref().map_or(String::new(), |a| {
            format!(
                "<InstanceLifecyclePolicy><RetentionTriggers><TerminateHookAbandon>{}</TerminateHookAbandon></RetentionTriggers></InstanceLifecyclePolicy>",
                escape(a)
            )
        });
        let size = group.instances.len();
        members.push_str(&format!(
            "<member><AutoScalingGroupName>{name}</AutoScalingGroupName><AutoScalingGroupARN>arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:c0ffee00-0000-4000-8000-000000000000:autoScalingGroupName/{name}</AutoScalingGroupARN><MinSize>0</MinSize><MaxSize>{max}</MaxSize><DesiredCapacity>{size}</DesiredCapacity><DefaultCooldown>300</DefaultCooldown><AvailabilityZones><member>us-east-1a</member></AvailabilityZones><LoadBalancerNames/><TargetGroupARNs/><HealthCheckType>EC2</HealthCheckType><HealthCheckGracePeriod>300</HealthCheckGracePeriod><Instances>{instances}</Instances><CreatedTime>2026-11-01T00:00:00.000Z</CreatedTime><SuspendedProcesses/><EnabledMetrics/><Tags/><NewInstancesProtectedFromScaleIn>false</NewInstancesProtectedFromScaleIn>{policy}</member>",
            name = escape(name),
            max = size.max(1),
        ));
    }
    success(
        action,
        &format!("<AutoScalingGroups>{members}</AutoScalingGroups>"),
    )
}

fn describe_hooks(s: &State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let group_name = get("AutoScalingGroupName");
    let Some(group) = s.groups.get(group_name) else {
        return validation(&format!("Group {group_name} not found"));
    };
    let wanted: BTreeSet<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("LifecycleHookNames.member."))
        .map(|(_, v)| v.as_str())
        .collect();
    let mut members = String::new();
    for hook in group.hooks.values() {
        if !wanted.is_empty() && !wanted.contains(hook.name.as_str()) {
            continue;
        }
        members.push_str(&format!(
                "<member><LifecycleHookName>{}</LifecycleHookName><AutoScalingGroupName>{}</AutoScalingGroupName><LifecycleTransition>{}</LifecycleTransition><HeartbeatTimeout>{}</HeartbeatTimeout><GlobalTimeout>{}</GlobalTimeout><DefaultResult>{}</DefaultResult></member>",
                escape(&hook.name),
                escape(group_name),
                hook.transition,
                hook.heartbeat_timeout.as_secs(),
                hook.global_timeout.as_secs(),
                hook.default_result
            ));
    }
    success(
        action,
        &format!("<LifecycleHooks>{members}</LifecycleHooks>"),
    )
}

fn set_protection(s: &mut State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let group_name = get("AutoScalingGroupName");
    let protect = match get("ProtectedFromScaleIn") {
        "true" => true,
        "false" => false,
        _ => return validation("ProtectedFromScaleIn must be true or false"),
    };
    let Some(group) = s.groups.get_mut(group_name) else {
        return validation(&format!("AutoScalingGroup name not found - {group_name}"));
    };
    let ids: Vec<String> = params
        .iter()
        .filter(|(k, _)| k.starts_with("InstanceIds.member."))
        .map(|(_, v)| v.clone())
        .collect();
    for id in &ids {
        match group.instances.get_mut(id) {
            Some(i) => i.protected = protect,
            None => {
                return validation(&format!(
                    "The instance {id} is not part of Auto Scaling group {group_name}."
                ));
            }
        }
    }
    success(action, "")
}

/// `SetInstanceHealth`. An Unhealthy instance that is InService is replaced as the group would:
/// terminated through its termination hook (`Terminating:Wait`), like a scale-in, and the
/// target lifecycle state `Terminated` goes to the listener. The groups here have no health
/// check grace period, so `ShouldRespectGracePeriod` changes nothing.
fn set_instance_health(s: &mut State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let get = |k: &str| params.get(k).map(String::as_str).unwrap_or_default();
    let (id, status) = (get("InstanceId"), get("HealthStatus"));
    for (value, member) in [(id, "instanceId"), (status, "healthStatus")] {
        if value.is_empty() {
            return validation(&format!(
                "1 validation error detected: Value null at '{member}' failed to satisfy constraint: Member must not be null"
            ));
        }
    }
    if id.len() > 19 {
        return validation(&format!(
            "1 validation error detected: Value '{id}' at 'instanceId' failed to satisfy constraint: Member must have length less than or equal to 19"
        ));
    }
    let unhealthy = match status {
        "Healthy" => false,
        "Unhealthy" => true,
        _ => return validation("Valid values for HealthStatus are Healthy or Unhealthy"),
    };
    if !matches!(
        params.get("ShouldRespectGracePeriod").map(String::as_str),
        None | Some("true" | "false")
    ) {
        return validation("ShouldRespectGracePeriod must be true or false");
    }
    let found = s
        .groups
        .iter()
        .find_map(|(name, g)| g.instances.get(id).map(|i| (name.clone(), i.state.clone())));
    let Some((group, state)) = found else {
        return validation(&format!(
            "Instance Id not found - No managed instance found for instance ID: {id}"
        ));
    };
    if !unhealthy {
        s.unhealthy.remove(id);
        s.health.insert(id.to_string(), status.to_string());
        return success(action, "");
    }
    s.unhealthy.insert(id.to_string());
    s.health.insert(id.to_string(), status.to_string());
    if state == "InService" {
        start_transition(
            s,
            &group,
            id,
            TERMINATING,
            ["Terminating", "Terminating:Wait", "Terminated"],
        );
        if let Some(listener) = &s.target_listener.0 {
            listener(id, "Terminated");
        }
    }
    success(action, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut all: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        all.insert("Version".to_string(), "2011-01-01".to_string());
        all
    }

    fn complete(sim: &AutoScalingSim, id: &str) -> Option<String> {
        let p = params(&[
            ("AutoScalingGroupName", "g"),
            ("LifecycleHookName", "h"),
            ("InstanceId", id),
            ("LifecycleActionResult", "CONTINUE"),
        ]);
        let mut s = lock(&sim.state);
        let now = Instant::now();
        expire(&mut s, now);
        answer(&mut s, "CompleteLifecycleAction", &p, true, now).code()
    }

    #[test]
    fn a_deregistration_delay_holds_the_wait_state_back() {
        let sim = AutoScalingSim::start().expect("sim");
        sim.put_hook("g", Hook::new("h", TERMINATING));
        sim.add_instance("g", "i-1", "InService");
        sim.add_instance("g", "i-2", "InService");
        sim.set_deregistration_delay("g", Duration::from_millis(300));
        sim.terminate("g", "i-1");
        assert_eq!(sim.instance_state("i-1").as_deref(), Some("Terminating"));
        assert_eq!(
            complete(&sim, "i-1").as_deref(),
            Some("ValidationError"),
            "no action while the instance deregisters"
        );
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            sim.instance_state("i-1").as_deref(),
            Some("Terminating:Wait")
        );
        assert_eq!(complete(&sim, "i-1"), None);
        assert_eq!(
            sim.instance_state("i-1").as_deref(),
            Some("Terminating:Proceed")
        );
        assert_eq!(sim.instance_state("i-2").as_deref(), Some("InService"));
        let states: Vec<(String, String)> = sim
            .transitions()
            .into_iter()
            .filter(|t| t.instance == "i-1")
            .map(|t| (t.instance, t.state))
            .collect();
        let want = [
            "InService",
            "Terminating",
            "Terminating:Wait",
            "Terminating:Proceed",
        ];
        assert_eq!(
            states.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
            want
        );
        let t = sim.transitions();
        let at = |state: &str| t.iter().find(|x| x.state == state).map(|x| x.at);
        let gap = at("Terminating:Wait").expect("wait") - at("Terminating").expect("deregistering");
        assert!(
            gap >= Duration::from_millis(300) && gap < Duration::from_millis(400),
            "the wait state began when the delay ended, not when it was observed: {gap:?}"
        );
    }

    #[test]
    fn the_token_bucket_throttles_the_whole_account() {
        let sim = AutoScalingSim::start().expect("sim");
        sim.set_rate_limit(Some(RateLimit {
            rate: 10.0,
            burst: 3.0,
        }));
        let describe = || {
            let mut s = lock(&sim.state);
            let now = Instant::now();
            answer(
                &mut s,
                "DescribeAutoScalingInstances",
                &params(&[]),
                true,
                now,
            )
            .code()
        };
        let burst: Vec<Option<String>> = (0..5).map(|_| describe()).collect();
        assert_eq!(burst[..3], [None, None, None]);
        assert_eq!(burst[3].as_deref(), Some("Throttling"));
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(describe(), None, "a token earned back at 10/s");
        sim.set_rate_limit(None);
        assert!((0..20).all(|_| describe().is_none()));
    }
}
