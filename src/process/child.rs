//! Spawns the agent in its own process group and sends signals to it or to its whole group.
//!
//! The agent runs directly (no shell) with the guard's stdio, environment and working directory.
//! Its own process group lets one `kill(-pgid)` reach everything it started. When the guard holds
//! the terminal's foreground, the agent's group takes it over (as tini does), so an interactive
//! agent still reads the terminal and gets ^C.

use std::ffi::OsString;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

use libc::pid_t;

use crate::process::cgroup::{self, AgentCgroup};
use crate::process::clone_into;
use crate::process::crash;
use crate::process::exit::{ChildExit, Gone};
use crate::process::sig::Sig;
use crate::process::signals::JobControl;
use crate::process::spawn::posix_spawn;

/// The running agent: its pid, which is also its process group id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agent {
    pid: pid_t,
}

/// The agent could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// There is no such program (exit 127).
    #[error("cannot run `{program}`: {why}")]
    NotFound { program: String, why: String },
    /// The program exists but could not be executed (exit 126).
    #[error("cannot execute `{program}`: {source}")]
    CannotExecute {
        program: String,
        #[source]
        source: io::Error,
    },
}

/// What the agent is started with, besides the guard's own environment.
#[derive(Debug, Clone, Default)]
pub struct SpawnSpec {
    /// The program and its arguments.
    pub command: Vec<OsString>,
    /// Variables added to (or replacing) the inherited environment.
    pub env: Vec<(OsString, OsString)>,
    /// Export `WATCHDOG_PID` set to the agent's own pid (with `--watchdog`).
    pub watchdog_pid: bool,
}

/// How the agent is started, kept so that it is started again (`--restart`) exactly as the
/// first time.
#[derive(Clone)]
pub struct Launcher {
    pub spec: SpawnSpec,
    /// The signal dispositions to restore in the agent (and in the `--on-drain` command).
    pub job_control: JobControl,
    /// The agent's cgroup (`--cgroup`), which every agent this starts is born in.
    pub cgroup: Option<std::sync::Arc<AgentCgroup>>,
}

impl Launcher {
    /// Starts the first agent.
    pub fn spawn(&self) -> Result<Agent, SpawnError> {
        let cgroup = self.cgroup.as_deref();
        Agent::spawn_with(
            &self.spec,
            self.job_control,
            holds_terminal_foreground(),
            cgroup,
        )
    }

    /// Starts the agent again after `previous` exited. The terminal's foreground, if the last
    /// agent's group held it, goes to the new one (the guard's own group no longer holds it).
    pub fn respawn(&self, previous: &Agent) -> Result<Agent, SpawnError> {
        let take_terminal = holds_terminal_foreground() || foreground_is(previous.pid);
        let cgroup = self.cgroup.as_deref();
        Agent::spawn_with(&self.spec, self.job_control, take_terminal, cgroup)
    }
}

impl Agent {
    /// `cgroup`: the agent's cgroup, which its first instruction, and all it forks, already run
    /// inside: it is born there (clone3), or, on a kernel older than 5.7, enters it before exec.
    fn spawn_with(
        spec: &SpawnSpec,
        job_control: JobControl,
        hand_over_terminal: bool,
        cgroup: Option<&AgentCgroup>,
    ) -> Result<Agent, SpawnError> {
        let Some((program, args)) = spec.command.split_first() else {
            return Err(SpawnError::NotFound {
                program: String::new(),
                why: "no command given".to_string(),
            });
        };
        let program_text = program.to_string_lossy().into_owned();
        if let Some(cgroup) = cgroup
            && let Some(agent) =
                Agent::born_in(spec, cgroup, hand_over_terminal, job_control, &program_text)?
        {
            return Ok(agent);
        }
        let cgroup_procs = cgroup.map(AgentCgroup::join_fd);
        let mut own_exec = if spec.watchdog_pid {
            Some(ExecWithPid::new(&spec.command, &spec.env, true)?)
        } else {
            None
        };
        // Code between fork and exec only when there is something to do there: without it the
        // agent starts with posix_spawn, a vfork that copies none of the guard's memory.
        if !hand_over_terminal && own_exec.is_none() && cgroup_procs.is_none() {
            match posix_spawn(&spec.command, &spec.env) {
                Ok(pid) => return Ok(Agent::started(pid)),
                // No `#!` line: posix_spawn refuses it, execvp (below) runs it with /bin/sh, as
                // a shell would.
                Err(err) if err.raw_os_error() == Some(libc::ENOEXEC) => {}
                Err(err) => return Err(classify(program_text, err)),
            }
        }
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(spec.env.iter().cloned())
            .process_group(0);
        // SAFETY: the closure only makes async-signal-safe calls (tcsetpgrp, getpid,
        // sigaction, execvpe) and writes into memory allocated before the fork; it runs in
        // the forked child after setpgid and before std's own exec.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = cgroup_procs {
                    cgroup::enter(fd)?;
                }
                if hand_over_terminal {
                    // Errors are tolerated (ENOTTY, ENXIO), as tini does: the agent still
                    // runs.
                    libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
                }
                job_control.restore_in_child()?;
                match own_exec.as_mut() {
                    // Only returns if exec failed; std then reports the error as for its
                    // own exec.
                    Some(exec) => Err(exec.exec()),
                    None => Ok(()),
                }
            });
        }
        // std forks (there is code to run in the child) and execs with execvp, which runs an
        // executable without a `#!` line with /bin/sh.
        match cmd.spawn() {
            // The pid is the process id and the group id; the handle is not kept, because only
            // the reaper may wait for it. Dropping a std Child neither kills nor waits.
            Ok(child) => Ok(Agent::started(child.id() as pid_t)),
            Err(err) => Err(classify(program_text, err)),
        }
    }

    /// The agent born in its cgroup (`clone3` with `CLONE_INTO_CGROUP`); `None` where the kernel
    /// has no such clone (older than 5.7): the caller then enters the cgroup before exec.
    fn born_in(
        spec: &SpawnSpec,
        cgroup: &AgentCgroup,
        hand_over_terminal: bool,
        job_control: JobControl,
        program: &str,
    ) -> Result<Option<Agent>, SpawnError> {
        let mut exec = ExecWithPid::new(&spec.command, &spec.env, spec.watchdog_pid)?;
        let mut run = || exec.exec();
        let started = clone_into::spawn(
            cgroup.dir_fd(),
            &mut run,
            spec.command.len(),
            hand_over_terminal,
            job_control,
        );
        match started {
            Ok(pid) => Ok(pid.map(Agent::started)),
            Err(err) => Err(classify(program.to_string(), err)),
        }
    }

    /// The agent with this pid was started: a crash of the guard from now on stops its group.
    fn started(pid: pid_t) -> Agent {
        crash::set_agent_group(pid);
        Agent { pid }
    }

    /// Job control, as dumb-init does it: the agent's group has been stopped (a TSTP passed on,
    /// or ^Z on the terminal it holds), and now the guard stops itself, so that the shell that
    /// started it as a job gets its prompt back. Returns once the guard is continued (`fg`,
    /// `bg`, `kill -CONT`); the SIGCONT is then passed on to the agent like any other signal.
    /// If the shell gave the terminal to the guard's group (`fg`), it goes back to the agent's
    /// first, so that the agent does not wake up in the background.
    pub fn stop_guard_too(&self) {
        tracing::info!(
            pgid = self.pid,
            "the agent's process group was stopped (job control): stopping the guard too until SIGCONT"
        );
        // SAFETY: raise stops this process (all its threads) until a SIGCONT; tcsetpgrp only
        // changes the terminal's foreground group.
        unsafe {
            libc::raise(libc::SIGSTOP);
            if holds_terminal_foreground() {
                libc::tcsetpgrp(libc::STDIN_FILENO, self.pid);
            }
        }
    }

    /// The agent's pid, which is also its process group id.
    pub fn pid(&self) -> pid_t {
        self.pid
    }

    /// Sends `sig` to the agent alone. A missing process (ESRCH) is not an error: it is exiting.
    pub fn signal_child(&self, sig: Sig) -> io::Result<()> {
        send(self.pid, sig)
    }

    /// Sends `sig` to every process in the agent's group.
    pub fn signal_group(&self, sig: Sig) -> io::Result<()> {
        send(-self.pid, sig)
    }

    /// Whether any process other than a zombie is left in the agent's group. Zombies are left
    /// out: they do no work, and one whose new parent is a slow init would otherwise hold the
    /// guard (and the lifecycle hook) until that init gets round to reaping it.
    pub fn group_alive(&self) -> bool {
        // SAFETY: kill with signal 0 only checks for existence and permission.
        let rc = unsafe { libc::kill(-self.pid, 0) };
        if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
            return false;
        }
        live_members(self.pid).is_none_or(|n| n > 0)
    }
}

impl Agent {
    /// Proof that nothing of the agent is left in its process group: `exit` sealed with it, if
    /// the group is empty now.
    pub fn prove_group_gone(&self, exit: ChildExit) -> ChildExit {
        if self.group_alive() {
            exit
        } else {
            exit.proven_gone(Gone::ProcessGroup)
        }
    }

    /// Sends `sig` to every process in the agent's group, and to the agent by its pid as well if
    /// it has left that group. An agent that `setpgid`s itself into another group leaves the old
    /// one empty (or holding only its children): `kill(-pgid)` then misses it, or fails with
    /// ESRCH, and without this neither the stop signal nor SIGKILL would ever reach it.
    ///
    /// Only while the agent has not been reaped: after that its pid may be anyone's.
    pub fn signal_group_and_agent(&self, sig: Sig) -> io::Result<()> {
        let group = send_raw(-self.pid, sig);
        let group_missing = matches!(&group, Err(e) if e.raw_os_error() == Some(libc::ESRCH));
        let left = match process_group_of(self.pid) {
            Some(group) => group != self.pid,
            // No /proc: an empty group while the agent still answers is the same news.
            // SAFETY: kill with signal 0 only checks for existence and permission.
            None => group_missing && unsafe { libc::kill(self.pid, 0) } == 0,
        };
        if !left {
            return group.or_else(esrch_is_ok);
        }
        if !LEFT_GROUP_TOLD.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                pid = self.pid,
                "the agent left its process group; signals for the group go to its pid as well"
            );
        }
        let own = send(self.pid, sig);
        group.or_else(esrch_is_ok).and(own)
    }

    /// Whether any process in the agent's group is stopped (SIGSTOP, or a TSTP passed on), or,
    /// while it has not been reaped (`agent_running`), the agent itself: such a process cannot
    /// act on the stop signal until it is continued.
    pub fn any_stopped(&self, agent_running: bool) -> bool {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return false;
        };
        dir.flatten().any(|entry| {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<pid_t>().ok())
            else {
                return false;
            };
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| parse_stat(&stat))
                .is_some_and(|(state, group)| {
                    state == 'T' && (group == self.pid || (agent_running && pid == self.pid))
                })
        })
    }
}

/// Counts the processes in group `pgid` that are not zombies, from /proc. `None` if /proc cannot
/// be read, in which case callers must assume the group is alive.
pub fn live_members(pgid: pid_t) -> Option<usize> {
    let mut count = 0;
    for entry in std::fs::read_dir("/proc").ok()? {
        let Ok(entry) = entry else { continue };
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<pid_t>().ok()) else {
            continue;
        };
        // A process may exit between read_dir and read: that is simply not a member.
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        if let Some((state, group)) = parse_stat(&stat)
            && group == pgid
            && state != 'Z'
            && state != 'X'
        {
            count += 1;
        }
    }
    Some(count)
}

/// The process group of `pid`, from /proc.
pub fn process_group_of(pid: pid_t) -> Option<pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, group)| group)
}

/// The state letter and process group from a /proc/PID/stat line. The command name may hold
/// spaces and parentheses, so the fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(char, pid_t)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, pgrp))
}

/// An exec prepared before the fork whose environment carries `WATCHDOG_PID=<the agent's pid>`.
///
/// The agent's pid exists only after the fork, and std's `Command` fixes the environment before
/// it. So the argument and environment arrays are built here in advance, with room for the pid's
/// digits, and the child writes them in and calls `execvpe` itself: no allocation after fork.
struct ExecWithPid {
    program: std::ffi::CString,
    _args: Vec<std::ffi::CString>,
    argv: Vec<*const libc::c_char>,
    _env: Vec<std::ffi::CString>,
    envp: Vec<*const libc::c_char>,
    /// "WATCHDOG_PID=" followed by room for the digits and the NUL.
    pid_entry: Vec<u8>,
    /// Whether the environment carries `WATCHDOG_PID` (a cgroup's spawn uses this without it).
    with_pid: bool,
}

// SAFETY: the raw pointers point into the CStrings and the buffer owned by the same struct, which
// moves as a whole into the pre_exec closure and is only used in the forked child.
unsafe impl Send for ExecWithPid {}
unsafe impl Sync for ExecWithPid {}

const PID_PREFIX: &[u8] = b"WATCHDOG_PID=";

impl ExecWithPid {
    fn new(
        command: &[OsString],
        extra: &[(OsString, OsString)],
        with_pid: bool,
    ) -> Result<Self, SpawnError> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let text = command
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let invalid = || SpawnError::CannotExecute {
            program: text.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte"),
        };
        let c = |s: &std::ffi::OsStr| CString::new(s.as_bytes()).map_err(|_| invalid());
        let args: Vec<CString> = command.iter().map(|a| c(a)).collect::<Result<_, _>>()?;
        let program = args.first().cloned().ok_or_else(invalid)?;
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k) && k != "WATCHDOG_PID")
            .collect();
        vars.extend(extra.iter().cloned());
        let env: Vec<CString> = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                CString::new(kv).map_err(|_| invalid())
            })
            .collect::<Result<_, _>>()?;
        let mut pid_entry = PID_PREFIX.to_vec();
        pid_entry.resize(PID_PREFIX.len() + 24, 0);
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        if with_pid {
            envp.push(pid_entry.as_ptr().cast());
        }
        envp.push(std::ptr::null());
        Ok(ExecWithPid {
            program,
            _args: args,
            argv,
            _env: env,
            envp,
            pid_entry,
            with_pid,
        })
    }

    /// In the child: writes the pid into the environment and execs. Returns only on failure.
    fn exec(&mut self) -> io::Error {
        if !self.with_pid {
            return self.exec_as_is();
        }
        // SAFETY: getpid is async-signal-safe.
        let mut pid = unsafe { libc::getpid() } as u64;
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            self.pid_entry[PID_PREFIX.len() + i] = digits[n - 1 - i];
        }
        self.pid_entry[PID_PREFIX.len() + n] = 0;
        self.exec_as_is()
    }

    fn exec_as_is(&self) -> io::Error {
        // SAFETY: argv and envp are NUL-terminated arrays of NUL-terminated strings that live in
        // self; execvpe searches PATH as execvp does.
        unsafe {
            libc::execvpe(
                self.program.as_ptr(),
                self.argv.as_ptr(),
                self.envp.as_ptr(),
            )
        };
        io::Error::last_os_error()
    }
}

/// Whether the warning that the agent left its group was logged: once is enough, as forwarded
/// signals take the same path and may come by the thousand.
static LEFT_GROUP_TOLD: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn send(target: pid_t, sig: Sig) -> io::Result<()> {
    send_raw(target, sig).or_else(esrch_is_ok)
}

/// kill(2), every error kept.
fn send_raw(target: pid_t, sig: Sig) -> io::Result<()> {
    // SAFETY: kill(2) with a pid and a valid signal number has no memory effects.
    if unsafe { libc::kill(target, sig.raw()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A missing process (ESRCH) is not an error for a signal: it is exiting.
fn esrch_is_ok(err: io::Error) -> io::Result<()> {
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// Whether stdin is a terminal whose foreground group is the guard's own. Only then does the
/// agent take the foreground: a guard started in the background must not steal the terminal
/// from the shell that started it.
fn holds_terminal_foreground() -> bool {
    // SAFETY: isatty, tcgetpgrp and getpgrp only read process and terminal state.
    unsafe {
        libc::isatty(libc::STDIN_FILENO) == 1
            && libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp()
    }
}

/// Whether stdin is a terminal whose foreground is process group `pgid`.
fn foreground_is(pgid: pid_t) -> bool {
    // SAFETY: isatty and tcgetpgrp only read terminal state.
    unsafe { libc::isatty(libc::STDIN_FILENO) == 1 && libc::tcgetpgrp(libc::STDIN_FILENO) == pgid }
}

/// Why a program could not be started: not found (127) or not executable (126).
pub(crate) fn classify(program: String, err: io::Error) -> SpawnError {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ENOTDIR) => {
            let why = if program.contains('/') {
                "no such file".to_string()
            } else {
                "not found in PATH".to_string()
            };
            SpawnError::NotFound { program, why }
        }
        _ => SpawnError::CannotExecute {
            program,
            source: err,
        },
    }
}

/// Finds the program as exec would (a path, or a name looked up in PATH) and checks that it
/// can be executed, without running it: `--check-config` reports a bad command before any
/// instance is launched with it.
pub fn resolve(program: &std::ffi::OsStr) -> Result<std::path::PathBuf, SpawnError> {
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    let text = program.to_string_lossy().into_owned();
    let executable = |p: &Path| -> io::Result<()> {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let meta = std::fs::metadata(p)?;
        if meta.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::EISDIR));
        }
        // SAFETY: access(2) with a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    if program.as_bytes().contains(&b'/') {
        let path = PathBuf::from(program);
        return executable(&path)
            .map(|()| path)
            .map_err(|e| classify(text, e));
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut denied = None;
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(program);
        match executable(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => denied = denied.or(Some(e)),
        }
    }
    Err(classify(
        text,
        denied.unwrap_or_else(|| io::Error::from_raw_os_error(libc::ENOENT)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pid_is_signalled_only_when_asked_for_the_agent_too() {
        // A process outside any group of its own, as an agent that moved (or a stranger who got
        // a reaped agent's pid) is: the group signal alone must not reach it.
        let mut other = Command::new("sleep").arg("30").spawn().expect("sleep runs");
        let agent = Agent {
            pid: other.id() as pid_t,
        };
        agent
            .signal_group(Sig::KILL)
            .expect("an empty group is no error");
        agent
            .signal_group_and_agent(Sig::TERM)
            .expect("signalled by pid");
        let status = other.wait().expect("wait");
        // Had the SIGKILL reached it, it would have died of that, not of the later SIGTERM.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGTERM)
        );
    }

    #[test]
    fn parses_stat_lines_with_odd_names() {
        assert_eq!(parse_stat("42 (sh) S 1 42 42 0 -1"), Some(('S', 42)));
        assert_eq!(parse_stat("7 (a) b (c)) Z 1 99 99 0"), Some(('Z', 99)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
