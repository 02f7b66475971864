//! The hits file's write path: room reserved for each record, the batches
//! written outside the cache's lock and indexed once whole, the lookups'
//! records left to the hits thread, and a fill's records written in chunks.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::pending::{Batch, Pending, Unwritten};
use super::{HotHits, Inner};
use crate::store::hitlog::{self, HitLog, Segment};

impl HotHits {
    /// Reserves room for a record and returns what is to be written now:
    /// the record alone, or with the fill's records waiting before it, or
    /// (`filling`) a whole chunk of them once one is complete.
    pub(super) fn append(
        &self,
        inner: &mut Inner,
        log: &HitLog,
        (tag, generation, record): (u64, u64, Vec<u8>),
        filling: bool,
    ) -> Option<Batch> {
        let (segment, at) = self.reserve(inner, log, record.len())?;
        // A record too far into the file for the index is written, unindexed.
        let new = hitlog::pack(at, record.len()).map(|packed| Unwritten {
            tag,
            generation,
            packed,
        });
        let pending = &mut inner.tier.as_mut()?.pending;
        // Reservations are made under the lock, so that records follow one
        // another while some wait. Were there a gap, what waits is written
        // after the fill's next record, or at the next `write_pending`.
        let mut before = None;
        if pending.end() != at || pending.bytes.is_empty() {
            if !filling {
                return Some(Batch {
                    segment,
                    at,
                    bytes: record,
                    records: new.into_iter().collect(),
                });
            }
            before = pending.take(&segment);
            pending.at = at;
        }
        pending.bytes.extend_from_slice(&record);
        pending.records.extend(new);
        before.or_else(|| {
            if filling {
                pending.take_chunk(&segment)
            } else {
                pending.take(&segment)
            }
        })
    }

    /// Writes a batch outside the lock; the index learns of its records
    /// only once they are whole, and only of those whose keys nothing
    /// evicted meanwhile.
    pub(super) fn write(&self, batch: Batch) {
        if let Err(e) = batch.segment.write(batch.at, &batch.bytes) {
            let before = self.write_failures.fetch_add(1, Ordering::Relaxed);
            if before == 0 {
                tracing::warn!(
                    "the hits file cannot be written ({e}): lookups are served from \
                     the store (logged once)"
                );
            }
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let current: Vec<bool> = batch
            .records
            .iter()
            .map(|r| inner.generation(r.tag) == r.generation)
            .collect();
        if let Some(tier) = inner
            .tier
            .as_mut()
            .filter(|t| Arc::ptr_eq(&t.segment, &batch.segment))
        {
            for (r, current) in batch.records.iter().zip(current) {
                if current {
                    tier.index.insert(r.tag, r.packed);
                }
            }
        }
    }

    /// From now on lookups queue their records, and the caller (the hits
    /// thread) calls `write_ready` often.
    pub fn defer_writes(&self) {
        self.deferred.store(true, Ordering::Relaxed);
    }

    /// Undoes `defer_writes` (no hits thread could start).
    pub fn write_directly(&self) {
        self.deferred.store(false, Ordering::Relaxed);
        self.write_ready();
    }

    /// Writes the records lookups queued (`defer_writes`).
    pub fn write_ready(&self) {
        let ready = match self.inner.lock() {
            Ok(mut inner) => inner.ready.take(),
            Err(_) => return,
        };
        for batch in ready {
            self.write(batch);
        }
    }

    /// Writes whatever a fill left waiting.
    pub(super) fn write_pending(&self) {
        let batch = self.inner.lock().ok().and_then(|mut inner| {
            let tier = inner.tier.as_mut()?;
            tier.pending.take(&tier.segment)
        });
        if let Some(batch) = batch {
            self.write(batch);
        }
    }

    /// Room for `len` bytes in the hits file; a full file starts over
    /// (and the tier with it, records waiting to be written too).
    fn reserve(&self, inner: &mut Inner, log: &HitLog, len: usize) -> Option<(Arc<Segment>, u64)> {
        let tier = inner.tier.as_mut()?;
        if let Some(at) = tier.segment.reserve(len, log.cap) {
            return Some((tier.segment.clone(), at));
        }
        match log.rotate() {
            Ok(segment) => {
                tier.segment = segment;
                tier.index.clear();
                tier.filled = false;
                tier.pending = Pending::default();
            }
            Err(e) => {
                tracing::warn!("the hits file could not start over, so it is off: {e}");
                inner.tier = None;
            }
        }
        inner.cleared += 1;
        None
    }
}
