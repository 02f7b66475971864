//! Records of the hits file not written yet (a fill's, and lookups' for
//! the hits thread), and the batches they are written in.

use std::sync::Arc;

use super::FILL_CHUNK;
use crate::store::hitlog::{self, Segment};

/// Records reserved in the hits file, from `at` on, and not yet written;
/// the index learns of each once it is.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) at: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) records: Vec<Unwritten>,
}

/// A record to index once written, if its key was not evicted meanwhile.
pub(super) struct Unwritten {
    pub(super) tag: u64,
    pub(super) generation: u64,
    pub(super) packed: u64,
}

/// Lookups' batches waiting for the hits thread (`HotHits::write_ready`).
#[derive(Default)]
pub(super) struct Ready {
    batches: Vec<Batch>,
    bytes: usize,
}

/// Bytes of lookups' records that may wait for the hits thread; past it (a
/// disk that does not take writes) records are dropped, which costs the file
/// those hits, never a lookup.
const READY_LIMIT: usize = 16 << 20;

impl Ready {
    /// Queues `batch`; false (dropped) past `READY_LIMIT`.
    pub(super) fn push(&mut self, batch: Batch) -> bool {
        if self.bytes + batch.bytes.len() > READY_LIMIT {
            return false;
        }
        self.bytes += batch.bytes.len();
        self.batches.push(batch);
        true
    }

    pub(super) fn take(&mut self) -> Vec<Batch> {
        self.bytes = 0;
        std::mem::take(&mut self.batches)
    }
}

/// Bytes to write at `at` in `segment`, then the records among them to index.
pub(super) struct Batch {
    pub(super) segment: Arc<Segment>,
    pub(super) at: u64,
    pub(super) bytes: Vec<u8>,
    pub(super) records: Vec<Unwritten>,
}

impl Pending {
    pub(super) fn end(&self) -> u64 {
        self.at + self.bytes.len() as u64
    }

    /// All of it, as one batch for `segment`.
    pub(super) fn take(&mut self, segment: &Arc<Segment>) -> Option<Batch> {
        (!self.bytes.is_empty()).then(|| {
            let p = std::mem::take(self);
            Batch {
                segment: segment.clone(),
                at: p.at,
                bytes: p.bytes,
                records: p.records,
            }
        })
    }

    /// What lies before the first chunk boundary past `at`, once the
    /// records reach it; the rest stays.
    pub(super) fn take_chunk(&mut self, segment: &Arc<Segment>) -> Option<Batch> {
        let boundary = (self.at / FILL_CHUNK + 1) * FILL_CHUNK;
        if self.end() < boundary {
            return None;
        }
        let rest = self.bytes.split_off((boundary - self.at) as usize);
        let (done, waiting) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| {
                let (at, len) = hitlog::unpack(r.packed);
                at + len as u64 <= boundary
            });
        let head = std::mem::replace(
            self,
            Pending {
                at: boundary,
                bytes: rest,
                records: waiting,
            },
        );
        Some(Batch {
            segment: segment.clone(),
            at: head.at,
            bytes: head.bytes,
            records: done,
        })
    }
}
