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
/// `[0, min(cap, base × 3^attempt)]`, for the `attempt`-th retry (0 for the first). Spreads a
/// burst of throttled callers over the whole window, which is what drains a shared bucket
/// fastest; tripling rather than doubling, a herd of a hundred guards is spread wide enough for
/// the bucket in four steps instead of seven (measured with `bench/fleet`).
pub fn full_jitter(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base.saturating_mul(3u32.saturating_pow(attempt)).min(cap);
    ceiling.mul_f64(fraction())
}

/// A wait of between half and all of `interval`: jittered, yet never longer than asked, for
/// waits that are bounded by a promise (a probe at least every so often).
pub fn within(interval: Duration) -> Duration {
    between(interval, 0.5, 1.0)
}

/// A uniform wait between `low` and `high` times `interval`.
pub fn between(interval: Duration, low: f64, high: f64) -> Duration {
    interval.mul_f64(low + fraction() * (high - low))
}

/// Full-jitter backoff after throttling: the first ceiling, and the largest. A throttled
/// account is saturated by every tool in it: a long cap spreads a fleet's retries thin enough
/// for the bucket to refill, and a first ceiling of seconds rather than milliseconds keeps a
/// guard from spending its next attempts inside the same empty second. Measured with
/// `bench/fleet` (100 of 200 guards scaled in at 5 calls/s, burst 20): a base of 0.5 s cost 8.5
/// attempts per scaled-in instance, 1.5 s 7.3, 3 s 6.2, 5 s 6.2 again, with p99 exit→completion
/// 44, 46, 41 and 45 s; a lone guard throttled once waits 1.5 s on average, which a draining
/// instance can spare.
const BACKOFF_BASE: Duration = Duration::from_secs(3);
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Retries `call` while it fails with a retryable error (throttling, 5xx, timeouts), for at most
/// `window`; returns its first other answer, or the last failure.
///
/// Every call first waits its share of the [congestion](Congestion) this guard has seen: a
/// throttled account is saturated by every tool in it, so a guard that was just throttled paces
/// its *next* calls too (a probe, a heartbeat), not only the retry of the one refused. Each
/// `Throttling` raises the level (full jitter over a window that triples, 3 s to 30 s), each
/// answer lowers it, and it fades by a level every 10 s without news.
pub async fn through_throttling<T, F, Fut>(window: Duration, call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    retried(window, call).await
}

/// [`through_throttling`], for a call nothing waits for (the hook's timeout, read in the
/// background): a refusal backs off over the widest window at once, not after a few more
/// refusals, so a fleet starting together pays about one refusal each. It waits out the
/// congestion the other calls saw, but its own refusals do not raise it: a completion after the
/// agent's exit must never pace itself by the backoff of a read that nothing needs.
pub async fn patiently<T, F, Fut>(window: Duration, mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let give_up = Instant::now() + window;
    loop {
        let pace = congestion(|c| c.pace(Instant::now()));
        tokio::time::sleep(pace.min(give_up.saturating_duration_since(Instant::now()))).await;
        match call().await {
            Err(CallError::Retry(text)) => {
                let left = give_up.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(CallError::Retry(text));
                }
                tracing::debug!(error = %text, "retrying a throttled or failed Auto Scaling call, patiently");
                let wait = full_jitter(MAX_LEVEL - 1, BACKOFF_BASE, BACKOFF_CAP);
                tokio::time::sleep(wait.min(left)).await;
            }
            other => return other,
        }
    }
}

/// One attempt, paced like [`through_throttling`]'s, and counted in the congestion level, but
/// never retried: for a probe whose retry is simply the next probe on its schedule.
pub async fn once<T, Fut>(call: Fut) -> Result<T, CallError>
where
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let pace = congestion(|c| c.pace(Instant::now()));
    tokio::time::sleep(pace).await;
    let answer = call.await;
    match &answer {
        Err(CallError::Retry(_)) => congestion(|c| c.raise(Instant::now())),
        _ => congestion(|c| c.ease(Instant::now())),
    }
    answer
}

async fn retried<T, F, Fut>(window: Duration, mut call: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let give_up = Instant::now() + window;
    loop {
        let pace = congestion(|c| c.pace(Instant::now()));
        if !pace.is_zero() {
            tracing::debug!(wait = %crate::fmt::format_duration(pace), "pacing an Auto Scaling call after throttling");
            tokio::time::sleep(pace.min(give_up.saturating_duration_since(Instant::now()))).await;
        }
        match call().await {
            Err(CallError::Retry(text)) => {
                congestion(|c| c.raise(Instant::now()));
                if Instant::now() >= give_up {
                    return Err(CallError::Retry(text));
                }
                tracing::debug!(error = %text, "retrying a throttled or failed Auto Scaling call");
            }
            other => {
                congestion(|c| c.ease(Instant::now()));
                return other;
            }
        }
    }
}

/// How congested the account's API looks from this guard.
#[derive(Debug, Clone, Copy, Default)]
struct Congestion {
    level: u32,
    changed: Option<Instant>,
}

/// The highest level: its window is already the cap.
const MAX_LEVEL: u32 = 6;
/// A level fades after this long without news.
const FADE: Duration = Duration::from_secs(10);

impl Congestion {
    fn level(&self, now: Instant) -> u32 {
        let faded = self.changed.map_or(0, |at| {
            let secs = now.saturating_duration_since(at).as_secs();
            u32::try_from(secs / FADE.as_secs()).unwrap_or(u32::MAX)
        });
        self.level.saturating_sub(faded)
    }

    fn pace(&self, now: Instant) -> Duration {
        match self.level(now) {
            0 => Duration::ZERO,
            level => full_jitter(level - 1, BACKOFF_BASE, BACKOFF_CAP),
        }
    }

    fn raise(&mut self, now: Instant) {
        self.level = (self.level(now) + 1).min(MAX_LEVEL);
        self.changed = Some(now);
    }

    fn ease(&mut self, now: Instant) {
        let level = self.level(now);
        if level > 0 {
            self.level = level - 1;
            self.changed = Some(now);
        }
    }
}

static CONGESTION: std::sync::Mutex<Congestion> = std::sync::Mutex::new(Congestion {
    level: 0,
    changed: None,
});

fn congestion<T>(f: impl FnOnce(&mut Congestion) -> T) -> T {
    f(&mut CONGESTION.lock().unwrap_or_else(|e| e.into_inner()))
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
            let ceiling = (base * 3u32.saturating_pow(attempt)).min(cap);
            for _ in 0..50 {
                assert!(full_jitter(attempt, base, cap) <= ceiling, "{attempt}");
            }
        }
        // Full jitter reaches down to nothing, not only to half the ceiling.
        assert!((0..200).any(|_| full_jitter(10, base, cap) < cap / 4));
    }

    #[test]
    fn congestion_rises_with_throttling_eases_with_answers_and_fades() {
        let t0 = Instant::now();
        let mut c = Congestion::default();
        assert_eq!(c.pace(t0), Duration::ZERO, "no throttling, no wait");
        for _ in 0..10 {
            c.raise(t0);
        }
        assert_eq!(c.level(t0), MAX_LEVEL);
        assert!((0..100).all(|_| c.pace(t0) <= BACKOFF_CAP));
        c.ease(t0);
        assert_eq!(c.level(t0), MAX_LEVEL - 1);
        assert_eq!(c.level(t0 + FADE * 2), MAX_LEVEL - 3, "a level per 10 s");
        assert_eq!(c.level(t0 + FADE * 100), 0);
        c.raise(t0 + FADE * 100);
        assert_eq!(
            c.level(t0 + FADE * 100),
            1,
            "faded levels are not counted again"
        );
        assert!((0..100).all(|_| c.pace(t0 + FADE * 100) <= BACKOFF_BASE));
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
