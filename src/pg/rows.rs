//! What every part of the PostgreSQL store shares: reading records and
//! columns, the advisory locks and the NOTIFY of a key, the IDs of a write.

use std::collections::BTreeMap;

use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::pool::Sql;

use super::{payload, CHANNEL};
use crate::domain::{decode, not_found};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::policy;
use crate::proto::{Artifact, Context, Event, EventType, Execution};

/// A column of a row, without panicking on a type mismatch.
pub(super) fn col<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, i: usize) -> Result<T> {
    row.try_get(i)
        .map_err(|e| Error::Storage(format!("PostgreSQL: unexpected column {i}: {e}")))
}

pub(super) fn field_error(e: Error, field: &str) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(format!("{field}: {m}")),
        other => other,
    }
}

pub(super) fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

pub(super) fn ttl_ms(e: &Execution) -> Option<i64> {
    policy::duration_ms(e.cache_ttl.as_ref(), "cache_ttl")
        .ok()
        .flatten()
}

/// Advisory-lock keys, one space per kind of name.
pub(super) const LOCK_KEY: u8 = 1;
pub(super) const LOCK_EXEC_EXT: u8 = 2;
pub(super) const LOCK_ARTIFACT_EXT: u8 = 3;

pub(super) fn lock_id(kind: u8, ns: &str, name: &str) -> i64 {
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

pub(super) fn key_lock(ns: &str, key: &CacheKey) -> i64 {
    lock_id(LOCK_KEY, ns, &key.to_string())
}

/// The SQL of `lock_and_ids` and `lock`.
const LOCK_AND_IDS: &str = "WITH locked AS \
     (SELECT count(pg_advisory_xact_lock(l)) FROM unnest($1::bigint[]) AS l) \
     SELECT ARRAY(SELECT nextval('ids') FROM generate_series(1, $2)) FROM locked";

/// Takes the advisory locks of a transaction, in one order for everyone, and
/// `n` new IDs from the sequence, in one statement. `nextval` takes no lock
/// that lasts to the commit and is never rolled back, so concurrent writes
/// on every replica draw distinct IDs without waiting for each other.
pub(super) fn lock_and_ids(c: &mut impl Sql, locks: Vec<i64>, n: usize) -> Result<Ids> {
    let locks = ordered(locks);
    let n = i32::try_from(n).unwrap_or(i32::MAX);
    let row = c.query_one(LOCK_AND_IDS, &[&locks, &n])?;
    Ok(Ids {
        ids: col(&row, 0)?,
        next: 0,
    })
}

/// Takes the advisory locks of a transaction (as `lock_and_ids`), sent with
/// the transaction's next statement: that one runs holding them.
pub(super) fn lock(c: &mut impl Sql, locks: Vec<i64>) -> Result<()> {
    c.defer(LOCK_AND_IDS, vec![Box::new(ordered(locks)), Box::new(0i32)])
}

/// Lock keys in the one order every transaction takes them in.
fn ordered(mut locks: Vec<i64>) -> Vec<i64> {
    locks.sort_unstable();
    locks.dedup();
    locks
}

/// NOTIFY of a key, sent with the transaction's next statement.
pub(super) fn notify(c: &mut impl Sql, ns: &str, key: &CacheKey) -> Result<()> {
    c.defer(
        "SELECT pg_notify($1, $2)",
        vec![Box::new(CHANNEL), Box::new(payload(ns, key))],
    )
}

/// IDs allocated for one write, handed out in order.
pub(super) struct Ids {
    pub(super) ids: Vec<i64>,
    pub(super) next: usize,
}

impl Ids {
    pub(super) fn take(&mut self) -> Result<i64> {
        let id = self.ids.get(self.next).copied();
        self.next += 1;
        id.ok_or_else(|| Error::Internal("a write needed more IDs than it allocated".into()))
    }
}

pub(super) fn get_execution(c: &mut impl Sql, id: i64) -> Result<Option<Execution>> {
    match c.query_opt("SELECT record FROM executions WHERE id = $1", &[&id])? {
        Some(r) => Ok(Some(decode(col::<&[u8]>(&r, 0)?)?)),
        None => Ok(None),
    }
}

pub(super) fn get_artifact(c: &mut impl Sql, id: i64) -> Result<Option<Artifact>> {
    match c.query_opt("SELECT record FROM artifacts WHERE id = $1", &[&id])? {
        Some(r) => Ok(Some(decode(col::<&[u8]>(&r, 0)?)?)),
        None => Ok(None),
    }
}

pub(super) fn get_context(c: &mut impl Sql, id: i64) -> Result<Option<Context>> {
    match c.query_opt("SELECT record FROM contexts WHERE id = $1", &[&id])? {
        Some(r) => Ok(Some(decode(col::<&[u8]>(&r, 0)?)?)),
        None => Ok(None),
    }
}

/// The index of the first of `ids` that `sql` (the IDs among $1 of
/// namespace $2) does not return; one statement for all.
pub(super) fn first_missing(
    c: &mut impl Sql,
    sql: &str,
    ids: &[i64],
    ns: &str,
) -> Result<Option<usize>> {
    if ids.is_empty() {
        return Ok(None);
    }
    let found = c
        .query(sql, &[&ids, &ns])?
        .iter()
        .map(|r| col::<i64>(r, 0))
        .collect::<Result<std::collections::HashSet<i64>>>()?;
    Ok(ids.iter().position(|id| !found.contains(id)))
}

/// NOT_FOUND for the first of `ids` (in order) that is no artifact of the
/// namespace, naming it with `field(i)`.
pub(super) fn artifacts_in(
    c: &mut impl Sql,
    ids: &[i64],
    ns: &str,
    field: impl Fn(usize) -> String,
) -> Result<()> {
    let sql = "SELECT id FROM artifacts WHERE id = ANY($1) AND namespace = $2";
    match first_missing(c, sql, ids, ns)? {
        Some(i) => Err(not_found(&field(i), ids[i], Some(ns))),
        None => Ok(()),
    }
}

pub(super) fn events_of(
    c: &mut impl Sql,
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
pub(super) const EVENTS_OF_EXECUTION: &str = "SELECT record FROM events WHERE execution_id = $1 \
     ORDER BY type, octet_length(name), name COLLATE \"C\", idx, artifact_id";
pub(super) const EVENTS_OF_EXECUTION_TYPED: &str =
    "SELECT record FROM events WHERE execution_id = $1 AND type = $2 \
     ORDER BY octet_length(name), name COLLATE \"C\", idx, artifact_id";
pub(super) const EVENTS_OF_ARTIFACT: &str = "SELECT record FROM events WHERE artifact_id = $1 \
     ORDER BY type, execution_id, octet_length(name), name COLLATE \"C\", idx";
pub(super) const EVENTS_OF_ARTIFACT_TYPED: &str =
    "SELECT record FROM events WHERE artifact_id = $1 AND type = $2 \
     ORDER BY execution_id, octet_length(name), name COLLATE \"C\", idx";

pub(super) fn outputs_of(
    c: &mut impl Sql,
    exec_id: i64,
) -> Result<BTreeMap<String, Vec<Artifact>>> {
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
