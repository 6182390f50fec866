//! The drain's load-balancer step: finds this instance's target groups once at set-up, and on
//! each hold from the supervisor deregisters it, waits (within the hold's bound) for the load
//! balancer to stop sending, and answers `LoadBalancerDone` so that the agent is told.
//!
//! Nothing is called on the idle path: the set-up reads the target groups once, and every other
//! call belongs to a drain.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::aws::context::{AwsContext, SharedAws};
use crate::aws::imds::ImdsClient;
use crate::aws::targets::{self, Drained, Identity, Membership};
use crate::config::{DeregistrationWait, LoadBalancerSettings, TargetGroups};
use crate::fmt::format_duration;
use crate::machine::state::Event;
use crate::machine::supervisor::{Hold, LoadBalancerLink};
use crate::model::load_balancer::{
    DeregistrationEnd, DeregistrationRun, LoadBalancerStatus, TargetGroupState, TargetState,
};

/// How long past the deregistration delay the wait lasts, so that the poll sees the target
/// leave `draining` rather than the wait's bound passing at the same moment.
const OBSERVE: Duration = Duration::from_secs(2);

/// How much shorter than wanted a wait must be to count as cut (not just the time gone by).
const CUT_BY_MORE_THAN: Duration = Duration::from_secs(1);

/// How long IMDS is given for each of the instance's addresses.
const ADDRESS_WITHIN: Duration = Duration::from_secs(2);

/// The task's side of the supervisor's [`LoadBalancerLink`].
pub struct Deregistration {
    settings: LoadBalancerSettings,
    /// `None` when the settings never need the group (`--target-groups off`).
    aws: Option<Arc<SharedAws>>,
    imds_endpoint: String,
    wait: watch::Sender<Option<Duration>>,
    holds: mpsc::Receiver<Hold>,
    events: mpsc::Sender<Event>,
    /// The snapshot `/status` and `/metrics` read; written only here.
    status: watch::Sender<LoadBalancerStatus>,
    /// Told by the supervisor when a held drain is called off.
    called_off: Arc<Notify>,
    /// The targets are deregistered by this task and not registered again yet.
    deregistered: bool,
}

impl Deregistration {
    /// The task and the link the supervisor is given. `aws` is `None` when there is no group to
    /// read target groups from; `--lb-grace` still holds readiness then. `status` is the
    /// snapshot this task alone writes.
    pub fn new(
        settings: LoadBalancerSettings,
        aws: Option<Arc<SharedAws>>,
        imds_endpoint: String,
        events: mpsc::Sender<Event>,
        status: watch::Sender<LoadBalancerStatus>,
    ) -> (Deregistration, LoadBalancerLink) {
        let grace = (!settings.grace.is_zero()).then_some(settings.grace);
        let (wait, wait_rx) = watch::channel(grace);
        let (holds_tx, holds) = mpsc::channel(4);
        let aws = aws.filter(|_| settings.target_groups != TargetGroups::Off);
        status.send_modify(|s| s.active = true);
        let called_off = Arc::new(Notify::new());
        (
            Deregistration {
                settings,
                aws,
                imds_endpoint,
                wait,
                holds,
                events,
                status,
                called_off: called_off.clone(),
                deregistered: false,
            },
            LoadBalancerLink {
                wait: wait_rx,
                holds: holds_tx,
                called_off,
            },
        )
    }

    /// Set-up, then one answer per hold, until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let found = tokio::select! {
            found = self.set_up() => found,
            _ = shutdown.cancelled() => return,
        };
        loop {
            let hold = tokio::select! {
                hold = self.holds.recv() => hold,
                // Called off after the wait ended but before the agent was told.
                _ = self.called_off.notified() => {
                    if let Some((ctx, memberships)) = &found {
                        self.register_again(ctx, memberships).await;
                    }
                    continue;
                }
                _ = shutdown.cancelled() => return,
            };
            let Some(hold) = hold else { return };
            match &found {
                Some((ctx, memberships)) => self.deregister(ctx, memberships, hold).await,
                None => {
                    self.grace(hold, "there is no target group to deregister from")
                        .await
                }
            }
            // The supervisor outlives this task; a closed channel means it is finishing anyway.
            let _ = self.events.send(Event::LoadBalancerDone).await;
        }
    }

    /// The target groups this instance is registered in, read once; `None` when there are none
    /// or they cannot be read (then only `--lb-grace` applies).
    async fn set_up(&mut self) -> Option<(Arc<AwsContext>, Vec<Membership>)> {
        let aws = self.aws.clone()?;
        let ctx = match aws.get().await {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::warn!(error = %e, "load balancer: cannot read the target groups; a drain will not deregister");
                return None;
            }
        };
        let me = Identity {
            instance_id: ctx.instance_id.clone(),
            addresses: self.addresses().await,
        };
        let found = async {
            let arns =
                targets::target_group_arns(&ctx.client, &ctx.group, &self.settings.target_groups)
                    .await?;
            targets::memberships(&ctx.elb, &arns, &me).await
        }
        .await;
        let memberships = match found {
            Ok(m) if m.is_empty() => {
                tracing::info!(
                    "load balancer: this instance is in no target group; a drain will not deregister"
                );
                return None;
            }
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "load balancer: cannot read the target groups; a drain will not deregister");
                return None;
            }
        };
        let seen = SystemTime::now();
        self.status.send_modify(|s| {
            s.target_groups = memberships
                .iter()
                .map(|m| TargetGroupState {
                    arn: m.arn.clone(),
                    state: m.state,
                    seen,
                    delay: m.delay,
                })
                .collect();
        });
        for m in &memberships {
            tracing::info!(target_group = %m.arn, targets = m.targets.len(), delay = %format_duration(m.delay), "load balancer: a drain deregisters this instance from this target group first");
        }
        // Even a target group without a delay is waited for while DeregisterTargets is answered
        // and the target read once: only `--deregistration-wait 0` tells the agent at once.
        let wait = targets::wait_bound(&memberships, self.settings.wait, Duration::MAX);
        let at_once = self.settings.wait == DeregistrationWait::AtMost(Duration::ZERO);
        let wait = if at_once { wait } else { wait + OBSERVE };
        self.wait.send_replace(Some(wait.max(self.settings.grace)));
        Some((ctx, memberships))
    }

    /// The instance's private addresses, for `ip` target groups.
    async fn addresses(&self) -> Vec<String> {
        let Ok(imds) = ImdsClient::new(&self.imds_endpoint, ADDRESS_WITHIN) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in ["local-ipv4", "ipv6"] {
            if let Ok(Some(address)) = imds.get(item).await {
                out.extend(address.split_whitespace().map(str::to_string));
            }
        }
        out
    }

    /// DeregisterTargets, then the wait for the targets to leave `draining`, within the hold.
    async fn deregister(&mut self, ctx: &AwsContext, memberships: &[Membership], hold: Hold) {
        let started = Instant::now();
        self.status.send_modify(|s| {
            s.deregistration = Some(DeregistrationRun {
                reason: hold.reason,
                started: SystemTime::now(),
                ended: None,
                took: None,
                registered_again: None,
            });
        });
        if let Err(e) = targets::deregister(&ctx.elb, memberships).await {
            let (why, end) = if e.denied() {
                ("deregistration was refused", DeregistrationEnd::Refused)
            } else {
                ("deregistration failed", DeregistrationEnd::Failed)
            };
            tracing::warn!(error = %e, "load balancer: {why}");
            self.grace(hold, why).await;
            return self.ended(end, started.elapsed());
        }
        self.deregistered = true;
        let bound = hold.until.saturating_duration_since(Instant::now());
        let wanted = targets::wait_bound(memberships, self.settings.wait, Duration::MAX);
        tracing::info!(reason = %hold.reason, target_groups = memberships.len(), "load balancer: deregistered; waiting for it to stop sending before the agent hears of the drain");
        if bound + CUT_BY_MORE_THAN < wanted {
            tracing::warn!(
                wait = %shown(bound),
                delay = %shown(wanted),
                "load balancer: the wait is cut so that the agent keeps its full drain and stop budget"
            );
        }
        let seen = |states: &[TargetState]| self.seen(memberships, states);
        let waited = tokio::select! {
            waited = targets::wait_drained(&ctx.elb, memberships, bound, seen) => Some(waited),
            _ = self.called_off.notified() => None,
        };
        let Some(waited) = waited else {
            return self.register_again(ctx, memberships).await;
        };
        let end = match waited {
            Drained::Done { .. } => {
                tracing::info!(
                    took = %shown(started.elapsed()),
                    "load balancer done: the target left draining; telling the agent"
                );
                DeregistrationEnd::Done
            }
            Drained::Cut { .. } => {
                tracing::warn!(
                    took = %shown(started.elapsed()),
                    "load balancer still draining at the end of the wait; telling the agent now"
                );
                DeregistrationEnd::Cut
            }
        };
        self.ended(end, started.elapsed());
    }

    /// The drain was called off before the agent heard of it: the targets this task deregistered
    /// are registered again (the group registers replacements, so nothing else does this).
    async fn register_again(&mut self, ctx: &AwsContext, memberships: &[Membership]) {
        if !std::mem::take(&mut self.deregistered) {
            return;
        }
        match targets::register(&ctx.elb, memberships).await {
            Ok(()) => {
                tracing::info!(
                    target_groups = memberships.len(),
                    "load balancer: the drain was called off; registered the instance again"
                );
                let at = SystemTime::now();
                self.status.send_modify(|s| {
                    if let Some(run) = s.deregistration.as_mut() {
                        run.registered_again = Some(at);
                    }
                });
                let states = targets::states(&ctx.elb, memberships).await;
                self.seen(memberships, &states);
            }
            Err(e) => {
                tracing::warn!(error = %e, "load balancer: the drain was called off, but the instance cannot be registered again; its group's next scale-out or an operator must")
            }
        }
    }

    /// The states one read answered, one per membership, into the snapshot.
    fn seen(&self, memberships: &[Membership], states: &[TargetState]) {
        let now = SystemTime::now();
        self.status.send_modify(|s| {
            for (m, state) in memberships.iter().zip(states) {
                if let Some(g) = s.target_groups.iter_mut().find(|g| g.arn == m.arn) {
                    g.state = *state;
                    g.seen = now;
                }
            }
        });
    }

    /// The deregistration ended (the agent is told next).
    fn ended(&self, end: DeregistrationEnd, took: Duration) {
        self.status.send_modify(|s| {
            if let Some(run) = s.deregistration.as_mut() {
                run.ended = Some((SystemTime::now(), end));
                run.took = Some(took);
            }
        });
    }

    /// `--lb-grace`: readiness stays 503 this long (within the hold) before the agent is told.
    async fn grace(&self, hold: Hold, why: &str) {
        let left = hold.until.saturating_duration_since(Instant::now());
        let grace = self.settings.grace.min(left);
        if grace.is_zero() {
            return;
        }
        tracing::info!(grace = %shown(grace), "load balancer: {why}; holding readiness at 503 (--lb-grace) before the agent hears of the drain");
        tokio::time::sleep(grace).await;
    }
}

/// A duration for the log, to a tenth of a second: `4.9s` reads better than nanoseconds.
fn shown(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    format_duration(Duration::from_millis(
        u64::try_from(tenths * 100).unwrap_or(u64::MAX),
    ))
}
