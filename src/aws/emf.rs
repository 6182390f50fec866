//! The agent's own load as CloudWatch Embedded Metric Format lines (`--metrics-emf`), so the
//! group can scale on what the agent is doing rather than on CPU: one line every
//! `--metrics-interval`, by group and by instance, to stdout or appended to a file.

use std::io::Write;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::aws::context::{AwsContext, SharedAws};
use crate::aws::protection::busy;
use crate::aws::status::LifecycleBoard;
use crate::config::settings::{BusySettings, EmfTarget};
use crate::machine::state::Phase;
use crate::machine::state::PhaseName;
use crate::model::report::AgentReport;

/// What an EMF line reads: the phase, the agent's reports, the lifecycle snapshot (protection).
pub struct Reads {
    pub phase: watch::Receiver<Phase>,
    pub report: watch::Receiver<AgentReport>,
    pub lifecycle: LifecycleBoard,
    /// The agent's cgroup, for `AgentMemory` (fixed for the guard's life).
    pub cgroup: Option<std::sync::Arc<crate::process::cgroup::AgentCgroup>>,
}

/// Writes EMF lines until `shutdown`; off (one line in the log) without an AWS context.
pub async fn run(
    settings: BusySettings,
    target: EmfTarget,
    aws: Arc<SharedAws>,
    reads: Reads,
    shutdown: CancellationToken,
) {
    let context = tokio::select! {
        c = aws.get() => c,
        _ = shutdown.cancelled() => return,
    };
    let context = match context {
        Ok(c) => c,
        Err(err) => {
            tracing::error!(error = %err, "EMF metrics are off");
            return;
        }
    };
    let mut tick = tokio::time::interval(settings.emf_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => write_emf(&target, &context, &reads, &settings),
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One EMF line: the agent's load, the protection and the phase, by group and by instance; and
/// the agent's memory (its cgroup's `memory.current`) where the kernel keeps it.
fn emf_line(
    group: &str,
    instance_id: &str,
    in_flight: u64,
    protected: bool,
    phase: PhaseName,
    memory: Option<u64>,
    now: SystemTime,
) -> String {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut line = json!({
        "_aws": {
            "Timestamp": millis,
            "CloudWatchMetrics": [{
                "Namespace": "AgentGuard",
                // By group (what a target-tracking policy averages) and by instance.
                "Dimensions": [["AutoScalingGroupName"], ["AutoScalingGroupName", "InstanceId"]],
                "Metrics": [
                    {"Name": "InFlight", "Unit": "Count"},
                    {"Name": "ProtectedFromScaleIn", "Unit": "Count"},
                    {"Name": "Ready", "Unit": "Count"},
                    {"Name": "Draining", "Unit": "Count"},
                ],
            }],
        },
        "AutoScalingGroupName": group,
        "InstanceId": instance_id,
        "InFlight": in_flight,
        "ProtectedFromScaleIn": u8::from(protected),
        "Ready": u8::from(phase == PhaseName::Ready),
        "Draining": u8::from(matches!(phase, PhaseName::Draining | PhaseName::Stopping)),
        "Phase": phase.as_str(),
    });
    if let Some(bytes) = memory {
        line["AgentMemory"] = json!(bytes);
        if let Some(metrics) = line["_aws"]["CloudWatchMetrics"][0]["Metrics"].as_array_mut() {
            metrics.push(json!({"Name": "AgentMemory", "Unit": "Bytes"}));
        }
    }
    line.to_string()
}

fn write_emf(target: &EmfTarget, context: &AwsContext, reads: &Reads, settings: &BusySettings) {
    let now = SystemTime::now();
    let report = reads.report.borrow().in_flight;
    let in_flight = if busy(report, now, settings.busy_stale) {
        report.map_or(0, |(n, _)| n)
    } else {
        0
    };
    let protected = reads.lifecycle.get().protected.unwrap_or(false);
    let phase = reads.phase.borrow().name();
    let memory = reads.cgroup.as_ref().and_then(|c| c.usage().memory_current);
    let mut line = emf_line(
        &context.group,
        &context.instance_id,
        in_flight,
        protected,
        phase,
        memory,
        now,
    );
    line.push('\n');
    let written = match target {
        EmfTarget::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
        EmfTarget::File(path) => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(line.as_bytes())),
    };
    if let Err(err) = written {
        tracing::warn!(error = %err, "cannot write the EMF metrics line");
    }
}
