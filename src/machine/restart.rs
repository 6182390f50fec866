//! When an agent that exited by itself is started again (`--restart`): the policy, the doubling
//! delay with its reset, and the crash-loop window (`--crash-loop N/DUR`), as plain data and
//! arithmetic. No clock, no randomness: `step` passes the time and the jitter in.
//!
//! A crash loop ends the restarts rather than slowing them further: in an Auto Scaling group an
//! instance whose agent cannot stay up is better replaced than kept, healthy as far as EC2
//! knows, doing nothing.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::config::settings::RestartSettings;
pub use crate::model::RestartPolicy;

/// The most a delay is shortened by jitter: delays stay within (80 %, 100 %] of their doubling
/// step, so many instances do not restart in step, a delay never passes the maximum, and each
/// step stays longer than the one before.
const JITTER: f64 = 0.2;

/// What to do about an agent that exited by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The policy does not apply to this exit: the guard ends with it.
    Exit,
    /// `starts` starts within `within`: the restarts end here.
    CrashLoop { starts: u32, within: Duration },
    /// Start it again after `delay`; this is restart `attempt` since the delay was last reset.
    Restart { attempt: u32, delay: Duration },
}

/// The starts of this run, kept in the state so that `step` can decide without a clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct History {
    /// The most recent starts (spawns, and spawns that failed), oldest first; no more are kept
    /// than the crash-loop window counts.
    starts: VecDeque<Instant>,
    /// Restarts since the delay was last reset: the next one is `streak + 1`.
    streak: u32,
}

impl History {
    /// Notes a start (or an attempt that failed to start) at `now`.
    pub fn started(&mut self, now: Instant, settings: &RestartSettings) {
        let keep = usize::try_from(settings.crash_loop.starts.max(1)).unwrap_or(usize::MAX);
        self.starts.push_back(now);
        while self.starts.len() > keep {
            self.starts.pop_front();
        }
    }

    /// Decides about an agent that ended by itself at `now`; `restart` says whether the policy
    /// applies to how it ended. `jitter` is in [0, 1): 0 gives the exact doubling step.
    pub fn decide(
        &mut self,
        restart: bool,
        now: Instant,
        settings: &RestartSettings,
        jitter: f64,
    ) -> Decision {
        if !restart {
            return Decision::Exit;
        }
        let window = settings.crash_loop;
        let recent = self
            .starts
            .iter()
            .filter(|s| now.saturating_duration_since(**s) <= window.within)
            .count();
        if u32::try_from(recent).unwrap_or(u32::MAX) >= window.starts {
            return Decision::CrashLoop {
                starts: window.starts,
                within: window.within,
            };
        }
        let ran = self
            .starts
            .back()
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(*s));
        if ran > settings.max_delay {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        Decision::Restart {
            attempt: self.streak,
            delay: delay_for(self.streak, settings, jitter),
        }
    }
}

/// The delay before restart `attempt` (1-based): the first delay doubled `attempt - 1` times,
/// capped at the maximum, then shortened by up to [`JITTER`].
fn delay_for(attempt: u32, settings: &RestartSettings, jitter: f64) -> Duration {
    let factor = 1u32
        .checked_shl(attempt.saturating_sub(1))
        .unwrap_or(u32::MAX);
    let step = settings
        .delay
        .checked_mul(factor)
        .unwrap_or(settings.max_delay)
        .min(settings.max_delay);
    // Subtracted rather than scaled: exact without jitter, and never above the step.
    step.saturating_sub(step.mul_f64(JITTER * jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::settings::CrashLoop;
    use crate::process::exit::ChildExit;

    const S: Duration = Duration::from_secs(1);

    fn settings(policy: RestartPolicy) -> RestartSettings {
        RestartSettings {
            policy,
            delay: S,
            max_delay: 8 * S,
            crash_loop: CrashLoop {
                starts: 4,
                within: 60 * S,
            },
        }
    }

    #[test]
    fn the_policy_decides_which_exits_restart() {
        let cases = [
            (RestartPolicy::Never, ChildExit::for_test(1), false),
            (RestartPolicy::OnFailure, ChildExit::for_test(0), false),
            (RestartPolicy::OnFailure, ChildExit::for_test(3), true),
            (
                RestartPolicy::OnFailure,
                ChildExit::for_test_signal(crate::process::sig::Sig::KILL),
                true,
            ),
            (RestartPolicy::Always, ChildExit::for_test(0), true),
            (
                RestartPolicy::OnFailure,
                ChildExit::for_test(0).for_test_oom_kills(1),
                true,
            ),
            (RestartPolicy::OnFailure, ChildExit::for_test_oom(), true),
        ];
        for (policy, exit, want) in cases {
            assert_eq!(policy.applies(&exit), want, "{policy} after {exit}");
        }
    }

    #[test]
    fn delays_double_up_to_the_maximum_and_jitter_only_shortens() {
        let s = settings(RestartPolicy::Always);
        let want = [S, 2 * S, 4 * S, 8 * S, 8 * S];
        for (attempt, want) in (1..).zip(want) {
            assert_eq!(delay_for(attempt, &s, 0.0), want, "attempt {attempt}");
            let jittered = delay_for(attempt, &s, 0.99);
            assert!(
                jittered <= want && jittered > want.mul_f64(0.79),
                "{jittered:?}"
            );
        }
        assert_eq!(delay_for(u32::MAX, &s, 0.0), 8 * S, "no overflow");
        let huge = RestartSettings {
            delay: Duration::from_secs(u64::MAX / 2),
            max_delay: Duration::from_secs(u64::MAX / 2),
            ..s
        };
        assert_eq!(delay_for(40, &huge, 0.0), huge.max_delay, "saturates");
    }

    #[test]
    fn a_long_run_resets_the_delay() {
        let s = RestartSettings {
            crash_loop: CrashLoop {
                starts: 100,
                within: 60 * S,
            },
            ..settings(RestartPolicy::Always)
        };
        let t0 = Instant::now();
        let mut h = History::default();
        let mut t = t0;
        let next = |h: &mut History, ran: Duration, t: &mut Instant| {
            h.started(*t, &s);
            *t += ran;
            h.decide(true, *t, &s, 0.0)
        };
        assert_eq!(
            next(&mut h, S / 10, &mut t),
            Decision::Restart {
                attempt: 1,
                delay: S
            }
        );
        assert_eq!(
            next(&mut h, S / 10, &mut t),
            Decision::Restart {
                attempt: 2,
                delay: 2 * S
            }
        );
        // Longer than the maximum delay: back to the first.
        assert_eq!(
            next(&mut h, 9 * S, &mut t),
            Decision::Restart {
                attempt: 1,
                delay: S
            }
        );
        assert_eq!(
            next(&mut h, 8 * S, &mut t),
            Decision::Restart {
                attempt: 2,
                delay: 2 * S
            },
            "exactly the maximum is not longer than it"
        );
    }

    #[test]
    fn n_starts_within_the_window_end_the_restarts() {
        let s = settings(RestartPolicy::OnFailure);
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..3 {
            h.started(t0 + i * S, &s);
            assert!(matches!(
                h.decide(true, t0 + i * S, &s, 0.0),
                Decision::Restart { .. }
            ));
        }
        h.started(t0 + 3 * S, &s);
        assert_eq!(
            h.decide(true, t0 + 3 * S, &s, 0.0),
            Decision::CrashLoop {
                starts: 4,
                within: 60 * S
            }
        );
        // Spread out over more than the window, the same starts are no loop.
        let mut h = History::default();
        for i in 0..10 {
            h.started(t0 + i * 30 * S, &s);
            let d = h.decide(true, t0 + i * 30 * S + S, &s, 0.0);
            assert!(matches!(d, Decision::Restart { .. }), "{i}: {d:?}");
        }
        assert!(h.starts.len() <= 4, "the history stays bounded");
        assert_eq!(h.decide(false, t0, &s, 0.0), Decision::Exit);
    }
}
