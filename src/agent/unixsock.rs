//! Creating the guard's Unix sockets safely: in a directory only its user can enter, mode 0600,
//! replacing an old socket only when nothing listens on it, and never following a symlink.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
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
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SocketError::Directory {
                path: path.to_path_buf(),
                source,
            })?;
    }
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
}
