//! The one way the store writes, and what the hot cache learns from it.
//!
//! A write transaction runs on a `Tx`, which only this module makes
//! (`Store::commit`, and `transactions` for the PutExecution applier). A
//! `Tx` notes the (namespace, key) of every cache-index entry the write sets
//! or removes, and the keys an artifact update changes the hits of
//! (`Tx::hits_change`); once the transaction commits, before its caller
//! sees the result or makes it durable, those keys leave the hot cache.
//! A write path has no other way to write, so it cannot forget to evict;
//! a restore, whose keys are not looked at, empties the hot cache.

use std::cell::RefCell;

use sled::transaction::{TransactionError, TransactionalTree, UnabortableTransactionError};
use sled::IVec;

use super::tx::{PendingWrite, Written};
use super::{hitlog, keys, Store, TxResult};
use crate::domain::ExecutionWritten;
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::proto::Execution;

type TxOp<T> = std::result::Result<T, UnabortableTransactionError>;

/// One attempt of a write transaction: sled's, noting what it changes.
pub(super) struct Tx<'a> {
    tree: &'a TransactionalTree,
    stale: RefCell<Stale>,
}

/// The keys whose hits a committed write changed.
pub(super) struct Stale {
    /// `hitlog::tag` of each (namespace, key).
    tags: Vec<u64>,
    /// A write that changed hits it cannot name (a cache-index key it
    /// cannot parse, a restore): every hit.
    everything: bool,
}

impl Stale {
    fn none() -> Self {
        Stale {
            tags: Vec::new(),
            everything: false,
        }
    }
}

impl<'a> Tx<'a> {
    fn new(tree: &'a TransactionalTree) -> Self {
        Tx {
            tree,
            stale: RefCell::new(Stale::none()),
        }
    }

    pub(super) fn get<K: AsRef<[u8]>>(&self, key: K) -> TxOp<Option<IVec>> {
        self.tree.get(key)
    }

    pub(super) fn set<K: Into<IVec>, V: Into<IVec>>(&self, key: K, value: V) -> TxOp<()> {
        let key = key.into();
        self.written(&key);
        self.tree.set(key, value)
    }

    pub(super) fn remove<K: Into<IVec>>(&self, key: K) -> TxOp<Option<IVec>> {
        let key = key.into();
        self.written(&key);
        self.tree.remove(key)
    }

    /// This write changes the hits of execution `e` without writing its
    /// cache-index entry (it updates an artifact `e` output).
    pub(super) fn hits_change(&self, e: &Execution) {
        if let Ok(key) = e.cache_key.parse::<CacheKey>() {
            self.stale
                .borrow_mut()
                .tags
                .push(hitlog::tag(&e.namespace, &key));
        }
    }

    /// A write of key `k`: the key's hits change when it is a cache-index entry.
    fn written(&self, k: &[u8]) {
        if k.first() != Some(&keys::CACHE) {
            return;
        }
        let mut stale = self.stale.borrow_mut();
        match (keys::parse_cache_entry(k), keys::namespace_of(k)) {
            (Ok((key, _, _)), Ok(ns)) => stale.tags.push(hitlog::tag(ns, &key)),
            _ => stale.everything = true,
        }
    }
}

/// Runs `write` as one sled transaction; with its result, what it changed.
fn transaction<T>(
    tree: &sled::Tree,
    write: impl Fn(&Tx) -> TxResult<T>,
) -> std::result::Result<(T, Stale), TransactionError<Error>> {
    tree.transaction(|t| {
        let tx = Tx::new(t);
        let out = write(&tx)?;
        Ok((out, tx.stale.into_inner()))
    })
}

/// Applies a batch of execution writes in one transaction; when one of
/// them fails nothing of the batch is applied, and each is applied alone,
/// so that a bad write fails by itself. `Store::submit` hands each result
/// back.
pub(super) fn transactions(
    tree: &sled::Tree,
    batch: &[PendingWrite],
) -> Vec<Result<(Written, Stale)>> {
    let one =
        |p: &PendingWrite| -> Result<(Written, Stale)> { Ok(transaction(tree, |tx| p.apply(tx))?) };
    if batch.len() > 1 {
        let all = tree.transaction(|t| {
            batch
                .iter()
                .map(|p| {
                    let tx = Tx::new(t);
                    let written = p.apply(&tx)?;
                    Ok((written, tx.stale.into_inner()))
                })
                .collect::<TxResult<Vec<_>>>()
        });
        if let Ok(written) = all {
            return written.into_iter().map(Ok).collect();
        }
    }
    batch.iter().map(one).collect()
}

impl Store {
    /// Runs a write transaction; once it commits, the keys whose hits it
    /// changed leave the hot cache. A transaction that fails committed
    /// nothing, or failed in storage: then it is kept from readers
    /// (`unflushed`) until the store is opened again, and the hits cached
    /// before it are still the answer.
    pub(super) fn commit<T>(&self, write: impl Fn(&Tx) -> TxResult<T>) -> Result<T> {
        let (out, stale) = transaction(&self.tree, write)?;
        self.forget(&stale);
        Ok(out)
    }

    /// A PutExecution, applied in a batch with others (`combine`); as `commit`.
    pub(super) fn submit(&self, write: PendingWrite) -> Result<Written> {
        let (written, stale) = self.writes.submit(write)?;
        self.forget(&stale);
        Ok(written)
    }

    /// A restore's writes: every hit may change (even when it fails part way).
    pub(super) fn restore_batch(&self, batch: sled::Batch) -> Result<()> {
        let applied = self.tree.apply_batch(batch);
        self.forget_everything();
        Ok(applied?)
    }

    /// Removes every record (a failed restore).
    pub(super) fn clear_all(&self) -> Result<()> {
        let cleared = self.tree.clear();
        self.forget_everything();
        Ok(cleared?)
    }

    /// A PutExecution's flush has completed: readers may see it now. Its
    /// key leaves the hot cache again, which may have taken the entry it
    /// replaces meanwhile.
    pub(super) fn flushed(&self, ns: &str, written: &ExecutionWritten) {
        if let (true, Ok(key)) = (written.published, written.cache_key.parse::<CacheKey>()) {
            self.hot.evict(ns, &key);
        }
    }

    fn forget_everything(&self) {
        self.forget(&Stale {
            tags: Vec::new(),
            everything: true,
        });
    }

    fn forget(&self, stale: &Stale) {
        if stale.everything {
            self.hot.clear();
        } else {
            for tag in &stale.tags {
                self.hot.evict_tag(*tag);
            }
        }
    }
}
