//! Thin tonic handlers: validate -> store (on a blocking thread) -> map errors.

pub mod cache;
pub mod metadata;
pub mod stats;

use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::error::Result;
use crate::readpool::ReadPool;
use crate::reservations::Waiters;
use crate::validate::Limits;

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Backend>,
    pub limits: Arc<Limits>,
    pub stats: Arc<stats::Stats>,
    /// Who waits on which key (WaitForCachedExecution); writes wake them.
    pub waiters: Arc<Waiters>,
    /// Turns true when the server starts shutting down: waiters answer then.
    pub shutdown: watch::Receiver<bool>,
    /// Threads for store calls that only read (see `readpool`); None: reads
    /// take blocking threads like writes.
    pub reads: Option<Arc<ReadPool>>,
}

/// Where a store call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Touches no storage (an answer already in memory): run it right here.
    Inline,
    /// Only reads: the read pool.
    Read,
    /// Writes, or may wait for a flush: a blocking thread of its own.
    Write,
}

impl Shared {
    /// Runs a store call off the async executor.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref())).await?
    }

    /// Runs a store call that only reads on the read pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        self.run(Work::Read, f).await
    }

    /// Runs a store call where `work` says.
    pub async fn run<T, F>(&self, work: Work, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        match work {
            Work::Inline => f(self.store.as_ref()),
            Work::Read => match &self.reads {
                Some(pool) => {
                    let store = self.store.clone();
                    pool.run(move || f(store.as_ref())).await
                }
                None => self.blocking(f).await,
            },
            Work::Write => self.blocking(f).await,
        }
    }
}
