//! Several guards on one host share its lifecycle hooks through `--hooks-dir`: each registers
//! for the hooks it handles, the termination hook is completed once, by the last guard whose
//! agent is gone, and the launch hook once every registered guard's agent is ready.
//!
//! Layout, one directory per hook: `DIR/terminate.NAME/` (or `launch.NAME/`, `/` in a hook name
//! written `+`) holds
//! - `guards/NAME.PID.json`: one guard's registration, its state as JSON (starting, ready, gone
//!   with the agent's result). The guard holds an exclusive `flock` on it for its whole life, so
//!   the kernel itself says whether the guard still lives: a crashed or SIGKILLed guard's lock is
//!   released with its last file descriptor, and a pid file could never say that (pids are
//!   reused).
//! - `.lock`: every read and write of the directory happens under an exclusive `flock` on it, so
//!   two guards finishing at the same moment decide one after the other: the second sees the
//!   first gone, and exactly one of them completes the hook.
//! - `claim`: the registration of the guard completing the hook; a claim whose guard died is
//!   taken over.
//! - `done.json`: how the hook's work ended, and by whom.
//!
//! Everything here is plain blocking file I/O on a tmpfs, bounded by the lock's deadline;
//! callers run it off the async thread. [`Registration`] decides; it makes no AWS call.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::HookResult;

/// How long a guard waits for another to finish its turn under the directory lock (each turn
/// is a few small file operations).
const LOCK_WITHIN: Duration = Duration::from_secs(10);

/// Which hook a registration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookKind {
    Launch,
    Terminate,
}

impl HookKind {
    fn as_str(self) -> &'static str {
        match self {
            HookKind::Launch => "launch",
            HookKind::Terminate => "terminate",
        }
    }
}

/// Why the hooks directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HooksDirError {
    #[error("--hooks-dir: cannot use {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--hooks-dir: {path} stayed locked by another guard for 10s")]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HooksDirError + '_ {
    move |source| HooksDirError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a guard's agent stands, as the other guards read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Standing {
    /// The agent runs and is not ready yet.
    Starting,
    /// The agent is ready.
    Ready,
    /// The agent and its process group are gone.
    Gone,
}

/// One guard's registration, as written in its file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub pid: u32,
    pub standing: Standing,
    /// What the agent asks of the hook, once gone (or, for the launch hook, when it failed).
    pub result: Option<HookResult>,
    /// The guard saw a drain that ends the instance; a guard whose agent left by itself before
    /// does not decide the termination hook's result.
    pub terminating: bool,
    /// What the agent counts as if its guard dies without a word (its `--on-unclean-exit`).
    pub on_unclean: HookResult,
}

impl Entry {
    /// `indexer (pid 812)`.
    pub fn label(&self) -> String {
        format!("{} (pid {})", self.name, self.pid)
    }
}

/// How the hook's work ended, written once by the guard that did it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    /// `completed`, `nothing-to-complete`, `gave-up`.
    pub state: String,
    pub result: Option<HookResult>,
    /// The guard that did it, as `name (pid N)`.
    pub by: String,
}

/// What a guard does next with a hook, decided under the directory lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// This guard completes the hook, with this result; it holds the claim. `because` names the
    /// guards whose unclean exit made it ABANDON.
    Complete {
        result: HookResult,
        because: Vec<String>,
    },
    /// Other guards come first (their agents still run, or one of them is completing): look
    /// again later. Each as `name (pid N)`.
    Wait { others: Vec<String> },
    /// The hook's work is over.
    Done(Finished),
    /// No guard saw a drain that ends the instance: there is no termination to complete.
    NotNeeded,
}

/// Another guard's registration, read under the lock.
#[derive(Debug, Clone)]
struct Peer {
    file: String,
    entry: Option<Entry>,
    alive: bool,
}

/// This guard's registration for one hook. Dropping it releases the lock on its file: the
/// others then see it as a guard gone without a word, so call [`Registration::leave`] first.
#[derive(Debug)]
pub struct Registration {
    hook_dir: PathBuf,
    file_name: String,
    file: File,
    entry: Entry,
    registered: Instant,
}

/// The exclusive lock on a hook directory, released when dropped.
struct DirLock(File);

impl DirLock {
    fn take(hook_dir: &Path) -> Result<DirLock, HooksDirError> {
        let path = hook_dir.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| File::open(&path))
            .map_err(io(&path))?;
        let until = Instant::now() + LOCK_WITHIN;
        let mut pause = Duration::from_millis(1);
        loop {
            match try_lock(&file) {
                Ok(true) => return Ok(DirLock(file)),
                Ok(false) if Instant::now() < until => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Ok(false) => return Err(HooksDirError::Busy { path }),
                Err(source) => return Err(HooksDirError::Io { path, source }),
            }
        }
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first says so plainly.
        // SAFETY: flock on a descriptor this struct owns.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// An exclusive lock without waiting: `Ok(false)` when another open file holds one.
fn try_lock(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a valid descriptor owned by `file`.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// The directory of one hook: `/` is not allowed in a file name, `+` is not in a hook name.
pub fn hook_dir(root: &Path, kind: HookKind, hook: &str) -> PathBuf {
    root.join(format!("{}.{}", kind.as_str(), hook.replace('/', "+")))
}

impl Registration {
    /// Registers this guard (`name`, this process) for `hook`. The first guard of a new round
    /// (no other live registration) clears what an earlier round left; a later one removes only
    /// the stale registrations of its own name (its predecessor's, after a restart).
    pub fn register(
        root: &Path,
        kind: HookKind,
        hook: &str,
        name: &str,
        on_unclean: HookResult,
    ) -> Result<Registration, HooksDirError> {
        let hook_dir = hook_dir(root, kind, hook);
        let guards = hook_dir.join("guards");
        fs::create_dir_all(&guards).map_err(io(&guards))?;
        let _lock = DirLock::take(&hook_dir)?;
        let pid = std::process::id();
        let file_name = format!("{name}.{pid}.json");
        let peers = read_peers(&hook_dir, &file_name)?;
        if peers.iter().all(|p| !p.alive) {
            for stale in ["claim", "done.json"] {
                let _ = fs::remove_file(hook_dir.join(stale));
            }
            for p in &peers {
                let _ = fs::remove_file(guards.join(&p.file));
            }
        } else {
            let mine = |p: &&Peer| !p.alive && p.entry.as_ref().is_some_and(|e| e.name == name);
            for p in peers.iter().filter(mine) {
                let _ = fs::remove_file(guards.join(&p.file));
            }
        }
        let path = guards.join(&file_name);
        // A file of this name is a dead guard's whose pid this process now has.
        let _ = fs::remove_file(&path);
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        if !try_lock(&file).map_err(io(&path))? {
            return Err(HooksDirError::Busy { path });
        }
        let mut registration = Registration {
            hook_dir,
            file_name,
            file,
            entry: Entry {
                name: name.to_string(),
                pid,
                standing: Standing::Starting,
                result: None,
                terminating: false,
                on_unclean,
            },
            registered: Instant::now(),
        };
        registration.write()?;
        Ok(registration)
    }

    /// How long ago this guard registered.
    pub fn age(&self) -> Duration {
        self.registered.elapsed()
    }

    /// This guard as the others see it.
    pub fn label(&self) -> String {
        self.entry.label()
    }

    fn write(&mut self) -> Result<(), HooksDirError> {
        let path = self.hook_dir.join("guards").join(&self.file_name);
        let text = serde_json::to_vec(&self.entry).unwrap_or_default();
        self.file.set_len(0).map_err(io(&path))?;
        self.file.seek(SeekFrom::Start(0)).map_err(io(&path))?;
        self.file.write_all(&text).map_err(io(&path))
    }

    /// The agent is gone with `result`; `terminating` if this guard drained it for a drain that
    /// ends the instance. Then decides, as [`Registration::termination`] does.
    /// A guard that did not drain for the termination decides nothing ([`Decision::NotNeeded`]):
    /// the guards that did are still there, and the last of them completes.
    pub fn agent_gone(
        &mut self,
        result: HookResult,
        terminating: bool,
    ) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        self.entry.standing = Standing::Gone;
        self.entry.result = Some(result);
        self.entry.terminating = terminating;
        self.write()?;
        if !terminating {
            return Ok(Decision::NotNeeded);
        }
        self.decide_termination()
    }

    /// For the termination hook, once this guard's agent is gone: complete it if every other
    /// registered guard's agent is gone too (or its guard died), else wait. ABANDON from any
    /// guard that drained for the termination, or from a guard that died without a word, wins
    /// over CONTINUE.
    pub fn termination(&mut self) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        self.decide_termination()
    }

    fn decide_termination(&mut self) -> Result<Decision, HooksDirError> {
        if let Some(done) = self.finished()? {
            return Ok(Decision::Done(done));
        }
        let peers = read_peers(&self.hook_dir, &self.file_name)?;
        if let Some(claimer) = self.live_claim(&peers)? {
            return Ok(Decision::Wait {
                others: vec![claimer],
            });
        }
        let running: Vec<String> = peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| p.entry.as_ref())
            .filter(|e| e.standing != Standing::Gone)
            .map(Entry::label)
            .collect();
        if !running.is_empty() {
            return Ok(Decision::Wait { others: running });
        }
        let others: Vec<&Peer> = peers.iter().collect();
        let terminating =
            self.entry.terminating || others.iter().any(|p| counted(p).is_some_and(|e| e.0));
        if !terminating {
            return Ok(Decision::NotNeeded);
        }
        let mut because: Vec<String> = others
            .iter()
            .filter_map(|p| counted(p).map(|(_, result, label)| (result, label)))
            .filter(|(result, _)| *result == HookResult::Abandon)
            .map(|(_, label)| label)
            .collect();
        if self.entry.result == Some(HookResult::Abandon) {
            because.insert(0, self.label());
        }
        self.claim()?;
        let result = if because.is_empty() {
            HookResult::Continue
        } else {
            HookResult::Abandon
        };
        Ok(Decision::Complete { result, because })
    }

    /// This guard's agent is ready. Then decides, as [`Registration::launch`] does.
    pub fn agent_ready(&mut self) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        self.entry.standing = Standing::Ready;
        self.write()?;
        self.decide_launch()
    }

    /// For the launch hook, once this guard's agent is ready: complete it with CONTINUE if every
    /// other live guard's agent is ready (or gone), else wait. A guard that died without a word
    /// is not waited for: systemd restarts it, and it registers again.
    pub fn launch(&mut self) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        self.decide_launch()
    }

    fn decide_launch(&mut self) -> Result<Decision, HooksDirError> {
        if let Some(done) = self.finished()? {
            return Ok(Decision::Done(done));
        }
        let peers = read_peers(&self.hook_dir, &self.file_name)?;
        if let Some(claimer) = self.live_claim(&peers)? {
            return Ok(Decision::Wait {
                others: vec![claimer],
            });
        }
        let starting: Vec<String> = peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| p.entry.as_ref())
            .filter(|e| e.standing == Standing::Starting)
            .map(Entry::label)
            .collect();
        if !starting.is_empty() {
            return Ok(Decision::Wait { others: starting });
        }
        self.claim()?;
        Ok(Decision::Complete {
            result: HookResult::Continue,
            because: Vec::new(),
        })
    }

    /// This guard's agent failed its launch (not ready in time, or gone first): ABANDON wins,
    /// so this guard completes the launch hook at once, unless its work is already over.
    pub fn launch_failed(&mut self) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        self.entry.standing = Standing::Gone;
        self.entry.result = Some(HookResult::Abandon);
        self.write()?;
        if let Some(done) = self.finished()? {
            return Ok(Decision::Done(done));
        }
        self.claim()?;
        Ok(Decision::Complete {
            result: HookResult::Abandon,
            because: vec![self.label()],
        })
    }

    /// The launch hook pauses the instance again: it left a warm pool (`Warmed:Pending:Wait`
    /// was completed, `Pending:Wait` is next). This guard's agent counts as starting again, and
    /// the last round's end is forgotten so that this round's completion is made. Guards
    /// released together each start the new round within a notice poll of each other; one that
    /// has not yet still counts its agent ready from the warm round until it does.
    pub fn new_round(&mut self) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        self.entry.standing = Standing::Starting;
        self.entry.result = None;
        self.write()?;
        for stale in ["claim", "done.json"] {
            let _ = fs::remove_file(self.hook_dir.join(stale));
        }
        Ok(())
    }

    /// The hook's work is over (`state` as in `/status`): written once for every guard to read;
    /// the registrations of dead guards, and the claim, are removed.
    pub fn finish(&mut self, state: &str, result: Option<HookResult>) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        let path = self.hook_dir.join("done.json");
        let done = Finished {
            state: state.to_string(),
            result,
            by: self.label(),
        };
        let text = serde_json::to_vec(&done).unwrap_or_default();
        fs::write(&path, text).map_err(io(&path))?;
        let guards = self.hook_dir.join("guards");
        for p in read_peers(&self.hook_dir, &self.file_name)? {
            if !p.alive {
                let _ = fs::remove_file(guards.join(&p.file));
            }
        }
        let _ = fs::remove_file(self.hook_dir.join("claim"));
        Ok(())
    }

    /// The guard exits. Its registration goes, unless it still counts: a drained agent's result
    /// that no guard has acted on yet stays for the guard that will.
    pub fn leave(self) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.hook_dir)?;
        let pending = self.entry.standing == Standing::Gone
            && self.entry.terminating
            && self.finished()?.is_none();
        if !pending {
            let path = self.hook_dir.join("guards").join(&self.file_name);
            fs::remove_file(&path).map_err(io(&path))?;
        }
        Ok(())
    }

    fn finished(&self) -> Result<Option<Finished>, HooksDirError> {
        let path = self.hook_dir.join("done.json");
        match fs::read(&path) {
            Ok(text) => Ok(serde_json::from_slice(&text).ok()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(HooksDirError::Io { path, source }),
        }
    }

    /// The guard holding a claim, if it is another and alive.
    fn live_claim(&self, peers: &[Peer]) -> Result<Option<String>, HooksDirError> {
        let path = self.hook_dir.join("claim");
        let claimer = match fs::read_to_string(&path) {
            Ok(text) => text.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(HooksDirError::Io { path, source }),
        };
        Ok(peers
            .iter()
            .find(|p| p.alive && p.file == claimer)
            .and_then(|p| p.entry.as_ref())
            .map(|e| format!("{}, completing it", e.label())))
    }

    fn claim(&self) -> Result<(), HooksDirError> {
        let path = self.hook_dir.join("claim");
        fs::write(&path, &self.file_name).map_err(io(&path))
    }
}

/// What a peer's registration counts for in the termination hook's result: (drained for the
/// termination, its result, its label). A guard that drained for the termination counts with
/// its agent's result; one that died without a word, with its `--on-unclean-exit` (its agent
/// was killed with it, or left unsupervised); one whose agent left by itself earlier, not at
/// all.
fn counted(peer: &Peer) -> Option<(bool, HookResult, String)> {
    let entry = peer.entry.as_ref()?;
    match (entry.standing, entry.result) {
        (Standing::Gone, Some(result)) if entry.terminating => Some((true, result, entry.label())),
        (Standing::Gone, _) => None,
        _ if !peer.alive => Some((
            false,
            entry.on_unclean,
            format!("{}, gone without a word", entry.label()),
        )),
        _ => None,
    }
}

/// Every other guard's registration, with whether its guard lives (holds its lock).
fn read_peers(hook_dir: &Path, own: &str) -> Result<Vec<Peer>, HooksDirError> {
    let guards = hook_dir.join("guards");
    let mut peers = Vec::new();
    for item in fs::read_dir(&guards).map_err(io(&guards))? {
        let item = item.map_err(io(&guards))?;
        let file = item.file_name().to_string_lossy().into_owned();
        if file == own || !file.ends_with(".json") {
            continue;
        }
        let path = item.path();
        // Gone between the listing and now: nothing to read.
        let Ok(mut handle) = File::open(&path) else {
            continue;
        };
        // Holding the lock for a moment is harmless: a live guard's lock makes this fail.
        let alive = !try_lock(&handle).map_err(io(&path))?;
        let mut text = String::new();
        let entry = handle
            .read_to_string(&mut text)
            .ok()
            .and_then(|_| serde_json::from_str(&text).ok());
        peers.push(Peer { file, entry, alive });
    }
    peers.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTINUE: HookResult = HookResult::Continue;
    const ABANDON: HookResult = HookResult::Abandon;

    fn guard(root: &Path, kind: HookKind, name: &str) -> Registration {
        Registration::register(root, kind, "drain/hook", name, ABANDON).expect("registers")
    }

    fn complete(result: HookResult, because: &[String]) -> Decision {
        Decision::Complete {
            result,
            because: because.to_vec(),
        }
    }

    #[test]
    fn the_last_agent_out_completes_once() {
        let root = tempfile::tempdir().expect("tmp");
        let mut fast = guard(root.path(), HookKind::Terminate, "fast");
        let mut slow = guard(root.path(), HookKind::Terminate, "slow");
        assert!(root.path().join("terminate.drain+hook/guards").is_dir());
        let d = fast.agent_gone(CONTINUE, true).expect("decides");
        assert_eq!(
            d,
            Decision::Wait {
                others: vec![slow.label()]
            }
        );
        assert_eq!(fast.termination().expect("decides"), d, "still waiting");
        assert_eq!(
            slow.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[])
        );
        // The completer holds the claim: the other waits for it, and never completes too.
        assert_eq!(
            fast.termination().expect("decides"),
            Decision::Wait {
                others: vec![format!("{}, completing it", slow.label())]
            }
        );
        slow.finish("completed", Some(CONTINUE)).expect("finishes");
        let done = Finished {
            state: "completed".to_string(),
            result: Some(CONTINUE),
            by: slow.label(),
        };
        assert_eq!(fast.termination().expect("decides"), Decision::Done(done));
        fast.leave().expect("leaves");
        slow.leave().expect("leaves");
        let left = fs::read_dir(root.path().join("terminate.drain+hook/guards"))
            .expect("dir")
            .count();
        assert_eq!(left, 0, "every registration removed");
    }

    #[test]
    fn abandon_from_any_guard_wins() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let mut b = guard(root.path(), HookKind::Terminate, "b");
        assert!(matches!(
            a.agent_gone(ABANDON, true).expect("decides"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            b.agent_gone(CONTINUE, true).expect("decides"),
            complete(ABANDON, &[a.label()])
        );
    }

    #[test]
    fn a_guard_gone_without_a_word_holds_nobody_up_and_counts_as_unclean() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let killed = guard(root.path(), HookKind::Terminate, "killed");
        let label = killed.label();
        // As SIGKILL would: the descriptor closes, the file stays.
        drop(killed);
        assert_eq!(
            a.agent_gone(CONTINUE, true).expect("decides"),
            complete(ABANDON, &[format!("{label}, gone without a word")])
        );
    }

    #[test]
    fn a_completer_that_dies_is_taken_over() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let mut b = guard(root.path(), HookKind::Terminate, "b");
        assert!(matches!(
            a.agent_gone(CONTINUE, true).expect("decides"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            b.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[])
        );
        // b dies mid-completion, after recording its agent's clean exit.
        drop(b);
        assert_eq!(
            a.termination().expect("decides"),
            complete(CONTINUE, &[]),
            "a dead guard's recorded result counts, and its claim is void"
        );
    }

    #[test]
    fn a_guard_whose_agent_left_by_itself_decides_nothing_and_holds_nobody_up() {
        let root = tempfile::tempdir().expect("tmp");
        let mut drained = guard(root.path(), HookKind::Terminate, "drained");
        let mut crashed = guard(root.path(), HookKind::Terminate, "crashed");
        assert!(matches!(
            drained.agent_gone(CONTINUE, true).expect("decides"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            crashed.agent_gone(ABANDON, false).expect("decides"),
            Decision::NotNeeded
        );
        assert_eq!(
            drained.termination().expect("decides"),
            complete(CONTINUE, &[]),
            "its result does not count"
        );
        // Alone and not draining for a termination: nothing to complete.
        let other = tempfile::tempdir().expect("tmp");
        let mut alone = guard(other.path(), HookKind::Terminate, "alone");
        assert_eq!(
            alone.agent_gone(CONTINUE, false).expect("decides"),
            Decision::NotNeeded
        );
    }

    #[test]
    fn a_pending_result_stays_after_its_guard_leaves_and_a_new_round_starts_clean() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let b = guard(root.path(), HookKind::Terminate, "b");
        assert!(matches!(
            a.agent_gone(ABANDON, true).expect("decides"),
            Decision::Wait { .. }
        ));
        a.leave().expect("leaves");
        let mut c = guard(root.path(), HookKind::Terminate, "c");
        drop(b);
        let d = c.agent_gone(CONTINUE, true).expect("decides");
        assert!(
            matches!(&d, Decision::Complete { result: HookResult::Abandon, because } if because.len() == 2),
            "{d:?}"
        );
        c.finish("completed", Some(ABANDON)).expect("finish");
        c.leave().expect("leaves");
        // Nobody alive: the next guard starts a new round, with nothing left of this one.
        let mut d = guard(root.path(), HookKind::Terminate, "d");
        assert_eq!(
            d.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[])
        );
    }

    #[test]
    fn a_restarted_guard_replaces_its_dead_predecessor() {
        let root = tempfile::tempdir().expect("tmp");
        let mut other = guard(root.path(), HookKind::Terminate, "other");
        let before = guard(root.path(), HookKind::Terminate, "worker");
        drop(before);
        // Same name, same pid here (one test process): the file is replaced, not shared.
        let mut after = guard(root.path(), HookKind::Terminate, "worker");
        assert!(matches!(
            other.agent_gone(CONTINUE, true).expect("decides"),
            Decision::Wait { others } if others == [after.label()]
        ));
        assert_eq!(
            after.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[]),
            "no unclean predecessor counted"
        );
    }

    #[test]
    fn the_launch_hook_waits_for_every_agent_to_be_ready_and_abandon_wins() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Launch, "a");
        let mut b = guard(root.path(), HookKind::Launch, "b");
        assert_eq!(
            a.agent_ready().expect("decides"),
            Decision::Wait {
                others: vec![b.label()]
            }
        );
        assert_eq!(b.agent_ready().expect("decides"), complete(CONTINUE, &[]));
        b.finish("completed", Some(CONTINUE)).expect("finish");
        assert!(matches!(a.launch().expect("decides"), Decision::Done(_)));

        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Launch, "a");
        let mut b = guard(root.path(), HookKind::Launch, "b");
        assert!(matches!(
            a.agent_ready().expect("decides"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            b.launch_failed().expect("decides"),
            complete(ABANDON, &[b.label()])
        );
        b.finish("completed", Some(ABANDON)).expect("finish");
        assert!(matches!(
            a.launch().expect("decides"),
            Decision::Done(Finished {
                result: Some(HookResult::Abandon),
                ..
            })
        ));
    }

    #[test]
    fn two_guards_finishing_at_the_same_moment_complete_exactly_once() {
        for _ in 0..20 {
            let root = tempfile::tempdir().expect("tmp");
            let guards: Vec<Registration> = (0..4)
                .map(|i| guard(root.path(), HookKind::Terminate, &format!("g{i}")))
                .collect();
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(guards.len()));
            let threads: Vec<_> = guards
                .into_iter()
                .map(|mut g| {
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        let d = g.agent_gone(CONTINUE, true).expect("decides");
                        (d, g)
                    })
                })
                .collect();
            let decided: Vec<(Decision, Registration)> = threads
                .into_iter()
                .map(|t| t.join().expect("thread"))
                .collect();
            let completers = decided
                .iter()
                .filter(|(d, _)| matches!(d, Decision::Complete { .. }))
                .count();
            assert_eq!(
                completers,
                1,
                "{:?}",
                decided.iter().map(|d| &d.0).collect::<Vec<_>>()
            );
        }
    }
}
