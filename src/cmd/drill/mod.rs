//! `agent-guard drill`: rehearses a scale-in, a spot interruption, a rebalance recommendation or
//! a plain SIGTERM against the user's own agent, on a laptop or in CI, with no AWS account, no
//! network and no root.
//!
//! The drill starts the simulated IMDS and Auto Scaling API on loopback and runs this very binary
//! as a real guard around the agent (the production code path, with the user's options), pointed
//! at them. It watches from outside: the control socket (phases), the guard's JSON log lines, the
//! health endpoint (readiness) and the simulators' call logs (heartbeats, the hook's completion);
//! then prints the timeline and a verdict: would the agent have lost work?

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::aws::lifecycle::result_for_code;
use crate::cli::{DrillArgs, DrillEvent};
use crate::config::{self, Config, Invocation, Source};
use crate::config::{HookResult, OnRebalance};
use crate::fmt::format_duration;
use crate::sim::autoscaling::{AutoScalingSim, Hook, LAUNCHING, TERMINATING};
use crate::sim::imds::ImdsSim;

/// Exit statuses.
pub const PASS: u8 = 0;
pub const FAIL: u8 = 1;
pub const CANNOT_RUN: u8 = 125;

const GROUP: &str = "drill-group";
const INSTANCE: &str = "i-0123456789abcdef0";
const DEFAULT_HOOK: &str = "drill-hook";
/// How often the drilled guard polls the simulated IMDS, unless `--imds-poll` says otherwise.
const DRILL_POLL: Duration = Duration::from_millis(250);
/// The longest the drill waits for the agent to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);
/// Options the drill sets itself: the user's are replaced.
const OWNED: &[&str] = &[
    "imds",
    "imds-endpoint",
    "log-format",
    "asg-name",
    "log-level",
];

/// Runs the drill; returns the exit status.
pub fn run(args: DrillArgs) -> u8 {
    match Drill::prepare(args) {
        Ok(drill) => match drill.execute() {
            Ok(report) => {
                report.print();
                if report.pass { PASS } else { FAIL }
            }
            Err(err) => {
                eprintln!("agent-guard drill: {err}");
                CANNOT_RUN
            }
        },
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

impl Drill {
    fn prepare(args: DrillArgs) -> Result<Drill, String> {
        let split = args.guard_args.iter().position(|a| a == "--");
        let (options, command) = match split {
            Some(i) => (
                args.guard_args[..i].to_vec(),
                args.guard_args[i + 1..].to_vec(),
            ),
            None => return Err("no command: put the agent's command after `--`".to_string()),
        };
        if command.is_empty() {
            return Err("no command: put the agent's command after `--`".to_string());
        }
        // The guard's own parser validates the options, as it will in the real run.
        let mut full = vec![
            OsString::from("agent-guard"),
            OsString::from("--check-config"),
        ];
        full.extend(options.iter().cloned());
        full.push("--".into());
        full.extend(command.iter().cloned());
        let (config, settings) = match config::load(full).map_err(|e| e.to_string())? {
            Invocation::CheckConfig(config, settings) => (config, settings),
            _ => return Err("unexpected options".to_string()),
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
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
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

    fn execute(self) -> Result<Report, String> {
        let imds = ImdsSim::start().map_err(|e| format!("cannot start the IMDS simulator: {e}"))?;
        let asg = AutoScalingSim::start()
            .map_err(|e| format!("cannot start the Auto Scaling simulator: {e}"))?;
        asg.add_instance(GROUP, INSTANCE, "InService");
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
        let socket = if self.given("socket") {
            self.config.socket.clone()
        } else {
            self.dir.0.join("drill.sock")
        };
        let mut cmd = Command::new(
            std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?,
        );
        cmd.args(&self.options)
            .args([
                "--imds",
                "on",
                "--imds-endpoint",
                &imds.url(),
                "--log-format",
                "json",
                "--log-level",
                "info",
            ])
            .args(["--asg-name", GROUP]);
        if !self.given("imds-poll") {
            cmd.arg("--imds-poll")
                .arg(format!("{}ms", DRILL_POLL.as_millis()));
        }
        if !self.given("socket") {
            cmd.arg("--socket").arg(&socket);
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
            "AWS_DEFAULT_REGION",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "AKIDDRILLDRILLDRILL")
            .env("AWS_SECRET_ACCESS_KEY", "drill")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        let reference = (Instant::now(), SystemTime::now());
        let mut guard = cmd
            .spawn()
            .map_err(|e| format!("cannot start the guard: {e}"))?;
        let logs = collect_logs(&mut guard, self.args.verbose);
        let phases = Arc::new(Mutex::new(Vec::<(SystemTime, String)>::new()));
        let result = self.rehearse(&imds, &asg, &mut guard, &socket, &logs, &phases);
        // Whatever happened, nothing is left running.
        let status = finish(&mut guard, &self.config);
        let exit_at = SystemTime::now();
        let (notice_at, extra) = result?;
        let logs = logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let phases = phases.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(self.report(Observed {
            notice_at,
            logs,
            phases,
            calls: asg.calls(),
            reference,
            status,
            exit_at,
            extra,
        }))
    }

    /// Waits for ready, triggers the event, and waits for the guard to finish.
    fn rehearse(
        &self,
        imds: &ImdsSim,
        asg: &AutoScalingSim,
        guard: &mut Child,
        socket: &Path,
        logs: &Arc<Mutex<Vec<LogLine>>>,
        phases: &Arc<Mutex<Vec<(SystemTime, String)>>>,
    ) -> Result<(Option<SystemTime>, Extra), String> {
        let mut extra = Extra::default();
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = guard.try_wait().map_err(|e| e.to_string())? {
                let last = logs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last()
                    .map(|l| l.message.clone());
                return Err(format!(
                    "the guard exited ({}) before it started: {}",
                    status
                        .code()
                        .map_or("a signal".to_string(), |c| c.to_string()),
                    last.unwrap_or_default()
                ));
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err("the guard's control socket did not appear within 20s".to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        subscribe(socket, phases.clone());
        let ready_within = self.config.ready_timeout.min(READY_WITHIN);
        let ready = wait(ready_within, || {
            phases
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|(_, p)| p == "ready")
                || guard.try_wait().ok().flatten().is_some()
        });
        let is_ready = phases
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|(_, p)| p == "ready");
        if !ready || !is_ready {
            extra.never_ready = Some(ready_within);
            // The rehearsal cannot go on: stop the guard now, as an operator would.
            // SAFETY: kill(2) on our own child.
            unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
            return Ok((None, extra));
        }
        // The guard's lifecycle setup (group, hook) is done before the event, as on an instance
        // that has been up a while.
        let setup = wait(Duration::from_secs(30), || {
            logs.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|l| {
                    l.message.contains("lifecycle hooks ready")
                        || l.message.contains("lifecycle hooks are off")
                })
        });
        let failed = logs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|l| l.message.contains("lifecycle hooks are off"))
            .map(|l| l.field("error"));
        if !setup || failed.is_some() {
            // SAFETY: kill(2) on our own child: the rehearsal cannot go on.
            unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
            return Err(format!(
                "the guard's lifecycle setup did not complete: {}",
                failed.unwrap_or_else(|| "no answer within 30s".to_string())
            ));
        }
        std::thread::sleep(self.args.after);
        let health = health_addr(socket);
        let notice_at = SystemTime::now();
        match self.args.event {
            DrillEvent::ScaleIn => {
                asg.terminate(GROUP, INSTANCE);
                imds.set_lifecycle_state(Some("Terminated"));
            }
            DrillEvent::Spot => {
                // Capacity rebalancing holds the instance in Terminating:Wait; EC2 posts the notice.
                asg.terminate(GROUP, INSTANCE);
                let time =
                    humantime::format_rfc3339_seconds(notice_at + self.args.deadline).to_string();
                imds.post_spot_interruption("terminate", &time);
                extra.spot_deadline = humantime::parse_rfc3339(&time).ok();
            }
            DrillEvent::Rebalance => {
                let time = humantime::format_rfc3339_seconds(notice_at).to_string();
                imds.set_rebalance(Some(format!("{{\"noticeTime\": \"{time}\"}}")));
            }
            DrillEvent::Sigterm => {
                // SAFETY: kill(2) on our own child.
                unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
            }
        }
        let reported_only = self.args.event == DrillEvent::Rebalance
            && self.config.on_rebalance == OnRebalance::Ignore;
        if let (Some(addr), false) = (health, reported_only) {
            extra.not_ready_at = watch_readiness(&addr, guard);
        }
        if reported_only {
            // Reported only: the agent must keep running. Give the guard a few polls to show it.
            let poll = if self.given("imds-poll") {
                self.config.imds_poll
            } else {
                DRILL_POLL
            };
            std::thread::sleep(poll * 4 + Duration::from_millis(500));
            extra.kept_running = guard.try_wait().ok().flatten().is_none()
                && phases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last()
                    .is_some_and(|(_, p)| p == "ready");
            // SAFETY: kill(2) on our own child: the rehearsal is over.
            unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
        }
        Ok((Some(notice_at), extra))
    }

    fn report(&self, o: Observed) -> Report {
        let mut timeline: Vec<Entry> = Vec::new();
        let base = o.notice_at.unwrap_or(o.reference.1);
        let offset = |t: SystemTime| -> f64 {
            match t.duration_since(base) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            }
        };
        let at_instant = |i: Instant| o.reference.1 + i.saturating_duration_since(o.reference.0);
        let mut push = |t: SystemTime, what: &str, detail: String| {
            timeline.push(Entry {
                offset: offset(t),
                what: what.to_string(),
                detail,
            });
        };
        if let Some((t, _)) = o.phases.iter().find(|(_, p)| p == "ready") {
            push(
                *t,
                "agent ready",
                format!("--ready-on {}", ready_on_text(&self.config)),
            );
        }
        if let Some(t) = o.notice_at {
            push(t, "notice posted", self.notice_text());
        }
        let find = |needle: &str| o.logs.iter().find(|l| l.message.contains(needle));
        let seen = match self.args.event {
            DrillEvent::ScaleIn => find("target lifecycle state is Terminated"),
            DrillEvent::Spot => find("spot interruption notice"),
            DrillEvent::Rebalance => find("rebalance recommendation"),
            DrillEvent::Sigterm => find("received a stop signal"),
        };
        if let Some(l) = seen {
            push(l.time, "notice seen by the guard", l.message.clone());
        }
        // /readyz as polled, else the moment the phase left `ready` (one watch drives both).
        let left_ready = o.notice_at.and_then(|_| {
            let ready_at = o.phases.iter().position(|(_, p)| p == "ready")?;
            o.phases[ready_at..]
                .iter()
                .find(|(_, p)| p != "ready")
                .map(|(t, _)| *t)
        });
        // Observations of one moment; the earliest is the closest (the poller samples every
        // 10 ms, the phase event and the log line follow the change).
        // The guard logs the transition before it publishes the phase (readiness) and before it
        // tells the agent: from outside, that line is the truest time of the 503.
        let transition = o.notice_at.and_then(|_| {
            o.logs
                .iter()
                .find(|l| l.message == "draining" || l.message == "stopping the agent")
                .map(|l| l.time)
        });
        let not_ready = [o.extra.not_ready_at, left_ready, transition]
            .into_iter()
            .flatten()
            .min();
        if let Some(t) = not_ready {
            push(
                t,
                "readiness 503",
                "/readyz answers 503: the load balancer stops sending".to_string(),
            );
        }
        let told = find("told the agent to drain");
        let stop = find("sent the stop signal");
        match (told, stop) {
            (Some(l), _) => push(l.time, "agent told to drain", l.field("via")),
            (None, Some(l)) if o.notice_at.is_some() => push(
                l.time,
                "agent told to drain",
                "by the stop signal itself: nobody subscribed and no --drain-signal".to_string(),
            ),
            _ => {}
        }
        if let Some(l) = find("the agent says it is drained") {
            push(
                l.time,
                "agent drained",
                "it said so (drained / X_DRAINED=1)".to_string(),
            );
        }
        if let Some(l) = stop {
            push(
                l.time,
                "stop signal",
                format!("{} to the agent's process group", l.field("signal")),
            );
        }
        let killed = find("sent SIGKILL");
        if let Some(l) = killed {
            push(l.time, "SIGKILL", "the grace period ran out".to_string());
        }
        let exited = o.logs.iter().find(|l| {
            l.message.starts_with("agent exited") || l.message.starts_with("agent killed")
        });
        if let Some(l) = exited {
            push(
                l.time,
                "agent exit",
                l.message.trim_start_matches("agent ").to_string(),
            );
        }
        for c in o
            .calls
            .iter()
            .filter(|c| c.action == "RecordLifecycleActionHeartbeat")
        {
            push(at_instant(c.at), "heartbeat", outcome(c.status, &c.error));
        }
        let completions: Vec<_> = o
            .calls
            .iter()
            .filter(|c| c.action == "CompleteLifecycleAction")
            .collect();
        for c in &completions {
            let result = c
                .params
                .get("LifecycleActionResult")
                .cloned()
                .unwrap_or_default();
            push(
                at_instant(c.at),
                "lifecycle action",
                format!(
                    "{} {result}: {}",
                    c.params
                        .get("LifecycleHookName")
                        .cloned()
                        .unwrap_or_default(),
                    outcome(c.status, &c.error)
                ),
            );
        }
        push(
            o.exit_at,
            "guard exit",
            o.status
                .map_or("killed by the drill".to_string(), |c| format!("status {c}")),
        );
        timeline.sort_by(|a, b| a.offset.total_cmp(&b.offset));

        // The verdict.
        let mut reasons = Vec::new();
        let stop_signal = self.config.stop_signal;
        if let Some(within) = o.extra.never_ready {
            reasons.push(format!(
                "the agent never became ready (waited {})",
                format_duration(within)
            ));
        } else {
            let kept = self.args.event == DrillEvent::Rebalance
                && self.config.on_rebalance == OnRebalance::Ignore;
            if kept && !o.extra.kept_running {
                reasons.push("the agent did not keep running through a rebalance recommendation that only reports".to_string());
            }
            if let (Some(k), Some(s)) = (killed, stop) {
                let after = k.time.duration_since(s.time).unwrap_or_default();
                reasons.push(format!(
                    "the agent ignored {stop_signal} and was killed after {}",
                    format_duration(Duration::from_millis(after.as_millis() as u64))
                ));
            }
            for cut in o.logs.iter().filter(|l| {
                l.message
                    .contains("cut short by the spot interruption deadline")
            }) {
                let option = cut
                    .message
                    .split_whitespace()
                    .next()
                    .unwrap_or("a timeout")
                    .to_string();
                reasons.push(format!(
                    "the spot deadline left {} for a {} {}",
                    cut.field("given"),
                    cut.field("configured"),
                    option.trim_start_matches("--").replace('-', " ")
                ));
            }
            if !kept {
                let clean = o.status.is_some_and(|code| {
                    killed.is_none() && result_for_code(code, stop_signal) == HookResult::Continue
                });
                if !clean && killed.is_none() {
                    match o.status {
                        Some(code) => reasons.push(format!(
                            "the agent did not stop cleanly: {}",
                            exit_text(code)
                        )),
                        None => reasons.push(
                            "the guard did not finish in time and was killed by the drill"
                                .to_string(),
                        ),
                    }
                }
                if let (Some(deadline), Some(l)) = (o.extra.spot_deadline, exited) {
                    let kill_by = deadline - self.config.spot_margin;
                    if l.time > kill_by {
                        reasons.push(format!(
                            "the agent was still running {} past the spot deadline minus --spot-margin",
                            format_duration(Duration::from_millis(l.time.duration_since(kill_by).unwrap_or_default().as_millis() as u64))
                        ));
                    }
                }
                if matches!(self.args.event, DrillEvent::ScaleIn | DrillEvent::Spot) {
                    let done = completions.iter().find(|c| c.status == 200);
                    match done.and_then(|c| c.params.get("LifecycleActionResult")) {
                        Some(r) if r == "CONTINUE" => {}
                        Some(r) => reasons.push(format!(
                            "the lifecycle hook was completed with {r}, not CONTINUE"
                        )),
                        None => reasons.push("the lifecycle hook was not completed".to_string()),
                    }
                }
            }
        }
        let summary = if reasons.is_empty() {
            match self.args.event {
                DrillEvent::Rebalance if self.config.on_rebalance == OnRebalance::Ignore => {
                    "the rebalance recommendation was reported and the agent kept running (--on-rebalance ignore)".to_string()
                }
                DrillEvent::ScaleIn | DrillEvent::Spot => {
                    "the agent stopped cleanly before the deadline and the hook was completed with CONTINUE: no work lost".to_string()
                }
                _ => "the agent stopped cleanly within its timeouts: no work lost".to_string(),
            }
        } else {
            String::new()
        };
        Report {
            event: self.args.event,
            command: self
                .command
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            pass: reasons.is_empty(),
            reasons,
            summary,
            timeline,
            status: o.status,
            json: self.args.json,
        }
    }

    fn notice_text(&self) -> String {
        match self.args.event {
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
        }
    }
}

fn ready_on_text(config: &Config) -> String {
    match config.ready_on {
        crate::machine::state::ReadyOn::Start => "start".to_string(),
        crate::machine::state::ReadyOn::Notify => "notify".to_string(),
        crate::machine::state::ReadyOn::Health => "health".to_string(),
        crate::machine::state::ReadyOn::Warmup(d) => format_duration(d),
    }
}

fn exit_text(code: u8) -> String {
    if code > 128 {
        match crate::process::sig::Sig::from_raw(i32::from(code) - 128) {
            Some(sig) => format!("killed by {sig} (status {code})"),
            None => format!("status {code}"),
        }
    } else {
        format!("exited with code {code}")
    }
}

fn outcome(status: u16, error: &Option<String>) -> String {
    match error {
        Some(code) => format!("{code} ({status})"),
        None => format!("ok ({status})"),
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

/// A guard log line.
#[derive(Debug, Clone)]
struct LogLine {
    time: SystemTime,
    message: String,
    fields: Value,
}

impl LogLine {
    fn field(&self, name: &str) -> String {
        match self.fields.get(name) {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        }
    }
}

/// Reads the guard's JSON log lines as they come.
fn collect_logs(guard: &mut Child, verbose: bool) -> Arc<Mutex<Vec<LogLine>>> {
    let logs = Arc::new(Mutex::new(Vec::new()));
    if let Some(stderr) = guard.stderr.take() {
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if verbose {
                    eprintln!("{line}");
                }
                let Ok(fields) = serde_json::from_str::<Value>(&line) else {
                    // Not ours (a panic message, say): keep it visible.
                    eprintln!("{line}");
                    continue;
                };
                let time = fields
                    .get("time")
                    .and_then(Value::as_str)
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
                    .unwrap_or_else(SystemTime::now);
                let message = fields
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(LogLine {
                        time,
                        message,
                        fields,
                    });
            }
        });
    }
    logs
}

/// Subscribes on the control socket and records each phase as it comes.
fn subscribe(socket: &Path, phases: Arc<Mutex<Vec<(SystemTime, String)>>>) {
    let Ok(mut stream) = std::os::unix::net::UnixStream::connect(socket) else {
        return;
    };
    let _ = stream.write_all(b"{\"op\":\"subscribe\"}\n");
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if let Some(phase) = v.get("phase").and_then(Value::as_str) {
                phases
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((SystemTime::now(), phase.to_string()));
            }
        }
    });
}

fn wait(within: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    done()
}

/// The guard's health address, from its status.
fn health_addr(socket: &Path) -> Option<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"{\"op\":\"status\"}\n").ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let v: Value = serde_json::from_str(&line).ok()?;
    v.get("health_listen")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Polls /readyz until it answers 503; returns when.
fn watch_readiness(addr: &str, guard: &mut Child) -> Option<SystemTime> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if readyz(addr) == Some(503) {
            return Some(SystemTime::now());
        }
        if guard.try_wait().ok().flatten().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn readyz(addr: &str) -> Option<u16> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: drill\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Waits for the guard to exit within its own bounds; past them, stops it as an operator would:
/// SIGTERM twice (the second kills the agent), then SIGKILL. Returns its status.
fn finish(guard: &mut Child, config: &Config) -> Option<u8> {
    let bound = config.drain_timeout + config.stop_timeout + Duration::from_secs(90);
    let start = Instant::now();
    let status = loop {
        if let Ok(Some(status)) = guard.try_wait() {
            break Some(status);
        }
        if start.elapsed() > bound {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some(status) = status {
        return status.code().map(|c| c as u8);
    }
    let pid = guard.id() as i32;
    for _ in 0..2 {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = guard.kill();
    let _ = guard.wait();
    None
}

#[derive(Debug, Default)]
struct Extra {
    never_ready: Option<Duration>,
    not_ready_at: Option<SystemTime>,
    kept_running: bool,
    spot_deadline: Option<SystemTime>,
}

struct Observed {
    notice_at: Option<SystemTime>,
    logs: Vec<LogLine>,
    phases: Vec<(SystemTime, String)>,
    calls: Vec<crate::sim::autoscaling::Call>,
    reference: (Instant, SystemTime),
    status: Option<u8>,
    exit_at: SystemTime,
    extra: Extra,
}

/// One line of the timeline.
#[derive(Debug, Clone)]
struct Entry {
    /// Seconds from the notice (negative before it).
    offset: f64,
    what: String,
    detail: String,
}

/// The drill's outcome.
struct Report {
    event: DrillEvent,
    command: String,
    pass: bool,
    reasons: Vec<String>,
    summary: String,
    timeline: Vec<Entry>,
    status: Option<u8>,
    json: bool,
}

impl Report {
    fn print(&self) {
        if self.json {
            let doc = json!({
                "event": self.event.as_str(),
                "command": self.command,
                "verdict": if self.pass { "PASS" } else { "FAIL" },
                "reasons": self.reasons,
                "summary": self.summary,
                "exit_status": self.status,
                "timeline": self.timeline.iter().map(|e| json!({
                    "offset_ms": (e.offset * 1000.0).round() as i64,
                    "what": e.what,
                    "detail": e.detail,
                })).collect::<Vec<_>>(),
            });
            println!("{doc}");
            return;
        }
        let mut out = String::new();
        out.push_str(&format!(
            "\nagent-guard drill {}: {}\n\n",
            self.event.as_str(),
            self.command
        ));
        out.push_str(&format!("{:>9}  {:<25} {}\n", "offset", "event", "detail"));
        for e in &self.timeline {
            out.push_str(&format!(
                "{:>+8.3}s  {:<25} {}\n",
                e.offset, e.what, e.detail
            ));
        }
        out.push('\n');
        if self.pass {
            out.push_str(&format!("PASS: {}\n", self.summary));
        } else {
            out.push_str("FAIL:\n");
            for r in &self.reasons {
                out.push_str(&format!("  - {r}\n"));
            }
        }
        print!("{out}");
    }
}
