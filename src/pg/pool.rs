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

use deadpool_postgres::{ClientWrapper, GenericClient, Manager, ManagerConfig, RecyclingMethod};
use futures_util::future::{join, join3, join_all};
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

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
    pub fn new(
        config: tokio_postgres::Config,
        tls: tokio_postgres_rustls::MakeRustlsConnect,
        max: usize,
    ) -> Result<Pool> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stepcache-pg")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the PostgreSQL runtime: {e}")))?;
        let manager = Manager::from_config(
            config,
            tls,
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

    /// A connection if one is idle or can be opened now; None when every
    /// one is in use (nothing waits for one to come back).
    pub fn try_get(&self) -> Result<Option<Conn<'_>>> {
        let mut timeouts = self.pool.timeouts();
        timeouts.wait = Some(Duration::ZERO);
        match self.block_on(self.pool.timeout_get(&timeouts)) {
            Ok(obj) => Ok(Some(Conn { obj, pool: self })),
            Err(deadpool_postgres::PoolError::Timeout(_)) => Ok(None),
            Err(e) => Err(pool_error(e)),
        }
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
    /// Runs a statement whose answer is not needed: at once on a connection;
    /// in a transaction, with the next statement that needs one (see `Tx`).
    fn defer(&mut self, sql: &'static str, params: Params) -> Result<()>;

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

impl<'a> Conn<'a> {
    /// `sql` prepared on this connection (once; then from the cache).
    fn prepared(&self, sql: &str) -> Result<Statement> {
        self.pool
            .block_on(self.obj.prepare_cached(sql))
            .map_err(Error::from)
    }

    /// Runs statements without parameters (not prepared).
    pub fn batch_execute(&mut self, sql: &str) -> Result<()> {
        self.pool
            .block_on(self.obj.batch_execute(sql))
            .map_err(Error::from)
    }

    /// Starts a transaction; it rolls back unless committed. BEGIN goes out
    /// with the transaction's first statement.
    pub fn transaction(&mut self) -> Result<Tx<'_, 'a>> {
        Ok(Tx {
            conn: self,
            pending: Vec::new(),
            begun: false,
            done: false,
        })
    }
}

impl Sql for Conn<'_> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        query_on(self.pool, &self.obj, sql, params)
    }
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        execute_on(self.pool, &self.obj, sql, params)
    }
    fn defer(&mut self, sql: &'static str, params: Params) -> Result<()> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        self.execute(sql, &refs).map(|_| ())
    }
}

/// Owned statement parameters (of a deferred statement).
pub type Params = Vec<Box<dyn ToSql + Sync>>;

/// A transaction on a pooled connection. Statements whose answer the write
/// does not need (`defer`) wait and go out with the next statement that
/// needs one, or with COMMIT, in one pipeline: one round trip for all. A
/// deferred statement that fails fails that next call; the transaction is
/// aborted then, as after any failed statement, and rolls back.
pub struct Tx<'c, 'a> {
    conn: &'c mut Conn<'a>,
    pending: Vec<(&'static str, Params)>,
    /// Whether BEGIN went out.
    begun: bool,
    /// Committed (or the COMMIT failed): nothing to roll back.
    done: bool,
}

impl Tx<'_, '_> {
    /// The connection, the deferred statements (taken) and whether BEGIN
    /// must go first (it will have gone when they are sent).
    fn take(&mut self) -> Batch<'_> {
        let begin = !self.begun;
        self.begun = true;
        Batch {
            pool: self.conn.pool,
            c: &self.conn.obj,
            begin,
            pending: std::mem::take(&mut self.pending),
        }
    }

    pub fn batch_execute(&mut self, sql: &str) -> Result<()> {
        let b = self.take();
        let c = b.c;
        b.send(c.batch_execute(sql))
    }

    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        if !self.begun && self.pending.is_empty() {
            return Ok(());
        }
        let b = self.take();
        let c = b.c;
        b.send(c.batch_execute("COMMIT"))
    }
}

impl Tx<'_, '_> {
    /// Commits, with `sql` run last in the transaction: the deferred
    /// statements, `sql` and COMMIT go out in one pipeline. `sql`'s rows.
    pub fn commit_query(mut self, sql: &str) -> Result<Vec<Row>> {
        let st = self.conn.prepared(sql)?;
        self.done = true;
        let b = self.take();
        let c = b.c;
        b.send(async {
            // Polled in order, so sent in order.
            let (rows, commit) = join(c.query(&st, &[]), c.batch_execute("COMMIT")).await;
            let rows = rows?;
            commit?;
            Ok(rows)
        })
    }
}

impl Drop for Tx<'_, '_> {
    fn drop(&mut self) {
        if self.begun && !self.done {
            let c = &*self.conn.obj;
            if let Err(e) = self.conn.pool.block_on(c.batch_execute("ROLLBACK")) {
                tracing::warn!(error = %e, "PostgreSQL: ROLLBACK failed");
            }
        }
    }
}

impl Sql for Tx<'_, '_> {
    fn query(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
        let st = self.conn.prepared(sql)?;
        let b = self.take();
        let c = b.c;
        b.send(c.query(&st, params))
    }
    fn execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        let st = self.conn.prepared(sql)?;
        let b = self.take();
        let c = b.c;
        b.send(c.execute(&st, params))
    }
    fn defer(&mut self, sql: &'static str, params: Params) -> Result<()> {
        self.pending.push((sql, params));
        Ok(())
    }
}

/// What a transaction sends next, before the statement that needs an answer.
struct Batch<'t> {
    pool: &'t Pool,
    c: &'t ClientWrapper,
    begin: bool,
    pending: Vec<(&'static str, Params)>,
}

impl Batch<'_> {
    /// Sends BEGIN (if due), the deferred statements and then `last` in one
    /// pipeline; `last`'s answer, or the first error in order.
    fn send<T>(
        self,
        last: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    ) -> Result<T> {
        let c = self.c;
        self.pool
            .block_on(async {
                let mut stmts = Vec::with_capacity(self.pending.len());
                for (sql, params) in &self.pending {
                    let refs: Vec<&(dyn ToSql + Sync)> =
                        params.iter().map(|p| p.as_ref()).collect();
                    stmts.push((c.prepare_cached(sql).await?, refs));
                }
                let begin = async {
                    match self.begin {
                        true => c.batch_execute("BEGIN").await,
                        false => Ok(()),
                    }
                };
                let deferred = join_all(stmts.iter().map(|(st, p)| c.execute(st, p)));
                // Polled in order, so sent in order.
                let (b, d, out) = join3(begin, deferred, last).await;
                b?;
                for r in d {
                    r?;
                }
                out
            })
            .map_err(Error::from)
    }
}
