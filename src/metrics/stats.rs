//! Lookup counters per namespace, since the server started.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::metrics::LookupLabels;
use crate::proto::Outcome;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub hits: i64,
    pub misses: i64,
    pub disabled: i64,
}

#[derive(Debug, Default)]
pub struct Stats {
    by_namespace: Mutex<HashMap<String, Counts>>,
    /// The same counts for Prometheus (see `metrics`).
    pub lookups: Family<LookupLabels, Counter>,
    /// Whether `lookups` names namespaces; when not, they are all counted
    /// under `metrics::ALL_NAMESPACES`.
    label_namespaces: bool,
}

impl Stats {
    /// Counters whose Prometheus family names namespaces, or not (then each
    /// outcome has one count over all namespaces).
    pub fn new(label_namespaces: bool) -> Stats {
        Stats {
            label_namespaces,
            ..Default::default()
        }
    }

    /// Counts one lookup's outcome (RESERVED and IN_PROGRESS count as misses:
    /// the cache had no result to serve).
    pub fn record(&self, ns: &str, outcome: Outcome) {
        let label = match outcome {
            Outcome::Hit => "hit",
            Outcome::Disabled => "disabled",
            Outcome::Miss | Outcome::Reserved | Outcome::InProgress => "miss",
            Outcome::Unspecified => return,
        };
        let namespace = if self.label_namespaces {
            ns
        } else {
            crate::metrics::ALL_NAMESPACES
        };
        self.lookups
            .get_or_create(&LookupLabels {
                namespace: namespace.to_string(),
                outcome: label,
            })
            .inc();
        let Ok(mut map) = self.by_namespace.lock() else {
            return;
        };
        let c = map.entry(ns.to_string()).or_default();
        match outcome {
            Outcome::Hit => c.hits += 1,
            Outcome::Disabled => c.disabled += 1,
            Outcome::Miss | Outcome::Reserved | Outcome::InProgress => c.misses += 1,
            Outcome::Unspecified => {}
        }
    }

    pub fn get(&self, ns: &str) -> Counts {
        self.by_namespace
            .lock()
            .ok()
            .and_then(|m| m.get(ns).copied())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_namespace() {
        let s = Stats::new(true);
        s.record("a", Outcome::Hit);
        s.record("a", Outcome::Miss);
        s.record("a", Outcome::Reserved);
        s.record("b", Outcome::Disabled);
        assert_eq!(
            s.get("a"),
            Counts {
                hits: 1,
                misses: 2,
                disabled: 0
            }
        );
        assert_eq!(
            s.get("b"),
            Counts {
                hits: 0,
                misses: 0,
                disabled: 1
            }
        );
        assert_eq!(s.get("c"), Counts::default());
    }
}
