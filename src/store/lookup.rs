//! The lookup of a key: the hits file, then the key's cache entries newest
//! first under `policy::Scan`; the newest whole hit goes into the hot cache.

use super::*;

/// What judges every entry of one lookup.
pub(super) struct Judge<'a> {
    pub(super) ns: &'a str,
    pub(super) key: &'a CacheKey,
    pub(super) max_staleness_ms: Option<i64>,
    pub(super) now: i64,
    pub(super) generation: hot::Generation,
    pub(super) prefix: Vec<u8>,
    /// A hit goes into the memory tier of the hot cache too (not when warming).
    pub(super) memory: bool,
}

impl Store {
    /// The newest servable COMPLETE execution of (namespace, key).
    pub fn lookup(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        let found = self.lookup_entries(ns, key, max_staleness_ms)?;
        // An invalidation not yet durable (`unflushed`).
        self.settle([unflushed::Item::namespace(ns)])?;
        Ok(found)
    }

    pub(super) fn lookup_entries(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Result<Lookup> {
        let now = self.now_ms();
        if let Some(hit) = self.hot.get_stored(ns, key, now, max_staleness_ms) {
            return Ok(Lookup::Hit(Hit::Encoded(hit.into_fields())));
        }
        let judge = Judge {
            ns,
            key,
            max_staleness_ms,
            now,
            generation: self.hot.generation(ns, key),
            prefix: keys::cache_prefix(ns, key),
            memory: true,
        };
        // Most lookups are answered by the newest entry alone, read without
        // adding its leaf to sled's cache (vendored sled, change 12).
        let mut scan = Scan::default();
        let newest = match self.tree.first_at_or_after(&judge.prefix)? {
            Some((k, _)) if !k.starts_with(&judge.prefix) => {
                return Ok(Lookup::Miss {
                    reason: scan.miss_reason(),
                })
            }
            Some((k, v)) => match self.judge(&judge, &k, v, true)? {
                Ok(hit) => return Ok(Lookup::Hit(hit)),
                Err(why) => Some((k, why)),
            },
            None => None,
        };
        for item in self.tree.scan_prefix(&judge.prefix) {
            let (k, v) = item?;
            // The newest entry, when the short way judged it already.
            let judged = match &newest {
                Some((newest_k, why)) if *newest_k == k => Err(*why),
                _ => self.judge(&judge, &k, v, scan.at_newest())?,
            };
            match (
                scan.next(judged.as_ref().map(|_| ()).map_err(|why| *why)),
                judged,
            ) {
                (Next::Serve, Ok(hit)) => return Ok(Lookup::Hit(hit)),
                (Next::Stop, _) => break,
                _ => {}
            }
        }
        Ok(Lookup::Miss {
            reason: scan.miss_reason(),
        })
    }

    /// One cache entry `(k, v)` of a lookup: its hit, or why it may not be
    /// served. The newest entry's hit, when it is one whole record, goes
    /// into the hot cache: it is what every lookup of the key would serve.
    pub(super) fn judge(
        &self,
        j: &Judge,
        k: &[u8],
        v: sled::IVec,
        newest: bool,
    ) -> Result<std::result::Result<Hit, Ineligible>> {
        let (completed_ms, exec_id) = keys::parse_cache_suffix(&k[j.prefix.len()..])?;
        if self.unflushed.created(exec_id) {
            return Ok(Err(Ineligible::Unflushed));
        }
        let invalidated = entry::is_invalidated(&v);
        // A record with a copy of every output is the whole answer, served
        // as its bytes; the hot cache keeps only such answers.
        let (hit, cache_ttl, outputs_live, whole) = match entry::encoded_hit(v.clone())? {
            Some(e) if e.execution_id == exec_id && e.namespace == j.ns => {
                (Hit::Encoded(e.fields), e.cache_ttl, e.outputs_live, true)
            }
            _ => {
                let (execution, outputs) = self.hit_read_out(j.ns, exec_id, &v)?;
                let live = outputs
                    .values()
                    .flatten()
                    .all(|a| a.state == ArtifactState::Live as i32);
                let ttl = execution.cache_ttl;
                let execution = Box::new(execution);
                (Hit::Decoded { execution, outputs }, ttl, live, false)
            }
        };
        let candidate = Candidate {
            completed_ms,
            ttl_ms: policy::duration_ms(cache_ttl.as_ref(), "cache_ttl")
                .ok()
                .flatten(),
            outputs_live,
            invalidated,
        };
        // After every read of this entry: a write not yet durable that
        // touched the execution or its outputs (`unflushed`).
        if self.unflushed.pending() {
            let outputs = match &hit {
                Hit::Decoded { outputs, .. } => outputs.values().flatten().map(|a| a.id).collect(),
                Hit::Encoded(_) => Vec::new(),
            };
            let touched = std::iter::once(exec_id).chain(outputs);
            self.settle(touched.map(unflushed::Item::Id))?;
        }
        if let Err(why) = policy::eligibility(&candidate, j.now, j.max_staleness_ms) {
            return Ok(Err(why));
        }
        if let (true, true, Hit::Encoded(fields)) = (newest, whole, &hit) {
            let hot = hot::HotHit {
                completed_ms,
                ttl_ms: candidate.ttl_ms,
                fields: fields.clone(),
            };
            self.hot.insert(j.generation, j.ns, j.key, hot, j.memory);
        }
        Ok(Ok(hit))
    }
    /// A hit from memory, or from the hits file when the page cache holds
    /// its record, without touching sled or waiting for the disk (so
    /// callable on the async executor); None means "ask the store".
    pub fn lookup_hot(
        &self,
        ns: &str,
        key: &CacheKey,
        max_staleness_ms: Option<i64>,
    ) -> Option<Lookup> {
        self.hot.lookup(ns, key, self.now_ms(), max_staleness_ms)
    }

    /// A hit that is not one whole record: the record's execution with its
    /// outputs read, or (no record, or another execution's) both read.
    pub(super) fn hit_read_out(
        &self,
        ns: &str,
        exec_id: i64,
        v: &[u8],
    ) -> Result<(Execution, domain::Outputs)> {
        let rec = match entry::record(v)? {
            Some(rec)
                if rec
                    .execution
                    .as_ref()
                    .is_some_and(|e| e.id == exec_id && e.namespace == ns) =>
            {
                rec
            }
            _ => {
                return Ok((
                    self.execution(exec_id, Some(ns))?,
                    self.outputs_of(exec_id)?,
                ))
            }
        };
        let outputs = rec
            .outputs
            .iter()
            .map(|o| {
                let arts = o
                    .artifact_ids
                    .iter()
                    .map(|id| self.artifact(*id, None))
                    .collect::<Result<Vec<_>>>()?;
                Ok((o.name.clone(), arts))
            })
            .collect::<Result<BTreeMap<_, _>>>()?;
        Ok((rec.execution.unwrap_or_default(), outputs))
    }
}
