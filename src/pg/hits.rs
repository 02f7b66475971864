//! Hits served from memory on PostgreSQL, safe across replicas.
//!
//! Each replica keeps the newest servable hit of recently read keys
//! (`store::hot::HotHits`, memory only). What makes an entry safe to serve
//! while other replicas write:
//!
//! - **A fence on every write that changes hits.** The write's transaction
//!   sends `NOTIFY stepcache_hits` naming the key (or `*`: every key) with a
//!   token, and reads the replicas registered in `replicas`. Once it
//!   commits, the writer evicts the key from its own memory and waits, before
//!   answering, until every replica it read has acknowledged the token
//!   (`NOTIFY stepcache_acks`, sent after the replica evicted), or has left
//!   the table, or its lease has run out. So when a write has been answered,
//!   no replica serves what it replaced.
//! - **Registration orders against writes.** Writers hold
//!   `FENCE_LOCK` shared from that read until their commit; a replica joins
//!   (inserting its row) under the lock alone, after its LISTEN is active. A
//!   writer that did not see a replica's row committed before the replica
//!   joined, hence before anything the replica caches was read.
//! - **A lease, and nothing learned before a lost LISTEN.** A replica serves
//!   from memory only while its lease holds by its own clock (renewed every
//!   second on the LISTEN connection, to 5 s; it stops a second early). When
//!   the LISTEN connection is lost it stops serving and empties its memory,
//!   and on reconnecting joins again as a new row (deleting its old one, which
//!   releases the writers waiting for it), then empties its memory once more.
//!
//! Insertions race evictions as on sled: a lookup reads the key's generation
//! before reading PostgreSQL and inserts only if no eviction came since.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::pool::{Pool, Sql, Tx};
use super::rows::col;
use super::PgStore;
use crate::domain::Lookup;
use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::store::hot::{Generation, HotHit, HotHits};

/// The channel of writes that change hits: `<token> <what>`, where what is
/// `*` (every key) or a key's payload (`super::payload`).
pub const HITS_CHANNEL: &str = "stepcache_hits";
/// The channel of acknowledgements: `<replica row> <token> <token> ...`.
pub const ACKS_CHANNEL: &str = "stepcache_acks";
/// Shared by writers from their read of `replicas` to their commit; taken
/// alone by a replica joining ("stepfenc" in ASCII).
pub const FENCE_LOCK: i64 = 0x7374_6570_6665_6e63;
/// How long a replica's registration holds without renewal.
pub const LEASE_MS: i64 = 5_000;
/// How often the LISTEN loop renews the lease.
pub const RENEW: Duration = Duration::from_secs(1);
/// A replica stops serving from memory this long before its lease ends.
const MARGIN_MS: u64 = 1_000;
/// How often a writer waiting for acknowledgements reads the leases of the
/// replicas it waits for.
const POLL: Duration = Duration::from_millis(100);

/// PostgreSQL's clock in milliseconds (leases are judged on one clock).
pub const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The replicas a writer must hear from, with the milliseconds their leases
/// have left: read in its transaction, after it took `FENCE_LOCK` shared.
pub fn replicas_sql() -> String {
    format!("SELECT id, lease_until_ms - {NOW_MS} FROM replicas WHERE lease_until_ms > {NOW_MS}")
}

/// What a committed write changed, as far as hits go.
#[derive(Debug, Clone)]
pub(super) enum Stale {
    Key(String, CacheKey),
    All,
}

impl Stale {
    /// As a notification names it.
    fn what(&self) -> String {
        match self {
            Stale::Key(ns, key) => super::payload(ns, key),
            Stale::All => "*".into(),
        }
    }

    /// What a notification names (`*`, or a key too long to name: every key).
    fn named(what: &str) -> Stale {
        match super::parse_payload(what) {
            Some((ns, key)) => Stale::Key(ns.to_string(), key),
            None => Stale::All,
        }
    }
}

/// A write announced in its transaction; `Hits::settle` after the commit.
/// Dropped unsettled (the write failed), it withdraws its wait.
pub struct Announced<'h> {
    hits: &'h Hits,
    token: u64,
    stale: Stale,
}

impl Drop for Announced<'_> {
    fn drop(&mut self) {
        if let Ok(mut waits) = self.hits.waits.lock() {
            waits.remove(&self.token);
        }
    }
}

/// A write waiting for acknowledgements: its NOTIFY payload (sent again
/// after this replica's LISTEN reconnects, since acknowledgements sent
/// meanwhile were lost), and who acknowledged it so far.
struct Wait {
    payload: String,
    acked: HashSet<String>,
}

pub struct Hits {
    hot: HotHits,
    /// Whether this replica serves from memory (and so registers).
    enabled: bool,
    /// This process, in tokens and registrations (random).
    process: String,
    incarnations: AtomicU64,
    epoch: Instant,
    /// Milliseconds since `epoch` until which memory may serve; 0: not.
    serving_until: AtomicU64,
    /// This replica's current row in `replicas`.
    row: Mutex<Option<String>>,
    next_token: AtomicU64,
    waits: Mutex<HashMap<u64, Wait>>,
    acked: Condvar,
}

impl Hits {
    /// `capacity` hits in memory; 0: none served, and no registration.
    pub fn new(capacity: usize) -> Hits {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        Hits {
            hot: HotHits::new(capacity, None),
            enabled: capacity > 0,
            process: format!("{random:016x}"),
            incarnations: AtomicU64::new(0),
            epoch: Instant::now(),
            serving_until: AtomicU64::new(0),
            row: Mutex::new(None),
            next_token: AtomicU64::new(1),
            waits: Mutex::new(HashMap::new()),
            acked: Condvar::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether memory may serve now.
    pub fn serving(&self) -> bool {
        self.elapsed_ms() < self.serving_until.load(Ordering::Acquire)
    }

    /// A hit from memory, if this replica may serve now and has one.
    pub fn get(
        &self,
        ns: &str,
        key: &CacheKey,
        now_ms: i64,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        if !self.serving() {
            return None;
        }
        self.hot.lookup(ns, key, now_ms, max_staleness_ms)
    }

    /// Read before reading PostgreSQL; pass to `insert`.
    pub fn generation(&self, ns: &str, key: &CacheKey) -> Generation {
        self.hot.generation(ns, key)
    }

    pub fn insert(&self, g: Generation, ns: &str, key: &CacheKey, hit: HotHit) {
        self.hot.insert(g, ns, key, hit, true);
    }

    pub(super) fn forget(&self, stale: &Stale) {
        match stale {
            Stale::Key(ns, key) => self.hot.evict(ns, key),
            Stale::All => self.hot.clear(),
        }
    }

    // The writer's side.

    /// Announces, in `tx`, a write that changes `stale`; the next statement
    /// that needs an answer must be `replicas_sql` (`Tx::commit_query`).
    pub fn announce(&self, tx: &mut impl Sql, stale: Stale) -> Result<Announced<'_>> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let payload = format!("{}:{token} {}", self.process, stale.what());
        self.waits
            .lock()
            .map_err(|_| Error::Internal("the fence's lock is poisoned".into()))?
            .insert(
                token,
                Wait {
                    payload: payload.clone(),
                    acked: HashSet::new(),
                },
            );
        tx.defer(
            "SELECT pg_advisory_xact_lock_shared($1)",
            vec![Box::new(FENCE_LOCK)],
        )?;
        tx.defer(
            "SELECT pg_notify($1, $2)",
            vec![Box::new(HITS_CHANNEL), Box::new(payload)],
        )?;
        Ok(Announced {
            hits: self,
            token,
            stale,
        })
    }

    /// After the announced write committed: evicts here, then waits until
    /// each of `replicas` (read in the transaction: row, lease left in ms)
    /// other than this process has acknowledged, left, or let its lease run
    /// out. The leases are read again every `POLL` when a connection is free;
    /// without one the wait ends at the latest with the leases last read.
    pub fn settle(&self, pool: &Pool, a: Announced<'_>, replicas: Vec<(String, i64)>) {
        self.forget(&a.stale);
        let mut pending = self.deadlines(replicas);
        let Ok(mut waits) = self.waits.lock() else {
            return;
        };
        loop {
            let now = Instant::now();
            let acked = waits.get(&a.token).map(|w| &w.acked);
            pending.retain(|r, until| *until > now && !acked.is_some_and(|a| a.contains(r)));
            if pending.is_empty() {
                return;
            }
            let (guard, timeout) = match self.acked.wait_timeout(waits, POLL) {
                Ok(r) => r,
                Err(_) => return,
            };
            waits = guard;
            if !timeout.timed_out() {
                continue;
            }
            drop(waits);
            match leases(pool, &pending) {
                Ok(Some(current)) => pending = self.deadlines(current),
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e, "cannot read the replicas' leases"),
            }
            let Ok(guard) = self.waits.lock() else {
                return;
            };
            waits = guard;
        }
    }

    /// When each replica's lease (row, ms left) ends, but this process's
    /// rows, of any incarnation (the current one may be committed before the
    /// LISTEN loop has noted it): its writer evicts for itself.
    fn deadlines(&self, leases: Vec<(String, i64)>) -> HashMap<String, Instant> {
        let mine = format!("{}-", self.process);
        let read = Instant::now();
        leases
            .into_iter()
            .filter(|(r, _)| !r.starts_with(&mine))
            .map(|(r, left)| {
                let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                (r, read + left)
            })
            .collect()
    }

    // The LISTEN loop's side.

    /// The payloads of the writes waiting for acknowledgements.
    pub fn waiting(&self) -> Vec<String> {
        self.waits
            .lock()
            .map(|w| w.values().map(|w| w.payload.clone()).collect())
            .unwrap_or_default()
    }

    /// A `HITS_CHANNEL` notification: evicts what it names; the token to
    /// acknowledge when another process wrote it and this one is registered.
    pub fn changed(&self, payload: &str) -> Option<String> {
        let (token, what) = payload.split_once(' ')?;
        self.forget(&Stale::named(what));
        let mine = token
            .split_once(':')
            .is_some_and(|(p, _)| p == self.process);
        (!mine && self.enabled).then(|| token.to_string())
    }

    /// An `ACKS_CHANNEL` notification.
    pub fn acknowledged(&self, payload: &str) {
        let mut parts = payload.split(' ');
        let Some(replica) = parts.next() else {
            return;
        };
        let Ok(mut waits) = self.waits.lock() else {
            return;
        };
        let mut any = false;
        for token in parts {
            let Some(n) = token
                .strip_prefix(self.process.as_str())
                .and_then(|t| t.strip_prefix(':'))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            if let Some(w) = waits.get_mut(&n) {
                w.acked.insert(replica.to_string());
                any = true;
            }
        }
        if any {
            self.acked.notify_all();
        }
    }

    /// Acknowledgement payloads for `tokens`, each under PostgreSQL's limit.
    pub fn acks(&self, tokens: &[String]) -> Vec<String> {
        let Some(row) = self.row() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut cur = row.clone();
        for t in tokens {
            if cur.len() + 1 + t.len() > 7_900 {
                out.push(std::mem::replace(&mut cur, row.clone()));
            }
            cur.push(' ');
            cur.push_str(t);
        }
        if cur.len() > row.len() {
            out.push(cur);
        }
        out
    }

    /// Stops serving from memory and forgets everything (the LISTEN
    /// connection is lost, or not yet registered).
    pub fn stop(&self) {
        self.serving_until.store(0, Ordering::Release);
        self.hot.clear();
    }

    /// A new row to register as, and the row it replaces.
    pub fn next_row(&self) -> (String, Option<String>) {
        let n = self.incarnations.fetch_add(1, Ordering::Relaxed);
        (format!("{}-{n}", self.process), self.row())
    }

    /// Registered as `row` (or renewed), the lease sent at `sent`: serves
    /// from memory until shortly before it ends. A new registration first
    /// forgets everything read before it.
    pub fn registered(&self, row: &str, sent: Instant) {
        let fresh = match self.row.lock() {
            Ok(mut r) if r.as_deref() != Some(row) => {
                *r = Some(row.to_string());
                true
            }
            Ok(_) => false,
            Err(_) => return,
        };
        if fresh {
            self.hot.clear();
        }
        let sent_ms = u64::try_from(sent.duration_since(self.epoch).as_millis()).unwrap_or(0);
        let until = sent_ms + LEASE_MS as u64 - MARGIN_MS;
        self.serving_until.store(until, Ordering::Release);
    }

    pub fn row(&self) -> Option<String> {
        self.row.lock().ok().and_then(|r| r.clone())
    }
}

impl PgStore {
    /// Commits `tx`, a write that changed `stale` (None: no hit), fenced
    /// (see the module docs): once this returns Ok, no replica serves from
    /// memory what the write replaced.
    pub(super) fn commit_fenced(&self, mut tx: Tx<'_, '_>, stale: Option<Stale>) -> Result<()> {
        let Some(stale) = stale else {
            return tx.commit();
        };
        self.listening()?;
        let announced = self.hits.announce(&mut tx, stale.clone())?;
        let committed = tx
            .commit_query(&replicas_sql())
            .and_then(|rows| lease_rows(&rows));
        match committed {
            Ok(replicas) => {
                self.hits.settle(&self.pool, announced, replicas);
                Ok(())
            }
            // It may have committed all the same (the answer to COMMIT was
            // lost): this replica's memory forgets it at least.
            Err(e) => {
                self.hits.forget(&stale);
                Err(e)
            }
        }
    }

    /// Leaves `replicas`, once the LISTEN loop has stopped: memory serves no
    /// more, and writers stop waiting for this replica.
    pub(super) fn leave(&self) {
        self.hits.stop();
        if let Some(row) = self.hits.row() {
            let left = self
                .conn()
                .and_then(|mut c| c.execute("DELETE FROM replicas WHERE id = $1", &[&row]));
            if let Err(e) = left {
                tracing::warn!(error = %e, "cannot leave the replicas table; the lease runs out by itself");
            }
        }
    }
}

/// Rows of (replica row, ms its lease has left).
fn lease_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<(String, i64)>> {
    rows.iter()
        .map(|r| Ok((col::<String>(r, 0)?, col::<i64>(r, 1)?)))
        .collect()
}

/// The leases of `replicas` still registered (row, ms left; 0 or less: run
/// out); None when no connection is free.
fn leases(pool: &Pool, replicas: &HashMap<String, Instant>) -> Result<Option<Vec<(String, i64)>>> {
    let Some(mut c) = pool.try_get()? else {
        return Ok(None);
    };
    let ids: Vec<&str> = replicas.keys().map(String::as_str).collect();
    let rows = c.query(
        &format!("SELECT id, lease_until_ms - {NOW_MS} FROM replicas WHERE id = ANY($1)"),
        &[&ids],
    )?;
    lease_rows(&rows).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledgements_count_only_this_process_tokens() {
        let h = Hits::new(10);
        let other = Hits::new(10);
        let mine = format!("{}:7", h.process);
        let theirs = format!("{}:7", other.process);
        assert_eq!(
            h.changed(&format!("{mine} *")),
            None,
            "own writes need no ack"
        );
        assert_eq!(h.changed(&format!("{theirs} *")), Some(theirs.clone()));
        assert_eq!(Hits::new(0).changed(&format!("{theirs} *")), None);
        h.waits.lock().unwrap().insert(
            7,
            Wait {
                payload: String::new(),
                acked: HashSet::new(),
            },
        );
        h.acknowledged(&format!("r1 {theirs} {mine}"));
        let acked = h.waits.lock().unwrap()[&7].acked.clone();
        assert_eq!(acked, HashSet::from(["r1".to_string()]));
    }

    #[test]
    fn acks_split_under_the_payload_limit() {
        let h = Hits::new(10);
        assert!(h.acks(&["x:1".into()]).is_empty(), "unregistered: none");
        *h.row.lock().unwrap() = Some("row".into());
        let tokens: Vec<String> = (0..3000).map(|i| format!("p:{i}")).collect();
        let acks = h.acks(&tokens);
        assert!(acks.len() > 1);
        let mut seen = Vec::new();
        for a in &acks {
            assert!(a.len() < 8000);
            let mut parts = a.split(' ');
            assert_eq!(parts.next(), Some("row"));
            seen.extend(parts.map(str::to_string));
        }
        assert_eq!(seen, tokens);
    }

    #[test]
    fn memory_serves_only_while_the_lease_holds() {
        let mut h = Hits::new(10);
        assert!(!h.serving());
        h.registered("r", Instant::now());
        assert!(h.serving());
        h.stop();
        assert!(!h.serving());
        // A lease renewed 5 s ago has run out.
        let lease = Duration::from_millis(LEASE_MS as u64);
        h.epoch = Instant::now() - 2 * lease;
        h.registered("r", h.epoch + lease);
        assert!(!h.serving());
        h.registered("r", h.epoch + lease + lease / 2);
        assert!(h.serving(), "renewed 2.5 s ago: 1.5 s left");
    }
}
