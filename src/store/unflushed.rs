//! Writes applied to sled but not yet durable, kept from readers.
//!
//! sled makes a write visible as soon as it is applied, before the flush that
//! makes it durable; a reader could then act on a record that a crash, or a
//! failed flush, loses (a HIT whose execution is gone after the restart). A
//! PutExecution registers its IDs here before it is applied and removes them
//! once its flush has completed; lookups pass over cache entries of the
//! executions here, and gets and lists do not return records created by a
//! write here. A write whose flush fails stays here, hidden until the store
//! is opened again (sled fails every write after such an error until then).
//!
//! What it does not cover: other writes (PutArtifacts, PutContexts, CACHED
//! executions, reservations, invalidations) are visible before their flush
//! as before, and an update of an existing execution shows its new fields to
//! gets and lists before its flush (its new cache entry is hidden from
//! lookups). After a restart, sled may recover a write whose flush reported
//! an error, if its bytes reached the disk.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// IDs of writes not yet durable: `true` for a record the write creates.
#[derive(Default)]
pub struct Unflushed {
    /// How many IDs `ids` holds: readers skip the lock when none.
    count: AtomicUsize,
    ids: Mutex<HashMap<i64, bool>>,
}

impl Unflushed {
    /// Registers a write: the records it creates, the one it updates.
    pub fn add(&self, created: &[i64], updated: Option<i64>) {
        let Ok(mut ids) = self.ids.lock() else { return };
        for id in created {
            ids.insert(*id, true);
        }
        if let Some(id) = updated {
            ids.entry(id).or_insert(false);
        }
        self.count.store(ids.len(), Ordering::SeqCst);
    }

    /// A write's flush completed (or nothing was written).
    pub fn remove(&self, created: &[i64], updated: Option<i64>) {
        let Ok(mut ids) = self.ids.lock() else { return };
        for id in created.iter().chain(updated.iter()) {
            ids.remove(id);
        }
        self.count.store(ids.len(), Ordering::SeqCst);
    }

    /// Whether a write of execution `id` is not yet durable (lookups).
    pub fn written(&self, id: i64) -> bool {
        self.get(id).is_some()
    }

    /// Whether the record `id` was created by a write not yet durable
    /// (gets and lists).
    pub fn created(&self, id: i64) -> bool {
        self.get(id) == Some(true)
    }

    fn get(&self, id: i64) -> Option<bool> {
        if self.count.load(Ordering::SeqCst) == 0 {
            return None;
        }
        // A poisoned lock hides nothing more than it did.
        self.ids.lock().ok()?.get(&id).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_updated_ids() {
        let u = Unflushed::default();
        u.add(&[5, 6], Some(2));
        assert!(u.created(5) && u.written(5));
        assert!(!u.created(2) && u.written(2));
        assert!(!u.written(7));
        u.remove(&[5, 6], Some(2));
        assert!(!u.written(5) && !u.written(2));
    }
}
