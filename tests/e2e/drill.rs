//! `agent-guard drill` against fixture agents: well-behaved ones pass, the rest fail with the
//! reason in plain words, `--json` holds the whole timeline, and nothing is left behind.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::{SOON, bin, fixture, processes, scratch};

/// Runs `agent-guard drill ARGS` with a clean environment (no AWS or guard settings leak in).
fn drill(args: &[&str]) -> Output {
    let mut cmd = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AGENT_GUARD_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    cmd.arg("drill").args(args).output().expect("drill runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Nothing of the drill is left: no process with `marker` in its command line, no temp dir.
fn nothing_left(marker: &str) {
    let left = || -> Vec<_> {
        processes()
            .into_iter()
            .filter(|p| p.state != 'Z')
            .filter(|p| {
                std::fs::read(format!("/proc/{}/cmdline", p.pid))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
            })
            .collect()
    };
    // A process killed at the drill's end may take a moment to be gone from /proc.
    let deadline = std::time::Instant::now() + SOON;
    while !left().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let left = left();
    assert!(left.is_empty(), "left running after the drill: {left:?}");
}

fn marker(dir: &Path) -> String {
    dir.join("agent.log").display().to_string()
}

#[test]
fn an_agent_that_drains_on_the_socket_passes() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "scale-in",
        "--",
        fixture("socket_agent.py").to_str().expect("utf-8"),
        &log,
        "--drained-after",
        "0.3",
    ]);
    let text = stdout(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("PASS: the agent stopped cleanly before the deadline and the hook was completed with CONTINUE"), "{text}");
    assert!(text.contains("agent drained"), "{text}");
    assert!(text.contains("drain event to 1 subscriber(s)"), "{text}");
    assert!(text.contains("drill-hook CONTINUE: ok (200)"), "{text}");
    nothing_left(&log);
}

#[test]
fn an_agent_that_only_handles_sigterm_passes() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "scale-in",
        // Ready once its SIGTERM handler is installed (Python can be slow to start under load).
        "--ready-on",
        "notify",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("by the stop signal itself"), "{text}");
    assert!(text.starts_with('\n') && text.contains("PASS"), "{text}");
    nothing_left(&log);
}

#[test]
fn an_agent_that_ignores_sigterm_fails_naming_the_sigkill() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "scale-in",
        "--stop-timeout",
        "1s",
        // Ready once its handlers are installed: on a loaded machine Python can take longer than
        // the drill's 1 s, and a SIGTERM before the handler kills it instead of being ignored.
        "--ready-on",
        "notify",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
        "--ignore-term",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL:"), "{text}");
    // "after 1s" as a rule; the interval is between two log lines' times, and on a loaded
    // machine the stop signal's line can be written a few ms after the grace began ("997ms").
    // The wording itself is the verdict's unit test.
    assert!(
        text.contains("the agent ignored SIGTERM and was killed after "),
        "{text}"
    );
    assert!(text.contains("ABANDON, not CONTINUE"), "{text}");
    nothing_left(&log);
}

#[test]
fn an_agent_that_never_gets_ready_fails() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "scale-in",
        "--ready-on",
        "notify",
        "--ready-timeout",
        "2s",
        "--",
        "sh",
        "-c",
        &format!("exec sleep 600 # {log}"),
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("the agent never became ready (waited 2s)"),
        "{text}"
    );
    nothing_left(&log);
}

#[test]
fn a_spot_deadline_too_short_for_the_timeouts_fails_naming_the_squeeze() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "spot",
        "--deadline",
        "15s",
        "--stop-timeout",
        "30s",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    // 15 s notice minus the 10 s margin leaves about 4-5 s for a 30 s grace.
    assert!(
        text.contains("the spot deadline left") && text.contains("for a 30s stop timeout"),
        "{text}"
    );
    nothing_left(&log);
}

#[test]
fn json_holds_every_timeline_entry() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "scale-in",
        "--json",
        "--heartbeat-timeout",
        "3s",
        // Ready when it says so: on a loaded machine Python can take longer than the drill's
        // 1 s to install its SIGTERM handler, and an agent not yet listening is stopped at once.
        "--ready-on",
        "notify",
        "--",
        fixture("socket_agent.py").to_str().expect("utf-8"),
        &log,
        "--ready",
        "--drained-after",
        "1.6",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON document");
    assert_eq!(doc["verdict"], "PASS");
    assert_eq!(doc["event"], "scale-in");
    assert_eq!(doc["exit_status"], 0);
    let whats: Vec<&str> = doc["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["what"].as_str().expect("what"))
        .collect();
    for want in [
        "agent ready",
        "notice posted",
        "notice seen by the guard",
        "readiness 503",
        "agent told to drain",
        "agent drained",
        "heartbeat",
        "stop signal",
        "agent exit",
        "lifecycle action",
        "guard exit",
    ] {
        assert!(whats.contains(&want), "{want} missing from {whats:?}");
    }
    let offsets: Vec<i64> = doc["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|e| e["offset_ms"].as_i64().expect("offset"))
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]),
        "sorted by offset: {offsets:?}"
    );
    nothing_left(&log);
}

#[test]
fn sigterm_and_rebalance_rehearsals() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "sigterm",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("SIGTERM to the guard, as systemd, ECS or Kubernetes would send")
    );

    let out = drill(&[
        "rebalance",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("reported and the agent kept running"),
        "{text}"
    );

    let out = drill(&[
        "rebalance",
        "--on-rebalance",
        "drain",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("stop signal"), "{text}");
    nothing_left(&log);
}

#[test]
fn a_drill_that_cannot_run_exits_125() {
    let out = drill(&["scale-in", "--stop-timeout", "soon", "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--stop-timeout: invalid value `soon`"));
    let out = drill(&["scale-in", "--stop-timeout", "1s"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains("after `--`"));
}

#[test]
fn a_deregistration_delay_is_rehearsed_and_the_timeline_shows_the_gap() {
    let dir = scratch();
    let log = marker(dir.path());
    let out = drill(&[
        "scale-in",
        "--json",
        "--deregistration-delay",
        "2s",
        "--",
        fixture("recorder.py").to_str().expect("utf-8"),
        &log,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let doc: Value = serde_json::from_str(stdout(&out).trim()).expect("one JSON document");
    assert_eq!(doc["verdict"], "PASS");
    let timeline = doc["timeline"].as_array().expect("timeline");
    let at = |what: &str, detail: &str| {
        timeline
            .iter()
            .find(|e| e["what"] == what && e["detail"].as_str().is_some_and(|d| d.contains(detail)))
            .and_then(|e| e["offset_ms"].as_i64())
            .unwrap_or_else(|| panic!("no {what} ({detail}) in {timeline:#?}"))
    };
    let deregistering = at("deregistering", "load balancer");
    let waits = at("guard waits", "deregistration in progress");
    let wait_state = at("wait state", "Terminating:Wait");
    let exit = at("agent exit", "");
    let completed = at("lifecycle action", "CONTINUE: ok (200)");
    assert!(deregistering <= exit && exit <= waits, "{timeline:#?}");
    assert!(
        (1900..2500).contains(&(wait_state - deregistering)),
        "the 2 s gap: {timeline:#?}"
    );
    assert!(completed > wait_state, "{timeline:#?}");
    nothing_left(&log);
}
