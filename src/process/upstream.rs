//! The guard's own sd_notify to its supervisor (systemd, for a `Type=notify` unit): `READY=1`,
//! `STOPPING=1`, `STATUS=…`. The agent's notifications to the guard are `agent::sdnotify`'s.

use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::PathBuf;

/// The guard's own `NOTIFY_SOCKET`, when systemd started it as a `Type=notify` unit.
#[derive(Debug, Clone, Default)]
pub struct Upstream {
    target: Option<UpstreamAddr>,
}

#[derive(Debug, Clone)]
enum UpstreamAddr {
    Path(PathBuf),
    Abstract(Vec<u8>),
}

impl Upstream {
    /// Reads the guard's own `NOTIFY_SOCKET` (`/path` or `@abstract`), if systemd set one.
    pub fn from_env() -> Self {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|v| {
            let bytes = v.as_encoded_bytes();
            match bytes.first() {
                Some(b'/') => Some(UpstreamAddr::Path(PathBuf::from(&v))),
                Some(b'@') => Some(UpstreamAddr::Abstract(bytes[1..].to_vec())),
                _ => None,
            }
        });
        Upstream { target }
    }

    /// Sends `message` to systemd as the guard (the unit's main process). Best effort: systemd
    /// gone or the socket full is not the agent's problem.
    pub fn send(&self, message: &str) {
        let Some(target) = &self.target else { return };
        let Ok(socket) = StdDatagram::unbound() else {
            return;
        };
        let _ = socket.set_nonblocking(true);
        let sent = match target {
            UpstreamAddr::Path(path) => socket.send_to(message.as_bytes(), path).map(|_| ()),
            UpstreamAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|addr| socket.send_to_addr(message.as_bytes(), &addr))
                    .map(|_| ())
            }
        };
        if let Err(err) = sent {
            tracing::debug!(error = %err, "could not notify systemd");
        }
    }
}
