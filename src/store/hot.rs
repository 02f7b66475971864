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
use std::sync::{Arc, Mutex};

use lru::LruCache;

use super::hitlog::{self, HitLog, Index, Opened, Segment, TagHasher};
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

/// Records reserved in the hits file, from `at` on, and not yet written;
/// the index learns of each once it is.
#[derive(Default)]
struct Pending {
    at: u64,
    bytes: Vec<u8>,
    records: Vec<Unwritten>,
}

/// A record to index once written, if its key was not evicted meanwhile.
struct Unwritten {
    tag: u64,
    generation: u64,
    packed: u64,
}

/// Bytes to write at `at` in `segment`, then the records among them to index.
struct Batch {
    segment: Arc<Segment>,
    at: u64,
    bytes: Vec<u8>,
    records: Vec<Unwritten>,
}

impl Pending {
    fn end(&self) -> u64 {
        self.at + self.bytes.len() as u64
    }

    /// All of it, as one batch for `segment`.
    fn take(&mut self, segment: &Arc<Segment>) -> Option<Batch> {
        (!self.bytes.is_empty()).then(|| {
            let p = std::mem::take(self);
            Batch {
                segment: segment.clone(),
                at: p.at,
                bytes: p.bytes,
                records: p.records,
            }
        })
    }

    /// What lies before the first chunk boundary past `at`, once the
    /// records reach it; the rest stays.
    fn take_chunk(&mut self, segment: &Arc<Segment>) -> Option<Batch> {
        let boundary = (self.at / FILL_CHUNK + 1) * FILL_CHUNK;
        if self.end() < boundary {
            return None;
        }
        let rest = self.bytes.split_off((boundary - self.at) as usize);
        let (done, waiting) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| {
                let (at, len) = hitlog::unpack(r.packed);
                at + len as u64 <= boundary
            });
        let head = std::mem::replace(
            self,
            Pending {
                at: boundary,
                bytes: rest,
                records: waiting,
            },
        );
        Some(Batch {
            segment: segment.clone(),
            at: head.at,
            bytes: head.bytes,
            records: done,
        })
    }
}

/// Admission to memory of hits read from the hits file, as TinyLFU's
/// doorkeeper: a key goes into memory at its second read within a window of
/// about `window` first reads, not at its first. Under draws spread over far
/// more keys than memory holds, almost every read would otherwise put a hit
/// in memory only to evict another before either is asked for again: an
/// allocation kept, an eviction and the CPU cache lines they take, a large
/// part of the cost of a read from the file (`hits-bench` times it). A key
/// asked for again soon, as a pipeline's repeated runs do,
/// still gets there at its second read. Two bitsets of about 8 bits per key
/// of the window, the current one and the one before, so that a key seen
/// just before a turnover still counts; two bits per key.
struct Doorkeeper {
    current: Vec<u64>,
    previous: Vec<u64>,
    added: usize,
    window: usize,
}

impl Doorkeeper {
    fn new(window: usize) -> Self {
        let window = window.max(1);
        let words = (window * 8).next_power_of_two().div_ceil(64);
        Doorkeeper {
            current: vec![0; words],
            previous: vec![0; words],
            added: 0,
            window,
        }
    }

    /// Two bit positions from the tag, a uniform hash already.
    fn bits(&self, tag: u64) -> [(usize, u64); 2] {
        let mask = self.current.len() * 64 - 1;
        [tag as usize & mask, (tag >> 32) as usize & mask].map(|b| (b / 64, 1u64 << (b % 64)))
    }

    fn contains(set: &[u64], bits: &[(usize, u64); 2]) -> bool {
        bits.iter().all(|(w, m)| set[*w] & m != 0)
    }

    /// Whether `tag` was seen within the window; it is seen from now on.
    fn seen(&mut self, tag: u64) -> bool {
        let bits = self.bits(tag);
        if Self::contains(&self.current, &bits) || Self::contains(&self.previous, &bits) {
            return true;
        }
        for (w, m) in bits {
            self.current[w] |= m;
        }
        self.added += 1;
        if self.added >= self.window {
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.fill(0);
            self.added = 0;
        }
        false
    }
}

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
    /// Writes of the hits file that failed (a full or read-only disk): the
    /// lookups that made them were served all the same.
    write_failures: std::sync::atomic::AtomicU64,
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
            }),
            log,
            write_failures: Default::default(),
        }
    }

    /// How many writes of the hits file failed since the store was opened.
    pub fn write_failures(&self) -> u64 {
        self.write_failures
            .load(std::sync::atomic::Ordering::Relaxed)
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
            match (record, self.log.as_ref()) {
                (Some(record), Some(log)) => {
                    let new = (tag, generation, record);
                    self.append(&mut inner, log, new, !memory)
                }
                _ => None,
            }
        };
        if let Some(batch) = batch {
            self.write(batch);
        }
    }

    /// Reserves room for a record and returns what is to be written now:
    /// the record alone, or with the fill's records waiting before it, or
    /// (`filling`) a whole chunk of them once one is complete.
    fn append(
        &self,
        inner: &mut Inner,
        log: &HitLog,
        (tag, generation, record): (u64, u64, Vec<u8>),
        filling: bool,
    ) -> Option<Batch> {
        let (segment, at) = self.reserve(inner, log, record.len())?;
        // A record too far into the file for the index is written, unindexed.
        let new = hitlog::pack(at, record.len()).map(|packed| Unwritten {
            tag,
            generation,
            packed,
        });
        let pending = &mut inner.tier.as_mut()?.pending;
        // Reservations are made under the lock, so that records follow one
        // another while some wait. Were there a gap, what waits is written
        // after the fill's next record, or at the next `write_pending`.
        let mut before = None;
        if pending.end() != at || pending.bytes.is_empty() {
            if !filling {
                return Some(Batch {
                    segment,
                    at,
                    bytes: record,
                    records: new.into_iter().collect(),
                });
            }
            before = pending.take(&segment);
            pending.at = at;
        }
        pending.bytes.extend_from_slice(&record);
        pending.records.extend(new);
        before.or_else(|| {
            if filling {
                pending.take_chunk(&segment)
            } else {
                pending.take(&segment)
            }
        })
    }

    /// Writes a batch outside the lock; the index learns of its records
    /// only once they are whole, and only of those whose keys nothing
    /// evicted meanwhile.
    fn write(&self, batch: Batch) {
        if let Err(e) = batch.segment.write(batch.at, &batch.bytes) {
            let before = self
                .write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(
                    "the hits file cannot be written ({e}): lookups are served from \
                     the store (logged once)"
                );
            }
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let current: Vec<bool> = batch
            .records
            .iter()
            .map(|r| inner.generation(r.tag) == r.generation)
            .collect();
        if let Some(tier) = inner
            .tier
            .as_mut()
            .filter(|t| Arc::ptr_eq(&t.segment, &batch.segment))
        {
            for (r, current) in batch.records.iter().zip(current) {
                if current {
                    tier.index.insert(r.tag, r.packed);
                }
            }
        }
    }

    /// Writes whatever a fill left waiting.
    fn write_pending(&self) {
        let batch = self.inner.lock().ok().and_then(|mut inner| {
            let tier = inner.tier.as_mut()?;
            tier.pending.take(&tier.segment)
        });
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

    /// Room for `len` bytes in the hits file; a full file starts over
    /// (and the tier with it, records waiting to be written too).
    fn reserve(&self, inner: &mut Inner, log: &HitLog, len: usize) -> Option<(Arc<Segment>, u64)> {
        let tier = inner.tier.as_mut()?;
        if let Some(at) = tier.segment.reserve(len, log.cap) {
            return Some((tier.segment.clone(), at));
        }
        match log.rotate() {
            Ok(segment) => {
                tier.segment = segment;
                tier.index.clear();
                tier.filled = false;
                tier.pending = Pending::default();
            }
            Err(e) => {
                tracing::warn!("the hits file could not start over, so it is off: {e}");
                inner.tier = None;
            }
        }
        inner.cleared += 1;
        None
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
mod tests {
    use super::*;

    /// Inserts into both tiers with the key's current generation.
    fn insert_now(h: &HotHits, k: &CacheKey, hit: HotHit) {
        h.insert(h.generation("ns", k), "ns", k, hit, true);
    }

    fn hit(completed_ms: i64, ttl_ms: Option<i64>) -> HotHit {
        HotHit {
            completed_ms,
            ttl_ms,
            fields: prost::bytes::Bytes::from_static(&[0u8]),
        }
    }

    #[test]
    fn serves_until_stale_or_expired() {
        let h = HotHits::new(10, None);
        let k = CacheKey([1; 32]);
        insert_now(&h, &k, hit(1_000, Some(500)));
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
        let h = HotHits::new(10, None);
        let k = CacheKey([2; 32]);
        let before = h.generation("ns", &k);
        h.evict("ns", &k); // a write committed while the lookup was reading
        h.insert(before, "ns", &k, hit(1, None), true);
        assert!(h.get("ns", &k, 2, None).is_none());
        insert_now(&h, &k, hit(1, None));
        assert!(h.get("ns", &k, 2, None).is_some());
        h.clear();
        assert!(h.get("ns", &k, 2, None).is_none());
    }

    fn with_file(dir: &std::path::Path, cap: u64) -> HotHits {
        HotHits::new(0, Some(HitLog::open(dir, cap, None).unwrap()))
    }

    #[test]
    fn the_hits_file_keeps_what_memory_does_not_and_forgets_alike() {
        let dir = tempfile::tempdir().unwrap();
        let h = with_file(dir.path(), 1 << 20);
        let (k, other) = (CacheKey([4; 32]), CacheKey([5; 32]));
        insert_now(&h, &k, hit(1_000, Some(500)));
        let stored = h.get_stored("ns", &k, 1_100, None).unwrap();
        assert_eq!(&stored.fields[..], &[0u8]);
        assert!(h.get_stored("ns", &k, 1_501, None).is_none(), "ttl");
        assert!(h.get_stored("nt", &k, 1_100, None).is_none());
        assert!(h.get_stored("ns", &other, 1_100, None).is_none());

        // An eviction of another key in another stripe turns no insert away.
        let before = h.generation("ns", &k);
        h.evict("ns", &other);
        h.insert(before, "ns", &k, hit(2_000, None), true);
        assert_eq!(
            h.get_stored("ns", &k, 2_100, None).unwrap().completed_ms,
            2_000
        );
        // Its own eviction does, and forgets the stored one.
        let before = h.generation("ns", &k);
        h.evict("ns", &k);
        assert!(h.get_stored("ns", &k, 2_100, None).is_none());
        h.insert(before, "ns", &k, hit(3_000, None), true);
        assert!(h.get_stored("ns", &k, 3_100, None).is_none());
        insert_now(&h, &other, hit(1, None));
        h.clear();
        assert!(h.get_stored("ns", &other, 2, None).is_none());
    }

    #[test]
    fn a_full_hits_file_starts_over() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two records of this size (header 62 + "ns" + 1 byte).
        let h = with_file(dir.path(), 130);
        let keys: Vec<CacheKey> = (10..13).map(|i| CacheKey([i; 32])).collect();
        for k in &keys[..2] {
            insert_now(&h, k, hit(1, None));
        }
        assert!(keys[..2]
            .iter()
            .all(|k| h.get_stored("ns", k, 2, None).is_some()));
        // The third does not fit: the file starts over, empty.
        insert_now(&h, &keys[2], hit(1, None));
        assert!(keys
            .iter()
            .all(|k| h.get_stored("ns", k, 2, None).is_none()));
        insert_now(&h, &keys[2], hit(1, None));
        assert!(h.get_stored("ns", &keys[2], 2, None).is_some());
        let len = std::fs::metadata(dir.path().join(hitlog::LOG_FILE))
            .unwrap()
            .len();
        assert_eq!(len, 65);
    }

    /// A hit whose record in the hits file is 62 + 2 + `size` bytes: its
    /// fields do not compress, against the dictionary or each other.
    fn sized_hit(size: usize) -> HotHit {
        static SEED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let seed = SEED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut x = 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(seed);
        let noise = (0..size).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        });
        HotHit {
            completed_ms: 1,
            ttl_ms: None,
            fields: noise.collect(),
        }
    }

    #[test]
    fn a_fill_writes_whole_aligned_chunks_and_indexes_a_record_once_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let h = with_file(dir.path(), 1 << 30);
        let file_len = || {
            std::fs::metadata(dir.path().join(hitlog::LOG_FILE))
                .unwrap()
                .len()
        };
        let fill =
            |k: &CacheKey| h.insert(h.generation("ns", k), "ns", k, sized_hit(99_936), false);
        let stored = |k: &CacheKey| h.get_stored("ns", k, 2, None).is_some();
        // Records of 100,000 bytes: the 21st crosses the first 2 MiB boundary.
        let keys: Vec<CacheKey> = (0..45u8).map(|i| CacheKey([i; 32])).collect();
        for k in &keys[..20] {
            fill(k);
        }
        assert_eq!(file_len(), 0, "nothing written before a chunk is whole");
        assert!(!keys[..20].iter().any(stored));
        h.evict("ns", &keys[3]); // evicted while its record waits
        fill(&keys[20]);
        assert_eq!(file_len(), FILL_CHUNK, "one write, up to the boundary");
        assert!(keys[..20]
            .iter()
            .enumerate()
            .all(|(i, k)| stored(k) == (i != 3)));
        assert!(!stored(&keys[20]), "it straddles the boundary");
        for k in &keys[21..42] {
            fill(k);
        }
        assert_eq!(file_len(), 2 * FILL_CHUNK);
        assert!(stored(&keys[20]) && stored(&keys[40]) && !stored(&keys[41]));
        // A lookup's insert writes what waits with its own record.
        insert_now(&h, &keys[42], sized_hit(10));
        assert!(stored(&keys[41]) && stored(&keys[42]));
        // The end of a fill writes the rest.
        fill(&keys[43]);
        assert!(!stored(&keys[43]));
        let since = h.clears();
        h.filled(since);
        assert!(stored(&keys[43]) && !h.needs_filling());
        assert_eq!(file_len(), 43 * 100_000 + 74);
        // So does a close: what waits is in the index it keeps.
        fill(&keys[44]);
        h.persist(9).unwrap();
        let again = HitLog::open(dir.path(), 1 << 30, Some(9)).unwrap();
        assert_eq!(again.index.len(), 44, "all but the evicted one");
    }

    #[test]
    fn keys_whose_tags_collide_never_get_each_others_hits() {
        let h = HotHits::new(10, None);
        let (k, other) = (CacheKey([6; 32]), CacheKey([7; 32]));
        let mut inner = h.inner.lock().unwrap();
        inner.remember(42, "ns", &k, Arc::new(hit(1, None)));
        assert!(inner.memory(42, "ns", &k).is_some());
        assert!(inner.memory(42, "ns", &other).is_none(), "another key");
        assert!(inner.memory(42, "nt", &k).is_none(), "another namespace");
        inner.remember(42, "ns", &other, Arc::new(hit(2, None)));
        assert!(inner.memory(42, "ns", &k).is_none(), "the later evicts");
        assert_eq!(inner.memory(42, "ns", &other).unwrap().completed_ms, 2);
    }

    /// Whether this file system reads a cached page without waiting
    /// (RWF_NOWAIT), as `get` needs to read the hits file.
    fn reads_without_waiting(dir: &std::path::Path) -> bool {
        let path = dir.join("probe");
        std::fs::write(&path, [1u8; 16]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        crate::store::os::read_nowait(&file, 16, 0).is_some()
    }

    #[test]
    fn a_hit_memory_lost_is_read_from_the_file_and_kept_in_memory_again() {
        let dir = tempfile::tempdir().unwrap();
        if !reads_without_waiting(dir.path()) {
            eprintln!("skipped: the temp dir's file system has no RWF_NOWAIT reads");
            return;
        }
        let log = HitLog::open(dir.path(), 1 << 20, None).unwrap();
        let h = HotHits::new(1, Some(log));
        let (a, b) = (CacheKey([8; 32]), CacheKey([9; 32]));
        insert_now(&h, &a, hit(1_000, Some(500)));
        insert_now(&h, &b, hit(2_000, None)); // memory holds one: `a` goes
        let in_memory = |k: &CacheKey| {
            let mut inner = h.inner.lock().unwrap();
            inner.memory(hitlog::tag("ns", k), "ns", k).is_some()
        };
        assert!(!in_memory(&a) && in_memory(&b));
        let got = h.get("ns", &a, 1_100, None).expect("a from the hits file");
        assert_eq!((got.completed_ms, got.ttl_ms), (1_000, Some(500)));
        assert!(!in_memory(&a), "one read does not pass the doorkeeper");
        assert!(h.get("ns", &a, 1_100, None).is_some());
        assert!(
            in_memory(&a) && !in_memory(&b),
            "the second goes into memory"
        );
        // Judged like any hit, from either tier.
        assert!(h.get("ns", &b, 2_100, None).is_some(), "b from the file");
        assert!(h.get("ns", &a, 1_501, None).is_none(), "ttl");
        assert!(h.get("ns", &CacheKey([10; 32]), 1_100, None).is_none());
    }

    #[test]
    fn the_doorkeeper_lets_in_what_it_saw_within_its_window() {
        // A tag's two bits are its bits 0-9 and 32-41 (1,024 bits for a
        // window of 100): `t | t << 32` sets bit t only, apart from 7's.
        let tag = |t: u64| t | t << 32;
        let mut d = Doorkeeper::new(100);
        assert!(!d.seen(tag(7)), "a first read");
        assert!(d.seen(tag(7)), "a second read");
        // 99 more keys turn the window over once: 7 is in the previous set.
        for t in 16..115 {
            assert!(!d.seen(tag(t)));
        }
        assert!(d.seen(tag(7)), "seen in the previous window");
        assert!(d.seen(tag(16)));
        // Another 100: the window turns over again, and 7 is forgotten.
        for t in 200..300 {
            assert!(!d.seen(tag(t)));
        }
        assert!(!d.seen(tag(7)));
        assert!(!d.seen(tag(16)));
    }

    #[test]
    fn capacity_zero_is_off() {
        let h = HotHits::new(0, None);
        let k = CacheKey([3; 32]);
        insert_now(&h, &k, hit(1, None));
        assert!(h.get("ns", &k, 2, None).is_none());
    }
}
