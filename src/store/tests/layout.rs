//! IDs, creation times and records in the layouts of earlier stores.

use super::*;

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
