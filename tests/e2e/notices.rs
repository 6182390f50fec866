//! IMDS notices become drains: scale-in, spot (with its hard deadline), rebalance, warm pool;
//! states that mean nothing to drain; and IMDS faults that never harm a healthy agent.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::imds::{Faults, ImdsSim};

use crate::support::{
    Guard, SOON, fixture, http, let_time_pass, read, recorded, scratch, wait_until,
};

const POLL: &str = "200ms";

/// A guard polling `sim` every 200 ms around the recorder fixture, with `extra` options.
fn guard_with(dir: &Path, sim: &ImdsSim, extra: &[&str], agent_args: &[&str]) -> Guard {
    let log = dir.join("signals.log");
    let mut args: Vec<String> = vec![
        "--imds".into(),
        "on".into(),
        "--imds-endpoint".into(),
        sim.url(),
        "--imds-poll".into(),
        POLL.into(),
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

/// Waits until the guard has completed `n` more polling rounds of the lifecycle path.
fn wait_rounds(sim: &ImdsSim, n: usize) {
    let path = "/latest/meta-data/autoscaling/target-lifecycle-state";
    let count = || sim.requests().iter().filter(|r| r.path == path).count();
    let start = count();
    wait_until(&format!("{n} more IMDS rounds"), SOON, || {
        count() >= start + n
    });
}

fn rfc3339_in(d: Duration) -> String {
    humantime::format_rfc3339_seconds(SystemTime::now() + d).to_string()
}

#[test]
fn terminated_stops_the_agent_within_a_poll_and_every_get_has_a_token() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_rounds(&sim, 2);
    let notice = Instant::now();
    sim.set_lifecycle_state(Some("Terminated"));
    let log = dir.path().join("signals.log");
    wait_until("the agent gets its stop signal", SOON, || {
        read(&log).contains("SIGTERM")
    });
    let took = notice.elapsed();
    assert_eq!(guard.code(), 0, "{}", guard.log());
    // One 200 ms poll plus a generous slack for a loaded machine.
    assert!(
        took < Duration::from_secs(5),
        "notice to stop signal took {took:?}"
    );
    assert!(guard.log().contains("reason=scale-in"), "{}", guard.log());
    let requests = sim.requests();
    let gets: Vec<_> = requests.iter().filter(|r| r.method == "GET").collect();
    assert!(gets.len() >= 6, "{gets:?}");
    assert!(
        gets.iter().all(|r| r.valid_token),
        "a GET without a valid token: {gets:?}"
    );
    assert_eq!(sim.tokens_minted(), 1, "one token for the whole run");
}

#[test]
fn a_rejected_token_is_renewed_and_the_agent_keeps_running() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_rounds(&sim, 3);
    assert_eq!(sim.tokens_minted(), 1, "the token is reused across rounds");
    sim.expire_tokens();
    wait_until("a new token", SOON, || sim.tokens_minted() >= 2);
    wait_rounds(&sim, 2);
    let after: Vec<_> = sim.requests().into_iter().rev().take(3).collect();
    assert!(
        after.iter().all(|r| r.status == 200 || r.status == 404),
        "{after:?}"
    );
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "the agent was left alone"
    );
    sim.set_lifecycle_state(Some("Terminated"));
    assert_eq!(
        guard.code(),
        0,
        "a notice still drains after the renewal: {}",
        guard.log()
    );
}

#[test]
fn a_spot_notice_kills_an_agent_that_ignores_sigterm_before_the_deadline_minus_margin() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(
        dir.path(),
        &sim,
        &[
            "--spot-margin",
            "2s",
            "--stop-timeout",
            "10m",
            "--drain-timeout",
            "10m",
        ],
        &["--ignore-term"],
    );
    wait_rounds(&sim, 2);
    // Whole seconds, as EC2 writes them: the notice lands 5 to 6 s from now.
    let notice_time = SystemTime::now() + Duration::from_secs(6);
    let notice_text = humantime::format_rfc3339_seconds(notice_time).to_string();
    let notice_time = humantime::parse_rfc3339(&notice_text).expect("rfc3339");
    sim.post_spot_interruption("terminate", &notice_text);
    assert_eq!(
        guard.code(),
        137,
        "SIGKILL well before the 10-minute timeouts: {}",
        guard.log()
    );
    let killed = SystemTime::now();
    assert!(
        killed < notice_time,
        "SIGKILL must come before the notice time; it came {:?} after",
        killed.duration_since(notice_time).unwrap_or_default()
    );
    assert_eq!(
        recorded(&dir.path().join("signals.log")),
        ["SIGTERM"],
        "TERM came first"
    );
    let log = guard.log();
    assert!(log.contains("reason=spot-interruption"), "{log}");
    assert!(
        log.contains("--stop-timeout cut short by the spot interruption deadline"),
        "{log}"
    );
}

#[test]
fn an_unreadable_spot_notice_still_drains() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_rounds(&sim, 1);
    sim.set_spot_action(Some("<html>not json</html>".to_string()));
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(
        guard.log().contains("body unreadable: assuming 2 minutes"),
        "{}",
        guard.log()
    );
}

#[test]
fn rebalance_is_reported_and_drains_only_with_on_rebalance_drain() {
    let body = format!("{{\"noticeTime\": \"{}\"}}", rfc3339_in(Duration::ZERO));
    // Ignored by default.
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_rounds(&sim, 1);
    sim.set_rebalance(Some(body.clone()));
    wait_until("the recommendation is logged", SOON, || {
        guard
            .log()
            .contains("rebalance recommendation: reported only")
    });
    wait_rounds(&sim, 3);
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "the agent was left alone"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);

    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &["--on-rebalance", "drain"], &[]);
    wait_rounds(&sim, 1);
    sim.set_rebalance(Some(body));
    assert_eq!(guard.code(), 0, "{}", guard.log());
    assert!(guard.log().contains("reason=rebalance"), "{}", guard.log());
}

#[test]
fn standby_detached_and_unknown_states_do_nothing() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    for state in ["Standby", "Detached", "Exploding", "InService"] {
        sim.set_lifecycle_state(Some(state));
        wait_until(&format!("{state} is logged"), SOON, || {
            guard.log().contains(state)
        });
    }
    wait_rounds(&sim, 2);
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "the agent was left alone"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}

#[test]
fn warm_pool_launch_warms_up_and_going_back_drains() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    sim.set_lifecycle_state(Some("Warmed:Stopped"));
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_until("the warm-pool launch is logged", SOON, || {
        guard.log().contains("launched into a warm pool")
    });
    wait_rounds(&sim, 2);
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "no drain at launch"
    );
    sim.set_lifecycle_state(Some("InService"));
    wait_rounds(&sim, 2);
    let agent_up = dir.path().join("signals.log.ready");
    std::fs::remove_file(&agent_up).expect("remove the ready mark");
    sim.set_lifecycle_state(Some("Warmed:Hibernated"));
    // Drained for the warm pool; the guard stays across the return (issue 23 item 6), and with
    // `--in-warm-pool run` starts the agent again at once, as in a fresh start in the pool.
    wait_until("back in the warm pool, the guard stays", SOON, || {
        guard.log().contains("back in the warm pool")
    });
    assert!(guard.log().contains("reason=warm-pool"), "{}", guard.log());
    wait_until("the agent starts again", SOON, || agent_up.exists());
    assert_eq!(guard.log().matches("agent started").count(), 2);
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0, "{}", guard.log());
}

#[test]
fn imds_faults_never_harm_a_healthy_agent_and_the_guard_recovers() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_rounds(&sim, 1);
    let faults = [
        (
            "503 burst",
            Faults {
                unavailable: 20,
                ..Faults::default()
            },
        ),
        (
            "garbage",
            Faults {
                garbage: true,
                ..Faults::default()
            },
        ),
        (
            "slow",
            Faults {
                delay: Duration::from_millis(1500),
                ..Faults::default()
            },
        ),
        (
            "dropped connections",
            Faults {
                drop_connections: true,
                ..Faults::default()
            },
        ),
        (
            "401 loop",
            Faults {
                reject_tokens: true,
                ..Faults::default()
            },
        ),
        (
            "black-holed token",
            Faults {
                blackhole_token: true,
                ..Faults::default()
            },
        ),
    ];
    let answered = |r: &agent_guard::sim::imds::Seen| r.status == 200 || r.status == 404;
    for (name, fault) in faults {
        if name == "black-holed token" {
            sim.expire_tokens(); // the next request needs a token, and its PUT falls in the hole
        }
        let before = sim.requests().len();
        sim.set_faults(fault);
        wait_until(&format!("{name}: the guard keeps trying"), SOON, || {
            sim.requests().len() >= before + 6
        });
        assert!(
            guard.child.try_wait().expect("try_wait").is_none(),
            "{name}: the guard exited"
        );
        sim.set_faults(Faults::default());
        let cleared = sim.requests().len();
        wait_until(&format!("{name}: the guard recovers"), SOON, || {
            let seen = sim.requests();
            seen.len() >= cleared + 3 && seen.iter().rev().take(3).all(answered)
        });
    }
    assert!(
        recorded(&dir.path().join("signals.log")).is_empty(),
        "the agent was never signalled"
    );
    let log = guard.log();
    let warnings = log.matches("IMDS read failed").count();
    let recoveries = log.matches("IMDS answering again").count();
    assert!(warnings >= 1 && recoveries >= 1, "{log}");
    assert!(
        log.lines().count() < 80,
        "failures are logged rate-limited, not one line per poll:\n{log}"
    );
    // And notices still work afterwards.
    sim.set_lifecycle_state(Some("Terminated"));
    assert_eq!(guard.code(), 0, "{log}");
}

#[test]
fn imds_auto_against_a_dead_port_runs_the_agent_with_one_warning() {
    let dir = scratch();
    let port = dead_port();
    let ready = dir.path().join("ready");
    let mut guard = Guard::start(
        dir.path(),
        [
            "--imds".to_string(),
            "auto".to_string(),
            "--imds-endpoint".to_string(),
            format!("http://127.0.0.1:{port}"),
            "--".to_string(),
            "sh".to_string(),
            "-c".to_string(),
            format!("touch {}; exec sleep 600", ready.display()),
        ],
    );
    wait_until("the agent runs", SOON, || ready.exists());
    wait_until("the warning", SOON, || {
        guard.log().contains("notices are off")
    });
    let_time_pass("no second warning comes", Duration::from_millis(500));
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
    let log = guard.log();
    assert_eq!(
        log.matches("WARN").count(),
        1,
        "exactly one warning:\n{log}"
    );
}

#[test]
fn imds_on_against_a_dead_port_exits_125_without_starting_the_agent() {
    let dir = scratch();
    let marker = dir.path().join("started");
    let started = Instant::now();
    let mut guard = Guard::start(
        dir.path(),
        [
            "--imds".to_string(),
            "on".to_string(),
            "--imds-endpoint".to_string(),
            format!("http://127.0.0.1:{}", dead_port()),
            "--".to_string(),
            "touch".to_string(),
            marker.display().to_string(),
        ],
    );
    assert_eq!(guard.code(), 125, "{}", guard.log());
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "it tried for 10 s"
    );
    let log = guard.log();
    assert!(
        log.contains("--imds on: IMDS did not answer within 10s"),
        "{log}"
    );
    assert_eq!(log.lines().count(), 1, "one line: {log}");
    assert!(
        !marker.exists(),
        "the agent must not start without the IMDS it requires"
    );
}

fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The lines of the guard's log that contain `text`.
fn lines_with(guard: &Guard, text: &str) -> usize {
    guard.log().lines().filter(|l| l.contains(text)).count()
}

/// The value of the Prometheus sample `series` on the guard's `/metrics`.
fn metric(guard: &Guard, series: &str) -> Option<f64> {
    let (_, _, body) = http(&guard.health_addr(), "GET", "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn a_notice_whose_time_changes_on_every_read_is_logged_and_counted_once() {
    // AWS's own metadata mock (amazon-ec2-metadata-mock) writes spot `time` and rebalance
    // `noticeTime` afresh on every request; the fake does the same, to the millisecond.
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    sim.set_recompute_times(true);
    let options = ["--health-listen", "127.0.0.1:0", "--stop-timeout", "8s"];
    let mut guard = guard_with(dir.path(), &sim, &options, &["--ignore-term"]);
    wait_rounds(&sim, 1);
    sim.set_rebalance(Some("{}".to_string()));
    wait_until("the recommendation is logged", SOON, || {
        lines_with(&guard, "rebalance recommendation") > 0
    });
    wait_rounds(&sim, 10);
    sim.post_spot_interruption("terminate", "soon");
    wait_until("the agent is told to drain", SOON, || {
        recorded(&dir.path().join("signals.log")).contains(&"SIGTERM".to_string())
    });
    // Eight reads more of both bodies, each different from the last, while the agent (which
    // ignores SIGTERM) is still being stopped.
    let spot_reads = || {
        sim.requests()
            .iter()
            .filter(|r| r.path == "/latest/meta-data/spot/instance-action")
            .count()
    };
    let start = spot_reads();
    wait_until("eight more reads while stopping", SOON, || {
        spot_reads() >= start + 8
    });
    let log = guard.log();
    assert_eq!(
        lines_with(&guard, "rebalance recommendation"),
        1,
        "one line for one recommendation:\n{log}"
    );
    assert_eq!(
        lines_with(&guard, "spot interruption notice"),
        1,
        "one line for one interruption:\n{log}"
    );
    let counted = |kind: &str| {
        metric(
            &guard,
            &format!("agent_guard_notices_total{{kind=\"{kind}\"}}"),
        )
    };
    assert_eq!(counted("rebalance-recommendation"), Some(1.0));
    assert_eq!(counted("spot-interruption"), Some(1.0));
    assert_eq!(
        metric(
            &guard,
            "agent_guard_drains_total{reason=\"spot-interruption\"}"
        ),
        Some(1.0),
        "one drain"
    );
    guard.wait(Duration::from_secs(10));
}

/// The guard's peak resident memory (VmHWM), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    read(format!("/proc/{pid}/status"))
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_huge_imds_body_is_not_read_and_the_guard_stays_small() {
    let dir = scratch();
    let sim = ImdsSim::start().expect("sim");
    let mut guard = guard_with(dir.path(), &sim, &[], &[]);
    wait_rounds(&sim, 3);
    let before = peak_rss_kib(guard.pid());
    // 48 MiB where a list of events is a few hundred bytes.
    sim.set_scheduled_body(Some("[".to_string() + &" ".repeat(48 << 20)));
    wait_rounds(&sim, 5);
    let after = peak_rss_kib(guard.pid());
    assert!(before > 0, "VmHWM is readable");
    assert!(
        after < before + 16 * 1024,
        "the peak grew from {before} KiB to {after} KiB"
    );
    let log = guard.log();
    assert_eq!(
        log.matches("more than 64 KiB").count(),
        1,
        "said once:\n{log}"
    );
    assert!(recorded(&dir.path().join("signals.log")).is_empty());
    assert!(guard.status()["phase"] == "ready");
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 0);
}
