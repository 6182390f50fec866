//! Target deregistration before the agent hears of a drain, against the simulated IMDS, Auto
//! Scaling and Elastic Load Balancing v2 APIs with the real SDK: a spot interruption deregisters
//! the instance, waits for the target to leave `draining`, then tells the agent; a wait longer
//! than the notice allows is cut so that the agent keeps its whole drain and stop budget.

use std::path::Path;
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{Hook, TERMINATING};
use agent_guard::sim::elb::TargetGroupSpec;
use agent_guard::sim::imds::ImdsSim;

use crate::support::{
    Guard, LbWorld, SOON, aws_command, first_time, fixture, http, json_lines, scratch, wait_until,
};

const GROUP: &str = "web";
const INSTANCE: &str = "i-0123456789abcdef0";

/// CLOCK_MONOTONIC in seconds, the clock the fixture agents log with.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// An `Instant` (the simulator's times) as CLOCK_MONOTONIC seconds: both are that clock.
fn mono(at: Instant) -> f64 {
    let (now, mono_now) = (Instant::now(), monotonic());
    mono_now - now.saturating_duration_since(at).as_secs_f64()
}

type World = LbWorld;

/// A group whose instance is a healthy target of one target group with `delay`.
fn world(delay: Duration) -> World {
    let hook = Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(30));
    LbWorld::start((GROUP, INSTANCE), hook, delay, true)
}

/// A guard of the termination hook around the socket agent (drained 0.2 s after it is told),
/// returned once the target groups are read and the agent is subscribed.
fn guard(dir: &Path, w: &World, log: &Path, options: &[&str]) -> Guard {
    guard_drained_after(dir, w, log, options, "0.2")
}

/// As [`guard`], the agent drained `drained_after` seconds after it is told.
fn guard_drained_after(
    dir: &Path,
    w: &World,
    log: &Path,
    options: &[&str],
    drained_after: &str,
) -> Guard {
    let mut cmd = aws_command(&w.imds, &w.asg);
    cmd.env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", w.elb.url())
        .args(["--terminate-hook", "drain-hook", "--asg-name", GROUP])
        .args(options)
        .arg("--")
        .args([
            fixture("socket_agent.py").to_str().expect("utf-8"),
            log.to_str().expect("utf-8"),
            "--drained-after",
            drained_after,
        ]);
    let guard = Guard::spawn(dir, cmd);
    wait_until("the target groups read", SOON, || {
        guard.log().contains("a drain deregisters this instance")
    });
    wait_until("subscribed", SOON, || guard.status()["subscribers"] == 1);
    guard
}

fn spot_notice_in(d: Duration) -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now() + d).to_string()
}

fn drain_event(e: &serde_json::Value) -> bool {
    e["heard"]["event"] == "drain"
}

#[test]
fn a_spot_drain_tells_the_agent_once_the_target_left_draining() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let w = world(Duration::from_secs(5));
    let mut guard = guard(
        dir.path(),
        &w,
        &log,
        &["--drain-timeout", "20s", "--stop-timeout", "5s"],
    );
    let deregister_calls = |w: &World| {
        w.elb
            .calls()
            .into_iter()
            .filter(|c| c.action == "DeregisterTargets")
            .count()
    };
    assert_eq!(
        deregister_calls(&w),
        0,
        "nothing deregisters before a drain"
    );
    // Capacity rebalancing put the instance in Terminating:Wait, as it does with a spot notice.
    w.asg.terminate(GROUP, INSTANCE);
    w.imds
        .post_spot_interruption("terminate", &spot_notice_in(Duration::from_secs(120)));
    wait_until("the agent is told", Duration::from_secs(60), || {
        first_time(&json_lines(&log), drain_event).is_some()
    });
    assert_eq!(guard.code(), 0);
    let told = first_time(&json_lines(&log), drain_event).expect("told");
    let transitions = w.elb.transitions();
    let at = |state: &str| {
        transitions
            .iter()
            .find(|t| t.target_group == w.arn && t.id == INSTANCE && t.state == state)
            .map(|t| mono(t.at))
            .unwrap_or_else(|| panic!("no {state} transition: {transitions:?}"))
    };
    let (draining, gone) = (at("draining"), at("unused"));
    assert!(
        gone - draining >= 4.5,
        "the load balancer drained for its delay"
    );
    assert!(
        told >= gone,
        "the agent was told {:.3}s before the target left draining",
        gone - told
    );
    assert!(
        told - gone <= 1.0,
        "the agent was told {:.3}s after the target left draining",
        told - gone
    );
    assert_eq!(deregister_calls(&w), 1);
    let text = guard.log();
    assert!(text.contains("load balancer done"), "{text}");
}

#[test]
fn a_wait_longer_than_the_notice_allows_is_cut_to_keep_the_agents_budget() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let w = world(Duration::from_secs(300));
    // 120 s notice − 10 s margin − 15 s stop − 90 s drain: 5 s are left for the load balancer.
    let mut guard = guard(
        dir.path(),
        &w,
        &log,
        &["--drain-timeout", "90s", "--stop-timeout", "15s"],
    );
    let posted = monotonic();
    // Capacity rebalancing put the instance in Terminating:Wait, as it does with a spot notice.
    w.asg.terminate(GROUP, INSTANCE);
    w.imds
        .post_spot_interruption("terminate", &spot_notice_in(Duration::from_secs(120)));
    wait_until("the agent is told", Duration::from_secs(60), || {
        first_time(&json_lines(&log), drain_event).is_some()
    });
    let entries = json_lines(&log);
    let told = first_time(&entries, drain_event).expect("told");
    let event = entries
        .iter()
        .find(|e| drain_event(e))
        .map(|e| e["heard"].clone())
        .expect("drain event");
    assert_eq!(guard.code(), 0);
    assert!(
        told - posted >= 3.0,
        "the guard waited for the load balancer first"
    );
    let budget_ms = event["deadline_in_ms"].as_u64().expect("deadline_in_ms");
    assert!(
        budget_ms >= 88_000,
        "the agent's drain budget was cut: {event}"
    );
    assert_eq!(
        w.elb.target_state(&w.arn, INSTANCE),
        Some("draining"),
        "the target still drains: the wait was cut"
    );
    let text = guard.log();
    assert!(text.contains("the wait is cut"), "{text}");
    assert!(
        text.contains("still draining at the end of the wait"),
        "{text}"
    );
}

/// The `/metrics` line that starts with `prefix`, if any.
fn metric(addr: &str, prefix: &str) -> Option<String> {
    let (_, _, body) = http(addr, "GET", "/metrics");
    body.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

#[test]
fn status_and_metrics_show_the_target_group_and_the_deregistration() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let w = world(Duration::from_secs(3));
    // Drained 5 s after it is told: time to read the end of the deregistration while it runs.
    let mut guard = guard_drained_after(
        dir.path(),
        &w,
        &log,
        &[
            "--drain-timeout",
            "30s",
            "--stop-timeout",
            "5s",
            "--health-listen",
            "127.0.0.1:0",
        ],
        "5",
    );
    let addr = guard.health_addr();
    let lb = |g: &Guard| g.status()["load_balancer"].clone();
    let before = lb(&guard);
    assert_eq!(
        before["target_groups"][0]["arn"],
        w.arn.as_str(),
        "{before}"
    );
    assert_eq!(before["target_groups"][0]["state"], "healthy", "{before}");
    assert_eq!(before["target_groups"][0]["deregistration_delay_s"], 3);
    assert!(before["deregistration"].is_null(), "{before}");
    let healthy = format!(
        "agent_guard_target_group_state{{target_group=\"{}\",state=\"healthy\"}} 1",
        w.arn
    );
    let (_, _, body) = http(&addr, "GET", "/metrics");
    assert!(body.lines().any(|l| l == healthy), "{body}");
    assert!(!body.contains("agent_guard_deregistration_start_time_seconds"));

    w.asg.terminate(GROUP, INSTANCE);
    w.imds
        .post_spot_interruption("terminate", &spot_notice_in(Duration::from_secs(120)));
    wait_until("the deregistration begins", Duration::from_secs(60), || {
        lb(&guard)["target_groups"][0]["state"] == "draining"
    });
    let during = lb(&guard);
    assert_eq!(during["deregistration"]["reason"], "spot-interruption");
    assert!(during["deregistration"]["started"].is_string(), "{during}");
    assert!(during["deregistration"]["ended"].is_null(), "{during}");
    assert!(metric(&addr, "agent_guard_deregistration_start_time_seconds ").is_some());
    assert!(metric(&addr, "agent_guard_deregistration_end_time_seconds ").is_none());

    wait_until("the deregistration ends", Duration::from_secs(60), || {
        lb(&guard)["deregistration"]["outcome"] == "done"
    });
    let after = lb(&guard);
    assert_eq!(after["target_groups"][0]["state"], "unused", "{after}");
    let took = after["deregistration"]["took_ms"]
        .as_u64()
        .expect("took_ms");
    assert!(
        took >= 2_500,
        "the load balancer drained for its delay: {after}"
    );
    assert!(after["deregistration"]["ended"].is_string(), "{after}");
    let unused = format!(
        "agent_guard_target_group_state{{target_group=\"{}\",state=\"unused\"}} 1",
        w.arn
    );
    let (_, _, body) = http(&addr, "GET", "/metrics");
    assert!(body.lines().any(|l| l == unused), "{body}");
    assert!(
        body.contains("agent_guard_deregistration_end_time_seconds "),
        "{body}"
    );
    assert!(
        body.contains("agent_guard_deregistration_duration_seconds{outcome=\"done\"} "),
        "{body}"
    );
    assert_eq!(guard.code(), 0);
    let text = guard.log();
    assert!(
        text.contains("load balancer done") && text.contains("took"),
        "the log says how long the load balancer took: {text}"
    );
}

/// `agent-guard drill ARGS --json` with a clean environment: (status, the JSON report).
fn drill(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut cmd = std::process::Command::new(crate::support::bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AGENT_GUARD_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    // `--json` before the `--` that starts the agent's command.
    let out = cmd
        .arg("drill")
        .args(&args[..1])
        .arg("--json")
        .args(&args[1..])
        .output()
        .expect("drill runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "one JSON document ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// The offset of the timeline's first `what` entry.
fn offset(doc: &serde_json::Value, what: &str) -> i64 {
    doc["timeline"]
        .as_array()
        .and_then(|t| t.iter().find(|e| e["what"] == what))
        .and_then(|e| e["offset_ms"].as_i64())
        .unwrap_or_else(|| panic!("no {what} in {doc:#}"))
}

#[test]
fn drill_spot_and_maintenance_show_the_load_balancer_letting_go_before_the_agent_is_told() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let agent = fixture("socket_agent.py");
    let agent = [
        agent.to_str().expect("utf-8"),
        log.to_str().expect("utf-8"),
        "--drained-after",
        "0.3",
    ];
    let spot = [
        &["spot", "--deregistration-delay", "2s", "--"][..],
        &agent[..],
    ]
    .concat();
    let maintenance = [
        &[
            "maintenance",
            "--on-maintenance",
            "drain",
            "--maintenance-margin",
            "30s",
            "--deregistration-delay",
            "2s",
            "--",
        ][..],
        &agent[..],
    ]
    .concat();
    for args in [spot, maintenance] {
        let (code, doc) = drill(&args);
        assert_eq!(code, Some(0), "{doc:#}");
        assert_eq!(doc["verdict"], "PASS", "{doc:#}");
        let deregistered = offset(&doc, "deregistered");
        let done = offset(&doc, "load balancer done");
        let told = offset(&doc, "agent told to drain");
        assert!(
            (1900..3000).contains(&(done - deregistered)),
            "the 2 s delay: {doc:#}"
        );
        assert!(done <= told, "told after the load balancer let go: {doc:#}");
        assert_eq!(doc["notes"], serde_json::json!([]), "{doc:#}");
    }
}

#[test]
fn drill_spot_notes_a_wait_the_deadline_cut() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let agent = fixture("socket_agent.py");
    // 20 s notice − 2 s margin − 3 s stop − 10 s drain: 5 s for a 12 s deregistration delay.
    let (code, doc) = drill(&[
        "spot",
        "--deadline",
        "20s",
        "--spot-margin",
        "2s",
        "--stop-timeout",
        "3s",
        "--drain-timeout",
        "10s",
        "--deregistration-delay",
        "12s",
        "--",
        agent.to_str().expect("utf-8"),
        log.to_str().expect("utf-8"),
        "--drained-after",
        "0.3",
    ]);
    assert_eq!(code, Some(0), "{doc:#}");
    let notes = doc["notes"].to_string();
    assert!(
        notes.contains("before the load balancer") && notes.contains("spot deadline"),
        "{doc:#}"
    );
    offset(&doc, "deregistered");
    offset(&doc, "agent told to drain");
}

/// Runs a boto3 script against moto; its stdout, trimmed.
fn boto3(script: &str) -> String {
    let python = std::env::var("AGENT_GUARD_TEST_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/bin/python").to_string());
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// moto, a server we did not write, checks the Elastic Load Balancing v2 wiring: a spot notice
/// deregisters the instance from the target group given with `--target-groups`.
#[test]
fn a_spot_drain_deregisters_the_instance_from_a_real_moto_target_group() {
    let Some(moto) = crate::support::moto_url() else {
        crate::support::require(false, "no moto server (.ci/run starts one)");
        return;
    };
    let clients = format!(
        r#"
import boto3
kw = dict(endpoint_url="{moto}", region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
ec2 = boto3.client("ec2", **kw)
elb = boto3.client("elbv2", **kw)
"#
    );
    // A VPC, a target group with a 2 s delay, and an instance registered in it on port 8080.
    let name = format!("moto-tg-{}", std::process::id());
    let made = boto3(&format!(
        r#"{clients}
vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
tg = elb.create_target_group(Name="{name}", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{{"Key": "deregistration_delay.timeout_seconds", "Value": "2"}}])
i = ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t2.micro")["Instances"][0]["InstanceId"]
elb.register_targets(TargetGroupArn=tg, Targets=[{{"Id": i, "Port": 8080}}])
print(tg, i)
"#
    ));
    let (arn, instance) = made.split_once(' ').expect("ARN and instance id");
    let targets = || {
        boto3(&format!(
            r#"{clients}
print(",".join(d["Target"]["Id"] + "=" + d["TargetHealth"]["State"] for d in elb.describe_target_health(TargetGroupArn="{arn}")["TargetHealthDescriptions"]))
"#
        ))
    };
    assert_eq!(targets(), format!("{instance}=healthy"));
    let imds = ImdsSim::start().expect("imds sim");
    imds.set_identity(instance, "us-east-1");
    let dir = scratch();
    let mut cmd = crate::support::command();
    cmd.env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", &moto)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .args(["--imds", "on", "--imds-endpoint", &imds.url()])
        .args(["--imds-poll", "200ms", "--asg-name", "moto-group"])
        .args(["--target-groups", arn, "--stop-timeout", "5s"])
        .args(["--", "sleep", "600"]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_until("the target group read", SOON, || {
        guard.log().contains("a drain deregisters this instance")
    });
    let status = guard.status();
    let group = &status["load_balancer"]["target_groups"][0];
    assert_eq!(group["arn"], arn, "{status}");
    assert_eq!(group["state"], "healthy", "{status}");
    assert_eq!(group["deregistration_delay_s"], 2, "{status}");
    imds.post_spot_interruption("terminate", &spot_notice_in(Duration::from_secs(120)));
    // The agent does not subscribe: it hears of the drain by its stop signal.
    assert_eq!(guard.code(), 143);
    assert_eq!(targets(), "", "moto no longer lists the instance");
    let text = guard.log();
    assert!(text.contains("load balancer done"), "{text}");
}

/// The actions of `calls`, sorted, for comparing what was called.
fn actions(calls: Vec<agent_guard::sim::autoscaling::Call>) -> Vec<String> {
    let mut out: Vec<String> = calls.into_iter().map(|c| c.action).collect();
    out.sort();
    out
}

#[test]
fn an_idle_guard_makes_no_load_balancer_call_after_its_set_up() {
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let w = world(Duration::from_secs(5));
    // `--target-groups auto` (the default): the group's target groups are read at set-up.
    let mut guard = guard(dir.path(), &w, &log, &["--drain-timeout", "20s"]);
    wait_until("the hook's set-up", SOON, || {
        guard.log().contains("read the hook's heartbeat timeout")
    });
    let (elb, asg) = (actions(w.elb.calls()), actions(w.asg.calls()));
    assert_eq!(
        elb,
        ["DescribeTargetGroupAttributes", "DescribeTargetHealth"],
        "the set-up reads the targets and the delay once"
    );
    assert_eq!(
        asg.iter()
            .filter(|a| *a == "DescribeAutoScalingGroups")
            .count(),
        1,
        "the target groups are read once: {asg:?}"
    );
    crate::support::let_time_pass("an idle period", Duration::from_secs(5));
    assert_eq!(
        actions(w.elb.calls()),
        elb,
        "no load balancer call while idle"
    );
    assert_eq!(
        actions(w.asg.calls()),
        asg,
        "no Auto Scaling call while idle"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

/// `agent-guard doctor --json` against the world: (exit status, the document).
fn doctor(w: &World, options: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut cmd = crate::support::command();
    cmd.env_remove("INVOCATION_ID")
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", w.asg.url())
        .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", w.elb.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
        .env("AWS_SECRET_ACCESS_KEY", "test-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args([
            "doctor",
            "--json",
            "--imds",
            "on",
            "--imds-endpoint",
            &w.imds.url(),
        ])
        .args(["--asg-name", GROUP, "--terminate-hook", "drain-hook"])
        .args(options)
        .args(["--", "/bin/true"]);
    let out = cmd.output().expect("doctor runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let doc = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {text}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), doc)
}

/// The doctor's check `name`: (status, detail).
fn doctor_check(doc: &serde_json::Value, name: &str) -> (String, String) {
    let c = doc["checks"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {doc:#}"));
    (
        c["status"].as_str().unwrap_or_default().to_string(),
        c["detail"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn doctor_reports_the_target_groups_their_health_checks_and_the_permissions() {
    let w = world(Duration::from_secs(5));
    // The world's target group checks / on the traffic port every 30 s, 5 times: AWS's defaults.
    let (code, doc) = doctor(&w, &["--health-listen", "127.0.0.1:0"]);
    let (status, detail) = doctor_check(&doc, "target-groups");
    assert_eq!(status, "ok", "{doc:#}");
    assert!(detail.contains(&w.arn), "{detail}");
    let (status, detail) = doctor_check(&doc, "target-group-health-check");
    assert_eq!(status, "warn", "{doc:#}");
    assert!(detail.contains("checks / on port 8080"), "{detail}");
    let (status, detail) = doctor_check(&doc, "target-group-spot-budget");
    assert_eq!(status, "warn", "{doc:#}");
    assert!(
        detail.contains("for up to 30s × 5 unhealthy checks = 2m 30s"),
        "{detail}"
    );
    for action in [
        "DeregisterTargets",
        "DescribeTargetHealth",
        "DescribeTargetGroupAttributes",
    ] {
        let (status, detail) = doctor_check(&doc, &format!("elasticloadbalancing:{action}"));
        assert_eq!(status, "ok", "{action}: {doc:#}");
        assert!(detail.contains("allowed"), "{action}: {detail}");
    }
    let (status, detail) = doctor_check(&doc, "elasticloadbalancing:RegisterTargets");
    assert_eq!(
        (status.as_str(), detail.contains("not probed")),
        ("ok", true)
    );
    assert_eq!(code, Some(0), "warnings only: {doc:#}");
    assert_eq!(
        w.elb.target_state(&w.arn, INSTANCE),
        Some("healthy"),
        "the doctor changed nothing"
    );
    assert!(
        w.elb.calls().iter().all(|c| c.action != "RegisterTargets"),
        "never registers"
    );

    // A health check of /readyz on the guard's port, checked often enough; and a refused
    // DeregisterTargets fails, naming the action.
    let w = World {
        arn: String::new(),
        ..world(Duration::from_secs(5))
    };
    let spec = TargetGroupSpec::new("ready", 8080)
        .health_check("/readyz", "8099")
        .deregistration_delay(Duration::from_secs(5));
    let spec = TargetGroupSpec {
        health_check_interval_s: 10,
        unhealthy_threshold: 3,
        ..spec
    };
    let arn = w.elb.add_target_group(spec);
    w.elb.add_healthy_target(&arn, INSTANCE, 8080);
    w.elb.deny("DeregisterTargets");
    let (code, doc) = doctor(
        &w,
        &["--health-listen", "127.0.0.1:8099", "--target-groups", &arn],
    );
    assert_eq!(
        doctor_check(&doc, "target-group-health-check").0,
        "ok",
        "{doc:#}"
    );
    assert_eq!(
        doctor_check(&doc, "target-group-spot-budget").0,
        "ok",
        "{doc:#}"
    );
    let (status, detail) = doctor_check(&doc, "elasticloadbalancing:DeregisterTargets");
    assert_eq!(status, "fail", "{doc:#}");
    assert!(detail.contains("cannot deregister"), "{detail}");
    assert_eq!(code, Some(1));
}

#[test]
fn a_maintenance_drain_called_off_while_the_load_balancer_drains_registers_the_instance_again() {
    use agent_guard::sim::imds::ScheduledEvent;
    let dir = scratch();
    let log = dir.path().join("agent.log");
    let w = world(Duration::from_secs(30));
    let mut guard = guard(
        dir.path(),
        &w,
        &log,
        &["--on-maintenance", "drain", "--maintenance-margin", "30s"],
    );
    let registers = |w: &World| {
        w.elb
            .calls()
            .iter()
            .filter(|c| c.action == "RegisterTargets")
            .count()
    };
    // Due now: NotBefore is the margin ahead, in whole seconds as EC2 writes it.
    let not_before = std::time::SystemTime::now() + Duration::from_secs(31);
    let event = ScheduledEvent::active("system-reboot", "instance-event-7", not_before);
    w.imds.set_scheduled_events(std::slice::from_ref(&event));
    wait_until("the load balancer drains", Duration::from_secs(60), || {
        w.elb.target_state(&w.arn, INSTANCE) == Some("draining")
    });
    assert_eq!(registers(&w), 0, "nothing registers before the call-off");
    w.imds
        .set_scheduled_events(&[event.clone().with_state("canceled")]);
    wait_until("registered again", Duration::from_secs(60), || {
        w.elb.target_state(&w.arn, INSTANCE) == Some("healthy")
    });
    assert_eq!(registers(&w), 1);
    wait_until("ready again", SOON, || guard.status()["phase"] == "ready");
    let status = guard.status();
    let lb = &status["load_balancer"];
    assert!(
        lb["deregistration"]["registered_again"].is_string(),
        "{status}"
    );
    assert_eq!(lb["target_groups"][0]["state"], "healthy", "{status}");
    assert!(
        first_time(&json_lines(&log), drain_event).is_none(),
        "the agent never heard of the drain"
    );
    // Nothing else registers: a stop drains as usual, without RegisterTargets.
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
    assert_eq!(registers(&w), 1);
}
