//! The agent's own cgroup v2: found from mountinfo, created, entered before exec, signalled,
//! killed with `cgroup.kill`, watched until empty, read for resources, and removed.
//!
//! A process group only holds what does not leave it: a `setsid()` grandchild escapes, and the
//! guard would call the agent gone while that grandchild still works. A cgroup cannot be left by
//! anything the agent starts, so "gone" becomes "`cgroup.events` says `populated 0`", the proof
//! systemd uses. Layout, under the guard's own cgroup:
//!
//! ```text
//! <the guard's cgroup>/agent-guard.<name>.<pid>/agent      the agent and all it starts
//! <the guard's cgroup>/agent-guard.<name>.<pid>/on-drain   the --on-drain command, while it runs
//! <the guard's cgroup>/agent-guard.<name>.<pid>/guard      the guard, only if it had to move
//! ```
//!
//! The guard moves into `guard/` only to enable controllers (memory, pids) for `agent/`: the
//! "no internal processes" rule forbids a cgroup with processes to hand controllers down. With
//! no controller to hand down (a hybrid host's v2 tree), the guard stays where it is.
//!
//! A guard that is SIGKILLed (or crashes) cannot remove its cgroups; the next guard to start
//! beside them removes those whose guard is dead and which are empty ([`sweep_stale`]). The guard
//! holds a `flock` on its `agent-guard.…` directory for its whole life, so that a guard of
//! another pid namespace (whose pid means nothing here) is never taken for a dead one.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use libc::pid_t;

use crate::process::exit::{ChildExit, Gone};
use crate::process::sig::Sig;

/// The controllers the guard hands down to the agent's cgroup when its own has them: memory
/// for `memory.current`, `memory.events` (OOM kills) and `--memory-max`; pids for the count.
/// Not cpu: `cpu.stat`'s usage is there without it, and the cpu controller costs scheduling.
const WANTED: &[&str] = &["memory", "pids"];

/// How many rounds of "read `cgroup.procs`, signal the new pids" the stop signal makes, so that
/// processes forked while it is sent get it too; a fork bomb outruns any bound, and meets
/// `cgroup.kill` at the stop timeout.
const SIGNAL_ROUNDS: usize = 16;

/// The start of every cgroup a guard makes beside itself: `agent-guard.<name>.<pid>`.
const PREFIX: &str = "agent-guard.";

/// The `--on-drain` command's cgroup, beside the agent's.
const ON_DRAIN: &str = "on-drain";

/// Why the agent cannot have a cgroup of its own.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (/proc/self/mountinfo lists no cgroup2)")]
    NoV2,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("/proc/self/cgroup names no cgroup v2 path (no `0::` line)")]
    OwnUnknown,
    #[error(
        "{path} is systemd's and not delegated to the guard (run it in a unit with Delegate=yes)"
    )]
    NotDelegated { path: PathBuf },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open {path} to start the agent in it: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The agent's cgroup, for as long as the guard runs.
#[derive(Debug)]
pub struct AgentCgroup {
    /// `…/agent-guard.<name>.<pid>`, removed at exit.
    outer: PathBuf,
    /// `outer/agent`: the agent's cgroup.
    dir: PathBuf,
    /// The guard's own cgroup before it moved (if it did), to go back to at exit.
    home: Option<PathBuf>,
    /// `dir/cgroup.procs`, open before any spawn: where clone3 cannot start the agent in the
    /// cgroup, the child writes "0" into it before exec.
    procs: OwnedFd,
    /// `dir` itself, open for clone3's `CLONE_INTO_CGROUP`.
    dir_fd: OwnedFd,
    /// `dir/cgroup.events`, open for [`AgentCgroup::populated`]: read again from offset 0 it says
    /// the state now, without a walk down the cgroup path and an open each time (a guard asks
    /// several times per agent).
    events: Option<OwnedFd>,
    /// The controllers enabled for the agent.
    controllers: Vec<String>,
    /// `--memory-max`, when it could be applied.
    memory_max: Option<u64>,
    /// `outer`, open and `flock`ed for as long as the guard runs: the sign to the guards that
    /// start later that this one lives ([`sweep_stale`]). `None` if it could not be locked.
    _lock: Option<OwnedFd>,
}

/// What stands for the agent's processes, for `/status` and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Tracking {
    /// The agent's cgroup, when one is in force.
    pub cgroup: Option<std::sync::Arc<AgentCgroup>>,
    /// `--cgroup` as configured (`auto`, `off`, `require`).
    pub mode: &'static str,
    /// Why the process group stands for the agent, when it does.
    pub fallback: Option<String>,
}

/// What `create` did beyond making the cgroup, for the one log line.
#[derive(Debug, Default)]
pub struct Notes {
    /// Why `--memory-max` could not be applied, when it could not.
    pub memory_max_skipped: Option<String>,
}

impl AgentCgroup {
    /// Creates the agent's cgroup under the guard's own one. `name` labels it (the guard's
    /// `--name`, already limited to safe characters); the guard's pid makes it unique.
    pub fn create(
        name: &str,
        memory_max: Option<u64>,
    ) -> Result<(AgentCgroup, Notes), CgroupError> {
        let base = parent_dir()?;
        let unique = format!("{PREFIX}{name}.{}", std::process::id());
        let outer = base.join(unique);
        make_dir(&outer)?;
        let lock = lock_dir(&outer)
            .map_err(|err| tracing::debug!(error = %err, "cannot lock the guard's cgroup"))
            .ok();
        let mut home = None;
        let controllers = match hand_down_controllers(&base, &outer) {
            Ok((enabled, moved)) => {
                home = moved.then(|| base.clone());
                enabled
            }
            Err(err) => {
                tracing::debug!(error = %err, "no controllers for the agent's cgroup");
                Vec::new()
            }
        };
        let dir = outer.join("agent");
        if let Err(err) = make_dir(&dir) {
            let _ = fs::remove_dir(&outer);
            return Err(err);
        }
        let mut notes = Notes::default();
        let applied = match memory_max {
            None => None,
            Some(_) if !controllers.iter().any(|c| c == "memory") => {
                notes.memory_max_skipped =
                    Some("the memory controller is not available to the guard's cgroup".into());
                None
            }
            Some(max) => match fs::write(dir.join("memory.max"), max.to_string()) {
                Ok(()) => Some(max),
                Err(err) => {
                    notes.memory_max_skipped = Some(format!("cannot write memory.max: {err}"));
                    None
                }
            },
        };
        let procs_path = dir.join("cgroup.procs");
        let opened = open_write(&procs_path).and_then(|procs| {
            let dir_fd = fs::File::open(&dir)?;
            Ok((procs, OwnedFd::from(dir_fd)))
        });
        let events = fs::File::open(dir.join("cgroup.events"))
            .ok()
            .map(OwnedFd::from);
        let (procs, dir_fd) = match opened {
            Ok(fds) => fds,
            Err(source) => {
                let _ = fs::remove_dir(&dir);
                let _ = fs::remove_dir(&outer);
                return Err(CgroupError::Open {
                    path: procs_path,
                    source,
                });
            }
        };
        Ok((
            AgentCgroup {
                outer,
                dir,
                home,
                procs,
                dir_fd,
                events,
                controllers,
                memory_max: applied,
                _lock: lock,
            },
            notes,
        ))
    }

    /// The agent's cgroup directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The controllers enabled for the agent (empty on a hybrid host's v2 tree).
    pub fn controllers(&self) -> &[String] {
        &self.controllers
    }

    /// `--memory-max` as applied, if it was.
    pub fn memory_max(&self) -> Option<u64> {
        self.memory_max
    }

    /// The descriptor the child writes "0" into before exec ([`enter`]); open as long as this
    /// value lives.
    pub fn join_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// The cgroup's directory, open for clone3's `CLONE_INTO_CGROUP`.
    pub fn dir_fd(&self) -> RawFd {
        self.dir_fd.as_raw_fd()
    }

    /// Whether any process is left in the cgroup (`populated 1`). Zombies do not count: they do
    /// no work. A cgroup that is no longer there holds no process; any other failure to read
    /// counts as populated, so that nothing is called gone unproven.
    pub fn populated(&self) -> bool {
        let Some(fd) = &self.events else {
            return populated_at(&self.dir);
        };
        let mut buf = [0u8; 128];
        // SAFETY: pread(2) into a local buffer of the length given, on a descriptor this value
        // owns. From offset 0 the kernel formats the file anew.
        let n = unsafe { libc::pread(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        match usize::try_from(n) {
            Ok(n) => parse_populated(&String::from_utf8_lossy(&buf[..n])).unwrap_or(true),
            // Removed under the guard (ENODEV): no process is in it. Else unproven: populated.
            Err(_) => io::Error::last_os_error().raw_os_error() != Some(libc::ENODEV),
        }
    }

    /// The pids in the cgroup now.
    pub fn pids(&self) -> Vec<pid_t> {
        pids_at(&self.dir)
    }

    /// Sends `sig` to every process in the cgroup, in rounds, so that a process forked while
    /// the signal goes out gets it as well. Returns how many processes it was sent to.
    pub fn signal_all(&self, sig: Sig) -> io::Result<usize> {
        signal_all_at(&self.dir, sig)
    }

    /// SIGKILLs every process in the cgroup at once (`cgroup.kill`, Linux 5.14), so that none
    /// can fork its way out between a read of `cgroup.procs` and the signal. On an older kernel,
    /// rounds of SIGKILL by pid.
    pub fn kill(&self) -> io::Result<()> {
        kill_at(&self.dir)
    }

    /// Removes what guards that died left beside this one's cgroup ([`sweep_stale`]). Called once
    /// the agent runs: off its start path, and after anything that could still fail the start
    /// (a guard that cannot start says one line, its error).
    pub fn sweep_stale(&self) {
        if let Some(base) = self.outer.parent() {
            sweep_stale(base);
        }
    }

    /// A cgroup beside the agent's for the `--on-drain` command, so that nothing it starts
    /// (a `setsid` helper) outlives the hook's completion; the stop signal the agent's cgroup
    /// gets does not reach it, as it does not reach the command's process group without one.
    pub fn on_drain(&self) -> Result<HelperCgroup, CgroupError> {
        let dir = self.outer.join(ON_DRAIN);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError::Create { path: dir, source }),
        }
        let path = dir.join("cgroup.procs");
        match open_write(&path) {
            Ok(procs) => Ok(HelperCgroup { dir, procs }),
            Err(source) => {
                let _ = fs::remove_dir(&dir);
                Err(CgroupError::Open { path, source })
            }
        }
    }

    /// Whether any process in the cgroup is stopped (it could not act on a stop signal).
    pub fn any_stopped(&self) -> bool {
        self.pids().into_iter().any(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = &stat[stat.rfind(')')? + 1..];
                    rest.split_whitespace().next()?.chars().next()
                })
                == Some('T')
        })
    }

    /// OOM kills in the cgroup so far (`memory.events` `oom_kill`); `None` without the memory
    /// controller.
    pub fn oom_kills(&self) -> Option<u64> {
        // Not even looked for without the controller (a hybrid host's v2 tree): a failed lookup
        // down the cgroup path costs the start what a read does.
        if !self.controllers.iter().any(|c| c == "memory") {
            return None;
        }
        let text = fs::read_to_string(self.dir.join("memory.events")).ok()?;
        keyed(&text, "oom_kill")
    }

    /// The agent's resources now, each `None` where the kernel does not keep it.
    pub fn usage(&self) -> Usage {
        let read = |file: &str| fs::read_to_string(self.dir.join(file)).ok();
        let number = |file: &str| read(file).and_then(|t| t.trim().parse().ok());
        Usage {
            memory_current: number("memory.current"),
            memory_peak: number("memory.peak"),
            cpu_usage_usec: read("cpu.stat").and_then(|t| keyed(&t, "usage_usec")),
            processes: read("cgroup.procs").map(|t| t.lines().count() as u64),
            oom_kills: self.oom_kills(),
            pressure: ["cpu", "memory", "io"]
                .into_iter()
                .filter_map(|r| Some((r, parse_pressure(&read(&format!("{r}.pressure"))?)?)))
                .collect(),
        }
    }

    /// A watch on `cgroup.events`, woken by the kernel when `populated` changes. Needs a tokio
    /// runtime.
    pub fn watch(&self) -> Result<EmptyWatch, CgroupError> {
        let path = self.dir.join("cgroup.events");
        let err = |source| CgroupError::Watch {
            path: path.clone(),
            source,
        };
        // An open file of its own, not a dup of `events`: the kernel keeps "changed since last
        // read" per open file, and a read of `populated` (by /status) through a shared one
        // would swallow the change the watch waits for.
        let file = fs::File::open(&path).map_err(err)?;
        // The kernel marks a change of the file with POLLPRI (kernfs_notify), as systemd waits
        // for it; inotify would work as well, but closing an inotify instance waits for an SRCU
        // grace period (14 ms measured here), which every guard's exit would pay.
        // SAFETY: an OwnedFd's descriptor is open and the same until the AsyncFd drops it.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(
                OwnedFd::from(file),
                tokio::io::Interest::PRIORITY,
            )
        }
        .map_err(|e| err(e.into_parts().1))?;
        Ok(EmptyWatch { fd })
    }

    /// Proof that nothing of the agent is left: `exit` sealed with the cgroup's emptiness, if it
    /// is empty now.
    pub fn prove_empty(&self, exit: ChildExit) -> ChildExit {
        if self.populated() {
            exit
        } else {
            exit.proven_gone(Gone::Cgroup)
        }
    }

    /// `exit` with the OOM kills in the cgroup since `before` (the count at the agent's start).
    pub fn note_oom(&self, exit: ChildExit, before: u64) -> ChildExit {
        let now = self.oom_kills().unwrap_or(before);
        exit.with_oom_kills(now.saturating_sub(before))
    }

    /// Removes the cgroup, once empty; the guard goes back to its own cgroup first if it moved.
    /// Best effort: systemd (or the container) removes what is left when the unit stops.
    pub fn remove(&self) {
        let _ = fs::remove_dir(self.outer.join(ON_DRAIN));
        if let Err(err) = fs::remove_dir(&self.dir)
            && err.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), error = %err, "cannot remove the agent's cgroup");
        }
        if let Some(home) = &self.home {
            let _ = fs::write(home.join("cgroup.procs"), "0");
            let _ = fs::remove_dir(self.outer.join("guard"));
        }
        let _ = fs::remove_dir(&self.outer);
    }
}

#[cfg(test)]
impl AgentCgroup {
    /// A cgroup of a unit test's own, or `None` (and one line; a failure in CI) where this
    /// machine cannot make one (not root, no cgroup v2).
    pub(crate) fn for_test(name: &str) -> Option<AgentCgroup> {
        match AgentCgroup::create(name, None) {
            Ok((cgroup, _)) => Some(cgroup),
            Err(err) => {
                let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
                assert!(
                    !ci,
                    "no cgroup for the test: {err} (with CI=true a skip is a failure)"
                );
                eprintln!("SKIPPED: no cgroup for the test here: {err}");
                None
            }
        }
    }
}

/// The `--on-drain` command's cgroup ([`AgentCgroup::on_drain`]): entered by the command before
/// its exec, killed with `cgroup.kill`, empty before the guard is done.
#[derive(Debug)]
pub struct HelperCgroup {
    dir: PathBuf,
    /// `dir/cgroup.procs`, which the command writes "0" into before exec ([`enter`]).
    procs: OwnedFd,
}

impl HelperCgroup {
    /// The descriptor the command writes "0" into before exec; open as long as this value lives.
    pub fn join_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Whether any process of the command's is left (zombies aside).
    pub fn populated(&self) -> bool {
        populated_at(&self.dir)
    }

    /// SIGKILLs every process in it at once (`cgroup.kill`).
    pub fn kill(&self) -> io::Result<()> {
        kill_at(&self.dir)
    }

    /// The cgroup's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// In the forked child, before exec: moves the calling process into the cgroup whose
/// `cgroup.procs` is open as `fd` ("0" means the writer itself). Async-signal-safe: one write.
pub fn enter(fd: RawFd) -> io::Result<()> {
    // SAFETY: write(2) of a one-byte static buffer to a descriptor the caller keeps open.
    let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
    if n == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Wakes when `cgroup.events` changes.
#[derive(Debug)]
pub struct EmptyWatch {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
}

impl EmptyWatch {
    /// Waits until `cgroup.events` changed since the last call (a change meanwhile counts),
    /// then reads the file again, which is what re-arms the kernel's notice. Callers read
    /// `populated` afterwards.
    pub async fn changed(&mut self) {
        let Ok(mut ready) = self.fd.ready(tokio::io::Interest::PRIORITY).await else {
            // The reactor is gone: the runtime is ending, nothing is left to wake.
            return std::future::pending().await;
        };
        ready.clear_ready();
        let mut buf = [0u8; 64];
        // SAFETY: pread(2) into a local buffer of the length given, on the descriptor this value
        // owns; only the read matters (it re-arms POLLPRI), not what it returns.
        unsafe {
            libc::pread(
                self.fd.get_ref().as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
    }
}

/// The agent's resources at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    pub memory_current: Option<u64>,
    pub memory_peak: Option<u64>,
    pub cpu_usage_usec: Option<u64>,
    pub processes: Option<u64>,
    pub oom_kills: Option<u64>,
    /// `cpu`, `memory`, `io` pressure, where PSI is on.
    pub pressure: Vec<(&'static str, Pressure)>,
}

/// One resource's pressure (PSI): the share of time some (or all) tasks stalled on it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pressure {
    /// `some avg10`, percent.
    pub some_avg10: f64,
    /// `some total`, microseconds stalled since the cgroup was made.
    pub some_total_usec: u64,
    /// `full avg10`, percent (absent for `cpu` on older kernels).
    pub full_avg10: Option<f64>,
    pub full_total_usec: Option<u64>,
}

/// What `--cgroup` would get here (for `doctor`): the guard's cgroup, which a child could be
/// made in (one is made and removed at once), and the controllers it could hand down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub path: PathBuf,
    pub controllers: Vec<String>,
}

/// Tries what [`AgentCgroup::create`] does, leaving nothing behind and moving no process.
pub fn probe() -> Result<Probe, CgroupError> {
    let base = parent_dir()?;
    let trial = base.join(format!("agent-guard.doctor.{}", std::process::id()));
    make_dir(&trial)?;
    let _ = fs::remove_dir(&trial);
    let available = fs::read_to_string(base.join("cgroup.controllers")).unwrap_or_default();
    let controllers = WANTED
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| c.to_string())
        .collect();
    Ok(Probe {
        path: base,
        controllers,
    })
}

/// The cgroup the agent's is made in: the guard's own, if systemd does not own it undelegated.
fn parent_dir() -> Result<PathBuf, CgroupError> {
    let base = own_cgroup_dir()?;
    // systemd owns every cgroup it has not delegated (CGROUP_DELEGATION.md: never create
    // cgroups below those); a delegated one carries the `trusted.delegate` (or, for a user
    // manager, `user.delegate`) attribute.
    if Path::new("/run/systemd/system").is_dir() && !delegated(&base) {
        return Err(CgroupError::NotDelegated { path: base });
    }
    Ok(base)
}

/// The guard's own cgroup directory: the v2 mount from mountinfo joined with the `0::` path.
fn own_cgroup_dir() -> Result<PathBuf, CgroupError> {
    let read = |path: &str| {
        read_proc(path).map_err(|source| CgroupError::Read {
            path: path.into(),
            source,
        })
    };
    let (mount, root) = v2_mount(&read("/proc/self/mountinfo")?).ok_or(CgroupError::NoV2)?;
    let own = own_path(&read("/proc/self/cgroup")?).ok_or(CgroupError::OwnUnknown)?;
    // The mount shows the hierarchy from `root` down; /proc/self/cgroup names paths from the
    // namespace's root, which is the same one unless the mount was made elsewhere.
    let relative = own
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(&own)
        .trim_start_matches('/');
    Ok(if relative.is_empty() {
        mount
    } else {
        mount.join(relative)
    })
}

/// A /proc file, read whole in as few calls as it takes. /proc files have no size, so
/// `fs::read_to_string` starts with 32 bytes and doubles: eight reads of mountinfo, each of which
/// has the kernel walk the mount table again to find where the last one stopped.
fn read_proc(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut text = String::with_capacity(16 * 1024);
    fs::File::open(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// The mount point and root of the first cgroup2 mount in a mountinfo text.
pub fn v2_mount(mountinfo: &str) -> Option<(PathBuf, String)> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split_whitespace();
        let root = unescape(fields.nth(3)?);
        let mount = unescape(fields.next()?);
        Some((PathBuf::from(mount), root))
    })
}

/// mountinfo writes space, tab, newline and backslash as octal escapes (`\040`).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Some(v) = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The v2 path (`0::/…`) in a /proc/PID/cgroup text. A cgroup removed under the process reads
/// `… (deleted)`: no path to create children in.
pub fn own_path(text: &str) -> Option<String> {
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    (!path.ends_with(" (deleted)")).then(|| path.to_string())
}

/// `populated 0|1` from `cgroup.events`.
fn parse_populated(text: &str) -> Option<bool> {
    keyed(text, "populated").map(|n| n != 0)
}

/// The number after `key ` on its own line (`cgroup.events`, `memory.events`, `cpu.stat`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A PSI file: `some avg10=… avg60=… avg300=… total=…` and maybe the same for `full`.
fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| -> Option<(f64, u64)> {
        let rest = text.lines().find_map(|l| l.strip_prefix(kind))?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
        };
        Some((field("avg10")?.parse().ok()?, field("total")?.parse().ok()?))
    };
    let (some_avg10, some_total_usec) = line("some ")?;
    let full = line("full ");
    Some(Pressure {
        some_avg10,
        some_total_usec,
        full_avg10: full.map(|f| f.0),
        full_total_usec: full.map(|f| f.1),
    })
}

/// Whether systemd marked `dir` as delegated (systemd 251 and later).
fn delegated(dir: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    [c"trusted.delegate", c"user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        // SAFETY: NUL-terminated path and name, and a buffer of the length given.
        let n = unsafe {
            libc::getxattr(
                c_path.as_ptr(),
                name.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        n > 0 && value[0] == b'1'
    })
}

/// Whether any process is left in the cgroup `dir` (`populated 1`), its children included.
/// Zombies do not count: they do no work. A cgroup that is no longer there holds no process;
/// any other failure to read counts as populated, so that nothing is called gone unproven.
fn populated_at(dir: &Path) -> bool {
    match fs::read_to_string(dir.join("cgroup.events")) {
        Ok(text) => parse_populated(&text).unwrap_or(true),
        Err(err) => err.kind() != io::ErrorKind::NotFound,
    }
}

/// `statfs`'s `f_type` of a cgroup v2 file system (linux/magic.h).
const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// [`populated_at`] for a path read from a file another user could have written (a dead guard's
/// registration in the hooks directory): only a directory on a cgroup v2 file system is read as
/// a cgroup, through its descriptor, without following a link and without waiting (a FIFO in
/// its place would hold the reader for ever). Anything else there counts as populated (the
/// others wait for it, bounded, as for any registration that cannot be trusted); nothing there
/// counts as empty, since the kernel removes no populated cgroup.
pub fn recorded_populated(dir: &Path) -> bool {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = match fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
    {
        Ok(dir) => dir,
        Err(err) => return err.kind() != io::ErrorKind::NotFound,
    };
    // SAFETY: fstatfs fills the zeroed struct for a descriptor we own.
    let on_cgroup2 = unsafe {
        let mut fs: libc::statfs = std::mem::zeroed();
        libc::fstatfs(dir.as_raw_fd(), &mut fs) == 0 && fs.f_type as u64 == CGROUP2_SUPER_MAGIC
    };
    if !on_cgroup2 {
        return true;
    }
    // SAFETY: openat(2) relative to a directory we own, with a NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c"cgroup.events".as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return io::Error::last_os_error().raw_os_error() != Some(libc::ENOENT);
    }
    // SAFETY: a descriptor just opened, owned from here on.
    let mut events = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut buf = [0u8; 256];
    match events.read(&mut buf) {
        Ok(n) => parse_populated(&String::from_utf8_lossy(&buf[..n])).unwrap_or(true),
        Err(err) => err.raw_os_error() != Some(libc::ENODEV),
    }
}

/// The pids in the cgroup `dir` now (not its children's).
fn pids_at(dir: &Path) -> Vec<pid_t> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Sends `sig` to every process in the cgroup `dir`, in rounds ([`SIGNAL_ROUNDS`]).
fn signal_all_at(dir: &Path, sig: Sig) -> io::Result<usize> {
    let mut sent: Vec<pid_t> = Vec::new();
    for _ in 0..SIGNAL_ROUNDS {
        let fresh: Vec<pid_t> = pids_at(dir)
            .into_iter()
            .filter(|p| !sent.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            // SAFETY: kill(2) with a pid read from cgroup.procs and a valid signal.
            let rc = unsafe { libc::kill(pid, sig.raw()) };
            let err = io::Error::last_os_error();
            if rc != 0 && err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
            sent.push(pid);
        }
    }
    Ok(sent.len())
}

/// `cgroup.kill` of `dir`, or rounds of SIGKILL by pid on a kernel without it (before 5.14).
fn kill_at(dir: &Path) -> io::Result<()> {
    match fs::write(dir.join("cgroup.kill"), "1") {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            signal_all_at(dir, Sig::KILL).map(|_| ())
        }
        Err(err) => Err(err),
    }
}

/// Opens `dir` and takes an exclusive `flock` on it without waiting: held until the descriptor
/// closes, which the kernel does when its process dies, however it dies.
fn lock_dir(dir: &Path) -> io::Result<OwnedFd> {
    let fd = OwnedFd::from(fs::File::open(dir)?);
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// The pid in the name of a cgroup a guard made (`agent-guard.<name>.<pid>`), if it is one.
fn guard_pid(name: &str) -> Option<pid_t> {
    let (_, pid) = name.strip_prefix(PREFIX)?.rsplit_once('.')?;
    pid.parse().ok().filter(|p: &pid_t| *p > 0)
}

/// Whether a process numbered `pid` exists (here: it may be another one, given the number
/// later; that only keeps a stale cgroup a little longer).
fn pid_exists(pid: pid_t) -> bool {
    // SAFETY: kill(2) with signal 0 sends nothing; it only checks the pid.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// What [`sweep_stale`] found in one cgroup of a dead guard's.
#[derive(Debug, PartialEq, Eq)]
enum Stale {
    /// Empty: removed (or removed meanwhile by another guard).
    Removed,
    /// Processes of the dead guard's agent still run in it: left alone.
    Populated,
    /// A live guard holds its lock (one of another pid namespace): not stale after all.
    Held,
}

/// The extended attribute that marks a dead guard's populated cgroup as reported, so that it is
/// said once on the host, not by every guard that starts while the orphan runs.
const REPORTED: &std::ffi::CStr = c"user.agent-guard.reported";

/// At start: removes the cgroups (`agent-guard.<name>.<pid>`, with what is inside) that guards
/// which died without cleaning up left in `base`: those whose guard pid is dead, that no live
/// guard holds locked, and that are empty. A populated one means an orphaned agent still runs:
/// it is said once (the first guard to find it marks it, [`REPORTED`]; where the mark cannot be
/// set, each guard says it) and left alone (the kernel refuses to remove a populated cgroup in
/// any case); the next guard to start removes it once it is empty. Best effort: a failure
/// costs a stale directory, never the start. Not news for the log: what was removed is said at
/// debug level.
fn sweep_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(guard_pid) else {
            continue;
        };
        if pid_exists(pid) {
            continue;
        }
        let outer = base.join(&name);
        match sweep_one(&outer) {
            Ok(Stale::Removed) => removed.push(name.to_string_lossy().into_owned()),
            Ok(Stale::Populated) if !reported_before(&outer) => tracing::info!(
                path = %outer.display(),
                guard_pid = pid,
                processes = count_procs(&outer, 0),
                "a guard that died (pid {pid}) left processes of its agent running in {}: left alone; it is removed once they are gone",
                outer.display()
            ),
            Ok(Stale::Populated) => {}
            Ok(Stale::Held) => {}
            Err(err) => {
                tracing::debug!(path = %outer.display(), error = %err, "cannot remove a stale cgroup")
            }
        }
    }
    if !removed.is_empty() {
        tracing::debug!(
            removed = removed.len(),
            "removed {} empty cgroup(s) left by guards that died: {}",
            removed.len(),
            removed.join(", ")
        );
    }
}

/// Whether `outer` was marked as reported already; marks it if not, in one step (`XATTR_CREATE`),
/// so that of two guards starting at once only one says it. Unmarkable (no user extended
/// attributes here) counts as not reported: said again rather than never.
fn reported_before(outer: &Path) -> bool {
    let Ok(path) = std::ffi::CString::new(outer.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: NUL-terminated path and name, and a one-byte value of the length given.
    let rc = unsafe {
        libc::setxattr(
            path.as_ptr(),
            REPORTED.as_ptr(),
            b"1".as_ptr().cast(),
            1,
            libc::XATTR_CREATE,
        )
    };
    rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EEXIST)
}

/// Removes `outer`, a dead guard's cgroup, if it is empty and no live guard holds its lock.
fn sweep_one(outer: &Path) -> io::Result<Stale> {
    let _lock = match lock_dir(outer) {
        Ok(lock) => lock,
        Err(err) if err.raw_os_error() == Some(libc::EWOULDBLOCK) => return Ok(Stale::Held),
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Stale::Removed),
        Err(err) => return Err(err),
    };
    if populated_at(outer) {
        return Ok(Stale::Populated);
    }
    remove_tree(outer, 0)?;
    Ok(Stale::Removed)
}

/// How deep [`remove_tree`] and [`count_procs`] go: the guard makes two levels; an agent with
/// cgroups of its own may have made a few more.
const MAX_DEPTH: usize = 8;

/// The processes in the cgroup `dir` and its children.
fn count_procs(dir: &Path, depth: usize) -> usize {
    let own = pids_at(dir).len();
    if depth >= MAX_DEPTH {
        return own;
    }
    let children = fs::read_dir(dir).into_iter().flatten().flatten();
    own + children
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| count_procs(&e.path(), depth + 1))
        .sum::<usize>()
}

/// Removes the empty cgroup `dir`, its child cgroups first (a cgroup with children cannot be
/// removed). A process that enters meanwhile makes the kernel refuse (`EBUSY`): nothing that
/// runs is ever removed. Gone already (another guard swept it) is success.
fn remove_tree(dir: &Path, depth: usize) -> io::Result<()> {
    if depth < MAX_DEPTH {
        for entry in fs::read_dir(dir)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), depth + 1)?;
            }
        }
    }
    match fs::remove_dir(dir) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

fn make_dir(path: &Path) -> Result<(), CgroupError> {
    fs::create_dir(path).map_err(|source| CgroupError::Create {
        path: path.to_path_buf(),
        source,
    })
}

fn open_write(path: &Path) -> io::Result<OwnedFd> {
    let file = fs::OpenOptions::new().write(true).open(path)?;
    Ok(OwnedFd::from(file))
}

/// Enables the [`WANTED`] controllers that `base` has for `outer`'s children. If `base` must
/// hand them down first and holds the guard, the guard moves to `outer/guard` (the "no internal
/// processes" rule). Returns the controllers enabled, and whether the guard moved.
fn hand_down_controllers(base: &Path, outer: &Path) -> io::Result<(Vec<String>, bool)> {
    let available = fs::read_to_string(base.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = WANTED
        .iter()
        .copied()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    if wanted.is_empty() {
        return Ok((Vec::new(), false));
    }
    let enable = wanted
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ");
    let enabled_in_base = fs::read_to_string(base.join("cgroup.subtree_control"))?;
    let mut moved = false;
    let already = wanted
        .iter()
        .all(|c| enabled_in_base.split_whitespace().any(|e| e == *c));
    if !already && let Err(first) = fs::write(base.join("cgroup.subtree_control"), &enable) {
        if first.raw_os_error() != Some(libc::EBUSY) {
            return Err(first);
        }
        // The guard itself is the internal process: it moves to a leaf of its own.
        let leaf = outer.join("guard");
        fs::create_dir(&leaf)?;
        fs::write(leaf.join("cgroup.procs"), "0")?;
        moved = true;
        if let Err(err) = fs::write(base.join("cgroup.subtree_control"), &enable) {
            // Someone else lives there too: go back, and do without controllers.
            let _ = fs::write(base.join("cgroup.procs"), "0");
            let _ = fs::remove_dir(&leaf);
            return Err(err);
        }
    }
    fs::write(outer.join("cgroup.subtree_control"), &enable)?;
    Ok((wanted.iter().map(|c| c.to_string()).collect(), moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A temporary directory standing for the agent's cgroup, with these controllers: its files
    /// are what the kernel would say. This machine's v2 tree has no memory controller to give a
    /// real cgroup, so what the guard makes of `memory.events` is checked here.
    fn standing_in(dir: &Path, controllers: &[&str]) -> AgentCgroup {
        fs::write(dir.join("cgroup.procs"), "").expect("cgroup.procs");
        AgentCgroup {
            outer: dir.to_path_buf(),
            dir: dir.to_path_buf(),
            home: None,
            procs: open_write(&dir.join("cgroup.procs")).expect("procs"),
            dir_fd: OwnedFd::from(fs::File::open(dir).expect("dir")),
            events: None,
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            memory_max: None,
            _lock: None,
        }
    }

    fn memory_events(dir: &Path, oom_kill: u64) {
        let text = format!("low 0\nhigh 0\nmax 4\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n");
        fs::write(dir.join("memory.events"), text).expect("memory.events");
    }

    #[test]
    fn an_exit_is_named_oom_from_what_memory_events_says() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = standing_in(dir.path(), &["memory", "pids"]);
        memory_events(dir.path(), 2);
        // Counted at the agent's start: kills of an earlier run are not this one's.
        let before = cgroup.oom_kills().expect("with the memory controller");
        assert_eq!(before, 2);
        let quiet = cgroup.note_oom(ChildExit::for_test_signal(Sig::KILL), before);
        assert!(!quiet.oom_killed(), "no kill since the start: {quiet}");
        memory_events(dir.path(), 3);
        let killed = cgroup.note_oom(ChildExit::for_test_signal(Sig::KILL), before);
        assert!(killed.oom_killed());
        assert_eq!(killed.oom_kills(), 1);
        assert!(killed.to_string().contains("OOM killer"), "{killed}");
        // A helper of the agent's was killed, the agent exited 0 by itself: not the agent's
        // death, but not a clean run either (the restart policy and the hook's result see it).
        let helper = cgroup.note_oom(ChildExit::for_test(0), before);
        assert!(!helper.oom_killed());
        assert_eq!(helper.oom_kills(), 1);
        assert!(helper.to_string().contains("1 OOM kill(s)"), "{helper}");
        assert_eq!(cgroup.usage().oom_kills, Some(3));
    }

    #[test]
    fn without_the_memory_controller_no_oom_is_claimed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = standing_in(dir.path(), &[]);
        memory_events(dir.path(), 5);
        assert_eq!(cgroup.oom_kills(), None);
        let exit = cgroup.note_oom(ChildExit::for_test_signal(Sig::KILL), 0);
        assert!(!exit.oom_killed(), "{exit}");
        let with = standing_in(dir.path(), &["memory"]);
        fs::remove_file(dir.path().join("memory.events")).expect("rm");
        assert_eq!(with.oom_kills(), None, "memory.events unreadable");
        let exit = with.note_oom(ChildExit::for_test_signal(Sig::KILL), 0);
        assert!(!exit.oom_killed(), "{exit}");
    }

    #[test]
    fn the_agents_resources_are_read_from_its_cgroup_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cgroup = standing_in(dir.path(), &["memory"]);
        let files = [
            ("memory.current", "4096\n"),
            ("memory.peak", "8192\n"),
            (
                "cpu.stat",
                "usage_usec 1250000\nuser_usec 1000000\nsystem_usec 250000\n",
            ),
            ("cgroup.procs", "12\n13\n"),
            (
                "memory.pressure",
                "some avg10=1.00 avg60=0.00 avg300=0.00 total=7\nfull avg10=0.50 avg60=0.00 avg300=0.00 total=3\n",
            ),
        ];
        for (name, text) in files {
            fs::write(dir.path().join(name), text).expect("write");
        }
        memory_events(dir.path(), 0);
        let usage = cgroup.usage();
        assert_eq!(usage.memory_current, Some(4096));
        assert_eq!(usage.memory_peak, Some(8192));
        assert_eq!(usage.cpu_usage_usec, Some(1_250_000));
        assert_eq!(usage.processes, Some(2));
        assert_eq!(usage.oom_kills, Some(0));
        assert_eq!(usage.pressure.len(), 1, "{:?}", usage.pressure);
        assert_eq!(usage.pressure[0].0, "memory");
        assert_eq!(cgroup.pids(), vec![12, 13]);
    }

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn finds_the_v2_mount_on_a_hybrid_host() {
        assert_eq!(
            v2_mount(HYBRID),
            Some((PathBuf::from("/sys/fs/cgroup/unified"), "/".to_string()))
        );
        let spaced = "41 31 0:38 /sub /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mount(spaced),
            Some((PathBuf::from("/mnt/cg two"), "/sub".to_string()))
        );
        assert_eq!(v2_mount("31 23 0:28 / /x rw - tmpfs tmpfs rw\n"), None);
    }

    #[test]
    fn reads_its_own_v2_path() {
        let text = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/a.service\n";
        assert_eq!(own_path(text), Some("/system.slice/a.service".to_string()));
        assert_eq!(own_path("0::/gone (deleted)\n"), None);
        assert_eq!(own_path("4:memory:/x\n"), None);
    }

    #[test]
    fn knows_its_own_cgroups_by_name() {
        assert_eq!(guard_pid("agent-guard.c.10417"), Some(10417));
        assert_eq!(guard_pid("agent-guard.recorder.py.14456"), Some(14456));
        assert_eq!(guard_pid("agent-guard.doctor.5"), Some(5));
        assert_eq!(guard_pid("agent-guard.x"), None);
        assert_eq!(guard_pid("agent-guard.x.0"), None);
        assert_eq!(guard_pid("agent-guard.x.-3"), None);
        assert_eq!(guard_pid("other.x.12"), None);
        assert_eq!(guard_pid("agent-guard.x.12a"), None);
    }

    #[test]
    fn parses_the_kernel_files() {
        assert_eq!(parse_populated("populated 1\nfrozen 0\n"), Some(true));
        assert_eq!(parse_populated("populated 0\nfrozen 0\n"), Some(false));
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed(events, "oom_kill"), Some(1));
        assert_eq!(keyed(events, "oom"), Some(2));
        let psi = "some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\n\
                   full avg10=0.25 avg60=0.00 avg300=0.00 total=99\n";
        assert_eq!(
            parse_pressure(psi),
            Some(Pressure {
                some_avg10: 1.5,
                some_total_usec: 1234,
                full_avg10: Some(0.25),
                full_total_usec: Some(99),
            })
        );
        assert_eq!(parse_pressure("garbage"), None);
    }
}
