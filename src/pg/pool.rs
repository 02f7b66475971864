//! Connections to PostgreSQL: tokio-postgres clients in a deadpool pool,
//! driven by a small runtime of the store's own, called synchronously.
//!
//! The `Backend` trait is synchronous and its calls run on the service's
//! store threads (`crate::pool`, or tokio's blocking threads), never on a
//! thread that drives async tasks. A call enters the store's runtime with
//! `Handle::block_on`: the future runs on the calling thread while the
//! runtime's own worker threads drive the sockets (each connection is a task
//! there). No call waits for a thread of the server's runtime, and the
//! store's runtime never waits for a store call, so neither can deadlock the
//! other.
//!
//! Every statement is prepared once per connection (deadpool's statement
//! cache) and then only bound and executed: one round trip each.
//!
//! A connection that failed (the server restarted, the network dropped) is
//! closed; the pool discards closed connections when they come back and
//! opens new ones on demand, so it recovers by itself.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, RecyclingMethod};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::error::{Error, Result};

/// How long a call waits for a free connection before UNAVAILABLE.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening a connection may take before UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Pool {
    pool: deadpool_postgres::Pool,
    /// Some until drop (then shut down without blocking: a store may be
    /// dropped on a thread that drives async tasks).
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Pool {
    pub fn new(config: tokio_postgres::Config, max: usize) -> Result<Pool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stepcache-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(max.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CHECKOUT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Error::Internal(format!("cannot build the PostgreSQL pool: {e}")))?;
        Ok(Pool {
            pool,
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// The store's runtime, for tasks of its own (the LISTEN loop).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `f` to completion on the calling thread (see the module docs).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    /// A connection: an idle one, a new one when under the size, else waits.
    pub fn get(&self) -> Result<Conn<'_>> {
        let obj = self.block_on(self.pool.get()).map_err(pool_error)?;
        Ok(Conn { obj, pool: self })
    }

    /// Closes the idle connections (and the ones in use when they come back).
    pub fn clear(&self) {
        self.pool.close();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.pool.close();
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => Error::from(e),
        PoolError::Timeout(_) => Error::Unavailable(
            "no PostgreSQL connection free or none could be opened in time; retry".into(),
        ),
        PoolError::Closed => Error::Unavailable("the PostgreSQL pool is closed".into()),
        other => Error::Internal(format!("PostgreSQL pool: {other}")),
    }
}

/// Statements on a connection or in a transaction, each prepared once per
/// connection.
pub trait Sql {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>>;
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64>;

    fn query_opt(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>> {
        let mut rows = self.query(sql, params)?;
        if rows.len() > 1 {
            return Err(Error::Storage(format!(
                "PostgreSQL: {} rows where at most one was expected",
                rows.len()
            )));
        }
        Ok(rows.pop())
    }

    fn query_one(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row> {
        self.query_opt(sql, params)?
            .ok_or_else(|| Error::Storage("PostgreSQL: no row where one was expected".into()))
    }
}

fn query_on(
    pool: &Pool,
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>> {
    pool.block_on(async {
        let st = c.prepare_cached(sql).await?;
        c.query(&st, params).await
    })
    .map_err(Error::from)
}

fn execute_on(
    pool: &Pool,
    c: &impl GenericClient,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64> {
    pool.block_on(async {
        let st = c.prepare_cached(sql).await?;
        c.execute(&st, params).await
    })
    .map_err(Error::from)
}

/// A pooled connection; back to the pool on drop.
pub struct Conn<'a> {
    obj: deadpool_postgres::Object,
    pool: &'a Pool,
}

impl Conn<'_> {
    /// Runs statements without parameters (not prepared).
    pub fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.pool
            .block_on(self.obj.batch_execute(sql))
            .map_err(Error::from)
    }

    /// Starts a transaction; it rolls back unless committed.
    pub fn transaction(&mut self) -> Result<Tx<'_>> {
        let pool = self.pool;
        let tx = pool.block_on(self.obj.transaction())?;
        Ok(Tx { tx, pool })
    }
}

impl Sql for Conn<'_> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        query_on(self.pool, &self.obj, sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        execute_on(self.pool, &self.obj, sql, params)
    }
}

/// A transaction on a pooled connection.
pub struct Tx<'a> {
    tx: deadpool_postgres::Transaction<'a>,
    pool: &'a Pool,
}

impl Tx<'_> {
    pub fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.pool
            .block_on(self.tx.batch_execute(sql))
            .map_err(Error::from)
    }

    pub fn commit(self) -> Result<()> {
        self.pool.block_on(self.tx.commit()).map_err(Error::from)
    }
}

impl Sql for Tx<'_> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        query_on(self.pool, &self.tx, sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        execute_on(self.pool, &self.tx, sql, params)
    }
}
