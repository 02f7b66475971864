//! Puts alone, in bulk, in write batches and concurrently.

use super::*;

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
