//! The storage seam: what the service, the metrics and the server ask of a
//! store, as one trait with two implementations — the embedded sled
//! `store::Store` (one replica) and `pg::PgStore` (PostgreSQL, any number of
//! replicas on one database).
//!
//! The trait is synchronous: handlers run every call off the async executor,
//! on the read or write thread pool (`service::Shared::run`, `pool`). Its
//! methods are the store's methods with the same signatures; the sled
//! implementation only delegates.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::Result;
use crate::key::CacheKey;
use crate::lineage::{Bounds, Dir, Node};
use crate::proto::{Artifact, Context, Event, Execution};
use crate::reservations::{Ask, Holder, Waiters};
use crate::store::maintenance::{Integrity, Pruned, Selector};
use crate::store::query::{ContextFilter, LineageResult};
use crate::store::{
    ArtifactFilter, Claimed, ExecutionFilter, ExecutionWrite, ExecutionWritten, Lookup, Page, Store,
};

/// A metadata store and cache index (see `store::Store` for each method's contract).
pub trait Backend: Send + Sync {
    /// "sled" or "postgres" (logs, errors).
    fn kind(&self) -> &'static str;
    fn now_ms(&self) -> i64;

    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution>;
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact>;
    fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>>;
    fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten>;
    fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>>;
    fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution>;

    fn lookup(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>) -> Result<Lookup>;
    /// A hit from memory without I/O (callable on the async executor); None
    /// means "ask the store".
    fn lookup_hot(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>)
        -> Option<Lookup>;
    fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed>;
    fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>>;
    fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder>;
    fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()>;

    fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>>;
    fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>>;
    fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>>;

    fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>>;
    fn context(&self, id: i64, ns: Option<&str>) -> Result<Context>;
    fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>>;
    fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>>;
    fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>>;
    fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult>;

    fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64>;
    fn count_entries(&self, ns: &str) -> Result<i64>;
    fn count_reservations(&self, ns: &str) -> Result<i64>;
    fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>>;
    fn size_on_disk(&self) -> Result<u64>;
    /// Write batches and flushes of the server's own write path, when it has
    /// one (sled; PostgreSQL commits its own writes).
    fn write_totals(&self) -> Option<crate::store::activity::WriteTotals> {
        None
    }
    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64>;
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned>;
    /// The offline integrity check (sled only).
    fn check(&self) -> Result<Integrity>;

    /// Wakes `waiters` when another replica publishes or releases a key
    /// (no-op for a store that only this process writes).
    fn watch_other_writers(&self, _waiters: Arc<Waiters>) -> Result<()> {
        Ok(())
    }
    /// Flushes and stops background work; called at shutdown, with the last
    /// handle to the store.
    fn close(self: Arc<Self>) -> Result<()>;
    /// Ok while the store can make writes durable (health says SERVING);
    /// called every few seconds.
    fn writable(&self) -> Result<()> {
        Ok(())
    }
    /// Fills the hits file now if it is empty (sled; see
    /// `Store::warm_hits`), for a benchmark that measures a settled server.
    fn fill_hits_file(&self) -> Result<()> {
        Ok(())
    }
}

impl Backend for Store {
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
            return Err(crate::store::not_found("execution", id, ns));
        }
        Store::execution(self, id, ns)
    }
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        if self.unflushed(id) {
            return Err(crate::store::not_found("artifact", id, ns));
        }
        Store::artifact(self, id, ns)
    }
    fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        Store::put_artifacts(self, artifacts)
    }
    fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        Store::put_execution(self, w)
    }
    fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
        Store::put_executions(self, writes)
    }
    fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        Store::record_cached(self, original, outputs, inputs, context_ids)
    }
    fn lookup(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>) -> Result<Lookup> {
        Store::lookup(self, ns, key, max_staleness_ms)
    }
    fn lookup_hot(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        Store::lookup_hot(self, ns, key, max_staleness_ms)
    }
    fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        Store::lookup_or_claim(self, ns, key, max_staleness_ms, ask)
    }
    fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        Store::reservation(self, ns, key)
    }
    fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder> {
        Store::extend_reservation(self, ns, key, owner, lease_ms)
    }
    fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
        Store::release_reservation(self, ns, key, owner)
    }
    fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        Store::outputs_of(self, exec_id)
    }
    fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        Store::events_of_execution(self, exec_id)
    }
    fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        Store::events_of_artifact(self, artifact_id)
    }
    fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        Store::put_contexts(self, contexts)
    }
    fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        Store::context(self, id, ns)
    }
    fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        Store::list_contexts(self, f, page_size, after)
    }
    fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        Store::list_executions(self, f, page_size, after)
    }
    fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        Store::list_artifacts(self, f, page_size, after)
    }
    fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
        Store::lineage(self, start, dirs, bounds)
    }
    fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        Store::invalidate(self, ns, selector)
    }
    fn count_entries(&self, ns: &str) -> Result<i64> {
        Store::count_entries(self, ns)
    }
    fn count_reservations(&self, ns: &str) -> Result<i64> {
        Store::count_reservations(self, ns)
    }
    fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        Store::reservations_by_namespace(self)
    }
    fn size_on_disk(&self) -> Result<u64> {
        Store::size_on_disk(self)
    }
    fn write_totals(&self) -> Option<crate::store::activity::WriteTotals> {
        Some(Store::write_totals(self))
    }
    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        Store::collect_garbage(self, ns)
    }
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        Store::prune(self, ns, older_than_ms, dry_run)
    }
    fn check(&self) -> Result<Integrity> {
        Store::check(self)
    }
    fn fill_hits_file(&self) -> Result<()> {
        Store::fill_hits_file(self)
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
}
