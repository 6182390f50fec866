//! sd_notify, both ways: the agent's `NOTIFY_SOCKET` (a datagram socket with systemd's meanings,
//! so an agent written for systemd runs unchanged), and the guard's own notifications to systemd
//! when it runs as a `Type=notify` unit.
//!
//! The agent's side: datagrams of `KEY=VALUE` lines, at most 4096 bytes as systemd reads them,
//! sender credentials checked (SO_PASSCRED), every file descriptor received closed (that is what
//! `BARRIER=1` waits for). Understood: `READY=1`, `STOPPING=1`, `STATUS=`, `WATCHDOG=1`,
//! `WATCHDOG=trigger`, `EXTEND_TIMEOUT_USEC=`, `BARRIER=1`, and our own `X_DRAINED=1` and
//! `X_IN_FLIGHT=N`. Anything else is ignored, as systemd ignores unknown keys.

use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram as StdDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use crate::agent::control::Control;
use crate::agent::unixsock;

/// systemd's own limit for one notification.
const MAX_DATAGRAM: usize = 4096;
/// File descriptors read per datagram; more are dropped (and so closed) by the kernel.
const MAX_FDS: usize = 16;

/// One datagram as received.
struct Datagram {
    text: Vec<u8>,
    truncated: bool,
    uid: Option<u32>,
    /// Closed when dropped, which is what `BARRIER=1` waits for.
    _fds: Vec<OwnedFd>,
}

/// Turns on SO_PASSCRED, so every datagram carries its sender's credentials.
pub fn pass_credentials(socket: &UnixDatagram) -> io::Result<()> {
    setsockopt(socket, sockopt::PassCred, &true).map_err(io::Error::from)
}

/// Serves the agent's notifications until `shutdown` is cancelled. A datagram is handled whole
/// (its events reach the supervisor, or the closed channel says the run is over), so returning
/// never waits on anything outside.
pub async fn serve(
    socket: UnixDatagram,
    control: Control,
    upstream: Upstream,
    shutdown: CancellationToken,
) {
    let watchdog = control.hub.watchdog;
    let mut check = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| {
        (w / 4).max(Duration::from_millis(50))
    }));
    let mut missed_reported = false;
    let mut refused = RateLimit::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            ready = socket.readable() => {
                if let Err(err) = ready {
                    tracing::warn!(error = %err, "notify socket: wait failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                match socket.try_io(Interest::READABLE, || receive(socket.as_raw_fd())) {
                    Ok(datagram) => handle(datagram, &control, &upstream, &mut refused).await,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => {
                        tracing::warn!(error = %err, "notify socket: receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            _ = check.tick(), if watchdog.is_some() => {
                let missed = control.hub.watchdog_missed(Instant::now());
                if missed && !missed_reported {
                    tracing::warn!(
                        watchdog = %crate::fmt::format_duration(watchdog.unwrap_or_default()),
                        "the agent missed its watchdog deadline (no WATCHDOG=1 in time)"
                    );
                } else if !missed && missed_reported {
                    tracing::info!("the agent's watchdog pings resumed");
                }
                missed_reported = missed;
            }
        }
    }
}

fn receive(fd: RawFd) -> io::Result<Datagram> {
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut iov = [IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(libc::ucred, [RawFd; MAX_FDS]);
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_TRUNC;
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut space), flags).map_err(io::Error::from)?;
    let mut uid = None;
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().map_err(io::Error::from)? {
        match cmsg {
            ControlMessageOwned::ScmCredentials(cred) => uid = Some(cred.uid()),
            ControlMessageOwned::ScmRights(raw) => {
                // SAFETY: the kernel just installed these descriptors for us; nothing else owns them.
                fds.extend(
                    raw.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
            _ => {}
        }
    }
    let len = msg.bytes;
    let truncated = len > MAX_DATAGRAM || msg.flags.contains(MsgFlags::MSG_TRUNC);
    let text = buf[..len.min(MAX_DATAGRAM)].to_vec();
    Ok(Datagram {
        text,
        truncated,
        uid,
        _fds: fds,
    })
}

async fn handle(d: Datagram, control: &Control, upstream: &Upstream, refused: &mut RateLimit) {
    if !d.uid.is_some_and(unixsock::peer_allowed) {
        if refused.allow() {
            tracing::warn!(uid = ?d.uid, "notify socket: refused a datagram from another user");
        }
        return;
    }
    if d.truncated {
        if refused.allow() {
            tracing::warn!("notify socket: refused a datagram over 4096 bytes");
        }
        return;
    }
    let Ok(text) = std::str::from_utf8(&d.text) else {
        if refused.allow() {
            tracing::warn!("notify socket: refused a datagram that is not UTF-8");
        }
        return;
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        apply(key, value, control, upstream).await;
    }
}

/// Applies one `KEY=VALUE`. What the agent's words mean is `Control`'s, shared with the control
/// socket; only systemd's keys and value syntax are read here.
async fn apply(key: &str, value: &str, control: &Control, upstream: &Upstream) {
    let hub = &control.hub;
    match (key, value) {
        ("READY", "1") => {
            // Without `--ready-on notify`, READY=1 is ignored as systemd ignores it for a
            // unit that is not Type=notify.
            control.agent_ready("notify").await;
        }
        ("STOPPING", "1") => {
            if !hub.report().stopping {
                tracing::info!("the agent says it is stopping (STOPPING=1)");
            }
            hub.report().stopping = true;
        }
        ("STATUS", text) => {
            hub.report().status = Some(text.to_string());
            upstream.send(&format!("STATUS={text}"));
        }
        ("WATCHDOG", "1") => hub.report().last_watchdog = Some(Instant::now()),
        ("WATCHDOG", "trigger") => hub.report().watchdog_triggered = true,
        ("EXTEND_TIMEOUT_USEC", usec) => {
            if let Ok(us) = usec.trim().parse::<u64>() {
                control.agent_extend(Duration::from_micros(us)).await;
            }
        }
        ("X_DRAINED", "1") => control.agent_drained().await,
        ("X_IN_FLIGHT", n) => {
            if let Ok(n) = n.trim().parse::<u64>() {
                control.agent_busy(n);
            }
        }
        _ => {}
    }
}

/// Logs at most one refusal a second, so a flood cannot flood the log too.
#[derive(Default)]
struct RateLimit {
    last: Option<Instant>,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            return false;
        }
        self.last = Some(now);
        true
    }
}

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
