//! The only caller of `waitpid`: reaps every child that exits (the agent, and as PID 1 or a
//! subreaper every orphan handed to the guard) and reports the agent's own status.
//!
//! A global `waitpid(-1)` and a per-child wait (tokio's or std's `Child::wait`) race, and the
//! loser gets ECHILD: the agent's status would be lost. So nothing else in the guard waits (the
//! `--on-drain` command's status comes from here too, see [`Reaper::watch`]), and
//! [`ChildExit`] can only be made here: code that needs proof the agent has exited (completing
//! the terminate hook) takes a `ChildExit`, so it cannot be written to run before the exit.

use libc::{c_int, pid_t};

use crate::process::exit::{ChildExit, ExitKind, decode};

/// Reaps children and picks out the agent's status.
#[derive(Debug)]
pub struct Reaper {
    agent: pid_t,
    /// Other children whose status the guard wants (the `--on-drain` command).
    watched: Vec<pid_t>,
    /// Their statuses, reaped and not yet taken.
    watched_exits: Vec<(pid_t, ExitKind)>,
    /// Orphans reaped so far (not the agent), for logs and metrics.
    orphans: u64,
}

impl Reaper {
    /// A reaper for the agent with this pid. Create it only after the agent's spawn returned:
    /// std's spawn waits for a child whose exec failed, and must not lose that race.
    pub fn new(agent: pid_t) -> Self {
        Reaper {
            agent,
            watched: Vec::new(),
            watched_exits: Vec::new(),
            orphans: 0,
        }
    }

    /// The agent was started again (`--restart`): this is its pid now. As with `new`: only after
    /// the spawn returned, and before the next `reap`, which the caller's single task ensures.
    pub fn set_agent(&mut self, agent: pid_t) {
        self.agent = agent;
    }

    /// Keeps the status of this child too, for [`Reaper::take_watched`]; the same rules as
    /// `set_agent`. Its status is not a [`ChildExit`]: that proves the agent's exit only.
    pub fn watch(&mut self, pid: pid_t) {
        self.watched.push(pid);
    }

    /// The statuses of watched children reaped since the last call.
    pub fn take_watched(&mut self) -> Vec<(pid_t, ExitKind)> {
        std::mem::take(&mut self.watched_exits)
    }

    /// How many children other than the agent were reaped.
    pub fn orphans_reaped(&self) -> u64 {
        self.orphans
    }

    /// Whether the agent was stopped by a job control signal (TSTP, TTIN, TTOU: ^Z, or a read
    /// from the terminal in the background) since the last call. Takes the stop's report
    /// (`waitid` with WSTOPPED only, so no exit is ever reaped here); a SIGSTOP is not job
    /// control (a debugger, an operator) and answers `false`.
    pub fn take_job_control_stop(&mut self) -> bool {
        // SAFETY: a zeroed siginfo is valid for waitid to fill in; WNOHANG keeps it
        // non-blocking; WSTOPPED without WEXITED never reaps.
        let stopped_by = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let rc = libc::waitid(
                libc::P_PID,
                self.agent as libc::id_t,
                &mut info,
                libc::WSTOPPED | libc::WNOHANG,
            );
            if rc != 0 || info.si_pid() == 0 {
                return false;
            }
            info.si_status()
        };
        matches!(stopped_by, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU)
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
            } else if let Some(i) = self.watched.iter().position(|w| *w == pid) {
                self.watched.swap_remove(i);
                self.watched_exits.push((pid, kind));
            } else {
                self.orphans += 1;
                tracing::debug!(pid, "reaped an orphaned process");
            }
        }
        agent_exit
    }
}
