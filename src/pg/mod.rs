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
//! - The in-memory hot-hit cache is off: another replica may invalidate or
//!   supersede an entry at any time.
//!
//! Calls block on the store's own runtime (`pool`); the service runs them on
//! its store threads, like the sled store's.

mod backend;
mod lookup;
mod maintenance;
mod pool;
mod query;
mod rows;
mod schema;
mod tls;
mod write;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Notification};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::clock::Clock;
use crate::error::Error;
use crate::key::CacheKey;
use crate::reservations::Waiters;

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
}

impl PgStore {
    /// Connects and applies the migrations not applied yet.
    pub fn open(url: &str, clock: Arc<dyn Clock>) -> crate::error::Result<PgStore> {
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
        })
    }

    fn conn(&self) -> crate::error::Result<pool::Conn<'_>> {
        self.pool.get()
    }

    /// Wakes `waiters` when another replica publishes or releases a key.
    pub fn watch_other_writers(&self, waiters: Arc<Waiters>) -> crate::error::Result<()> {
        let mut slot = self
            .listener
            .lock()
            .map_err(|_| Error::Internal("listener lock poisoned".into()))?;
        if slot.is_some() {
            return Ok(());
        }
        // Connect once here so that a wrong URL fails the start, not a task.
        let first = self.pool.block_on(listening(&self.config, &self.tls))?;
        let (config, tls) = (self.config.clone(), self.tls.clone());
        *slot = Some(
            self.pool
                .handle()
                .spawn(listen(config, tls, first, waiters)),
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

/// A connection that LISTENs: its client, and its notifications, which end
/// when the connection is lost.
type Listening = (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<Notification>,
);

async fn listening(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
) -> crate::error::Result<Listening> {
    let (client, mut conn) = config.connect(tls.clone()).await?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "LISTEN connection lost");
                    return;
                }
                None => return,
            }
        }
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    Ok((client, rx))
}

/// The LISTEN loop of one replica: wakes local waiters of each key another
/// replica (or this one) published or released. After a lost connection it
/// reconnects and, once listening again, wakes every waiter, since it may
/// have missed notifications.
async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    first: Listening,
    waiters: Arc<Waiters>,
) {
    let mut current = Some(first);
    loop {
        let (client, mut notes) = match current.take() {
            Some(l) => l,
            None => match listening(&config, &tls).await {
                Ok(l) => {
                    waiters.notify_all();
                    l
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN: cannot reconnect; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        while let Some(n) = notes.recv().await {
            match parse_payload(n.payload()) {
                Some((ns, key)) => waiters.notify(ns, &key),
                None => waiters.notify_all(),
            }
        }
        tracing::warn!("LISTEN connection lost; reconnecting");
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
