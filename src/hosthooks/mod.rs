//! Several guards on one host share its lifecycle hooks through `--hooks-dir`: each registers
//! for the hooks it handles, the termination hook is completed once, by the last guard whose
//! agent is gone, and the launch hook once every registered guard's agent is ready. This is the
//! registry and its decision; it makes no AWS call (`aws::termination` and `aws::lifecycle` act
//! on what it decides), and its files are reached through the safe layer of [`crate::fsat`].
//!
//! Layout, one directory per hook: `DIR/terminate.NAME/` (or `launch.NAME/`, `/` in a hook name
//! written `+`) holds
//! - `guards/NAME.PID.json`: one guard's registration, its state as JSON (starting, ready, held
//!   in a warm pool, gone with the agent's result; the launch round that state belongs to; and
//!   what identifies its agent). The guard holds an exclusive
//!   `flock` on it for its whole life, so the kernel itself says whether the guard still lives:
//!   a crashed or SIGKILLed guard's lock is released with its last file descriptor, and a pid
//!   file could never say that (pids are reused). Each version is written whole under a
//!   temporary name, locked, then renamed into place: no guard ever reads one empty.
//! - `.lock`: every read and write of the directory happens under an exclusive `flock` on it, so
//!   two guards finishing at the same moment decide one after the other: the second sees the
//!   first gone, and exactly one of them completes the hook.
//! - `claim`: the registration of the guard completing the hook; a claim whose guard died is
//!   taken over.
//! - `done.json`: how the hook's work ended (in which launch round), and by whom.
//!
//! What cannot be known counts as someone there, never as absent: a registration that cannot be
//! read or parsed, or that another user could have changed, holds the others up (bounded by the
//! wait bound, and named in their log and `/status`), and so does a guard that died while its
//! agent still runs (its process group and its cgroup, recorded in its registration:
//! [`agent`]) until that agent is gone.
//!
//! Guards running as different users (a unit's `User=` drop-in) share the directory through a
//! group: when its root is group-writable and not world-writable (`d /run/agent-guard 3775 root
//! agent-guard`, packaging/systemd/agent-guard.conf), every directory made under it is 0770 and
//! every file 0660, each given the root's group, so any guard of that group can take the lock,
//! read and remove the others' registrations, and replace `claim` and `done.json`. Nothing is
//! open to other users: `flock` needs only read access, so who can read a file can hold its lock.
//! Under any other root the modes come from the umask, never writable by every user. An entry
//! owned by a user other than the guard's own, root, or (shared) a member of the group, or one
//! every user may write, is refused with one line (`fsat::Rules`).
//!
//! Everything here is plain blocking file I/O on a tmpfs, bounded by the lock's deadline;
//! callers run it off the async thread. [`Registration`] decides.

pub mod agent;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::HookResult;
use crate::fsat::{self, Dir, Locked, Untrusted};
use crate::hosthooks::agent::AgentId;

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
    /// Refused by the permissions: said apart, since the fix is the group setup, not the code.
    #[error(
        "--hooks-dir: cannot use {path}: {source} (guards running as different users share it \
         through a group: docs/operations.md, \"Several guards on one instance\")"
    )]
    Denied {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another user could change it, and with it what the guards decide.
    #[error(
        "--hooks-dir: refusing {path}: {why}; another user could change what the guards there \
         decide (docs/operations.md, \"Several guards on one instance\")"
    )]
    Untrusted { path: PathBuf, why: String },
    #[error("--hooks-dir: {path} stayed locked by another guard for 10s")]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HooksDirError + '_ {
    move |source| {
        let path = path.to_path_buf();
        if let Some(refused) = Untrusted::of(&source) {
            return HooksDirError::Untrusted {
                path: refused.path.clone(),
                why: refused.why.clone(),
            };
        }
        match source.raw_os_error() {
            Some(libc::EACCES | libc::EPERM) => HooksDirError::Denied { path, source },
            _ => HooksDirError::Io { path, source },
        }
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
    /// The agent is held back in a warm pool (`--in-warm-pool wait`) and does not run, by
    /// design: ready for the launch round the instance entered the pool with, not for a later
    /// one (a guard that has not seen the release yet).
    Held,
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
    /// The agent that runs now, once started: a guard that dies while it still runs is
    /// waited for until it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<AgentId>,
    /// The launch round its standing belongs to: each release from a warm pool begins a new
    /// one ([`Registration::new_round`]), so a standing from an earlier round is told apart.
    #[serde(default)]
    pub round: u64,
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
    /// The launch round it ended: an earlier round's end is not this round's.
    #[serde(default)]
    pub round: u64,
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
    /// Its registration, or why it cannot be used (then someone may be there: it holds the
    /// others up).
    entry: Result<Entry, String>,
    /// Its guard lives (holds the file's lock).
    alive: bool,
    /// Its guard is dead, its agent was not gone yet, and that agent still runs.
    orphan_runs: bool,
}

impl Peer {
    /// Why this peer holds up a decision that waits for live guards whose registration
    /// `holds_up` (and, with `orphans`, for dead guards whose agent still runs); `None` if it
    /// does not.
    fn holds_up(&self, holds_up: &impl Fn(&Entry) -> bool, orphans: bool) -> Option<String> {
        let entry = match &self.entry {
            Err(why) => return Some(format!("{}: {why}", self.file)),
            Ok(entry) => entry,
        };
        if self.alive && holds_up(entry) {
            return Some(match entry.standing {
                Standing::Held => format!("{}: still held in the warm pool", entry.label()),
                _ => entry.label(),
            });
        }
        let pgid = entry.agent.as_ref().map_or(0, |a| a.pgid);
        let cgroup = match entry.agent.as_ref().and_then(|a| a.cgroup.as_deref()) {
            Some(dir) => format!(", cgroup {}", dir.display()),
            None => String::new(),
        };
        (orphans && self.orphan_runs).then(|| {
            format!(
                "{}: its guard is gone, its agent (process group {pgid}{cgroup}) still runs",
                entry.label()
            )
        })
    }
}

/// This guard's registration for one hook. Dropping it releases the lock on its file: the
/// others then see it as a guard gone without a word, so call [`Registration::leave`] first.
#[derive(Debug)]
pub struct Registration {
    /// The hook's directory and its `guards/`, held open from registration on.
    dir: Dir,
    guards: Dir,
    file_name: String,
    /// The registration file, locked for the guard's life.
    file: Locked,
    entry: Entry,
    registered: Instant,
}

/// The exclusive lock on a hook directory, released when dropped.
struct DirLock {
    _held: Locked,
}

impl DirLock {
    fn take(dir: &Dir) -> Result<DirLock, HooksDirError> {
        let path = dir.at(".lock");
        let mut file = dir.lock_file(".lock").map_err(io(&path))?;
        let until = Instant::now() + LOCK_WITHIN;
        let mut pause = Duration::from_millis(1);
        loop {
            match fsat::try_lock(file) {
                Ok(Ok(locked)) => return Ok(DirLock { _held: locked }),
                Ok(Err(again)) if Instant::now() < until => {
                    file = again;
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(20));
                }
                Ok(Err(_)) => return Err(HooksDirError::Busy { path }),
                Err(source) => return Err(HooksDirError::Io { path, source }),
            }
        }
    }
}

/// The name of one hook's directory: `/` is not allowed in a file name, `+` is not in a hook
/// name.
fn hook_dir_name(kind: HookKind, hook: &str) -> String {
    format!("{}.{}", kind.as_str(), hook.replace('/', "+"))
}

/// The directory of one hook.
pub fn hook_dir(root: &Path, kind: HookKind, hook: &str) -> PathBuf {
    root.join(hook_dir_name(kind, hook))
}

impl Registration {
    /// Registers this guard (`name`, this process) for `hook`. The first guard of a new round
    /// (no other live registration) clears what an earlier round left; a later one removes only
    /// the stale registrations of its own name (its predecessor's, after a restart). Neither
    /// removes a dead guard's registration whose agent still runs.
    pub fn register(
        root: &Path,
        kind: HookKind,
        hook: &str,
        name: &str,
        on_unclean: HookResult,
    ) -> Result<Registration, HooksDirError> {
        let root_dir = Dir::root(root).map_err(io(root))?;
        let dir_path = hook_dir(root, kind, hook);
        let (dir, guards) = root_dir
            .with_sub(&hook_dir_name(kind, hook), "guards")
            .map_err(io(&dir_path))?;
        let _lock = DirLock::take(&dir)?;
        let pid = std::process::id();
        let file_name = format!("{name}.{pid}.json");
        let peers = read_peers(&guards, &file_name)?;
        let round = current_round(&peers, 0);
        let new_round = peers.iter().all(|p| !p.alive);
        if new_round {
            for stale in ["claim", "done.json"] {
                let _ = dir.remove(stale);
            }
        }
        let stale = |p: &&Peer| {
            !p.alive
                && !p.orphan_runs
                && (new_round || p.entry.as_ref().is_ok_and(|e| e.name == name))
        };
        for p in peers.iter().filter(stale) {
            let _ = guards.remove(&p.file);
        }
        let entry = Entry {
            name: name.to_string(),
            pid,
            standing: Standing::Starting,
            result: None,
            terminating: false,
            on_unclean,
            agent: None,
            round,
        };
        // Whole before the directory lock is released, replacing a dead guard's file whose pid
        // this process now has: no other guard ever reads it empty.
        let path = guards.at(&file_name);
        let file = guards
            .publish_locked(&file_name, &entry_json(&entry))
            .map_err(io(&path))?;
        Ok(Registration {
            dir,
            guards,
            file_name,
            file,
            entry,
            registered: Instant::now(),
        })
    }

    /// The agent started (again): recorded, so that the other guards wait for it should this
    /// guard die while it runs.
    pub fn agent_started(&mut self, agent: AgentId) -> Result<(), HooksDirError> {
        if self.entry.agent.as_ref() == Some(&agent) {
            return Ok(());
        }
        let _lock = DirLock::take(&self.dir)?;
        self.entry.agent = Some(agent);
        self.write()
    }

    /// How long ago this guard registered.
    pub fn age(&self) -> Duration {
        self.registered.elapsed()
    }

    /// This guard as the others see it.
    pub fn label(&self) -> String {
        self.entry.label()
    }

    /// Writes this guard's entry: a new file, whole and locked, renamed over the old one (whose
    /// lock goes with it). A guard killed in between leaves the old version, never an empty one.
    fn write(&mut self) -> Result<(), HooksDirError> {
        let path = self.guards.at(&self.file_name);
        self.file = self
            .guards
            .publish_locked(&self.file_name, &entry_json(&self.entry))
            .map_err(io(&path))?;
        Ok(())
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
        let _lock = DirLock::take(&self.dir)?;
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
        let _lock = DirLock::take(&self.dir)?;
        self.decide_termination()
    }

    /// The steps both decisions begin with: the hook's work is over; another live guard holds
    /// the claim; or others keep this one waiting: live guards whose registration `holds_up`,
    /// registrations that cannot be read, and (with `orphans`) dead guards whose agent still
    /// runs. `holds_up` is given the current launch round too. `Ok(Err(peers))` when none of
    /// these decides: the other guards' registrations, for the decision's own rules.
    fn before_deciding(
        &self,
        holds_up: impl Fn(&Entry, u64) -> bool,
        orphans: bool,
    ) -> Result<Result<Decision, Vec<Peer>>, HooksDirError> {
        if let Some(done) = self.finished()? {
            return Ok(Ok(Decision::Done(done)));
        }
        let peers = read_peers(&self.guards, &self.file_name)?;
        let round = current_round(&peers, self.entry.round);
        let holds_up = |entry: &Entry| holds_up(entry, round);
        if let Some(claimer) = self.live_claim(&peers)? {
            return Ok(Ok(Decision::Wait {
                others: vec![claimer],
            }));
        }
        let waiting_on: Vec<String> = peers
            .iter()
            .filter_map(|p| p.holds_up(&holds_up, orphans))
            .collect();
        if !waiting_on.is_empty() {
            return Ok(Ok(Decision::Wait { others: waiting_on }));
        }
        Ok(Err(peers))
    }

    fn decide_termination(&mut self) -> Result<Decision, HooksDirError> {
        // Waits for every live guard whose agent is not gone yet.
        let peers = match self.before_deciding(|e, _| e.standing != Standing::Gone, true)? {
            Ok(decided) => return Ok(decided),
            Err(peers) => peers,
        };
        let terminating =
            self.entry.terminating || peers.iter().any(|p| counted(p).is_some_and(|e| e.0));
        if !terminating {
            return Ok(Decision::NotNeeded);
        }
        let mut because: Vec<String> = peers
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
        self.ready_as(Standing::Ready)
    }

    /// This guard holds its agent back in a warm pool (`--in-warm-pool wait`): its part of the
    /// launch round the instance entered the pool with is done. Then decides, as
    /// [`Registration::launch`] does.
    pub fn held(&mut self) -> Result<Decision, HooksDirError> {
        self.ready_as(Standing::Held)
    }

    fn ready_as(&mut self, standing: Standing) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.dir)?;
        self.entry.standing = standing;
        self.write()?;
        self.decide_launch()
    }

    /// For the launch hook, once this guard's agent is ready (or held): complete it with
    /// CONTINUE if every other live guard's agent is ready, held or gone in this round, else
    /// wait. A guard that died without a word is not waited for: systemd restarts it, and it
    /// registers again.
    pub fn launch(&mut self) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.dir)?;
        self.decide_launch()
    }

    fn decide_launch(&mut self) -> Result<Decision, HooksDirError> {
        // Waits for every live guard whose agent is not ready yet (a gone one holds nobody up),
        // and for every guard still held from an earlier round: released later than this one,
        // its agent has not even started. A ready agent's readiness is its own, whatever the
        // round (`--in-warm-pool run` keeps its agent running through the release).
        let not_ready = |e: &Entry, round: u64| match e.standing {
            Standing::Starting => true,
            Standing::Held => e.round < round,
            Standing::Ready | Standing::Gone => false,
        };
        let peers = match self.before_deciding(not_ready, false)? {
            Ok(decided) => return Ok(decided),
            Err(peers) => peers,
        };
        // Behind: another guard began a later round, so this one's is over (its end is read
        // from `done.json` first); this guard joins the new round once released.
        if current_round(&peers, self.entry.round) > self.entry.round {
            return Ok(Decision::NotNeeded);
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
        let _lock = DirLock::take(&self.dir)?;
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
    /// was completed, `Pending:Wait` is next). This guard's agent counts as starting again, in
    /// a new round: the first guard released begins it (the round after its own), a later one
    /// joins it. Guards released together see the release up to a notice poll apart, and one
    /// that has not yet is still held from the earlier round: that holds the others up
    /// ([`Registration::launch`]) until it joins and its own agent is ready. The earlier
    /// round's `done.json` stays, told apart by its round, so a late write of it is harmless.
    pub fn new_round(&mut self) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.dir)?;
        let peers = read_peers(&self.guards, &self.file_name)?;
        let current = current_round(&peers, self.entry.round);
        if current == self.entry.round {
            self.entry.round = current.saturating_add(1);
            let _ = self.dir.remove("claim");
        } else {
            self.entry.round = current;
        }
        self.entry.standing = Standing::Starting;
        self.entry.result = None;
        self.write()
    }

    /// The hook's work is over (`state` as in `/status`): written once for every guard to read;
    /// the registrations of dead guards, and the claim, are removed.
    pub fn finish(&mut self, state: &str, result: Option<HookResult>) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.dir)?;
        let path = self.dir.at("done.json");
        let done = Finished {
            state: state.to_string(),
            result,
            by: self.label(),
            round: self.entry.round,
        };
        let text = serde_json::to_vec(&done).unwrap_or_default();
        self.dir.replace("done.json", &text).map_err(io(&path))?;
        for p in read_peers(&self.guards, &self.file_name)? {
            if !p.alive {
                let _ = self.guards.remove(&p.file);
            }
        }
        let _ = self.dir.remove("claim");
        Ok(())
    }

    /// The guard exits. Its registration goes, unless it still counts: a drained agent's result
    /// that no guard has acted on yet stays for the guard that will.
    pub fn leave(self) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.dir)?;
        let pending = self.entry.standing == Standing::Gone
            && self.entry.terminating
            && self.finished()?.is_none();
        if !pending {
            let path = self.guards.at(&self.file_name);
            self.guards.remove(&self.file_name).map_err(io(&path))?;
        }
        Ok(())
    }

    /// How this guard's round ended, if it did: a `done.json` of an earlier round is not
    /// this one's.
    fn finished(&self) -> Result<Option<Finished>, HooksDirError> {
        let path = self.dir.at("done.json");
        let text = self.dir.read("done.json").map_err(io(&path))?;
        Ok(text
            .and_then(|text| serde_json::from_slice::<Finished>(&text).ok())
            .filter(|done| done.round >= self.entry.round))
    }

    /// The guard holding a claim, if it is another and alive.
    fn live_claim(&self, peers: &[Peer]) -> Result<Option<String>, HooksDirError> {
        let path = self.dir.at("claim");
        let Some(text) = self.dir.read("claim").map_err(io(&path))? else {
            return Ok(None);
        };
        let claimer = String::from_utf8_lossy(&text).trim().to_string();
        Ok(peers
            .iter()
            .find(|p| p.alive && p.file == claimer)
            .map(|p| {
                let who = p.entry.as_ref().map_or(p.file.clone(), Entry::label);
                format!("{who}, completing it")
            }))
    }

    fn claim(&self) -> Result<(), HooksDirError> {
        let path = self.dir.at("claim");
        self.dir
            .replace("claim", self.file_name.as_bytes())
            .map_err(io(&path))
    }
}

/// What a peer's registration counts for in the termination hook's result: (drained for the
/// termination, its result, its label). A guard that drained for the termination counts with
/// its agent's result; one that died without a word, with its `--on-unclean-exit` (its agent
/// was killed with it, left unsupervised, or ran on until it was gone); one whose agent left by
/// itself earlier, not at all.
fn counted(peer: &Peer) -> Option<(bool, HookResult, String)> {
    let entry = peer.entry.as_ref().ok()?;
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

/// The latest launch round any guard has begun, `own` included: registrations that cannot be
/// read say nothing of it (and hold the others up anyway).
fn current_round(peers: &[Peer], own: u64) -> u64 {
    peers
        .iter()
        .filter_map(|p| p.entry.as_ref().ok())
        .map(|e| e.round)
        .fold(own, u64::max)
}

/// The registration as written: a plain struct, whose serialisation cannot fail.
fn entry_json(entry: &Entry) -> Vec<u8> {
    serde_json::to_vec(entry).expect("a registration serialises")
}

/// Every other guard's registration, with whether its guard lives (holds its lock) and, for a
/// dead guard whose agent was not gone yet, whether that agent still runs.
fn read_peers(guards: &Dir, own: &str) -> Result<Vec<Peer>, HooksDirError> {
    let mut peers = Vec::new();
    for file in guards.list().map_err(io(guards.path()))? {
        if file == own || !file.ends_with(".json") {
            continue;
        }
        if let Some(peer) = read_peer(guards, file)? {
            peers.push(peer);
        }
    }
    peers.sort_by(|a, b| a.file.cmp(&b.file));
    Ok(peers)
}

/// One registration; `None` if it is no guard's (gone since the listing, a symlink, not a
/// regular file).
fn read_peer(guards: &Dir, file: String) -> Result<Option<Peer>, HooksDirError> {
    let path = guards.at(&file);
    let handle = match guards.open_existing(&file) {
        Ok(Some(handle)) => handle,
        Ok(None) => return Ok(None),
        // Another user could have written it: whatever it says, someone may be there.
        Err(err) if Untrusted::of(&err).is_some() => {
            let why = Untrusted::of(&err)
                .map(|u| u.why.clone())
                .unwrap_or_default();
            return Ok(Some(Peer {
                file,
                entry: Err(format!("a registration that cannot be trusted ({why})")),
                alive: true,
                orphan_runs: false,
            }));
        }
        // Unreadable is not absent: a live guard taken for none would let this one complete
        // while that guard's agent still runs.
        Err(err) => return Err(io(&path)(err)),
    };
    // Holding the lock for a moment is harmless: a live guard's lock makes this fail.
    let (alive, handle): (bool, File) = match fsat::try_lock(handle).map_err(io(&path))? {
        Ok(locked) => (
            false,
            locked.unlock().map_err(|(_, e)| io(&path)(e.into()))?,
        ),
        Err(handle) => (true, handle),
    };
    let entry = fsat::read_bounded(&handle)
        .ok()
        .and_then(|text| serde_json::from_slice::<Entry>(&text).ok());
    let entry = entry.ok_or_else(|| {
        let whose = if alive {
            "a live guard's"
        } else {
            "a dead guard's"
        };
        format!("{whose} registration that cannot be read; someone may be there")
    });
    let orphan_runs = !alive
        && entry.as_ref().is_ok_and(|e| {
            e.standing != Standing::Gone && e.agent.as_ref().is_some_and(AgentId::alive)
        });
    Ok(Some(Peer {
        file,
        entry,
        alive,
        orphan_runs,
    }))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, Permissions};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    const CONTINUE: HookResult = HookResult::Continue;
    const ABANDON: HookResult = HookResult::Abandon;

    fn guard(root: &Path, kind: HookKind, name: &str) -> Registration {
        Registration::register(root, kind, "drain/hook", name, ABANDON).expect("registers")
    }

    fn wait(others: &[&Registration]) -> Decision {
        Decision::Wait {
            others: others.iter().map(|r| r.label()).collect(),
        }
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
            round: 0,
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
    fn out_of_a_warm_pool_a_guard_still_held_from_the_warm_round_holds_the_new_round_up() {
        let root = tempfile::tempdir().expect("tmp");
        let mut fast = guard(root.path(), HookKind::Launch, "fast");
        let mut slow = guard(root.path(), HookKind::Launch, "slow");
        // A `--in-warm-pool run` guard: its agent runs and is ready through the release.
        let mut runs = guard(root.path(), HookKind::Launch, "runs");
        assert_eq!(runs.agent_ready().expect("decides"), wait(&[&fast, &slow]));
        assert_eq!(fast.held().expect("decides"), wait(&[&slow]));
        assert_eq!(slow.held().expect("decides"), complete(CONTINUE, &[]));
        // The warm round's completer writes its end: every guard of that round reads it.
        slow.finish("completed", Some(CONTINUE)).expect("finish");
        assert!(matches!(runs.launch().expect("decides"), Decision::Done(_)));

        // Released: the fast guard begins the new round; the slow one has not seen it yet.
        fast.new_round().expect("new round");
        let held = format!("{}: still held in the warm pool", slow.label());
        assert_eq!(
            fast.agent_ready().expect("decides"),
            Decision::Wait {
                others: vec![held.clone()]
            },
            "the warm round's end is not this round's, and held is not ready"
        );
        // A late end of the warm round changes nothing.
        slow.finish("completed", Some(CONTINUE)).expect("finish");
        assert_eq!(
            fast.launch().expect("decides"),
            Decision::Wait { others: vec![held] }
        );
        // The slow guard joins the round (it does not begin another) and is last ready.
        slow.new_round().expect("joins");
        assert_eq!(fast.launch().expect("decides"), wait(&[&slow]));
        assert_eq!(
            slow.agent_ready().expect("decides"),
            complete(CONTINUE, &[])
        );
        slow.finish("completed", Some(CONTINUE)).expect("finish");
        for g in [&mut fast, &mut runs] {
            assert!(matches!(
                g.launch().expect("decides"),
                Decision::Done(Finished { round: 1, .. })
            ));
        }
    }

    #[test]
    fn a_guard_behind_the_current_round_never_completes_it() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Launch, "a");
        let mut b = guard(root.path(), HookKind::Launch, "b");
        a.new_round().expect("new round");
        a.agent_ready().expect("decides");
        // b, still in round 0 with no end of it to read: it decides nothing.
        assert_eq!(b.held().expect("decides"), Decision::NotNeeded);
        // Registered now, a guard joins the current round.
        let c = guard(root.path(), HookKind::Launch, "c");
        assert_eq!(c.entry.round, 1);
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

    #[test]
    fn a_live_guard_whose_registration_cannot_be_read_holds_the_others_up() {
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let mut b = guard(root.path(), HookKind::Terminate, "b");
        let file = root.path().join(format!(
            "terminate.drain+hook/guards/b.{}.json",
            std::process::id()
        ));
        for garbled in [&b""[..], b"{\"name\":\"b\",", b"\x00\x01garbage"] {
            // Written in place, as another member of the group could: b still holds its lock.
            fs::write(&file, garbled).expect("garble");
            let d = a.agent_gone(CONTINUE, true).expect("decides");
            assert!(
                matches!(&d, Decision::Wait { others } if others.len() == 1
                    && others[0].contains("a live guard's registration that cannot be read")),
                "{garbled:?}: {d:?}"
            );
        }
        // b writes its own again when its agent is gone: whole, and then the last one out.
        assert_eq!(
            b.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[])
        );
    }

    #[test]
    fn a_dead_guard_whose_agent_still_runs_holds_the_others_up_until_it_is_gone() {
        use std::os::unix::process::CommandExt;
        let root = tempfile::tempdir().expect("tmp");
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let mut killed = guard(root.path(), HookKind::Terminate, "killed");
        let mut agent = std::process::Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .expect("sleep");
        let pid = i32::try_from(agent.id()).expect("pid");
        killed
            .agent_started(AgentId::of(pid, None).expect("in /proc"))
            .expect("recorded");
        let label = killed.label();
        // As SIGKILL would: the lock is released, the agent runs on.
        drop(killed);
        let d = a.agent_gone(CONTINUE, true).expect("decides");
        let want =
            format!("{label}: its guard is gone, its agent (process group {pid}) still runs");
        assert_eq!(d, Decision::Wait { others: vec![want] });
        // A restarted guard of another name, and a new round, keep it too.
        guard(root.path(), HookKind::Terminate, "other")
            .leave()
            .expect("leaves");
        assert!(matches!(
            a.termination().expect("decides"),
            Decision::Wait { .. }
        ));
        agent.kill().expect("kill");
        // SIGKILL is delivered asynchronously: wait (bounded) until it is a zombie. Not reaped
        // yet: a zombie does no work.
        let zombie = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
        };
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !zombie() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            a.termination().expect("decides"),
            complete(ABANDON, &[format!("{label}, gone without a word")])
        );
        agent.wait().expect("reaped");
    }

    #[test]
    fn a_hook_directory_every_user_may_write_is_refused_with_one_line() {
        let root = tempfile::tempdir().expect("tmp");
        let planted = root.path().join("terminate.drain+hook");
        fs::create_dir_all(planted.join("guards")).expect("mkdir");
        chmod(&planted, 0o777);
        let err =
            Registration::register(root.path(), HookKind::Terminate, "drain/hook", "x", ABANDON)
                .expect_err("refused");
        assert_eq!(
            err.to_string(),
            format!(
                "--hooks-dir: refusing {}: writable by every user (mode 777); another user could \
                 change what the guards there decide (docs/operations.md, \"Several guards on \
                 one instance\")",
                planted.display()
            )
        );
        chmod(&planted, 0o755);
        chmod(&planted.join("guards"), 0o777);
        let err =
            Registration::register(root.path(), HookKind::Terminate, "drain/hook", "x", ABANDON)
                .expect_err("refused");
        assert!(
            err.to_string().contains("guards: writable by every user"),
            "{err}"
        );
    }

    #[test]
    fn a_hooks_directory_that_is_a_file_says_so() {
        let root = tempfile::tempdir().expect("tmp");
        let file = root.path().join("hooks");
        fs::write(&file, b"").expect("file");
        let err = Registration::register(&file, HookKind::Terminate, "h", "x", ABANDON)
            .expect_err("a file");
        assert_eq!(
            err.to_string(),
            format!(
                "--hooks-dir: cannot use {}: it exists and is not a directory",
                file.display()
            )
        );
    }

    /// The process's umask, from /proc: umask(2) reads it only by setting it, which would race
    /// the files the other tests make.
    fn umask() -> u32 {
        let status = fs::read_to_string("/proc/self/status").expect("/proc/self/status");
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .expect("a Umask line");
        u32::from_str_radix(line.trim(), 8).expect("octal")
    }

    fn chmod(path: &Path, mode: u32) {
        fs::set_permissions(path, Permissions::from_mode(mode)).expect("chmod");
    }

    /// Every entry under `dir`, itself first, with its mode (type bits aside) and group.
    fn walk(dir: &Path) -> Vec<(PathBuf, u32, u32, bool)> {
        let meta = fs::symlink_metadata(dir).expect("stat");
        let mut out = vec![(dir.to_path_buf(), meta.mode() & 0o7777, meta.gid(), true)];
        for item in fs::read_dir(dir).expect("read_dir") {
            let path = item.expect("entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            if meta.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push((path, meta.mode() & 0o7777, meta.gid(), false));
            }
        }
        out
    }

    /// Two guards through a round: `claim` written, then `done.json`; every entry the hook's
    /// directory ever holds, as it stands after each.
    fn a_round(root: &Path) -> Vec<(PathBuf, u32, u32, bool)> {
        let mut a = guard(root, HookKind::Terminate, "a");
        let mut b = guard(root, HookKind::Terminate, "b");
        let hook = root.join("terminate.drain+hook");
        assert!(matches!(
            a.agent_gone(CONTINUE, true).expect("decides"),
            Decision::Wait { .. }
        ));
        assert_eq!(
            b.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[])
        );
        let mut seen = walk(&hook);
        b.finish("completed", Some(CONTINUE)).expect("finishes");
        seen.extend(walk(&hook));
        let mut names: Vec<String> = seen
            .iter()
            .map(|(p, ..)| p.strip_prefix(&hook).expect("under").display().to_string())
            .collect();
        names.sort();
        names.dedup();
        let pid = std::process::id();
        let want = [
            String::new(),
            ".lock".into(),
            "claim".into(),
            "done.json".into(),
            "guards".into(),
            format!("guards/a.{pid}.json"),
            format!("guards/b.{pid}.json"),
        ];
        assert_eq!(names, want, "nothing else, no temporary file left");
        seen
    }

    #[test]
    fn a_private_or_sticky_world_writable_root_keeps_the_umask_modes_never_writable_by_all() {
        let umask = umask();
        for root_mode in [0o700, 0o755, 0o1777] {
            let root = tempfile::tempdir().expect("tmp");
            chmod(root.path(), root_mode);
            for (path, mode, _, is_dir) in a_round(root.path()) {
                let want = if is_dir { 0o775 } else { 0o664 } & !umask;
                assert_eq!(mode, want, "{} under a {root_mode:o} root", path.display());
            }
        }
    }

    #[test]
    fn a_group_writable_root_shares_everything_with_its_group_and_no_one_else() {
        // SAFETY: geteuid and getegid have no side effects.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let root = tempfile::tempdir().expect("tmp");
        // As root: a group this process is not in, and no setgid bit on the root, so that only
        // the guard's own chown can give its entries that group.
        let group = if euid == 0 { 65534 } else { egid };
        std::os::unix::fs::chown(root.path(), None, Some(group)).expect("chown");
        for root_mode in [0o770, 0o2775, 0o3775] {
            chmod(root.path(), root_mode);
            let _ = fs::remove_dir_all(root.path().join("terminate.drain+hook"));
            for (path, mode, gid, is_dir) in a_round(root.path()) {
                let want = if is_dir { 0o770 } else { 0o660 };
                assert_eq!(mode, want, "{} under a {root_mode:o} root", path.display());
                assert_eq!(gid, group, "{}", path.display());
            }
        }
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0, "mkfifo");
    }

    #[test]
    fn nothing_planted_in_the_hooks_directory_is_followed_or_blocks() {
        use std::os::unix::fs::symlink;
        let root = tempfile::tempdir().expect("tmp");
        let outside = tempfile::tempdir().expect("tmp");
        let victim = outside.path().join("victim");
        let planted = br#"{"state":"completed","result":null,"by":"planted"}"#;
        fs::write(&victim, planted).expect("victim");
        let untouched = || {
            assert_eq!(fs::read(&victim).expect("victim"), planted);
            assert_eq!(fs::read_dir(outside.path()).expect("dir").count(), 1);
        };

        // A hook's directory that is a symlink: refused, nothing made where it points.
        symlink(outside.path(), root.path().join("launch.drain+hook")).expect("symlink");
        let err = Registration::register(root.path(), HookKind::Launch, "drain/hook", "x", ABANDON);
        assert!(err.is_err(), "{err:?}");
        untouched();

        // A `.lock` that is a symlink: refused, the file it names neither made nor locked.
        let other = root.path().join("terminate.other");
        fs::create_dir_all(other.join("guards")).expect("mkdir");
        symlink(outside.path().join("made"), other.join(".lock")).expect("symlink");
        let err = Registration::register(root.path(), HookKind::Terminate, "other", "x", ABANDON);
        assert!(err.is_err(), "{err:?}");
        untouched();

        // Planted beside two guards: a symlinked `done.json` (followed, it would say the hook is
        // done), a FIFO as `claim` and as a registration (opened plainly, a reader would block),
        // a symlinked registration (followed, it would count as a dead guard's).
        let mut a = guard(root.path(), HookKind::Terminate, "a");
        let mut b = guard(root.path(), HookKind::Terminate, "b");
        let hook = root.path().join("terminate.drain+hook");
        symlink(&victim, hook.join("done.json")).expect("symlink");
        mkfifo(&hook.join("claim"));
        mkfifo(&hook.join("guards/fifo.1.json"));
        symlink(&victim, hook.join("guards/link.2.json")).expect("symlink");
        assert_eq!(
            a.agent_gone(CONTINUE, true).expect("decides"),
            Decision::Wait {
                others: vec![b.label()]
            },
            "not done, and waiting for b alone"
        );
        assert_eq!(
            b.agent_gone(CONTINUE, true).expect("decides"),
            complete(CONTINUE, &[]),
            "nothing planted counts as a guard gone without a word"
        );
        assert!(
            fs::symlink_metadata(hook.join("claim"))
                .expect("claim")
                .is_file()
        );
        b.finish("completed", Some(CONTINUE)).expect("finishes");
        let done = fs::symlink_metadata(hook.join("done.json")).expect("done.json");
        assert!(
            done.is_file(),
            "the symlink was replaced, not written through"
        );
        untouched();
        assert!(matches!(
            a.termination().expect("decides"),
            Decision::Done(Finished { by, .. }) if by == b.label()
        ));
    }

    #[test]
    fn a_refusal_by_the_permissions_points_at_the_group_setup() {
        let path = Path::new("/run/agent-guard/terminate.x/guards");
        for (errno, hint) in [
            (libc::EACCES, true),
            (libc::EPERM, true),
            (libc::ENOSPC, false),
        ] {
            let err = io(path)(std::io::Error::from_raw_os_error(errno));
            let text = err.to_string();
            assert!(text.contains("cannot use /run/agent-guard/terminate.x/guards: "));
            assert_eq!(
                text.contains("\"Several guards on one instance\""),
                hint,
                "{text}"
            );
        }
    }

    #[test]
    fn guards_registering_at_once_in_a_new_directory_all_find_each_other() {
        // SAFETY: getegid has no side effects.
        let egid = unsafe { libc::getegid() };
        for round in 0..20 {
            let root = tempfile::tempdir().expect("tmp");
            if round % 2 == 1 {
                std::os::unix::fs::chown(root.path(), None, Some(egid)).expect("chown");
                chmod(root.path(), 0o3775);
            }
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|i| {
                    let (root, barrier) = (root.path().to_path_buf(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        guard(&root, HookKind::Terminate, &format!("g{i}"))
                    })
                })
                .collect();
            let mut guards: Vec<Registration> = threads
                .into_iter()
                .map(|t| t.join().expect("registers"))
                .collect();
            let names: Vec<String> = fs::read_dir(root.path())
                .expect("root")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(
                names,
                ["terminate.drain+hook"],
                "round {round}: no leftover"
            );
            let d = guards[0].agent_gone(CONTINUE, true).expect("decides");
            assert!(
                matches!(&d, Decision::Wait { others } if others.len() == 3),
                "round {round}: {d:?}"
            );
        }
    }
}
