//! The guard's log says what happened and nothing that did not: a timeout is "cut short" only
//! when a spot deadline really cut it, and a drain skipped because the spot window leaves no
//! more than `--stop-timeout` says so, and why.

use std::path::Path;
use std::time::{Duration, SystemTime};

use agent_guard::sim::imds::ImdsSim;

use crate::support::{Guard, SOON, fixture, read, recorded, scratch, wait_until};

/// A guard polling `sim` every 200 ms around the recorder fixture.
fn guard_with(dir: &Path, sim: &ImdsSim, extra: &[&str], agent_args: &[&str]) -> Guard {
    let log = dir.join("signals.log");
    let mut args: Vec<String> = vec![
        "--imds".into(),
        "on".into(),
        "--imds-endpoint".into(),
        sim.url(),
        "--imds-poll".into(),
        "200ms".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push("--".into());
    args.push(fixture("recorder.py").display().to_string());
    args.push(log.display().to_string());
    args.extend(agent_args.iter().map(|s| s.to_string()));
    let guard = Guard::start(dir, &args);
    wait_until("the agent is up", SOON, || {
        dir.join("signals.log.ready").exists()
    });
    guard
}

/// A spot notice time `ahead` from now, in whole seconds as EC2 writes it.
fn notice_in(ahead: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + ahead).to_string()
}

#[test]
fn a_spot_notice_that_cuts_nothing_is_not_logged_as_a_cut() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(
        dir.path(),
        &sim,
        &["--stop-timeout", "30s", "--spot-margin", "10s"],
        &["--ignore-term"],
    );
    // Stopping, SIGKILL 30 s away; then a spot notice whose deadline is far later.
    guard.signal(libc::SIGTERM);
    let signals = dir.path().join("signals.log");
    wait_until("the agent's stop signal", SOON, || {
        read(&signals).contains("SIGTERM")
    });
    sim.post_spot_interruption("terminate", &notice_in(Duration::from_secs(110)));
    wait_until("the spot notice handled", SOON, || {
        guard.log().contains("spot interruption notice")
    });
    // A second SIGTERM ends it now.
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 137, "{}", guard.log());
    let log = guard.log();
    assert!(
        !log.contains("cut short"),
        "nothing was cut, so no cut is logged:\n{log}"
    );
    assert!(!has_compound_duration(&log), "durations for people:\n{log}");
}

/// Whether `text` holds a duration as `Duration`'s Debug or humantime write it for a computed
/// value (`29s 589ms 451us`): a number of seconds followed by a number of ms, us or ns.
fn has_compound_duration(text: &str) -> bool {
    let words: Vec<&str> = text.split([' ', '=']).collect();
    let number_with = |w: &str, unit: &str| {
        w.strip_suffix(unit)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    words
        .windows(2)
        .any(|p| number_with(p[0], "s") && ["ms", "us", "ns"].iter().any(|u| number_with(p[1], u)))
}

#[test]
fn a_spot_window_shorter_than_the_stop_timeout_says_the_drain_is_skipped_and_why() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(
        dir.path(),
        &sim,
        &[
            "--stop-timeout",
            "30s",
            "--spot-margin",
            "2s",
            "--drain-signal",
            "USR1",
        ],
        &[],
    );
    // The notice lands 5 to 6 s from now: 3 to 4 s before the margin, less than --stop-timeout.
    sim.post_spot_interruption("terminate", &notice_in(Duration::from_secs(6)));
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert_eq!(
        recorded(&dir.path().join("signals.log")),
        ["SIGTERM"],
        "no drain signal: the stop signal at once"
    );
    let log = guard.log();
    let skipped: Vec<&str> = log.lines().filter(|l| l.contains("no drain:")).collect();
    assert_eq!(skipped.len(), 1, "said once:\n{log}");
    assert!(
        skipped[0].contains("reason=spot-interruption")
            && skipped[0].contains("no more than --stop-timeout (30s)"),
        "{}",
        skipped[0]
    );
    // That cut is real, and said with a duration for people.
    let cut: Vec<&str> = log.lines().filter(|l| l.contains("cut short")).collect();
    assert_eq!(cut.len(), 1, "{log}");
    assert!(cut[0].contains("configured=30s"), "{}", cut[0]);
}
