//! Writes applied to sled but not yet durable, kept from readers.
//!
//! sled makes a write visible as soon as it is applied, before the flush that
//! makes it durable; a reader could then act on a record that a crash, or a
//! failed flush, loses (a HIT whose execution is gone after the restart).
//! Every write registers what it touches here before it is applied and
//! removes it once its flush has completed: the records it creates (by ID),
//! the records it changes (by ID), the cache keys whose reservation it
//! changes, the namespaces it invalidates in, or everything (prune, garbage
//! collection). A reader checks after its reads, so that any write it may
//! have seen is still registered: a record created by a write here is not
//! there yet (NOT_FOUND, not listed, no HIT); one touched by a write here is
//! answered only after a flush that began after the read (`Store::durable`),
//! or with that flush's error. With nothing registered, the check is one
//! atomic load.
//!
//! A write whose flush fails stays here until the store is opened again
//! (`Reopening`), which also discards it from memory. After a restart, sled
//! may recover a write whose flush reported an error, if its bytes reached
//! the disk.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::key::CacheKey;

/// What a write touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Item {
    /// A record (execution, artifact or context: one ID space).
    Id(i64),
    /// The reservation of a cache key in a namespace (a hash: a collision
    /// only makes a reader wait for a flush).
    Key(u64),
    /// The cache entries of a namespace (invalidations).
    Namespace(u64),
    /// Anything (prune, garbage collection).
    All,
}

impl Item {
    pub fn key(ns: &str, key: &CacheKey) -> Item {
        let mut h = DefaultHasher::new();
        (ns, key.as_bytes()).hash(&mut h);
        Item::Key(h.finish())
    }

    pub fn namespace(ns: &str) -> Item {
        let mut h = DefaultHasher::new();
        ns.hash(&mut h);
        Item::Namespace(h.finish())
    }
}

/// One write's registration: the records it creates, the items it touches.
#[derive(Debug, Clone, Default)]
pub struct Writing {
    pub created: Vec<i64>,
    pub touched: Vec<Item>,
}

/// Registrations per item: (by creating writes, by touching writes). Counts,
/// since concurrent writes may touch one item.
#[derive(Default)]
pub struct Unflushed {
    /// How many items `items` holds: readers skip the lock when none.
    count: AtomicUsize,
    items: Mutex<HashMap<Item, (u32, u32)>>,
}

impl Unflushed {
    /// Registers a write, before it is applied.
    pub fn add(&self, w: &Writing) {
        let Ok(mut items) = self.items.lock() else {
            return;
        };
        for id in &w.created {
            items.entry(Item::Id(*id)).or_default().0 += 1;
        }
        for item in &w.touched {
            items.entry(*item).or_default().1 += 1;
        }
        self.count.store(items.len(), Ordering::SeqCst);
    }

    /// A write's flush completed, or it applied nothing.
    pub fn remove(&self, w: &Writing) {
        let Ok(mut items) = self.items.lock() else {
            return;
        };
        let created = w.created.iter().map(|id| (Item::Id(*id), true));
        for (item, creates) in created.chain(w.touched.iter().map(|i| (*i, false))) {
            if let Some(n) = items.get_mut(&item) {
                let c = if creates { &mut n.0 } else { &mut n.1 };
                *c = c.saturating_sub(1);
                if *n == (0, 0) {
                    items.remove(&item);
                }
            }
        }
        self.count.store(items.len(), Ordering::SeqCst);
    }

    /// Whether any write is registered.
    pub fn pending(&self) -> bool {
        self.count.load(Ordering::SeqCst) != 0
    }

    /// Whether record `id` was created by a write not yet durable.
    pub fn created(&self, id: i64) -> bool {
        self.get(Item::Id(id)).is_some_and(|(c, _)| c > 0)
    }

    /// Whether a write not yet durable touches any of `items` (`Item::All`
    /// among them: whether any write is registered).
    pub fn touched(&self, items: impl IntoIterator<Item = Item>) -> bool {
        if !self.pending() {
            return false;
        }
        let Ok(map) = self.items.lock() else {
            // A poisoned lock: say touched, the reader waits for a flush.
            return true;
        };
        map.contains_key(&Item::All)
            || items
                .into_iter()
                .any(|i| i == Item::All || map.contains_key(&i))
    }

    fn get(&self, item: Item) -> Option<(u32, u32)> {
        if !self.pending() {
            return None;
        }
        // A poisoned lock hides nothing more than it did.
        self.items.lock().ok()?.get(&item).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_and_touched_items_until_every_write_is_removed() {
        let u = Unflushed::default();
        assert!(!u.pending());
        let a = Writing {
            created: vec![5, 6],
            touched: vec![Item::Id(2)],
        };
        let b = Writing {
            created: vec![],
            touched: vec![Item::Id(2), Item::namespace("ns")],
        };
        u.add(&a);
        u.add(&b);
        assert!(u.created(5) && u.touched([Item::Id(5)]));
        assert!(!u.created(2) && u.touched([Item::Id(2)]));
        assert!(!u.touched([Item::Id(7), Item::namespace("other")]));
        assert!(u.touched([Item::namespace("ns")]));
        u.remove(&a);
        // Another write still touches 2.
        assert!(!u.created(5) && u.touched([Item::Id(2)]));
        u.remove(&b);
        assert!(!u.pending() && !u.touched([Item::Id(2)]));
        // A removal of what was never added changes nothing.
        u.remove(&a);
        assert!(!u.pending());
    }

    #[test]
    fn a_write_of_everything_touches_every_item() {
        let u = Unflushed::default();
        let all = Writing {
            created: vec![],
            touched: vec![Item::All],
        };
        u.add(&all);
        assert!(u.touched([Item::Id(1)]) && !u.created(1));
        u.remove(&all);
        assert!(!u.touched([Item::Id(1)]));
        u.add(&Writing {
            created: vec![3],
            touched: vec![],
        });
        assert!(u.touched([Item::All]) && !u.touched([Item::Id(1)]));
    }
}
