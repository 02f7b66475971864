//! `Backend` on PostgreSQL: every method is the store's own (`lookup`,
//! `write`, `query`, `maintenance`).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::PgStore;
use crate::backend::{Backend, HitsTier};
use crate::domain::{
    ArtifactFilter, Claimed, ContextFilter, ExecutionFilter, ExecutionWrite, ExecutionWritten,
    LineageResult, Lookup, Page, Pruned, Selector,
};
use crate::error::Result;
use crate::key::CacheKey;
use crate::lineage::{Bounds, Dir, Node};
use crate::proto::{Artifact, Context, Event, Execution};
use crate::reservations::{Ask, Holder};

impl Backend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }
    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        PgStore::execution(self, id, ns)
    }
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        PgStore::artifact(self, id, ns)
    }
    fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        PgStore::put_artifacts(self, artifacts)
    }
    fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        PgStore::put_execution(self, w)
    }
    fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
        PgStore::put_executions(self, writes)
    }
    fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        PgStore::record_cached(self, original, outputs, inputs, context_ids)
    }
    fn lookup(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>) -> Result<Lookup> {
        PgStore::lookup(self, ns, key, max_staleness_ms)
    }
    fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        PgStore::lookup_or_claim(self, ns, key, max_staleness_ms, ask)
    }
    fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        PgStore::reservation(self, ns, key)
    }
    fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder> {
        PgStore::extend_reservation(self, ns, key, owner, lease_ms)
    }
    fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
        PgStore::release_reservation(self, ns, key, owner)
    }
    fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        PgStore::outputs_of(self, exec_id)
    }
    fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        PgStore::events_of_execution(self, exec_id)
    }
    fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        PgStore::events_of_artifact(self, artifact_id)
    }
    fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        PgStore::put_contexts(self, contexts)
    }
    fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        PgStore::context(self, id, ns)
    }
    fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        PgStore::list_contexts(self, f, page_size, after)
    }
    fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        PgStore::list_executions(self, f, page_size, after)
    }
    fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        PgStore::list_artifacts(self, f, page_size, after)
    }
    fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
        PgStore::lineage(self, start, dirs, bounds)
    }
    fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        PgStore::invalidate(self, ns, selector)
    }
    fn count_entries(&self, ns: &str) -> Result<i64> {
        PgStore::count_entries(self, ns)
    }
    fn count_reservations(&self, ns: &str) -> Result<i64> {
        PgStore::count_reservations(self, ns)
    }
    fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        PgStore::reservations_by_namespace(self)
    }
    fn size_on_disk(&self) -> Result<u64> {
        PgStore::size_on_disk(self)
    }
    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        PgStore::collect_garbage(self, ns)
    }
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        PgStore::prune(self, ns, older_than_ms, dry_run)
    }
    fn hits(&self) -> Option<&dyn HitsTier> {
        self.hits.enabled().then_some(self as &dyn HitsTier)
    }
    fn close(self: Arc<Self>) -> Result<()> {
        self.stop_listener();
        self.leave();
        self.pool.clear();
        Ok(())
    }
}

impl HitsTier for PgStore {
    fn lookup_hot(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        self.hits
            .get(ns, key, self.clock.now_ms(), max_staleness_ms)
    }
    /// No hits file on PostgreSQL.
    fn fill_hits_file(&self) -> Result<()> {
        Ok(())
    }
}
