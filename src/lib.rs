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
//! - [`logging`]: the guard's own log lines on stderr, text or JSON.
//! - [`exit`]: the exit status contract.

pub mod child;
pub mod cli;
pub mod config;
pub mod exit;
pub mod logging;
pub mod reaper;
pub mod signals;
pub mod state;
pub mod supervisor;

use std::io;

use tokio::sync::{mpsc, watch};

use crate::child::{Agent, SpawnError, SpawnSpec};
use crate::config::Config;
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
    let job_control = JobControl::ignore().map_err(RunError::JobControl)?;
    // Handlers first: a signal that arrives while the agent starts is kept, not lost.
    let signals = SignalSource::install()?;
    let spec = SpawnSpec {
        command: config.command.clone(),
        env: Vec::new(),
    };
    let agent = Agent::spawn(&spec, job_control)?;
    let (phase_tx, _phase_rx) = watch::channel(Phase::Starting);
    let supervisor = Supervisor::new(
        agent,
        signals,
        StopSettings::from_config(&config),
        mpsc::channel(64),
        phase_tx,
    );
    Ok(supervisor.run().await)
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
