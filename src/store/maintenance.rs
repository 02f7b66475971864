//! Invalidation, garbage collection and the counts behind the stats.

use std::collections::{BTreeMap, BTreeSet};

use super::{entry, keys, Store, INVALIDATED};
use crate::domain::Selector;
use crate::error::Result;
use crate::key::CacheKey;
use crate::policy;
use crate::proto::{EventType, Execution};

impl Store {
    /// Index entries of (namespace, key) with their execution IDs.
    pub(super) fn entries_of_key(&self, ns: &str, key: &CacheKey) -> Result<Vec<(Vec<u8>, i64)>> {
        let prefix = keys::cache_prefix(ns, key);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let (_, exec_id) = keys::parse_cache_suffix(&k[prefix.len()..])?;
            out.push((k.to_vec(), exec_id));
        }
        Ok(out)
    }

    /// The index entries of one execution (none unless it was published).
    pub(super) fn entries_of_execution(&self, e: &Execution) -> Result<Vec<Vec<u8>>> {
        let Ok(key) = e.cache_key.parse::<CacheKey>() else {
            return Ok(Vec::new());
        };
        Ok(self
            .entries_of_key(&e.namespace, &key)?
            .into_iter()
            .filter(|(_, id)| *id == e.id)
            .map(|(k, _)| k)
            .collect())
    }

    /// Marks the selected entries so that they are never served again; returns
    /// how many were newly invalidated.
    pub fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        let mut entries: BTreeSet<Vec<u8>> = BTreeSet::new();
        match selector {
            Selector::Key(key) => {
                entries.extend(self.entries_of_key(ns, key)?.into_iter().map(|(k, _)| k));
            }
            Selector::Execution(id) => {
                entries.extend(self.entries_of_execution(&self.execution(*id, Some(ns))?)?);
            }
            Selector::Artifact(id) => {
                self.artifact(*id, Some(ns))?;
                for ev in self.events_of_artifact(*id)? {
                    if ev.r#type == EventType::Output as i32 {
                        let e = self.execution(ev.execution_id, Some(ns))?;
                        entries.extend(self.entries_of_execution(&e)?);
                    }
                }
            }
            Selector::Component(component) => {
                // Every key of the component's executions; all entries of such a
                // key belong to the component, which is part of the key.
                let mut cache_keys = BTreeSet::new();
                for item in self
                    .tree
                    .scan_prefix(keys::exec_by_component_prefix(ns, component))
                {
                    let id = keys::rev_id_suffix(&item?.0)?;
                    if let Ok(k) = self.execution(id, Some(ns))?.cache_key.parse::<CacheKey>() {
                        cache_keys.insert(k);
                    }
                }
                for k in cache_keys {
                    entries.extend(self.entries_of_key(ns, &k)?.into_iter().map(|(k, _)| k));
                }
            }
        }
        let n = self.commit(|tx| {
            let mut n = 0i64;
            for k in &entries {
                if let Some(v) = tx.get(k)? {
                    if !entry::is_invalidated(&v) {
                        tx.set(k.as_slice(), &[INVALIDATED])?;
                        n += 1;
                    }
                }
            }
            Ok(n)
        })?;
        if n > 0 {
            self.durable()?;
        }
        Ok(n)
    }

    /// Index entries of a namespace that are not invalidated.
    pub fn count_entries(&self, ns: &str) -> Result<i64> {
        let mut n = 0;
        for item in self
            .tree
            .scan_prefix(keys::KeyBuf::new(keys::CACHE).str(ns).done())
        {
            if !entry::is_invalidated(&item?.1) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Reservations of a namespace whose lease has not run out: identical tasks
    /// running now under someone's reservation.
    pub fn count_reservations(&self, ns: &str) -> Result<i64> {
        let now = self.now_ms();
        let mut n = 0;
        for item in self
            .tree
            .scan_prefix(keys::KeyBuf::new(keys::RESERVATION).str(ns).done())
        {
            if crate::reservations::Holder::decode(&item?.1)?.expire_ms > now {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Live reservations of every namespace that has any (for metrics).
    pub fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        let now = self.now_ms();
        let mut held = BTreeMap::new();
        for item in self.tree.scan_prefix([keys::RESERVATION]) {
            let (k, v) = item?;
            if crate::reservations::Holder::decode(&v)?.expire_ms > now {
                *held.entry(keys::namespace_of(&k)?.to_string()).or_insert(0) += 1;
            }
        }
        Ok(held)
    }

    /// The store's size on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Removes index entries that can never be served again: invalidated ones
    /// and those past their execution's TTL. `ns` None = every namespace.
    pub fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        let prefix = match ns {
            Some(ns) => keys::KeyBuf::new(keys::CACHE).str(ns).done(),
            None => vec![keys::CACHE],
        };
        let now = self.now_ms();
        let mut dead = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let expired = || -> Result<bool> {
                let (_, completed_ms, exec_id) = keys::parse_cache_entry(&k)?;
                let e = self.execution(exec_id, None)?;
                let ttl = policy::duration_ms(e.cache_ttl.as_ref(), "cache_ttl")
                    .ok()
                    .flatten();
                Ok(matches!(ttl, Some(ttl) if now.saturating_sub(completed_ms) > ttl))
            };
            if entry::is_invalidated(&v) || expired()? {
                dead.push(k.to_vec());
            }
        }
        for chunk in dead.chunks(1000) {
            self.commit(|tx| {
                for k in chunk {
                    tx.remove(k.as_slice())?;
                }
                Ok(())
            })?;
        }
        if !dead.is_empty() {
            self.durable()?;
        }
        Ok(dead.len() as i64)
    }
}
