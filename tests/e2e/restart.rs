//! `--restart`: an agent that exits by itself is started again after a delay that doubles and
//! resets after a long run; never during a drain or a stop; a stop during the delay ends the
//! guard at once; a crash loop ends the restarts and marks the instance Unhealthy once.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use agent_guard::sim::autoscaling::{AutoScalingSim, Call, Faults, Hook, LAUNCHING};
use agent_guard::sim::imds::ImdsSim;
use serde_json::Value;

use crate::support::{
    Guard, SOON, aws_command, command, fixture, gone, http, read, scratch, wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";

/// The fixture agent with its log in `dir` and these steps, one per start.
fn agent(dir: &Path, steps: &[&str]) -> (PathBuf, Vec<String>) {
    let log = dir.join("agent.log");
    let mut argv = vec![
        fixture("restarting_agent.sh").display().to_string(),
        log.display().to_string(),
    ];
    argv.extend(steps.iter().map(|s| s.to_string()));
    (log, argv)
}

fn start(dir: &Path, options: &[&str], steps: &[&str]) -> (Guard, PathBuf) {
    let (log, argv) = agent(dir, steps);
    let mut cmd = command();
    cmd.args(["--log-format", "json"])
        .args(options)
        .arg("--")
        .args(argv);
    (Guard::spawn(dir, cmd), log)
}

/// The fixture's log as (what, time, pid) rows.
fn marks(log: &Path) -> Vec<(String, f64, String)> {
    read(log)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let what = f.next()?.to_string();
            let at = f.next()?.parse().ok()?;
            Some((what, at, f.next().unwrap_or_default().to_string()))
        })
        .collect()
}

fn starts(log: &Path) -> usize {
    marks(log).iter().filter(|m| m.0 == "start").count()
}

/// The delay before each restart: from an exit mark to the next start mark.
fn delays(log: &Path) -> Vec<f64> {
    let m = marks(log);
    m.windows(2)
        .filter(|w| w[0].0 == "exit" && w[1].0 == "start")
        .map(|w| w[1].1 - w[0].1)
        .collect()
}

/// The journal records (the `event` of each JSON log line) of one kind.
fn records(guard: &Guard, kind: &str) -> Vec<Value> {
    guard
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l.get("event").cloned())
        .filter(|e| e["event"] == kind)
        .collect()
}

#[test]
fn restart_delays_double_and_reset_after_a_long_run() {
    let dir = scratch();
    // Three quick failures (delays 1, 2, 4 s), a 5 s run (longer than the 4 s maximum), then
    // one more quick failure: the delay is back to 1 s, then 2 s again.
    let (mut guard, log) = start(
        dir.path(),
        &[
            "--restart",
            "on-failure",
            "--restart-delay",
            "1s",
            "--restart-max-delay",
            "4s",
            "--crash-loop",
            "20/10m",
        ],
        &["fail", "fail", "fail", "5", "fail", "fail", "stay"],
    );
    wait_until("the seventh start", Duration::from_secs(120), || {
        starts(&log) == 7
    });
    let d = delays(&log);
    assert_eq!(d.len(), 6, "{d:?}\n{}", read(&log));
    // Jitter only shortens a step, by at most 20 %: each delay is at least 80 % of its step.
    for (got, step) in d.iter().zip([1.0, 2.0, 4.0, 1.0, 2.0, 4.0]) {
        assert!(
            *got >= step * 0.8 - 0.01,
            "delay {got} for a {step} s step: {d:?}"
        );
    }
    assert!(d[0] < d[1] && d[1] < d[2], "delays grow: {d:?}");
    assert!(d[3] < d[2], "the long run reset the delay: {d:?}");
    assert!(d[3] < d[4] && d[4] < d[5], "and they grow again: {d:?}");
    let attempts: Vec<u64> = records(&guard, "restart_scheduled")
        .iter()
        .filter_map(|r| r["attempt"].as_u64())
        .collect();
    assert_eq!(attempts, [1, 2, 3, 1, 2, 3], "{}", guard.log());

    let status = guard.status();
    assert_eq!(status["restart"]["restarts"], 6, "{status}");
    assert_eq!(status["restart"]["policy"], "on-failure");
    assert_eq!(status["phase"], "ready");
    let last = marks(&log).last().cloned().expect("a mark");
    assert_eq!(
        status["agent_pid"].to_string(),
        last.2,
        "the new agent's pid"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "the last agent's own status");
}

#[test]
fn always_restarts_after_exit_0_and_on_failure_does_not() {
    let dir = scratch();
    let (mut guard, log) = start(
        dir.path(),
        &["--restart", "always", "--restart-delay", "100ms"],
        &["ok", "stay"],
    );
    wait_until("the second start", SOON, || starts(&log) == 2);
    wait_until("ready again", SOON, || guard.status()["phase"] == "ready");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
    assert_eq!(starts(&log), 2, "{}", read(&log));

    let dir = scratch();
    let (mut guard, log) = start(
        dir.path(),
        &["--restart", "on-failure", "--restart-delay", "100ms"],
        &["ok", "stay"],
    );
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert_eq!(starts(&log), 1, "exit 0 is no failure: {}", read(&log));
}

#[test]
fn a_drain_or_a_stop_is_never_followed_by_a_restart() {
    let dir = scratch();
    let (mut guard, log) = start(
        dir.path(),
        &["--restart", "always", "--restart-delay", "100ms"],
        &["stay"],
    );
    wait_until("the agent", SOON, || starts(&log) == 1);
    wait_until("ready", SOON, || guard.status()["phase"] == "ready");
    let (code, _, err) = guard.ctl(&["drain"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert_eq!(starts(&log), 1, "{}", read(&log));

    let dir = scratch();
    let (mut guard, log) = start(
        dir.path(),
        &["--restart", "always", "--restart-delay", "100ms"],
        &["stay"],
    );
    wait_until("ready", SOON, || guard.status()["phase"] == "ready");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
    assert_eq!(starts(&log), 1, "{}", read(&log));
}

#[test]
fn while_restarting_the_guard_says_so_and_a_sigterm_ends_it_at_once() {
    let dir = scratch();
    let (mut guard, log) = start(
        dir.path(),
        &[
            "--restart",
            "on-failure",
            "--restart-delay",
            "10m",
            "--restart-max-delay",
            "10m",
            "--health-listen",
            "127.0.0.1:0",
        ],
        &["wait"],
    );
    let addr = guard.health_addr();
    wait_until("ready", SOON, || guard.status()["phase"] == "ready");
    // An observer hears the phase go back to `starting`.
    let stream = UnixStream::connect(&guard.socket).expect("connect");
    stream.set_read_timeout(Some(SOON)).expect("timeout");
    let mut lines = BufReader::new(stream.try_clone().expect("clone"));
    (&stream)
        .write_all(b"{\"op\":\"subscribe\"}\n")
        .expect("subscribe");
    let mut line = String::new();
    lines.read_line(&mut line).expect("the reply");
    assert!(line.contains("\"subscribed\":true"), "{line}");
    std::fs::write(log.with_extension("log.go"), "").expect("go");

    line.clear();
    lines.read_line(&mut line).expect("an event");
    assert!(line.contains("\"phase\":\"starting\""), "{line}");
    let status = guard.status();
    assert_eq!(status["phase"], "starting", "{status}");
    assert_eq!(status["restart"]["restarting"], true, "{status}");
    assert_eq!(status["restart"]["attempt"], 1, "{status}");
    let next_in = status["restart"]["next_in_ms"]
        .as_u64()
        .expect("next_in_ms");
    assert!(next_in > 60_000, "{status}");
    assert_eq!(status["agent_exit"], 1, "{status}");
    let (_, text, _) = guard.ctl(&["status"]);
    assert!(text.contains("restarting: attempt 1, next in "), "{text}");
    assert_eq!(http(&addr, "GET", "/readyz").0, 503);
    assert_eq!(http(&addr, "GET", "/livez").0, 200, "the guard is at work");

    // Ten minutes to the restart: the stop ends the guard now, with the last status.
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 1, "{}", guard.log());
    assert_eq!(starts(&log), 1);
}

struct World {
    imds: ImdsSim,
    asg: AutoScalingSim,
}

fn world() -> World {
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    World { imds, asg }
}

fn calls(w: &World, action: &str) -> Vec<Call> {
    w.asg
        .calls()
        .into_iter()
        .filter(|c| c.action == action)
        .collect()
}

const CRASH_LOOP: &[&str] = &[
    "--restart",
    "always",
    "--restart-delay",
    "50ms",
    "--restart-max-delay",
    "100ms",
    "--crash-loop",
    "3/1m",
    "--asg-name",
    GROUP,
];

/// A guard against the simulators, logging JSON, around the fixture agent.
fn aws_guard(dir: &Path, w: &World, options: &[&str], steps: &[&str]) -> (Guard, PathBuf) {
    let (log, argv) = agent(dir, steps);
    let mut cmd = aws_command(&w.imds, &w.asg);
    cmd.args(["--log-format", "json"])
        .args(CRASH_LOOP)
        .args(options)
        .arg("--")
        .args(argv);
    (Guard::spawn(dir, cmd), log)
}

#[test]
fn a_crash_loop_marks_the_instance_unhealthy_once_and_abandons_the_launch_hook() {
    let dir = scratch();
    let w = world();
    w.asg.put_hook(GROUP, Hook::new("launch-hook", LAUNCHING));
    w.asg.launch(GROUP, INSTANCE);
    // Three quick failures: the loop may well end before the lifecycle setup does.
    let (mut guard, log) = aws_guard(
        dir.path(),
        &w,
        &["--launch-hook", "launch-hook", "--ready-on", "notify"],
        &["fail", "fail", "fail", "stay"],
    );
    let code = guard.code();
    assert_eq!(code, 1, "the agent's last status: {}", guard.log());
    assert_eq!(starts(&log), 3, "{}", read(&log));

    let marked = calls(&w, "SetInstanceHealth");
    assert_eq!(marked.len(), 1, "{marked:?}");
    assert_eq!(marked[0].status, 200);
    assert_eq!(marked[0].params["HealthStatus"], "Unhealthy");
    assert_eq!(marked[0].params["ShouldRespectGracePeriod"], "false");
    assert_eq!(marked[0].params["InstanceId"], INSTANCE);
    assert_eq!(w.asg.health(INSTANCE).as_deref(), Some("Unhealthy"));
    let completes = calls(&w, "CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{}", guard.log());
    assert_eq!(completes[0].params["LifecycleHookName"], "launch-hook");
    assert_eq!(completes[0].params["LifecycleActionResult"], "ABANDON");
    assert_eq!(records(&guard, "crash_loop").len(), 1, "{}", guard.log());
    assert_eq!(records(&guard, "marked_unhealthy").len(), 1);
}

#[test]
fn a_crash_loop_outside_a_group_or_refused_is_one_line_then_the_exit() {
    // --imds off: no group to ask.
    let dir = scratch();
    let (mut guard, log) = start(dir.path(), CRASH_LOOP, &["fail", "fail", "fail"]);
    assert_eq!(guard.code(), 1, "{}", guard.log());
    assert_eq!(starts(&log), 3);
    assert_eq!(
        records(&guard, "not_marked_unhealthy").len(),
        1,
        "{}",
        guard.log()
    );

    // Refused: the instance profile lacks the permission.
    let dir = scratch();
    let w = world();
    w.asg.set_faults(Faults {
        denied: ["SetInstanceHealth".to_string()].into(),
        ..Faults::default()
    });
    let (mut guard, _) = aws_guard(dir.path(), &w, &[], &["fail", "fail", "fail"]);
    assert_eq!(guard.code(), 1, "{}", guard.log());
    assert_eq!(calls(&w, "SetInstanceHealth").len(), 1);
    let refused = records(&guard, "not_marked_unhealthy");
    assert_eq!(refused.len(), 1, "{}", guard.log());
    assert!(
        refused[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("autoscaling:SetInstanceHealth")),
        "{refused:?}"
    );

    // --on-crash-loop exit: no call at all.
    let dir = scratch();
    let w = world();
    let (mut guard, _) = aws_guard(
        dir.path(),
        &w,
        &["--on-crash-loop", "exit"],
        &["fail", "fail", "fail"],
    );
    assert_eq!(guard.code(), 1, "{}", guard.log());
    assert!(calls(&w, "SetInstanceHealth").is_empty());
    assert!(records(&guard, "not_marked_unhealthy").is_empty());
}

#[test]
fn leftovers_of_a_failed_agent_are_gone_before_the_next_start() {
    let dir = scratch();
    let pids = dir.path().join("pids");
    // Each start leaves a background sleep in its group, then fails (once).
    let script = format!(
        "sleep 600 & echo $! >> {p}; n=$(wc -l < {p}); [ \"$n\" -gt 1 ] && exec sleep 600; exit 1",
        p = pids.display()
    );
    let mut cmd = command();
    cmd.args(["--restart", "on-failure", "--restart-delay", "100ms"])
        .args(["--", "sh", "-c", &script]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_until("the second start", SOON, || {
        read(&pids).lines().count() == 2
    });
    let first: i32 = read(&pids)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("a pid");
    assert!(
        gone(first),
        "the first agent's leftover was stopped before the restart"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn a_restarted_agent_gets_the_terminal_foreground_too() {
    let dir = scratch();
    let count = dir.path().join("count");
    // Prints whether its group holds the terminal's foreground; fails the first time.
    let check = format!(
        "echo x >> {c}; if [ \"$(ps -o tpgid= -p $$ | tr -d ' ')\" = \"$(ps -o pgid= -p $$ | tr -d ' ')\" ]; \
         then echo AGENT-IN-FOREGROUND; else echo AGENT-IN-BACKGROUND; fi; \
         [ \"$(wc -l < {c})\" -gt 1 ]",
        c = count.display()
    );
    let out = std::process::Command::new(fixture("foreground.py"))
        .args([crate::support::bin(), "--restart", "on-failure"])
        .args(["--restart-delay", "100ms", "--", "sh", "-c", &check])
        .env_remove("RUST_LOG")
        .env("AGENT_GUARD_IMDS", "off")
        .env("AGENT_GUARD_HEALTH_LISTEN", "off")
        .env("AGENT_GUARD_SOCKET", crate::support::unique_socket())
        .output()
        .expect("python3 runs the pty fixture");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("AGENT-IN-FOREGROUND").count(),
        2,
        "both agents: {text}"
    );
}
