//! What a hostile local user, a broken agent and a broken IMDS cannot do to the guard: take over
//! its socket directory, make it panic with a huge duration or extension, hang it by leaving the
//! agent's process group or stopping the agent, leak the descriptors they send, grow it with
//! notices, flood its log, or make it read a config file forever. One test per way in.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::imds::ImdsSim;
use serde_json::Value;

use crate::support::{
    Guard, SOON, bin, command, fixture, gone, http, process, read, require_root, run, scratch,
    wait_until,
};

const HUGE: &str = "3000000000000000h";

#[test]
fn a_duration_past_the_maximum_is_refused_before_anything_starts() {
    for option in [
        "--stop-timeout",
        "--drain-timeout",
        "--ready-timeout",
        "--ready-on",
        "--watchdog",
        "--spot-margin",
        "--imds-poll",
        "--check-interval",
        "--check-timeout",
        "--idle-release",
        "--heartbeat-interval",
        "--metrics-interval",
    ] {
        let (code, _, err) = run([option, HUGE, "--check-config", "--", "true"]);
        assert_eq!(code, 125, "{option}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("{option}: invalid value `{HUGE}`"))
                && err.contains("at most 365d"),
            "{err}"
        );
    }
    // The drill's own durations are held to the same maximum.
    let (code, _, err) = run(["drill", "scale-in", "--after", HUGE, "--", "true"]);
    assert_eq!(code, 125, "{err}");
    assert!(
        err.contains("--after") && err.contains("at most 365d"),
        "{err}"
    );
    // A real run: refused before the agent starts, so no panic can orphan it.
    let dir = scratch();
    let marker = dir.path().join("started");
    let script = format!("touch {}; exec sleep 600", marker.display());
    let mut guard = Guard::start(
        dir.path(),
        [
            "--ready-on",
            HUGE,
            "--ready-timeout",
            HUGE,
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    assert_eq!(guard.code(), 125, "{}", guard.log());
    assert!(!marker.exists(), "the agent must not start");
}
