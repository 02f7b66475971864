//! The embedded store on sled: artifacts, executions, events and the cache index,
//! all in one tree with prefixed keys (see `keys`). Every logical write is
//! atomic, one sled transaction (concurrent PutExecutions share one, each
//! still whole or absent: `combine`), followed by a group-committed flush;
//! every write goes through `commit`, which tells the hot cache what it
//! changed. Calls block, so the service runs them on its read and write
//! thread pools (`crate::pool`).

pub(crate) mod activity;
mod backend;
pub mod backup;
mod check;
mod combine;
mod commit;
mod durability;
mod entry;
mod events;
mod flush;
pub(crate) mod hitlog;
pub(crate) mod hot;
mod ids;
mod keys;
mod lookup;
mod maintenance;
mod os;
mod prune;
mod put;
mod query;
pub(crate) mod reopen;
mod reservation;
mod tag_index;
mod tx;
mod unflushed;
mod warm;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use sled::transaction::ConflictableTransactionError;

use commit::Tx;
use events::NewEvents;
use ids::{record_create_ms, Alloc, IdGen, Ids};
use lookup::Judge;

use crate::clock::{timestamp_ms, Clock};
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

    fn key_lock(&self, key: &CacheKey) -> Result<MutexGuard<'_, ()>> {
        let i = usize::from(u16::from_le_bytes([key.as_bytes()[0], key.as_bytes()[1]])) % KEY_LOCKS;
        self.key_locks
            .get(i)
            .ok_or_else(|| Error::Internal("key lock out of range".into()))?
            .lock()
            .map_err(|_| Error::Internal("key lock poisoned".into()))
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

    /// The output artifacts of an execution by output name, in index order.
    pub fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        let mut out: BTreeMap<String, Vec<Artifact>> = BTreeMap::new();
        for ev in self.events_of_execution_typed(exec_id, EventType::Output)? {
            let a = self.artifact(ev.artifact_id, None)?;
            out.entry(ev.name).or_default().push(a);
        }
        Ok(out)
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

    /// Write batches, flushes and failed writes of the hits file since the
    /// store was opened.
    pub fn write_totals(&self) -> activity::WriteTotals {
        activity::WriteTotals {
            hits_write_failures: self.hot.write_failures(),
            ..self.activity.totals()
        }
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
fn lock_busy(e: &sled::Error) -> bool {
    e.to_string().contains("could not acquire lock")
}

#[cfg(test)]
mod tests;
