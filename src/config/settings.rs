//! The settings types that configuration builds and the features read: plain data, no I/O, so
//! that configuration never imports the features that use it.

use std::path::PathBuf;
use std::time::Duration;

use crate::process::sig::Sig;

/// Where forwarded signals go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardTo {
    /// The agent's whole process group (the default).
    Group,
    /// The agent process alone.
    Child,
}

/// Whether the guard uses IMDS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsMode {
    /// Use it if it answers at start; otherwise carry on without notices.
    Auto,
    /// Require it: exit 125 if it does not answer within 10 s.
    On,
    /// Never touch it.
    Off,
}

/// What a rebalance recommendation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRebalance {
    /// Log and report it only.
    Ignore,
    /// Drain the agent.
    Drain,
}

/// What the lifecycle hooks answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HookResult {
    Continue,
    Abandon,
}

impl HookResult {
    pub fn as_str(self) -> &'static str {
        match self {
            HookResult::Continue => "CONTINUE",
            HookResult::Abandon => "ABANDON",
        }
    }
}

/// The lifecycle settings from the config.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    pub terminate_hook: Option<String>,
    pub launch_hook: Option<String>,
    pub asg_name: Option<String>,
    pub heartbeat_interval: Option<Duration>,
    pub on_unclean_exit: HookResult,
    pub stop_signal: Sig,
    pub imds_endpoint: String,
    /// `--hooks-dir`: where the guards on this host register for the hooks.
    pub hooks_dir: PathBuf,
    /// Whether `--hooks-dir` was given (an unusable default is only warned about).
    pub hooks_dir_given: bool,
}

impl LifecycleSettings {
    /// Whether any hook is to be completed.
    pub fn enabled(&self) -> bool {
        self.terminate_hook.is_some() || self.launch_hook.is_some()
    }
}

/// Where EMF lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmfTarget {
    Stdout,
    File(PathBuf),
}

/// The settings of this module.
#[derive(Debug, Clone)]
pub struct BusySettings {
    pub protect: bool,
    pub idle_release: Duration,
    pub min_interval: Duration,
    pub busy_stale: Duration,
    pub emf: Option<EmfTarget>,
    pub emf_interval: Duration,
}

impl BusySettings {
    pub fn enabled(&self) -> bool {
        self.protect || self.emf.is_some()
    }
}
