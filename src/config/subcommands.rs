//! `ctl` and `drill`: their parsed flags become an [`Invocation`].

use std::ffi::OsString;

use super::layers::Source;
use super::paths::{default_socket, default_socket_dir, only_socket_in, parse_name};
use super::{ConfigError, Invocation};
use crate::cli::{CtlArgs, DrillArgs, DrillCli};
use crate::fmt::parse_duration;

/// `drill`: its own flags may also stand among the guard's options, before `--`.
pub fn drill_invocation(d: DrillCli) -> Result<Invocation, ConfigError> {
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

/// `ctl`: which guard to talk to, by `--socket`, by `--name`, or the only one there is.
pub fn ctl_invocation(ctl: CtlArgs) -> Result<Invocation, ConfigError> {
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
