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
//! Guards running as different users (a unit's `User=` drop-in) share the directory through a
//! group: when its root is group-writable and not world-writable (`d /run/agent-guard 3775 root
//! agent-guard`, packaging/systemd/agent-guard.conf), every directory made under it is 0770 and
//! every file 0660, each given the root's group, so any guard of that group can take the lock,
//! read and remove the others' registrations, and replace `claim` and `done.json`. Nothing is
//! open to other users: `flock` needs only read access, so who can read a file can hold its lock.
//! Under any other root the modes come from the umask, as for any file.
//!
//! What another user can plant there is never followed: everything under the root is reached
//! through the descriptor of its directory, opened without following a symlink; `claim` and
//! `done.json` are written to a new file and renamed over the old one; a directory or `.lock` is
//! made whole (shared, with its `guards/`) under a temporary name, then moved into place, so no
//! guard finds one half made; the guard changes the owner or mode of nothing but what it has just
//! made itself. Anything that is not a regular file is no guard's and reads as absent.
//!
//! Everything here is plain blocking file I/O on a tmpfs, bounded by the lock's deadline;
//! callers run it off the async thread. [`Registration`] decides; it makes no AWS call.

use std::fs::{self, File, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::HookResult;

/// How long a guard waits for another to finish its turn under the directory lock (each turn
/// is a few small file operations).
const LOCK_WITHIN: Duration = Duration::from_secs(10);

/// The most read of one file: a registration, `claim` and `done.json` are a few hundred bytes.
const READ_AT_MOST: u64 = 64 * 1024;

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
    #[error("--hooks-dir: {path} stayed locked by another guard for 10s")]
    Busy { path: PathBuf },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HooksDirError + '_ {
    move |source| {
        let path = path.to_path_buf();
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
    /// The hook's directory and its `guards/`, held open from registration on.
    dir: Dir,
    guards: Dir,
    sharing: Sharing,
    file_name: String,
    file: File,
    entry: Entry,
    registered: Instant,
}

/// The exclusive lock on a hook directory, released when dropped.
struct DirLock(File);

impl DirLock {
    fn take(dir: &Dir, sharing: Sharing) -> Result<DirLock, HooksDirError> {
        let path = dir.at(".lock");
        let file = dir.lock_file(sharing).map_err(io(&path))?;
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

/// The name of one hook's directory: `/` is not allowed in a file name, `+` is not in a hook
/// name.
fn hook_dir_name(kind: HookKind, hook: &str) -> String {
    format!("{}.{}", kind.as_str(), hook.replace('/', "+"))
}

/// The directory of one hook.
pub fn hook_dir(root: &Path, kind: HookKind, hook: &str) -> PathBuf {
    root.join(hook_dir_name(kind, hook))
}

/// Who may use what a guard makes under the hooks directory, as the root's mode says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// Modes from the umask, as for any file: the root is one user's, or open to everyone (as
    /// /tmp, where its group means nothing).
    Private,
    /// The root is group-writable and not world-writable: every directory made under it is 0770
    /// and every file 0660, all of the root's group (this gid).
    Group(u32),
}

impl Sharing {
    fn of(root: &fs::Metadata) -> Sharing {
        let mode = root.mode();
        if mode & 0o020 != 0 && mode & 0o002 == 0 {
            Sharing::Group(root.gid())
        } else {
            Sharing::Private
        }
    }

    /// The mode a directory is made with; under a group, private until [`Sharing::share`] (the
    /// umask would strip the group's write bit anyway).
    fn dir_mode(self) -> libc::mode_t {
        match self {
            Sharing::Private => 0o777,
            Sharing::Group(_) => 0o700,
        }
    }

    /// The mode a file is made with, as [`Sharing::dir_mode`].
    fn file_mode(self) -> libc::mode_t {
        match self {
            Sharing::Private => 0o666,
            Sharing::Group(_) => 0o600,
        }
    }

    /// Shares with the group what this guard has just made, before anyone else can use it: the
    /// group first, then the mode, set explicitly since the umask strips the group's write bit.
    /// A directory gets no setgid bit: the shipped unit's `RestrictSUIDSGID=yes` refuses (EPERM)
    /// any chmod that sets or keeps one, and the explicit group does its work for everything a
    /// guard makes.
    fn share(self, made: &File, is_dir: bool) -> std::io::Result<()> {
        let Sharing::Group(gid) = self else {
            return Ok(());
        };
        if made.metadata()?.gid() != gid {
            std::os::unix::fs::fchown(made, None, Some(gid))?;
        }
        let mode = if is_dir { 0o770 } else { 0o660 };
        made.set_permissions(Permissions::from_mode(mode))
    }
}

/// A directory under the hooks directory, used through its descriptor: opened without following
/// a symlink, it stays the directory it was, whatever is renamed or planted at its path since.
#[derive(Debug)]
struct Dir {
    handle: File,
    /// For messages only.
    path: PathBuf,
}

/// An error that means the entry is not there for a guard: gone, or a symlink (which `O_NOFOLLOW`
/// refuses with ELOOP; no guard makes one).
fn absent(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ELOOP))
}

impl Dir {
    /// The root, made if missing (with the umask's modes, as `create_dir_all`), and what its
    /// mode says of sharing. The operator's own path: a symlink there is followed.
    fn root(path: &Path) -> Result<(Dir, Sharing), HooksDirError> {
        fs::create_dir_all(path).map_err(io(path))?;
        let handle = File::open(path).map_err(io(path))?;
        let meta = handle.metadata().map_err(io(path))?;
        if !meta.is_dir() {
            return Err(io(path)(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let dir = Dir {
            handle,
            path: path.to_path_buf(),
        };
        Ok((dir, Sharing::of(&meta)))
    }

    /// The path of `name` here, for messages.
    fn at(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` here, never through a symlink.
    fn open(&self, name: &str, flags: libc::c_int, mode: libc::mode_t) -> std::io::Result<File> {
        at::open(&self.handle, name, flags, mode).map(File::from)
    }

    /// The directory `name` here (an error if it is anything else, a symlink included).
    fn child(&self, name: &str) -> std::io::Result<Dir> {
        let handle = self.open(name, libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
        Ok(Dir {
            handle,
            path: self.at(name),
        })
    }

    /// Makes the directory `name` here and shares it. Made and then opened by name: what is
    /// opened must be this guard's own and empty, or something was swapped in between.
    fn make(&self, name: &str, sharing: Sharing) -> std::io::Result<Dir> {
        at::mkdir(&self.handle, name, sharing.dir_mode())?;
        let made = self.child(name)?;
        // SAFETY: geteuid has no side effects and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if made.handle.metadata()?.uid() != euid || !made.list()?.is_empty() {
            return Err(std::io::Error::other(format!(
                "{} was replaced as it was made",
                made.path.display()
            )));
        }
        sharing.share(&made.handle, true)?;
        Ok(made)
    }

    /// The hook's directory `name` here with its `guards/`, made if missing: whole and shared
    /// under a temporary name, then renamed into place, so that no guard (of another user,
    /// say) ever finds it without `guards/`, or not yet shared.
    fn hook_dirs(&self, name: &str, sharing: Sharing) -> std::io::Result<(Dir, Dir)> {
        let dir = match self.child(name) {
            Ok(dir) => dir,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => self.publish(name, sharing)?,
            Err(err) => return Err(err),
        };
        let guards = match dir.child("guards") {
            Ok(guards) => guards,
            // Removed by hand since: made again in place.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                match dir.make("guards", sharing) {
                    Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {
                        dir.child("guards")?
                    }
                    made => made?,
                }
            }
            Err(err) => return Err(err),
        };
        Ok((dir, guards))
    }

    fn publish(&self, name: &str, sharing: Sharing) -> std::io::Result<Dir> {
        let mut attempt = 0;
        let (temp, made) = loop {
            let temp = temp_name(name);
            match self.make(&temp, sharing) {
                Ok(made) => break (temp, made),
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        let moved = made
            .make("guards", sharing)
            .and_then(|_| at::rename(&self.handle, &temp, name));
        match moved {
            Ok(()) => Ok(Dir {
                handle: made.handle,
                path: self.at(name),
            }),
            Err(err) => {
                // Another guard's came first (or the rename failed): ours goes, and theirs is
                // used.
                let _ = at::unlink(&made.handle, "guards", libc::AT_REMOVEDIR);
                let _ = at::unlink(&self.handle, &temp, libc::AT_REMOVEDIR);
                match self.child(name) {
                    Err(again) if again.raw_os_error() == Some(libc::ENOENT) => Err(err),
                    other => other,
                }
            }
        }
    }

    /// A new file here, under a temporary name made from `name`, shared; with that name.
    fn temp_file(&self, name: &str, sharing: Sharing) -> std::io::Result<(String, File)> {
        let mut attempt = 0;
        loop {
            let temp = temp_name(name);
            let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
            match self.open(&temp, flags, sharing.file_mode()) {
                Ok(file) => {
                    if let Err(err) = sharing.share(&file, false) {
                        let _ = self.remove(&temp);
                        return Err(err);
                    }
                    return Ok((temp, file));
                }
                Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// Replaces `name` here with a new file holding `bytes`: written under a temporary name,
    /// then renamed over the old one. A rename needs only this directory's write permission
    /// (the old file may be another user's), and replaces a symlink planted there instead of
    /// writing through it.
    fn replace(&self, name: &str, bytes: &[u8], sharing: Sharing) -> std::io::Result<()> {
        let (temp, mut file) = self.temp_file(name, sharing)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| at::rename(&self.handle, &temp, name));
        if written.is_err() {
            let _ = self.remove(&temp);
        }
        written
    }

    /// The file `name` here, at most [`READ_AT_MOST`] of it; `None` if it is absent, or is not
    /// a regular file (no guard made it: a symlink, a FIFO that would block the reader).
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        let file = match self.open(name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(file) => file,
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(err),
        };
        if !file.metadata()?.is_file() {
            return Ok(None);
        }
        let mut text = Vec::new();
        file.take(READ_AT_MOST).read_to_end(&mut text)?;
        Ok(Some(text))
    }

    /// `.lock`, made whole and shared if missing (under a temporary name, then linked into
    /// place: never replacing one); read-only where this user may not write it, since `flock`
    /// needs only read access.
    fn lock_file(&self, sharing: Sharing) -> std::io::Result<File> {
        let file = match self.open(".lock", libc::O_RDWR, 0) {
            Ok(file) => file,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                let (temp, _) = self.temp_file(".lock", sharing)?;
                let linked = at::link(&self.handle, &temp, ".lock");
                let _ = self.remove(&temp);
                match linked {
                    Err(err) if err.kind() != std::io::ErrorKind::AlreadyExists => return Err(err),
                    _ => {}
                }
                self.open(".lock", libc::O_RDWR, 0)
                    .or_else(|_| self.open(".lock", libc::O_RDONLY | libc::O_NONBLOCK, 0))?
            }
            Err(_) => self.open(".lock", libc::O_RDONLY | libc::O_NONBLOCK, 0)?,
        };
        if !file.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok(file)
    }

    /// Removes the file `name` here (a symlink itself, never what it points to).
    fn remove(&self, name: &str) -> std::io::Result<()> {
        at::unlink(&self.handle, name, 0)
    }

    /// The names here, `.` and `..` aside (and any that is not UTF-8: no guard makes one).
    fn list(&self) -> std::io::Result<Vec<String>> {
        at::list(&self.handle)
    }
}

/// A name for something made here before it is renamed or linked into place, unique to this
/// process; a leftover (a guard killed in between) is a dot file no guard reads.
fn temp_name(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!(
        ".{}.{}.{n}.tmp",
        name.trim_start_matches('.'),
        std::process::id()
    )
}

/// The `*at` calls that std does not have, relative to a directory's descriptor and never
/// following a symlink in the last component.
mod at {
    use std::ffi::{CStr, CString};
    use std::fs::File;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

    fn c_name(name: &str) -> io::Result<CString> {
        CString::new(name)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a name"))
    }

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    /// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
    pub fn open(
        dir: &File,
        name: &str,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> io::Result<OwnedFd> {
        let name = c_name(name)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: a valid directory descriptor and a NUL-terminated name; the mode is read
        // only with O_CREAT.
        let fd = check(unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                flags,
                libc::c_uint::from(mode),
            )
        })?;
        // SAFETY: openat just returned this descriptor, owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn mkdir(dir: &File, name: &str, mode: libc::mode_t) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
    }

    /// `unlinkat`: removes the entry itself, a symlink included; `AT_REMOVEDIR` for a directory.
    pub fn unlink(dir: &File, name: &str, flags: libc::c_int) -> io::Result<()> {
        let name = c_name(name)?;
        // SAFETY: a valid directory descriptor and a NUL-terminated name.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
    }

    /// `renameat` within one directory: replaces `to` (a symlink itself, not its target).
    pub fn rename(dir: &File, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        let fd = dir.as_raw_fd();
        // SAFETY: a valid directory descriptor and NUL-terminated names.
        check(unsafe { libc::renameat(fd, from.as_ptr(), fd, to.as_ptr()) }).map(drop)
    }

    /// `linkat` within one directory: fails with EEXIST rather than replace `to`.
    pub fn link(dir: &File, from: &str, to: &str) -> io::Result<()> {
        let (from, to) = (c_name(from)?, c_name(to)?);
        let fd = dir.as_raw_fd();
        // SAFETY: a valid directory descriptor and NUL-terminated names; flags 0 follow no
        // symlink.
        check(unsafe { libc::linkat(fd, from.as_ptr(), fd, to.as_ptr(), 0) }).map(drop)
    }

    /// The names in `dir`, `.` and `..` aside, read through a descriptor of its own (readdir
    /// moves the offset of the open file it reads).
    pub fn list(dir: &File) -> io::Result<Vec<String>> {
        let own = open(dir, ".", libc::O_RDONLY | libc::O_DIRECTORY, 0)?.into_raw_fd();
        // SAFETY: `own` is a directory descriptor that fdopendir takes over.
        let stream = unsafe { libc::fdopendir(own) };
        if stream.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: not taken over: still ours to close.
            unsafe { libc::close(own) };
            return Err(err);
        }
        let mut names = Vec::new();
        let read = loop {
            // readdir returns null at the end and on an error alike: errno tells them apart.
            // SAFETY: errno is this thread's.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a stream from fdopendir, not yet closed.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                let err = io::Error::last_os_error();
                break if err.raw_os_error() == Some(0) {
                    Ok(())
                } else {
                    Err(err)
                };
            }
            // SAFETY: readdir's entry holds a NUL-terminated name, valid until the next call.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            match name.to_str() {
                Ok("." | "..") | Err(_) => {}
                Ok(name) => names.push(name.to_string()),
            }
        };
        // SAFETY: closes the stream and its descriptor, once.
        unsafe { libc::closedir(stream) };
        read.map(|()| names)
    }
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
        let (root_dir, sharing) = Dir::root(root)?;
        let dir_path = hook_dir(root, kind, hook);
        let (dir, guards) = root_dir
            .hook_dirs(&hook_dir_name(kind, hook), sharing)
            .map_err(io(&dir_path))?;
        let _lock = DirLock::take(&dir, sharing)?;
        let pid = std::process::id();
        let file_name = format!("{name}.{pid}.json");
        let peers = read_peers(&guards, &file_name)?;
        if peers.iter().all(|p| !p.alive) {
            for stale in ["claim", "done.json"] {
                let _ = dir.remove(stale);
            }
            for p in &peers {
                let _ = guards.remove(&p.file);
            }
        } else {
            let mine = |p: &&Peer| !p.alive && p.entry.as_ref().is_some_and(|e| e.name == name);
            for p in peers.iter().filter(mine) {
                let _ = guards.remove(&p.file);
            }
        }
        let path = guards.at(&file_name);
        // A file of this name is a dead guard's whose pid this process now has.
        let _ = guards.remove(&file_name);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let file = guards
            .open(&file_name, flags, sharing.file_mode())
            .map_err(io(&path))?;
        // Shared before the directory lock is released: no other guard reads it before.
        if let Err(err) = sharing.share(&file, false) {
            let _ = guards.remove(&file_name);
            return Err(io(&path)(err));
        }
        if !try_lock(&file).map_err(io(&path))? {
            return Err(HooksDirError::Busy { path });
        }
        let mut registration = Registration {
            dir,
            guards,
            sharing,
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
        let path = self.guards.at(&self.file_name);
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
        let _lock = DirLock::take(&self.dir, self.sharing)?;
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
        let _lock = DirLock::take(&self.dir, self.sharing)?;
        self.decide_termination()
    }

    /// The steps both decisions begin with: the hook's work is over; another live guard holds
    /// the claim; or live guards whose standing `holds_up` keep this one waiting. `Ok(Err(peers))`
    /// when none of these decides: the other guards' registrations, for the decision's own rules.
    fn before_deciding(
        &self,
        holds_up: impl Fn(Standing) -> bool,
    ) -> Result<Result<Decision, Vec<Peer>>, HooksDirError> {
        if let Some(done) = self.finished()? {
            return Ok(Ok(Decision::Done(done)));
        }
        let peers = read_peers(&self.guards, &self.file_name)?;
        if let Some(claimer) = self.live_claim(&peers)? {
            return Ok(Ok(Decision::Wait {
                others: vec![claimer],
            }));
        }
        let waiting_on: Vec<String> = peers
            .iter()
            .filter(|p| p.alive)
            .filter_map(|p| p.entry.as_ref())
            .filter(|e| holds_up(e.standing))
            .map(Entry::label)
            .collect();
        if !waiting_on.is_empty() {
            return Ok(Ok(Decision::Wait { others: waiting_on }));
        }
        Ok(Err(peers))
    }

    fn decide_termination(&mut self) -> Result<Decision, HooksDirError> {
        // Waits for every live guard whose agent is not gone yet.
        let peers = match self.before_deciding(|standing| standing != Standing::Gone)? {
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
        let _lock = DirLock::take(&self.dir, self.sharing)?;
        self.entry.standing = Standing::Ready;
        self.write()?;
        self.decide_launch()
    }

    /// For the launch hook, once this guard's agent is ready: complete it with CONTINUE if every
    /// other live guard's agent is ready (or gone), else wait. A guard that died without a word
    /// is not waited for: systemd restarts it, and it registers again.
    pub fn launch(&mut self) -> Result<Decision, HooksDirError> {
        let _lock = DirLock::take(&self.dir, self.sharing)?;
        self.decide_launch()
    }

    fn decide_launch(&mut self) -> Result<Decision, HooksDirError> {
        // Waits for every live guard whose agent is not ready yet (a gone one holds nobody up).
        if let Ok(decided) = self.before_deciding(|standing| standing == Standing::Starting)? {
            return Ok(decided);
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
        let _lock = DirLock::take(&self.dir, self.sharing)?;
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
        let _lock = DirLock::take(&self.dir, self.sharing)?;
        self.entry.standing = Standing::Starting;
        self.entry.result = None;
        self.write()?;
        for stale in ["claim", "done.json"] {
            let _ = self.dir.remove(stale);
        }
        Ok(())
    }

    /// The hook's work is over (`state` as in `/status`): written once for every guard to read;
    /// the registrations of dead guards, and the claim, are removed.
    pub fn finish(&mut self, state: &str, result: Option<HookResult>) -> Result<(), HooksDirError> {
        let _lock = DirLock::take(&self.dir, self.sharing)?;
        let path = self.dir.at("done.json");
        let done = Finished {
            state: state.to_string(),
            result,
            by: self.label(),
        };
        let text = serde_json::to_vec(&done).unwrap_or_default();
        self.dir
            .replace("done.json", &text, self.sharing)
            .map_err(io(&path))?;
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
        let _lock = DirLock::take(&self.dir, self.sharing)?;
        let pending = self.entry.standing == Standing::Gone
            && self.entry.terminating
            && self.finished()?.is_none();
        if !pending {
            let path = self.guards.at(&self.file_name);
            self.guards.remove(&self.file_name).map_err(io(&path))?;
        }
        Ok(())
    }

    fn finished(&self) -> Result<Option<Finished>, HooksDirError> {
        let path = self.dir.at("done.json");
        let text = self.dir.read("done.json").map_err(io(&path))?;
        Ok(text.and_then(|text| serde_json::from_slice(&text).ok()))
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
            .and_then(|p| p.entry.as_ref())
            .map(|e| format!("{}, completing it", e.label())))
    }

    fn claim(&self) -> Result<(), HooksDirError> {
        let path = self.dir.at("claim");
        self.dir
            .replace("claim", self.file_name.as_bytes(), self.sharing)
            .map_err(io(&path))
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
fn read_peers(guards: &Dir, own: &str) -> Result<Vec<Peer>, HooksDirError> {
    let mut peers = Vec::new();
    for file in guards.list().map_err(io(&guards.path))? {
        if file == own || !file.ends_with(".json") {
            continue;
        }
        let path = guards.at(&file);
        let handle = match guards.open(&file, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(handle) => handle,
            // Gone between the listing and now, or a symlink: no guard's registration.
            Err(err) if absent(&err) => continue,
            // Unreadable is not absent: a live guard taken for none would let this one
            // complete while that guard's agent still runs.
            Err(err) => return Err(io(&path)(err)),
        };
        if !handle.metadata().map_err(io(&path))?.is_file() {
            continue;
        }
        // Holding the lock for a moment is harmless: a live guard's lock makes this fail.
        let alive = !try_lock(&handle).map_err(io(&path))?;
        let mut text = Vec::new();
        let entry = handle
            .take(READ_AT_MOST)
            .read_to_end(&mut text)
            .ok()
            .and_then(|_| serde_json::from_slice(&text).ok());
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
    fn a_private_or_world_writable_root_keeps_the_modes_of_the_umask() {
        let umask = umask();
        for root_mode in [0o700, 0o755, 0o1777] {
            let root = tempfile::tempdir().expect("tmp");
            chmod(root.path(), root_mode);
            for (path, mode, _, is_dir) in a_round(root.path()) {
                let want = if is_dir { 0o777 } else { 0o666 } & !umask;
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
