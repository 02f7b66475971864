//! The generated tasks: deterministic interfaces, lookups and puts.

use std::collections::BTreeMap;

use prost_types::value::Kind;
use prost_types::Value;
use stepcache::proto::get_cached_execution_request::Target;
use stepcache::proto::{
    Artifact, ArtifactIds, ContainerSpec, Execution, ExecutionState, GetCachedExecutionRequest,
    OutputArtifact, PutExecutionRequest, TaskInterface,
};

pub const NAMESPACE: &str = "default";
/// Input artifacts that generated tasks read.
const INPUT_POOL: usize = 1000;

pub fn num(x: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

pub fn text(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

/// Deterministic tasks: task `i` of `salt` always has the same interface, so a
/// preload (salt 0) can be looked up by a later process.
pub struct Gen {
    pub inputs: Vec<i64>,
}

impl Gen {
    /// A realistic interface: container spec, 3 parameters, 2 input artifacts,
    /// 2 declared outputs.
    pub fn interface(&self, i: u64, salt: u64) -> TaskInterface {
        let p = self.inputs.len() as u64;
        let component = format!("component-{}", i % 5);
        let ids = |j: u64| ArtifactIds {
            ids: vec![self.inputs[((2 * i + j) % p) as usize]],
        };
        let mut parameters = BTreeMap::from([
            ("learning_rate".to_string(), num((i % 1000) as f64 / 1000.0)),
            ("epochs".to_string(), num(10.0)),
            ("task".to_string(), text(format!("task-{i}"))),
        ]);
        if salt != 0 {
            parameters.insert("salt".into(), text(format!("{salt:016x}")));
        }
        TaskInterface {
            component: component.clone(),
            cache_version: "1".into(),
            container: Some(ContainerSpec {
                image: "ghcr.io/example/steps:1.4.2".into(),
                command: vec!["python".into(), "-m".into(), "steps".into()],
                args: vec!["--component".into(), component],
                env: [("PYTHONUNBUFFERED".to_string(), "1".to_string())].into(),
                ..Default::default()
            }),
            parameters,
            input_artifacts: [("in0".to_string(), ids(0)), ("in1".to_string(), ids(1))].into(),
            output_artifacts: [
                ("out0".to_string(), "system.Dataset".to_string()),
                ("out1".to_string(), "system.Model".to_string()),
            ]
            .into(),
            ..Default::default()
        }
    }

    pub fn lookup(ti: TaskInterface) -> GetCachedExecutionRequest {
        GetCachedExecutionRequest {
            namespace: NAMESPACE.into(),
            target: Some(Target::Interface(ti)),
            ..Default::default()
        }
    }

    /// A durable PutExecution COMPLETE with two new output artifacts.
    pub fn put(ti: TaskInterface, external_id: String, uri: &str) -> PutExecutionRequest {
        let out = |name: &str| OutputArtifact {
            name: name.into(),
            artifact: Some(Artifact {
                uri: format!("{uri}/{name}"),
                ..Default::default()
            }),
        };
        PutExecutionRequest {
            execution: Some(Execution {
                namespace: NAMESPACE.into(),
                external_id,
                interface: Some(ti),
                state: ExecutionState::Complete as i32,
                output_parameters: [("accuracy".to_string(), num(0.93))].into(),
                ..Default::default()
            }),
            outputs: vec![out("out0"), out("out1")],
            ..Default::default()
        }
    }

    pub fn preload_put(&self, i: u64) -> PutExecutionRequest {
        Self::put(
            self.interface(i, 0),
            format!("bench-{i}"),
            &format!("gs://bench/preload/{i}"),
        )
    }

    pub fn input_artifacts() -> Vec<Artifact> {
        (0..INPUT_POOL)
            .map(|j| Artifact {
                namespace: NAMESPACE.into(),
                r#type: "system.Dataset".into(),
                uri: format!("gs://bench/inputs/{j}"),
                external_id: format!("bench-input-{j}"),
                ..Default::default()
            })
            .collect()
    }
}
