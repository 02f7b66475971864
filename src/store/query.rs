//! Contexts, filtered lists and lineage, all answered from secondary indexes
//! (see `keys`): no query scans the store.
//!
//! Lists walk the intersection of the ID-ordered indexes of the filters given
//! (`crate::query::next_common`), newest first, from the page token; a created
//! time range bounds the walk to an ID range (IDs and creation times are
//! allocated together). Each call examines at most `EXAMINE_BUDGET` index
//! entries: a page may come back short, even empty, with a next token.

use super::{created_ms, keys, not_found, put, tx_get, Ids, Page, Store, TxResult};
use crate::clock::timestamp;
use crate::domain::{ArtifactFilter, ExecutionFilter};
use crate::domain::{ContextFilter, LineageResult};
use crate::error::{Error, Result};
use crate::lineage::{self, Bounds, Dir, Edges, Graph, Node};
use crate::proto::{Artifact, Context, Execution};
use crate::query::{self, Step, TimeRange};

/// Index seeks one List call may make before it returns what it has.
pub const EXAMINE_BUDGET: usize = 20_000;

impl Store {
    /// Creates or updates contexts, all or none. A new context (id 0) whose
    /// (namespace, type, name) exists already gets that context's ID and
    /// leaves it as it is; an update (id != 0) replaces its properties.
    pub fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        let alloc = self.allocate(contexts.iter().filter(|c| c.id == 0).count())?;
        // Kept from readers until durable (`unflushed`).
        let writing = super::unflushed::Writing {
            created: alloc.ids.clone(),
            touched: contexts
                .iter()
                .filter(|c| c.id != 0)
                .map(|c| super::unflushed::Item::Id(c.id))
                .collect(),
        };
        self.registered(&writing, || {
            let ids = self.commit(|tx| {
                let mut pool = Ids::of(&alloc);
                let mut out = Vec::with_capacity(contexts.len());
                for (i, c) in contexts.iter().enumerate() {
                    out.push(put_context_tx(tx, c, alloc.now, i, &mut pool)?);
                }
                Ok(out)
            })?;
            self.durable()?;
            Ok(ids)
        })
    }

    /// A context of the namespace (any namespace when `ns` is None).
    pub fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        match self.get::<Context>(&keys::context(id))? {
            Some(c) if ns.is_none_or(|ns| c.namespace == ns) => Ok(c),
            _ => Err(not_found("context", id, ns)),
        }
    }

    pub fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        let prefix = match &f.context_type {
            Some(t) => keys::context_by_type_prefix(&f.namespace, t),
            None => keys::context_by_ns_prefix(&f.namespace),
        };
        self.walk(
            vec![Index::one(prefix)],
            start_at(after),
            1,
            page_size,
            |id| {
                Ok(self
                    .get::<Context>(&keys::context(id))?
                    .filter(|c| c.namespace == f.namespace))
            },
        )
    }

    /// Executions newest first, filtered, from after the page token.
    pub fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        let ns = f.namespace.as_str();
        let mut prefixes = Vec::new();
        if let Some(k) = &f.cache_key {
            prefixes.push(keys::exec_by_key_prefix(ns, k));
        }
        if let Some(cid) = f.context_id {
            self.context(cid, Some(ns))
                .map_err(|e| field_error(e, "context_id"))?;
            prefixes.push(keys::exec_by_context_prefix(cid));
        }
        if let Some(c) = &f.component {
            prefixes.push(keys::exec_by_component_prefix(ns, c));
        }
        if let Some(s) = f.state {
            prefixes.push(keys::exec_by_state_prefix(ns, s as i32));
        }
        let by_ns = || Index::any_of(keys::exec_by_ns_prefixes(ns));
        let indexes = indexes_or(prefixes, by_ns);
        let Some((floor, ceiling)) = self.id_range(keys::EXECUTION, &f.created)? else {
            return Ok(empty());
        };
        let start = start_at(after).min(ceiling);
        self.walk(indexes, start, floor, page_size, |id| {
            let Some(e) = self.get::<Execution>(&keys::execution(id))? else {
                return Ok(None); // pruned meanwhile
            };
            if self.unflushed.created(id) {
                return Ok(None);
            }
            let keep = e.namespace == ns
                && f.state.is_none_or(|s| e.state == s as i32)
                && f.component
                    .as_ref()
                    .is_none_or(|c| e.interface.as_ref().is_some_and(|i| &i.component == c))
                && f.cache_key
                    .as_ref()
                    .is_none_or(|k| e.cache_key == k.to_string())
                && f.created.contains(created_ms(e.create_time.as_ref()));
            Ok(keep.then_some(e))
        })
    }

    /// Artifacts newest first, filtered, from after the page token.
    pub fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        let ns = f.namespace.as_str();
        let mut prefixes = Vec::new();
        if let Some(cid) = f.context_id {
            self.context(cid, Some(ns))
                .map_err(|e| field_error(e, "context_id"))?;
            prefixes.push(keys::artifact_by_context_prefix(cid));
        }
        if let Some(t) = &f.artifact_type {
            prefixes.push(keys::artifact_by_type_prefix(ns, t));
        }
        if let Some(s) = f.state {
            prefixes.push(keys::artifact_by_state_prefix(ns, s as i32));
        }
        let by_ns = || Index::any_of(keys::artifact_by_ns_prefixes(ns));
        let indexes = indexes_or(prefixes, by_ns);
        let Some((floor, ceiling)) = self.id_range(keys::ARTIFACT, &f.created)? else {
            return Ok(empty());
        };
        let start = start_at(after).min(ceiling);
        self.walk(indexes, start, floor, page_size, |id| {
            let Some(a) = self.get::<Artifact>(&keys::artifact(id))? else {
                return Ok(None);
            };
            if self.unflushed.created(id) {
                return Ok(None);
            }
            let keep = a.namespace == ns
                && f.state.is_none_or(|s| a.state == s as i32)
                && f.artifact_type.as_ref().is_none_or(|t| &a.r#type == t)
                && f.created.contains(created_ms(a.create_time.as_ref()));
            Ok(keep.then_some(a))
        })
    }

    /// The largest ID at or below `at_most` in an ID-ordered index.
    fn seek(&self, prefix: &[u8], at_most: i64) -> Result<Option<i64>> {
        if at_most < 1 {
            return Ok(None);
        }
        match self.tree.range(keys::with_rev_id(prefix, at_most)..).next() {
            Some(item) => {
                let (k, _) = item?;
                if k.starts_with(prefix) {
                    Ok(Some(keys::rev_id_suffix(&k)?))
                } else {
                    Ok(None)
                }
            }
            None => Ok(None),
        }
    }

    /// The ID range of a created-time range, by binary search over every
    /// record of a kind (`kind`: `keys::EXECUTION` or `keys::ARTIFACT`), in any
    /// namespace: IDs and creation times are allocated together for all
    /// namespaces, so the bounds found hold for each one's subset, and one
    /// seek per probe reads the ID and its record. `Some((1, i64::MAX))` when
    /// the range is unbounded; None when no record can match.
    fn id_range(&self, kind: u8, range: &TimeRange) -> Result<Option<(i64, i64)>> {
        if range.is_unbounded() {
            return Ok(Some((1, i64::MAX)));
        }
        let at_most = |x: i64| -> Result<Option<(i64, i64)>> {
            match self.record_at_most(kind, x)? {
                Some((id, v)) => Ok(Some((id, super::record_create_ms(kind, &v)?))),
                None => Ok(None),
            }
        };
        let Some((max_id, _)) = at_most(i64::MAX)? else {
            return Ok(None);
        };
        query::id_range(range, max_id, at_most)
    }

    /// Walks the intersection of ID-ordered indexes downwards from `start`
    /// (inclusive) to `floor`, keeping what `load` returns, until the page is
    /// full, the indexes end or the examine budget runs out.
    fn walk<T>(
        &self,
        mut indexes: Vec<Index>,
        start: i64,
        floor: i64,
        page_size: usize,
        mut load: impl FnMut(i64) -> Result<Option<T>>,
    ) -> Result<Page<T>> {
        let mut items = Vec::new();
        let mut budget = EXAMINE_BUDGET;
        let mut at = start;
        loop {
            let step =
                query::next_common(indexes.len(), at, floor, &mut budget, |i, x| match indexes
                    .get_mut(i)
                {
                    Some(index) => index.seek(self, x),
                    None => Ok(None),
                })?;
            match step {
                Step::End => {
                    return Ok(Page {
                        items,
                        next_token: None,
                    })
                }
                // The next page starts at the token minus one.
                Step::OutOfBudget(at) => {
                    return Ok(Page {
                        items,
                        next_token: Some(at.saturating_add(1)),
                    })
                }
                Step::Found(id) => {
                    if let Some(t) = load(id)? {
                        items.push(t);
                    }
                    if items.len() >= page_size {
                        // A token only when the first index goes on.
                        let more = match indexes.first_mut() {
                            Some(index) => index.seek(self, id - 1)?.is_some_and(|n| n >= floor),
                            None => false,
                        };
                        return Ok(Page {
                            items,
                            next_token: more.then_some(id),
                        });
                    }
                    at = id - 1;
                }
            }
        }
    }

    /// The lineage of an artifact or execution (of any namespace: events never
    /// cross namespaces).
    pub fn lineage(&self, start: Node, dirs: &[Dir], bounds: Bounds) -> Result<LineageResult> {
        match start {
            Node::Artifact(id) => self.artifact(id, None).map(|_| ()),
            Node::Execution(id) => self.execution(id, None).map(|_| ()),
        }?;
        let walk = lineage::traverse(&EventGraph(self), start, dirs, bounds)?;
        let mut out = LineageResult {
            events: walk.events,
            truncated: walk.truncated,
            ..Default::default()
        };
        for node in walk.nodes {
            match node {
                Node::Artifact(id) => {
                    if let Some(a) = self.get::<Artifact>(&keys::artifact(id))? {
                        out.artifacts.push(a);
                    }
                }
                Node::Execution(id) => {
                    if let Some(e) = self.get::<Execution>(&keys::execution(id))? {
                        out.executions.push(e);
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The event indexes as a lineage graph.
struct EventGraph<'a>(&'a Store);

impl Graph for EventGraph<'_> {
    fn edges(&self, node: Node, dir: Dir) -> Result<Edges<'_>> {
        let t = lineage::edge_type(node, dir);
        let store = self.0;
        Ok(match node {
            Node::Execution(id) => {
                Box::new(store.events_of_execution_typed(id, t)?.into_iter().map(Ok))
            }
            Node::Artifact(id) => Box::new(
                store
                    .tree
                    .scan_prefix(keys::events_of_artifact_typed(id, t as i32))
                    .filter_map(move |item| {
                        item.map_err(Error::from)
                            .and_then(|(k, _)| store.event_of_index_entry(&k))
                            .transpose()
                    }),
            ),
        })
    }
}

/// An ID-ordered index a list walks: the entries under one key prefix, or
/// the union of several (a namespace's records are the union of its
/// per-state indexes, which hold each record once).
struct Index {
    prefixes: Vec<Vec<u8>>,
    /// Per prefix, the last seek: (at most, the ID found). A walk seeks
    /// downwards, so most prefixes of a union answer from here.
    last: Vec<Option<(i64, Option<i64>)>>,
}

impl Index {
    fn one(prefix: Vec<u8>) -> Index {
        Index::any_of(vec![prefix])
    }

    fn any_of(prefixes: Vec<Vec<u8>>) -> Index {
        let last = vec![None; prefixes.len()];
        Index { prefixes, last }
    }

    /// The largest ID at or below `at_most` in any of the prefixes.
    fn seek(&mut self, store: &Store, at_most: i64) -> Result<Option<i64>> {
        let mut best = None;
        for (prefix, last) in self.prefixes.iter().zip(self.last.iter_mut()) {
            let found = match *last {
                // What the last seek found is still the answer when it is at
                // or below this one's bound, which is at or below the last's.
                Some((asked, found))
                    if at_most <= asked && found.is_none_or(|id| id <= at_most) =>
                {
                    found
                }
                _ => {
                    let found = store.seek(prefix, at_most)?;
                    *last = Some((at_most, found));
                    found
                }
            };
            best = best.max(found);
        }
        Ok(best)
    }
}

/// The indexes of the filters given, or the kind's by-namespace index when
/// none was.
fn indexes_or(prefixes: Vec<Vec<u8>>, by_ns: impl FnOnce() -> Index) -> Vec<Index> {
    if prefixes.is_empty() {
        vec![by_ns()]
    } else {
        prefixes.into_iter().map(Index::one).collect()
    }
}

fn empty<T>() -> Page<T> {
    Page {
        items: Vec::new(),
        next_token: None,
    }
}

/// The first ID a page may hold: below the token's, or the newest.
fn start_at(after: Option<i64>) -> i64 {
    match after {
        Some(id) => id.saturating_sub(1),
        None => i64::MAX,
    }
}

/// Prefixes a NOT_FOUND message with the request field it came from.
fn field_error(e: Error, field: &str) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(format!("{field}: {m}")),
        other => other,
    }
}

fn put_context_tx(
    tx: &super::Tx,
    c: &Context,
    now: i64,
    i: usize,
    ids: &mut Ids<'_>,
) -> TxResult<i64> {
    let field = format!("contexts[{i}]");
    let ns = c.namespace.as_str();
    if c.id == 0 {
        let by_name = keys::context_by_name(ns, &c.r#type, &c.name);
        if let Some(v) = tx.get(&by_name)? {
            return keys::read_u64(&v, 0)
                .map(|id| id as i64)
                .or_else(super::abort);
        }
        let mut c = c.clone();
        c.id = ids.take()?;
        c.create_time = Some(timestamp(now));
        tx.set(by_name, &(c.id as u64).to_be_bytes())?;
        tx.set(
            keys::with_rev_id(&keys::context_by_ns_prefix(ns), c.id),
            &[],
        )?;
        tx.set(
            keys::with_rev_id(&keys::context_by_type_prefix(ns, &c.r#type), c.id),
            &[],
        )?;
        put(tx, keys::context(c.id), &c)?;
        return Ok(c.id);
    }
    let Some(old) = tx_get::<Context>(tx, &keys::context(c.id))? else {
        return super::abort(not_found(&format!("{field}.id: context"), c.id, Some(ns)));
    };
    if old.namespace != ns {
        return super::abort(not_found(&format!("{field}.id: context"), c.id, Some(ns)));
    }
    for (given, stored, name) in [
        (&c.r#type, &old.r#type, "type"),
        (&c.name, &old.name, "name"),
    ] {
        if !given.is_empty() && given != stored {
            return super::abort(Error::precondition(format!(
                "{field}.{name} cannot change once set (it is {stored:?})"
            )));
        }
    }
    let mut updated = old;
    updated.properties = c.properties.clone();
    put(tx, keys::context(updated.id), &updated)?;
    Ok(updated.id)
}
