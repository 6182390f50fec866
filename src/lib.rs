//! agent-guard: a sidecar supervisor that lets an agent on an EC2 Auto Scaling group scale in and
//! out without losing work.
//!
//! # Layout
//! Top-level parts, lowest first; a part imports only parts listed before it (no import cycles
//! among modules or among parts: `tools/mod-cycles.py src --parts`). Each state has one writer
//! that owns it; the others read a `watch` of it, and decisions travel as typed messages.
//!
//! 1. `fmt`, `names`: durations and times as people write and read them; `named_enum!`, one
//!    table per enum of named variants (`ALL`, `as_str`, parsing, serde), so no name is spelt twice.
//! 2. `process`: the agent as a process. `sig` (signal names, which stop, reap or are
//!    forwarded), `exit` ([`ChildExit`], the proof of exit, and the exit-status contract),
//!    `signals` (the one signal stream, handlers installed first), `inherited` and `crash` (the
//!    signal state found at start; fault signals), `child` and `spawn` (spawning in its own
//!    group, by posix_spawn where no code must run in the child), `cgroup` and `clone_into` (the
//!    agent's own cgroup v2, `--cgroup`), `reaper` (the only caller of `waitpid`),
//!    `drain_command` (`--on-drain`), `upstream` (the guard's own sd_notify to systemd).
//!    Next to it, `fsat`: directories used through their descriptors (the `*at` calls, `flock`,
//!    owner and mode checks); imports nothing of the crate. And `net`: client connections (TCP,
//!    then TLS with the system's roots) for the AWS SDK's transport and the health probes.
//! 3. `model`: the pure vocabulary several parts decide on or show: `drain` (`DrainReason`),
//!    `phase` (`PhaseName`), `notice` (`NoticeKind`), `hooks` (hook results and states), `restart` (the policy),
//!    `lifecycle_state` (every Auto Scaling lifecycle state, parsed in one place), and the
//!    snapshot types each written by one owner: `run` (the supervisor's), `report` (the
//!    agent's), `lifecycle` (the lifecycle work's), `status` (the typed `status` reply).
//! 4. `cli`, `config`, `logging`: the raw flags; flags + env + TOML file → a validated `Config`
//!    with provenance (`layers`, `validate`, `describe`, `paths`, `subcommands`, and the settings
//!    types in `settings`, `check`); the guard's own log lines, text or JSON, written by one
//!    thread (`logging::writer`).
//! 5. `journal`: the typed records the guard logs for the tools that judge it. `hosthooks`:
//!    the registry in `--hooks-dir` (who registered for which hook, who is live, who completes;
//!    no AWS call).
//! 6. `machine`: `state` (`Phase`, `Event`, `Action` and the pure `step`), `restart` (delays and
//!    the crash-loop window as data), `announce` (phase changes and drains to subscribers),
//!    `said` (what each step says: log lines and journal records, from pure functions), and
//!    `supervisor`: the one owner of the phase and the run; it publishes them, tells the
//!    lifecycle work what it must know, and returns the `Outcome` (the deciding drain reason
//!    included) once the agent's group is gone.
//! 7. `aws`: `imds`, `notices` (the poller over its registry of sources, one module each),
//!    `scheduled` (IMDS and what it says); `api`, `context`,
//!    `hook_calls`, `backoff` (the Auto Scaling calls and the one shared context), `transport`
//!    (the SDK's HTTP client: HTTP/1.1 over `net`, a connection per request); `lifecycle`,
//!    `termination`, `wait_state` (the hooks, completed once by the last agent out,
//!    in the wait state however late); `status` (the lifecycle snapshot, written only here);
//!    `protection`, `maintenance`, `replace`, `health_status`, `emf`, `warm_pool`; `targets`
//!    and `deregistration` (this instance in its load balancers' target groups, and the drain's
//!    load-balancer step: deregister and wait before the agent is told).
//! 8. `agent`: `control` and `protocol` (the control socket and its wire types), `sdnotify` (the
//!    agent's NOTIFY_SOCKET), `report` (the agent's reports, written only here), `unixsock`
//!    (creating those sockets safely).
//! 9. `health`: `server` (the HTTP endpoint), `probes`, `metrics`, `status` (the `Status` from
//!    every snapshot), `views` (the readers' side of every snapshot), `checks` and `http_get`
//!    (the background probes).
//! 10. `cmd` (`ctl`; `drill::{watch, verdict, report}`, which watches a real guard against the
//!     simulators and judges from typed observations; `doctor::{gather, judge, render}`),
//!     `fuzzing` (the fuzz targets' entry points), [`sim`] (simulated IMDS, Auto Scaling and Elastic
//!     Load Balancing v2 APIs, loopback only), and this file: [`run`] makes every snapshot's channel, hands each writer
//!     to its owner and the readers to the rest, runs the agent again (a next supervisor from
//!     the last one's parts) when the instance comes back from a warm pool, and shuts the tasks
//!     down: decide, tell, wait.

mod agent;
mod aws;
mod cli;
mod cmd;
mod config;
mod fmt;
mod fsat;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod hosthooks;
mod journal;
mod logging;
mod machine;
mod model;
mod names;
mod net;
mod process;
pub mod sim;

// What the binary (`main.rs`) needs; everything else stays inside the crate.
pub use crate::cmd::ctl::run as ctl;
pub use crate::cmd::doctor::run as doctor;
pub use crate::cmd::drill::run as drill;
pub use crate::config::{Invocation, load};
pub use crate::logging::flush as flush_logs;
pub use crate::logging::init as init_logging;
pub use crate::process::child::resolve;
/// The proof that the agent exited; public so that its doctest shows it cannot be forged.
pub use crate::process::exit::ChildExit;
pub use crate::process::exit::GUARD_FAILED;
/// Run by the binary before `main`: records the signal state the guard was started with and
/// holds every signal until the handlers exist; [`release_signals`] when it will not supervise.
pub use crate::process::inherited::{
    hold_at_start as hold_signals_at_start, release as release_signals,
};

use std::ffi::OsString;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::control::{Control, StatusFn};
use crate::agent::report::Reports;
use crate::agent::{control, sdnotify, unixsock};
use crate::aws::context::SharedAws;
use crate::aws::deregistration::{AfterCrashLoop, Deregistration};
use crate::aws::emf;
use crate::aws::imds::ImdsClient;
use crate::aws::lifecycle::{self, HostHooks, LifecycleHandle};
use crate::aws::maintenance::{self, MaintenanceSettings};
use crate::aws::notices::{ImdsStatus, NoticeSettings, Poller};
use crate::aws::protection::ProtectionHandle;
use crate::aws::status::LifecycleBoard;
use crate::aws::{imds, notices, replace, warm_pool};
use crate::config::{
    CgroupMode, Config, ImdsMode, InWarmPool, OnCrashLoop, OnMaintenance, TargetGroups,
};
use crate::health::views::Views;
use crate::health::{checks, server};
use crate::machine::announce::Announcer;
use crate::machine::restart::RestartPolicy;
use crate::machine::state;
use crate::machine::state::{Phase, State};
use crate::machine::supervisor::{
    LoadBalancerLink, Outcome, Published, StopSettings, Supervisor, ToLifecycle,
};
use crate::model::load_balancer::LoadBalancerStatus;
use crate::model::run::RunStats;
use crate::process::cgroup::{AgentCgroup, CgroupError, Tracking};
use crate::process::child::{Launcher, SpawnError, SpawnSpec};
use crate::process::sig::{Role, Sig, role};
use crate::process::signals::{JobControl, SignalSetupError, SignalSource, install_handlers};
use crate::process::upstream::Upstream;
use crate::process::{crash, inherited};

/// Why the guard could not supervise the agent at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Signals(#[from] SignalSetupError),
    #[error("--subreaper: cannot become a child subreaper: {0}")]
    Subreaper(#[source] io::Error),
    #[error("--imds on: IMDS did not answer within 10s: {0}")]
    ImdsRequired(#[source] imds::ImdsError),
    #[error(transparent)]
    Imds(#[from] imds::ImdsError),
    #[error(transparent)]
    Socket(#[from] unixsock::SocketError),
    #[error("--health-listen: cannot listen on {addr}: {source}")]
    HealthListen {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    HooksDir(#[from] crate::hosthooks::HooksDirError),
    #[error("--cgroup require: the agent cannot have a cgroup of its own: {0}")]
    Cgroup(#[source] CgroupError),
}

impl RunError {
    /// The guard's exit status for a run that failed before the agent could be supervised.
    pub fn exit_code(&self) -> u8 {
        use crate::process::exit::{CANNOT_EXECUTE, GUARD_FAILED, NOT_FOUND};
        match self {
            RunError::Spawn(SpawnError::NotFound { .. }) => NOT_FOUND,
            RunError::Spawn(SpawnError::CannotExecute { .. }) => CANNOT_EXECUTE,
            _ => GUARD_FAILED,
        }
    }
}

/// How a run ended.
#[derive(Debug)]
pub enum Ended {
    /// The agent exited, and its group is gone: the proof of it.
    Agent(ChildExit),
    /// The guard was stopped before it started the agent (held in a warm pool).
    NeverStarted,
}

impl Ended {
    /// The guard's exit status: the agent's, or 0 when there never was one (nothing failed).
    pub fn exit_code(&self) -> u8 {
        match self {
            Ended::Agent(exit) => exit.exit_code(),
            Ended::NeverStarted => 0,
        }
    }
}

/// Supervises `config.command` until it and its process group are gone; returns how it ended.
pub fn run(config: Config) -> Result<Ended, RunError> {
    // First of all: until the handlers exist every signal is held (`process::inherited`).
    let job_control = install_handlers()?;
    crash::set_stop_signal(config.stop_signal.raw());
    // One thread is plenty for a supervisor, and keeps its footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    // Boxed: the whole supervisor's state machine is one large future, and on the stack it would
    // be copied as it is pinned, leaving that much stack resident for the guard's whole life.
    let supervised = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(Box::pin(supervise(config, job_control)))
    }));
    let ended = match supervised {
        Ok(ended) => {
            if let Ok(ended) = &ended {
                tracing::info!(status = ended.exit_code(), "the guard exits");
            }
            ended
        }
        Err(panic) => {
            // A bug: the agent must not run on unsupervised without a word (the panic's own
            // message is already on stderr).
            crash::stop_agent(crash::Cause::Panic);
            std::panic::resume_unwind(panic)
        }
    };
    // Every task was told to stop and waited for; a thread that still lingers (the health
    // server's) must not hold the exit.
    runtime.shutdown_timeout(SHUTDOWN_WITHIN);
    ended
}

/// How long the servers get, once told to stop, to write their last words (the `exited` phase to
/// subscribers) and close.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(2);

/// What the process sets up before anything else: its TLS provider, the subreaper bit, and the
/// IMDS client (none with `--imds off`).
fn prepare(config: &Config) -> Result<Option<ImdsClient>, RunError> {
    // One TLS stack for the whole process: rustls with ring. The AWS client and the HTTPS checks
    // name ring themselves; the default is for anything that asks the process for one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if config.subreaper && std::process::id() != 1 {
        become_subreaper().map_err(RunError::Subreaper)?;
    }
    Ok(match config.imds {
        ImdsMode::Off => None,
        ImdsMode::Auto | ImdsMode::On => {
            Some(ImdsClient::new(&config.imds_endpoint, IMDS_TIMEOUT)?)
        }
    })
}

/// No agent runs, or will: the tasks end without one (no hook to complete), and the sockets go.
async fn end_without_agent(tasks: Tasks, config: &Config) {
    tasks.finish_without_agent().await;
    remove_sockets(config);
}

async fn supervise(config: Config, job_control: JobControl) -> Result<Ended, RunError> {
    let imds = prepare(&config)?;
    // Before anything runs: `--cgroup require` fails here, and the cgroup is removed on every
    // way out of this function.
    let (tracking, memory_note) = agent_cgroup(&config)?;
    let _remove = RemoveCgroup(tracking.cgroup.clone());
    // The reader of the signals held since the handlers were installed in `run`.
    let mut signals = SignalSource::install()?;
    if let (ImdsMode::On, Some(client)) = (config.imds, &imds)
        && stopped_before_imds(client, &mut signals).await?
    {
        return Ok(Ended::NeverStarted);
    }
    let health = bind_health(&config).await?;
    let health_addr = health.as_ref().and_then(|l| l.local_addr().ok());
    let mut wiring = Wiring::new(&config, health_addr, tracking.clone());
    // The sockets exist before the agent does, so it can connect from its first instruction;
    // they stay the same for every agent a restart starts.
    let sockets = Sockets::bind(&config)?;
    // Registered before the agent starts: the other guards on this host wait for it from then.
    let host_hooks = HostHooks::register(&config.lifecycle, &config.name)?;
    let (events_tx, events_rx) = mpsc::channel(64);
    let upstream = Upstream::from_env();
    // The tasks come first: with `--in-warm-pool wait` the notice poller decides when the agent
    // may start, and health answers (503) meanwhile.
    let mut tasks = Tasks::start(
        &config,
        &mut wiring,
        Started {
            sockets,
            health,
            imds,
            events: events_tx.clone(),
            upstream: upstream.clone(),
            host_hooks,
        },
    );
    let hold = Hold {
        views: &wiring.views,
        held: &wiring.held,
        tick: &wiring.published.tick,
        upstream: &upstream,
    };
    if stopped_while_held(&config, &hold, &mut signals).await {
        end_without_agent(tasks, &config).await;
        return Ok(Ended::NeverStarted);
    }
    // Said only now, when the agent is about to start: a guard that fails before has one line
    // to say, its error.
    log_tracking(&tracking, memory_note.as_deref());
    let launcher = Launcher {
        spec: spawn_spec(&config),
        job_control,
        cgroup: tracking.cgroup,
    };
    let supervisor = match Supervisor::new(
        launcher,
        signals,
        StopSettings::from_config(&config),
        (events_tx, events_rx),
        wiring.phase,
        wiring.published,
        upstream.clone(),
    ) {
        Ok(supervisor) => match tasks.load_balancer.take() {
            Some(link) => supervisor.with_load_balancer(link),
            None => supervisor,
        },
        Err(err) => {
            // No agent: nothing to wait for, no hook to complete.
            end_without_agent(tasks, &config).await;
            return Err(err.into());
        }
    };
    say_what_the_agent_inherits(&config);
    return_freed_memory();
    let hold = (&*wiring.views, &wiring.held, &upstream);
    runs(&config, tasks, hold, supervisor).await
}

/// Runs the agent until the guard is to exit: once, or again after each return of the
/// instance to a warm pool (the guard stays across it: the unit would not start it again after
/// a clean exit, and the instance would come back into service without it).
async fn runs(
    config: &Config,
    mut tasks: Tasks,
    (views, held, upstream): (&Views, &watch::Sender<Option<String>>, &Upstream),
    mut supervisor: Supervisor,
) -> Result<Ended, RunError> {
    loop {
        let (outcome, signals, mut parts) = supervisor.run().await;
        // The agent's group is gone: its number may be anyone's now.
        crash::set_agent_group(0);
        let exit = outcome.exit.clone();
        if !back_in_warm_pool(config, &outcome) {
            ticking(&parts.out.tick, tasks.finish(outcome, signals)).await;
            remove_sockets(config);
            return Ok(Ended::Agent(exit));
        }
        let back = tasks.back_in_pool(config, views, &mut parts.out.told, (outcome, signals));
        let Some(mut signals) = ticking(&parts.out.tick, back).await else {
            end_without_agent(tasks, config).await;
            return Ok(Ended::Agent(exit));
        };
        parts.start_over();
        let hold = Hold {
            views,
            held,
            tick: &parts.out.tick,
            upstream,
        };
        if stopped_while_held(config, &hold, &mut signals).await {
            end_without_agent(tasks, config).await;
            return Ok(Ended::Agent(exit));
        }
        supervisor = match parts.again(signals) {
            Ok(supervisor) => supervisor,
            Err(err) => {
                end_without_agent(tasks, config).await;
                return Err(err.into());
            }
        };
    }
}

/// Runs `work` (the hook's work once the agent is gone) with the guard's tick kept fresh: the
/// supervisor's loop that ticked is over, and a guard that stays for a hook is at work, not
/// stuck, for `/livez`. The tick's writer is the composition root from here on.
async fn ticking<T>(
    tick: &watch::Sender<std::time::Instant>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = std::pin::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = every.tick() => {
                tick.send_replace(std::time::Instant::now());
            }
        }
    }
}

/// Whether the run ended with the instance back in its warm pool, and the guard is to stay for
/// its next time in service: not after a stop signal or a crash loop, which end the guard.
fn back_in_warm_pool(config: &Config, outcome: &Outcome) -> bool {
    let back = outcome.drain == Some(state::DrainReason::WarmPool)
        && !outcome.stop_signalled
        && !outcome.crash_loop
        && config.imds != ImdsMode::Off;
    if back {
        let when = match config.in_warm_pool {
            InWarmPool::Wait => "once the instance is InService again (--in-warm-pool wait)",
            InWarmPool::Run => "at once, as in a fresh start in the pool (--in-warm-pool run)",
        };
        tracing::info!(
            "back in the warm pool: the agent is gone; the guard stays and starts it again {when}"
        );
    }
    back
}

/// The control and sd_notify sockets go as the guard exits.
fn remove_sockets(config: &Config) {
    unixsock::remove(&config.socket);
    unixsock::remove(&config.notify_socket);
}

/// Every snapshot of the run, made here once: each writer goes to its one owner, and the
/// readers' side ([`Views`]) to everyone who reads. The supervisor owns the phase, its run, its
/// tick and its announcements; the agent-facing servers the agent's reports; the IMDS poller
/// its status; the probes theirs; the lifecycle work its board; the warm pool the hold.
struct Wiring {
    phase: watch::Sender<Phase>,
    published: Published,
    /// Taken by the lifecycle work, if it runs.
    told: Option<mpsc::Receiver<ToLifecycle>>,
    reports: Reports,
    imds: watch::Sender<ImdsStatus>,
    checks: watch::Sender<checks::Snapshot>,
    board: LifecycleBoard,
    held: watch::Sender<Option<String>>,
    /// The load-balancer step's snapshot, written only by `aws::deregistration`.
    load_balancer: watch::Sender<LoadBalancerStatus>,
    views: Arc<Views>,
}

impl Wiring {
    fn new(
        config: &Config,
        health_addr: Option<std::net::SocketAddr>,
        tracking: Tracking,
    ) -> Wiring {
        let (phase, phase_rx) = watch::channel(State::new().phase);
        let (run, run_rx) = watch::channel(RunStats::default());
        let (tick, tick_rx) = watch::channel(std::time::Instant::now());
        let (imds, imds_rx) = watch::channel(ImdsStatus::default());
        let (checks, checks_rx) = watch::channel(checks::Snapshot::default());
        let (held, held_rx) = watch::channel(None);
        let (load_balancer, load_balancer_rx) = watch::channel(LoadBalancerStatus::default());
        // Few messages, each small; see `Published::tell` for why a full queue loses nothing.
        let (told, told_rx) = mpsc::channel(16);
        let reports = Reports::default();
        let board = LifecycleBoard::default();
        let announcer = Announcer::default();
        let views = Arc::new(Views {
            name: config.name.clone(),
            watchdog: config.watchdog,
            started: std::time::Instant::now(),
            health_addr,
            phase: phase_rx,
            run: run_rx,
            tick: tick_rx,
            report: reports.subscribe(),
            imds: imds_rx,
            checks: checks_rx,
            lifecycle: board.subscribe(),
            held: held_rx,
            load_balancer: load_balancer_rx,
            announcer: announcer.clone(),
            tracking,
        });
        Wiring {
            phase,
            published: Published {
                run,
                tick,
                announcer,
                told,
                report: reports.subscribe(),
            },
            told: Some(told_rx),
            reports,
            imds,
            checks,
            board,
            held,
            load_balancer,
            views,
        }
    }

    /// The `status` reply, read from the views at the moment it is asked for.
    fn status(&self) -> StatusFn {
        let views = self.views.clone();
        Arc::new(move || crate::health::status::status(&views))
    }
}

/// `--cgroup`: the agent's own cgroup, or why its process group stands for it; and why
/// `--memory-max` could not be applied, if it could not.
fn agent_cgroup(config: &Config) -> Result<(Tracking, Option<String>), RunError> {
    let mode = config.cgroup.as_str();
    if config.cgroup == CgroupMode::Off {
        let off = Tracking {
            cgroup: None,
            mode,
            fallback: Some("--cgroup off".to_string()),
        };
        return Ok((off, None));
    }
    match AgentCgroup::create(&config.name, config.memory_max) {
        Ok((cgroup, notes)) => {
            let tracking = Tracking {
                cgroup: Some(Arc::new(cgroup)),
                mode,
                fallback: None,
            };
            Ok((tracking, notes.memory_max_skipped))
        }
        Err(err) if config.cgroup == CgroupMode::Require => Err(RunError::Cgroup(err)),
        Err(err) => {
            let fallback = Tracking {
                cgroup: None,
                mode,
                fallback: Some(err.to_string()),
            };
            Ok((fallback, None))
        }
    }
}

/// One line on what stands for the agent's processes (and one if `--memory-max` is not applied).
fn log_tracking(tracking: &Tracking, memory_note: Option<&str>) {
    match (&tracking.cgroup, &tracking.fallback) {
        (Some(cgroup), _) => {
            let controllers = match cgroup.controllers() {
                [] => "none".to_string(),
                some => some.join(" "),
            };
            tracing::info!(path = %cgroup.path().display(), controllers = %controllers, "the agent runs in a cgroup of its own: it is gone when every process it started is");
        }
        (None, Some(why)) if tracking.mode == "auto" => {
            tracing::info!(
                "--cgroup auto: no cgroup for the agent ({why}); its process group stands for it, which a setsid() grandchild can outlive"
            );
        }
        _ => {}
    }
    if let Some(why) = memory_note {
        tracing::warn!("--memory-max not applied: {why}");
    }
}

/// Removes the agent's cgroup when the run ends, whichever way it ends.
struct RemoveCgroup(Option<Arc<AgentCgroup>>);

impl Drop for RemoveCgroup {
    fn drop(&mut self) {
        if let Some(cgroup) = &self.0 {
            cgroup.remove();
        }
    }
}

/// Once the agent started (a guard that fails before says only why): who reaps what the agent
/// orphans, and which signals stay ignored for it.
fn say_what_the_agent_inherits(config: &Config) {
    if !config.subreaper && std::process::id() != 1 {
        // As tini says it: orphans go to whoever reaps above the guard (systemd, the
        // container's init), and the guard's orphan count stays at 0.
        tracing::info!(
            "not PID 1 and not a child subreaper: processes the agent orphans are reaped by the init above the guard, not by it (--subreaper to reap them here)"
        );
    }
    let ignored = inherited::ignored_names();
    if !ignored.is_empty() {
        tracing::info!(
            signals = %ignored.join(","),
            "signals ignored when the guard started stay ignored for the agent and are not forwarded"
        );
    }
}

/// Hands the heap pages that start-up used and freed (the argument parser's tree above all, a
/// few hundred KiB) back to the kernel, once the agent runs and the guard settles into waiting:
/// glibc keeps freed memory below the heap's top for reuse, and an idle guard would otherwise
/// hold it resident for its whole life.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists, under its lock.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// `--in-warm-pool wait`: holds the agent back while the instance is in a warm pool. `true` if
/// a stop signal came first: the agent is then never started.
async fn stopped_while_held(config: &Config, hold: &Hold<'_>, signals: &mut SignalSource) -> bool {
    if config.in_warm_pool != InWarmPool::Wait || config.imds == ImdsMode::Off {
        return false;
    }
    let imds = hold.views.imds.clone();
    tokio::select! {
        _ = warm_pool::hold(imds, hold.held, hold.tick, hold.upstream) => false,
        sig = stop_signal(signals) => {
            let record = crate::journal::Record::StopSignalReceived { signal: sig };
            tracing::info!(signal = %sig, journal = %record.json(), "received a stop signal while the agent was held back; exiting without starting it");
            true
        }
    }
}

/// What holding the agent back in a warm pool reads and writes: the IMDS status, the hold (its
/// one writer while no agent runs), the guard's tick and systemd.
struct Hold<'a> {
    views: &'a Views,
    held: &'a watch::Sender<Option<String>>,
    tick: &'a watch::Sender<std::time::Instant>,
    upstream: &'a Upstream,
}

/// `--imds on`: IMDS is checked before the agent starts, which is not started at all without
/// it. `true` if a stop signal came first (the agent is then never started): the wait takes up
/// to 10 s, and a guard stopped meanwhile must not start an agent only to drain it.
async fn stopped_before_imds(
    client: &ImdsClient,
    signals: &mut SignalSource,
) -> Result<bool, RunError> {
    tokio::select! {
        checked = require_imds(client) => checked.map(|()| false).map_err(RunError::ImdsRequired),
        sig = stop_signal(signals) => {
            let record = crate::journal::Record::StopSignalReceived { signal: sig };
            tracing::info!(signal = %sig, journal = %record.json(), "received a stop signal while waiting for IMDS; exiting without starting the agent");
            Ok(true)
        }
    }
}

/// The next SIGTERM or SIGINT; other signals have no agent to go to yet.
async fn stop_signal(signals: &mut SignalSource) -> Sig {
    loop {
        match signals.next().await {
            Some(sig) if role(sig) == Role::Stop => return sig,
            Some(sig) => tracing::debug!(signal = %sig, "no agent to pass this signal to yet"),
            None => std::future::pending::<()>().await,
        }
    }
}

/// The health listener, bound before the agent starts (a port in use is the guard's failure).
async fn bind_health(config: &Config) -> Result<Option<tokio::net::TcpListener>, RunError> {
    let Some(addr) = config.health_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::HealthListen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RunError::HealthListen { addr, source })?;
    tracing::info!(addr = %bound, "health endpoint listening");
    Ok(Some(listener))
}

/// The agent's command and the environment the guard adds to its own.
fn spawn_spec(config: &Config) -> SpawnSpec {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("AGENT_GUARD_SOCKET".into(), config.socket.clone().into()),
        ("NOTIFY_SOCKET".into(), config.notify_socket.clone().into()),
    ];
    if let Some(watchdog) = config.watchdog {
        env.push((
            "WATCHDOG_USEC".into(),
            watchdog.as_micros().to_string().into(),
        ));
    }
    SpawnSpec {
        command: config.command.clone(),
        env,
        watchdog_pid: config.watchdog.is_some(),
    }
}

/// What the tasks beside the supervisor are started with.
struct Started {
    sockets: Sockets,
    health: Option<tokio::net::TcpListener>,
    imds: Option<ImdsClient>,
    events: mpsc::Sender<state::Event>,
    upstream: Upstream,
    host_hooks: HostHooks,
}

/// Everything that runs beside the supervisor, and how each is ended.
struct Tasks {
    /// Told once the agent is gone; every server and poller then ends by itself.
    shutdown: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<()>>,
    lifecycle: Option<LifecycleHandle>,
    protection: Option<ProtectionHandle>,
    /// After a crash loop, with `--on-crash-loop unhealthy`: ask the group for a replacement.
    replace: Option<Replace>,
    /// For the supervisor: who stops the load balancer before the agent hears of a drain.
    load_balancer: Option<LoadBalancerLink>,
    /// After a crash loop that marked the instance Unhealthy: take it out of its target groups.
    after_crash_loop: Option<AfterCrashLoop>,
}

/// What `--on-crash-loop unhealthy` needs: the AWS context, if the guard can know its group.
struct Replace {
    aws: Option<Arc<SharedAws>>,
}

impl Tasks {
    /// The servers the agent and the outside world talk to: the control socket, the agent's
    /// NOTIFY_SOCKET (and its reports across restarts), and the health endpoint.
    fn agent_servers(
        config: &Config,
        wiring: &Wiring,
        (sockets, health): (Sockets, Option<tokio::net::TcpListener>),
        (events, upstream): (&mpsc::Sender<state::Event>, Upstream),
        shutdown: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let control = Control {
            events: events.clone(),
            ready_on: config.ready_on,
            reports: wiring.reports.clone(),
            phase: wiring.views.phase.clone(),
            run: wiring.views.run.clone(),
            announcer: wiring.published.announcer.clone(),
            watchdog: config.watchdog,
            status: wiring.status(),
        };
        let mut servers = vec![
            spawn_made(|| control::serve(sockets.control, control.clone(), shutdown.clone())),
            spawn_made(|| sdnotify::serve(sockets.notify, control, upstream, shutdown.clone())),
            until_cancelled(
                wiring
                    .reports
                    .clone()
                    .follow_restarts(wiring.views.run.clone()),
                shutdown,
            ),
        ];
        if let Some(listener) = health {
            servers.push(server::serve_on_own_thread(
                listener,
                wiring.views.clone(),
                shutdown.clone(),
            ));
        }
        servers
    }

    fn start(config: &Config, wiring: &mut Wiring, started: Started) -> Tasks {
        let shutdown = CancellationToken::new();
        let mut servers = Tasks::agent_servers(
            config,
            wiring,
            (started.sockets, started.health),
            (&started.events, started.upstream),
            &shutdown,
        );
        servers.extend(checks::spawn(
            config.checks.clone(),
            checks::ProbeSettings {
                interval: config.check_interval,
                timeout: config.check_timeout,
                ready_on_child: config.ready_on == state::ReadyOn::Health,
            },
            wiring.checks.clone(),
            started.events.clone(),
            shutdown.clone(),
        ));
        let aws = shared_aws(config, wiring);
        let (load_balancer, after_crash_loop) =
            match load_balancer_aws(config, wiring, aws.as_ref()) {
                Some(lb_aws) => {
                    let (task, link, after_crash_loop) = Deregistration::new(
                        config.load_balancer.clone(),
                        lb_aws,
                        config.lifecycle.imds_endpoint.clone(),
                        started.events.clone(),
                        wiring.load_balancer.clone(),
                    );
                    servers.push(spawn_made(|| task.run(shutdown.clone())));
                    (Some(link), Some(after_crash_loop))
                }
                None => (None, None),
            };
        if let Some(imds) = started.imds {
            servers.extend(spawn_notices(
                config,
                (imds, wiring.imds.clone()),
                started.events,
                aws.clone(),
                &shutdown,
            ));
        }
        let mut tasks = Tasks {
            shutdown,
            servers,
            lifecycle: None,
            protection: None,
            replace: replaces_on_crash_loop(config).then(|| Replace { aws: aws.clone() }),
            load_balancer,
            after_crash_loop,
        };
        if let Some(aws) = aws {
            tasks.start_aws(config, wiring, aws, started.host_hooks);
        }
        tasks
    }

    /// The features that act on the group: each shares the one AWS context, built when first
    /// needed. Not inlined, for [`spawn_made`]'s reason.
    #[inline(never)]
    fn start_aws(
        &mut self,
        config: &Config,
        wiring: &mut Wiring,
        aws: Arc<SharedAws>,
        host_hooks: HostHooks,
    ) {
        let views = &wiring.views;
        if let (true, Some(told)) = (config.lifecycle.enabled(), wiring.told.take()) {
            let reads = lifecycle::Reads {
                phase: views.phase.clone(),
                told,
                held: views.held.clone(),
                run: views.run.clone(),
                imds: views.imds.clone(),
            };
            self.lifecycle = Some(LifecycleHandle::start(
                config.lifecycle.clone(),
                aws.clone(),
                reads,
                host_hooks,
            ));
        }
        if config.busy.protect {
            self.protection = Some(ProtectionHandle::start(
                config.busy.clone(),
                aws.clone(),
                wiring.board.clone(),
                (views.phase.clone(), views.report.clone()),
            ));
        }
        if let Some(target) = config.busy.emf.clone() {
            let reads = emf::Reads {
                phase: views.phase.clone(),
                report: views.report.clone(),
                lifecycle: wiring.board.clone(),
                cgroup: views.tracking.cgroup.clone(),
            };
            let shutdown = self.shutdown.clone();
            let busy = config.busy.clone();
            self.servers
                .push(spawn_made(|| emf::run(busy, target, aws, reads, shutdown)));
        }
    }

    /// The agent and its group are gone. Decide (done), tell (release protection, ask for a
    /// replacement after a crash loop, complete the hook, cancel the servers), then wait for
    /// each under a deadline.
    async fn finish(self, outcome: Outcome, signals: SignalSource) {
        if let Some(protection) = self.protection {
            // A protected instance whose agent is gone must not stay protected.
            protection.finish().await;
        }
        // Before the hook work: an instance marked Unhealthy is terminated by its group, and
        // its termination hook then waits for this guard, which stays to complete it.
        let marked_unhealthy = match (outcome.crash_loop, self.replace) {
            (true, Some(replace)) => replace::after_crash_loop(replace.aws.as_deref()).await,
            _ => false,
        };
        // Its load balancer would send to the dead agent until its health checks fail: the
        // instance leaves its target groups now, before the guard waits for the group. Only
        // when marked Unhealthy: an instance that stays in service must stay registered.
        if let (true, Some(lb)) = (marked_unhealthy, self.after_crash_loop) {
            lb.deregister().await;
        }
        if let Some(lifecycle) = self.lifecycle {
            // Only now, with the proof of exit in hand, may the termination hook complete.
            let over = lifecycle::RunOver {
                outcome,
                marked_unhealthy,
                guard_stays: false,
            };
            lifecycle.finish(over, signals).await;
        }
        stop_servers(self.shutdown, self.servers).await;
    }

    /// The agent is gone after a return to the warm pool, and the guard stays: the termination
    /// hook is completed as on any way out, then the lifecycle work starts over for the next
    /// run (registered again in the hooks directory, told afresh). Everything else runs on.
    /// `None` if a stop signal came meanwhile: the guard is to exit.
    async fn back_in_pool(
        &mut self,
        config: &Config,
        views: &Views,
        told: &mut mpsc::Sender<ToLifecycle>,
        (outcome, signals): (Outcome, SignalSource),
    ) -> Option<SignalSource> {
        let Some(lifecycle) = self.lifecycle.take() else {
            return Some(signals);
        };
        let over = lifecycle::RunOver {
            outcome,
            marked_unhealthy: false,
            guard_stays: true,
        };
        let aws = lifecycle.aws();
        let signals = lifecycle.finish(over, signals).await?;
        let host = match HostHooks::register(&config.lifecycle, &config.name) {
            Ok(host) => host,
            Err(err) => {
                tracing::error!(error = %err, "lifecycle: cannot register again in the hooks directory; the hooks are off for the next run");
                return Some(signals);
            }
        };
        let (to_lifecycle, told_rx) = mpsc::channel(16);
        *told = to_lifecycle;
        let reads = lifecycle::Reads {
            phase: views.phase.clone(),
            told: told_rx,
            held: views.held.clone(),
            run: views.run.clone(),
            imds: views.imds.clone(),
        };
        self.lifecycle = Some(LifecycleHandle::start(
            config.lifecycle.clone(),
            aws,
            reads,
            host,
        ));
        Some(signals)
    }

    /// The run ends before an agent was started (held in a warm pool, or the spawn failed): no
    /// hook can be completed, protection is released, the servers stop.
    async fn finish_without_agent(self) {
        if let Some(protection) = self.protection {
            protection.finish().await;
        }
        if let Some(lifecycle) = self.lifecycle {
            lifecycle.end_without_agent().await;
        }
        stop_servers(self.shutdown, self.servers).await;
    }
}

/// The IMDS poller, and beside it the scheduled-event work it feeds; both end on `shutdown`.
/// Not inlined, for [`spawn_made`]'s reason.
#[inline(never)]
fn spawn_notices(
    config: &Config,
    (client, status): (ImdsClient, watch::Sender<ImdsStatus>),
    events: mpsc::Sender<state::Event>,
    aws: Option<Arc<SharedAws>>,
    shutdown: &CancellationToken,
) -> [tokio::task::JoinHandle<()>; 2] {
    let settings = NoticeSettings {
        poll: config.imds_poll,
        on_rebalance: config.on_rebalance,
        spot_margin: config.spot_margin,
    };
    let (bodies, bodies_rx) = watch::channel(None);
    let poller =
        Poller::new(client, settings, events.clone(), status.clone()).scheduled_events(bodies);
    let probe_first = config.imds == ImdsMode::Auto;
    let settings = MaintenanceSettings {
        mode: config.on_maintenance,
        margin: config.maintenance_margin,
    };
    let aws = aws.filter(|_| replaces_on_maintenance(config));
    let maintenance = maintenance::run(settings, bodies_rx, events, status, aws);
    [
        until_cancelled(poller.run(probe_first), shutdown),
        until_cancelled(maintenance, shutdown),
    ]
}

/// Spawns the future `make` returns, made in a stack frame of its own. Start-up spawns a dozen
/// tasks, and their futures (several KiB each) made inline would sit side by side in one frame
/// (`Tasks::start`'s was 99 KiB); stack probes touch every page of a frame, and the main
/// thread's stack keeps what it touched resident for the guard's whole life. Not inlined, the
/// frames of these calls take turns on the same stack pages.
#[inline(never)]
fn spawn_made<F>(make: impl FnOnce() -> F) -> tokio::task::JoinHandle<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(make())
}

/// Runs `work` until it ends or `shutdown` is told. What runs this way holds nothing that needs
/// closing: dropping it at an await is its end. Not inlined, for [`spawn_made`]'s reason.
#[inline(never)]
fn until_cancelled(
    work: impl std::future::Future<Output = ()> + Send + 'static,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let stop = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = stop.cancelled() => {}
        }
    })
}

/// Tells the servers to stop, then waits for each under [`SHUTDOWN_WITHIN`].
async fn stop_servers(shutdown: CancellationToken, servers: Vec<tokio::task::JoinHandle<()>>) {
    shutdown.cancel();
    for mut server in servers {
        if tokio::time::timeout(SHUTDOWN_WITHIN, &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }
}

/// Whether scheduled events are met by replacing the instance, which needs the AWS context.
fn replaces_on_maintenance(config: &Config) -> bool {
    config.imds != ImdsMode::Off && config.on_maintenance == OnMaintenance::Replace
}

/// Whether a crash loop ends with the instance marked Unhealthy (`--on-crash-loop unhealthy`).
fn replaces_on_crash_loop(config: &Config) -> bool {
    config.restart.policy != RestartPolicy::Never && config.on_crash_loop == OnCrashLoop::Unhealthy
}

/// The one AWS context, if a feature acts on the group; nothing is loaded until first used.
fn shared_aws(config: &Config, wiring: &Wiring) -> Option<Arc<SharedAws>> {
    // Without IMDS there is no instance id, so no group to ask after a crash loop.
    let needs_aws = config.lifecycle.enabled()
        || config.busy.enabled()
        || (replaces_on_crash_loop(config) && config.imds != ImdsMode::Off)
        || replaces_on_maintenance(config);
    needs_aws.then(|| {
        SharedAws::new(
            config.lifecycle.asg_name.clone(),
            config.lifecycle.imds_endpoint.clone(),
            wiring.views.imds.clone(),
            wiring.board.clone(),
        )
    })
}

/// Whether a drain (or a crash loop's end) may stop a load balancer, the AWS context it reads
/// the target groups with (`None` inside: only `--lb-grace`), and whether it reads them at
/// start. `auto` reads the group's target groups at start when the guard works with the group
/// from the start (a lifecycle hook or scale-in protection), so that a guard that never called
/// AWS does not begin to at start; listed ARNs always do. A guard that works with its group only
/// after a crash loop (`--on-crash-loop unhealthy`) reads them then, to deregister.
fn load_balancer_aws(
    config: &Config,
    wiring: &Wiring,
    aws: Option<&Arc<SharedAws>>,
) -> Option<(Option<Arc<SharedAws>>, bool)> {
    let lb = &config.load_balancer;
    let imds = config.imds != ImdsMode::Off;
    let at_start = imds
        && match lb.target_groups {
            TargetGroups::Off => false,
            TargetGroups::Auto => config.lifecycle.enabled() || config.busy.enabled(),
            TargetGroups::Arns(_) => true,
        };
    let after_crash_loop =
        imds && lb.target_groups == TargetGroups::Auto && replaces_on_crash_loop(config);
    let aws = (at_start || after_crash_loop).then(|| {
        aws.cloned().unwrap_or_else(|| {
            SharedAws::new(
                config.lifecycle.asg_name.clone(),
                config.lifecycle.imds_endpoint.clone(),
                wiring.views.imds.clone(),
                wiring.board.clone(),
            )
        })
    });
    (aws.is_some() || !lb.grace.is_zero()).then_some((aws, at_start))
}

/// The control and sd_notify sockets, bound before the agent starts.
struct Sockets {
    control: tokio::net::UnixListener,
    notify: tokio::net::UnixDatagram,
}

impl Sockets {
    fn bind(config: &Config) -> Result<Sockets, RunError> {
        unixsock::prepare(&config.socket, unixsock::Kind::Stream)?;
        unixsock::prepare(&config.notify_socket, unixsock::Kind::Datagram)?;
        let control =
            unixsock::bind_private(&config.socket, |p| tokio::net::UnixListener::bind(p))?;
        let notify =
            unixsock::bind_private(&config.notify_socket, |p| tokio::net::UnixDatagram::bind(p))?;
        sdnotify::pass_credentials(&notify).map_err(|source| {
            RunError::Socket(unixsock::SocketError::Io {
                path: config.notify_socket.clone(),
                source,
            })
        })?;
        Ok(Sockets { control, notify })
    }
}

/// Each IMDS request's bound, to connect and again to answer.
const IMDS_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `--imds on` waits for IMDS at start.
const IMDS_REQUIRED_WITHIN: Duration = Duration::from_secs(10);

/// Probes IMDS until it answers or `IMDS_REQUIRED_WITHIN` has passed.
async fn require_imds(client: &ImdsClient) -> Result<(), imds::ImdsError> {
    let give_up = tokio::time::Instant::now() + IMDS_REQUIRED_WITHIN;
    loop {
        let left = give_up.saturating_duration_since(tokio::time::Instant::now());
        match notices::probe(client, left.max(Duration::from_millis(100))).await {
            Ok(_) => return Ok(()),
            Err(err) if tokio::time::Instant::now() + Duration::from_millis(500) >= give_up => {
                return Err(err);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    /// Every enum written by `names::named_enum!`: each name parses back to its variant, serde
    /// writes and reads that same name, and no two variants share one.
    macro_rules! every_name_parses_back {
        ($($t:ty),+ $(,)?) => {$(
            for (value, name) in <$t>::ALL.into_iter().zip(<$t>::NAMES) {
                assert_eq!(value.as_str(), name, stringify!($t));
                assert_eq!(name.parse::<$t>().ok(), Some(value), "{name}");
                let json = serde_json::to_string(&value).expect("serialises");
                assert_eq!(json, format!("\"{name}\""));
                assert_eq!(serde_json::from_str::<$t>(&json).ok(), Some(value), "{name}");
                assert_eq!(<$t>::NAMES.iter().filter(|n| **n == name).count(), 1, "{name}");
            }
        )+};
    }

    #[test]
    fn every_enum_name_parses_back() {
        every_name_parses_back!(
            crate::model::HookState,
            crate::agent::protocol::Op,
            crate::aws::scheduled::EventCode,
            crate::aws::scheduled::EventState,
            crate::cli::DrillEvent,
            crate::config::settings::HookResult,
            crate::config::settings::OnMaintenance,
            crate::journal::Awaiting,
            crate::journal::NoticeKind,
            crate::machine::restart::RestartPolicy,
            crate::machine::state::DrainReason,
            crate::machine::state::PhaseName,
        );
    }
}
