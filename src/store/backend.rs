//! `Backend` on the sled store: the store's own methods (`implement_backend`),
//! reads that hide what is not durable yet, the hits tier, and the close.

use std::sync::Arc;

use super::Store;
use crate::backend::{implement_backend, HitsTier};
use crate::domain::{not_found, Lookup};
use crate::error::Result;
use crate::key::CacheKey;

implement_backend!(Store, {
    fn kind(&self) -> &'static str {
        "sled"
    }
    fn now_ms(&self) -> i64 {
        Store::now_ms(self)
    }
    // Records of a PutExecution not yet durable are not there yet for
    // clients (`store::unflushed`).
    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        if self.unflushed(id) {
            return Err(not_found("execution", id, ns));
        }
        Store::execution(self, id, ns)
    }
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        if self.unflushed(id) {
            return Err(not_found("artifact", id, ns));
        }
        Store::artifact(self, id, ns)
    }
    fn hits(&self) -> Option<&dyn HitsTier> {
        Some(self)
    }
    fn writable(&self) -> Result<()> {
        Store::writable(self)
    }
    fn close(self: Arc<Self>) -> Result<()> {
        // Background work (`Store::warm_in_background`) lets go of its handle
        // within one chunk of its work once asked to stop.
        self.stop_background();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let store = self;
        while Arc::strong_count(&store) > 1 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        match Arc::try_unwrap(store) {
            Ok(store) => store.close(),
            // Someone still holds it (not after a graceful shutdown): the
            // writes are made durable and the next open catches up instead.
            Err(store) => {
                tracing::warn!("the store is still in use at close: flushed, not checkpointed");
                store.flush()
            }
        }
    }
});

impl HitsTier for Store {
    fn lookup_hot(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        Store::lookup_hot(self, ns, key, max_staleness_ms)
    }
    fn fill_hits_file(&self) -> Result<()> {
        Store::fill_hits_file(self)
    }
}
