//! The exit status contract: the agent's code, 128+N for signal N, 125/126/127 for the guard's own.

use crate::support::{run, scratch};

#[test]
fn agent_exit_codes_pass_through() {
    for code in [0, 1, 42, 255] {
        let (got, _, stderr) = run(["--", "sh", "-c", &format!("exit {code}")]);
        assert_eq!(got, code, "exit {code}; log:\n{stderr}");
    }
}

#[test]
fn death_by_signal_is_128_plus_n() {
    for (sig, want) in [("TERM", 143), ("USR1", 138), ("KILL", 137)] {
        let (got, _, stderr) = run(["--", "sh", "-c", &format!("kill -{sig} $$")]);
        assert_eq!(got, want, "killed by {sig}; log:\n{stderr}");
        assert!(stderr.contains(&format!("killed by SIG{sig}")), "{stderr}");
    }
}

#[test]
fn missing_command_is_127() {
    let (code, _, stderr) = run(["--", "/no/such/agent"]);
    assert_eq!(code, 127);
    assert!(
        stderr.contains("cannot run `/no/such/agent`: no such file"),
        "{stderr}"
    );
    let (code, _, stderr) = run(["--", "no-such-agent-in-path"]);
    assert_eq!(code, 127);
    assert!(
        stderr.contains("`no-such-agent-in-path`: not found in PATH"),
        "{stderr}"
    );
}

#[test]
fn non_executable_command_is_126() {
    let dir = scratch();
    let script = dir.path().join("agent.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").expect("write");
    let (code, _, stderr) = run([std::ffi::OsStr::new("--"), script.as_os_str()]);
    assert_eq!(code, 126, "{stderr}");
    assert!(stderr.contains("cannot execute"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

/// An executable script without a `#!` line runs with /bin/sh, as a shell and execvp run it,
/// also where the agent is started with posix_spawn (no terminal here), which by itself refuses
/// such a file with ENOEXEC.
#[test]
fn a_script_without_a_shebang_runs_with_sh() {
    let dir = scratch();
    let script = dir.path().join("agent");
    let out = dir.path().join("ran");
    std::fs::write(
        &script,
        format!("echo \"$0 $1\" > {}\nexit 7\n", out.display()),
    )
    .expect("write");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let (code, _, stderr) = run([
        std::ffi::OsStr::new("--"),
        script.as_os_str(),
        std::ffi::OsStr::new("arg1"),
    ]);
    assert_eq!(code, 7, "the script's own exit code; stderr:\n{stderr}");
    assert_eq!(
        std::fs::read_to_string(&out)
            .expect("the script ran")
            .trim(),
        format!("{} arg1", script.display()),
        "run by sh with its arguments"
    );
}

#[test]
fn bad_options_are_125_with_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["--stop-timeout", "5x", "--", "true"],
            "--stop-timeout: invalid value `5x` (from flag)",
        ),
        (
            &["--drain-timeout", "-3", "--", "true"],
            "--drain-timeout: invalid value `-3`",
        ),
        (
            &["--stop-signal", "NOPE", "--", "true"],
            "--stop-signal: invalid value `NOPE`",
        ),
        (
            &["--forward-to", "everyone", "--", "true"],
            "expected `group` or `child`",
        ),
        (
            &["--log-format", "xml", "--", "true"],
            "--log-format: invalid value `xml`",
        ),
        (&["--bogus", "--", "true"], "unknown option `--bogus`"),
        (&["sleep", "1"], "put the agent's command after `--`"),
        (&[], "no command given"),
    ];
    for (args, want) in cases {
        let (code, stdout, stderr) = run(*args);
        assert_eq!(code, 125, "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?} printed on stdout: {stdout}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args:?}: one line, got:\n{stderr}"
        );
        assert!(stderr.starts_with("agent-guard: "), "{stderr}");
        assert!(
            stderr.contains(want),
            "{args:?}: want `{want}` in: {stderr}"
        );
    }
}

#[test]
fn help_and_version_exit_zero() {
    let (code, stdout, _) = run(["--help"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("--stop-timeout <DUR>"), "{stdout}");
    assert!(stdout.contains("AGENT_GUARD_STOP_TIMEOUT"), "{stdout}");
    let (code, stdout, _) = run(["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("agent-guard "), "{stdout}");
}
