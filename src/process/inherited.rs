//! The signal state the guard was started with, and what the agent gets of it: what exec would
//! give it, as tini keeps it. A signal ignored when the guard started stays ignored for the agent
//! (and the guard neither handles nor forwards it: `nohup agent-guard …` works); every other
//! signal starts at its default disposition, with an empty mask.
//!
//! The state is read before `main` ([`hold_at_start`], from the binary's `.init_array`): by
//! `main` Rust's runtime has already set SIGPIPE to ignored, and what the parent had set is
//! lost. There all signals are also blocked, so that a HUP or USR1 that comes before the guard's
//! handlers are installed waits for them instead of killing the guard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use libc::c_int;

/// Signals ignored when the guard started: bit `n - 1` for signal `n`.
static IGNORED: AtomicU64 = AtomicU64::new(0);
/// The signal mask the guard was started with, in the same bits.
static MASK: AtomicU64 = AtomicU64::new(0);
/// Whether [`hold_at_start`] ran (it does not in the library's own unit tests).
static HELD: AtomicBool = AtomicBool::new(false);

/// The last signal number on Linux.
const LAST: c_int = 64;

fn bit(sig: c_int) -> u64 {
    1 << (sig - 1)
}

/// The C library's own signals (32 and 33 with glibc, up to 34 with musl): its `sigaction`
/// refuses them, and they are nobody's to ignore.
fn internal(sig: c_int) -> bool {
    sig > 31 && sig < libc::SIGRTMIN()
}

/// Records which signals were ignored and the mask, then blocks every signal until the guard's
/// handlers are in place ([`release`] or [`unblock_all`]). Runs before `main`, before any other
/// thread exists: only `sigaction` and `pthread_sigmask`, nothing that allocates.
pub extern "C" fn hold_at_start() {
    if HELD.swap(true, Ordering::AcqRel) {
        return;
    }
    IGNORED.store(read_ignored(), Ordering::Release);
    // SAFETY: plain sets on this stack; pthread_sigmask only changes this thread's mask, which
    // every thread started later inherits.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0 {
            MASK.store(to_bits(&old), Ordering::Release);
        }
    }
}

/// The signals whose disposition is SIG_IGN now.
fn read_ignored() -> u64 {
    let mut ignored = 0;
    for sig in 1..=LAST {
        if internal(sig) {
            continue;
        }
        // SAFETY: a zeroed sigaction is valid for the kernel to fill in; nothing is changed.
        let handler = unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            old.sa_sigaction
        };
        if handler == libc::SIG_IGN {
            ignored |= bit(sig);
        }
    }
    ignored
}

/// Whether `sig` was ignored when the guard started. Without [`hold_at_start`] (the library's
/// unit tests) this is read on first use, before the guard changes anything.
pub fn ignored_at_start(sig: c_int) -> bool {
    if !HELD.swap(true, Ordering::AcqRel) {
        IGNORED.store(read_ignored(), Ordering::Release);
    }
    (1..=LAST).contains(&sig) && IGNORED.load(Ordering::Acquire) & bit(sig) != 0
}

/// The guard does not supervise (`ctl`, `--help`, a bad option): the mask it was started with
/// comes back, and what was held is delivered as it would have been.
pub fn release() {
    set_mask(&from_bits(MASK.load(Ordering::Acquire)));
}

/// The guard's handlers are in place: no signal is blocked any more, whatever the parent's
/// mask (a supervisor must hear a stop signal), and what was held is delivered to them.
pub fn unblock_all() {
    set_mask(&from_bits(0));
}

fn set_mask(set: &libc::sigset_t) {
    // SAFETY: `set` is a valid sigset_t; only this thread's mask changes.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, set, std::ptr::null_mut());
    }
}

/// The set of signals the agent must start at their default disposition: every one not ignored
/// at start, for `POSIX_SPAWN_SETSIGDEF`. The C library's own signals are in it too, written as
/// bits because `sigaddset` refuses them: without them posix_spawn (glibc's and musl's alike)
/// sets them to SIG_IGN in the child, and exec keeps that.
pub fn default_in_agent() -> libc::sigset_t {
    let mut bits = 0;
    for sig in 1..=LAST {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP && !ignored_at_start(sig) {
            bits |= bit(sig);
        }
    }
    from_bits(bits)
}

/// In a forked child before exec: every signal back to what it was when the guard started,
/// ignored or default (a handler becomes default, as exec would make it), and the C library's
/// own signals at their default even if the guard inherited them ignored (its parent may have
/// started it with posix_spawn). Only `sigaction` and the raw system call behind it, which are
/// async-signal-safe; the mask std has already emptied. [`ignored_at_start`] must have been
/// read before the fork (it is, by installing the handlers).
pub fn restore_in_child() -> std::io::Result<()> {
    let ignored = IGNORED.load(Ordering::Acquire);
    for sig in 1..=LAST {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        if internal(sig) {
            default_by_system_call(sig)?;
            continue;
        }
        let handler = if ignored & bit(sig) != 0 {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: a zeroed sigaction with SIG_IGN or SIG_DFL is valid; sigaction(2) is
        // async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler;
            if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Sets `sig` to SIG_DFL with rt_sigaction(2) itself: the C library's `sigaction` refuses its
/// own signals. The kernel's struct starts with the handler on every Linux architecture, and
/// all zeros is SIG_DFL with no flags and an empty mask whatever the rest of its layout.
fn default_by_system_call(sig: c_int) -> std::io::Result<()> {
    let action = [0u64; 4];
    // SAFETY: the kernel reads at most its struct sigaction (32 bytes on 64-bit targets) from
    // `action`; the old action is not asked for; 8 is the size of the kernel's signal set.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            libc::c_long::from(sig),
            action.as_ptr(),
            std::ptr::null_mut::<u64>(),
            8 as libc::c_long,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

// A sigset_t is an array of unsigned longs, signal `n` being bit `n - 1` of the first on a
// 64-bit target; written directly, because the C library's own signals cannot be added with
// `sigaddset`.
const _: () = assert!(std::mem::size_of::<libc::c_ulong>() == 8);

fn from_bits(bits: u64) -> libc::sigset_t {
    // SAFETY: a zeroed sigset_t is the empty set; its first word holds signals 1 to 64.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        *(&raw mut set).cast::<u64>() = bits;
        set
    }
}

fn to_bits(set: &libc::sigset_t) -> u64 {
    // SAFETY: a sigset_t is at least one u64 long and aligned for it.
    unsafe { *(set as *const libc::sigset_t).cast::<u64>() }
}

/// The ignored signals by name, for the one line at start.
pub fn ignored_names() -> Vec<String> {
    (1..=LAST)
        .filter(|sig| ignored_at_start(*sig))
        .filter_map(crate::process::sig::Sig::from_raw)
        .map(|sig| sig.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_through_a_sigset() {
        let set = from_bits(bit(libc::SIGHUP) | bit(33) | bit(64));
        assert_eq!(to_bits(&set), bit(libc::SIGHUP) | bit(33) | bit(64));
        // SAFETY: sigismember only reads the set.
        assert_eq!(unsafe { libc::sigismember(&set, libc::SIGHUP) }, 1);
        assert_eq!(unsafe { libc::sigismember(&set, libc::SIGTERM) }, 0);
    }

    #[test]
    fn the_agent_starts_every_signal_not_ignored_at_default() {
        let set = default_in_agent();
        for sig in [libc::SIGTERM, libc::SIGHUP, 32, 33, libc::SIGRTMAX()] {
            if !ignored_at_start(sig) {
                assert_ne!(to_bits(&set) & bit(sig), 0, "{sig}");
            }
        }
        assert_eq!(to_bits(&set) & bit(libc::SIGKILL), 0);
    }
}
