//! The store's unit tests: layouts, IDs, bulk and concurrent puts, the hot
//! cache and the hits file against what sled holds.

use super::*;
use crate::clock::SystemClock;
use crate::domain::{ArtifactFilter, ExecutionFilter};
use crate::proto::{ArtifactIds, OutputArtifact, PutExecutionRequest, TaskInterface};
use crate::query::TimeRange;
use crate::validate::{execution_write, Limits};

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreConfig::default(), Arc::new(SystemClock)).unwrap()
}

fn write(component: &str, inputs: &[i64], external_id: &str) -> ExecutionWrite {
    write_in("", component, inputs, external_id)
}

fn write_in(ns: &str, component: &str, inputs: &[i64], external_id: &str) -> ExecutionWrite {
    let ti = TaskInterface {
        component: component.into(),
        input_artifacts: [(
            "in".to_string(),
            ArtifactIds {
                ids: inputs.to_vec(),
            },
        )]
        .into(),
        output_artifacts: [("out".to_string(), "system.Dataset".to_string())].into(),
        ..Default::default()
    };
    let req = PutExecutionRequest {
        execution: Some(Execution {
            namespace: ns.into(),
            interface: Some(ti),
            external_id: external_id.into(),
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        outputs: vec![OutputArtifact {
            name: "out".into(),
            artifact: Some(Artifact {
                uri: format!("mem://{component}"),
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    execution_write(req, &Limits::default()).unwrap()
}

/// A lookup's execution and outputs, decoded; None on a miss.
fn served(lookup: Lookup) -> Option<(Execution, domain::Outputs)> {
    match lookup {
        Lookup::Hit(hit) => Some(hit.decoded().unwrap()),
        Lookup::Miss { .. } => None,
    }
}

fn hit_outputs(store: &Store, w: &ExecutionWrite) -> Option<Vec<i64>> {
    let (_, outputs) = served(
        store
            .lookup("default", w.key.as_ref().unwrap(), None)
            .unwrap(),
    )?;
    Some(outputs["out"].iter().map(|a| a.id).collect())
}

/// Rewrites an execution's records into the layout of stores written
/// before: one record per event, by-namespace index entries.
fn to_earlier_layout(store: &Store, exec_id: i64) {
    let events = store.events_of_execution(exec_id).unwrap();
    store.tree.remove(keys::event_list(exec_id)).unwrap();
    for ev in &events {
        let tail = keys::event_tail(ev.r#type, &ev.name, ev.index);
        let k = keys::event_by_exec(exec_id, ev.artifact_id, &tail);
        store.tree.insert(k, ev.encode_to_vec()).unwrap();
        if ev.r#type == EventType::Output as i32 {
            let k = keys::legacy_artifact_by_ns("default", ev.artifact_id);
            store.tree.insert(k, &[]).unwrap();
        }
    }
    let k = keys::legacy_exec_by_ns("default", exec_id);
    store.tree.insert(k, &[]).unwrap();
}

/// A store written before events were kept together and before the
/// namespace indexes were the state indexes reads, checks, lists, updates
/// and prunes its records as it does new ones.
#[test]
fn records_in_the_earlier_layout_read_update_and_prune_as_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
    let store = Store::open(dir.path(), &StoreConfig::default(), clock.clone()).unwrap();
    let a = store.put_execution(&write("a", &[], "")).unwrap();
    let a_out = a.output_artifact_ids[0];
    let mut running = write("b", &[a_out], "");
    running.execution.state = ExecutionState::Running as i32;
    let b = store.put_execution(&running).unwrap();
    let ids = [a.execution_id, b.execution_id];
    let events = ids.map(|id| store.events_of_execution(id).unwrap());
    let of_artifact = store.events_of_artifact(a_out).unwrap();
    let checked = store.check().unwrap();
    assert_eq!((checked.events, checked.problems.len()), (3, 0));

    for id in ids {
        to_earlier_layout(&store, id);
    }
    assert!(store
        .tree
        .get(keys::event_list(b.execution_id))
        .unwrap()
        .is_none());
    assert_eq!(ids.map(|id| store.events_of_execution(id).unwrap()), events);
    assert_eq!(store.events_of_artifact(a_out).unwrap(), of_artifact);
    let checked = store.check().unwrap();
    assert_eq!(
        (checked.events, checked.problems),
        (3, Vec::<String>::new())
    );
    let filter = ExecutionFilter {
        namespace: "default".into(),
        ..Default::default()
    };
    let listed = store.list_executions(&filter, 10, None).unwrap();
    let listed: Vec<i64> = listed.items.iter().map(|e| e.id).collect();
    assert_eq!(listed, vec![b.execution_id, a.execution_id]);

    // Completing b: an output event it has in the earlier layout is
    // refused, a new one joins those.
    let completion = |name: &str, id: i64| {
        let req = PutExecutionRequest {
            execution: Some(Execution {
                id: b.execution_id,
                state: ExecutionState::Complete as i32,
                ..Default::default()
            }),
            outputs: vec![OutputArtifact {
                name: name.into(),
                artifact: Some(Artifact {
                    id,
                    ..Default::default()
                }),
            }],
            ..Default::default()
        };
        execution_write(req, &Limits::default()).unwrap()
    };
    let again = store.put_execution(&completion("out", b.output_artifact_ids[0]));
    assert!(matches!(again, Err(Error::FailedPrecondition(m)) if m.contains("already recorded")));
    let done = store.put_execution(&completion("extra", 0)).unwrap();
    let names: Vec<(String, i32)> = store
        .events_of_execution(b.execution_id)
        .unwrap()
        .into_iter()
        .map(|ev| (ev.name, ev.r#type))
        .collect();
    let (input, output) = (EventType::Input as i32, EventType::Output as i32);
    assert_eq!(
        names,
        [("in", input), ("out", output), ("extra", output)].map(|(n, t)| (n.to_string(), t))
    );
    assert!(store.check().unwrap().problems.is_empty());
    assert_eq!(done.output_artifact_ids.len(), 1);

    clock.advance_ms(10_000);
    let pruned = store.prune("default", 5_000, false).unwrap();
    assert_eq!((pruned.executions, pruned.events), (2, 4));
    let left: Vec<u8> = store.tree.iter().map(|item| item.unwrap().0[0]).collect();
    assert!(
        left.is_empty(),
        "left: {:?}",
        left.iter().map(|b| *b as char).collect::<String>()
    );
}

#[test]
fn a_clock_that_stepped_back_while_closed_stamps_no_id_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
    let store = Store::open(dir.path(), &StoreConfig::default(), clock.clone()).unwrap();
    let first = store.put_execution(&write("a", &[], "")).unwrap();
    store.close().unwrap();

    clock.advance_ms(-60_000);
    let store = Store::open(dir.path(), &StoreConfig::default(), clock.clone()).unwrap();
    let second = store.put_execution(&write("b", &[], "")).unwrap();
    let ms = |id| create_ms(&store.execution(id, None).unwrap());
    assert!(second.execution_id > first.execution_id);
    assert_eq!(ms(second.execution_id), ms(first.execution_id));
    let f = ExecutionFilter {
        namespace: "default".into(),
        created: TimeRange {
            after_ms: Some(1_000_000),
            before_ms: None,
        },
        ..Default::default()
    };
    let listed = store.list_executions(&f, 10, None).unwrap();
    let listed: Vec<i64> = listed.items.iter().map(|e| e.id).collect();
    assert_eq!(listed, vec![second.execution_id, first.execution_id]);
}

#[test]
fn created_windows_bound_each_namespace_by_ids_of_all() {
    // Executions of two namespaces interleave in ID and creation order;
    // a window's ID range is found over both, and each namespace's list
    // holds exactly its own executions created in the window.
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(crate::clock::ManualClock::new(1_000_000));
    let store = Store::open(dir.path(), &StoreConfig::default(), clock.clone()).unwrap();
    let mut made: Vec<(String, i64, i64, i64)> = Vec::new(); // (ns, exec, output, ms)
    for i in 0..300 {
        let ns = ["default", "other"][usize::from(i % 3 == 0)];
        let w = write_in(ns, &format!("c{i}"), &[], "");
        let done = store.put_execution(&w).unwrap();
        made.push((
            ns.into(),
            done.execution_id,
            done.output_artifact_ids[0],
            clock.now_ms(),
        ));
        clock.advance_ms(if i % 5 == 0 { 0 } else { 7 });
    }
    let first = made[0].3;
    let windows = [
        (None, None),
        (Some(first), Some(first + 1)),
        (Some(first + 20), Some(first + 90)),
        (Some(first + 500), Some(first + 1_300)),
        (Some(first + 1_001), None),
        (Some(first + 21), None),
        (None, Some(first + 50)),
        (Some(first + 10_000), None),
        (None, Some(first)),
        (Some(first + 90), Some(first + 20)),
    ];
    for ns in ["default", "other", "none"] {
        for (after_ms, before_ms) in windows {
            let created = TimeRange {
                after_ms,
                before_ms,
            };
            let want = |pick: fn(&(String, i64, i64, i64)) -> i64| -> Vec<i64> {
                let mut ids: Vec<i64> = made
                    .iter()
                    .filter(|m| m.0 == ns && created.contains(m.3))
                    .map(pick)
                    .collect();
                ids.reverse();
                ids
            };
            let f = ExecutionFilter {
                namespace: ns.into(),
                created,
                ..Default::default()
            };
            let got = store.list_executions(&f, 1_000, None).unwrap();
            let got: Vec<i64> = got.items.iter().map(|e| e.id).collect();
            assert_eq!(got, want(|m| m.1), "executions {ns} {created:?}");
            let f = ArtifactFilter {
                namespace: ns.into(),
                created,
                ..Default::default()
            };
            let got = store.list_artifacts(&f, 1_000, None).unwrap();
            let got: Vec<i64> = got.items.iter().map(|a| a.id).collect();
            assert_eq!(got, want(|m| m.2), "artifacts {ns} {created:?}");
        }
    }
}

#[test]
fn bulk_put_matches_single_puts() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let input = store
        .put_artifacts(vec![Artifact {
            namespace: "default".into(),
            uri: "mem://in".into(),
            ..Default::default()
        }])
        .unwrap()[0];
    let writes = vec![
        write("a", &[input], "ext-a"),
        write("b", &[input], ""),
        // A retry of the first inside the same batch: the original's IDs.
        write("a", &[input], "ext-a"),
    ];
    let done = store.put_executions(&writes).unwrap();
    assert_eq!(done.len(), 3);
    assert_eq!(done[0], done[2]);
    assert_ne!(done[0].execution_id, done[1].execution_id);
    assert!(done.iter().all(|d| d.published));
    for (w, d) in writes.iter().zip(&done) {
        assert_eq!(d.cache_key, w.key.unwrap().to_string());
        assert_eq!(hit_outputs(&store, w), Some(d.output_artifact_ids.clone()));
    }
    // The same records as the one-at-a-time path: events included.
    let single = store.put_execution(&write("c", &[input], "")).unwrap();
    let shape = |id: i64| -> Vec<(i32, String, i32)> {
        store
            .events_of_execution(id)
            .unwrap()
            .into_iter()
            .map(|e| (e.r#type, e.name, e.index))
            .collect()
    };
    assert_eq!(shape(done[1].execution_id), shape(single.execution_id));
}

#[test]
fn bulk_put_writes_each_execution_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let good = write("good", &[], "");
    let bad = write("bad", &[999], "");
    let err = store
        .put_executions(&[good.clone(), bad.clone()])
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    // Each write is its own transaction: the good one is whole, the bad one absent.
    assert!(hit_outputs(&store, &good).is_some());
    assert_eq!(hit_outputs(&store, &bad), None);
    assert!(store.check().unwrap().problems.is_empty());
}

#[test]
fn a_write_batch_applies_every_good_write_and_fails_only_the_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let pending = |w: &ExecutionWrite| PendingWrite {
        alloc: store.allocate(2).unwrap(), // the execution and its output
        write: w.clone(),
        earlier_outputs: Vec::new(),
    };
    let id = |r: &Result<Written>| match r {
        Ok(Written::New(w)) => w.execution_id,
        Ok(Written::Replayed(id)) => *id,
        Err(e) => panic!("{e:?}"),
    };
    // One transaction for a batch of good writes.
    let good = [write("a", &[], ""), write("b", &[], "")];
    let transactions = |writes: &[ExecutionWrite]| -> Vec<Result<Written>> {
        let batch = writes.iter().map(pending).collect::<Vec<_>>();
        commit::transactions(&store.tree, &batch)
            .into_iter()
            .map(|r| r.map(|(written, _)| written))
            .collect()
    };
    let done = transactions(&good);
    assert!(done.iter().all(|r| matches!(r, Ok(Written::New(_)))));
    // A bad write (an input that does not exist) among good ones, and a
    // retry of a write of the same batch.
    let mixed = [
        write("x", &[], "ext-x"),
        write("bad", &[999], ""),
        write("y", &[], ""),
        write("x", &[], "ext-x"),
    ];
    let done = transactions(&mixed);
    assert_eq!(done.len(), 4);
    assert!(
        matches!(done[1], Err(Error::NotFound(_))),
        "the bad one fails"
    );
    assert!(
        matches!(done[3], Ok(Written::Replayed(_))),
        "the retry replays"
    );
    assert_eq!(id(&done[0]), id(&done[3]));
    store.durable().unwrap();
    for w in good.iter().chain([&mixed[0], &mixed[2]]) {
        assert!(
            hit_outputs(&store, w).is_some(),
            "{}",
            w.execution.interface.as_ref().unwrap().component
        );
    }
    assert_eq!(hit_outputs(&store, &mixed[1]), None);
    assert!(store.check().unwrap().problems.is_empty());
}

#[test]
fn concurrent_puts_are_all_applied_with_distinct_ids() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..20)
                    .map(|i| {
                        let w = write(&format!("c{t}-{i}"), &[], "");
                        (store.put_execution(&w).unwrap(), w)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in threads {
        for (done, w) in t.join().unwrap() {
            assert!(ids.insert(done.execution_id));
            assert_eq!(hit_outputs(&store, &w), Some(done.output_artifact_ids));
        }
    }
    assert_eq!(ids.len(), 320);
    assert!(store.check().unwrap().problems.is_empty());
}

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

/// The hit of `key` in the hits file, decoded.
fn stored_hit(store: &Store, key: &CacheKey) -> Option<(Execution, domain::Outputs)> {
    let hit = store.hot.get_stored("default", key, store.now_ms(), None)?;
    served(Lookup::Hit(Hit::Encoded(hit.fields.clone())))
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

/// An update that only completes execution `id`.
fn completion(id: i64) -> ExecutionWrite {
    let req = PutExecutionRequest {
        execution: Some(Execution {
            id,
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    execution_write(req, &Limits::default()).unwrap()
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
        for w in ["tree.insert(", "tree.remove("] {
            for (at, _) in code.match_indices(w) {
                assert!(
                    code[at + w.len()..].starts_with("keys::META_"),
                    "{file} calls {w} on a record: write through `commit`"
                );
            }
        }
    }
}
