//! The systemd unit that runs (or will run) the guard, and the two settings that bound a drain
//! under it, read with `systemctl show` from `PATH`.
//!
//! Which unit: the one the doctor itself runs in, when `INVOCATION_ID` says it runs under
//! systemd and that unit is a guard's (an `ExecStartPre=` of it); else `agent-guard@NAME.service`
//! for the `--config` file `/etc/agent-guard/NAME.toml` (how the shipped template reads its
//! config); else for `--name`. The first one systemd has loaded is checked.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cmd::doctor::facts::{SystemdFact, Unit};
use crate::config::{Config, Settings, Source};

/// How long `systemctl show` may take.
const SHOW_WITHIN: Duration = Duration::from_secs(5);

/// The unit's settings, or why there are none.
pub fn unit(config: &Config, settings: &Settings) -> SystemdFact {
    let invoked = std::env::var_os("INVOCATION_ID").is_some();
    let own = if invoked { own_unit() } else { None };
    let tried = candidates(
        own.as_deref(),
        config_file(settings).as_deref(),
        &config.name,
    );
    for name in &tried {
        match show(name) {
            None if invoked => break,
            None => return SystemdFact::Absent,
            Some(text) => {
                if let Some(unit) = parse_show(name, &text) {
                    return SystemdFact::Unit(unit);
                }
            }
        }
    }
    SystemdFact::NoUnit { tried }
}

/// The units to try, in order, without repeats.
fn candidates(own: Option<&str>, config_file: Option<&Path>, name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let own = own.filter(|u| u.starts_with("agent-guard"));
    let from_file = config_file
        .and_then(Path::file_stem)
        .map(|stem| format!("agent-guard@{}.service", stem.to_string_lossy()));
    let from_name = Some(format!("agent-guard@{name}.service"));
    for unit in [own.map(str::to_string), from_file, from_name]
        .into_iter()
        .flatten()
    {
        if !out.contains(&unit) {
            out.push(unit);
        }
    }
    out
}

/// The `--config` file, as the settings remember where values came from.
fn config_file(settings: &Settings) -> Option<std::path::PathBuf> {
    let from_options = settings
        .iter()
        .find_map(|(_, s)| match s.map(|s| &s.source) {
            Some(Source::File { path, .. }) => Some(path.clone()),
            _ => None,
        });
    from_options.or_else(|| match settings.file_command() {
        Some((_, Source::File { path, .. })) => Some(path.clone()),
        _ => None,
    })
}

/// The unit this process runs in, from its cgroup (`0::/system.slice/NAME.service`).
fn own_unit() -> Option<String> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    cgroup
        .lines()
        .filter_map(|line| line.rsplit('/').next())
        .find(|last| last.ends_with(".service"))
        .map(str::to_string)
}

/// `systemctl show UNIT`'s properties; `None` when there is no systemctl or no running systemd.
fn show(unit: &str) -> Option<String> {
    let mut child = Command::new("systemctl")
        .args([
            "show",
            unit,
            "--property=LoadState,TimeoutStopUSec,KillMode",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if started.elapsed() > SHOW_WITHIN => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let mut text = String::new();
    use std::io::Read;
    child.stdout.take()?.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The unit, if `systemctl show` says it is loaded.
fn parse_show(name: &str, text: &str) -> Option<Unit> {
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
    };
    if get("LoadState") != Some("loaded") {
        return None;
    }
    Some(Unit {
        name: name.to_string(),
        timeout_stop: get("TimeoutStopUSec").and_then(timespan),
        kill_mode: get("KillMode").unwrap_or("control-group").to_string(),
    })
}

/// systemd's time span (`3min`, `1min 30s`, `500ms`); `None` for `infinity` or what does not
/// parse.
fn timespan(text: &str) -> Option<Duration> {
    if text == "infinity" {
        return None;
    }
    humantime::parse_duration(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_own_cgroup_the_config_file_or_the_name() {
        assert_eq!(
            candidates(
                Some("agent-guard@w.service"),
                Some(Path::new("/etc/agent-guard/w.toml")),
                "w"
            ),
            ["agent-guard@w.service"]
        );
        assert_eq!(
            candidates(
                Some("cloud-final.service"),
                Some(Path::new("/etc/agent-guard/worker.toml")),
                "python3"
            ),
            ["agent-guard@worker.service", "agent-guard@python3.service"]
        );
        assert_eq!(candidates(None, None, "w"), ["agent-guard@w.service"]);
    }

    #[test]
    fn reads_what_systemctl_show_prints() {
        let unit = parse_show(
            "agent-guard@w.service",
            "LoadState=loaded\nTimeoutStopUSec=1min 30s\nKillMode=mixed\n",
        )
        .expect("loaded");
        assert_eq!(unit.timeout_stop, Some(Duration::from_secs(90)));
        assert_eq!(unit.kill_mode, "mixed");
        let unit = parse_show(
            "u",
            "KillMode=control-group\nLoadState=loaded\nTimeoutStopUSec=infinity",
        )
        .expect("loaded");
        assert_eq!(unit.timeout_stop, None);
        assert_eq!(timespan("3min"), Some(Duration::from_secs(180)));
        assert_eq!(timespan("500ms"), Some(Duration::from_millis(500)));
        assert!(parse_show("u", "LoadState=not-found\nKillMode=mixed").is_none());
    }
}
