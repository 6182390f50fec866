//! `--on-drain` bounded: a command that cannot start does not cost the agent its whole
//! `--drain-timeout`; a chatty command cannot flood the guard's log (lines per second and bytes
//! per drain, then one line saying how much was dropped); and a guard whose stderr nobody reads
//! still makes every decision on time (its log is written by a thread of its own, through a
//! bounded queue).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{AutoScalingSim, Hook, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{Guard, SOON, aws_command, command, fixture, gone, read, scratch, wait_until};

/// Starts a guard around the fixture agent that runs until SIGTERM (and logs when).
fn start(dir: &Path, options: &[&str]) -> (Guard, std::path::PathBuf) {
    let log = dir.join("agent.log");
    let mut cmd = command();
    cmd.args(options)
        .arg("--")
        .arg(fixture("restarting_agent.sh"))
        .arg(&log)
        .arg("stay");
    let guard = Guard::spawn(dir, cmd);
    wait_until("the agent", SOON, || read(&log).contains("start"));
    (guard, log)
}

#[test]
fn a_command_that_cannot_start_gets_the_agent_its_stop_signal_at_once() {
    let dir = scratch();
    let config = dir.path().join("guard.toml");
    std::fs::write(
        &config,
        "on-drain = [\"/nonexistent/drain-command\"]\ndrain-timeout = \"10m\"\n",
    )
    .expect("config");
    let (mut guard, log) = start(dir.path(), &["--config", config.to_str().expect("utf-8")]);
    let asked = Instant::now();
    assert_eq!(guard.ctl(&["drain"]).0, 0);
    // Not after the 10-minute drain timeout: nothing else can tell the agent.
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(asked.elapsed() < SOON);
    assert!(read(&log).contains("term "), "the stop signal, not a kill");
    let text = guard.log();
    assert!(
        text.contains("cannot start the --on-drain command")
            && text.contains("gets its stop signal now"),
        "{text}"
    );
}

#[test]
fn a_chatty_command_is_capped_per_drain_then_one_line_says_how_much_was_dropped() {
    let dir = scratch();
    let (mut guard, _log) = start(
        dir.path(),
        &[
            "--on-drain",
            "yes 'a chatty drain command says the same thing again and again'",
            "--drain-timeout",
            "3s",
        ],
    );
    assert_eq!(guard.ctl(&["drain"]).0, 0);
    assert_eq!(guard.code(), 0, "the agent's own status");
    let text = guard.log();
    let shown = text
        .lines()
        .filter(|l| l.contains("on-drain stdout:"))
        .count();
    assert!(
        shown > 0,
        "some of it is shown:\n{}",
        &text[..text.len().min(4000)]
    );
    // 3 s of drain at most 100 lines a second (and a burst of 100), far from the millions the
    // command wrote.
    assert!(
        shown <= 600,
        "{shown} lines of the command's output were logged"
    );
    let dropped: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("dropped") && l.contains("--on-drain"))
        .collect();
    assert_eq!(
        dropped.len(),
        1,
        "one line says what was dropped:\n{dropped:?}"
    );
    assert!(
        text.len() < 2_000_000,
        "the guard's log stays small: {} bytes",
        text.len()
    );
}

#[test]
fn a_stalled_stderr_reader_never_stops_a_decision() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance("workers", "i-0123456789abcdef0", "InService");
    asg.put_hook(
        "workers",
        Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(30)),
    );
    let pidfile = dir.path().join("agent.pid");
    let mut cmd: Command = aws_command(&imds, &asg);
    cmd.env("AGENT_GUARD_HOOKS_DIR", dir.path().join("hooks"))
        .args(["--terminate-hook", "drain-hook", "--asg-name", "workers"])
        .args(["--drain-timeout", "2s", "--stop-timeout", "2s"])
        .args(["--on-drain", "yes 'on-drain output nobody will read'"])
        // The agent ignores SIGTERM: only the SIGKILL at its deadline ends it.
        .arg("--")
        .args(["sh", "-c"])
        .arg(format!(
            "trap '' TERM; echo $$ > {}; while :; do sleep 1; done",
            pidfile.display()
        ))
        .stdout(Stdio::null())
        // A pipe nobody reads: once its buffer is full, every write to it blocks.
        .stderr(Stdio::piped());
    let mut guard = cmd.spawn().expect("agent-guard starts");
    let _unread = guard.stderr.take();
    wait_until("the agent", SOON, || !read(&pidfile).trim().is_empty());
    let agent: i32 = read(&pidfile).trim().parse().expect("the agent's pid");
    asg.terminate("workers", "i-0123456789abcdef0");
    imds.set_lifecycle_state(Some("Terminated"));
    // Drain 2 s, then SIGTERM (ignored), then SIGKILL 2 s later: well within the bound.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = guard.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > SOON * 2 {
            let _ = guard.kill();
            let _ = guard.wait();
            panic!("the guard made no decision while its stderr was not read");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(137),
        "the agent SIGKILLed at its deadline"
    );
    assert!(gone(agent), "the agent is gone");
    let completions = asg.completions();
    assert_eq!(
        completions.len(),
        1,
        "the hook was completed: {completions:?}"
    );
    assert_eq!(completions[0].result, "ABANDON", "an unclean stop");
}
