//! Orphans are reaped (as a subreaper and as PID 1), a burst of them at once included, and the
//! agent's own status is never stolen by the reaping.

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::process::Command;

use crate::support::{Guard, SOON, children, command, process, read, scratch, wait_until};

const ORPHANS: usize = 200;

/// An agent that leaves ORPHANS orphans blocked reading `fifo`, then blocks reading it too and
/// exits 7. The agent opens the fifo once, first, and every reader inherits that descriptor: none
/// can be late to open it (a reader that opened it only after the writer closed would block
/// forever). Closing the test's end ([`hold`], [`release`]) then gives all of them end-of-file at
/// the same instant, so their SIGCHLDs coalesce.
fn burst_script(fifo: &Path, ready: &Path) -> String {
    format!(
        "exec 3< {f}; i=0; while [ $i -lt {ORPHANS} ]; do (cat <&3 > /dev/null &); i=$((i+1)); done; \
         touch {r}; cat <&3 > /dev/null; exit 7",
        f = fifo.display(),
        r = ready.display()
    )
}

/// Opens the fifo for writing, before the agent starts, so that the agent's open for reading
/// returns at once (read-write: on Linux that open never blocks).
fn hold(fifo: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(fifo)
        .expect("open the fifo read-write")
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo runs");
    assert!(status.success());
}

/// Closes the only writer: every reader sees end-of-file at once.
fn release(writer: File) {
    drop(writer);
}

fn zombies_of(pid: i32) -> usize {
    children(pid).iter().filter(|p| p.state == 'Z').count()
}

#[test]
fn a_burst_of_orphans_is_reaped_by_a_subreaper_and_the_agent_status_kept() {
    let dir = scratch();
    let fifo = dir.path().join("fifo");
    let ready = dir.path().join("ready");
    mkfifo(&fifo);
    let writer = hold(&fifo);
    let mut guard = Guard::start(
        dir.path(),
        [
            "--subreaper",
            "--log-level",
            "debug",
            "--",
            "sh",
            "-c",
            &burst_script(&fifo, &ready),
        ],
    );
    wait_until("the agent started its orphans", SOON, || ready.exists());
    let guard_pid = guard.pid();
    // The subshells exit at once, so their `cat`s are handed to the guard.
    wait_until("the guard adopts every orphan", SOON, || {
        children(guard_pid).len() > ORPHANS
    });
    release(writer);
    assert_eq!(
        guard.code(),
        7,
        "the agent's status survives the burst; log:\n{}",
        guard.log()
    );
    let log = guard.log();
    assert!(
        log.contains(&format!("orphans_reaped={ORPHANS}")),
        "every orphan reaped; log tail:\n{}",
        log.lines().rev().take(3).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn orphans_are_reaped_while_the_agent_runs() {
    let dir = scratch();
    let ready = dir.path().join("ready");
    let script = format!(
        "for i in 1 2 3 4 5; do (sleep 0.2 &); done; touch {}; sleep 600",
        ready.display()
    );
    let mut guard = Guard::start(dir.path(), ["--subreaper", "--", "sh", "-c", &script]);
    wait_until("the agent started its orphans", SOON, || ready.exists());
    let guard_pid = guard.pid();
    // Only the agent stays a child: the orphans were adopted, exited and were reaped.
    wait_until("no orphan or zombie is left", SOON, || {
        let kids = children(guard_pid);
        kids.len() == 1 && zombies_of(guard_pid) == 0
    });
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}

#[test]
fn as_pid_1_in_a_pid_namespace_orphans_are_reaped() {
    let dir = scratch();
    let fifo = dir.path().join("fifo");
    let ready = dir.path().join("ready");
    mkfifo(&fifo);
    let writer = hold(&fifo);
    // Can this machine make a PID namespace at all? If not, say so visibly and skip.
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            crate::support::require(false, &format!("unshare --pid is not allowed here: {why}"));
            return;
        }
        Err(err) => {
            crate::support::require(false, &format!("no unshare: {err}"));
            return;
        }
    }
    let mut cmd = command();
    let mut unshare = Command::new("unshare");
    unshare
        .args(["--pid", "--fork", "--kill-child", "--"])
        .arg(cmd.get_program())
        .args(["--", "sh", "-c", &burst_script(&fifo, &ready)]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => unshare.env(k, v),
            None => unshare.env_remove(k),
        };
    }
    cmd = unshare;
    let mut outer = Guard::spawn(dir.path(), cmd);
    wait_until("the agent started its orphans", SOON, || ready.exists());
    // unshare's only child is the guard, PID 1 inside the namespace.
    let guard_pid = children(outer.pid())
        .first()
        .map(|p| p.pid)
        .expect("the guard runs");
    let status = read(format!("/proc/{guard_pid}/status"));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "the guard is PID 1 in its namespace:\n{status}"
    );
    wait_until("the guard (PID 1) adopts every orphan", SOON, || {
        children(guard_pid).len() > ORPHANS
    });
    release(writer);
    wait_until("the guard exits", SOON, || {
        process(guard_pid).is_none_or(|p| p.state == 'Z')
    });
    assert_eq!(outer.code(), 7, "the agent's status; log:\n{}", outer.log());
}

/// Neither PID 1 nor a subreaper, the guard says once at start that orphans are not its to reap,
/// as tini warns; with `--subreaper` it says nothing of the kind.
#[test]
fn without_subreaper_the_guard_says_once_that_orphans_are_reaped_above_it() {
    const LINE: &str = "not PID 1 and not a child subreaper";
    for (args, said) in [(&[][..], 1), (&["--subreaper"][..], 0)] {
        let dir = scratch();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--", "true"]);
        let mut guard = Guard::start(dir.path(), all);
        assert_eq!(guard.code(), 0, "log:\n{}", guard.log());
        let log = guard.log();
        assert_eq!(log.matches(LINE).count(), said, "{args:?}; log:\n{log}");
    }
}
