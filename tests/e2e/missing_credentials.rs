//! Credentials the SDK's chain cannot find are final at once, said in one short line naming
//! what is missing: no retrying them as if throttled (`--on-maintenance replace` used to fall
//! back to `drain` only after 120 s, logging 1.3 KB of SDK internals).

use std::time::{Duration, Instant, SystemTime};

use agent_guard::sim::autoscaling::AutoScalingSim;
use agent_guard::sim::imds::{ImdsSim, ScheduledEvent};

use crate::support::{Guard, SOON, aws_command, scratch, wait_until};

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";

#[test]
fn no_credentials_make_replace_fall_back_to_drain_at_once_in_one_short_line() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance(GROUP, INSTANCE, "InService");
    let mut cmd = aws_command(&imds, &asg);
    // Nothing in the SDK's chain: no keys, no profile files, no instance profile.
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("HOME", dir.path())
        .args(["--asg-name", GROUP, "--maintenance-margin", "30s"])
        .args(["--", "sleep", "600"]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_until("IMDS answered", SOON, || {
        guard.status()["imds"]["instance_id"] == INSTANCE
    });
    let not_before = SystemTime::now() + Duration::from_secs(120);
    imds.set_scheduled_events(&[ScheduledEvent::active(
        "instance-stop",
        "instance-event-1",
        not_before,
    )]);
    let set_at = Instant::now();
    let fell_back = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("cannot have the group replace the instance"))
            .map(str::to_string)
            .collect()
    };
    wait_until("the fall-back to drain", SOON, || {
        !fell_back(&guard.log()).is_empty()
    });
    assert!(set_at.elapsed() < SOON, "at once, not after retrying");
    let log = guard.log();
    let lines = fell_back(&log);
    assert_eq!(lines.len(), 1, "one line:\n{log}");
    assert!(lines[0].contains("no AWS credentials"), "{}", lines[0]);
    assert!(
        lines[0].len() < 600,
        "a short line, not the SDK's internals ({} bytes): {}",
        lines[0].len(),
        lines[0]
    );
    assert!(
        asg.calls().iter().all(|c| c.action != "SetInstanceHealth"),
        "no request leaves without credentials"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143, "{log}");
}
