//! When a write is durable, and the first failed write (the store's
//! fault): writes registered until durable and kept from readers meanwhile.

use super::*;

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
        self.unflushed.add(w);
        let result = write();
        self.settled(w, result.as_ref().err());
        result
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
