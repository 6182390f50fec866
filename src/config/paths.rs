//! Where a guard's sockets live: the default directory and path for a `--name`, the sd_notify
//! socket beside the control socket, and what makes a usable name or socket path.

use std::path::{Path, PathBuf};

/// The directory of the default socket path: `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`), else `/run/agent-guard` as root, else `$XDG_RUNTIME_DIR/agent-guard`,
/// else a private directory under /tmp.
pub fn default_socket_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several directories, colon-separated; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    // SAFETY: geteuid has no side effects.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/agent-guard");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("agent-guard"),
        None => PathBuf::from(format!("/tmp/agent-guard-{uid}")),
    }
}

/// The default control socket for a guard named `name`.
pub fn default_socket(name: &str) -> PathBuf {
    default_socket_dir().join(format!("{name}.sock"))
}

/// The one `*.sock` in `dir`, if there is exactly one: `ctl` on a host with a single guard needs
/// no `--name`.
pub fn only_socket_in(dir: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The agent's sd_notify socket: next to the control socket, `.notify` for `.sock`.
pub fn notify_socket_for(socket: &Path) -> PathBuf {
    if socket.extension().is_some_and(|x| x == "sock") {
        socket.with_extension("notify")
    } else {
        let mut s = socket.as_os_str().to_owned();
        s.push(".notify");
        PathBuf::from(s)
    }
}

/// `--name`: it names the socket file, so it is kept to characters that need no quoting.
pub fn parse_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(v.to_string())
    } else {
        Err(
            "expected 1 to 64 letters, digits, `-`, `_`, `.` or `@` (it names a socket file)"
                .to_string(),
        )
    }
}

/// A Unix socket path, which the kernel limits in length.
pub fn parse_socket_path(v: &str) -> Result<PathBuf, String> {
    // sun_path holds 108 bytes with the terminating NUL.
    if v.is_empty() {
        Err("expected a path".to_string())
    } else if v.len() > 107 {
        Err(format!(
            "{} bytes is too long for a Unix socket path (at most 107)",
            v.len()
        ))
    } else {
        Ok(PathBuf::from(v))
    }
}
