//! The simulated IMDS and Auto Scaling API on loopback, driven from a shell script:
//! `packaging/test.sh` runs the static binary as PID 1 in an empty root and has it complete a
//! termination hook against these, reached by host names from that root's `/etc/hosts`.
//!
//! usage: sim_world          (then reads commands on stdin, one a line)
//! - prints `imds=PORT asg=PORT` once both listen on 127.0.0.1;
//! - `terminate`: the group starts a scale-in of the instance (it waits in `Terminating:Wait`
//!   on the hook `drain-hook`) and IMDS says `Terminated`;
//! - `wait`: waits up to 30 s for that scale-in's hook to end, then prints `completed HOOK RESULT
//!   by-call` (or `by-timeout`), else `not completed`, and the Auto Scaling calls seen since;
//! - `reset`: the instance is `InService` again, for another round.
//!
//! It exits at the end of its input.
//! Group `workers`, instance `i-0123456789abcdef0`, region `us-east-1`.

use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use agent_guard::sim::autoscaling::{AutoScalingSim, Hook, TERMINATING};
use agent_guard::sim::imds::ImdsSim;

const GROUP: &str = "workers";
const INSTANCE: &str = "i-0123456789abcdef0";
const HOOK: &str = "drain-hook";

fn main() {
    let imds = ImdsSim::start().expect("the IMDS simulator listens on loopback");
    let asg = AutoScalingSim::start().expect("the Auto Scaling simulator listens on loopback");
    imds.set_identity(INSTANCE, "us-east-1");
    asg.add_instance(GROUP, INSTANCE, "InService");
    asg.put_hook(
        GROUP,
        Hook::new(HOOK, TERMINATING).heartbeat_timeout(Duration::from_secs(30)),
    );
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "imds={} asg={}", imds.addr().port(), port(&asg.url()));
    let _ = out.flush();
    // Completions and calls before this round's `terminate` belong to earlier rounds.
    let (mut completions_before, mut calls_before) = (0, 0);
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "terminate" => {
                completions_before = asg.completions().len();
                asg.terminate(GROUP, INSTANCE);
                imds.set_lifecycle_state(Some("Terminated"));
                let _ = writeln!(out, "terminating");
            }
            "wait" => {
                let give_up = Instant::now() + Duration::from_secs(30);
                let done = loop {
                    let done = asg
                        .completions()
                        .into_iter()
                        .skip(completions_before)
                        .find(|c| c.hook == HOOK);
                    if done.is_some() || Instant::now() >= give_up {
                        break done;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                };
                match done {
                    Some(done) => {
                        let how = if done.by_call {
                            "by-call"
                        } else {
                            "by-timeout"
                        };
                        let _ = writeln!(out, "completed {} {} {how}", done.hook, done.result);
                    }
                    None => {
                        let _ = writeln!(out, "not completed: {HOOK} did not end within 30s");
                    }
                }
                let calls = asg.calls();
                for call in &calls[calls_before.min(calls.len())..] {
                    let _ = writeln!(out, "call {} {}", call.action, call.status);
                }
                calls_before = calls.len();
            }
            "reset" => {
                asg.add_instance(GROUP, INSTANCE, "InService");
                imds.set_lifecycle_state(Some("InService"));
                let _ = writeln!(out, "in service");
            }
            other => {
                let _ = writeln!(out, "unknown command {other:?}");
            }
        }
        let _ = out.flush();
    }
}

/// The port of `http://127.0.0.1:PORT`.
fn port(url: &str) -> &str {
    url.rsplit(':').next().unwrap_or(url)
}
