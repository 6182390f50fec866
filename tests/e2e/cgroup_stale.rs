//! A guard that is SIGKILLed cannot remove its cgroup: the next guard to start beside it removes
//! it once it is empty, and leaves it (said once) while its orphaned agent still runs in it.

use std::path::{Path, PathBuf};

use crate::cgroup::{cgroups_here, pid_in, reap_leftover, v2_mount};
use crate::support::{Guard, SOON, gone, read, scratch, wait_until};

/// The `agent-guard.<name>.<pid>` directory of the cgroup `pid` runs in (`…/agent`).
fn outer_of(pid: i32) -> PathBuf {
    let path = read(format!("/proc/{pid}/cgroup"))
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .expect("a v2 line");
    let agent = v2_mount()
        .expect("mount")
        .join(path.trim_start_matches('/'));
    assert!(agent.ends_with("agent"), "{}", agent.display());
    agent.parent().expect("a parent").to_path_buf()
}

/// Whether the extended attribute `name` is set on `path`.
fn xattr_set(path: &Path, name: &str) -> bool {
    let (Ok(path), Ok(name)) = (
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()),
        std::ffi::CString::new(name),
    ) else {
        return false;
    };
    // SAFETY: NUL-terminated path and name; a size query (no buffer).
    unsafe { libc::getxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// A guard around `true`, in a directory of its own (its log, its hooks dir); its log.
fn another_guard(dir: &Path) -> String {
    std::fs::create_dir_all(dir).expect("dir");
    let mut guard = Guard::start(dir, ["--", "true"]);
    assert_eq!(guard.code(), 0, "{}", guard.log());
    guard.log()
}

#[test]
fn a_killed_guards_cgroup_stays_while_its_agent_runs_and_goes_once_empty() {
    if !cgroups_here() {
        return;
    }
    let dir = scratch();
    let first = dir.path().join("first");
    std::fs::create_dir_all(&first).expect("dir");
    let pidfile = dir.path().join("agent.pid");
    let script = format!(
        "echo $$ > {p}.tmp && mv {p}.tmp {p}; exec sleep 600",
        p = pidfile.display()
    );
    let mut killed = Guard::start(&first, ["--", "sh", "-c", &script]);
    let agent = pid_in(&pidfile);
    let outer = outer_of(agent);
    killed.signal(libc::SIGKILL);
    let _ = killed.wait(std::time::Duration::ZERO);
    assert!(
        outer.exists(),
        "a SIGKILLed guard leaves {}",
        outer.display()
    );

    // Its agent runs on, orphaned, in the cgroup: the next guards leave it, and it is said once
    // on the host (by these two, or by a guard of a test running meanwhile, which marks it).
    let logs =
        another_guard(&dir.path().join("second")) + &another_guard(&dir.path().join("third"));
    let said = format!("left processes of its agent running in {}", outer.display());
    let left = outer.exists();
    let marked = xattr_set(&outer, "user.agent-guard.reported");
    let ran = reap_leftover(agent);
    assert!(ran, "the orphaned agent still ran");
    assert!(left, "a populated cgroup is never removed:\n{logs}");
    assert!(marked, "it was said, and marked so:\n{logs}");
    assert!(logs.matches(&said).count() <= 1, "said once:\n{logs}");

    // Empty now: the next guard removes it, `agent` and all.
    wait_until("the orphan is gone", SOON, || gone(agent));
    wait_until("the stale cgroup is empty", SOON, || {
        read(outer.join("cgroup.events")).contains("populated 0")
    });
    let log = another_guard(&dir.path().join("fourth"));
    assert!(!outer.exists(), "{} was removed:\n{log}", outer.display());
}
