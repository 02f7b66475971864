//! Group commit: a write is acknowledged only after a `flush()` that began after
//! the write was applied. Concurrent writers share one flush: whoever finds no
//! flush running starts one for every ticket taken so far; the others wait.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;

#[derive(Default)]
struct State {
    /// Tickets handed out (one per applied write).
    taken: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// When the flush running now began.
    running: Option<Instant>,
}

#[derive(Default)]
pub struct GroupFlush {
    state: Mutex<State>,
    done: Condvar,
}

impl GroupFlush {
    /// Blocks until everything written before the call is durable. `flush` is
    /// the storage's blocking flush. Call from a blocking thread.
    pub fn wait_durable(&self, flush: impl Fn() -> Result<(), Error>) -> Result<(), Error> {
        let poisoned = || Error::Internal("flush state poisoned".into());
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        s.taken += 1;
        let ticket = s.taken;
        loop {
            if s.durable >= ticket {
                return Ok(());
            }
            if s.running.is_none() {
                s.running = Some(Instant::now());
                let target = s.taken;
                drop(s);
                let result = flush();
                s = self.state.lock().map_err(|_| poisoned())?;
                s.running = None;
                if result.is_ok() {
                    s.durable = s.durable.max(target);
                }
                self.done.notify_all();
                result?;
                continue;
            }
            s = self.done.wait(s).map_err(|_| poisoned())?;
        }
    }

    /// How long the flush running now has been waiting for the disk.
    pub fn running_for(&self) -> Option<Duration> {
        let s = self.state.lock().ok()?;
        s.running.map(|since| since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// 16 threads, each waiting 50 times for durability with `flush` (given
    /// the count of flushes before it), retrying a wait whose flush failed.
    /// Returns (flushes run, failed waits).
    fn sixteen_writers(flush: fn(u64) -> Result<(), Error>) -> (u64, u64) {
        let g = Arc::new(GroupFlush::default());
        let calls = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..16)
            .map(|_| {
                let (g, calls) = (g.clone(), calls.clone());
                std::thread::spawn(move || {
                    let mut failures = 0u64;
                    for _ in 0..50 {
                        while g
                            .wait_durable(|| flush(calls.fetch_add(1, Ordering::SeqCst)))
                            .is_err()
                        {
                            failures += 1;
                        }
                    }
                    failures
                })
            })
            .collect();
        let failures = threads.into_iter().map(|t| t.join().unwrap()).sum();
        (calls.load(Ordering::SeqCst), failures)
    }

    #[test]
    fn concurrent_writers_share_flushes() {
        let (n, failures) = sixteen_writers(|_| {
            std::thread::sleep(std::time::Duration::from_millis(1));
            Ok(())
        });
        assert_eq!(failures, 0);
        assert!(n >= 50, "every writer waited for at least its own flush");
        assert!(n < 800, "flushes were shared: {n} for 800 writes");
    }

    #[test]
    fn every_waiter_returns_when_flushes_fail_and_succeed() {
        // A waiter left asleep after a failed flush would hang this test.
        let (calls, failures) = sixteen_writers(|n| {
            std::thread::sleep(std::time::Duration::from_micros(300));
            match n % 3 {
                2 => Err(Error::Storage("disk".into())),
                _ => Ok(()),
            }
        });
        assert!(failures > 0, "some waits saw a failed flush");
        assert!(calls < 16 * 50 * 2, "flushes were shared: {calls}");
    }

    #[test]
    fn a_running_flush_reports_how_long_it_runs() {
        let g = Arc::new(GroupFlush::default());
        assert_eq!(g.running_for(), None);
        let (started, release) = (
            Arc::new(std::sync::Barrier::new(2)),
            Arc::new(std::sync::Barrier::new(2)),
        );
        let flusher = {
            let (g, started, release) = (g.clone(), started.clone(), release.clone());
            std::thread::spawn(move || {
                g.wait_durable(|| {
                    started.wait();
                    release.wait();
                    Ok(())
                })
            })
        };
        started.wait();
        std::thread::sleep(Duration::from_millis(20));
        assert!(g.running_for() >= Some(Duration::from_millis(20)));
        release.wait();
        flusher.join().unwrap().unwrap();
        assert_eq!(g.running_for(), None);
    }

    #[test]
    fn a_failed_flush_is_reported_and_retried() {
        let g = GroupFlush::default();
        assert!(g
            .wait_durable(|| Err(Error::Storage("disk".into())))
            .is_err());
        assert!(g.wait_durable(|| Ok(())).is_ok());
    }
}
