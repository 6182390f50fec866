//! Signals as values: how they are named and parsed (`TERM`, `SIGTERM`, `15`, `RTMIN+3`), which
//! ones the guard catches, forwards, or treats as a stop. No handler is installed here (see
//! `signals`), so the state machine and configuration can use [`Sig`] without side effects.
//!
//! Signals are a raw number here rather than `nix::sys::signal::Signal`, whose enum cannot hold
//! real-time signals: those must be forwarded, and an agent killed by one must still exit 128+N.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use libc::c_int;

/// A signal number.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sig(c_int);

/// The standard signals by name, without the `SIG` prefix.
const NAMES: &[(&str, c_int)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

impl Sig {
    pub const HUP: Sig = Sig(libc::SIGHUP);
    pub const INT: Sig = Sig(libc::SIGINT);
    pub const TERM: Sig = Sig(libc::SIGTERM);
    pub const KILL: Sig = Sig(libc::SIGKILL);
    pub const CHLD: Sig = Sig(libc::SIGCHLD);
    pub const CONT: Sig = Sig(libc::SIGCONT);
    pub const USR1: Sig = Sig(libc::SIGUSR1);
    pub const USR2: Sig = Sig(libc::SIGUSR2);

    /// The raw number, for `kill(2)`.
    pub fn raw(self) -> c_int {
        self.0
    }

    /// A signal from a raw number, if the kernel knows it.
    pub fn from_raw(n: c_int) -> Option<Sig> {
        (1..=libc::SIGRTMAX()).contains(&n).then_some(Sig(n))
    }

    /// The name of a standard signal without the `SIG` prefix (`TERM`), with no allocation: for
    /// a signal handler.
    pub fn standard_name(raw: c_int) -> Option<&'static str> {
        NAMES.iter().find(|(_, n)| *n == raw).map(|(name, _)| *name)
    }

    /// The conventional name: `SIGTERM`, `SIGRTMIN+3`.
    pub fn name(self) -> Cow<'static, str> {
        if let Some((name, _)) = NAMES.iter().find(|(_, n)| *n == self.0) {
            return Cow::Owned(format!("SIG{name}"));
        }
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        if self.0 == min {
            Cow::Borrowed("SIGRTMIN")
        } else if self.0 == max {
            Cow::Borrowed("SIGRTMAX")
        } else if self.0 > min && self.0 < max {
            Cow::Owned(format!("SIGRTMIN+{}", self.0 - min))
        } else {
            Cow::Owned(format!("signal {}", self.0))
        }
    }
}

impl fmt::Display for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// In the journal and on the wire, a signal is its name (`SIGTERM`), as people read it.
impl serde::Serialize for Sig {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Sig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Sig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name(), self.0)
    }
}

/// A signal name or number that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown signal `{0}` (use a name such as TERM, SIGINT or RTMIN+1, or a number)")]
pub struct UnknownSignal(pub String);

impl FromStr for Sig {
    type Err = UnknownSignal;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownSignal(s.to_string());
        let trimmed = s.trim();
        if let Ok(n) = trimmed.parse::<c_int>() {
            // Only a number with a name: 32 and 33 are the C library's own (below SIGRTMIN),
            // and a signal written as `signal 32` could not be read back.
            let named = NAMES.iter().any(|(_, known)| *known == n)
                || (libc::SIGRTMIN()..=libc::SIGRTMAX()).contains(&n);
            return Sig::from_raw(n).filter(|_| named).ok_or_else(unknown);
        }
        let upper = trimmed.to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        if let Some((_, n)) = NAMES.iter().find(|(name, _)| *name == bare) {
            return Ok(Sig(*n));
        }
        let (min, max) = (libc::SIGRTMIN(), libc::SIGRTMAX());
        let rt = if bare == "RTMIN" {
            Some(min)
        } else if bare == "RTMAX" {
            Some(max)
        } else if let Some(k) = bare.strip_prefix("RTMIN+") {
            k.parse::<c_int>().ok().and_then(|k| min.checked_add(k))
        } else if let Some(k) = bare.strip_prefix("RTMAX-") {
            k.parse::<c_int>().ok().and_then(|k| max.checked_sub(k))
        } else {
            None
        };
        rt.filter(|n| (min..=max).contains(n))
            .map(Sig)
            .ok_or_else(unknown)
    }
}

/// What the guard does with a signal it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// SIGTERM, SIGINT: start the graceful stop (a second one kills at once).
    Stop,
    /// SIGCHLD: a child changed state; time to reap.
    Reap,
    /// SIGTSTP (^Z, or `kill -TSTP`): pass it on to the agent, then stop the guard too, as
    /// dumb-init does, so that the shell that started the guard gets its prompt back.
    Suspend,
    /// Everything else that can be caught, the fault signals sent with kill(2) included: pass
    /// it on to the agent.
    Forward,
}

/// How the guard treats `sig`.
pub fn role(sig: Sig) -> Role {
    match sig.0 {
        libc::SIGTERM | libc::SIGINT => Role::Stop,
        libc::SIGCHLD => Role::Reap,
        libc::SIGTSTP => Role::Suspend,
        _ => Role::Forward,
    }
}

/// The signals that also report a fault of the process itself (the kernel sends them when it
/// executes a bad instruction or address). Sent by someone else with kill(2) they are signals
/// like any other, and forwarded; their handler tells the two apart (`process::crash`).
pub const FAULTS: [c_int; 7] = [
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGSYS,
];

/// Every signal the guard installs its plain handler for (the [`FAULTS`] get their own).
///
/// Left out: KILL and STOP (cannot be caught); the [`FAULTS`]; TTIN and TTOU (ignored, so the
/// guard is never stopped for touching a terminal it handed to the agent). PIPE is left out too:
/// a write to a closed log pipe raises it in the guard, and forwarding that would kill a healthy
/// agent. A signal ignored when the guard started is not handled either (`process::inherited`).
pub fn handled() -> Vec<Sig> {
    const SKIP: &[c_int] = &[
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGTTIN,
        libc::SIGTTOU,
        libc::SIGPIPE,
    ];
    let standard = NAMES
        .iter()
        .map(|(_, n)| *n)
        .filter(|n| !SKIP.contains(n) && !FAULTS.contains(n));
    let realtime = libc::SIGRTMIN()..=libc::SIGRTMAX();
    standard.chain(realtime).map(Sig).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_numbers_and_realtime() {
        for (text, want) in [
            ("TERM", libc::SIGTERM),
            ("sigterm", libc::SIGTERM),
            ("SIGUSR1", libc::SIGUSR1),
            ("15", libc::SIGTERM),
            (" hup ", libc::SIGHUP),
            ("RTMIN", libc::SIGRTMIN()),
            ("RTMIN+2", libc::SIGRTMIN() + 2),
            ("SIGRTMAX-1", libc::SIGRTMAX() - 1),
        ] {
            assert_eq!(text.parse::<Sig>(), Ok(Sig(want)), "{text}");
        }
        for bad in [
            "",
            "TERMINATE",
            "0",
            "65",
            "RTMIN+99",
            "-1",
            "32",
            "33",
            "RTMIN+2147483647",
            "RTMAX--2147483647",
        ] {
            assert!(bad.parse::<Sig>().is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn names_round_trip() {
        for sig in handled() {
            assert_eq!(sig.name().parse::<Sig>(), Ok(sig), "{sig:?}");
        }
    }

    #[test]
    fn stop_reap_and_forward_roles() {
        assert_eq!(role(Sig::TERM), Role::Stop);
        assert_eq!(role(Sig::INT), Role::Stop);
        assert_eq!(role(Sig::CHLD), Role::Reap);
        assert_eq!(role(Sig(libc::SIGTSTP)), Role::Suspend);
        for fault in FAULTS {
            assert_eq!(role(Sig(fault)), Role::Forward, "{fault}");
            assert!(
                !handled().contains(&Sig(fault)),
                "{fault} has a handler of its own"
            );
        }
        for sig in [
            Sig::HUP,
            Sig::USR1,
            Sig::USR2,
            Sig(libc::SIGWINCH),
            Sig(libc::SIGCONT),
        ] {
            assert_eq!(role(sig), Role::Forward, "{sig}");
            assert!(handled().contains(&sig), "{sig} must be handled");
        }
        assert!(!handled().contains(&Sig(libc::SIGPIPE)));
        assert!(!handled().contains(&Sig::KILL));
    }
}
