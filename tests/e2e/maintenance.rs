//! EC2 scheduled events under each `--on-maintenance`: `replace` marks the instance Unhealthy
//! once per event and the scale-in that follows drains and completes the hook; a refused or
//! impossible replacement falls back to a drain; `drain` starts at NotBefore minus the margin and
//! not before, and a canceled or vanished event calls it off (a 404 for the list too), and an
//! event active again after that is planned again; events already over, and garbage, do
//! nothing; `report` only reports; the instance is marked Unhealthy once, however many events.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::autoscaling::{AutoScalingSim, Call, Faults, Hook, TERMINATING};
use agent_guard::sim::imds::{ImdsSim, ScheduledEvent};
use serde_json::Value;

use crate::support::{
    Guard, SOON, aws_command, command, fixture, http, recorded, scratch, wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";
const HOOK: &str = "drain-hook";

/// A time `ahead` from now, in whole seconds as EC2 writes it.
fn whole_seconds(ahead: Duration) -> SystemTime {
    let t = SystemTime::now() + ahead;
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// The recorder agent under `cmd`, once its handlers are in place.
fn start_recorder(dir: &Path, mut cmd: Command, options: &[&str]) -> Guard {
    let log = dir.join("signals.log");
    cmd.args(["--log-format", "json"])
        .args(options)
        .arg("--")
        .arg(fixture("recorder.py"))
        .arg(&log);
    let guard = Guard::spawn(dir, cmd);
    wait_until("the agent is up", SOON, || {
        dir.join("signals.log.ready").exists()
    });
    guard
}

/// A guard around the recorder, reading `imds` only.
fn imds_only(dir: &Path, imds: &ImdsSim, options: &[&str]) -> Guard {
    let mut cmd = command();
    cmd.args([
        "--imds",
        "on",
        "--imds-endpoint",
        &imds.url(),
        "--imds-poll",
        "200ms",
    ]);
    start_recorder(dir, cmd, options)
}

/// The journal records on the guard's JSON log lines, with their times.
fn records(log: &str) -> Vec<(SystemTime, Value)> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|line| {
            let time = humantime::parse_rfc3339_weak(line["time"].as_str()?).ok()?;
            Some((time, line.get("event")?.clone()))
        })
        .collect()
}

/// When the first record with `event` = `name` (and `pick`) was logged.
fn first(log: &str, name: &str, pick: impl Fn(&Value) -> bool) -> Option<SystemTime> {
    records(log)
        .into_iter()
        .find(|(_, r)| r["event"] == name && pick(r))
        .map(|(t, _)| t)
}

/// Waits until the guard has read the scheduled events `n` more times.
fn wait_rounds(imds: &ImdsSim, n: usize) {
    let path = "/latest/meta-data/events/maintenance/scheduled";
    let count = || imds.requests().iter().filter(|r| r.path == path).count();
    let start = count();
    wait_until(&format!("{n} more IMDS rounds"), SOON, || {
        count() >= start + n
    });
}

fn calls(asg: &AutoScalingSim, action: &str) -> Vec<Call> {
    asg.calls()
        .into_iter()
        .filter(|c| c.action == action)
        .collect()
}

/// The two simulators wired as AWS is: when the group starts replacing the instance, IMDS shows
/// the target lifecycle state `Terminated`.
fn group_with_hook() -> (ImdsSim, AutoScalingSim) {
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    asg.put_hook(
        GROUP,
        Hook::new(HOOK, TERMINATING).heartbeat_timeout(Duration::from_secs(30)),
    );
    let set_state = imds.lifecycle_setter();
    asg.on_target_state(move |_, state| set_state(Some(state)));
    (imds, asg)
}

#[test]
fn replace_marks_unhealthy_once_and_the_scale_in_that_follows_completes_the_hook() {
    let dir = scratch();
    let (imds, asg) = group_with_hook();
    let log = dir.path().join("agent.log");
    let mut cmd = aws_command(&imds, &asg);
    cmd.args(["--terminate-hook", HOOK, "--asg-name", GROUP])
        .args(["--heartbeat-interval", "300ms", "--log-format", "json"])
        .arg("--")
        .arg(fixture("socket_agent.py"))
        .arg(&log)
        .args(["--drained-after", "1.5"]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_until("lifecycle setup", SOON, || {
        guard.log().contains("lifecycle hooks ready")
    });
    wait_until("subscribed", SOON, || guard.status()["subscribers"] == 1);
    // Two events at once, days ahead: one call for the instance, never again however often
    // they are read.
    let not_before = whole_seconds(Duration::from_secs(3 * 86_400));
    imds.set_scheduled_events(&[
        ScheduledEvent::active("system-reboot", "instance-event-1", not_before),
        ScheduledEvent::active("instance-retirement", "instance-event-2", not_before),
    ]);
    assert_eq!(guard.code(), 0, "the agent's own status: {}", guard.log());

    let marks = calls(&asg, "SetInstanceHealth");
    assert_eq!(marks.len(), 1, "once for the instance: {marks:?}");
    for mark in &marks {
        assert_eq!(mark.status, 200);
        assert_eq!(mark.params["InstanceId"], INSTANCE);
        assert_eq!(mark.params["HealthStatus"], "Unhealthy");
        assert_eq!(mark.params["ShouldRespectGracePeriod"], "false");
    }
    assert!(asg.unhealthy(INSTANCE));
    let completes = calls(&asg, "CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(completes[0].status, 200);
    assert!(marks.iter().all(|m| m.at < completes[0].at));
    assert!(
        !calls(&asg, "RecordLifecycleActionHeartbeat").is_empty(),
        "heartbeats while the replacement's drain ran"
    );
    assert_eq!(
        asg.instance_state(INSTANCE).as_deref(),
        Some("Terminating:Proceed")
    );
    let log = guard.log();
    let drain = |r: &Value| r["phase"] == "draining";
    assert!(
        records(&log)
            .iter()
            .any(|(_, r)| drain(r) && r["reason"] == "scale-in"),
        "the replacement drains as a scale-in:\n{log}"
    );
    assert!(
        first(&log, "scheduled_event", |r| r["step"] == "marked-unhealthy").is_some(),
        "{log}"
    );
}

#[test]
fn a_refused_or_impossible_replacement_falls_back_to_a_drain_that_completes_no_hook() {
    // (what is wrong, how the guard is pointed at the group)
    for (why, denied) in [("refused", true), ("not in a group", false)] {
        let dir = scratch();
        let (imds, asg) = group_with_hook();
        let mut cmd = aws_command(&imds, &asg);
        if denied {
            asg.set_faults(Faults {
                denied: ["SetInstanceHealth".to_string()].into(),
                ..Faults::default()
            });
            cmd.args(["--asg-name", GROUP, "--terminate-hook", HOOK]);
        } else {
            // No --asg-name, no metadata tag, and the group does not know the instance.
            imds.set_identity("i-0fedcba9876543210", "us-east-1");
        }
        let mut guard = start_recorder(dir.path(), cmd, &["--maintenance-margin", "20s"]);
        let not_before = whole_seconds(Duration::from_secs(25));
        imds.set_scheduled_events(&[ScheduledEvent::active(
            "instance-stop",
            "instance-event-9",
            not_before,
        )]);
        assert_eq!(guard.code(), 0, "{why}: {}", guard.log());
        let log = guard.log();
        let drained = first(&log, "phase_changed", |r| r["reason"] == "maintenance")
            .unwrap_or_else(|| panic!("{why}: no maintenance drain:\n{log}"));
        assert!(
            drained >= not_before - Duration::from_secs(20),
            "{why}: drained before NotBefore minus the margin"
        );
        let fell_back: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("\"step\":\"fell-back\""))
            .collect();
        assert_eq!(fell_back.len(), 1, "{why}: one line:\n{log}");
        if denied {
            assert!(
                fell_back[0].contains("autoscaling:SetInstanceHealth"),
                "{}",
                fell_back[0]
            );
        }
        assert!(
            calls(&asg, "CompleteLifecycleAction").is_empty(),
            "{why}: a maintenance drain leaves the instance in its group"
        );
        assert!(!asg.unhealthy(INSTANCE), "{why}");
    }
}

#[test]
fn drain_starts_at_not_before_minus_the_margin_and_not_before() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("sim");
    let mut guard = imds_only(
        dir.path(),
        &imds,
        &["--on-maintenance", "drain", "--maintenance-margin", "24s"],
    );
    wait_rounds(&imds, 1);
    let not_before = whole_seconds(Duration::from_secs(30));
    let drain_at = not_before - Duration::from_secs(24);
    imds.set_scheduled_events(&[ScheduledEvent::active(
        "system-maintenance",
        "instance-event-3",
        not_before,
    )]);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let log = guard.log();
    let drained = first(&log, "phase_changed", |r| r["reason"] == "maintenance")
        .unwrap_or_else(|| panic!("no maintenance drain:\n{log}"));
    assert!(
        drained >= drain_at,
        "drained {:?} before NotBefore minus the margin",
        drain_at.duration_since(drained).unwrap_or_default()
    );
    assert!(
        drained < not_before,
        "the drain came {:?} after NotBefore itself",
        drained.duration_since(not_before).unwrap_or_default()
    );
    assert_eq!(
        recorded(&dir.path().join("signals.log")),
        ["SIGTERM"],
        "stopped once"
    );
    let seen = first(&log, "notice_seen", |r| r["kind"] == "scheduled-event")
        .expect("the event was reported when seen");
    assert!(seen < drain_at, "seen at once, drained later");
}

/// A guard with `--on-maintenance drain` (20 s margin) that has planned its drain for an active
/// reboot event `id` beginning at `not_before`.
fn drain_planned(
    how: &str,
    id: &str,
    not_before: SystemTime,
) -> (tempfile::TempDir, ImdsSim, Guard, ScheduledEvent) {
    let dir = scratch();
    let imds = ImdsSim::start().expect("sim");
    let guard = imds_only(
        dir.path(),
        &imds,
        &["--on-maintenance", "drain", "--maintenance-margin", "20s"],
    );
    let event = ScheduledEvent::active("instance-reboot", id, not_before);
    imds.set_scheduled_events(std::slice::from_ref(&event));
    wait_until(&format!("{how}: the drain is planned"), SOON, || {
        guard.log().contains("NotBefore minus --maintenance-margin")
    });
    (dir, imds, guard, event)
}

/// The event takes `state` (`canceled`), or with `None` is no longer listed.
fn withdraw(imds: &ImdsSim, event: &ScheduledEvent, state: Option<&str>) {
    match state {
        Some(state) => imds.set_scheduled_events(&[event.clone().with_state(state)]),
        None => imds.set_scheduled_events(&[]),
    }
}

#[test]
fn a_canceled_or_vanished_event_calls_off_its_drain() {
    for (how, end) in [("canceled", Some("canceled")), ("no longer listed", None)] {
        let not_before = whole_seconds(Duration::from_secs(28));
        let (dir, imds, mut guard, event) = drain_planned(how, "instance-event-4", not_before);
        withdraw(&imds, &event, end);
        wait_until(&format!("{how}: the drain is called off"), SOON, || {
            guard.log().contains("\"step\":\"drain-canceled\"")
        });
        // Past the time the drain was due, and a few rounds more.
        let due = not_before - Duration::from_secs(20);
        while SystemTime::now() < due + Duration::from_secs(1) {
            std::thread::sleep(Duration::from_millis(100));
        }
        wait_rounds(&imds, 3);
        assert!(
            recorded(&dir.path().join("signals.log")).is_empty(),
            "{how}: the agent was left alone:\n{}",
            guard.log()
        );
        assert_eq!(guard.status()["phase"], "ready", "{how}");
        guard.signal(libc::SIGTERM);
        assert_eq!(guard.code(), 0);
    }
}

#[test]
fn events_already_over_do_nothing_in_any_mode() {
    let dir = scratch();
    let (imds, asg) = group_with_hook();
    // Past NotBefore: acted on, they would drain (or replace) at once.
    let past = whole_seconds(Duration::ZERO) - Duration::from_secs(3600);
    imds.set_scheduled_events(&[
        ScheduledEvent::active("system-reboot", "instance-event-5", past).with_state("completed"),
        ScheduledEvent::active("instance-stop", "instance-event-6", past).with_state("canceled"),
    ]);
    for name in ["replace", "drain"] {
        std::fs::create_dir(dir.path().join(name)).expect("a directory");
    }
    let mut cmd = aws_command(&imds, &asg);
    cmd.args(["--asg-name", GROUP]);
    let mut replace = start_recorder(&dir.path().join("replace"), cmd, &[]);
    let mut drain = imds_only(
        &dir.path().join("drain"),
        &imds,
        &["--on-maintenance", "drain"],
    );
    wait_rounds(&imds, 6);
    for (guard, name) in [(&mut replace, "replace"), (&mut drain, "drain")] {
        let agent = dir.path().join(name).join("signals.log");
        assert!(recorded(&agent).is_empty(), "{name}: {}", guard.log());
        assert!(
            guard
                .log()
                .contains("scheduled event is completed: nothing to do")
                && guard
                    .log()
                    .contains("scheduled event is canceled: nothing to do"),
            "{name}: {}",
            guard.log()
        );
        guard.signal(libc::SIGTERM);
        assert_eq!(guard.code(), 0);
    }
    assert!(calls(&asg, "SetInstanceHealth").is_empty());
}

#[test]
fn unreadable_bodies_are_harmless_and_logged_once() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("sim");
    let mut guard = imds_only(dir.path(), &imds, &["--on-maintenance", "drain"]);
    let past = whole_seconds(Duration::ZERO) - Duration::from_secs(60);
    let valid = ScheduledEvent::active("system-reboot", "instance-event-7", past);
    // A drain is planned, then garbage comes: it neither starts nor cancels anything.
    imds.set_scheduled_events(&[ScheduledEvent::active(
        "system-reboot",
        "instance-event-8",
        whole_seconds(Duration::from_secs(86_400)),
    )]);
    wait_rounds(&imds, 2);
    for body in [
        "\u{1}\u{2}<html>garbage{{{".to_string(),
        "{\"Code\": \"system-reboot\"}".to_string(),
        "[1, 2]".to_string(),
        "[{\"NotBefore\":\"soon\",\"Code\":\"system-reboot\",\"EventId\":\"e\",\"State\":\"active\"}]"
            .to_string(),
        format!("[{}]", "\"x\",".repeat(100_000) + "\"x\""),
    ] {
        imds.set_scheduled_body(Some(body));
        wait_rounds(&imds, 3);
    }
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "the agent was left alone"
    );
    let log = guard.log();
    assert_eq!(
        log.matches("cannot read IMDS events/maintenance/scheduled")
            .count(),
        1,
        "logged once, not once per body:\n{log}"
    );
    assert!(!log.contains("drain-canceled"), "garbage cancels nothing");
    assert!(
        log.lines().all(|l| l.len() < 2000),
        "logged values are capped"
    );
    // And it still works: an event that is due drains at once.
    imds.set_scheduled_events(&[valid]);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(guard.log().contains("readable again"), "{}", guard.log());
}

#[test]
fn report_only_reports_in_the_log_status_and_metrics() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("sim");
    let mut guard = imds_only(
        dir.path(),
        &imds,
        &[
            "--on-maintenance",
            "report",
            "--health-listen",
            "127.0.0.1:0",
        ],
    );
    let past = whole_seconds(Duration::ZERO) - Duration::from_secs(60);
    imds.set_scheduled_events(&[ScheduledEvent::active(
        "instance-retirement",
        "instance-event-10",
        past,
    )]);
    wait_until("the event is reported", SOON, || {
        guard
            .log()
            .contains("reported only (--on-maintenance report)")
    });
    wait_rounds(&imds, 3);
    let status = guard.status();
    let event = &status["imds"]["scheduled_events"][0];
    assert_eq!(event["id"], "instance-event-10", "{status}");
    assert_eq!(event["code"], "instance-retirement");
    assert_eq!(event["state"], "active");
    assert_eq!(event["handling"], "reported");
    assert_eq!(status["phase"], "ready");
    let (code, _, metrics) = http(&guard.health_addr(), "GET", "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("agent_guard_maintenance_events{code=\"instance-retirement\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("agent_guard_notices_total{kind=\"scheduled-event\"} 1"),
        "{metrics}"
    );
    assert!(recorded(&dir.path().join("signals.log")).is_empty());
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

/// `agent-guard drill maintenance ARGS` with a clean environment: (status, stdout).
fn drill(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = Command::new(crate::support::bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AGENT_GUARD_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    let out = cmd
        .args(["drill", "maintenance"])
        .args(args)
        .output()
        .expect("drill runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn drill_maintenance_rehearses_each_mode() {
    let dir = scratch();
    let agent = dir.path().join("agent.log");
    let agent = agent.to_str().expect("utf-8");
    let recorder = fixture("recorder.py");
    let recorder = recorder.to_str().expect("utf-8");
    // (mode, what the PASS says, a timeline entry only this mode has)
    for (mode, pass, entry) in [
        (
            "replace",
            "PASS: the instance was marked Unhealthy, the agent stopped cleanly on the scale-in that followed, and the hook was completed with CONTINUE",
            "Unhealthy: ok (200)",
        ),
        (
            "drain",
            "PASS: the agent drained at NotBefore minus --maintenance-margin and stopped cleanly before NotBefore",
            "NotBefore minus --maintenance-margin: draining",
        ),
        (
            "report",
            "PASS: the scheduled event was reported and the agent kept running",
            "scheduled event system-reboot",
        ),
    ] {
        // Ready once its handlers are installed (Python can be slow to start under load).
        let (code, text) = drill(&[
            "--ready-on",
            "notify",
            "--on-maintenance",
            mode,
            "--",
            recorder,
            agent,
        ]);
        assert_eq!(code, Some(0), "{mode}: {text}");
        assert!(text.contains(pass), "{mode}: {text}");
        assert!(text.contains(entry), "{mode}: {text}");
        assert!(
            text.contains(&format!("--on-maintenance {mode}")),
            "{mode}: {text}"
        );
    }
    // An agent still running at NotBefore fails, in plain words.
    let (code, text) = drill(&[
        "--ready-on",
        "notify",
        "--on-maintenance",
        "drain",
        "--maintenance-margin",
        "1s",
        "--stop-timeout",
        "4s",
        "--",
        recorder,
        agent,
        "--ignore-term",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("past the scheduled event's NotBefore"),
        "{text}"
    );
}

#[test]
fn a_scale_in_during_a_maintenance_drain_completes_the_termination_hook() {
    let dir = scratch();
    let (imds, asg) = group_with_hook();
    let log = dir.path().join("agent.log");
    let mut cmd = aws_command(&imds, &asg);
    cmd.args(["--terminate-hook", HOOK, "--asg-name", GROUP])
        .args(["--on-maintenance", "drain", "--heartbeat-interval", "300ms"])
        .args(["--log-format", "json", "--drain-timeout", "10m"])
        .arg("--")
        .arg(fixture("socket_agent.py"))
        .arg(&log)
        .args(["--drained-after", "3"]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_until("lifecycle setup", SOON, || {
        guard.log().contains("lifecycle hooks ready")
    });
    wait_until("subscribed", SOON, || guard.status()["subscribers"] == 1);
    let due = whole_seconds(Duration::ZERO) - Duration::from_secs(60);
    imds.set_scheduled_events(&[ScheduledEvent::active(
        "system-reboot",
        "instance-event-11",
        due,
    )]);
    wait_until("the maintenance drain", SOON, || {
        guard.status()["drain"]["reason"] == "maintenance"
    });
    // The group scales the instance in while the agent drains for the maintenance.
    asg.terminate(GROUP, INSTANCE);
    imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let completes = calls(&asg, "CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}\n{}", guard.log());
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    assert!(
        !calls(&asg, "RecordLifecycleActionHeartbeat").is_empty(),
        "heartbeats once the drain ends the instance"
    );
    let reasons: Vec<String> = records(&guard.log())
        .into_iter()
        .filter(|(_, r)| r["event"] == "phase_changed")
        .map(|(_, r)| r["reason"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(
        reasons.windows(2).any(|w| w == ["maintenance", "scale-in"]),
        "{reasons:?}"
    );
}

#[test]
fn replace_marks_the_instance_unhealthy_once_for_32_events_and_for_ids_that_rotate() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    // IMDS is not told of the replacement: the guard keeps reading events, as it would while
    // the group is slow to act.
    let mut cmd = aws_command(&imds, &asg);
    cmd.args(["--asg-name", GROUP]);
    let mut guard = start_recorder(dir.path(), cmd, &[]);
    let not_before = whole_seconds(Duration::from_secs(3 * 86_400));
    let batch = |round: usize| -> Vec<ScheduledEvent> {
        (0..32)
            .map(|n| {
                let id = format!("instance-event-{round}-{n}");
                ScheduledEvent::active("system-reboot", &id, not_before)
            })
            .collect()
    };
    imds.set_scheduled_events(&batch(0));
    wait_until("the instance is marked", SOON, || {
        !calls(&asg, "SetInstanceHealth").is_empty()
    });
    wait_rounds(&imds, 3);
    // New ids on every read for 5 s, as a broken IMDS could serve them.
    let until = Instant::now() + Duration::from_secs(5);
    let mut round = 1;
    while Instant::now() < until {
        imds.set_scheduled_events(&batch(round));
        wait_rounds(&imds, 1);
        round += 1;
    }
    wait_rounds(&imds, 3);
    let marks = calls(&asg, "SetInstanceHealth");
    assert_eq!(
        marks.len(),
        1,
        "{round} rounds of 32 events: {marks:?}\n{}",
        guard.log()
    );
    assert!(asg.unhealthy(INSTANCE));
    assert!(recorded(&dir.path().join("signals.log")).is_empty());
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

#[test]
fn a_flapping_event_is_planned_again_when_it_is_active_again() {
    // (how the event flaps for one poll)
    for how in ["canceled", "unlisted"] {
        let not_before = whole_seconds(Duration::from_secs(30));
        let (dir, imds, mut guard, event) = drain_planned(how, "instance-event-10", not_before);
        withdraw(&imds, &event, (how == "canceled").then_some("canceled"));
        wait_until(&format!("{how}: the drain is called off"), SOON, || {
            guard.log().contains("\"step\":\"drain-canceled\"")
        });
        imds.set_scheduled_events(std::slice::from_ref(&event));
        // The reboot still comes: the agent drains before it, as if it had never flapped.
        assert_eq!(guard.code(), 0, "{how}: {}", guard.log());
        let log = guard.log();
        let drained = first(&log, "phase_changed", |r| r["reason"] == "maintenance")
            .unwrap_or_else(|| panic!("{how}: no maintenance drain:\n{log}"));
        assert!(
            drained >= not_before - Duration::from_secs(20) && drained < not_before,
            "{how}: drained at the planned time"
        );
        assert_eq!(
            recorded(&dir.path().join("signals.log")),
            ["SIGTERM"],
            "{how}"
        );
    }
}

#[test]
fn a_404_for_the_list_after_an_active_event_calls_off_its_drain_as_an_empty_list_does() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("sim");
    let mut guard = imds_only(
        dir.path(),
        &imds,
        &["--on-maintenance", "drain", "--maintenance-margin", "20s"],
    );
    let not_before = whole_seconds(Duration::from_secs(26));
    let event = ScheduledEvent::active("system-reboot", "instance-event-11", not_before);
    imds.set_scheduled_events(std::slice::from_ref(&event));
    wait_until("the drain is planned", SOON, || {
        guard.log().contains("NotBefore minus --maintenance-margin")
    });
    imds.set_scheduled_body(None);
    wait_until("the drain is called off", SOON, || {
        guard.log().contains("\"step\":\"drain-canceled\"")
    });
    let due = not_before - Duration::from_secs(20);
    while SystemTime::now() < due + Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_rounds(&imds, 3);
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "the agent was left alone:\n{}",
        guard.log()
    );
    let log = guard.log();
    assert_eq!(
        log.matches("answered 404: no events listed").count(),
        1,
        "said once what the 404 means:\n{log}"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}
