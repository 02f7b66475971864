//! The writes of records: artifacts, executions with their events and
//! contexts, the executions a lookup records. Each is one transaction that
//! first takes the advisory locks of the names and keys it settles.

use std::collections::BTreeMap;

use prost::Message;

use super::hits::Stale;
use super::lookup::{delete_reservation, reservation_of};
use super::pool::Sql;
use super::rows::{
    artifacts_in, col, first_missing, get_execution, key_lock, lock_and_ids, lock_id, nonempty,
    notify, ttl_ms, Ids, LOCK_ARTIFACT_EXT, LOCK_EXEC_EXT,
};
use super::PgStore;
use crate::clock::timestamp;
use crate::domain::{
    self, content_digest, created_ms, decode, not_found, ExecutionWrite, ExecutionWritten, Named,
};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::proto::{Artifact, Event, EventType, Execution};
use crate::reservations;

/// Some(original id) when `external_id` names a record with the same content;
/// ALREADY_EXISTS when the content differs.
pub(super) fn resolve_external_id(
    c: &mut impl Sql,
    artifact: bool,
    ns: &str,
    external_id: &str,
    digest: &[u8; 32],
) -> Result<Option<i64>> {
    if external_id.is_empty() {
        return Ok(None);
    }
    let sql = if artifact {
        "SELECT id, digest FROM artifacts WHERE namespace = $1 AND external_id = $2"
    } else {
        "SELECT id, digest FROM executions WHERE namespace = $1 AND external_id = $2"
    };
    let Some(r) = c.query_opt(sql, &[&ns, &external_id])? else {
        return Ok(None);
    };
    let id: i64 = col(&r, 0)?;
    let stored: Option<&[u8]> = col(&r, 1)?;
    let named = if artifact {
        Named::Artifact
    } else {
        Named::Execution
    };
    domain::same_content(named, ns, external_id, id, stored, digest).map(Some)
}

pub(super) fn write_artifact(
    c: &mut impl Sql,
    a: &Artifact,
    digest: Option<&[u8; 32]>,
) -> Result<()> {
    c.defer(
        "INSERT INTO artifacts (id, namespace, type, state, external_id, digest, created_ms, record) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET type = EXCLUDED.type, state = EXCLUDED.state, \
         record = EXCLUDED.record",
        vec![
            Box::new(a.id),
            Box::new(a.namespace.clone()),
            Box::new(a.r#type.clone()),
            Box::new(a.state),
            Box::new(nonempty(&a.external_id).map(str::to_string)),
            Box::new(digest.map(|d| d.to_vec())),
            Box::new(created_ms(a.create_time.as_ref())),
            Box::new(a.encode_to_vec()),
        ],
    )
}

pub(super) fn put_artifact(
    c: &mut impl Sql,
    mut a: Artifact,
    now: i64,
    field: &str,
    ids: &mut Ids,
) -> Result<i64> {
    if a.id == 0 {
        let digest = content_digest(&a);
        if let Some(id) = resolve_external_id(c, true, &a.namespace, &a.external_id, &digest)? {
            return Ok(id);
        }
        domain::new_artifact(&mut a, ids.take()?, now);
        write_artifact(c, &a, Some(&digest))?;
        return Ok(a.id);
    }
    let old = match c.query_opt(
        "SELECT record FROM artifacts WHERE id = $1 FOR UPDATE",
        &[&a.id],
    )? {
        Some(r) => Some(decode::<Artifact>(col::<&[u8]>(&r, 0)?)?),
        None => None,
    };
    domain::updated_artifact(&mut a, old, now, field)?;
    write_artifact(c, &a, None)?;
    Ok(a.id)
}

pub(super) fn insert_execution(c: &mut impl Sql, e: &Execution, digest: &[u8; 32]) -> Result<()> {
    let component = e.interface.as_ref().map(|i| i.component.clone());
    let digest = nonempty(&e.external_id).map(|_| digest.to_vec());
    c.defer(
        "INSERT INTO executions (id, namespace, component, state, cache_key, external_id, \
         digest, cache_ttl_ms, created_ms, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        vec![
            Box::new(e.id),
            Box::new(e.namespace.clone()),
            Box::new(component),
            Box::new(e.state),
            Box::new(e.cache_key.clone()),
            Box::new(nonempty(&e.external_id).map(str::to_string)),
            Box::new(digest),
            Box::new(ttl_ms(e)),
            Box::new(created_ms(e.create_time.as_ref())),
            Box::new(e.encode_to_vec()),
        ],
    )
}

/// The events of one execution a write records, inserted in one statement.
pub(super) struct Events {
    exec_id: i64,
    now: i64,
    artifact: Vec<i64>,
    kind: Vec<i32>,
    name: Vec<String>,
    idx: Vec<i32>,
    record: Vec<Vec<u8>>,
}

impl Events {
    pub(super) fn new(exec_id: i64, now: i64) -> Events {
        Events {
            exec_id,
            now,
            artifact: Vec::new(),
            kind: Vec::new(),
            name: Vec::new(),
            idx: Vec::new(),
            record: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, artifact_id: i64, kind: EventType, name: &str, index: usize) {
        let index = i32::try_from(index).unwrap_or(i32::MAX);
        let ev = Event {
            artifact_id,
            execution_id: self.exec_id,
            r#type: kind as i32,
            name: name.to_string(),
            index,
            time: Some(timestamp(self.now)),
        };
        self.artifact.push(artifact_id);
        self.kind.push(kind as i32);
        self.name.push(ev.name.clone());
        self.idx.push(index);
        self.record.push(ev.encode_to_vec());
    }

    pub(super) fn write(self, c: &mut impl Sql) -> Result<()> {
        if self.artifact.is_empty() {
            return Ok(());
        }
        c.defer(
            "INSERT INTO events (execution_id, artifact_id, type, name, idx, record) \
             SELECT $1, * FROM unnest($2::bigint[], $3::integer[], $4::text[], \
             $5::integer[], $6::bytea[])",
            vec![
                Box::new(self.exec_id),
                Box::new(self.artifact),
                Box::new(self.kind),
                Box::new(self.name),
                Box::new(self.idx),
                Box::new(self.record),
            ],
        )
    }
}

/// Associates an execution with contexts of its namespace and attributes
/// `artifacts` to them.
pub(super) fn associate(
    c: &mut impl Sql,
    ns: &str,
    context_ids: &[i64],
    exec_id: i64,
    artifacts: &[i64],
) -> Result<()> {
    if context_ids.is_empty() {
        return Ok(());
    }
    let sql = "SELECT id FROM contexts WHERE id = ANY($1) AND namespace = $2";
    if let Some(i) = first_missing(c, sql, context_ids, ns)? {
        return Err(not_found(
            &format!("context_ids[{i}]: context"),
            context_ids[i],
            Some(ns),
        ));
    }
    c.defer(
        "INSERT INTO associations (context_id, execution_id) \
         SELECT c, $2 FROM unnest($1::bigint[]) AS c ON CONFLICT DO NOTHING",
        vec![Box::new(context_ids.to_vec()), Box::new(exec_id)],
    )?;
    if !artifacts.is_empty() {
        c.defer(
            "INSERT INTO attributions (context_id, artifact_id) \
             SELECT c, a FROM unnest($1::bigint[]) AS c, unnest($2::bigint[]) AS a \
             ON CONFLICT DO NOTHING",
            vec![Box::new(context_ids.to_vec()), Box::new(artifacts.to_vec())],
        )?;
    }
    Ok(())
}

pub(super) enum Written {
    New(ExecutionWritten),
    Replayed(i64),
}

impl PgStore {
    fn put_execution_once(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let written = put_execution_tx(&mut tx, w, self.clock.now_ms())?;
        // A publish supersedes the key's hit; an update of an execution
        // changes the hit it is.
        let stale = match &written {
            Written::New(n) if n.published || w.execution.id != 0 => n
                .cache_key
                .parse::<CacheKey>()
                .ok()
                .map(|key| Stale::Key(w.execution.namespace.clone(), key)),
            _ => None,
        };
        self.commit_fenced(tx, stale)?;
        match written {
            Written::New(w) => Ok(w),
            Written::Replayed(id) => {
                drop(c);
                self.replay(id, w)
            }
        }
    }

    /// The answer to a retried PutExecution: the original's IDs, nothing written.
    fn replay(&self, id: i64, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        let exec = self.execution(id, None)?;
        let events = self.events_of_execution(id)?;
        domain::replay::replayed(exec, events, w)
    }

    pub(super) fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        let now = self.clock.now_ms();
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let locks = artifacts
            .iter()
            .filter(|a| a.id == 0 && !a.external_id.is_empty())
            .map(|a| lock_id(LOCK_ARTIFACT_EXT, &a.namespace, &a.external_id))
            .collect();
        let new = artifacts.iter().filter(|a| a.id == 0).count();
        let updates = new < artifacts.len();
        let mut ids = lock_and_ids(&mut tx, locks, new)?;
        let mut out = Vec::with_capacity(artifacts.len());
        for (i, a) in artifacts.into_iter().enumerate() {
            out.push(put_artifact(
                &mut tx,
                a,
                now,
                &format!("artifacts[{i}]"),
                &mut ids,
            )?);
        }
        // An update of an artifact changes the hits of every execution that
        // output it.
        self.commit_fenced(tx, updates.then_some(Stale::All))?;
        Ok(out)
    }

    pub(super) fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        self.put_execution_once(w)
    }

    pub(super) fn put_executions(
        &self,
        writes: &[ExecutionWrite],
    ) -> Result<Vec<ExecutionWritten>> {
        writes.iter().map(|w| self.put_execution_once(w)).collect()
    }

    pub(super) fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        let now = self.clock.now_ms();
        let ns = original.namespace.as_str();
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let mut ids = lock_and_ids(&mut tx, Vec::new(), 1)?;
        let exec = domain::cached_execution(original, ids.take()?, now);
        insert_execution(&mut tx, &exec, &[0; 32])?;
        check_inputs(&mut tx, ns, inputs.iter(), "interface.input_artifacts")?;
        let mut events = Events::new(exec.id, now);
        let mut members = Vec::new();
        for (name, ids) in inputs {
            for (i, id) in ids.iter().enumerate() {
                events.push(*id, EventType::Input, name, i);
                members.push(*id);
            }
        }
        for (name, arts) in outputs {
            for (i, a) in arts.iter().enumerate() {
                events.push(a.id, EventType::Output, name, i);
                members.push(a.id);
            }
        }
        events.write(&mut tx)?;
        members.sort_unstable();
        members.dedup();
        associate(&mut tx, ns, context_ids, exec.id, &members)?;
        tx.commit()?;
        Ok(exec)
    }
}

/// NOT_FOUND for the first input (in order) that is no artifact of `ns`,
/// naming `{field}.{name}`.
fn check_inputs<'a>(
    c: &mut impl Sql,
    ns: &str,
    inputs: impl Iterator<Item = (&'a String, &'a Vec<i64>)>,
    field: &str,
) -> Result<()> {
    let (names, ids): (Vec<&String>, Vec<i64>) = inputs
        .flat_map(|(name, ids)| ids.iter().map(move |id| (name, *id)))
        .unzip();
    artifacts_in(c, &ids, ns, |i| format!("{field}.{}: artifact", names[i]))
}

pub(super) fn put_execution_tx(
    tx: &mut super::pool::Tx<'_, '_>,
    w: &ExecutionWrite,
    now: i64,
) -> Result<Written> {
    let req = &w.execution;
    let ns = req.namespace.as_str();
    // An update may leave the interface out: its key is the stored one.
    let stored = match req.id {
        0 => None,
        id => get_execution(tx, id)?,
    };
    let lock_key = match w.key {
        Some(k) => Some(k),
        None => stored
            .as_ref()
            .and_then(|e| e.cache_key.parse::<CacheKey>().ok()),
    };
    let mut locks: Vec<i64> = lock_key.iter().map(|k| key_lock(ns, k)).collect();
    if req.id == 0 && !req.external_id.is_empty() {
        locks.push(lock_id(LOCK_EXEC_EXT, ns, &req.external_id));
    }
    for (_, a) in &w.outputs {
        if a.id == 0 && !a.external_id.is_empty() {
            locks.push(lock_id(LOCK_ARTIFACT_EXT, &a.namespace, &a.external_id));
        }
    }
    let needed = usize::from(req.id == 0) + w.outputs.iter().filter(|(_, a)| a.id == 0).count();
    let mut ids = lock_and_ids(tx, locks, needed)?;
    let ids = &mut ids;

    let exec;
    let mut events;
    let mut earlier_outputs = Vec::new();
    if req.id == 0 {
        if let Some(id) = resolve_external_id(tx, false, ns, &req.external_id, &w.digest)? {
            return Ok(Written::Replayed(id));
        }
        exec = domain::new_execution(w, ids.take()?, now);
        if exec.cached_from_execution_id != 0 {
            let from = get_execution(tx, exec.cached_from_execution_id)?;
            if from.is_none_or(|f| f.namespace != ns) {
                return Err(not_found(
                    "execution.cached_from_execution_id: execution",
                    exec.cached_from_execution_id,
                    Some(ns),
                ));
            }
        }
        insert_execution(tx, &exec, &w.digest)?;
        events = Events::new(exec.id, now);
        if let Some(ti) = &exec.interface {
            let inputs = ti.input_artifacts.iter().map(|(n, ids)| (n, &ids.ids));
            check_inputs(tx, ns, inputs, "execution.interface.input_artifacts")?;
            for (name, ids) in &ti.input_artifacts {
                for (i, id) in ids.ids.iter().enumerate() {
                    events.push(*id, EventType::Input, name, i);
                }
            }
        }
    } else {
        // Lock the row: concurrent updates of one execution apply one at a time.
        let old = match tx.query_opt(
            "SELECT record FROM executions WHERE id = $1 FOR UPDATE",
            &[&req.id],
        )? {
            Some(r) => Some(decode::<Execution>(col::<&[u8]>(&r, 0)?)?),
            None => None,
        };
        let Some(old) = old else {
            return Err(not_found("execution.id: execution", req.id, Some(ns)));
        };
        domain::check_execution_update(&old, req, ns)?;
        if !w.context_ids.is_empty() {
            // An update that adds contexts attributes the outputs recorded before.
            earlier_outputs = tx
                .query(
                    "SELECT artifact_id FROM events WHERE execution_id = $1 AND type = $2",
                    &[&old.id, &(EventType::Output as i32)],
                )?
                .iter()
                .map(|r| col::<i64>(r, 0))
                .collect::<Result<Vec<i64>>>()?;
        }
        exec = domain::updated_execution(old, req, now);
        tx.defer(
            "UPDATE executions SET state = $2, cache_ttl_ms = $3, record = $4 WHERE id = $1",
            vec![
                Box::new(exec.id),
                Box::new(exec.state),
                Box::new(ttl_ms(&exec)),
                Box::new(exec.encode_to_vec()),
            ],
        )?;
        events = Events::new(exec.id, now);
    }

    let given: Vec<i64> = w
        .outputs
        .iter()
        .map(|(_, a)| a.id)
        .filter(|id| *id != 0)
        .collect();
    let positions: Vec<usize> = (0..w.outputs.len())
        .filter(|i| w.outputs[*i].1.id != 0)
        .collect();
    artifacts_in(tx, &given, ns, |i| {
        format!("outputs[{}].artifact.id: artifact", positions[i])
    })?;
    let mut output_ids = Vec::with_capacity(w.outputs.len());
    let mut next_index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (name, art)) in w.outputs.iter().enumerate() {
        let field = format!("outputs[{i}].artifact");
        let id = match art.id {
            0 => put_artifact(tx, art.clone(), now, &field, ids)?,
            id => id,
        };
        let index = next_index.entry(name.as_str()).or_insert(0);
        // Outputs added by an update follow those already recorded (a new
        // execution has none).
        if req.id != 0 {
            let idx = i32::try_from(*index).unwrap_or(i32::MAX);
            let existing = tx.query_opt(
                "SELECT 1 FROM events WHERE execution_id = $1 AND type = $2 AND name = $3 \
                 AND idx = $4 AND artifact_id = $5",
                &[&exec.id, &(EventType::Output as i32), &name, &idx, &id],
            )?;
            if existing.is_some() {
                return Err(Error::precondition(format!(
                    "{field}: output {name:?}[{index}] is already recorded"
                )));
            }
        }
        events.push(id, EventType::Output, name, *index);
        *index += 1;
        output_ids.push(id);
    }
    events.write(tx)?;

    if !w.context_ids.is_empty() {
        let mut members: Vec<i64> = exec
            .interface
            .iter()
            .flat_map(|ti| ti.input_artifacts.values())
            .flat_map(|ids| ids.ids.iter().copied())
            .chain(output_ids.iter().copied())
            .chain(earlier_outputs)
            .collect();
        members.sort_unstable();
        members.dedup();
        associate(tx, ns, &w.context_ids, exec.id, &members)?;
    }

    let key = domain::settled_key(w, &exec);
    let published = domain::publishes(w, &exec, key.as_ref());
    if let (true, Some(key)) = (published, &key) {
        tx.defer(
            "INSERT INTO cache_entries (namespace, cache_key, completed_ms, execution_id) \
             VALUES ($1, $2, $3, $4)",
            vec![
                Box::new(ns.to_string()),
                Box::new(key.to_string()),
                Box::new(now),
                Box::new(exec.id),
            ],
        )?;
    }

    let mut reservation_released = false;
    if let Some(key) = key {
        let ks = key.to_string();
        let current = reservation_of(tx, ns, &ks, true)?;
        if reservations::released_by_write(
            current.as_ref(),
            domain::ends_task(&exec),
            published,
            &w.reservation_owner,
        ) {
            delete_reservation(tx, ns, ks)?;
            reservation_released = true;
        }
        if published || reservation_released {
            notify(tx, ns, &key)?;
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
