//! The graceful stop: drain signal → drain timeout → stop signal → grace → SIGKILL, and nothing
//! of the agent's process group left behind.

use std::time::{Duration, Instant};

use crate::support::{Guard, SOON, fixture, gone, read, recorded, scratch, wait_until};

#[test]
fn an_agent_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--stop-timeout".as_ref(),
            "1s".as_ref(),
            "--".as_ref(),
            fixture("recorder.py").as_os_str(),
            log.as_os_str(),
            "--ignore-term".as_ref(),
        ],
    );
    wait_until("the agent is up", SOON, || {
        dir.path().join("signals.log.ready").exists()
    });
    let sent = Instant::now();
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 137, "SIGKILL; log:\n{}", guard.log());
    let took = sent.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL came before the grace ended: {took:?}"
    );
    assert_eq!(recorded(&log), ["SIGTERM"], "it got the stop signal first");
    let log = guard.log();
    let stop = log
        .find("sent the stop signal")
        .expect("stop signal logged");
    let kill = log.find("sent SIGKILL").expect("SIGKILL logged");
    assert!(stop < kill, "{log}");
}

#[test]
fn a_second_stop_signal_kills_at_once() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--stop-timeout".as_ref(),
            "10m".as_ref(),
            "--".as_ref(),
            fixture("recorder.py").as_os_str(),
            log.as_os_str(),
            "--ignore-term".as_ref(),
        ],
    );
    wait_until("the agent is up", SOON, || {
        dir.path().join("signals.log.ready").exists()
    });
    guard.signal(libc::SIGTERM);
    wait_until("the agent gets SIGTERM", SOON, || {
        read(&log).contains("SIGTERM")
    });
    guard.signal(libc::SIGINT);
    // Well inside the 10-minute grace: only the second signal can have ended it.
    assert_eq!(guard.code(), 137, "{}", guard.log());
}

#[test]
fn the_drain_signal_comes_first_then_the_stop_signal_after_the_drain_timeout() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--drain-signal".as_ref(),
            "USR2".as_ref(),
            "--drain-timeout".as_ref(),
            "1s".as_ref(),
            "--".as_ref(),
            fixture("recorder.py").as_os_str(),
            log.as_os_str(),
            "--exit".as_ref(),
            "7".as_ref(),
        ],
    );
    wait_until("the agent is up", SOON, || {
        dir.path().join("signals.log.ready").exists()
    });
    let sent = Instant::now();
    guard.signal(libc::SIGTERM);
    assert_eq!(
        guard.code(),
        7,
        "the agent's own code; log:\n{}",
        guard.log()
    );
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "the drain timeout was honoured"
    );
    assert_eq!(recorded(&log), ["SIGUSR2", "SIGTERM"]);
}

#[test]
fn an_agent_that_exits_during_the_drain_ends_it() {
    let dir = scratch();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap 'exit 5' USR1; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let mut guard = Guard::start(
        dir.path(),
        [
            "--drain-signal",
            "USR1",
            "--drain-timeout",
            "10m",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    wait_until("the agent is up", SOON, || ready.exists());
    guard.signal(libc::SIGTERM);
    // Well inside the 10-minute drain: only the agent's own exit can have ended it.
    assert_eq!(guard.code(), 5, "{}", guard.log());
    assert!(
        !guard.log().contains("sent the stop signal"),
        "no stop signal was needed: {}",
        guard.log()
    );
}

#[test]
fn a_grandchild_that_ignores_sigterm_is_gone_when_the_guard_exits() {
    let dir = scratch();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("{}; wait", ignoring_grandchild(&pidfile));
    let mut guard = Guard::start(
        dir.path(),
        ["--stop-timeout", "1s", "--", "sh", "-c", &script],
    );
    wait_until("the grandchild runs", SOON, || {
        !read(&pidfile).trim().is_empty()
    });
    let grandchild: i32 = read(&pidfile).trim().parse().expect("a pid");
    assert!(!gone(grandchild));
    guard.signal(libc::SIGTERM);
    assert_eq!(
        guard.code(),
        143,
        "the agent died of SIGTERM; log:\n{}",
        guard.log()
    );
    assert!(
        gone(grandchild),
        "grandchild {grandchild} outlived the guard"
    );
    assert!(guard.log().contains("sent SIGKILL"), "{}", guard.log());
}

#[test]
fn leftovers_of_an_agent_that_exits_by_itself_are_stopped_then_killed() {
    let dir = scratch();
    let pidfile = dir.path().join("grandchild.pid");
    let script = format!("{}; exit 3", ignoring_grandchild(&pidfile));
    let started = Instant::now();
    let mut guard = Guard::start(
        dir.path(),
        ["--stop-timeout", "1s", "--", "sh", "-c", &script],
    );
    assert_eq!(guard.code(), 3, "{}", guard.log());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "the leftover got its grace"
    );
    let grandchild: i32 = read(&pidfile).trim().parse().expect("a pid");
    assert!(
        gone(grandchild),
        "grandchild {grandchild} outlived the guard"
    );
}

/// Shell that starts a grandchild ignoring SIGTERM and returns only once the grandchild has
/// set its trap and written its pid: before that, a stop signal would still kill it.
pub fn ignoring_grandchild(pidfile: &std::path::Path) -> String {
    let p = pidfile.display();
    format!(
        "sh -c 'trap \"\" TERM; echo $$ > {p}.tmp; mv {p}.tmp {p}; exec sleep 600' & \
         while [ ! -s {p} ]; do sleep 0.01; done"
    )
}
