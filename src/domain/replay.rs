//! The answer to a retried PutExecution (same external_id, same request), on
//! either backend: the original's IDs, from its stored execution and events.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::proto::{Event, EventType, Execution, ExecutionState};

use super::{ExecutionWrite, ExecutionWritten};

/// What the original write of `w` answered: its output artifact IDs in the
/// order `w` names its outputs (name, then the index among that name's).
pub fn replayed(
    exec: Execution,
    events: Vec<Event>,
    w: &ExecutionWrite,
) -> Result<ExecutionWritten> {
    let id = exec.id;
    let outputs: BTreeMap<(String, i32), i64> = events
        .into_iter()
        .filter(|e| e.r#type == EventType::Output as i32)
        .map(|e| ((e.name, e.index), e.artifact_id))
        .collect();
    let mut next_index: BTreeMap<&str, i32> = BTreeMap::new();
    let mut output_artifact_ids = Vec::with_capacity(w.outputs.len());
    for (name, _) in &w.outputs {
        let index = next_index.entry(name.as_str()).or_insert(0);
        let artifact_id = outputs
            .get(&(name.clone(), *index))
            .copied()
            .ok_or_else(|| {
                Error::Storage(format!(
                    "execution {id} lacks its output event {name}[{index}]"
                ))
            })?;
        output_artifact_ids.push(artifact_id);
        *index += 1;
    }
    Ok(ExecutionWritten {
        execution_id: id,
        output_artifact_ids,
        published: exec.state == ExecutionState::Complete as i32
            && !w.skip_publish
            && w.key.is_some(),
        cache_key: exec.cache_key,
        reservation_released: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Artifact;

    fn event(name: &str, index: i32, artifact_id: i64, kind: EventType) -> Event {
        Event {
            artifact_id,
            execution_id: 5,
            r#type: kind as i32,
            name: name.into(),
            index,
            time: None,
        }
    }

    fn write(outputs: &[&str]) -> ExecutionWrite {
        ExecutionWrite {
            execution: Execution::default(),
            key: None,
            outputs: outputs
                .iter()
                .map(|n| (n.to_string(), Artifact::default()))
                .collect(),
            skip_publish: false,
            reservation_owner: String::new(),
            digest: [0; 32],
            context_ids: Vec::new(),
        }
    }

    #[test]
    fn outputs_come_back_in_request_order_and_inputs_are_ignored() {
        let exec = Execution {
            id: 5,
            state: ExecutionState::Complete as i32,
            cache_key: "k".into(),
            ..Default::default()
        };
        let events = vec![
            event("b", 0, 30, EventType::Output),
            event("a", 1, 21, EventType::Output),
            event("a", 0, 20, EventType::Output),
            event("a", 0, 99, EventType::Input),
        ];
        let w = write(&["a", "b", "a"]);
        let r = replayed(exec.clone(), events.clone(), &w).unwrap();
        assert_eq!(r.execution_id, 5);
        assert_eq!(r.output_artifact_ids, vec![20, 30, 21]);
        assert!(!r.published, "no key: nothing was published");
        assert_eq!(r.cache_key, "k");

        let missing = replayed(exec, events, &write(&["a", "a", "a"])).unwrap_err();
        assert!(matches!(missing, Error::Storage(_)), "{missing:?}");
    }
}
