//! The exit status contract: the agent's own code, 128+N when a signal N killed it, and three
//! codes of the guard's own, so that scripts and systemd can tell "agent failed" from "guard
//! failed".

use std::fmt;

use libc::{c_int, pid_t};

use crate::process::sig::Sig;

/// agent-guard itself failed: a bad option or config, IMDS required but absent, socket unusable.
pub const GUARD_FAILED: u8 = 125;
/// COMMAND was found but could not be executed.
pub const CANNOT_EXECUTE: u8 = 126;
/// COMMAND was not found.
pub const NOT_FOUND: u8 = 127;

/// Whether an exit status alone reads as a clean stop: 0, or 128 + the stop signal (death by
/// it, or a JVM's exit with that code). Whether SIGKILL came must be judged separately; the
/// lifecycle result (`aws::lifecycle::result_for`) and the drill's verdict both start here.
pub fn is_clean_status(status: u8, stop_signal: Sig) -> bool {
    status == 0 || i32::from(status) == 128 + stop_signal.raw()
}

/// How the agent ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitKind {
    /// It exited with this code.
    Code(u8),
    /// It was killed by this signal.
    Signal { signal: Sig, core_dumped: bool },
}

impl ExitKind {
    /// The status a shell would give: the code, or 128+N for signal N.
    pub fn status(self) -> u8 {
        match self {
            ExitKind::Code(code) => code,
            ExitKind::Signal { signal, .. } => (128 + signal.raw()).clamp(0, 255) as u8,
        }
    }
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
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

/// Proof that the agent has exited and been reaped, with its status. Only the reaper makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    pid: pid_t,
    kind: ExitKind,
}

impl ChildExit {
    /// Only the reaper (in this module's parent, `process`) makes one, from a status it reaped.
    pub(in crate::process) fn new(pid: pid_t, kind: ExitKind) -> ChildExit {
        ChildExit { pid, kind }
    }

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
        self.kind.status()
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
        self.kind.fmt(f)
    }
}

/// Decodes a `waitpid` status: an exit or a death by signal; `None` for stop/continue.
pub(in crate::process) fn decode(status: c_int) -> Option<ExitKind> {
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
