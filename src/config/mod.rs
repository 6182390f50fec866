//! Flags, environment and the optional TOML file become one validated [`Config`], and each value
//! keeps where it came from, for `--check-config` and for error messages.
//!
//! A new option needs one field in `cli.rs` and one line in `validate.rs`: the file, the
//! environment fallback, provenance and the unknown-key check come with it.
//!
//! - `layers`: flag, env, file and default merged into raw [`Settings`], with their [`Source`].
//! - `validate`: raw settings become a typed [`Config`] ([`Config::from_settings`]).
//! - `describe`: the `--check-config` listing ([`Config::describe`]).
//! - `paths`: default socket paths, and valid names and socket paths.
//! - `subcommands`: `ctl`, `drill` and `doctor` become their [`Invocation`].
//! - `settings`, `check`: the typed settings the features read.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::FromArgMatches;
use clap::error::{ContextKind, ErrorKind};

pub(crate) mod check;
mod describe;
mod layers;
mod paths;
pub(crate) mod settings;
mod subcommands;
mod validate;

pub use self::layers::{Settings, Source};
pub(crate) use self::settings::*;
use crate::cli::{BadDuration, Cli, Sub};
use crate::config::settings::ReadyOn;
use crate::config::settings::RestartSettings;
use crate::logging::LogFormat;
use crate::process::sig::Sig;

/// Why the configuration cannot be used. Each renders as one line naming the option, file or key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0}")]
    Usage(String),
    #[error(
        "no command given: put the agent's command after `--`, as in agent-guard [OPTIONS] -- COMMAND [ARGS...], or `command = [...]` in the --config file"
    )]
    NoCommand,
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}:{line}: {message}")]
    FileSyntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(
        "config file {path}:{line}: unknown key `{key}` (keys are the long option names, see --help)"
    )]
    UnknownKey {
        path: PathBuf,
        line: usize,
        key: String,
    },
    #[error("--{option}: invalid value `{value}` (from {origin}): {why}")]
    Invalid {
        option: String,
        value: String,
        origin: Source,
        why: String,
    },
    #[error("--{0}: no value (this is a bug: the option has no default)")]
    Missing(String),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Label for logs, metrics and the socket path.
    pub name: String,
    /// The agent's program and arguments; empty only under `--check-config`.
    pub command: Vec<OsString>,
    pub stop_signal: Sig,
    pub stop_timeout: Duration,
    pub drain_timeout: Duration,
    pub drain_signal: Option<Sig>,
    pub forward_to: ForwardTo,
    pub subreaper: bool,
    /// `--cgroup`: whether the agent runs in a cgroup of its own.
    pub cgroup: CgroupMode,
    /// `--memory-max`, in bytes.
    pub memory_max: Option<u64>,
    /// `--on-drain`: the agent's own drain command.
    pub on_drain: Option<OnDrain>,
    /// `--restart`, its delays and `--crash-loop`.
    pub restart: RestartSettings,
    pub on_crash_loop: OnCrashLoop,
    pub imds: ImdsMode,
    pub imds_endpoint: String,
    pub imds_poll: Duration,
    pub on_rebalance: OnRebalance,
    pub spot_margin: Duration,
    pub on_maintenance: OnMaintenance,
    pub maintenance_margin: Duration,
    pub in_warm_pool: InWarmPool,
    /// `--target-groups`, `--deregistration-wait`, `--lb-grace`.
    pub load_balancer: LoadBalancerSettings,
    /// The control socket.
    pub socket: PathBuf,
    /// The agent's sd_notify socket, next to the control socket.
    pub notify_socket: PathBuf,
    pub ready_on: ReadyOn,
    pub ready_timeout: Duration,
    pub watchdog: Option<Duration>,
    /// Where the health endpoint listens; `None` with `--health-listen off`.
    pub health_listen: Option<std::net::SocketAddr>,
    /// `--child-health` first, then every `--check`.
    pub checks: Vec<check::Check>,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub lifecycle: LifecycleSettings,
    pub busy: BusySettings,
    pub log_format: LogFormat,
    /// A level or `target=level` directives, already validated.
    pub log_level: String,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Supervise the command.
    Run(Config),
    /// Print the effective configuration and exit.
    CheckConfig(Config, Settings),
    /// `--help` or `--version`: print this and exit 0.
    Info(String),
    /// `drill`: rehearse an event.
    Drill(crate::cli::DrillArgs),
    /// `doctor`: check the instance and its group against this configuration, as
    /// `--check-config` validated it.
    Doctor {
        config: Config,
        settings: Settings,
        json: bool,
    },
    /// `ctl`: talk to a running guard.
    Ctl {
        socket: PathBuf,
        request: crate::cli::CtlRequest,
        json: bool,
    },
}

/// Reads the command line (and through it the environment and the config file).
// Not inlined into `main`, whose stack frame every supervising guard keeps resident for life
// (see `spawn_made` in lib.rs).
#[inline(never)]
pub fn load<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut command = crate::cli::command();
    let matches = match command.try_get_matches_from_mut(args) {
        Ok(m) => m,
        Err(err) => return info_or_usage(err),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Usage(one_line(&e)))?;
    match cli.sub {
        Some(Sub::Ctl(ctl)) => return subcommands::ctl_invocation(ctl),
        Some(Sub::Drill(drill)) => {
            let drill_matches = matches
                .subcommand_matches("drill")
                .expect("clap parsed `drill` from these matches");
            return subcommands::drill_invocation(drill, drill_matches);
        }
        Some(Sub::Doctor(doctor)) => {
            let doctor_matches = matches
                .subcommand_matches("doctor")
                .expect("clap parsed `doctor` from these matches");
            return subcommands::doctor_invocation(doctor, &matches, doctor_matches);
        }
        None => {}
    }
    let mut settings = layers::from_matches(&command, &matches)?;
    if let Some(path) = &cli.config {
        let text = layers::read_file(path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        layers::apply_file(&mut settings, path, &text)?;
    }
    layers::apply_foreign_env(&mut settings);
    // The command after `--` wins; else the config file's `command`.
    let command = match (cli.command.is_empty(), settings.file_command()) {
        (true, Some((command, _))) => command.iter().map(OsString::from).collect(),
        _ => cli.command,
    };
    let config = Config::from_settings(&settings, command)?;
    if cli.check_config {
        Ok(Invocation::CheckConfig(config, settings))
    } else if config.command.is_empty() {
        Err(ConfigError::NoCommand)
    } else {
        Ok(Invocation::Run(config))
    }
}

/// The settings of a command line without flags: the defaults, and the environment's values.
/// With [`check_file_text`], what the fuzz target for the config file starts from.
pub(crate) fn default_settings() -> Result<Settings, ConfigError> {
    let mut command = crate::cli::command();
    let matches = command
        .try_get_matches_from_mut(["agent-guard"])
        .map_err(|e| ConfigError::Usage(one_line(&e)))?;
    layers::from_matches(&command, &matches)
}

/// `text` read as a config file over `defaults` and validated as `load` does it, then described
/// as `--check-config` does (for the fuzz target, `crate::fuzzing`).
pub(crate) fn check_file_text(defaults: &Settings, text: &str) -> Result<Config, ConfigError> {
    let mut settings = defaults.clone();
    layers::apply_file(&mut settings, std::path::Path::new("fuzz.toml"), text)?;
    let command = settings
        .file_command()
        .map(|(command, _)| command.iter().map(OsString::from).collect())
        .unwrap_or_default();
    let config = Config::from_settings(&settings, command)?;
    let _ = config.describe(&settings);
    Ok(config)
}

/// clap's refusals in the guard's words: help and version are not errors, an unknown option or a
/// stray word says what to do, and a bad drill duration reads like any other bad value.
fn info_or_usage(err: clap::Error) -> Result<Invocation, ConfigError> {
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Invocation::Info(err.to_string())),
        ErrorKind::ValueValidation => {
            Err(bad_duration(&err).unwrap_or_else(|| ConfigError::Usage(one_line(&err))))
        }
        ErrorKind::UnknownArgument => {
            let arg = err
                .get(ContextKind::InvalidArg)
                .map(|v| v.to_string())
                .unwrap_or_default();
            if arg.starts_with('-') {
                Err(ConfigError::Usage(format!(
                    "unknown option `{arg}` (see --help)"
                )))
            } else {
                Err(ConfigError::Usage(format!(
                    "unexpected argument `{arg}`: put the agent's command after `--`, as in agent-guard [OPTIONS] -- COMMAND [ARGS...]"
                )))
            }
        }
        _ => Err(ConfigError::Usage(one_line(&err))),
    }
}

/// clap's messages span several lines; the guard's errors are one line each.
fn one_line(err: &clap::Error) -> String {
    let text = err.to_string();
    let first = text.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see --help)")
}

/// A drill duration that clap's value parser refused, reported as a bad value of its flag like
/// any other; `None` for any other validation error.
fn bad_duration(err: &clap::Error) -> Option<ConfigError> {
    let why = std::error::Error::source(err)?.downcast_ref::<BadDuration>()?;
    // clap names the argument as in help: `--after <DUR>`.
    let arg = err.get(ContextKind::InvalidArg)?.to_string();
    let option = arg.trim_start_matches('-').split([' ', '=']).next()?;
    Some(ConfigError::Invalid {
        option: option.to_string(),
        value: err.get(ContextKind::InvalidValue)?.to_string(),
        origin: Source::Flag,
        why: why.0.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn file_keys_take_dashes_or_underscores_and_lose_to_flags() {
        let Invocation::CheckConfig(config, settings) = load([
            "agent-guard",
            "--check-config",
            "--stop-timeout",
            "7s",
            "--",
            "/bin/true",
        ])
        .expect("valid flags") else {
            panic!("expected check-config");
        };
        assert_eq!(config.stop_timeout, Duration::from_secs(7));
        assert_eq!(config.name, "true");
        let mut s = settings.clone();
        layers::apply_file(
            &mut s,
            Path::new("x.toml"),
            "stop_timeout = \"9s\"\ndrain-timeout = 12\nsubreaper = true\n",
        )
        .expect("valid file");
        let config = Config::from_settings(&s, vec![]).expect("valid");
        assert_eq!(config.stop_timeout, Duration::from_secs(7), "the flag wins");
        assert_eq!(config.drain_timeout, Duration::from_secs(12));
        assert!(config.subreaper);
        assert_eq!(
            s.get("drain-timeout").map(|s| s.source.clone()),
            Some(Source::File {
                path: PathBuf::from("x.toml"),
                line: 2
            })
        );
    }
}
