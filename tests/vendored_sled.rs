//! The vendored sled's read path (vendor/README.md, changes 10 to 12)
//! against a model: pages paged back in from the log with one read of their
//! recorded size, and scans whose first entry is answered without a copy of
//! the leaf, must give exactly what was written. Also its IO buffers
//! (change 16), the order in which a transaction's writes are applied
//! (change 17), writes in a transaction that skip the read (change 6), and
//! the checkpoint of a closed store under kills (change 3).

use std::collections::BTreeMap;
use std::ops::Bound;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

/// A cache of 1 KiB (4 bytes per LRU shard): nearly every read pages in.
/// A reopen right after a drop waits for the lock: sled's flusher thread
/// lets go of the file a moment after the last handle (seen once under load).
fn open(dir: &std::path::Path) -> sled::Db {
    open_with(&sled::Config::new().path(dir).cache_capacity(1024))
}

fn open_with(config: &sled::Config) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match config.open() {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                assert!(std::time::Instant::now() < deadline, "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

fn key(rng: &mut StdRng) -> Vec<u8> {
    // A few prefixes, so that scans by prefix find several leaves' worth.
    let prefix = rng.random_range(b'a'..=b'e');
    let mut k = vec![prefix];
    k.extend((0..rng.random_range(1..40)).map(|_| rng.random::<u8>()));
    k
}

fn value(rng: &mut StdRng) -> Vec<u8> {
    // Values on both sides of a message header and up to several KiB, so
    // leaves range from a few hundred bytes to past the 16 KiB split size.
    let len = match rng.random_range(0..4) {
        0 => rng.random_range(0..24),
        1 => rng.random_range(24..200),
        2 => rng.random_range(200..2_000),
        _ => rng.random_range(2_000..9_000),
    };
    (0..len).map(|_| rng.random::<u8>()).collect()
}

fn write(db: &sled::Db, model: &mut Model, rng: &mut StdRng, n: usize) {
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for _ in 0..n {
        match rng.random_range(0..10) {
            // Overwrites and removals leave pages of several fragments.
            0 | 1 if !keys.is_empty() => {
                let k = keys[rng.random_range(0..keys.len())].clone();
                let v = value(rng);
                db.insert(&k, v.clone()).unwrap();
                model.insert(k, v);
            }
            2 if !keys.is_empty() => {
                let k = &keys[rng.random_range(0..keys.len())];
                db.remove(k).unwrap();
                model.remove(k);
            }
            _ => {
                let (k, v) = (key(rng), value(rng));
                db.insert(&k, v.clone()).unwrap();
                model.insert(k, v);
            }
        }
    }
}

fn pairs(it: sled::Iter) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.map(|r| {
        let (k, v) = r.unwrap();
        (k.to_vec(), v.to_vec())
    })
    .collect()
}

fn owned<'a>(it: impl Iterator<Item = (&'a Vec<u8>, &'a Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    it.map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Whether `first_at_or_after(at)` answered; when it did, its answer must be
/// the model's first entry at or after `at`.
fn first_at_or_after_matches(db: &sled::Db, model: &Model, at: &[u8]) -> bool {
    let Some((k, v)) = db.first_at_or_after(at).unwrap() else {
        return false;
    };
    let want = model
        .range::<[u8], _>((Bound::Included(at), Bound::Unbounded))
        .next();
    assert_eq!(
        Some((&k[..], &v[..])),
        want.map(|(k, v)| (&k[..], &v[..])),
        "first_at_or_after {at:?}"
    );
    true
}

fn check(db: &sled::Db, model: &Model, rng: &mut StdRng, answered: &mut usize) {
    assert_eq!(db.len(), model.len());
    for (k, v) in model {
        assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]), "get {k:?}");
    }
    assert_eq!(pairs(db.iter()), owned(model.iter()), "the whole tree");
    for _ in 0..300 {
        // The first entry at or after a random point, as a lookup reads it.
        let at = key(rng);
        let first = db.range(at.clone()..).next().map(|r| r.unwrap());
        let want = model.range(at.clone()..).next();
        assert_eq!(
            first.as_ref().map(|(k, v)| (&k[..], &v[..])),
            want.map(|(k, v)| (&k[..], &v[..])),
            "first at or after {at:?}"
        );
        // The same from `first_at_or_after` (change 12), when it answers.
        *answered += usize::from(first_at_or_after_matches(db, model, &at));
        // A prefix scan, read in full, and a range whose start is excluded
        // (which takes the copying path from its first call).
        let prefix = &at[..rng.random_range(1..=at.len().min(2))];
        let want: Vec<_> = owned(model.iter().filter(|(k, _)| k.starts_with(prefix)));
        assert_eq!(pairs(db.scan_prefix(prefix)), want, "prefix {prefix:?}");
        let hi = key(rng);
        let (lo, hi) = if at <= hi { (at, hi) } else { (hi, at) };
        let bounds = (Bound::Excluded(lo.clone()), Bound::Included(hi.clone()));
        assert_eq!(
            pairs(db.range::<Vec<u8>, _>(bounds.clone())),
            owned(model.range(bounds.clone())),
            "range ({lo:?}, {hi:?}]"
        );
        // Backwards after one step forwards.
        let mut it = db.range(lo.clone()..=hi.clone());
        let head = it.next().map(|r| r.unwrap().0.to_vec());
        let tail = it.next_back().map(|r| r.unwrap().0.to_vec());
        let mut want = model.range(lo..=hi).map(|(k, _)| k.clone());
        let want_head = want.next();
        assert_eq!(head, want_head);
        assert_eq!(tail, want.next_back());
    }
}

#[test]
fn pages_read_back_from_the_log_match_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5eed_5eed);
    let mut model = Model::new();
    // Probes that `first_at_or_after` answered (of 300 per check).
    let mut answered = 0;
    {
        let db = open(dir.path());
        write(&db, &mut model, &mut rng, 3_000);
        db.flush().unwrap();
        check(&db, &model, &mut rng, &mut answered);
        // More writes to pages that are on disk, then read again.
        write(&db, &mut model, &mut rng, 1_500);
        db.flush().unwrap();
        check(&db, &model, &mut rng, &mut answered);
    }
    // Recovery reads the log without size hints; then the pages are paged
    // in with them.
    let db = open(dir.path());
    check(&db, &model, &mut rng, &mut answered);
    write(&db, &mut model, &mut rng, 500);
    check(&db, &model, &mut rng, &mut answered);
    eprintln!("first_at_or_after answered {answered} of 1200 probes");
    assert!(answered >= 600, "{answered} of 1200 probes answered");
}

/// The first entry at or after each of `n` random points, from
/// `first_at_or_after` where it answers; returns how many it answered.
fn probe_first(db: &sled::Db, model: &Model, rng: &mut StdRng, n: usize) -> usize {
    (0..n)
        .filter(|_| first_at_or_after_matches(db, model, &key(rng)))
        .count()
}

#[test]
fn first_entries_read_from_leaves_not_in_the_cache_match_the_model() {
    // Just after a restart no leaf is in the cache, and `first_at_or_after`
    // reads leaves without adding them: every probe reads one from the log.
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x1eaf);
    let mut model = Model::new();
    let db = open(dir.path());
    write(&db, &mut model, &mut rng, 3_000);
    drop(db);
    let db = open(dir.path());
    // Leaves as one node each.
    let answered = probe_first(&db, &model, &mut rng, 400);
    assert!(answered >= 300, "{answered} of 400 answered");
    // Overwrites and removals leave leaves of a node and the links written
    // since; a new start leaves them out of the cache again.
    write(&db, &mut model, &mut rng, 600);
    drop(db);
    let db = open(dir.path());
    let answered = probe_first(&db, &model, &mut rng, 400);
    assert!(answered >= 300, "{answered} of 400 answered");
    check(&db, &model, &mut rng, &mut 0);
}

/// Overwrites of existing keys only: the live data keeps its size while the
/// log takes more writes, so segments must be freed and reused.
fn overwrite(db: &sled::Db, model: &mut Model, rng: &mut StdRng, n: usize) {
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for _ in 0..n {
        let k = keys[rng.random_range(0..keys.len())].clone();
        let v = value(rng);
        db.insert(&k, v.clone()).unwrap();
        model.insert(k, v);
    }
}

/// Vendored sled change 15: a start overwrites only the first page of each
/// free segment, so segments reused after it still hold an earlier use's
/// messages past what the new use wrote. Stores reopened between rounds of
/// overwrites (which free segments and reuse them) must read back exactly
/// what was written: nothing of an earlier use comes back.
#[test]
fn stores_reopened_over_reused_segments_read_back_only_what_was_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(0x5e65);
    let mut model = Model::new();
    let mut answered = 0;
    // 64 KiB segments: a round writes ~60 of them.
    let config = sled::Config::new()
        .path(dir.path())
        .cache_capacity(1024)
        .segment_size(64 * 1024);
    let mut file_lens = Vec::new();
    for round in 0..12 {
        let db = open_with(&config);
        check(&db, &model, &mut rng, &mut answered);
        if round == 0 {
            write(&db, &mut model, &mut rng, 1_500);
        } else {
            overwrite(&db, &mut model, &mut rng, 1_500);
        }
        db.flush().unwrap();
        check(&db, &model, &mut rng, &mut answered);
        drop(db);
        file_lens.push(std::fs::metadata(dir.path().join("db")).unwrap().len());
    }
    // Segments were freed and reused: once sled's space amplification
    // settles, the last four rounds of overwrites (each as large as the
    // first round) grew the file by less than one round's worth.
    eprintln!("data file after each round: {file_lens:?}");
    assert!(
        file_lens[11] < file_lens[7] + file_lens[0],
        "the log kept growing: {file_lens:?}"
    );
}

/// Change 16 (the current IO buffer behind a lock, the replaced one dropped
/// at once): writers on several threads, each flushing as it goes, fill and
/// seal thousands of buffers of 64 KiB segments while readers read what is
/// written; every write is read back before and after a restart.
#[test]
fn io_buffers_replaced_under_concurrent_writes_and_flushes_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = sled::Config::new()
        .path(dir.path())
        .cache_capacity(64 * 1024)
        .segment_size(64 * 1024);
    let db = open_with(&config);
    let written: Vec<Model> = std::thread::scope(|s| {
        let writers: Vec<_> = (0..6u8)
            .map(|t| {
                let db = &db;
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(u64::from(t));
                    let mut model = Model::new();
                    for i in 0..2_000u32 {
                        let mut k = vec![t];
                        k.extend(i.to_be_bytes());
                        let v = value(&mut rng);
                        db.insert(&k, v.clone()).unwrap();
                        model.insert(k, v);
                        if i % 7 == 0 {
                            db.flush().unwrap();
                        }
                    }
                    model
                })
            })
            .collect();
        let db = &db;
        s.spawn(move || {
            let mut rng = StdRng::seed_from_u64(99);
            for _ in 0..3_000 {
                let mut k = vec![rng.random_range(0..6u8)];
                k.extend(rng.random_range(0..2_000u32).to_be_bytes());
                db.get(&k).unwrap();
            }
        });
        writers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let model: Model = written.into_iter().flatten().collect();
    let check_all = |db: &sled::Db| {
        assert_eq!(pairs(db.iter()), owned(model.iter()));
    };
    check_all(&db);
    drop(db);
    let db = open_with(&config);
    check_all(&db);
}

#[test]
fn a_transaction_applies_its_writes_in_key_order_and_keeps_the_last_of_each_key() {
    use sled::transaction::{ConflictableTransactionError, TransactionalTree};
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let mut rng = StdRng::seed_from_u64(17);
    let mut model = Model::new();
    write(&db, &mut model, &mut rng, 300);
    // Writes in random order, some keys twice (the second write wins), some
    // removed; a subscriber sees the order in which the commit applies them.
    let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..400)
        .map(|_| (key(&mut rng), Some(value(&mut rng))))
        .collect();
    let again: Vec<_> = writes[..50]
        .iter()
        .map(|(k, _)| (k.clone(), Some(value(&mut rng))))
        .collect();
    writes.extend(again);
    let removed: Vec<_> = model.keys().take(40).map(|k| (k.clone(), None)).collect();
    writes.extend(removed);
    let mut events = db.watch_prefix(vec![]);
    db.transaction(|tx: &TransactionalTree| {
        for (k, v) in &writes {
            match v {
                Some(v) => tx.set(k.as_slice(), v.as_slice())?,
                None => {
                    tx.remove(k.as_slice())?;
                }
            }
        }
        Ok::<_, ConflictableTransactionError<()>>(())
    })
    .unwrap();
    for (k, v) in &writes {
        match v {
            Some(v) => model.insert(k.clone(), v.clone()),
            None => model.remove(k),
        };
    }
    let distinct: std::collections::BTreeSet<&Vec<u8>> = writes.iter().map(|(k, _)| k).collect();
    let applied: Vec<Vec<u8>> = (0..distinct.len())
        .map(|_| {
            match events
                .next_timeout(std::time::Duration::from_secs(10))
                .unwrap()
            {
                sled::Event::Insert { key, .. } | sled::Event::Remove { key } => key.to_vec(),
            }
        })
        .collect();
    let sorted: Vec<Vec<u8>> = distinct.into_iter().cloned().collect();
    let misplaced = applied.iter().zip(&sorted).filter(|(a, s)| a != s).count();
    assert!(
        applied.len() == sorted.len() && misplaced == 0,
        "the commit applies each key once, in key order: {misplaced} of {} out of place",
        sorted.len()
    );
    assert_eq!(pairs(db.iter()), owned(model.iter()));
}

/// Change 6 (`TransactionalTree::set`, a write that skips the read of the
/// old value): sets stay inside their transaction. Threads move units
/// between accounts with `get` and `set` while a reader sums them in
/// transactions of its own; some transactions set a key and then abort.
/// The sum never changes, no aborted set is ever seen, and the store holds
/// the sum after a restart. A `set` that wrote to the tree itself, or that
/// a concurrent transaction could interleave with, fails it.
#[test]
fn transaction_sets_are_atomic_and_isolated() {
    use sled::transaction::{abort, ConflictableTransactionError, TransactionalTree};
    const ACCOUNTS: u8 = 16;
    const START: u64 = 1_000;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path());
    let account = |i: u8| vec![b'a', i];
    let amount =
        |v: Option<sled::IVec>| u64::from_be_bytes(v.unwrap().as_ref().try_into().unwrap());
    for i in 0..ACCOUNTS {
        db.insert(account(i), &START.to_be_bytes()).unwrap();
    }
    let total = START * u64::from(ACCOUNTS);
    let sum = |tx: &TransactionalTree| -> Result<u64, ConflictableTransactionError<()>> {
        let mut sum = 0;
        for i in 0..ACCOUNTS {
            sum += amount(tx.get(account(i))?);
        }
        Ok(sum)
    };
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let movers: Vec<_> = (0..4u64)
            .map(|t| {
                let db = &db;
                s.spawn(move || {
                    let mut rng = StdRng::seed_from_u64(t);
                    for n in 0..400 {
                        let from = rng.random_range(0..ACCOUNTS);
                        let to = (from + rng.random_range(1..ACCOUNTS)) % ACCOUNTS;
                        let aborts = n % 5 == 0;
                        let result = db.transaction(|tx| {
                            let a = amount(tx.get(account(from))?);
                            let b = amount(tx.get(account(to))?);
                            let moved = a.min(1);
                            tx.set(account(from), &(a - moved).to_be_bytes())?;
                            tx.set(account(to), &(b + moved).to_be_bytes())?;
                            if aborts {
                                tx.set(b"aborted".as_slice(), b"seen".as_slice())?;
                                return abort(());
                            }
                            Ok(())
                        });
                        assert_eq!(result.is_err(), aborts);
                    }
                })
            })
            .collect();
        let db = &db;
        let done = &done;
        let reader = s.spawn(move || {
            let mut sums = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let seen = db
                    .transaction(|tx| {
                        let aborted = tx.get(b"aborted".as_slice())?;
                        Ok::<_, ConflictableTransactionError<()>>((sum(tx)?, aborted))
                    })
                    .unwrap();
                assert_eq!(
                    seen,
                    (total, None),
                    "a transaction saw another's writes half-done"
                );
                sums += 1;
            }
            sums
        });
        for m in movers {
            m.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
    });
    let check = |db: &sled::Db| {
        assert_eq!(db.transaction(sum).unwrap(), total);
        assert_eq!(db.get(b"aborted").unwrap(), None);
    };
    check(&db);
    drop(db);
    check(&open(dir.path()));
}

/// The child of `a_checkpoint_killed_midway_leaves_a_store_that_opens_whole`:
/// when that test runs this binary with the variable set, checkpoints the
/// store it names; otherwise does nothing.
#[test]
fn checkpoint_child() {
    if let Ok(dir) = std::env::var("VENDORED_SLED_CHECKPOINT") {
        // The parent's last handle lets go of the file a moment after its
        // drop (sled's flusher thread): wait for the lock as `open` does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match sled::Config::new().path(&dir).checkpoint() {
                Err(e) if e.to_string().contains("could not acquire lock") => {
                    assert!(std::time::Instant::now() < deadline, "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                done => return done.unwrap(),
            }
        }
    }
}

/// Change 3 (`Config::checkpoint` on a closed store, which `Store::close`
/// runs): a checkpoint killed at any moment leaves a store that opens with
/// everything that was flushed, and one that completes leaves the next
/// open nothing to replay. Each round writes more (a log to catch up on),
/// then kills a checkpoint at a random moment within the time a whole one
/// took (measured in the first round); the store is checked against the
/// model after every round.
#[test]
fn a_checkpoint_killed_midway_leaves_a_store_that_opens_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let mut model = Model::new();
    let checkpoint = || {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "checkpoint_child",
                "--test-threads",
                "1",
                "--quiet",
            ])
            .env("VENDORED_SLED_CHECKPOINT", dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut whole = std::time::Duration::ZERO;
    let mut killed = 0;
    for round in 0..9 {
        {
            let db = open(dir.path());
            write(&db, &mut model, &mut rng, 4_000);
            db.flush().unwrap();
        }
        let started = std::time::Instant::now();
        let mut child = checkpoint();
        // The first and the last run to their end; the others are killed.
        if round > 0 && round < 8 {
            let micros = rng.random_range(0..whole.as_micros().max(1) as u64);
            std::thread::sleep(std::time::Duration::from_micros(micros));
            killed += usize::from(child.try_wait().unwrap().is_none());
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        if round == 0 || round == 8 {
            assert!(status.success(), "a checkpoint left alone runs to its end");
            whole = started.elapsed();
        }
        let db = open(dir.path());
        assert_eq!(pairs(db.iter()), owned(model.iter()), "after round {round}");
    }
    assert!(killed > 0, "no checkpoint was killed while it ran");
}
