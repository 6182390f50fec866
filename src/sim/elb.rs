//! A fake of the Elastic Load Balancing v2 API's target calls, for tests and `agent-guard
//! drill`; loopback only. The SDK reaches it through `AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`.
//!
//! It follows the Query protocol (`Version=2015-12-01`, SigV4 for `elasticloadbalancing`) and the
//! documented target states: a registered target is `initial` (`Elb.RegistrationInProgress`)
//! for the group's registration time, then `healthy`; `DeregisterTargets` makes it `draining`
//! (`Target.DeregistrationInProgress`) for the target group's `deregistration_delay.timeout_seconds`,
//! after which it is gone: `DescribeTargetHealth` naming it answers `unused`
//! (`Target.NotRegistered`), and without a filter it is no longer listed. Deregistering a target
//! that is not registered is `InvalidTarget`; an unknown group `TargetGroupNotFound`. Actions can
//! be refused with `AccessDenied`, every call is logged, and every state a target enters is
//! logged with its time, so that a drill can show when the load balancer let go.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{Request, StatusCode};
use hyper::body::Incoming;

use super::SimServer;
use super::query::{self, Answer, Api, Call, Form, Reply, error, escape, success, validation};

const API: Api = Api {
    xmlns: "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/",
    version: "2015-12-01",
    signing_name: "elasticloadbalancing",
};

/// A target group to create: what the guard and the doctor read of one.
#[derive(Debug, Clone)]
pub struct TargetGroupSpec {
    pub name: String,
    /// `instance` or `ip`.
    pub target_type: String,
    pub port: u16,
    /// `deregistration_delay.timeout_seconds`.
    pub deregistration_delay: Duration,
    pub health_check_path: String,
    /// `traffic-port` or a port number.
    pub health_check_port: String,
    pub health_check_interval_s: u32,
    pub unhealthy_threshold: u32,
}

impl TargetGroupSpec {
    /// A target group with AWS's defaults: instance targets, a 300 s deregistration delay, a
    /// health check of `/` on the traffic port every 30 s, 5 failures to unhealthy.
    pub fn new(name: &str, port: u16) -> TargetGroupSpec {
        TargetGroupSpec {
            name: name.to_string(),
            target_type: "instance".to_string(),
            port,
            deregistration_delay: Duration::from_secs(300),
            health_check_path: "/".to_string(),
            health_check_port: "traffic-port".to_string(),
            health_check_interval_s: 30,
            unhealthy_threshold: 5,
        }
    }

    pub fn deregistration_delay(mut self, delay: Duration) -> TargetGroupSpec {
        self.deregistration_delay = delay;
        self
    }

    pub fn target_type(mut self, target_type: &str) -> TargetGroupSpec {
        self.target_type = target_type.to_string();
        self
    }

    pub fn health_check(mut self, path: &str, port: &str) -> TargetGroupSpec {
        self.health_check_path = path.to_string();
        self.health_check_port = port.to_string();
        self
    }
}

/// A target's place in its group, as `DescribeTargetHealth` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TargetState {
    Initial { until: Instant },
    Healthy,
    Draining { until: Instant },
}

#[derive(Debug)]
struct TargetGroup {
    arn: String,
    spec: TargetGroupSpec,
    /// Registered targets by (id, port).
    targets: BTreeMap<(String, u16), TargetState>,
}

/// One state a target entered, with its time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTransition {
    pub target_group: String,
    pub id: String,
    /// `initial`, `healthy`, `draining` or `unused` (gone).
    pub state: String,
    pub at: Instant,
}

#[derive(Debug, Default)]
struct State {
    groups: Vec<TargetGroup>,
    calls: Vec<Call>,
    denied: BTreeSet<String>,
    transitions: Vec<TargetTransition>,
    /// How long a registered target stays `initial`.
    registration_time: Duration,
}

impl State {
    fn group(&mut self, arn: &str) -> Option<&mut TargetGroup> {
        self.groups.iter_mut().find(|g| g.arn == arn)
    }

    /// Moves every target whose time has come on: `initial` to `healthy`, `draining` to gone.
    fn expire(&mut self, now: Instant) {
        for g in &mut self.groups {
            let mut gone = Vec::new();
            for ((id, port), state) in g.targets.iter_mut() {
                match *state {
                    TargetState::Initial { until } if until <= now => {
                        *state = TargetState::Healthy;
                        self.transitions
                            .push(transition(&g.arn, id, "healthy", until));
                    }
                    TargetState::Draining { until } if until <= now => {
                        gone.push(((id.clone(), *port), until));
                    }
                    _ => {}
                }
            }
            for (key, at) in gone {
                g.targets.remove(&key);
                self.transitions
                    .push(transition(&g.arn, &key.0, "unused", at));
            }
        }
    }
}

fn transition(arn: &str, id: &str, state: &str, at: Instant) -> TargetTransition {
    TargetTransition {
        target_group: arn.to_string(),
        id: id.to_string(),
        state: state.to_string(),
        at,
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running fake Elastic Load Balancing v2 API. Dropping it stops the server.
pub struct ElbSim {
    server: SimServer,
    state: Arc<Mutex<State>>,
}

impl ElbSim {
    /// Starts a fake on an ephemeral loopback port.
    pub fn start() -> io::Result<ElbSim> {
        let state = Arc::new(Mutex::new(State::default()));
        let addr = SocketAddr::from(([127, 0, 0, 1], 0));
        let server = query::serve(addr, "elb", state.clone(), |state, req| async move {
            handle(&state, req).await
        })?;
        Ok(ElbSim { server, state })
    }

    /// The URL to give `AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Creates a target group and returns its ARN.
    pub fn add_target_group(&self, spec: TargetGroupSpec) -> String {
        let mut s = lock(&self.state);
        let arn = format!(
            "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{}/{:016x}",
            spec.name,
            s.groups.len() + 1
        );
        s.groups.push(TargetGroup {
            arn: arn.clone(),
            spec,
            targets: BTreeMap::new(),
        });
        arn
    }

    /// Registers a target that is already `healthy`, as one registered long ago is.
    pub fn add_healthy_target(&self, arn: &str, id: &str, port: u16) {
        let mut s = lock(&self.state);
        let now = Instant::now();
        if let Some(g) = s.group(arn) {
            g.targets
                .insert((id.to_string(), port), TargetState::Healthy);
            s.transitions.push(transition(arn, id, "healthy", now));
        }
    }

    /// How long a target registered with `RegisterTargets` stays `initial`.
    pub fn set_registration_time(&self, time: Duration) {
        lock(&self.state).registration_time = time;
    }

    /// Refuses `action` with `AccessDenied`, as without the IAM permission.
    pub fn deny(&self, action: &str) {
        lock(&self.state).denied.insert(action.to_string());
    }

    /// The target's state in the group now: `initial`, `healthy`, `draining`, or `None` once
    /// it is gone (or was never registered).
    pub fn target_state(&self, arn: &str, id: &str) -> Option<&'static str> {
        let mut s = lock(&self.state);
        s.expire(Instant::now());
        let g = s.group(arn)?;
        g.targets
            .iter()
            .find(|((tid, _), _)| tid == id)
            .map(|(_, state)| state_name(*state).0)
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.state).calls.clone()
    }

    /// Every state a target entered, in order, with delays applied.
    pub fn transitions(&self) -> Vec<TargetTransition> {
        let mut s = lock(&self.state);
        s.expire(Instant::now());
        s.transitions.clone()
    }
}

async fn handle(state: &Mutex<State>, req: Request<Incoming>) -> Answer {
    let form = match query::read(API, req).await {
        Ok(form) => form,
        Err(refused) => return refused.render(API),
    };
    let now = Instant::now();
    let mut s = lock(state);
    s.expire(now);
    let reply = answer(&mut s, &form, now);
    let error = reply.code();
    let answer = reply.render(API);
    s.calls.push(Call {
        action: form.action,
        params: form.params,
        status: answer.status().as_u16(),
        error,
        at: now,
        caller: form.caller,
    });
    answer
}

fn answer(s: &mut State, form: &Form, now: Instant) -> Reply {
    if let Some(refused) = query::unauthenticated(API, form) {
        return refused;
    }
    let action = form.action.as_str();
    if s.denied.contains(action) {
        return query::denied("elasticloadbalancing", action);
    }
    let params = &form.params;
    match action {
        "DescribeTargetGroups" => describe_groups(s, action, params),
        "DescribeTargetGroupAttributes" => describe_attributes(s, action, params),
        "DescribeTargetHealth" => describe_health(s, action, params),
        "DeregisterTargets" => deregister(s, action, params, now),
        "RegisterTargets" => register(s, action, params, now),
        other => error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "InvalidAction",
            &format!("The action {other} is not valid for this web service."),
        ),
    }
}

fn not_found() -> Reply {
    error(
        StatusCode::BAD_REQUEST,
        "Sender",
        "TargetGroupNotFound",
        "One or more target groups not found",
    )
}

/// The `Targets.member.N.Id` / `.Port` list of a request, ports defaulting to the group's.
fn targets(params: &BTreeMap<String, String>, default_port: u16) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    for n in 1.. {
        let Some(id) = params.get(&format!("Targets.member.{n}.Id")) else {
            break;
        };
        let port = params
            .get(&format!("Targets.member.{n}.Port"))
            .and_then(|p| p.parse().ok())
            .unwrap_or(default_port);
        out.push((id.clone(), port));
    }
    out
}

fn describe_groups(s: &mut State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let wanted: BTreeSet<&str> = params
        .iter()
        .filter(|(k, _)| k.starts_with("TargetGroupArns.member."))
        .map(|(_, v)| v.as_str())
        .collect();
    if wanted
        .iter()
        .any(|arn| s.groups.iter().all(|g| g.arn != *arn))
    {
        return not_found();
    }
    let mut members = String::new();
    for g in s
        .groups
        .iter()
        .filter(|g| wanted.is_empty() || wanted.contains(g.arn.as_str()))
    {
        let t = &g.spec;
        members.push_str(&format!(
            "<member><TargetGroupArn>{arn}</TargetGroupArn><TargetGroupName>{name}</TargetGroupName><Protocol>HTTP</Protocol><Port>{port}</Port><VpcId>vpc-0123456789abcdef0</VpcId><HealthCheckProtocol>HTTP</HealthCheckProtocol><HealthCheckPort>{hc_port}</HealthCheckPort><HealthCheckEnabled>true</HealthCheckEnabled><HealthCheckIntervalSeconds>{interval}</HealthCheckIntervalSeconds><HealthCheckTimeoutSeconds>5</HealthCheckTimeoutSeconds><HealthyThresholdCount>5</HealthyThresholdCount><UnhealthyThresholdCount>{unhealthy}</UnhealthyThresholdCount><HealthCheckPath>{path}</HealthCheckPath><Matcher><HttpCode>200</HttpCode></Matcher><LoadBalancerArns><member>arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/50dc6c495c0c9188</member></LoadBalancerArns><TargetType>{kind}</TargetType><IpAddressType>ipv4</IpAddressType></member>",
            arn = escape(&g.arn),
            name = escape(&t.name),
            port = t.port,
            hc_port = escape(&t.health_check_port),
            interval = t.health_check_interval_s,
            unhealthy = t.unhealthy_threshold,
            path = escape(&t.health_check_path),
            kind = escape(&t.target_type),
        ));
    }
    success(action, &format!("<TargetGroups>{members}</TargetGroups>"))
}

fn describe_attributes(s: &mut State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let Some(arn) = params.get("TargetGroupArn") else {
        return validation("TargetGroupArn is required");
    };
    let Some(g) = s.group(arn) else {
        return not_found();
    };
    let attributes = [
        (
            "deregistration_delay.timeout_seconds",
            g.spec.deregistration_delay.as_secs().to_string(),
        ),
        ("stickiness.enabled", "false".to_string()),
        ("load_balancing.algorithm.type", "round_robin".to_string()),
    ];
    let members: String = attributes
        .iter()
        .map(|(k, v)| format!("<member><Key>{k}</Key><Value>{v}</Value></member>"))
        .collect();
    success(action, &format!("<Attributes>{members}</Attributes>"))
}

/// A state's name, reason and description as `DescribeTargetHealth` gives them.
fn state_name(state: TargetState) -> (&'static str, Option<&'static str>, Option<&'static str>) {
    match state {
        TargetState::Initial { .. } => (
            "initial",
            Some("Elb.RegistrationInProgress"),
            Some("Target registration is in progress"),
        ),
        TargetState::Healthy => ("healthy", None, None),
        TargetState::Draining { .. } => (
            "draining",
            Some("Target.DeregistrationInProgress"),
            Some("Target deregistration is in progress"),
        ),
    }
}

fn health_member(id: &str, port: u16, state: Option<TargetState>) -> String {
    let (name, reason, description) = match state {
        Some(state) => state_name(state),
        None => (
            "unused",
            Some("Target.NotRegistered"),
            Some("Target is not registered to the target group"),
        ),
    };
    let reason = reason.map_or(String::new(), |r| format!("<Reason>{r}</Reason>"));
    let description =
        description.map_or(String::new(), |d| format!("<Description>{d}</Description>"));
    format!(
        "<member><Target><Id>{}</Id><Port>{port}</Port></Target><HealthCheckPort>{port}</HealthCheckPort><TargetHealth><State>{name}</State>{reason}{description}</TargetHealth></member>",
        escape(id)
    )
}

fn describe_health(s: &mut State, action: &str, params: &BTreeMap<String, String>) -> Reply {
    let Some(arn) = params.get("TargetGroupArn") else {
        return validation("TargetGroupArn is required");
    };
    let Some(g) = s.group(arn) else {
        return not_found();
    };
    let asked = targets(params, g.spec.port);
    let members: String = if asked.is_empty() {
        g.targets
            .iter()
            .map(|((id, port), state)| health_member(id, *port, Some(*state)))
            .collect()
    } else {
        asked
            .iter()
            .map(|(id, port)| {
                let state = g.targets.get(&(id.clone(), *port)).copied();
                health_member(id, *port, state)
            })
            .collect()
    };
    success(
        action,
        &format!("<TargetHealthDescriptions>{members}</TargetHealthDescriptions>"),
    )
}

fn deregister(
    s: &mut State,
    action: &str,
    params: &BTreeMap<String, String>,
    now: Instant,
) -> Reply {
    let Some(arn) = params.get("TargetGroupArn").cloned() else {
        return validation("TargetGroupArn is required");
    };
    let Some(g) = s.group(&arn) else {
        return not_found();
    };
    let asked = targets(params, g.spec.port);
    if asked.is_empty() {
        return validation("Targets is required");
    }
    if let Some((id, _)) = asked.iter().find(|t| !g.targets.contains_key(*t)) {
        return error(
            StatusCode::BAD_REQUEST,
            "Sender",
            "InvalidTarget",
            &format!("The following targets are not registered with target group: '{id}'"),
        );
    }
    let until = now + g.spec.deregistration_delay;
    let mut entered = Vec::new();
    for key in asked {
        if let Some(state) = g.targets.get_mut(&key)
            && !matches!(state, TargetState::Draining { .. })
        {
            *state = TargetState::Draining { until };
            entered.push(key.0);
        }
    }
    for id in entered {
        s.transitions.push(transition(&arn, &id, "draining", now));
    }
    s.expire(now);
    success(action, "")
}

fn register(s: &mut State, action: &str, params: &BTreeMap<String, String>, now: Instant) -> Reply {
    let Some(arn) = params.get("TargetGroupArn").cloned() else {
        return validation("TargetGroupArn is required");
    };
    let until = now + s.registration_time;
    let Some(g) = s.group(&arn) else {
        return not_found();
    };
    let asked = targets(params, g.spec.port);
    if asked.is_empty() {
        return validation("Targets is required");
    }
    let mut entered = Vec::new();
    for key in asked {
        // Registering a registered target changes nothing; a new one, or one still draining,
        // starts its registration again.
        if !matches!(
            g.targets.get(&key),
            Some(TargetState::Healthy | TargetState::Initial { .. })
        ) {
            g.targets
                .insert(key.clone(), TargetState::Initial { until });
            entered.push(key.0);
        }
    }
    for id in entered {
        s.transitions.push(transition(&arn, &id, "initial", now));
    }
    s.expire(now);
    success(action, "")
}
