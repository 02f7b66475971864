//! Query benchmark (not a test): builds stores of growing size directly
//! through the library's `Store` (in-process, fresh temp dirs, bulk writes of
//! one transaction per execution and one flush per batch) and times each list
//! and lineage query type, p50/p99 over `--queries` random queries.
//!
//! The data: pipeline runs A -> B -> C, each run a context; A reads one of 100
//! shared source datasets; 30 components (10 per step); 3 % of C executions
//! FAILED (no output), the rest COMPLETE. "Records" = executions (each run
//! adds 3 executions, 3 output artifacts, 5 events).
//!
//! `cargo run --release --bin query-bench -- --sizes 10000,100000,1000000`

/// The allocator of the `stepcache` server, so that in-process store work
/// (preloads, queries) costs what it costs there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use prost_types::value::Kind;
use prost_types::Value;
use stepcache::clock::SystemClock;
use stepcache::domain::{
    ArtifactFilter, ContextFilter, ExecutionFilter, ExecutionWrite, LineageResult,
};
use stepcache::lineage::{self, Dir, Node};
use stepcache::proto::*;
use stepcache::query::TimeRange;
use stepcache::store::{Store, StoreConfig};
use stepcache::validate::{self, Limits};

use stepcache_bench::Rng;

#[derive(Parser)]
#[command(about = "Benchmarks list and lineage queries at growing store sizes")]
struct Args {
    /// Store sizes, in executions.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    sizes: Vec<usize>,
    /// Queries per query type and size.
    #[arg(long, default_value_t = 300)]
    queries: usize,
    /// Runs written per batch (one flush each).
    #[arg(long, default_value_t = 2000)]
    batch: usize,
    /// sled page cache, MiB.
    #[arg(long, default_value_t = 512)]
    cache_mib: u64,
}

/// p50, p99 and the mean number of results of one query type.
type Timing = (Duration, Duration, f64);
/// A query type's name and timing.
type Row = (String, Timing);

const NS: &str = "bench";
const SOURCES: usize = 100;

fn num(x: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(x)),
    }
}

fn interface(component: String, run: usize, inputs: Option<(&str, i64)>) -> TaskInterface {
    TaskInterface {
        container: Some(ContainerSpec {
            image: "python:3.11".into(),
            command: vec!["python".into(), "-m".into(), component.clone()],
            ..Default::default()
        }),
        component,
        parameters: [("run".to_string(), num(run as f64))].into(),
        input_artifacts: inputs
            .map(|(name, id)| (name.to_string(), ArtifactIds { ids: vec![id] }))
            .into_iter()
            .collect(),
        output_artifacts: [("out".to_string(), "system.Dataset".to_string())].into(),
        ..Default::default()
    }
}

fn write(
    ti: TaskInterface,
    state: ExecutionState,
    out_type: &str,
    context: i64,
    limits: &Limits,
) -> anyhow::Result<ExecutionWrite> {
    let outputs = if state == ExecutionState::Complete {
        vec![OutputArtifact {
            name: "out".into(),
            artifact: Some(Artifact {
                r#type: out_type.into(),
                uri: format!("s3://bucket/{}/{}", ti.component, context),
                ..Default::default()
            }),
        }]
    } else {
        vec![]
    };
    let req = PutExecutionRequest {
        execution: Some(Execution {
            namespace: NS.into(),
            interface: Some(ti),
            state: state as i32,
            ..Default::default()
        }),
        outputs,
        context_ids: vec![context],
        ..Default::default()
    };
    Ok(validate::execution_write(req, limits)?)
}

/// What the queries pick from.
#[derive(Default)]
struct Built {
    runs: Vec<i64>,
    sources: Vec<i64>,
    /// (A output, B execution, C output or 0) per run.
    chains: Vec<(i64, i64, i64)>,
    keys: Vec<String>,
    first_ms: i64,
    last_ms: i64,
    max_id: i64,
}

fn build(store: &Store, n: usize, batch: usize, rng: &mut Rng) -> anyhow::Result<Built> {
    let limits = Limits::default();
    let mut b = Built {
        first_ms: store.now_ms(),
        ..Default::default()
    };
    b.sources = store.put_artifacts(
        (0..SOURCES)
            .map(|i| Artifact {
                namespace: NS.into(),
                r#type: "system.RawData".into(),
                uri: format!("s3://raw/{i}"),
                ..Default::default()
            })
            .collect(),
    )?;
    let runs = n / 3;
    let mut done = 0;
    let started = Instant::now();
    while done < runs {
        let m = batch.min(runs - done);
        let ctx_ids = store.put_contexts(
            (done..done + m)
                .map(|r| Context {
                    namespace: NS.into(),
                    r#type: "system.PipelineRun".into(),
                    name: format!("run-{r}"),
                    ..Default::default()
                })
                .collect(),
        )?;
        let comp = |step: &str, r: usize| format!("{step}{}", r % 10);
        let a: Vec<ExecutionWrite> = (0..m)
            .map(|i| {
                let r = done + i;
                let src = b.sources[r % SOURCES];
                let ti = interface(comp("prepare", r), r, Some(("raw", src)));
                write(
                    ti,
                    ExecutionState::Complete,
                    "system.Dataset",
                    ctx_ids[i],
                    &limits,
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let a_out = store.put_executions(&a)?;
        let bw: Vec<ExecutionWrite> = (0..m)
            .map(|i| {
                let r = done + i;
                let ti = interface(
                    comp("train", r),
                    r,
                    Some(("data", a_out[i].output_artifact_ids[0])),
                );
                write(
                    ti,
                    ExecutionState::Complete,
                    "system.Model",
                    ctx_ids[i],
                    &limits,
                )
            })
            .collect::<anyhow::Result<_>>()?;
        let b_out = store.put_executions(&bw)?;
        let cw: Vec<ExecutionWrite> = (0..m)
            .map(|i| {
                let r = done + i;
                let state = if rng.index(100) < 3 {
                    ExecutionState::Failed
                } else {
                    ExecutionState::Complete
                };
                let ti = interface(
                    comp("eval", r),
                    r,
                    Some(("model", b_out[i].output_artifact_ids[0])),
                );
                write(ti, state, "system.Metrics", ctx_ids[i], &limits)
            })
            .collect::<anyhow::Result<_>>()?;
        let c_out = store.put_executions(&cw)?;
        for i in 0..m {
            b.chains.push((
                a_out[i].output_artifact_ids[0],
                b_out[i].execution_id,
                c_out[i].output_artifact_ids.first().copied().unwrap_or(0),
            ));
            b.keys.push(b_out[i].cache_key.clone());
            b.max_id = b.max_id.max(c_out[i].execution_id);
        }
        b.runs.extend(ctx_ids);
        done += m;
        if done % (batch * 25) == 0 {
            eprintln!(
                "  {done}/{runs} runs, {:.0} executions/s",
                (done * 3) as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    b.last_ms = store.now_ms();
    Ok(b)
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `q` `times` times; (p50, p99, mean result size).
fn time(
    times: usize,
    rng: &mut Rng,
    mut q: impl FnMut(&mut Rng) -> anyhow::Result<usize>,
) -> anyhow::Result<Timing> {
    let mut d = Vec::with_capacity(times);
    let mut items = 0usize;
    for _ in 0..times {
        let t = Instant::now();
        items += q(rng)?;
        d.push(t.elapsed());
    }
    d.sort();
    Ok((pct(&d, 0.5), pct(&d, 0.99), items as f64 / times as f64))
}

fn bench(store: &Store, b: &Built, queries: usize, rng: &mut Rng) -> anyhow::Result<Vec<Row>> {
    let ef = |f: ExecutionFilter| ExecutionFilter {
        namespace: NS.into(),
        ..f
    };
    let af = |f: ArtifactFilter| ArtifactFilter {
        namespace: NS.into(),
        ..f
    };
    let bounds = lineage::bounds(0, 0)?;
    let mut out = Vec::new();
    let mut run =
        |name: &str, q: &mut dyn FnMut(&mut Rng) -> anyhow::Result<usize>| -> anyhow::Result<()> {
            let r = time(queries, rng, q)?;
            out.push((name.to_string(), r));
            Ok(())
        };
    run("ListExecutions namespace, first page", &mut |_| {
        Ok(store
            .list_executions(&ef(Default::default()), 100, None)?
            .items
            .len())
    })?;
    run(
        "ListExecutions namespace, page at a random token",
        &mut |rng| {
            let after = 1 + rng.index(b.max_id as usize) as i64;
            Ok(store
                .list_executions(&ef(Default::default()), 100, Some(after))?
                .items
                .len())
        },
    )?;
    run("ListExecutions component", &mut |rng| {
        let f = ef(ExecutionFilter {
            component: Some(format!("train{}", rng.index(10))),
            ..Default::default()
        });
        Ok(store.list_executions(&f, 100, None)?.items.len())
    })?;
    run("ListExecutions state FAILED (1 %)", &mut |_| {
        let f = ef(ExecutionFilter {
            state: Some(ExecutionState::Failed),
            ..Default::default()
        });
        Ok(store.list_executions(&f, 100, None)?.items.len())
    })?;
    run("ListExecutions component + state FAILED", &mut |rng| {
        let f = ef(ExecutionFilter {
            component: Some(format!("eval{}", rng.index(10))),
            state: Some(ExecutionState::Failed),
            ..Default::default()
        });
        Ok(store.list_executions(&f, 100, None)?.items.len())
    })?;
    run("ListExecutions context (one run)", &mut |rng| {
        let f = ef(ExecutionFilter {
            context_id: Some(b.runs[rng.index(b.runs.len())]),
            ..Default::default()
        });
        Ok(store.list_executions(&f, 100, None)?.items.len())
    })?;
    run("ListExecutions cache_key", &mut |rng| {
        let f = ef(ExecutionFilter {
            cache_key: Some(b.keys[rng.index(b.keys.len())].parse()?),
            ..Default::default()
        });
        Ok(store.list_executions(&f, 100, None)?.items.len())
    })?;
    let span = (b.last_ms - b.first_ms).max(1) as usize;
    run(
        "ListExecutions created in a random 50 ms window",
        &mut |rng| {
            let t = b.first_ms + rng.index(span) as i64;
            let f = ef(ExecutionFilter {
                created: TimeRange {
                    after_ms: Some(t),
                    before_ms: Some(t + 50),
                },
                ..Default::default()
            });
            Ok(store.list_executions(&f, 100, None)?.items.len())
        },
    )?;
    run("ListExecutions component + created window", &mut |rng| {
        let t = b.first_ms + rng.index(span) as i64;
        let f = ef(ExecutionFilter {
            component: Some(format!("train{}", rng.index(10))),
            created: TimeRange {
                after_ms: Some(t),
                before_ms: Some(t + 1000),
            },
            ..Default::default()
        });
        Ok(store.list_executions(&f, 100, None)?.items.len())
    })?;
    run("ListArtifacts type", &mut |_| {
        let f = af(ArtifactFilter {
            artifact_type: Some("system.Model".into()),
            ..Default::default()
        });
        Ok(store.list_artifacts(&f, 100, None)?.items.len())
    })?;
    run("ListArtifacts context (one run)", &mut |rng| {
        let f = af(ArtifactFilter {
            context_id: Some(b.runs[rng.index(b.runs.len())]),
            ..Default::default()
        });
        Ok(store.list_artifacts(&f, 100, None)?.items.len())
    })?;
    run(
        "ListArtifacts state MARKED_FOR_DELETION (none)",
        &mut |_| {
            let f = af(ArtifactFilter {
                state: Some(ArtifactState::MarkedForDeletion),
                ..Default::default()
            });
            Ok(store.list_artifacts(&f, 100, None)?.items.len())
        },
    )?;
    run("ListContexts type, page at a random token", &mut |rng| {
        let f = ContextFilter {
            namespace: NS.into(),
            context_type: Some("system.PipelineRun".into()),
        };
        let after = b.runs[rng.index(b.runs.len())];
        Ok(store.list_contexts(&f, 100, Some(after))?.items.len())
    })?;
    let nodes = |l: LineageResult| l.artifacts.len() + l.executions.len();
    run(
        "GetLineage UPSTREAM from a C output (7 nodes)",
        &mut |rng| {
            let (_, _, c) = loop {
                let ch = b.chains[rng.index(b.chains.len())];
                if ch.2 != 0 {
                    break ch;
                }
            };
            Ok(nodes(store.lineage(
                Node::Artifact(c),
                &[Dir::Up],
                bounds,
            )?))
        },
    )?;
    run("GetLineage DOWNSTREAM from an A output", &mut |rng| {
        let (a, _, _) = b.chains[rng.index(b.chains.len())];
        Ok(nodes(store.lineage(
            Node::Artifact(a),
            &[Dir::Down],
            bounds,
        )?))
    })?;
    run("GetLineage BOTH from a B execution", &mut |rng| {
        let (_, e, _) = b.chains[rng.index(b.chains.len())];
        Ok(nodes(store.lineage(
            Node::Execution(e),
            &[Dir::Up, Dir::Down],
            bounds,
        )?))
    })?;
    run(
        "GetLineage DOWNSTREAM from a shared source (max_nodes 1000)",
        &mut |rng| {
            let s = b.sources[rng.index(b.sources.len())];
            Ok(nodes(store.lineage(
                Node::Artifact(s),
                &[Dir::Down],
                bounds,
            )?))
        },
    )?;
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut results: Vec<(usize, Vec<Row>)> = Vec::new();
    for &n in &args.sizes {
        let dir = tempfile_dir(n)?;
        let config = StoreConfig {
            cache_capacity: args.cache_mib * 1024 * 1024,
            ..StoreConfig::default()
        };
        let store = Store::open(&dir, &config, Arc::new(SystemClock))?;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
        eprintln!("building {n} executions in {}", dir.display());
        let t = Instant::now();
        let built = build(&store, n, args.batch, &mut rng)?;
        let build_s = t.elapsed().as_secs_f64();
        let size = dir_size(&dir);
        eprintln!(
            "  built in {build_s:.1} s ({:.0} executions/s), {:.0} MiB on disk",
            n as f64 / build_s,
            size as f64 / 1048576.0
        );
        // Warm-up pass, then the measured pass.
        bench(&store, &built, args.queries.min(50), &mut rng)?;
        let r = bench(&store, &built, args.queries, &mut rng)?;
        for (name, (p50, p99, items)) in &r {
            eprintln!(
                "  {name:<62} p50 {:>8.3} ms  p99 {:>8.3} ms  ({items:.1} results)",
                ms(*p50),
                ms(*p99)
            );
        }
        results.push((n, r));
        drop(store);
        std::fs::remove_dir_all(&dir).ok();
    }
    // A markdown table: one row per query type, p50 / p99 per size.
    let mut header = String::from("| query (page_size 100) |");
    let mut rule = String::from("|---|");
    for (n, _) in &results {
        header.push_str(&format!(" {n} p50 / p99 ms |"));
        rule.push_str("---|");
    }
    println!("{header}\n{rule}");
    if let Some((_, first)) = results.first() {
        for (i, (name, _)) in first.iter().enumerate() {
            let mut row = format!("| {name} |");
            for (_, r) in &results {
                if let Some((_, (p50, p99, items))) = r.get(i) {
                    row.push_str(&format!(
                        " {:.3} / {:.3} ({items:.0}) |",
                        ms(*p50),
                        ms(*p99)
                    ));
                }
            }
            println!("{row}");
        }
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tempfile_dir(n: usize) -> anyhow::Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("stepcache-query-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
