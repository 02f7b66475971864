//! The hot cache alone (not a test): `HotHits::get` on one thread, with
//! every key's hit in the hits file and a memory tier of a given capacity in
//! front of it, draws uniform over all keys. No gRPC, no load generator
//! sharing the cores: the cost of a lookup's cache step, and how it grows
//! with the number of keys, to a few percent on a machine whose end-to-end
//! lookups/s swing far more from run to run.
//!
//! `cargo run --release --bin hits-bench -- --sizes 10000,1000000 --memory 20000,0`
//!
//! Each size gets a hits file of that many records in a temp dir (removed at
//! the end; ~0.6 KB of fields each, ~0.25 KB compressed: 1M keys take
//! ~250 MB), kept in the page cache by the reads themselves. Rounds
//! interleave the (size, memory) pairs, so that a drift of the machine's
//! speed falls on all of them alike.

/// The allocator of the `stepcache` server, so that allocations cost what
/// they cost there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use hdrhistogram::Histogram;
use prost::bytes::Bytes;
use stepcache::bench_support::{HitLog, HotHit, HotHits, LOG_FILE};
use stepcache::key::CacheKey;

use stepcache_bench::Rng;

#[derive(Parser)]
#[command(about = "Times the hot cache's lookups (memory tier, then hits file) by key count")]
struct Args {
    /// Keys stored, one hits file each.
    #[arg(long, value_delimiter = ',', default_value = "10000,1000000")]
    sizes: Vec<u64>,
    /// Memory tier capacities to compare (0: every hit from the file).
    #[arg(long, value_delimiter = ',', default_value = "20000,0")]
    memory: Vec<usize>,
    /// Timed lookups per (size, memory) and round, after a quarter as many
    /// untimed ones.
    #[arg(long, default_value_t = 1_000_000)]
    gets: u64,
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Draw from this many keys of each size only (0: all of them), as
    /// drivers asking again about recent tasks do.
    #[arg(long, default_value_t = 0)]
    working_set: u64,
    /// Bytes of each hit's reply fields (a benchmark preload's are ~610).
    #[arg(long, default_value_t = 610)]
    record_bytes: usize,
}

const NS: &str = "default";
/// The file is never rotated here.
const FILE_CAP: u64 = 1 << 36;

/// Key `i`: 32 bytes spread by splitmix64 seeded with `i`, as cache keys
/// (BLAKE3) are.
fn key(i: u64) -> CacheKey {
    let mut k = [0u8; 32];
    let mut spread = Rng(i);
    for chunk in k.chunks_mut(8) {
        chunk.copy_from_slice(&spread.next_u64().to_le_bytes());
    }
    CacheKey(k)
}

/// `len` bytes of fields like a preloaded hit's: the same names, image and
/// types in every one, and its own key, numbers and URIs, so that the file
/// compresses about as a preload's does (~0.6 KB of fields to ~0.2 KB).
fn fields(i: u64, key: &CacheKey, len: usize) -> Bytes {
    let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
    let c = i % 5;
    let mut f = format!(
        "{hex} bench-{i} component-{c} ghcr.io/example/steps:1.4.2 python -m steps \
         --component component-{c} PYTHONUNBUFFERED 1 epochs 10 learning_rate 0.{l} \
         task task-{i} in0 {a} in1 {b} out0 system.Dataset out1 system.Model accuracy 0.93",
        l = i % 1000,
        a = i * 7 % 1000,
        b = i * 13 % 1000,
    )
    .into_bytes();
    let mut n = 0u64;
    while f.len() < len {
        let at = 1_764_900_000_000 + i * 37 + n;
        f.extend(
            format!(
                " {} default gs://bench/preload/{i}/out{n} created {at} updated {at}",
                i * 2 + n
            )
            .bytes(),
        );
        n += 1;
    }
    f.truncate(len);
    Bytes::from(f)
}

/// A hits file of `n` keys in `dir`, its index persisted under `epoch`.
fn fill(dir: &Path, n: u64, record_bytes: usize, epoch: u64) -> anyhow::Result<()> {
    let hot = HotHits::new(0, Some(HitLog::open(dir, FILE_CAP, None)?));
    let since = hot.clears();
    for i in 0..n {
        let k = key(i);
        let hit = HotHit {
            completed_ms: 1,
            ttl_ms: None,
            fields: fields(i, &k, record_bytes),
        };
        hot.insert(hot.generation(NS, &k), NS, &k, hit, false);
    }
    // A fill's last records wait for a whole chunk until it ends.
    hot.filled(since);
    anyhow::ensure!(
        hot.stored_len() as u64 == n,
        "the hits file took {} of {n} keys",
        hot.stored_len()
    );
    hot.persist(epoch)?;
    Ok(())
}

struct Run {
    gets_per_sec: f64,
    hist: Histogram<u64>,
    /// Lookups whose page was not in the page cache: `get` passed, and
    /// `get_stored` read it from the disk, as a server's read pool would.
    waited: u64,
}

/// Lookups of uniform keys with a memory tier of `memory`; the index is
/// persisted again for the next run.
fn run(
    dir: &Path,
    n: u64,
    memory: usize,
    args: &Args,
    epoch: u64,
    seed: u64,
) -> anyhow::Result<Run> {
    let gets = args.gets;
    let draws = match args.working_set {
        0 => n,
        ws => ws.min(n),
    };
    let hot = HotHits::new(memory, Some(HitLog::open(dir, FILE_CAP, Some(epoch))?));
    anyhow::ensure!(
        hot.stored_len() as u64 == n,
        "the index of {} did not load",
        dir.display()
    );
    let mut rng = Rng(seed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3)?;
    let mut waited = 0;
    let mut one = |record: bool| -> anyhow::Result<()> {
        let k = key(rng.below(draws));
        let t = Instant::now();
        let hit = hot.get(NS, &k, 2, None).or_else(|| {
            waited += u64::from(record);
            hot.get_stored(NS, &k, 2, None)
        });
        let ns = t.elapsed().as_nanos() as u64;
        anyhow::ensure!(hit.is_some(), "a stored key missed");
        if record {
            hist.record(ns.max(1))?;
        }
        Ok(())
    };
    for _ in 0..gets / 4 {
        one(false)?;
    }
    let t = Instant::now();
    for _ in 0..gets {
        one(true)?;
    }
    let secs = t.elapsed().as_secs_f64();
    hot.persist(epoch)?;
    Ok(Run {
        gets_per_sec: gets as f64 / secs,
        hist,
        waited,
    })
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(!args.sizes.is_empty() && !args.memory.is_empty() && args.rounds > 0);
    let root: PathBuf =
        std::env::temp_dir().join(format!("stepcache-hits-bench-{}", std::process::id()));
    let result = bench(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn bench(args: &Args, root: &Path) -> anyhow::Result<()> {
    let epoch = 1;
    let mut dirs = Vec::new();
    for &n in &args.sizes {
        let dir = root.join(n.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let t = Instant::now();
        fill(&dir, n, args.record_bytes, epoch)?;
        let mib = std::fs::metadata(dir.join(LOG_FILE))?.len() >> 20;
        println!(
            "# {n} keys: hits file of {mib} MiB written in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        dirs.push((n, dir));
    }
    let cases: Vec<(usize, usize)> = (0..dirs.len())
        .flat_map(|d| (0..args.memory.len()).map(move |m| (d, m)))
        .collect();
    let mut results: Vec<Vec<Run>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 0..args.rounds {
        for i in 0..cases.len() {
            let c = (i + round) % cases.len();
            let (d, m) = cases[c];
            let (n, dir) = &dirs[d];
            let seed = 0x5eed ^ (round as u64) << 32 ^ c as u64;
            results[c].push(run(dir, *n, args.memory[m], args, epoch, seed)?);
        }
    }
    println!(
        "keys      memory tier  gets/s (median of {} rounds)  p50 ns  p90 ns  p99 ns  waited  per round",
        args.rounds
    );
    for (c, runs) in results.iter().enumerate() {
        let (d, m) = cases[c];
        let mut rates: Vec<f64> = runs.iter().map(|r| r.gets_per_sec).collect();
        let per_round: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let mid = median(&mut rates);
        let pick = runs
            .iter()
            .min_by(|a, b| {
                (a.gets_per_sec - mid)
                    .abs()
                    .total_cmp(&(b.gets_per_sec - mid).abs())
            })
            .context("no rounds")?;
        let q = |p: f64| pick.hist.value_at_quantile(p);
        println!(
            "{:<9} {:<12} {:>10.0}                  {:>6}  {:>6}  {:>6}  {:>6}  {}",
            dirs[d].0,
            args.memory[m],
            mid,
            q(0.5),
            q(0.9),
            q(0.99),
            runs.iter().map(|r| r.waited).sum::<u64>(),
            per_round.join(" ")
        );
    }
    Ok(())
}
