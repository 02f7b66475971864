//! Counters of the write path, read by the metrics endpoint at scrape time:
//! how many write batches ran and for how long, how many writes they held,
//! and the same for group flushes. PutExecution writes are applied one batch
//! at a time (`combine`), so the batch seconds per second of wall time is how
//! busy that one thread is: near 1, puts are bound by it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Default)]
pub struct WriteActivity {
    batches: AtomicU64,
    writes: AtomicU64,
    batch_nanos: AtomicU64,
    flushes: AtomicU64,
    flush_nanos: AtomicU64,
}

/// Totals since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct WriteTotals {
    pub batches: u64,
    pub writes: u64,
    pub batch_seconds: f64,
    pub flushes: u64,
    pub flush_seconds: f64,
    /// Writes of the hits file that failed or were dropped.
    pub hits_write_failures: u64,
}

impl std::ops::Add for WriteTotals {
    type Output = WriteTotals;
    fn add(self, o: WriteTotals) -> WriteTotals {
        WriteTotals {
            batches: self.batches + o.batches,
            writes: self.writes + o.writes,
            batch_seconds: self.batch_seconds + o.batch_seconds,
            flushes: self.flushes + o.flushes,
            flush_seconds: self.flush_seconds + o.flush_seconds,
            hits_write_failures: self.hits_write_failures + o.hits_write_failures,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl WriteActivity {
    /// A batch of `writes` writes that took `took`.
    pub fn batch(&self, writes: usize, took: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.writes
            .fetch_add(u64::try_from(writes).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.batch_nanos.fetch_add(nanos(took), Ordering::Relaxed);
    }

    /// A flush that took `took`.
    pub fn flush(&self, took: Duration) {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.flush_nanos.fetch_add(nanos(took), Ordering::Relaxed);
    }

    pub fn totals(&self) -> WriteTotals {
        let secs = |n: &AtomicU64| n.load(Ordering::Relaxed) as f64 / 1e9;
        WriteTotals {
            batches: self.batches.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            batch_seconds: secs(&self.batch_nanos),
            flushes: self.flushes.load(Ordering::Relaxed),
            flush_seconds: secs(&self.flush_nanos),
            hits_write_failures: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_add_up_batches_and_flushes() {
        let a = WriteActivity::default();
        a.batch(3, Duration::from_millis(2));
        a.batch(1, Duration::from_millis(1));
        a.flush(Duration::from_micros(500));
        let t = a.totals();
        assert_eq!((t.batches, t.writes, t.flushes), (2, 4, 1));
        assert!((t.batch_seconds - 0.003).abs() < 1e-9, "{t:?}");
        assert!((t.flush_seconds - 0.0005).abs() < 1e-9, "{t:?}");
    }
}
