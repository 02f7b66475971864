//! Invalidation, garbage collection, retention and the counts behind the stats.

use std::collections::BTreeMap;

use super::hits::Stale;
use super::pool::Sql;
use super::rows::{col, events_of, get_artifact, get_execution, EVENTS_OF_ARTIFACT};
use super::PgStore;
use crate::domain::{not_found, Pruned, Selector};
use crate::error::Result;
use crate::key::CacheKey;
use crate::proto::{EventType, Execution};

impl PgStore {
    pub(super) fn invalidate(&self, ns: &str, selector: &Selector) -> Result<i64> {
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
                let e = match get_execution(&mut c, *id)? {
                    Some(e) if e.namespace == ns => e,
                    _ => return Err(not_found("execution", *id, Some(ns))),
                };
                targets.extend(entry_of(&e));
            }
            Selector::Artifact(id) => {
                match get_artifact(&mut c, *id)? {
                    Some(a) if a.namespace == ns => {}
                    _ => return Err(not_found("artifact", *id, Some(ns))),
                }
                for ev in events_of(&mut c, EVENTS_OF_ARTIFACT, &[id])? {
                    if ev.r#type == EventType::Output as i32 {
                        let e = match get_execution(&mut c, ev.execution_id)? {
                            Some(e) if e.namespace == ns => e,
                            _ => return Err(not_found("execution", ev.execution_id, Some(ns))),
                        };
                        targets.extend(entry_of(&e));
                    }
                }
            }
            Selector::Component(component) => {
                let mut tx = c.transaction()?;
                let n = tx.execute(
                    "UPDATE cache_entries SET invalidated = true WHERE namespace = $1 \
                     AND NOT invalidated AND cache_key IN \
                     (SELECT cache_key FROM executions WHERE namespace = $1 AND component = $2)",
                    &[&ns, component],
                )?;
                self.commit_fenced(tx, (n > 0).then_some(Stale::All))?;
                return Ok(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut tx = c.transaction()?;
        let mut n = 0u64;
        let mut changed = Vec::new();
        for (key, exec) in targets {
            let k = tx.execute(
                "UPDATE cache_entries SET invalidated = true WHERE namespace = $1 \
                 AND cache_key = $2 AND ($3::bigint IS NULL OR execution_id = $3) \
                 AND NOT invalidated",
                &[&ns, &key, &exec],
            )?;
            if k > 0 {
                changed.push(key);
            }
            n += k;
        }
        changed.sort_unstable();
        changed.dedup();
        let stale = match changed.as_slice() {
            [] => None,
            [one] => Some(
                one.parse::<CacheKey>()
                    .map_or(Stale::All, |key| Stale::Key(ns.to_string(), key)),
            ),
            _ => Some(Stale::All),
        };
        self.commit_fenced(tx, stale)?;
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    pub(super) fn count_entries(&self, ns: &str) -> Result<i64> {
        let r = self.conn()?.query_one(
            "SELECT count(*) FROM cache_entries WHERE namespace = $1 AND NOT invalidated",
            &[&ns],
        )?;
        col(&r, 0)
    }

    pub(super) fn count_reservations(&self, ns: &str) -> Result<i64> {
        let r = self.conn()?.query_one(
            "SELECT count(*) FROM reservations WHERE namespace = $1 AND expire_ms > $2",
            &[&ns, &self.clock.now_ms()],
        )?;
        col(&r, 0)
    }

    pub(super) fn reservations_by_namespace(&self) -> Result<BTreeMap<String, i64>> {
        let rows = self.conn()?.query(
            "SELECT namespace, count(*) FROM reservations WHERE expire_ms > $1 GROUP BY namespace",
            &[&self.clock.now_ms()],
        )?;
        rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
    }

    pub(super) fn size_on_disk(&self) -> Result<u64> {
        let r = self
            .conn()?
            .query_one("SELECT pg_database_size(current_database())", &[])?;
        Ok(u64::try_from(col::<i64>(&r, 0)?).unwrap_or(0))
    }

    pub(super) fn collect_garbage(&self, ns: Option<&str>) -> Result<i64> {
        let n = self.conn()?.execute(
            "DELETE FROM cache_entries c USING executions e WHERE e.id = c.execution_id \
             AND ($1::text IS NULL OR c.namespace = $1) \
             AND (c.invalidated OR (e.cache_ttl_ms IS NOT NULL AND $2 - c.completed_ms > e.cache_ttl_ms))",
            &[&ns, &self.clock.now_ms()],
        )?;
        Ok(i64::try_from(n).unwrap_or(i64::MAX))
    }

    pub(super) fn prune(&self, ns: &str, older_than_ms: i64, dry_run: bool) -> Result<Pruned> {
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
        let count = |tx: &mut super::pool::Tx<'_, '_>, sql: &str| -> Result<i64> {
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
        self.commit_fenced(tx, Some(Stale::All))?;
        Ok(total)
    }
}
