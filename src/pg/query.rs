//! Records by ID, contexts, filtered lists and lineage.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::pool::Sql;
use prost::Message;
use tokio_postgres::types::ToSql;

use super::pool::{Conn, Params};
use super::rows::{
    col, events_of, field_error, get_artifact, get_context, get_execution, lock_and_ids,
    outputs_of, EVENTS_OF_ARTIFACT, EVENTS_OF_ARTIFACT_TYPED, EVENTS_OF_EXECUTION,
    EVENTS_OF_EXECUTION_TYPED,
};
use super::PgStore;
use crate::clock::timestamp;
use crate::domain::{
    decode, not_found, ArtifactFilter, ContextFilter, ExecutionFilter, LineageResult, Page,
};
use crate::error::{Error, Result};
use crate::lineage::{self, Bounds, Dir, Edges, Graph, Node};
use crate::proto::{Artifact, Context, Event, Execution};

impl PgStore {
    pub(super) fn execution(&self, id: i64, ns: Option<&str>) -> Result<Execution> {
        match get_execution(&mut self.conn()?, id)? {
            Some(e) if ns.is_none_or(|ns| e.namespace == ns) => Ok(e),
            _ => Err(not_found("execution", id, ns)),
        }
    }

    pub(super) fn artifact(&self, id: i64, ns: Option<&str>) -> Result<Artifact> {
        match get_artifact(&mut self.conn()?, id)? {
            Some(a) if ns.is_none_or(|ns| a.namespace == ns) => Ok(a),
            _ => Err(not_found("artifact", id, ns)),
        }
    }

    pub(super) fn outputs_of(&self, exec_id: i64) -> Result<BTreeMap<String, Vec<Artifact>>> {
        outputs_of(&mut self.conn()?, exec_id)
    }

    pub(super) fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        events_of(&mut self.conn()?, EVENTS_OF_EXECUTION, &[&exec_id])
    }

    pub(super) fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        events_of(&mut self.conn()?, EVENTS_OF_ARTIFACT, &[&artifact_id])
    }

    pub(super) fn put_contexts(&self, contexts: Vec<Context>) -> Result<Vec<i64>> {
        let now = self.clock.now_ms();
        let mut c = self.conn()?;
        let mut tx = c.transaction()?;
        let new = contexts.iter().filter(|c| c.id == 0).count();
        let mut ids = lock_and_ids(&mut tx, Vec::new(), new)?;
        let mut out = Vec::with_capacity(contexts.len());
        for (i, ctx) in contexts.iter().enumerate() {
            let field = format!("contexts[{i}]");
            let ns = ctx.namespace.as_str();
            if ctx.id == 0 {
                let mut new = ctx.clone();
                new.id = ids.take()?;
                new.create_time = Some(timestamp(now));
                // A concurrent creator of the same name wins; we take its ID.
                let inserted = tx.query_opt(
                    "INSERT INTO contexts (id, namespace, type, name, record) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (namespace, type, name) DO NOTHING \
                     RETURNING id",
                    &[&new.id, &ns, &new.r#type, &new.name, &new.encode_to_vec()],
                )?;
                let id = match inserted {
                    Some(r) => col(&r, 0)?,
                    None => col(
                        &tx.query_one(
                            "SELECT id FROM contexts WHERE namespace = $1 AND type = $2 AND name = $3",
                            &[&ns, &ctx.r#type, &ctx.name],
                        )?,
                        0,
                    )?,
                };
                out.push(id);
                continue;
            }
            let old = match tx.query_opt(
                "SELECT record FROM contexts WHERE id = $1 FOR UPDATE",
                &[&ctx.id],
            )? {
                Some(r) => Some(decode::<Context>(col::<&[u8]>(&r, 0)?)?),
                None => None,
            };
            let Some(old) = old.filter(|o| o.namespace == ns) else {
                return Err(not_found(&format!("{field}.id: context"), ctx.id, Some(ns)));
            };
            for (given, stored, name) in [
                (&ctx.r#type, &old.r#type, "type"),
                (&ctx.name, &old.name, "name"),
            ] {
                if !given.is_empty() && given != stored {
                    return Err(Error::precondition(format!(
                        "{field}.{name} cannot change once set (it is {stored:?})"
                    )));
                }
            }
            let mut updated = old;
            updated.properties = ctx.properties.clone();
            tx.execute(
                "UPDATE contexts SET record = $2 WHERE id = $1",
                &[&updated.id, &updated.encode_to_vec()],
            )?;
            out.push(updated.id);
        }
        tx.commit()?;
        Ok(out)
    }

    pub(super) fn context(&self, id: i64, ns: Option<&str>) -> Result<Context> {
        match get_context(&mut self.conn()?, id)? {
            Some(c) if ns.is_none_or(|ns| c.namespace == ns) => Ok(c),
            _ => Err(not_found("context", id, ns)),
        }
    }

    pub(super) fn list_contexts(
        &self,
        f: &ContextFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Context>> {
        let mut params: Params = Vec::new();
        let mut conds = vec![format!(
            "namespace = {}",
            param(&mut params, f.namespace.clone())
        )];
        if let Some(t) = &f.context_type {
            conds.push(format!("type = {}", param(&mut params, t.clone())));
        }
        self.list(
            &mut self.conn()?,
            "contexts",
            params,
            conds,
            page_size,
            after,
        )
    }

    pub(super) fn list_executions(
        &self,
        f: &ExecutionFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Execution>> {
        let ns = f.namespace.as_str();
        let mut c = self.conn()?;
        let mut params: Params = Vec::new();
        let mut conds = vec![format!(
            "namespace = {}",
            param(&mut params, ns.to_string())
        )];
        if let Some(k) = &f.cache_key {
            conds.push(format!("cache_key = {}", param(&mut params, k.to_string())));
        }
        if let Some(cid) = f.context_id {
            context_in(&mut c, cid, ns)?;
            conds.push(format!(
                "id IN (SELECT execution_id FROM associations WHERE context_id = {})",
                param(&mut params, cid)
            ));
        }
        if let Some(comp) = &f.component {
            conds.push(format!("component = {}", param(&mut params, comp.clone())));
        }
        if let Some(s) = f.state {
            conds.push(format!("state = {}", param(&mut params, s as i32)));
        }
        created_conditions(&mut params, &mut conds, &f.created);
        self.list(&mut c, "executions", params, conds, page_size, after)
    }

    pub(super) fn list_artifacts(
        &self,
        f: &ArtifactFilter,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<Artifact>> {
        let ns = f.namespace.as_str();
        let mut c = self.conn()?;
        let mut params: Params = Vec::new();
        let mut conds = vec![format!(
            "namespace = {}",
            param(&mut params, ns.to_string())
        )];
        if let Some(cid) = f.context_id {
            context_in(&mut c, cid, ns)?;
            conds.push(format!(
                "id IN (SELECT artifact_id FROM attributions WHERE context_id = {})",
                param(&mut params, cid)
            ));
        }
        if let Some(t) = &f.artifact_type {
            conds.push(format!("type = {}", param(&mut params, t.clone())));
        }
        if let Some(s) = f.state {
            conds.push(format!("state = {}", param(&mut params, s as i32)));
        }
        created_conditions(&mut params, &mut conds, &f.created);
        self.list(&mut c, "artifacts", params, conds, page_size, after)
    }

    pub(super) fn lineage(
        &self,
        start: Node,
        dirs: &[Dir],
        bounds: Bounds,
    ) -> Result<LineageResult> {
        match start {
            Node::Artifact(id) => self.artifact(id, None).map(|_| ()),
            Node::Execution(id) => self.execution(id, None).map(|_| ()),
        }?;
        let mut c = self.conn()?;
        let walk = {
            let g = EventGraph(RefCell::new(&mut c));
            lineage::traverse(&g, start, dirs, bounds)?
        };
        let mut out = LineageResult {
            events: walk.events,
            truncated: walk.truncated,
            ..Default::default()
        };
        for node in walk.nodes {
            match node {
                Node::Artifact(id) => out.artifacts.extend(get_artifact(&mut c, id)?),
                Node::Execution(id) => out.executions.extend(get_execution(&mut c, id)?),
            }
        }
        Ok(out)
    }

    fn list<T: Message + Default>(
        &self,
        c: &mut impl Sql,
        table: &str,
        mut params: Params,
        mut conditions: Vec<String>,
        page_size: usize,
        after: Option<i64>,
    ) -> Result<Page<T>> {
        if let Some(after) = after {
            params.push(Box::new(after));
            conditions.push(format!("id < ${}", params.len()));
        }
        let page_size = page_size.max(1);
        params.push(Box::new(
            i64::try_from(page_size)
                .unwrap_or(i64::MAX)
                .saturating_add(1),
        ));
        let sql = format!(
            "SELECT id, record FROM {table} WHERE {} ORDER BY id DESC LIMIT ${}",
            conditions.join(" AND "),
            params.len()
        );
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let rows = c.query(sql.as_str(), &refs)?;
        let more = rows.len() > page_size;
        let mut items = Vec::with_capacity(page_size.min(rows.len()));
        let mut last = None;
        for r in rows.iter().take(page_size) {
            last = Some(col::<i64>(r, 0)?);
            items.push(decode(col::<&[u8]>(r, 1)?)?);
        }
        Ok(Page {
            items,
            next_token: if more { last } else { None },
        })
    }
}

/// NOT_FOUND (naming `context_id`) unless context `cid` exists in `ns`.
fn context_in(c: &mut impl Sql, cid: i64, ns: &str) -> Result<()> {
    match get_context(c, cid)? {
        Some(ctx) if ctx.namespace == ns => Ok(()),
        _ => Err(field_error(
            not_found("context", cid, Some(ns)),
            "context_id",
        )),
    }
}

/// Pushes a parameter and returns its placeholder.
fn param(params: &mut Params, v: impl ToSql + Sync + 'static) -> String {
    params.push(Box::new(v));
    format!("${}", params.len())
}

fn created_conditions(
    params: &mut Params,
    conditions: &mut Vec<String>,
    r: &crate::query::TimeRange,
) {
    if let Some(a) = r.after_ms {
        let p = param(params, a);
        conditions.push(format!("created_ms >= {p}"));
    }
    if let Some(b) = r.before_ms {
        let p = param(params, b);
        conditions.push(format!("created_ms < {p}"));
    }
}

/// The event tables as a lineage graph (on one connection).
struct EventGraph<'a, 'p>(RefCell<&'a mut Conn<'p>>);

impl Graph for EventGraph<'_, '_> {
    fn edges(&self, node: Node, dir: Dir) -> Result<Edges<'_>> {
        let t = lineage::edge_type(node, dir) as i32;
        let mut c = self.0.borrow_mut();
        let events = match node {
            Node::Execution(id) => events_of(&mut **c, EVENTS_OF_EXECUTION_TYPED, &[&id, &t])?,
            Node::Artifact(id) => events_of(&mut **c, EVENTS_OF_ARTIFACT_TYPED, &[&id, &t])?,
        };
        Ok(Box::new(events.into_iter().map(Ok)))
    }
}
