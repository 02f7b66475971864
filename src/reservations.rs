//! Reservations: only the first of identical in-flight tasks runs.
//!
//! A reservation of (namespace, cache key) names an owner and an expiry (epoch
//! ms on the injectable clock). It lives in sled (see `store`); this module holds
//! the pure rules (who gets it, who may extend or release it, lease and timeout
//! ranges), the in-memory registry of waiters, and the waiting loop itself.
//!
//! Waiting costs no polling: a waiter subscribes to its key's slot in the
//! registry *before* it reads the store, then sleeps until one of
//! - a write that publishes, releases or grants the key bumps the slot,
//! - the holder's lease runs out (a real-time sleep derived from
//!   `expire_ms - clock.now_ms()`),
//! - its own deadline, or
//! - the server shutting down.
//!
//! A heartbeat (ExtendReservation) wakes nobody: each waiter reads the store
//! once when the old expiry passes and sleeps on until the new one.
//!
//! Slots are created by the first waiter of a key and removed when its last
//! waiter leaves, so the registry holds only keys somebody waits on.

use tokio::time::Duration;

use crate::error::{Error, Result};

/// Lease of a reservation when the request leaves it unset.
pub const DEFAULT_LEASE_MS: i64 = 60_000;
/// Timeout of WaitForCachedExecution when the request leaves it unset.
pub const DEFAULT_WAIT_MS: i64 = 60_000;
/// Longest lease and longest wait.
pub const MAX_MS: i64 = 3_600_000;
/// Longest owner name, in bytes.
pub const MAX_OWNER_BYTES: usize = 1024;

/// The holder of a reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    /// Epoch milliseconds (store clock); the lease is over when `now >= expire_ms`.
    pub expire_ms: i64,
}

impl Holder {
    pub fn expired(&self, now_ms: i64) -> bool {
        now_ms >= self.expire_ms
    }

    /// The sled value: expiry (i64 big-endian) then the owner's UTF-8 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.owner.len());
        v.extend_from_slice(&self.expire_ms.to_be_bytes());
        v.extend_from_slice(self.owner.as_bytes());
        v
    }

    pub fn decode(v: &[u8]) -> Result<Holder> {
        let bad = || Error::Storage(format!("malformed reservation record {}", hex::encode(v)));
        let expiry: [u8; 8] = v.get(..8).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
        let owner = std::str::from_utf8(&v[8..]).map_err(|_| bad())?;
        Ok(Holder {
            owner: owner.to_string(),
            expire_ms: i64::from_be_bytes(expiry),
        })
    }
}

/// A validated reservation request: who asks, for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    pub owner: String,
    pub lease_ms: i64,
}

/// The milliseconds of an optional lease or timeout: unset = `default`;
/// zero, negative or over an hour is INVALID_ARGUMENT.
pub fn bounded_ms(d: Option<&prost_types::Duration>, default: i64, field: &str) -> Result<i64> {
    let Some(d) = d else { return Ok(default) };
    let in_range =
        (d.seconds > 0 || (d.seconds == 0 && d.nanos > 0)) && (0..1_000_000_000).contains(&d.nanos);
    let ms = d
        .seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(d.nanos).div_euclid(1_000_000));
    if !in_range || ms > MAX_MS {
        return Err(Error::invalid(format!(
            "{field} must be more than 0 and at most 1 h, got {}s {}ns",
            d.seconds, d.nanos
        )));
    }
    // A positive duration under a millisecond counts as one.
    Ok(ms.max(1))
}

/// A reservation owner: non-empty, at most `MAX_OWNER_BYTES`.
pub fn owner(owner: &str, field: &str) -> Result<String> {
    if owner.is_empty() {
        return Err(Error::invalid(format!(
            "{field} must name the owner (e.g. the pod or task run), got an empty string"
        )));
    }
    if owner.len() > MAX_OWNER_BYTES {
        return Err(Error::invalid(format!(
            "{field} is {} bytes, over the limit of {MAX_OWNER_BYTES}",
            owner.len()
        )));
    }
    Ok(owner.to_string())
}

/// A ReservationRequest checked: owner non-empty, lease in range (default 60 s).
pub fn ask(req: &crate::proto::ReservationRequest, field: &str) -> Result<Ask> {
    Ok(Ask {
        owner: owner(&req.owner, &format!("{field}.owner"))?,
        lease_ms: bounded_ms(
            req.lease.as_ref(),
            DEFAULT_LEASE_MS,
            &format!("{field}.lease"),
        )?,
    })
}

/// What a lookup that missed does about the key's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds it now (new, taken over, or its own extended): write it.
    Grant(Holder),
    /// Someone else holds it, unexpired.
    Held(Holder),
    /// Nobody holds it and the caller did not ask for it.
    Free,
}

/// Who gets the reservation: the caller when nobody holds it, its lease ran
/// out, or the caller holds it already (idempotent; the lease restarts from now).
pub fn claim(current: Option<&Holder>, ask: Option<&Ask>, now_ms: i64) -> Claim {
    let live = current.filter(|h| !h.expired(now_ms));
    match (live, ask) {
        (Some(h), Some(a)) if h.owner == a.owner => Claim::Grant(lease(a, now_ms)),
        (Some(h), _) => Claim::Held(h.clone()),
        (None, Some(a)) => Claim::Grant(lease(a, now_ms)),
        (None, None) => Claim::Free,
    }
}

fn lease(a: &Ask, now_ms: i64) -> Holder {
    Holder {
        owner: a.owner.clone(),
        expire_ms: now_ms.saturating_add(a.lease_ms),
    }
}

/// The holder, when `owner` holds the reservation at `now_ms`; otherwise
/// FAILED_PRECONDITION saying why (nobody holds it, someone else does, it expired).
pub fn held_by<'a>(
    current: Option<&'a Holder>,
    owner: &str,
    now_ms: i64,
    what: &str,
) -> Result<&'a Holder> {
    match current {
        None => Err(Error::precondition(format!(
            "cannot {what}: nobody holds the reservation of this key"
        ))),
        Some(h) if h.owner != owner => Err(Error::precondition(format!(
            "cannot {what}: the reservation is held by {:?}, not {owner:?}",
            h.owner
        ))),
        Some(h) if h.expired(now_ms) => Err(Error::precondition(format!(
            "cannot {what}: the lease of {owner:?} expired at {} ms ({} ms ago); \
             look the key up again to reserve it anew",
            h.expire_ms,
            now_ms.saturating_sub(h.expire_ms)
        ))),
        Some(h) => Ok(h),
    }
}

/// Whether a PutExecution releases the key's reservation (see the comment of
/// `PutExecutionRequest.reservation_owner`):
/// - a write that publishes a COMPLETE result releases it, whoever holds it:
///   the result is valid regardless of who produced it;
/// - a terminal write that does not publish (FAILED, CANCELED, COMPLETE with
///   skip_publish) releases it when `reservation_owner` is empty or names the
///   holder, so that a waiter takes over; a write naming another owner (whose
///   lease lapsed and was taken over) is recorded but leaves it alone;
/// - other writes (NEW, RUNNING) leave it alone.
pub fn released_by_write(
    current: Option<&Holder>,
    terminal: bool,
    published: bool,
    reservation_owner: &str,
) -> bool {
    let Some(h) = current else { return false };
    published || (terminal && (reservation_owner.is_empty() || reservation_owner == h.owner))
}

/// How long to sleep, in real time, until a lease that ends at `expire_ms`
/// (store clock) is over: at least 1 ms, so that a clock that does not move
/// (tests) never turns the wait into a busy loop.
pub fn until_expiry(expire_ms: i64, now_ms: i64) -> Duration {
    let ms = expire_ms.saturating_sub(now_ms).max(1);
    Duration::from_millis(u64::try_from(ms).unwrap_or(1))
}

mod waiters;
pub use waiters::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::CacheKey;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::watch;
    use tokio::time::Instant;

    fn h(owner: &str, expire_ms: i64) -> Holder {
        Holder {
            owner: owner.into(),
            expire_ms,
        }
    }

    fn a(owner: &str, lease_ms: i64) -> Ask {
        Ask {
            owner: owner.into(),
            lease_ms,
        }
    }

    #[test]
    fn records_round_trip() {
        let x = h("pod-7 ✓", 1_700_000_000_123);
        assert_eq!(Holder::decode(&x.encode()).unwrap(), x);
        assert!(Holder::decode(b"short").is_err());
        let mut bad = x.encode();
        bad.push(0xff);
        assert!(Holder::decode(&bad).is_err());
    }

    #[test]
    fn first_asker_gets_it_others_see_the_holder() {
        assert_eq!(
            claim(None, Some(&a("w1", 100)), 1_000),
            Claim::Grant(h("w1", 1_100))
        );
        let cur = h("w1", 1_100);
        assert_eq!(
            claim(Some(&cur), Some(&a("w2", 100)), 1_050),
            Claim::Held(cur.clone())
        );
        assert_eq!(claim(Some(&cur), None, 1_050), Claim::Held(cur.clone()));
        assert_eq!(claim(None, None, 1_050), Claim::Free);
    }

    #[test]
    fn same_owner_is_idempotent_and_extends() {
        let cur = h("w1", 1_100);
        assert_eq!(
            claim(Some(&cur), Some(&a("w1", 500)), 1_050),
            Claim::Grant(h("w1", 1_550))
        );
    }

    #[test]
    fn an_expired_lease_is_free() {
        let cur = h("w1", 1_100);
        assert_eq!(
            claim(Some(&cur), Some(&a("w2", 100)), 1_100),
            Claim::Grant(h("w2", 1_200))
        );
        assert_eq!(claim(Some(&cur), None, 1_100), Claim::Free);
        assert_eq!(
            claim(Some(&cur), Some(&a("w1", 100)), 2_000),
            Claim::Grant(h("w1", 2_100))
        );
    }

    #[test]
    fn only_the_live_holder_may_extend_or_release() {
        let cur = h("w1", 1_100);
        assert!(held_by(Some(&cur), "w1", 1_099, "extend").is_ok());
        for (current, owner, now, word) in [
            (None, "w1", 0, "nobody"),
            (Some(&cur), "w2", 1_000, "held by \"w1\""),
            (Some(&cur), "w1", 1_100, "expired"),
        ] {
            match held_by(current, owner, now, "extend") {
                Err(Error::FailedPrecondition(m)) => assert!(m.contains(word), "{m}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn writes_that_release() {
        let cur = h("w1", 1_100);
        // Publishing releases, whoever wrote it.
        assert!(released_by_write(Some(&cur), true, true, ""));
        assert!(released_by_write(Some(&cur), true, true, "w2"));
        // FAILED/CANCELED: the holder, or anyone not naming an owner.
        assert!(released_by_write(Some(&cur), true, false, ""));
        assert!(released_by_write(Some(&cur), true, false, "w1"));
        assert!(!released_by_write(Some(&cur), true, false, "w2"));
        // RUNNING does not; nothing to release when nobody holds it.
        assert!(!released_by_write(Some(&cur), false, false, ""));
        assert!(!released_by_write(None, true, true, ""));
    }

    #[test]
    fn leases_and_timeouts_in_range() {
        let d = |seconds, nanos| prost_types::Duration { seconds, nanos };
        assert_eq!(bounded_ms(None, 60_000, "lease").unwrap(), 60_000);
        assert_eq!(bounded_ms(Some(&d(0, 300_000_000)), 0, "l").unwrap(), 300);
        assert_eq!(bounded_ms(Some(&d(0, 1)), 0, "l").unwrap(), 1);
        assert_eq!(bounded_ms(Some(&d(3600, 0)), 0, "l").unwrap(), 3_600_000);
        for bad in [
            d(0, 0),
            d(-1, 0),
            d(0, -5),
            d(3600, 1_000_000),
            d(i64::MAX, 0),
            d(1, 1_000_000_000),
        ] {
            match bounded_ms(Some(&bad), 0, "reservation.lease") {
                Err(Error::InvalidArgument(m)) => assert!(m.contains("reservation.lease"), "{m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert!(owner("", "reservation.owner").is_err());
        assert!(owner(&"x".repeat(MAX_OWNER_BYTES + 1), "o").is_err());
        assert_eq!(owner("pod-1", "o").unwrap(), "pod-1");
    }

    #[test]
    fn expiry_sleeps_never_spin() {
        assert_eq!(until_expiry(1_000, 1_000), Duration::from_millis(1));
        assert_eq!(until_expiry(1_000, 2_000), Duration::from_millis(1));
        assert_eq!(until_expiry(1_250, 1_000), Duration::from_millis(250));
    }

    #[tokio::test]
    async fn slots_are_removed_with_their_last_waiter() {
        let w = Arc::new(Waiters::default());
        let k = CacheKey([3; 32]);
        let s1 = w.subscribe("ns", &k);
        let s2 = w.subscribe("ns", &k);
        let s3 = w.subscribe("other", &k);
        assert_eq!(w.len(), 2);
        drop(s1);
        assert_eq!(w.len(), 2);
        drop(s2);
        assert_eq!(w.len(), 1);
        drop(s3);
        assert!(w.is_empty());
        // Notifying a key nobody waits on is a no-op and creates nothing.
        w.notify("ns", &k);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn a_notification_wakes_a_waiter_without_polling() {
        let w = Arc::new(Waiters::default());
        let k = CacheKey([1; 32]);
        let (_stop_tx, mut stop) = watch::channel(false);
        let steps = Arc::new(AtomicUsize::new(0));
        let mut sub = w.subscribe("ns", &k);
        let (w2, steps2) = (w.clone(), steps.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            steps2.fetch_add(100, Ordering::SeqCst); // "publish"
            w2.notify("ns", &k);
        });
        let far = 10_000_000;
        let r = wait(
            &mut sub,
            Instant::now() + Duration::from_secs(10),
            || 0,
            &mut stop,
            || {
                let n = steps.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok(if n >= 100 {
                        Step::Done(n)
                    } else {
                        Step::Held(h("w1", far))
                    })
                }
            },
        )
        .await
        .unwrap();
        // Two reads of the store: before and after the one notification.
        assert!(matches!(r, Waited::Done(101)), "{r:?}");
        drop(sub);
        assert!(w.is_empty());
    }

    #[tokio::test]
    async fn expiry_deadline_and_shutdown_end_a_wait() {
        let w = Arc::new(Waiters::default());
        let k = CacheKey([2; 32]);
        let (stop_tx, mut stop) = watch::channel(false);
        let clock_start = std::time::Instant::now();
        let now_ms = move || clock_start.elapsed().as_millis() as i64;

        // The holder's lease ends at 80 ms: the second step takes it over.
        let mut sub = w.subscribe("ns", &k);
        let mut steps = 0;
        let started = Instant::now();
        let r = wait(
            &mut sub,
            Instant::now() + Duration::from_secs(10),
            now_ms,
            &mut stop,
            || {
                steps += 1;
                let expired = now_ms() >= 80;
                async move {
                    Ok(if expired {
                        Step::Done("taken over")
                    } else {
                        Step::Held(h("w1", 80))
                    })
                }
            },
        )
        .await
        .unwrap();
        assert!(matches!(r, Waited::Done("taken over")));
        assert!(steps <= 3, "woken at expiry, not polled: {steps} steps");
        assert!(started.elapsed() >= Duration::from_millis(70));

        // A deadline before the expiry: timed out with the holder.
        let r = wait(
            &mut sub,
            Instant::now() + Duration::from_millis(30),
            || 0,
            &mut stop,
            || async { Ok(Step::<()>::Held(h("w1", 60_000))) },
        )
        .await
        .unwrap();
        assert!(matches!(r, Waited::TimedOut(x) if x.owner == "w1"));

        // Shutdown answers at once.
        let _ = stop_tx.send(true);
        let r = wait(
            &mut sub,
            Instant::now() + Duration::from_secs(10),
            || 0,
            &mut stop,
            || async { Ok(Step::<()>::Held(h("w1", 60_000))) },
        )
        .await
        .unwrap();
        assert!(matches!(r, Waited::ShuttingDown(Some(_))));
    }
}
