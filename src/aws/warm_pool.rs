//! `--in-warm-pool wait`: an instance launched into a warm pool does not start its agent. Its
//! launch hook is completed with CONTINUE at once (by the lifecycle work, on the hold it reads), and
//! the agent starts when the target lifecycle state becomes `InService`. On AWS that usually
//! comes after a stop and a start, and the guard, started afresh, then finds `InService` first;
//! a pool of running instances moves to `InService` under the guard's eyes. Both end here.
//!
//! [`at_launch`] and [`releases`] decide, with no I/O; [`hold`] waits around them.

use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::aws::notices::ImdsStatus;
use crate::journal::Record;
use crate::model::lifecycle_state::LifecycleState;
use crate::process::upstream::Upstream;

/// How long the guard waits for a first target lifecycle state before starting the agent
/// anyway: off a group there is none, and an agent must not wait for ever for a state that
/// never comes (a 404 on a brand-new instance turns into a state within a few polls).
pub const FIRST_STATE_WITHIN: Duration = Duration::from_secs(10);
/// How often systemd is asked to extend its start timeout while the agent is held: a unit of
/// `Type=notify` waits for READY=1, and an instance may sit in a warm pool for days.
const EXTEND_EVERY: Duration = Duration::from_secs(30);
const EXTEND_BY_USEC: u64 = 90_000_000;

/// What the first target lifecycle state means for the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Start it now.
    Start,
    /// The instance was launched into a warm pool: hold it back.
    Hold,
}

/// The gate for the first target lifecycle state read.
pub fn at_launch(state: &str) -> Gate {
    if LifecycleState::parse(state).is_warmed() {
        Gate::Hold
    } else {
        Gate::Start
    }
}

/// Whether a held agent may start: the instance is going into service. Every other state keeps
/// it held (`Warmed:*`, and `Terminated` for an instance leaving from the pool).
pub fn releases(state: &str) -> bool {
    LifecycleState::parse(state) == LifecycleState::InService
}

/// How the hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// The first state was not `Warmed:*`: nothing was held.
    NotInPool,
    /// No state came within [`FIRST_STATE_WITHIN`] (not in a group, or IMDS off): nothing held.
    NoState,
    /// The instance went into service.
    InService,
}

/// Waits, if the instance is in a warm pool, until it goes into service. Meanwhile readiness
/// says why (through `held`, which this owns), the guard's liveness tick goes on, and systemd is kept
/// from timing the start out. The hold itself has no deadline: it lasts as long as the
/// instance stays in the pool, and a stop signal (raced against this by the caller) ends it.
pub async fn hold(
    mut imds: watch::Receiver<ImdsStatus>,
    held: &watch::Sender<Option<String>>,
    tick_to: &watch::Sender<Instant>,
    upstream: &Upstream,
) -> Release {
    let first = tokio::time::timeout(FIRST_STATE_WITHIN, async {
        imds.wait_for(|s| s.lifecycle_state.is_some())
            .await
            .ok()
            .and_then(|s| s.lifecycle_state.clone())
    })
    .await;
    let Ok(Some(state)) = first else {
        tracing::warn!(
            "--in-warm-pool wait: no target lifecycle state from IMDS within 10s; starting the agent"
        );
        return Release::NoState;
    };
    if at_launch(&state) == Gate::Start {
        return Release::NotInPool;
    }
    let why = format!(
        "the instance is in a warm pool ({state}): the agent starts once its target lifecycle state is InService (--in-warm-pool wait)"
    );
    let record = Record::WarmPoolHeld {
        state: LifecycleState::parse(&state),
    };
    tracing::info!(journal = %record.json(), "{why}");
    upstream.send(&format!("STATUS=held: in a warm pool ({state})"));
    held.send_replace(Some(why));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut extended: Option<Instant> = None;
    let mut last = state;
    // Once the poller is gone no state will come: the hold lasts until the guard is stopped.
    let mut polling = true;
    loop {
        tokio::select! {
            changed = imds.changed(), if polling => {
                if changed.is_err() {
                    polling = false;
                    continue;
                }
                let now = imds.borrow_and_update().lifecycle_state.clone();
                let Some(now) = now.filter(|n| *n != last) else { continue };
                if releases(&now) {
                    let record = Record::WarmPoolReleased {
                        state: LifecycleState::parse(&now),
                    };
                    tracing::info!(journal = %record.json(), "target lifecycle state is {now}: starting the agent");
                    held.send_replace(None);
                    return Release::InService;
                }
                tracing::info!("target lifecycle state is {now}: the agent stays held");
                last = now;
            }
            _ = tick.tick() => {
                // The supervisor's loop is not running yet: this is the guard's heartbeat.
                tick_to.send_replace(Instant::now());
                if extended.is_none_or(|at| at.elapsed() >= EXTEND_EVERY) {
                    upstream.send(&format!("EXTEND_TIMEOUT_USEC={EXTEND_BY_USEC}"));
                    extended = Some(Instant::now());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_table() {
        // (first state, gate); then (later state, releases)
        for (state, gate) in [
            ("Warmed:Stopped", Gate::Hold),
            ("Warmed:Running", Gate::Hold),
            ("Warmed:Hibernated", Gate::Hold),
            ("Warmed:Pending", Gate::Hold),
            ("InService", Gate::Start),
            ("Standby", Gate::Start),
            ("Detached", Gate::Start),
            ("Terminated", Gate::Start),
            ("Exploding", Gate::Start),
        ] {
            assert_eq!(at_launch(state), gate, "{state}");
        }
        for (state, release) in [
            ("InService", true),
            ("InService\n", true),
            ("Warmed:Running", false),
            ("Warmed:Terminated", false),
            ("Terminated", false),
            ("Detached", false),
        ] {
            assert_eq!(releases(state), release, "{state:?}");
        }
    }
}
