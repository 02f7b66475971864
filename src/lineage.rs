//! Lineage: a breadth-first walk over events from one artifact or execution,
//! bounded in hops and in nodes. Pure: the graph is a trait (the store answers
//! it from its event indexes; the tests from a list).
//!
//! One hop is one event: artifact -> execution or execution -> artifact.
//! Upstream of an execution are its INPUT artifacts, upstream of an artifact
//! the executions that OUTPUT it; downstream of an artifact are the executions
//! with an INPUT event on it, downstream of an execution its OUTPUT artifacts.
//! BOTH is the union of the upstream and the downstream walks (siblings, i.e.
//! other consumers of an upstream artifact, are not included).

use std::collections::{HashSet, VecDeque};

use crate::error::{Error, Result};
use crate::proto::{Direction, Event, EventType};

/// max_hops when a request leaves it 0: ten pipeline steps either way.
pub const DEFAULT_MAX_HOPS: u32 = 20;
/// The largest max_hops a request may ask for.
pub const MAX_HOPS_LIMIT: u32 = 1000;
/// max_nodes when a request leaves it 0.
pub const DEFAULT_MAX_NODES: usize = 1000;
/// The largest max_nodes a request may ask for.
pub const MAX_NODES_LIMIT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Artifact(i64),
    Execution(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Up,
    Down,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_hops: u32,
    pub max_nodes: usize,
}

/// The bounds of a GetLineage request: 0 = the default; negative or over the
/// limit is invalid.
pub fn bounds(max_hops: i32, max_nodes: i32) -> Result<Bounds> {
    let max_hops = match u32::try_from(max_hops) {
        Ok(0) => DEFAULT_MAX_HOPS,
        Ok(n) if n <= MAX_HOPS_LIMIT => n,
        _ => {
            return Err(Error::invalid(format!(
                "max_hops must be between 0 (default {DEFAULT_MAX_HOPS}) and {MAX_HOPS_LIMIT}, got {max_hops}"
            )))
        }
    };
    let max_nodes = match usize::try_from(max_nodes) {
        Ok(0) => DEFAULT_MAX_NODES,
        Ok(n) if n <= MAX_NODES_LIMIT => n,
        _ => {
            return Err(Error::invalid(format!(
                "max_nodes must be between 0 (default {DEFAULT_MAX_NODES}) and {MAX_NODES_LIMIT}, got {max_nodes}"
            )))
        }
    };
    Ok(Bounds {
        max_hops,
        max_nodes,
    })
}

/// The directions a request walks (UNSPECIFIED = BOTH).
pub fn directions(d: i32) -> Result<Vec<Dir>> {
    match Direction::try_from(d) {
        Ok(Direction::Upstream) => Ok(vec![Dir::Up]),
        Ok(Direction::Downstream) => Ok(vec![Dir::Down]),
        Ok(Direction::Both | Direction::Unspecified) => Ok(vec![Dir::Up, Dir::Down]),
        Err(_) => Err(Error::invalid(format!("direction: unknown value {d}"))),
    }
}

/// The type of the events that lead from `node` one hop in `dir`.
pub fn edge_type(node: Node, dir: Dir) -> EventType {
    match (node, dir) {
        (Node::Execution(_), Dir::Up) | (Node::Artifact(_), Dir::Down) => EventType::Input,
        (Node::Execution(_), Dir::Down) | (Node::Artifact(_), Dir::Up) => EventType::Output,
    }
}

/// The node at the other end of an event of `node`.
pub fn other_end(node: Node, ev: &Event) -> Node {
    match node {
        Node::Artifact(_) => Node::Execution(ev.execution_id),
        Node::Execution(_) => Node::Artifact(ev.artifact_id),
    }
}

pub type Edges<'a> = Box<dyn Iterator<Item = Result<Event>> + 'a>;

pub trait Graph {
    /// The events of `node` of `edge_type(node, dir)`, lazily (a walk may stop early).
    fn edges(&self, node: Node, dir: Dir) -> Result<Edges<'_>>;
}

/// What a walk found: nodes in the order found (the start first), the events
/// between them, and whether a bound cut the walk short.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Lineage {
    pub nodes: Vec<Node>,
    pub events: Vec<Event>,
    pub truncated: bool,
}

/// Walks from `start` in each of `dirs`, breadth first. `truncated` is set when
/// a node at `max_hops` has a neighbour outside the result, or when a new node
/// was found with `max_nodes` already in the result. Every returned event
/// joins two returned nodes.
pub fn traverse(g: &impl Graph, start: Node, dirs: &[Dir], b: Bounds) -> Result<Lineage> {
    let mut seen: HashSet<Node> = HashSet::from([start]);
    let mut out = Lineage {
        nodes: vec![start],
        ..Default::default()
    };
    let mut seen_events: HashSet<(i64, i64, i32, String, i32)> = HashSet::new();
    let mut queue: VecDeque<(Node, Dir, u32)> = dirs.iter().map(|d| (start, *d, 0)).collect();
    'walk: while let Some((node, dir, depth)) = queue.pop_front() {
        for ev in g.edges(node, dir)? {
            let ev = ev?;
            let next = other_end(node, &ev);
            if !seen.contains(&next) {
                if depth >= b.max_hops {
                    out.truncated = true;
                    break;
                }
                if out.nodes.len() >= b.max_nodes {
                    out.truncated = true;
                    break 'walk;
                }
                seen.insert(next);
                out.nodes.push(next);
                queue.push_back((next, dir, depth + 1));
            }
            let id = (
                ev.execution_id,
                ev.artifact_id,
                ev.r#type,
                ev.name.clone(),
                ev.index,
            );
            if seen_events.insert(id) {
                out.events.push(ev);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events as (execution, artifact, type).
    struct Mem(Vec<(i64, i64, EventType)>);

    impl Graph for Mem {
        fn edges(&self, node: Node, dir: Dir) -> Result<Edges<'_>> {
            let t = edge_type(node, dir);
            Ok(Box::new(
                self.0
                    .iter()
                    .filter(move |(e, a, ty)| {
                        *ty == t
                            && match node {
                                Node::Artifact(id) => *a == id,
                                Node::Execution(id) => *e == id,
                            }
                    })
                    .map(|(e, a, ty)| {
                        Ok(Event {
                            execution_id: *e,
                            artifact_id: *a,
                            r#type: *ty as i32,
                            ..Default::default()
                        })
                    }),
            ))
        }
    }

    use EventType::{Input as I, Output as O};
    use Node::{Artifact as A, Execution as E};

    /// A(1) -> a(10) -> B(2) -> b(20) -> C(3) -> c(30); B also reads x(11);
    /// a cached run B'(4) outputs b(20); D(5) also reads a(10).
    fn pipeline() -> Mem {
        Mem(vec![
            (1, 10, O),
            (2, 10, I),
            (2, 11, I),
            (2, 20, O),
            (3, 20, I),
            (3, 30, O),
            (4, 20, O),
            (5, 10, I),
        ])
    }

    fn wide() -> Bounds {
        Bounds {
            max_hops: 100,
            max_nodes: 100,
        }
    }

    #[test]
    fn upstream_of_an_output_reaches_every_producer() {
        let l = traverse(&pipeline(), A(30), &[Dir::Up], wide()).unwrap();
        assert_eq!(
            l.nodes,
            vec![A(30), E(3), A(20), E(2), E(4), A(10), A(11), E(1)]
        );
        assert!(!l.truncated);
        assert_eq!(l.events.len(), 7);
    }

    #[test]
    fn downstream_and_both() {
        let l = traverse(&pipeline(), A(10), &[Dir::Down], wide()).unwrap();
        assert_eq!(l.nodes, vec![A(10), E(2), E(5), A(20), E(3), A(30)]);
        // BOTH from B: its upstream and its downstream, not the sibling D.
        let l = traverse(&pipeline(), E(2), &[Dir::Up, Dir::Down], wide()).unwrap();
        let mut n = l.nodes.clone();
        n.sort();
        assert_eq!(n, vec![A(10), A(11), A(20), A(30), E(1), E(2), E(3)]);
    }

    #[test]
    fn bounds_truncate() {
        let hops = Bounds {
            max_hops: 2,
            max_nodes: 100,
        };
        let l = traverse(&pipeline(), A(30), &[Dir::Up], hops).unwrap();
        assert_eq!(l.nodes, vec![A(30), E(3), A(20)]);
        assert!(l.truncated);
        // Exactly enough hops: not truncated.
        let l = traverse(
            &pipeline(),
            E(1),
            &[Dir::Down],
            Bounds {
                max_hops: 5,
                ..hops
            },
        )
        .unwrap();
        assert!(!l.truncated, "{l:?}");
        assert_eq!(l.nodes.len(), 7);

        let nodes = Bounds {
            max_hops: 100,
            max_nodes: 4,
        };
        let l = traverse(&pipeline(), A(30), &[Dir::Up], nodes).unwrap();
        assert_eq!(l.nodes.len(), 4);
        assert!(l.truncated);
        for ev in &l.events {
            assert!(l.nodes.contains(&E(ev.execution_id)) && l.nodes.contains(&A(ev.artifact_id)));
        }
        // A lone node.
        let l = traverse(&pipeline(), A(99), &[Dir::Up, Dir::Down], nodes).unwrap();
        assert_eq!(l.nodes, vec![A(99)]);
        assert!(!l.truncated);
    }

    #[test]
    fn request_bounds() {
        assert_eq!(
            bounds(0, 0).unwrap(),
            Bounds {
                max_hops: DEFAULT_MAX_HOPS,
                max_nodes: DEFAULT_MAX_NODES
            }
        );
        assert_eq!(bounds(3, 10_000).unwrap().max_nodes, 10_000);
        assert!(
            matches!(bounds(0, 10_001), Err(Error::InvalidArgument(m)) if m.contains("max_nodes"))
        );
        assert!(matches!(bounds(-1, 0), Err(Error::InvalidArgument(m)) if m.contains("max_hops")));
        assert_eq!(directions(0).unwrap(), vec![Dir::Up, Dir::Down]);
        assert!(directions(9).is_err());
    }
}
