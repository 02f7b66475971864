//! No write leaves a stale hit in the hot cache: each kind of write, and
//! that only `commit` writes.

use super::*;

/// After `write`: for each of `keys`, what the hot cache serves (from
/// memory, and from the hits file) is nothing or what a read of sled
/// finds; the read caches each key again.
fn hot_agrees(store: &Store, keys: &[CacheKey], write: &str) {
    for key in keys {
        let memory = store.lookup_hot("default", key, None).and_then(served);
        let file = stored_hit(store, key);
        store.hot.evict("default", key);
        let read = served(store.lookup("default", key, None).unwrap());
        for (tier, hot) in [("memory", memory), ("hits file", file)] {
            if let Some(hot) = hot {
                assert_eq!(Some(hot), read, "{write}: {tier} serves a stale hit");
            }
        }
    }
}

#[test]
fn no_kind_of_write_leaves_a_stale_hit_in_the_hot_cache() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let ws: Vec<_> = ["put", "artifact", "invalidate", "cached", "gc"]
        .iter()
        .map(|c| write(c, &[], ""))
        .collect();
    let done: Vec<_> = ws.iter().map(|w| store.put_execution(w).unwrap()).collect();
    let keys: Vec<CacheKey> = ws.iter().map(|w| w.key.unwrap()).collect();
    hot_agrees(&store, &keys, "the first reads");
    assert!(keys
        .iter()
        .all(|k| store.lookup_hot("default", k, None).is_some()));

    // A newer entry of the key.
    let newer = store.put_execution(&ws[0]).unwrap();
    hot_agrees(&store, &keys, "put");
    let (hit, _) = served(store.lookup("default", &keys[0], None).unwrap()).unwrap();
    assert_eq!(hit.id, newer.execution_id);

    // An output no longer live.
    let mut gone = store
        .artifact(done[1].output_artifact_ids[0], None)
        .unwrap();
    gone.state = ArtifactState::Deleted as i32;
    store.put_artifacts(vec![gone]).unwrap();
    hot_agrees(&store, &keys, "an artifact's state change");

    store
        .invalidate("default", &domain::Selector::Key(keys[2]))
        .unwrap();
    hot_agrees(&store, &keys, "invalidate");

    let original = store.execution(done[3].execution_id, None).unwrap();
    let outputs = store.outputs_of(original.id).unwrap();
    store
        .record_cached(&original, &outputs, &BTreeMap::new(), &[])
        .unwrap();
    hot_agrees(&store, &keys, "record_cached");

    store
        .invalidate("default", &domain::Selector::Key(keys[4]))
        .unwrap();
    assert!(store.collect_garbage(None).unwrap() > 0);
    hot_agrees(&store, &keys, "gc");

    assert!(store.prune("default", -1_000, false).unwrap().executions > 0);
    hot_agrees(&store, &keys, "prune");
    assert!(keys.iter().all(|k| matches!(
        store.lookup("default", k, None).unwrap(),
        Lookup::Miss { .. }
    )));
}

#[test]
fn a_restore_leaves_no_stale_hit_in_the_hot_cache() {
    let (from, into) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let source = open(from.path());
    let w = write("restored", &[], "");
    let key = w.key.unwrap();
    source.put_execution(&w).unwrap();
    let Lookup::Hit(Hit::Encoded(older)) = source.lookup("default", &key, None).unwrap() else {
        panic!("a whole record is served as its bytes");
    };
    let newer = source.put_execution(&w).unwrap();
    let mut backup = Vec::new();
    source.export(&mut backup).unwrap();

    // The store restored into holds the older hit in its hot cache.
    let store = open(into.path());
    let hit = hot::HotHit {
        completed_ms: store.now_ms(),
        ttl_ms: None,
        fields: older,
    };
    let generation = store.hot.generation("default", &key);
    store.hot.insert(generation, "default", &key, hit, true);
    assert!(store.lookup_hot("default", &key, None).is_some());
    store.import(backup.as_slice()).unwrap();
    hot_agrees(&store, &[key], "restore");
    let (hit, _) = served(store.lookup("default", &key, None).unwrap()).unwrap();
    assert_eq!(hit.id, newer.execution_id);
}

/// The store writes only through `commit`, which tells the hot cache what
/// each write changed: no other module writes to sled's tree or evicts.
#[test]
fn only_commit_writes_the_tree_and_evicts() {
    // Every source file of the store but `commit` and the tests.
    let mut sources = Vec::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if path.is_dir() && name != "tests" {
                dirs.push(path);
            } else if name.ends_with(".rs") && !["commit.rs", "tests.rs"].contains(&name.as_str()) {
                sources.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    assert!(sources.len() > 10, "the store's sources are found");
    let writes = [
        ".transaction(",
        ".apply_batch(",
        "tree.clear(",
        "tree.compare_and_swap(",
        "tree.update_and_fetch(",
        "tree.fetch_and_update(",
        "tree.merge(",
        "db.clear(",
        "hot.evict",
        "hot.clear(",
    ];
    for (file, text) in &sources {
        // The code outside its tests, without whitespace.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        for w in writes {
            assert!(
                !code.contains(w),
                "{file} calls {w}: write through `commit`"
            );
        }
        // Metadata outside the records may be written directly.
        for w in ["tree.insert(", "tree.remove(", "db.insert(", "db.remove("] {
            for (at, _) in code.match_indices(w) {
                assert!(
                    code[at + w.len()..].starts_with("keys::META_"),
                    "{file} calls {w} on a record: write through `commit`"
                );
            }
        }
    }
}
