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
    BusySettings, CgroupMode, DeregistrationWait, EmfTarget, ForwardTo, HookResult,
    ImdsEndpointMode, ImdsMode, InWarmPool, LifecycleSettings, LoadBalancerSettings, OnCrashLoop,
    OnDrain, OnMaintenance, OnRebalance, TargetGroups,
};
use super::{Config, ConfigError};
use crate::config::settings::ReadyOn;
use crate::config::settings::{CrashLoop, RestartPolicy, RestartSettings};
use crate::fmt::{format_duration, parse_duration};
use crate::logging::LogFormat;
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
        let unchanged = Unchanged::from_settings(settings)?;
        let imds = Imds::from_settings(settings)?;
        let ends = InstanceEnds::from_settings(settings, imds.mode)?;
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
            cgroup: stop.cgroup,
            memory_max: stop.memory_max,
            on_drain: unchanged.on_drain,
            restart: unchanged.restart,
            on_crash_loop: unchanged.on_crash_loop,
            imds: imds.mode,
            imds_endpoint: imds.endpoint,
            imds_poll: imds.poll,
            on_rebalance: imds.on_rebalance,
            spot_margin: imds.spot_margin,
            on_maintenance: ends.on_maintenance,
            maintenance_margin: ends.maintenance_margin,
            in_warm_pool: ends.in_warm_pool,
            load_balancer: load_balancer(settings)?,
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
    cgroup: CgroupMode,
    memory_max: Option<u64>,
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
            cgroup: settings.require(
                "cgroup",
                one_of(
                    &[
                        ("auto", CgroupMode::Auto),
                        ("off", CgroupMode::Off),
                        ("require", CgroupMode::Require),
                    ],
                    "expected `auto`, `off` or `require`",
                ),
            )?,
            memory_max: settings.parse("memory-max", parse_size)?,
        })
    }
}

/// `--memory-max SIZE`: bytes, or a whole number with K, M, G or T (powers of 1024, as systemd's
/// `MemoryMax=` reads them).
fn parse_size(v: &str) -> Result<u64, String> {
    let expected = || "expected bytes, or a number with K, M, G or T, such as 512M".to_string();
    let v = v.trim();
    let (digits, shift) = match v.char_indices().last() {
        Some((i, 'K' | 'k')) => (&v[..i], 10),
        Some((i, 'M' | 'm')) => (&v[..i], 20),
        Some((i, 'G' | 'g')) => (&v[..i], 30),
        Some((i, 'T' | 't')) => (&v[..i], 40),
        _ => (v, 0),
    };
    let n: u64 = digits.parse().map_err(|_| expected())?;
    let bytes = n
        .checked_shl(shift)
        .filter(|b| b >> shift == n)
        .ok_or_else(expected)?;
    if bytes < 4096 {
        return Err("at least one page (4096 bytes)".to_string());
    }
    Ok(bytes)
}

/// What the guard does for agents whose code cannot change: their own drain command, and
/// restarts that end in the group replacing the instance.
struct Unchanged {
    on_drain: Option<OnDrain>,
    restart: RestartSettings,
    on_crash_loop: OnCrashLoop,
}

impl Unchanged {
    fn from_settings(settings: &Settings) -> Result<Unchanged, ConfigError> {
        let on_drain = on_drain(settings)?;
        let policy = settings.require("restart", named::<RestartPolicy>(&RestartPolicy::NAMES))?;
        let delay = settings.require("restart-delay", at_least(Duration::from_millis(10)))?;
        let max_delay = settings.require("restart-max-delay", |v| {
            at_least(delay)(v).map_err(|why| format!("{why} (--restart-delay)"))
        })?;
        Ok(Unchanged {
            on_drain,
            restart: RestartSettings {
                policy,
                delay,
                max_delay,
                crash_loop: settings.require("crash-loop", parse_crash_loop)?,
            },
            on_crash_loop: settings.require(
                "on-crash-loop",
                one_of(
                    &[
                        ("unhealthy", OnCrashLoop::Unhealthy),
                        ("exit", OnCrashLoop::Exit),
                    ],
                    "expected `unhealthy` or `exit`",
                ),
            )?,
        })
    }
}

/// `--on-drain`: a string runs with `sh -c`; an array from the config file runs as it is. An
/// empty string is no command, as an empty environment variable is unset.
fn on_drain(settings: &Settings) -> Result<Option<OnDrain>, ConfigError> {
    let Some(setting) = settings.get("on-drain") else {
        return Ok(None);
    };
    let invalid = |why: &str| ConfigError::Invalid {
        option: "on-drain".to_string(),
        value: setting.values.join(" "),
        origin: setting.source.clone(),
        why: why.to_string(),
    };
    if settings.is_file_array("on-drain") {
        return match setting.values.first() {
            Some(program) if !program.trim().is_empty() => {
                Ok(Some(OnDrain::Exec(setting.values.clone())))
            }
            _ => Err(invalid(
                "expected a program and its arguments, such as [\"/usr/bin/buildkite-agent\", \"stop\"]",
            )),
        };
    }
    match setting.values.as_slice() {
        [one] if one.trim().is_empty() => Ok(None),
        [one] => Ok(Some(OnDrain::Shell(one.clone()))),
        _ => Err(invalid("expected one command")),
    }
}

/// `--crash-loop N/DUR`: at least two starts (one start is no loop) within a non-zero window.
fn parse_crash_loop(v: &str) -> Result<CrashLoop, String> {
    let expected = || "expected N/DUR, such as 5/10m (N starts within DUR)".to_string();
    let (n, within) = v.split_once('/').ok_or_else(expected)?;
    let starts: u32 = n.trim().parse().map_err(|_| expected())?;
    if !(2..=1000).contains(&starts) {
        return Err("N must be 2 to 1000 starts".to_string());
    }
    let within = parse_duration(within)?;
    if within.is_zero() {
        return Err("DUR must be more than 0".to_string());
    }
    Ok(CrashLoop { starts, within })
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
            endpoint: imds_endpoint(settings)?,
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

/// `--imds-endpoint` if one was given (flag, environment or file), else the documented endpoint
/// of `--imds-endpoint-mode`, as the AWS SDKs resolve them.
fn imds_endpoint(settings: &Settings) -> Result<String, ConfigError> {
    let endpoint = settings.require("imds-endpoint", parse_http_url)?;
    let mode = settings.require("imds-endpoint-mode", |v| {
        // The SDKs' variable says `IPv4`/`IPv6`; the flag's words are lower case.
        match v.trim().to_ascii_lowercase().as_str() {
            "ipv4" => Ok(ImdsEndpointMode::Ipv4),
            "ipv6" => Ok(ImdsEndpointMode::Ipv6),
            _ => Err("expected `ipv4` or `ipv6`".to_string()),
        }
    })?;
    let given = !matches!(
        settings.get("imds-endpoint").map(|s| &s.source),
        Some(Source::Default) | None
    );
    Ok(if given {
        endpoint
    } else {
        mode.endpoint().to_string()
    })
}

/// What the events that end or pause an instance do: EC2 scheduled events and warm pools.
struct InstanceEnds {
    on_maintenance: OnMaintenance,
    maintenance_margin: Duration,
    in_warm_pool: InWarmPool,
}

impl InstanceEnds {
    fn from_settings(settings: &Settings, imds: ImdsMode) -> Result<InstanceEnds, ConfigError> {
        let ends = InstanceEnds {
            on_maintenance: settings.require(
                "on-maintenance",
                named::<OnMaintenance>(&OnMaintenance::NAMES),
            )?,
            maintenance_margin: settings.require("maintenance-margin", parse_duration)?,
            in_warm_pool: settings.require(
                "in-warm-pool",
                one_of(
                    &[("run", InWarmPool::Run), ("wait", InWarmPool::Wait)],
                    "expected `run` or `wait`",
                ),
            )?,
        };
        // Waiting needs the target lifecycle state: without IMDS the agent would never start.
        if ends.in_warm_pool == InWarmPool::Wait && imds == ImdsMode::Off {
            return Err(ConfigError::Invalid {
                option: "in-warm-pool".to_string(),
                value: "wait".to_string(),
                origin: settings
                    .get("in-warm-pool")
                    .map_or(Source::Default, |s| s.source.clone()),
                why: "it needs the target lifecycle state from IMDS, but --imds is off".to_string(),
            });
        }
        Ok(ends)
    }
}

/// `--target-groups`, `--deregistration-wait` and `--lb-grace`.
fn load_balancer(settings: &Settings) -> Result<LoadBalancerSettings, ConfigError> {
    Ok(LoadBalancerSettings {
        target_groups: settings.require("target-groups", parse_target_groups)?,
        wait: settings.require("deregistration-wait", |v| match v.trim() {
            "auto" => Ok(DeregistrationWait::Auto),
            other => parse_duration(other)
                .map(DeregistrationWait::AtMost)
                .map_err(|why| format!("expected `auto` or a duration: {why}")),
        })?,
        grace: settings.require("lb-grace", parse_duration)?,
    })
}

/// `auto`, `off`, or a comma-separated list of target group ARNs.
fn parse_target_groups(v: &str) -> Result<TargetGroups, String> {
    match v.trim() {
        "auto" => return Ok(TargetGroups::Auto),
        "off" => return Ok(TargetGroups::Off),
        _ => {}
    }
    let arns: Vec<String> = v
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    if arns.is_empty() {
        return Err("expected `auto`, `off` or target group ARNs separated by commas".to_string());
    }
    match arns
        .iter()
        .find(|a| !(a.starts_with("arn:") && a.contains(":targetgroup/")))
    {
        Some(bad) => Err(format!(
            "`{bad}` is not a target group ARN (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)"
        )),
        None => Ok(TargetGroups::Arns(arns)),
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
            other => parse_duration(other).map(ReadyOn::Warmup).map_err(|why| {
                if why.starts_with("at most") {
                    why
                } else {
                    "expected `start`, `notify`, `health` or a warm-up duration such as 30s"
                        .to_string()
                }
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

/// The guard's own logs: their format and a level or `target=level` directive string.
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

/// A parser for an option whose words are an enum's names (`names::named_enum!`): the table
/// that names the variants everywhere else is the one the option is read by.
fn named<T: std::str::FromStr>(
    names: &'static [&'static str],
) -> impl Fn(&str) -> Result<T, String> {
    move |v| v.parse().map_err(|_| expected(names))
}

/// "expected `a`, `b` or `c`", as the option errors say.
fn expected(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => format!("expected {last}"),
        Some((last, init)) => format!("expected {} or {last}", init.join(", ")),
        None => "expected nothing".to_string(),
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
    crate::logging::directives(v)
        .map(|_| v.trim().to_string())
        .map_err(|e| {
            format!("expected error, warn, info, debug, trace or target=level directives as in RUST_LOG ({e})")
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::layers;

    /// Settings from a command line, as `load` reads them, without the environment.
    fn settings_of(args: &[&str]) -> Settings {
        let mut command = crate::cli::command();
        let matches = command
            .try_get_matches_from_mut(std::iter::once("agent-guard").chain(args.iter().copied()))
            .expect("valid flags");
        layers::from_matches(&command, &matches).expect("UTF-8")
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
    fn the_imds_endpoint_mode_gives_the_default_endpoint_and_an_explicit_one_wins() {
        let endpoint = |args: &[&str]| {
            Config::from_settings(&settings_of(args), vec![])
                .map(|c| (c.imds_endpoint, c.lifecycle.imds_endpoint))
        };
        let v4 = "http://169.254.169.254".to_string();
        let v6 = "http://[fd00:ec2::254]".to_string();
        assert_eq!(endpoint(&[]).expect("valid"), (v4.clone(), v4));
        for mode in ["ipv6", "IPv6"] {
            let got = endpoint(&["--imds-endpoint-mode", mode]).expect("valid");
            assert_eq!(got, (v6.clone(), v6.clone()), "{mode}");
        }
        let explicit = endpoint(&[
            "--imds-endpoint-mode",
            "ipv6",
            "--imds-endpoint",
            "http://127.0.0.1:9",
        ])
        .expect("valid");
        assert_eq!(
            explicit.0, "http://127.0.0.1:9",
            "an explicit endpoint wins"
        );
        let err = endpoint(&["--imds-endpoint-mode", "ipv5"]).expect_err("bad mode");
        assert!(
            err.to_string().starts_with("--imds-endpoint-mode:"),
            "{err}"
        );
    }

    #[test]
    fn maintenance_and_warm_pool_options() {
        let config = Config::from_settings(&settings_of(&[]), vec![]).expect("defaults");
        assert_eq!(config.on_maintenance, OnMaintenance::Replace);
        assert_eq!(config.maintenance_margin, Duration::from_secs(600));
        assert_eq!(config.in_warm_pool, InWarmPool::Run);
        let s = settings_of(&[
            "--on-maintenance",
            "report",
            "--maintenance-margin",
            "3s",
            "--in-warm-pool",
            "wait",
        ]);
        let config = Config::from_settings(&s, vec![]).expect("valid");
        assert_eq!(config.on_maintenance, OnMaintenance::Report);
        assert_eq!(config.maintenance_margin, Duration::from_secs(3));
        assert_eq!(config.in_warm_pool, InWarmPool::Wait);
        for (args, want) in [
            (
                ["--on-maintenance", "reboot"],
                "expected `replace`, `drain` or `report`",
            ),
            (["--in-warm-pool", "sleep"], "expected `run` or `wait`"),
            (["--maintenance-margin", "soon"], "expected a duration"),
        ] {
            let err = Config::from_settings(&settings_of(&args), vec![]).expect_err("bad");
            assert!(err.to_string().contains(want), "{args:?}: {err}");
        }
        let s = settings_of(&["--imds", "off", "--in-warm-pool", "wait"]);
        let err = Config::from_settings(&s, vec![]).expect_err("needs IMDS");
        assert!(err.to_string().ends_with("but --imds is off"), "{err}");
    }

    #[test]
    fn every_duration_option_refuses_a_value_past_the_maximum() {
        let durations: Vec<String> = crate::cli::command()
            .get_arguments()
            .filter(|a| {
                a.get_value_names()
                    .is_some_and(|names| names.iter().any(|n| n == "DUR" || n.ends_with("|DUR")))
            })
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        assert!(durations.len() >= 10, "{durations:?}");
        for long in durations {
            let flag = format!("--{long}");
            let s = settings_of(&[flag.as_str(), "3000000000000000h"]);
            let err = Config::from_settings(&s, vec![]).expect_err(&long);
            assert!(
                err.to_string().starts_with(&flag) && err.to_string().contains("at most 365d"),
                "{long}: {err}"
            );
            let s = settings_of(&[flag.as_str(), "365d"]);
            if let Err(err) = Config::from_settings(&s, vec![]) {
                assert!(!err.to_string().contains("at most"), "{long}: {err}");
            }
        }
    }

    #[test]
    fn the_first_bad_value_in_help_order_is_reported() {
        let s = settings_of(&["--log-format", "xml", "--stop-timeout", "soon"]);
        let err = Config::from_settings(&s, vec![]).expect_err("two bad values");
        assert!(err.to_string().starts_with("--stop-timeout:"), "{err}");
    }

    #[test]
    fn restart_options_and_their_defaults() {
        let config = Config::from_settings(&settings_of(&[]), vec![]).expect("defaults");
        assert_eq!(config.restart, RestartSettings::default());
        assert_eq!(config.on_crash_loop, OnCrashLoop::Unhealthy);
        assert_eq!(config.on_drain, None);
        let s = settings_of(&[
            "--restart",
            "on-failure",
            "--restart-delay",
            "250ms",
            "--restart-max-delay",
            "4s",
            "--crash-loop",
            "3/2m",
            "--on-crash-loop",
            "exit",
        ]);
        let config = Config::from_settings(&s, vec![]).expect("valid");
        assert_eq!(
            config.restart,
            RestartSettings {
                policy: RestartPolicy::OnFailure,
                delay: Duration::from_millis(250),
                max_delay: Duration::from_secs(4),
                crash_loop: CrashLoop {
                    starts: 3,
                    within: Duration::from_secs(120)
                },
            }
        );
        assert_eq!(config.on_crash_loop, OnCrashLoop::Exit);
        for (args, want) in [
            (
                ["--restart", "sometimes"],
                "expected `never`, `on-failure` or `always`",
            ),
            (["--crash-loop", "5"], "expected N/DUR, such as 5/10m"),
            (["--crash-loop", "1/10m"], "N must be 2 to 1000 starts"),
            (["--crash-loop", "5/0s"], "DUR must be more than 0"),
            (
                ["--restart-max-delay", "500ms"],
                "must be at least 1s (--restart-delay)",
            ),
            (
                ["--on-crash-loop", "reboot"],
                "expected `unhealthy` or `exit`",
            ),
        ] {
            let err = Config::from_settings(&settings_of(&args), vec![]).expect_err("invalid");
            assert!(err.to_string().starts_with(args[0]), "{args:?}: {err}");
            assert!(err.to_string().contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn on_drain_is_a_shell_string_or_a_file_array() {
        let s = settings_of(&["--on-drain", "buildkite-agent stop"]);
        let config = Config::from_settings(&s, vec![]).expect("valid");
        assert_eq!(
            config.on_drain,
            Some(OnDrain::Shell("buildkite-agent stop".to_string()))
        );
        let from_file = |text: &str| {
            let mut s = settings_of(&[]);
            layers::apply_file(&mut s, Path::new("x.toml"), text).expect("valid file");
            Config::from_settings(&s, vec![]).map(|c| c.on_drain)
        };
        assert_eq!(
            from_file("on-drain = [\"/opt/my tools/drain\"]\n").expect("valid"),
            Some(OnDrain::Exec(vec!["/opt/my tools/drain".to_string()])),
            "a one-item array is no shell string"
        );
        assert_eq!(
            from_file("on-drain = \"nomad node drain -self\"\n").expect("valid"),
            Some(OnDrain::Shell("nomad node drain -self".to_string()))
        );
        assert!(from_file("on-drain = []\n").is_err());
        assert_eq!(from_file("on-drain = \"\"\n").expect("valid"), None);
    }

    #[test]
    fn load_balancer_options_are_validated() {
        let config = Config::from_settings(&settings_of(&[]), vec![]).expect("valid");
        assert_eq!(config.load_balancer, LoadBalancerSettings::default());
        let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123";
        let list = format!("{arn}, {arn}2");
        let s = settings_of(&[
            "--target-groups",
            &list,
            "--deregistration-wait",
            "0",
            "--lb-grace",
            "15s",
        ]);
        let config = Config::from_settings(&s, vec![]).expect("valid");
        assert_eq!(
            config.load_balancer,
            LoadBalancerSettings {
                target_groups: TargetGroups::Arns(vec![arn.to_string(), format!("{arn}2")]),
                wait: DeregistrationWait::AtMost(Duration::ZERO),
                grace: Duration::from_secs(15),
            }
        );
        let off = settings_of(&["--target-groups", "off"]);
        let config = Config::from_settings(&off, vec![]).expect("valid");
        assert_eq!(config.load_balancer.target_groups, TargetGroups::Off);
        for (args, want) in [
            (["--target-groups", "web"], "is not a target group ARN"),
            (
                ["--target-groups", ","],
                "expected `auto`, `off` or target group ARNs",
            ),
            (
                ["--deregistration-wait", "soon"],
                "expected `auto` or a duration",
            ),
            (["--lb-grace", "soon"], "expected a duration"),
        ] {
            let err = Config::from_settings(&settings_of(&args), vec![]).expect_err("bad");
            assert!(err.to_string().contains(want), "{args:?}: {err}");
        }
    }
}
