//! `agent-guard drill`: rehearses a scale-in, a spot interruption, a rebalance recommendation, an
//! EC2 scheduled event or a plain SIGTERM against the user's own agent, on a laptop or in CI, with no AWS account, no
//! network and no root.
//!
//! The drill starts the simulated IMDS and Auto Scaling API on loopback and runs this very binary
//! as a real guard around the agent (the production code path, with the user's options), pointed
//! at them. It watches from outside ([`watch`]): the guard's typed journal records, its control
//! socket, its health endpoint and the simulators' call logs; [`verdict`] judges them and
//! [`report`] prints the timeline: would the agent have lost work?

mod report;
mod verdict;
mod watch;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use crate::cli::{DrillArgs, DrillEvent};
use crate::config::{
    self, Config, ConfigError, DeregistrationWait, Invocation, OnMaintenance, OnRebalance, Source,
    TargetGroups,
};
use crate::fmt::format_duration;
use crate::journal::Record;
use crate::machine::state::{PhaseName, ReadyOn};
use crate::model::lifecycle_state::LifecycleState;
use crate::sim::autoscaling::{AutoScalingSim, Hook, LAUNCHING, TERMINATING};
use crate::sim::elb::{ElbSim, TargetGroupSpec};
use crate::sim::imds::{ImdsSim, ScheduledEvent};

use report::{Context, Report};
use verdict::{HookCall, LoadBalancerBudget, Observation, Scenario};
use watch::Observations;

/// Exit statuses.
pub const PASS: u8 = 0;
pub const FAIL: u8 = 1;
pub const CANNOT_RUN: u8 = 125;

const GROUP: &str = "drill-group";
const INSTANCE: &str = "i-0123456789abcdef0";
const DEFAULT_HOOK: &str = "drill-hook";
/// How often the drilled guard polls the simulated IMDS, unless `--imds-poll` says otherwise.
const DRILL_POLL: Duration = Duration::from_millis(250);
/// How long after it is posted a scheduled event's drain is due (NotBefore minus the margin).
const MAINTENANCE_LEAD: Duration = Duration::from_secs(2);
/// The longest the drill waits for the agent to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Options the drill sets itself: the user's are replaced.
const OWNED: &[&str] = &[
    "imds",
    "imds-endpoint",
    "log-format",
    "asg-name",
    "log-level",
    "hooks-dir",
];

/// Why the drill could not run at all (exit 125), as opposed to a FAIL.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    #[error("no command: put the agent's command after `--`")]
    NoCommand,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("unexpected options")]
    UnexpectedOptions,
    #[error("cannot create {path}: {source}")]
    TempDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {which} simulator: {source}")]
    Simulator {
        which: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find this binary: {0}")]
    CurrentExe(#[source] std::io::Error),
    #[error("cannot start the guard: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the guard exited ({status}) before it started: {last}")]
    ExitedEarly { status: String, last: String },
    #[error("the guard's control socket did not appear within 20s")]
    NoSocket,
    #[error("the guard's lifecycle setup did not complete: {0}")]
    Setup(String),
}

/// Runs the drill; returns the exit status.
// Not inlined into `main`, whose stack frame every supervising guard keeps resident for life
// (see `spawn_made` in lib.rs).
#[inline(never)]
pub fn run(args: DrillArgs) -> u8 {
    match Drill::prepare(args).and_then(Drill::execute) {
        Ok(report) => {
            report.print();
            if report.pass() { PASS } else { FAIL }
        }
        Err(err) => {
            eprintln!("agent-guard drill: {err}");
            CANNOT_RUN
        }
    }
}

struct Drill {
    args: DrillArgs,
    config: Config,
    /// The user's options (without the ones the drill owns) and the command.
    options: Vec<OsString>,
    command: Vec<OsString>,
    given: Vec<String>,
    hook: String,
    dir: TempDir,
}

/// A directory removed when dropped: the drill leaves no file behind.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The port the instance is registered on in the simulated target group.
const TARGET_PORT: u16 = 8080;

/// The simulated world the guard runs in: the instance is a healthy target of one target group
/// of its group, whose deregistration delay is `--deregistration-delay`.
struct World {
    imds: ImdsSim,
    asg: AutoScalingSim,
    elb: ElbSim,
}

impl Drill {
    fn prepare(args: DrillArgs) -> Result<Drill, DrillError> {
        let split = args.guard_args.iter().position(|a| a == "--");
        let (options, command) = match split {
            Some(i) => (
                args.guard_args[..i].to_vec(),
                args.guard_args[i + 1..].to_vec(),
            ),
            None => return Err(DrillError::NoCommand),
        };
        if command.is_empty() {
            return Err(DrillError::NoCommand);
        }
        // The guard's own parser validates the options, as it will in the real run.
        let mut full = vec![
            OsString::from("agent-guard"),
            OsString::from("--check-config"),
        ];
        full.extend(options.iter().cloned());
        full.push("--".into());
        full.extend(command.iter().cloned());
        let Invocation::CheckConfig(config, settings) = config::load(full)? else {
            return Err(DrillError::UnexpectedOptions);
        };
        let given: Vec<String> = settings
            .iter()
            .filter(|(_, s)| matches!(s.map(|s| &s.source), Some(Source::Flag)))
            .map(|(long, _)| long.to_string())
            .collect();
        let options = strip_owned(&options);
        let hook = config
            .lifecycle
            .terminate_hook
            .clone()
            .unwrap_or_else(|| DEFAULT_HOOK.to_string());
        let dir = std::env::temp_dir().join(format!("agent-guard-drill-{}", std::process::id()));
        // 0700 whatever the umask: the guard refuses a socket directory others may write in.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&dir)
            .map_err(|source| DrillError::TempDir {
                path: dir.clone(),
                source,
            })?;
        Ok(Drill {
            args,
            config,
            options,
            command,
            given,
            hook,
            dir: TempDir(dir),
        })
    }

    fn given(&self, long: &str) -> bool {
        self.given.iter().any(|g| g == long)
    }

    fn socket(&self) -> PathBuf {
        if self.given("socket") {
            self.config.socket.clone()
        } else {
            self.dir.0.join("drill.sock")
        }
    }

    fn poll(&self) -> Duration {
        if self.given("imds-poll") {
            self.config.imds_poll
        } else {
            DRILL_POLL
        }
    }

    /// A report-only rebalance or scheduled event: the agent must keep running.
    fn report_only(&self) -> bool {
        match self.args.event {
            DrillEvent::Rebalance => self.config.on_rebalance == OnRebalance::Ignore,
            DrillEvent::Maintenance => self.config.on_maintenance == OnMaintenance::Report,
            _ => false,
        }
    }

    fn world(&self) -> Result<World, DrillError> {
        let simulator = |which| move |source| DrillError::Simulator { which, source };
        let imds = ImdsSim::start().map_err(simulator("IMDS"))?;
        let asg = AutoScalingSim::start().map_err(simulator("Auto Scaling"))?;
        let elb = ElbSim::start().map_err(simulator("Elastic Load Balancing"))?;
        asg.add_instance(GROUP, INSTANCE, "InService");
        let target_group = elb.add_target_group(
            TargetGroupSpec::new("drill", TARGET_PORT)
                .deregistration_delay(self.args.deregistration_delay),
        );
        elb.add_healthy_target(&target_group, INSTANCE, TARGET_PORT);
        asg.set_target_groups(GROUP, &[target_group]);
        asg.set_deregistration_delay(GROUP, self.args.deregistration_delay);
        asg.put_hook(
            GROUP,
            Hook::new(&self.hook, TERMINATING).heartbeat_timeout(self.args.heartbeat_timeout),
        );
        if let Some(launch) = &self.config.lifecycle.launch_hook {
            asg.put_hook(
                GROUP,
                Hook::new(launch, LAUNCHING).heartbeat_timeout(self.args.heartbeat_timeout),
            );
            asg.launch(GROUP, INSTANCE);
        }
        // As on AWS: when the group starts replacing the instance, IMDS says Terminated.
        let set_state = imds.lifecycle_setter();
        asg.on_target_state(move |_, state| set_state(Some(state)));
        Ok(World { imds, asg, elb })
    }

    /// This binary as a guard, with the user's options, pointed at the simulators.
    fn guard_command(&self, world: &World) -> Result<Command, DrillError> {
        let mut cmd = Command::new(std::env::current_exe().map_err(DrillError::CurrentExe)?);
        cmd.args(&self.options)
            .args(["--imds", "on", "--imds-endpoint", &world.imds.url()])
            .args(["--log-format", "json", "--log-level", "info"])
            .args(["--asg-name", GROUP])
            // The rehearsed instance's own hooks directory, never the host's.
            .arg("--hooks-dir")
            .arg(self.dir.0.join("hooks"));
        if !self.given("imds-poll") {
            cmd.arg("--imds-poll")
                .arg(format!("{}ms", DRILL_POLL.as_millis()));
        }
        if !self.given("socket") {
            cmd.arg("--socket").arg(self.socket());
        }
        if !self.given("health-listen") {
            cmd.args(["--health-listen", "127.0.0.1:0"]);
        }
        if !self.given("terminate-hook") {
            cmd.args(["--terminate-hook", &self.hook]);
        }
        cmd.arg("--").args(&self.command);
        // The simulated Auto Scaling API, and nothing of the caller's real AWS identity.
        for var in [
            "AWS_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
            "AWS_DEFAULT_REGION",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", world.asg.url())
            .env(
                "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2",
                world.elb.url(),
            )
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDDRILLDRILLDRILL")
            .env("AWS_SECRET_ACCESS_KEY", "drill")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    fn execute(self) -> Result<Report, DrillError> {
        let world = self.world()?;
        // One moment on both clocks: the simulator logs calls on the monotonic one.
        let (origin, start) = (std::time::Instant::now(), SystemTime::now());
        let mut guard = self
            .guard_command(&world)?
            .spawn()
            .map_err(DrillError::Spawn)?;
        let observations = Observations::default();
        watch::collect_logs(&mut guard, self.args.verbose, &observations);
        let rehearsed = self.rehearse(&world, &mut guard, &observations);
        // Whatever happened, nothing is left running.
        let status = watch::finish(&mut guard, &self.config, self.args.deregistration_delay);
        observations.push(SystemTime::now(), Observation::GuardExit(status));
        rehearsed?;
        for call in world.asg.calls() {
            let at = start + call.at.saturating_duration_since(origin);
            observations.push(at, Observation::HookCall(hook_call(call)));
        }
        for entered in world.asg.transitions() {
            let at = start + entered.at.saturating_duration_since(origin);
            observations.push(
                at,
                Observation::InstanceState(LifecycleState::parse(&entered.state)),
            );
        }
        for call in world.elb.calls() {
            let at = start + call.at.saturating_duration_since(origin);
            let (action, status) = (call.action, call.status);
            observations.push(at, Observation::TargetCall { action, status });
        }
        // The target's own state changes; its first `healthy` is the drill's set-up.
        for entered in world.elb.transitions() {
            if entered.state != "healthy" {
                let at = start + entered.at.saturating_duration_since(origin);
                observations.push(at, Observation::TargetState(entered.state));
            }
        }
        let observed = observations.sorted();
        let scenario = Scenario {
            event: self.args.event,
            terminate_hook: self.hook.clone(),
            stop_signal: self.config.stop_signal,
            report_only: self.report_only(),
            spot_margin: self.config.spot_margin,
            on_maintenance: self.config.on_maintenance,
        };
        let mut verdict = verdict::verdict(&scenario, &observed);
        let budget = LoadBalancerBudget {
            spot_margin: self.config.spot_margin,
            stop_timeout: self.config.stop_timeout,
            drain_timeout: self.config.drain_timeout,
            wait_cap: match self.config.load_balancer.wait {
                DeregistrationWait::Auto => None,
                DeregistrationWait::AtMost(cap) => Some(cap),
            },
        };
        let lb = verdict::load_balancer(&budget, &observed);
        verdict.reasons.extend(lb.reasons);
        verdict.notes.extend(lb.notes);
        Ok(Report::new(self.context(), verdict, &observed, start))
    }

    /// Waits for ready, triggers the event, and watches what follows; the guard then ends by
    /// itself (or is stopped, when the rehearsal cannot go on).
    fn rehearse(
        &self,
        world: &World,
        guard: &mut Child,
        observations: &Observations,
    ) -> Result<(), DrillError> {
        let socket = self.socket();
        wait_for_socket(&socket, guard, observations)?;
        watch::subscribe(&socket, observations);
        let ready_within = self.config.ready_timeout.min(READY_WITHIN);
        let ready = |o: &Observation| *o == Observation::Phase(PhaseName::Ready);
        watch::wait(ready_within, || {
            observations.any(ready) || guard.try_wait().ok().flatten().is_some()
        });
        if !observations.any(ready) {
            observations.push(
                SystemTime::now(),
                Observation::NeverReady {
                    waited: ready_within,
                },
            );
            // The rehearsal cannot go on: stop the guard now, as an operator would.
            watch::signal(guard, libc::SIGTERM);
            return Ok(());
        }
        self.wait_for_setup(guard, observations)?;
        self.wait_for_target_groups(world);
        std::thread::sleep(self.args.after);
        let health = watch::health_addr(&socket);
        self.trigger(world, guard, observations);
        if self.report_only() {
            // Reported only: the agent must keep running. Give the guard a few polls to show it.
            std::thread::sleep(self.poll() * 4 + Duration::from_millis(500));
            let kept = guard.try_wait().ok().flatten().is_none()
                && observations.last_phase() == Some(PhaseName::Ready);
            observations.push(SystemTime::now(), Observation::KeptRunning(kept));
            // The rehearsal is over.
            watch::signal(guard, libc::SIGTERM);
        } else if let Some(addr) = health {
            watch::watch_readiness(&addr, guard, observations);
        }
        Ok(())
    }

    /// The guard's lifecycle setup (group, hook) is done before the event, as on an instance
    /// that has been up a while.
    fn wait_for_setup(&self, guard: &Child, observations: &Observations) -> Result<(), DrillError> {
        let settled = |r: &Record| matches!(r, Record::HooksReady { .. } | Record::HooksOff { .. });
        let setup = watch::wait(Duration::from_secs(30), || {
            observations.record(settled).is_some()
        });
        let failed = observations.record(|r| matches!(r, Record::HooksOff { .. }));
        if setup && failed.is_none() {
            return Ok(());
        }
        // The rehearsal cannot go on.
        watch::signal(guard, libc::SIGTERM);
        Err(DrillError::Setup(match failed {
            Some(Record::HooksOff { error }) => error,
            _ => "no answer within 30s".to_string(),
        }))
    }

    /// The guard has read its target groups (the deregistration delay is its last call of the
    /// set-up), as on an instance that has been up a while; not waited for when it reads none.
    fn wait_for_target_groups(&self, world: &World) {
        if self.config.load_balancer.target_groups == TargetGroups::Off {
            return;
        }
        watch::wait(Duration::from_secs(30), || {
            let calls = world.elb.calls();
            calls
                .iter()
                .any(|c| c.action == "DescribeTargetGroupAttributes")
        });
    }

    /// Posts the notice (or sends the signal) and records when.
    fn trigger(&self, world: &World, guard: &Child, observations: &Observations) {
        let notice_at = SystemTime::now();
        observations.push(notice_at, Observation::NoticePosted);
        match self.args.event {
            DrillEvent::ScaleIn => {
                world.asg.terminate(GROUP, INSTANCE);
                world.imds.set_lifecycle_state(Some("Terminated"));
            }
            DrillEvent::Spot => {
                // Capacity rebalancing holds the instance in Terminating:Wait; EC2 posts the notice.
                world.asg.terminate(GROUP, INSTANCE);
                let time =
                    humantime::format_rfc3339_seconds(notice_at + self.args.deadline).to_string();
                world.imds.post_spot_interruption("terminate", &time);
                if let Ok(deadline) = humantime::parse_rfc3339(&time) {
                    observations.push(notice_at, Observation::SpotDeadline(deadline));
                }
            }
            DrillEvent::Rebalance => {
                let time = humantime::format_rfc3339_seconds(notice_at).to_string();
                world
                    .imds
                    .set_rebalance(Some(format!("{{\"noticeTime\": \"{time}\"}}")));
            }
            DrillEvent::Sigterm => watch::signal(guard, libc::SIGTERM),
            DrillEvent::Maintenance => {
                // Due soon rather than days ahead, as a rehearsal must be.
                let margin = self.config.maintenance_margin;
                let not_before = whole_seconds_after(notice_at + margin + MAINTENANCE_LEAD);
                let event = ScheduledEvent::active(
                    "system-reboot",
                    "instance-event-0d1111d1111d",
                    not_before,
                );
                world.imds.set_scheduled_events(&[event]);
                let drain_from = not_before.checked_sub(margin).unwrap_or(notice_at);
                let window = Observation::MaintenanceWindow {
                    drain_from,
                    not_before,
                };
                observations.push(notice_at, window);
            }
        }
    }

    /// The words of the report.
    fn context(&self) -> Context {
        let summary = match self.args.event {
            DrillEvent::Rebalance if self.report_only() => {
                "the rebalance recommendation was reported and the agent kept running (--on-rebalance ignore)"
            }
            DrillEvent::ScaleIn | DrillEvent::Spot => {
                "the agent stopped cleanly before the deadline and the hook was completed with CONTINUE: no work lost"
            }
            DrillEvent::Maintenance => match self.config.on_maintenance {
                OnMaintenance::Replace => {
                    "the instance was marked Unhealthy, the agent stopped cleanly on the scale-in that followed, and the hook was completed with CONTINUE: no work lost"
                }
                OnMaintenance::Drain => {
                    "the agent drained at NotBefore minus --maintenance-margin and stopped cleanly before NotBefore: no work lost"
                }
                OnMaintenance::Report => {
                    "the scheduled event was reported and the agent kept running (--on-maintenance report)"
                }
            },
            _ => "the agent stopped cleanly within its timeouts: no work lost",
        };
        Context {
            event: self.args.event,
            command: self
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            ready_on: match self.config.ready_on {
                ReadyOn::Start => "start".to_string(),
                ReadyOn::Notify => "notify".to_string(),
                ReadyOn::Health => "health".to_string(),
                ReadyOn::Warmup(d) => format_duration(d),
            },
            notice: self.notice_text(),
            summary: summary.to_string(),
            json: self.args.json,
        }
    }

    fn notice_text(&self) -> String {
        match self.args.event {
            DrillEvent::ScaleIn if !self.args.deregistration_delay.is_zero() => format!(
                "IMDS target-lifecycle-state = Terminated; the group deregisters the instance for {}, then waits in Terminating:Wait",
                format_duration(self.args.deregistration_delay)
            ),
            DrillEvent::ScaleIn => {
                "IMDS target-lifecycle-state = Terminated; the group waits in Terminating:Wait"
                    .to_string()
            }
            DrillEvent::Spot => format!(
                "IMDS spot/instance-action: terminate in {} (--spot-margin {})",
                format_duration(self.args.deadline),
                format_duration(self.config.spot_margin)
            ),
            DrillEvent::Rebalance => "IMDS events/recommendations/rebalance".to_string(),
            DrillEvent::Sigterm => {
                "SIGTERM to the guard, as systemd, ECS or Kubernetes would send".to_string()
            }
            DrillEvent::Maintenance => format!(
                "IMDS events/maintenance/scheduled: system-reboot, NotBefore in {} (--on-maintenance {}, --maintenance-margin {})",
                format_duration(self.config.maintenance_margin + MAINTENANCE_LEAD),
                self.config.on_maintenance.as_str(),
                format_duration(self.config.maintenance_margin)
            ),
        }
    }
}

/// `t` rounded up to a whole second, as EC2 writes event times.
fn whole_seconds_after(t: SystemTime) -> SystemTime {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + u64::from(since.subsec_nanos() > 0);
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// Waits for the guard's control socket; the guard exiting first is its own failure to start.
fn wait_for_socket(
    socket: &Path,
    guard: &mut Child,
    observations: &Observations,
) -> Result<(), DrillError> {
    let start = std::time::Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = guard.try_wait() {
            return Err(DrillError::ExitedEarly {
                status: status
                    .code()
                    .map_or("a signal".to_string(), |c| c.to_string()),
                last: observations.last_message(),
            });
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(DrillError::NoSocket);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn hook_call(call: crate::sim::autoscaling::Call) -> HookCall {
    HookCall {
        hook: call
            .params
            .get("LifecycleHookName")
            .cloned()
            .unwrap_or_default(),
        result: call.params.get("LifecycleActionResult").cloned(),
        action: call.action,
        status: call.status,
        error: call.error,
    }
}

/// Removes the options the drill sets itself from the user's.
fn strip_owned(options: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for opt in options {
        if skip_value {
            skip_value = false;
            continue;
        }
        let text = opt.to_string_lossy();
        let owned = OWNED
            .iter()
            .find(|o| text == format!("--{o}") || text.starts_with(&format!("--{o}=")));
        match owned {
            Some(o) => skip_value = text == format!("--{o}"),
            None => out.push(opt.clone()),
        }
    }
    out
}
