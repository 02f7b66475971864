//! The figures of a workload's run: printed (and as JSON), merged over
//! rounds, and as shares of the floor.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;

use crate::args::Workload;
use crate::worker::{histogram, Counts};

pub struct Result1 {
    pub round: usize,
    pub workload: Workload,
    pub concurrency: usize,
    pub secs: f64,
    pub counts: Counts,
    pub hist: Histogram<u64>,
    pub run_hist: Histogram<u64>,
    pub server_rss: Option<(f64, f64)>,
    pub server_cores: Option<f64>,
    pub bench_cores: Option<f64>,
    /// PostgreSQL's processes, when the store is PostgreSQL.
    pub postgres_cores: Option<f64>,
    /// Bytes the server sent to storage over the window (its data dir).
    pub server_writes: Option<u64>,
    pub first_error: Option<String>,
}

pub fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1e6
}

impl Result1 {
    /// Tasks per second (an RPC, or a pipeline task of lookup [+ put]).
    pub fn throughput(&self) -> f64 {
        self.counts.tasks as f64 / self.secs
    }

    /// KiB the server sent to storage per task over the window.
    pub fn writes_kib_per_op(&self) -> Option<f64> {
        Some(self.server_writes? as f64 / 1024.0 / self.counts.tasks.max(1) as f64)
    }

    /// CPU time per task of a process that used `cores` over the window.
    pub fn cpu_us_per_op(&self, cores: f64) -> f64 {
        cores * self.secs * 1e6 / self.counts.tasks.max(1) as f64
    }

    pub fn print(&self, stored: u64, json: bool) {
        let h = &self.hist;
        let rss = self
            .server_rss
            .map(|(r, peak)| format!("  server rss {r:.0} MiB (peak {peak:.0})"))
            .unwrap_or_default();
        let cpu = match (self.server_cores, self.bench_cores) {
            (Some(s), Some(b)) => format!(
                "  cpu server {s:.2} / bench {b:.2} cores ({:.0} / {:.0} us per op)",
                self.cpu_us_per_op(s),
                self.cpu_us_per_op(b)
            ),
            (None, Some(b)) => format!("  cpu bench {b:.2} cores"),
            _ => String::new(),
        };
        let cpu = match self.postgres_cores {
            Some(p) => format!(
                "{cpu} + postgres {p:.2} cores ({:.0} us per op)",
                self.cpu_us_per_op(p)
            ),
            None => cpu,
        };
        // Only workloads that write (reads write nothing but sled's own
        // housekeeping), and only a server that writes files itself (on
        // PostgreSQL, the database server writes).
        let writes = match self.writes_kib_per_op() {
            Some(kib) if self.workload.writes() && kib > 0.0 => {
                format!("  server writes {kib:.1} KiB per op")
            }
            _ => String::new(),
        };
        println!(
            "stepcache stored={stored:<8} {:<12} c={:<3} {:>8.0}/s  p50 {:7.3} ms  p90 {:7.3} ms  \
             p99 {:7.3} ms  max {:8.3} ms  n={}  errors={}{rss}{cpu}{writes}",
            self.workload.name(),
            self.concurrency,
            self.throughput(),
            ms(h, 0.5),
            ms(h, 0.9),
            ms(h, 0.99),
            h.max() as f64 / 1e6,
            self.counts.tasks,
            self.counts.errors,
        );
        if self.workload == Workload::Pipeline {
            let r = &self.run_hist;
            let lookups = (self.counts.hits + self.counts.misses).max(1);
            println!(
                "    pipeline: {:.0} runs/s, hit rate {:.1}%, run latency p50 {:.3} ms p99 {:.3} ms",
                self.counts.ops as f64 / self.secs,
                100.0 * self.counts.hits as f64 / lookups as f64,
                ms(r, 0.5),
                ms(r, 0.99),
            );
        }
        if let Some(e) = &self.first_error {
            println!("    first error: {e}");
        }
        if json {
            let v = serde_json::json!({
                "system": "stepcache",
                "workload": self.workload.name(),
                "stored": stored,
                "concurrency": self.concurrency,
                "seconds": self.secs,
                "count": self.counts.tasks,
                "runs": self.counts.ops,
                "hits": self.counts.hits,
                "misses": self.counts.misses,
                "errors": self.counts.errors,
                "throughput": self.throughput(),
                "p50_ms": ms(h, 0.5),
                "p90_ms": ms(h, 0.9),
                "p99_ms": ms(h, 0.99),
                "max_ms": h.max() as f64 / 1e6,
                "server_rss_mib": self.server_rss.map(|r| r.0),
                "server_peak_rss_mib": self.server_rss.map(|r| r.1),
                "server_cores": self.server_cores,
                "server_cpu_us_per_op": self.server_cores.map(|c| self.cpu_us_per_op(c)),
                "bench_cpu_us_per_op": self.bench_cores.map(|c| self.cpu_us_per_op(c)),
                "postgres_cpu_us_per_op": self.postgres_cores.map(|c| self.cpu_us_per_op(c)),
                "server_writes_kib_per_op": self.writes_kib_per_op(),
                "rounds": self.round + 1,
                "bench_cores": self.bench_cores,
            });
            println!("{v}");
        }
    }
}

/// The results of all rounds of each (workload, concurrency), merged.
pub fn merge_rounds(results: &[Result1]) -> anyhow::Result<Vec<Result1>> {
    let mut merged: BTreeMap<(usize, Workload), Result1> = BTreeMap::new();
    for r in results {
        let m = merged
            .entry((r.concurrency, r.workload))
            .or_insert_with(|| Result1 {
                round: r.round,
                workload: r.workload,
                concurrency: r.concurrency,
                secs: 0.0,
                counts: Counts::default(),
                hist: histogram(),
                run_hist: histogram(),
                server_rss: None,
                server_cores: Some(0.0),
                bench_cores: Some(0.0),
                postgres_cores: r.postgres_cores.map(|_| 0.0),
                server_writes: Some(0),
                first_error: None,
            });
        // Cores are averaged over time: weight each round by its length.
        let weigh = |acc: Option<f64>, x: Option<f64>| Some(acc? + x? * r.secs);
        m.server_cores = weigh(m.server_cores, r.server_cores);
        m.bench_cores = weigh(m.bench_cores, r.bench_cores);
        m.postgres_cores = weigh(m.postgres_cores, r.postgres_cores);
        m.server_writes = m.server_writes.zip(r.server_writes).map(|(a, b)| a + b);
        m.round = m.round.max(r.round);
        m.secs += r.secs;
        m.counts.ops += r.counts.ops;
        m.counts.tasks += r.counts.tasks;
        m.counts.hits += r.counts.hits;
        m.counts.misses += r.counts.misses;
        m.counts.errors += r.counts.errors;
        m.hist.add(&r.hist)?;
        m.run_hist.add(&r.run_hist)?;
        m.server_rss = r.server_rss.or(m.server_rss);
        if m.first_error.is_none() {
            m.first_error = r.first_error.clone();
        }
    }
    Ok(merged
        .into_values()
        .map(|mut m| {
            m.server_cores = m.server_cores.map(|c| c / m.secs);
            m.bench_cores = m.bench_cores.map(|c| c / m.secs);
            m.postgres_cores = m.postgres_cores.map(|c| c / m.secs);
            m
        })
        .collect())
}

/// Each workload's throughput as a share of the floor's at the same
/// concurrency in the same round; with several rounds, the median and range.
pub fn print_ratios(results: &[Result1]) {
    let floors: BTreeMap<(usize, usize), f64> = results
        .iter()
        .filter(|r| r.workload == Workload::Floor)
        .map(|r| ((r.round, r.concurrency), r.throughput()))
        .collect();
    let mut ratios: BTreeMap<(usize, Workload), Vec<f64>> = BTreeMap::new();
    for r in results.iter().filter(|r| r.workload != Workload::Floor) {
        if let Some(f) = floors.get(&(r.round, r.concurrency)) {
            ratios
                .entry((r.concurrency, r.workload))
                .or_default()
                .push(r.throughput() / f);
        }
    }
    if ratios.is_empty() {
        return;
    }
    println!("throughput as a share of the floor (same round, same concurrency):");
    for ((c, w), mut xs) in ratios {
        xs.sort_by(f64::total_cmp);
        let median = xs[xs.len() / 2];
        let range = if xs.len() > 1 {
            format!(
                " (rounds: {:.1}%..{:.1}%, n={})",
                100.0 * xs[0],
                100.0 * xs[xs.len() - 1],
                xs.len()
            )
        } else {
            String::new()
        };
        println!(
            "  {:<12} c={c:<3} {:5.1}% of floor{range}",
            w.name(),
            100.0 * median
        );
    }
}
