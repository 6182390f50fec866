//! The `--on-drain` command: the agent's own way of being told to drain (`buildkite-agent stop`,
//! `nomad node drain -self`, a `curl -X POST` to its admin port), run when a drain starts.
//!
//! It runs in a process group of its own, with the guard's environment plus the drain's reason
//! and deadline and the agent's pid; each line of its stdout and stderr becomes a log line of
//! the guard's, labelled; its whole group is SIGKILLed at the drain deadline, or when the agent is
//! gone. It is the guard's child as the agent is, so only the reaper waits for it: the supervisor
//! spawns it from its own task, between two reaps (std's spawn may itself wait for a child whose
//! exec failed), and hands the pid to the reaper before the next one.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use libc::pid_t;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::process::child::{SpawnError, classify, live_members, spawn_like_a_shell};
use crate::process::sig::Sig;
use crate::process::signals::JobControl;

/// `--on-drain`: the agent's own drain command, run when a drain starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnDrain {
    /// A string (flag, environment or file): run with `sh -c`.
    Shell(String),
    /// An array in the config file: the program and its arguments, run without a shell.
    Exec(Vec<String>),
}

/// The longest line logged as one; a longer one is logged in pieces of this size.
const MAX_LINE: usize = 4096;
/// How long the output readers get, once the command is gone, to log what is left in the pipes.
const READERS_WITHIN: Duration = Duration::from_millis(500);

/// Variables the command must not inherit from the guard: they are for the guard's own main
/// process (systemd's notify socket and watchdog), not for a helper of the agent.
const NOT_INHERITED: &[&str] = &["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// A started `--on-drain` command.
#[derive(Debug)]
pub struct DrainCommand {
    /// Its pid, also its process group id.
    pid: pid_t,
    /// When its group is killed: the drain deadline, kept in step with it while the drain lasts.
    pub kill_at: Instant,
    /// The reaper has its status.
    reaped: bool,
    /// SIGKILL went to its group while it still ran.
    killed: bool,
    /// The tasks that log its stdout and stderr.
    readers: Vec<JoinHandle<()>>,
}

impl DrainCommand {
    /// Starts `command` with `env` added to the guard's environment; its group is killed at
    /// `kill_at`. Must run inside the guard's runtime (the output readers are its tasks).
    pub fn start(
        command: &OnDrain,
        env: Vec<(OsString, OsString)>,
        job_control: JobControl,
        kill_at: Instant,
    ) -> Result<DrainCommand, SpawnError> {
        let (mut cmd, program) = match command {
            OnDrain::Shell(script) => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c").arg(script);
                (cmd, "/bin/sh".to_string())
            }
            OnDrain::Exec(argv) => {
                let program = argv.first().cloned().unwrap_or_default();
                let mut cmd = Command::new(&program);
                cmd.args(argv.iter().skip(1));
                (cmd, program)
            }
        };
        for var in NOT_INHERITED {
            cmd.env_remove(var);
        }
        cmd.envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let forks = job_control.restores_in_child();
        if forks {
            // SAFETY: sigaction is async-signal-safe and `job_control` is plain data copied in.
            unsafe {
                cmd.pre_exec(move || job_control.restore_in_child());
            }
        }
        // The handle is dropped unwaited: only the reaper waits (a std Child's drop neither kills
        // nor waits).
        let mut child =
            spawn_like_a_shell(&mut cmd, forks).map_err(|err| classify(program, err))?;
        let pid = child.id() as pid_t;
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.extend(log_lines(pid, "stdout", out.into()));
        }
        if let Some(err) = child.stderr.take() {
            readers.extend(log_lines(pid, "stderr", err.into()));
        }
        Ok(DrainCommand {
            pid,
            kill_at,
            reaped: false,
            killed: false,
            readers,
        })
    }

    /// Its pid, which is also its process group id.
    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// Whether it has not been reaped yet.
    pub fn running(&self) -> bool {
        !self.reaped
    }

    /// Whether the guard killed it while it ran.
    pub fn killed(&self) -> bool {
        self.killed
    }

    /// When its group is due to be killed, if that is still to come.
    pub fn due(&self) -> Option<Instant> {
        (self.running() && !self.killed).then_some(self.kill_at)
    }

    /// The reaper collected its status.
    pub fn reaped(&mut self) {
        self.reaped = true;
    }

    /// SIGKILLs its process group: the command, and anything it left behind. Returns whether
    /// the command itself still ran (and so was killed).
    pub fn kill(&mut self) -> io::Result<bool> {
        let was_running = self.running() && !self.killed;
        // After it was reaped its pid stays reserved while members of its group live; with none
        // left, nothing is sent, so a reused pid is never signalled.
        let leftovers = self.reaped && live_members(self.pid).is_some_and(|n| n > 0);
        if !(was_running || leftovers) {
            return Ok(false);
        }
        self.killed |= was_running;
        // SAFETY: kill(2) with a negative pid (the group) and a valid signal number.
        if unsafe { libc::kill(-self.pid, Sig::KILL.raw()) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(was_running)
    }

    /// Lets the output readers log what is left in the pipes, within a bound.
    pub async fn finish(self) {
        for mut reader in self.readers {
            if tokio::time::timeout(READERS_WITHIN, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        }
    }
}

/// A task that logs each line read from `pipe`, labelled with the stream; `None` if the pipe
/// cannot be watched (its output is then lost, and said so).
fn log_lines(pid: pid_t, stream: &'static str, pipe: OwnedFd) -> Option<JoinHandle<()>> {
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(pipe) {
        Ok(pipe) => pipe,
        Err(err) => {
            tracing::warn!(pid, stream, error = %err, "cannot read the --on-drain command's output");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        let mut pending: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 4096];
        // Ends at EOF (every writer closed it) or on a read error.
        while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
            pending.extend_from_slice(&chunk[..n]);
            for line in take_lines(&mut pending) {
                log_line(pid, stream, &line);
            }
        }
        if !pending.is_empty() {
            log_line(pid, stream, &pending);
        }
    }))
}

/// Removes the complete lines (and over-long pieces) from the front of `pending`.
fn take_lines(pending: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    loop {
        match pending.iter().position(|b| *b == b'\n') {
            Some(end) if end <= MAX_LINE => {
                let mut line: Vec<u8> = pending.drain(..=end).collect();
                line.pop();
                lines.push(line);
            }
            _ if pending.len() > MAX_LINE => lines.push(pending.drain(..MAX_LINE).collect()),
            _ => return lines,
        }
    }
}

fn log_line(pid: pid_t, stream: &'static str, line: &[u8]) {
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    tracing::info!(pid, "on-drain {stream}: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_and_long_ones_cut() {
        let mut pending = b"one\ntwo\r\nthr".to_vec();
        assert_eq!(
            take_lines(&mut pending),
            vec![b"one".to_vec(), b"two\r".to_vec()]
        );
        assert_eq!(pending, b"thr");
        let mut long = vec![b'x'; MAX_LINE * 2 + 10];
        long.push(b'\n');
        let pieces = take_lines(&mut long);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_LINE, MAX_LINE, 10]
        );
        assert!(long.is_empty());
    }
}
