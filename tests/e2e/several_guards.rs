//! Several guards on one instance (`agent-guard@worker` and `agent-guard@indexer`), sharing a
//! `--hooks-dir`: the termination hook is completed once, by the last guard whose agent is gone,
//! strictly after that agent's exit; a SIGKILLed guard holds nobody up; two agents exiting at the
//! same moment complete it exactly once; ABANDON from one guard wins; the launch hook waits for
//! every guard's agent to be ready.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{AutoScalingSim, Call, Hook, LAUNCHING, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{
    Guard, SOON, armed_shell, aws_command, first_time, fixture, json_lines, let_time_pass, scratch,
    wait_armed, wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";

/// One instance: its IMDS, its group, and the directory its guards share.
struct Host {
    imds: ImdsSim,
    asg: AutoScalingSim,
    dir: tempfile::TempDir,
}

fn host(hook: Hook) -> Host {
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    asg.put_hook(GROUP, hook);
    Host {
        imds,
        asg,
        dir: scratch(),
    }
}

fn terminate_host() -> Host {
    host(Hook::new("drain-hook", TERMINATING).heartbeat_timeout(Duration::from_secs(30)))
}

impl Host {
    fn hooks_dir(&self) -> PathBuf {
        self.dir.path().join("hooks")
    }

    /// A guard named `name` on this host, signing its calls with its own key.
    fn guard(&self, name: &str, options: &[&str], agent: &[&str]) -> Guard {
        let own = self.dir.path().join(name);
        std::fs::create_dir_all(&own).expect("guard dir");
        let mut cmd = aws_command(&self.imds, &self.asg);
        cmd.env("AWS_ACCESS_KEY_ID", key(name))
            .args(["--name", name, "--asg-name", GROUP, "--hooks-dir"])
            .arg(self.hooks_dir())
            .args(options)
            .arg("--")
            .args(agent);
        Guard::spawn(&own, cmd)
    }

    fn agent_log(&self, name: &str) -> PathBuf {
        self.dir.path().join(name).join("agent.log")
    }

    fn calls(&self, action: &str) -> Vec<Call> {
        self.asg
            .calls()
            .into_iter()
            .filter(|c| c.action == action)
            .collect()
    }

    fn completions_ok(&self) -> Vec<Call> {
        self.calls("CompleteLifecycleAction")
            .into_iter()
            .filter(|c| c.status == 200)
            .collect()
    }

    fn scale_in(&self) {
        self.asg.terminate(GROUP, INSTANCE);
        self.imds.set_lifecycle_state(Some("Terminated"));
    }
}

fn key(name: &str) -> String {
    format!("AKID{}", name.to_uppercase())
}

fn ready(guard: &Guard) {
    wait_until("lifecycle setup", SOON, || {
        guard.log().contains("lifecycle hooks ready")
    });
}

/// Two guards of the termination hook, ready: "killed" around a shell that runs `setup` (its
/// traps) and then loops (the test SIGKILLs this guard), and "survivor" around one that exits at
/// SIGTERM. Each shell says when its traps are set, and this returns only then: a guard is ready
/// before its agent's shell has read its first line, and a SIGTERM that came first would end the
/// shell by the default action instead of the trap.
fn killed_and_survivor(h: &Host, setup: &str) -> (Guard, Guard) {
    let armed = |name: &str| h.dir.path().join(format!("{name}.armed"));
    let killed_agent = armed_shell(setup, &armed("killed"));
    let survivor_agent = armed_shell("trap 'exit 0' TERM", &armed("survivor"));
    let killed = h.guard("killed", TERMINATE, &["sh", "-c", &killed_agent]);
    let survivor = h.guard("survivor", TERMINATE, &["sh", "-c", &survivor_agent]);
    ready(&killed);
    ready(&survivor);
    wait_armed(&armed("killed"));
    wait_armed(&armed("survivor"));
    (killed, survivor)
}

const TERMINATE: &[&str] = &[
    "--terminate-hook",
    "drain-hook",
    "--heartbeat-interval",
    "300ms",
    "--drain-timeout",
    "10m",
];

/// A socket agent that reports drained `after` seconds after the drain event, then exits on
/// SIGTERM, logging it first (its exit marker).
fn draining_agent<'a>(log: &'a Path, after: &'a str) -> Vec<String> {
    vec![
        fixture("socket_agent.py").display().to_string(),
        log.display().to_string(),
        "--drained-after".to_string(),
        after.to_string(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// CLOCK_MONOTONIC seconds at an `Instant` (the fixtures log on that clock).
fn mono(at: Instant) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let now = Instant::now();
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_now = ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    if at >= now {
        mono_now + (at - now).as_secs_f64()
    } else {
        mono_now - (now - at).as_secs_f64()
    }
}

#[test]
fn the_slow_agent_out_completes_strictly_after_its_exit_and_the_fast_guard_waits() {
    let h = terminate_host();
    let (fast_log, slow_log) = (h.agent_log("fast"), h.agent_log("slow"));
    let fast_agent = draining_agent(&fast_log, "0.1");
    let slow_agent = draining_agent(&slow_log, "3");
    let mut fast = h.guard("fast", TERMINATE, &strs(&fast_agent));
    let mut slow = h.guard("slow", TERMINATE, &strs(&slow_agent));
    ready(&fast);
    ready(&slow);
    wait_until("both agents subscribed", SOON, || {
        fast.status()["subscribers"] == 1 && slow.status()["subscribers"] == 1
    });
    h.scale_in();
    // The fast agent is gone; its guard stays until the hook is done, and says why.
    wait_until("the fast guard waits for the slow one", SOON, || {
        fast.status()["lifecycle"]["waiting_for"]["what"] == "other-guards"
    });
    let status = fast.status();
    assert_eq!(status["phase"], "exited", "{status}");
    let detail = status["lifecycle"]["waiting_for"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(detail.starts_with("slow (pid "), "{status}");
    assert!(
        h.completions_ok().is_empty(),
        "nothing completed while the slow agent drains"
    );
    assert_eq!(slow.code(), 0, "{}", slow.log());
    assert_eq!(fast.code(), 0, "{}", fast.log());

    let completes = h.calls("CompleteLifecycleAction");
    assert_eq!(
        completes.len(),
        1,
        "completed once, never refused: {completes:?}"
    );
    let done = &completes[0];
    assert_eq!(done.status, 200);
    assert_eq!(done.params["LifecycleActionResult"], "CONTINUE");
    assert_eq!(
        done.caller.as_deref(),
        Some(key("slow").as_str()),
        "the last one out"
    );
    let slow_exit = first_time(&json_lines(&slow_log), |e| e["signal"] == "SIGTERM")
        .expect("the slow agent's exit marker");
    let fast_exit = first_time(&json_lines(&fast_log), |e| e["signal"] == "SIGTERM")
        .expect("the fast agent's exit marker");
    assert!(fast_exit < slow_exit);
    assert!(
        mono(done.at) > slow_exit,
        "completed {:.3}s before the slow agent exited",
        slow_exit - mono(done.at)
    );
    assert!(
        fast.log()
            .contains("termination hook completed by slow (pid "),
        "{}",
        fast.log()
    );
}

#[test]
fn a_sigkilled_guard_and_its_agent_hold_nobody_up() {
    let h = terminate_host();
    let (a_log, b_log) = (h.agent_log("a"), h.agent_log("b"));
    let a_agent = draining_agent(&a_log, "0.1");
    let b_agent = draining_agent(&b_log, "0.1");
    let mut a = h.guard("a", TERMINATE, &strs(&a_agent));
    let mut b = h.guard("b", TERMINATE, &strs(&b_agent));
    // The third agent does not stop: its guard keeps the others waiting until it is killed.
    let mut c = h.guard(
        "c",
        &[TERMINATE, &["--stop-timeout", "10m"]].concat(),
        &["sh", "-c", "trap '' TERM; while :; do sleep 0.1; done"],
    );
    for g in [&a, &b, &c] {
        ready(g);
    }
    wait_until("a's and b's agents subscribed", SOON, || {
        a.status()["subscribers"] == 1 && b.status()["subscribers"] == 1
    });
    let c_agent = c.status()["agent_pid"].as_i64().expect("agent pid") as i32;
    h.scale_in();
    wait_until("a and b wait for c", SOON, || {
        [&a, &b].iter().all(|g| {
            g.status()["lifecycle"]["waiting_for"]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("c (pid "))
        })
    });
    assert!(h.completions_ok().is_empty());
    // As the OOM killer would: the guard, then its agent's whole group.
    c.signal(libc::SIGKILL);
    let _ = c.child.wait();
    // SAFETY: kill(2) on the process group of the agent that guard started.
    unsafe { libc::kill(-c_agent, libc::SIGKILL) };
    assert_eq!(a.code(), 0, "{}", a.log());
    assert_eq!(b.code(), 0, "{}", b.log());
    let completes = h.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "completed once: {completes:?}");
    assert_eq!(completes[0].status, 200);
    // The killed guard's agent did not stop cleanly: its --on-unclean-exit (abandon) counts.
    assert_eq!(completes[0].params["LifecycleActionResult"], "ABANDON");
    let completer = if completes[0].caller.as_deref() == Some(key("a").as_str()) {
        &a
    } else {
        &b
    };
    assert!(
        completer.log().contains("gone without a word"),
        "{}",
        completer.log()
    );
}

#[test]
fn two_agents_exiting_at_the_same_moment_complete_it_exactly_once() {
    for round in 0..3 {
        let h = terminate_host();
        let go = h.dir.path().join("go");
        // Both agents ignore SIGTERM and leave together, the moment `go` exists.
        let agent = format!(
            "trap '' TERM; while [ ! -e {} ]; do sleep 0.005; done",
            go.display()
        );
        let options = [TERMINATE, &["--stop-timeout", "10m"]].concat();
        let mut a = h.guard("a", &options, &["sh", "-c", &agent]);
        let mut b = h.guard("b", &options, &["sh", "-c", &agent]);
        ready(&a);
        ready(&b);
        h.scale_in();
        wait_until("both stop signals sent", SOON, || {
            a.status()["phase"] == "stopping" && b.status()["phase"] == "stopping"
        });
        std::fs::write(&go, "").expect("go");
        assert_eq!(a.code(), 0, "{}", a.log());
        assert_eq!(b.code(), 0, "{}", b.log());
        let completes = h.calls("CompleteLifecycleAction");
        assert_eq!(
            completes.len(),
            1,
            "round {round}: one call, and it succeeded: {completes:?}"
        );
        assert_eq!(completes[0].status, 200);
        assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    }
}

#[test]
fn abandon_from_one_guard_wins_over_continue() {
    let h = terminate_host();
    let armed = |name: &str| h.dir.path().join(format!("{name}.armed"));
    let clean_agent = armed_shell("trap 'exit 0' TERM", &armed("clean"));
    let failing_agent = armed_shell("trap 'sleep 0.5; exit 3' TERM", &armed("failing"));
    let mut clean = h.guard("clean", TERMINATE, &["sh", "-c", &clean_agent]);
    let mut failing = h.guard("failing", TERMINATE, &["sh", "-c", &failing_agent]);
    ready(&clean);
    ready(&failing);
    wait_armed(&armed("clean"));
    wait_armed(&armed("failing"));
    h.scale_in();
    assert_eq!(failing.code(), 3, "{}", failing.log());
    assert_eq!(clean.code(), 0, "{}", clean.log());
    let completes = h.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0].status, 200);
    assert_eq!(completes[0].params["LifecycleActionResult"], "ABANDON");
}

#[test]
fn the_launch_hook_waits_for_both_guards_to_be_ready() {
    let h = host(Hook::new("launch-hook", LAUNCHING).heartbeat_timeout(Duration::from_secs(60)));
    h.asg.launch(GROUP, INSTANCE);
    let options = ["--launch-hook", "launch-hook", "--ready-on", "notify"];
    let agent = |name: &str| {
        vec![
            fixture("notify_agent.py").display().to_string(),
            h.agent_log(name).display().to_string(),
            "--ready-on-file".to_string(),
            h.dir.path().join(name).join("go").display().to_string(),
        ]
    };
    let (a_agent, b_agent) = (agent("a"), agent("b"));
    let mut a = h.guard("a", &options, &strs(&a_agent));
    let mut b = h.guard("b", &options, &strs(&b_agent));
    ready(&a);
    ready(&b);
    std::fs::write(h.dir.path().join("a").join("go"), "").expect("a ready");
    wait_until("a is ready and waits for b", SOON, || {
        a.status()["lifecycle"]["launch_hook"]["state"] == "awaiting"
    });
    let_time_pass(
        "no completion comes while b's agent is not ready",
        Duration::from_millis(500),
    );
    assert!(
        h.calls("CompleteLifecycleAction").is_empty(),
        "not completed while b's agent is not ready"
    );
    assert_eq!(
        h.asg.instance_state(INSTANCE).as_deref(),
        Some("Pending:Wait")
    );
    std::fs::write(h.dir.path().join("b").join("go"), "").expect("b ready");
    wait_until("the launch hook completes", SOON, || {
        !h.calls("CompleteLifecycleAction").is_empty()
    });
    wait_until("both guards know", SOON, || {
        let states = [&a, &b].map(|g| g.status()["lifecycle"]["launch_hook"]["state"].clone());
        states.contains(&"completed".into()) && states.contains(&"left-to-other-guards".into())
    });
    let completes = h.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0].status, 200);
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    let b_ready = first_time(&json_lines(&h.agent_log("b")), |e| {
        e["sent"].as_str().is_some_and(|s| s.starts_with("READY=1"))
    })
    .expect("b sent READY=1");
    assert!(
        mono(completes[0].at) > b_ready,
        "completed before b was ready"
    );
    assert_eq!(h.asg.instance_state(INSTANCE).as_deref(), Some("InService"));
    for g in [&a, &b] {
        g.signal(libc::SIGTERM);
    }
    assert_eq!(a.code(), 0);
    assert_eq!(b.code(), 0);
}

#[test]
fn a_hooks_directory_that_cannot_be_read_is_waited_out_and_the_hook_never_completed_blind() {
    use std::os::fd::AsRawFd;

    let h = terminate_host();
    let log = h.agent_log("only");
    let agent = draining_agent(&log, "0.1");
    let mut guard = h.guard("only", TERMINATE, &strs(&agent));
    ready(&guard);
    wait_until("subscribed", SOON, || guard.status()["subscribers"] == 1);
    // Another process holds the directory's lock for longer than a guard waits for it (10 s):
    // every decision fails, as with a directory that cannot be read.
    let hook_dir = std::fs::read_dir(h.hooks_dir())
        .expect("the hooks directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("terminate."))
        })
        .expect("the termination hook's directory");
    let lock = std::fs::File::open(hook_dir.join(".lock")).expect("the lock file");
    // SAFETY: flock on a descriptor `lock` owns.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    h.scale_in();
    wait_until(
        "the guard says it cannot read the directory",
        Duration::from_secs(40),
        || guard.log().contains("cannot read the hooks directory"),
    );
    let status = guard.status();
    assert_eq!(status["phase"], "exited", "{status}");
    assert_eq!(
        status["lifecycle"]["waiting_for"]["what"], "other-guards",
        "{status}"
    );
    assert!(
        h.completions_ok().is_empty(),
        "not completed blind while the directory cannot be read: {}",
        guard.log()
    );
    let released = Instant::now();
    drop(lock);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    let completes = h.completions_ok();
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    assert!(
        completes[0].at > released,
        "completed only once it could be read"
    );
}

/// The registration of guard `name` in the termination hook's directory.
fn registration(h: &Host, name: &str) -> PathBuf {
    let guards = h.hooks_dir().join("terminate.drain-hook").join("guards");
    std::fs::read_dir(&guards)
        .expect("guards/")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}.")))
        })
        .unwrap_or_else(|| panic!("{name}'s registration in {}", guards.display()))
}

/// Asserts that `completion` came after `marker` was written, the last act of `what`.
fn completed_after(completion: &Call, marker: &Path, what: &str) {
    let gone_at = std::fs::metadata(marker)
        .and_then(|m| m.modified())
        .expect("mtime");
    let completed_at = std::time::SystemTime::now() - completion.at.elapsed();
    assert!(
        completed_at > gone_at,
        "completed {:?} before {what} was gone",
        gone_at.duration_since(completed_at).unwrap_or_default()
    );
}

/// Whether the guard has exited (then it decided, one way or the other).
fn exited(guard: &mut Guard) -> bool {
    matches!(guard.child.try_wait(), Ok(Some(_)))
}

/// Issue 23 item 1: any member of the `agent-guard` group (an agent included) can garble a live
/// guard's registration; the other guard must not read that as "nobody there".
#[test]
fn a_live_guards_garbled_registration_holds_the_others_up_until_its_agent_is_gone() {
    let h = terminate_host();
    let (fast_log, slow_log) = (h.agent_log("fast"), h.agent_log("slow"));
    let fast_agent = draining_agent(&fast_log, "0.1");
    let slow_agent = draining_agent(&slow_log, "5");
    let mut fast = h.guard("fast", TERMINATE, &strs(&fast_agent));
    let mut slow = h.guard("slow", TERMINATE, &strs(&slow_agent));
    ready(&fast);
    ready(&slow);
    wait_until("both agents subscribed", SOON, || {
        fast.status()["subscribers"] == 1 && slow.status()["subscribers"] == 1
    });
    // Truncated and garbled in place: the slow guard still holds its lock on the file.
    std::fs::write(registration(&h, "slow"), "{\"name\":\"slow\",").expect("garble");
    h.scale_in();
    wait_until("the fast guard decided", SOON, || {
        // The log, not /status: on a guard that completes and exits, the socket goes with it.
        exited(&mut fast) || fast.log().contains("registration that cannot be read")
    });
    // Looked at in this order: an agent still running now was running when the calls were read.
    let completes = h.completions_ok();
    assert!(
        first_time(&json_lines(&slow_log), |e| e["signal"] == "SIGTERM").is_none(),
        "the slow agent drains for 5 s; the test looked too late"
    );
    assert!(
        completes.is_empty(),
        "completed while the slow agent drained: {completes:?}\n{}",
        fast.log()
    );
    let status = fast.status();
    let detail = status["lifecycle"]["waiting_for"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("a live guard's registration that cannot be read"),
        "{status}"
    );
    assert!(
        fast.log().contains("registration that cannot be read"),
        "said in the log too: {}",
        fast.log()
    );
    assert_eq!(slow.code(), 0, "{}", slow.log());
    assert_eq!(fast.code(), 0, "{}", fast.log());
    let completes = h.completions_ok();
    assert_eq!(completes.len(), 1, "completed once: {completes:?}");
    assert_eq!(completes[0].params["LifecycleActionResult"], "CONTINUE");
    let slow_exit = first_time(&json_lines(&slow_log), |e| e["signal"] == "SIGTERM")
        .expect("the slow agent's exit marker");
    assert!(
        mono(completes[0].at) > slow_exit,
        "completed {:.3}s before the slow agent exited",
        slow_exit - mono(completes[0].at)
    );
}

/// Issue 23 item 3: a guard SIGKILLed mid-drain leaves its agent draining as an orphan; the
/// other guard waits for that agent to be gone (or for the wait bound), not for the lock alone.
#[test]
fn a_guard_sigkilled_mid_drain_is_waited_for_until_its_orphaned_agent_is_gone() {
    let h = terminate_host();
    let own = h.dir.path().join("killed");
    std::fs::create_dir_all(&own).expect("dir");
    let (draining, gone) = (own.join("draining"), own.join("gone"));
    let slow = format!(
        "trap 'touch {}; sleep 6; touch {}; exit 0' TERM",
        draining.display(),
        gone.display()
    );
    let (mut killed, mut survivor) = killed_and_survivor(&h, &slow);
    let agent = killed.status()["agent_pid"].as_i64().expect("agent pid");
    h.scale_in();
    wait_until("the slow agent drains", SOON, || draining.exists());
    let recorded = std::fs::read_to_string(registration(&h, "killed")).unwrap_or_default();
    killed.signal(libc::SIGKILL);
    let _ = killed.child.wait();
    wait_until("the survivor decided, its own agent gone", SOON, || {
        // The log, not /status: on a guard that completes and exits, the socket goes with it.
        exited(&mut survivor)
            || survivor
                .log()
                .contains("its guard is gone, its agent (process group")
    });
    // Looked at in this order: an agent still running now was running when the calls were read.
    let completes = h.completions_ok();
    assert!(
        !gone.exists(),
        "the orphan drains for 6 s; the test looked too late"
    );
    assert!(
        completes.is_empty(),
        "completed while the killed guard's agent drained: {completes:?}\n{}",
        survivor.log()
    );
    assert!(
        recorded.contains(&format!("\"pgid\":{agent}")),
        "its agent was recorded before the drain: {recorded}"
    );
    assert_eq!(survivor.code(), 0, "{}", survivor.log());
    assert!(gone.exists());
    let completes = h.completions_ok();
    assert_eq!(completes.len(), 1, "completed once: {completes:?}");
    // The killed guard's agent was never seen to stop cleanly: its --on-unclean-exit counts.
    assert_eq!(completes[0].params["LifecycleActionResult"], "ABANDON");
    completed_after(&completes[0], &gone, "the orphan");
    assert!(
        survivor.log().contains("gone without a word"),
        "{}",
        survivor.log()
    );
}

/// Issue 23 item 4: two guards with `--in-warm-pool wait`. Both are held through the warm round
/// (whose launch hook they complete without their agents); released into service, the launch
/// hook pauses the instance again, and that round is completed only once both agents are ready:
/// the slower guard's readiness from the warm round does not count.
#[test]
fn out_of_a_warm_pool_the_launch_hook_waits_for_both_agents_of_the_new_round() {
    let h = host(Hook::new("launch-hook", LAUNCHING).heartbeat_timeout(Duration::from_secs(60)));
    h.imds.set_lifecycle_state(Some("Warmed:Running"));
    h.asg.launch_into_warm_pool(GROUP, INSTANCE);
    let options = [
        "--launch-hook",
        "launch-hook",
        "--ready-on",
        "notify",
        "--in-warm-pool",
        "wait",
    ];
    let go = |name: &str| h.dir.path().join(name).join("go");
    let agent = |name: &str| {
        vec![
            fixture("notify_agent.py").display().to_string(),
            h.agent_log(name).display().to_string(),
            "--ready-on-file".to_string(),
            go(name).display().to_string(),
        ]
    };
    let (fast_agent, slow_agent) = (agent("fast"), agent("slow"));
    let mut fast = h.guard("fast", &options, &strs(&fast_agent));
    let mut slow = h.guard("slow", &options, &strs(&slow_agent));
    wait_until("the warm round's launch hook is completed", SOON, || {
        h.completions_ok().len() == 1
    });
    for g in [&fast, &slow] {
        wait_until("held", SOON, || g.log().contains("the agent starts once"));
    }
    assert_eq!(
        h.asg.instance_state(INSTANCE).as_deref(),
        Some("Warmed:Stopped")
    );

    // Into service: the group pauses the launch at Pending:Wait again.
    h.asg.launch(GROUP, INSTANCE);
    h.imds.set_lifecycle_state(Some("InService"));
    for g in [&fast, &slow] {
        wait_until("the agent started", SOON, || {
            !g.status()["agent_pid"].is_null()
        });
    }
    std::fs::write(go("fast"), "").expect("fast ready");
    wait_until("the fast guard decided", SOON, || {
        h.completions_ok().len() > 1
            || fast.status()["lifecycle"]["launch_hook"]["state"] == "awaiting"
    });
    let_time_pass(
        "no completion comes while the slow agent is not ready",
        Duration::from_millis(500),
    );
    let sent_ready = |name: &str| {
        first_time(&json_lines(&h.agent_log(name)), |e| {
            e["sent"].as_str().is_some_and(|s| s.starts_with("READY=1"))
        })
    };
    // Looked at in this order: an agent not ready now was not ready when the calls were read.
    let completes = h.completions_ok();
    assert!(sent_ready("slow").is_none(), "the slow agent is not ready");
    assert_eq!(
        completes.len(),
        1,
        "the new round was completed before the slow agent was ready: {completes:?}\n{}",
        fast.log()
    );
    assert_eq!(
        h.asg.instance_state(INSTANCE).as_deref(),
        Some("Pending:Wait")
    );

    std::fs::write(go("slow"), "").expect("slow ready");
    wait_until("the new round's launch hook is completed", SOON, || {
        h.completions_ok().len() == 2
    });
    wait_until("both guards know", SOON, || {
        let states =
            [&fast, &slow].map(|g| g.status()["lifecycle"]["launch_hook"]["state"].clone());
        states.contains(&"completed".into()) && states.contains(&"left-to-other-guards".into())
    });
    let completes = h.calls("CompleteLifecycleAction");
    assert_eq!(completes.len(), 2, "once per round: {completes:?}");
    assert!(completes.iter().all(|c| c.status == 200), "{completes:?}");
    assert_eq!(completes[1].params["LifecycleActionResult"], "CONTINUE");
    for name in ["fast", "slow"] {
        let ready = sent_ready(name).expect("READY=1 sent");
        assert!(
            mono(completes[1].at) > ready,
            "completed {:.3}s before the {name} agent was ready",
            ready - mono(completes[1].at)
        );
    }
    assert_eq!(h.asg.instance_state(INSTANCE).as_deref(), Some("InService"));
    for g in [&fast, &slow] {
        g.signal(libc::SIGTERM);
    }
    assert_eq!(fast.code(), 0, "{}", fast.log());
    assert_eq!(slow.code(), 0, "{}", slow.log());
}

/// Issue 25: a guard SIGKILLed while its agent runs in a cgroup of its own; the agent's process
/// group is gone, but a `setsid()` grandchild still works in the agent's cgroup. The other guard
/// waits for that cgroup to be empty (it is recorded in the dead guard's registration), not for
/// the group alone, before it completes the termination hook.
#[test]
fn a_dead_guards_setsid_grandchild_holds_the_hook_while_its_cgroup_is_populated() {
    if !crate::cgroup::cgroups_here() {
        return;
    }
    let h = terminate_host();
    let own = h.dir.path().join("killed");
    std::fs::create_dir_all(&own).expect("dir");
    let (pidfile, release, done) = (own.join("gc.pid"), own.join("release"), own.join("gone"));
    let grandchild = own.join("gc.sh");
    std::fs::write(
        &grandchild,
        format!(
            // Gone with the test's directory too, should the test fail before the release.
            "echo $$ > {p}.tmp && mv {p}.tmp {p}\nwhile [ ! -e {r} ] && [ -d {o} ]; do sleep 0.05; done\ntouch {d}\n",
            p = pidfile.display(),
            r = release.display(),
            d = done.display(),
            o = own.display()
        ),
    )
    .expect("gc.sh");
    let agent = format!("setsid sh {} & trap 'exit 0' TERM", grandchild.display());
    let (mut killed, mut survivor) = killed_and_survivor(&h, &agent);
    let gc = crate::cgroup::pid_in(&pidfile);
    let agent_pid = killed.status()["agent_pid"].as_i64().expect("agent pid") as i32;
    let recorded = || std::fs::read_to_string(registration(&h, "killed")).unwrap_or_default();
    wait_until("the agent and its cgroup recorded", SOON, || {
        recorded().contains("\"cgroup\":")
    });
    let entry: serde_json::Value = serde_json::from_str(&recorded()).expect("registration");
    let cgroup = PathBuf::from(entry["agent"]["cgroup"].as_str().expect("cgroup path"));
    killed.signal(libc::SIGKILL);
    let _ = killed.child.wait();
    // The agent's whole process group goes; the setsid grandchild is not in it.
    // SAFETY: kill(2) of the process group this test's guard started.
    unsafe { libc::kill(-agent_pid, libc::SIGKILL) };
    wait_until("the agent's group is gone", SOON, || {
        crate::support::gone(agent_pid)
    });
    assert!(!crate::support::gone(gc), "the grandchild still runs");
    h.scale_in();
    wait_until("the survivor decided, its own agent gone", SOON, || {
        exited(&mut survivor)
            || survivor
                .log()
                .contains("its guard is gone, its agent (process group")
    });
    let completes = h.completions_ok();
    let waited_for = survivor.log();
    std::fs::write(&release, "").expect("release the grandchild");
    let still_ran = !done.exists();
    assert!(
        completes.is_empty(),
        "completed while the dead guard's setsid grandchild ran in its cgroup: {completes:?}\n{waited_for}"
    );
    assert!(still_ran, "the grandchild was released only now");
    assert!(
        waited_for.contains(&format!("cgroup {}", cgroup.display())),
        "{waited_for}"
    );
    assert_eq!(survivor.code(), 0, "{}", survivor.log());
    let completes = h.completions_ok();
    assert_eq!(completes.len(), 1, "completed once: {completes:?}");
    completed_after(&completes[0], &done, "the grandchild");
    crate::cgroup::reap_leftover(gc);
    // The dead guard could not remove its cgroup; the next guard's sweep would.
    let _ = std::fs::remove_dir(&cgroup);
    let _ = cgroup.parent().map(std::fs::remove_dir);
}
