//! `--imds-endpoint-mode ipv6` (or `AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE=IPv6`) resolves to
//! `http://[fd00:ec2::254]` unless an endpoint is given, `--check-config` shows the result, and
//! in a private network namespace the guard really polls an IMDS listening on that address.

use std::process::{Command, Stdio};

use agent_guard::sim::imds::ImdsSim;

use crate::support::{Guard, SOON, command, scratch, wait_until};

/// `--check-config` with `args` and extra environment: the output's `imds-endpoint` lines.
fn endpoint_lines(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut cmd = command();
    cmd.arg("--check-config").args(args).args(["--", "true"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("agent-guard runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .filter(|l| l.starts_with("imds-endpoint"))
        .map(|l| format!("{}\n", l.split_whitespace().collect::<Vec<_>>().join(" ")))
        .collect()
}

#[test]
fn the_mode_resolves_to_the_documented_endpoint_and_an_explicit_endpoint_wins() {
    let v6 = "imds-endpoint = \"http://[fd00:ec2::254]\" # derived from --imds-endpoint-mode\n";
    assert_eq!(
        endpoint_lines(&["--imds-endpoint-mode", "ipv6"], &[]),
        format!("{v6}imds-endpoint-mode = \"ipv6\" # flag\n")
    );
    assert_eq!(
        endpoint_lines(&[], &[("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6")]),
        format!("{v6}imds-endpoint-mode = \"IPv6\" # env AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE\n")
    );
    assert_eq!(
        endpoint_lines(&[], &[]),
        "imds-endpoint = \"http://169.254.169.254\" # default\nimds-endpoint-mode = \"ipv4\" # default\n"
    );
    assert_eq!(
        endpoint_lines(
            &[
                "--imds-endpoint-mode",
                "ipv6",
                "--imds-endpoint",
                "http://10.1.2.3"
            ],
            &[]
        ),
        "imds-endpoint = \"http://10.1.2.3\" # flag\nimds-endpoint-mode = \"ipv6\" # flag\n"
    );
    assert_eq!(
        endpoint_lines(
            &[],
            &[
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "IPv6"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://[fd00::1]:8080"),
            ]
        ),
        "imds-endpoint = \"http://[fd00::1]:8080\" # env AWS_EC2_METADATA_SERVICE_ENDPOINT\nimds-endpoint-mode = \"IPv6\" # env AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE\n"
    );
    let out = command()
        .args([
            "--check-config",
            "--imds-endpoint-mode",
            "ipv7",
            "--",
            "true",
        ])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(125));
    assert!(String::from_utf8_lossy(&out.stderr).contains(
        "--imds-endpoint-mode: invalid value `ipv7` (from flag): expected `ipv4` or `ipv6`"
    ));
}

/// Set in the copy of this test that runs inside the network namespace.
const INSIDE: &str = "AGENT_GUARD_TEST_INSIDE_NETNS";

#[test]
fn in_a_network_namespace_the_guard_polls_imds_on_fd00_ec2_254() {
    if std::env::var_os(INSIDE).is_some() {
        return poll_the_ipv6_endpoint();
    }
    // Can this machine make a network namespace with the address on its loopback?
    let setup = "ip link set lo up && ip -6 addr add fd00:ec2::254/128 dev lo nodad";
    let probe = Command::new("unshare")
        .args(["-rn", "sh", "-c", setup])
        .output();
    let refused = match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        Err(err) => Some(format!("no unshare: {err}")),
    };
    if let Some(why) = refused {
        let name = "in_a_network_namespace_the_guard_polls_imds_on_fd00_ec2_254";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{name}: no network namespace here, and a skipped test fails in CI: {why}"
        );
        eprintln!("SKIPPED {name}: no network namespace here: {why}");
        return;
    }
    // This very test, run again inside the namespace, where fd00:ec2::254 is local.
    let this = std::env::current_exe().expect("the test binary");
    let out = Command::new("unshare")
        .args(["-rn", "sh", "-c", &format!("{setup} && exec \"$@\""), "sh"])
        .arg(this)
        .args([
            "--exact",
            "imds_ipv6::in_a_network_namespace_the_guard_polls_imds_on_fd00_ec2_254",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(INSIDE, "1")
        .stdin(Stdio::null())
        .output()
        .expect("unshare runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "inside the namespace:\n{text}");
    assert!(text.contains("1 passed"), "the inner test ran:\n{text}");
}

/// Inside the namespace: IMDS on `[fd00:ec2::254]:80`, and a guard told only the mode.
fn poll_the_ipv6_endpoint() {
    let imds = ImdsSim::start_on_ipv6_endpoint().expect("listen on [fd00:ec2::254]:80");
    let dir = scratch();
    let mut guard = Guard::start(
        dir.path(),
        [
            "--imds",
            "on",
            "--imds-endpoint-mode",
            "ipv6",
            "--imds-poll",
            "200ms",
            "--",
            "sleep",
            "600",
        ],
    );
    let path = "/latest/meta-data/autoscaling/target-lifecycle-state";
    wait_until("three rounds over IPv6", SOON, || {
        imds.requests()
            .iter()
            .filter(|r| r.path == path && r.status == 200 && r.valid_token)
            .count()
            >= 3
    });
    let status = guard.status();
    assert_eq!(
        status["imds"]["endpoint"], "http://[fd00:ec2::254]",
        "{status}"
    );
    assert_eq!(
        status["imds"]["instance_id"], "i-0123456789abcdef0",
        "{status}"
    );
    imds.set_lifecycle_state(Some("Terminated"));
    assert_eq!(
        guard.code(),
        143,
        "a notice over IPv6 drains: {}",
        guard.log()
    );
}
