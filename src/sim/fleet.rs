//! A fleet at once: N real guards, each on its own simulated instance (its own IMDS), against one
//! simulated group whose API rate is an account-wide token bucket; half of them (or as many as
//! asked) scaled in together with a deregistration delay. For `bench/fleet` and its CI test.
//!
//! Each guard signs with its own access key, so the simulator's call log says which instance
//! made each call. Everything runs on loopback, under one overall deadline; whatever is still
//! running at the end (guards, and agents a killed guard left behind) is stopped.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use super::autoscaling::{AutoScalingSim, Hook, RateLimit, TERMINATING};
use super::imds::ImdsSim;

const GROUP: &str = "fleet";
const HOOK: &str = "fleet-drain";

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The agent-guard binary.
    pub guard: PathBuf,
    /// Where each guard's log, socket and hooks directory go.
    pub dir: PathBuf,
    pub guards: usize,
    /// How many are scaled in (the first ones).
    pub scale_in: usize,
    pub rate: Option<RateLimit>,
    pub deregistration_delay: Duration,
    /// The hook's HeartbeatTimeout (the guards heartbeat every third of it).
    pub heartbeat_timeout: Duration,
    /// How long each agent takes to stop once told.
    pub drain: Duration,
    /// `--imds-poll`.
    pub poll: Duration,
    /// The whole run's bound: start, setup, scale-in and shutdown.
    pub within: Duration,
}

/// Why the fleet could not be run (as opposed to what it measured).
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("cannot start a simulator: {0}")]
    Simulator(#[source] std::io::Error),
    #[error("cannot prepare {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start guard {index}: {source}")]
    Spawn {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{ready} of {guards} guards were set up within the bound")]
    Setup { ready: usize, guards: usize },
}

/// One scaled-in instance, as measured.
#[derive(Debug, Clone)]
pub struct Scaled {
    pub instance: String,
    /// When its guard logged the agent's exit (the journal record's time).
    pub agent_exit: Option<SystemTime>,
    /// When its wait state began.
    pub wait_state: Option<SystemTime>,
    /// The successful completions by call: (when, result).
    pub completions: Vec<(SystemTime, String)>,
    /// Its guard's exit status (`None`: killed at the end).
    pub guard_exit: Option<i32>,
}

/// What the fleet did.
#[derive(Debug, Clone)]
pub struct Report {
    pub scaled: Vec<Scaled>,
    /// Calls by instance (setup included), and how many of those were throttled.
    pub calls: BTreeMap<String, (usize, usize)>,
    /// Each instance's calls in order, as `+12.345s Action outcome` from the scale-in.
    pub trace: BTreeMap<String, Vec<String>>,
    /// Every call, and every throttled one.
    pub total_calls: usize,
    pub throttled: usize,
    /// Instances whose hook ended by timeout (the default result), not by a call.
    pub timed_out: usize,
    /// From the first guard's start to all of them set up.
    pub setup: Duration,
    /// From the scale-in to the last scaled-in guard's exit.
    pub scale_in: Duration,
}

impl Report {
    /// Completed once, with CONTINUE, strictly after its own agent's exit.
    pub fn good(s: &Scaled) -> bool {
        matches!((s.completions.as_slice(), s.agent_exit), ([(at, result)], Some(exit)) if result == "CONTINUE" && *at > exit)
    }

    /// (calls, throttled) made by the scaled-in instances, per instance.
    pub fn per_scaled(&self) -> (f64, f64) {
        let n = self.scaled.len().max(1) as f64;
        let (calls, throttled) = self
            .scaled
            .iter()
            .filter_map(|s| self.calls.get(&s.instance))
            .fold((0, 0), |(c, t), (c1, t1)| (c + c1, t + t1));
        (calls as f64 / n, throttled as f64 / n)
    }

    /// The agent's exit → its completion, for every good instance, sorted.
    pub fn exit_to_completion(&self) -> Vec<Duration> {
        self.spans(|s| s.agent_exit)
    }

    /// The wait state's beginning → the completion, for every good instance, sorted.
    pub fn wait_to_completion(&self) -> Vec<Duration> {
        self.spans(|s| s.wait_state)
    }

    fn spans(&self, from: impl Fn(&Scaled) -> Option<SystemTime>) -> Vec<Duration> {
        let mut spans: Vec<Duration> = self
            .scaled
            .iter()
            .filter(|s| Report::good(s))
            .filter_map(|s| s.completions[0].0.duration_since(from(s)?).ok())
            .collect();
        spans.sort();
        spans
    }
}

/// The value at `q` (0–1) of sorted `values`.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let last = values.len().checked_sub(1)?;
    let rank = ((last as f64) * q).round() as usize;
    values.get(rank.min(last)).copied()
}

fn instance_id(i: usize) -> String {
    format!("i-0f1ee7{i:011x}")
}

fn access_key(i: usize) -> String {
    format!("AKIDFLEET{i:06}")
}

struct Member {
    imds: ImdsSim,
    guard: Option<Child>,
    log: PathBuf,
    status: Option<i32>,
}

/// Runs the fleet.
pub fn run(spec: &Spec) -> Result<Report, FleetError> {
    let deadline = Instant::now() + spec.within;
    let (origin, wall) = (Instant::now(), SystemTime::now());
    let asg = AutoScalingSim::start().map_err(FleetError::Simulator)?;
    asg.put_hook(
        GROUP,
        Hook::new(HOOK, TERMINATING).heartbeat_timeout(spec.heartbeat_timeout),
    );
    asg.set_deregistration_delay(GROUP, spec.deregistration_delay);
    let mut fleet = Vec::with_capacity(spec.guards);
    for i in 0..spec.guards {
        fleet.push(member(spec, &asg, i)?);
    }
    // Only the guards' own calls count against the bucket.
    asg.set_rate_limit(spec.rate);
    let started = Instant::now();
    for (i, m) in fleet.iter_mut().enumerate() {
        m.guard = Some(spawn(spec, &asg, m, i)?);
    }
    let ready = wait_all(&mut fleet, deadline, |m| {
        fs::read_to_string(&m.log).is_ok_and(|l| l.contains("\"event\":\"hooks_ready\""))
    });
    let setup = started.elapsed();
    if ready < spec.guards {
        stop_all(&mut fleet);
        return Err(FleetError::Setup {
            ready,
            guards: spec.guards,
        });
    }
    let scaled_at = Instant::now();
    for (i, m) in fleet.iter().enumerate().take(spec.scale_in) {
        asg.terminate(GROUP, &instance_id(i));
        m.imds.set_lifecycle_state(Some("Terminated"));
    }
    let scale_in = spec.scale_in.min(fleet.len());
    wait_all(&mut fleet[..scale_in], deadline, |m| m.status.is_some());
    let scaled_in = scaled_at.elapsed();
    stop_all(&mut fleet);
    Ok(measure(
        spec,
        &asg,
        &fleet,
        Timing {
            origin,
            wall,
            scaled_at,
            setup,
            scale_in: scaled_in,
        },
    ))
}

/// The moments a report is measured against.
struct Timing {
    /// One moment on both clocks: the simulator logs on the monotonic one.
    origin: Instant,
    wall: SystemTime,
    scaled_at: Instant,
    setup: Duration,
    scale_in: Duration,
}

/// What the fleet did, from the simulator's logs and the guards' journals.
fn measure(spec: &Spec, asg: &AutoScalingSim, fleet: &[Member], timing: Timing) -> Report {
    let at = |i: Instant| timing.wall + i.saturating_duration_since(timing.origin);
    let transitions = asg.transitions();
    let completions = asg.completions();
    let scaled = fleet
        .iter()
        .enumerate()
        .take(spec.scale_in)
        .map(|(i, m)| {
            let id = instance_id(i);
            Scaled {
                agent_exit: agent_exit(&m.log),
                wait_state: transitions
                    .iter()
                    .find(|t| t.instance == id && t.state == "Terminating:Wait")
                    .map(|t| at(t.at)),
                completions: completions
                    .iter()
                    .filter(|c| c.instance == id && c.by_call)
                    .map(|c| (at(c.at), c.result.clone()))
                    .collect(),
                guard_exit: m.status,
                instance: id,
            }
        })
        .collect();
    let keys: BTreeMap<String, String> = (0..spec.guards)
        .map(|i| (access_key(i), instance_id(i)))
        .collect();
    let mut calls: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut trace: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let all = asg.calls();
    for call in &all {
        let Some(id) = call.caller.as_ref().and_then(|k| keys.get(k)) else {
            continue;
        };
        let offset = if call.at >= timing.scaled_at {
            call.at.duration_since(timing.scaled_at).as_secs_f64()
        } else {
            -timing.scaled_at.duration_since(call.at).as_secs_f64()
        };
        trace.entry(id.clone()).or_default().push(format!(
            "{offset:+.3}s {} {}",
            call.action,
            call.error.as_deref().unwrap_or("ok")
        ));
        let entry = calls.entry(id.clone()).or_default();
        entry.0 += 1;
        if call.error.as_deref() == Some("Throttling") {
            entry.1 += 1;
        }
    }
    Report {
        scaled,
        calls,
        trace,
        total_calls: all.len(),
        throttled: all
            .iter()
            .filter(|c| c.error.as_deref() == Some("Throttling"))
            .count(),
        timed_out: completions.iter().filter(|c| !c.by_call).count(),
        setup: timing.setup,
        scale_in: timing.scale_in,
    }
}

/// One simulated instance: its IMDS (with the group in its tags, so no call finds it) and its
/// place in the group.
fn member(spec: &Spec, asg: &AutoScalingSim, i: usize) -> Result<Member, FleetError> {
    let imds = ImdsSim::start().map_err(FleetError::Simulator)?;
    let id = instance_id(i);
    imds.set_identity(&id, "us-east-1");
    imds.set_tag("aws:autoscaling:groupName", Some(GROUP));
    asg.add_instance(GROUP, &id, "InService");
    let dir = spec.dir.join(format!("g{i}"));
    fs::create_dir_all(&dir).map_err(|source| FleetError::Dir {
        path: dir.clone(),
        source,
    })?;
    Ok(Member {
        imds,
        guard: None,
        log: dir.join("guard.log"),
        status: None,
    })
}

fn spawn(spec: &Spec, asg: &AutoScalingSim, m: &Member, i: usize) -> Result<Child, FleetError> {
    let dir = spec.dir.join(format!("g{i}"));
    let log = fs::File::create(&m.log).map_err(|source| FleetError::Dir {
        path: m.log.clone(),
        source,
    })?;
    let mut cmd = Command::new(&spec.guard);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("AGENT_GUARD_") || k.starts_with("AWS_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    // The agent stops `drain` after SIGTERM; its `sleep` child dies of the group's SIGTERM.
    let agent = format!(
        "trap 'sleep {:.3}; exit 0' TERM; sleep 100000 & wait",
        spec.drain.as_secs_f64()
    );
    cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", access_key(i))
        .env("AWS_SECRET_ACCESS_KEY", "fleet")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .args(["--imds", "on", "--imds-endpoint", &m.imds.url()])
        .arg("--imds-poll")
        .arg(format!("{}ms", spec.poll.as_millis()))
        .args(["--terminate-hook", HOOK, "--name", &format!("g{i}")])
        .args(["--health-listen", "off", "--log-format", "json"])
        .arg("--hooks-dir")
        .arg(dir.join("hooks"))
        .arg("--socket")
        .arg(dir.join("g.sock"))
        .args(["--", "sh", "-c", &agent])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    cmd.spawn()
        .map_err(|source| FleetError::Spawn { index: i, source })
}

/// Polls until `done` holds for every member or the deadline passes; reaps exits meanwhile.
/// Returns how many are done.
fn wait_all(fleet: &mut [Member], deadline: Instant, done: impl Fn(&Member) -> bool) -> usize {
    loop {
        for m in fleet.iter_mut() {
            reap(m);
        }
        let count = fleet.iter().filter(|m| done(m)).count();
        if count == fleet.len() || Instant::now() >= deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn reap(m: &mut Member) {
    if let Some(child) = m.guard.as_mut()
        && let Ok(Some(status)) = child.try_wait()
    {
        m.status = Some(status.code().unwrap_or(-1));
        m.guard = None;
    }
}

/// SIGTERM to every guard still running (each stops its agent), then, after a bound, SIGKILL to
/// what is left and to the process groups of the agents they leave behind.
fn stop_all(fleet: &mut [Member]) {
    for m in fleet.iter() {
        if let Some(child) = &m.guard {
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
    }
    let bound = Instant::now() + Duration::from_secs(30);
    wait_all(fleet, bound, |m| m.guard.is_none());
    for m in fleet.iter_mut() {
        if let Some(mut child) = m.guard.take() {
            let agents = children(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            for pid in agents {
                // SAFETY: kill(2) on the process group of the agent this guard started.
                unsafe { libc::kill(-pid, libc::SIGKILL) };
            }
        }
    }
}

/// The children of `pid`, from /proc.
fn children(pid: i32) -> Vec<i32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.get(stat.rfind(')')? + 1..)?.to_string();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// When the guard logged its agent's exit (`agent_exited`), from its JSON log.
fn agent_exit(log: &Path) -> Option<SystemTime> {
    let text = fs::read_to_string(log).ok()?;
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"]["event"] == "agent_exited")
        .and_then(|v| humantime::parse_rfc3339_weak(v["time"].as_str()?).ok())
}
