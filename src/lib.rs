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
//! - [`logging`]: the guard's own log lines on stderr, text or JSON.
//! - [`exit`]: the exit status contract.

pub mod child;
pub mod cli;
pub mod config;
pub mod exit;
pub mod imds;
pub mod logging;
pub mod notices;
pub mod reaper;
pub mod signals;
pub mod sim;
pub mod state;
pub mod supervisor;

use std::io;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::child::{Agent, SpawnError, SpawnSpec};
use crate::config::{Config, ImdsMode};
use crate::imds::ImdsClient;
use crate::notices::{ImdsStatus, NoticeSettings, Poller};
use crate::reaper::ChildExit;
use crate::signals::{JobControl, SignalSetupError, SignalSource};
use crate::state::Phase;
use crate::supervisor::{StopSettings, Supervisor};

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
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
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

async fn supervise(config: Config) -> Result<ChildExit, RunError> {
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
    let spec = SpawnSpec {
        command: config.command.clone(),
        env: Vec::new(),
    };
    let agent = Agent::spawn(&spec, job_control)?;
    let (phase_tx, _phase_rx) = watch::channel(Phase::Starting);
    let (events_tx, events_rx) = mpsc::channel(64);
    let (imds_status, _imds_status_rx) = watch::channel(ImdsStatus::default());
    let poller = imds.map(|client| {
        let settings = NoticeSettings {
            poll: config.imds_poll,
            on_rebalance: config.on_rebalance,
            spot_margin: config.spot_margin,
        };
        let poller = Poller::new(client, settings, events_tx.clone(), imds_status);
        tokio::spawn(poller.run(config.imds == ImdsMode::Auto))
    });
    let supervisor = Supervisor::new(
        agent,
        signals,
        StopSettings::from_config(&config),
        (events_tx, events_rx),
        phase_tx,
    );
    let exit = supervisor.run().await;
    if let Some(poller) = poller {
        poller.abort();
    }
    Ok(exit)
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
