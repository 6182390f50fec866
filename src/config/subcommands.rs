//! `ctl`, `drill` and `doctor`: their parsed flags become an [`Invocation`]. The drill's (and the
//! doctor's) own flags and the guard's options they take were all read by one clap parse; here
//! they are only sorted out.

use std::ffi::OsString;

use clap::ArgMatches;
use clap::parser::ValueSource;

use super::layers::Source;
use super::paths::{default_socket, default_socket_dir, only_socket_in, parse_name};
use super::{ConfigError, Invocation};
use crate::cli::{CtlArgs, DoctorCli, DrillArgs, DrillCli};

/// `drill`, from its parsed flags and its subcommand's matches (which also hold the guard's
/// options, see [`crate::cli::command`]).
pub fn drill_invocation(drill: DrillCli, matches: &ArgMatches) -> Result<Invocation, ConfigError> {
    if drill.command.is_empty() {
        return Err(ConfigError::Usage(
            "drill: put the agent's command after `--`, as in agent-guard drill scale-in [OPTIONS] -- COMMAND".to_string(),
        ));
    }
    let mut guard_args = guard_options_given(matches);
    guard_args.push(OsString::from("--"));
    guard_args.extend(drill.command);
    Ok(Invocation::Drill(DrillArgs {
        event: drill.event,
        after: drill.after,
        deadline: drill.deadline,
        heartbeat_timeout: drill.heartbeat_timeout,
        deregistration_delay: drill.deregistration_delay,
        json: drill.json,
        verbose: drill.verbose,
        guard_args,
    }))
}

/// `doctor`: the guard's options as typed (before the subcommand or after it), read by the
/// very path `--check-config` takes, so flags, environment, `--config` file and defaults all
/// count exactly as in a real run.
pub fn doctor_invocation(
    doctor: DoctorCli,
    top: &ArgMatches,
    matches: &ArgMatches,
) -> Result<Invocation, ConfigError> {
    let mut argv = vec![
        OsString::from("agent-guard"),
        OsString::from("--check-config"),
    ];
    let given = guard_options_given(top)
        .into_iter()
        .chain(guard_options_given(matches));
    // `--check-config` is already there; a second one would be refused as a repeat.
    argv.extend(given.filter(|word| word != "--check-config"));
    if !doctor.command.is_empty() {
        argv.push(OsString::from("--"));
        argv.extend(doctor.command);
    }
    match super::load(argv)? {
        Invocation::CheckConfig(config, settings) => Ok(Invocation::Doctor {
            config,
            settings,
            json: doctor.json,
        }),
        _ => Err(ConfigError::Usage(
            "doctor: the options did not read as a configuration (see --help)".to_string(),
        )),
    }
}

/// The guard's options typed on the drill's command line, in the order typed: `--long=value` for
/// each value (the `=` keeps a value that starts with `-` a value), `--flag` for a switch. Only
/// what was typed: the guard run by the drill reads its environment and defaults itself.
fn guard_options_given(matches: &ArgMatches) -> Vec<OsString> {
    let cli = crate::cli::command();
    let mut given: Vec<(usize, OsString)> = Vec::new();
    for arg in crate::cli::guard_options(&cli) {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else {
            continue;
        };
        if matches.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        if !arg.get_action().takes_values() {
            // A switch appears once; where it stood orders it among the rest.
            let index = matches.index_of(id).unwrap_or(usize::MAX);
            given.push((index, OsString::from(format!("--{long}"))));
            continue;
        }
        let indices = matches.indices_of(id).into_iter().flatten();
        let values = matches.get_raw(id).into_iter().flatten();
        for (index, value) in indices.zip(values) {
            let mut word = OsString::from(format!("--{long}="));
            word.push(value);
            given.push((index, word));
        }
    }
    // clap's indices grow along the command line, whatever the form of each option.
    given.sort_by_key(|(index, _)| *index);
    given.into_iter().map(|(_, word)| word).collect()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::cli::DrillEvent;
    use crate::config::{ConfigError, Invocation, load};

    fn drill(args: &[&str]) -> Result<crate::cli::DrillArgs, ConfigError> {
        let argv = ["agent-guard", "drill"].iter().chain(args).copied();
        match load(argv)? {
            Invocation::Drill(d) => Ok(d),
            other => panic!("not a drill: {other:?}"),
        }
    }

    fn guard_args(d: &crate::cli::DrillArgs) -> Vec<String> {
        d.guard_args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn drill_flags_before_and_after_guard_options() {
        let d = drill(&[
            "spot",
            "--json",
            "--stop-timeout",
            "1s",
            "--after",
            "2s",
            "--check",
            "a=tcp://h:1",
            "--verbose",
            "--check=b=tcp://h:2",
            "--subreaper",
            "--deadline",
            "30s",
            "--",
            "sh",
            "-c",
            "exit 0",
        ])
        .expect("valid");
        assert_eq!(d.event, DrillEvent::Spot);
        assert_eq!(d.after, Duration::from_secs(2));
        assert_eq!(d.deadline, Duration::from_secs(30));
        assert_eq!(d.heartbeat_timeout, Duration::from_secs(300), "default");
        assert!(d.json && d.verbose);
        assert_eq!(
            guard_args(&d),
            [
                "--stop-timeout=1s",
                "--check=a=tcp://h:1",
                "--check=b=tcp://h:2",
                "--subreaper",
                "--",
                "sh",
                "-c",
                "exit 0"
            ]
        );
    }

    #[test]
    fn drill_flags_take_the_equals_form_anywhere() {
        let d = drill(&[
            "scale-in",
            "--after=3s",
            "--name=w",
            "--heartbeat-timeout=9s",
            "--",
            "true",
        ])
        .expect("valid");
        assert_eq!(d.after, Duration::from_secs(3));
        assert_eq!(d.heartbeat_timeout, Duration::from_secs(9));
        assert_eq!(guard_args(&d), ["--name=w", "--", "true"]);
    }

    #[test]
    fn what_follows_the_command_is_the_commands() {
        let d = drill(&["sigterm", "--", "prog", "--after", "5", "--", "x"]).expect("valid");
        assert_eq!(d.after, Duration::from_secs(1), "default");
        assert_eq!(guard_args(&d), ["--", "prog", "--after", "5", "--", "x"]);
        // Without `--`, the first word that is no option starts the command, as before.
        let d = drill(&["sigterm", "prog", "-x"]).expect("valid");
        assert_eq!(guard_args(&d), ["--", "prog", "-x"]);
        // A negative number is a value, as for the guard.
        let d = drill(&["sigterm", "--drain-timeout", "-3", "--", "p"]).expect("valid");
        assert_eq!(guard_args(&d), ["--drain-timeout=-3", "--", "p"]);
    }

    #[test]
    fn a_drill_without_a_command_is_refused() {
        for args in [
            &["scale-in", "--stop-timeout", "1s"][..],
            &["scale-in", "--after", "1s"],
            &["scale-in", "--stop-timeout", "1s", "--"],
            &["scale-in"],
        ] {
            let err = drill(args).expect_err("no command");
            assert_eq!(
                err.to_string(),
                "drill: put the agent's command after `--`, as in agent-guard drill scale-in [OPTIONS] -- COMMAND",
                "{args:?}"
            );
        }
    }

    #[test]
    fn a_bad_drill_duration_is_one_line_naming_the_flag() {
        for (args, option) in [
            (&["scale-in", "--after", "soon", "--", "x"][..], "after"),
            (
                &["scale-in", "--name", "w", "--deadline=soon", "--", "x"],
                "deadline",
            ),
            (
                &["spot", "--heartbeat-timeout", "soon", "--", "x"],
                "heartbeat-timeout",
            ),
        ] {
            let err = drill(args).expect_err("bad duration").to_string();
            assert!(
                err.starts_with(&format!(
                    "--{option}: invalid value `soon` (from flag): expected a duration"
                )),
                "{args:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }

    #[test]
    fn unknown_guard_options_are_refused_by_clap() {
        let err = drill(&["scale-in", "--bogus", "--", "x"]).expect_err("unknown");
        assert_eq!(err.to_string(), "unknown option `--bogus` (see --help)");
        let err = drill(&["scale-in", "--stop-timeout", "--", "x"]).expect_err("no value");
        assert!(err.to_string().contains("--stop-timeout"), "{err}");
    }

    #[test]
    fn doctor_reads_the_options_as_a_real_run_does() {
        let doctor = |argv: &[&str]| match load(argv.iter().copied()) {
            Ok(Invocation::Doctor {
                config,
                settings,
                json,
            }) => (config, settings, json),
            other => panic!("not a doctor: {other:?}"),
        };
        // Options before the subcommand and after it, `=` forms, the command after `--`.
        let (config, settings, json) = doctor(&[
            "agent-guard",
            "--stop-timeout",
            "7s",
            "doctor",
            "--json",
            "--terminate-hook=drain",
            "--check-config",
            "--",
            "prog",
            "--json",
        ]);
        assert!(json);
        assert_eq!(config.stop_timeout, Duration::from_secs(7));
        assert_eq!(config.lifecycle.terminate_hook.as_deref(), Some("drain"));
        assert_eq!(config.command, ["prog", "--json"]);
        assert_eq!(config.name, "prog");
        // What was not typed comes from its defaults, with its source, as in --check-config.
        assert_eq!(config.drain_timeout, Duration::from_secs(60));
        assert_eq!(
            settings.get("drain-timeout").map(|s| s.source.clone()),
            Some(crate::config::Source::Default)
        );
        // The command is optional, as for --check-config.
        let (config, _, json) = doctor(&["agent-guard", "doctor", "--name", "w"]);
        assert!(!json && config.command.is_empty());
        // A bad value is the guard's own one-line error.
        let err = load(["agent-guard", "doctor", "--stop-timeout", "soon"]).expect_err("bad");
        assert!(
            err.to_string()
                .starts_with("--stop-timeout: invalid value `soon` (from flag)"),
            "{err}"
        );
    }
}
