//! A small blocking connection pool: at most `max` connections, created on
//! demand, returned on drop unless broken.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use postgres::{Client, Config, NoTls};

use crate::error::{Error, Result};

/// How long a call waits for a free connection before UNAVAILABLE.
const CHECKOUT_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Pool {
    config: Config,
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
}

struct State {
    idle: Vec<Client>,
    /// Connections out of the pool or being opened.
    busy: usize,
}

impl Pool {
    pub fn new(config: Config, max: usize) -> Pool {
        Pool {
            config,
            max: max.max(1),
            state: Mutex::new(State {
                idle: Vec::new(),
                busy: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection: an idle one, a new one when under `max`, else waits.
    pub fn get(&self) -> Result<Conn<'_>> {
        let mut st = self.lock();
        loop {
            while let Some(c) = st.idle.pop() {
                if c.is_closed() {
                    continue;
                }
                st.busy += 1;
                return Ok(Conn {
                    pool: self,
                    client: Some(c),
                });
            }
            if st.busy < self.max {
                st.busy += 1;
                drop(st);
                return match self.config.connect(NoTls) {
                    Ok(c) => Ok(Conn {
                        pool: self,
                        client: Some(c),
                    }),
                    Err(e) => {
                        self.lock().busy -= 1;
                        self.freed.notify_one();
                        Err(Error::from(e))
                    }
                };
            }
            let (next, timeout) = self
                .freed
                .wait_timeout(st, CHECKOUT_TIMEOUT)
                .unwrap_or_else(|e| e.into_inner());
            st = next;
            if timeout.timed_out() && st.idle.is_empty() && st.busy >= self.max {
                return Err(Error::Unavailable(
                    "no PostgreSQL connection free: the server is overloaded".into(),
                ));
            }
        }
    }

    /// Closes the idle connections.
    pub fn clear(&self) {
        let idle = std::mem::take(&mut self.lock().idle);
        drop_off_runtime(idle);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Drops clients where that is allowed: closing a sync client blocks on its
/// own runtime, which panics on a thread that drives async tasks.
pub fn drop_off_runtime(clients: Vec<Client>) {
    if clients.is_empty() {
        return;
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        let _ = std::thread::Builder::new()
            .name("pg-close".into())
            .spawn(move || drop(clients));
    } else {
        drop(clients);
    }
}

/// A pooled connection.
pub struct Conn<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Deref for Conn<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Always Some until drop.
        self.client.as_ref().unwrap_or_else(|| unreachable!())
    }
}

impl DerefMut for Conn<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().unwrap_or_else(|| unreachable!())
    }
}

impl Drop for Conn<'_> {
    fn drop(&mut self) {
        let mut st = self.pool.lock();
        st.busy = st.busy.saturating_sub(1);
        let mut broken = Vec::new();
        if let Some(c) = self.client.take() {
            if c.is_closed() {
                broken.push(c);
            } else {
                st.idle.push(c);
            }
        }
        drop(st);
        drop_off_runtime(broken);
        self.pool.freed.notify_one();
    }
}
