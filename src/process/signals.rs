//! Installing the guard's signal handlers (the stream of signals it receives) and the job
//! control dispositions the agent must not inherit.

use futures_core::Stream;
use libc::c_int;
use signal_hook_tokio::Signals;

use crate::process::sig::{Sig, handled};

/// The stream of signals received by the guard.
pub struct SignalSource {
    signals: Signals,
}

/// The OS refused to install the guard's signal handlers.
#[derive(Debug, thiserror::Error)]
#[error("cannot install signal handlers: {0}")]
pub struct SignalSetupError(#[source] pub std::io::Error);

impl SignalSource {
    /// Installs handlers for every signal in [`handled`]. Signals that arrive before the first
    /// `next()` are kept, so this must run before the agent is spawned.
    pub fn install() -> Result<Self, SignalSetupError> {
        let raw: Vec<c_int> = handled().into_iter().map(Sig::raw).collect();
        let signals = Signals::new(raw).map_err(SignalSetupError)?;
        Ok(SignalSource { signals })
    }

    /// The next signal received; `None` only if the source was closed.
    pub async fn next(&mut self) -> Option<Sig> {
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut self.signals).poll_next(cx))
            .await
            // The handlers were installed for valid signal numbers only.
            .and_then(Sig::from_raw)
    }
}

/// The dispositions of SIGTTIN and SIGTTOU as the guard found them, restored in the agent.
#[derive(Clone, Copy)]
pub struct JobControl {
    ttin: libc::sigaction,
    ttou: libc::sigaction,
}

impl JobControl {
    /// Ignores SIGTTIN and SIGTTOU in the guard, as tini does: after the agent's group takes
    /// the terminal's foreground, the guard must not be stopped for writing its logs there, and
    /// the agent itself must be able to call `tcsetpgrp` from what is still a background group.
    pub fn ignore() -> std::io::Result<JobControl> {
        Ok(JobControl {
            ttin: set_disposition(libc::SIGTTIN, libc::SIG_IGN)?,
            ttou: set_disposition(libc::SIGTTOU, libc::SIG_IGN)?,
        })
    }

    /// Puts back the dispositions found at start. Only async-signal-safe calls: this runs in the
    /// forked child before `exec`.
    pub fn restore_in_child(&self) -> std::io::Result<()> {
        for (sig, action) in [(libc::SIGTTIN, &self.ttin), (libc::SIGTTOU, &self.ttou)] {
            // SAFETY: `action` is a valid sigaction read back from the kernel by
            // `set_disposition`; sigaction(2) is async-signal-safe.
            if unsafe { libc::sigaction(sig, action, std::ptr::null_mut()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
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
