//! An in-memory cache of the newest servable hit per (namespace, key), so that a
//! repeated lookup costs a hash, a mutex and a reference count instead of a
//! read on a pool thread (a page-in, on a store larger than sled's cache).
//! Behind the memory tier, the hits file (`hitlog`) keeps every hit the
//! cache is given, compressed on disk, with 32-64 bytes per key of index in
//! memory (`tag_index`: 16-byte slots, the table a quarter to
//! half full): a hit that is not in memory is one small record, read through
//! a mapping of the file, instead of a sled leaf.
//! Hits enter both at their first read from sled, and the file also from
//! the cache index after a start that found it unfilled
//! (`Store::warm_in_background`); a hit read from the file goes into memory
//! at its second read within a while (`Doorkeeper`). The cache holds each hit as the reply's
//! encoded fields (`entry::encoded_hit`), which a reply carries as they are:
//! nothing is decoded or encoded again, and an entry takes a fraction of the
//! memory of its decoded execution and artifacts.
//! It only ever holds what the store would
//! serve: every write that could change an answer (a publish of the key, an
//! artifact update, invalidation, gc, prune) evicts as it commits (the
//! store's one way to write, `commit`, sees to it), and a
//! lookup inserts only if no eviction of its key happened since it began
//! reading (a generation counter per stripe of keys), so a result read before
//! a write is never cached after it. Staleness and TTL are judged again at
//! every hit with the current clock.

use std::hash::BuildHasherDefault;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::hitlog::{self, HitLog, Index, Opened, Segment, TagHasher};
use crate::domain::{Hit, Lookup};
use crate::key::CacheKey;
use crate::policy::{self, Candidate};
use doorkeeper::Doorkeeper;
use pending::{Pending, Ready};

mod doorkeeper;
mod pending;
mod writes;

/// A servable hit as the store found it.
#[derive(Debug)]
pub struct HotHit {
    pub completed_ms: i64,
    pub ttl_ms: Option<i64>,
    /// The lookup reply's fields 3 and 4: the execution and every output.
    pub fields: prost::bytes::Bytes,
}

/// A hit as `HotHits::get` serves it: shared with the memory tier, or read
/// from the hits file for this reply alone (no `Arc` to allocate and free
/// on every read of a record memory does not keep).
#[derive(Debug)]
pub enum Served {
    Shared(Arc<HotHit>),
    Owned(HotHit),
}

impl std::ops::Deref for Served {
    type Target = HotHit;
    fn deref(&self) -> &HotHit {
        match self {
            Served::Shared(hit) => hit,
            Served::Owned(hit) => hit,
        }
    }
}

impl Served {
    /// The reply's fields, moved out when no one else holds the hit, else
    /// shared.
    pub fn into_fields(self) -> prost::bytes::Bytes {
        match self {
            Served::Shared(hit) => {
                Arc::try_unwrap(hit).map_or_else(|shared| shared.fields.clone(), |hit| hit.fields)
            }
            Served::Owned(hit) => hit.fields,
        }
    }

    /// Itself if `policy` lets it be served at `now_ms`.
    fn servable(self, now_ms: i64, max_staleness_ms: Option<i64>) -> Option<Served> {
        let candidate = Candidate {
            completed_ms: self.completed_ms,
            ttl_ms: self.ttl_ms,
            outputs_live: true,
            invalidated: false,
        };
        policy::eligibility(&candidate, now_ms, max_staleness_ms)
            .ok()
            .map(|()| self)
    }
}

/// Eviction counters: a key's generation is the sum of the whole cache's and
/// its stripe's, so that a write evicting one key does not turn away every
/// insert racing it, only those of keys in its stripe.
const STRIPES: usize = 1024;

/// A hit in memory, under its key's tag: the namespace and key it is for are
/// checked at every read, so that two keys whose tags collide share a slot
/// (the later evicts the earlier) but never each other's hits.
struct Slot {
    ns: Box<str>,
    key: CacheKey,
    hit: Arc<HotHit>,
}

type Lru = LruCache<u64, Slot, BuildHasherDefault<TagHasher>>;

struct Inner {
    lru: Option<Lru>,
    /// Which reads from the hits file go into memory (with `lru`).
    doorkeeper: Option<Doorkeeper>,
    cleared: u64,
    stripes: Vec<u64>,
    tier: Option<Tier>,
    /// Lookups' records waiting for the hits thread.
    ready: Ready,
}

/// The second tier: every hit given to the cache, in the hits file.
struct Tier {
    segment: Arc<Segment>,
    index: Index,
    /// Every key of the store was given to it since it last started over.
    filled: bool,
    /// Records of a fill not written yet.
    pending: Pending,
}

/// A fill (`Store::warm_in_background`) writes the hits file in aligned
/// chunks of this size: the kernel then keeps it in the page cache as huge
/// folios, where one record per small write leaves it in 4 KiB pages, and a
/// read of a record needs fewer page walks.
pub const FILL_CHUNK: u64 = 2 << 20;

impl Inner {
    fn generation(&self, tag: u64) -> u64 {
        let stripe = self.stripes[tag as usize % STRIPES];
        self.cleared.wrapping_add(stripe)
    }

    /// (ns, key)'s hit in memory, as the most recently used.
    fn memory(&mut self, tag: u64, ns: &str, key: &CacheKey) -> Option<Arc<HotHit>> {
        let slot = self.lru.as_mut()?.get(&tag)?;
        (slot.key == *key && *slot.ns == *ns).then(|| slot.hit.clone())
    }

    fn remember(&mut self, tag: u64, ns: &str, key: &CacheKey, hit: Arc<HotHit>) {
        if let Some(lru) = self.lru.as_mut() {
            let slot = Slot {
                ns: ns.into(),
                key: *key,
                hit,
            };
            lru.put(tag, slot);
        }
    }

    /// Where (ns, key)'s record is in the hits file, if it has one; the
    /// record starts coming in from RAM, so that work done before it is
    /// read (the memory tier's probe) overlaps the wait.
    fn located(&self, tag: u64) -> Option<u64> {
        let tier = self.tier.as_ref()?;
        let packed = *tier.index.get(&tag)?;
        tier.segment.prefetch(packed);
        Some(packed)
    }

    /// The record `located` found, with what `read_stored` needs to keep
    /// it in memory afterwards, if the doorkeeper lets it in.
    fn stored(&mut self, tag: u64, packed: u64) -> Option<InFile> {
        let tier = self.tier.as_ref()?;
        let segment = tier.segment.clone();
        let keep = self.doorkeeper.as_mut().is_some_and(|d| d.seen(tag));
        Some(InFile {
            generation: self.generation(tag),
            segment,
            packed,
            keep,
        })
    }
}

/// A record `Inner::stored` found.
struct InFile {
    generation: u64,
    segment: Arc<Segment>,
    packed: u64,
    /// Into memory once read.
    keep: bool,
}

/// What a key's evictions were when a read of the store began, with the
/// key's tag, so that `insert` need not hash the key again.
#[derive(Clone, Copy, Debug)]
pub struct Generation {
    tag: u64,
    n: u64,
}

pub struct HotHits {
    inner: Mutex<Inner>,
    log: Option<HitLog>,
    /// Writes of the hits file that failed (a full or read-only disk) or
    /// were dropped while the disk did not take them: the lookups that made
    /// them were served all the same.
    write_failures: AtomicU64,
    /// The hits thread runs (`write_ready`): lookups queue their records for
    /// it instead of writing the file themselves, so a lookup never waits on
    /// a disk that stalls (a write into the page cache does, while the
    /// filesystem is frozen).
    deferred: AtomicBool,
}

impl HotHits {
    /// `capacity` hits in memory (0: none), and every hit in `log` if given.
    pub fn new(capacity: usize, log: Option<Opened>) -> Self {
        let (log, tier) = match log {
            Some(o) => (
                Some(o.log),
                Some(Tier {
                    segment: o.segment,
                    index: o.index,
                    filled: o.filled,
                    pending: Pending::default(),
                }),
            ),
            None => (None, None),
        };
        HotHits {
            inner: Mutex::new(Inner {
                lru: NonZeroUsize::new(capacity)
                    .map(|n| LruCache::with_hasher(n, BuildHasherDefault::default())),
                doorkeeper: (capacity > 0).then(|| Doorkeeper::new(capacity)),
                cleared: 0,
                stripes: vec![0; STRIPES],
                tier,
                ready: Ready::default(),
            }),
            log,
            write_failures: Default::default(),
            deferred: Default::default(),
        }
    }

    /// How many writes of the hits file failed since the store was opened.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(Ordering::Relaxed)
    }

    /// Read before reading the store; pass to `insert`.
    pub fn generation(&self, ns: &str, key: &CacheKey) -> Generation {
        let tag = hitlog::tag(ns, key);
        let n = self
            .inner
            .lock()
            .map(|i| i.generation(tag))
            .unwrap_or(u64::MAX);
        Generation { tag, n }
    }

    /// The cached hit if it may still be served now under
    /// `max_staleness_ms`: from memory, else from the hits file if that
    /// need not wait for the disk (so that the async threads may call it).
    pub fn get(
        &self,
        ns: &str,
        key: &CacheKey,
        now_ms: i64,
        max_staleness_ms: Option<i64>,
    ) -> Option<Served> {
        let tag = hitlog::tag(ns, key);
        let stored = {
            let mut inner = self.inner.lock().ok()?;
            let packed = inner.located(tag);
            if let Some(hit) = inner.memory(tag, ns, key) {
                return Served::Shared(hit).servable(now_ms, max_staleness_ms);
            }
            inner.stored(tag, packed?)?
        };
        self.read_stored(tag, stored, ns, key, true)?
            .servable(now_ms, max_staleness_ms)
    }

    /// `get` as a lookup's answer: the hit's reply fields, served as they are.
    pub fn lookup(
        &self,
        ns: &str,
        key: &CacheKey,
        now_ms: i64,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        let hit = self.get(ns, key, now_ms, max_staleness_ms)?;
        Some(Lookup::Hit(Hit::Encoded(hit.into_fields())))
    }

    /// As `get`, from the hits file only, waiting for the disk if need be.
    pub fn get_stored(
        &self,
        ns: &str,
        key: &CacheKey,
        now_ms: i64,
        max_staleness_ms: Option<i64>,
    ) -> Option<Served> {
        let tag = hitlog::tag(ns, key);
        let stored = {
            let mut inner = self.inner.lock().ok()?;
            let packed = inner.located(tag)?;
            inner.stored(tag, packed)?
        };
        self.read_stored(tag, stored, ns, key, false)?
            .servable(now_ms, max_staleness_ms)
    }

    /// Reads a record `Inner::stored` found, and keeps its hit in memory
    /// if the doorkeeper let it in and the key was not evicted meanwhile.
    fn read_stored(
        &self,
        tag: u64,
        at: InFile,
        ns: &str,
        key: &CacheKey,
        nowait: bool,
    ) -> Option<Served> {
        let stored = at.segment.read(at.packed, ns, key, nowait)?;
        let hit = HotHit {
            completed_ms: stored.completed_ms,
            ttl_ms: stored.ttl_ms,
            fields: stored.fields,
        };
        if !at.keep {
            return Some(Served::Owned(hit));
        }
        let hit = Arc::new(hit);
        if let Ok(mut inner) = self.inner.lock() {
            if inner.generation(tag) == at.generation {
                inner.remember(tag, ns, key, hit.clone());
            }
        }
        Some(Served::Shared(hit))
    }

    /// Caches a hit read from the store, unless its key was evicted since
    /// `generation` was read: in memory and in the hits file. `memory`
    /// false marks a fill (`Store::warm_hits`): the hit goes to the file
    /// only, whose records then wait to be written a chunk at a time.
    pub fn insert(&self, g: Generation, ns: &str, key: &CacheKey, hit: HotHit, memory: bool) {
        let Generation { tag, n: generation } = g;
        debug_assert_eq!(tag, hitlog::tag(ns, key), "a generation of another key");
        let record = self
            .log
            .as_ref()
            .and_then(|log| log.encode(ns, key, hit.completed_ms, hit.ttl_ms, &hit.fields));
        let batch = {
            let Ok(mut inner) = self.inner.lock() else {
                return;
            };
            if inner.generation(tag) != generation {
                return;
            }
            if memory {
                inner.remember(tag, ns, key, Arc::new(hit));
            }
            let batch = match (record, self.log.as_ref()) {
                (Some(record), Some(log)) => {
                    let new = (tag, generation, record);
                    self.append(&mut inner, log, new, !memory)
                }
                _ => None,
            };
            match batch {
                Some(batch) if memory && self.deferred.load(Ordering::Relaxed) => {
                    if !inner.ready.push(batch) {
                        self.write_failures.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                }
                batch => batch,
            }
        };
        if let Some(batch) = batch {
            self.write(batch);
        }
    }

    /// Marks again which pages of the hits file the page cache holds
    /// (`Segment::refresh_resident`).
    pub fn refresh_resident(&self) {
        let segment = self
            .inner
            .lock()
            .ok()
            .and_then(|inner| Some(inner.tier.as_ref()?.segment.clone()));
        if let Some(segment) = segment {
            segment.refresh_resident();
        }
    }

    /// Records in the hits file's index.
    pub fn stored_len(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.tier.as_ref().map_or(0, |t| t.index.len()))
            .unwrap_or(0)
    }

    /// Whether the hits file has a record under (ns, key)'s tag.
    pub fn has_stored(&self, ns: &str, key: &CacheKey) -> bool {
        let tag = hitlog::tag(ns, key);
        self.inner
            .lock()
            .is_ok_and(|i| i.tier.as_ref().is_some_and(|t| t.index.contains_key(&tag)))
    }

    /// After a write that may change the answer for (ns, key).
    pub fn evict(&self, ns: &str, key: &CacheKey) {
        self.evict_tag(hitlog::tag(ns, key));
    }

    /// `evict` of the key whose `hitlog::tag` is `tag`.
    pub fn evict_tag(&self, tag: u64) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.stripes[tag as usize % STRIPES] += 1;
            if let Some(lru) = inner.lru.as_mut() {
                lru.pop(&tag);
            }
            if let Some(tier) = inner.tier.as_mut() {
                tier.index.remove(&tag);
            }
        }
    }

    /// After a write that may change any answer.
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.cleared += 1;
            if let Some(lru) = inner.lru.as_mut() {
                lru.clear();
            }
            if let Some(tier) = inner.tier.as_mut() {
                tier.index.clear();
                tier.filled = false;
            }
        }
    }

    /// How many times the whole cache was cleared: read before filling the
    /// hits file, pass to `filled`.
    pub fn clears(&self) -> u64 {
        self.inner.lock().map(|i| i.cleared).unwrap_or(u64::MAX)
    }

    /// Every key of the store was given to the hits file, and nothing was
    /// cleared since `clears` read `since`.
    pub fn filled(&self, since: u64) {
        self.write_ready();
        self.write_pending();
        if let Ok(mut inner) = self.inner.lock() {
            let current = inner.cleared == since;
            if let Some(tier) = inner.tier.as_mut().filter(|_| current) {
                tier.filled = true;
            }
        }
    }

    /// Whether the hits file needs filling (`filled` was not called since
    /// it last started over).
    pub fn needs_filling(&self) -> bool {
        self.inner
            .lock()
            .is_ok_and(|i| i.tier.as_ref().is_some_and(|t| !t.filled))
    }

    /// Writes the hits file's index for the next open with `epoch` (at a
    /// clean close, after the store's last write).
    pub fn persist(&self, epoch: u64) -> std::io::Result<()> {
        self.write_ready();
        self.write_pending();
        let inner = self
            .inner
            .lock()
            .map_err(|_| std::io::Error::other("the hot cache's lock is poisoned"))?;
        match (&self.log, &inner.tier) {
            (Some(log), Some(tier)) => log.persist(&tier.segment, &tier.index, tier.filled, epoch),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
