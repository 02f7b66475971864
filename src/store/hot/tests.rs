//! The hot cache's tests: both tiers, generations, the fill's chunks.

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
    let fill = |k: &CacheKey| h.insert(h.generation("ns", k), "ns", k, sized_hit(99_936), false);
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
fn capacity_zero_is_off() {
    let h = HotHits::new(0, None);
    let k = CacheKey([3; 32]);
    insert_now(&h, &k, hit(1, None));
    assert!(h.get("ns", &k, 2, None).is_none());
}
