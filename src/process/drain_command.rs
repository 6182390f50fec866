//! The `--on-drain` command: the agent's own way of being told to drain (`buildkite-agent stop`,
//! `nomad node drain -self`, a `curl -X POST` to its admin port), run when a drain starts.
//!
//! It runs in a process group of its own, with the guard's environment plus the drain's reason
//! and deadline and the agent's pid; each line of its stdout and stderr becomes a log line of
//! the guard's, labelled; its whole group is SIGKILLed at the drain deadline, or when the agent is
//! gone. Where the agent has a cgroup, the command has one beside it (`on-drain`), entered before
//! its exec: what it starts cannot leave it as it can leave a process group (`setsid`), the kill
//! is `cgroup.kill`, and the guard is done, and completes the hook, only once it is empty. It is
//! the guard's child as the agent is, so only the reaper waits for it: the supervisor
//! spawns it from its own task, between two reaps (std's spawn may itself wait for a child whose
//! exec failed), and hands the pid to the reaper before the next one.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libc::pid_t;
use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use crate::process::cgroup::{self, HelperCgroup};
use crate::process::child::{SpawnError, classify, live_members};
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
/// How many of the command's lines a second reach the log (with a burst as large), and how many
/// bytes in all per drain: a chatty command printed 444 MB into the log in a 3 s drain. The
/// rest is read (so the command never blocks on a full pipe) and counted, then said in one line.
const LINES_PER_SECOND: f64 = 100.0;
const BYTES_PER_DRAIN: usize = 256 * 1024;

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
    /// What its output may still put in the log, shared by both readers.
    budget: Arc<Mutex<Budget>>,
    /// Its cgroup, where the agent has one: what it holds is the command's, wherever it went.
    cgroup: Option<HelperCgroup>,
}

/// The bound on what one drain's command may log: a token bucket of lines, and bytes in all.
#[derive(Debug)]
struct Budget {
    tokens: f64,
    refilled: Instant,
    bytes: usize,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl Budget {
    fn new(now: Instant) -> Budget {
        Budget {
            tokens: LINES_PER_SECOND,
            refilled: now,
            bytes: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// Whether a line of `len` bytes may be logged now; if not, it is counted as dropped.
    fn admit(&mut self, len: usize, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * LINES_PER_SECOND).min(LINES_PER_SECOND);
        self.refilled = now;
        if self.tokens < 1.0 || self.bytes.saturating_add(len) > BYTES_PER_DRAIN {
            self.dropped_lines += 1;
            self.dropped_bytes += len as u64;
            return false;
        }
        self.tokens -= 1.0;
        self.bytes += len;
        true
    }
}

impl DrainCommand {
    /// Starts `command` with `env` added to the guard's environment, in `cgroup` if there is one;
    /// its group is killed at `kill_at`. Must run inside the guard's runtime (the output readers
    /// are its tasks).
    pub fn start(
        command: &OnDrain,
        env: Vec<(OsString, OsString)>,
        job_control: JobControl,
        kill_at: Instant,
        cgroup: Option<HelperCgroup>,
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
        // Every signal as the guard found it at start: posix_spawn (std's way without this)
        // would leave the C library's own signals ignored in the command. With code to run in
        // the child std forks and execs with execvp, which runs a script without a `#!` line
        // with /bin/sh.
        // Then into its cgroup, before the command's first instruction: nothing it forks can be
        // outside it. A command that cannot enter does not run (its spawn fails, and is said).
        let join = cgroup.as_ref().map(HelperCgroup::join_fd);
        // SAFETY: sigaction and write are async-signal-safe; `job_control` and `join` are plain
        // data copied in, and `join` stays open while `cgroup` lives, past the spawn.
        unsafe {
            cmd.pre_exec(move || {
                job_control.restore_in_child()?;
                join.map_or(Ok(()), cgroup::enter)
            });
        }
        // The handle is dropped unwaited: only the reaper waits (a std Child's drop neither kills
        // nor waits).
        let mut child = cmd.spawn().map_err(|err| classify(program, err))?;
        let pid = child.id() as pid_t;
        let budget = Arc::new(Mutex::new(Budget::new(Instant::now())));
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.extend(log_lines(pid, "stdout", out.into(), budget.clone()));
        }
        if let Some(err) = child.stderr.take() {
            readers.extend(log_lines(pid, "stderr", err.into(), budget.clone()));
        }
        Ok(DrainCommand {
            pid,
            kill_at,
            reaped: false,
            killed: false,
            readers,
            budget,
            cgroup,
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

    /// Whether anything it started is left: in its cgroup, or else in its process group.
    pub fn leftovers(&self) -> bool {
        match &self.cgroup {
            Some(cgroup) => cgroup.populated(),
            None => self.reaped && live_members(self.pid).is_some_and(|n| n > 0),
        }
    }

    /// Where what it started is counted, for log lines.
    pub fn tracked_in(&self) -> String {
        match &self.cgroup {
            Some(cgroup) => format!("its cgroup {}", cgroup.path().display()),
            None => "its process group".to_string(),
        }
    }

    /// SIGKILLs its cgroup (`cgroup.kill`), or else its process group: the command, and
    /// anything it left behind. Returns whether the command itself still ran (and so was killed).
    pub fn kill(&mut self) -> io::Result<bool> {
        let was_running = self.running() && !self.killed;
        // After it was reaped its pid stays reserved while members of its group live; with none
        // left, nothing is sent, so a reused pid is never signalled.
        if !(was_running || self.leftovers()) {
            return Ok(false);
        }
        self.killed |= was_running;
        if let Some(cgroup) = &self.cgroup {
            return cgroup.kill().map(|()| was_running);
        }
        // SAFETY: kill(2) with a negative pid (the group) and a valid signal number.
        if unsafe { libc::kill(-self.pid, Sig::KILL.raw()) } != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::ESRCH) {
                return Err(err);
            }
        }
        Ok(was_running)
    }

    /// Lets the output readers log what is left in the pipes, within a bound, then says how
    /// much of the output was over the bound.
    pub async fn finish(self) {
        for mut reader in self.readers {
            if tokio::time::timeout(READERS_WITHIN, &mut reader)
                .await
                .is_err()
            {
                reader.abort();
            }
        }
        let budget = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if budget.dropped_lines > 0 {
            tracing::warn!(
                pid = self.pid,
                dropped_lines = budget.dropped_lines,
                dropped_bytes = budget.dropped_bytes,
                "dropped {} line(s) ({} bytes) of the --on-drain command's output: over {} lines a second or {} KiB per drain",
                budget.dropped_lines,
                budget.dropped_bytes,
                LINES_PER_SECOND,
                BYTES_PER_DRAIN / 1024
            );
        }
    }
}

/// A task that logs each line read from `pipe`, labelled with the stream; `None` if the pipe
/// cannot be watched (its output is then lost, and said so).
fn log_lines(
    pid: pid_t,
    stream: &'static str,
    pipe: OwnedFd,
    budget: Arc<Mutex<Budget>>,
) -> Option<JoinHandle<()>> {
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
                log_line(pid, stream, &line, &budget);
            }
        }
        if !pending.is_empty() {
            log_line(pid, stream, &pending, &budget);
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

fn log_line(pid: pid_t, stream: &'static str, line: &[u8], budget: &Mutex<Budget>) {
    let admitted = budget
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(line.len(), Instant::now());
    if !admitted {
        return;
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end_matches('\r');
    tracing::info!(pid, "on-drain {stream}: {text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_lines_a_second_and_bytes_a_drain() {
        let t0 = Instant::now();
        let mut budget = Budget::new(t0);
        let burst = (0..1000).filter(|_| budget.admit(10, t0)).count();
        assert_eq!(burst, LINES_PER_SECOND as usize, "a burst, then nothing");
        assert_eq!(budget.dropped_lines, 900);
        // A second later, another second's worth.
        let later = t0 + Duration::from_secs(1);
        let next = (0..1000).filter(|_| budget.admit(10, later)).count();
        assert_eq!(next, LINES_PER_SECOND as usize);
        // Bytes: never past the drain's total, however slowly they come.
        let mut big = Budget::new(t0);
        let mut logged = 0;
        for i in 0..1000u64 {
            if big.admit(MAX_LINE, t0 + Duration::from_secs(i)) {
                logged += MAX_LINE;
            }
        }
        assert!(logged <= BYTES_PER_DRAIN && logged + MAX_LINE > BYTES_PER_DRAIN);
        assert_eq!(big.dropped_bytes, (1000 * MAX_LINE - logged) as u64);
    }

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
