//! The soak run behind `bench/soak`: a few hundred scale-in drills, each a real guard against the
//! simulated IMDS and Auto Scaling API on loopback, each with a fault from the matrix:
//! - the agent: drains when told, ignores SIGTERM (with a child that does too), leaves its
//!   process group, or floods both sockets (connections past the limit, a line past 64 KiB,
//!   datagrams carrying 17 fds each, hundreds of notifications, the largest extension);
//! - IMDS: none, 503 bursts, garbage bodies, slow answers, dropped connections, refused tokens,
//!   for a while before the notice;
//! - the Auto Scaling API: throttled, or not, when the hook is completed.
//!
//! Per cycle it samples the guard's open fds and RSS after the agent's flood and again after the
//! IMDS fault, checks the guard's exit status and that the hook was completed once, and counts
//! the agent's processes still alive once the guard has exited. It reports them per hundred
//! cycles: fds and RSS must stay flat, no process may be left, no cycle may fail.
//!
//! Then the several-guards cycles ([`host`]): two guards sharing a hooks directory, with a
//! flapping scheduled event, a garbled registration or a guard SIGKILLed mid-drain; each must
//! complete the hook exactly once, after every agent was gone, reported a line per fault class.
//! The judge of that is checked first on made-up cycles that it must flag.
//!
//! usage: soak [--cycles N] [--host-cycles N] [--parallel P] [--budget SECS]
//!        (AGENT_GUARD_BIN: the guard binary)

mod host;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{self, AutoScalingSim, Hook, TERMINATING};
use agent_guard::sim::imds::{self, ImdsSim};

const GROUP: &str = "soak-group";
const INSTANCE: &str = "i-0123456789abcdef0";
const HOOK: &str = "soak-hook";
const MODES: [&str; 4] = ["drain", "ignore", "leave", "flood"];
const IMDS_FAULTS: [&str; 6] = ["none", "503", "garbage", "slow", "drop", "401"];
/// The longest a cycle may take from the notice to the guard's exit: drain 3 s, grace 1 s, the
/// hook's completion with throttling retried, on a loaded machine.
const EXIT_WITHIN: Duration = Duration::from_secs(40);

/// What one cycle saw.
#[derive(Debug, Default, Clone)]
struct Cycle {
    /// The guard's open fds once the agent was up (after its flood), and after the IMDS fault.
    fds: [usize; 2],
    rss_kib: u64,
    leftovers: usize,
    failure: Option<String>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wait_for(bound: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > bound {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Live processes (not zombies) whose command line mentions `marker`.
fn processes_with(marker: &str) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].trim().chars().next());
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            state.is_some_and(|s| s != 'Z' && s != 'X')
                && String::from_utf8_lossy(&cmdline).contains(marker)
        })
        .collect()
}

fn imds_fault(name: &str) -> imds::Faults {
    let mut faults = imds::Faults::default();
    match name {
        "503" => faults.unavailable = 20,
        "garbage" => faults.garbage = true,
        "slow" => faults.delay = Duration::from_millis(300),
        "drop" => faults.drop_connections = true,
        "401" => faults.reject_tokens = true,
        _ => {}
    }
    faults
}

fn start_guard(bin: &Path, dir: &Path, imds: &ImdsSim, asg: &AutoScalingSim, mode: &str) -> Child {
    let log = std::fs::File::create(dir.join("guard.log")).expect("log file");
    Command::new(bin)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("AGENT_GUARD_SOCKET", dir.join("guard.sock"))
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "soak")
        .env("AWS_SECRET_ACCESS_KEY", "soak")
        .args(["--imds", "on", "--imds-endpoint", &imds.url()])
        .args(["--imds-poll", "100ms", "--terminate-hook", HOOK])
        .args(["--asg-name", GROUP, "--stop-timeout", "1s"])
        .args(["--drain-timeout", "3s", "--health-listen", "127.0.0.1:0"])
        // Each cycle is an instance of its own: the host's default hooks directory would have
        // the guards of cycles running at once wait for each other, and leave it to each other.
        .arg("--hooks-dir")
        .arg(dir.join("hooks"))
        .args(["--log-level", "warn", "--", "python3"])
        .arg(root().join("bench/soak_agent.py"))
        .arg(dir)
        .arg(mode)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the guard starts")
}

/// One drill: agent `MODES[i % 4]`, IMDS fault `IMDS_FAULTS[(i / 4) % 6]`, throttling every
/// other 24 cycles, so that 48 cycles cover every combination.
fn cycle(i: usize, bin: &Path, base: &Path) -> Cycle {
    let mode = MODES[i % MODES.len()];
    let fault = IMDS_FAULTS[(i / MODES.len()) % IMDS_FAULTS.len()];
    let throttle = (i / (MODES.len() * IMDS_FAULTS.len())) % 2 == 1;
    let dir = base.join(format!("c{i}"));
    std::fs::create_dir_all(&dir).expect("cycle dir");
    let marker = dir.display().to_string();
    let (imds, asg) = (
        ImdsSim::start().expect("imds sim"),
        AutoScalingSim::start().expect("asg sim"),
    );
    asg.add_instance(GROUP, INSTANCE, "InService");
    asg.put_hook(GROUP, Hook::new(HOOK, TERMINATING));
    let mut guard = start_guard(bin, &dir, &imds, &asg, mode);
    let pid = guard.id();
    let mut seen = Cycle::default();
    let fail = |why: String, guard: &mut Child, mut seen: Cycle| {
        let _ = guard.kill();
        let _ = guard.wait();
        seen.failure = Some(format!("cycle {i} ({mode}, imds {fault}): {why}"));
        seen
    };
    let setup = || {
        asg.calls()
            .iter()
            .any(|c| c.action == "DescribeLifecycleHooks")
    };
    if !wait_for(Duration::from_secs(30), || {
        dir.join("ready").exists() && setup()
    }) {
        return fail(
            "the agent or the hooks never got ready".into(),
            &mut guard,
            seen,
        );
    }
    seen.fds[0] = open_fds(pid);
    if throttle {
        asg.set_faults(autoscaling::Faults {
            throttle: 3,
            ..Default::default()
        });
    }
    imds.set_faults(imds_fault(fault));
    std::thread::sleep(Duration::from_millis(500));
    seen.fds[1] = open_fds(pid);
    seen.rss_kib = rss_kib(pid);
    imds.set_faults(imds::Faults::default());
    asg.terminate(GROUP, INSTANCE);
    imds.set_lifecycle_state(Some("Terminated"));
    let mut status = None;
    wait_for(EXIT_WITHIN, || {
        status = guard.try_wait().ok().flatten();
        status.is_some()
    });
    let Some(status) = status else {
        return fail("the guard did not exit".into(), &mut guard, seen);
    };
    let left = processes_with(&marker);
    seen.leftovers = left.len();
    for pid in left {
        // SAFETY: kill(2) on a process this run started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let (want_code, want_result) = if mode == "ignore" {
        (137, "ABANDON")
    } else {
        (0, "CONTINUE")
    };
    let completions: Vec<_> = asg
        .completions()
        .into_iter()
        .filter(|c| c.by_call)
        .collect();
    let log = std::fs::read_to_string(dir.join("guard.log")).unwrap_or_default();
    if status.code() != Some(want_code) {
        seen.failure = Some(format!(
            "cycle {i} ({mode}, imds {fault}): exit {status:?}, not {want_code}\n{log}"
        ));
    } else if completions.len() != 1 || completions[0].result != want_result {
        seen.failure = Some(format!(
            "cycle {i} ({mode}, imds {fault}): completions {completions:?}, not one {want_result}\n{log}"
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    seen
}

fn flag(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(cycles: &[Cycle]) -> bool {
    println!(
        "| cycles | guard fds, agent up (min–max) | guard fds, after the IMDS fault (min–max) | guard RSS (KiB, max) | processes left | failures |"
    );
    println!("|---|---|---|---|---|---|");
    for (n, chunk) in cycles.chunks(100).enumerate() {
        let range = |k: usize| {
            let v = chunk
                .iter()
                .filter(|c| c.failure.is_none())
                .map(|c| c.fds[k]);
            format!("{}–{}", v.clone().min().unwrap_or(0), v.max().unwrap_or(0))
        };
        println!(
            "| {}–{} | {} | {} | {} | {} | {} |",
            n * 100 + 1,
            n * 100 + chunk.len(),
            range(0),
            range(1),
            chunk.iter().map(|c| c.rss_kib).max().unwrap_or(0),
            chunk.iter().map(|c| c.leftovers).sum::<usize>(),
            chunk.iter().filter(|c| c.failure.is_some()).count(),
        );
    }
    let failures: Vec<_> = cycles.iter().filter_map(|c| c.failure.as_ref()).collect();
    for failure in failures.iter().take(5) {
        eprintln!("\nFAILED {failure}");
    }
    failures.is_empty() && cycles.iter().all(|c| c.leftovers == 0)
}

/// The judge of the several-guards cycles on made-up cycles: `true` if it flags exactly the bad
/// ones.
fn self_check() -> bool {
    let mut sound = true;
    for (what, bad, flagged) in host::self_check() {
        let verdict = if flagged { "flagged" } else { "passed" };
        let ok = bad == flagged;
        sound &= ok;
        println!(
            "self-check: {what}: {verdict} ({})",
            if ok { "right" } else { "WRONG" }
        );
    }
    println!();
    sound
}

/// The several-guards cycles, `parallel` at a time, while the budget lasts.
fn host_cycles(
    n: usize,
    parallel: usize,
    bin: &Path,
    base: &Path,
    until: Instant,
) -> Vec<host::HostCycle> {
    let mut results = Vec::with_capacity(n);
    while results.len() < n && Instant::now() < until {
        let batch: Vec<usize> = (results.len()..n.min(results.len() + parallel)).collect();
        let handles: Vec<_> = batch
            .into_iter()
            .map(|i| {
                let (bin, base) = (bin.to_path_buf(), base.to_path_buf());
                let fault = host::Fault::ALL[i % host::Fault::ALL.len()];
                std::thread::spawn(move || host::cycle(i, fault, &bin, &base))
            })
            .collect();
        results.extend(handles.into_iter().map(|h| h.join().expect("a host cycle")));
    }
    results
}

fn main() {
    if !self_check() {
        std::process::exit(1);
    }
    let cycles = flag("--cycles", 300) as usize;
    let hosts = flag("--host-cycles", 30) as usize;
    let parallel = flag("--parallel", 3).max(1) as usize;
    let budget = Duration::from_secs(flag("--budget", 600));
    let bin = std::env::var_os("AGENT_GUARD_BIN")
        .map_or_else(|| root().join("target/debug/agent-guard"), PathBuf::from);
    let base = tempfile::Builder::new()
        .prefix("agent-guard-soak-")
        .tempdir()
        .expect("tempdir");
    let started = Instant::now();
    let mut results = Vec::with_capacity(cycles);
    while results.len() < cycles && started.elapsed() < budget {
        let batch: Vec<usize> = (results.len()..cycles.min(results.len() + parallel)).collect();
        let handles: Vec<_> = batch
            .into_iter()
            .map(|i| {
                let (bin, base) = (bin.clone(), base.path().to_path_buf());
                std::thread::spawn(move || cycle(i, &bin, &base))
            })
            .collect();
        results.extend(handles.into_iter().map(|h| h.join().expect("a cycle")));
    }
    println!(
        "{} cycles in {:.0} s ({} at a time; {} asked{}):\n",
        results.len(),
        started.elapsed().as_secs_f64(),
        parallel,
        cycles,
        if results.len() < cycles {
            ", the time budget ran out"
        } else {
            ""
        }
    );
    let single = report(&results);
    let host_started = Instant::now();
    let hosted = host_cycles(hosts, parallel, &bin, base.path(), started + budget);
    println!(
        "\n{} several-guards cycles in {:.0} s (two guards sharing --hooks-dir; {} asked{}):\n",
        hosted.len(),
        host_started.elapsed().as_secs_f64(),
        hosts,
        if hosted.len() < hosts {
            ", the time budget ran out"
        } else {
            ""
        }
    );
    let several = host::report(&hosted);
    if !(single && several) {
        std::process::exit(1);
    }
}
