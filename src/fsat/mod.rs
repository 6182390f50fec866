//! Files in a directory other users share, reached only through directory descriptors: the
//! `*at` calls, `flock`, and the owner and mode checks, as safe functions over nix.
//!
//! What another user can plant there is never followed: every entry is opened relative to the
//! descriptor of its directory and without following a symlink (`O_NOFOLLOW`), so a directory
//! stays the one that was opened whatever is renamed or planted at its path since. A file is
//! replaced by writing a new one under a temporary name and renaming it over the old (never
//! writing through a planted symlink), and something shared is made whole under a temporary name
//! before it is moved into place. What is opened is checked for its owner and mode ([`Rules`]), as
//! the socket directory is (`agent/unixsock.rs`): one that another user could change is refused.
//!
//! Plain blocking I/O; callers run it off the async thread. Imports nothing of the crate.

use std::ffi::OsStr;
use std::fs::{File, Metadata, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::dir::Dir as DirStream;
use nix::fcntl::{AtFlags, Flock, FlockArg, OFlag, openat, renameat};
use nix::sys::stat::{Mode, mkdirat};
use nix::unistd::{UnlinkatFlags, linkat, unlinkat};

/// The most read of one file: what is kept here is a few hundred bytes.
pub const READ_AT_MOST: u64 = 64 * 1024;

/// A file held under an exclusive `flock`, released when dropped (or when the process dies).
pub type Locked = Flock<File>;

/// Takes an exclusive lock on `file` without waiting: `Ok(Err(file))` when another open file
/// holds one.
pub fn try_lock(file: File) -> io::Result<Result<Locked, File>> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(Ok(locked)),
        Err((file, nix::errno::Errno::EWOULDBLOCK)) => Ok(Err(file)),
        Err((_, errno)) => Err(io::Error::from(errno)),
    }
}

/// An error that means the entry is not there for a guard: gone, or a symlink (which
/// `O_NOFOLLOW` refuses with ELOOP; no guard makes one).
pub fn absent(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ELOOP))
}

/// Something found in the shared directory that another user could change: refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {why}", path.display())]
pub struct Untrusted {
    /// What was refused.
    pub path: PathBuf,
    /// What is wrong with it, e.g. `owned by uid 65534, neither this guard's user nor root`.
    pub why: String,
}

impl Untrusted {
    /// The refusal inside an `io::Error`, if that is what `err` is.
    pub fn of(err: &io::Error) -> Option<&Untrusted> {
        err.get_ref().and_then(|e| e.downcast_ref::<Untrusted>())
    }
}

fn untrusted(path: &Path, why: String) -> io::Error {
    io::Error::other(Untrusted {
        path: path.to_path_buf(),
        why,
    })
}

/// Who may use what is made under the shared directory, as its root's mode says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Modes from the umask (never writable by other users): the root is one user's, or open to
    /// everyone (as /tmp, where its group means nothing).
    Private,
    /// The root is group-writable and not world-writable: every directory made under it is 0770
    /// and every file 0660, all of the root's group (this gid).
    Group(u32),
}

impl Sharing {
    fn of(root: &Metadata) -> Sharing {
        let mode = root.mode();
        if mode & 0o020 != 0 && mode & 0o002 == 0 {
            Sharing::Group(root.gid())
        } else {
            Sharing::Private
        }
    }

    /// The mode a directory is made with; under a group, private until shared (the umask would
    /// strip the group's write bit anyway). Never writable by every user: such a directory would
    /// be refused, since anyone could remove what it holds.
    fn dir_mode(self) -> Mode {
        match self {
            Sharing::Private => Mode::from_bits_truncate(0o775),
            Sharing::Group(_) => Mode::from_bits_truncate(0o700),
        }
    }

    /// The mode a file is made with, as [`Sharing::dir_mode`].
    fn file_mode(self) -> Mode {
        match self {
            Sharing::Private => Mode::from_bits_truncate(0o664),
            Sharing::Group(_) => Mode::from_bits_truncate(0o600),
        }
    }

    /// Shares with the group what this process has just made, before anyone else can use it:
    /// the group first, then the mode, set explicitly since the umask strips the group's write
    /// bit. A directory gets no setgid bit: systemd's `RestrictSUIDSGID=yes` refuses (EPERM) any
    /// chmod that sets or keeps one, and the explicit group does its work for everything made.
    fn share(self, made: &File, is_dir: bool) -> io::Result<()> {
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

/// What the shared directory trusts: entries of this process's user, of root, or (shared
/// through a group) of that group; none that every user may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub sharing: Sharing,
    /// This process's effective uid.
    pub euid: u32,
}

impl Rules {
    /// The rule for an entry under the root with owner `uid`, group `gid` and `mode`. A group
    /// member's entry is trusted: the group is how guards of different users share the
    /// directory (and only a member, or root, can give an entry that group).
    pub fn entry(self, uid: u32, gid: u32, mode: u32) -> Result<(), String> {
        if mode & 0o002 != 0 {
            return Err(format!("writable by every user (mode {:o})", mode & 0o7777));
        }
        match self.sharing {
            _ if uid == self.euid || uid == 0 => Ok(()),
            Sharing::Group(group) if gid == group => Ok(()),
            Sharing::Group(group) => Err(format!(
                "owned by uid {uid} and gid {gid}: neither this guard's user, root, nor the \
                 directory's group {group}"
            )),
            Sharing::Private => Err(format!(
                "owned by uid {uid}: neither this guard's user nor root"
            )),
        }
    }

    /// The rule for the root itself, the operator's directory: owned by this user or root, and
    /// writable by every user only if sticky (as /tmp, where no one may remove another's entry).
    pub fn root(euid: u32, uid: u32, mode: u32) -> Result<(), String> {
        if uid != euid && uid != 0 {
            return Err(format!(
                "owned by uid {uid}: neither this guard's user nor root"
            ));
        }
        if mode & 0o002 != 0 && mode & libc::S_ISVTX == 0 {
            return Err(format!(
                "writable by every user without the sticky bit (mode {:o})",
                mode & 0o7777
            ));
        }
        Ok(())
    }

    fn check(self, meta: &Metadata, path: &Path) -> io::Result<()> {
        self.entry(meta.uid(), meta.gid(), meta.mode())
            .map_err(|why| untrusted(path, why))
    }
}

/// A directory under the shared root, used through its descriptor: opened without following a
/// symlink, it stays the directory it was, whatever is renamed or planted at its path since.
#[derive(Debug)]
pub struct Dir {
    handle: File,
    /// For messages only.
    path: PathBuf,
    rules: Rules,
}

impl Dir {
    /// The root, made if missing (with the umask's modes, as `create_dir_all`), checked as
    /// [`Rules::root`]; its mode says how what is made under it is shared. The operator's own
    /// path: a symlink there is followed.
    pub fn root(path: &Path) -> io::Result<Dir> {
        match std::fs::create_dir_all(path) {
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "it exists and is not a directory",
                ));
            }
            other => other?,
        }
        let handle = File::open(path)?;
        let meta = handle.metadata()?;
        if !meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                "it exists and is not a directory",
            ));
        }
        let euid = nix::unistd::geteuid().as_raw();
        Rules::root(euid, meta.uid(), meta.mode()).map_err(|why| untrusted(path, why))?;
        let rules = Rules {
            sharing: Sharing::of(&meta),
            euid,
        };
        Ok(Dir {
            handle,
            path: path.to_path_buf(),
            rules,
        })
    }

    /// This directory's path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` here, for messages.
    pub fn at(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Opens `name` here, never through a symlink: `openat(dir, name, flags | O_NOFOLLOW |
    /// O_CLOEXEC, mode)`.
    pub fn open(&self, name: &str, flags: OFlag, mode: Mode) -> io::Result<File> {
        let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        Ok(File::from(openat(&self.handle, name, flags, mode)?))
    }

    /// The directory `name` here (an error if it is anything else, a symlink included, or one
    /// another user could change).
    pub fn child(&self, name: &str) -> io::Result<Dir> {
        let handle = self.open(name, OFlag::O_RDONLY | OFlag::O_DIRECTORY, Mode::empty())?;
        let path = self.at(name);
        self.rules.check(&handle.metadata()?, &path)?;
        Ok(Dir {
            handle,
            path,
            rules: self.rules,
        })
    }

    /// Makes the directory `name` here and shares it. Made and then opened by name: what is
    /// opened must be this process's own and empty, or something was swapped in between.
    pub fn make(&self, name: &str) -> io::Result<Dir> {
        mkdirat(&self.handle, name, self.rules.sharing.dir_mode())?;
        let made = self.child(name)?;
        if made.handle.metadata()?.uid() != self.rules.euid || !made.list()?.is_empty() {
            return Err(io::Error::other(format!(
                "{} was replaced as it was made",
                made.path.display()
            )));
        }
        self.rules.sharing.share(&made.handle, true)?;
        Ok(made)
    }

    /// The directory `name` here with its `sub`, made if missing: whole and shared under a
    /// temporary name, then renamed into place, so that no one (of another user, say) ever
    /// finds it without `sub`, or not yet shared.
    pub fn with_sub(&self, name: &str, sub: &str) -> io::Result<(Dir, Dir)> {
        let dir = match self.child(name) {
            Ok(dir) => dir,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => self.publish(name, sub)?,
            Err(err) => return Err(err),
        };
        let inner = match dir.child(sub) {
            Ok(inner) => inner,
            // Removed by hand since: made again in place.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => match dir.make(sub) {
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => dir.child(sub)?,
                made => made?,
            },
            Err(err) => return Err(err),
        };
        Ok((dir, inner))
    }

    fn publish(&self, name: &str, sub: &str) -> io::Result<Dir> {
        let mut attempt = 0;
        let (temp, made) = loop {
            let temp = temp_name(name);
            match self.make(&temp) {
                Ok(made) => break (temp, made),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        let moved = made.make(sub).and_then(|_| self.rename(&temp, name));
        match moved {
            Ok(()) => Ok(Dir {
                handle: made.handle,
                path: self.at(name),
                rules: self.rules,
            }),
            Err(err) => {
                // Another's came first (or the rename failed): ours goes, and theirs is used.
                let _ = made.remove_dir(sub);
                let _ = self.remove_dir(&temp);
                match self.child(name) {
                    Err(again) if again.raw_os_error() == Some(libc::ENOENT) => Err(err),
                    other => other,
                }
            }
        }
    }

    /// A new file here, under a temporary name made from `name`, shared; with that name.
    pub fn temp_file(&self, name: &str) -> io::Result<(String, File)> {
        let mut attempt = 0;
        loop {
            let temp = temp_name(name);
            let flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL;
            match self.open(&temp, flags, self.rules.sharing.file_mode()) {
                Ok(file) => {
                    if let Err(err) = self.rules.sharing.share(&file, false) {
                        let _ = self.remove(&temp);
                        return Err(err);
                    }
                    return Ok((temp, file));
                }
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => {
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
    pub fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let (temp, mut file) = self.temp_file(name)?;
        let written = file
            .write_all(bytes)
            .and_then(|()| self.rename(&temp, name));
        if written.is_err() {
            let _ = self.remove(&temp);
        }
        written
    }

    /// The file `name` here, at most [`READ_AT_MOST`] of it; `None` if it is absent, is not a
    /// regular file (a symlink, a FIFO that would block the reader), or could have been changed
    /// by another user: nothing anyone trusted made.
    pub fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        let file = match self.open(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()) {
            Ok(file) => file,
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(err),
        };
        let meta = file.metadata()?;
        if !meta.is_file() || self.rules.check(&meta, &self.at(name)).is_err() {
            return Ok(None);
        }
        read_bounded(&file).map(Some)
    }

    /// An existing file `name` here, for reading and locking (`flock` needs only read access):
    /// `None` if it is absent or not a regular file; an [`Untrusted`] error if another user
    /// could change it.
    pub fn open_existing(&self, name: &str) -> io::Result<Option<File>> {
        let file = match self.open(name, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty()) {
            Ok(file) => file,
            Err(err) if absent(&err) => return Ok(None),
            Err(err) => return Err(err),
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Ok(None);
        }
        self.rules.check(&meta, &self.at(name))?;
        Ok(Some(file))
    }

    /// The lock file `name`, made whole and shared if missing (under a temporary name, then
    /// linked into place: never replacing one); read-only where this user may not write it,
    /// since `flock` needs only read access.
    pub fn lock_file(&self, name: &str) -> io::Result<File> {
        let ro = OFlag::O_RDONLY | OFlag::O_NONBLOCK;
        let file = match self.open(name, OFlag::O_RDWR, Mode::empty()) {
            Ok(file) => file,
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                let (temp, _) = self.temp_file(name)?;
                let linked = self.link(&temp, name);
                let _ = self.remove(&temp);
                match linked {
                    Err(err) if err.kind() != io::ErrorKind::AlreadyExists => return Err(err),
                    _ => {}
                }
                self.open(name, OFlag::O_RDWR, Mode::empty())
                    .or_else(|_| self.open(name, ro, Mode::empty()))?
            }
            Err(_) => self.open(name, ro, Mode::empty())?,
        };
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        self.rules.check(&meta, &self.at(name))?;
        Ok(file)
    }

    /// A new file `name` here, made whole: `bytes` written to a temporary file that is locked
    /// first, then renamed into place, replacing any file of that name; the lock is held on
    /// what is returned. No reader ever finds it empty or half written, even if this process
    /// dies in between (a leftover is a dot file no one reads).
    pub fn publish_locked(&self, name: &str, bytes: &[u8]) -> io::Result<Locked> {
        let (temp, file) = self.temp_file(name)?;
        let done = match try_lock(file) {
            Ok(Ok(mut locked)) => locked
                .write_all(bytes)
                .and_then(|()| self.rename(&temp, name))
                .map(|()| locked),
            Ok(Err(_)) => Err(io::Error::from(io::ErrorKind::WouldBlock)),
            Err(err) => Err(err),
        };
        if done.is_err() {
            let _ = self.remove(&temp);
        }
        done
    }

    /// Removes the file `name` here (a symlink itself, never what it points to).
    pub fn remove(&self, name: &str) -> io::Result<()> {
        Ok(unlinkat(&self.handle, name, UnlinkatFlags::NoRemoveDir)?)
    }

    /// Removes the empty directory `name` here.
    pub fn remove_dir(&self, name: &str) -> io::Result<()> {
        Ok(unlinkat(&self.handle, name, UnlinkatFlags::RemoveDir)?)
    }

    /// `renameat` within this directory: replaces `to` (a symlink itself, not its target).
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(renameat(&self.handle, from, &self.handle, to)?)
    }

    /// `linkat` within this directory: fails with EEXIST rather than replace `to`; follows no
    /// symlink.
    fn link(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(linkat(
            &self.handle,
            from,
            &self.handle,
            to,
            AtFlags::empty(),
        )?)
    }

    /// The names here, `.` and `..` aside (and any that is not UTF-8: no guard makes one), read
    /// through a descriptor of its own (reading a directory moves the offset of the open file).
    pub fn list(&self) -> io::Result<Vec<String>> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut stream = DirStream::openat(&self.handle, ".", flags, Mode::empty())?;
        let mut names = Vec::new();
        for entry in stream.iter() {
            let entry = entry?;
            let name = OsStr::from_bytes(entry.file_name().to_bytes());
            match name.to_str() {
                Some("." | "..") | None => {}
                Some(name) => names.push(name.to_string()),
            }
        }
        Ok(names)
    }
}

/// At most [`READ_AT_MOST`] of an open file.
pub fn read_bounded(mut file: &File) -> io::Result<Vec<u8>> {
    let mut text = Vec::new();
    Read::by_ref(&mut file)
        .take(READ_AT_MOST)
        .read_to_end(&mut text)?;
    Ok(text)
}

/// A name for something made here before it is renamed or linked into place, unique to this
/// process; a leftover (a process killed in between) is a dot file no one reads.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_shared_directory_trusts_table() {
        let me = 1000;
        let private = Rules {
            sharing: Sharing::Private,
            euid: me,
        };
        let group = Rules {
            sharing: Sharing::Group(500),
            euid: me,
        };
        // (rules, uid, gid, mode, trusted)
        let cases = [
            (private, me, me, 0o755, true),
            (private, 0, 0, 0o755, true),
            (private, me, me, 0o775, true),
            (private, me, me, 0o777, false),
            (private, 0, 0, 0o1777, false),
            (private, 65534, 65534, 0o755, false),
            (private, 65534, 500, 0o770, false),
            (group, 65534, 500, 0o770, true),
            (group, 65534, 500, 0o660, true),
            (group, 65534, 65534, 0o770, false),
            (group, me, 500, 0o777, false),
            (group, 0, 500, 0o770, true),
        ];
        for (rules, uid, gid, mode, trusted) in cases {
            let got = rules.entry(uid, gid, mode);
            assert_eq!(
                got.is_ok(),
                trusted,
                "{rules:?} {uid} {gid} {mode:o}: {got:?}"
            );
        }
        assert!(Rules::root(me, me, 0o700).is_ok());
        assert!(Rules::root(me, 0, 0o3775).is_ok());
        assert!(Rules::root(me, 0, 0o1777).is_ok(), "as /tmp");
        assert!(
            Rules::root(me, 0, 0o777).is_err(),
            "anyone may remove entries"
        );
        assert!(Rules::root(me, 65534, 0o700).is_err());
    }

    #[test]
    fn a_root_that_is_a_file_says_so() {
        let dir = tempfile::tempdir().expect("tmp");
        let file = dir.path().join("hooks");
        std::fs::write(&file, b"").expect("file");
        let err = Dir::root(&file).expect_err("a file");
        assert_eq!(err.to_string(), "it exists and is not a directory");
    }

    #[test]
    fn a_file_published_locked_is_whole_and_held() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = Dir::root(tmp.path()).expect("root");
        let held = dir.publish_locked("reg.json", b"{}").expect("published");
        assert_eq!(dir.read("reg.json").expect("read"), Some(b"{}".to_vec()));
        let other = dir.open_existing("reg.json").expect("open").expect("there");
        assert!(try_lock(other).expect("flock").is_err(), "held by `held`");
        let names = dir.list().expect("list");
        assert_eq!(names, ["reg.json"], "no temporary file left");
        drop(held);
        let other = dir.open_existing("reg.json").expect("open").expect("there");
        assert!(try_lock(other).expect("flock").is_ok(), "released");
    }
}
