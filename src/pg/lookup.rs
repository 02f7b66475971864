//! Lookups and reservations: the newest servable entry of a key, and the
//! lease that lets one caller compute a missing result.

use std::collections::BTreeMap;

use prost::bytes::Bytes;

use super::pool::Sql;

use super::rows::{col, key_lock, lock, notify, ttl_ms};
use super::PgStore;
use crate::domain::{decode, not_found, Claimed, Hit, Lookup};
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::policy::{self, Candidate, Next, Scan};
use crate::proto::{encode_hit_fields, Artifact, ArtifactState, EventType, Execution};
use crate::reservations::{self, Ask, Claim, Holder};
use crate::store::hot::{Generation, HotHit};

/// Entries of a key read in the first round trip of a lookup.
const FIRST_ENTRIES: i64 = 4;

/// The entries of key $2 in namespace $1, newest first, at most $4 (NULL:
/// all), each with its execution and its outputs ($3: the output event type)
/// joined LATERAL: names and artifact records in (name, index) order.
const ENTRIES: &str = "SELECT c.completed_ms, c.invalidated, e.record, e.namespace, \
     o.names, o.records FROM cache_entries c JOIN executions e ON e.id = c.execution_id \
     LEFT JOIN LATERAL (SELECT array_agg(v.name ORDER BY v.name, v.idx, v.artifact_id) AS names, \
       array_agg(a.record ORDER BY v.name, v.idx, v.artifact_id) AS records \
       FROM events v JOIN artifacts a ON a.id = v.artifact_id \
       WHERE v.execution_id = c.execution_id AND v.type = $3) o ON true \
     WHERE c.namespace = $1 AND c.cache_key = $2 \
     ORDER BY c.completed_ms DESC, c.execution_id DESC LIMIT $4";

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
    c.defer(
        "INSERT INTO reservations (namespace, cache_key, owner, expire_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (namespace, cache_key) DO UPDATE SET owner = EXCLUDED.owner, \
         expire_ms = EXCLUDED.expire_ms",
        vec![
            Box::new(ns.to_string()),
            Box::new(key.to_string()),
            Box::new(h.owner.clone()),
            Box::new(h.expire_ms),
        ],
    )
}

pub(super) fn delete_reservation(c: &mut impl Sql, ns: &str, key: String) -> Result<()> {
    c.defer(
        "DELETE FROM reservations WHERE namespace = $1 AND cache_key = $2",
        vec![Box::new(ns.to_string()), Box::new(key)],
    )
}

impl PgStore {
    /// The newest servable entry of `key`. With `memo` (the key's
    /// generation, read before this), a hit that is the key's newest entry
    /// goes into memory too.
    fn lookup_in(
        &self,
        c: &mut impl Sql,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        memo: Option<Generation>,
    ) -> Result<Lookup> {
        let now = self.clock.now_ms();
        let ks = key.to_string();
        let output = EventType::Output as i32;
        // Nearly every scan ends at its first entry: the first few come in
        // one round trip; a key with more skipped entries reads them all.
        for limit in [Some(FIRST_ENTRIES), None] {
            let rows = c.query(ENTRIES, &[&ns, &ks, &output, &limit])?;
            let mut scan = Scan::default();
            for (i, r) in rows.iter().enumerate() {
                let record: &[u8] = col(r, 2)?;
                let execution: Execution = decode(record)?;
                if col::<&str>(r, 3)? != ns {
                    return Err(not_found("execution", execution.id, Some(ns)));
                }
                let names: Vec<&str> = col::<Option<_>>(r, 4)?.unwrap_or_default();
                let records: Vec<&[u8]> = col::<Option<_>>(r, 5)?.unwrap_or_default();
                let mut outputs: BTreeMap<String, Vec<Artifact>> = BTreeMap::new();
                for (name, record) in names.iter().zip(&records) {
                    outputs
                        .entry(name.to_string())
                        .or_default()
                        .push(decode(record)?);
                }
                let candidate = Candidate {
                    completed_ms: col(r, 0)?,
                    ttl_ms: ttl_ms(&execution),
                    outputs_live: outputs
                        .values()
                        .flatten()
                        .all(|a| a.state == ArtifactState::Live as i32),
                    invalidated: col(r, 1)?,
                };
                match scan.next(policy::eligibility(&candidate, now, max_staleness_ms)) {
                    Next::Serve => {
                        let newest = i == 0 && limit.is_some();
                        if let (Some(g), true) = (memo, newest) {
                            let fields = Bytes::from(encode_hit_fields(
                                record,
                                grouped(names.iter().copied().zip(records.iter().copied())),
                            ));
                            let hot = HotHit {
                                completed_ms: candidate.completed_ms,
                                ttl_ms: candidate.ttl_ms,
                                fields: fields.clone(),
                            };
                            self.hits.insert(g, ns, key, hot);
                            return Ok(Lookup::Hit(Hit::Encoded(fields)));
                        }
                        return Ok(Lookup::Hit(Hit::Decoded {
                            execution: Box::new(execution),
                            outputs,
                        }));
                    }
                    Next::Skip => {}
                    Next::Stop => {
                        return Ok(Lookup::Miss {
                            reason: scan.miss_reason(),
                        })
                    }
                }
            }
            if limit.is_none_or(|l| rows.len() < l as usize) {
                return Ok(Lookup::Miss {
                    reason: scan.miss_reason(),
                });
            }
        }
        Err(Error::Internal(
            "a lookup scan read past every entry".into(),
        ))
    }

    /// A lookup outside a transaction: what it finds may go into memory.
    fn lookup_memo(
        &self,
        c: &mut impl Sql,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        let memo = self.hits.enabled().then(|| self.hits.generation(ns, key));
        self.lookup_in(c, ns, key, max_staleness_ms, memo)
    }

    pub(super) fn lookup(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        self.lookup_memo(&mut self.conn()?, ns, key, max_staleness_ms)
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
        if let Lookup::Hit(hit) = self.lookup_memo(&mut c, ns, key, max_staleness_ms)? {
            return Ok(Claimed::Hit(hit));
        }
        let mut tx = c.transaction()?;
        lock(&mut tx, vec![key_lock(ns, key)])?;
        let reason = match self.lookup_in(&mut tx, ns, key, max_staleness_ms, None)? {
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
        delete_reservation(&mut tx, ns, ks)?;
        notify(&mut tx, ns, key)?;
        tx.commit()?;
        Ok(())
    }
}

/// (name, record) pairs in name order, as (name, records of that name).
fn grouped<'a>(pairs: impl Iterator<Item = (&'a str, &'a [u8])>) -> Vec<(&'a str, Vec<&'a [u8]>)> {
    let mut out: Vec<(&str, Vec<&[u8]>)> = Vec::new();
    for (name, record) in pairs {
        match out.last_mut() {
            Some((last, records)) if *last == name => records.push(record),
            _ => out.push((name, vec![record])),
        }
    }
    out
}
