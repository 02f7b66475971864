//! IDs and creation times, allocated together so that ID order is
//! creation order.

use super::*;

/// sled generator values fetched at once (see `Store::allocate`).
const ID_BLOCK: usize = 64;

/// The state of ID allocation.
#[derive(Default)]
pub(super) struct IdGen {
    /// The creation time of the last allocated ID; None until the newest
    /// stored record's is read (at the first allocation after an open or an
    /// import).
    pub(super) last_ms: Option<i64>,
    /// `keys::META_ID_FLOOR`, once read.
    pub(super) floor: Option<u64>,
    /// Values of sled's generator fetched and not handed out yet, ascending.
    pub(super) block: std::collections::VecDeque<u64>,
}

/// IDs allocated for one write, with the creation time that goes with them.
#[derive(Debug, Clone)]
pub(super) struct Alloc {
    pub(super) now: i64,
    pub(super) ids: Vec<i64>,
}

/// Hands out the IDs of an `Alloc` inside a transaction (a retried
/// transaction starts over with a fresh `Ids`).
pub(super) struct Ids<'a> {
    pub(super) ids: &'a [i64],
    pub(super) next: usize,
}

impl<'a> Ids<'a> {
    pub(super) fn of(a: &'a Alloc) -> Self {
        Ids {
            ids: &a.ids,
            next: 0,
        }
    }
    pub(super) fn take(&mut self) -> TxResult<i64> {
        let id = self.ids.get(self.next).copied();
        self.next += 1;
        id.ok_or_else(|| {
            ConflictableTransactionError::Abort(Error::Internal(
                "a write needed more IDs than it allocated".into(),
            ))
        })
    }
}

/// The creation time in a record of `kind` (`keys::EXECUTION`,
/// `keys::ARTIFACT` or `keys::CONTEXT`).
pub(super) fn record_create_ms(kind: u8, v: &[u8]) -> Result<i64> {
    let t = match kind {
        keys::EXECUTION => decode::<Execution>(v)?.create_time,
        keys::ARTIFACT => decode::<Artifact>(v)?.create_time,
        _ => decode::<Context>(v)?.create_time,
    };
    Ok(created_ms(t.as_ref()))
}

impl Store {
    /// `n` new IDs and the creation time of the records they name: never
    /// earlier than that of any ID allocated before (a clock that steps back
    /// stamps the last time again), so that a created-time range is an ID range.
    pub(super) fn allocate(&self, n: usize) -> Result<Alloc> {
        self.writable()?;
        let mut g = self.id_gen()?;
        let last = match g.last_ms {
            Some(ms) => ms,
            None => self.newest_create_ms()?,
        };
        let clock = self.now_ms();
        // A last time far ahead of the clock was stamped while the clock ran
        // ahead (a glitch): carried forward, it would stamp every record
        // after it with that time, and keep them young, for as long.
        let now = if last > clock.saturating_add(crate::policy::FUTURE_TOLERANCE_MS) {
            tracing::warn!(
                last_ms = last,
                clock_ms = clock,
                "the newest record's creation time is ahead of the clock; \
                 new records take the clock's time"
            );
            clock
        } else {
            clock.max(last)
        };
        g.last_ms = Some(now);
        // Above the floor an import left (a restored store has a fresh generator).
        let floor = match g.floor {
            Some(f) => f,
            None => {
                let f = match self.tree.get(keys::META_ID_FLOOR)? {
                    Some(v) => keys::read_u64(&v, 0)?,
                    None => 0,
                };
                g.floor = Some(f);
                f
            }
        };
        // sled's generator is read in blocks: each call waits for a running
        // transaction (sled's lock), which would keep writers from queueing
        // for the next batch while one is applied.
        if g.block.len() < n {
            for _ in 0..n.max(ID_BLOCK) {
                let id = self.db.generate_id()?;
                g.block.push_back(id);
            }
        }
        // sled's IDs start at 0 and are monotonic across restarts; ours start at 1.
        let ids = g
            .block
            .drain(..n)
            .map(|id| i64::try_from(floor.saturating_add(id).saturating_add(1)).unwrap_or(i64::MAX))
            .collect();
        Ok(Alloc { now, ids })
    }

    /// After an import moved the ID floor (and brought records created
    /// later than any here, perhaps).
    pub(super) fn reload_id_floor(&self) -> Result<()> {
        let mut g = self.id_gen()?;
        g.floor = None;
        g.last_ms = None;
        Ok(())
    }

    /// The creation time of the newest stored record (0 in an empty store): a
    /// clock that stepped back while the server was down must not stamp new
    /// IDs earlier than the IDs before them.
    pub(super) fn newest_create_ms(&self) -> Result<i64> {
        let mut newest = 0;
        for kind in [keys::EXECUTION, keys::ARTIFACT, keys::CONTEXT] {
            if let Some((_, v)) = self.record_at_most(kind, i64::MAX)? {
                newest = newest.max(record_create_ms(kind, &v)?);
            }
        }
        Ok(newest)
    }

    /// The record of the largest ID at or below `at_most` of one kind
    /// (`keys::record`), with that ID.
    pub(super) fn record_at_most(
        &self,
        kind: u8,
        at_most: i64,
    ) -> Result<Option<(i64, sled::IVec)>> {
        if at_most < 1 {
            return Ok(None);
        }
        match self.tree.range(..=keys::record(kind, at_most)).next_back() {
            Some(item) => {
                let (k, v) = item?;
                match (k.first(), k.len()) {
                    (Some(p), keys::RECORD_KEY_LEN) if *p == kind => {
                        Ok(Some((keys::id_suffix(&k)?, v)))
                    }
                    _ => Ok(None),
                }
            }
            None => Ok(None),
        }
    }

    pub(super) fn id_gen(&self) -> Result<MutexGuard<'_, IdGen>> {
        self.ids
            .lock()
            .map_err(|_| Error::Internal("ID allocation lock poisoned".into()))
    }
}
