//! The hits file's background work: filling it from the cache index after
//! a start that found it unfilled, and watching which of its pages are in memory.

use super::*;

impl Store {
    /// Puts the newest hit of up to `max_keys` keys into the hits file,
    /// from the cache index entry after `after` on; returns where to go on,
    /// None when done. For a hits file that starts empty (after a crash): it
    /// fills at the cost of reading the cache index once, instead of one
    /// lookup of each key at a time.
    pub(super) fn warm_hits(
        &self,
        after: Option<&[u8]>,
        max_keys: usize,
    ) -> Result<Option<Vec<u8>>> {
        let start = match after {
            Some(k) => std::ops::Bound::Excluded(k.to_vec()),
            None => std::ops::Bound::Included(vec![keys::CACHE]),
        };
        let end = std::ops::Bound::Excluded(vec![keys::CACHE + 1]);
        let mut done = 0;
        let mut last: Option<(String, CacheKey)> = None;
        for item in self.tree.range::<Vec<u8>, _>((start, end)) {
            let (k, _) = item?;
            let (key, _, _) = keys::parse_cache_entry(&k)?;
            let ns = keys::namespace_of(&k)?;
            // Entries of one key come together, the newest first.
            if last.as_ref().is_none_or(|(n, l)| n != ns || *l != key) {
                if !self.hot.has_stored(ns, &key) {
                    self.warm_one(ns, &key)?;
                }
                done += 1;
                last = Some((ns.to_string(), key));
            }
            if done >= max_keys {
                return Ok(Some(k.to_vec()));
            }
        }
        Ok(None)
    }

    /// The newest entry of (ns, key) into the hits file, if servable.
    pub(super) fn warm_one(&self, ns: &str, key: &CacheKey) -> Result<()> {
        let judge = Judge {
            ns,
            key,
            max_staleness_ms: None,
            now: self.now_ms(),
            generation: self.hot.generation(ns, key),
            prefix: keys::cache_prefix(ns, key),
            memory: false,
        };
        if let Some((k, v)) = self.tree.first_at_or_after(&judge.prefix)? {
            if k.starts_with(&judge.prefix) {
                // Ineligible (invalidated, expired): nothing to keep.
                let _hit_or_why = self.judge(&judge, &k, v, true)?;
            }
        }
        Ok(())
    }

    /// Fills a hits file that opened empty (after a crash, or on a store
    /// written before there was one) on a thread of its own at the lowest
    /// CPU priority, `chunk` keys at a time; it holds the store only while a
    /// chunk runs, and `stop_background` ends it.
    pub fn warm_in_background(store: &Arc<Store>) {
        if !store.hot.needs_filling() {
            return;
        }
        let since = store.hot.clears();
        let weak = Arc::downgrade(store);
        let spawned = std::thread::Builder::new()
            .name("stepcache-warm".into())
            .spawn(move || {
                os::lower_thread_priority();
                let started = std::time::Instant::now();
                let mut at: Option<Vec<u8>> = None;
                loop {
                    let Some(store) = weak.upgrade() else {
                        return;
                    };
                    if store.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    match store.warm_hits(at.as_deref(), 256) {
                        Ok(Some(next)) => at = Some(next),
                        Ok(None) => {
                            store.hot.filled(since);
                            tracing::info!(
                                hits = store.hot.stored_len(),
                                seconds = started.elapsed().as_secs_f64(),
                                "hits file filled from the cache index"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::warn!("filling the hits file stopped: {e}");
                            return;
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("the hits file is filled by lookups only: {e}");
        }
    }

    /// The hits thread: writes the records lookups queued (`HotHits::
    /// write_ready`) every few milliseconds, so that no lookup waits on the
    /// disk; and once a second marks again which pages of the hits file the
    /// page cache holds (`HotHits::refresh_resident`): a page the kernel
    /// dropped is then read with `preadv2` on the async threads, never
    /// through the mapping, where it would wait for the disk. `mincore` of
    /// a 1M-hit file (~64k pages) takes well under a millisecond.
    pub fn watch_hits_in_background(store: &Arc<Store>) {
        const WRITE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);
        const REFRESH_EVERY: u32 = 100;
        let weak = Arc::downgrade(store);
        store.hot.defer_writes();
        let spawned = std::thread::Builder::new()
            .name("stepcache-hits".into())
            .spawn(move || {
                for round in 1u32.. {
                    std::thread::sleep(WRITE_EVERY);
                    let Some(store) = weak.upgrade() else {
                        return;
                    };
                    store.hot.write_ready();
                    if store.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                        return;
                    }
                    if round % REFRESH_EVERY == 0 {
                        store.hot.refresh_resident();
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("the hits file is written by lookups themselves: {e}");
            store.hot.write_directly();
        }
    }

    /// As `warm_in_background`, on this thread, to the end.
    pub fn fill_hits_file(&self) -> Result<()> {
        if !self.hot.needs_filling() {
            return Ok(());
        }
        let since = self.hot.clears();
        let mut at = None;
        while let Some(next) = self.warm_hits(at.as_deref(), 4096)? {
            at = Some(next);
        }
        self.hot.filled(since);
        Ok(())
    }

    /// Asks background work (`warm_in_background`) to stop, before a close.
    pub fn stop_background(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
