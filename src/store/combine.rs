//! Write combining on a thread of its own: concurrent writers queue their
//! writes and sleep; one long-lived thread applies everything queued so far
//! in one go (one sled transaction) and hands each writer its result. sled
//! runs one transaction at a time behind a process-wide lock; with one
//! transaction per write, 64 writers on 2 cores hand that lock around and
//! the holder is often descheduled while holding it.
//!
//! One thread that starts the next batch as soon as the last one ends keeps
//! the batches full, and sled writes less log per write in larger
//! transactions. Each batch wakes only the groups of waiting writers its jobs
//! came from, not every writer.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crate::error::{Error, Result};

struct State<J, T> {
    /// Jobs waiting for the next batch, with their tickets.
    queue: Vec<(u64, J)>,
    /// Results of finished batches not yet taken by their submitter.
    done: HashMap<u64, Result<T>>,
    next_ticket: u64,
    /// Set when the applier is dropped: the thread runs what is queued, then
    /// exits; no job is taken after that.
    closed: bool,
}

struct Shared<J, T> {
    state: Mutex<State<J, T>>,
    /// Wakes the applying thread: a job was queued, or the applier closes.
    queued: Condvar,
    /// Wake the submitters when a batch finished: the submitter of ticket
    /// `t` waits on `finished[t % WAKE_GROUPS]`, so a batch wakes its own
    /// submitters (and the few that share their groups), not every writer.
    finished: [Condvar; WAKE_GROUPS],
    /// Most jobs in one batch: a batch holds sled's lock for its whole length,
    /// and reads outside the hot cache wait for it.
    max_batch: usize,
}

/// Applies jobs in batches on a thread of its own (see the module doc).
/// Dropping it runs the jobs queued by then and joins the thread.
pub struct Applier<J, T> {
    shared: Arc<Shared<J, T>>,
    thread: Option<JoinHandle<()>>,
}

/// Groups of waiting submitters: more than the writers usually waiting (64),
/// so that most groups hold one.
const WAKE_GROUPS: usize = 128;

fn wake_group(ticket: u64) -> usize {
    (ticket % WAKE_GROUPS as u64) as usize
}

fn poisoned() -> Error {
    Error::Internal("write applier state poisoned".into())
}

impl<J: Send + 'static, T: Send + 'static> Applier<J, T> {
    /// Starts the thread (named `name`). `run` gets the jobs of a batch in
    /// queue order and returns one result per job, in the same order.
    pub fn spawn(
        name: &str,
        max_batch: usize,
        run: impl FnMut(Vec<J>) -> Vec<Result<T>> + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: Vec::new(),
                done: HashMap::new(),
                next_ticket: 0,
                closed: false,
            }),
            queued: Condvar::new(),
            finished: std::array::from_fn(|_| Condvar::new()),
            max_batch: max_batch.max(1),
        });
        let on_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || on_thread.apply_until_closed(run))?;
        Ok(Applier {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `job` and returns its result once its batch has run. Blocks:
    /// call from a blocking thread.
    pub fn submit(&self, job: J) -> Result<T> {
        let mut s = self.shared.state.lock().map_err(|_| poisoned())?;
        if s.closed {
            return Err(Error::Unavailable("the store is closing".into()));
        }
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queue.push((ticket, job));
        self.shared.queued.notify_one();
        loop {
            if let Some(r) = s.done.remove(&ticket) {
                return r;
            }
            s = self.shared.finished[wake_group(ticket)]
                .wait(s)
                .map_err(|_| poisoned())?;
        }
    }
}

impl<J, T> Shared<J, T> {
    fn apply_until_closed(&self, mut run: impl FnMut(Vec<J>) -> Vec<Result<T>>) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        loop {
            if s.queue.is_empty() {
                if s.closed {
                    return;
                }
                s = match self.queued.wait(s) {
                    Ok(s) => s,
                    Err(_) => return,
                };
                continue;
            }
            let n = s.queue.len().min(self.max_batch);
            let (tickets, jobs): (Vec<u64>, Vec<J>) = s.queue.drain(..n).unzip();
            drop(s);
            let results = match catch_unwind(AssertUnwindSafe(|| run(jobs))) {
                Ok(results) if results.len() == tickets.len() => Ok(results),
                Ok(results) => Err(format!(
                    "a write batch of {} returned {} results",
                    tickets.len(),
                    results.len()
                )),
                Err(_) => {
                    tracing::error!("a write batch panicked; its writes failed");
                    Err("the write batch panicked".to_string())
                }
            };
            // A batch that went wrong fails each of its jobs.
            let results = results.unwrap_or_else(|why| {
                tickets
                    .iter()
                    .map(|_| Err(Error::Internal(why.clone())))
                    .collect()
            });
            s = match self.state.lock() {
                Ok(s) => s,
                Err(_) => return,
            };
            let mut woken = [false; WAKE_GROUPS];
            for t in &tickets {
                woken[wake_group(*t)] = true;
            }
            s.done.extend(tickets.into_iter().zip(results));
            for (group, woken) in self.finished.iter().zip(woken) {
                if woken {
                    group.notify_all();
                }
            }
        }
    }
}

impl<J, T> Drop for Applier<J, T> {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.state.lock() {
            s.closed = true;
        }
        self.shared.queued.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_submitter_gets_the_result_of_its_own_job() {
        let batches = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let (b, l) = (batches.clone(), largest.clone());
        let applier = Arc::new(
            Applier::<u64, u64>::spawn("test-apply", 8, move |jobs| {
                b.fetch_add(1, Ordering::SeqCst);
                l.fetch_max(jobs.len(), Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_micros(200));
                jobs.into_iter().map(|j| Ok(j * 2 + 1)).collect()
            })
            .unwrap(),
        );
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let applier = applier.clone();
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let job = t * 1000 + i;
                        assert_eq!(applier.submit(job).unwrap(), job * 2 + 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (batches, largest) = (
            batches.load(Ordering::SeqCst),
            largest.load(Ordering::SeqCst),
        );
        assert!(batches < 1600, "jobs were combined: {batches} batches");
        assert!(largest > 1 && largest <= 8, "largest batch {largest}");
    }

    #[test]
    fn a_runner_that_loses_results_or_panics_fails_its_jobs_and_the_next_work() {
        let applier = Applier::<u8, u8>::spawn("test-apply", 4, |jobs| match jobs[0] {
            1 => Vec::new(),
            2 => panic!("a bug in a write"),
            3 => jobs.iter().map(|_| Err(Error::invalid("no"))).collect(),
            _ => jobs.into_iter().map(Ok).collect(),
        })
        .unwrap();
        assert!(matches!(applier.submit(1), Err(Error::Internal(_))));
        assert!(matches!(applier.submit(2), Err(Error::Internal(_))));
        // Errors reach their submitter, and the thread still applies.
        assert!(matches!(applier.submit(3), Err(Error::InvalidArgument(_))));
        assert_eq!(applier.submit(4).unwrap(), 4);
    }

    #[test]
    fn dropping_the_applier_ends_its_thread() {
        /// Captured by the runner: dropped when the thread ends.
        struct Ended(Arc<AtomicUsize>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let ended = Arc::new(AtomicUsize::new(0));
        let marker = Ended(ended.clone());
        let applier = Applier::<usize, usize>::spawn("test-apply", 2, move |jobs| {
            let _alive = &marker;
            jobs.into_iter().map(Ok).collect()
        })
        .unwrap();
        assert_eq!(applier.submit(7).unwrap(), 7);
        assert_eq!(ended.load(Ordering::SeqCst), 0);
        drop(applier);
        assert_eq!(ended.load(Ordering::SeqCst), 1);
    }
}
