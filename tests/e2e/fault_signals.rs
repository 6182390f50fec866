//! A fault signal (ILL, TRAP, ABRT, BUS, FPE, SEGV, SYS) sent to the guard with kill(2) is
//! forwarded like any other, as dumb-init does; a real crash of the guard stops its agent.

use crate::support::{Guard, SOON, fixture, gone, read, recorded, scratch, wait_until};

/// The fault signals by the name the recorder fixture writes, SEGV and BUS twice: Rust's own
/// stack overflow handler used to let the first through and die of the second.
const FAULTS: [(i32, &str); 9] = [
    (libc::SIGILL, "SIGILL"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGSYS, "SIGSYS"),
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
];

/// dumb-init forwards every signal it can catch; tini and the guard until now died of these and
/// left the agent running under PID 1.
#[test]
fn fault_signals_sent_with_kill_are_forwarded_as_dumb_init_does() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--".as_ref(),
            fixture("recorder.py").as_os_str(),
            log.as_os_str(),
        ],
    );
    wait_until("the agent is up", SOON, || {
        dir.path().join("signals.log.ready").exists()
    });
    for (n, (sig, name)) in FAULTS.into_iter().enumerate() {
        guard.signal(sig);
        wait_until(&format!("{name} reaches the agent"), SOON, || {
            recorded(&log).len() > n
        });
        assert_eq!(recorded(&log)[n], name, "signal {n} in order");
    }
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "log:\n{}", guard.log());
}

/// A real crash, induced from outside: the test attaches to the guard with ptrace and moves its
/// main thread to address 0, so the kernel itself raises SIGSEGV (SEGV_MAPERR), which no
/// kill(2) can fake. The guard must tell its agent to stop and say so, then die of the fault.
#[test]
fn a_real_crash_of_the_guard_stops_the_agent_and_says_so() {
    let dir = scratch();
    let log = dir.path().join("signals.log");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--".as_ref(),
            fixture("recorder.py").as_os_str(),
            log.as_os_str(),
        ],
    );
    let ready = dir.path().join("signals.log.ready");
    wait_until("the agent is up", SOON, || ready.exists());
    let agent: i32 = read(&ready).trim().parse().expect("the agent's pid");
    if let Err(err) = jump_to_address_zero(guard.pid()) {
        crate::support::require(false, &format!("cannot ptrace the guard: {err}"));
        return;
    }
    let status = guard.wait(std::time::Duration::ZERO);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        status.signal(),
        Some(libc::SIGSEGV),
        "the guard dies of its fault: {status:?}\n{}",
        guard.log()
    );
    wait_until("the agent exits on its stop signal", SOON, || gone(agent));
    assert_eq!(
        recorded(&log).first().map(String::as_str),
        Some("SIGTERM"),
        "the agent got the stop signal"
    );
    let said = guard.log();
    assert!(
        said.contains("agent-guard: crashed (SIGSEGV); sent SIGTERM to the agent's process group"),
        "one line on stderr says what happened:\n{said}"
    );
}

/// Stops the guard's main thread with ptrace, sets its program counter to 0 and lets it go.
fn jump_to_address_zero(pid: i32) -> std::io::Result<()> {
    let os = std::io::Error::last_os_error;
    // SAFETY: ptrace and waitpid on our own child; the register buffer is as large as the
    // kernel's NT_PRSTATUS set for this architecture, which is what iov_len says.
    unsafe {
        if libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) != 0 {
            return Err(os());
        }
        let mut status = 0;
        loop {
            if libc::waitpid(pid, &mut status, libc::__WALL) != pid {
                return Err(os());
            }
            if libc::WIFSTOPPED(status) {
                break;
            }
        }
        let mut regs: libc::user_regs_struct = std::mem::zeroed();
        let mut iov = libc::iovec {
            iov_base: (&raw mut regs).cast(),
            iov_len: std::mem::size_of::<libc::user_regs_struct>(),
        };
        let set = libc::NT_PRSTATUS as usize as *mut libc::c_void;
        if libc::ptrace(libc::PTRACE_GETREGSET, pid, set, &raw mut iov) != 0 {
            return Err(os());
        }
        // Through the pointer the kernel reads from, not the local it points at.
        let regs = &mut *iov.iov_base.cast::<libc::user_regs_struct>();
        #[cfg(target_arch = "x86_64")]
        {
            regs.rip = 0;
            // No system call to restart: the thread resumes at 0, nowhere else.
            regs.orig_rax = u64::MAX;
        }
        #[cfg(target_arch = "aarch64")]
        {
            regs.pc = 0;
        }
        if libc::ptrace(libc::PTRACE_SETREGSET, pid, set, &raw mut iov) != 0 {
            return Err(os());
        }
        // Detached without the SIGSTOP that attaching sent: it runs on, at address 0.
        if libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0) != 0 {
            return Err(os());
        }
    }
    Ok(())
}
