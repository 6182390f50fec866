//! Starts the agent born inside its cgroup: `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7).
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`) takes the kernel's threadgroup
//! lock for writing, which waits for an RCU grace period: 16 ms measured here, on every start.
//! A child cloned into the cgroup is never moved, so the start costs what a fork does, and there
//! is no moment at which the agent runs outside its cgroup. std's `Command` cannot clone3, so
//! the child here does what std's child does before exec: its own process group, the terminal
//! (when the guard hands it over), the signal dispositions and mask, then `execvpe`; an exec
//! that fails reports its errno through a close-on-exec pipe, as std's does.

use std::io;
use std::os::fd::RawFd;

use libc::pid_t;

use crate::process::signals::JobControl;

/// `CLONE_INTO_CGROUP` (linux/sched.h); not in the libc crate for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Starts a child born in the cgroup whose directory is open as `cgroup_dir`, which calls `exec`
/// (an exec prepared before the clone: async-signal-safe; it returns only on failure).
/// `Ok(None)`: this kernel cannot (no clone3, or no `CLONE_INTO_CGROUP`), and nothing was started.
pub(in crate::process) fn spawn(
    cgroup_dir: RawFd,
    exec: &mut dyn FnMut() -> io::Error,
    hand_over_terminal: bool,
    job_control: JobControl,
) -> io::Result<Option<pid_t>> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (read_end, write_end) = (fds[0], fds[1]);
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup_dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this process and runs
    // on a copy of this stack; it only makes async-signal-safe calls before exec or _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        let err = child(exec, hand_over_terminal, job_control);
        let errno = err.raw_os_error().unwrap_or(libc::EINVAL).to_ne_bytes();
        // SAFETY: write(2) of a local buffer, then _exit: no destructors, no atexit handlers.
        unsafe {
            libc::write(write_end, errno.as_ptr().cast(), errno.len());
            libc::_exit(127);
        }
    }
    // SAFETY: the write end is this process's to close; the child has its own copy.
    unsafe { libc::close(write_end) };
    if pid < 0 {
        let err = io::Error::last_os_error();
        // SAFETY: the read end is ours.
        unsafe { libc::close(read_end) };
        return match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG) => Ok(None),
            _ => Err(err),
        };
    }
    let pid = pid as pid_t;
    let failed = read_errno(read_end);
    // SAFETY: the read end is ours.
    unsafe { libc::close(read_end) };
    match failed {
        None => Ok(Some(pid)),
        Some(errno) => {
            // The child exits at once; it is waited for here, before the reaper knows its pid,
            // as std waits for a child whose exec failed.
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// In the child: what std's child does before exec, then the exec. Returns only on failure.
fn child(
    exec: &mut dyn FnMut() -> io::Error,
    hand_over_terminal: bool,
    job_control: JobControl,
) -> io::Error {
    // SAFETY: setpgid, tcsetpgrp, getpid and sigprocmask are async-signal-safe and
    // take no pointers but to the local, initialised signal set.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return io::Error::last_os_error();
        }
        if hand_over_terminal {
            // Errors are tolerated (ENOTTY, ENXIO), as tini does: the agent still runs.
            libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
        }
        // As exec would leave it: no signal blocked, every disposition back to what it was when
        // the guard started (`process::inherited`, as the posix_spawn path does).
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if let Err(err) = job_control.restore_in_child() {
            return err;
        }
    }
    exec()
}

/// The errno a failed exec wrote, or `None` once the pipe closed empty (the exec succeeded).
fn read_errno(fd: RawFd) -> Option<i32> {
    let mut buf = [0u8; 4];
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: read(2) into the rest of a local buffer.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n <= 0 {
            break;
        }
        got += n as usize;
    }
    (got == buf.len()).then(|| i32::from_ne_bytes(buf))
}
