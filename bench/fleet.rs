//! `bench/fleet`: a fleet scaled in at once. N real guards (default 200), each on its own
//! simulated instance, against one simulated group whose account-wide token bucket answers
//! `Throttling`; half of them are scaled in together, behind a deregistration delay. Prints, as
//! Markdown: hooks completed (each once, with CONTINUE, after its own agent's exit), API calls
//! per instance, throttled calls, and the time from each agent's exit (and from its wait state)
//! to its completion. Loopback only; stops by itself within `--within`.
//!
//! usage: bench/fleet [--guards N] [--scale-in M] [--rate R] [--burst B]
//!                    [--deregistration-delay DUR] [--drain DUR] [--heartbeat-timeout DUR]
//!                    [--poll DUR] [--within DUR] [--trace]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agent_guard::sim::autoscaling::RateLimit;
use agent_guard::sim::fleet::{self, Report, Spec, quantile};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn duration(args: &[String], name: &str, default: &str) -> Duration {
    let text = arg(args, name).unwrap_or_else(|| default.to_string());
    humantime::parse_duration(&text)
        .or_else(|_| {
            text.parse::<f64>()
                .map(Duration::from_secs_f64)
                .map_err(|_| ())
        })
        .unwrap_or_else(|_| panic!("{name}: not a duration: {text}"))
}

fn number<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    match arg(args, name) {
        Some(text) => text
            .parse()
            .unwrap_or_else(|_| panic!("{name}: not a number: {text}")),
        None => default,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let guards: usize = number(&args, "--guards", 200);
    let rate = RateLimit {
        rate: number(&args, "--rate", 5.0),
        burst: number(&args, "--burst", 20.0),
    };
    let dir = std::env::temp_dir().join(format!("agent-guard-fleet-{}", std::process::id()));
    let spec = Spec {
        guard: root.join("target/release/agent-guard"),
        dir: dir.clone(),
        guards,
        scale_in: number(&args, "--scale-in", guards / 2),
        rate: Some(rate),
        deregistration_delay: duration(&args, "--deregistration-delay", "10s"),
        heartbeat_timeout: duration(&args, "--heartbeat-timeout", "60s"),
        drain: duration(&args, "--drain", "500ms"),
        poll: duration(&args, "--poll", "2s"),
        within: duration(&args, "--within", "15m"),
    };
    eprintln!(
        "bench/fleet: {} guards, {} scaled in, {}/s burst {}, deregistration delay {:?}",
        spec.guards, spec.scale_in, rate.rate, rate.burst, spec.deregistration_delay
    );
    let result = fleet::run(&spec);
    let _ = std::fs::remove_dir_all(&dir);
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            eprintln!("bench/fleet: {err}");
            return ExitCode::from(2);
        }
    };
    print(&spec, rate, &report);
    for s in report.scaled.iter().filter(|s| !Report::good(s)) {
        println!("\nNot completed once after its own agent's exit: {s:?}");
        for call in report.trace.get(&s.instance).into_iter().flatten() {
            println!("    {call}");
        }
    }
    if args.iter().any(|a| a == "--trace") {
        // One scaled-in instance's calls, to see where they go.
        if let Some((id, calls)) = report
            .scaled
            .first()
            .and_then(|s| report.trace.get_key_value(&s.instance))
        {
            println!("\nCalls of {id}, from the scale-in:");
            for call in calls {
                println!("    {call}");
            }
        }
    }
    let all_good = report.scaled.iter().all(Report::good) && report.timed_out == 0;
    if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print(spec: &Spec, rate: RateLimit, report: &Report) {
    let good = report.scaled.iter().filter(|s| Report::good(s)).count();
    let abandon = report
        .scaled
        .iter()
        .flat_map(|s| &s.completions)
        .filter(|(_, r)| r == "ABANDON")
        .count();
    let (calls, throttled) = report.per_scaled();
    let fleet_calls = report.calls.values().map(|c| c.0).sum::<usize>() as f64 / spec.guards as f64;
    let exit = report.exit_to_completion();
    let wait = report.wait_to_completion();
    println!(
        "| guards | scaled in | rate / burst | deregistration delay | completed after own exit | ABANDON | calls per scaled-in instance: answered + throttled | calls per guard, whole fleet | throttled calls | exit→completion p50 / p99 / max (s) | wait state→completion p50 / p99 / max (s) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {}/s / {} | {} | {good}/{} ({:.0} %) | {abandon} | {:.2} + {throttled:.2} = {calls:.2} | {fleet_calls:.2} | {} | {} / {} / {} | {} / {} / {} |",
        spec.guards,
        spec.scale_in,
        rate.rate,
        rate.burst,
        humantime::format_duration(spec.deregistration_delay),
        report.scaled.len(),
        100.0 * good as f64 / report.scaled.len().max(1) as f64,
        calls - throttled,
        report.throttled,
        secs(quantile(&exit, 0.5)),
        secs(quantile(&exit, 0.99)),
        secs(exit.last().copied()),
        secs(quantile(&wait, 0.5)),
        secs(quantile(&wait, 0.99)),
        secs(wait.last().copied()),
    );
    println!();
    println!(
        "Setup (every guard's group and hook timeout read, through the same bucket): {:.1} s; scale-in to the last guard's exit: {:.1} s; every call: {}; hooks ended by timeout: {}.",
        report.setup.as_secs_f64(),
        report.scale_in.as_secs_f64(),
        report.total_calls,
        report.timed_out
    );
}
