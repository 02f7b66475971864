//! The sled store as the server holds it: opened again in-process after a
//! write fault, so that the server recovers by itself when space returns.
//!
//! sled's first IO error is sticky: every later write fails until the
//! database is opened again. After such a fault (`Store::writable`) reads
//! go on from the faulted store while a thread of its own waits (1 s, then
//! up to every 5 s) until a file can be written and synced in the data dir,
//! then takes the store out (calls meanwhile answer UNAVAILABLE), waits for
//! in-flight calls to let go of it, drops it, and opens the data dir again:
//! writes applied in memory but never made durable are gone with it, and
//! the hits file and every other in-memory state are rebuilt as at start.
//! A flush stalled for long starts the same thread: if its probe fails with
//! an IO error, the disk is failing rather than slow, and the store takes
//! that as its fault (`Store::stalled_on`); if the stall ends, it stops.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::backend::{Backend, HitsTier};
use crate::clock::Clock;
use crate::domain::{
    ArtifactFilter, Claimed, ContextFilter, ExecutionFilter, ExecutionWrite, ExecutionWritten,
    LineageResult, Lookup, Page, Pruned, Selector,
};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::lineage::{Bounds, Dir, Node};
use crate::proto::{Artifact, Context, Event, Execution};
use crate::reservations::{Ask, Holder};
use crate::store::activity::WriteTotals;
use crate::store::{Store, StoreConfig};

/// How long a reopen waits for in-flight calls to let go of the old store
/// (a call stuck on a stalled disk: the reopen is tried again later).
const LET_GO: Duration = Duration::from_secs(10);

struct Inner {
    path: PathBuf,
    config: StoreConfig,
    clock: Arc<dyn Clock>,
    /// None while the store is being opened again.
    current: RwLock<Option<Arc<Store>>>,
    /// A recovery thread is running.
    recovering: AtomicBool,
    /// Set by `close`: recovery stops.
    closing: AtomicBool,
    /// The write totals of the stores opened before the current one.
    carried: Mutex<WriteTotals>,
}

/// The sled store, swapped for a newly opened one after a write fault.
pub struct Reopening {
    inner: Arc<Inner>,
}

impl Reopening {
    /// Holds `store`, opened from `path` with `config` and `clock`.
    pub fn new(
        store: Arc<Store>,
        path: PathBuf,
        config: StoreConfig,
        clock: Arc<dyn Clock>,
    ) -> Reopening {
        Reopening {
            inner: Arc::new(Inner {
                path,
                config,
                clock,
                current: RwLock::new(Some(store)),
                recovering: AtomicBool::new(false),
                closing: AtomicBool::new(false),
                carried: Mutex::default(),
            }),
        }
    }

    fn store(&self) -> Result<Arc<Store>> {
        self.inner.store()
    }

    /// The store open now (None while it is being opened again).
    pub fn current(&self) -> Option<Arc<Store>> {
        self.inner.store().ok()
    }

    /// Write totals since the server opened the store, across reopens.
    pub fn write_totals(&self) -> WriteTotals {
        let carried = self.inner.carried.lock().map(|c| *c).unwrap_or_default();
        let current = self.current().map(|s| s.write_totals()).unwrap_or_default();
        carried + current
    }

    /// Starts the recovery thread unless one runs.
    fn recover(&self) {
        if self.inner.recovering.swap(true, Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.clone();
        let spawned = std::thread::Builder::new()
            .name("stepcache-reopen".into())
            .spawn(move || {
                inner.recover();
                inner.recovering.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.inner.recovering.store(false, Ordering::SeqCst);
            tracing::error!("the store cannot recover by itself (restart the server): {e}");
        }
    }
}

impl Inner {
    fn store(&self) -> Result<Arc<Store>> {
        match self.current.read() {
            Ok(g) => g.clone().ok_or_else(|| {
                Error::Unavailable(
                    "the store is being opened again after a write fault: retry shortly".into(),
                )
            }),
            Err(_) => Err(Error::Internal("store handle poisoned".into())),
        }
    }

    fn swap(&self, store: Option<Arc<Store>>) -> Option<Arc<Store>> {
        match self.current.write() {
            Ok(mut g) => std::mem::replace(&mut *g, store),
            Err(mut e) => std::mem::replace(&mut **e.get_mut(), store),
        }
    }

    fn recover(&self) {
        let mut wait = Duration::from_secs(1);
        loop {
            let until = Instant::now() + wait;
            while Instant::now() < until {
                if self.closing.load(Ordering::SeqCst) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            wait = (wait * 2).min(Duration::from_secs(5));
            // On a disk that stalls, the probe waits as the flush does.
            if let Err(e) = probe_disk(&self.path) {
                tracing::debug!("the store's disk cannot be written yet: {e}");
                if let Ok(store) = self.store() {
                    store.stalled_on(e);
                }
                continue;
            }
            // A stall that ended by itself: nothing to open again.
            if self.store().is_ok_and(|s| s.writable().is_ok()) {
                return;
            }
            match self.reopen() {
                Ok(()) => {
                    tracing::info!(
                        "the store was opened again after its write fault: writes are accepted"
                    );
                    return;
                }
                Err(e) => tracing::warn!("opening the store again failed (tried again): {e}"),
            }
        }
    }

    /// Swaps the store for one newly opened from the data dir.
    fn reopen(&self) -> Result<()> {
        if let Some(old) = self.swap(None) {
            old.stop_background();
            let deadline = Instant::now() + LET_GO;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            if Arc::strong_count(&old) > 1 {
                self.swap(Some(old));
                return Err(Error::Unavailable(
                    "the store is still in use by a call (a stalled disk?)".into(),
                ));
            }
            if let Ok(mut carried) = self.carried.lock() {
                *carried = *carried + old.write_totals();
            }
            drop(old);
        }
        // sled's IO threads let go of the file lock a moment after the drop.
        let deadline = Instant::now() + LET_GO;
        let store = loop {
            match Store::open(&self.path, &self.config, self.clock.clone()) {
                Err(_) if Instant::now() < deadline && !self.closing.load(Ordering::SeqCst) => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                result => break result?,
            }
        };
        super::release_freed_memory();
        let store = Arc::new(store);
        Store::warm_in_background(&store);
        Store::watch_hits_in_background(&store);
        self.swap(Some(store));
        Ok(())
    }
}

/// Whether a file of 1 MiB can be written and synced in `dir` (removed again).
fn probe_disk(dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join("reopen-probe.tmp");
    let result = (|| {
        let mut f = std::fs::File::create(&path)?;
        f.write_all(&vec![0u8; 1 << 20])?;
        f.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result
}

// Every call goes to the store held now.
impl Backend for Reopening {
    fn kind(&self) -> &'static str {
        "sled"
    }
    fn now_ms(&self) -> i64 {
        self.inner.clock.now_ms()
    }
    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        Backend::execution(self.store()?.as_ref(), id, ns)
    }
    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        Backend::artifact(self.store()?.as_ref(), id, ns)
    }
    fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        Backend::put_artifacts(self.store()?.as_ref(), artifacts)
    }
    fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        Backend::put_execution(self.store()?.as_ref(), w)
    }
    fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
        Backend::put_executions(self.store()?.as_ref(), writes)
    }
    fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        Backend::record_cached(
            self.store()?.as_ref(),
            original,
            outputs,
            inputs,
            context_ids,
        )
    }
    fn lookup(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>) -> Result<Lookup> {
        Backend::lookup(self.store()?.as_ref(), ns, key, max_staleness_ms)
    }
    fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        Backend::lookup_or_claim(self.store()?.as_ref(), ns, key, max_staleness_ms, ask)
    }
    fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        Backend::reservation(self.store()?.as_ref(), ns, key)
    }
    fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder> {
        Backend::extend_reservation(self.store()?.as_ref(), ns, key, owner, lease_ms)
    }
    fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
        Backend::release_reservation(self.store()?.as_ref(), ns, key, owner)
    }
    fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        Backend::outputs_of(self.store()?.as_ref(), exec_id)
    }
    fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        Backend::events_of_execution(self.store()?.as_ref(), exec_id)
    }
    fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        Backend::events_of_artifact(self.store()?.as_ref(), artifact_id)
    }
    fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        Backend::put_contexts(self.store()?.as_ref(), contexts)
    }
    fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        Backend::context(self.store()?.as_ref(), id, ns)
    }
    fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        Backend::list_contexts(self.store()?.as_ref(), f, page_size, after)
    }
    fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        Backend::list_executions(self.store()?.as_ref(), f, page_size, after)
    }
    fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        Backend::list_artifacts(self.store()?.as_ref(), f, page_size, after)
    }
    fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
        Backend::lineage(self.store()?.as_ref(), start, dirs, bounds)
    }
    fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        Backend::invalidate(self.store()?.as_ref(), ns, selector)
    }
    fn count_entries(&self, ns: &str) -> Result<i64> {
        Backend::count_entries(self.store()?.as_ref(), ns)
    }
    fn count_reservations(&self, ns: &str) -> Result<i64> {
        Backend::count_reservations(self.store()?.as_ref(), ns)
    }
    fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        Backend::reservations_by_namespace(self.store()?.as_ref())
    }
    fn size_on_disk(&self) -> Result<u64> {
        Backend::size_on_disk(self.store()?.as_ref())
    }
    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        Backend::collect_garbage(self.store()?.as_ref(), ns)
    }
    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        Backend::prune(self.store()?.as_ref(), ns, older_than_ms, dry_run)
    }
    fn hits(&self) -> Option<&dyn HitsTier> {
        Some(self)
    }
    /// After a write fault, also starts the recovery (`Reopening`).
    fn writable(&self) -> Result<()> {
        let store = self.store()?;
        // A fault or a stall starts the recovery (which probes the disk).
        let writable = Backend::writable(store.as_ref());
        if writable.is_err() && !self.inner.closing.load(Ordering::SeqCst) {
            self.recover();
        }
        writable
    }
    fn close(self: Arc<Self>) -> Result<()> {
        self.inner.closing.store(true, Ordering::SeqCst);
        // A reopen running now lets go within `LET_GO`.
        let deadline = Instant::now() + LET_GO;
        while self.inner.recovering.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        match self.inner.swap(None) {
            Some(store) => Backend::close(store),
            None => Ok(()),
        }
    }
}

impl HitsTier for Reopening {
    fn lookup_hot(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        // No clone of the handle on this path: the read guard is enough.
        let g = self.inner.current.read().ok()?;
        HitsTier::lookup_hot(g.as_ref()?.as_ref(), ns, key, max_staleness_ms)
    }
    fn fill_hits_file(&self) -> Result<()> {
        HitsTier::fill_hits_file(self.store()?.as_ref())
    }
}
