//! The hot cache and the hits file against what sled holds.

use super::*;

/// The raw cache-index entries of a key.
fn entries(store: &Store, key: &CacheKey) -> Vec<(Vec<u8>, Vec<u8>)> {
    store
        .tree
        .scan_prefix(keys::cache_prefix("default", key))
        .map(|i| i.map(|(k, v)| (k.to_vec(), v.to_vec())).unwrap())
        .collect()
}

#[test]
fn the_hot_cache_serves_whole_records_only_and_forgets_on_updates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let created = write("hot", &[], "");
    let c = store.put_execution(&created).unwrap();
    let key = created.key.unwrap();
    assert!(
        store.lookup_hot("default", &key, None).is_none(),
        "not read yet"
    );
    let read = store.lookup("default", &key, None).unwrap();
    assert!(matches!(read, Lookup::Hit(Hit::Encoded(_))), "{read:?}");
    let hot = store.lookup_hot("default", &key, None);
    let hot = hot.expect("the hit read from the store is in the hot cache");
    assert_eq!(served(hot).unwrap(), served(read).unwrap());
    assert!(store.lookup_hot("other", &key, None).is_none());

    // An artifact update forgets it; the next read caches the new copy.
    let mut moved = store.artifact(c.output_artifact_ids[0], None).unwrap();
    moved.uri = "mem://moved".into();
    store.put_artifacts(vec![moved]).unwrap();
    assert!(store.lookup_hot("default", &key, None).is_none());
    store.lookup("default", &key, None).unwrap();
    let hot = store
        .lookup_hot("default", &key, None)
        .expect("cached again");
    assert_eq!(served(hot).unwrap().1["out"][0].uri, "mem://moved");

    // An entry without a record (completed by an update) is never cached.
    let mut running = write("cold", &[], "");
    running.execution.state = ExecutionState::Running as i32;
    let r = store.put_execution(&running).unwrap();
    let update = completion(r.execution_id);
    store.put_execution(&update).unwrap();
    let cold = running.key.unwrap();
    assert!(matches!(
        store.lookup("default", &cold, None).unwrap(),
        Lookup::Hit(Hit::Decoded { .. })
    ));
    assert!(store.lookup_hot("default", &cold, None).is_none());
}

#[test]
fn the_hits_file_serves_what_the_store_would_across_clean_restarts_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        hot_hits: 0,
        ..StoreConfig::default()
    };
    let open = || Store::open(dir.path(), &config, Arc::new(SystemClock)).unwrap();
    let store = open();
    let (a, b) = (write("a", &[], ""), write("b", &[], ""));
    let first_a = store.put_execution(&a).unwrap().execution_id;
    store.put_execution(&b).unwrap();
    let (ka, kb) = (a.key.unwrap(), b.key.unwrap());
    assert!(stored_hit(&store, &ka).is_none(), "not read yet");
    let from_sled = served(store.lookup("default", &ka, None).unwrap()).unwrap();
    assert_eq!(from_sled.0.id, first_a);
    assert_eq!(stored_hit(&store, &ka), Some(from_sled), "read, cached");
    store.lookup("default", &kb, None).unwrap();

    // A newer completion of the key replaces it.
    let second_a = store.put_execution(&a).unwrap().execution_id;
    assert!(stored_hit(&store, &ka).is_none());
    store.lookup("default", &ka, None).unwrap();
    assert_eq!(stored_hit(&store, &ka).unwrap().0.id, second_a);
    // Invalidation forgets it, and only it.
    let n = store
        .invalidate("default", &domain::Selector::Key(kb))
        .unwrap();
    assert_eq!(n, 1);
    assert!(stored_hit(&store, &kb).is_none());
    assert!(matches!(
        store.lookup("default", &kb, None).unwrap(),
        Lookup::Miss { .. }
    ));
    assert!(stored_hit(&store, &ka).is_some());
    let new_b = store.put_execution(&b).unwrap().execution_id;
    store.lookup("default", &kb, None).unwrap();
    store.close().unwrap();

    // A clean close keeps the index; the store has not changed since.
    let store = open();
    assert_eq!(stored_hit(&store, &ka).unwrap().0.id, second_a);
    assert_eq!(stored_hit(&store, &kb).unwrap().0.id, new_b);
    // A crash (no close) after a change: the next open starts empty...
    let third_a = store.put_execution(&a).unwrap().execution_id;
    let c = write("c", &[], "");
    store.put_execution(&c).unwrap();
    let kc = c.key.unwrap();
    store
        .invalidate("default", &domain::Selector::Key(kc))
        .unwrap();
    drop(store);
    let store = open();
    assert!(stored_hit(&store, &ka).is_none());
    assert!(store.lookup_hot("default", &ka, None).is_none());
    // ... and fills from the cache index: each key's servable hit.
    assert!(store.hot.needs_filling());
    store.fill_hits_file().unwrap();
    assert!(!store.hot.needs_filling());
    assert_eq!(stored_hit(&store, &ka).unwrap().0.id, third_a);
    assert_eq!(stored_hit(&store, &kb).unwrap().0.id, new_b);
    assert!(stored_hit(&store, &kc).is_none(), "invalidated");
    // Off the async threads' way: the record is in the page cache (on
    // Linux; the portable path reads the file on the read pool only).
    let hot = store.lookup_hot("default", &ka, None);
    assert_eq!(hot.is_some(), os::LINUX_IO);
    if let Some(hot) = hot {
        assert_eq!(served(hot).unwrap().0.id, third_a);
    }
    store.close().unwrap();
    let store = open();
    assert!(!store.hot.needs_filling(), "filled, and closed cleanly");
    store.close().unwrap();

    // An index saved by an earlier close, put back beside a store that
    // changed after it, is not used.
    let saved = |name: &str| dir.path().join(name);
    std::fs::copy(saved(hitlog::INDEX_FILE), saved("idx.old")).unwrap();
    std::fs::copy(saved(hitlog::LOG_FILE), saved("log.old")).unwrap();
    let store = open();
    let fourth_a = store.put_execution(&a).unwrap().execution_id;
    store.close().unwrap();
    std::fs::copy(saved("idx.old"), saved(hitlog::INDEX_FILE)).unwrap();
    std::fs::copy(saved("log.old"), saved(hitlog::LOG_FILE)).unwrap();
    let store = open();
    assert!(
        stored_hit(&store, &ka).is_none(),
        "an index of another epoch"
    );
    let hit = served(store.lookup("default", &ka, None).unwrap()).unwrap();
    assert_eq!(hit.0.id, fourth_a);
}

#[test]
fn a_hits_file_fills_in_the_background_and_lets_go_at_close() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let writes: Vec<_> = (0..300).map(|i| write(&format!("w{i}"), &[], "")).collect();
    let ids: Vec<i64> = store
        .put_executions(&writes)
        .unwrap()
        .iter()
        .map(|w| w.execution_id)
        .collect();
    drop(store); // a crash: the next open starts with an empty hits file
    let store = Arc::new(open(dir.path()));
    assert!(store.hot.needs_filling());
    Store::warm_in_background(&store);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let wait_for = |done: &dyn Fn() -> bool| {
        while !done() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    wait_for(&|| !store.hot.needs_filling());
    assert!(!store.hot.needs_filling());
    for (w, id) in writes.iter().zip(&ids) {
        assert_eq!(stored_hit(&store, &w.key.unwrap()).unwrap().0.id, *id);
    }
    // The filling thread lets go of the store as it ends, a moment after
    // it marks the file filled; until then the store stays open.
    wait_for(&|| Arc::strong_count(&store) == 1);
    assert_eq!(Arc::strong_count(&store), 1);
    // A close while it runs stops it, and it lets go of the store.
    drop(store);
    let store = open(dir.path()); // not closed: starts empty again
    let store = Arc::new(store);
    Store::warm_in_background(&store);
    crate::backend::Backend::close(store).unwrap();
    let store = open(dir.path());
    for (w, id) in writes.iter().zip(&ids) {
        let hit = served(store.lookup("default", &w.key.unwrap(), None).unwrap());
        assert_eq!(hit.unwrap().0.id, *id);
    }
}

#[test]
fn maintenance_forgets_only_the_hits_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ws: Vec<_> = ["a", "b", "c"].iter().map(|c| write(c, &[], "")).collect();
    let done: Vec<_> = ws.iter().map(|w| store.put_execution(w).unwrap()).collect();
    let keys: Vec<CacheKey> = ws.iter().map(|w| w.key.unwrap()).collect();
    let cache_all = || {
        for k in &keys {
            store.lookup("default", k, None).unwrap();
        }
    };
    cache_all();
    assert!(keys.iter().all(|k| stored_hit(&store, k).is_some()));

    // An update of a's output: a's hit goes, with the new copy on the next read.
    let mut moved = store
        .artifact(done[0].output_artifact_ids[0], None)
        .unwrap();
    moved.uri = "mem://moved".into();
    store.put_artifacts(vec![moved]).unwrap();
    assert!(stored_hit(&store, &keys[0]).is_none());
    assert!(stored_hit(&store, &keys[1]).is_some() && stored_hit(&store, &keys[2]).is_some());
    let hit = served(store.lookup("default", &keys[0], None).unwrap()).unwrap();
    assert_eq!(hit.1["out"][0].uri, "mem://moved");

    // gc of b's invalidated entry, prune of everything: only what went.
    store
        .invalidate("default", &domain::Selector::Key(keys[1]))
        .unwrap();
    assert_eq!(store.collect_garbage(None).unwrap(), 1);
    assert!(stored_hit(&store, &keys[0]).is_some() && stored_hit(&store, &keys[2]).is_some());
    let pruned = store.prune("default", -1_000, false).unwrap();
    assert_eq!(pruned.executions, 3);
    assert!(keys.iter().all(|k| stored_hit(&store, k).is_none()));
    assert!(keys.iter().all(|k| matches!(
        store.lookup("default", k, None).unwrap(),
        Lookup::Miss { .. }
    )));
}

#[test]
fn without_a_hits_file_lookups_read_sled() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        hot_hits: 0,
        hit_log_bytes: 0,
        ..StoreConfig::default()
    };
    let store = Store::open(dir.path(), &config, Arc::new(SystemClock)).unwrap();
    let a = write("a", &[], "");
    let id = store.put_execution(&a).unwrap().execution_id;
    let ka = a.key.unwrap();
    assert!(stored_hit(&store, &ka).is_none());
    assert_eq!(
        served(store.lookup("default", &ka, None).unwrap())
            .unwrap()
            .0
            .id,
        id
    );
    store.close().unwrap();
    assert!(!dir.path().join(hitlog::LOG_FILE).exists());
}

#[test]
fn hits_from_a_hit_record_equal_hits_read_the_long_way() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Published by the write that creates it: the entry carries a record.
    let created = write("created", &[], "");
    let c = store.put_execution(&created).unwrap();
    // Created RUNNING with its output, completed by an update: no record.
    let mut running = write("updated", &[], "");
    running.execution.state = ExecutionState::Running as i32;
    let r = store.put_execution(&running).unwrap();
    assert!(!r.published);
    let update = completion(r.execution_id);
    assert!(store.put_execution(&update).unwrap().published);

    let with_record = entries(&store, created.key.as_ref().unwrap());
    let without = entries(&store, running.key.as_ref().unwrap());
    assert!(entry::record(&with_record[0].1).unwrap().is_some());
    assert_eq!(without[0].1, vec![VALID]);

    for (w, id) in [(&created, c.execution_id), (&running, r.execution_id)] {
        let lookup = store
            .lookup("default", w.key.as_ref().unwrap(), None)
            .unwrap();
        let (execution, outputs) = served(lookup).expect("a hit");
        assert_eq!(execution, store.execution(id, None).unwrap());
        assert_eq!(outputs, store.outputs_of(id).unwrap());
        assert_eq!(outputs["out"].len(), 1);
    }
    assert!(store.check().unwrap().problems.is_empty());
    let rec = entry::record(&with_record[0].1).unwrap().unwrap();
    assert_eq!(rec.copied_artifacts().map(|a| a.len()), Some(1));

    // An artifact update rewrites the copy in the same transaction.
    let out_id = c.output_artifact_ids[0];
    let mut moved = store.artifact(out_id, None).unwrap();
    moved.uri = "mem://moved".into();
    store.put_artifacts(vec![moved]).unwrap();
    let output = |store: &Store| {
        let lookup = store.lookup("default", created.key.as_ref().unwrap(), None);
        served(lookup.unwrap()).map(|(_, outputs)| outputs["out"][0].clone())
    };
    assert_eq!(output(&store), Some(store.artifact(out_id, None).unwrap()));
    assert_eq!(output(&store).unwrap().uri, "mem://moved");
    assert!(store.check().unwrap().problems.is_empty());
    let mut dead = store.artifact(out_id, None).unwrap();
    dead.state = ArtifactState::Deleted as i32;
    store.put_artifacts(vec![dead]).unwrap();
    assert_eq!(output(&store), None, "a deleted output is never served");
    let mut live = store.artifact(out_id, None).unwrap();
    live.state = ArtifactState::Live as i32;
    store.put_artifacts(vec![live]).unwrap();
    assert!(output(&store).is_some());
    let with_record = entries(&store, created.key.as_ref().unwrap());
    // A copy that disagrees with the artifact (written behind the store's
    // back) is a problem.
    let mut behind = store.artifact(out_id, None).unwrap();
    behind.uri = "mem://elsewhere".into();
    store
        .tree
        .insert(keys::artifact(out_id), behind.encode_to_vec())
        .unwrap();
    let problems = store.check().unwrap().problems;
    assert!(
        problems.len() == 1 && problems[0].contains("copy of artifact"),
        "{problems:?}"
    );

    // A record that disagrees with the execution's events is a problem.
    let (k, _) = &with_record[0];
    let mut exec = store.execution(c.execution_id, None).unwrap();
    let wrong = entry::with_record(
        &exec,
        &BTreeMap::from([("out".to_string(), vec![999])]),
        Vec::new(),
    );
    store.tree.insert(k, wrong).unwrap();
    let problems = store.check().unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("hit record differs"), "{problems:?}");
    // A record of another execution, with or without copies of its
    // outputs, is not served as this one.
    exec.id += 1000;
    let outputs = store.outputs_of(c.execution_id).unwrap();
    let ids = outputs
        .iter()
        .map(|(n, a)| (n.clone(), a.iter().map(|a| a.id).collect()))
        .collect();
    let copies = outputs.values().flatten().cloned().collect::<Vec<_>>();
    for copies in [Vec::new(), copies] {
        store
            .tree
            .insert(k, entry::with_record(&exec, &ids, copies))
            .unwrap();
        let lookup = store.lookup("default", created.key.as_ref().unwrap(), None);
        let (execution, _) = served(lookup.unwrap()).expect("a hit");
        assert_eq!(execution.id, c.execution_id);
    }
}
