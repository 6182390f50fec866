//! A small fleet at once: 20 real guards, each on its own simulated instance, scaled in together
//! against one simulated group whose account-wide rate limit answers `Throttling`. Every hook is
//! completed once, with CONTINUE, strictly after its own agent's exit.

use std::time::Duration;

use agent_guard::sim::autoscaling::RateLimit;
use agent_guard::sim::fleet::{self, Report, Spec};

use crate::support::{bin, scratch};

#[test]
fn a_small_fleet_under_throttling_completes_every_hook_after_its_own_agent() {
    let dir = scratch();
    let spec = Spec {
        guard: bin().into(),
        dir: dir.path().to_path_buf(),
        guards: 20,
        scale_in: 20,
        // Setup (one DescribeLifecycleHooks each) fits the burst; the scale-in, with every
        // guard completing and looking at once, does not.
        rate: Some(RateLimit {
            rate: 5.0,
            burst: 20.0,
        }),
        deregistration_delay: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(30),
        drain: Duration::from_millis(300),
        poll: Duration::from_millis(500),
        within: Duration::from_secs(120),
    };
    let report = fleet::run(&spec).expect("the fleet runs");
    let bad: Vec<_> = report.scaled.iter().filter(|s| !Report::good(s)).collect();
    assert!(
        bad.is_empty(),
        "not completed once with CONTINUE after its own agent's exit: {bad:#?}"
    );
    assert_eq!(report.scaled.len(), 20);
    for s in &report.scaled {
        assert_eq!(s.guard_exit, Some(0), "the agent's status: {s:?}");
        let wait = s.wait_state.expect("the wait state began");
        assert!(
            s.completions[0].0 >= wait,
            "completed in the wait state: {s:?}"
        );
    }
    assert_eq!(report.timed_out, 0);
    assert!(
        report.throttled > 0,
        "the bucket never throttled: the test would not test throttling"
    );
    let (calls, _) = report.per_scaled();
    assert!(calls < 20.0, "calls per instance: {calls}");
}
