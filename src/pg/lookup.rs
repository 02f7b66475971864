//! Lookups and reservations: the newest servable entry of a key, and the
//! lease that lets one caller compute a missing result.

use super::pool::Sql;

use super::rows::{col, key_lock, lock, notify, outputs_of, ttl_ms};
use super::PgStore;
use crate::domain::{decode, not_found, Claimed, Hit, Lookup};
use crate::error::Result;
use crate::key::CacheKey;
use crate::policy::{self, Candidate, Next, Scan};
use crate::proto::{ArtifactState, Execution};
use crate::reservations::{self, Ask, Claim, Holder};

pub(super) fn reservation_of(
    c: &mut impl Sql,
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

pub(super) fn set_reservation(c: &mut impl Sql, ns: &str, key: &str, h: &Holder) -> Result<()> {
    c.execute(
        "INSERT INTO reservations (namespace, cache_key, owner, expire_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (namespace, cache_key) DO UPDATE SET owner = EXCLUDED.owner, \
         expire_ms = EXCLUDED.expire_ms",
        &[&ns, &key, &h.owner, &h.expire_ms],
    )?;
    Ok(())
}

impl PgStore {
    fn lookup_in(
        &self,
        c: &mut impl Sql,
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
        let mut scan = Scan::default();
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
            match scan.next(policy::eligibility(&candidate, now, max_staleness_ms)) {
                Next::Serve => {
                    return Ok(Lookup::Hit(Hit::Decoded {
                        execution: Box::new(execution),
                        outputs,
                    }))
                }
                Next::Skip => {}
                Next::Stop => break,
            }
        }
        Ok(Lookup::Miss {
            reason: scan.miss_reason(),
        })
    }

    pub(super) fn lookup(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        self.lookup_in(&mut self.conn()?, ns, key, max_staleness_ms)
    }

    pub(super) fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        let mut c = self.conn()?;
        // Hits need no lock.
        if let Lookup::Hit(hit) = self.lookup_in(&mut c, ns, key, max_staleness_ms)? {
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

    pub(super) fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        reservation_of(&mut self.conn()?, ns, &key.to_string(), false)
    }

    pub(super) fn extend_reservation(
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

    pub(super) fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
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
}
