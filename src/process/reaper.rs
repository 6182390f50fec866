//! The only caller of `waitpid`: reaps every child that exits (the agent, and as PID 1 or a
//! subreaper every orphan handed to the guard) and reports the agent's own status.
//!
//! A global `waitpid(-1)` and a per-child wait (tokio's or std's `Child::wait`) race, and the
//! loser gets ECHILD: the agent's status would be lost. So nothing else in the guard waits, and
//! [`ChildExit`] can only be made here: code that needs proof the agent has exited (completing
//! the terminate hook) takes a `ChildExit`, so it cannot be written to run before the exit.

use libc::{c_int, pid_t};

use crate::process::exit::{ChildExit, decode};

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
                agent_exit = Some(ChildExit::new(pid, kind));
            } else {
                self.orphans += 1;
                tracing::debug!(pid, "reaped an orphaned process");
            }
        }
        agent_exit
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
