//! When the guard itself crashes, its agent is told to stop rather than left running on
//! unsupervised without a word; a fault signal someone sent with kill(2) is not a crash.
//!
//! SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV and SIGSYS get a handler of their own
//! (`SA_SIGINFO`) that reads who raised the signal. Sent by another process (`si_code` SI_USER,
//! SI_QUEUE, SI_TKILL: at most 0), it is forwarded like any other signal, as dumb-init does: the
//! guard must not die of a signal someone sent it. Raised by the kernel for a fault of the
//! guard's own (a bad address, a bad instruction), or by the guard itself (`abort`, as a second
//! panic does), the guard is crashing: the handler sends `--stop-signal` and SIGCONT to the
//! agent's process group, says so on stderr, and lets the crash go on (the handler found
//! before, such as Rust's stack overflow report, or the default: a core dump).
//!
//! A panic that escapes the supervisor does the same from `run` ([`stop_agent`]). A guard killed
//! with SIGKILL cannot do anything: its agent is then left to the cgroup, or the init, above it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::c_int;

use crate::process::sig::{FAULTS, Sig};

/// The agent's process group while it runs; 0 when there is none.
static AGENT_GROUP: AtomicI32 = AtomicI32::new(0);
/// The signal that asks the agent to stop (`--stop-signal`).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(libc::SIGTERM);
/// The handlers found for the fault signals, put back once the guard is crashing.
static FOUND: [OnceLock<Found>; FAULTS.len()] = [const { OnceLock::new() }; FAULTS.len()];

/// A disposition found at install, kept to be put back.
struct Found(libc::sigaction);
// SAFETY: a sigaction is plain data (a handler address, flags and a mask), only read once set.
unsafe impl Sync for Found {}
unsafe impl Send for Found {}

/// The agent now runs in process group `pgid`; 0: it has none any more.
pub fn set_agent_group(pgid: libc::pid_t) {
    AGENT_GROUP.store(pgid, Ordering::Release);
}

/// The signal a crash sends the agent.
pub fn set_stop_signal(sig: c_int) {
    STOP_SIGNAL.store(sig, Ordering::Release);
}

/// Installs the fault handler for each of [`FAULTS`] not ignored at start; `forward` is the plain
/// handler a signal sent by someone else goes to. `SA_ONSTACK`: where a thread has an alternate
/// stack (Rust gives each one for its stack overflow report), a fault of a full stack still runs
/// the handler.
pub fn install(forward: extern "C" fn(c_int)) -> std::io::Result<()> {
    FORWARD.store(forward as usize, Ordering::Release);
    for (i, sig) in FAULTS.into_iter().enumerate() {
        if crate::process::inherited::ignored_at_start(sig) || FOUND[i].get().is_some() {
            continue;
        }
        // SAFETY: zeroed sigactions are valid; the handler has the SA_SIGINFO signature.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fault
                as extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void)
                as libc::sighandler_t;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, &action, &mut old) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let _ = FOUND[i].set(Found(old));
        }
    }
    Ok(())
}

/// The plain handler, as an address (a fn pointer cannot live in an atomic).
static FORWARD: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn on_fault(sig: c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler; getpid is
    // async-signal-safe.
    let (code, sender) = unsafe { ((*info).si_code, (*info).si_pid()) };
    // SAFETY: getpid has no side effects.
    let own = unsafe { libc::getpid() };
    if code <= 0 && sender != own {
        let forward = FORWARD.load(Ordering::Acquire);
        if forward != 0 {
            // SAFETY: FORWARD only ever holds the address of an `extern "C" fn(c_int)`.
            let forward: extern "C" fn(c_int) = unsafe { std::mem::transmute(forward) };
            forward(sig);
        }
        return;
    }
    stop_agent(Cause::Signal(sig));
    let found = FAULTS
        .iter()
        .position(|s| *s == sig)
        .and_then(|i| FOUND[i].get());
    // SAFETY: sigaction and raise are async-signal-safe; the found action came from the kernel.
    unsafe {
        match found {
            Some(Found(old)) if old.sa_sigaction != libc::SIG_DFL => {
                // Back to the handler found (Rust's stack overflow report), which the fault
                // reaches again as this handler returns.
                libc::sigaction(sig, old, std::ptr::null_mut());
            }
            _ => {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &default, std::ptr::null_mut());
                // Pending while this handler runs, and fatal as it returns; a fault that
                // returns to its instruction would raise it again anyway.
                libc::raise(sig);
            }
        }
    }
}

/// Why the guard is crashing.
#[derive(Clone, Copy)]
pub enum Cause {
    /// A fault of its own, or `abort`.
    Signal(c_int),
    /// A panic escaped the supervisor.
    Panic,
}

/// The guard is crashing: sends the stop signal and SIGCONT to the agent's group (the agent may
/// still wrap up its work, which a SIGKILL would lose), and says so on stderr. Only
/// async-signal-safe calls, no allocation: this runs in a signal handler.
pub fn stop_agent(cause: Cause) {
    let group = AGENT_GROUP.swap(0, Ordering::AcqRel);
    let stop = STOP_SIGNAL.load(Ordering::Acquire);
    let mut line = Line::new();
    line.push(b"agent-guard: crashed (");
    match cause {
        Cause::Signal(sig) => line.signal(sig),
        Cause::Panic => line.push(b"a panic"),
    }
    if group > 0 {
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(-group, stop);
            libc::kill(-group, libc::SIGCONT);
        }
        line.push(b"); sent ");
        line.signal(stop);
        line.push(b" to the agent's process group ");
        line.number(i64::from(group));
        line.push(b" so that it does not run on unsupervised\n");
    } else {
        line.push(b"); no agent is running\n");
    }
    line.write_to_stderr();
}

/// A line built on the stack, for a signal handler.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut rest = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }

    /// `SIGTERM`, or `signal 40`.
    fn signal(&mut self, sig: c_int) {
        match Sig::standard_name(sig) {
            Some(name) => {
                self.push(b"SIG");
                self.push(name.as_bytes());
            }
            None => {
                self.push(b"signal ");
                self.number(i64::from(sig));
            }
        }
    }

    fn write_to_stderr(&self) {
        // SAFETY: write(2) of bytes on this stack is async-signal-safe; a failure has nowhere
        // to be reported.
        unsafe {
            libc::write(libc::STDERR_FILENO, self.buf.as_ptr().cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_holds_numbers_without_allocating() {
        let mut line = Line::new();
        line.signal(libc::SIGSEGV);
        line.push(b" ");
        line.signal(40);
        line.push(b" group ");
        line.number(-4_194_304);
        assert_eq!(&line.buf[..line.len], b"SIGSEGV signal 40 group -4194304");
    }
}
