//! The `stepcache` command: a thin CLI over the library.

/// mimalloc instead of glibc's malloc: sled allocates and frees a node's keys
/// and values on every page-in, which glibc's malloc serves slowly under
/// concurrent lookups. Built with lazy arena commit (`.cargo/config.toml`):
/// its eager default holds far more RSS under concurrent writers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::{IsTerminal, Read};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use stepcache::proto::TaskInterface;
use stepcache::server::{self, Config};
use stepcache::store::backup;
use stepcache::{cli, json, key};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "stepcache",
    version,
    about = "A gRPC cache and metadata store for pipeline tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

// Parsed once at start: the size of `Serve`, the largest, does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the gRPC server on the embedded sled store (or on PostgreSQL with --store).
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Serve from a PostgreSQL database (postgres://user@host/db) shared by
        /// any number of replicas, instead of sled under --data-dir.
        #[arg(long, env = "STEPCACHE_STORE")]
        store: Option<String>,
        /// Directory of the embedded store (created if missing).
        #[arg(long, default_value = "./stepcache-data")]
        data_dir: PathBuf,
        /// sled's page cache in MiB (its memory use runs somewhat above it).
        /// The default keeps a 1M-execution store's server under 512 MiB;
        /// lookups do not need more.
        #[arg(long, default_value_t = 32)]
        cache_capacity_mb: u64,
        /// Hits kept in memory (the newest servable one per key; 0 = off).
        #[arg(long, default_value_t = 20_000)]
        hot_hits: usize,
        /// Size limit of the hits file in MiB (`hits.log` in the data dir:
        /// every cached hit, so that a hit not in memory reads its ~0.25 KB
        /// record instead of a sled leaf; past the limit it starts over).
        /// 0: no hits file.
        #[arg(long, default_value_t = 2048)]
        hit_log_mb: u64,
        /// Threads that serve store reads (lookups, gets, lists); default:
        /// two per core, at least 4; 0: reads take tokio's blocking threads.
        #[arg(long)]
        read_threads: Option<usize>,
        /// Threads that apply store writes (puts, reservations, deletes);
        /// writes beyond them queue without a thread. 0: each write takes a
        /// tokio blocking thread.
        #[arg(long, default_value_t = stepcache::pool::Pool::DEFAULT_WRITE_THREADS)]
        write_threads: usize,
        /// Threads that run the gRPC service (tokio workers); default: one per
        /// core. Fewer leave cores to other processes sharing the machine.
        /// With 1, tokio's current-thread scheduler runs the service.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        worker_threads: Option<u16>,
        /// Largest decoded gRPC message in bytes.
        #[arg(long, default_value_t = 32 * 1024 * 1024)]
        max_message_bytes: usize,
        /// Largest page of a List call.
        #[arg(long, default_value_t = 1000)]
        max_page_size: usize,
        /// Most entries in each map or list of an interface, and most outputs of a PutExecution.
        #[arg(long, default_value_t = 10_000)]
        max_interface_entries: usize,
        /// Longest string field (names, URIs, image...), in bytes.
        #[arg(long, default_value_t = 64 * 1024)]
        max_string_bytes: usize,
        /// Requests in flight at once; more are answered RESOURCE_EXHAUSTED at once.
        #[arg(long, default_value_t = 1024)]
        max_in_flight: usize,
        /// WaitForCachedExecution calls waiting at once.
        #[arg(long, default_value_t = 10_000)]
        max_waiters: usize,
        /// Longest a request's body may take to arrive (then DEADLINE_EXCEEDED);
        /// a request is admitted under --max-in-flight only once it has.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        body_timeout: std::time::Duration,
        /// Connections open at once; more are closed when accepted. Default:
        /// 3/4 of the open-file limit, at most 10000.
        #[arg(long)]
        max_connections: Option<usize>,
        /// Close a connection that has sent nothing for this long (the server
        /// pings every connection more often than that, so only a peer that
        /// does not speak HTTP/2 or has gone silent is closed).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        idle_timeout: std::time::Duration,
        /// Calls open at once on one HTTP/2 connection (MAX_CONCURRENT_STREAMS).
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        max_streams_per_connection: u32,
        /// Bearer tokens file (lines `TOKEN NS[,NS...]` or `TOKEN *`); auth is off without it.
        #[arg(long)]
        auth_tokens: Option<PathBuf>,
        /// PEM certificate chain for TLS (with --tls-key).
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// PEM private key for TLS (with --tls-cert).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Log format; the level comes from RUST_LOG (default info; at debug,
        /// one line per call with its method, code and latency).
        #[arg(long, value_enum, default_value = "pretty")]
        log_format: LogFormat,
        /// Serve Prometheus metrics on http://ADDR/metrics (off by default),
        /// e.g. 127.0.0.1:9464.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Label metrics by namespace even with --auth-tokens (the metrics
        /// listener has no auth; with auth on, they show totals only).
        #[arg(long)]
        metrics_namespaces: bool,
    },
    /// Write a backup of a stopped server's store to stdout (or --output).
    Export {
        /// Directory of the store; refused while a server has it open.
        #[arg(long)]
        data_dir: PathBuf,
        /// Write here instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Restore a backup from stdin (or --input) into a new or empty data dir.
    Import {
        /// Directory of the new store (created if missing; must hold no records).
        #[arg(long)]
        data_dir: PathBuf,
        /// Read here instead of stdin.
        #[arg(long, short = 'i')]
        input: Option<PathBuf>,
    },
    /// Ask a server whether a task (a TaskInterface in protojson) would hit.
    Get {
        #[arg(long)]
        interface: PathBuf,
        /// Look up as a manual run (trigger MANUAL: the cache is not read).
        #[arg(long)]
        manual: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Make cache entries unservable, by key, execution, artifact or component.
    Invalidate {
        #[command(flatten)]
        by: cli::InvalidateBy,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Cache entries and lookup counts of a namespace.
    Stats {
        #[command(flatten)]
        target: cli::Target,
    },
    /// Why a task misses: the nearest recorded execution and what differs.
    Explain {
        #[arg(long)]
        interface: PathBuf,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Delete executions older than a given age (e.g. 30d), with their events,
    /// cache entries and output artifacts nothing else references.
    Prune {
        #[arg(long)]
        older_than: String,
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Drop expired and invalidated cache-index entries.
    Gc {
        /// Every namespace, not only --namespace.
        #[arg(long)]
        all_namespaces: bool,
        #[command(flatten)]
        target: cli::Target,
    },
    /// Check the integrity of a data dir (offline: the server must be stopped).
    /// Exits non-zero when a record is not whole.
    Check {
        #[arg(long, default_value = "./stepcache-data")]
        data_dir: PathBuf,
    },
    /// Print the cache key of a TaskInterface in protojson (a file, or - for stdin).
    Key {
        interface: PathBuf,
        /// Also print the canonical fields that were hashed.
        #[arg(long)]
        explain: bool,
    },
}

fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn read_input(path: &PathBuf) -> anyhow::Result<String> {
    if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested: finishing in-flight requests");
}

/// export, import and check read a sled data directory; PostgreSQL has its
/// own tools (pg_dump, pg_restore) and constraints.
fn sled_only(data_dir: &std::path::Path) -> anyhow::Result<()> {
    if stepcache::pg::is_url(&data_dir.to_string_lossy()) {
        anyhow::bail!(
            "this command works on a sled data directory only; for a PostgreSQL store \
             use pg_dump / pg_restore"
        );
    }
    Ok(())
}

/// Runs a client subcommand to completion.
fn client(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

/// The runtime of the gRPC service. One worker runs tokio's current-thread
/// scheduler: with a single worker, the multi-thread one only adds its
/// cross-thread queues and wakeups.
/// Blocking work (sled) goes to the blocking pool with either.
fn service_runtime(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.into());
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all().build()
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            listen,
            store,
            data_dir,
            cache_capacity_mb,
            max_message_bytes,
            hot_hits,
            hit_log_mb,
            read_threads,
            write_threads,
            worker_threads,
            max_page_size,
            max_interface_entries,
            max_string_bytes,
            max_in_flight,
            max_waiters,
            body_timeout,
            max_connections,
            idle_timeout,
            max_streams_per_connection,
            auth_tokens,
            tls_cert,
            tls_key,
            log_format,
            metrics_listen,
            metrics_namespaces,
        } => {
            init_logs(log_format);
            let mut config = Config::new(data_dir);
            match store {
                Some(url) if stepcache::pg::is_url(&url) => config.store_url = Some(url),
                Some(other) => anyhow::bail!(
                    "--store {other:?}: expected postgres://user@host/db (sled is the default; \
                     choose its directory with --data-dir)"
                ),
                None => {}
            }
            config.metrics_listen = metrics_listen;
            config.metrics_namespaces_with_auth = metrics_namespaces;
            config.store.cache_capacity = cache_capacity_mb * 1024 * 1024;
            config.store.hot_hits = hot_hits;
            config.store.hit_log_bytes = hit_log_mb * 1024 * 1024;
            if let Some(n) = read_threads {
                config.read_threads = n;
            }
            config.write_threads = write_threads;
            config.limits.max_message_bytes = max_message_bytes;
            config.limits.max_page_size = max_page_size.clamp(1, 1000);
            config.limits.max_interface_entries = max_interface_entries;
            config.limits.max_string_bytes = max_string_bytes;
            config.admission.max_in_flight = max_in_flight.max(1);
            config.admission.max_waiters = max_waiters.max(1);
            config.admission.body_timeout = body_timeout;
            if let Some(n) = max_connections {
                config.connections.max_connections = n.max(1);
            }
            config.connections.idle_timeout = idle_timeout.max(std::time::Duration::from_secs(1));
            config.connections.max_streams_per_connection = max_streams_per_connection;
            if let Some(path) = auth_tokens {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                config.auth = Some(std::sync::Arc::new(
                    stepcache::auth::Tokens::parse(&text)
                        .with_context(|| format!("in {}", path.display()))?,
                ));
            }
            if let (Some(cert), Some(key)) = (tls_cert, tls_key) {
                config.tls = Some(server::TlsPem {
                    cert: std::fs::read(&cert)
                        .with_context(|| format!("reading {}", cert.display()))?,
                    key: std::fs::read(&key)
                        .with_context(|| format!("reading {}", key.display()))?,
                });
            }
            service_runtime(worker_threads)?.block_on(async move {
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                server::run(listener, config, shutdown_signal()).await
            })
        }
        Command::Export { data_dir, output } => {
            sled_only(&data_dir)?;
            let summary = match output {
                Some(path) => {
                    let file = std::fs::File::create(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    backup::export_dir(&data_dir, file)?
                }
                None => {
                    let stdout = std::io::stdout().lock();
                    if stdout.is_terminal() {
                        anyhow::bail!("refusing to write a binary backup to a terminal: redirect stdout or use --output");
                    }
                    backup::export_dir(&data_dir, stdout)?
                }
            };
            eprintln!(
                "exported {} records (IDs up to {}) from {}",
                summary.records,
                summary.id_high_water,
                data_dir.display()
            );
            Ok(())
        }
        Command::Import { data_dir, input } => {
            sled_only(&data_dir)?;
            let summary = match input {
                Some(path) => {
                    let file = std::fs::File::open(&path)
                        .with_context(|| format!("opening {}", path.display()))?;
                    backup::import_dir(&data_dir, file)?
                }
                None => backup::import_dir(&data_dir, std::io::stdin().lock())?,
            };
            eprintln!(
                "imported {} records into {}; new IDs start above {}",
                summary.records,
                data_dir.display(),
                summary.id_high_water
            );
            Ok(())
        }
        Command::Get {
            interface,
            manual,
            target,
        } => client(cli::get(&target, &read_input(&interface)?, manual)),
        Command::Invalidate { by, target } => client(cli::invalidate(&target, by)),
        Command::Stats { target } => client(cli::stats(&target)),
        Command::Explain { interface, target } => {
            client(cli::explain(&target, &read_input(&interface)?))
        }
        Command::Prune {
            older_than,
            dry_run,
            target,
        } => client(cli::prune(&target, &older_than, dry_run)),
        Command::Gc {
            all_namespaces,
            target,
        } => client(cli::gc(&target, all_namespaces)),
        Command::Check { data_dir } => {
            sled_only(&data_dir)?;
            let store = stepcache::store::Store::open(
                &data_dir,
                &Default::default(),
                std::sync::Arc::new(stepcache::clock::SystemClock),
            )?;
            let r = store.check()?;
            // A clean close keeps the hits file's index for the next start.
            store.close()?;
            println!(
                "{} executions, {} artifacts, {} events, {} cache entries, {} problems",
                r.executions,
                r.artifacts,
                r.events,
                r.cache_entries,
                r.problems.len()
            );
            for p in &r.problems {
                println!("  {p}");
            }
            if r.problems.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("the store is not consistent")
            }
        }
        Command::Key { interface, explain } => {
            let ti: TaskInterface =
                json::parse("stepcache.v1.TaskInterface", &read_input(&interface)?)?;
            println!("{}", key::cache_key(&ti)?);
            if explain {
                for (path, value) in key::readable_fields(&ti)? {
                    println!("  {path}={value}");
                }
            }
            Ok(())
        }
    }
}
