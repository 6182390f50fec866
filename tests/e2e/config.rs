//! Options from flags, environment and the config file, with precedence and provenance.

use std::fs;

use crate::support::{command, run, scratch};

#[test]
fn precedence_is_flag_then_env_then_file_then_default() {
    let dir = scratch();
    let file = dir.path().join("guard.toml");
    fs::write(
        &file,
        "stop-timeout = \"11s\"\ndrain_timeout = 12\nstop-signal = \"HUP\"\nforward-to = \"child\"\n",
    )
    .expect("write config");
    let out = command()
        .args(["--check-config", "--config"])
        .arg(&file)
        .args(["--stop-signal", "INT", "--", "sleep", "1"])
        .env("AGENT_GUARD_DRAIN_TIMEOUT", "22s")
        .env("AGENT_GUARD_FORWARD_TO", "group")
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{key} = ")))
            .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
            .to_string()
    };
    let path = file.display();
    assert!(line("stop-signal").contains("\"INT\"") && line("stop-signal").ends_with("# flag"));
    assert!(
        line("drain-timeout").contains("\"22s\"")
            && line("drain-timeout").ends_with("# env AGENT_GUARD_DRAIN_TIMEOUT")
    );
    assert!(
        line("forward-to").contains("\"group\""),
        "env beats file: {}",
        line("forward-to")
    );
    assert!(
        line("stop-timeout").contains("\"11s\"")
            && line("stop-timeout").ends_with(&format!("# file {path}:1"))
    );
    assert!(line("log-format").contains("\"text\"") && line("log-format").ends_with("# default"));
    assert!(
        line("name").contains("\"sleep\"") && line("name").ends_with("# derived from the command")
    );
}

#[test]
fn the_config_file_steers_a_real_run() {
    let dir = scratch();
    let file = dir.path().join("guard.toml");
    fs::write(&file, "stop-timeout = \"300ms\"\n").expect("write config");
    let started = std::time::Instant::now();
    let (code, _, stderr) = run([
        "--config".as_ref(),
        file.as_os_str(),
        "--".as_ref(),
        "sh".as_ref(),
        "-c".as_ref(),
        format!(
            "{}; exit 4",
            crate::stopping::ignoring_grandchild(&dir.path().join("gc.pid"))
        )
        .as_ref(),
    ]);
    assert_eq!(code, 4, "{stderr}");
    assert!(
        stderr.contains("sent SIGKILL"),
        "the leftover was killed after 300ms: {stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn config_file_errors_name_the_file_line_and_key() {
    let dir = scratch();
    let file = dir.path().join("bad.toml");
    fs::write(
        &file,
        "# a comment\nstop-timeout = \"1s\"\nstop_timout = \"5s\"\n",
    )
    .expect("write");
    let (code, _, stderr) = run([
        "--config".as_ref(),
        file.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(code, 125);
    assert_eq!(
        stderr.trim(),
        format!(
            "agent-guard: config file {}:3: unknown key `stop_timout` (keys are the long option names, see --help)",
            file.display()
        )
    );

    fs::write(&file, "drain-timeout = \"forever\"\n").expect("write");
    let (code, _, stderr) = run([
        "--config".as_ref(),
        file.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(code, 125);
    assert!(
        stderr.contains(&format!(
            "--drain-timeout: invalid value `forever` (from file {}:1)",
            file.display()
        )),
        "{stderr}"
    );

    fs::write(&file, "stop-timeout = [\n").expect("write");
    let (code, _, stderr) = run([
        "--config".as_ref(),
        file.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(code, 125);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("config file {}:", file.display())),
        "{stderr}"
    );

    let (code, _, stderr) = run(["--config", "/no/such.toml", "--", "true"]);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("cannot read config file /no/such.toml"),
        "{stderr}"
    );
}

#[test]
fn env_values_are_checked_like_flags() {
    let out = command()
        .args(["--", "true"])
        .env("AGENT_GUARD_STOP_SIGNAL", "SIGNOPE")
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(125));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("--stop-signal: invalid value `SIGNOPE` (from env AGENT_GUARD_STOP_SIGNAL)"),
        "{stderr}"
    );
}

#[test]
fn check_config_validates_the_command() {
    let (code, _, stderr) = run(["--check-config", "--", "no-such-agent-in-path"]);
    assert_eq!(code, 125);
    assert!(stderr.contains("not found in PATH"), "{stderr}");
    let (code, stdout, _) = run(["--check-config"]);
    assert_eq!(code, 0, "a config without a command can still be checked");
    assert!(stdout.contains("stop-timeout = \"30s\""), "{stdout}");
}

#[test]
fn the_config_file_can_hold_the_command() {
    let dir = scratch();
    let file = dir.path().join("agent.toml");
    fs::write(&file, "command = [\"sh\", \"-c\", \"exit 6\"]\n").expect("write");
    let (code, _, stderr) = run(["--config".as_ref(), file.as_os_str()]);
    assert_eq!(code, 6, "the file's command ran: {stderr}");
    // The command after `--` wins.
    let (code, _, _) = run([
        "--config".as_ref(),
        file.as_os_str(),
        "--".as_ref(),
        "true".as_ref(),
    ]);
    assert_eq!(code, 0);
    fs::write(&file, "command = \"sh -c 'exit 6'\"\n").expect("write");
    let (code, _, stderr) = run(["--config".as_ref(), file.as_os_str()]);
    assert_eq!(code, 125);
    assert!(
        stderr.contains("`command` must be a non-empty array of strings"),
        "{stderr}"
    );
}
