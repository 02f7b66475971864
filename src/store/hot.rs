//! An in-memory cache of the newest servable hit per (namespace, key), so that a
//! repeated lookup costs a hash, a mutex and a reference count instead of a
//! read on a pool thread (a page-in, on a store larger than sled's cache). It
//! holds the hit as the reply's encoded fields (`entry::encoded_hit`), which a
//! reply carries as they are: nothing is decoded or encoded again, and 20,000
//! entries take ~20 MiB, not the ~120 MiB their decoded executions and
//! artifacts did (BENCHMARKS.md). It only ever holds what the store would
//! serve: every write that could change an answer (a publish of the key, an
//! artifact update, invalidation, gc, prune) evicts after it commits, and a
//! lookup inserts only if no eviction happened since it began reading (a
//! generation counter), so a result read before a write is never cached after
//! it. Staleness and TTL are judged again at every hit with the current clock.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::key::CacheKey;
use crate::policy::{self, Candidate};

/// A servable hit as the store found it.
#[derive(Debug)]
pub struct HotHit {
    pub completed_ms: i64,
    pub ttl_ms: Option<i64>,
    /// The lookup reply's fields 3 and 4: the execution and every output.
    pub fields: prost::bytes::Bytes,
}

struct Inner {
    lru: Option<LruCache<(String, CacheKey), Arc<HotHit>>>,
    generation: u64,
}

pub struct HotHits {
    inner: Mutex<Inner>,
}

impl HotHits {
    /// `capacity` 0 turns the cache off.
    pub fn new(capacity: usize) -> Self {
        HotHits {
            inner: Mutex::new(Inner {
                lru: NonZeroUsize::new(capacity).map(LruCache::new),
                generation: 0,
            }),
        }
    }

    /// Read before reading the store; pass to `insert`.
    pub fn generation(&self) -> u64 {
        self.inner.lock().map(|i| i.generation).unwrap_or(u64::MAX)
    }

    /// The cached hit if it may still be served now under `max_staleness_ms`.
    pub fn get(
        &self,
        ns: &str,
        key: &CacheKey,
        now_ms: i64,
        max_staleness_ms: Option<i64>,
    ) -> Option<Arc<HotHit>> {
        let hit = {
            let mut inner = self.inner.lock().ok()?;
            inner.lru.as_mut()?.get(&(ns.to_string(), *key))?.clone()
        };
        let candidate = Candidate {
            completed_ms: hit.completed_ms,
            ttl_ms: hit.ttl_ms,
            outputs_live: true,
            invalidated: false,
        };
        policy::eligibility(&candidate, now_ms, max_staleness_ms)
            .ok()
            .map(|()| hit)
    }

    /// Caches a hit read from the store, unless something was evicted since
    /// `generation` was read.
    pub fn insert(&self, generation: u64, ns: &str, key: &CacheKey, hit: HotHit) {
        if let Ok(mut inner) = self.inner.lock() {
            if inner.generation == generation {
                if let Some(lru) = inner.lru.as_mut() {
                    lru.put((ns.to_string(), *key), Arc::new(hit));
                }
            }
        }
    }

    /// After a write that may change the answer for (ns, key).
    pub fn evict(&self, ns: &str, key: &CacheKey) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.generation += 1;
            if let Some(lru) = inner.lru.as_mut() {
                lru.pop(&(ns.to_string(), *key));
            }
        }
    }

    /// After a write that may change any answer.
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.generation += 1;
            if let Some(lru) = inner.lru.as_mut() {
                lru.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(completed_ms: i64, ttl_ms: Option<i64>) -> HotHit {
        HotHit {
            completed_ms,
            ttl_ms,
            fields: prost::bytes::Bytes::from_static(&[0u8]),
        }
    }

    #[test]
    fn serves_until_stale_or_expired() {
        let h = HotHits::new(10);
        let k = CacheKey([1; 32]);
        h.insert(h.generation(), "ns", &k, hit(1_000, Some(500)));
        assert!(h.get("ns", &k, 1_500, None).is_some());
        assert!(h.get("ns", &k, 1_501, None).is_none(), "ttl");
        assert!(h.get("ns", &k, 1_100, Some(99)).is_none(), "staleness");
        assert!(
            h.get("other", &k, 1_100, None).is_none(),
            "namespaces apart"
        );
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_cached() {
        let h = HotHits::new(10);
        let k = CacheKey([2; 32]);
        let before = h.generation();
        h.evict("ns", &k); // a write committed while the lookup was reading
        h.insert(before, "ns", &k, hit(1, None));
        assert!(h.get("ns", &k, 2, None).is_none());
        h.insert(h.generation(), "ns", &k, hit(1, None));
        assert!(h.get("ns", &k, 2, None).is_some());
        h.clear();
        assert!(h.get("ns", &k, 2, None).is_none());
    }

    #[test]
    fn capacity_zero_is_off() {
        let h = HotHits::new(0);
        let k = CacheKey([3; 32]);
        h.insert(h.generation(), "ns", &k, hit(1, None));
        assert!(h.get("ns", &k, 2, None).is_none());
    }
}
