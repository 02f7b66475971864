//! Thin tonic handlers: validate -> store (on a blocking thread) -> map errors.

pub mod cache;
pub mod lookup;
pub mod metadata;

use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::error::Result;
use crate::metrics::stats::Stats;
use crate::pool::Pool;
use crate::reservations::Waiters;
use crate::validate::Limits;

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<dyn Backend>,
    pub limits: Arc<Limits>,
    pub stats: Arc<Stats>,
    /// Who waits on which key (WaitForCachedExecution); writes wake them.
    pub waiters: Arc<Waiters>,
    /// Turns true when the server starts shutting down: waiters answer then.
    pub shutdown: watch::Receiver<bool>,
    /// Threads for store calls that only read (see `pool`); None: each read
    /// takes a tokio blocking thread.
    pub reads: Option<Arc<Pool>>,
    /// Threads for store calls that write (see `pool`); None: each write
    /// takes a tokio blocking thread.
    pub writes: Option<Arc<Pool>>,
}

/// Where a store call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Touches no storage (an answer already in memory): run it right here.
    Inline,
    /// Only reads: the read pool.
    Read,
    /// Writes, or may wait for a flush: the write pool.
    Write,
}

impl Shared {
    /// Runs a store call that writes on the write pool.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        self.run(Work::Write, f).await
    }

    /// Runs a store call that only reads on the read pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        self.run(Work::Read, f).await
    }

    /// Runs a store call where `work` says: in place, or on the pool of its
    /// kind (a tokio blocking thread of its own when that pool is off).
    pub async fn run<T, F>(&self, work: Work, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        let pool = match work {
            Work::Inline => return f(self.store.as_ref()),
            Work::Read => &self.reads,
            Work::Write => &self.writes,
        };
        let store = self.store.clone();
        match pool {
            Some(pool) => pool.run(move || f(store.as_ref())).await,
            None => tokio::task::spawn_blocking(move || f(store.as_ref())).await?,
        }
    }
}
