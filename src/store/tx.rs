//! The bodies of the store's write transactions: artifacts, executions,
//! external IDs, associations and reservations as sled transactions apply
//! them, and the batching of PutExecution writes into one transaction.

use super::*;

pub(super) fn reservation_tx(tx: &Tx, rkey: &[u8]) -> TxResult<Option<Holder>> {
    match tx.get(rkey)? {
        Some(v) => Holder::decode(&v).map(Some).or_else(abort),
        None => Ok(None),
    }
}

pub(super) fn tx_get<M: Message + Default>(tx: &Tx, key: &[u8]) -> TxResult<Option<M>> {
    match tx.get(key)? {
        Some(v) => decode(&v).map(Some).or_else(abort),
        None => Ok(None),
    }
}

pub(super) fn put<M: Message>(tx: &Tx, key: Vec<u8>, m: &M) -> TxResult<()> {
    tx.set(key, m.encode_to_vec())?;
    Ok(())
}

/// Resolves an external_id: Some(original id) when it names a record with the
/// same content; ALREADY_EXISTS when the content differs.
pub(super) fn resolve_external_id(
    tx: &Tx,
    ns: &str,
    kind: u8,
    external_id: &str,
    digest: &[u8; 32],
) -> TxResult<Option<i64>> {
    if external_id.is_empty() {
        return Ok(None);
    }
    let Some(v) = tx.get(keys::external_id(ns, kind, external_id))? else {
        return Ok(None);
    };
    let id = keys::read_u64(&v, 0).or_else(abort)? as i64;
    let named = if kind == keys::KIND_ARTIFACT {
        Named::Artifact
    } else {
        Named::Execution
    };
    domain::same_content(named, ns, external_id, id, v.get(8..40), digest)
        .map(Some)
        .or_else(abort)
}

pub(super) fn insert_external_id(
    tx: &Tx,
    ns: &str,
    kind: u8,
    ext: &str,
    id: i64,
    digest: &[u8; 32],
) -> TxResult<()> {
    if !ext.is_empty() {
        let mut v = (id as u64).to_be_bytes().to_vec();
        v.extend_from_slice(digest);
        tx.set(keys::external_id(ns, kind, ext), v)?;
    }
    Ok(())
}

/// Creates or updates an artifact: its ID, and the record as written (None
/// when an external_id named an existing artifact: nothing was written).
pub(super) fn put_artifact_tx(
    tx: &Tx,
    mut a: Artifact,
    now: i64,
    field: &str,
    ids: &mut Ids<'_>,
) -> TxResult<(i64, Option<Artifact>)> {
    if a.id == 0 {
        let digest = content_digest(&a);
        if let Some(id) = resolve_external_id(
            tx,
            &a.namespace,
            keys::KIND_ARTIFACT,
            &a.external_id,
            &digest,
        )? {
            return Ok((id, None));
        }
        domain::new_artifact(&mut a, ids.take()?, now);
        insert_external_id(
            tx,
            &a.namespace,
            keys::KIND_ARTIFACT,
            &a.external_id,
            a.id,
            &digest,
        )?;
        for k in artifact_index_keys(&a) {
            tx.set(k, &[])?;
        }
        put(tx, keys::artifact(a.id), &a)?;
        return Ok((a.id, Some(a)));
    }
    let old = tx_get::<Artifact>(tx, &keys::artifact(a.id))?;
    let old_keys = old.as_ref().map(artifact_index_keys);
    domain::updated_artifact(&mut a, old, now, field).or_else(abort)?;
    let old_keys = old_keys.unwrap_or_default();
    // The type and state indexes follow the record.
    let new_keys = artifact_index_keys(&a);
    for k in old_keys.iter().filter(|k| !new_keys.contains(k)) {
        tx.remove(k.as_slice())?;
    }
    for k in new_keys.iter().filter(|k| !old_keys.contains(k)) {
        tx.set(k.as_slice(), &[])?;
    }
    put(tx, keys::artifact(a.id), &a)?;
    Ok((a.id, Some(a)))
}

/// After an update of `artifact`: the hits of each of `producers`
/// (executions with an OUTPUT event on it) change, and its copy is
/// rewritten in the hit record of each whose cache entry has one. Only the execution whose write created the artifact can hold a
/// copy (`entry`), and its OUTPUT event was written with the artifact, so a
/// scan of the artifact's OUTPUT events before the transaction finds it.
pub(super) fn refresh_copies_tx(tx: &Tx, artifact: &Artifact, producers: &[i64]) -> TxResult<()> {
    for exec_id in producers {
        let Some(exec) = tx_get::<Execution>(tx, &keys::execution(*exec_id))? else {
            continue;
        };
        // A state change (e.g. DELETED) or a new copy changes its hits.
        tx.hits_change(&exec);
        let (Ok(key), Some(done)) = (exec.cache_key.parse::<CacheKey>(), &exec.update_time) else {
            continue;
        };
        if exec.state != ExecutionState::Complete as i32 {
            continue;
        }
        let ek = keys::cache_entry(&exec.namespace, &key, timestamp_ms(done), exec.id);
        let Some(v) = tx.get(&ek)? else { continue };
        if let Some(mut rec) = entry::record(&v).or_else(abort)? {
            if rec.replace_artifact(artifact) {
                tx.set(ek, rec.to_value())?;
            }
        }
    }
    Ok(())
}

/// The entries of an artifact in the indexes that change with its content:
/// by (namespace, type) and by (namespace, state), the latter also its
/// namespace's index (`keys::artifact_by_ns_prefixes`).
pub(super) fn artifact_index_keys(a: &Artifact) -> [Vec<u8>; 2] {
    [
        keys::with_rev_id(
            &keys::artifact_by_type_prefix(&a.namespace, &a.r#type),
            a.id,
        ),
        keys::with_rev_id(&keys::artifact_by_state_prefix(&a.namespace, a.state), a.id),
    ]
}

/// The entry of an execution in the by-state index.
pub(super) fn exec_state_key(e: &Execution) -> Vec<u8> {
    keys::with_rev_id(&keys::exec_by_state_prefix(&e.namespace, e.state), e.id)
}

/// Associates an execution with contexts of its namespace and attributes
/// `artifacts` to them. NOT_FOUND (naming `context_ids[i]`) when a context
/// does not exist in the namespace.
pub(super) fn associate_tx(
    tx: &Tx,
    ns: &str,
    context_ids: &[i64],
    exec_id: i64,
    artifacts: &[i64],
) -> TxResult<()> {
    for (i, cid) in context_ids.iter().enumerate() {
        let c: Option<Context> = tx_get(tx, &keys::context(*cid))?;
        if c.is_none_or(|c| c.namespace != ns) {
            return abort(not_found(
                &format!("context_ids[{i}]: context"),
                *cid,
                Some(ns),
            ));
        }
        tx.set(
            keys::with_rev_id(&keys::exec_by_context_prefix(*cid), exec_id),
            &[],
        )?;
        tx.set(
            keys::KeyBuf::new(keys::CONTEXTS_OF_EXEC)
                .id(exec_id)
                .id(*cid)
                .done(),
            &[],
        )?;
        for a in artifacts {
            tx.set(
                keys::with_rev_id(&keys::artifact_by_context_prefix(*cid), *a),
                &[],
            )?;
            tx.set(
                keys::KeyBuf::new(keys::CONTEXTS_OF_ARTIFACT)
                    .id(*a)
                    .id(*cid)
                    .done(),
                &[],
            )?;
        }
    }
    Ok(())
}

/// Most PutExecution writes applied in one transaction (see `combine`): a
/// batch holds sled's transaction lock, which reads outside the hot cache
/// wait for, so a batch stays short.
pub(super) const WRITE_BATCH: usize = 16;

/// An execution write waiting for its batch, with what was read and allocated
/// for it before.
pub(super) struct PendingWrite {
    pub(super) write: ExecutionWrite,
    pub(super) alloc: Alloc,
    pub(super) earlier_outputs: Vec<i64>,
}

impl PendingWrite {
    pub(super) fn apply(&self, tx: &Tx) -> TxResult<Written> {
        put_execution_tx(tx, &self.write, &self.alloc, &self.earlier_outputs)
    }
}

/// What the write transaction did: wrote, or found the original of a retry.
pub(super) enum Written {
    New(ExecutionWritten),
    Replayed(i64),
}

pub(super) fn put_execution_tx(
    tx: &Tx,
    w: &ExecutionWrite,
    alloc: &Alloc,
    earlier_outputs: &[i64],
) -> TxResult<Written> {
    let now = alloc.now;
    let mut ids = Ids::of(alloc);
    let req = &w.execution;
    let ns = req.namespace.as_str();
    let exec;
    let mut events;
    if req.id == 0 {
        if let Some(id) =
            resolve_external_id(tx, ns, keys::KIND_EXECUTION, &req.external_id, &w.digest)?
        {
            return Ok(Written::Replayed(id));
        }
        exec = domain::new_execution(w, ids.take()?, now);
        if exec.cached_from_execution_id != 0 {
            let from: Option<Execution> =
                tx_get(tx, &keys::execution(exec.cached_from_execution_id))?;
            if from.is_none_or(|f| f.namespace != ns) {
                return abort(not_found(
                    "execution.cached_from_execution_id: execution",
                    exec.cached_from_execution_id,
                    Some(ns),
                ));
            }
        }
        insert_external_id(
            tx,
            ns,
            keys::KIND_EXECUTION,
            &exec.external_id,
            exec.id,
            &w.digest,
        )?;
        insert_new_execution_tx(tx, &exec, now)?;
        events = NewEvents::new(exec.id, now);
        if let Some(ti) = &exec.interface {
            for (name, ids) in &ti.input_artifacts {
                for (i, id) in ids.ids.iter().enumerate() {
                    let a: Option<Artifact> = tx_get(tx, &keys::artifact(*id))?;
                    if a.is_none_or(|a| a.namespace != ns) {
                        return abort(not_found(
                            &format!("execution.interface.input_artifacts.{name}: artifact"),
                            *id,
                            Some(ns),
                        ));
                    }
                    events.add(tx, *id, EventType::Input, name, i)?;
                }
            }
        }
    } else {
        let Some(old) = tx_get::<Execution>(tx, &keys::execution(req.id))? else {
            return abort(not_found("execution.id: execution", req.id, Some(ns)));
        };
        check_execution_update(&old, req, ns).or_else(abort)?;
        let moves = old.state != req.state;
        if moves {
            tx.remove(exec_state_key(&old))?;
        }
        exec = domain::updated_execution(old, req, now);
        if moves {
            tx.set(exec_state_key(&exec), &[])?;
        }
        put(tx, keys::execution(exec.id), &exec)?;
        events = NewEvents::stored(tx, exec.id, now)?;
    }

    let mut output_ids = Vec::with_capacity(w.outputs.len());
    let mut outputs_by_name: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    // Copies for the hit record, while every output is created here.
    let mut copies: Option<BTreeMap<String, Vec<Artifact>>> = Some(BTreeMap::new());
    let mut next_index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (name, art)) in w.outputs.iter().enumerate() {
        let field = format!("outputs[{i}].artifact");
        let id = if art.id == 0 {
            let (id, written) = put_artifact_tx(tx, art.clone(), now, &field, &mut ids)?;
            match (written, copies.as_mut()) {
                (Some(a), Some(c)) => c.entry(name.clone()).or_default().push(a),
                _ => copies = None,
            }
            id
        } else {
            copies = None;
            let a: Option<Artifact> = tx_get(tx, &keys::artifact(art.id))?;
            if a.is_none_or(|a| a.namespace != ns) {
                return abort(not_found(
                    &format!("{field}.id: artifact"),
                    art.id,
                    Some(ns),
                ));
            }
            art.id
        };
        let index = next_index.entry(name.as_str()).or_insert(0);
        // Outputs added by an update follow those already recorded (a new
        // execution has none).
        if req.id != 0 && events.recorded(tx, id, EventType::Output, name, *index)? {
            return abort(Error::precondition(format!(
                "{field}: output {name:?}[{index}] is already recorded"
            )));
        }
        events.add(tx, id, EventType::Output, name, *index)?;
        *index += 1;
        output_ids.push(id);
        outputs_by_name.entry(name.clone()).or_default().push(id);
    }

    events.write(tx)?;

    if !w.context_ids.is_empty() {
        let mut members: Vec<i64> = exec
            .interface
            .iter()
            .flat_map(|ti| ti.input_artifacts.values())
            .flat_map(|ids| ids.ids.iter().copied())
            .chain(output_ids.iter().copied())
            .collect();
        for id in earlier_outputs {
            if tx.get(keys::artifact(*id))?.is_some() {
                members.push(*id);
            }
        }
        members.sort_unstable();
        members.dedup();
        associate_tx(tx, ns, &w.context_ids, exec.id, &members)?;
    }

    let key = domain::settled_key(w, &exec);
    let published = domain::publishes(w, &exec, key.as_ref());
    if let (true, Some(key)) = (published, &key) {
        // A new execution's outputs are all in this write: the entry carries
        // its hit record. An update may complete an execution whose earlier
        // outputs were recorded before: its entry is served the long way.
        let value = if req.id == 0 {
            let copies = copies
                .map(|c| c.into_values().flatten().collect())
                .unwrap_or_default();
            entry::with_record(&exec, &outputs_by_name, copies)
        } else {
            vec![VALID]
        };
        tx.set(keys::cache_entry(ns, key, now, exec.id), value)?;
    }

    // The reservation of the key.
    let mut reservation_released = false;
    if let Some(key) = key {
        let rkey = keys::reservation(ns, &key);
        let current = reservation_tx(tx, &rkey)?;
        if reservations::released_by_write(
            current.as_ref(),
            domain::ends_task(&exec),
            published,
            &w.reservation_owner,
        ) {
            tx.remove(rkey)?;
            reservation_released = true;
        }
    }
    Ok(Written::New(ExecutionWritten {
        execution_id: exec.id,
        output_artifact_ids: output_ids,
        cache_key: exec.cache_key.clone(),
        published,
        reservation_released,
    }))
}

pub(super) fn insert_new_execution_tx(tx: &Tx, exec: &Execution, _now: i64) -> TxResult<()> {
    let ns = exec.namespace.as_str();
    put(tx, keys::execution(exec.id), exec)?;
    // Also its namespace's index (`keys::exec_by_ns_prefixes`).
    tx.set(exec_state_key(exec), &[])?;
    if let Some(ti) = &exec.interface {
        tx.set(
            keys::with_rev_id(&keys::exec_by_component_prefix(ns, &ti.component), exec.id),
            &[],
        )?;
    }
    if let Ok(key) = exec.cache_key.parse::<CacheKey>() {
        tx.set(
            keys::with_rev_id(&keys::exec_by_key_prefix(ns, &key), exec.id),
            &[],
        )?;
    }
    Ok(())
}
