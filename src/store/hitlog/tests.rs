//! The hits file's records, index and reopening.

use super::*;

#[test]
fn a_record_reads_back_only_as_its_own_key() {
    let (k, other) = (CacheKey([7; 32]), CacheKey([8; 32]));
    let r = encode(None, "ns", &k, 1_000, Some(50), b"fields").unwrap();
    let s = decode(&r, "ns", &k, None).unwrap();
    assert_eq!(
        (s.completed_ms, s.ttl_ms, &s.fields[..]),
        (1_000, Some(50), &b"fields"[..])
    );
    assert!(decode(&r, "ns", &other, None).is_none());
    assert!(decode(&r, "nt", &k, None).is_none());
    let mut torn = r.clone();
    let last = torn.len() - 1;
    torn[last] ^= 1;
    assert!(decode(&torn, "ns", &k, None).is_none(), "crc");
    assert!(decode(&r[..r.len() - 1], "ns", &k, None).is_none());
    let none = encode(None, "ns", &k, 1, None, b"").unwrap();
    assert_eq!(decode(&none, "ns", &k, None).unwrap().ttl_ms, None);
    // Compressed, and a length past a record's limit is refused, not
    // allocated, even under a good CRC.
    let dict = &b"dddd dddd dddd"[..];
    let mut huge = encode(Some(dict), "ns", &k, 1, None, &[b'd'; 200]).unwrap();
    assert!(huge.len() < HEADER + 2 + 100);
    assert_eq!(
        &decode(&huge, "ns", &k, Some(dict)).unwrap().fields[..],
        &[b'd'; 200]
    );
    huge[58..62].copy_from_slice(&(1u32 << LEN_BITS).to_le_bytes());
    let crc = crc32fast::hash(&huge[8..]);
    huge[4..8].copy_from_slice(&crc.to_le_bytes());
    assert!(decode(&huge, "ns", &k, Some(dict)).is_none());
}

/// The decompressor is lz4_flex's bounds-checked fast one (not its
/// `safe-decode` one): a damaged payload under a good CRC (a record
/// written by something else) reads as a miss or as some bytes of the
/// stated length, never past the buffers.
#[test]
fn a_damaged_compressed_payload_under_a_good_crc_is_read_safely() {
    let k = CacheKey([3; 32]);
    let dict: Vec<u8> = (0..2048u32).map(|i| (i * 7 % 251) as u8).collect();
    // Matches into the dictionary and into the record itself, between
    // literals.
    let mut raw = Vec::new();
    for (i, at) in [100usize, 900, 1500, 300, 1700].into_iter().enumerate() {
        raw.extend_from_slice(&dict[at..at + 120]);
        raw.extend_from_slice(format!("literal {i}").as_bytes());
        raw.extend_from_within(..40);
    }
    let good = encode(Some(&dict), "ns", &k, 1, None, &raw).unwrap();
    assert!(good.len() < HEADER + 2 + raw.len() / 2, "{}", good.len());
    let payload = HEADER + 2;
    let (mut misses, mut read) = (0, 0);
    for at in payload..good.len() {
        for flip in [0x01u8, 0x10, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= flip;
            let crc = crc32fast::hash(&bad[8..]);
            bad[4..8].copy_from_slice(&crc.to_le_bytes());
            match decode(&bad, "ns", &k, Some(&dict)) {
                None => misses += 1,
                Some(s) => {
                    assert_eq!(s.fields.len(), raw.len());
                    read += 1;
                }
            }
        }
    }
    assert!(misses > 0 && read > 0, "{misses} misses, {read} read");
}

#[test]
fn the_index_comes_back_only_with_its_epoch_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let k = CacheKey([1; 32]);
    let Opened {
        log,
        segment: seg,
        mut index,
        filled,
    } = HitLog::open(dir.path(), 1 << 20, None).unwrap();
    assert!(index.is_empty() && !filled);
    append(&log, &seg, &mut index, &k, b"abc");
    log.persist(&seg, &index, true, 42).unwrap();
    drop(seg);

    let opened = HitLog::open(dir.path(), 1 << 20, Some(42)).unwrap();
    let (seg, loaded) = (opened.segment, opened.index);
    let sorted = |i: &Index| {
        let mut all: Vec<_> = i.iter().collect();
        all.sort_unstable();
        all
    };
    assert_eq!(sorted(&loaded), sorted(&index));
    assert!(opened.filled);
    assert_eq!(
        &read_back(&seg, &loaded, &k, false).unwrap().fields[..],
        b"abc"
    );
    // Just written and read: in the page cache, so read without waiting
    // on Linux; the portable path never reads without waiting.
    let nowait = read_back(&seg, &loaded, &k, true).map(|s| s.fields.to_vec());
    assert_eq!(nowait, os::LINUX_IO.then(|| b"abc".to_vec()));
    drop(seg);
    // Opened once: the index file is gone, as after a crash.
    let opened = HitLog::open(dir.path(), 1 << 20, Some(42)).unwrap();
    let (seg, again) = (opened.segment, opened.index);
    assert!(again.is_empty() && !opened.filled);
    assert_eq!(seg.end.load(Ordering::Relaxed), 0, "the file starts over");

    log.persist(&seg, &index, false, 7).unwrap();
    let other = HitLog::open(dir.path(), 1 << 20, Some(8)).unwrap().index;
    assert!(other.is_empty(), "another epoch");
}

#[test]
fn a_damaged_index_file_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let Opened {
        log,
        segment: seg,
        mut index,
        ..
    } = HitLog::open(dir.path(), 1 << 20, None).unwrap();
    index.insert(1, pack(0, 10).unwrap());
    log.persist(&seg, &index, false, 3).unwrap();
    let path = dir.path().join(INDEX_FILE);
    let mut bytes = fs::read(&path).unwrap();
    bytes[40] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let loaded = HitLog::open(dir.path(), 1 << 20, Some(3)).unwrap().index;
    assert!(loaded.is_empty());
    assert!(!path.exists());
}

#[cfg(all(target_os = "linux", not(feature = "portable")))]
#[test]
fn the_file_is_read_without_access_time_updates() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let opened = HitLog::open(dir.path(), 1 << 20, None).unwrap();
    let rotated = opened.log.rotate().unwrap();
    for seg in [&opened.segment, &rotated] {
        // SAFETY: F_GETFL on an fd that `seg` keeps open.
        let flags = unsafe { libc::fcntl(seg.file.as_raw_fd(), libc::F_GETFL) };
        assert_ne!(flags & libc::O_NOATIME, 0, "flags {flags:#o}");
    }
}

/// Fields like a hit's: an execution and its outputs, alike but for
/// a few names and numbers.
fn fields(i: u32) -> Vec<u8> {
    format!(
        "execution {i} component-{c} ghcr.io/example/steps:1.4.2 python -m steps \
         --component component-{c} learning_rate 0.{i} epochs 10 task-{i} \
         in0 {a} in1 {b} out0 system.Dataset out1 system.Model \
         gs://bench/preload/{i}/out0 gs://bench/preload/{i}/out1",
        c = i % 5,
        a = i * 7 % 1000,
        b = i * 13 % 1000,
    )
    .into_bytes()
}

/// `k`'s record, found through `index`.
fn read_back(seg: &Segment, index: &Index, k: &CacheKey, nowait: bool) -> Option<Stored> {
    seg.read(*index.get(&tag("ns", k))?, "ns", k, nowait)
}

/// Writes a record and indexes it.
fn append(log: &HitLog, seg: &Segment, index: &mut Index, k: &CacheKey, f: &[u8]) -> usize {
    let r = log.encode("ns", k, 5, None, f).unwrap();
    let at = seg.reserve(r.len(), log.cap).unwrap();
    seg.write(at, &r).unwrap();
    index.insert(tag("ns", k), pack(at, r.len()).unwrap());
    r.len()
}

#[test]
fn records_compress_against_the_first_fields_and_read_back_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Opened {
        log,
        segment: seg,
        mut index,
        ..
    } = HitLog::open(dir.path(), 1 << 24, None).unwrap();
    let key = |i: u32| {
        let mut k = [0u8; 32];
        k[..4].copy_from_slice(&i.to_le_bytes());
        CacheKey(k)
    };
    let n = 400;
    let mut sizes = Vec::new();
    for i in 0..n {
        sizes.push(append(&log, &seg, &mut index, &key(i), &fields(i)));
    }
    // The first ~16 KiB of fields are stored as they are and make the
    // dictionary; the fields of what follows take a third of theirs.
    let raw = |i: u32| HEADER + 2 + fields(i).len();
    assert_eq!(sizes[0], raw(0));
    let learnt = sizes.iter().position(|s| *s < raw(0)).unwrap();
    assert!(
        (DICT_BYTES / 300..=DICT_BYTES / 150).contains(&learnt),
        "{learnt}"
    );
    for (i, size) in (0..n).zip(&sizes).skip(learnt) {
        let (stored, f) = (size - HEADER - 2, fields(i).len());
        assert!(stored * 3 < f, "{i}: {stored} of {f}");
    }
    let read_all = |seg: &Segment, index: &Index, nowait: bool| {
        (0..n).all(|i| {
            read_back(seg, index, &key(i), nowait)
                .is_some_and(|s| s.fields[..] == fields(i)[..] && s.completed_ms == 5)
        })
    };
    assert!(read_all(&seg, &index, false));
    assert_eq!(read_all(&seg, &index, true), os::LINUX_IO);
    log.persist(&seg, &index, true, 9).unwrap();
    drop((seg, log));

    // The index file keeps the dictionary with the index.
    let opened = HitLog::open(dir.path(), 1 << 24, Some(9)).unwrap();
    assert!(opened.log.dict.get().is_some());
    assert!(read_all(&opened.segment, &opened.index, false));
    assert_eq!(read_all(&opened.segment, &opened.index, true), os::LINUX_IO);
    // A compressed record needs its dictionary: without it, a miss.
    let packed = *opened.index.get(&tag("ns", &key(n - 1))).unwrap();
    let (at, len) = unpack(packed);
    let mut buf = vec![0; len];
    opened.segment.file.read_exact_at(&mut buf, at).unwrap();
    assert!(decode(&buf, "ns", &key(n - 1), None).is_none());
}

#[cfg(all(target_os = "linux", not(feature = "portable")))]
#[test]
fn the_mapping_is_read_only_where_this_process_wrote_or_read_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let Opened {
        log,
        segment: seg,
        mut index,
        ..
    } = HitLog::open(dir.path(), 1 << 20, None).unwrap();
    assert!(seg.map.is_some());
    let (a, b) = (CacheKey([1; 32]), CacheKey([2; 32]));
    let len = append(&log, &seg, &mut index, &a, b"one");
    assert!(seg.is_resident(0, len) && !seg.is_resident(PAGE, 1));
    // A record across a page boundary needs both pages.
    let big = vec![3u8; PAGE as usize];
    append(&log, &seg, &mut index, &b, &big);
    assert!(seg.is_resident(PAGE, 1));
    log.persist(&seg, &index, false, 4).unwrap();
    drop(seg);

    // Reopened: nothing is marked until it is read through the file.
    let opened = HitLog::open(dir.path(), 1 << 20, Some(4)).unwrap();
    let seg = opened.segment;
    assert!(!seg.is_resident(0, 1));
    let packed = *opened.index.get(&tag("ns", &b)).unwrap();
    let (at, len) = unpack(packed);
    assert_eq!(
        &seg.read(packed, "ns", &b, true).unwrap().fields[..],
        &big[..]
    );
    assert!(seg.is_resident(at, len) && seg.is_resident(PAGE, 1));
    // And then read through the mapping, to the same record.
    assert_eq!(
        &seg.read(packed, "ns", &b, true).unwrap().fields[..],
        &big[..]
    );
    assert!(
        seg.read(packed, "ns", &a, true).is_none(),
        "another key's record"
    );
}

#[cfg(all(target_os = "linux", not(feature = "portable")))]
#[test]
fn pages_the_page_cache_no_longer_holds_are_read_through_the_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let Opened {
        log,
        segment: seg,
        mut index,
        ..
    } = HitLog::open(dir.path(), 1 << 20, None).unwrap();
    let k = CacheKey([1; 32]);
    let len = append(&log, &seg, &mut index, &k, b"one");
    // Pages reserved but never written are in no page cache: as if the
    // kernel had dropped them after they were marked.
    let at = seg.reserve(3 * PAGE as usize, log.cap).unwrap();
    seg.mark(PAGE, 2 * PAGE as usize);
    assert!(at < PAGE && seg.is_resident(PAGE, 2 * PAGE as usize));
    seg.refresh_resident();
    assert!(seg.is_resident(0, len), "written: in the page cache");
    assert!(!seg.is_resident(PAGE, 1) && !seg.is_resident(2 * PAGE, 1));
    assert_eq!(
        &read_back(&seg, &index, &k, true).unwrap().fields[..],
        b"one"
    );
}

#[test]
fn a_limit_too_large_to_map_reads_through_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let Opened {
        log,
        segment: seg,
        mut index,
        ..
    } = HitLog::open(dir.path(), MAX_MAPPED + 1, None).unwrap();
    assert!(seg.map.is_none() && seg.resident.is_empty());
    let k = CacheKey([5; 32]);
    append(&log, &seg, &mut index, &k, b"abc");
    assert_eq!(
        &read_back(&seg, &index, &k, false).unwrap().fields[..],
        b"abc"
    );
    // A read that must not wait finds the page cache's copy on Linux;
    // the portable path never reads without waiting.
    let nowait = read_back(&seg, &index, &k, true);
    assert_eq!(nowait.is_some(), os::LINUX_IO);
}

#[test]
fn reservations_stop_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let seg = HitLog::open(dir.path(), 100, None).unwrap().segment;
    assert_eq!(seg.reserve(60, 100), Some(0));
    assert_eq!(seg.reserve(60, 100), None);
    assert!(pack(1 << 41, 5).is_none());
    assert_eq!(unpack(pack(12_345, 678).unwrap()), (12_345, 678));
}
