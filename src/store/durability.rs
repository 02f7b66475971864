//! When a write is durable, and the first failed write (the store's
//! fault): writes registered until durable and kept from readers meanwhile.

use super::*;

/// A flush waiting for the disk this long means the disk has stalled: new
/// writes fail at once and health says NOT_SERVING until it finishes.
const STALLED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

/// An error of the storage itself (not of the request): a write that ends
/// with one may be applied in memory without being durable.
pub(super) fn storage_fault(e: &Error) -> bool {
    matches!(
        e.code(),
        tonic::Code::Internal | tonic::Code::ResourceExhausted | tonic::Code::Unavailable
    )
}

impl Store {
    /// An error once a flush has failed: sled fails every write after its
    /// first IO error until the store is opened again, so writes fail at
    /// once instead of waiting on flushes that cannot complete.
    pub fn writable(&self) -> Result<()> {
        match self.write_fault.lock().as_deref() {
            Ok(None) => Ok(()),
            Ok(Some((code, msg))) => Err(match code {
                tonic::Code::ResourceExhausted => Error::ResourceExhausted(msg.clone()),
                tonic::Code::Unavailable => Error::Unavailable(msg.clone()),
                _ => Error::Storage(msg.clone()),
            }),
            Err(_) => Err(Error::Internal("write fault state poisoned".into())),
        }
    }

    /// Blocks until every write applied so far is on disk (`writable`'s
    /// error when a flush has failed).
    pub fn durable(&self) -> Result<()> {
        self.writable()?;
        self.flush
            .wait_durable(|| {
                let started = std::time::Instant::now();
                self.db.flush()?;
                self.activity.flush(started.elapsed());
                Ok(())
            })
            .inspect_err(|e| self.record_fault(e))
    }

    /// Remembers the first failed write of sled (`writable`), and marks sled
    /// failed if it is not yet: a write that failed may leave a flush
    /// waiting for a log position that never becomes stable, which then
    /// returns the error (and so does the drop before the store is opened
    /// again, `reopen`).
    pub(super) fn record_fault(&self, e: &Error) {
        let kind = match e.code() {
            tonic::Code::ResourceExhausted => std::io::ErrorKind::StorageFull,
            _ => std::io::ErrorKind::Other,
        };
        self.db.poison(std::io::Error::new(kind, e.to_string()));
        if let Ok(mut fault) = self.write_fault.lock() {
            let message = match e {
                Error::Storage(m) => {
                    format!(
                        "the store cannot write ({m}): fix the disk; writes resume by themselves"
                    )
                }
                other => other.to_string(),
            };
            fault.get_or_insert((e.code(), message));
        }
    }

    /// Runs a write that registers `w` before it applies anything and keeps
    /// it registered until `write` (which ends with `durable`) returns: kept
    /// from readers until then (`unflushed`), for good when it fails in
    /// storage (until the store is opened again).
    pub(crate) fn registered<T>(
        &self,
        w: &unflushed::Writing,
        write: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        self.register(w)?;
        let result = write();
        self.settled(w, result.as_ref().err());
        result
    }

    /// Registers a write about to apply (`unflushed`), unless a flush has
    /// waited for the disk for `STALLED_AFTER`: the write then fails at once,
    /// having applied nothing, instead of queueing behind it.
    pub(super) fn register(&self, w: &unflushed::Writing) -> Result<()> {
        self.not_stalled()?;
        self.unflushed.add(w);
        Ok(())
    }

    /// After a flush has stalled, a probe of the disk failed with `e`: the
    /// disk is failing rather than slow (sled may lose an IO error of its
    /// background work and leave the flush waiting for good), so the store
    /// takes it as its write fault, which ends the waiting flush with it.
    pub fn stalled_on(&self, e: std::io::Error) {
        if self.not_stalled().is_err() && self.writable().is_ok() {
            self.record_fault(&Error::from(sled::Error::Io(e)));
        }
    }

    /// An error while a flush has waited for the disk for `STALLED_AFTER`
    /// (health says NOT_SERVING then; reads go on).
    pub fn not_stalled(&self) -> Result<()> {
        match self.flush.running_for() {
            Some(waited) if waited >= STALLED_AFTER => Err(Error::Unavailable(format!(
                "the store's disk has not finished a write for {} s: writes resume when it \
                 does; retry later",
                waited.as_secs()
            ))),
            _ => Ok(()),
        }
    }

    /// A registered write returned: unregistered, unless it failed in
    /// storage (it may be applied in memory), which is then the store's fault.
    pub(super) fn settled(&self, w: &unflushed::Writing, error: Option<&Error>) {
        match error {
            Some(e) if storage_fault(e) => self.record_fault(e),
            _ => self.unflushed.remove(w),
        }
    }

    /// For a reader, after its reads: when a write not yet durable touches
    /// `items`, waits for a flush that began after the reads (its error when
    /// it fails), so that the answer holds only durable writes.
    pub fn settle(&self, items: impl IntoIterator<Item = unflushed::Item>) -> Result<()> {
        if self.unflushed.touched(items) {
            self.durable()?;
        }
        Ok(())
    }

    /// Whether record `id` was created by a write not yet durable: readers
    /// answer as if it did not exist.
    pub fn unflushed(&self, id: i64) -> bool {
        self.unflushed.created(id)
    }
}
