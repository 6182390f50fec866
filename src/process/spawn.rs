//! Starting the agent with posix_spawn (a vfork: none of the guard's memory is copied), in its
//! own process group, with the signal state exec semantics give it (`process::inherited`).
//!
//! std's `Command` would use posix_spawn too, but names only SIGPIPE in the set of signals to
//! reset (`POSIX_SPAWN_SETSIGDEF`); glibc and musl then set their own internal signals (32 and
//! 33) to SIG_IGN in the child, and exec keeps that: the agent started with them ignored. Here
//! the set holds every signal not ignored when the guard started, those included.

use std::ffi::{CString, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;

use libc::pid_t;

use crate::process::inherited;

/// Starts `command` (looked up in PATH as execvp does) with the guard's environment plus `env`,
/// its stdio and working directory, in a process group of its own, with an empty signal mask
/// and every signal at its default but those ignored at start. The error is exec's (ENOENT,
/// EACCES, ENOEXEC …) or InvalidInput for a NUL byte in an argument.
pub fn posix_spawn(command: &[OsString], env: &[(OsString, OsString)]) -> io::Result<pid_t> {
    let nul = |_| io::Error::new(io::ErrorKind::InvalidInput, "an argument holds a NUL byte");
    let args: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(nul))
        .collect::<Result<_, _>>()?;
    let program = args
        .first()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !env.iter().any(|(e, _)| e == k))
        .collect();
    vars.extend(env.iter().cloned());
    let vars: Vec<CString> = vars
        .iter()
        .map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).map_err(nul)
        })
        .collect::<Result<_, _>>()?;
    let mut argv: Vec<*mut libc::c_char> = args.iter().map(|a| a.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let mut envp: Vec<*mut libc::c_char> = vars.iter().map(|e| e.as_ptr().cast_mut()).collect();
    envp.push(std::ptr::null_mut());
    let defaults = inherited::default_in_agent();
    let mut pid: pid_t = 0;
    // SAFETY: the attributes are initialised before use and destroyed after; argv and envp are
    // NULL-terminated arrays of NUL-terminated strings that outlive the call; posix_spawnp
    // copies what it needs before it returns.
    let rc = unsafe {
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        let rc = libc::posix_spawnattr_init(&mut attr);
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        let flags = libc::POSIX_SPAWN_SETPGROUP
            | libc::POSIX_SPAWN_SETSIGMASK
            | libc::POSIX_SPAWN_SETSIGDEF;
        let set = [
            libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short),
            libc::posix_spawnattr_setpgroup(&mut attr, 0),
            libc::posix_spawnattr_setsigmask(&mut attr, &empty),
            libc::posix_spawnattr_setsigdefault(&mut attr, &defaults),
        ];
        let rc = match set.into_iter().find(|rc| *rc != 0) {
            Some(rc) => rc,
            None => libc::posix_spawnp(
                &mut pid,
                program.as_ptr(),
                std::ptr::null(),
                &attr,
                argv.as_ptr(),
                envp.as_ptr(),
            ),
        };
        libc::posix_spawnattr_destroy(&mut attr);
        rc
    };
    if rc == 0 {
        Ok(pid)
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
