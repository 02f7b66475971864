//! MetadataStoreService.

use tonic::{Request, Response, Status};

use super::Shared;
use crate::auth::Caller;
use crate::domain::{ArtifactFilter, ContextFilter, ExecutionFilter};
use crate::error::{Error, Result};
use crate::lineage::{self, Node};
use crate::proto::get_lineage_request::Start;
use crate::proto::metadata_store_service_server::MetadataStoreService;
use crate::proto::{
    ArtifactState, ExecutionState, GetArtifactsRequest, GetArtifactsResponse, GetContextsRequest,
    GetContextsResponse, GetEventsRequest, GetEventsResponse, GetExecutionsRequest,
    GetExecutionsResponse, GetLineageRequest, GetLineageResponse, ListArtifactsRequest,
    ListArtifactsResponse, ListContextsRequest, ListContextsResponse, ListExecutionsRequest,
    ListExecutionsResponse, PruneExecutionsRequest, PruneExecutionsResponse, PutArtifactsRequest,
    PutArtifactsResponse, PutContextsRequest, PutContextsResponse, PutExecutionRequest,
    PutExecutionResponse,
};
use crate::validate;

pub struct Metadata {
    pub shared: Shared,
}

/// The namespace filter of a Get call: empty = any namespace (the caller's
/// access is then checked on each record).
fn optional_namespace(caller: &Caller, ns: &str) -> Result<Option<String>> {
    if ns.is_empty() {
        Ok(None)
    } else {
        caller.namespace(ns).map(Some)
    }
}

#[tonic::async_trait]
impl MetadataStoreService for Metadata {
    async fn put_artifacts(
        &self,
        request: Request<PutArtifactsRequest>,
    ) -> Result<Response<PutArtifactsResponse>, Status> {
        let caller = Caller::of(&request);
        let limits = self.shared.limits.clone();
        let artifacts = request
            .into_inner()
            .artifacts
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                let a = validate::artifact(a, &format!("artifacts[{i}]"), &limits)?;
                caller.allow(&a.namespace)?;
                Ok(a)
            })
            .collect::<Result<Vec<_>>>()?;
        let artifact_ids = self
            .shared
            .write(move |s| s.put_artifacts(artifacts))
            .await?;
        Ok(Response::new(PutArtifactsResponse { artifact_ids }))
    }

    async fn get_artifacts(
        &self,
        request: Request<GetArtifactsRequest>,
    ) -> Result<Response<GetArtifactsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = optional_namespace(&caller, &req.namespace)?;
        let ids = validate::ids(&req.ids, "ids", &self.shared.limits)?;
        let artifacts = self
            .shared
            .read(move |s| {
                ids.iter()
                    .map(|id| s.artifact(*id, ns.as_deref()))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        for a in &artifacts {
            caller.visible(&a.namespace, "artifact", a.id)?;
        }
        Ok(Response::new(GetArtifactsResponse { artifacts }))
    }

    async fn list_artifacts(
        &self,
        request: Request<ListArtifactsRequest>,
    ) -> Result<Response<ListArtifactsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter = ArtifactFilter {
            namespace: caller.namespace(&req.namespace)?,
            artifact_type: (!req.r#type.is_empty()).then(|| req.r#type.clone()),
            state: match req.state {
                0 => None,
                s => Some(
                    ArtifactState::try_from(s)
                        .map_err(|_| Error::invalid(format!("state: unknown value {s}")))?,
                ),
            },
            context_id: validate::optional_id(req.context_id, "context_id")?,
            created: validate::created_range(
                req.created_after.as_ref(),
                req.created_before.as_ref(),
            )?,
        };
        let size = validate::page_size(req.page_size, &self.shared.limits)?;
        let after = validate::parse_page_token(&req.page_token)?;
        let page = self
            .shared
            .read(move |s| s.list_artifacts(&filter, size, after))
            .await?;
        Ok(Response::new(ListArtifactsResponse {
            artifacts: page.items,
            next_page_token: validate::page_token(page.next_token),
        }))
    }

    async fn put_execution(
        &self,
        request: Request<PutExecutionRequest>,
    ) -> Result<Response<PutExecutionResponse>, Status> {
        let caller = Caller::of(&request);
        let write = validate::execution_write(request.into_inner(), &self.shared.limits)?;
        let ns = write.execution.namespace.clone();
        caller.allow(&ns)?;
        let w = self.shared.write(move |s| s.put_execution(&write)).await?;
        if w.published || w.reservation_released {
            // Wake the key's waiters: they answer HIT, or one takes it over.
            if let Ok(key) = w.cache_key.parse::<crate::key::CacheKey>() {
                self.shared.waiters.notify(&ns, &key);
            }
        }
        Ok(Response::new(PutExecutionResponse {
            execution_id: w.execution_id,
            output_artifact_ids: w.output_artifact_ids,
            cache_key: w.cache_key,
            published: w.published,
            reservation_released: w.reservation_released,
        }))
    }

    async fn get_executions(
        &self,
        request: Request<GetExecutionsRequest>,
    ) -> Result<Response<GetExecutionsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = optional_namespace(&caller, &req.namespace)?;
        let ids = validate::ids(&req.ids, "ids", &self.shared.limits)?;
        let executions = self
            .shared
            .read(move |s| {
                ids.iter()
                    .map(|id| s.execution(*id, ns.as_deref()))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        for e in &executions {
            caller.visible(&e.namespace, "execution", e.id)?;
        }
        Ok(Response::new(GetExecutionsResponse { executions }))
    }

    async fn list_executions(
        &self,
        request: Request<ListExecutionsRequest>,
    ) -> Result<Response<ListExecutionsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter = ExecutionFilter {
            namespace: caller.namespace(&req.namespace)?,
            component: (!req.component.is_empty()).then(|| req.component.clone()),
            state: match req.state {
                0 => None,
                s => Some(
                    ExecutionState::try_from(s)
                        .map_err(|_| Error::invalid(format!("state: unknown value {s}")))?,
                ),
            },
            cache_key: match req.cache_key.as_str() {
                "" => None,
                k => Some(validate::cache_key_hex(k, "cache_key")?),
            },
            context_id: validate::optional_id(req.context_id, "context_id")?,
            created: validate::created_range(
                req.created_after.as_ref(),
                req.created_before.as_ref(),
            )?,
        };
        let size = validate::page_size(req.page_size, &self.shared.limits)?;
        let after = validate::parse_page_token(&req.page_token)?;
        let page = self
            .shared
            .read(move |s| s.list_executions(&filter, size, after))
            .await?;
        Ok(Response::new(ListExecutionsResponse {
            executions: page.items,
            next_page_token: validate::page_token(page.next_token),
        }))
    }

    async fn put_contexts(
        &self,
        request: Request<PutContextsRequest>,
    ) -> Result<Response<PutContextsResponse>, Status> {
        let caller = Caller::of(&request);
        let limits = self.shared.limits.clone();
        let contexts = request.into_inner().contexts;
        if contexts.len() > limits.max_interface_entries {
            return Err(Error::invalid(format!(
                "contexts has {} entries, over the limit of {} (max_interface_entries)",
                contexts.len(),
                limits.max_interface_entries
            ))
            .into());
        }
        let contexts = contexts
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let c = validate::context(c, &format!("contexts[{i}]"), &limits)?;
                caller.allow(&c.namespace)?;
                Ok(c)
            })
            .collect::<Result<Vec<_>>>()?;
        let context_ids = self.shared.write(move |s| s.put_contexts(contexts)).await?;
        Ok(Response::new(PutContextsResponse { context_ids }))
    }

    async fn get_contexts(
        &self,
        request: Request<GetContextsRequest>,
    ) -> Result<Response<GetContextsResponse>, Status> {
        let caller = Caller::of(&request);
        let ids = validate::ids(&request.into_inner().ids, "ids", &self.shared.limits)?;
        let contexts = self
            .shared
            .read(move |s| {
                ids.iter()
                    .map(|id| s.context(*id, None))
                    .collect::<Result<Vec<_>>>()
            })
            .await?;
        for c in &contexts {
            caller.visible(&c.namespace, "context", c.id)?;
        }
        Ok(Response::new(GetContextsResponse { contexts }))
    }

    async fn list_contexts(
        &self,
        request: Request<ListContextsRequest>,
    ) -> Result<Response<ListContextsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let filter = ContextFilter {
            namespace: caller.namespace(&req.namespace)?,
            context_type: (!req.r#type.is_empty()).then(|| req.r#type.clone()),
        };
        let size = validate::page_size(req.page_size, &self.shared.limits)?;
        let after = validate::parse_page_token(&req.page_token)?;
        let page = self
            .shared
            .read(move |s| s.list_contexts(&filter, size, after))
            .await?;
        Ok(Response::new(ListContextsResponse {
            contexts: page.items,
            next_page_token: validate::page_token(page.next_token),
        }))
    }

    async fn get_lineage(
        &self,
        request: Request<GetLineageRequest>,
    ) -> Result<Response<GetLineageResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let start = match req.start {
            Some(Start::ArtifactId(id)) => {
                Node::Artifact(validate::positive_id(id, "artifact_id")?)
            }
            Some(Start::ExecutionId(id)) => {
                Node::Execution(validate::positive_id(id, "execution_id")?)
            }
            None => {
                return Err(Error::invalid("one of artifact_id or execution_id is required").into())
            }
        };
        let dirs = lineage::directions(req.direction)?;
        let bounds = lineage::bounds(req.max_hops, req.max_nodes)?;
        let l = self
            .shared
            .read(move |s| s.lineage(start, &dirs, bounds))
            .await?;
        // Events never cross namespaces, so this checks the start's namespace.
        let (kind, id) = match start {
            Node::Artifact(id) => ("artifact", id),
            Node::Execution(id) => ("execution", id),
        };
        for ns in l
            .artifacts
            .iter()
            .map(|a| &a.namespace)
            .chain(l.executions.iter().map(|e| &e.namespace))
        {
            caller.visible(ns, kind, id)?;
        }
        Ok(Response::new(GetLineageResponse {
            artifacts: l.artifacts,
            executions: l.executions,
            events: l.events,
            truncated: l.truncated,
        }))
    }

    async fn get_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Result<Response<GetEventsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let exec_ids = validate::ids(&req.execution_ids, "execution_ids", &self.shared.limits)?;
        let art_ids = validate::ids(&req.artifact_ids, "artifact_ids", &self.shared.limits)?;
        let events = self
            .shared
            .read(move |s| {
                let mut events = Vec::new();
                for id in exec_ids {
                    caller.visible(&s.execution(id, None)?.namespace, "execution", id)?;
                    events.extend(s.events_of_execution(id)?);
                }
                for id in art_ids {
                    caller.visible(&s.artifact(id, None)?.namespace, "artifact", id)?;
                    events.extend(s.events_of_artifact(id)?);
                }
                events.sort_by(|a, b| {
                    (a.execution_id, a.r#type, &a.name, a.index, a.artifact_id).cmp(&(
                        b.execution_id,
                        b.r#type,
                        &b.name,
                        b.index,
                        b.artifact_id,
                    ))
                });
                events.dedup();
                Ok(events)
            })
            .await?;
        Ok(Response::new(GetEventsResponse { events }))
    }

    async fn prune_executions(
        &self,
        request: Request<PruneExecutionsRequest>,
    ) -> Result<Response<PruneExecutionsResponse>, Status> {
        let caller = Caller::of(&request);
        let req = request.into_inner();
        let ns = caller.namespace(&req.namespace)?;
        let older_than = crate::policy::duration_ms(req.older_than.as_ref(), "older_than")?
            .filter(|ms| *ms > 0)
            .ok_or_else(|| Error::invalid("older_than is required and must be positive"))?;
        let dry_run = req.dry_run;
        let p = self
            .shared
            .write(move |s| s.prune(&ns, older_than, dry_run))
            .await?;
        Ok(Response::new(PruneExecutionsResponse {
            executions_deleted: p.executions,
            events_deleted: p.events,
            artifacts_deleted: p.artifacts,
            cache_entries_deleted: p.cache_entries,
        }))
    }
}
