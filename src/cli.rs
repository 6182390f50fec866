//! The raw command line: every flag with its help text, `AGENT_GUARD_*` environment fallback and
//! default. The guard's values stay strings here; `config` validates them, so that a value from the
//! config file is held to exactly the same rules as one from a flag. The drill's own durations,
//! which only ever come from flags, are typed here.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use crate::names::named_enum;
use clap::Parser;

/// Flags shown in `--help`. Defaults are declared here so that `--help` shows them; `config`
/// treats a default as the lowest layer, below the config file.
#[derive(Debug, Parser)]
#[command(
    name = "agent-guard",
    version,
    about = "Supervise an agent on an EC2 Auto Scaling group: forward signals, reap zombies, drain before stopping.",
    override_usage = "agent-guard [OPTIONS] -- COMMAND [ARGS...]\n       agent-guard ctl [--socket PATH] [--json] status | drain [--reason R] [--deregister] | ready | drained | subscribe\n       agent-guard drill <scale-in|spot|rebalance|maintenance|sigterm> [DRILL OPTIONS] [OPTIONS] -- COMMAND [ARGS...]\n       agent-guard --check-config [OPTIONS] [-- COMMAND [ARGS...]]\n       agent-guard doctor [--json] [OPTIONS] [-- COMMAND [ARGS...]]",
    after_help = "Every option can also be set as AGENT_GUARD_<NAME> or as a key in the --config file.\n\
                  Precedence: flag > environment > file > default. Durations: 500ms, 2s, 5m, 1h; a bare number is seconds; at most 365d.\n\
                  Exit status: the agent's own code; 128+N if it was killed by signal N; 125 if agent-guard failed;\n\
                  126 if COMMAND could not be executed; 127 if COMMAND was not found.",
    term_width = 100,
    allow_negative_numbers = true
)]
pub struct Cli {
    /// TOML file of options; its keys are the long option names
    #[arg(long, env = "AGENT_GUARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate everything, print the effective configuration with the source of each value, and exit
    #[arg(long)]
    pub check_config: bool,

    /// Label for logs, metrics and the socket path [default: the command's file name]
    #[arg(long, env = "AGENT_GUARD_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Signal that asks the agent to stop
    #[arg(
        long,
        env = "AGENT_GUARD_STOP_SIGNAL",
        value_name = "SIG",
        default_value = "TERM"
    )]
    pub stop_signal: String,

    /// Grace after the stop signal before SIGKILL of the agent's process group
    #[arg(
        long,
        env = "AGENT_GUARD_STOP_TIMEOUT",
        value_name = "DUR",
        default_value = "30s"
    )]
    pub stop_timeout: String,

    /// Longest wait for the agent to report drained (or exit) once a drain starts
    #[arg(
        long,
        env = "AGENT_GUARD_DRAIN_TIMEOUT",
        value_name = "DUR",
        default_value = "60s"
    )]
    pub drain_timeout: String,

    /// Also send this signal to the agent when a drain starts (for agents that only know signals)
    #[arg(long, env = "AGENT_GUARD_DRAIN_SIGNAL", value_name = "SIG")]
    pub drain_signal: Option<String>,

    /// Where forwarded signals go: the agent's process group, or the agent alone
    #[arg(
        long,
        env = "AGENT_GUARD_FORWARD_TO",
        value_name = "group|child",
        default_value = "group"
    )]
    pub forward_to: String,

    /// Become a child subreaper (PR_SET_CHILD_SUBREAPER) so orphans are reaped when not PID 1
    #[arg(long, env = "AGENT_GUARD_SUBREAPER", value_parser = clap::builder::BoolishValueParser::new())]
    pub subreaper: bool,

    /// Run the agent in a cgroup v2 child of its own, so that "gone" means every process it
    /// started is gone (cgroup.events), and SIGKILL is cgroup.kill; `auto` falls back to the
    /// process group with one log line (a setsid() grandchild can then outlive the agent);
    /// `require` exits 125 when it cannot
    #[arg(
        long,
        env = "AGENT_GUARD_CGROUP",
        value_name = "auto|off|require",
        default_value = "auto"
    )]
    pub cgroup: String,

    /// memory.max for the agent's cgroup (bytes, or with K, M, G, T: 512M), where the memory
    /// controller is available; the kernel's OOM killer acts past it, and the exit names it
    #[arg(long, env = "AGENT_GUARD_MEMORY_MAX", value_name = "SIZE")]
    pub memory_max: Option<String>,

    /// Run CMD when a drain starts (`sh -c`; an array in the config file runs without a shell),
    /// with AGENT_GUARD_DRAIN_REASON, AGENT_GUARD_DRAIN_DEADLINE (RFC 3339) and
    /// AGENT_GUARD_AGENT_PID; its output goes to the log (at most 100 lines a second, 256 KiB per
    /// drain); it is killed at the drain deadline or once the agent is gone: in a cgroup beside the
    /// agent's, all it started (`setsid` daemons too), which the hook waits for; without one, its
    /// process group. It counts as telling the agent, as --drain-signal does
    #[arg(long, env = "AGENT_GUARD_ON_DRAIN", value_name = "CMD")]
    pub on_drain: Option<String>,

    /// Start the agent again when it exits by itself (never after a drain or a stop):
    /// `on-failure` after a non-zero status or a signal, `always` after any exit
    #[arg(
        long,
        env = "AGENT_GUARD_RESTART",
        value_name = "never|on-failure|always",
        default_value = "never"
    )]
    pub restart: String,

    /// The first delay before a restart; doubled (with jitter) for each restart in a row
    #[arg(
        long,
        env = "AGENT_GUARD_RESTART_DELAY",
        value_name = "DUR",
        default_value = "1s"
    )]
    pub restart_delay: String,

    /// The longest delay before a restart; an agent that ran longer than this resets the delay
    #[arg(
        long,
        env = "AGENT_GUARD_RESTART_MAX_DELAY",
        value_name = "DUR",
        default_value = "1m"
    )]
    pub restart_max_delay: String,

    /// N starts within DUR end the restarts; then --on-crash-loop
    #[arg(
        long,
        env = "AGENT_GUARD_CRASH_LOOP",
        value_name = "N/DUR",
        default_value = "5/10m"
    )]
    pub crash_loop: String,

    /// After a crash loop: `unhealthy` marks the instance Unhealthy (SetInstanceHealth) so the
    /// group replaces it, deregisters it from its target groups (--target-groups), and with
    /// --terminate-hook stays to complete that termination's hook (at most the hook's timeout),
    /// then exits with the agent's last status (outside a group it just exits); `exit` just exits
    #[arg(
        long,
        env = "AGENT_GUARD_ON_CRASH_LOOP",
        value_name = "unhealthy|exit",
        default_value = "unhealthy"
    )]
    pub on_crash_loop: String,

    /// Use IMDS for notices: `auto` if it answers at start, `on` (exit 125 if it does not answer
    /// within 10 s), or `off`
    #[arg(
        long,
        env = "AGENT_GUARD_IMDS",
        value_name = "auto|on|off",
        default_value = "auto"
    )]
    pub imds: String,

    /// The instance metadata service (also read from AWS_EC2_METADATA_SERVICE_ENDPOINT)
    #[arg(
        long,
        env = "AGENT_GUARD_IMDS_ENDPOINT",
        value_name = "URL",
        default_value = "http://169.254.169.254"
    )]
    pub imds_endpoint: String,

    /// Which IMDS endpoint to use when --imds-endpoint is not given: `ipv4` (169.254.169.254) or
    /// `ipv6` ([fd00:ec2::254], Nitro only) (also read from AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE)
    #[arg(
        long,
        env = "AGENT_GUARD_IMDS_ENDPOINT_MODE",
        value_name = "ipv4|ipv6",
        default_value = "ipv4"
    )]
    pub imds_endpoint_mode: String,

    /// IMDS poll interval (with ±10 % jitter)
    #[arg(
        long,
        env = "AGENT_GUARD_IMDS_POLL",
        value_name = "DUR",
        default_value = "2s"
    )]
    pub imds_poll: String,

    /// What a rebalance recommendation does (it is always logged and reported)
    #[arg(
        long,
        env = "AGENT_GUARD_ON_REBALANCE",
        value_name = "ignore|drain",
        default_value = "ignore"
    )]
    pub on_rebalance: String,

    /// The agent is SIGKILLed no later than the spot notice time minus this margin
    #[arg(
        long,
        env = "AGENT_GUARD_SPOT_MARGIN",
        value_name = "DUR",
        default_value = "10s"
    )]
    pub spot_margin: String,

    /// What an active EC2 scheduled event does: `replace` marks the instance Unhealthy once so
    /// the group replaces it through a drained termination (else `drain`), `drain` drains at
    /// NotBefore minus --maintenance-margin, `report` only logs and reports it
    #[arg(
        long,
        env = "AGENT_GUARD_ON_MAINTENANCE",
        value_name = "replace|drain|report",
        default_value = "replace"
    )]
    pub on_maintenance: String,

    /// How long before a scheduled event's NotBefore the agent drains (with `drain`, and with
    /// `replace` if the group has not replaced the instance by then)
    #[arg(
        long,
        env = "AGENT_GUARD_MAINTENANCE_MARGIN",
        value_name = "DUR",
        default_value = "10m"
    )]
    pub maintenance_margin: String,

    /// Elastic Load Balancing v2 target groups to deregister the instance from before the agent
    /// hears of a drain the group does not deregister for (spot, maintenance, crash loop,
    /// `ctl drain --deregister`); `auto`: the group's TargetGroupARNs and elbv2 traffic sources
    #[arg(
        long,
        env = "AGENT_GUARD_TARGET_GROUPS",
        value_name = "auto|off|ARN,...",
        default_value = "auto"
    )]
    pub target_groups: String,

    /// How long to wait for the target to leave `draining` before telling the agent: `auto` =
    /// the target group's deregistration delay; always cut so that the agent keeps its full drain
    /// and stop budget before a spot notice's time; `0` tells the agent at once
    #[arg(
        long,
        env = "AGENT_GUARD_DEREGISTRATION_WAIT",
        value_name = "auto|DUR",
        default_value = "auto"
    )]
    pub deregistration_wait: String,

    /// With no target group to deregister from (or deregistration refused), hold readiness at
    /// 503 this long before the agent hears of the drain (for health-check-only load balancers),
    /// cut to fit the deadline
    #[arg(
        long,
        env = "AGENT_GUARD_LB_GRACE",
        value_name = "DUR",
        default_value = "0"
    )]
    pub lb_grace: String,

    /// `wait`: an instance launched into a warm pool (or back in it after service, the guard
    /// staying) completes its launch hook without starting the agent, which starts once the
    /// target lifecycle state is InService; `run` starts it at once
    #[arg(
        long,
        env = "AGENT_GUARD_IN_WARM_POOL",
        value_name = "run|wait",
        default_value = "run"
    )]
    pub in_warm_pool: String,

    /// The control socket (JSON lines), given to the agent as AGENT_GUARD_SOCKET [default:
    /// $RUNTIME_DIRECTORY/NAME.sock, else /run/agent-guard/NAME.sock as root, else
    /// $XDG_RUNTIME_DIR/agent-guard/NAME.sock]
    #[arg(long, env = "AGENT_GUARD_SOCKET", value_name = "PATH")]
    pub socket: Option<String>,

    /// When the agent counts as ready: at once, on sd_notify READY=1 (or control `ready`), when
    /// --child-health passes, or after a warm-up period
    #[arg(
        long,
        env = "AGENT_GUARD_READY_ON",
        value_name = "start|notify|health|DUR",
        default_value = "start"
    )]
    pub ready_on: String,

    /// Longest wait for readiness; past it the launch hook is abandoned
    #[arg(
        long,
        env = "AGENT_GUARD_READY_TIMEOUT",
        value_name = "DUR",
        default_value = "10m"
    )]
    pub ready_timeout: String,

    /// The agent must send WATCHDOG=1 at least this often, else it is reported (WATCHDOG_USEC
    /// and WATCHDOG_PID are exported to it)
    #[arg(long, env = "AGENT_GUARD_WATCHDOG", value_name = "DUR")]
    pub watchdog: Option<String>,

    /// The health endpoint's address, or `off`
    #[arg(
        long,
        env = "AGENT_GUARD_HEALTH_LISTEN",
        value_name = "ADDR|off",
        default_value = "0.0.0.0:8099"
    )]
    pub health_listen: String,

    /// The agent's own health URL, probed in the background (2xx passes; a JSON body saying DOWN,
    /// OUT_OF_SERVICE or fail does not)
    #[arg(long, env = "AGENT_GUARD_CHILD_HEALTH", value_name = "URL")]
    pub child_health: Option<String>,

    /// A dependency probe, repeatable: NAME=tcp://HOST:PORT, NAME=http://… or NAME=https://…
    #[arg(long, env = "AGENT_GUARD_CHECK", value_name = "NAME=URL", action = clap::ArgAction::Append)]
    pub check: Vec<String>,

    /// How often each check runs
    #[arg(
        long,
        env = "AGENT_GUARD_CHECK_INTERVAL",
        value_name = "DUR",
        default_value = "5s"
    )]
    pub check_interval: String,

    /// How long one probe may take
    #[arg(
        long,
        env = "AGENT_GUARD_CHECK_TIMEOUT",
        value_name = "DUR",
        default_value = "2s"
    )]
    pub check_timeout: String,

    /// Termination lifecycle hook to complete after the agent exits
    #[arg(long, env = "AGENT_GUARD_TERMINATE_HOOK", value_name = "NAME")]
    pub terminate_hook: Option<String>,

    /// Launch lifecycle hook to complete once the agent is ready
    #[arg(long, env = "AGENT_GUARD_LAUNCH_HOOK", value_name = "NAME")]
    pub launch_hook: Option<String>,

    /// The Auto Scaling group [default: the IMDS tag aws:autoscaling:groupName, else
    /// DescribeAutoScalingInstances]
    #[arg(long, env = "AGENT_GUARD_ASG_NAME", value_name = "NAME")]
    pub asg_name: Option<String>,

    /// RecordLifecycleActionHeartbeat cadence while draining [default: a third of the hook's
    /// HeartbeatTimeout, else 60s]
    #[arg(long, env = "AGENT_GUARD_HEARTBEAT_INTERVAL", value_name = "DUR")]
    pub heartbeat_interval: Option<String>,

    /// Where the guards on this host register for the instance's lifecycle hooks: the last agent
    /// out completes the termination hook, the launch hook waits for every agent to be ready
    #[arg(
        long,
        env = "AGENT_GUARD_HOOKS_DIR",
        value_name = "DIR",
        default_value = "/run/agent-guard"
    )]
    pub hooks_dir: String,

    /// Lifecycle result when the agent did not stop cleanly
    #[arg(
        long,
        env = "AGENT_GUARD_ON_UNCLEAN_EXIT",
        value_name = "continue|abandon",
        default_value = "abandon"
    )]
    pub on_unclean_exit: String,

    /// Protect the instance from scale-in while the agent reports work in flight
    #[arg(long, env = "AGENT_GUARD_PROTECT_WHILE_BUSY", value_parser = clap::builder::BoolishValueParser::new())]
    pub protect_while_busy: bool,

    /// How long the agent must be idle before scale-in protection is removed
    #[arg(
        long,
        env = "AGENT_GUARD_IDLE_RELEASE",
        value_name = "DUR",
        default_value = "30s"
    )]
    pub idle_release: String,

    /// At most one SetInstanceProtection call per this interval
    #[arg(
        long,
        env = "AGENT_GUARD_PROTECT_MIN_INTERVAL",
        value_name = "DUR",
        default_value = "10s"
    )]
    pub protect_min_interval: String,

    /// A load report older than this counts as idle (a busy agent re-sends its load more often)
    #[arg(
        long,
        env = "AGENT_GUARD_BUSY_STALE",
        value_name = "DUR",
        default_value = "5m"
    )]
    pub busy_stale: String,

    /// Write CloudWatch Embedded Metric Format lines with the agent's load to PATH, or stdout
    #[arg(long, env = "AGENT_GUARD_METRICS_EMF", value_name = "PATH|stdout")]
    pub metrics_emf: Option<String>,

    /// How often an EMF line is written
    #[arg(
        long,
        env = "AGENT_GUARD_METRICS_INTERVAL",
        value_name = "DUR",
        default_value = "60s"
    )]
    pub metrics_interval: String,

    /// Format of the guard's own logs on stderr
    #[arg(
        long,
        env = "AGENT_GUARD_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text"
    )]
    pub log_format: String,

    /// Level of the guard's own logs (error, warn, info, debug, trace, or RUST_LOG-style target=level directives)
    #[arg(
        long,
        env = "AGENT_GUARD_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info"
    )]
    pub log_level: String,

    /// The agent to run, with its arguments (after `--`)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,

    #[command(subcommand)]
    pub sub: Option<Sub>,
}

/// Subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Sub {
    /// Talk to a running guard over its control socket
    Ctl(CtlArgs),
    /// Rehearse a scale-in, spot interruption, rebalance, scheduled event or SIGTERM against
    /// simulated AWS
    Drill(DrillCli),
    /// Check the instance, its group, hooks and permissions against the options; changes nothing
    Doctor(DoctorCli),
}

/// `agent-guard doctor`. Like the drill's, its subcommand also holds the guard's options,
/// hidden (see [`command`]): the doctor reads them as a real run does.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "agent-guard doctor [--json] [OPTIONS] [-- COMMAND [ARGS...]]",
    after_help = "OPTIONS are the guard's own (see agent-guard --help), read with the environment and\n\
                  --config file exactly as a real run reads them. Nothing on the instance or the group is\n\
                  changed. Exit status: 0 nothing FAILs, 1 something FAILs, 125 the doctor could not run.",
    allow_negative_numbers = true
)]
pub struct DoctorCli {
    /// Print every check as one JSON document
    #[arg(long)]
    pub json: bool,

    /// The guard's OPTIONS, then -- COMMAND [ARGS...]
    #[arg(trailing_var_arg = true, num_args = 0.., value_name = "OPTIONS")]
    pub command: Vec<OsString>,
}

/// `agent-guard drill`. Its subcommand also holds the guard's options, hidden (see [`command`]),
/// so that clap reads the drill's flags wherever they stand before `--`.
#[derive(Debug, clap::Args)]
#[command(
    override_usage = "agent-guard drill <scale-in|spot|rebalance|maintenance|sigterm> [--after DUR] [--deadline DUR] [--heartbeat-timeout DUR] [--deregistration-delay DUR] [--json] [--verbose] [OPTIONS] -- COMMAND [ARGS...]",
    after_help = "OPTIONS are the guard's own (see agent-guard --help), used as in production.\n\
                  Exit status: 0 PASS, 1 FAIL, 125 the drill could not run.",
    allow_negative_numbers = true
)]
pub struct DrillCli {
    /// The event to rehearse
    #[arg(value_enum)]
    pub event: DrillEvent,

    /// How long after the agent is ready the event comes
    #[arg(long, value_name = "DUR", default_value = "1s", value_parser = duration)]
    pub after: Duration,

    /// For `spot`: the notice's time, this long after the event (AWS gives about two minutes)
    #[arg(long, value_name = "DUR", default_value = "120s", value_parser = duration)]
    pub deadline: Duration,

    /// The simulated termination hook's HeartbeatTimeout
    #[arg(long, value_name = "DUR", default_value = "300s", value_parser = duration)]
    pub heartbeat_timeout: Duration,

    /// The simulated target group's deregistration delay: for `scale-in`, how long the group
    /// deregisters the instance before Terminating:Wait; for `spot` and `maintenance`, how long
    /// the load balancer drains after the guard's DeregisterTargets, before the agent is told
    #[arg(long, value_name = "DUR", default_value = "0s", value_parser = duration)]
    pub deregistration_delay: Duration,

    /// Print the timeline and verdict as one JSON document
    #[arg(long)]
    pub json: bool,

    /// Also print the guard's own log lines (JSON) on stderr as they come
    #[arg(long)]
    pub verbose: bool,

    // The agent's command: everything after `--` (the guard's options before it are the hidden
    // ones). Shown in help as the whole tail, which is what the user types. Without `--`, the first
    // value that is not an option starts the command, as it always has.
    /// The guard's OPTIONS, then -- COMMAND [ARGS...]
    #[arg(trailing_var_arg = true, num_args = 0.., value_name = "OPTIONS")]
    pub command: Vec<OsString>,
}

/// A drill duration that does not parse. A type of its own so that `config` can tell it from
/// clap's other errors and report it in the guard's words (`--after: invalid value …`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadDuration(pub String);

/// The drill's durations, read as the guard reads its own.
fn duration(value: &str) -> Result<Duration, BadDuration> {
    crate::fmt::parse_duration(value).map_err(BadDuration)
}

named_enum! {
    /// What to rehearse.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum DrillEvent {
        ScaleIn = "scale-in",
        Spot = "spot",
        Rebalance = "rebalance",
        Sigterm = "sigterm",
        /// An EC2 scheduled event, handled as --on-maintenance says.
        Maintenance = "maintenance",
    }
}

/// The drill's event names are the table's: clap lists and reads them from it.
impl clap::ValueEnum for DrillEvent {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

/// The drill's own settings, and the guard's arguments to run.
#[derive(Debug, Clone)]
pub struct DrillArgs {
    pub event: DrillEvent,
    pub after: Duration,
    pub deadline: Duration,
    pub heartbeat_timeout: Duration,
    /// The simulated deregistration delay before the termination wait state.
    pub deregistration_delay: Duration,
    pub json: bool,
    /// Print the guard's own log lines as they come.
    pub verbose: bool,
    /// `[OPTIONS] -- COMMAND [ARGS...]` for the guard: the options the user typed, in their order,
    /// each as `--long=value` (or `--flag`), then `--` and the agent's command.
    pub guard_args: Vec<OsString>,
}

/// `agent-guard ctl`.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// The guard's control socket [default: $AGENT_GUARD_SOCKET, else the default path for --name]
    #[arg(long, env = "AGENT_GUARD_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// The guard's --name, to find its socket at the default path
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Print the guard's JSON replies and events as they are
    #[arg(long)]
    pub json: bool,

    #[command(subcommand)]
    pub request: CtlRequest,
}

/// What `ctl` asks the guard.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum CtlRequest {
    /// Print the guard's state
    Status,
    /// Drain the agent now, as a scale-in would
    Drain {
        /// A note for the guard's log
        #[arg(long, value_name = "R")]
        reason: Option<String>,
        /// Deregister the instance from its load balancers' target groups first, and tell the
        /// agent once they stopped sending (as a spot interruption does)
        #[arg(long)]
        deregister: bool,
    },
    /// Mark the agent ready (with --ready-on notify)
    Ready,
    /// Tell the guard the agent has drained
    Drained,
    /// Print phase changes and drains until the guard exits
    Subscribe,
}

/// Options that steer how the rest is read; they cannot be set in the config file.
pub const META_OPTIONS: &[&str] = &["config", "check-config", "help", "version"];

/// The clap command with every environment value hidden from `--help`: help must not depend on
/// the caller's shell, nor print what a variable holds.
///
/// The `drill` and `doctor` subcommands also get a hidden copy of each of the guard's options, so
/// that one clap parse reads the drill's flags and the guard's options in any order, with values
/// and `=` forms handled by clap alone. The copies read no environment and have no defaults: they
/// only say what was typed; the guard run by the drill (or the doctor, through `--check-config`'s
/// path) reads its environment and defaults itself.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    // The drill's and the doctor's copies of the guard's options are added only when one of
    // them is parsed (or its help shown): a plain run, the guard's start-up, builds one set.
    Cli::command()
        .mut_args(|arg| arg.hide_env_values(true))
        .mut_subcommand("drill", |drill| drill.defer(with_guard_options))
        .mut_subcommand("doctor", |doctor| doctor.defer(with_guard_options))
}

/// `subcommand` with the guard's options added, hidden, without their environment variables and
/// defaults: what the drill or the doctor passes on is only what was typed.
fn with_guard_options(subcommand: clap::Command) -> clap::Command {
    use clap::CommandFactory;
    let cli = Cli::command();
    let hidden: Vec<clap::Arg> = guard_options(&cli)
        .map(|arg| {
            arg.clone()
                .hide(true)
                .env(None::<&'static str>)
                .default_value(None::<&'static str>)
        })
        .collect();
    subcommand.args(hidden)
}

/// The guard's own options (every flag with a long name but `--help` and `--version`), in
/// `--help` order.
pub fn guard_options(cli: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    cli.get_arguments().filter(|arg| {
        arg.get_long()
            .is_some_and(|l| l != "help" && l != "version")
    })
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks over the whole tree, the deferred copies of the guard's
    /// options in `drill` and `doctor` included (they are built only when those are parsed).
    #[test]
    fn the_command_tree_passes_clap_checks() {
        super::command().debug_assert();
    }

    /// The deferred copies are there when the subcommand is parsed.
    #[test]
    fn drill_and_doctor_read_the_guard_options() {
        for sub in ["drill", "doctor"] {
            let mut args = vec!["agent-guard", sub];
            if sub == "drill" {
                args.push("scale-in");
            }
            args.extend(["--stop-timeout", "7s", "--", "true"]);
            let matches = super::command()
                .try_get_matches_from(&args)
                .unwrap_or_else(|e| panic!("{sub}: {e}"));
            let (_, sub_matches) = matches.subcommand().expect("a subcommand");
            assert_eq!(
                sub_matches
                    .get_one::<String>("stop_timeout")
                    .map(String::as_str),
                Some("7s"),
                "{sub} reads --stop-timeout"
            );
        }
    }
}
