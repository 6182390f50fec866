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
