//! Creating the guard's Unix sockets safely: in a directory only its user can change, mode 0600,
//! replacing an old socket only when nothing listens on it, and never following a symlink.
//!
//! The directory is the guard's own (created 0700, or found owned by its user and writable by
//! no one else), or one only root controls where nobody may replace another user's files (a
//! sticky root directory such as /tmp). Anything else is refused: another user who created the
//! default `/tmp/agent-guard-UID` first could otherwise swap the socket for their own and feed
//! the agent fake drains. The check is made on the opened directory (`fstat`), matched against
//! the `lstat` of its path, so that a swap between the two cannot pass.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a socket could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket {path}: cannot create its directory: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "socket directory {dir}: {why}; refusing it, as another user could replace the socket (use a directory of your own, mode 0700, with --socket or XDG_RUNTIME_DIR)"
    )]
    UnsafeDirectory { dir: PathBuf, why: String },
    #[error(
        "socket {path}: another agent-guard is listening there (use --socket or --name to choose another)"
    )]
    InUse { path: PathBuf },
    #[error("socket {path}: the path exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which kind of socket, to probe a leftover the right way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Datagram,
}

/// Makes `path` free to bind: creates the directory (0700) if missing, removes a stale socket,
/// refuses a live one, a symlink or any other file.
pub fn prepare(path: &Path, kind: Kind) -> Result<(), SocketError> {
    let io_err = |source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    private_dir(dir).map_err(|err| match err {
        DirError::Create(source) => SocketError::Directory {
            path: path.to_path_buf(),
            source,
        },
        DirError::Unsafe(why) => SocketError::UnsafeDirectory {
            dir: dir.to_path_buf(),
            why,
        },
    })?;
    // symlink_metadata looks at the link itself: a symlink planted at the path is never followed.
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(SocketError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    let live = match kind {
        Kind::Stream => std::os::unix::net::UnixStream::connect(path).is_ok(),
        Kind::Datagram => std::os::unix::net::UnixDatagram::unbound()
            .and_then(|s| s.connect(path))
            .is_ok(),
    };
    if live {
        return Err(SocketError::InUse {
            path: path.to_path_buf(),
        });
    }
    // unlink(2) removes the socket file itself; it does not follow links.
    std::fs::remove_file(path).map_err(io_err)
}

/// Why a socket directory cannot be used.
enum DirError {
    Create(io::Error),
    Unsafe(String),
}

/// Creates `dir` 0700 if it is missing (its parents too), then checks that it is safe to hold
/// the sockets: see the module's doc.
fn private_dir(dir: &Path) -> Result<(), DirError> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(DirError::Create)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DirError::Create(e)),
    }
    // lstat: what the path names, a symlink not followed.
    let named = std::fs::symlink_metadata(dir).map_err(DirError::Create)?;
    if named.file_type().is_symlink() {
        return Err(DirError::Unsafe(
            "it is a symbolic link (give the directory it points to)".to_string(),
        ));
    }
    if !named.is_dir() {
        return Err(DirError::Unsafe("it is not a directory".to_string()));
    }
    // The directory itself, opened without following a link, and checked through its fd.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dir)
        .map_err(DirError::Create)?;
    let meta = opened.metadata().map_err(DirError::Create)?;
    if (meta.dev(), meta.ino()) != (named.dev(), named.ino()) {
        return Err(DirError::Unsafe(
            "it was replaced while being checked".to_string(),
        ));
    }
    // SAFETY: geteuid has no side effects.
    let own = unsafe { libc::geteuid() };
    dir_is_safe(meta.uid(), meta.mode(), own).map_err(DirError::Unsafe)
}

/// The rule for a socket directory with owner `uid` and `mode`, for a guard running as `own`.
fn dir_is_safe(uid: u32, mode: u32, own: u32) -> Result<(), String> {
    let sticky = mode & libc::S_ISVTX != 0;
    let writable_by_others = mode & 0o022 != 0;
    if uid == own && !writable_by_others {
        return Ok(());
    }
    if uid == 0 && sticky {
        // Like /tmp: only root, and each file's owner, can remove or rename what is in it.
        return Ok(());
    }
    if uid != own {
        return Err(format!(
            "it belongs to uid {uid}, not to this user (uid {own})"
        ));
    }
    Err(format!(
        "its mode {:04o} lets others write in it (at most 0755; 0700 is best)",
        mode & 0o7777
    ))
}

/// Binds with `bind` under a umask that makes the socket 0600 from its first moment, then sets
/// the mode again in case the filesystem ignored the umask.
pub fn bind_private<T>(
    path: &Path,
    bind: impl FnOnce(&Path) -> io::Result<T>,
) -> Result<T, SocketError> {
    // SAFETY: umask only swaps the process's file mode mask. The guard binds its sockets at start,
    // before any other thread of its own creates files.
    let old = unsafe { libc::umask(0o177) };
    let bound = bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let socket = bound.map_err(|source| SocketError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        SocketError::Io {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(socket)
}

/// Removes the socket at exit if it is still ours (a socket file).
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Whether `uid` may talk to the guard: root, the guard's own user, or the agent's.
pub fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid has no side effects.
    let own = unsafe { libc::geteuid() };
    uid == 0 || uid == own
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_stale_refuses_live_and_foreign_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/guard.sock");
        prepare(&path, Kind::Stream).expect("fresh");
        assert!(path.parent().expect("dir").exists());
        let live =
            bind_private(&path, |p| std::os::unix::net::UnixListener::bind(p)).expect("bind");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            prepare(&path, Kind::Stream),
            Err(SocketError::InUse { .. })
        ));
        drop(live);
        prepare(&path, Kind::Stream).expect("a stale socket is replaced");
        assert!(!path.exists());

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").expect("write");
        assert!(matches!(
            prepare(&file, Kind::Stream),
            Err(SocketError::NotASocket { .. })
        ));
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&file, &link).expect("symlink");
        assert!(matches!(
            prepare(&link, Kind::Stream),
            Err(SocketError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
    }

    #[test]
    fn the_directory_must_be_the_guards_own_or_a_sticky_roots() {
        let (me, other) = (1000, 1001);
        assert!(dir_is_safe(me, 0o40700, me).is_ok());
        assert!(dir_is_safe(me, 0o40755, me).is_ok());
        assert!(dir_is_safe(0, 0o41777, me).is_ok(), "/tmp");
        assert!(
            dir_is_safe(0, 0o40755, 0).is_ok(),
            "/run/agent-guard as root"
        );
        for (uid, mode) in [
            (me, 0o40777),
            (me, 0o40770),
            (me, 0o40702),
            (other, 0o40700),
        ] {
            assert!(dir_is_safe(uid, mode, me).is_err(), "{uid} {mode:o}");
        }
        assert!(
            dir_is_safe(other, 0o41777, me).is_err(),
            "sticky, but not root's"
        );
        assert!(
            dir_is_safe(0, 0o40777, me).is_err(),
            "root's, but not sticky"
        );
    }

    #[test]
    fn a_socket_directory_is_created_0700_and_a_shared_one_refused() {
        let base = tempfile::tempdir().expect("tempdir");
        let fresh = base.path().join("fresh");
        prepare(&fresh.join("g.sock"), Kind::Stream).expect("created");
        let mode = std::fs::metadata(&fresh)
            .expect("meta")
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o700);
        let shared = base.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        let err = prepare(&shared.join("g.sock"), Kind::Stream).expect_err("0777");
        assert!(matches!(err, SocketError::UnsafeDirectory { .. }), "{err}");
        assert!(err.to_string().contains("mode 0777"), "{err}");
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&fresh, &link).expect("symlink");
        let err = prepare(&link.join("g.sock"), Kind::Stream).expect_err("a symlink");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
}
