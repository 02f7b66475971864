//! The PostgreSQL backend: many stepcache replicas on one database, with the
//! guarantees of the sled store.
//!
//! - Every logical write is one transaction (READ COMMITTED).
//! - Keys are ordered across replicas with transaction-scoped advisory locks
//!   (`pg_advisory_xact_lock`): a lookup-that-reserves and every write that
//!   publishes or releases a key take the key's lock, so a reservation is never
//!   granted for a key whose result was published after the lookup saw nothing.
//!   New records with an external_id take the external_id's lock, so that a
//!   retry on another replica finds the original (then `UNIQUE` backs it up).
//! - A publish or release sends `NOTIFY stepcache, '<key hex><namespace>'` in
//!   its transaction; every replica LISTENs on one connection and wakes its
//!   local waiters (`watch_other_writers`).
//! - IDs come from one sequence, drawn in the write's transaction in the
//!   statement that takes its locks (`rows::lock_and_ids`): unique across
//!   replicas, no row lock, no commit of their own. Creation times are the
//!   writing replica's clock, so ID order need not be creation order across
//!   replicas; created-time filters use the `created_ms` column.
//! - Hits are served from memory where that is safe across replicas: every
//!   write that changes hits waits until every replica serving from memory
//!   has evicted them (`hits`).
//!
//! Calls block on the store's own runtime (`pool`); the service runs them on
//! its store threads, like the sled store's.

mod backend;
mod hits;
mod listen;
mod lookup;
mod maintenance;
mod pool;
mod query;
mod rows;
mod schema;
mod tls;
mod write;

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::clock::Clock;
use crate::error::Error;
use crate::key::CacheKey;
use crate::reservations::Waiters;

pub use listen::APPLICATION_NAME as LISTEN_APPLICATION_NAME;
pub use pool::Pool;

/// The NOTIFY channel of publishes and releases.
pub const CHANNEL: &str = "stepcache";

/// Connections per replica (the pool grows to this on demand).
pub const POOL_SIZE: usize = 32;

/// Whether a `--store` value names a PostgreSQL database.
pub fn is_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// The store on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    clock: Arc<dyn Clock>,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    listener: Mutex<Option<JoinHandle<()>>>,
    hits: Arc<hits::Hits>,
}

impl PgStore {
    /// Connects and applies the migrations not applied yet; `hot_hits` hits
    /// are kept in memory (0: none).
    pub fn open(
        url: &str,
        clock: Arc<dyn Clock>,
        hot_hits: usize,
    ) -> crate::error::Result<PgStore> {
        let (config, tls) = tls::parse(url)?;
        let pool = Pool::new(config.clone(), tls.clone(), POOL_SIZE)?;
        {
            let mut c = pool.get()?;
            schema::migrate(&mut c)?;
        }
        Ok(PgStore {
            pool,
            clock,
            config,
            tls,
            listener: Mutex::new(None),
            hits: Arc::new(hits::Hits::new(hot_hits)),
        })
    }

    fn conn(&self) -> crate::error::Result<pool::Conn<'_>> {
        self.pool.get()
    }

    /// Starts the LISTEN loop (`listen`): wakes `waiters` when another
    /// replica publishes or releases a key, and lets this one serve hits from
    /// memory.
    pub fn watch_other_writers(&self, waiters: Arc<Waiters>) -> crate::error::Result<()> {
        self.start_listener(Some(waiters))
    }

    /// The LISTEN loop runs (a write that changes hits hears the other
    /// replicas' acknowledgements through it), with waiters of its own when
    /// none were given.
    fn listening(&self) -> crate::error::Result<()> {
        self.start_listener(None)
    }

    fn start_listener(&self, waiters: Option<Arc<Waiters>>) -> crate::error::Result<()> {
        let mut slot = self
            .listener
            .lock()
            .map_err(|_| Error::Internal("listener lock poisoned".into()))?;
        if slot.is_some() && waiters.is_none() {
            return Ok(());
        }
        // Restarted with the server's waiters: memory serves again once the
        // new loop has joined.
        if let Some(running) = slot.take() {
            running.abort();
            self.hits.stop();
        }
        // Connect once here so that a wrong URL fails the start, not a task.
        let first = self
            .pool
            .block_on(listen::listening(&self.config, &self.tls))?;
        let (config, tls) = (self.config.clone(), self.tls.clone());
        let hits = self.hits.clone();
        let waiters = waiters.unwrap_or_default();
        *slot = Some(
            self.pool
                .handle()
                .spawn(listen::listen(config, tls, first, waiters, hits)),
        );
        Ok(())
    }

    fn stop_listener(&self) {
        let taken = match self.listener.lock() {
            Ok(mut slot) => slot.take(),
            Err(_) => None,
        };
        if let Some(task) = taken {
            task.abort();
        }
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop_listener();
    }
}

/// The longest namespace a NOTIFY payload names (PostgreSQL takes < 8000 bytes).
const MAX_PAYLOAD_NS: usize = 7000;

/// The NOTIFY payload of a key: its 64 hex digits, then the namespace; "*"
/// (wake every waiter) when the namespace is too long for a payload.
pub fn payload(ns: &str, key: &CacheKey) -> String {
    if ns.len() > MAX_PAYLOAD_NS {
        return "*".into();
    }
    format!("{key}{ns}")
}

fn parse_payload(p: &str) -> Option<(&str, CacheKey)> {
    let (k, ns) = (p.get(..64)?, p.get(64..)?);
    Some((ns, k.parse().ok()?))
}

impl From<tokio_postgres::Error> for Error {
    fn from(err: tokio_postgres::Error) -> Error {
        let code = err.code().cloned();
        // The server's message when it sent one (the driver's own text for a
        // server error is only "db error"), else the driver's and its causes.
        let e = match err.as_db_error() {
            Some(d) => format!("{}: {}", d.severity(), d.message()),
            None => {
                let mut text = err.to_string();
                let mut cause = std::error::Error::source(&err);
                while let Some(c) = cause {
                    text = format!("{text}: {c}");
                    cause = c.source();
                }
                text
            }
        };
        match code {
            Some(c) if c == SqlState::UNIQUE_VIOLATION => Error::AlreadyExists(format!(
                "a record with this identity exists already: {}",
                err.as_db_error().map(|d| d.message()).unwrap_or_default()
            )),
            Some(c)
                if c == SqlState::T_R_SERIALIZATION_FAILURE
                    || c == SqlState::T_R_DEADLOCK_DETECTED
                    || c == SqlState::ADMIN_SHUTDOWN
                    || c == SqlState::CANNOT_CONNECT_NOW
                    || c == SqlState::TOO_MANY_CONNECTIONS =>
            {
                Error::Unavailable(format!("PostgreSQL: {e}; retry"))
            }
            Some(c) if c == SqlState::INVALID_CATALOG_NAME => {
                Error::Unavailable(format!("PostgreSQL: {e}"))
            }
            Some(_) => Error::Storage(format!("PostgreSQL: {e}")),
            // No SQLSTATE: the connection (refused, lost, closed).
            None => Error::Unavailable(format!("PostgreSQL is unreachable: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let key: CacheKey = "ab".repeat(32).parse().unwrap();
        for ns in ["default", "", "a\nb"] {
            let p = payload(ns, &key);
            assert_eq!(parse_payload(&p), Some((ns, key)));
        }
        assert_eq!(parse_payload("short"), None);
        assert_eq!(payload(&"n".repeat(8000), &key), "*");
    }

    #[test]
    fn urls() {
        assert!(is_url("postgres://u@h/db"));
        assert!(is_url("postgresql://h/db"));
        assert!(!is_url("/var/lib/stepcache"));
    }
}
