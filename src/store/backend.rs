//! `Backend` on the sled store: every method is the store's own.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Store;
use crate::backend::{Backend, HitsTier};
use crate::domain::{
    not_found, ArtifactFilter, Claimed, ContextFilter, ExecutionFilter, ExecutionWrite,
    ExecutionWritten, LineageResult, Lookup, Page, Pruned, Selector,
};
use crate::error::Result;
use crate::key::CacheKey;
use crate::lineage::{Bounds, Dir, Node};
use crate::proto::{Artifact, Context, Event, Execution};
use crate::reservations::{Ask, Holder};

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
    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        Store::collect_garbage(self, ns)
    }
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        Store::prune(self, ns, older_than_ms, dry_run)
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
}

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
