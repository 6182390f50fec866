//! `--on-drain CMD`: the agent's own drain command runs when a drain starts, with the reason,
//! the deadline and the agent's pid; its output is in the guard's log; a command that hangs is
//! killed with its group at the drain deadline; the agent still gets its whole drain time before
//! the stop signal; one drain, one run; `/status` and the drill show it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use serde_json::Value;

use crate::support::{
    Guard, SOON, bin, command, fixture, gone, let_time_pass, read, scratch, wait_until,
};

/// Starts a guard (JSON logs) around the fixture agent that runs until SIGTERM and logs when.
fn start(dir: &Path, options: &[&str]) -> (Guard, std::path::PathBuf) {
    let log = dir.join("agent.log");
    let mut cmd = command();
    cmd.args(["--log-format", "json"])
        .args(options)
        .arg("--")
        .arg(fixture("restarting_agent.sh"))
        .arg(&log)
        .arg("stay");
    let guard = Guard::spawn(dir, cmd);
    wait_until("the agent", SOON, || read(&log).contains("start"));
    (guard, log)
}

/// The time and the third word of the fixture's first line starting with `what`.
fn mark(log: &Path, what: &str) -> Option<(f64, String)> {
    read(log).lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == what).then_some(())?;
        let at = f.next()?.parse().ok()?;
        Some((at, f.next().unwrap_or_default().to_string()))
    })
}

fn records(guard: &Guard, kind: &str) -> Vec<Value> {
    guard
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l.get("event").cloned())
        .filter(|e| e["event"] == kind)
        .collect()
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

#[test]
fn the_command_sees_the_drain_logs_its_output_and_is_killed_at_the_deadline() {
    let dir = scratch();
    let env = dir.path().join("env");
    let background = dir.path().join("background");
    // Prints, leaves a background process in its group, and hangs.
    let script = format!(
        "echo \"$AGENT_GUARD_DRAIN_REASON $AGENT_GUARD_DRAIN_DEADLINE $AGENT_GUARD_AGENT_PID\" > {env}; \
         echo to-stdout; echo to-stderr >&2; sleep 600 & echo $! > {bg}; exec sleep 600",
        env = env.display(),
        bg = background.display()
    );
    let (mut guard, log) = start(
        dir.path(),
        &["--on-drain", &script, "--drain-timeout", "3s"],
    );
    let (_, agent_pid) = mark(&log, "start").expect("started");
    let before = unix_seconds(SystemTime::now());
    let (code, _, err) = guard.ctl(&["drain"]);
    assert_eq!(code, 0, "{err}");
    wait_until("the command ran", SOON, || read(&env).contains('\n'));
    let status = guard.status();
    assert_eq!(status["on_drain"]["state"], "running", "{status}");
    assert_eq!(guard.code(), 0, "{}", guard.log());

    let seen = read(&env);
    let words: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{seen}");
    assert_eq!(words[0], "operator");
    assert_eq!(words[2], agent_pid, "AGENT_GUARD_AGENT_PID is the agent's");
    let deadline = unix_seconds(humantime::parse_rfc3339(words[1]).expect("RFC 3339"));
    assert!(
        deadline >= before + 2.9,
        "{deadline} vs {before}: the 3 s drain"
    );

    let text = guard.log();
    assert!(text.contains("on-drain stdout: to-stdout"), "{text}");
    assert!(text.contains("on-drain stderr: to-stderr"), "{text}");
    let ended = records(&guard, "drain_command_ended");
    assert_eq!(ended.len(), 1, "{text}");
    assert_eq!(ended[0]["killed"], true);
    assert_eq!(ended[0]["status"], 137);
    let bg: i32 = read(&background).trim().parse().expect("a pid");
    wait_until("the command's group is gone", SOON, || gone(bg));

    // Telling the agent counted: the stop signal came only after its whole drain time.
    let (term, _) = mark(&log, "term").expect("the agent got the stop signal");
    assert!(
        term >= deadline - 0.01,
        "SIGTERM at {term}, deadline {deadline}"
    );
}

#[test]
fn one_drain_one_run_its_status_in_status_and_the_agent_still_decides() {
    let dir = scratch();
    let runs = dir.path().join("runs");
    let script = format!("echo ran >> {}; exit 3", runs.display());
    let (mut guard, _log) = start(
        dir.path(),
        &["--on-drain", &script, "--drain-timeout", "10m"],
    );
    assert_eq!(guard.ctl(&["drain"]).0, 0);
    wait_until("the command's status", SOON, || {
        guard.status()["on_drain"]["state"] == "exited"
    });
    let status = guard.status();
    assert_eq!(status["on_drain"]["status"], 3, "{status}");
    assert_eq!(
        status["phase"], "draining",
        "the command's end is not the agent's"
    );
    // A second drain request and a first SIGTERM change nothing about the drain.
    assert_eq!(guard.ctl(&["drain"]).0, 0);
    guard.signal(libc::SIGTERM);
    wait_until("the guard took the signal", SOON, || {
        !records(&guard, "stop_signal_received").is_empty()
    });
    let_time_pass(
        "a second run of the command would show by now",
        Duration::from_millis(300),
    );
    assert_eq!(read(&runs), "ran\n");
    assert_eq!(records(&guard, "drain_command_started").len(), 1);
    // The agent's word ends the drain.
    assert_eq!(guard.ctl(&["drained"]).0, 0);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let ended = records(&guard, "drain_command_ended");
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0]["killed"], false);
    assert_eq!(ended[0]["status"], 3);
}

#[test]
fn an_array_in_the_config_file_runs_without_a_shell() {
    let dir = scratch();
    let out = dir.path().join("argv");
    let config = dir.path().join("guard.toml");
    // `$HOME` and `;` would mean something to a shell; here they are plain arguments.
    std::fs::write(
        &config,
        format!(
            "on-drain = [\"/bin/sh\", \"-c\", 'printf \"%s|\" \"$@\" > {}', \"sh\", \"$HOME\", \"a;b\"]\ndrain-timeout = \"10m\"\n",
            out.display()
        ),
    )
    .expect("config");
    let (mut guard, _log) = start(dir.path(), &["--config", config.to_str().expect("utf-8")]);
    assert_eq!(guard.ctl(&["drain"]).0, 0);
    wait_until("the command ran", SOON, || !read(&out).is_empty());
    assert_eq!(read(&out), "$HOME|a;b|");
    assert_eq!(guard.ctl(&["drained"]).0, 0);
    assert_eq!(guard.code(), 0);
}

#[test]
fn the_drill_shows_the_command_on_the_timeline() {
    let dir = scratch();
    let marker = dir.path().join("drill-agent");
    let mut drill = Command::new(bin());
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AGENT_GUARD_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            drill.env_remove(&key);
        }
    }
    let out = drill
        .args([
            "drill",
            "scale-in",
            "--on-drain",
            "echo draining",
            "--drain-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "trap 'exit 0' TERM; while :; do sleep 0.1; done",
            marker.to_str().expect("utf-8"),
        ])
        .output()
        .expect("the drill runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("the --on-drain command"), "{text}");
    assert!(text.contains("on-drain started"), "{text}");
    assert!(text.contains("on-drain ended"), "{text}");
    assert!(text.contains("exited with code 0"), "{text}");
}

/// With a cgroup, the command runs in one beside the agent's: a `setsid` helper it leaves behind
/// (which its process group cannot hold) is killed with it once the agent is gone, before the
/// termination hook is completed. Without one (`--cgroup off`), only its process group is killed.
#[test]
fn what_the_command_leaves_behind_does_not_outlive_the_hook() {
    use crate::cgroup::{cgroups_here, pid_in, reap_leftover, scale_in_guard};
    if !cgroups_here() {
        return;
    }
    let dir = scratch();
    let helper = dir.path().join("helper.pid");
    let command = format!(
        "setsid sh -c 'trap \"\" TERM; echo $$ > {h}.tmp; mv {h}.tmp {h}; exec sleep 600' & exit 0",
        h = helper.display()
    );
    let options = ["--on-drain", &command, "--drain-timeout", "1s"];
    let (imds, asg, mut guard) = scale_in_guard(dir.path(), &options, "exec sleep 600");
    asg.terminate("workers", "i-0123456789abcdef0");
    imds.set_lifecycle_state(Some("Terminated"));
    let helper_pid = pid_in(&helper);
    wait_until("the hook is completed", SOON * 2, || {
        asg.calls()
            .iter()
            .any(|c| c.action == "CompleteLifecycleAction")
    });
    let outlived = !gone(helper_pid);
    reap_leftover(helper_pid);
    assert!(
        !outlived,
        "the --on-drain command's helper outlived the hook:\n{}",
        guard.log()
    );
    assert_eq!(guard.code(), 143, "{}", guard.log());
}
