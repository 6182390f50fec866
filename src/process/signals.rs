//! Installing the guard's signal handlers (the stream of signals it receives) and the job
//! control dispositions the agent must not inherit.
//!
//! Installed as early as the guard knows it will supervise ([`install_handlers`]); until then
//! every signal is held blocked (`process::inherited`), so none can kill the guard before its
//! handler exists.
//!
//! The handlers are the classic self-pipe, written here rather than taken from signal-hook: one
//! `extern "C"` function for every handled signal, which writes the signal's number as one byte
//! into a pipe that the runtime reads. signal-hook keeps a table of actions per signal that it
//! copies on every registration and again on every removal; for the guard's sixty-odd signals
//! that was a tenth of its start-up and exit. Here installing is one `sigaction` a signal, and
//! nothing is ever removed: the handlers and the pipe live as long as the process.
//!
//! What the reader gets is what signal-hook gave: each signal that arrived, a signal that
//! arrives again while it is still unread merged into the first (as the kernel merges a pending
//! standard signal), and distinct signals in the order they came. The pipe holds 64 KiB of
//! unread bytes; should a flood ever fill it, the handler marks the signal in a bit set instead,
//! which the reader takes with the bytes, so no signal is lost, a stop signal least of all.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use libc::c_int;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use crate::process::crash;
use crate::process::inherited::{self, ignored_at_start};
use crate::process::sig::{Sig, handled};

/// The stream of signals received by the guard.
pub struct SignalSource {
    /// This reader's own duplicate of the pipe's read end, registered with its runtime.
    inbox: AsyncFd<OwnedFd>,
    /// Signals read and not yet returned, each at most once.
    queue: VecDeque<Sig>,
}

/// The OS refused to install the guard's signal handlers.
#[derive(Debug, thiserror::Error)]
#[error("cannot install signal handlers: {0}")]
pub struct SignalSetupError(#[source] pub std::io::Error);

/// The pipe's write end, for the handler; -1 until installed. Never closed once set, so the
/// handler can never write into a descriptor number that was closed and reused.
static WRITE_END: AtomicI32 = AtomicI32::new(-1);

/// Signals whose byte did not fit in the pipe: bit `n - 1` for signal `n`.
static OVERFLOW: AtomicU64 = AtomicU64::new(0);

/// The pipe's read end, kept for the process's life (so a write never meets a pipe without a
/// reader); each [`SignalSource`] reads a duplicate.
static READ_END: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// The byte that only wakes the reader (no signal is 0).
const WAKE: u8 = 0;

/// The handler of every caught signal: async-signal-safe (`write` and atomics, errno saved).
extern "C" fn on_signal(sig: c_int) {
    // SAFETY: __errno_location and write are async-signal-safe; the bytes live on this stack.
    unsafe {
        let errno = libc::__errno_location();
        let saved = *errno;
        let fd = WRITE_END.load(Ordering::Acquire);
        if fd >= 0 && (1..=64).contains(&sig) {
            let byte = sig as u8;
            if libc::write(fd, (&raw const byte).cast(), 1) != 1 {
                // The pipe is full: mark the signal, then try to make sure the reader looks. If
                // the pipe is still full the reader has bytes to wake it and takes the mark with
                // them.
                OVERFLOW.fetch_or(1 << (sig - 1), Ordering::AcqRel);
                let wake = WAKE;
                libc::write(fd, (&raw const wake).cast(), 1);
            }
        }
        *errno = saved;
    }
}

impl SignalSource {
    /// Opens a reader of the signals received, installing the handlers first if that was not
    /// done yet ([`install_handlers`]). Signals that arrive before the first `next()` are kept,
    /// so this must run before the agent is spawned. Must be called within a tokio runtime.
    pub fn install() -> Result<Self, SignalSetupError> {
        install_handlers()?;
        let read_end = READ_END
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(read) = &*read_end else {
            return Err(SignalSetupError(io::Error::other(
                "the signal pipe is gone",
            )));
        };
        let own = read.try_clone().map_err(SignalSetupError)?;
        // SAFETY: an OwnedFd's descriptor is open and the same until the AsyncFd drops it.
        let inbox = unsafe { AsyncFd::register_with_interest(own, Interest::READABLE) }
            .map_err(|err| SignalSetupError(err.into_parts().1))?;
        Ok(SignalSource {
            inbox,
            queue: VecDeque::new(),
        })
    }

    /// The next signal received; `None` only if the source cannot be read any more.
    pub async fn next(&mut self) -> Option<Sig> {
        let mut bytes = [0u8; 256];
        loop {
            if let Some(sig) = self.queue.pop_front() {
                return Some(sig);
            }
            let mut ready = self.inbox.readable().await.ok()?;
            let fd = self.inbox.get_ref().as_raw_fd();
            match ready.try_io(|_| read_some(fd, &mut bytes)) {
                Ok(Ok(0)) => return None,
                Ok(Ok(n)) => {
                    for &byte in &bytes[..n] {
                        self.take(c_int::from(byte));
                    }
                    let overflow = OVERFLOW.swap(0, Ordering::AcqRel);
                    for sig in 1..=64 {
                        if overflow & (1 << (sig - 1)) != 0 {
                            self.take(sig);
                        }
                    }
                }
                Ok(Err(err)) if err.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(_)) => return None,
                Err(_would_block) => {}
            }
        }
    }

    /// Queues signal `raw` unless it is already queued (merged, as a pending signal is), a
    /// wake-up byte, or a job control signal (caught only to be dropped: `JobControl::take`).
    fn take(&mut self, raw: c_int) {
        if JOB_CONTROL.contains(&raw) {
            return;
        }
        if let Some(sig) = Sig::from_raw(raw)
            && !self.queue.contains(&sig)
        {
            self.queue.push_back(sig);
        }
    }
}

/// What [`install_handlers`] set up, once a process.
static INSTALLED: OnceLock<JobControl> = OnceLock::new();

/// Installs the guard's handlers, once a process, as early as the guard knows it will
/// supervise: the plain handler for every signal in [`handled`] and the fault handler
/// (`process::crash`) for the others, except those ignored when the guard started, which stay
/// ignored and are never forwarded (`process::inherited`); the job control signals as
/// [`JobControl::take`] says. Then the signals held since start are let through, to these
/// handlers. Needs no runtime.
pub fn install_handlers() -> Result<JobControl, SignalSetupError> {
    if let Some(job_control) = INSTALLED.get() {
        return Ok(*job_control);
    }
    {
        let mut read_end = READ_END
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if read_end.is_none() {
            let (read, write) = pipe().map_err(SignalSetupError)?;
            WRITE_END.store(write.as_raw_fd(), Ordering::Release);
            // The write end now belongs to the handler, for good.
            std::mem::forget(write);
            *read_end = Some(read);
        }
    }
    for sig in handled() {
        if !ignored_at_start(sig.raw()) {
            set_handler(sig.raw()).map_err(SignalSetupError)?;
        }
    }
    crash::install(on_signal).map_err(SignalSetupError)?;
    let job_control = JobControl::take().map_err(SignalSetupError)?;
    let _ = INSTALLED.set(job_control);
    inherited::unblock_all();
    Ok(job_control)
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

/// A non-blocking, close-on-exec pipe: (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as c_int; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
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

/// How the guard keeps SIGTTIN and SIGTTOU from stopping it, and whether it runs on a terminal.
#[derive(Clone, Copy, Debug)]
pub struct JobControl {
    /// stdin, stdout or stderr is a terminal: the guard may be a shell's job, which ^Z stops.
    terminal: bool,
}

/// The job control signals: never forwarded, never stop the guard.
const JOB_CONTROL: [c_int; 2] = [libc::SIGTTIN, libc::SIGTTOU];

impl JobControl {
    /// No terminal, for unit tests of the spawn paths.
    #[cfg(test)]
    pub(crate) fn for_test() -> JobControl {
        JobControl { terminal: false }
    }

    /// With a terminal on stdin, stdout or stderr, the two are ignored, as tini does: after the
    /// agent's group takes the terminal's foreground, the guard must not be stopped for writing
    /// its logs there (a caught SIGTTOU would not do: the write would be retried and signalled
    /// for ever), and the agent itself must be able to call `tcsetpgrp` from what is still a
    /// background group.
    ///
    /// Without a terminal (systemd, a container without `-t`: the usual case) no terminal can
    /// send them, and a stray `kill -TTIN` is all there is to guard against: they are caught
    /// and dropped. A signal ignored at start is left alone. Either way the agent starts with
    /// them as the guard found them (`process::inherited`).
    fn take() -> std::io::Result<JobControl> {
        let terminal = [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO]
            .into_iter()
            // SAFETY: isatty only reads the descriptor's state.
            .any(|fd| unsafe { libc::isatty(fd) } == 1);
        for sig in JOB_CONTROL {
            if ignored_at_start(sig) {
                continue;
            }
            if terminal {
                set_disposition(sig, libc::SIG_IGN)?;
            } else {
                set_handler(sig)?;
            }
        }
        Ok(JobControl { terminal })
    }

    /// Whether the guard runs on a terminal, where a shell may have started it as a job.
    pub fn terminal(&self) -> bool {
        self.terminal
    }

    /// In a forked child before exec: every signal as the guard found it at start
    /// (`inherited::restore_in_child`). Only async-signal-safe calls.
    pub fn restore_in_child(&self) -> std::io::Result<()> {
        inherited::restore_in_child()
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

    use std::time::Duration;

    fn raise(sig: c_int) {
        // SAFETY: raise delivers to this thread; the handler only writes a byte.
        assert_eq!(unsafe { libc::raise(sig) }, 0);
    }

    async fn next(source: &mut SignalSource) -> Sig {
        tokio::time::timeout(Duration::from_secs(10), source.next())
            .await
            .expect("a signal within 10 s")
            .expect("the source is open")
    }

    /// One test, because the pipe is the process's: signals arrive in order, a repeat merged
    /// into the unread first; the stream handed on (as the supervisor hands it to the lifecycle's
    /// wait for a stop signal) still holds what it had read and not returned; and a flood that
    /// fills the pipe loses no other signal.
    #[test]
    fn signals_arrive_in_order_merged_and_never_lost() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let winch = Sig::from_raw(libc::SIGWINCH).expect("WINCH");
            let mut first = SignalSource::install().expect("handlers installed");
            for sig in [libc::SIGUSR1, libc::SIGUSR2, libc::SIGUSR1, libc::SIGWINCH] {
                raise(sig);
            }
            assert_eq!(next(&mut first).await, Sig::USR1);
            assert_eq!(next(&mut first).await, Sig::USR2);
            let mut second = first;
            raise(libc::SIGUSR2);
            assert_eq!(
                next(&mut second).await,
                winch,
                "read by the first, not lost"
            );
            assert_eq!(next(&mut second).await, Sig::USR2);

            // More than the pipe holds, then the stop signal.
            for _ in 0..70_000 {
                raise(libc::SIGUSR1);
            }
            raise(libc::SIGTERM);
            let mut until_term = 0;
            while next(&mut second).await != Sig::TERM {
                until_term += 1;
                assert!(until_term < 1_000, "SIGTERM never came out of the flood");
            }
        });
    }
}
