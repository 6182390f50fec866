//! Randomised waits for the calls to Auto Scaling, whose rate limit is shared by the whole
//! account: full-jitter backoff after `Throttling` and 5xx ([`through_throttling`]), and
//! jittered probe intervals, so a fleet of guards scaled in at one moment never retries (or
//! looks) in step.
//!
//! The randomness needs no crate: a xorshift generator seeded per process from the clock and the
//! pid is plenty to spread a fleet's calls; nothing here is security-sensitive.

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime};

use crate::aws::api::CallError;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // Guards started in the same nanosecond still differ by pid; never zero (xorshift's fixpoint).
    (nanos ^ (u64::from(std::process::id()) << 32)) | 1
}

/// A uniform fraction in [0, 1).
pub fn fraction() -> f64 {
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        // The top 53 bits, as many as an f64 holds exactly.
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Full jitter ("Exponential Backoff and Jitter", AWS Architecture Blog): a uniform wait in
/// `[0, min(cap, base × 2^attempt)]`, for the `attempt`-th retry (0 for the first). Spreads a
/// burst of throttled callers over the whole window, which is what drains a shared bucket
/// fastest.
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << attempt.min(20)).min(cap);
    ceiling.mul_f64(fraction())
}

/// A wait of between half and all of `interval`: jittered, yet never longer than asked, for
/// waits that are bounded by a promise (a probe at least every so often).
pub fn within(interval: Duration) -> Duration {
    interval.mul_f64(0.5 + fraction() / 2.0)
}

/// Full-jitter backoff after throttling: the first ceiling, and the largest.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(20);

/// Retries `call` while it fails with a retryable error (throttling, 5xx, timeouts), with full
/// jitter, for at most `window`; returns its first other answer, or the last failure.
pub async fn through_throttling<T, F, Fut>(window: Duration, mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let give_up = Instant::now() + window;
    let mut attempt: u32 = 0;
    loop {
        match call().await {
            Err(CallError::Retry(text)) => {
                let wait = full_jitter(attempt, BACKOFF_BASE, BACKOFF_CAP);
                if Instant::now() + wait > give_up {
                    return Err(CallError::Retry(text));
                }
                tracing::debug!(error = %text, retry_in = ?wait, "retrying a throttled or failed Auto Scaling call");
                tokio::time::sleep(wait).await;
                attempt = attempt.saturating_add(1);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions_are_uniform_enough_and_in_range() {
        let draws: Vec<f64> = (0..10_000).map(|_| fraction()).collect();
        assert!(draws.iter().all(|f| (0.0..1.0).contains(f)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.45..0.55).contains(&mean), "{mean}");
        let low = draws.iter().filter(|f| **f < 0.1).count();
        assert!((700..1300).contains(&low), "{low} of 10000 below 0.1");
    }

    #[test]
    fn full_jitter_stays_under_the_growing_ceiling_and_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(5);
        for attempt in 0..40 {
            let ceiling = (base * 2u32.pow(attempt.min(20))).min(cap);
            for _ in 0..50 {
                assert!(full_jitter(attempt, base, cap) <= ceiling, "{attempt}");
            }
        }
        // Full jitter reaches down to nothing, not only to half the ceiling.
        assert!((0..200).any(|_| full_jitter(10, base, cap) < cap / 4));
    }

    #[test]
    fn within_never_exceeds_the_interval() {
        let interval = Duration::from_secs(12);
        for _ in 0..1000 {
            let d = within(interval);
            assert!(d >= interval / 2 && d <= interval, "{d:?}");
        }
    }
}
