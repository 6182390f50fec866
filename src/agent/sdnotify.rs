//! sd_notify, both ways: the agent's `NOTIFY_SOCKET` (a datagram socket with systemd's meanings,
//! so an agent written for systemd runs unchanged), and the guard's own notifications to systemd
//! when it runs as a `Type=notify` unit.
//!
//! The agent's side: datagrams of `KEY=VALUE` lines, at most 4096 bytes as systemd reads them,
//! sender credentials checked (SO_PASSCRED), every file descriptor received closed (that is what
//! `BARRIER=1` waits for; `FDSTORE=1` is not supported, so its descriptors are closed too).
//! Understood: `READY=1`, `STOPPING=1`, `STATUS=`, `WATCHDOG=1`, `WATCHDOG=trigger`,
//! `EXTEND_TIMEOUT_USEC=`, `BARRIER=1`, and our own `X_DRAINED=1` and `X_IN_FLIGHT=N`. Anything
//! else is ignored, as systemd ignores unknown keys. What a datagram says is read by the pure
//! [`parse`]; only the socket and the meanings are here besides.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;

use crate::agent::control::Control;
use crate::agent::unixsock;
use crate::process::upstream::Upstream;

/// systemd's own limit for one notification.
const MAX_DATAGRAM: usize = 4096;
/// The most file descriptors the kernel passes in one message (its SCM_MAX_FD). The control
/// buffer has room for that many and the credentials, so it is never cut short: every descriptor
/// the kernel installs in the guard is seen, owned, and closed.
const SCM_MAX_FD: usize = 253;

/// One datagram as received.
struct Datagram {
    text: Vec<u8>,
    truncated: bool,
    uid: Option<u32>,
    /// The control data did not fit (it cannot, with the buffer sized as it is; should it ever,
    /// the descriptors that were installed are still in `fds`).
    control_truncated: bool,
    /// Closed when dropped, which is what `BARRIER=1` waits for; every path drops them.
    fds: Vec<OwnedFd>,
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
    let watchdog = control.watchdog;
    let mut check = tokio::time::interval(watchdog.map_or(Duration::from_secs(3600), |w| {
        (w / 4).max(Duration::from_millis(50))
    }));
    let mut missed_reported = false;
    let mut refused = RateLimit::default();
    let mut failed = RateLimit::default();
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
                        if failed.allow() {
                            tracing::warn!(error = %err, "notify socket: receive failed");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            _ = check.tick(), if watchdog.is_some() => {
                let missed = control.watchdog_missed(Instant::now());
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
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: CMSG_SPACE only computes a size.
    let space = unsafe {
        libc::CMSG_SPACE(size_of::<libc::ucred>() as u32)
            + libc::CMSG_SPACE((SCM_MAX_FD * size_of::<RawFd>()) as u32)
    } as usize;
    // u64 words: the control buffer must be aligned for `cmsghdr`.
    let mut control = vec![0u64; space.div_ceil(size_of::<u64>())];
    // SAFETY: an all-zero msghdr is valid (no name, no buffers) until the fields below are set.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let flags = libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC | libc::MSG_TRUNC;
    // SAFETY: `msg` points at `iov` and `control`, both alive and as large as said.
    let len = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if len < 0 {
        return Err(io::Error::last_os_error());
    }
    // Whatever happens next, the descriptors are owned (and so closed) first.
    let (uid, fds) = take_control(&msg);
    let len = len as usize;
    Ok(Datagram {
        text: buf[..len.min(MAX_DATAGRAM)].to_vec(),
        truncated: len > MAX_DATAGRAM || msg.msg_flags & libc::MSG_TRUNC != 0,
        uid,
        control_truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
        fds,
    })
}

/// The sender's uid and every descriptor in the control data of a received `msg`, each now
/// owned. Walks the messages by hand rather than with `nix`, whose iterator refuses control data
/// that was cut short and so would leave the descriptors the kernel did install open forever.
fn take_control(msg: &libc::msghdr) -> (Option<u32>, Vec<OwnedFd>) {
    let mut uid = None;
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled by recvmsg; CMSG_FIRSTHDR/NXTHDR stay within msg_controllen, which
    // the kernel set to what it wrote.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: a non-null header returned by CMSG_FIRSTHDR/NXTHDR lies within the buffer.
        let (hdr, data) = unsafe { (&*cmsg, libc::CMSG_DATA(cmsg)) };
        // `cmsg_len` is a size_t with glibc but a socklen_t with musl (the static build).
        #[allow(clippy::unnecessary_cast)]
        let payload = (hdr.cmsg_len as usize).saturating_sub(data as usize - cmsg as usize);
        match (hdr.cmsg_level, hdr.cmsg_type) {
            (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                for i in 0..payload / size_of::<RawFd>() {
                    // SAFETY: `payload` bytes of descriptors follow the header; the kernel just
                    // installed each one for this process and nothing else owns it.
                    let raw = unsafe { std::ptr::read_unaligned(data.cast::<RawFd>().add(i)) };
                    // SAFETY: as above: a fresh descriptor, owned from here on.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
            (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if payload >= size_of::<libc::ucred>() => {
                // SAFETY: a whole ucred follows the header.
                let cred: libc::ucred = unsafe { std::ptr::read_unaligned(data.cast()) };
                uid = Some(cred.uid);
            }
            _ => {}
        }
        // SAFETY: as for CMSG_FIRSTHDR.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    (uid, fds)
}

async fn handle(d: Datagram, control: &Control, upstream: &Upstream, refused: &mut RateLimit) {
    // Every return below drops `d`, and with it every descriptor it carried.
    if d.control_truncated && refused.allow() {
        tracing::warn!(
            "notify socket: a datagram's control data was cut short; its descriptors were closed"
        );
    }
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
    let Ok(notifications) = parse(&d.text) else {
        if refused.allow() {
            tracing::warn!("notify socket: refused a datagram that is not UTF-8");
        }
        return;
    };
    if !d.fds.is_empty() && !notifications.contains(&Notification::Barrier) && refused.allow() {
        tracing::warn!(
            fds = d.fds.len(),
            "notify socket: closed the file descriptors sent with a datagram (FDSTORE is not supported)"
        );
    }
    for notification in notifications {
        apply(notification, control, upstream).await;
    }
}

/// One thing a datagram says: [`parse`] reads them, [`apply`] gives them their meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    Ready,
    Stopping,
    Status(String),
    Watchdog,
    WatchdogTrigger,
    /// `EXTEND_TIMEOUT_USEC=`, as given (the cap is `Control`'s, shared with `extend`).
    ExtendTimeout(Duration),
    Drained,
    InFlight(u64),
    Barrier,
    FdStore,
}

/// A datagram whose text is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not UTF-8")]
pub struct NotUtf8;

/// What a datagram's text says, in order: `KEY=VALUE` lines, unknown keys and lines without `=`
/// left out as systemd leaves them. Pure, and fuzzed (`fuzz/`).
pub fn parse(datagram: &[u8]) -> Result<Vec<Notification>, NotUtf8> {
    let text = std::str::from_utf8(datagram).map_err(|_| NotUtf8)?;
    Ok(text
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter_map(|(key, value)| notification(key, value))
        .collect())
}

fn notification(key: &str, value: &str) -> Option<Notification> {
    Some(match (key, value) {
        ("READY", "1") => Notification::Ready,
        ("STOPPING", "1") => Notification::Stopping,
        ("STATUS", text) => Notification::Status(text.to_string()),
        ("WATCHDOG", "1") => Notification::Watchdog,
        ("WATCHDOG", "trigger") => Notification::WatchdogTrigger,
        ("EXTEND_TIMEOUT_USEC", usec) => {
            Notification::ExtendTimeout(Duration::from_micros(usec.trim().parse().ok()?))
        }
        ("X_DRAINED", "1") => Notification::Drained,
        ("X_IN_FLIGHT", n) => Notification::InFlight(n.trim().parse().ok()?),
        ("BARRIER", "1") => Notification::Barrier,
        ("FDSTORE", "1") => Notification::FdStore,
        _ => return None,
    })
}

/// Applies one notification. What the agent's words mean is `Control`'s, shared with the control
/// socket; only systemd's keys and value syntax are read here.
async fn apply(notification: Notification, control: &Control, upstream: &Upstream) {
    let reports = &control.reports;
    match notification {
        Notification::Ready => {
            // Without `--ready-on notify`, READY=1 is ignored as systemd ignores it for a
            // unit that is not Type=notify.
            control.agent_ready("notify").await;
        }
        Notification::Stopping => {
            if !reports.get().stopping {
                tracing::info!("the agent says it is stopping (STOPPING=1)");
            }
            reports.update(|r| r.stopping = true);
        }
        Notification::Status(text) => {
            upstream.send(&format!("STATUS={text}"));
            reports.update(|r| r.status = Some(text));
        }
        Notification::Watchdog => reports.update(|r| r.last_watchdog = Some(Instant::now())),
        Notification::WatchdogTrigger => reports.update(|r| r.watchdog_triggered = true),
        Notification::ExtendTimeout(by) => control.agent_extend(by).await,
        Notification::Drained => control.agent_drained().await,
        Notification::InFlight(n) => control.agent_busy(n),
        // The descriptor sent with it is closed once the datagram is handled: that is the answer.
        Notification::Barrier | Notification::FdStore => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_known_keys_in_order_and_skips_the_rest() {
        let got = parse(
            b"READY=1\nSTATUS=a=b\nnonsense\nEXTEND_TIMEOUT_USEC= 1500000\nX_IN_FLIGHT=x\n\
              X_IN_FLIGHT=3\nWATCHDOG=trigger\nUNKNOWN=1\nFDSTORE=1\nBARRIER=1\nX_DRAINED=1",
        );
        assert_eq!(
            got,
            Ok(vec![
                Notification::Ready,
                Notification::Status("a=b".into()),
                Notification::ExtendTimeout(Duration::from_millis(1500)),
                Notification::InFlight(3),
                Notification::WatchdogTrigger,
                Notification::FdStore,
                Notification::Barrier,
                Notification::Drained,
            ])
        );
        assert_eq!(
            parse(b"EXTEND_TIMEOUT_USEC=18446744073709551615"),
            Ok(vec![Notification::ExtendTimeout(Duration::from_micros(
                u64::MAX
            ))]),
            "the cap is applied by Control, for both sockets"
        );
        assert_eq!(parse(b"READY=1\n\xff"), Err(NotUtf8));
        assert_eq!(parse(b""), Ok(vec![]));
    }
}
