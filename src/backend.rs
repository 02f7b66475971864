//! The storage seam: what the service, the metrics and the server ask of a
//! store, in the types of `domain`. Two implementations sit side by side:
//! the embedded sled `store::Store` (one replica; `store/backend.rs`) and
//! `pg::PgStore` (PostgreSQL, any number of replicas on one database;
//! `pg/backend.rs`).
//!
//! The trait is synchronous: handlers run every call off the async executor,
//! on the read or write thread pool (`service::Shared::run`, `pool`).
//! Abilities only one backend has are not part of it: the hits served from
//! memory are an optional capability (`HitsTier`); the rest the server wires
//! on the concrete store (`server::Opened`).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::domain::{
    ArtifactFilter, Claimed, ContextFilter, ExecutionFilter, ExecutionWrite, ExecutionWritten,
    LineageResult, Lookup, Page, Pruned, Selector,
};
use crate::error::Result;
use crate::key::CacheKey;
use crate::lineage::{Bounds, Dir, Node};
use crate::proto::{Artifact, Context, Event, Execution};
use crate::reservations::{Ask, Holder};

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
    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64>;
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned>;
    /// Flushes and stops background work; called at shutdown, with the last
    /// handle to the store.
    fn close(self: Arc<Self>) -> Result<()>;
    /// Ok while the store can make writes durable (health says SERVING);
    /// called every few seconds.
    fn writable(&self) -> Result<()> {
        Ok(())
    }
    /// Hits this backend serves from memory without asking the store (sled);
    /// None: every lookup asks the store.
    fn hits(&self) -> Option<&dyn HitsTier> {
        None
    }
}

/// Hits kept apart from the store, in memory and a hits file (sled's).
pub trait HitsTier: Send + Sync {
    /// A hit from memory without I/O (callable on the async executor); None
    /// means "ask the store".
    fn lookup_hot(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>)
        -> Option<Lookup>;
    /// Fills the hits file now if it is empty (see `Store::warm_hits`), for a
    /// benchmark that measures a settled server.
    fn fill_hits_file(&self) -> Result<()>;
}

impl dyn Backend {
    /// `HitsTier::fill_hits_file` when the backend has a hits tier.
    pub fn fill_hits_file(&self) -> Result<()> {
        self.hits().map_or(Ok(()), HitsTier::fill_hits_file)
    }
}

/// `impl Backend for $store`: the items given, and every other method
/// answered by the store's own method of the same name and signature (both
/// stores keep them so; see `store/backend.rs`, `pg/backend.rs`). The items
/// given see the types the trait speaks.
macro_rules! implement_backend {
    ($store:ty, { $($own:tt)* }) => {
        const _: () = {
            use std::collections::BTreeMap;

            use $crate::backend::Backend;
            use $crate::domain::{
                ArtifactFilter, Claimed, ContextFilter, ExecutionFilter, ExecutionWrite,
                ExecutionWritten, LineageResult, Lookup, Page, Pruned, Selector,
            };
            use $crate::error::Result;
            use $crate::key::CacheKey;
            use $crate::lineage::{Bounds, Dir, Node};
            use $crate::proto::{Artifact, Context, Event, Execution};
            use $crate::reservations::{Ask, Holder};

            impl Backend for $store {
                $($own)*

                fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
                    <$store>::put_artifacts(self, artifacts)
                }
                fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
                    <$store>::put_execution(self, w)
                }
                fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
                    <$store>::put_executions(self, writes)
                }
                fn record_cached(
                    &self,
                    original: &Execution,
                    outputs: &BTreeMap<String, Vec<Artifact>>,
                    inputs: &BTreeMap<String, Vec<i64>>,
                    context_ids: &[i64],
                ) -> Result<Execution> {
                    <$store>::record_cached(self, original, outputs, inputs, context_ids)
                }
                fn lookup(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>) -> Result<Lookup> {
                    <$store>::lookup(self, ns, key, max_staleness_ms)
                }
                fn lookup_or_claim(
                    &self,
                    ns: &str,
                    key: &CacheKey,
                    max_staleness_ms: Option<i64>,
                    ask: Option<&Ask>,
                ) -> Result<Claimed> {
                    <$store>::lookup_or_claim(self, ns, key, max_staleness_ms, ask)
                }
                fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
                    <$store>::reservation(self, ns, key)
                }
                fn extend_reservation(
                    &self,
                    ns: &str,
                    key: &CacheKey,
                    owner: &str,
                    lease_ms: i64,
                ) -> Result<Holder> {
                    <$store>::extend_reservation(self, ns, key, owner, lease_ms)
                }
                fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
                    <$store>::release_reservation(self, ns, key, owner)
                }
                fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
                    <$store>::outputs_of(self, exec_id)
                }
                fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
                    <$store>::events_of_execution(self, exec_id)
                }
                fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
                    <$store>::events_of_artifact(self, artifact_id)
                }
                fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
                    <$store>::put_contexts(self, contexts)
                }
                fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
                    <$store>::context(self, id, ns)
                }
                fn list_contexts(
                    &self,
                    f: &ContextFilter,
                    page_size: usize,
                    after: Option<i64>,
                ) -> Result<Page<Context>> {
                    <$store>::list_contexts(self, f, page_size, after)
                }
                fn list_executions(
                    &self,
                    f: &ExecutionFilter,
                    page_size: usize,
                    after: Option<i64>,
                ) -> Result<Page<Execution>> {
                    <$store>::list_executions(self, f, page_size, after)
                }
                fn list_artifacts(
                    &self,
                    f: &ArtifactFilter,
                    page_size: usize,
                    after: Option<i64>,
                ) -> Result<Page<Artifact>> {
                    <$store>::list_artifacts(self, f, page_size, after)
                }
                fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
                    <$store>::lineage(self, start, dirs, bounds)
                }
                fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
                    <$store>::invalidate(self, ns, selector)
                }
                fn count_entries(&self, ns: &str) -> Result<i64> {
                    <$store>::count_entries(self, ns)
                }
                fn count_reservations(&self, ns: &str) -> Result<i64> {
                    <$store>::count_reservations(self, ns)
                }
                fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
                    <$store>::reservations_by_namespace(self)
                }
                fn size_on_disk(&self) -> Result<u64> {
                    <$store>::size_on_disk(self)
                }
                fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
                    <$store>::collect_garbage(self, ns)
                }
                fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
                    <$store>::prune(self, ns, older_than_ms, dry_run)
                }
            }
        };
    };
}
pub(crate) use implement_backend;
