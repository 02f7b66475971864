//! Invalidation, garbage collection, retention and the counts behind the stats.

use std::collections::{BTreeMap, BTreeSet};

use super::{entry, keys, Store, INVALIDATED};
use prost::Message;

use crate::domain::{Pruned, Selector};
use crate::error::Result;
use crate::key::CacheKey;
use crate::policy;
use crate::proto::{EventType, Execution};

/// What an integrity check found.
#[derive(Debug, Clone, Default)]
pub struct Integrity {
    pub executions: u64,
    pub artifacts: u64,
    pub events: u64,
    pub cache_entries: u64,
    /// Each inconsistency in words (empty = consistent).
    pub problems: Vec<String>,
}

/// Executions pruned per transaction.
const PRUNE_BATCH: usize = 256;

impl Store {
    /// Index entries of (namespace, key) with their execution IDs.
    fn entries_of_key(&self, ns: &str, key: &CacheKey) -> Result<Vec<(Vec<u8>, i64)>> {
        let prefix = keys::cache_prefix(ns, key);
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, _) = item?;
            let (_, exec_id) = keys::parse_cache_suffix(&k[prefix.len()..])?;
            out.push((k.to_vec(), exec_id));
        }
        Ok(out)
    }

    /// The index entries of one execution (none unless it was published).
    fn entries_of_execution(&self, e: &Execution) -> Result<Vec<Vec<u8>>> {
        let Ok(key) = e.cache_key.parse::<CacheKey>() else {
            return Ok(Vec::new());
        };
        Ok(self
            .entries_of_key(&e.namespace, &key)?
            .into_iter()
            .filter(|(_, id)| *id == e.id)
            .map(|(k, _)| k)
            .collect())
    }

    /// Marks the selected entries so that they are never served again; returns
    /// how many were newly invalidated.
    pub fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        let mut entries: BTreeSet<Vec<u8>> = BTreeSet::new();
        match selector {
            Selector::Key(key) => {
                entries.extend(self.entries_of_key(ns, key)?.into_iter().map(|(k, _)| k));
            }
            Selector::Execution(id) => {
                entries.extend(self.entries_of_execution(&self.execution(*id, Some(ns))?)?);
            }
            Selector::Artifact(id) => {
                self.artifact(*id, Some(ns))?;
                for ev in self.events_of_artifact(*id)? {
                    if ev.r#type == EventType::Output as i32 {
                        let e = self.execution(ev.execution_id, Some(ns))?;
                        entries.extend(self.entries_of_execution(&e)?);
                    }
                }
            }
            Selector::Component(component) => {
                // Every key of the component's executions; all entries of such a
                // key belong to the component, which is part of the key.
                let mut cache_keys = BTreeSet::new();
                for item in self
                    .tree
                    .scan_prefix(keys::exec_by_component_prefix(ns, component))
                {
                    let id = keys::rev_id_suffix(&item?.0)?;
                    if let Ok(k) = self.execution(id, Some(ns))?.cache_key.parse::<CacheKey>() {
                        cache_keys.insert(k);
                    }
                }
                for k in cache_keys {
                    entries.extend(self.entries_of_key(ns, &k)?.into_iter().map(|(k, _)| k));
                }
            }
        }
        let n = self.commit(|tx| {
            let mut n = 0i64;
            for k in &entries {
                if let Some(v) = tx.get(k)? {
                    if !entry::is_invalidated(&v) {
                        tx.set(k.as_slice(), &[INVALIDATED])?;
                        n += 1;
                    }
                }
            }
            Ok(n)
        })?;
        if n > 0 {
            self.durable()?;
        }
        Ok(n)
    }

    /// Index entries of a namespace that are not invalidated.
    pub fn count_entries(&self, ns: &str) -> Result<i64> {
        let mut n = 0;
        for item in self
            .tree
            .scan_prefix(keys::KeyBuf::new(keys::CACHE).str(ns).done())
        {
            if !entry::is_invalidated(&item?.1) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Checks that every record is whole: each event has its execution, artifact
    /// and by-artifact twin; each index entry has its execution; each
    /// execution has its INPUT events and index entries; each published entry
    /// points at a COMPLETE execution of the same key. Reads the whole store.
    pub fn check(&self) -> Result<Integrity> {
        let mut r = Integrity::default();
        let exists = |k: &[u8]| -> Result<bool> { Ok(self.tree.contains_key(k)?) };
        for item in self.tree.iter() {
            let (k, v) = item?;
            let Some(&prefix) = k.first() else { continue };
            match prefix {
                keys::ARTIFACT => {
                    r.artifacts += 1;
                    let a: crate::proto::Artifact = super::decode(&v)?;
                    for k in super::artifact_index_keys(&a) {
                        if !exists(&k)? {
                            r.problems.push(format!(
                                "artifact {} lacks its type or state index entry",
                                a.id
                            ));
                        }
                    }
                }
                keys::EXECUTION => {
                    r.executions += 1;
                    let e: Execution = super::decode(&v)?;
                    if !exists(&super::exec_state_key(&e))? {
                        r.problems
                            .push(format!("execution {} lacks its state index entry", e.id));
                    }
                    let events = self.events_of_execution(e.id)?;
                    if let Some(ti) = &e.interface {
                        for (name, ids) in &ti.input_artifacts {
                            for (i, id) in ids.ids.iter().enumerate() {
                                let found = events.iter().any(|ev| {
                                    ev.r#type == EventType::Input as i32
                                        && &ev.name == name
                                        && ev.index as usize == i
                                        && ev.artifact_id == *id
                                });
                                if !found {
                                    r.problems.push(format!(
                                        "execution {} lacks its INPUT event {name}[{i}]",
                                        e.id
                                    ));
                                }
                            }
                        }
                    }
                }
                keys::EVENT_BY_EXEC => {
                    for ev in super::events::decode_record(&k, &v)? {
                        r.events += 1;
                        let tail = keys::event_tail(ev.r#type, &ev.name, ev.index);
                        if !exists(&keys::execution(ev.execution_id))? {
                            r.problems
                                .push(format!("event of missing execution {}", ev.execution_id));
                        }
                        if !exists(&keys::artifact(ev.artifact_id))? {
                            r.problems
                                .push(format!("event of missing artifact {}", ev.artifact_id));
                        }
                        if !exists(&keys::event_by_artifact(
                            ev.artifact_id,
                            ev.execution_id,
                            &tail,
                        ))? {
                            r.problems.push(format!(
                                "event {}->{} lacks its by-artifact entry",
                                ev.execution_id, ev.artifact_id
                            ));
                        }
                    }
                }
                keys::EVENT_BY_ARTIFACT if self.event_of_index_entry(&k)?.is_none() => {
                    r.problems.push(format!(
                        "dangling by-artifact event entry {}",
                        hex::encode(&k)
                    ));
                }
                keys::CACHE => {
                    r.cache_entries += 1;
                    let (key, _, exec_id) = keys::parse_cache_entry(&k)?;
                    match self.tree.get(keys::execution(exec_id))? {
                        None => r
                            .problems
                            .push(format!("cache entry of missing execution {exec_id}")),
                        Some(bytes) => {
                            let e: Execution = super::decode(&bytes)?;
                            if e.state != crate::proto::ExecutionState::Complete as i32
                                || e.cache_key != key.to_string()
                            {
                                r.problems.push(format!(
                                    "cache entry of execution {exec_id} that is not COMPLETE with that key"
                                ));
                            }
                            if let Some(rec) = entry::record(&v)? {
                                let mut outputs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
                                for ev in self.events_of_execution(exec_id)? {
                                    if ev.r#type == EventType::Output as i32 {
                                        outputs.entry(ev.name).or_default().push(ev.artifact_id);
                                    }
                                }
                                if rec.execution.as_ref() != Some(&e) || rec.output_ids() != outputs
                                {
                                    r.problems.push(format!(
                                        "cache entry of execution {exec_id}: its hit record differs \
                                         from the execution and its OUTPUT events"
                                    ));
                                }
                                for copy in &rec.artifacts {
                                    if self.tree.get(keys::artifact(copy.id))?.as_deref()
                                        != Some(copy.encode_to_vec().as_slice())
                                    {
                                        r.problems.push(format!(
                                            "cache entry of execution {exec_id}: its copy of \
                                             artifact {} differs from the artifact",
                                            copy.id
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
                keys::EXEC_BY_NS
                | keys::EXEC_BY_STATE
                | keys::EXEC_BY_COMPONENT
                | keys::EXEC_BY_KEY => {
                    let id = keys::rev_id_suffix(&k)?;
                    if !exists(&keys::execution(id))? {
                        r.problems
                            .push(format!("index entry of missing execution {id}"));
                    }
                }
                _ => {}
            }
        }
        Ok(r)
    }

    /// Reservations of a namespace whose lease has not run out: identical tasks
    /// running now under someone's reservation.
    pub fn count_reservations(&self, ns: &str) -> Result<i64> {
        let now = self.now_ms();
        let mut n = 0;
        for item in self
            .tree
            .scan_prefix(keys::KeyBuf::new(keys::RESERVATION).str(ns).done())
        {
            if crate::reservations::Holder::decode(&item?.1)?.expire_ms > now {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Live reservations of every namespace that has any (for metrics).
    pub fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        let now = self.now_ms();
        let mut held = BTreeMap::new();
        for item in self.tree.scan_prefix([keys::RESERVATION]) {
            let (k, v) = item?;
            if crate::reservations::Holder::decode(&v)?.expire_ms > now {
                *held.entry(keys::namespace_of(&k)?.to_string()).or_insert(0) += 1;
            }
        }
        Ok(held)
    }

    /// The store's size on disk in bytes.
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    /// Removes index entries that can never be served again: invalidated ones
    /// and those past their execution's TTL. `ns` None = every namespace.
    pub fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        let prefix = match ns {
            Some(ns) => keys::KeyBuf::new(keys::CACHE).str(ns).done(),
            None => vec![keys::CACHE],
        };
        let now = self.now_ms();
        let mut dead = Vec::new();
        for item in self.tree.scan_prefix(&prefix) {
            let (k, v) = item?;
            let expired = || -> Result<bool> {
                let (_, completed_ms, exec_id) = keys::parse_cache_entry(&k)?;
                let e = self.execution(exec_id, None)?;
                let ttl = policy::duration_ms(e.cache_ttl.as_ref(), "cache_ttl")
                    .ok()
                    .flatten();
                Ok(matches!(ttl, Some(ttl) if now.saturating_sub(completed_ms) > ttl))
            };
            if entry::is_invalidated(&v) || expired()? {
                dead.push(k.to_vec());
            }
        }
        for chunk in dead.chunks(1000) {
            self.commit(|tx| {
                for k in chunk {
                    tx.remove(k.as_slice())?;
                }
                Ok(())
            })?;
        }
        if !dead.is_empty() {
            self.durable()?;
        }
        Ok(dead.len() as i64)
    }

    /// Deletes executions of `ns` created more than `older_than_ms` ago, with
    /// their events and index entries, and their output artifacts that no
    /// remaining event references. Each batch is one transaction, so a crash
    /// leaves every execution either whole or gone.
    pub fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        self.prune_batches(ns, older_than_ms, dry_run, None)
    }

    /// `prune`, stopping before batch `stop_before` when given (as a kill
    /// would, for the tests).
    fn prune_batches(
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
    fn prune_pending(&self) -> Result<Vec<i64>> {
        Ok(match self.tree.get(keys::META_PRUNE_PENDING)? {
            Some(b) => b
                .chunks_exact(8)
                .filter_map(|c| c.try_into().ok().map(i64::from_be_bytes))
                .collect(),
            None => Vec::new(),
        })
    }

    /// An artifact's record and every index entry of it.
    fn artifact_keys(&self, id: i64) -> Result<Vec<Vec<u8>>> {
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
    fn remove_all(&self, doomed: &[Vec<u8>]) -> Result<()> {
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
