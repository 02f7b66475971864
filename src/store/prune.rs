//! Retention: pruning old executions with what only they reference,
//! batch by batch, so that a kill leaves each whole or gone.

use std::collections::{BTreeMap, BTreeSet};

use super::{keys, Store};

use crate::domain::Pruned;
use crate::error::Result;
use crate::key::CacheKey;
use crate::policy;
use crate::proto::{EventType, Execution};

/// Executions pruned per transaction.
const PRUNE_BATCH: usize = 256;

impl Store {
    /// Deletes executions of `ns` created more than `older_than_ms` ago, with
    /// their events and index entries, and their output artifacts that no
    /// remaining event references. Each batch is one transaction, so a crash
    /// leaves every execution either whole or gone.
    pub fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        self.prune_batches(ns, older_than_ms, dry_run, None)
    }

    /// `prune`, stopping before batch `stop_before` when given (as a kill
    /// would, for the tests).
    pub(super) fn prune_batches(
        &self,
        ns: &str,
        older_than_ms: i64,
        dry_run: bool,
        stop_before: Option<usize>,
    ) -> Result<Pruned> {
        let now = self.now_ms();
        // Oldest first; IDs grow with creation time (one stamped far ahead of
        // the clock counts as old: `policy::age_ms`).
        let mut victims: Vec<Execution> = Vec::new();
        for prefix in keys::exec_by_ns_prefixes(ns) {
            for item in self.tree.scan_prefix(prefix).rev() {
                let id = keys::rev_id_suffix(&item?.0)?;
                let e = self.execution(id, Some(ns))?;
                if policy::age_ms(now, super::create_ms(&e)) <= older_than_ms {
                    break;
                }
                victims.push(e);
            }
        }
        victims.sort_unstable_by_key(|e| e.id);
        let position: BTreeMap<i64, usize> =
            victims.iter().enumerate().map(|(i, e)| (e.id, i)).collect();

        // Output artifacts referenced only by victims die with the last of them.
        let mut dies_with: BTreeMap<usize, Vec<i64>> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut total = Pruned::default();
        let mut plans: Vec<(Vec<Vec<u8>>, i64, i64)> = Vec::with_capacity(victims.len());
        for e in &victims {
            let mut doomed = vec![
                keys::execution(e.id),
                keys::legacy_exec_by_ns(ns, e.id),
                super::exec_state_key(e),
            ];
            // Its associations with contexts, both ways.
            for item in self.tree.scan_prefix(keys::contexts_of_exec_prefix(e.id)) {
                let (k, _) = item?;
                let cid = keys::id_suffix(&k)?;
                doomed.push(keys::with_rev_id(&keys::exec_by_context_prefix(cid), e.id));
                doomed.push(k.to_vec());
            }
            if let Some(ti) = &e.interface {
                doomed.push(keys::with_rev_id(
                    &keys::exec_by_component_prefix(ns, &ti.component),
                    e.id,
                ));
            }
            if let Ok(k) = e.cache_key.parse::<CacheKey>() {
                doomed.push(keys::with_rev_id(&keys::exec_by_key_prefix(ns, &k), e.id));
            }
            if !e.external_id.is_empty() {
                doomed.push(keys::external_id(ns, keys::KIND_EXECUTION, &e.external_id));
            }
            let entries = self.entries_of_execution(e)?;
            let n_entries = entries.len() as i64;
            doomed.extend(entries);
            let events = self.events_of_execution(e.id)?;
            let n_events = events.len() as i64;
            doomed.push(keys::event_list(e.id));
            for ev in &events {
                let tail = keys::event_tail(ev.r#type, &ev.name, ev.index);
                // Its legacy record, if it has one.
                doomed.push(keys::event_by_exec(e.id, ev.artifact_id, &tail));
                doomed.push(keys::event_by_artifact(ev.artifact_id, e.id, &tail));
                if ev.r#type == EventType::Output as i32 && seen.insert(ev.artifact_id) {
                    let mut last = Some(0usize);
                    for item in self
                        .tree
                        .scan_prefix(keys::events_of_artifact(ev.artifact_id))
                    {
                        let exec_id = keys::event_by_artifact_exec(&item?.0)?;
                        last = match (last, position.get(&exec_id)) {
                            (Some(l), Some(p)) => Some(l.max(*p)),
                            _ => None,
                        };
                    }
                    if let Some(l) = last {
                        dies_with.entry(l).or_default().push(ev.artifact_id);
                    }
                }
            }
            plans.push((doomed, n_events, n_entries));
        }

        // Artifacts die with the batch of their last referencing victim; a
        // kill between batches can leave one whose producer is gone while a
        // consumer is not, so its OUTPUT event, the only way a later prune
        // finds it, is gone. They are written down first, and whichever
        // prune runs next deletes those then left without events.
        let pending: Vec<i64> = if dry_run {
            Vec::new()
        } else {
            let mut pending = self.prune_pending()?;
            pending.extend(dies_with.values().flatten());
            pending.sort_unstable();
            pending.dedup();
            if !pending.is_empty() {
                let bytes: Vec<u8> = pending.iter().flat_map(|id| id.to_be_bytes()).collect();
                self.tree.insert(keys::META_PRUNE_PENDING, bytes)?;
            }
            pending
        };
        for (batch_no, batch) in plans.chunks(PRUNE_BATCH).enumerate() {
            if stop_before == Some(batch_no) {
                return Ok(total);
            }
            let first = batch_no * PRUNE_BATCH;
            let mut doomed: Vec<Vec<u8>> = Vec::new();
            for (i, (keys_of, n_events, n_entries)) in batch.iter().enumerate() {
                doomed.extend(keys_of.iter().cloned());
                total.executions += 1;
                total.events += n_events;
                total.cache_entries += n_entries;
                for art_id in dies_with.get(&(first + i)).into_iter().flatten() {
                    doomed.extend(self.artifact_keys(*art_id)?);
                    total.artifacts += 1;
                }
            }
            if !dry_run {
                self.remove_all(&doomed)?;
            }
        }
        if !dry_run && (total.executions > 0 || !pending.is_empty()) {
            // What a killed prune left: pending artifacts without events.
            let mut doomed = Vec::new();
            for id in pending {
                let left = self.tree.get(keys::artifact(id))?.is_some()
                    && self
                        .tree
                        .scan_prefix(keys::events_of_artifact(id))
                        .next()
                        .is_none();
                if left {
                    doomed.extend(self.artifact_keys(id)?);
                    total.artifacts += 1;
                }
            }
            self.remove_all(&doomed)?;
            self.tree.remove(keys::META_PRUNE_PENDING)?;
            self.durable()?;
        }
        Ok(total)
    }

    /// The artifacts a killed prune meant to delete (none after a whole one).
    pub(super) fn prune_pending(&self) -> Result<Vec<i64>> {
        Ok(match self.tree.get(keys::META_PRUNE_PENDING)? {
            Some(b) => b
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(i64::from_be_bytes))
                .collect(),
            None => Vec::new(),
        })
    }

    /// An artifact's record and every index entry of it.
    pub(super) fn artifact_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
        let a = self.artifact(id, None)?;
        let mut doomed = vec![
            keys::artifact(a.id),
            keys::legacy_artifact_by_ns(&a.namespace, a.id),
        ];
        doomed.extend(super::artifact_index_keys(&a));
        // Its attributions to contexts, both ways.
        for item in self
            .tree
            .scan_prefix(keys::contexts_of_artifact_prefix(a.id))
        {
            let (k, _) = item?;
            let cid = keys::id_suffix(&k)?;
            doomed.push(keys::with_rev_id(
                &keys::artifact_by_context_prefix(cid),
                a.id,
            ));
            doomed.push(k.to_vec());
        }
        if !a.external_id.is_empty() {
            doomed.push(keys::external_id(
                &a.namespace,
                keys::KIND_ARTIFACT,
                &a.external_id,
            ));
        }
        Ok(doomed)
    }

    /// Removes `doomed` in one transaction.
    pub(super) fn remove_all(&self, doomed: &[Vec<u8>]) -> Result<()> {
        if doomed.is_empty() {
            return Ok(());
        }
        self.commit(|tx| {
            for k in doomed {
                tx.remove(k.as_slice())?;
            }
            Ok(())
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::ManualClock;
    use crate::proto::{
        Artifact, ArtifactIds, Context, ExecutionState, OutputArtifact, PutExecutionRequest,
        TaskInterface,
    };
    use crate::store::StoreConfig;
    use crate::validate::{execution_write, Limits};

    fn put(store: &Store, component: &str, inputs: &[i64], ctx: i64) -> (i64, i64) {
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
                namespace: "n".into(),
                interface: Some(ti),
                state: ExecutionState::Complete as i32,
                ..Default::default()
            }),
            outputs: vec![OutputArtifact {
                name: "out".into(),
                artifact: Some(Artifact::default()),
            }],
            context_ids: vec![ctx],
            ..Default::default()
        };
        let w = store
            .put_execution(&execution_write(req, &Limits::default()).unwrap())
            .unwrap();
        (w.execution_id, w.output_artifact_ids[0])
    }

    /// A store on a manual clock with one context in namespace `n`.
    fn store_with_context(dir: &std::path::Path) -> (Store, Arc<ManualClock>, i64) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        let store = Store::open(dir, &StoreConfig::default(), clock.clone()).unwrap();
        let ctx = store
            .put_contexts(vec![Context {
                namespace: "n".into(),
                r#type: "run".into(),
                name: "r1".into(),
                ..Default::default()
            }])
            .unwrap()[0];
        (store, clock, ctx)
    }

    /// Prune leaves no index entry of a pruned execution or artifact behind:
    /// by namespace, component, key, state, type, context (both ways), events.
    #[test]
    fn prune_removes_every_index_entry() {
        let dir = tempfile::tempdir().unwrap();
        let (store, clock, ctx) = store_with_context(dir.path());
        let (_, a) = put(&store, "a", &[], ctx);
        let (b, _) = put(&store, "b", &[a], ctx);
        // A CACHED execution of b, associated too.
        let orig = store.execution(b, None).unwrap();
        let outputs = store.outputs_of(b).unwrap();
        store
            .record_cached(
                &orig,
                &outputs,
                &[("in".to_string(), vec![a])].into(),
                &[ctx],
            )
            .unwrap();
        let before = store.tree.len();
        clock.advance_ms(10_000);
        let p = store.prune("n", 5_000, false).unwrap();
        assert_eq!((p.executions, p.artifacts), (3, 2));
        let left: Vec<u8> = store.tree.iter().map(|item| item.unwrap().0[0]).collect();
        // Only the context and its name/namespace/type index entries remain.
        let mut kinds = left.clone();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            vec![
                keys::CONTEXT,
                keys::CONTEXT_BY_NAME,
                keys::CONTEXT_BY_NS,
                keys::CONTEXT_BY_TYPE
            ],
            "{} keys before, left: {:?}",
            before,
            left.iter().map(|b| *b as char).collect::<String>()
        );
    }

    /// A prune killed between batches, after the one deleting an artifact's
    /// producer but before the one deleting its consumer, leaves the artifact
    /// with only an INPUT event; the next prune deletes it all the same.
    #[test]
    fn a_later_prune_deletes_what_a_killed_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let (store, clock, ctx) = store_with_context(dir.path());
        // The producer in the first batch, its consumer in the second.
        let (producer, a) = put(&store, "a", &[], ctx);
        for i in 0..PRUNE_BATCH {
            put(&store, &format!("filler{i}"), &[], ctx);
        }
        put(&store, "b", &[a], ctx);
        clock.advance_ms(10_000);
        store.prune_batches("n", 5_000, false, Some(1)).unwrap();
        assert!(store.execution(producer, None).is_err());
        assert!(store.artifact(a, None).is_ok(), "killed before its batch");

        let p = store.prune("n", 5_000, false).unwrap();
        assert_eq!(p.executions, 2);
        assert!(store.artifact(a, None).is_err(), "the orphan is gone");
        let mut kinds: Vec<u8> = store.tree.iter().map(|item| item.unwrap().0[0]).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(
            kinds,
            vec![
                keys::CONTEXT,
                keys::CONTEXT_BY_NAME,
                keys::CONTEXT_BY_NS,
                keys::CONTEXT_BY_TYPE
            ],
        );
    }
}
