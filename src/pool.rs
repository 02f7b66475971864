//! Small fixed pools of threads for store calls: one for reads (lookups,
//! gets, lists), one for writes.
//!
//! `tokio::task::spawn_blocking` keeps one thread per concurrent call: with 64
//! lookups in flight it holds ~64 threads, and nearly every call wakes a
//! sleeping one (a futex wake and a context switch per read). A few threads
//! sharing one queue take the next call without sleeping while there is work.
//!
//! Writes wait on their thread for a shared transaction and a shared flush
//! (`store::combine`, `store::flush`). Every thread that allocates keeps its
//! own allocator heap, so one thread per write would grow RSS with the
//! number of writers; a bounded pool queues the writes beyond its size
//! without a thread.
//!
//! Neither pool can deadlock. Reads never wait for other requests (no flush,
//! no lock held across calls). A write waits only for a batch or a flush run
//! by another write that already holds a pool thread, and that one never
//! waits for a queued call (long waits, such as WaitForCachedExecution, are
//! async and hold no thread).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

pub struct Pool {
    jobs: crossbeam_channel::Sender<Job>,
    /// What the pool runs ("read", "write"), for thread names and errors.
    kind: &'static str,
}

impl Pool {
    /// Starts `threads` worker threads (at least one) named
    /// `stepcache-{kind}-N`; they stop when the pool is dropped.
    pub fn new(kind: &'static str, threads: usize) -> Result<Arc<Pool>> {
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("stepcache-{kind}-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                })
                .map_err(|e| Error::Internal(format!("cannot start a {kind} thread: {e}")))?;
        }
        Ok(Arc::new(Pool { jobs, kind }))
    }

    /// The write pool's default size. Puts are applied one batch at a time
    /// (at most 16 writes each), so more threads than two batches' worth add
    /// memory, not throughput.
    pub const DEFAULT_WRITE_THREADS: usize = 32;

    /// The read pool's default size: two threads per core (a read that pages
    /// in from the disk blocks its thread), at least 4.
    pub fn default_read_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get() * 2)
            .unwrap_or(4)
            .max(4)
    }

    /// Runs `f` on a pool thread and waits for it without blocking the executor.
    /// A panic in `f` is an INTERNAL error, not a lost worker.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        let kind = self.kind;
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f))
                .unwrap_or_else(|_| Err(Error::Internal(format!("a store {kind} panicked"))));
            let _ = tx.send(out);
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::Unavailable(format!("the {kind} pool has stopped")))?;
        rx.await
            .map_err(|_| Error::Internal(format!("a store {kind} was dropped")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn runs_every_job_and_returns_its_result() {
        let pool = Pool::new("read", 2).unwrap();
        let done = Arc::new(AtomicUsize::new(0));
        let calls: Vec<_> = (0..100)
            .map(|i| {
                let done = done.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    pool.run(move || {
                        done.fetch_add(1, Ordering::SeqCst);
                        Ok(i * 2)
                    })
                    .await
                })
            })
            .collect();
        let mut out = Vec::new();
        for c in calls {
            out.push(c.await.unwrap().unwrap());
        }
        assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(done.load(Ordering::SeqCst), 100);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_internal_error_and_the_pool_survives() {
        let pool = Pool::new("read", 1).unwrap();
        let err = pool
            .run(|| -> Result<()> { panic!("boom") })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Internal(_)), "{err:?}");
        // The single worker is still there.
        assert_eq!(pool.run(|| Ok(7)).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn errors_pass_through() {
        let pool = Pool::new("read", 1).unwrap();
        let err = pool
            .run(|| -> Result<()> { Err(Error::not_found("nothing")) })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    }
}
