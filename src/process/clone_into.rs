//! Starts the agent born inside its cgroup: `clone3` with `CLONE_INTO_CGROUP` (Linux 5.7), as a
//! vfork (`CLONE_VM | CLONE_VFORK`) on a small stack of its own, as posix_spawn does.
//!
//! Moving a process into a cgroup (a write to `cgroup.procs`) takes the kernel's threadgroup
//! lock for writing, which waits for an RCU grace period: 16 ms measured here, on every start.
//! A child cloned into the cgroup is never moved, and there is no moment at which the agent runs
//! outside its cgroup. A plain fork would copy the guard's page tables and leave every page the
//! guard writes afterwards to a copy-on-write fault; sharing the guard's memory until exec costs
//! neither. std's `Command` cannot clone3, so the child here does what std's child does before
//! exec: its own process group, the terminal (when the guard hands it over), the signal
//! dispositions and mask, then `execvpe`; an exec that fails leaves its errno where the guard,
//! suspended until then, reads it.
//!
//! A child that shares the guard's memory must not take a lock another thread of the guard may
//! hold (malloc's) nor run a signal handler of the guard's: it makes only async-signal-safe
//! calls, and every signal stays blocked until its dispositions are back to exec's.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, Ordering};

use libc::{c_int, c_void, pid_t};

use crate::process::signals::JobControl;

/// `CLONE_INTO_CGROUP` (linux/sched.h); not in the libc crate for every target.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack before exec, besides room for `execvpe`'s copy of argv (a script without a
/// `#!` line is run with /bin/sh from a copy on the stack): what it calls is small (sigaction,
/// execvpe's PATH buffer), and pages it does not touch are never allocated.
const STACK_BASE: usize = 64 * 1024;

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

/// What the child needs, on the guard's stack (the child shares the guard's memory, and the
/// guard's thread waits in clone3 until the child has exec'd or exited).
struct ChildCtx<'a> {
    exec: &'a mut dyn FnMut() -> io::Error,
    hand_over_terminal: bool,
    job_control: JobControl,
    /// The errno of what failed in the child before or at exec; 0 while nothing did.
    errno: AtomicI32,
}

/// Starts a child born in the cgroup whose directory is open as `cgroup_dir`, which calls `exec`
/// (an exec prepared before the clone: async-signal-safe; it returns only on failure); `args` is
/// the number of the command's arguments (for the size of the child's stack).
/// `Ok(None)`: this kernel (or this target) cannot, and nothing was started.
pub(in crate::process) fn spawn(
    cgroup_dir: RawFd,
    exec: &mut dyn FnMut() -> io::Error,
    args: usize,
    hand_over_terminal: bool,
    job_control: JobControl,
) -> io::Result<Option<pid_t>> {
    if !cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        return Ok(None);
    }
    let stack = Stack::new(args)?;
    let mut ctx = ChildCtx {
        exec,
        hand_over_terminal,
        job_control,
        errno: AtomicI32::new(0),
    };
    let clone_args = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.base() as u64,
        stack_size: stack.size as u64,
        cgroup: cgroup_dir as u64,
        ..CloneArgs::default()
    };
    // Every signal blocked from before the clone until the child has put back exec's
    // dispositions: a signal meanwhile would run the guard's handler in the child.
    let all_blocked = block_all()?;
    // SAFETY: the arguments are valid for clone3; the child runs `child_entry` on `stack`, which
    // outlives it (the call returns once the child has exec'd or exited), with `ctx`, which lives
    // on this frame until then.
    let pid = unsafe { clone_vfork(&clone_args, child_entry, (&mut ctx as *mut ChildCtx).cast()) };
    all_blocked.restore();
    drop(stack);
    if pid < 0 {
        let err = io::Error::from_raw_os_error(i32::try_from(-pid).unwrap_or(libc::EINVAL));
        return match err.raw_os_error() {
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG) => Ok(None),
            _ => Err(err),
        };
    }
    let pid = pid as pid_t;
    match ctx.errno.load(Ordering::Acquire) {
        0 => Ok(Some(pid)),
        errno => {
            // The child has exited; it is waited for here, before the reaper knows its pid, as
            // std waits for a child whose exec failed.
            let mut status = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
            Err(io::Error::from_raw_os_error(errno))
        }
    }
}

/// The child's entry, on its own stack: what std's child does before exec, then the exec. Only
/// returns (to `_exit`) if something failed, its errno left in the context.
extern "C" fn child_entry(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `ChildCtx` the parent passed, alive while the parent waits in clone3.
    let ctx = unsafe { &mut *arg.cast::<ChildCtx>() };
    let err = child(ctx);
    let errno = err
        .raw_os_error()
        .filter(|e| *e != 0)
        .unwrap_or(libc::EINVAL);
    // Not dropped: an error of another kind would be freed into the heap the guard's other
    // threads are using, whose lock one of them may hold.
    std::mem::forget(err);
    ctx.errno.store(errno, Ordering::Release);
    127
}

/// In the child: what std's child does before exec, then the exec. Returns only on failure.
fn child(ctx: &mut ChildCtx) -> io::Error {
    // SAFETY: setpgid, tcsetpgrp, getpid and sigprocmask are async-signal-safe and take no
    // pointers but to the local, initialised signal set.
    unsafe {
        if libc::setpgid(0, 0) != 0 {
            return io::Error::last_os_error();
        }
        if ctx.hand_over_terminal {
            // Errors are tolerated (ENOTTY, ENXIO), as tini does: the agent still runs. With
            // SIGTTOU blocked the kernel lets the new background group take the terminal.
            libc::tcsetpgrp(libc::STDIN_FILENO, libc::getpid());
        }
        // As exec would leave it: every disposition back to what it was when the guard started
        // (`process::inherited`, as the posix_spawn path does), then no signal blocked.
        if let Err(err) = ctx.job_control.restore_in_child() {
            return err;
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
    }
    (ctx.exec)()
}

/// The child's stack: mapped for one spawn, with a page below it that faults, so that an
/// overflow kills the child rather than writing into the guard's memory.
struct Stack {
    /// The whole mapping: the guard page, then `size` bytes of stack.
    map: *mut c_void,
    page: usize,
    size: usize,
}

impl Stack {
    fn new(args: usize) -> io::Result<Stack> {
        // SAFETY: sysconf has no memory effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let want = STACK_BASE + args.saturating_add(3).saturating_mul(size_of::<usize>());
        let size = want.div_ceil(page).saturating_mul(page);
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(map, page, libc::PROT_NONE) } != 0 {
            let err = io::Error::last_os_error();
            // SAFETY: the mapping just made, whole.
            unsafe { libc::munmap(map, size + page) };
            return Err(err);
        }
        Ok(Stack { map, page, size })
    }

    /// The lowest address the child may use (the stack grows down to it from `base + size`).
    fn base(&self) -> usize {
        self.map as usize + self.page
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping is ours, whole, and no child runs on it any more (clone3 with
        // CLONE_VFORK returned once the child exec'd or exited).
        unsafe { libc::munmap(self.map, self.size + self.page) };
    }
}

/// This thread's signal mask before [`block_all`], put back by [`Blocked::restore`].
struct Blocked(libc::sigset_t);

fn block_all() -> io::Result<Blocked> {
    // SAFETY: both sets are plain data, filled in by sigfillset and the kernel.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let mut old: libc::sigset_t = std::mem::zeroed();
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Blocked(old))
    }
}

impl Blocked {
    fn restore(self) {
        // SAFETY: the set read by block_all.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut()) };
    }
}

/// clone3 returning twice: in the parent with the child's pid (or `-errno`), while in the child,
/// on the stack `args` names, `entry(arg)` runs and its return value is the child's exit status.
/// The libc crate has no clone3 that calls a function, and a child on a new stack cannot return
/// into Rust code that ran on another one, hence the few instructions here.
///
/// # Safety
/// `args` must name a stack the child may use, and `entry` must not return into anything but
/// this trampoline (it returns its status; the trampoline exits with it).
#[cfg(target_arch = "x86_64")]
unsafe fn clone_vfork(
    args: &CloneArgs,
    entry: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract. The kernel keeps every register but rax, rcx and r11 in
    // both processes; the child starts with rsp at the top of its stack (16-byte aligned: the
    // call then leaves it as the ABI expects at a function's entry), and never comes back here.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *const CloneArgs,
            in("rsi") size_of::<CloneArgs>(),
            in("r12") entry,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// [`clone_vfork`] for aarch64: `svc 0` keeps every register but x0 in both processes.
#[cfg(target_arch = "aarch64")]
unsafe fn clone_vfork(
    args: &CloneArgs,
    entry: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: as for x86_64; sp starts 16-byte aligned at the top of the child's stack.
    unsafe {
        std::arch::asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x0, x21",
            "blr x20",
            "mov x8, {exit}",
            "svc 0",
            "brk 0",
            "2:",
            exit = const libc::SYS_exit,
            inlateout("x0") args as *const CloneArgs as i64 => ret,
            in("x1") size_of::<CloneArgs>(),
            in("x8") libc::SYS_clone3,
            in("x20") entry,
            in("x21") arg,
        );
    }
    ret
}

/// Other targets: no trampoline here, so no clone3 ([`spawn`] answers `Ok(None)` before this).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn clone_vfork(
    _args: &CloneArgs,
    _entry: extern "C" fn(*mut c_void) -> c_int,
    _arg: *mut c_void,
) -> i64 {
    -i64::from(libc::ENOSYS)
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::process::cgroup::AgentCgroup;

    /// This thread's signal mask, as a set of the first 64 signals.
    fn mask() -> u64 {
        // SAFETY: a zeroed set filled in by the kernel; sigismember only reads it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut set);
            (1..64)
                .filter(|s| libc::sigismember(&set, *s) == 1)
                .fold(0, |m, s| m | 1 << s)
        }
    }

    /// The child runs in the guard's memory until exec (a vfork: nothing copied, the guard's
    /// thread suspended meanwhile), is born in the cgroup, leads its own process group, and
    /// execs with no signal blocked although every one was while it started; the guard's own
    /// mask is as it was. An exec that fails comes back as its errno.
    #[test]
    fn the_child_shares_the_guards_memory_until_exec_and_is_born_in_the_cgroup() {
        let Some(cgroup) = AgentCgroup::for_test("unit-clone-into") else {
            return;
        };
        let before = mask();
        let ran_here = AtomicBool::new(false);
        let mut failing = || {
            ran_here.store(true, Ordering::Relaxed);
            io::Error::from_raw_os_error(libc::ENOENT)
        };
        let failed = spawn(
            cgroup.dir_fd(),
            &mut failing,
            1,
            false,
            JobControl::for_test(),
        );
        let err = failed.expect_err("the exec failed");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(
            ran_here.load(Ordering::Relaxed),
            "the child wrote into the guard's memory: a vfork, not a fork"
        );
        assert_eq!(mask(), before, "the guard's signal mask is back");

        let program = CString::new("/bin/sleep").expect("path");
        let args = [program.clone(), CString::new("30").expect("arg")];
        let argv = [args[0].as_ptr(), args[1].as_ptr(), std::ptr::null()];
        let mut exec = || {
            // SAFETY: NUL-terminated strings in a NULL-terminated array, all alive here.
            unsafe { libc::execv(program.as_ptr(), argv.as_ptr()) };
            io::Error::last_os_error()
        };
        let started = spawn(cgroup.dir_fd(), &mut exec, 2, false, JobControl::for_test());
        let pid = started
            .expect("spawned")
            .expect("this kernel has CLONE_INTO_CGROUP");
        assert_eq!(mask(), before);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let in_cgroup = cgroup.pids().contains(&pid);
        // SAFETY: getpgid reads; kill and waitpid on our own child.
        let pgid = unsafe { libc::getpgid(pid) };
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, std::ptr::null_mut(), 0);
        }
        cgroup.remove();
        assert!(in_cgroup, "born in the agent's cgroup");
        assert_eq!(pgid, pid, "its own process group");
        let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:"));
        assert_eq!(blocked.map(str::trim), Some("0000000000000000"), "{status}");
    }
}
