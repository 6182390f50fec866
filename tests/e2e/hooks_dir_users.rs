//! Guards of two users on one instance (`agent-guard@worker` with `User=` and
//! `SupplementaryGroups=agent-guard`, `agent-guard@indexer` as root) sharing the hooks directory
//! through its group, as packaging/systemd/agent-guard.conf sets it up: the non-root guard
//! registers in a directory root made, takes its lock, clears what root's guards left there, and,
//! its agent out last, completes the termination hook once. Needs root (to run a guard as
//! another user); elsewhere it is skipped, and with CI=true that skip fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agent_guard::sim::autoscaling::{AutoScalingSim, Call, Hook, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{
    Guard, SOON, armed_shell, aws_command, bin, require_root, scratch, unique_socket, wait_armed,
    wait_until,
};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";
/// The guard of the agent's own user: `nobody`, with the shared group as a supplementary one.
const WORKER_UID: u32 = 65534;
/// The shared group (`agent-guard` on a real host): a gid neither user has as its own.
const SHARED_GID: u32 = 64999;

const TERMINATE: &[&str] = &[
    "--terminate-hook",
    "drain-hook",
    "--heartbeat-interval",
    "300ms",
    "--drain-timeout",
    "10m",
];

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn key(name: &str) -> String {
    format!("AKID{}", name.to_uppercase())
}

/// Waits for the guard's lifecycle setup; a guard that exits first shows why.
fn ready(guard: &mut Guard) {
    wait_until("lifecycle setup", SOON, || {
        if let Ok(Some(status)) = guard.child.try_wait() {
            panic!("the guard exited ({status}) first:\n{}", guard.log());
        }
        guard.log().contains("lifecycle hooks ready")
    });
}

/// One instance: its IMDS, its group, a scratch directory others may enter, and the hooks
/// directory as the tmpfiles line makes it (3775, root, the shared group).
struct Host {
    imds: ImdsSim,
    asg: AutoScalingSim,
    dir: tempfile::TempDir,
    /// The guard binary where the other user can run it (the build tree may be private).
    bin: PathBuf,
}

impl Host {
    fn new() -> Host {
        let imds = ImdsSim::start().expect("imds sim");
        let asg = AutoScalingSim::start().expect("asg sim");
        asg.add_instance(GROUP, INSTANCE, "InService");
        asg.put_hook(
            GROUP,
            Hook::new("drain-hook", TERMINATING)
                .heartbeat_timeout(std::time::Duration::from_secs(30)),
        );
        let dir = scratch();
        chmod(dir.path(), 0o755);
        let hooks = dir.path().join("hooks");
        fs::create_dir(&hooks).expect("mkdir hooks");
        std::os::unix::fs::chown(&hooks, Some(0), Some(SHARED_GID)).expect("chown hooks");
        chmod(&hooks, 0o3775);
        let copy = dir.path().join("agent-guard");
        fs::copy(bin(), &copy).expect("copy the binary");
        chmod(&copy, 0o755);
        Host {
            imds,
            asg,
            dir,
            bin: copy,
        }
    }

    fn hooks(&self) -> PathBuf {
        self.dir.path().join("hooks")
    }

    /// The guard `name`, as root when `as_worker` is false, else as the worker's user with the
    /// shared group; its own directory is that user's.
    fn guard(&self, name: &str, as_worker: bool, agent: &str) -> Guard {
        let own = self.dir.path().join(name);
        fs::create_dir(&own).expect("guard dir");
        let mut cmd = if as_worker {
            std::os::unix::fs::chown(&own, Some(WORKER_UID), Some(WORKER_UID)).expect("chown");
            self.worker_command()
        } else {
            aws_command(&self.imds, &self.asg)
        };
        cmd.env("AWS_ACCESS_KEY_ID", key(name))
            .args(["--name", name, "--asg-name", GROUP, "--hooks-dir"])
            .arg(self.hooks())
            .args(TERMINATE)
            .args(["--", "sh", "-c", agent]);
        Guard::spawn(&own, cmd)
    }

    /// `aws_command`'s guard, run as the worker's user: nobody, its groups only the shared one.
    fn worker_command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .env("AGENT_GUARD_IMDS", "off")
            .env("AGENT_GUARD_HEALTH_LISTEN", "off")
            .env("AGENT_GUARD_SOCKET", unique_socket())
            .env("AWS_ENDPOINT_URL_AUTO_SCALING", self.asg.url())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_SECRET_ACCESS_KEY", "test-secret")
            .args(["--imds", "on", "--imds-endpoint", &self.imds.url()])
            .args(["--imds-poll", "200ms"])
            .current_dir("/")
            .stdin(Stdio::null());
        // SAFETY: setgroups, setgid and setuid are async-signal-safe; this runs in the child
        // before exec. Groups first: once the uid is not root's, they can no longer be set.
        unsafe {
            cmd.pre_exec(|| {
                let groups = [SHARED_GID];
                for rc in [
                    libc::setgroups(1, groups.as_ptr()),
                    libc::setgid(WORKER_UID),
                    libc::setuid(WORKER_UID),
                ] {
                    if rc != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd
    }

    fn completions(&self) -> Vec<Call> {
        self.asg
            .calls()
            .into_iter()
            .filter(|c| c.action == "CompleteLifecycleAction")
            .collect()
    }
}

/// Every entry under `dir` (itself aside): path, mode without the type bits, owner, group.
fn walk(dir: &Path) -> Vec<(PathBuf, u32, u32, u32)> {
    let mut out = Vec::new();
    for item in fs::read_dir(dir).expect("read_dir") {
        let path = item.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("stat");
        out.push((path.clone(), meta.mode() & 0o7777, meta.uid(), meta.gid()));
        if meta.is_dir() {
            out.extend(walk(&path));
        }
    }
    out
}

#[test]
fn a_non_root_guard_sharing_the_group_registers_clears_and_completes_once_as_the_last_out() {
    if !require_root() {
        return;
    }
    let h = Host::new();
    let hook = h.hooks().join("terminate.drain-hook");

    // An earlier guard of root's makes the hook's directory, its lock and its registration, and
    // is SIGKILLed with its agent: its registration and a finished round's done.json stay.
    let mut old = h.guard("old", false, "while :; do sleep 0.1; done");
    ready(&mut old);
    let old_agent = old.status()["agent_pid"].as_i64().expect("agent pid") as i32;
    old.signal(libc::SIGKILL);
    let _ = old.child.wait();
    // SAFETY: kill(2) on the process group of the agent that guard started.
    unsafe { libc::kill(-old_agent, libc::SIGKILL) };
    fs::write(
        hook.join("done.json"),
        r#"{"state":"completed","result":"CONTINUE","by":"old (pid 1)"}"#,
    )
    .expect("an earlier round's done.json");
    chmod(&hook.join("done.json"), 0o644);
    let left: Vec<_> = walk(&hook).into_iter().filter(|e| e.2 != 0).collect();
    assert!(left.is_empty(), "all root's so far: {left:?}");

    // The worker's guard is first of the new round: it must clear root's leftovers (else it
    // would read the old round as done, and the dead guard as an unclean exit: ABANDON).
    let marker = h.dir.path().join("worker").join("agent-exited");
    // Each armed marker in its guard's own directory: the worker's agent runs as the worker.
    let (worker_armed, indexer_armed) = (
        h.dir.path().join("worker").join("armed"),
        h.dir.path().join("indexer").join("armed"),
    );
    let worker_agent = armed_shell(
        &format!("trap 'sleep 5; touch {}; exit 0' TERM", marker.display()),
        &worker_armed,
    );
    let mut worker = h.guard("worker", true, &worker_agent);
    ready(&mut worker);
    let indexer_agent = armed_shell("trap 'exit 0' TERM", &indexer_armed);
    let mut indexer = h.guard("indexer", false, &indexer_agent);
    ready(&mut indexer);
    wait_armed(&worker_armed);
    wait_armed(&indexer_armed);

    h.asg.terminate(GROUP, INSTANCE);
    h.imds.set_lifecycle_state(Some("Terminated"));
    wait_until("root's guard waits for the worker's", SOON, || {
        let status = indexer.status();
        status["lifecycle"]["waiting_for"]["what"] == "other-guards"
            && status["lifecycle"]["waiting_for"]["detail"]
                .as_str()
                .is_some_and(|d| d.starts_with("worker (pid "))
    });
    // Looked at in this order: an agent still running now was running when the calls were read.
    let completes = h.completions();
    assert!(
        !marker.exists(),
        "the worker's agent drains for 5 s; the test looked too late"
    );
    assert!(
        completes.is_empty(),
        "completed while the worker's agent ran: {completes:?}"
    );

    assert_eq!(worker.code(), 0, "{}", worker.log());
    assert_eq!(indexer.code(), 0, "{}", indexer.log());
    assert!(marker.exists());
    let completes = h.completions();
    assert_eq!(completes.len(), 1, "completed once: {completes:?}");
    assert_eq!(completes[0].status, 200, "{completes:?}");
    assert_eq!(
        completes[0].params["LifecycleActionResult"], "CONTINUE",
        "the dead guard of the earlier round did not count"
    );
    assert_eq!(
        completes[0].caller.as_deref(),
        Some(key("worker").as_str()),
        "the last one out, not root's guard"
    );
    assert!(
        indexer
            .log()
            .contains("termination hook completed by worker (pid "),
        "{}",
        indexer.log()
    );

    // What is left is the group's, and nobody else's: no entry open to other users.
    let entries = walk(&hook);
    for (path, mode, _, gid) in &entries {
        let want = if path.is_dir() { 0o770 } else { 0o660 };
        assert_eq!(*mode, want, "{}", path.display());
        assert_eq!(*gid, SHARED_GID, "{}", path.display());
    }
    let done = entries
        .iter()
        .find(|e| e.0.ends_with("done.json"))
        .expect("done.json");
    assert_eq!(done.2, WORKER_UID, "written by the worker's guard");
    let names: Vec<String> = fs::read_dir(hook.join("guards"))
        .expect("guards")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.is_empty(), "every registration gone: {names:?}");
}

/// Issue 23 item 2: another user pre-creates the hook's directory (and its `guards/`) in the
/// shared root, open to every user or as their own, before any guard runs; trusted, it would
/// let them delete a live guard's registration and have the hook completed under its agent.
/// Each guard refuses it with one line, before its agent starts.
#[test]
fn a_hook_directory_another_user_planted_is_refused_with_one_line() {
    if !require_root() {
        return;
    }
    // (mode, why): open to every user; or the other user's own, outside the shared group.
    let plants = [
        (0o777, "writable by every user (mode 777)"),
        (0o755, "owned by uid 65534 and gid 65534"),
    ];
    for (mode, why) in plants {
        let h = Host::new();
        let hook = h.hooks().join("terminate.drain-hook");
        for dir in [hook.clone(), hook.join("guards")] {
            fs::create_dir(&dir).expect("mkdir");
            std::os::unix::fs::chown(&dir, Some(WORKER_UID), Some(WORKER_UID)).expect("chown");
            chmod(&dir, mode);
        }
        let started = h.dir.path().join("agent-started");
        let agent = format!("touch {}; sleep 30", started.display());
        let mut guard = h.guard("indexer", false, &agent);
        let code = guard.code();
        let log = guard.log();
        assert_eq!(
            code, 125,
            "the guard ran on a directory another user controls:\n{log}"
        );
        let refusal = format!("--hooks-dir: refusing {}: {why}", hook.display());
        assert_eq!(
            log.matches(&refusal).count(),
            1,
            "one line saying so:\n{log}"
        );
        assert!(!started.exists(), "refused before the agent started");
        assert!(
            fs::read_dir(hook.join("guards"))
                .expect("guards")
                .next()
                .is_none(),
            "nothing registered there"
        );
    }
}
