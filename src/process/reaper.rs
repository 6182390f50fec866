//! The only caller of `waitpid`: reaps every child that exits (the agent, and as PID 1 or a
//! subreaper every orphan handed to the guard) and reports the agent's own status.
//!
//! A global `waitpid(-1)` and a per-child wait (tokio's or std's `Child::wait`) race, and the
//! loser gets ECHILD: the agent's status would be lost. So nothing else in the guard waits, and
//! [`ChildExit`] can only be made here: code that needs proof the agent has exited (completing
//! the terminate hook) takes a `ChildExit`, so it cannot be written to run before the exit.

use std::fmt;

use libc::{c_int, pid_t};

use crate::process::signals::Sig;

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(u8),
    /// It was killed by this signal.
    Signal { signal: Sig, core_dumped: bool },
}

/// Proof that the agent has exited and been reaped, with its status. Only the reaper makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    pid: pid_t,
    kind: ExitKind,
}

impl ChildExit {
    /// The agent's pid (now free for reuse).
    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// How it ended.
    pub fn kind(&self) -> ExitKind {
        self.kind
    }

    /// The status the guard exits with: the agent's code, or 128+N for signal N, as a shell does.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ExitKind::Code(code) => code,
            ExitKind::Signal { signal, .. } => (128 + signal.raw()).clamp(0, 255) as u8,
        }
    }

    /// A death by signal made up for unit tests of code that takes a `ChildExit`.
    #[cfg(test)]
    pub(crate) fn for_test_signal(signal: Sig) -> ChildExit {
        ChildExit {
            pid: 1,
            kind: ExitKind::Signal {
                signal,
                core_dumped: false,
            },
        }
    }

    /// A status made up for unit tests of code that takes a `ChildExit`.
    #[cfg(test)]
    pub(crate) fn for_test(code: u8) -> ChildExit {
        ChildExit {
            pid: 1,
            kind: ExitKind::Code(code),
        }
    }
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ExitKind::Code(code) => write!(f, "exited with code {code}"),
            ExitKind::Signal {
                signal,
                core_dumped,
            } => {
                write!(f, "killed by {signal}")?;
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Reaps children and picks out the agent's status.
#[derive(Debug)]
pub struct Reaper {
    agent: pid_t,
    /// Orphans reaped so far (not the agent), for logs and metrics.
    orphans: u64,
}

impl Reaper {
    /// A reaper for the agent with this pid. Create it only after the agent's spawn returned:
    /// std's spawn waits for a child whose exec failed, and must not lose that race.
    pub fn new(agent: pid_t) -> Self {
        Reaper { agent, orphans: 0 }
    }

    /// How many children other than the agent were reaped.
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans
    }

    /// Reaps every child that has exited, without blocking. Returns the agent's status if the
    /// agent was among them. Signals coalesce (200 orphans may raise one SIGCHLD), so this loops
    /// until nothing is left to reap.
    pub fn reap(&mut self) -> Option<ChildExit> {
        let mut agent_exit = None;
        loop {
            let mut status: c_int = 0;
            // SAFETY: waitpid with a valid pointer to a c_int; WNOHANG keeps it non-blocking.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid == 0 {
                break; // children remain, none has exited
            }
            if pid < 0 {
                match std::io::Error::last_os_error().raw_os_error() {
                    Some(libc::EINTR) => continue,
                    _ => break, // ECHILD: no children at all
                }
            }
            let Some(kind) = decode(status) else {
                continue; // stopped or continued: not an exit
            };
            if pid == self.agent {
                agent_exit = Some(ChildExit { pid, kind });
            } else {
                self.orphans += 1;
                tracing::debug!(pid, "reaped an orphaned process");
            }
        }
        agent_exit
    }
}

fn decode(status: c_int) -> Option<ExitKind> {
    if libc::WIFEXITED(status) {
        Some(ExitKind::Code(libc::WEXITSTATUS(status) as u8))
    } else if libc::WIFSIGNALED(status) {
        let raw = libc::WTERMSIG(status);
        Some(ExitKind::Signal {
            signal: Sig::from_raw(raw).unwrap_or(Sig::KILL),
            core_dumped: libc::WCOREDUMP(status),
        })
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        let exit = |kind| ChildExit { pid: 9, kind };
        assert_eq!(exit(ExitKind::Code(0)).exit_code(), 0);
        assert_eq!(exit(ExitKind::Code(255)).exit_code(), 255);
        let killed = |signal| ExitKind::Signal {
            signal,
            core_dumped: false,
        };
        assert_eq!(exit(killed(Sig::TERM)).exit_code(), 143);
        assert_eq!(exit(killed(Sig::KILL)).exit_code(), 137);
        assert_eq!(exit(killed(Sig::USR1)).exit_code(), 138);
    }

    #[test]
    fn decodes_raw_statuses() {
        // Status words as the kernel builds them: code << 8 for an exit, the signal for a kill.
        assert_eq!(decode(42 << 8), Some(ExitKind::Code(42)));
        assert_eq!(
            decode(libc::SIGTERM),
            Some(ExitKind::Signal {
                signal: Sig::TERM,
                core_dumped: false
            })
        );
        assert_eq!(
            decode(libc::SIGSEGV | 0x80),
            Some(ExitKind::Signal {
                signal: Sig::from_raw(libc::SIGSEGV).expect("SEGV is a signal"),
                core_dumped: true
            })
        );
        // Stopped (0x7f) is not an exit.
        assert_eq!(decode((libc::SIGSTOP << 8) | 0x7f), None);
    }
}
