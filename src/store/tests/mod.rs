//! The store's unit tests, by subject, and the helpers they share.

use super::*;
use crate::clock::SystemClock;
use crate::domain::{ArtifactFilter, ExecutionFilter};
use crate::proto::{ArtifactIds, OutputArtifact, PutExecutionRequest, TaskInterface};
use crate::query::TimeRange;
use crate::validate::{execution_write, Limits};

mod eviction;
mod hits;
mod layout;
mod puts;

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreConfig::default(), Arc::new(SystemClock)).unwrap()
}

fn write(component: &str, inputs: &[i64], external_id: &str) -> ExecutionWrite {
    write_in("", component, inputs, external_id)
}

fn write_in(ns: &str, component: &str, inputs: &[i64], external_id: &str) -> ExecutionWrite {
    let ti = TaskInterface {
        component: component.into(),
        input_artifacts: [(
            "in".to_string(),
            ArtifactIds {
                ids: inputs.to_vec(),
            },
        )]
        .into(),
        output_artifacts: [("out".to_string(), "system.Dataset".to_string())].into(),
        ..Default::default()
    };
    let req = PutExecutionRequest {
        execution: Some(Execution {
            namespace: ns.into(),
            interface: Some(ti),
            external_id: external_id.into(),
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        outputs: vec![OutputArtifact {
            name: "out".into(),
            artifact: Some(Artifact {
                uri: format!("mem://{component}"),
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    execution_write(req, &Limits::default()).unwrap()
}

/// A lookup's execution and outputs, decoded; None on a miss.
fn served(lookup: Lookup) -> Option<(Execution, domain::Outputs)> {
    match lookup {
        Lookup::Hit(hit) => Some(hit.decoded().unwrap()),
        Lookup::Miss { .. } => None,
    }
}

fn hit_outputs(store: &Store, w: &ExecutionWrite) -> Option<Vec<i64>> {
    let (_, outputs) = served(
        store
            .lookup("default", w.key.as_ref().unwrap(), None)
            .unwrap(),
    )?;
    Some(outputs["out"].iter().map(|a| a.id).collect())
}

/// The hit of `key` in the hits file, decoded.
fn stored_hit(store: &Store, key: &CacheKey) -> Option<(Execution, domain::Outputs)> {
    let hit = store.hot.get_stored("default", key, store.now_ms(), None)?;
    served(Lookup::Hit(Hit::Encoded(hit.fields.clone())))
}

/// An update that only completes execution `id`.
fn completion(id: i64) -> ExecutionWrite {
    let req = PutExecutionRequest {
        execution: Some(Execution {
            id,
            state: ExecutionState::Complete as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    execution_write(req, &Limits::default()).unwrap()
}
