//! Write combining: concurrent writers hand their writes to whichever of them
//! finds no batch running, and that one applies every write queued so far in
//! one go (one sled transaction) while the others sleep until their result is
//! in. sled runs one transaction at a time behind a process-wide lock; with
//! one transaction per write, 64 writers on 2 cores hand that lock around and
//! the holder is often descheduled while holding it (BENCHMARKS.md, "Durable
//! puts in shared transactions"). A batch runs on one thread from start to end.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex};

use crate::error::{Error, Result};

struct State<J, T> {
    /// Jobs waiting for the next batch, with their tickets.
    queue: Vec<(u64, J)>,
    /// Results of finished batches not yet taken by their submitter.
    done: HashMap<u64, Result<T>>,
    next_ticket: u64,
    running: bool,
}

pub struct Combiner<J, T> {
    state: Mutex<State<J, T>>,
    finished: Condvar,
    /// Most jobs in one batch: a batch holds sled's lock for its whole length,
    /// and reads outside the hot cache wait for it.
    max_batch: usize,
}

impl<J, T> Combiner<J, T> {
    pub fn new(max_batch: usize) -> Self {
        Combiner {
            state: Mutex::new(State {
                queue: Vec::new(),
                done: HashMap::new(),
                next_ticket: 0,
                running: false,
            }),
            finished: Condvar::new(),
            max_batch: max_batch.max(1),
        }
    }

    /// Runs `job` in a batch with whatever else is queued and returns its
    /// result. `run` gets the jobs in queue order and returns one result per
    /// job, in the same order; it runs on the submitting thread of whoever
    /// leads the batch (every submitter passes the same function). Blocks:
    /// call from a blocking thread.
    pub fn submit(&self, job: J, run: impl Fn(Vec<J>) -> Vec<Result<T>>) -> Result<T> {
        let poisoned = || Error::Internal("write combiner state poisoned".into());
        let mut s = self.state.lock().map_err(|_| poisoned())?;
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.queue.push((ticket, job));
        loop {
            if let Some(r) = s.done.remove(&ticket) {
                return r;
            }
            if !s.running {
                s.running = true;
                let n = s.queue.len().min(self.max_batch);
                let (tickets, jobs): (Vec<u64>, Vec<J>) = s.queue.drain(..n).unzip();
                drop(s);
                let mut results = run(jobs);
                if results.len() != tickets.len() {
                    let lost = format!(
                        "a write batch of {} returned {} results",
                        tickets.len(),
                        results.len()
                    );
                    results = tickets
                        .iter()
                        .map(|_| Err(Error::Internal(lost.clone())))
                        .collect();
                }
                s = self.state.lock().map_err(|_| poisoned())?;
                s.running = false;
                s.done.extend(tickets.into_iter().zip(results));
                self.finished.notify_all();
                continue;
            }
            s = self.finished.wait(s).map_err(|_| poisoned())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn each_submitter_gets_the_result_of_its_own_job() {
        let c = Arc::new(Combiner::<u64, u64>::new(8));
        let batches = Arc::new(AtomicUsize::new(0));
        let largest = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..16u64)
            .map(|t| {
                let (c, batches, largest) = (c.clone(), batches.clone(), largest.clone());
                std::thread::spawn(move || {
                    for i in 0..100u64 {
                        let job = t * 1000 + i;
                        let r = c
                            .submit(job, |jobs| {
                                batches.fetch_add(1, Ordering::SeqCst);
                                largest.fetch_max(jobs.len(), Ordering::SeqCst);
                                std::thread::sleep(std::time::Duration::from_micros(200));
                                jobs.into_iter().map(|j| Ok(j * 2 + 1)).collect()
                            })
                            .unwrap();
                        assert_eq!(r, job * 2 + 1);
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
    fn a_runner_that_loses_results_fails_instead_of_hanging() {
        let c = Combiner::<u8, u8>::new(4);
        assert!(c.submit(1, |_| Vec::new()).is_err());
        // The combiner still works afterwards, and errors reach their submitter.
        assert_eq!(
            c.submit(2, |jobs| jobs.into_iter().map(Ok).collect())
                .unwrap(),
            2
        );
        assert!(c
            .submit(3, |jobs| jobs
                .iter()
                .map(|_| Err(Error::invalid("no")))
                .collect())
            .is_err());
    }
}
