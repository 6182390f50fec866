//! The soak's several-guards cycles: two guards on one simulated instance share a `--hooks-dir`
//! and its termination hook, each cycle with one of the faults issue 23 found:
//! - a scheduled event that flaps (active, then canceled or unlisted for a few polls, then
//!   active again): the maintenance drain must still come, and the scale-in during it completes;
//! - a live guard's registration garbled or truncated in the hooks directory (as any member of
//!   the group can): the other guard must wait for that guard's agent;
//! - a guard SIGKILLed mid-drain, its agent draining on as an orphan: the survivor must wait for
//!   that agent to be gone.
//!
//! Each agent's last act is a `gone` mark (CLOCK_MONOTONIC seconds), and [`judge`] holds every
//! cycle to the invariant: the hook completed exactly once, after every agent was gone. It is
//! checked to flag what it is there for ([`self_check`], and a counterfeit early completion per
//! cycle, judged from that cycle's own marks).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::autoscaling::{AutoScalingSim, Hook, TERMINATING};
use agent_guard::sim::imds::{ImdsSim, ScheduledEvent};

use crate::{GROUP, INSTANCE, processes_with, root, wait_for};

const HOOK: &str = "soak-hook";
/// From the scale-in (or the kill) to both guards' exit, on a loaded machine.
const EXIT_WITHIN: Duration = Duration::from_secs(60);

/// A fault of the several-guards cycles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Flap,
    Garble,
    Sigkill,
}

impl Fault {
    pub const ALL: [Fault; 3] = [Fault::Flap, Fault::Garble, Fault::Sigkill];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::Flap => "flapping scheduled events (active → canceled or [] → active)",
            Fault::Garble => "garbled or truncated registrations in the hooks directory",
            Fault::Sigkill => "a guard SIGKILLed mid-drain, its orphaned agent still draining",
        }
    }
}

/// What one several-guards cycle saw.
#[derive(Debug, Clone)]
pub struct HostCycle {
    pub fault: Fault,
    pub failure: Option<String>,
    /// A completion 1 ms before the last agent's `gone` mark, judged from this cycle's marks,
    /// was flagged.
    pub counterfeit_flagged: bool,
    /// Flap: the maintenance drain came after the flap.
    pub replanned: bool,
    pub leftovers: usize,
}

/// CLOCK_MONOTONIC seconds at `at` (the agents mark on that clock; `Instant` is on it too).
fn mono(at: Instant) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let now = Instant::now();
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let mono_now = ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    if at >= now {
        mono_now + (at - now).as_secs_f64()
    } else {
        mono_now - (now - at).as_secs_f64()
    }
}

/// The invariant for one cycle: exactly one completion, and it after every agent's `gone` mark
/// (`None`: the agent never marked itself gone). Times in CLOCK_MONOTONIC seconds.
pub fn judge(completions: &[f64], gone: &[(&str, Option<f64>)]) -> Result<(), String> {
    if completions.len() != 1 {
        return Err(format!(
            "the hook was completed {} times, not once",
            completions.len()
        ));
    }
    for (name, at) in gone {
        let Some(at) = at else {
            return Err(format!("the {name} agent never marked itself gone"));
        };
        if completions[0] <= *at {
            return Err(format!(
                "the hook was completed {:.3} s before the {name} agent was gone",
                at - completions[0]
            ));
        }
    }
    Ok(())
}

/// The agents' `gone` marks, by name.
type GoneMarks<'a> = &'a [(&'a str, Option<f64>)];

/// [`judge`] on made-up cycles: `(what, whether it must be flagged, whether it was)`.
pub fn self_check() -> Vec<(&'static str, bool, bool)> {
    let gone = [("fast", Some(10.0)), ("slow", Some(12.0))];
    let cases: [(&str, Vec<f64>, GoneMarks, bool); 5] = [
        (
            "one completion after both agents were gone",
            vec![12.5],
            &gone,
            false,
        ),
        (
            "a completion 0.5 s before the slow agent was gone",
            vec![11.5],
            &gone,
            true,
        ),
        ("two completions, both late", vec![12.5, 12.6], &gone, true),
        ("no completion", vec![], &gone, true),
        (
            "an agent that never marked itself gone",
            vec![12.5],
            &[("fast", Some(10.0)), ("slow", None)],
            true,
        ),
    ];
    cases
        .into_iter()
        .map(|(what, completions, gone, bad)| (what, bad, judge(&completions, gone).is_err()))
        .collect()
}

/// Reads an agent's mark (`drain` or `gone`).
fn mark(dir: &Path, name: &str) -> Option<f64> {
    std::fs::read_to_string(dir.join(name))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A time `ahead` from now, in whole seconds as EC2 writes it.
fn whole_seconds(ahead: Duration) -> SystemTime {
    let secs = (SystemTime::now() + ahead)
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

struct Host {
    dir: PathBuf,
    imds: ImdsSim,
    asg: AutoScalingSim,
}

impl Host {
    fn start_guard(&self, bin: &Path, name: &str, drain_secs: f64, fault: Fault) -> Child {
        let own = self.dir.join(name);
        std::fs::create_dir_all(&own).expect("guard dir");
        let log = std::fs::File::create(own.join("guard.log")).expect("log file");
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("AGENT_GUARD_SOCKET", own.join("guard.sock"))
            .env("AWS_ENDPOINT_URL_AUTO_SCALING", self.asg.url())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", format!("soak{name}"))
            .env("AWS_SECRET_ACCESS_KEY", "soak")
            .args(["--imds", "on", "--imds-endpoint", &self.imds.url()])
            .args(["--imds-poll", "100ms", "--terminate-hook", HOOK])
            .args(["--asg-name", GROUP, "--stop-timeout", "1s", "--name", name])
            .arg("--hooks-dir")
            .arg(self.dir.join("hooks"))
            .args(["--drain-timeout", "20s", "--health-listen", "127.0.0.1:0"])
            .args(["--log-level", "info"]);
        if fault == Fault::Flap {
            cmd.args(["--on-maintenance", "drain", "--maintenance-margin", "6s"]);
        }
        cmd.args(["--", "python3"])
            .arg(root().join("bench/soak_agent.py"))
            .arg(&own)
            .arg(format!("slow={drain_secs}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the guard starts")
    }

    /// The registration file of guard `name`, once it is there.
    fn registration(&self, name: &str) -> Option<PathBuf> {
        let guards = self
            .dir
            .join("hooks")
            .join(format!("terminate.{HOOK}/guards"));
        std::fs::read_dir(guards).ok()?.flatten().find_map(|e| {
            let file = e.file_name().to_string_lossy().into_owned();
            (file.starts_with(&format!("{name}.")) && file.ends_with(".json")).then(|| e.path())
        })
    }

    fn scale_in(&self) {
        self.asg.terminate(GROUP, INSTANCE);
        self.imds.set_lifecycle_state(Some("Terminated"));
    }

    fn logs(&self) -> String {
        ["fast", "slow"]
            .iter()
            .map(|n| {
                let log = std::fs::read_to_string(self.dir.join(n).join("guard.log"));
                format!("--- {n}:\n{}", log.unwrap_or_default())
            })
            .collect()
    }
}

/// The flap: an active reboot event whose drain is due in 3 s, canceled (or unlisted) for a
/// few polls, then active again. `true` once both agents were told to drain.
fn flap(i: usize, host: &Host) -> bool {
    let event = ScheduledEvent::active(
        "system-reboot",
        &format!("instance-event-{i}"),
        whole_seconds(Duration::from_secs(9)),
    );
    host.imds.set_scheduled_events(std::slice::from_ref(&event));
    std::thread::sleep(Duration::from_millis(600));
    if i.is_multiple_of(2) {
        let canceled = event.clone().with_state("canceled");
        host.imds.set_scheduled_events(&[canceled]);
    } else {
        host.imds.set_scheduled_events(&[]);
    }
    std::thread::sleep(Duration::from_millis(600));
    host.imds.set_scheduled_events(&[event]);
    let drains = || {
        ["fast", "slow"]
            .iter()
            .all(|n| host.dir.join(n).join("drain").exists())
    };
    wait_for(Duration::from_secs(30), drains)
}

/// What a registration is garbled into, in place (the guard keeps its lock on the file).
const GARBLES: [&[u8]; 3] = [b"", b"{\"name\":\"slow\",", b"\x00\x01garbage\xff"];

/// One several-guards cycle: a fast guard (its agent drains in 0.3 s, 2 s for a flap) and a
/// slow one (3 s), `fault` applied, the instance scaled in.
pub fn cycle(i: usize, fault: Fault, bin: &Path, base: &Path) -> HostCycle {
    let host = Host {
        dir: base.join(format!("h{i}")),
        imds: ImdsSim::start().expect("imds sim"),
        asg: AutoScalingSim::start().expect("asg sim"),
    };
    std::fs::create_dir_all(&host.dir).expect("cycle dir");
    host.asg.add_instance(GROUP, INSTANCE, "InService");
    host.asg.put_hook(GROUP, Hook::new(HOOK, TERMINATING));
    let fast_drain = if fault == Fault::Flap { 2.0 } else { 0.3 };
    let mut fast = host.start_guard(bin, "fast", fast_drain, fault);
    let mut slow = host.start_guard(bin, "slow", 3.0, fault);
    let mut seen = HostCycle {
        fault,
        failure: None,
        counterfeit_flagged: false,
        replanned: false,
        leftovers: 0,
    };
    let outcome = run(i, fault, &host, [&mut fast, &mut slow], &mut seen);
    for guard in [&mut fast, &mut slow] {
        let _ = guard.kill();
        let _ = guard.wait();
    }
    let marker = host.dir.display().to_string();
    let left = processes_with(&marker);
    seen.leftovers = left.len();
    for pid in left {
        // SAFETY: kill(2) on a process this run started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    if let Err(why) = outcome {
        seen.failure = Some(format!(
            "host cycle {i} ({fault:?}): {why}\n{}",
            host.logs()
        ));
    }
    let _ = std::fs::remove_dir_all(&host.dir);
    seen
}

/// The cycle up to its verdict.
fn run(
    i: usize,
    fault: Fault,
    host: &Host,
    [fast, slow]: [&mut Child; 2],
    seen: &mut HostCycle,
) -> Result<(), String> {
    let up = || {
        ["fast", "slow"]
            .iter()
            .all(|n| host.dir.join(n).join("ready").exists() && host.registration(n).is_some())
            && host
                .asg
                .calls()
                .iter()
                .filter(|c| c.action == "DescribeLifecycleHooks")
                .count()
                >= 2
    };
    if !wait_for(Duration::from_secs(30), up) {
        return Err("the agents or the hooks never got ready".into());
    }
    match fault {
        Fault::Flap => {
            seen.replanned = flap(i, host);
            if !seen.replanned {
                return Err("the maintenance drain did not come after the flap".into());
            }
            host.scale_in();
        }
        Fault::Garble => {
            let file = host.registration("slow").ok_or("no registration")?;
            std::fs::write(&file, GARBLES[i % GARBLES.len()]).map_err(|e| e.to_string())?;
            host.scale_in();
        }
        Fault::Sigkill => {
            host.scale_in();
            let draining = || host.dir.join("slow").join("drain").exists();
            if !wait_for(Duration::from_secs(30), draining) {
                return Err("the slow agent was never told to drain".into());
            }
            let _ = slow.kill();
            let _ = slow.wait();
        }
    }
    let fast_status = exit_of(fast).ok_or("the fast guard did not exit")?;
    let slow_status = if fault == Fault::Sigkill {
        None
    } else {
        Some(exit_of(slow).ok_or("the slow guard did not exit")?)
    };
    let orphans_gone = || processes_with(&host.dir.display().to_string()).is_empty();
    wait_for(Duration::from_secs(20), orphans_gone);
    verdict(fault, host, fast_status, slow_status, seen)
}

fn exit_of(guard: &mut Child) -> Option<ExitStatus> {
    let mut status = None;
    wait_for(EXIT_WITHIN, || {
        status = guard.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

fn verdict(
    fault: Fault,
    host: &Host,
    fast: ExitStatus,
    slow: Option<ExitStatus>,
    seen: &mut HostCycle,
) -> Result<(), String> {
    let completions: Vec<_> = host
        .asg
        .completions()
        .into_iter()
        .filter(|c| c.by_call)
        .collect();
    let at: Vec<f64> = completions.iter().map(|c| mono(c.at)).collect();
    let gone: Vec<(&str, Option<f64>)> = ["fast", "slow"]
        .iter()
        .map(|n| (*n, mark(&host.dir.join(n), "gone")))
        .collect();
    let latest = gone.iter().filter_map(|g| g.1).fold(f64::MIN, f64::max);
    seen.counterfeit_flagged = judge(&[latest - 0.001], &gone).is_err();
    judge(&at, &gone)?;
    // A SIGKILLed guard's agent was never seen to stop cleanly: its --on-unclean-exit counts.
    let want = if fault == Fault::Sigkill {
        "ABANDON"
    } else {
        "CONTINUE"
    };
    if completions[0].result != want {
        return Err(format!("completed {}, not {want}", completions[0].result));
    }
    for (name, status) in [("fast", Some(fast)), ("slow", slow)] {
        if let Some(status) = status
            && status.code() != Some(0)
        {
            return Err(format!("the {name} guard exited {status:?}, not 0"));
        }
    }
    Ok(())
}

/// One line per fault class, and whether every cycle of every class held.
pub fn report(cycles: &[HostCycle]) -> bool {
    let mut held = true;
    for fault in Fault::ALL {
        let of: Vec<_> = cycles.iter().filter(|c| c.fault == fault).collect();
        let ok = of.iter().filter(|c| c.failure.is_none()).count();
        let flagged = of.iter().filter(|c| c.counterfeit_flagged).count();
        let left: usize = of.iter().map(|c| c.leftovers).sum();
        let replanned = if fault == Fault::Flap {
            let n = of.iter().filter(|c| c.replanned).count();
            format!("; drain planned again after the flap in {n}")
        } else {
            String::new()
        };
        println!(
            "- {}: {ok}/{} cycles completed the hook exactly once, after every agent was gone{replanned}; \
             a counterfeit completion 1 ms before the last agent was gone flagged in {flagged}/{}; \
             processes left {left}",
            fault.describe(),
            of.len(),
            of.len(),
        );
        held &= ok == of.len() && flagged == of.len() && left == 0;
    }
    for failure in cycles.iter().filter_map(|c| c.failure.as_ref()).take(3) {
        eprintln!("\nFAILED {failure}");
    }
    held
}
