//! Installing the guard's signal handlers (the stream of signals it receives) and the job
//! control dispositions the agent must not inherit.
//!
//! The handlers are the classic self-pipe, written here rather than taken from signal-hook: one
//! `extern "C"` function for every handled signal, which writes the signal's number as one byte
//! into a socket that the runtime reads. signal-hook keeps a table of actions per signal that it
//! copies on every registration and again on every removal; for the guard's sixty-odd signals
//! that was a tenth of its start-up and exit. Here installing is one `sigaction` a signal, and
//! nothing is ever removed: the handlers and the socket live as long as the process.
//!
//! Every delivery is a byte, in order of arrival (the kernel itself merges a standard signal that
//! arrives while the same one is pending). The socket holds far more bytes than any burst
//! leaves unread; were it ever full, the byte would be dropped rather than the handler blocked.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::c_int;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::process::sig::{Sig, handled};

/// The stream of signals received by the guard.
pub struct SignalSource {
    /// This reader's own duplicate of the socket's read end, registered with its runtime.
    inbox: AsyncFd<OwnedFd>,
    /// Bytes read and not yet returned.
    pending: [u8; 64],
    start: usize,
    end: usize,
}

/// The OS refused to install the guard's signal handlers.
#[derive(Debug, thiserror::Error)]
#[error("cannot install signal handlers: {0}")]
pub struct SignalSetupError(#[source] pub std::io::Error);

/// The socket's write end, for the handler; -1 until installed. Never closed once set, so the
/// handler can never write into a descriptor number that was closed and reused.
static WRITE_END: AtomicI32 = AtomicI32::new(-1);

/// The socket's read end, kept for the process's life; each [`SignalSource`] reads a duplicate.
static READ_END: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The handler of every handled signal: async-signal-safe (one `send`, errno saved).
extern "C" fn on_signal(sig: c_int) {
    // SAFETY: __errno_location and send are async-signal-safe; the byte lives on this stack.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        let fd = WRITE_END.load(Ordering::Relaxed);
        if fd >= 0 {
            let byte = sig as u8;
            libc::send(
                fd,
                (&raw const byte).cast(),
                1,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
        *errno = saved;
    }
}

impl SignalSource {
    /// Installs handlers for every signal in [`handled`] (once a process; later calls only open
    /// another reader). Signals that arrive before the first `next()` are kept, so this must run
    /// before the agent is spawned. Must be called within a tokio runtime.
    pub fn install() -> Result<Self, SignalSetupError> {
        let mut read_end = READ_END
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read_end.is_none() {
            let (read, write) = socket_pair().map_err(SignalSetupError)?;
            WRITE_END.store(write.as_raw_fd(), Ordering::Relaxed);
            // The write end now belongs to the handler, for good.
            std::mem::forget(write);
            for sig in handled() {
                set_handler(sig.raw()).map_err(SignalSetupError)?;
            }
            *read_end = Some(read);
        }
        let own = match read_end.as_ref() {
            Some(fd) => fd.try_clone().map_err(SignalSetupError)?,
            None => unreachable!("set above"),
        };
        // SAFETY: an OwnedFd's descriptor is open and the same until the AsyncFd drops it.
        let inbox = unsafe { AsyncFd::register_with_interest(own, Interest::READABLE) }
            .map_err(|err| SignalSetupError(err.into_parts().1))?;
        Ok(SignalSource {
            inbox,
            pending: [0; 64],
            start: 0,
            end: 0,
        })
    }

    /// The next signal received; `None` only if the source cannot be read any more.
    pub async fn next(&mut self) -> Option<Sig> {
        loop {
            while self.start < self.end {
                let raw = self.pending[self.start];
                self.start += 1;
                // Only caught signals write bytes, and their numbers are valid; the job control
                // ones are caught only to be dropped (see `JobControl::take`).
                let raw = c_int::from(raw);
                if !JOB_CONTROL.contains(&raw)
                    && let Some(sig) = Sig::from_raw(raw)
                {
                    return Some(sig);
                }
            }
            let mut ready = self.inbox.readable().await.ok()?;
            let fd = self.inbox.get_ref().as_raw_fd();
            match ready.try_io(|_| read_some(fd, &mut self.pending)) {
                Ok(Ok(0)) => return None,
                Ok(Ok(n)) => (self.start, self.end) = (0, n),
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => return None,
                Err(_would_block) => {}
            }
        }
    }
}

fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A connected pair of non-blocking, close-on-exec stream sockets: (read end, write end).
fn socket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    let kind = libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe { libc::socketpair(libc::AF_UNIX, kind, 0, fds.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_handler(sig: c_int) -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; the handler is an `extern "C" fn(c_int)`, which is
    // what a sigaction without SA_SIGINFO calls. SA_RESTART: a signal does not fail the other
    // threads' system calls with EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as extern "C" fn(c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How the guard keeps SIGTTIN and SIGTTOU from stopping it, and what the agent gets of them.
#[derive(Clone, Copy)]
pub struct JobControl {
    /// The dispositions found at start, when the guard ignores the two and the agent must get
    /// them back in the child before exec; `None` when exec itself gives the agent what was
    /// found.
    found: Option<(libc::sigaction, libc::sigaction)>,
}

/// The job control signals: never forwarded, never stop the guard.
const JOB_CONTROL: [c_int; 2] = [libc::SIGTTIN, libc::SIGTTOU];

impl JobControl {
    /// With a terminal on stdin, stdout or stderr, the two are ignored, as tini does: after the
    /// agent's group takes the terminal's foreground, the guard must not be stopped for writing
    /// its logs there (a caught SIGTTOU would not do: the write would be retried and signalled
    /// for ever), and the agent itself must be able to call `tcsetpgrp` from what is still a
    /// background group. The agent then gets the found dispositions back before exec.
    ///
    /// Without a terminal (systemd, a container without `-t`: the usual case) no terminal can
    /// send them, and a stray `kill -TTIN` is all there is to guard against: they are caught
    /// and dropped. exec resets a caught signal to its default, which is what was found, so no
    /// code has to run in the child between fork and exec and the agent can be started with
    /// posix_spawn (vfork) rather than fork. A found SIG_IGN is left alone: the agent inherits
    /// it.
    pub fn take() -> std::io::Result<JobControl> {
        let terminal = [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO]
            .into_iter()
            // SAFETY: isatty only reads the descriptor's state.
            .any(|fd| unsafe { libc::isatty(fd) } == 1);
        if terminal {
            return Ok(JobControl {
                found: Some((
                    set_disposition(libc::SIGTTIN, libc::SIG_IGN)?,
                    set_disposition(libc::SIGTTOU, libc::SIG_IGN)?,
                )),
            });
        }
        for sig in JOB_CONTROL {
            if disposition(sig)? != libc::SIG_IGN {
                set_handler(sig)?;
            }
        }
        Ok(JobControl { found: None })
    }

    /// Whether the child must run [`JobControl::restore_in_child`] before exec.
    pub fn restores_in_child(&self) -> bool {
        self.found.is_some()
    }

    /// Puts back the dispositions found at start, if the guard changed them to SIG_IGN. Only
    /// async-signal-safe calls: this runs in the forked child before `exec`.
    pub fn restore_in_child(&self) -> std::io::Result<()> {
        let Some((ttin, ttou)) = &self.found else {
            return Ok(());
        };
        for (sig, action) in [(libc::SIGTTIN, ttin), (libc::SIGTTOU, ttou)] {
            // SAFETY: `action` is a valid sigaction read back from the kernel by
            // `set_disposition`; sigaction(2) is async-signal-safe.
            if unsafe { libc::sigaction(sig, action, std::ptr::null_mut()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// The current handler of `sig` (SIG_DFL, SIG_IGN or a function).
fn disposition(sig: c_int) -> std::io::Result<libc::sighandler_t> {
    // SAFETY: a zeroed sigaction is valid for the kernel to fill in; no action is set.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(old.sa_sigaction)
    }
}

fn set_disposition(sig: c_int, handler: libc::sighandler_t) -> std::io::Result<libc::sigaction> {
    // SAFETY: both structs are plain data, zero is a valid initial value for them, and the
    // kernel fills `old` in.
    unsafe {
        let mut new: libc::sigaction = std::mem::zeroed();
        new.sa_sigaction = handler;
        libc::sigemptyset(&mut new.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(sig, &new, &mut old) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(old)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every delivery arrives, in order, repeats included, and a second reader opened later
    /// (as the lifecycle's wait for a stop signal opens one) sees what arrives after.
    #[test]
    fn signals_arrive_once_each_and_in_order() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let mut source = SignalSource::install().expect("handlers installed");
            for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGUSR1, libc::SIGWINCH] {
                // SAFETY: raise delivers to this thread; the handler only writes a byte.
                assert_eq!(unsafe { libc::raise(sig) }, 0);
            }
            let mut got = Vec::new();
            for _ in 0..4 {
                let next = tokio::time::timeout(std::time::Duration::from_secs(10), source.next());
                got.push(next.await.expect("a signal within 10 s").expect("open"));
            }
            assert_eq!(
                got,
                [
                    Sig::USR1,
                    Sig::USR2,
                    Sig::USR1,
                    Sig::from_raw(libc::SIGWINCH).expect("WINCH")
                ],
                "each delivery once, in order"
            );
            drop(source);
            let mut later = SignalSource::install().expect("a second reader");
            // SAFETY: as above.
            assert_eq!(unsafe { libc::raise(libc::SIGUSR2) }, 0);
            let next = tokio::time::timeout(std::time::Duration::from_secs(10), later.next());
            assert_eq!(next.await.expect("within 10 s"), Some(Sig::USR2));
        });
    }
}
