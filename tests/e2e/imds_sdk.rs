//! The IMDS the guard reads is the one the AWS SDK reads: with no credentials in the
//! environment, the instance profile's credentials come from `--imds-endpoint`, and the calls to
//! the Auto Scaling API are signed with them.

use agent_guard::sim::autoscaling::{AutoScalingSim, Hook, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

use crate::support::{Guard, SOON, command, scratch, wait_until};

const ROLE_KEY: &str = "ASIASIMROLE00000001";

#[test]
fn instance_profile_credentials_come_from_the_imds_endpoint() {
    let dir = scratch();
    let imds = ImdsSim::start().expect("imds sim");
    imds.set_role_credentials("agent-role", ROLE_KEY, "sim-secret");
    let asg = AutoScalingSim::start().expect("asg sim");
    asg.add_instance("workers", "i-0123456789abcdef0", "InService");
    asg.put_hook("workers", Hook::new("drain-hook", TERMINATING));
    // No AWS_* credentials or region (command() removes them), and no profile files of the
    // host's: only the instance profile can sign, and IMDS gives the region.
    let mut cmd = command();
    cmd.env("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url())
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-credentials"),
        )
        .args(["--imds", "on", "--imds-endpoint", &imds.url()])
        .args(["--imds-poll", "200ms", "--asg-name", "workers"])
        .args(["--terminate-hook", "drain-hook", "--", "sleep", "300"]);
    let mut guard = Guard::spawn(dir.path(), cmd);
    wait_until("a call signed with the role's key", SOON, || {
        asg.calls()
            .iter()
            .any(|c| c.caller.as_deref() == Some(ROLE_KEY))
    });
    let unsigned: Vec<_> = asg
        .calls()
        .into_iter()
        .filter(|c| c.caller.as_deref() != Some(ROLE_KEY))
        .collect();
    assert!(
        unsigned.is_empty(),
        "every call signed by the role: {unsigned:?}"
    );
    let reads = imds.requests();
    assert!(
        reads
            .iter()
            .any(|r| r.path == "/latest/meta-data/iam/security-credentials/agent-role"),
        "the credentials were read from the sim: {reads:?}"
    );
    guard.signal(libc::SIGTERM);
    assert_eq!(guard.code(), 143);
}
