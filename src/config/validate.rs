//! Raw [`Settings`] become a typed [`Config`]: one small function per group of options, each
//! option parsed exactly once, then the rules that span groups.
//!
//! Groups are validated in `--help` order, so with several bad values the first one in `--help`
//! is the one reported.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::check::{self, Check};
use super::layers::{Settings, Source};
use super::paths::{default_socket, notify_socket_for, parse_name, parse_socket_path};
use super::settings::{
    BusySettings, EmfTarget, ForwardTo, HookResult, ImdsMode, LifecycleSettings, OnRebalance,
};
use super::{Config, ConfigError};
use crate::fmt::{format_duration, parse_duration};
use crate::logging::LogFormat;
use crate::machine::state::ReadyOn;
use crate::process::sig::Sig;

impl Config {
    /// Validates every setting. The first error (in `--help` order) wins.
    pub fn from_settings(
        settings: &Settings,
        command: Vec<OsString>,
    ) -> Result<Config, ConfigError> {
        let name = match settings.parse("name", parse_name)? {
            Some(name) => name,
            None => default_name(&command),
        };
        let stop = Stop::from_settings(settings)?;
        let imds = Imds::from_settings(settings)?;
        let (socket, notify_socket) = sockets(settings, &name)?;
        let ready = Readiness::from_settings(settings)?;
        let health = Health::from_settings(settings)?;
        let lifecycle = lifecycle(settings, stop.signal, &imds.endpoint)?;
        let busy = busy(settings)?;
        needs_imds(settings, imds.mode, &lifecycle, &busy)?;
        let (log_format, log_level) = logging(settings)?;
        Ok(Config {
            name,
            command,
            stop_signal: stop.signal,
            stop_timeout: stop.timeout,
            drain_timeout: stop.drain_timeout,
            drain_signal: stop.drain_signal,
            forward_to: stop.forward_to,
            subreaper: stop.subreaper,
            imds: imds.mode,
            imds_endpoint: imds.endpoint,
            imds_poll: imds.poll,
            on_rebalance: imds.on_rebalance,
            spot_margin: imds.spot_margin,
            socket,
            notify_socket,
            ready_on: ready.on,
            ready_timeout: ready.timeout,
            watchdog: ready.watchdog,
            health_listen: health.listen,
            checks: health.checks,
            check_interval: health.interval,
            check_timeout: health.timeout,
            lifecycle,
            busy,
            log_format,
            log_level,
        })
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

/// How the agent is stopped and how signals reach it.
struct Stop {
    signal: Sig,
    timeout: Duration,
    drain_timeout: Duration,
    drain_signal: Option<Sig>,
    forward_to: ForwardTo,
    subreaper: bool,
}

impl Stop {
    fn from_settings(settings: &Settings) -> Result<Stop, ConfigError> {
        Ok(Stop {
            signal: settings.require("stop-signal", parse_signal)?,
            timeout: settings.require("stop-timeout", parse_duration)?,
            drain_timeout: settings.require("drain-timeout", parse_duration)?,
            drain_signal: settings.parse("drain-signal", parse_signal)?,
            forward_to: settings.require(
                "forward-to",
                one_of(
                    &[("group", ForwardTo::Group), ("child", ForwardTo::Child)],
                    "expected `group` or `child`",
                ),
            )?,
            subreaper: settings.parse("subreaper", parse_bool)?.unwrap_or(false),
        })
    }
}

/// Whether and how IMDS is watched for notices.
struct Imds {
    mode: ImdsMode,
    endpoint: String,
    poll: Duration,
    on_rebalance: OnRebalance,
    spot_margin: Duration,
}

impl Imds {
    fn from_settings(settings: &Settings) -> Result<Imds, ConfigError> {
        Ok(Imds {
            mode: settings.require(
                "imds",
                one_of(
                    &[
                        ("auto", ImdsMode::Auto),
                        ("on", ImdsMode::On),
                        ("off", ImdsMode::Off),
                    ],
                    "expected `auto`, `on` or `off`",
                ),
            )?,
            endpoint: settings.require("imds-endpoint", parse_http_url)?,
            poll: settings.require("imds-poll", at_least(Duration::from_millis(50)))?,
            on_rebalance: settings.require(
                "on-rebalance",
                one_of(
                    &[
                        ("ignore", OnRebalance::Ignore),
                        ("drain", OnRebalance::Drain),
                    ],
                    "expected `ignore` or `drain`",
                ),
            )?,
            spot_margin: settings.require("spot-margin", parse_duration)?,
        })
    }
}

/// The control socket and its sd_notify neighbour, which must fit a Unix socket path too.
fn sockets(settings: &Settings, name: &str) -> Result<(PathBuf, PathBuf), ConfigError> {
    let socket = match settings.parse("socket", parse_socket_path)? {
        Some(path) => path,
        None => default_socket(name),
    };
    let notify_socket = notify_socket_for(&socket);
    parse_socket_path(&notify_socket.to_string_lossy()).map_err(|why| ConfigError::Invalid {
        option: "socket".to_string(),
        value: socket.display().to_string(),
        origin: settings
            .get("socket")
            .map_or(Source::Derived("--name"), |s| s.source.clone()),
        why: format!("its sd_notify neighbour: {why}"),
    })?;
    Ok((socket, notify_socket))
}

/// When the agent counts as ready, and how its liveness is watched.
struct Readiness {
    on: ReadyOn,
    timeout: Duration,
    watchdog: Option<Duration>,
}

impl Readiness {
    fn from_settings(settings: &Settings) -> Result<Readiness, ConfigError> {
        let on = settings.require("ready-on", |v| match v {
            "start" => Ok(ReadyOn::Start),
            "notify" => Ok(ReadyOn::Notify),
            "health" => Ok(ReadyOn::Health),
            other => parse_duration(other).map(ReadyOn::Warmup).map_err(|_| {
                "expected `start`, `notify`, `health` or a warm-up duration such as 30s".to_string()
            }),
        })?;
        if on == ReadyOn::Health && settings.get("child-health").is_none() {
            return Err(ConfigError::Invalid {
                option: "ready-on".to_string(),
                value: "health".to_string(),
                origin: settings
                    .get("ready-on")
                    .map_or(Source::Default, |s| s.source.clone()),
                why: "needs --child-health URL to probe".to_string(),
            });
        }
        Ok(Readiness {
            on,
            timeout: settings.require("ready-timeout", parse_duration)?,
            watchdog: settings.parse("watchdog", at_least(Duration::from_millis(10)))?,
        })
    }
}

/// The health endpoint and the background checks behind it.
struct Health {
    listen: Option<std::net::SocketAddr>,
    checks: Vec<Check>,
    interval: Duration,
    timeout: Duration,
}

impl Health {
    fn from_settings(settings: &Settings) -> Result<Health, ConfigError> {
        Ok(Health {
            listen: settings.require("health-listen", |v| match v.trim() {
                "off" => Ok(None),
                addr => addr.parse::<std::net::SocketAddr>().map(Some).map_err(|_| {
                    "expected an address such as 0.0.0.0:8099 or 127.0.0.1:0, or `off`".to_string()
                }),
            })?,
            checks: checks(settings)?,
            interval: settings.require("check-interval", at_least(Duration::from_millis(10)))?,
            timeout: settings.require("check-timeout", at_least(Duration::from_millis(10)))?,
        })
    }
}

/// `--child-health` first, then every `--check`; names are unique. A bad check is shown masked:
/// its URL may carry credentials.
fn checks(settings: &Settings) -> Result<Vec<Check>, ConfigError> {
    let mut checks = Vec::new();
    if let Some(child) = settings.parse("child-health", |v| {
        Check::child(v).map_err(|e| e.to_string())
    })? {
        checks.push(child);
    }
    let Some(setting) = settings.get("check") else {
        return Ok(checks);
    };
    for value in &setting.values {
        let check = Check::parse_named(value).map_err(|e| ConfigError::Invalid {
            option: "check".to_string(),
            value: check::mask_spec(value),
            origin: setting.source.clone(),
            why: e.to_string(),
        })?;
        if checks.iter().any(|c| c.name == check.name) {
            return Err(ConfigError::Invalid {
                option: "check".to_string(),
                value: check.name.clone(),
                origin: setting.source.clone(),
                why: "two checks have this name".to_string(),
            });
        }
        checks.push(check);
    }
    Ok(checks)
}

/// The lifecycle hooks. They stop the agent with the guard's stop signal and find the instance
/// through the guard's IMDS endpoint, both parsed by their own groups.
fn lifecycle(
    settings: &Settings,
    stop_signal: Sig,
    imds_endpoint: &str,
) -> Result<LifecycleSettings, ConfigError> {
    Ok(LifecycleSettings {
        terminate_hook: settings.parse("terminate-hook", parse_hook_name)?,
        launch_hook: settings.parse("launch-hook", parse_hook_name)?,
        asg_name: settings.parse("asg-name", |v| {
            if v.is_empty() || v.len() > 255 {
                Err("expected a group name of 1 to 255 characters".to_string())
            } else {
                Ok(v.to_string())
            }
        })?,
        heartbeat_interval: settings
            .parse("heartbeat-interval", at_least(Duration::from_millis(100)))?,
        on_unclean_exit: settings.require(
            "on-unclean-exit",
            one_of(
                &[
                    ("continue", HookResult::Continue),
                    ("abandon", HookResult::Abandon),
                ],
                "expected `continue` or `abandon`",
            ),
        )?,
        stop_signal,
        imds_endpoint: imds_endpoint.to_string(),
        hooks_dir: hooks_dir(settings)?,
        hooks_dir_given: settings
            .get("hooks-dir")
            .is_some_and(|s| s.source != Source::Default),
    })
}

/// `--hooks-dir`: an absolute directory, shared by every guard on the host.
fn hooks_dir(settings: &Settings) -> Result<PathBuf, ConfigError> {
    settings.require("hooks-dir", |v| {
        let path = PathBuf::from(v.trim());
        if path.is_absolute() {
            Ok(path)
        } else {
            Err("expected an absolute directory, the same for every guard on this host".to_string())
        }
    })
}

/// Scale-in protection while busy, and the EMF metrics of the agent's load.
fn busy(settings: &Settings) -> Result<BusySettings, ConfigError> {
    Ok(BusySettings {
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
        emf_interval: settings.require("metrics-interval", at_least(Duration::from_millis(100)))?,
    })
}

/// Hooks, protection and EMF act for this instance, whose id comes from IMDS: with `--imds off`
/// they could never work, so the first of them that is on is refused.
fn needs_imds(
    settings: &Settings,
    imds: ImdsMode,
    lifecycle: &LifecycleSettings,
    busy: &BusySettings,
) -> Result<(), ConfigError> {
    let needs_imds = [
        (lifecycle.terminate_hook.is_some(), "terminate-hook"),
        (lifecycle.launch_hook.is_some(), "launch-hook"),
        (busy.protect, "protect-while-busy"),
        (busy.emf.is_some(), "metrics-emf"),
    ];
    let Some((_, option)) = needs_imds.iter().find(|(on, _)| *on) else {
        return Ok(());
    };
    if imds != ImdsMode::Off {
        return Ok(());
    }
    Err(ConfigError::Invalid {
        option: option.to_string(),
        value: settings
            .get(option)
            .map(|s| s.values.join(","))
            .unwrap_or_default(),
        origin: settings
            .get(option)
            .map_or(Source::Default, |s| s.source.clone()),
        why: "it needs the instance id from IMDS, but --imds is off".to_string(),
    })
}

/// The guard's own logs: their format and an `EnvFilter` directive string.
fn logging(settings: &Settings) -> Result<(LogFormat, String), ConfigError> {
    Ok((
        settings.require(
            "log-format",
            one_of(
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
                "expected `text` or `json`",
            ),
        )?,
        settings.require("log-level", parse_log_level)?,
    ))
}

/// A parser for a value that must be one of a few words, each standing for a `T`.
fn one_of<T: Copy>(
    words: &'static [(&'static str, T)],
    expected: &'static str,
) -> impl Fn(&str) -> Result<T, String> {
    move |v| {
        words
            .iter()
            .find(|(word, _)| *word == v)
            .map(|(_, value)| *value)
            .ok_or_else(|| expected.to_string())
    }
}

/// A duration parser with a floor: below it a timer would spin, or hammer a service.
fn at_least(min: Duration) -> impl Fn(&str) -> Result<Duration, String> {
    move |v| {
        parse_duration(v).and_then(|d| {
            if d >= min {
                Ok(d)
            } else {
                Err(format!("must be at least {}", format_duration(min)))
            }
        })
    }
}

/// A lifecycle hook name, as the Auto Scaling API accepts it.
fn parse_hook_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty()
        && v.len() <= 255
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_/".contains(c));
    if ok {
        Ok(v.to_string())
    } else {
        Err("a hook name is 1 to 255 letters, digits, `-`, `_` or `/`".to_string())
    }
}

/// An http(s) base URL, kept without its trailing `/` so that paths can be appended.
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

/// A boolean as flags, env and TOML write it; empty is false, as an empty env variable is unset.
fn parse_bool(v: &str) -> Result<bool, String> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".to_string()),
    }
}

/// A level, or full `RUST_LOG` directives, checked now so that a typo is a config error rather
/// than silence.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers;

    /// Settings from a command line, as `load` reads them, without the environment.
    fn settings_of(args: &[&str]) -> Settings {
        let matches = crate::cli::command()
            .try_get_matches_from(std::iter::once("agent-guard").chain(args.iter().copied()))
            .expect("valid flags");
        layers::from_matches(&matches).expect("UTF-8")
    }

    #[test]
    fn stop_signal_and_imds_endpoint_reach_the_lifecycle_settings() {
        let s = settings_of(&["--stop-signal", "INT", "--imds-endpoint", "http://h:1/"]);
        let config = Config::from_settings(&s, vec!["x".into()]).expect("valid");
        assert_eq!(config.stop_signal, config.lifecycle.stop_signal);
        assert_eq!(config.imds_endpoint, "http://h:1");
        assert_eq!(config.lifecycle.imds_endpoint, "http://h:1");
    }

    #[test]
    fn minimum_durations_name_their_floor() {
        for (args, want) in [
            (["--check-interval", "1ms"], "must be at least 10ms"),
            (["--watchdog", "1ms"], "must be at least 10ms"),
            (["--imds-poll", "1ms"], "must be at least 50ms"),
            (["--heartbeat-interval", "1ms"], "must be at least 100ms"),
            (["--busy-stale", "1ms"], "must be at least 1s"),
        ] {
            let err = Config::from_settings(&settings_of(&args), vec![]).expect_err("too short");
            assert!(err.to_string().ends_with(want), "{args:?}: {err}");
            assert!(err.to_string().starts_with(args[0]), "{args:?}: {err}");
        }
    }

    #[test]
    fn hooks_protection_and_emf_need_imds() {
        let s = settings_of(&["--imds", "off", "--metrics-emf", "stdout"]);
        let err = Config::from_settings(&s, vec![]).expect_err("needs IMDS");
        assert_eq!(
            err.to_string(),
            "--metrics-emf: invalid value `stdout` (from flag): it needs the instance id from IMDS, but --imds is off"
        );
        let s = settings_of(&["--imds", "auto", "--metrics-emf", "stdout"]);
        assert!(Config::from_settings(&s, vec![]).is_ok());
    }

    #[test]
    fn ready_on_health_needs_a_child_health_url() {
        let err = Config::from_settings(&settings_of(&["--ready-on", "health"]), vec![])
            .expect_err("no URL");
        assert!(
            err.to_string().contains("needs --child-health URL"),
            "{err}"
        );
        let s = settings_of(&[
            "--ready-on",
            "health",
            "--child-health",
            "http://127.0.0.1:1/h",
        ]);
        let config = Config::from_settings(&s, vec![]).expect("valid");
        assert_eq!(config.checks.len(), 1);
    }

    #[test]
    fn the_first_bad_value_in_help_order_is_reported() {
        let s = settings_of(&["--log-format", "xml", "--stop-timeout", "soon"]);
        let err = Config::from_settings(&s, vec![]).expect_err("two bad values");
        assert!(err.to_string().starts_with("--stop-timeout:"), "{err}");
    }
}
