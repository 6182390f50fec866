//! agent-guard: a sidecar supervisor that lets an agent on an EC2 Auto Scaling group scale in and
//! out without losing work.
//!
//! # Layout
//! - `main.rs`: parses, runs, maps the outcome to an exit code.
//! - [`cli`]: the raw flags, with help text, env fallbacks and defaults; no I/O.
//! - [`config`]: flags + env + TOML file → a validated [`config::Config`], with provenance.
//! - [`state`]: `Phase`, `Event`, `Action` and the pure `step` between them.
//! - [`supervisor`]: the one owner of the phase; feeds events to `step`, performs actions.
//! - [`child`]: spawns the agent in its own process group; signals it or its group.
//! - [`reaper`]: the only caller of `waitpid`; makes [`reaper::ChildExit`], the proof of exit.
//! - [`signals`]: signal names, which are caught, forwarded, or start a drain.
//! - [`imds`]: IMDSv2 client over the SDK's, with what it lacks (401 renewal, hop-limit hint).
//! - [`notices`]: polls IMDS, de-duplicates notices, sends drain requests; never dies of an error.
//! - [`sim`]: simulated IMDS (and Auto Scaling API) for tests and drills; loopback only.
//! - [`health`]: the HTTP health endpoint (/livez /readyz /health /status /metrics) from snapshots.
//! - [`checks`]: background probes of the agent's health URL and its dependencies.
//! - [`hub`]: what the supervisor shares with the agent-facing servers (announcements, reports).
//! - [`drain`]: the control socket (JSON lines): drains, readiness, status, for agent and operator.
//! - [`sdnotify`]: the agent's NOTIFY_SOCKET with systemd's meanings; relays to systemd upstream.
//! - [`unixsock`]: creating those sockets safely (0600, stale replaced, symlinks refused).
//! - [`drill`]: `agent-guard drill`: rehearses an event against the simulators, prints a verdict.
//! - [`ctl`]: the `agent-guard ctl` client.
//! - [`lifecycle`]: Auto Scaling lifecycle actions: heartbeats, completion only after the agent exits.
//! - [`hooks_dir`]: guards on one host register per hook; the last agent out completes it once.
//! - [`termination`]: the termination hook once the agent is gone: the wait state, however late.
//! - [`wait_state`]: the instance's lifecycle state from the API, and when to look again.
//! - [`hook_calls`]: the lifecycle calls, retried through throttling with full jitter.
//! - [`backoff`]: jittered waits, so a fleet never calls in step.
//! - [`busy`]: scale-in protection while the agent has work; its load as CloudWatch EMF lines.
//! - [`logging`]: the guard's own log lines on stderr, text or JSON.
//! - [`exit`]: the exit status contract.

mod agent;
mod aws;
mod cli;
mod cmd;
mod config;
mod fmt;
mod health;
mod journal;
mod logging;
mod machine;
mod process;
pub mod sim;

// What the binary (`main.rs`) needs; everything else stays inside the crate.
pub use crate::cmd::ctl::run as ctl;
pub use crate::cmd::drill::run as drill;
pub use crate::config::{Invocation, load};
pub use crate::logging::init as init_logging;
pub use crate::process::child::resolve;
/// The proof that the agent exited; public so that its doctest shows it cannot be forged.
pub use crate::process::exit::ChildExit;
pub use crate::process::exit::GUARD_FAILED;

use std::ffi::OsString;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::agent::control::Control;
use crate::agent::hub::Hub;
use crate::agent::sdnotify::Upstream;
use crate::agent::{control, sdnotify, unixsock};
use crate::aws::context::SharedAws;
use crate::aws::emf;
use crate::aws::imds::ImdsClient;
use crate::aws::lifecycle::{HostHooks, LifecycleHandle};
use crate::aws::notices::{ImdsStatus, NoticeSettings, Poller};
use crate::aws::protection::ProtectionHandle;
use crate::aws::{imds, notices};
use crate::config::{Config, ImdsMode};
use crate::health::{checks, server};
use crate::machine::state;
use crate::machine::state::State;
use crate::machine::supervisor::{Outcome, StopSettings, Supervisor};
use crate::process::child::{Agent, SpawnError, SpawnSpec};
use crate::process::signals::{JobControl, SignalSetupError, SignalSource};

/// Why the guard could not supervise the agent at all.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error(transparent)]
    Signals(#[from] SignalSetupError),
    #[error("--subreaper: cannot become a child subreaper: {0}")]
    Subreaper(#[source] io::Error),
    #[error("cannot ignore SIGTTIN/SIGTTOU: {0}")]
    JobControl(#[source] io::Error),
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
    HooksDir(#[from] crate::aws::hooks_dir::HooksDirError),
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

/// Supervises `config.command` until it and its process group are gone; returns its status.
pub fn run(config: Config) -> Result<ChildExit, RunError> {
    // One thread is plenty for a supervisor, and keeps its footprint small.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(supervise(config))
}

/// How long the servers get, once told to stop, to write their last words (the `exited` phase to
/// subscribers) and close.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(2);

async fn supervise(config: Config) -> Result<ChildExit, RunError> {
    // One TLS stack for the whole process (the AWS SDK's and the HTTPS checks'): rustls with ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    if config.subreaper && std::process::id() != 1 {
        become_subreaper().map_err(RunError::Subreaper)?;
    }
    let imds = match config.imds {
        ImdsMode::Off => None,
        ImdsMode::Auto | ImdsMode::On => {
            Some(ImdsClient::new(&config.imds_endpoint, IMDS_TIMEOUT)?)
        }
    };
    if let (ImdsMode::On, Some(client)) = (config.imds, &imds) {
        // Required IMDS is checked before the agent starts: it is not started at all without it.
        require_imds(client).await.map_err(RunError::ImdsRequired)?;
    }
    let job_control = JobControl::ignore().map_err(RunError::JobControl)?;
    // Handlers first: a signal that arrives while the agent starts is kept, not lost.
    let signals = SignalSource::install()?;
    let (phase_tx, phase_rx) = watch::channel(State::new().phase);
    let (imds_status, imds_status_rx) = watch::channel(ImdsStatus::default());
    let (checks_tx, checks_rx) = watch::channel(checks::Snapshot::default());
    let hub = Arc::new(Hub::new(
        &config.name,
        phase_rx,
        config.watchdog,
        imds_status_rx,
        checks_rx,
    ));
    let health = bind_health(&config, &hub).await?;
    // The sockets exist before the agent does, so it can connect from its first instruction.
    let sockets = Sockets::bind(&config)?;
    // Registered before the agent starts: the other guards on this host wait for it from then.
    let host_hooks = HostHooks::register(&config.lifecycle, &config.name)?;
    let agent = Agent::spawn(&spawn_spec(&config), job_control)?;
    hub.set_agent_pid(agent.pid());
    let (events_tx, events_rx) = mpsc::channel(64);
    let upstream = Upstream::from_env();
    let tasks = Tasks::start(
        &config,
        &hub,
        Started {
            sockets,
            health,
            imds: imds.map(|client| (client, imds_status)),
            checks: checks_tx,
            events: events_tx.clone(),
            upstream: upstream.clone(),
            host_hooks,
        },
    );
    let supervisor = Supervisor::new(
        agent,
        signals,
        StopSettings::from_config(&config),
        (events_tx, events_rx),
        phase_tx,
        hub.clone(),
        upstream,
    );
    let outcome = supervisor.run().await;
    let exit = outcome.exit.clone();
    tasks.finish(outcome).await;
    unixsock::remove(&config.socket);
    unixsock::remove(&config.notify_socket);
    Ok(exit)
}

/// The health listener, bound before the agent starts (a port in use is the guard's failure).
async fn bind_health(
    config: &Config,
    hub: &Hub,
) -> Result<Option<tokio::net::TcpListener>, RunError> {
    let Some(addr) = config.health_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RunError::HealthListen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| RunError::HealthListen { addr, source })?;
    hub.stats().health_addr = Some(bound);
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
    imds: Option<(ImdsClient, watch::Sender<ImdsStatus>)>,
    checks: watch::Sender<checks::Snapshot>,
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
}

impl Tasks {
    fn start(config: &Config, hub: &Arc<Hub>, started: Started) -> Tasks {
        let shutdown = CancellationToken::new();
        let control = Control {
            hub: hub.clone(),
            events: started.events.clone(),
            ready_on: config.ready_on,
        };
        let mut servers = vec![
            tokio::spawn(control::serve(
                started.sockets.control,
                control.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(sdnotify::serve(
                started.sockets.notify,
                control,
                started.upstream,
                shutdown.clone(),
            )),
        ];
        if let Some(listener) = started.health {
            servers.push(tokio::spawn(server::serve(
                listener,
                hub.clone(),
                shutdown.clone(),
            )));
        }
        servers.extend(checks::spawn(
            config.checks.clone(),
            checks::ProbeSettings {
                interval: config.check_interval,
                timeout: config.check_timeout,
                ready_on_child: config.ready_on == state::ReadyOn::Health,
            },
            started.checks,
            started.events.clone(),
            shutdown.clone(),
        ));
        if let Some((client, status)) = started.imds {
            let settings = NoticeSettings {
                poll: config.imds_poll,
                on_rebalance: config.on_rebalance,
                spot_margin: config.spot_margin,
            };
            let poller = Poller::new(client, settings, started.events, status);
            let probe_first = config.imds == ImdsMode::Auto;
            let stop = shutdown.clone();
            servers.push(tokio::spawn(async move {
                // The poller holds nothing that needs closing: dropping it at an await is its end.
                tokio::select! {
                    _ = poller.run(probe_first) => {}
                    _ = stop.cancelled() => {}
                }
            }));
        }
        let needs_aws = config.lifecycle.enabled() || config.busy.enabled();
        let aws = needs_aws.then(|| {
            SharedAws::new(
                config.lifecycle.asg_name.clone(),
                config.lifecycle.imds_endpoint.clone(),
                hub.clone(),
            )
        });
        let mut tasks = Tasks {
            shutdown,
            servers,
            lifecycle: None,
            protection: None,
        };
        if let Some(aws) = aws {
            tasks.start_aws(config, hub, aws, started.host_hooks);
        }
        tasks
    }

    /// The features that act on the group: each shares the one AWS context, built when first
    /// needed.
    fn start_aws(
        &mut self,
        config: &Config,
        hub: &Arc<Hub>,
        aws: Arc<SharedAws>,
        host_hooks: HostHooks,
    ) {
        if config.lifecycle.enabled() {
            self.lifecycle = Some(LifecycleHandle::start(
                config.lifecycle.clone(),
                aws.clone(),
                hub.clone(),
                host_hooks,
            ));
        }
        if config.busy.protect {
            self.protection = Some(ProtectionHandle::start(
                config.busy.clone(),
                aws.clone(),
                hub.clone(),
            ));
        }
        if let Some(target) = config.busy.emf.clone() {
            self.servers.push(tokio::spawn(emf::run(
                config.busy.clone(),
                target,
                aws,
                hub.clone(),
                self.shutdown.clone(),
            )));
        }
    }

    /// The agent and its group are gone. Decide (done), tell (release protection, complete the
    /// hook, cancel the servers), then wait for each under a deadline.
    async fn finish(self, outcome: Outcome) {
        if let Some(protection) = self.protection {
            // A protected instance whose agent is gone must not stay protected.
            protection.finish().await;
        }
        if let Some(lifecycle) = self.lifecycle {
            // Only now, with the proof of exit in hand, may the termination hook complete.
            lifecycle.finish(outcome).await;
        }
        self.shutdown.cancel();
        for mut server in self.servers {
            if tokio::time::timeout(SHUTDOWN_WITHIN, &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }
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
