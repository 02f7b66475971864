//! CacheService.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use super::Shared;
use crate::error::{Error, Result};
use crate::key::{self, CacheKey};
use crate::policy::{self, Decision};
use crate::proto::cache_service_server::CacheService;
use crate::proto::get_cached_execution_request::Target;
use crate::proto::{
    ArtifactList, ComputeCacheKeyRequest, ComputeCacheKeyResponse, GetCachedExecutionRequest,
    GetCachedExecutionResponse, Outcome,
};
use crate::store::Lookup;
use crate::validate;

pub struct Cache {
    pub shared: Shared,
}

#[tonic::async_trait]
impl CacheService for Cache {
    async fn compute_cache_key(
        &self,
        request: Request<ComputeCacheKeyRequest>,
    ) -> Result<Response<ComputeCacheKeyResponse>, Status> {
        let ti = request
            .into_inner()
            .interface
            .ok_or_else(|| Error::invalid("interface is required"))?;
        let key = validate::interface(&ti, "interface", &self.shared.limits)?;
        let canonical_fields = key::readable_fields(&ti)?
            .into_iter()
            .map(|(path, value)| format!("{path}={value}"))
            .collect();
        Ok(Response::new(ComputeCacheKeyResponse {
            cache_key: key.to_string(),
            canonical_fields,
        }))
    }

    async fn get_cached_execution(
        &self,
        request: Request<GetCachedExecutionRequest>,
    ) -> Result<Response<GetCachedExecutionResponse>, Status> {
        let req = request.into_inner();
        let ns = validate::namespace(&req.namespace)?;
        let key: CacheKey = match &req.target {
            Some(Target::Interface(ti)) => {
                validate::interface(ti, "interface", &self.shared.limits)?
            }
            Some(Target::CacheKey(k)) => validate::cache_key_hex(k, "cache_key")?,
            None => return Err(Error::invalid("one of interface or cache_key is required").into()),
        };
        let decision = policy::decide(req.policy.as_ref())?;
        let max_staleness = policy::duration_ms(
            req.policy.as_ref().and_then(|p| p.max_staleness.as_ref()),
            "policy.max_staleness",
        )?;
        let mut resp = GetCachedExecutionResponse {
            cache_key: key.to_string(),
            ..Default::default()
        };
        if let Decision::Disabled(reason) = decision {
            resp.outcome = Outcome::Disabled as i32;
            resp.reason = reason;
            return Ok(Response::new(resp));
        }
        let record = req.record_cached_execution;
        let (lookup, cached) = self
            .shared
            .blocking(move |store| {
                let lookup = store.lookup(&ns, &key, max_staleness)?;
                let cached = match (&lookup, record) {
                    (Lookup::Hit { execution, outputs }, true) => {
                        Some(store.record_cached(execution, outputs)?)
                    }
                    _ => None,
                };
                Ok((lookup, cached))
            })
            .await?;
        match lookup {
            Lookup::Hit { execution, outputs } => {
                resp.outcome = Outcome::Hit as i32;
                resp.execution = Some(*execution);
                resp.output_artifacts = artifact_lists(outputs);
                resp.cached_execution = cached;
            }
            Lookup::Miss { reason } => {
                resp.outcome = Outcome::Miss as i32;
                resp.reason = reason;
            }
        }
        Ok(Response::new(resp))
    }
}

pub fn artifact_lists(
    outputs: BTreeMap<String, Vec<crate::proto::Artifact>>,
) -> BTreeMap<String, ArtifactList> {
    outputs
        .into_iter()
        .map(|(name, artifacts)| (name, ArtifactList { artifacts }))
        .collect()
}
