//! The offline integrity check: every record whole, every index entry
//! pointing at what it names.

use std::collections::BTreeMap;

use super::{entry, keys, Store};
use prost::Message;

use crate::error::Result;
use crate::proto::{EventType, Execution};

/// What an integrity check found.
#[derive(Debug, Clone, Default)]
pub struct Integrity {
    pub executions: u64,
    pub artifacts: u64,
    pub events: u64,
    pub cache_entries: u64,
    /// Each inconsistency in words (empty = consistent).
    pub problems: Vec<String>,
}

impl Store {
    /// Checks that every record is whole: each event has its execution, artifact
    /// and by-artifact twin; each index entry has its execution; each
    /// execution has its INPUT events and index entries; each published entry
    /// points at a COMPLETE execution of the same key. Reads the whole store.
    pub fn check(&self) -> Result<Integrity> {
        let mut r = Integrity::default();
        let exists = |k: &[u8]| -> Result<bool> { Ok(self.tree.contains_key(k)?) };
        for item in self.tree.iter() {
            let (k, v) = item?;
            let Some(&prefix) = k.first() else { continue };
            match prefix {
                keys::ARTIFACT => {
                    r.artifacts += 1;
                    let a: crate::proto::Artifact = super::decode(&v)?;
                    for k in super::artifact_index_keys(&a) {
                        if !exists(&k)? {
                            r.problems.push(format!(
                                "artifact {} lacks its type or state index entry",
                                a.id
                            ));
                        }
                    }
                }
                keys::EXECUTION => {
                    r.executions += 1;
                    let e: Execution = super::decode(&v)?;
                    if !exists(&super::exec_state_key(&e))? {
                        r.problems
                            .push(format!("execution {} lacks its state index entry", e.id));
                    }
                    let events = self.events_of_execution(e.id)?;
                    if let Some(ti) = &e.interface {
                        for (name, ids) in &ti.input_artifacts {
                            for (i, id) in ids.ids.iter().enumerate() {
                                let found = events.iter().any(|ev| {
                                    ev.r#type == EventType::Input as i32
                                        && &ev.name == name
                                        && ev.index as usize == i
                                        && ev.artifact_id == *id
                                });
                                if !found {
                                    r.problems.push(format!(
                                        "execution {} lacks its INPUT event {name}[{i}]",
                                        e.id
                                    ));
                                }
                            }
                        }
                    }
                }
                keys::EVENT_BY_EXEC => {
                    for ev in super::events::decode_record(&k, &v)? {
                        r.events += 1;
                        let tail = keys::event_tail(ev.r#type, &ev.name, ev.index);
                        if !exists(&keys::execution(ev.execution_id))? {
                            r.problems
                                .push(format!("event of missing execution {}", ev.execution_id));
                        }
                        if !exists(&keys::artifact(ev.artifact_id))? {
                            r.problems
                                .push(format!("event of missing artifact {}", ev.artifact_id));
                        }
                        if !exists(&keys::event_by_artifact(
                            ev.artifact_id,
                            ev.execution_id,
                            &tail,
                        ))? {
                            r.problems.push(format!(
                                "event {}->{} lacks its by-artifact entry",
                                ev.execution_id, ev.artifact_id
                            ));
                        }
                    }
                }
                keys::EVENT_BY_ARTIFACT if self.event_of_index_entry(&k)?.is_none() => {
                    r.problems.push(format!(
                        "dangling by-artifact event entry {}",
                        hex::encode(&k)
                    ));
                }
                keys::CACHE => {
                    r.cache_entries += 1;
                    let (key, _, exec_id) = keys::parse_cache_entry(&k)?;
                    match self.tree.get(keys::execution(exec_id))? {
                        None => r
                            .problems
                            .push(format!("cache entry of missing execution {exec_id}")),
                        Some(bytes) => {
                            let e: Execution = super::decode(&bytes)?;
                            if e.state != crate::proto::ExecutionState::Complete as i32
                                || e.cache_key != key.to_string()
                            {
                                r.problems.push(format!(
                                    "cache entry of execution {exec_id} that is not COMPLETE with that key"
                                ));
                            }
                            if let Some(rec) = entry::record(&v)? {
                                let mut outputs: BTreeMap<String, Vec<i64>> = BTreeMap::new();
                                for ev in self.events_of_execution(exec_id)? {
                                    if ev.r#type == EventType::Output as i32 {
                                        outputs.entry(ev.name).or_default().push(ev.artifact_id);
                                    }
                                }
                                if rec.execution.as_ref() != Some(&e) || rec.output_ids() != outputs
                                {
                                    r.problems.push(format!(
                                        "cache entry of execution {exec_id}: its hit record differs \
                                         from the execution and its OUTPUT events"
                                    ));
                                }
                                for copy in &rec.artifacts {
                                    if self.tree.get(keys::artifact(copy.id))?.as_deref()
                                        != Some(copy.encode_to_vec().as_slice())
                                    {
                                        r.problems.push(format!(
                                            "cache entry of execution {exec_id}: its copy of \
                                             artifact {} differs from the artifact",
                                            copy.id
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
                keys::EXEC_BY_NS
                | keys::EXEC_BY_STATE
                | keys::EXEC_BY_COMPONENT
                | keys::EXEC_BY_KEY => {
                    let id = keys::rev_id_suffix(&k)?;
                    if !exists(&keys::execution(id))? {
                        r.problems
                            .push(format!("index entry of missing execution {id}"));
                    }
                }
                _ => {}
            }
        }
        Ok(r)
    }
}
