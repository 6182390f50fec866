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

/// How the guard knows that nothing of the agent is left, beyond the agent itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The agent's process group holds no live process (`--cgroup off`, or no cgroup could be
    /// had): a `setsid()` grandchild may still run.
    ProcessGroup,
    /// The agent's cgroup reads `populated 0`: no process it started is left, wherever it went.
    Cgroup,
}

impl Gone {
    /// For logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Gone::ProcessGroup => "process-group",
            Gone::Cgroup => "cgroup",
        }
    }
}

/// Proof that the agent has exited and been reaped, with its status; once everything it started
/// is gone too, the proof of that ([`ChildExit::everything_gone`]). Only the `process` part
/// makes or seals one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildExit {
    pid: pid_t,
    kind: ExitKind,
    /// Set once the process group or the cgroup was seen empty after the exit.
    gone: Option<Gone>,
    /// OOM kills in the agent's cgroup during this run (`memory.events`), 0 without a memory
    /// controller.
    oom_kills: u64,
}

impl ChildExit {
    /// Only the reaper (in this module's parent, `process`) makes one, from a status it reaped.
    pub(in crate::process) fn new(pid: pid_t, kind: ExitKind) -> ChildExit {
        ChildExit {
            pid,
            kind,
            gone: None,
            oom_kills: 0,
        }
    }

    /// Sealed with the proof that nothing of the agent is left; made only where that was seen
    /// (`process::child`, `process::cgroup`).
    pub(in crate::process) fn proven_gone(mut self, how: Gone) -> ChildExit {
        self.gone = Some(how);
        self
    }

    /// With the OOM kills counted in the agent's cgroup during its run.
    pub(in crate::process) fn with_oom_kills(mut self, n: u64) -> ChildExit {
        self.oom_kills = n;
        self
    }

    /// How the guard knows nothing of the agent is left, once it does; `None` while processes
    /// remain, or when some survived SIGKILL and the guard gave up on them.
    pub fn everything_gone(&self) -> Option<Gone> {
        self.gone
    }

    /// OOM kills in the agent's cgroup during this run.
    pub fn oom_kills(&self) -> u64 {
        self.oom_kills
    }

    /// The kernel's OOM killer ended the agent: it died of SIGKILL while OOM kills were counted.
    pub fn oom_killed(&self) -> bool {
        self.oom_kills > 0
            && matches!(
                self.kind,
                ExitKind::Signal {
                    signal: Sig::KILL,
                    ..
                }
            )
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
        ChildExit::new(
            1,
            ExitKind::Signal {
                signal,
                core_dumped: false,
            },
        )
    }

    /// A death by SIGKILL from the OOM killer, made up for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test_oom() -> ChildExit {
        ChildExit::for_test_signal(Sig::KILL).with_oom_kills(1)
    }

    /// An exit with `n` OOM kills in the agent's cgroup during its run, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test_oom_kills(self, n: u64) -> ChildExit {
        self.with_oom_kills(n)
    }

    /// A status made up for unit tests of code that takes a `ChildExit`.
    #[cfg(test)]
    pub(crate) fn for_test(code: u8) -> ChildExit {
        ChildExit::new(1, ExitKind::Code(code))
    }
}

impl fmt::Display for ChildExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)?;
        if self.oom_killed() {
            f.write_str(" (the kernel's OOM killer)")
        } else if self.oom_kills > 0 {
            write!(f, " ({} OOM kill(s) in its cgroup)", self.oom_kills)
        } else {
            Ok(())
        }
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
        let exit = |kind| ChildExit::new(9, kind);
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
    fn an_oom_kill_is_named() {
        assert_eq!(
            ChildExit::for_test_oom().to_string(),
            "killed by SIGKILL (the kernel's OOM killer)"
        );
        assert!(ChildExit::for_test_oom().oom_killed());
        let code = ChildExit::for_test(1).with_oom_kills(2);
        assert!(!code.oom_killed());
        assert_eq!(
            code.to_string(),
            "exited with code 1 (2 OOM kill(s) in its cgroup)"
        );
        assert_eq!(
            ChildExit::for_test_signal(Sig::KILL).to_string(),
            "killed by SIGKILL"
        );
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
