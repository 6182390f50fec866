//! The agent starts with the signal state exec would give it: every signal the guard's parent did
//! not ignore at its default, none blocked; one the parent ignored stays ignored and is not
//! forwarded (`nohup` works), as tini keeps it. And a signal that comes before the guard's
//! handlers exist does not kill it.

use std::os::unix::process::CommandExt;
use std::path::Path;

use crate::support::{Guard, SOON, command, read, scratch, wait_until};

/// The SigBlk and SigIgn masks of the agent, which writes its /proc status to `out` first.
fn masks(out: &Path) -> (u64, u64) {
    wait_until("the agent wrote its masks", SOON, || {
        read(out).lines().count() == 2
    });
    let text = read(out);
    let mask = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {text}"));
        let hex = line.split_whitespace().nth(1).unwrap_or("?");
        u64::from_str_radix(hex, 16).expect("a hex mask")
    };
    (mask("SigBlk:"), mask("SigIgn:"))
}

fn agent_script(out: &Path) -> String {
    format!(
        "grep -E '^Sig(Blk|Ign)' /proc/self/status > {o}.part && mv {o}.part {o}; exec sleep 300",
        o = out.display()
    )
}

fn bit(sig: i32) -> u64 {
    1 << (sig - 1)
}

/// Signals 32 and 33 (the C library's own) used to reach the agent ignored when it was started
/// by posix_spawn; with `--watchdog` (a fork) they did not. Both ways now give the same.
#[test]
fn the_agent_starts_with_no_signal_ignored_or_blocked() {
    for extra in [&[][..], &["--watchdog", "1h"][..]] {
        let dir = scratch();
        let out = dir.path().join("masks");
        let script = agent_script(&out);
        let mut args: Vec<&str> = extra.to_vec();
        args.extend(["--", "sh", "-c", &script]);
        let mut guard = Guard::start(dir.path(), args);
        let (blocked, ignored) = masks(&out);
        assert_eq!(blocked, 0, "{extra:?}: nothing blocked");
        assert_eq!(
            ignored, 0,
            "{extra:?}: nothing ignored (SigIgn {ignored:016x})"
        );
        guard.signal(libc::SIGTERM);
        assert_eq!(guard.code(), 143, "log:\n{}", guard.log());
    }
}

/// tini's own test: what the caller ignored stays ignored for the child. `nohup agent-guard …`
/// ignores SIGHUP: a `kill -HUP` then reaches neither the guard nor the agent.
#[test]
fn signals_ignored_at_start_stay_ignored_and_are_not_forwarded_as_tini_keeps_them() {
    let dir = scratch();
    let out = dir.path().join("masks");
    let mut cmd = command();
    cmd.args(["--", "sh", "-c", &agent_script(&out)]);
    // SAFETY: signal(2) in the forked child before exec, as nohup and `trap '' PIPE` do.
    unsafe {
        cmd.pre_exec(|| {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut guard = Guard::spawn(dir.path(), cmd);
    let (blocked, ignored) = masks(&out);
    assert_eq!(blocked, 0);
    assert_eq!(
        ignored,
        bit(libc::SIGHUP) | bit(libc::SIGPIPE),
        "exactly what the caller ignored (SigIgn {ignored:016x})"
    );
    // Forwarded signals keep their order: had SIGHUP been passed on, the agent (which ignores
    // it) would survive it anyway, so the proof is the guard's: it is still there, and the
    // USR1 after it is what ends the agent.
    guard.signal(libc::SIGHUP);
    guard.signal(libc::SIGUSR1);
    assert_eq!(
        guard.code(),
        128 + libc::SIGUSR1,
        "the agent died of SIGUSR1; log:\n{}",
        guard.log()
    );
}

/// A HUP or USR1 that arrives while the guard is still starting (here: waiting up to 10 s for a
/// required IMDS that accepts connections and never answers) must not kill it; a SIGTERM then
/// ends the wait at once, without starting an agent only to drain it.
#[test]
fn a_signal_before_the_agent_starts_does_not_kill_the_guard() {
    let dir = scratch();
    let imds = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let endpoint = format!("http://{}", imds.local_addr().expect("its address"));
    let mut guard = Guard::start(
        dir.path(),
        [
            "--imds",
            "on",
            "--imds-endpoint",
            &endpoint,
            "--",
            "sleep",
            "300",
        ],
    );
    // The guard is waiting for IMDS once it has connected.
    let (_held, _) = imds.accept().expect("the guard connects");
    guard.signal(libc::SIGHUP);
    guard.signal(libc::SIGUSR1);
    guard.signal(libc::SIGTERM);
    let status = guard.wait(std::time::Duration::ZERO);
    let log = guard.log();
    assert_eq!(
        status.code(),
        Some(0),
        "not killed by SIGHUP or SIGUSR1; stopped by SIGTERM: {status:?}\n{log}"
    );
    assert!(log.contains("while waiting for IMDS"), "{log}");
    assert!(
        !log.contains("agent started"),
        "no agent was started: {log}"
    );
}
