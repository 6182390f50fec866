//! Flags, environment and the optional TOML file become one validated [`Config`], and each value
//! keeps where it came from, for `--check-config` and for error messages.
//!
//! The layers are merged generically over the options clap knows, so a new option needs one field
//! in `cli.rs` and one line in [`Config::from_settings`]: the file, the environment fallback,
//! provenance and the unknown-key check come with it. Precedence: flag > env > file > default.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;

pub(crate) mod check;
pub(crate) mod settings;
use clap::{ArgMatches, FromArgMatches};

pub(crate) use self::settings::*;
use crate::cli::{Cli, META_OPTIONS};
pub(crate) use crate::fmt::{format_duration, parse_duration};
use crate::logging::LogFormat;
use crate::machine::state::ReadyOn;
use crate::process::sig::Sig;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag.
    Flag,
    /// An environment variable, by name.
    Env(String),
    /// The config file, with the line of the key.
    File { path: PathBuf, line: usize },
    /// The built-in default.
    Default,
    /// Worked out from other values (the name from the command).
    Derived(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File { path, line } => write!(f, "file {}:{line}", path.display()),
            Source::Default => f.write_str("default"),
            Source::Derived(from) => write!(f, "derived from {from}"),
        }
    }
}

/// One option's raw value(s) and their source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub values: Vec<String>,
    pub source: Source,
}

/// Every option by long name, in `--help` order; `None` where nothing set it and it has no
/// default.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    entries: Vec<(String, Option<Setting>)>,
    /// `command = [...]` from the config file: the agent, when none follows `--`.
    file_command: Option<(Vec<String>, Source)>,
}

impl Settings {
    /// The setting of option `long`, if any.
    pub fn get(&self, long: &str) -> Option<&Setting> {
        self.entries
            .iter()
            .find(|(name, _)| name == long)
            .and_then(|(_, s)| s.as_ref())
    }

    fn set(&mut self, long: &str, setting: Setting) {
        match self.entries.iter_mut().find(|(name, _)| name == long) {
            Some((_, slot)) => *slot = Some(setting),
            None => self.entries.push((long.to_string(), Some(setting))),
        }
    }

    /// Every option with its setting, in `--help` order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&Setting>)> {
        self.entries.iter().map(|(n, s)| (n.as_str(), s.as_ref()))
    }

    /// Parses the single value of `long` with `parse`; `None` if unset.
    fn parse<T>(
        &self,
        long: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        let Some(setting) = self.get(long) else {
            return Ok(None);
        };
        let value = match setting.values.as_slice() {
            [one] => one,
            _ => {
                return Err(ConfigError::Invalid {
                    option: long.to_string(),
                    value: setting.values.join(","),
                    origin: setting.source.clone(),
                    why: "expected exactly one value".to_string(),
                });
            }
        };
        parse(value).map(Some).map_err(|why| ConfigError::Invalid {
            option: long.to_string(),
            value: value.clone(),
            origin: setting.source.clone(),
            why,
        })
    }

    /// Like `parse`, for options that always have a value (a default in `cli.rs`).
    fn require<T>(
        &self,
        long: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        self.parse(long, parse)?
            .ok_or_else(|| ConfigError::Missing(long.to_string()))
    }
}

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
    pub imds: ImdsMode,
    pub imds_endpoint: String,
    pub imds_poll: Duration,
    pub on_rebalance: OnRebalance,
    pub spot_margin: Duration,
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
    /// An `EnvFilter` directive string, already validated.
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
    /// `ctl`: talk to a running guard.
    Ctl {
        socket: PathBuf,
        request: crate::cli::CtlRequest,
        json: bool,
    },
}

/// Reads the command line (and through it the environment and the config file).
pub fn load<I, T>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = match crate::cli::command().try_get_matches_from(args) {
        Ok(m) => m,
        Err(err) => return info_or_usage(err),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| ConfigError::Usage(one_line(&e)))?;
    match cli.sub {
        Some(crate::cli::Sub::Ctl(ctl)) => return ctl_invocation(ctl),
        Some(crate::cli::Sub::Drill(drill)) => return drill_invocation(drill),
        None => {}
    }
    let mut settings = from_matches(&matches)?;
    if let Some(path) = &cli.config {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        apply_file(&mut settings, path, &text)?;
    }
    apply_foreign_env(&mut settings);
    // The command after `--` wins; else the config file's `command`.
    let command = match (cli.command.is_empty(), &settings.file_command) {
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

fn drill_invocation(d: crate::cli::DrillCli) -> Result<Invocation, ConfigError> {
    use crate::cli::DrillArgs;
    let event = d.event;
    let duration = |option: &str, value: &str| {
        parse_duration(value).map_err(|why| ConfigError::Invalid {
            option: option.to_string(),
            value: value.to_string(),
            origin: Source::Flag,
            why,
        })
    };
    // The drill's own flags may also come after the guard's options (before `--`).
    let mut args = DrillArgs {
        event,
        after: duration("after", &d.after)?,
        deadline: duration("deadline", &d.deadline)?,
        heartbeat_timeout: duration("heartbeat-timeout", &d.heartbeat_timeout)?,
        json: d.json,
        verbose: d.verbose,
        guard_args: Vec::new(),
    };
    // clap drops the `--` when nothing precedes it: then everything is the command.
    let mut raw = d.rest;
    if !raw.iter().any(|a| a == "--") {
        match raw.first() {
            Some(first) if first.to_string_lossy().starts_with('-') => {
                return Err(ConfigError::Usage(
                    "drill: put the agent's command after `--`, as in agent-guard drill scale-in [OPTIONS] -- COMMAND".to_string(),
                ));
            }
            _ => raw.insert(0, OsString::from("--")),
        }
    }
    let mut rest = raw.into_iter();
    while let Some(arg) = rest.next() {
        if arg == "--" {
            args.guard_args.push(arg);
            args.guard_args.extend(rest.by_ref());
            break;
        }
        let text = arg.to_string_lossy().into_owned();
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (text.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, ConfigError> {
            inline
                .clone()
                .or_else(|| rest.next().map(|v| v.to_string_lossy().into_owned()))
                .ok_or_else(|| ConfigError::Usage(format!("{name} needs a value")))
        };
        match name.as_str() {
            "--json" => args.json = true,
            "--verbose" => args.verbose = true,
            "--after" => args.after = duration("after", &value("--after")?)?,
            "--deadline" => args.deadline = duration("deadline", &value("--deadline")?)?,
            "--heartbeat-timeout" => {
                args.heartbeat_timeout =
                    duration("heartbeat-timeout", &value("--heartbeat-timeout")?)?;
            }
            _ => args.guard_args.push(arg),
        }
    }
    Ok(Invocation::Drill(args))
}

fn ctl_invocation(ctl: crate::cli::CtlArgs) -> Result<Invocation, ConfigError> {
    let socket = match (ctl.socket, ctl.name) {
        (Some(path), _) => path,
        (None, Some(name)) => {
            default_socket(&parse_name(&name).map_err(|why| ConfigError::Invalid {
                option: "name".to_string(),
                value: name.clone(),
                origin: Source::Flag,
                why,
            })?)
        }
        (None, None) => only_socket_in(&default_socket_dir()).ok_or_else(|| {
            ConfigError::Usage(format!(
                "ctl: which guard? give --socket PATH or --name NAME (no single socket in {})",
                default_socket_dir().display()
            ))
        })?,
    };
    Ok(Invocation::Ctl {
        socket,
        request: ctl.request,
        json: ctl.json,
    })
}

/// The directory of the default socket path: `$RUNTIME_DIRECTORY` (systemd's
/// `RuntimeDirectory=`), else `/run/agent-guard` as root, else `$XDG_RUNTIME_DIR/agent-guard`,
/// else a private directory under /tmp.
pub fn default_socket_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|d| !d.is_empty()) {
        // systemd may list several directories, colon-separated; the first is ours.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_string();
        return PathBuf::from(first);
    }
    // SAFETY: geteuid has no side effects.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/agent-guard");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("agent-guard"),
        None => PathBuf::from(format!("/tmp/agent-guard-{uid}")),
    }
}

/// The default control socket for a guard named `name`.
pub fn default_socket(name: &str) -> PathBuf {
    default_socket_dir().join(format!("{name}.sock"))
}

/// The one `*.sock` in `dir`, if there is exactly one.
fn only_socket_in(dir: &Path) -> Option<PathBuf> {
    let mut found = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"));
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The agent's sd_notify socket: next to the control socket, `.notify` for `.sock`.
fn notify_socket_for(socket: &Path) -> PathBuf {
    if socket.extension().is_some_and(|x| x == "sock") {
        socket.with_extension("notify")
    } else {
        let mut s = socket.as_os_str().to_owned();
        s.push(".notify");
        PathBuf::from(s)
    }
}

fn info_or_usage(err: clap::Error) -> Result<Invocation, ConfigError> {
    use clap::error::ErrorKind;
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(Invocation::Info(err.to_string())),
        ErrorKind::UnknownArgument => {
            let arg = err
                .get(clap::error::ContextKind::InvalidArg)
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

/// The flag and environment layers, and the defaults, from clap.
fn from_matches(matches: &ArgMatches) -> Result<Settings, ConfigError> {
    let mut settings = Settings::default();
    for arg in crate::cli::command().get_arguments() {
        let Some(long) = arg.get_long() else {
            continue; // the positional command
        };
        if META_OPTIONS.contains(&long) {
            continue;
        }
        let id = arg.get_id().as_str();
        let source = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => Source::Flag,
            Some(ValueSource::EnvVariable) => Source::Env(
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ),
            Some(ValueSource::DefaultValue) => Source::Default,
            _ => {
                settings.entries.push((long.to_string(), None));
                continue;
            }
        };
        let values = matches
            .get_raw(id)
            .into_iter()
            .flatten()
            .map(|raw| {
                raw.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| ConfigError::Invalid {
                        option: long.to_string(),
                        value: raw.to_string_lossy().into_owned(),
                        origin: source.clone(),
                        why: "not valid UTF-8".to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        settings
            .entries
            .push((long.to_string(), Some(Setting { values, source })));
    }
    Ok(settings)
}

/// The file layer: fills every option that only has its default (or nothing).
fn apply_file(settings: &mut Settings, path: &Path, text: &str) -> Result<(), ConfigError> {
    type Spanned<T> = toml::Spanned<T>;
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let table: BTreeMap<Spanned<String>, Spanned<toml::Value>> =
        toml::from_str(text).map_err(|e| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().trim().to_string(),
        })?;
    for (key, value) in table {
        let line = line_of(key.span().start);
        if key.get_ref() == "command" {
            let command = match value.get_ref() {
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .filter(|c| !c.is_empty()),
                _ => None,
            };
            let command = command.ok_or_else(|| ConfigError::FileSyntax {
                path: path.to_path_buf(),
                line,
                message: "`command` must be a non-empty array of strings, such as [\"/opt/worker/bin/worker\", \"--queue\", \"jobs\"]".to_string(),
            })?;
            let source = Source::File {
                path: path.to_path_buf(),
                line,
            };
            settings.file_command = Some((command, source));
            continue;
        }
        let long = key.get_ref().replace('_', "-");
        let known = settings.entries.iter().any(|(name, _)| *name == long);
        if !known {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                line,
                key: key.into_inner(),
            });
        }
        let values = file_values(value.get_ref()).ok_or_else(|| ConfigError::FileSyntax {
            path: path.to_path_buf(),
            line,
            message: format!(
                "`{}` must be a string, number, boolean or array of those",
                key.get_ref()
            ),
        })?;
        let overridden = matches!(
            settings.get(&long).map(|s| &s.source),
            Some(Source::Flag | Source::Env(_))
        );
        if !overridden {
            let source = Source::File {
                path: path.to_path_buf(),
                line,
            };
            settings.set(&long, Setting { values, source });
        }
    }
    Ok(())
}

fn file_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| file_values(v).and_then(|mut one| (one.len() == 1).then(|| one.remove(0))))
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// Variables from the wider ecosystem that also set an option, below every layer of our own:
/// `RUST_LOG` for `--log-level`, the AWS SDK's IMDS endpoint for `--imds-endpoint`.
const FOREIGN_ENV: &[(&str, &str)] = &[
    ("log-level", "RUST_LOG"),
    ("imds-endpoint", "AWS_EC2_METADATA_SERVICE_ENDPOINT"),
];

fn apply_foreign_env(settings: &mut Settings) {
    for (long, var) in FOREIGN_ENV {
        let defaulted = matches!(
            settings.get(long).map(|s| &s.source),
            Some(Source::Default) | None
        );
        if let (true, Ok(value)) = (defaulted, std::env::var(var))
            && !value.trim().is_empty()
        {
            settings.set(
                long,
                Setting {
                    values: vec![value],
                    source: Source::Env(var.to_string()),
                },
            );
        }
    }
}

impl Config {
    /// Validates every setting. The first error wins.
    pub fn from_settings(
        settings: &Settings,
        command: Vec<OsString>,
    ) -> Result<Config, ConfigError> {
        let name = match settings.parse("name", parse_name)? {
            Some(name) => name,
            None => default_name(&command),
        };
        let socket = match settings.parse("socket", parse_socket_path)? {
            Some(path) => path,
            None => default_socket(&name),
        };
        let notify_socket = notify_socket_for(&socket);
        parse_socket_path(&notify_socket.to_string_lossy()).map_err(|why| {
            ConfigError::Invalid {
                option: "socket".to_string(),
                value: socket.display().to_string(),
                origin: settings
                    .get("socket")
                    .map_or(Source::Derived("--name"), |s| s.source.clone()),
                why: format!("its sd_notify neighbour: {why}"),
            }
        })?;
        let ready_on = settings.require("ready-on", |v| match v {
            "start" => Ok(ReadyOn::Start),
            "notify" => Ok(ReadyOn::Notify),
            "health" => Ok(ReadyOn::Health),
            other => parse_duration(other).map(ReadyOn::Warmup).map_err(|_| {
                "expected `start`, `notify`, `health` or a warm-up duration such as 30s".to_string()
            }),
        })?;
        if ready_on == ReadyOn::Health && settings.get("child-health").is_none() {
            return Err(ConfigError::Invalid {
                option: "ready-on".to_string(),
                value: "health".to_string(),
                origin: settings
                    .get("ready-on")
                    .map_or(Source::Default, |s| s.source.clone()),
                why: "needs --child-health URL to probe".to_string(),
            });
        }
        let mut checks = Vec::new();
        if let Some(child) = settings.parse("child-health", |v| {
            check::Check::child(v).map_err(|e| e.to_string())
        })? {
            checks.push(child);
        }
        if let Some(setting) = settings.get("check") {
            for value in &setting.values {
                let check = check::Check::parse_named(value).map_err(|e| ConfigError::Invalid {
                    option: "check".to_string(),
                    value: check::mask_spec(value),
                    origin: setting.source.clone(),
                    why: e.to_string(),
                })?;
                if checks.iter().any(|c: &check::Check| c.name == check.name) {
                    return Err(ConfigError::Invalid {
                        option: "check".to_string(),
                        value: check.name.clone(),
                        origin: setting.source.clone(),
                        why: "two checks have this name".to_string(),
                    });
                }
                checks.push(check);
            }
        }
        let positive = |v: &str| {
            parse_duration(v).and_then(|d| {
                if d >= Duration::from_millis(10) {
                    Ok(d)
                } else {
                    Err("must be at least 10ms".to_string())
                }
            })
        };
        let hook_name = |v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 255
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
            if ok {
                Ok(v.to_string())
            } else {
                Err("a hook name is 1 to 255 letters, digits, `-`, `_` or `/`".to_string())
            }
        };
        let imds_mode = settings.require("imds", |v| match v {
            "auto" => Ok(ImdsMode::Auto),
            "on" => Ok(ImdsMode::On),
            "off" => Ok(ImdsMode::Off),
            _ => Err("expected `auto`, `on` or `off`".to_string()),
        })?;
        let lifecycle = LifecycleSettings {
            terminate_hook: settings.parse("terminate-hook", hook_name)?,
            launch_hook: settings.parse("launch-hook", hook_name)?,
            asg_name: settings.parse("asg-name", |v| {
                if v.is_empty() || v.len() > 255 {
                    Err("expected a group name of 1 to 255 characters".to_string())
                } else {
                    Ok(v.to_string())
                }
            })?,
            heartbeat_interval: settings.parse("heartbeat-interval", |v| {
                parse_duration(v).and_then(|d| {
                    if d >= Duration::from_millis(100) {
                        Ok(d)
                    } else {
                        Err("must be at least 100ms".to_string())
                    }
                })
            })?,
            on_unclean_exit: settings.require("on-unclean-exit", |v| match v {
                "continue" => Ok(HookResult::Continue),
                "abandon" => Ok(HookResult::Abandon),
                _ => Err("expected `continue` or `abandon`".to_string()),
            })?,
            stop_signal: settings.require("stop-signal", parse_signal)?,
            imds_endpoint: settings.require("imds-endpoint", parse_http_url)?,
        };
        let at_least = |min: Duration| {
            move |v: &str| {
                parse_duration(v).and_then(|d| {
                    if d >= min {
                        Ok(d)
                    } else {
                        Err(format!("must be at least {}", format_duration(min)))
                    }
                })
            }
        };
        let busy = BusySettings {
            protect: settings
                .parse("protect-while-busy", parse_bool)?
                .unwrap_or(false),
            idle_release: settings.require("idle-release", parse_duration)?,
            min_interval: settings
                .require("protect-min-interval", at_least(Duration::from_millis(100)))?,
            busy_stale: settings.require("busy-stale", at_least(Duration::from_secs(1)))?,
            emf: settings.parse("metrics-emf", |v| match v.trim() {
                "" => Err("expected a file path or `stdout`".to_string()),
                "stdout" | "-" => Ok(EmfTarget::Stdout),
                path => Ok(EmfTarget::File(PathBuf::from(path))),
            })?,
            emf_interval: settings
                .require("metrics-interval", at_least(Duration::from_millis(100)))?,
        };
        // Hooks, protection and EMF act for this instance: its id comes from IMDS.
        let needs_imds = [
            (lifecycle.terminate_hook.is_some(), "terminate-hook"),
            (lifecycle.launch_hook.is_some(), "launch-hook"),
            (busy.protect, "protect-while-busy"),
            (busy.emf.is_some(), "metrics-emf"),
        ];
        if let (ImdsMode::Off, Some((_, option))) =
            (imds_mode, needs_imds.iter().find(|(on, _)| *on))
        {
            return Err(ConfigError::Invalid {
                option: option.to_string(),
                value: settings
                    .get(option)
                    .map(|s| s.values.join(","))
                    .unwrap_or_default(),
                origin: settings
                    .get(option)
                    .map_or(Source::Default, |s| s.source.clone()),
                why: "it needs the instance id from IMDS, but --imds is off".to_string(),
            });
        }
        Ok(Config {
            busy,
            lifecycle,
            health_listen: settings.require("health-listen", |v| match v.trim() {
                "off" => Ok(None),
                addr => addr.parse::<std::net::SocketAddr>().map(Some).map_err(|_| {
                    "expected an address such as 0.0.0.0:8099 or 127.0.0.1:0, or `off`".to_string()
                }),
            })?,
            checks,
            check_interval: settings.require("check-interval", positive)?,
            check_timeout: settings.require("check-timeout", positive)?,
            socket,
            notify_socket,
            ready_on,
            ready_timeout: settings.require("ready-timeout", parse_duration)?,
            watchdog: settings.parse("watchdog", |v| {
                parse_duration(v).and_then(|d| {
                    if d >= Duration::from_millis(10) {
                        Ok(d)
                    } else {
                        Err("must be at least 10ms".to_string())
                    }
                })
            })?,
            name,
            stop_signal: settings.require("stop-signal", parse_signal)?,
            stop_timeout: settings.require("stop-timeout", parse_duration)?,
            drain_timeout: settings.require("drain-timeout", parse_duration)?,
            drain_signal: settings.parse("drain-signal", parse_signal)?,
            forward_to: settings.require("forward-to", |v| match v {
                "group" => Ok(ForwardTo::Group),
                "child" => Ok(ForwardTo::Child),
                _ => Err("expected `group` or `child`".to_string()),
            })?,
            subreaper: settings.parse("subreaper", parse_bool)?.unwrap_or(false),
            imds: settings.require("imds", |v| match v {
                "auto" => Ok(ImdsMode::Auto),
                "on" => Ok(ImdsMode::On),
                "off" => Ok(ImdsMode::Off),
                _ => Err("expected `auto`, `on` or `off`".to_string()),
            })?,
            imds_endpoint: settings.require("imds-endpoint", parse_http_url)?,
            imds_poll: settings.require("imds-poll", |v| {
                parse_duration(v).and_then(|d| {
                    if d >= Duration::from_millis(50) {
                        Ok(d)
                    } else {
                        Err("must be at least 50ms".to_string())
                    }
                })
            })?,
            on_rebalance: settings.require("on-rebalance", |v| match v {
                "ignore" => Ok(OnRebalance::Ignore),
                "drain" => Ok(OnRebalance::Drain),
                _ => Err("expected `ignore` or `drain`".to_string()),
            })?,
            spot_margin: settings.require("spot-margin", parse_duration)?,
            log_format: settings.require("log-format", |v| match v {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected `text` or `json`".to_string()),
            })?,
            log_level: settings.require("log-level", parse_log_level)?,
            command,
        })
    }

    /// The effective configuration as TOML a user could paste into a config file, each value
    /// with its source as a comment.
    pub fn describe(&self, settings: &Settings) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        for (long, setting) in settings.iter() {
            let (value, source) = match (long, setting) {
                ("name", None) => (
                    toml_string(&self.name),
                    "derived from the command".to_string(),
                ),
                (_, None) => ("# not set".to_string(), String::new()),
                (_, Some(s)) => {
                    // Check URLs may carry credentials: they are never printed.
                    let shown = |v: &String| match long {
                        "check" | "child-health" => toml_string(&check::mask_spec(v)),
                        _ => toml_string(v),
                    };
                    let value = match s.values.as_slice() {
                        [one] if long != "check" => shown(one),
                        many => format!(
                            "[{}]",
                            many.iter().map(shown).collect::<Vec<_>>().join(", ")
                        ),
                    };
                    (value, s.source.to_string())
                }
            };
            let line = if value.starts_with('#') {
                format!("# {long} {value}")
            } else {
                format!("{long} = {value}")
            };
            rows.push((line, source));
        }
        let command: Vec<String> = self
            .command
            .iter()
            .map(|a| toml_string(&a.to_string_lossy()))
            .collect();
        let command_source = match &settings.file_command {
            Some((file, source)) if file.len() == self.command.len() => source.to_string(),
            _ => "flag".to_string(),
        };
        if command.is_empty() {
            rows.push(("# command = []".to_string(), "none given".to_string()));
        } else {
            rows.push((
                format!("command = [{}]", command.join(", ")),
                command_source,
            ));
        }
        let width = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (line, source) in rows {
            if source.is_empty() {
                out.push_str(&line);
            } else {
                out.push_str(&format!("{line:width$}  # {source}"));
            }
            out.push('\n');
        }
        out
    }
}

/// The command's file name, the default `--name`.
fn default_name(command: &[OsString]) -> String {
    command
        .first()
        .and_then(|p| Path::new(p).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "agent".to_string())
}

fn parse_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
    if ok {
        Ok(v.to_string())
    } else {
        Err(
            "expected 1 to 64 letters, digits, `-`, `_`, `.` or `@` (it names a socket file)"
                .to_string(),
        )
    }
}

fn parse_socket_path(v: &str) -> Result<PathBuf, String> {
    // sun_path holds 108 bytes with the terminating NUL.
    if v.is_empty() {
        Err("expected a path".to_string())
    } else if v.len() > 107 {
        Err(format!(
            "{} bytes is too long for a Unix socket path (at most 107)",
            v.len()
        ))
    } else {
        Ok(PathBuf::from(v))
    }
}

fn parse_http_url(v: &str) -> Result<String, String> {
    let uri: http::Uri = v
        .trim()
        .parse()
        .map_err(|e| format!("expected a URL such as http://169.254.169.254 ({e})"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(v.trim().trim_end_matches('/').to_string()),
        _ => Err("expected a URL such as http://169.254.169.254".to_string()),
    }
}

fn parse_signal(v: &str) -> Result<Sig, String> {
    v.parse::<Sig>().map_err(|e| e.to_string())
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

fn parse_log_level(v: &str) -> Result<String, String> {
    if crate::logging::plain_level(v).is_some() {
        return Ok(v.trim().to_string());
    }
    tracing_subscriber::EnvFilter::try_new(v)
        .map(|_| v.to_string())
        .map_err(|e| {
            format!("expected error, warn, info, debug, trace or RUST_LOG directives ({e})")
        })
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
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
        apply_file(
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

    #[test]
    fn file_errors_name_file_line_and_key() {
        let mut s = Settings {
            entries: vec![("stop-timeout".to_string(), None)],
            file_command: None,
        };
        let err = apply_file(&mut s, Path::new("a.toml"), "\n\nstop_timout = 3\n")
            .expect_err("unknown key");
        assert_eq!(
            err.to_string(),
            "config file a.toml:3: unknown key `stop_timout` (keys are the long option names, see --help)"
        );
        let err = apply_file(&mut s, Path::new("a.toml"), "stop-timeout = \n").expect_err("syntax");
        assert!(
            err.to_string().starts_with("config file a.toml:1: "),
            "{err}"
        );
    }

    #[test]
    fn toml_strings_escape() {
        assert_eq!(toml_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000a\"");
    }
}
