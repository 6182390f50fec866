//! Where signals go while the agent has a cgroup: the stop signal to every process in it on every
//! path that sends one (the drain deadline, the restart's clean-up of the last agent's leftovers)
//! and SIGKILL (`cgroup.kill`) on a second stop signal; forwarded signals (SIGHUP, the drain
//! signal) to the agent's process group only, as tini and dumb-init send them, so that a
//! `setsid` helper that would die of a SIGHUP or SIGUSR1 it does not expect is not killed by one.

use std::path::Path;
use std::time::Duration;

use crate::cgroup::{cgroups_here, pid_in, reap_leftover};
use crate::support::{Guard, SOON, command, gone, have, read, require, scratch, wait_until};

/// A process that records every HUP, USR1 and TERM it gets in `OUT` (one name a line) and its
/// pid in `OUT.pid`. As `agent`, it first starts a `grandchild` of itself in a session of its
/// own (outside the agent's process group, inside its cgroup) and waits for its pid. TERM ends
/// it unless `ignore-term`; as `agent-exits` it exits 3 by itself once the grandchild runs; an
/// agent started again (the grandchild's pid file is there) records whether the last agent's
/// grandchild still ran when it started (`gc-alive` or `gc-gone`) and starts none.
const RECORDER: &str = r#"import os, signal, subprocess, sys, time
out, role, extra = sys.argv[1], sys.argv[2], sys.argv[3:]
done = []
def record(sig, _):
    with open(out, "a") as f:
        f.write(signal.Signals(sig).name + "\n")
    if sig == signal.SIGTERM and "ignore-term" not in extra:
        done.append(sig)
for s in (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
    signal.signal(s, record)
def runs(pid):
    try:
        stat = open("/proc/%d/stat" % pid).read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"
if role.startswith("agent"):
    gc = os.path.join(os.path.dirname(out), "gc")
    if os.path.exists(gc + ".pid"):
        with open(out, "a") as f:
            f.write("gc-alive\n" if runs(int(open(gc + ".pid").read())) else "gc-gone\n")
    else:
        subprocess.Popen([sys.executable, __file__, gc, "grandchild"] + extra, start_new_session=True)
        while not os.path.exists(gc + ".pid"):
            time.sleep(0.01)
        if role == "agent-exits":
            sys.exit(3)
open(out + ".pid.tmp", "w").write(str(os.getpid()))
os.rename(out + ".pid.tmp", out + ".pid")
while not done:
    signal.pause()
"#;

/// A guard (with `options`) around the recorder as `role`; the agent's and the grandchild's
/// records are `dir/agent` and `dir/gc`.
fn start(dir: &Path, options: &[&str], role: &str, extra: &[&str]) -> Guard {
    let script = dir.join("recorder.py");
    std::fs::write(&script, RECORDER).expect("write the recorder");
    let mut cmd = command();
    cmd.args(options)
        .args(["--cgroup", "require", "--", "python3"])
        .arg(&script)
        .arg(dir.join("agent"))
        .arg(role)
        .args(extra);
    Guard::spawn(dir, cmd)
}

fn lines(path: &Path) -> Vec<String> {
    read(path).lines().map(str::to_string).collect()
}

fn ready() -> bool {
    cgroups_here() && require(have("python3"), "python3 is not installed")
}

#[test]
fn forwarded_signals_reach_the_process_group_and_the_drain_deadlines_stop_signal_the_cgroup() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let options = ["--drain-signal", "USR1", "--drain-timeout", "1s"];
    let mut guard = start(dir.path(), &options, "agent", &[]);
    let gc = pid_in(&dir.path().join("gc.pid"));
    pid_in(&dir.path().join("agent.pid"));
    guard.signal(libc::SIGHUP);
    wait_until("the agent got SIGHUP", SOON, || {
        lines(&dir.path().join("agent")).contains(&"SIGHUP".to_string())
    });
    // The stop signal starts a drain (USR1, forwarded); past its 1 s deadline, SIGTERM to all.
    guard.signal(libc::SIGTERM);
    let status = guard.wait(Duration::ZERO);
    let left = reap_leftover(gc);
    assert_eq!(
        lines(&dir.path().join("agent")),
        ["SIGHUP", "SIGUSR1", "SIGTERM"],
        "{}",
        guard.log()
    );
    assert_eq!(
        lines(&dir.path().join("gc")),
        ["SIGTERM"],
        "forwarded signals stay in the agent's process group; the stop signal reaches the \
         grandchild\n{}",
        guard.log()
    );
    assert!(!left, "the grandchild outlived the guard ({status:?})");
}

#[test]
fn a_second_stop_signal_kills_what_ignores_the_first_with_the_cgroup() {
    if !ready() {
        return;
    }
    let dir = scratch();
    // A stop timeout the test would never wait for: only the second signal can end it soon.
    let mut guard = start(
        dir.path(),
        &["--stop-timeout", "1h"],
        "agent",
        &["ignore-term"],
    );
    let gc = pid_in(&dir.path().join("gc.pid"));
    let agent = pid_in(&dir.path().join("agent.pid"));
    guard.signal(libc::SIGTERM);
    wait_until("the grandchild got the stop signal", SOON, || {
        lines(&dir.path().join("gc")).contains(&"SIGTERM".to_string())
    });
    assert!(!gone(gc) && !gone(agent), "both ignore SIGTERM");
    guard.signal(libc::SIGTERM);
    let status = guard.wait(Duration::ZERO);
    let left = reap_leftover(gc);
    assert!(
        !left,
        "the grandchild outlived the guard ({status:?}):\n{}",
        guard.log()
    );
    assert!(
        guard.log().contains("cgroup.kill"),
        "SIGKILL went to the cgroup:\n{}",
        guard.log()
    );
}

#[test]
fn a_restart_clears_the_last_agents_setsid_leftovers_first() {
    if !ready() {
        return;
    }
    let dir = scratch();
    let options = ["--restart", "always", "--restart-delay", "100ms"];
    let mut guard = start(dir.path(), &options, "agent-exits", &[]);
    let gc = pid_in(&dir.path().join("gc.pid"));
    wait_until("the agent started again", SOON, || {
        read(dir.path().join("agent")).contains("gc-")
    });
    guard.signal(libc::SIGTERM);
    let _ = guard.wait(Duration::ZERO);
    let left = reap_leftover(gc);
    assert_eq!(
        lines(&dir.path().join("gc")),
        ["SIGTERM"],
        "{}",
        guard.log()
    );
    assert_eq!(
        lines(&dir.path().join("agent")),
        ["gc-gone", "SIGTERM"],
        "the last agent's grandchild was stopped before the next agent started\n{}",
        guard.log()
    );
    assert!(!left);
}
