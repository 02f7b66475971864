//! Events: the INPUT and OUTPUT edges between executions and artifacts.
//!
//! An execution's events are one record, `keys::event_list` (all events a
//! write adds go into one insert; an update that adds outputs rewrites it),
//! and each event also has a by-artifact index entry (`keys::event_by_artifact`)
//! that names the execution and the event's (type, name, index).
//!
//! Stores written before events were kept together hold one record per event
//! under the same prefix (`keys::event_by_exec`, the legacy layout). Reads
//! take both: the list sorts first under the prefix, the single events follow.

use std::cmp::Ordering;

use prost::Message;

use super::{decode, keys, Store, Tx, TxResult};
use crate::clock::timestamp;
use crate::error::Result;
use crate::proto::{Event, EventType};

/// The value of `keys::event_list`.
#[derive(Clone, PartialEq, Message)]
struct EventList {
    #[prost(message, repeated, tag = "1")]
    events: Vec<Event>,
}

/// The order events are returned in (that of the legacy per-event keys): by
/// type, name (shorter first), index, then artifact.
fn order(a: &Event, b: &Event) -> Ordering {
    (a.r#type, a.name.len(), &a.name, a.index, a.artifact_id).cmp(&(
        b.r#type,
        b.name.len(),
        &b.name,
        b.index,
        b.artifact_id,
    ))
}

/// Whether `ev` is the event an index key names by (type, name, index) tail.
fn has_tail(ev: &Event, tail: &[u8]) -> bool {
    keys::event_tail(ev.r#type, &ev.name, ev.index) == tail
}

/// The events of one record under an execution's prefix: its list, or a
/// legacy single event.
pub(crate) fn decode_record(k: &[u8], v: &[u8]) -> Result<Vec<Event>> {
    if k.len() == keys::EVENT_LIST_LEN {
        Ok(decode::<EventList>(v)?.events)
    } else {
        Ok(vec![decode::<Event>(v)?])
    }
}

impl Store {
    /// The events of an execution, in `order`.
    pub fn events_of_execution(&self, exec_id: i64) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(keys::event_list(exec_id)) {
            let (k, v) = item?;
            out.extend(decode_record(&k, &v)?);
        }
        out.sort_by(order);
        Ok(out)
    }

    /// The events of an execution of one type, in `order`.
    pub(crate) fn events_of_execution_typed(
        &self,
        exec_id: i64,
        kind: EventType,
    ) -> Result<Vec<Event>> {
        let mut events = self.events_of_execution(exec_id)?;
        events.retain(|ev| ev.r#type == kind as i32);
        Ok(events)
    }

    /// The event a by-artifact index entry names (None when it is gone): in
    /// its execution's list, else a legacy single event. Two point reads at
    /// most, no scan (lineage calls this once per edge).
    pub(crate) fn event_of_index_entry(&self, k: &[u8]) -> Result<Option<Event>> {
        let (artifact_id, exec_id, tail) = keys::parse_event_by_artifact(k)?;
        if let Some(v) = self.tree.get(keys::event_list(exec_id))? {
            let listed = decode::<EventList>(&v)?
                .events
                .into_iter()
                .find(|ev| ev.artifact_id == artifact_id && has_tail(ev, tail));
            if listed.is_some() {
                return Ok(listed);
            }
        }
        match self
            .tree
            .get(keys::event_by_exec(exec_id, artifact_id, tail))?
        {
            Some(v) => Ok(Some(decode::<Event>(&v)?)),
            None => Ok(None),
        }
    }

    pub fn events_of_artifact(&self, artifact_id: i64) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(keys::events_of_artifact(artifact_id)) {
            out.extend(self.event_of_index_entry(&item?.0)?);
        }
        Ok(out)
    }
}

/// The events one transaction adds to an execution: each gets its
/// by-artifact entry as it is added, and the list is written once, by
/// `write`.
pub(crate) struct NewEvents {
    exec_id: i64,
    now: i64,
    /// The execution's list as stored, then what this write adds.
    events: Vec<Event>,
    added: bool,
}

impl NewEvents {
    /// For a new execution: nothing stored yet.
    pub fn new(exec_id: i64, now: i64) -> NewEvents {
        NewEvents {
            exec_id,
            now,
            events: Vec::new(),
            added: false,
        }
    }

    /// For an update: the execution's stored list (a transaction cannot scan,
    /// so legacy single events are not in it: see `recorded`).
    pub fn stored(tx: &Tx, exec_id: i64, now: i64) -> TxResult<NewEvents> {
        let events = match tx.get(keys::event_list(exec_id))? {
            Some(v) => decode::<EventList>(&v).or_else(super::abort)?.events,
            None => Vec::new(),
        };
        Ok(NewEvents {
            exec_id,
            now,
            events,
            added: false,
        })
    }

    /// Whether the execution has the event (type, name, index) on `artifact_id`,
    /// stored before or added here, in either layout.
    pub fn recorded(
        &self,
        tx: &Tx,
        artifact_id: i64,
        kind: EventType,
        name: &str,
        index: usize,
    ) -> TxResult<bool> {
        let index = event_index(index);
        let tail = keys::event_tail(kind as i32, name, index);
        if self
            .events
            .iter()
            .any(|ev| ev.artifact_id == artifact_id && has_tail(ev, &tail))
        {
            return Ok(true);
        }
        Ok(tx
            .get(keys::event_by_exec(self.exec_id, artifact_id, &tail))?
            .is_some())
    }

    /// Adds an event and writes its by-artifact entry.
    pub fn add(
        &mut self,
        tx: &Tx,
        artifact_id: i64,
        kind: EventType,
        name: &str,
        index: usize,
    ) -> TxResult<()> {
        let index = event_index(index);
        let tail = keys::event_tail(kind as i32, name, index);
        tx.set(
            keys::event_by_artifact(artifact_id, self.exec_id, &tail),
            &[],
        )?;
        self.events.push(Event {
            artifact_id,
            execution_id: self.exec_id,
            r#type: kind as i32,
            name: name.to_string(),
            index,
            time: Some(timestamp(self.now)),
        });
        self.added = true;
        Ok(())
    }

    /// Writes the list when something was added.
    pub fn write(mut self, tx: &Tx) -> TxResult<()> {
        if !self.added {
            return Ok(());
        }
        self.events.sort_by(order);
        let list = EventList {
            events: self.events,
        };
        tx.set(keys::event_list(self.exec_id), list.encode_to_vec())?;
        Ok(())
    }
}

fn event_index(index: usize) -> i32 {
    i32::try_from(index).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: EventType, name: &str, index: i32, artifact_id: i64) -> Event {
        Event {
            artifact_id,
            execution_id: 1,
            r#type: kind as i32,
            name: name.into(),
            index,
            time: None,
        }
    }

    /// The list's order is that of the legacy keys, so that an execution read
    /// from either layout (or both) returns its events the same way.
    #[test]
    fn events_sort_as_their_legacy_keys_do() {
        let mut events = vec![
            ev(EventType::Output, "model", 0, 9),
            ev(EventType::Input, "zz", 1, 3),
            ev(EventType::Input, "abc", 0, 4),
            ev(EventType::Input, "zz", 0, 5),
            ev(EventType::Output, "m", 2, 1),
            ev(EventType::Output, "m", 2, 0),
        ];
        let legacy_key = |e: &Event| {
            keys::event_by_exec(
                1,
                e.artifact_id,
                &keys::event_tail(e.r#type, &e.name, e.index),
            )
        };
        let mut by_key = events.clone();
        by_key.sort_by_key(legacy_key);
        events.sort_by(order);
        assert_eq!(events, by_key);
    }
}
