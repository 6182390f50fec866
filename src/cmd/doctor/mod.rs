//! `agent-guard doctor`: proves on the instance that the deployment fits the options — the
//! group, its hooks and their timeouts, the permissions, IMDS from where the guard runs, the
//! systemd unit, the health port — before the first scale-in does it the hard way.
//!
//! It reads the options exactly as a real run does (the `--check-config` path), looks once
//! ([`gather`], each look bounded and none changing anything), judges without I/O ([`judge`],
//! a table of checks) and prints ([`render`]). Exit status: 0 when nothing FAILs, 1 when
//! something does, 125 when it could not run at all.

mod facts;
mod gather;
mod judge;
mod render;

use crate::config::{Config, Settings};
use facts::{AwsFact, Facts};
use render::{Report, Subject};

/// It could not run at all.
pub const CANNOT_RUN: u8 = 125;

/// Checks the instance against `config`; prints the answer; returns the exit status.
// Not inlined into `main`, whose stack frame every supervising guard keeps resident for life
// (see `spawn_made` in lib.rs).
#[inline(never)]
pub fn run(config: Config, settings: Settings, json: bool) -> u8 {
    // The process's one TLS stack, as in the guard: rustls with ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("agent-guard doctor: cannot start the async runtime: {err}");
            return CANNOT_RUN;
        }
    };
    let facts = runtime.block_on(gather::gather(&config, &settings));
    let checks = judge::judge(&config, &settings, &facts);
    let report = Report::new(subject(&config, &facts), &checks);
    if json {
        print!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    judge::exit_code(&checks)
}

/// The heading: the guard's name, the instance, its group and region, as far as known.
fn subject(config: &Config, facts: &Facts) -> Subject {
    let group = match &facts.aws {
        AwsFact::Asked(aws) => aws.group.as_ref().map(|g| g.name.clone()),
        AwsFact::NotAsked(_) => config.lifecycle.asg_name.clone(),
    };
    Subject {
        name: config.name.clone(),
        instance_id: facts.imds.metadata().map(|m| m.instance_id.clone()),
        group,
        region: facts.region.resolved().map(|(r, _)| r.to_string()),
    }
}
