//! The embedded store on sled: artifacts, executions, events and the cache index,
//! all in one tree with prefixed keys (see `keys`). Every logical write is
//! atomic, one sled transaction (concurrent PutExecutions share one, each
//! still whole or absent: `combine`), followed by a group-committed flush;
//! calls block, so the service runs them on its read and write thread pools
//! (`crate::pool`).

pub(crate) mod activity;
mod backend;
pub mod backup;
mod combine;
mod commit;
mod entry;
mod events;
mod flush;
pub(crate) mod hitlog;
pub(crate) mod hot;
mod keys;
mod maintenance;
mod os;
mod query;
pub(crate) mod reopen;
mod tag_index;
mod tx;
mod unflushed;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use sled::transaction::ConflictableTransactionError;

use commit::Tx;
use events::NewEvents;

use crate::clock::{timestamp, timestamp_ms, Clock};
use crate::domain::replay;
use crate::domain::{
    self, check_execution_update, content_digest, create_ms, created_ms, decode, not_found,
    Claimed, ExecutionWrite, ExecutionWritten, Hit, Lookup, Named, Page,
};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::policy::{self, Candidate, Ineligible, Next, Scan};
use crate::proto::{Artifact, ArtifactState, Context, EventType, Execution, ExecutionState};
use crate::reservations::{self, Ask, Claim, Holder};
use flush::GroupFlush;

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

fn abort<T>(e: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

/// Storage settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache, in bytes (its real memory use runs above it).
    pub cache_capacity: u64,
    /// Hits kept in memory (the newest servable one per key); 0 = off.
    pub hot_hits: usize,
    /// The hits file's size limit in bytes (`hitlog`); 0 = no hits file.
    pub hit_log_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_capacity: 32 * 1024 * 1024,
            hot_hits: 20_000,
            hit_log_bytes: 2 << 30,
        }
    }
}

/// Stripes of the lock that orders lookups-that-reserve against publishes.
/// A PutExecution holds its key's stripe until its batch is applied: with
/// few stripes, concurrent writers often find theirs held by another and
/// wait a batch longer (smaller batches, fewer puts). 4096 stripes cost
/// 16 KiB.
const KEY_LOCKS: usize = 4096;

/// sled generator values fetched at once (see `Store::allocate`).
const ID_BLOCK: usize = 64;

/// The state of ID allocation.
#[derive(Default)]
struct IdGen {
    /// The creation time of the last allocated ID; None until the newest
    /// stored record's is read (at the first allocation after an open or an
    /// import).
    last_ms: Option<i64>,
    /// `keys::META_ID_FLOOR`, once read.
    floor: Option<u64>,
    /// Values of sled's generator fetched and not handed out yet, ascending.
    block: std::collections::VecDeque<u64>,
}

/// IDs allocated for one write, with the creation time that goes with them.
#[derive(Debug, Clone)]
struct Alloc {
    now: i64,
    ids: Vec<i64>,
}

/// Hands out the IDs of an `Alloc` inside a transaction (a retried
/// transaction starts over with a fresh `Ids`).
struct Ids<'a> {
    ids: &'a [i64],
    next: usize,
}

impl<'a> Ids<'a> {
    fn of(a: &'a Alloc) -> Self {
        Ids {
            ids: &a.ids,
            next: 0,
        }
    }
    fn take(&mut self) -> TxResult<i64> {
        let id = self.ids.get(self.next).copied();
        self.next += 1;
        id.ok_or_else(|| {
            ConflictableTransactionError::Abort(Error::Internal(
                "a write needed more IDs than it allocated".into(),
            ))
        })
    }
}

/// What judges every entry of one lookup.
struct Judge<'a> {
    ns: &'a str,
    key: &'a CacheKey,
    max_staleness_ms: Option<i64>,
    now: i64,
    generation: hot::Generation,
    prefix: Vec<u8>,
    /// A hit goes into the memory tier of the hot cache too (not when warming).
    memory: bool,
}

pub struct Store {
    /// The data dir, for the checkpoint at `close`.
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    flush: GroupFlush,
    /// Batches and flushes, for the metrics endpoint.
    activity: Arc<activity::WriteActivity>,
    clock: Arc<dyn Clock>,
    /// Held (by key stripe) around "look up, then reserve" and around each write
    /// that publishes or releases, so that a reservation is never granted for a
    /// key whose result was published after the lookup saw nothing.
    key_locks: Vec<Mutex<()>>,
    hot: hot::HotHits,
    /// Applies concurrent PutExecution writes in shared transactions, on a
    /// thread of its own (`combine`).
    writes: combine::Applier<PendingWrite, (Written, commit::Stale)>,
    /// IDs and creation times are allocated together under this lock, so
    /// that ID order is creation order.
    ids: Mutex<IdGen>,
    /// PutExecutions applied and not yet durable, kept from readers.
    unflushed: unflushed::Unflushed,
    /// The first failed flush: sled fails every later write until the store
    /// is opened again (and a flush may then block), so writes fail at once.
    write_fault: Mutex<Option<(tonic::Code, String)>>,
    /// Set before a close: background work stops (`warm_hits`).
    stopping: std::sync::atomic::AtomicBool,
}

impl Store {
    pub fn open(path: &Path, config: &StoreConfig, clock: Arc<dyn Clock>) -> Result<Store> {
        if path.join(backup::IMPORT_MARKER).exists() {
            return Err(Error::FailedPrecondition(format!(
                "an import into {} is running or did not complete (killed?): the store \
                 in it is partial. Run `stepcache import` into it again (it starts over) \
                 or remove the directory",
                path.display()
            )));
        }
        Self::open_unchecked(path, config, clock)
    }

    /// `open` without refusing a partial import (for `import` itself).
    fn open_unchecked(path: &Path, config: &StoreConfig, clock: Arc<dyn Clock>) -> Result<Store> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity)
            .open()
            .map_err(|e| {
                if lock_busy(&e) {
                    return Error::Unavailable(format!(
                        "the store at {} is in use by another process (a running \
                         stepcache server?): stop it first",
                        path.display()
                    ));
                }
                // A disk that is full or cannot be written: nothing says the
                // data is damaged.
                if let sled::Error::Io(io) = &e {
                    if crate::error::disk_fault(io).is_some() {
                        return Error::Unavailable(format!(
                            "cannot open the store at {}: {io}. Free space or fix the \
                             disk, then start the server again",
                            path.display()
                        ));
                    }
                }
                Error::Storage(format!(
                    "cannot open the store at {}: {e}. If the data is corrupt, stop the \
                     server, move the directory aside and restore it from a backup \
                     (stepcache import); stepcache will not serve from a damaged store",
                    path.display()
                ))
            })?;
        let tree = db.open_tree("stepcache")?;
        let hot = hot::HotHits::new(config.hot_hits, open_hit_log(path, &tree, config)?);
        let activity = Arc::new(activity::WriteActivity::default());
        let writes = {
            let (tree, activity) = (tree.clone(), activity.clone());
            combine::Applier::spawn("stepcache-apply", WRITE_BATCH, move |batch| {
                let started = std::time::Instant::now();
                let written = commit::transactions(&tree, &batch);
                activity.batch(batch.len(), started.elapsed());
                written
            })
            .map_err(|e| Error::Storage(format!("cannot start the write thread: {e}")))?
        };
        Ok(Store {
            path: path.to_path_buf(),
            db,
            tree,
            flush: GroupFlush::default(),
            activity,
            clock,
            key_locks: (0..KEY_LOCKS).map(|_| Mutex::new(())).collect(),
            hot,
            writes,
            ids: Mutex::new(IdGen::default()),
            unflushed: Default::default(),
            write_fault: Mutex::new(None),
            stopping: Default::default(),
        })
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// `n` new IDs and the creation time of the records they name: never
    /// earlier than that of any ID allocated before (a clock that steps back
    /// stamps the last time again), so that a created-time range is an ID range.
    fn allocate(&self, n: usize) -> Result<Alloc> {
        self.writable()?;
        let mut g = self.id_gen()?;
        let last = match g.last_ms {
            Some(ms) => ms,
            None => self.newest_create_ms()?,
        };
        let clock = self.now_ms();
        // A last time far ahead of the clock was stamped while the clock ran
        // ahead (a glitch): carried forward, it would stamp every record
        // after it with that time, and keep them young, for as long.
        let now = if last > clock.saturating_add(crate::policy::FUTURE_TOLERANCE_MS) {
            tracing::warn!(
                last_ms = last,
                clock_ms = clock,
                "the newest record's creation time is ahead of the clock; \
                 new records take the clock's time"
            );
            clock
        } else {
            clock.max(last)
        };
        g.last_ms = Some(now);
        // Above the floor an import left (a restored store has a fresh generator).
        let floor = match g.floor {
            Some(f) => f,
            None => {
                let f = match self.tree.get(keys::META_ID_FLOOR)? {
                    Some(v) => keys::read_u64(&v, 0)?,
                    None => 0,
                };
                g.floor = Some(f);
                f
            }
        };
        // sled's generator is read in blocks: each call waits for a running
        // transaction (sled's lock), which would keep writers from queueing
        // for the next batch while one is applied.
        if g.block.len() < n {
            for _ in 0..n.max(ID_BLOCK) {
                let id = self.db.generate_id()?;
                g.block.push_back(id);
            }
        }
        // sled's IDs start at 0 and are monotonic across restarts; ours start at 1.
        let ids = g
            .block
            .drain(..n)
            .map(|id| i64::try_from(floor.saturating_add(id).saturating_add(1)).unwrap_or(i64::MAX))
            .collect();
        Ok(Alloc { now, ids })
    }

    /// After an import moved the ID floor (and brought records created
    /// later than any here, perhaps).
    fn reload_id_floor(&self) -> Result<()> {
        let mut g = self.id_gen()?;
        g.floor = None;
        g.last_ms = None;
        Ok(())
    }

    /// The creation time of the newest stored record (0 in an empty store): a
    /// clock that stepped back while the server was down must not stamp new
    /// IDs earlier than the IDs before them.
    fn newest_create_ms(&self) -> Result<i64> {
        let mut newest = 0;
        for kind in [keys::EXECUTION, keys::ARTIFACT, keys::CONTEXT] {
            if let Some((_, v)) = self.record_at_most(kind, i64::MAX)? {
                newest = newest.max(record_create_ms(kind, &v)?);
            }
        }
        Ok(newest)
    }

    /// The record of the largest ID at or below `at_most` of one kind
    /// (`keys::record`), with that ID.
    fn record_at_most(&self, kind: u8, at_most: i64) -> Result<Option<(i64, sled::IVec)>> {
        if at_most < 1 {
            return Ok(None);
        }
        match self.tree.range(..=keys::record(kind, at_most)).next_back() {
            Some(item) => {
                let (k, v) = item?;
                match (k.first(), k.len()) {
                    (Some(p), keys::RECORD_KEY_LEN) if *p == kind => {
                        Ok(Some((keys::id_suffix(&k)?, v)))
                    }
                    _ => Ok(None),
                }
            }
            None => Ok(None),
        }
    }

    fn id_gen(&self) -> Result<MutexGuard<'_, IdGen>> {
        self.ids
            .lock()
            .map_err(|_| Error::Internal("ID allocation lock poisoned".into()))
    }

    fn key_lock(&self, key: &CacheKey) -> Result<MutexGuard<'_, ()>> {
        let i = usize::from(u16::from_le_bytes([key.as_bytes()[0], key.as_bytes()[1]])) % KEY_LOCKS;
        self.key_locks
            .get(i)
            .ok_or_else(|| Error::Internal("key lock out of range".into()))?
            .lock()
            .map_err(|_| Error::Internal("key lock poisoned".into()))
    }

    /// Blocks until every write applied so far is on disk.
    /// An error once a flush has failed: sled fails every write after its
    /// first IO error until the store is opened again, so writes fail at
    /// once instead of waiting on flushes that cannot complete.
    pub fn writable(&self) -> Result<()> {
        match self.write_fault.lock().as_deref() {
            Ok(None) => Ok(()),
            Ok(Some((code, msg))) => Err(match code {
                tonic::Code::ResourceExhausted => Error::ResourceExhausted(msg.clone()),
                tonic::Code::Unavailable => Error::Unavailable(msg.clone()),
                _ => Error::Storage(msg.clone()),
            }),
            Err(_) => Err(Error::Internal("write fault state poisoned".into())),
        }
    }

    pub fn durable(&self) -> Result<()> {
        self.writable()?;
        self.flush
            .wait_durable(|| {
                let started = std::time::Instant::now();
                self.db.flush()?;
                self.activity.flush(started.elapsed());
                Ok(())
            })
            .inspect_err(|e| self.record_fault(e))
    }

    /// Remembers the first failed write of sled (`writable`), and marks sled
    /// failed if it is not yet: a write that failed may leave a flush
    /// waiting for a log position that never becomes stable, which then
    /// returns the error (and so does the drop before the store is opened
    /// again, `reopen`).
    fn record_fault(&self, e: &Error) {
        let kind = match e.code() {
            tonic::Code::ResourceExhausted => std::io::ErrorKind::StorageFull,
            _ => std::io::ErrorKind::Other,
        };
        self.db.poison(std::io::Error::new(kind, e.to_string()));
        if let Ok(mut fault) = self.write_fault.lock() {
            let message = match e {
                Error::Storage(m) => {
                    format!(
                        "the store cannot write ({m}): fix the disk; writes resume by themselves"
                    )
                }
                other => other.to_string(),
            };
            fault.get_or_insert((e.code(), message));
        }
    }

    /// Runs a write that registers `w` before it applies anything and keeps
    /// it registered until `write` (which ends with `durable`) returns: kept
    /// from readers until then (`unflushed`), for good when it fails in
    /// storage (until the store is opened again).
    pub(crate) fn registered<T>(
        &self,
        w: &unflushed::Writing,
        write: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.unflushed.add(w);
        let result = write();
        self.settled(w, result.as_ref().err());
        result
    }

    /// A registered write returned: unregistered, unless it failed in
    /// storage (it may be applied in memory), which is then the store's fault.
    fn settled(&self, w: &unflushed::Writing, error: Option<&Error>) {
        match error {
            Some(e) if storage_fault(e) => self.record_fault(e),
            _ => self.unflushed.remove(w),
        }
    }

    /// For a reader, after its reads: when a write not yet durable touches
    /// `items`, waits for a flush that began after the reads (its error when
    /// it fails), so that the answer holds only durable writes.
    pub fn settle(&self, items: impl IntoIterator<Item = unflushed::Item>) -> Result<()> {
        if self.unflushed.touched(items) {
            self.durable()?;
        }
        Ok(())
    }

    /// Whether record `id` was created by a write not yet durable: readers
    /// answer as if it did not exist.
    pub fn unflushed(&self, id: i64) -> bool {
        self.unflushed.created(id)
    }

    fn get<M: Message + Default>(&self, key: &[u8]) -> Result<Option<M>> {
        self.tree.get(key)?.map(|v| decode(&v)).transpose()
    }

    /// An execution of the namespace (any namespace when `ns` is None).
    pub fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        match self.get::<Execution>(&keys::execution(id))? {
            Some(e) if ns.is_none_or(|ns| e.namespace == ns) => Ok(e),
            _ => Err(not_found("execution", id, ns)),
        }
    }

    pub fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        match self.get::<Artifact>(&keys::artifact(id))? {
            Some(a) if ns.is_none_or(|ns| a.namespace == ns) => Ok(a),
            _ => Err(not_found("artifact", id, ns)),
        }
    }

    /// Creates (id 0) or updates artifacts, all or none.
    pub fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        let alloc = self.allocate(artifacts.iter().filter(|a| a.id == 0).count())?;
        // The executions that output each updated artifact: a hit record may
        // hold a copy of it (see `entry`).
        let producers = artifacts
            .iter()
            .map(|a| match a.id {
                0 => Ok(Vec::new()),
                id => self.producers_of(id),
            })
            .collect::<Result<Vec<_>>>()?;
        // The updated artifacts, and the hits of their producers.
        let touched = artifacts
            .iter()
            .map(|a| a.id)
            .filter(|id| *id != 0)
            .chain(producers.iter().flatten().copied())
            .map(unflushed::Item::Id)
            .collect();
        let writing = unflushed::Writing {
            created: alloc.ids.clone(),
            touched,
        };
        self.registered(&writing, || {
            let ids = self.commit(|tx| {
                let mut pool = Ids::of(&alloc);
                let mut ids = Vec::with_capacity(artifacts.len());
                for (i, (a, producers)) in artifacts.iter().zip(&producers).enumerate() {
                    let field = format!("artifacts[{i}]");
                    let (id, written) =
                        put_artifact_tx(tx, a.clone(), alloc.now, &field, &mut pool)?;
                    if let (Some(written), false) = (written, producers.is_empty()) {
                        refresh_copies_tx(tx, &written, producers)?;
                    }
                    ids.push(id);
                }
                Ok(ids)
            })?;
            self.durable()?;
            Ok(ids)
        })
    }

    /// One atomic write: new output artifacts, the execution, its events and the
    /// cache-index entry when it completes (unless `skip_publish`).
    /// Releases the key's reservation as `reservations::released_by_write` says.
    pub fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        match self.put_execution_unsynced(w)? {
            (Written::New(written), writing) => {
                let durable = self.durable();
                self.settled(&writing, durable.as_ref().err());
                durable?;
                self.flushed(&w.execution.namespace, &written);
                Ok(written)
            }
            (Written::Replayed(id), _) => self.replay(id, w),
        }
    }

    /// Bulk loading (benchmarks, imports): each write is its own atomic
    /// transaction as in `put_execution`, and one flush makes them all durable.
    pub fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
        let mut out = Vec::with_capacity(writes.len());
        let mut replayed = Vec::new();
        let mut failed = None;
        let mut registered = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            match self.put_execution_unsynced(w) {
                Ok((Written::New(written), writing)) => {
                    registered.push(writing);
                    out.push(Some(written))
                }
                Ok((Written::Replayed(id), _)) => {
                    out.push(None);
                    replayed.push((i, id));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The writes before a failed one stay written: durable, then seen.
        let durable = self.durable();
        for writing in &registered {
            self.settled(writing, durable.as_ref().err());
        }
        durable?;
        for (w, written) in writes.iter().zip(&out) {
            if let Some(written) = written {
                self.flushed(&w.execution.namespace, written);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for (i, id) in replayed {
            if let (Some(slot), Some(w)) = (out.get_mut(i), writes.get(i)) {
                *slot = Some(self.replay(id, w)?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Applies one PutExecution, registered (`unflushed`) until the caller
    /// has made it durable and passes its registration to `settled`.
    fn put_execution_unsynced(&self, w: &ExecutionWrite) -> Result<(Written, unflushed::Writing)> {
        // An update may leave the interface out: its key is the stored one.
        let stored = match w.execution.id {
            0 => None,
            id => self.get::<Execution>(&keys::execution(id))?,
        };
        let lock_key = match w.key {
            Some(k) => Some(k),
            None => stored
                .as_ref()
                .and_then(|e| e.cache_key.parse::<CacheKey>().ok()),
        };
        // An update that adds contexts attributes the outputs recorded before;
        // the transaction checks that each still exists.
        let earlier_outputs = match (&stored, w.context_ids.is_empty()) {
            (Some(e), false) => self
                .events_of_execution(e.id)?
                .into_iter()
                .filter(|ev| ev.r#type == EventType::Output as i32)
                .map(|ev| ev.artifact_id)
                .collect(),
            _ => Vec::new(),
        };
        let _guard = lock_key.as_ref().map(|k| self.key_lock(k)).transpose()?;
        let needed =
            usize::from(w.execution.id == 0) + w.outputs.iter().filter(|(_, a)| a.id == 0).count();
        let alloc = self.allocate(needed)?;
        // Kept from readers from before it is applied until it is durable:
        // what it creates, the execution it updates, the contexts it
        // associates with, the reservation it releases.
        let touched = (w.execution.id != 0)
            .then_some(w.execution.id)
            .into_iter()
            .chain(w.context_ids.iter().copied())
            .map(unflushed::Item::Id)
            .chain(
                lock_key
                    .as_ref()
                    .map(|k| unflushed::Item::key(&w.execution.namespace, k)),
            )
            .collect();
        let writing = unflushed::Writing {
            created: alloc.ids.clone(),
            touched,
        };
        self.unflushed.add(&writing);
        let pending = PendingWrite {
            write: w.clone(),
            alloc,
            earlier_outputs,
        };
        let written = self.submit(pending);
        // A write refused (a missing input, ...) or replayed applied
        // nothing; one that failed in sled may be applied in memory and
        // stays registered.
        match &written {
            Ok(Written::New(_)) => {}
            Ok(Written::Replayed(_)) => self.unflushed.remove(&writing),
            Err(e) => self.settled(&writing, Some(e)),
        }
        Ok((written?, writing))
    }

    /// The answer to a retried PutExecution: the original's IDs, nothing written.
    fn replay(&self, id: i64, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        let exec = self.execution(id, None)?;
        let events = self.events_of_execution(id)?;
        // The original was acknowledged only once durable; a retry may race it.
        self.durable()?;
        replay::replayed(exec, events, w)
    }

    /// Records that a lookup was served from `original`: a CACHED execution with
    /// the same interface and OUTPUT events to the same artifacts.
    /// It records INPUT events to `inputs` (the inputs of the task that looked
    /// the key up) and is associated with `context_ids` (the run that looked
    /// it up), which attributes its inputs and outputs too.
    pub fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        let alloc = self.allocate(1)?;
        let writing = unflushed::Writing {
            created: alloc.ids.clone(),
            touched: context_ids
                .iter()
                .copied()
                .map(unflushed::Item::Id)
                .collect(),
        };
        self.registered(&writing, || {
            self.record_cached_tx(&alloc, original, outputs, inputs, context_ids)
        })
    }

    fn record_cached_tx(
        &self,
        alloc: &Alloc,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        let now = alloc.now;
        let ns = original.namespace.as_str();
        let exec = self.commit(|tx| {
            let id = Ids::of(alloc).take()?;
            let exec = Execution {
                id,
                namespace: original.namespace.clone(),
                external_id: String::new(),
                interface: original.interface.clone(),
                cache_key: original.cache_key.clone(),
                state: ExecutionState::Cached as i32,
                output_parameters: original.output_parameters.clone(),
                cached_from_execution_id: original.id,
                cache_ttl: None,
                properties: BTreeMap::new(),
                create_time: Some(timestamp(now)),
                update_time: Some(timestamp(now)),
            };
            insert_new_execution_tx(tx, &exec, now)?;
            let mut events = NewEvents::new(exec.id, now);
            let mut members = Vec::new();
            for (name, ids) in inputs {
                for (i, id) in ids.iter().enumerate() {
                    let a: Option<Artifact> = tx_get(tx, &keys::artifact(*id))?;
                    if a.is_none_or(|a| a.namespace != ns) {
                        return abort(not_found(
                            &format!("interface.input_artifacts.{name}: artifact"),
                            *id,
                            Some(ns),
                        ));
                    }
                    events.add(tx, *id, EventType::Input, name, i)?;
                    members.push(*id);
                }
            }
            for (name, arts) in outputs {
                for (i, a) in arts.iter().enumerate() {
                    events.add(tx, a.id, EventType::Output, name, i)?;
                    members.push(a.id);
                }
            }
            events.write(tx)?;
            associate_tx(tx, ns, context_ids, exec.id, &members)?;
            Ok(exec)
        })?;
        self.durable()?;
        Ok(exec)
    }

    /// The newest servable COMPLETE execution of (namespace, key).
    pub fn lookup(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        let found = self.lookup_entries(ns, key, max_staleness_ms)?;
        // An invalidation not yet durable (`unflushed`).
        self.settle([unflushed::Item::namespace(ns)])?;
        Ok(found)
    }

    fn lookup_entries(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        let now = self.now_ms();
        if let Some(hit) = self.hot.get_stored(ns, key, now, max_staleness_ms) {
            return Ok(Lookup::Hit(Hit::Encoded(hit.into_fields())));
        }
        let judge = Judge {
            ns,
            key,
            max_staleness_ms,
            now,
            generation: self.hot.generation(ns, key),
            prefix: keys::cache_prefix(ns, key),
            memory: true,
        };
        // Most lookups are answered by the newest entry alone, read without
        // adding its leaf to sled's cache (vendored sled, change 12).
        let mut scan = Scan::default();
        let newest = match self.tree.first_at_or_after(&judge.prefix)? {
            Some((k, _)) if !k.starts_with(&judge.prefix) => {
                return Ok(Lookup::Miss {
                    reason: scan.miss_reason(),
                })
            }
            Some((k, v)) => match self.judge(&judge, &k, v, true)? {
                Ok(hit) => return Ok(Lookup::Hit(hit)),
                Err(why) => Some((k, why)),
            },
            None => None,
        };
        for item in self.tree.scan_prefix(&judge.prefix) {
            let (k, v) = item?;
            // The newest entry, when the short way judged it already.
            let judged = match &newest {
                Some((newest_k, why)) if *newest_k == k => Err(*why),
                _ => self.judge(&judge, &k, v, scan.at_newest())?,
            };
            match (
                scan.next(judged.as_ref().map(|_| ()).map_err(|why| *why)),
                judged,
            ) {
                (Next::Serve, Ok(hit)) => return Ok(Lookup::Hit(hit)),
                (Next::Stop, _) => break,
                _ => {}
            }
        }
        Ok(Lookup::Miss {
            reason: scan.miss_reason(),
        })
    }

    /// One cache entry `(k, v)` of a lookup: its hit, or why it may not be
    /// served. The newest entry's hit, when it is one whole record, goes
    /// into the hot cache: it is what every lookup of the key would serve.
    fn judge(
        &self,
        j: &Judge,
        k: &[u8],
        v: sled::IVec,
        newest: bool,
    ) -> Result<std::result::Result<Hit, Ineligible>> {
        let (completed_ms, exec_id) = keys::parse_cache_suffix(&k[j.prefix.len()..])?;
        if self.unflushed.created(exec_id) {
            return Ok(Err(Ineligible::Unflushed));
        }
        let invalidated = entry::is_invalidated(&v);
        // A record with a copy of every output is the whole answer, served
        // as its bytes; the hot cache keeps only such answers.
        let (hit, cache_ttl, outputs_live, whole) = match entry::encoded_hit(v.clone())? {
            Some(e) if e.execution_id == exec_id && e.namespace == j.ns => {
                (Hit::Encoded(e.fields), e.cache_ttl, e.outputs_live, true)
            }
            _ => {
                let (execution, outputs) = self.hit_read_out(j.ns, exec_id, &v)?;
                let live = outputs
                    .values()
                    .flatten()
                    .all(|a| a.state == ArtifactState::Live as i32);
                let ttl = execution.cache_ttl;
                let execution = Box::new(execution);
                (Hit::Decoded { execution, outputs }, ttl, live, false)
            }
        };
        let candidate = Candidate {
            completed_ms,
            ttl_ms: policy::duration_ms(cache_ttl.as_ref(), "cache_ttl")
                .ok()
                .flatten(),
            outputs_live,
            invalidated,
        };
        // After every read of this entry: a write not yet durable that
        // touched the execution or its outputs (`unflushed`).
        if self.unflushed.pending() {
            let outputs = match &hit {
                Hit::Decoded { outputs, .. } => outputs.values().flatten().map(|a| a.id).collect(),
                Hit::Encoded(_) => Vec::new(),
            };
            let touched = std::iter::once(exec_id).chain(outputs);
            self.settle(touched.map(unflushed::Item::Id))?;
        }
        if let Err(why) = policy::eligibility(&candidate, j.now, j.max_staleness_ms) {
            return Ok(Err(why));
        }
        if let (true, true, Hit::Encoded(fields)) = (newest, whole, &hit) {
            let hot = hot::HotHit {
                completed_ms,
                ttl_ms: candidate.ttl_ms,
                fields: fields.clone(),
            };
            self.hot.insert(j.generation, j.ns, j.key, hot, j.memory);
        }
        Ok(Ok(hit))
    }

    /// Puts the newest hit of up to `max_keys` keys into the hits file,
    /// from the cache index entry after `after` on; returns where to go on,
    /// None when done. For a hits file that starts empty (after a crash): it
    /// fills at the cost of reading the cache index once, instead of one
    /// lookup of each key at a time.
    fn warm_hits(&self, after: Option<&[u8]>, max_keys: usize) -> Result<Option<Vec<u8>>> {
        let start = match after {
            Some(k) => std::ops::Bound::Excluded(k.to_vec()),
            None => std::ops::Bound::Included(vec![keys::CACHE]),
        };
        let end = std::ops::Bound::Excluded(vec![keys::CACHE + 1]);
        let mut done = 0;
        let mut last: Option<(String, CacheKey)> = None;
        for item in self.tree.range::<Vec<u8>, _>((start, end)) {
            let (k, _) = item?;
            let (key, _, _) = keys::parse_cache_entry(&k)?;
            let ns = keys::namespace_of(&k)?;
            // Entries of one key come together, the newest first.
            if last.as_ref().is_none_or(|(n, l)| n != ns || *l != key) {
                if !self.hot.has_stored(ns, &key) {
                    self.warm_one(ns, &key)?;
                }
                done += 1;
                last = Some((ns.to_string(), key));
            }
            if done >= max_keys {
                return Ok(Some(k.to_vec()));
            }
        }
        Ok(None)
    }

    /// The newest entry of (ns, key) into the hits file, if servable.
    fn warm_one(&self, ns: &str, key: &CacheKey) -> Result<()> {
        let judge = Judge {
            ns,
            key,
            max_staleness_ms: None,
            now: self.now_ms(),
            generation: self.hot.generation(ns, key),
            prefix: keys::cache_prefix(ns, key),
            memory: false,
        };
        if let Some((k, v)) = self.tree.first_at_or_after(&judge.prefix)? {
            if k.starts_with(&judge.prefix) {
                // Ineligible (invalidated, expired): nothing to keep.
                let _hit_or_why = self.judge(&judge, &k, v, true)?;
            }
        }
        Ok(())
    }

    /// Fills a hits file that opened empty (after a crash, or on a store
    /// written before there was one) on a thread of its own at the lowest
    /// CPU priority, `chunk` keys at a time; it holds the store only while a
    /// chunk runs, and `stop_background` ends it.
    pub fn warm_in_background(store: &Arc<Store>) {
        if !store.hot.needs_filling() {
            return;
        }
        let since = store.hot.clears();
        let weak = Arc::downgrade(store);
        let spawned = std::thread::Builder::new()
            .name("stepcache-warm".into())
            .spawn(move || {
                os::lower_thread_priority();
                let started = std::time::Instant::now();
                let mut at: Option<Vec<u8>> = None;
                loop {
                    let Some(store) = weak.upgrade() else {
                        return;
                    };
                    if store.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    match store.warm_hits(at.as_deref(), 256) {
                        Ok(Some(next)) => at = Some(next),
                        Ok(None) => {
                            store.hot.filled(since);
                            tracing::info!(
                                hits = store.hot.stored_len(),
                                seconds = started.elapsed().as_secs_f64(),
                                "hits file filled from the cache index"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("filling the hits file stopped: {e}");
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("the hits file is filled by lookups only: {e}");
        }
    }

    /// Once a second, marks again which pages of the hits file the page
    /// cache holds (`HotHits::refresh_resident`): a page the kernel dropped
    /// is then read with `preadv2` on the async threads, never through the
    /// mapping, where it would wait for the disk. A mark can be at most this
    /// old; `mincore` of a 1M-hit file (~64k pages) takes well under a
    /// millisecond.
    pub fn watch_hits_in_background(store: &Arc<Store>) {
        const EVERY: std::time::Duration = std::time::Duration::from_secs(1);
        let weak = Arc::downgrade(store);
        let spawned = std::thread::Builder::new()
            .name("stepcache-hits-watch".into())
            .spawn(move || loop {
                std::thread::sleep(EVERY);
                let Some(store) = weak.upgrade() else {
                    return;
                };
                if store.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                store.hot.refresh_resident();
            });
        if let Err(e) = spawned {
            tracing::warn!("the hits file's pages are not watched: {e}");
        }
    }

    /// As `warm_in_background`, on this thread, to the end.
    pub fn fill_hits_file(&self) -> Result<()> {
        if !self.hot.needs_filling() {
            return Ok(());
        }
        let since = self.hot.clears();
        let mut at = None;
        while let Some(next) = self.warm_hits(at.as_deref(), 4096)? {
            at = Some(next);
        }
        self.hot.filled(since);
        Ok(())
    }

    /// Asks background work (`warm_in_background`) to stop, before a close.
    pub fn stop_background(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A hit from memory, or from the hits file when the page cache holds
    /// its record, without touching sled or waiting for the disk (so
    /// callable on the async executor); None means "ask the store".
    pub fn lookup_hot(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        let now = self.now_ms();
        let hit = self.hot.get(ns, key, now, max_staleness_ms)?;
        Some(Lookup::Hit(Hit::Encoded(hit.into_fields())))
    }

    /// A hit that is not one whole record: the record's execution with its
    /// outputs read, or (no record, or another execution's) both read.
    fn hit_read_out(
        &self,
        ns: &str,
        exec_id: i64,
        v: &[u8],
    ) -> Result<(Execution, domain::Outputs)> {
        let rec = match entry::record(v)? {
            Some(rec)
                if rec
                    .execution
                    .as_ref()
                    .is_some_and(|e| e.id == exec_id && e.namespace == ns) =>
            {
                rec
            }
            _ => {
                return Ok((
                    self.execution(exec_id, Some(ns))?,
                    self.outputs_of(exec_id)?,
                ))
            }
        };
        let outputs = rec
            .outputs
            .iter()
            .map(|o| {
                let arts = o
                    .artifact_ids
                    .iter()
                    .map(|id| self.artifact(*id, None))
                    .collect::<Result<Vec<_>>>()?;
                Ok((o.name.clone(), arts))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok((rec.execution.unwrap_or_default(), outputs))
    }

    /// Looks the key up; on a miss settles its reservation in one step that no
    /// publish of the key can interleave with: granted to `ask` (durably) when
    /// nobody else holds it, else the holder; `Miss` when nobody holds it and
    /// there is no `ask`.
    pub fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        // Hits need no lock.
        if let Lookup::Hit(hit) = self.lookup(ns, key, max_staleness_ms)? {
            return Ok(Claimed::Hit(hit));
        }
        let writing = Self::writing_reservation(ns, key);
        let claim = {
            let _guard = self.key_lock(key)?;
            let reason = match self.lookup(ns, key, max_staleness_ms)? {
                Lookup::Hit(hit) => return Ok(Claimed::Hit(hit)),
                Lookup::Miss { reason } => reason,
            };
            let now = self.now_ms();
            let rkey = keys::reservation(ns, key);
            self.unflushed.add(&writing);
            let claim = self.commit(|tx| {
                let claim = reservations::claim(reservation_tx(tx, &rkey)?.as_ref(), ask, now);
                if let Claim::Grant(h) = &claim {
                    tx.set(rkey.as_slice(), h.encode())?;
                }
                Ok(claim)
            });
            let claim = match claim {
                Ok(claim @ Claim::Grant(_)) => claim,
                Ok(claim) => {
                    self.unflushed.remove(&writing);
                    claim
                }
                Err(e) => {
                    self.settled(&writing, Some(&e));
                    return Err(e);
                }
            };
            (claim, reason)
        };
        match claim {
            (Claim::Grant(holder), reason) => {
                let durable = self.durable();
                self.settled(&writing, durable.as_ref().err());
                durable?;
                Ok(Claimed::Granted { holder, reason })
            }
            (Claim::Held(holder), reason) => {
                // The holder's grant is answered once durable.
                self.settle([unflushed::Item::key(ns, key)])?;
                Ok(Claimed::Held { holder, reason })
            }
            (Claim::Free, reason) => Ok(Claimed::Miss { reason }),
        }
    }

    /// The reservation record of a key as stored (it may have expired).
    pub fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        let holder = self
            .tree
            .get(keys::reservation(ns, key))?
            .map(|v| Holder::decode(&v))
            .transpose()?;
        self.settle([unflushed::Item::key(ns, key)])?;
        Ok(holder)
    }

    /// A heartbeat: the lease of `owner` restarts from now. FAILED_PRECONDITION
    /// when `owner` does not hold the reservation (or its lease is over).
    pub fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder> {
        let now = self.now_ms();
        let rkey = keys::reservation(ns, key);
        self.registered(&Self::writing_reservation(ns, key), || {
            let holder = self.commit(|tx| {
                let current = reservation_tx(tx, &rkey)?;
                reservations::held_by(current.as_ref(), owner, now, "extend the reservation")
                    .or_else(abort)?;
                let h = Holder {
                    owner: owner.to_string(),
                    expire_ms: now.saturating_add(lease_ms),
                };
                tx.set(rkey.as_slice(), h.encode())?;
                Ok(h)
            })?;
            self.durable()?;
            Ok(holder)
        })
    }

    /// A write of the reservation of (ns, key).
    fn writing_reservation(ns: &str, key: &CacheKey) -> unflushed::Writing {
        unflushed::Writing {
            created: Vec::new(),
            touched: vec![unflushed::Item::key(ns, key)],
        }
    }

    /// Gives the reservation up. FAILED_PRECONDITION when `owner` does not hold
    /// it (or its lease is over).
    pub fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
        let now = self.now_ms();
        let rkey = keys::reservation(ns, key);
        self.registered(&Self::writing_reservation(ns, key), || {
            self.commit(|tx| {
                let current = reservation_tx(tx, &rkey)?;
                reservations::held_by(current.as_ref(), owner, now, "release the reservation")
                    .or_else(abort)?;
                tx.remove(rkey.as_slice())?;
                Ok(())
            })?;
            self.durable()
        })
    }

    /// The output artifacts of an execution by output name, in index order.
    pub fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        let mut out: BTreeMap<String, Vec<Artifact>> = BTreeMap::new();
        for ev in self.events_of_execution_typed(exec_id, EventType::Output)? {
            let a = self.artifact(ev.artifact_id, None)?;
            out.entry(ev.name).or_default().push(a);
        }
        Ok(out)
    }

    /// The executions with an OUTPUT event on an artifact.
    fn producers_of(&self, artifact_id: i64) -> Result<Vec<i64>> {
        self.tree
            .scan_prefix(keys::events_of_artifact_typed(
                artifact_id,
                EventType::Output as i32,
            ))
            .map(|item| keys::event_by_artifact_exec(&item?.0))
            .collect()
    }

    /// Flushes, closes, then checkpoints: brings the snapshot sled reads at
    /// open up to the end of the log (the catch-up `open` would otherwise do
    /// first), so that the next start replays nothing: after a run that
    /// wrote, that replay is most of a restart on a large store. A store that
    /// was not closed (a crash) is caught up by the next open.
    pub fn close(self) -> Result<()> {
        // The hits file's index is valid for the store as it is now: both
        // record one epoch, and the next open uses the index only if they
        // match (`hitlog`).
        let epoch = close_epoch(&self.path);
        self.tree
            .insert(keys::META_HIT_LOG_EPOCH, &epoch.to_be_bytes())?;
        self.flush()?;
        if let Err(e) = self.hot.persist(epoch) {
            tracing::warn!(
                "the hits file's index was not saved (the next start fills it \
                 again): {e}"
            );
        }
        let path = self.path.clone();
        // Every handle must be gone first: the checkpoint takes the store's
        // file lock, as open does.
        drop(self);
        // sled's IO threads may hold the last handle a moment longer (a log
        // write queued before the drop); the lock is free once they finish.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(&path).checkpoint() {
                Err(e) if lock_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                result => return Ok(result?),
            }
        }
    }

    /// Write batches and flushes since the store was opened.
    pub fn write_totals(&self) -> activity::WriteTotals {
        self.activity.totals()
    }

    /// Makes every write so far durable.
    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

pub use entry::{INVALIDATED, VALID};
pub(crate) use os::release_freed_memory;
use tx::*;

/// The hits file of the store at `path`, with its saved index when the
/// store has not changed since it was written; None when off or unusable.
/// The store's epoch is removed first, so that no index written before can
/// match after this open writes.
fn open_hit_log(
    path: &Path,
    tree: &sled::Tree,
    config: &StoreConfig,
) -> Result<Option<hitlog::Opened>> {
    let epoch = match tree.remove(keys::META_HIT_LOG_EPOCH)? {
        Some(v) => {
            tree.flush()?;
            <[u8; 8]>::try_from(v.as_ref()).ok().map(u64::from_be_bytes)
        }
        None => None,
    };
    if config.hit_log_bytes == 0 {
        return Ok(None);
    }
    match hitlog::HitLog::open(path, config.hit_log_bytes, epoch) {
        Ok(log) => Ok(Some(log)),
        Err(e) => {
            tracing::warn!("no hits file (hits are read from sled): {e}");
            Ok(None)
        }
    }
}

/// A value no earlier close of this store used.
fn close_epoch(path: &Path) -> u64 {
    let mut h = blake3::Hasher::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.update(&now.as_nanos().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(path.as_os_str().as_encoded_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(b)
}

/// sled could not take the store's file lock: another handle has it open.
/// An error of the storage itself (not of the request): a write that ends
/// with one may be applied in memory without being durable.
fn storage_fault(e: &Error) -> bool {
    matches!(
        e.code(),
        tonic::Code::Internal | tonic::Code::ResourceExhausted | tonic::Code::Unavailable
    )
}

fn lock_busy(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

/// The creation time in a record of `kind` (`keys::EXECUTION`,
/// `keys::ARTIFACT` or `keys::CONTEXT`).
fn record_create_ms(kind: u8, v: &[u8]) -> Result<i64> {
    let t = match kind {
        keys::EXECUTION => decode::<Execution>(v)?.create_time,
        keys::ARTIFACT => decode::<Artifact>(v)?.create_time,
        _ => decode::<Context>(v)?.create_time,
    };
    Ok(created_ms(t.as_ref()))
}

#[cfg(test)]
mod tests;
