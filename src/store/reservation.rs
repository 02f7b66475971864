//! Reservations of keys: a lookup that claims on a miss, heartbeats and
//! releases.

use super::*;

impl Store {
    /// Looks the key up; on a miss settles its reservation in one step that no
    /// publish of the key can interleave with: granted to `ask` (durably) when
    /// nobody else holds it, else the holder; `Miss` when nobody holds it and
    /// there is no `ask`.
    pub fn lookup_or_claim(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
        ask: Option<&Ask>,
    ) -> Result<Claimed> {
        // Hits need no lock.
        if let Lookup::Hit(hit) = self.lookup(ns, key, max_staleness_ms)? {
            return Ok(Claimed::Hit(hit));
        }
        let writing = Self::writing_reservation(ns, key);
        let claim = {
            let _guard = self.key_lock(key)?;
            let reason = match self.lookup(ns, key, max_staleness_ms)? {
                Lookup::Hit(hit) => return Ok(Claimed::Hit(hit)),
                Lookup::Miss { reason } => reason,
            };
            let now = self.now_ms();
            let rkey = keys::reservation(ns, key);
            self.register(&writing)?;
            let claim = self.commit(|tx| {
                let claim = reservations::claim(reservation_tx(tx, &rkey)?.as_ref(), ask, now);
                if let Claim::Grant(h) = &claim {
                    tx.set(rkey.as_slice(), h.encode())?;
                }
                Ok(claim)
            });
            let claim = match claim {
                Ok(claim @ Claim::Grant(_)) => claim,
                Ok(claim) => {
                    self.unflushed.remove(&writing);
                    claim
                }
                Err(e) => {
                    self.settled(&writing, Some(&e));
                    return Err(e);
                }
            };
            (claim, reason)
        };
        match claim {
            (Claim::Grant(holder), reason) => {
                let durable = self.durable();
                self.settled(&writing, durable.as_ref().err());
                durable?;
                Ok(Claimed::Granted { holder, reason })
            }
            (Claim::Held(holder), reason) => {
                // The holder's grant is answered once durable.
                self.settle([unflushed::Item::key(ns, key)])?;
                Ok(Claimed::Held { holder, reason })
            }
            (Claim::Free, reason) => Ok(Claimed::Miss { reason }),
        }
    }

    /// The reservation record of a key as stored (it may have expired).
    pub fn reservation(&self, ns: &str, key: &CacheKey) -> Result<Option<Holder>> {
        let holder = self
            .tree
            .get(keys::reservation(ns, key))?
            .map(|v| Holder::decode(&v))
            .transpose()?;
        self.settle([unflushed::Item::key(ns, key)])?;
        Ok(holder)
    }

    /// A heartbeat: the lease of `owner` restarts from now. FAILED_PRECONDITION
    /// when `owner` does not hold the reservation (or its lease is over).
    pub fn extend_reservation(
        &self,
        ns: &str,
        key: &CacheKey,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Holder> {
        let now = self.now_ms();
        let rkey = keys::reservation(ns, key);
        self.registered(&Self::writing_reservation(ns, key), || {
            let holder = self.commit(|tx| {
                let current = reservation_tx(tx, &rkey)?;
                reservations::held_by(current.as_ref(), owner, now, "extend the reservation")
                    .or_else(abort)?;
                let h = Holder {
                    owner: owner.to_string(),
                    expire_ms: now.saturating_add(lease_ms),
                };
                tx.set(rkey.as_slice(), h.encode())?;
                Ok(h)
            })?;
            self.durable()?;
            Ok(holder)
        })
    }

    /// A write of the reservation of (ns, key).
    pub(super) fn writing_reservation(ns: &str, key: &CacheKey) -> unflushed::Writing {
        unflushed::Writing {
            created: Vec::new(),
            touched: vec![unflushed::Item::key(ns, key)],
        }
    }

    /// Gives the reservation up. FAILED_PRECONDITION when `owner` does not hold
    /// it (or its lease is over).
    pub fn release_reservation(&self, ns: &str, key: &CacheKey, owner: &str) -> Result<()> {
        let now = self.now_ms();
        let rkey = keys::reservation(ns, key);
        self.registered(&Self::writing_reservation(ns, key), || {
            self.commit(|tx| {
                let current = reservation_tx(tx, &rkey)?;
                reservations::held_by(current.as_ref(), owner, now, "release the reservation")
                    .or_else(abort)?;
                tx.remove(rkey.as_slice())?;
                Ok(())
            })?;
            self.durable()
        })
    }
}
