//! `Backend` on the sled store: the store's own methods, with the reads
//! checked for writes not yet durable (`store::unflushed`) and maintenance
//! writes registered.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::unflushed::{Item, Writing};
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
    // Readers see durable writes only (`store::unflushed`): each answer is
    // checked after its reads; a record created by a write not yet durable
    // is not there yet, one touched by such a write is answered once a
    // flush after the read completes.
    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        let e = Store::execution(self, id, ns)?;
        durable_record(self, "execution", id, ns)?;
        Ok(e)
    }
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        let a = Store::artifact(self, id, ns)?;
        durable_record(self, "artifact", id, ns)?;
        Ok(a)
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
        let mut outputs = Store::outputs_of(self, exec_id)?;
        for arts in outputs.values_mut() {
            arts.retain(|a| !self.unflushed(a.id));
        }
        outputs.retain(|_, arts| !arts.is_empty());
        let ids = outputs.values().flatten().map(|a| a.id);
        self.settle(std::iter::once(exec_id).chain(ids).map(Item::Id))?;
        Ok(outputs)
    }
    fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        durable_events(self, Store::events_of_execution(self, exec_id)?)
    }
    fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        durable_events(self, Store::events_of_artifact(self, artifact_id)?)
    }
    fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        Store::put_contexts(self, contexts)
    }
    fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        let c = Store::context(self, id, ns)?;
        durable_record(self, "context", id, ns)?;
        Ok(c)
    }
    fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        let page = Store::list_contexts(self, f, page_size, after)?;
        durable_page(self, page, |c| c.id, None)
    }
    fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        let page = Store::list_executions(self, f, page_size, after)?;
        durable_page(self, page, |e| e.id, f.context_id)
    }
    fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        let page = Store::list_artifacts(self, f, page_size, after)?;
        durable_page(self, page, |a| a.id, f.context_id)
    }
    fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
        let found = Store::lineage(self, start, dirs, bounds)?;
        // Any write not yet durable: lineage waits for a flush (rare
        // enough not to check each node).
        self.settle([Item::All])?;
        Ok(found)
    }
    // Maintenance writes are kept from readers until durable: an
    // invalidation from lookups of its namespace, prune and garbage
    // collection from every reader.
    fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        let writing = Writing {
            created: Vec::new(),
            touched: vec![Item::namespace(ns)],
        };
        self.registered(&writing, || Store::invalidate(self, ns, selector))
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
        self.registered(&writing_all(), || Store::collect_garbage(self, ns))
    }
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        if dry_run {
            return Store::prune(self, ns, older_than_ms, dry_run);
        }
        self.registered(&writing_all(), || {
            Store::prune(self, ns, older_than_ms, dry_run)
        })
    }
    fn hits(&self) -> Option<&dyn HitsTier> {
        Some(self)
    }
    fn writable(&self) -> Result<()> {
        Store::writable(self)?;
        self.not_stalled()
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

/// A write that may touch anything (`store::unflushed`).
fn writing_all() -> Writing {
    Writing {
        created: Vec::new(),
        touched: vec![Item::All],
    }
}

/// After a read of record `id`: NOT_FOUND when a write not yet durable
/// created it; when one touched it, once a later flush completes.
fn durable_record(store: &Store, kind: &str, id: i64, ns: Option<&str>) -> Result<()> {
    if store.unflushed(id) {
        return Err(not_found(kind, id, ns));
    }
    store.settle([Item::Id(id)])
}

/// Events read: without those of records created by writes not yet
/// durable, once a later flush completes when such a write touched one.
fn durable_events(store: &Store, mut events: Vec<Event>) -> Result<Vec<Event>> {
    events.retain(|ev| !store.unflushed(ev.execution_id) && !store.unflushed(ev.artifact_id));
    let ids = events
        .iter()
        .flat_map(|ev| [ev.execution_id, ev.artifact_id]);
    store.settle(ids.map(Item::Id))?;
    Ok(events)
}

/// A page read: without records created by writes not yet durable, once a
/// later flush completes when such a write touched a record of the page or
/// the context it lists.
fn durable_page<T>(
    store: &Store,
    mut page: Page<T>,
    id: impl Fn(&T) -> i64,
    context_id: Option<i64>,
) -> Result<Page<T>> {
    page.items.retain(|r| !store.unflushed(id(r)));
    let ids = page.items.iter().map(&id).chain(context_id);
    store.settle(ids.map(Item::Id))?;
    Ok(page)
}
