//! `Backend` on PostgreSQL: the sled store's semantics, message for message,
//! over the relational schema of `migrations/`. The pure rules (policy,
//! reservations, lineage walk, validation) are the same modules sled uses.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use prost::Message;

use super::pool::Conn;
use super::{payload, PgStore, CHANNEL};
use crate::backend::Backend;
use crate::clock::{timestamp, timestamp_ms};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::lineage::{self, Bounds, Dir, Edges, Graph, Node};
use crate::policy::{self, Candidate, Ineligible};
use crate::proto::{Artifact, ArtifactState, Context, Event, EventType, Execution, ExecutionState};
use crate::reservations::{self, Ask, Claim, Holder, Waiters};
use crate::store::maintenance::{Integrity, Pruned, Selector};
use crate::store::query::{ContextFilter, LineageResult};
use crate::store::{
    content_digest, ArtifactFilter, Claimed, ExecutionFilter, ExecutionWrite, ExecutionWritten,
    Hit, Lookup, Page,
};

type Params = Vec<Box<dyn ToSql + Sync>>;

/// A column of a row, without panicking on a type mismatch.
fn col<'a, T: postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::Storage(format!("PostgreSQL: unexpected column {i}: {e}")))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    Ok(M::decode(bytes)?)
}

fn not_found(kind: &str, id: i64, ns: Option<&str>) -> Error {
    match ns {
        Some(ns) => Error::not_found(format!("{kind} {id} does not exist in namespace {ns:?}")),
        None => Error::not_found(format!("{kind} {id} does not exist")),
    }
}

fn field_error(e: Error, field: &str) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(format!("{field}: {m}")),
        other => other,
    }
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

fn created(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map(timestamp_ms).unwrap_or(0)
}

fn ttl_ms(e: &Execution) -> Option<i64> {
    policy::duration_ms(e.cache_ttl.as_ref(), "cache_ttl")
        .ok()
        .flatten()
}

/// Advisory-lock keys, one space per kind of name.
const LOCK_KEY: u8 = 1;
const LOCK_EXEC_EXT: u8 = 2;
const LOCK_ARTIFACT_EXT: u8 = 3;

fn lock_id(kind: u8, ns: &str, name: &str) -> i64 {
    let mut h = blake3::Hasher::new();
    h.update(&[kind]);
    h.update(&(ns.len() as u64).to_be_bytes());
    h.update(ns.as_bytes());
    h.update(name.as_bytes());
    let b = h.finalize();
    let mut x = [0u8; 8];
    x.copy_from_slice(&b.as_bytes()[..8]);
    i64::from_be_bytes(x)
}

fn key_lock(ns: &str, key: &CacheKey) -> i64 {
    lock_id(LOCK_KEY, ns, &key.to_string())
}

/// Takes the advisory locks of a transaction, in one order for everyone.
fn lock(c: &mut impl GenericClient, mut ids: Vec<i64>) -> Result<()> {
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        c.execute("SELECT pg_advisory_xact_lock($1)", &[&id])?;
    }
    Ok(())
}

fn notify(c: &mut impl GenericClient, ns: &str, key: &CacheKey) -> Result<()> {
    c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload(ns, key)])?;
    Ok(())
}

/// IDs allocated for one write, handed out in order.
struct Ids {
    ids: Vec<i64>,
    next: usize,
}

impl Ids {
    fn take(&mut self) -> Result<i64> {
        let id = self.ids.get(self.next).copied();
        self.next += 1;
        id.ok_or_else(|| Error::Internal("a write needed more IDs than it allocated".into()))
    }
}

fn get_execution(c: &mut impl GenericClient, id: i64) -> Result<Option<Execution>> {
    match c.query_opt("SELECT record FROM executions WHERE id = $1", &[&id])? {
        Some(r) => Ok(Some(decode(col::<&[u8]>(&r, 0)?)?)),
        None => Ok(None),
    }
}

fn get_artifact(c: &mut impl GenericClient, id: i64) -> Result<Option<Artifact>> {
    match c.query_opt("SELECT record FROM artifacts WHERE id = $1", &[&id])? {
        Some(r) => Ok(Some(decode(col::<&[u8]>(&r, 0)?)?)),
        None => Ok(None),
    }
}

fn get_context(c: &mut impl GenericClient, id: i64) -> Result<Option<Context>> {
    match c.query_opt("SELECT record FROM contexts WHERE id = $1", &[&id])? {
        Some(r) => Ok(Some(decode(col::<&[u8]>(&r, 0)?)?)),
        None => Ok(None),
    }
}

/// Whether an artifact exists in the namespace.
fn artifact_in(c: &mut impl GenericClient, id: i64, ns: &str) -> Result<bool> {
    Ok(c.query_opt(
        "SELECT 1 FROM artifacts WHERE id = $1 AND namespace = $2",
        &[&id, &ns],
    )?
    .is_some())
}

fn events_of(
    c: &mut impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Event>> {
    c.query(sql, params)?
        .iter()
        .map(|r| decode(col::<&[u8]>(r, 0)?))
        .collect()
}

// The orders of sled's event indexes: by execution (type, name, index,
// artifact); by artifact (type, execution, name, index). Names sort as sled's
// length-prefixed keys do: by length, then bytes.
const EVENTS_OF_EXECUTION: &str = "SELECT record FROM events WHERE execution_id = $1 \
     ORDER BY type, octet_length(name), name COLLATE \"C\", idx, artifact_id";
const EVENTS_OF_EXECUTION_TYPED: &str =
    "SELECT record FROM events WHERE execution_id = $1 AND type = $2 \
     ORDER BY octet_length(name), name COLLATE \"C\", idx, artifact_id";
const EVENTS_OF_ARTIFACT: &str = "SELECT record FROM events WHERE artifact_id = $1 \
     ORDER BY type, execution_id, octet_length(name), name COLLATE \"C\", idx";
const EVENTS_OF_ARTIFACT_TYPED: &str =
    "SELECT record FROM events WHERE artifact_id = $1 AND type = $2 \
     ORDER BY execution_id, octet_length(name), name COLLATE \"C\", idx";

fn outputs_of(c: &mut impl GenericClient, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
    let rows = c.query(
        "SELECT e.name, a.record FROM events e JOIN artifacts a ON a.id = e.artifact_id \
         WHERE e.execution_id = $1 AND e.type = $2 ORDER BY e.name, e.idx, e.artifact_id",
        &[&exec_id, &(EventType::Output as i32)],
    )?;
    let mut out: BTreeMap<String, Vec<Artifact>> = BTreeMap::new();
    for r in &rows {
        let name: String = col(r, 0)?;
        out.entry(name)
            .or_default()
            .push(decode(col::<&[u8]>(r, 1)?)?);
    }
    Ok(out)
}

/// Some(original id) when `external_id` names a record with the same content;
/// ALREADY_EXISTS when the content differs.
fn resolve_external_id(
    c: &mut impl GenericClient,
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
    if stored != Some(digest.as_slice()) {
        let what = if artifact {
            "an artifact"
        } else {
            "an execution"
        };
        return Err(Error::AlreadyExists(format!(
            "external_id {external_id:?} already names {what} ({id}) in namespace {ns:?} \
             with different content"
        )));
    }
    Ok(Some(id))
}

fn write_artifact(
    c: &mut impl GenericClient,
    a: &Artifact,
    digest: Option<&[u8; 32]>,
) -> Result<()> {
    let digest = digest.map(|d| d.to_vec());
    c.execute(
        "INSERT INTO artifacts (id, namespace, type, state, external_id, digest, created_ms, record) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (id) DO UPDATE SET type = EXCLUDED.type, state = EXCLUDED.state, \
         record = EXCLUDED.record",
        &[
            &a.id,
            &a.namespace,
            &a.r#type,
            &a.state,
            &nonempty(&a.external_id),
            &digest,
            &created(a.create_time.as_ref()),
            &a.encode_to_vec(),
        ],
    )?;
    Ok(())
}

fn put_artifact(
    c: &mut impl GenericClient,
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
        a.id = ids.take()?;
        if a.state == ArtifactState::Unspecified as i32 {
            a.state = ArtifactState::Live as i32;
        }
        a.create_time = Some(timestamp(now));
        a.update_time = Some(timestamp(now));
        write_artifact(c, &a, Some(&digest))?;
        return Ok(a.id);
    }
    let Some(old) = c.query_opt(
        "SELECT record FROM artifacts WHERE id = $1 FOR UPDATE",
        &[&a.id],
    )?
    else {
        return Err(Error::not_found(format!(
            "{field}.id: artifact {} does not exist",
            a.id
        )));
    };
    let old: Artifact = decode(col::<&[u8]>(&old, 0)?)?;
    if old.namespace != a.namespace {
        return Err(Error::not_found(format!(
            "{field}.id: artifact {} does not exist in namespace {:?}",
            a.id, a.namespace
        )));
    }
    if a.external_id.is_empty() {
        a.external_id = old.external_id.clone();
    } else if a.external_id != old.external_id {
        return Err(Error::precondition(format!(
            "{field}.external_id cannot change once set (it is {:?})",
            old.external_id
        )));
    }
    if a.state == ArtifactState::Unspecified as i32 {
        a.state = old.state;
    }
    a.create_time = old.create_time;
    a.update_time = Some(timestamp(now));
    write_artifact(c, &a, None)?;
    Ok(a.id)
}

fn insert_execution(c: &mut impl GenericClient, e: &Execution, digest: &[u8; 32]) -> Result<()> {
    let component = e.interface.as_ref().map(|i| i.component.as_str());
    let digest = nonempty(&e.external_id).map(|_| digest.to_vec());
    c.execute(
        "INSERT INTO executions (id, namespace, component, state, cache_key, external_id, \
         digest, cache_ttl_ms, created_ms, record) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &e.id,
            &e.namespace,
            &component,
            &e.state,
            &e.cache_key,
            &nonempty(&e.external_id),
            &digest,
            &ttl_ms(e),
            &created(e.create_time.as_ref()),
            &e.encode_to_vec(),
        ],
    )?;
    Ok(())
}

fn insert_event(
    c: &mut impl GenericClient,
    exec_id: i64,
    artifact_id: i64,
    kind: EventType,
    name: &str,
    index: usize,
    now: i64,
) -> Result<()> {
    let index = i32::try_from(index).unwrap_or(i32::MAX);
    let ev = Event {
        artifact_id,
        execution_id: exec_id,
        r#type: kind as i32,
        name: name.to_string(),
        index,
        time: Some(timestamp(now)),
    };
    c.execute(
        "INSERT INTO events (execution_id, artifact_id, type, name, idx, record) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &exec_id,
            &artifact_id,
            &(kind as i32),
            &name,
            &index,
            &ev.encode_to_vec(),
        ],
    )?;
    Ok(())
}

/// Associates an execution with contexts of its namespace and attributes
/// `artifacts` to them.
fn associate(
    c: &mut impl GenericClient,
    ns: &str,
    context_ids: &[i64],
    exec_id: i64,
    artifacts: &[i64],
) -> Result<()> {
    for (i, cid) in context_ids.iter().enumerate() {
        let found = c
            .query_opt(
                "SELECT 1 FROM contexts WHERE id = $1 AND namespace = $2",
                &[cid, &ns],
            )?
            .is_some();
        if !found {
            return Err(not_found(
                &format!("context_ids[{i}]: context"),
                *cid,
                Some(ns),
            ));
        }
        c.execute(
            "INSERT INTO associations (context_id, execution_id) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
            &[cid, &exec_id],
        )?;
        if !artifacts.is_empty() {
            c.execute(
                "INSERT INTO attributions (context_id, artifact_id) \
                 SELECT $1, a FROM unnest($2::bigint[]) AS a ON CONFLICT DO NOTHING",
                &[cid, &artifacts],
            )?;
        }
    }
    Ok(())
}

fn reservation_of(
    c: &mut impl GenericClient,
    ns: &str,
    key: &str,
    for_update: bool,
) -> Result<Option<Holder>> {
    let sql = if for_update {
        "SELECT owner, expire_ms FROM reservations WHERE namespace = $1 AND cache_key = $2 FOR UPDATE"
    } else {
        "SELECT owner, expire_ms FROM reservations WHERE namespace = $1 AND cache_key = $2"
    };
    match c.query_opt(sql, &[&ns, &key])? {
        Some(r) => Ok(Some(Holder {
            owner: col(&r, 0)?,
            expire_ms: col(&r, 1)?,
        })),
        None => Ok(None),
    }
}

fn set_reservation(c: &mut impl GenericClient, ns: &str, key: &str, h: &Holder) -> Result<()> {
    c.execute(
        "INSERT INTO reservations (namespace, cache_key, owner, expire_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (namespace, cache_key) DO UPDATE SET owner = EXCLUDED.owner, \
         expire_ms = EXCLUDED.expire_ms",
        &[&ns, &key, &h.owner, &h.expire_ms],
    )?;
    Ok(())
}

enum Written {
    New(ExecutionWritten),
    Replayed(i64),
}

impl PgStore {
    fn conn(&self) -> Result<Conn<'_>> {
        self.pool.get()
    }

    /// `n` new IDs and the creation time of the records they name, never
    /// earlier than that of an ID allocated before by any replica (unless that
    /// one is far ahead of the clock, as `Store::allocate` says): one
    /// statement takes the `id_clock` row and the sequence values together.
    fn allocate(&self, c: &mut Conn<'_>, n: usize) -> Result<(i64, Ids)> {
        let now = self.clock.now_ms();
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        let row = c.query_one(
            "WITH t AS (UPDATE id_clock SET last_ms = CASE WHEN last_ms > $1::bigint + $3::bigint \
             THEN $1::bigint ELSE GREATEST(last_ms, $1::bigint) END RETURNING last_ms) \
             SELECT t.last_ms, ARRAY(SELECT nextval('ids') FROM generate_series(1, $2)) FROM t",
            &[&now, &n, &crate::policy::FUTURE_TOLERANCE_MS],
        )?;
        Ok((
            col(&row, 0)?,
            Ids {
                ids: col(&row, 1)?,
                next: 0,
            },
        ))
    }

    fn lookup_in(
        &self,
        c: &mut impl GenericClient,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        let now = self.clock.now_ms();
        let rows = c.query(
            "SELECT c.completed_ms, c.invalidated, e.record, e.namespace \
             FROM cache_entries c JOIN executions e ON e.id = c.execution_id \
             WHERE c.namespace = $1 AND c.cache_key = $2 \
             ORDER BY c.completed_ms DESC, c.execution_id DESC",
            &[&ns, &key.to_string()],
        )?;
        let mut passed_over: Vec<Ineligible> = Vec::new();
        for r in &rows {
            let completed_ms: i64 = col(r, 0)?;
            let invalidated: bool = col(r, 1)?;
            let execution: Execution = decode(col::<&[u8]>(r, 2)?)?;
            if col::<&str>(r, 3)? != ns {
                return Err(not_found("execution", execution.id, Some(ns)));
            }
            let outputs = outputs_of(c, execution.id)?;
            let candidate = Candidate {
                completed_ms,
                ttl_ms: ttl_ms(&execution),
                outputs_live: outputs
                    .values()
                    .flatten()
                    .all(|a| a.state == ArtifactState::Live as i32),
                invalidated,
            };
            match policy::eligibility(&candidate, now, max_staleness_ms) {
                Ok(()) => {
                    return Ok(Lookup::Hit(Hit::Decoded {
                        execution: Box::new(execution),
                        outputs,
                    }))
                }
                Err(Ineligible::Stale) => {
                    passed_over.push(Ineligible::Stale);
                    break;
                }
                Err(why) => passed_over.push(why),
            }
        }
        Ok(Lookup::Miss {
            reason: policy::miss_reason(&passed_over),
        })
    }

    fn put_execution_once(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        let mut c = self.conn()?;
        let needed =
            usize::from(w.execution.id == 0) + w.outputs.iter().filter(|(_, a)| a.id == 0).count();
        let (now, mut ids) = self.allocate(&mut c, needed)?;
        let mut tx = c.transaction()?;
        let written = put_execution_tx(&mut tx, w, now, &mut ids)?;
        tx.commit()?;
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
        crate::store::replay::replayed(exec, events, w)
    }

    fn list<T: Message + Default>(
        &self,
        c: &mut impl GenericClient,
        table: &str,
        mut params: Params,
        mut conditions: Vec<String>,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<T>> {
        if let Some(after) = after {
            params.push(Box::new(after));
            conditions.push(format!("id < ${}", params.len()));
        }
        let page_size = page_size.max(1);
        params.push(Box::new(
            i64::try_from(page_size)
                .unwrap_or(i64::MAX)
                .saturating_add(1),
        ));
        let sql = format!(
            "SELECT id, record FROM {table} WHERE {} ORDER BY id DESC LIMIT ${}",
            conditions.join(" AND "),
            params.len()
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let rows = c.query(sql.as_str(), &refs)?;
        let more = rows.len() > page_size;
        let mut items = Vec::with_capacity(page_size.min(rows.len()));
        let mut last = None;
        for r in rows.iter().take(page_size) {
            last = Some(col::<i64>(r, 0)?);
            items.push(decode(col::<&[u8]>(r, 1)?)?);
        }
        Ok(Page {
            items,
            next_token: if more { last } else { None },
        })
    }
}

/// Pushes a parameter and returns its placeholder.
fn param(params: &mut Params, v: impl ToSql + Sync + 'static) -> String {
    params.push(Box::new(v));
    format!("${}", params.len())
}

fn created_conditions(
    params: &mut Params,
    conditions: &mut Vec<String>,
    r: &crate::query::TimeRange,
) {
    if let Some(a) = r.after_ms {
        let p = param(params, a);
        conditions.push(format!("created_ms >= {p}"));
    }
    if let Some(b) = r.before_ms {
        let p = param(params, b);
        conditions.push(format!("created_ms < {p}"));
    }
}

fn put_execution_tx(
    tx: &mut postgres::Transaction<'_>,
    w: &ExecutionWrite,
    now: i64,
    ids: &mut Ids,
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
    lock(tx, locks)?;

    let cache_key = w.key.map(|k| k.to_string()).unwrap_or_default();
    let mut exec;
    let mut earlier_outputs = Vec::new();
    if req.id == 0 {
        if let Some(id) = resolve_external_id(tx, false, ns, &req.external_id, &w.digest)? {
            return Ok(Written::Replayed(id));
        }
        exec = req.clone();
        exec.id = ids.take()?;
        exec.cache_key = cache_key;
        exec.create_time = Some(timestamp(now));
        exec.update_time = Some(timestamp(now));
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
        if let Some(ti) = &exec.interface {
            for (name, ids) in &ti.input_artifacts {
                for (i, id) in ids.ids.iter().enumerate() {
                    if !artifact_in(tx, *id, ns)? {
                        return Err(not_found(
                            &format!("execution.interface.input_artifacts.{name}: artifact"),
                            *id,
                            Some(ns),
                        ));
                    }
                    insert_event(tx, exec.id, *id, EventType::Input, name, i, now)?;
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
        crate::store::check_execution_update(&old, req, ns)?;
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
        exec = old;
        exec.state = req.state;
        exec.output_parameters.extend(req.output_parameters.clone());
        exec.properties.extend(req.properties.clone());
        if req.cache_ttl.is_some() {
            exec.cache_ttl = req.cache_ttl;
        }
        exec.update_time = Some(timestamp(now));
        tx.execute(
            "UPDATE executions SET state = $2, cache_ttl_ms = $3, record = $4 WHERE id = $1",
            &[&exec.id, &exec.state, &ttl_ms(&exec), &exec.encode_to_vec()],
        )?;
    }

    let mut output_ids = Vec::with_capacity(w.outputs.len());
    let mut next_index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, (name, art)) in w.outputs.iter().enumerate() {
        let field = format!("outputs[{i}].artifact");
        let id = if art.id == 0 {
            put_artifact(tx, art.clone(), now, &field, ids)?
        } else {
            if !artifact_in(tx, art.id, ns)? {
                return Err(not_found(
                    &format!("{field}.id: artifact"),
                    art.id,
                    Some(ns),
                ));
            }
            art.id
        };
        let index = next_index.entry(name.as_str()).or_insert(0);
        // Outputs added by an update follow those already recorded.
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
        insert_event(tx, exec.id, id, EventType::Output, name, *index, now)?;
        *index += 1;
        output_ids.push(id);
    }

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

    let key = w.key.or_else(|| exec.cache_key.parse::<CacheKey>().ok());
    let published =
        exec.state == ExecutionState::Complete as i32 && !w.skip_publish && key.is_some();
    if let (true, Some(key)) = (published, &key) {
        tx.execute(
            "INSERT INTO cache_entries (namespace, cache_key, completed_ms, execution_id) \
             VALUES ($1, $2, $3, $4)",
            &[&ns, &key.to_string(), &now, &exec.id],
        )?;
    }

    let mut reservation_released = false;
    if let Some(key) = key {
        let ks = key.to_string();
        let ends_task = [
            ExecutionState::Complete,
            ExecutionState::Failed,
            ExecutionState::Canceled,
        ]
        .iter()
        .any(|s| *s as i32 == exec.state);
        let current = reservation_of(tx, ns, &ks, true)?;
        if reservations::released_by_write(
            current.as_ref(),
            ends_task,
            published,
            &w.reservation_owner,
        ) {
            tx.execute(
                "DELETE FROM reservations WHERE namespace = $1 AND cache_key = $2",
                &[&ns, &ks],
            )?;
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

/// The event tables as a lineage graph (on one connection).
struct EventGraph<'a, 'p>(RefCell<&'a mut Conn<'p>>);

impl Graph for EventGraph<'_, '_> {
    fn edges(&self, node: Node, dir: Dir) -> Result<Edges<'_>> {
        let t = lineage::edge_type(node, dir) as i32;
        let mut c = self.0.borrow_mut();
        let events = match node {
            Node::Execution(id) => events_of(&mut ***c, EVENTS_OF_EXECUTION_TYPED, &[&id, &t])?,
            Node::Artifact(id) => events_of(&mut ***c, EVENTS_OF_ARTIFACT_TYPED, &[&id, &t])?,
        };
        Ok(Box::new(events.into_iter().map(Ok)))
    }
}

impl Backend for PgStore {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        match get_execution(&mut *self.conn()?, id)? {
            Some(e) if ns.is_none_or(|ns| e.namespace == ns) => Ok(e),
            _ => Err(not_found("execution", id, ns)),
        }
    }

    fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        match get_artifact(&mut *self.conn()?, id)? {
            Some(a) if ns.is_none_or(|ns| a.namespace == ns) => Ok(a),
            _ => Err(not_found("artifact", id, ns)),
        }
    }

    fn put_artifacts(&self, artifacts: Vec<Artifact>) -> Result<Vec<i64>> {
        let mut c = self.conn()?;
        let (now, mut ids) =
            self.allocate(&mut c, artifacts.iter().filter(|a| a.id == 0).count())?;
        let mut tx = c.transaction()?;
        let locks = artifacts
            .iter()
            .filter(|a| a.id == 0 && !a.external_id.is_empty())
            .map(|a| lock_id(LOCK_ARTIFACT_EXT, &a.namespace, &a.external_id))
            .collect();
        lock(&mut tx, locks)?;
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
        tx.commit()?;
        Ok(out)
    }

    fn put_execution(&self, w: &ExecutionWrite) -> Result<ExecutionWritten> {
        self.put_execution_once(w)
    }

    fn put_executions(&self, writes: &[ExecutionWrite]) -> Result<Vec<ExecutionWritten>> {
        writes.iter().map(|w| self.put_execution_once(w)).collect()
    }

    fn record_cached(
        &self,
        original: &Execution,
        outputs: &BTreeMap<String, Vec<Artifact>>,
        inputs: &BTreeMap<String, Vec<i64>>,
        context_ids: &[i64],
    ) -> Result<Execution> {
        let mut c = self.conn()?;
        let (now, mut ids) = self.allocate(&mut c, 1)?;
        let ns = original.namespace.as_str();
        let mut tx = c.transaction()?;
        let exec = Execution {
            id: ids.take()?,
            namespace: original.namespace.clone(),
            external_id: String::new(),
            interface: original.interface.clone(),
            cache_key: original.cache_key.clone(),
            state: ExecutionState::Cached as i32,
            output_parameters: original.output_parameters.clone(),
            cached_from_execution_id: original.id,
            cache_ttl: None,
            properties: BTreeMap::new(),
            create_time: Some(timestamp(now)),
            update_time: Some(timestamp(now)),
        };
        insert_execution(&mut tx, &exec, &[0; 32])?;
        let mut members = Vec::new();
        for (name, ids) in inputs {
            for (i, id) in ids.iter().enumerate() {
                if !artifact_in(&mut tx, *id, ns)? {
                    return Err(not_found(
                        &format!("interface.input_artifacts.{name}: artifact"),
                        *id,
                        Some(ns),
                    ));
                }
                insert_event(&mut tx, exec.id, *id, EventType::Input, name, i, now)?;
                members.push(*id);
            }
        }
        for (name, arts) in outputs {
            for (i, a) in arts.iter().enumerate() {
                insert_event(&mut tx, exec.id, a.id, EventType::Output, name, i, now)?;
                members.push(a.id);
            }
        }
        members.sort_unstable();
        members.dedup();
        associate(&mut tx, ns, context_ids, exec.id, &members)?;
        tx.commit()?;
        Ok(exec)
    }

    fn lookup(&self, ns: &str, key: &CacheKey, max_staleness_ms: Option<i64>) -> Result<Lookup> {
        self.lookup_in(&mut *self.conn()?, ns, key, max_staleness_ms)
    }

    /// Off on PostgreSQL: another replica may supersede or invalidate a hit.
    fn lookup_hot(&self, _: &str, _: &CacheKey, _: Option<i64>) -> Option<Lookup> {
        None
    }

    fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        let mut c = self.conn()?;
        // Hits need no lock.
        if let Lookup::Hit(hit) = self.lookup_in(&mut *c, ns, key, max_staleness_ms)? {
            return Ok(Claimed::Hit(hit));
        }
        let mut tx = c.transaction()?;
        lock(&mut tx, vec![key_lock(ns, key)])?;
        let reason = match self.lookup_in(&mut tx, ns, key, max_staleness_ms)? {
            Lookup::Hit(hit) => return Ok(Claimed::Hit(hit)),
            Lookup::Miss { reason } => reason,
        };
        let now = self.clock.now_ms();
        let ks = key.to_string();
        let claim = reservations::claim(reservation_of(&mut tx, ns, &ks, true)?.as_ref(), ask, now);
        if let Claim::Grant(h) = &claim {
            set_reservation(&mut tx, ns, &ks, h)?;
        }
        tx.commit()?;
        Ok(match claim {
            Claim::Grant(holder) => Claimed::Granted { holder, reason },
            Claim::Held(holder) => Claimed::Held { holder, reason },
            Claim::Free => Claimed::Miss { reason },
        })
    }

    fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        reservation_of(&mut *self.conn()?, ns, &key.to_string(), false)
    }

    fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let ks = key.to_string();
        let now = self.clock.now_ms();
        let current = reservation_of(&mut tx, ns, &ks, true)?;
        reservations::held_by(current.as_ref(), owner, now, "extend the reservation")?;
        let h = Holder {
            owner: owner.to_string(),
            expire_ms: now.saturating_add(lease_ms),
        };
        set_reservation(&mut tx, ns, &ks, &h)?;
        tx.commit()?;
        Ok(h)
    }

    fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let ks = key.to_string();
        let now = self.clock.now_ms();
        let current = reservation_of(&mut tx, ns, &ks, true)?;
        reservations::held_by(current.as_ref(), owner, now, "release the reservation")?;
        tx.execute(
            "DELETE FROM reservations WHERE namespace = $1 AND cache_key = $2",
            &[&ns, &ks],
        )?;
        notify(&mut tx, ns, key)?;
        tx.commit()?;
        Ok(())
    }

    fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        outputs_of(&mut *self.conn()?, exec_id)
    }

    fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        events_of(&mut *self.conn()?, EVENTS_OF_EXECUTION, &[&exec_id])
    }

    fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        events_of(&mut *self.conn()?, EVENTS_OF_ARTIFACT, &[&artifact_id])
    }

    fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        let mut c = self.conn()?;
        let (now, mut ids) =
            self.allocate(&mut c, contexts.iter().filter(|c| c.id == 0).count())?;
        let mut tx = c.transaction()?;
        let mut out = Vec::with_capacity(contexts.len());
        for (i, ctx) in contexts.iter().enumerate() {
            let field = format!("contexts[{i}]");
            let ns = ctx.namespace.as_str();
            if ctx.id == 0 {
                let mut new = ctx.clone();
                new.id = ids.take()?;
                new.create_time = Some(timestamp(now));
                // A concurrent creator of the same name wins; we take its ID.
                let inserted = tx.query_opt(
                    "INSERT INTO contexts (id, namespace, type, name, record) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, type, name) DO NOTHING \
                     RETURNING id",
                    &[&new.id, &ns, &new.r#type, &new.name, &new.encode_to_vec()],
                )?;
                let id = match inserted {
                    Some(r) => col(&r, 0)?,
                    None => col(
                        &tx.query_one(
                            "SELECT id FROM contexts WHERE namespace = $1 AND type = $2 AND name = $3",
                            &[&ns, &ctx.r#type, &ctx.name],
                        )?,
                        0,
                    )?,
                };
                out.push(id);
                continue;
            }
            let old = match tx.query_opt(
                "SELECT record FROM contexts WHERE id = $1 FOR UPDATE",
                &[&ctx.id],
            )? {
                Some(r) => Some(decode::<Context>(col::<&[u8]>(&r, 0)?)?),
                None => None,
            };
            let Some(old) = old.filter(|o| o.namespace == ns) else {
                return Err(not_found(&format!("{field}.id: context"), ctx.id, Some(ns)));
            };
            for (given, stored, name) in [
                (&ctx.r#type, &old.r#type, "type"),
                (&ctx.name, &old.name, "name"),
            ] {
                if !given.is_empty() && given != stored {
                    return Err(Error::precondition(format!(
                        "{field}.{name} cannot change once set (it is {stored:?})"
                    )));
                }
            }
            let mut updated = old;
            updated.properties = ctx.properties.clone();
            tx.execute(
                "UPDATE contexts SET record = $2 WHERE id = $1",
                &[&updated.id, &updated.encode_to_vec()],
            )?;
            out.push(updated.id);
        }
        tx.commit()?;
        Ok(out)
    }

    fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        match get_context(&mut *self.conn()?, id)? {
            Some(c) if ns.is_none_or(|ns| c.namespace == ns) => Ok(c),
            _ => Err(not_found("context", id, ns)),
        }
    }

    fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        let mut params: Params = Vec::new();
        let mut conds = vec![format!(
            "namespace = {}",
            param(&mut params, f.namespace.clone())
        )];
        if let Some(t) = &f.context_type {
            conds.push(format!("type = {}", param(&mut params, t.clone())));
        }
        self.list(
            &mut *self.conn()?,
            "contexts",
            params,
            conds,
            page_size,
            after,
        )
    }

    fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        let ns = f.namespace.as_str();
        let mut c = self.conn()?;
        let mut params: Params = Vec::new();
        let mut conds = vec![format!(
            "namespace = {}",
            param(&mut params, ns.to_string())
        )];
        if let Some(k) = &f.cache_key {
            conds.push(format!("cache_key = {}", param(&mut params, k.to_string())));
        }
        if let Some(cid) = f.context_id {
            match get_context(&mut *c, cid)? {
                Some(ctx) if ctx.namespace == ns => {}
                _ => {
                    return Err(field_error(
                        not_found("context", cid, Some(ns)),
                        "context_id",
                    ))
                }
            }
            conds.push(format!(
                "id IN (SELECT execution_id FROM associations WHERE context_id = {})",
                param(&mut params, cid)
            ));
        }
        if let Some(comp) = &f.component {
            conds.push(format!("component = {}", param(&mut params, comp.clone())));
        }
        if let Some(s) = f.state {
            conds.push(format!("state = {}", param(&mut params, s as i32)));
        }
        created_conditions(&mut params, &mut conds, &f.created);
        self.list(&mut *c, "executions", params, conds, page_size, after)
    }

    fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        let ns = f.namespace.as_str();
        let mut c = self.conn()?;
        let mut params: Params = Vec::new();
        let mut conds = vec![format!(
            "namespace = {}",
            param(&mut params, ns.to_string())
        )];
        if let Some(cid) = f.context_id {
            match get_context(&mut *c, cid)? {
                Some(ctx) if ctx.namespace == ns => {}
                _ => {
                    return Err(field_error(
                        not_found("context", cid, Some(ns)),
                        "context_id",
                    ))
                }
            }
            conds.push(format!(
                "id IN (SELECT artifact_id FROM attributions WHERE context_id = {})",
                param(&mut params, cid)
            ));
        }
        if let Some(t) = &f.artifact_type {
            conds.push(format!("type = {}", param(&mut params, t.clone())));
        }
        if let Some(s) = f.state {
            conds.push(format!("state = {}", param(&mut params, s as i32)));
        }
        created_conditions(&mut params, &mut conds, &f.created);
        self.list(&mut *c, "artifacts", params, conds, page_size, after)
    }

    fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
        match start {
            Node::Artifact(id) => self.artifact(id, None).map(|_| ()),
            Node::Execution(id) => self.execution(id, None).map(|_| ()),
        }?;
        let mut c = self.conn()?;
        let walk = {
            let g = EventGraph(RefCell::new(&mut c));
            lineage::traverse(&g, start, dirs, bounds)?
        };
        let mut out = LineageResult {
            events: walk.events,
            truncated: walk.truncated,
            ..Default::default()
        };
        for node in walk.nodes {
            match node {
                Node::Artifact(id) => out.artifacts.extend(get_artifact(&mut *c, id)?),
                Node::Execution(id) => out.executions.extend(get_execution(&mut *c, id)?),
            }
        }
        Ok(out)
    }

    fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
        let mut c = self.conn()?;
        // (cache key, execution id or all of the key)
        let mut targets: Vec<(String, Option<i64>)> = Vec::new();
        let entry_of = |e: &Execution| -> Option<(String, Option<i64>)> {
            e.cache_key
                .parse::<CacheKey>()
                .ok()
                .map(|k| (k.to_string(), Some(e.id)))
        };
        match selector {
            Selector::Key(key) => targets.push((key.to_string(), None)),
            Selector::Execution(id) => {
                let e = match get_execution(&mut *c, *id)? {
                    Some(e) if e.namespace == ns => e,
                    _ => return Err(not_found("execution", *id, Some(ns))),
                };
                targets.extend(entry_of(&e));
            }
            Selector::Artifact(id) => {
                match get_artifact(&mut *c, *id)? {
                    Some(a) if a.namespace == ns => {}
                    _ => return Err(not_found("artifact", *id, Some(ns))),
                }
                for ev in events_of(&mut *c, EVENTS_OF_ARTIFACT, &[id])? {
                    if ev.r#type == EventType::Output as i32 {
                        let e = match get_execution(&mut *c, ev.execution_id)? {
                            Some(e) if e.namespace == ns => e,
                            _ => return Err(not_found("execution", ev.execution_id, Some(ns))),
                        };
                        targets.extend(entry_of(&e));
                    }
                }
            }
            Selector::Component(component) => {
                let n = c.execute(
                    "UPDATE cache_entries SET invalidated = true WHERE namespace = $1 \
                     AND NOT invalidated AND cache_key IN \
                     (SELECT cache_key FROM executions WHERE namespace = $1 AND component = $2)",
                    &[&ns, component],
                )?;
                return Ok(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut tx = c.transaction()?;
        let mut n = 0u64;
        for (key, exec) in targets {
            n += tx.execute(
                "UPDATE cache_entries SET invalidated = true WHERE namespace = $1 \
                 AND cache_key = $2 AND ($3::bigint IS NULL OR execution_id = $3) \
                 AND NOT invalidated",
                &[&ns, &key, &exec],
            )?;
        }
        tx.commit()?;
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn count_entries(&self, ns: &str) -> Result<i64> {
        let r = self.conn()?.query_one(
            "SELECT count(*) FROM cache_entries WHERE namespace = $1 AND NOT invalidated",
            &[&ns],
        )?;
        col(&r, 0)
    }

    fn count_reservations(&self, ns: &str) -> Result<i64> {
        let r = self.conn()?.query_one(
            "SELECT count(*) FROM reservations WHERE namespace = $1 AND expire_ms > $2",
            &[&ns, &self.clock.now_ms()],
        )?;
        col(&r, 0)
    }

    fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        let rows = self.conn()?.query(
            "SELECT namespace, count(*) FROM reservations WHERE expire_ms > $1 GROUP BY namespace",
            &[&self.clock.now_ms()],
        )?;
        rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
    }

    fn size_on_disk(&self) -> Result<u64> {
        let r = self
            .conn()?
            .query_one("SELECT pg_database_size(current_database())", &[])?;
        Ok(u64::try_from(col::<i64>(&r, 0)?).unwrap_or(0))
    }

    fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        let n = self.conn()?.execute(
            "DELETE FROM cache_entries c USING executions e WHERE e.id = c.execution_id \
             AND ($1::text IS NULL OR c.namespace = $1) \
             AND (c.invalidated OR (e.cache_ttl_ms IS NOT NULL AND $2 - c.completed_ms > e.cache_ttl_ms))",
            &[&ns, &self.clock.now_ms()],
        )?;
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
        let now = self.clock.now_ms();
        let cutoff = now.saturating_sub(older_than_ms);
        // One stamped far ahead of the clock is as old as it is far ahead
        // (`policy::age_ms`).
        let ahead = now.saturating_add(older_than_ms.max(crate::policy::FUTURE_TOLERANCE_MS));
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let victims: Vec<i64> = tx
            .query(
                "SELECT id FROM executions WHERE namespace = $1 \
                 AND (created_ms < $2 OR created_ms > $3) FOR UPDATE",
                &[&ns, &cutoff, &ahead],
            )?
            .iter()
            .map(|r| col(r, 0))
            .collect::<Result<_>>()?;
        if victims.is_empty() {
            return Ok(Pruned::default());
        }
        let count = |tx: &mut postgres::Transaction<'_>, sql: &str| -> Result<i64> {
            col(&tx.query_one(sql, &[&victims])?, 0)
        };
        let events = count(
            &mut tx,
            "SELECT count(*) FROM events WHERE execution_id = ANY($1)",
        )?;
        let entries = count(
            &mut tx,
            "SELECT count(*) FROM cache_entries WHERE execution_id = ANY($1)",
        )?;
        // Output artifacts of victims that no remaining execution references.
        let dying: Vec<i64> = tx
            .query(
                "SELECT DISTINCT v.artifact_id FROM events v \
                 WHERE v.execution_id = ANY($1) AND v.type = $2 AND NOT EXISTS \
                 (SELECT 1 FROM events o WHERE o.artifact_id = v.artifact_id \
                  AND NOT (o.execution_id = ANY($1)))",
                &[&victims, &(EventType::Output as i32)],
            )?
            .iter()
            .map(|r| col(r, 0))
            .collect::<Result<_>>()?;
        let total = Pruned {
            executions: victims.len() as i64,
            events,
            artifacts: dying.len() as i64,
            cache_entries: entries,
        };
        if dry_run {
            return Ok(total);
        }
        for sql in [
            "DELETE FROM cache_entries WHERE execution_id = ANY($1)",
            "DELETE FROM events WHERE execution_id = ANY($1)",
            "DELETE FROM associations WHERE execution_id = ANY($1)",
            "DELETE FROM executions WHERE id = ANY($1)",
        ] {
            tx.execute(sql, &[&victims])?;
        }
        for sql in [
            "DELETE FROM attributions WHERE artifact_id = ANY($1)",
            "DELETE FROM artifacts WHERE id = ANY($1)",
        ] {
            tx.execute(sql, &[&dying])?;
        }
        tx.commit()?;
        Ok(total)
    }

    fn check(&self) -> Result<Integrity> {
        Err(Error::precondition(
            "the integrity check reads a sled data directory; on PostgreSQL the database's \
             constraints keep the records whole",
        ))
    }

    fn watch_other_writers(&self, waiters: Arc<Waiters>) -> Result<()> {
        self.start_listener(waiters)
    }

    fn close(self: Arc<Self>) -> Result<()> {
        self.stop_listener();
        self.pool.clear();
        Ok(())
    }
}
