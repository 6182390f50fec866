//! Benchmarks against the simulators, run by `bench/notices.sh` and `bench/lifecycle.sh` (they
//! build the release binary first):
//! - `notices`: IMDS notice → stop signal latency, and IMDS requests per minute while idle. Each
//!   sample starts the real guard against the simulated IMDS, waits for polling to begin, posts
//!   `Terminated` at a random moment within a poll interval, and times the agent's SIGTERM
//!   handler on CLOCK_MONOTONIC, which the agent and this program share.
//! - `lifecycle`: the agent's exit → `CompleteLifecycleAction` arriving at the simulated Auto
//!   Scaling API, over 20 scale-ins.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_guard::sim::imds::ImdsSim;

const LIFECYCLE: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn wait_for(what: &str, bound: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < bound, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One notice; returns its latency.
fn sample(poll: Duration, dir: &Path, n: usize) -> Duration {
    let sim = ImdsSim::start().expect("sim");
    let out = dir.join(format!("term-{n}"));
    let mut guard = Command::new(root().join("target/release/agent-guard"))
        .args(["--imds", "on", "--imds-endpoint", &sim.url(), "--imds-poll"])
        .arg(format!("{}ms", poll.as_millis()))
        .arg("--")
        .arg(root().join("bench/term_agent.py"))
        .arg(&out)
        .stderr(Stdio::null())
        .spawn()
        .expect("agent-guard runs");
    let ready = PathBuf::from(format!("{}.ready", out.display()));
    wait_for("the agent", Duration::from_secs(20), || ready.exists());
    let polled = || {
        sim.requests()
            .iter()
            .filter(|r| r.path == LIFECYCLE)
            .count()
    };
    wait_for("polling", Duration::from_secs(20), || polled() >= 1);
    // A random moment within the interval, so the samples cover every phase of the poll.
    let phase = (monotonic_ns() % 1000) as f64 / 1000.0;
    std::thread::sleep(poll.mul_f64(phase));
    let posted = monotonic_ns();
    sim.set_lifecycle_state(Some("Terminated"));
    let status = guard.wait().expect("guard exits");
    assert!(status.success(), "guard exited {status:?}");
    let handled: u64 = std::fs::read_to_string(&out)
        .expect("the agent wrote its time")
        .trim()
        .parse()
        .expect("a number");
    Duration::from_nanos(handled.saturating_sub(posted))
}

fn latency(poll: Duration, samples: usize, parallel: usize) -> (Duration, Duration, Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all: Vec<Duration> = Vec::with_capacity(samples);
    let mut next = 0;
    while next < samples {
        let batch: Vec<usize> = (next..samples.min(next + parallel)).collect();
        next += batch.len();
        let handles: Vec<_> = batch
            .into_iter()
            .map(|n| {
                let dir = dir.path().to_path_buf();
                std::thread::spawn(move || sample(poll, &dir, n))
            })
            .collect();
        all.extend(handles.into_iter().map(|h| h.join().expect("sample")));
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1];
    (pct(0.5), pct(0.99), *all.last().expect("samples"))
}

fn idle_rate(poll: Duration, window: Duration) -> f64 {
    let sim = ImdsSim::start().expect("sim");
    let mut guard = Command::new(root().join("target/release/agent-guard"))
        .args(["--imds", "on", "--imds-endpoint", &sim.url(), "--imds-poll"])
        .arg(format!("{}ms", poll.as_millis()))
        .args(["--", "sleep", "3600"])
        .stderr(Stdio::null())
        .spawn()
        .expect("agent-guard runs");
    // The window opens once the one-off reads (token, instance-id, region) are done.
    wait_for("polling", Duration::from_secs(20), || {
        sim.requests()
            .iter()
            .any(|r| r.path.ends_with("placement/region"))
    });
    std::thread::sleep(Duration::from_millis(500));
    let start = sim.requests().len();
    std::thread::sleep(window);
    let seen = sim.requests().len() - start;
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(guard.id() as i32, libc::SIGTERM) };
    let _ = guard.wait();
    seen as f64 * 60.0 / window.as_secs_f64()
}

/// One scale-in; returns the time from the agent's last act (its SIGTERM handler, just before
/// it exits) to the completion request reaching the server.
fn lifecycle_sample(dir: &Path, n: usize) -> Duration {
    use agent_guard::sim::autoscaling::{AutoScalingSim, Hook, TERMINATING};
    let imds = ImdsSim::start().expect("imds sim");
    let asg = AutoScalingSim::start().expect("asg sim");
    let instance = "i-0123456789abcdef0";
    asg.add_instance("workers", instance, "InService");
    asg.put_hook("workers", Hook::new("drain", TERMINATING));
    let out = dir.join(format!("exit-{n}"));
    let mut guard = Command::new(root().join("target/release/agent-guard"))
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", asg.url())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .args([
            "--imds",
            "on",
            "--imds-endpoint",
            &imds.url(),
            "--imds-poll",
            "100ms",
        ])
        .args([
            "--terminate-hook",
            "drain",
            "--asg-name",
            "workers",
            "--health-listen",
            "off",
        ])
        .arg("--")
        .arg(root().join("bench/term_agent.py"))
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .expect("agent-guard runs");
    let ready = PathBuf::from(format!("{}.ready", out.display()));
    wait_for("the agent", Duration::from_secs(20), || ready.exists());
    // Setup done: the group's hooks were read.
    wait_for("lifecycle setup", Duration::from_secs(20), || {
        asg.calls()
            .iter()
            .any(|c| c.action == "DescribeLifecycleHooks")
    });
    let reference = (Instant::now(), monotonic_ns());
    asg.terminate("workers", instance);
    imds.set_lifecycle_state(Some("Terminated"));
    let status = guard.wait().expect("guard exits");
    assert!(status.success(), "guard exited {status:?}");
    let exited: u64 = std::fs::read_to_string(&out)
        .expect("exit time")
        .trim()
        .parse()
        .expect("ns");
    let complete = asg
        .calls()
        .into_iter()
        .find(|c| c.action == "CompleteLifecycleAction")
        .expect("a completion");
    let complete_ns = reference.1 + (complete.at - reference.0).as_nanos() as u64;
    Duration::from_nanos(complete_ns.saturating_sub(exited))
}

fn lifecycle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut all: Vec<Duration> = (0..20).map(|n| lifecycle_sample(dir.path(), n)).collect();
    all.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    let p99 = all[all.len() - 1];
    println!("| runs | p50 (ms) | p99 (ms) | floor p99 | within floor |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | 100 ms | {} |",
        all.len(),
        ms(all[all.len() / 2]),
        ms(p99),
        if p99 <= Duration::from_millis(100) {
            "yes"
        } else {
            "NO"
        }
    );
}

fn main() {
    if std::env::args().any(|a| a == "lifecycle") {
        return lifecycle();
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1000.0);
    println!(
        "| poll interval | notices | p50 (ms) | p99 (ms) | max (ms) | floor: interval + 50 ms | p99 within floor |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (poll, samples, parallel) in [
        (Duration::from_millis(200), if quick { 50 } else { 200 }, 4),
        (Duration::from_secs(2), if quick { 20 } else { 60 }, 10),
    ] {
        let (p50, p99, max) = latency(poll, samples, parallel);
        let floor = poll + Duration::from_millis(50);
        println!(
            "| {} | {samples} | {} | {} | {} | {} | {} |",
            humantime::format_duration(poll),
            ms(p50),
            ms(p99),
            ms(max),
            ms(floor),
            if p99 <= floor { "yes" } else { "NO" }
        );
    }
    let window = Duration::from_secs(if quick { 20 } else { 60 });
    let ours = idle_rate(Duration::from_secs(2), window);
    // NTH's IMDS mode: one monitor per path, each on time.Tick(2s), so 30 requests a minute per
    // path for the same four paths (spot, rebalance, scheduled events, target lifecycle state;
    // token renewals aside, as here).
    let nth = 4.0 * 30.0;
    println!();
    println!(
        "IMDS requests per minute while idle at the default 2s: agent-guard {ours:.0} (4 paths, one token), \
         AWS Node Termination Handler {nth:.0} for the same paths: {:.2}×.",
        ours / nth
    );
}
