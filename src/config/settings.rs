//! The settings types that configuration builds and the features read: plain data, no I/O, so
//! that configuration never imports the features that use it.

use std::path::PathBuf;
use std::time::Duration;

use crate::names::named_enum;
use crate::process::sig::Sig;

pub use crate::model::{HookResult, RestartPolicy};
pub use crate::process::drain_command::OnDrain;

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

/// Whether the agent runs in a cgroup of its own (`--cgroup`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMode {
    /// When one can be made; otherwise the process group, said in one log line.
    Auto,
    /// Never: the process group stands for the agent.
    Off,
    /// Always: exit 125 when none can be made.
    Require,
}

impl CgroupMode {
    /// As written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            CgroupMode::Auto => "auto",
            CgroupMode::Off => "off",
            CgroupMode::Require => "require",
        }
    }
}

/// What a rebalance recommendation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRebalance {
    /// Log and report it only.
    Ignore,
    /// Drain the agent.
    Drain,
}

/// Which IMDS endpoint is the default when none is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsEndpointMode {
    Ipv4,
    /// Nitro instances with the IPv6 endpoint enabled; the only one in IPv6-only subnets.
    Ipv6,
}

impl ImdsEndpointMode {
    /// The documented endpoint of this mode.
    pub fn endpoint(self) -> &'static str {
        match self {
            ImdsEndpointMode::Ipv4 => "http://169.254.169.254",
            ImdsEndpointMode::Ipv6 => "http://[fd00:ec2::254]",
        }
    }
}

named_enum! {
    /// What an active EC2 scheduled event (`events/maintenance/scheduled`) does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum OnMaintenance {
        /// Mark the instance Unhealthy once, so the group replaces it through its normal, drained
        /// termination; outside a group or when refused, `Drain`.
        Replace = "replace",
        /// Drain (reason `maintenance`) at NotBefore minus `--maintenance-margin`.
        Drain = "drain",
        /// Log and report it only.
        Report = "report",
    }
}

/// What an instance launched into a warm pool does with its agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InWarmPool {
    /// Start the agent at once, as anywhere else.
    Run,
    /// Complete the launch hook without starting the agent; start it once the target lifecycle
    /// state is `InService`.
    Wait,
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

/// What a crash loop (`--crash-loop`) does once the restarts have ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCrashLoop {
    /// Mark the instance Unhealthy (`SetInstanceHealth`) so the group replaces it, then exit.
    Unhealthy,
    /// Exit with the agent's last status.
    Exit,
}

/// When the agent counts as ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOn {
    /// As soon as it is spawned.
    Start,
    /// On sd_notify `READY=1` or the control socket's `ready`.
    Notify,
    /// When `--child-health` passes.
    Health,
    /// After a warm-up period.
    Warmup(Duration),
}

/// `--crash-loop N/DUR`: this many starts within this long end the restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashLoop {
    pub starts: u32,
    pub within: Duration,
}

/// The restart settings, as validated from `--restart*` and `--crash-loop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartSettings {
    pub policy: RestartPolicy,
    /// The first delay (`--restart-delay`).
    pub delay: Duration,
    /// The longest delay (`--restart-max-delay`); an agent that ran longer than this resets the
    /// delay to the first one.
    pub max_delay: Duration,
    pub crash_loop: CrashLoop,
}

impl Default for RestartSettings {
    /// INTERFACE.md's defaults: never, 1s, 1m, 5/10m.
    fn default() -> Self {
        RestartSettings {
            policy: RestartPolicy::Never,
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            crash_loop: CrashLoop {
                starts: 5,
                within: Duration::from_secs(600),
            },
        }
    }
}

/// `--target-groups`: where the target groups to deregister from come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TargetGroups {
    /// The group's `TargetGroupARNs` and its `elbv2` traffic sources.
    #[default]
    Auto,
    /// Never deregister.
    Off,
    /// These target groups, whatever the group says.
    Arns(Vec<String>),
}

/// `--deregistration-wait`: how long to wait for the target to leave `draining`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeregistrationWait {
    /// The target group's deregistration delay, cut to the drain's budget.
    #[default]
    Auto,
    /// At most this long (0: tell the agent at once).
    AtMost(Duration),
}

/// What the guard does about load balancers before the agent hears of a drain.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadBalancerSettings {
    pub target_groups: TargetGroups,
    pub wait: DeregistrationWait,
    /// `--lb-grace`: readiness stays 503 this long first when there is nothing to deregister.
    pub grace: Duration,
}
