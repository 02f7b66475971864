//! The put path: artifacts, PutExecution (alone and in bulk, through the
//! write batches of `combine`) and the CACHED executions that record a hit.

use super::*;

impl Store {
    /// Creates (id 0) or updates artifacts, all or none.
    pub fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        let alloc = self.allocate(artifacts.iter().filter(|a| a.id == 0).count())?;
        // The executions that output each updated artifact: a hit record may
        // hold a copy of it (see `entry`).
        let producers = artifacts
            .iter()
            .map(|a| match a.id {
                0 => Ok(Vec::new()),
                id => self.producers_of(id),
            })
            .collect::<Result<Vec<_>>>()?;
        // The updated artifacts, and the hits of their producers.
        let touched = artifacts
            .iter()
            .map(|a| a.id)
            .filter(|id| *id != 0)
            .chain(producers.iter().flatten().copied())
            .map(unflushed::Item::Id)
            .collect();
        let writing = unflushed::Writing {
            created: alloc.ids.clone(),
            touched,
        };
        self.registered(&writing, || {
            let ids = self.commit(|tx| {
                let mut pool = Ids::of(&alloc);
                let mut ids = Vec::with_capacity(artifacts.len());
                for (i, (a, producers)) in artifacts.iter().zip(&producers).enumerate() {
                    let field = format!("artifacts[{i}]");
                    let (id, written) =
                        put_artifact_tx(tx, a.clone(), alloc.now, &field, &mut pool)?;
                    if let (Some(written), false) = (written, producers.is_empty()) {
                        refresh_copies_tx(tx, &written, producers)?;
                    }
                    ids.push(id);
                }
                Ok(ids)
            })?;
            self.durable()?;
            Ok(ids)
        })
    }

    /// One atomic write: new output artifacts, the execution, its events and the
    /// cache-index entry when it completes (unless `skip_publish`).
    /// Releases the key's reservation as `reservations::released_by_write` says.
    pub fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        match self.put_execution_unsynced(w)? {
            (Written::New(written), writing) => {
                let durable = self.durable();
                self.settled(&writing, durable.as_ref().err());
                durable?;
                self.flushed(&w.execution.namespace, &written);
                Ok(written)
            }
            (Written::Replayed(id), _) => self.replay(id, w),
        }
    }

    /// Bulk loading (benchmarks, imports): each write is its own atomic
    /// transaction as in `put_execution`, and one flush makes them all durable.
    pub fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
        let mut out = Vec::with_capacity(writes.len());
        let mut replayed = Vec::new();
        let mut failed = None;
        let mut registered = Vec::new();
        for (i, w) in writes.iter().enumerate() {
            match self.put_execution_unsynced(w) {
                Ok((Written::New(written), writing)) => {
                    registered.push(writing);
                    out.push(Some(written))
                }
                Ok((Written::Replayed(id), _)) => {
                    out.push(None);
                    replayed.push((i, id));
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        // The writes before a failed one stay written: durable, then seen.
        let durable = self.durable();
        for writing in &registered {
            self.settled(writing, durable.as_ref().err());
        }
        durable?;
        for (w, written) in writes.iter().zip(&out) {
            if let Some(written) = written {
                self.flushed(&w.execution.namespace, written);
            }
        }
        if let Some(e) = failed {
            return Err(e);
        }
        for (i, id) in replayed {
            if let (Some(slot), Some(w)) = (out.get_mut(i), writes.get(i)) {
                *slot = Some(self.replay(id, w)?);
            }
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Applies one PutExecution, registered (`unflushed`) until the caller
    /// has made it durable and passes its registration to `settled`.
    pub(super) fn put_execution_unsynced(
        &self,
        w: &ExecutionWrite,
    ) -> Result<(Written, unflushed::Writing)> {
        // An update may leave the interface out: its key is the stored one.
        let stored = match w.execution.id {
            0 => None,
            id => self.get::<Execution>(&keys::execution(id))?,
        };
        let lock_key = match w.key {
            Some(k) => Some(k),
            None => stored
                .as_ref()
                .and_then(|e| e.cache_key.parse::<CacheKey>().ok()),
        };
        // An update that adds contexts attributes the outputs recorded before;
        // the transaction checks that each still exists.
        let earlier_outputs = match (&stored, w.context_ids.is_empty()) {
            (Some(e), false) => self
                .events_of_execution(e.id)?
                .into_iter()
                .filter(|ev| ev.r#type == EventType::Output as i32)
                .map(|ev| ev.artifact_id)
                .collect(),
            _ => Vec::new(),
        };
        let _guard = lock_key.as_ref().map(|k| self.key_lock(k)).transpose()?;
        let needed =
            usize::from(w.execution.id == 0) + w.outputs.iter().filter(|(_, a)| a.id == 0).count();
        let alloc = self.allocate(needed)?;
        // Kept from readers from before it is applied until it is durable:
        // what it creates, the execution it updates, the contexts it
        // associates with, the reservation it releases.
        let touched = (w.execution.id != 0)
            .then_some(w.execution.id)
            .into_iter()
            .chain(w.context_ids.iter().copied())
            .map(unflushed::Item::Id)
            .chain(
                lock_key
                    .as_ref()
                    .map(|k| unflushed::Item::key(&w.execution.namespace, k)),
            )
            .collect();
        let writing = unflushed::Writing {
            created: alloc.ids.clone(),
            touched,
        };
        self.register(&writing)?;
        let pending = PendingWrite {
            write: w.clone(),
            alloc,
            earlier_outputs,
        };
        let written = self.submit(pending);
        // A write refused (a missing input, ...) or replayed applied
        // nothing; one that failed in sled may be applied in memory and
        // stays registered.
        match &written {
            Ok(Written::New(_)) => {}
            Ok(Written::Replayed(_)) => self.unflushed.remove(&writing),
            Err(e) => self.settled(&writing, Some(e)),
        }
        Ok((written?, writing))
    }

    /// The answer to a retried PutExecution: the original's IDs, nothing written.
    pub(super) fn replay(&self, id: i64, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        let exec = self.execution(id, None)?;
        let events = self.events_of_execution(id)?;
        // The original was acknowledged only once durable; a retry may race it.
        self.durable()?;
        replay::replayed(exec, events, w)
    }

    /// Records that a lookup was served from `original`: a CACHED execution with
    /// the same interface and OUTPUT events to the same artifacts.
    /// It records INPUT events to `inputs` (the inputs of the task that looked
    /// the key up) and is associated with `context_ids` (the run that looked
    /// it up), which attributes its inputs and outputs too.
    pub fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        let alloc = self.allocate(1)?;
        let writing = unflushed::Writing {
            created: alloc.ids.clone(),
            touched: context_ids
                .iter()
                .copied()
                .map(unflushed::Item::Id)
                .collect(),
        };
        self.registered(&writing, || {
            self.record_cached_tx(&alloc, original, outputs, inputs, context_ids)
        })
    }

    pub(super) fn record_cached_tx(
        &self,
        alloc: &Alloc,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        let now = alloc.now;
        let ns = original.namespace.as_str();
        let exec = self.commit(|tx| {
            let id = Ids::of(alloc).take()?;
            let exec = domain::cached_execution(original, id, now);
            insert_new_execution_tx(tx, &exec, now)?;
            let mut events = NewEvents::new(exec.id, now);
            let mut members = Vec::new();
            for (name, ids) in inputs {
                for (i, id) in ids.iter().enumerate() {
                    let a: Option<Artifact> = tx_get(tx, &keys::artifact(*id))?;
                    if a.is_none_or(|a| a.namespace != ns) {
                        return abort(not_found(
                            &format!("interface.input_artifacts.{name}: artifact"),
                            *id,
                            Some(ns),
                        ));
                    }
                    events.add(tx, *id, EventType::Input, name, i)?;
                    members.push(*id);
                }
            }
            for (name, arts) in outputs {
                for (i, a) in arts.iter().enumerate() {
                    events.add(tx, a.id, EventType::Output, name, i)?;
                    members.push(a.id);
                }
            }
            events.write(tx)?;
            associate_tx(tx, ns, context_ids, exec.id, &members)?;
            Ok(exec)
        })?;
        self.durable()?;
        Ok(exec)
    }
    /// The executions with an OUTPUT event on an artifact.
    pub(super) fn producers_of(&self, artifact_id: i64) -> Result<Vec<i64>> {
        self.tree
            .scan_prefix(keys::events_of_artifact_typed(
                artifact_id,
                EventType::Output as i32,
            ))
            .map(|item| keys::event_by_artifact_exec(&item?.0))
            .collect()
    }
}
