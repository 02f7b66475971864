//! The in-memory registry of waiters and the waiting loop (see the parent
//! module's doc): a waiter subscribes to its key's slot before it reads the
//! store and sleeps until a write bumps the slot, the lease runs out, its
//! deadline passes or the server shuts down.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{until_expiry, Holder};
use crate::error::Result;
use crate::key::CacheKey;

type Slot = (String, CacheKey);

/// Waiters by (namespace, key): a version counter per key that writes bump.
#[derive(Default)]
pub struct Waiters {
    slots: Mutex<HashMap<Slot, watch::Sender<u64>>>,
}

impl Waiters {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, watch::Sender<u64>>> {
        // The map stays consistent even if a holder panicked: keep using it.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts watching a key. Subscribe *before* reading the store, so that a
    /// write landing after the read is never missed.
    pub fn subscribe(self: &Arc<Self>, ns: &str, key: &CacheKey) -> Subscription {
        let slot = (ns.to_string(), *key);
        let rx = self
            .slots()
            .entry(slot.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        Subscription {
            rx: Some(rx),
            waiters: self.clone(),
            slot,
        }
    }

    /// Wakes every waiter of the key (they re-read the store). No-op when
    /// nobody waits.
    pub fn notify(&self, ns: &str, key: &CacheKey) {
        if let Some(tx) = self.slots().get(&(ns.to_string(), *key)) {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Wakes every waiter of every key (they re-read the store): after
    /// notifications may have been missed (a lost LISTEN connection).
    pub fn notify_all(&self) {
        for tx in self.slots().values() {
            tx.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Keys somebody waits on.
    pub fn len(&self) -> usize {
        self.slots().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One waiter's interest in a key; leaving (drop) removes the key's slot when
/// it was the last waiter.
pub struct Subscription {
    rx: Option<watch::Receiver<u64>>,
    waiters: Arc<Waiters>,
    slot: Slot,
}

impl Subscription {
    /// Forgets the notifications so far: call before each read of the store.
    pub fn mark_seen(&mut self) {
        if let Some(rx) = &mut self.rx {
            rx.borrow_and_update();
        }
    }

    /// Resolves at the first notification after the last `mark_seen`.
    pub async fn changed(&mut self) {
        let Some(rx) = &mut self.rx else {
            return std::future::pending().await;
        };
        if rx.changed().await.is_err() {
            // The slot outlives its receivers, so this cannot happen; never spin.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut slots = self.waiters.slots();
        drop(self.rx.take());
        if slots
            .get(&self.slot)
            .is_some_and(|tx| tx.receiver_count() == 0)
        {
            slots.remove(&self.slot);
        }
    }
}

/// One look at the key's state during a wait.
#[derive(Debug)]
pub enum Step<T> {
    /// An answer (HIT, RESERVED or MISS): the wait is over.
    Done(T),
    /// Someone else holds it: keep waiting.
    Held(Holder),
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited<T> {
    Done(T),
    /// The deadline passed with the reservation still held by this holder.
    TimedOut(Holder),
    /// The server is shutting down.
    ShuttingDown(Option<Holder>),
}

/// Waits for the key: `step` reads the store (and takes the reservation over
/// when it may); between steps the waiter sleeps until a notification, the
/// holder's expiry (`now_ms` is the store clock), its deadline or shutdown.
pub async fn wait<T, F, Fut>(
    sub: &mut Subscription,
    deadline: Instant,
    now_ms: impl Fn() -> i64,
    shutdown: &mut watch::Receiver<bool>,
    mut step: F,
) -> Result<Waited<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Step<T>>>,
{
    loop {
        sub.mark_seen();
        let holder = match step().await? {
            Step::Done(t) => return Ok(Waited::Done(t)),
            Step::Held(h) => h,
        };
        if *shutdown.borrow() {
            return Ok(Waited::ShuttingDown(Some(holder)));
        }
        let expiry = Instant::now() + until_expiry(holder.expire_ms, now_ms());
        tokio::select! {
            _ = sub.changed() => {}
            _ = tokio::time::sleep_until(expiry.min(deadline)) => {
                if Instant::now() >= deadline {
                    return Ok(Waited::TimedOut(holder));
                }
            }
            _ = shutdown.wait_for(|stop| *stop) => {
                return Ok(Waited::ShuttingDown(Some(holder)));
            }
        }
    }
}
