//! Signals sent to the guard reach the agent: its whole group by default, or the agent alone.

use crate::support::{
    Guard, SOON, bin, fixture, read, recorded, require_tool, scratch, unique_socket, wait_until,
};

/// Every catchable signal the guard forwards, by the name Python's `signal` module records.
/// SIGTSTP is forwarded too, and then stops the guard (`job_control.rs`); the fault signals are
/// in `fault_signals.rs`.
fn forwarded() -> Vec<(i32, String)> {
    let mut sigs: Vec<(i32, String)> = [
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGSTKFLT, "SIGSTKFLT"),
        (libc::SIGCONT, "SIGCONT"),
        (libc::SIGURG, "SIGURG"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGWINCH, "SIGWINCH"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
    ]
    .iter()
    .map(|(n, s)| (*n, s.to_string()))
    .collect();
    sigs.push((libc::SIGRTMIN(), "SIGRTMIN".to_string()));
    sigs.push((libc::SIGRTMAX(), "SIGRTMAX".to_string()));
    sigs
}

#[test]
fn every_forwarded_signal_reaches_the_agent() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--".as_ref(),
            fixture("recorder.py").as_os_str(),
            log.as_os_str(),
        ],
    );
    wait_until("the agent is up", SOON, || {
        dir.path().join("signals.log.ready").exists()
    });
    for (n, (sig, name)) in forwarded().into_iter().enumerate() {
        guard.signal(sig);
        wait_until(&format!("{name} reaches the agent"), SOON, || {
            recorded(&log).len() > n
        });
        assert_eq!(recorded(&log)[n], name, "signal {n} in order");
    }
    guard.signal(libc::SIGTERM);
    assert_eq!(
        guard.code(),
        0,
        "the agent exits 0 on SIGTERM; log:\n{}",
        guard.log()
    );
    assert_eq!(recorded(&log).last().map(String::as_str), Some("SIGTERM"));
}

/// An agent (parent.log) that started a helper (child.log) in its own process group.
fn family(dir: &std::path::Path, forward_to: &str) -> Guard {
    let recorder = fixture("recorder.py");
    let script = format!(
        "{r} {d}/helper.log & exec {r} {d}/agent.log",
        r = recorder.display(),
        d = dir.display()
    );
    let guard = Guard::start(dir, ["--forward-to", forward_to, "--", "sh", "-c", &script]);
    wait_until("agent and helper are up", SOON, || {
        dir.join("agent.log.ready").exists() && dir.join("helper.log.ready").exists()
    });
    guard
}

#[test]
fn forward_to_group_reaches_every_member() {
    let dir = scratch();
    let mut guard = family(dir.path(), "group");
    guard.signal(libc::SIGUSR1);
    wait_until("both get SIGUSR1", SOON, || {
        read(dir.path().join("agent.log")).contains("SIGUSR1")
            && read(dir.path().join("helper.log")).contains("SIGUSR1")
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

#[test]
fn forward_to_child_reaches_the_agent_alone() {
    let dir = scratch();
    let mut guard = family(dir.path(), "child");
    guard.signal(libc::SIGUSR1);
    wait_until("the agent gets SIGUSR1", SOON, || {
        read(dir.path().join("agent.log")).contains("SIGUSR1")
    });
    // The stop signal still goes to the whole group.
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let helper = read(dir.path().join("helper.log"));
    assert!(helper.contains("SIGTERM"), "{helper}");
    // No window to guess: had SIGUSR1 gone to the group, it was pending in the helper before
    // SIGTERM was even sent, and the helper records what it receives in order before it exits.
    assert!(
        !helper.contains("SIGUSR1"),
        "the helper must not get a signal forwarded to the child alone: {helper}"
    );
}

/// The bits of SIGTTIN and SIGTTOU in a `/proc/PID/status` signal mask line's hex value.
fn job_control_bits(mask_line: &str) -> u64 {
    let hex = mask_line.split_whitespace().nth(1).unwrap_or("0");
    let mask = u64::from_str_radix(hex, 16).expect("a hex mask");
    mask & ((1 << (libc::SIGTTIN - 1)) | (1 << (libc::SIGTTOU - 1)))
}

/// Without a terminal (stdin, stdout and stderr are not one here), SIGTTIN and SIGTTOU sent to
/// the guard neither stop it nor reach the agent, and the agent starts with both at their
/// default: neither ignored nor blocked.
#[test]
fn job_control_signals_neither_stop_the_guard_nor_reach_the_agent() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let status = dir.path().join("status.txt");
    let script = format!(
        "grep -E '^Sig(Ign|Blk)' /proc/self/status > {s}; exec {r} {l}",
        s = status.display(),
        r = fixture("recorder.py").display(),
        l = log.display()
    );
    let mut guard = Guard::start(dir.path(), ["--", "sh", "-c", &script]);
    wait_until("the agent is up", SOON, || {
        dir.path().join("signals.log.ready").exists()
    });
    let masks = read(&status);
    assert_eq!(masks.lines().count(), 2, "SigBlk and SigIgn: {masks}");
    for line in masks.lines() {
        assert_eq!(
            job_control_bits(line),
            0,
            "the agent starts with SIGTTIN and SIGTTOU neither blocked nor ignored: {line}"
        );
    }
    guard.signal(libc::SIGTTIN);
    guard.signal(libc::SIGTTOU);
    guard.signal(libc::SIGUSR1);
    wait_until("SIGUSR1 reaches the agent", SOON, || {
        !recorded(&log).is_empty()
    });
    let state = crate::support::process(guard.pid()).map(|p| p.state);
    assert!(
        matches!(state, Some('S' | 'R')),
        "the guard runs on, not stopped: {state:?}"
    );
    assert_eq!(
        recorded(&log),
        ["SIGUSR1"],
        "only SIGUSR1 was forwarded, not the job control signals"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "log:\n{}", guard.log());
}

/// The guard runs unmodified under valgrind, as packaging/startup-order.sh profiles it (the
/// constants' names it lists depend on every byte of the code, so the profiled build cannot be
/// an edited one). Valgrind keeps the highest realtime signal for itself and shows it as
/// ignored; the guard leaves a signal ignored at its start alone and forwards the others.
#[test]
fn under_valgrind_the_guard_starts_without_the_reserved_signal_and_forwards_the_others() {
    if !require_tool("valgrind") {
        return;
    }
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut cmd = std::process::Command::new("valgrind");
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AGENT_GUARD_IMDS", "off")
        .env("AGENT_GUARD_HEALTH_LISTEN", "off")
        .env("AGENT_GUARD_SOCKET", unique_socket())
        .args(["--tool=none", "--quiet", bin(), "--"])
        .arg(fixture("recorder.py"))
        .arg(&log);
    let mut guard = Guard::spawn(dir.path(), cmd);
    // Slow to start under valgrind: it reads the whole debug build's symbols first.
    wait_until("the agent is up", SOON * 4, || {
        dir.path().join("signals.log.ready").exists()
    });
    guard.signal(libc::SIGUSR1);
    wait_until("SIGUSR1 reaches the agent", SOON, || {
        !recorded(&log).is_empty()
    });
    assert_eq!(recorded(&log), ["SIGUSR1"]);
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "log:\n{}", guard.log());
}
