//! The records and answers the storage trait (`backend::Backend`) speaks,
//! owned by neither backend, and the rules of a write both backends apply
//! (`rules`).

pub mod replay;
mod rules;

use std::collections::BTreeMap;

use prost::Message;

use crate::error::{Error, Result};
use crate::key::CacheKey;
use crate::proto::{Artifact, ArtifactState, Event, Execution, ExecutionState};
use crate::query::TimeRange;
use crate::reservations::Holder;

pub use rules::*;

/// Output artifacts by output name, in index order.
pub type Outputs = BTreeMap<String, Vec<Artifact>>;

/// A validated PutExecution.
#[derive(Debug, Clone)]
pub struct ExecutionWrite {
    /// The execution as the caller sent it, namespace filled in; id 0 = create.
    pub execution: Execution,
    /// The key of `execution.interface`, when it has one.
    pub key: Option<CacheKey>,
    /// (output name, artifact): artifact.id 0 = new.
    pub outputs: Vec<(String, Artifact)>,
    pub skip_publish: bool,
    /// Who claims to hold the key's reservation (empty: not said); see
    /// `reservations::released_by_write`.
    pub reservation_owner: String,
    /// A digest of the request, to tell a retry from a reuse of its external_id.
    pub digest: [u8; 32],
    /// Contexts to associate the execution with (and attribute its input and
    /// output artifacts to), deduplicated.
    pub context_ids: Vec<i64>,
}

/// What a PutExecution did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionWritten {
    pub execution_id: i64,
    pub output_artifact_ids: Vec<i64>,
    pub cache_key: String,
    pub published: bool,
    /// True when this write released the key's reservation.
    pub reservation_released: bool,
}

/// A servable hit: the original execution and its outputs by name.
#[derive(Debug, Clone)]
pub enum Hit {
    Decoded {
        execution: Box<Execution>,
        outputs: Outputs,
    },
    /// As the lookup reply's fields 3 and 4, built from a stored hit record's
    /// bytes (the sled store's hit records): a reply carries them as they are.
    Encoded(prost::bytes::Bytes),
}

impl Hit {
    /// The execution and its outputs, decoded.
    pub fn decoded(self) -> Result<(Execution, Outputs)> {
        match self {
            Hit::Decoded { execution, outputs } => Ok((*execution, outputs)),
            Hit::Encoded(fields) => {
                let reply = crate::proto::GetCachedExecutionResponse::decode(fields)
                    .map_err(|e| Error::Internal(format!("an encoded hit does not decode: {e}")))?;
                let outputs = reply
                    .output_artifacts
                    .into_iter()
                    .map(|(name, list)| (name, list.artifacts))
                    .collect();
                Ok((reply.execution.unwrap_or_default(), outputs))
            }
        }
    }
}

/// The outcome of a cache lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    Hit(Hit),
    Miss { reason: String },
}

/// The outcome of a lookup that settles the key's reservation on a miss.
#[derive(Debug, Clone)]
pub enum Claimed {
    Hit(Hit),
    /// The caller holds the reservation now (durably); why it missed.
    Granted {
        holder: Holder,
        reason: String,
    },
    /// Someone else holds it; why it missed.
    Held {
        holder: Holder,
        reason: String,
    },
    /// Nobody holds it, and the caller did not ask for it.
    Miss {
        reason: String,
    },
}

impl From<Lookup> for Claimed {
    fn from(l: Lookup) -> Claimed {
        match l {
            Lookup::Hit(hit) => Claimed::Hit(hit),
            Lookup::Miss { reason } => Claimed::Miss { reason },
        }
    }
}

/// A page of records, newest first, and the token of the next page.
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<i64>,
}

/// Filters of ListExecutions.
#[derive(Debug, Clone, Default)]
pub struct ExecutionFilter {
    pub namespace: String,
    pub component: Option<String>,
    pub state: Option<ExecutionState>,
    pub cache_key: Option<CacheKey>,
    pub context_id: Option<i64>,
    pub created: TimeRange,
}

/// Filters of ListArtifacts.
#[derive(Debug, Clone, Default)]
pub struct ArtifactFilter {
    pub namespace: String,
    pub artifact_type: Option<String>,
    pub state: Option<ArtifactState>,
    pub context_id: Option<i64>,
    pub created: TimeRange,
}

/// Filters of ListContexts.
#[derive(Debug, Clone, Default)]
pub struct ContextFilter {
    pub namespace: String,
    pub context_type: Option<String>,
}

/// What GetLineage returns.
#[derive(Debug, Clone, Default)]
pub struct LineageResult {
    pub artifacts: Vec<Artifact>,
    pub executions: Vec<Execution>,
    pub events: Vec<Event>,
    pub truncated: bool,
}

/// What InvalidateCache selects.
#[derive(Debug, Clone)]
pub enum Selector {
    Key(CacheKey),
    Execution(i64),
    Artifact(i64),
    Component(String),
}

/// What a prune deleted (or would delete, on a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    pub executions: i64,
    pub events: i64,
    pub artifacts: i64,
    pub cache_entries: i64,
}
