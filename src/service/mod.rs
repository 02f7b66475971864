//! Thin tonic handlers: validate -> store (on a blocking thread) -> map errors.

pub mod cache;
pub mod metadata;
pub mod stats;

use std::sync::Arc;

use crate::error::Result;
use crate::store::Store;
use crate::validate::Limits;

/// What every handler shares.
#[derive(Clone)]
pub struct Shared {
    pub store: Arc<Store>,
    pub limits: Arc<Limits>,
    pub stats: Arc<stats::Stats>,
}

impl Shared {
    /// Runs a store call off the async executor.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store)).await?
    }
}
