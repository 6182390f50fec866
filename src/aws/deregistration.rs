//! The drain's load-balancer step: finds this instance's target groups once at set-up, and on
//! each hold from the supervisor deregisters it, waits (within the hold's bound) for the load
//! balancer to stop sending, and answers `LoadBalancerDone` so that the agent is told. After a
//! crash loop that marked the instance Unhealthy it deregisters it too, asked by the composition
//! root ([`AfterCrashLoop`]): no agent is left, so nothing is held and nothing is told.
//!
//! Nothing is called on the idle path: the set-up reads the target groups once (or, for a guard
//! that works with its group only after a crash loop, only then), and every other call belongs
//! to a drain or to the crash loop's end.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::aws::context::{AwsContext, SharedAws};
use crate::aws::imds::ImdsClient;
use crate::aws::targets::{self, Drained, Identity, Membership};
use crate::config::{DeregistrationWait, LoadBalancerSettings, TargetGroups};
use crate::fmt::format_duration;
use crate::machine::state::Event;
use crate::machine::supervisor::{Hold, LoadBalancerLink};
use crate::model::load_balancer::{
    DeregisteredFor, DeregistrationEnd, DeregistrationRun, LoadBalancerStatus, TargetGroupState,
    TargetState,
};

/// How long past the deregistration delay the wait lasts, so that the poll sees the target
/// leave `draining` rather than the wait's bound passing at the same moment.
const OBSERVE: Duration = Duration::from_secs(2);

/// How much shorter than wanted a wait must be to count as cut (not just the time gone by).
const CUT_BY_MORE_THAN: Duration = Duration::from_secs(1);

/// How long IMDS is given for each of the instance's addresses.
const ADDRESS_WITHIN: Duration = Duration::from_secs(2);

/// The longest the hook's work waits for `DeregisterTargets` after a crash loop (a set-up done
/// only then included): each call is bounded by the AWS context's own timeouts, and this bounds
/// them all together, so that a load balancer that does not answer never holds the hook.
const ASKED_WITHIN: Duration = Duration::from_secs(20);

/// The answer to a deregistration after a crash loop: sent once `DeregisterTargets` was
/// answered (or there was nothing to call).
type Answered = oneshot::Sender<()>;

/// The composition root's side of the deregistration after a crash loop: its own typed message,
/// so that nothing of it reaches the supervisor, or the agent, as a drain.
pub struct AfterCrashLoop {
    ask: oneshot::Sender<Answered>,
}

impl AfterCrashLoop {
    /// The crash loop ended with the instance marked Unhealthy: asks for the deregistration and
    /// returns once `DeregisterTargets` was answered, or at most [`ASKED_WITHIN`]. The wait for
    /// the load balancer to let go goes on beside the hook's work (no agent is left to tell), for
    /// the log and `/status` alone.
    pub async fn deregister(self) {
        let (answered, answer) = oneshot::channel();
        if self.ask.send(answered).is_err() {
            return;
        }
        if tokio::time::timeout(ASKED_WITHIN, answer).await.is_err() {
            tracing::warn!(
                within = %format_duration(ASKED_WITHIN),
                "load balancer: no answer to the deregistration after the crash loop; the hook's work goes on"
            );
        }
    }
}

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
    /// The target groups are read at start, for drains; else only after a crash loop.
    read_at_start: bool,
    /// Where the composition root asks for the deregistration after a crash loop.
    after_crash_loop: Option<oneshot::Receiver<Answered>>,
}

impl Deregistration {
    /// The task, the link the supervisor is given, and the composition root's handle for the
    /// end of a crash loop. `aws` is `None` when there is no group to read target groups from;
    /// `--lb-grace` still holds readiness then. `read_at_start`: the target groups are read at
    /// set-up, for drains; else only once a crash loop asks (drains then deregister nothing).
    /// `status` is the snapshot this task alone writes.
    pub fn new(
        settings: LoadBalancerSettings,
        (aws, read_at_start): (Option<Arc<SharedAws>>, bool),
        imds_endpoint: String,
        events: mpsc::Sender<Event>,
        status: watch::Sender<LoadBalancerStatus>,
    ) -> (Deregistration, LoadBalancerLink, AfterCrashLoop) {
        let grace = (!settings.grace.is_zero()).then_some(settings.grace);
        let (wait, wait_rx) = watch::channel(grace);
        let (holds_tx, holds) = mpsc::channel(4);
        let aws = aws.filter(|_| settings.target_groups != TargetGroups::Off);
        status.send_modify(|s| s.active = true);
        let called_off = Arc::new(Notify::new());
        let (ask, asked) = oneshot::channel();
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
                read_at_start,
                after_crash_loop: Some(asked),
            },
            LoadBalancerLink {
                wait: wait_rx,
                holds: holds_tx,
                called_off,
            },
            AfterCrashLoop { ask },
        )
    }

    /// Set-up, then one answer per hold (and the crash loop's end, if asked), until `shutdown`.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut found = None;
        if self.read_at_start {
            found = tokio::select! {
                found = self.set_up() => found,
                _ = shutdown.cancelled() => return,
            };
        }
        let mut crash_loop = self.after_crash_loop.take();
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
                answered = asked(&mut crash_loop) => {
                    if !self.read_at_start {
                        found = tokio::select! {
                            found = self.set_up() => found,
                            _ = shutdown.cancelled() => return,
                        };
                    }
                    self.after_crash_loop(found.as_ref(), answered, &shutdown).await;
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
                tracing::warn!(error = %e, "load balancer: cannot read the target groups; nothing will be deregistered");
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
                    "load balancer: this instance is in no target group; nothing to deregister from"
                );
                return None;
            }
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "load balancer: cannot read the target groups; nothing will be deregistered");
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
            if self.read_at_start {
                tracing::info!(target_group = %m.arn, targets = m.targets.len(), delay = %format_duration(m.delay), "load balancer: a drain deregisters this instance from this target group first");
            } else {
                tracing::info!(target_group = %m.arn, targets = m.targets.len(), delay = %format_duration(m.delay), "load balancer: read after the crash loop; deregistering this instance from this target group");
            }
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
        self.begun(DeregisteredFor::Drain(hold.reason));
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

    /// After a crash loop marked the instance Unhealthy: `DeregisterTargets`, then `answered`
    /// (the hook's work goes on), then the wait for the load balancer to let go, for the log and
    /// `/status` alone, until `shutdown`. No agent is left: nothing is held, `--lb-grace` has
    /// nothing to hold for (readiness is 503 already), and nothing goes to the supervisor. The
    /// cases with nothing to call say so in one line and answer at once.
    async fn after_crash_loop(
        &mut self,
        found: Option<&(Arc<AwsContext>, Vec<Membership>)>,
        answered: Answered,
        shutdown: &CancellationToken,
    ) {
        let Some((ctx, memberships)) = found else {
            // A set-up done only now has said why in its own line.
            if self.read_at_start {
                tracing::info!(
                    "load balancer: no target group to deregister from after the crash loop; the load balancer's health checks take the instance out"
                );
            }
            let _ = answered.send(());
            return;
        };
        let started = Instant::now();
        self.begun(DeregisteredFor::CrashLoop);
        if let Err(e) = targets::deregister(&ctx.elb, memberships).await {
            let (why, end) = if e.denied() {
                ("refused", DeregistrationEnd::Refused)
            } else {
                ("failed", DeregistrationEnd::Failed)
            };
            tracing::warn!(error = %e, "load balancer: deregistration after the crash loop {why}; the load balancer's health checks take the instance out");
            self.ended(end, started.elapsed());
            let _ = answered.send(());
            return;
        }
        self.deregistered = true;
        let _ = answered.send(());
        tracing::info!(
            target_groups = memberships.len(),
            "load balancer: deregistered after the crash loop (no agent to drain); the hook's work goes on while it lets go"
        );
        let bound = targets::wait_bound(memberships, self.settings.wait, Duration::MAX) + OBSERVE;
        let seen = |states: &[TargetState]| self.seen(memberships, states);
        let waited = tokio::select! {
            waited = targets::wait_drained(&ctx.elb, memberships, bound, seen) => waited,
            _ = shutdown.cancelled() => return,
        };
        let took = shown(started.elapsed());
        let end = match waited {
            Drained::Done { .. } => {
                tracing::info!(took = %took, "load balancer done after the crash loop: the target left draining");
                DeregistrationEnd::Done
            }
            Drained::Cut { .. } => {
                tracing::info!(took = %took, "load balancer still draining at the end of the wait after the crash loop; the group's termination ends it");
                DeregistrationEnd::Cut
            }
        };
        self.ended(end, started.elapsed());
    }

    /// A deregistration begins, for `reason`.
    fn begun(&self, reason: DeregisteredFor) {
        self.status.send_modify(|s| {
            s.deregistration = Some(DeregistrationRun {
                reason,
                started: SystemTime::now(),
                ended: None,
                took: None,
                registered_again: None,
            });
        });
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

/// The composition root's ask after a crash loop, once; pending for ever before it and after.
async fn asked(ask: &mut Option<oneshot::Receiver<Answered>>) -> Answered {
    if let Some(receiver) = ask.as_mut()
        && let Ok(answered) = receiver.await
    {
        *ask = None;
        return answered;
    }
    // Dropped unasked (the guard exits another way), or already answered: nothing more comes.
    *ask = None;
    std::future::pending().await
}

/// A duration for the log, to a tenth of a second: `4.9s` reads better than nanoseconds.
fn shown(d: Duration) -> String {
    let tenths = d.as_millis() / 100;
    format_duration(Duration::from_millis(
        u64::try_from(tenths * 100).unwrap_or(u64::MAX),
    ))
}
