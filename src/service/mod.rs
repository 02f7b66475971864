//! Thin tonic handlers: validate -> store (on a blocking thread) -> map errors.

pub mod cache;
pub mod metadata;
pub mod stats;

use std::sync::Arc;

use tokio::sync::watch;

use crate::backend::Backend;
use crate::error::Result;
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

    /// Like `blocking`, but runs `f` right here when `inline` says it touches
    /// no storage (an answer already in memory).
    pub async fn blocking_unless<T, F>(&self, inline: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
    {
        if inline {
            f(self.store.as_ref())
        } else {
            self.blocking(f).await
        }
    }
}
