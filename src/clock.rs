//! Time, injectable so that staleness and TTL rules can be tested without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// The wall clock read once, then advanced by a monotonic clock: steps of
/// the wall clock while the server runs (an NTP correction, an operator's
/// `date -s`, a glitch) move neither leases nor TTLs nor creation times. It
/// follows the wall clock again at the next start. `serve` uses it.
pub struct SteadyClock {
    /// Wall-clock milliseconds at `since`.
    anchor_ms: i64,
    since: Box<dyn Monotonic>,
}

/// Milliseconds elapsed since some fixed moment; never goes back.
pub trait Monotonic: Send + Sync + 'static {
    fn elapsed_ms(&self) -> i64;
}

impl Monotonic for std::time::Instant {
    fn elapsed_ms(&self) -> i64 {
        i64::try_from(self.elapsed().as_millis()).unwrap_or(i64::MAX)
    }
}

impl SteadyClock {
    /// Anchored at the system clock now.
    pub fn new() -> Self {
        Self::with(&SystemClock, std::time::Instant::now())
    }

    /// Anchored at `wall` now, advanced by `since` (tests inject both).
    pub fn with(wall: &dyn Clock, since: impl Monotonic) -> Self {
        SteadyClock {
            anchor_ms: wall.now_ms().saturating_sub(since.elapsed_ms()),
            since: Box::new(since),
        }
    }
}

impl Default for SteadyClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SteadyClock {
    fn now_ms(&self) -> i64 {
        self.anchor_ms.saturating_add(self.since.elapsed_ms())
    }
}

impl Monotonic for std::sync::Arc<ManualClock> {
    fn elapsed_ms(&self) -> i64 {
        self.now_ms()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> Self {
        ManualClock(AtomicI64::new(start_ms))
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

/// A protobuf Timestamp from epoch milliseconds.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: i32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
    }
}

/// Epoch milliseconds of a protobuf Timestamp (saturating).
pub fn timestamp_ms(ts: &prost_types::Timestamp) -> i64 {
    ts.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(ts.nanos) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn steady_time_ignores_wall_clock_steps_both_ways() {
        let wall = ManualClock::new(1_000_000);
        let mono = Arc::new(ManualClock::new(0));
        let clock = SteadyClock::with(&wall, mono.clone());
        assert_eq!(clock.now_ms(), 1_000_000);
        wall.advance_ms(-2 * 3_600_000);
        mono.advance_ms(5_000);
        assert_eq!(clock.now_ms(), 1_005_000, "a step back does not count");
        wall.advance_ms(10 * 365 * 86_400_000);
        mono.advance_ms(1_000);
        assert_eq!(clock.now_ms(), 1_006_000, "nor does a step forward");
    }
}
