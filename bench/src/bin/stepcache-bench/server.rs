//! The spawned `stepcache serve` child process: start, wait for SERVING, stop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tonic::transport::Endpoint;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

pub struct ServerProc {
    pub child: Child,
    pub addr: String,
    pub startup: Duration,
}

impl ServerProc {
    pub fn server_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
        if let Some(p) = given {
            return Ok(p.to_path_buf());
        }
        let me = std::env::current_exe()?;
        let bin = me.with_file_name("stepcache");
        if !bin.exists() {
            bail!(
                "{} not found: build it first (cargo build --release) or pass --server-bin",
                bin.display()
            );
        }
        let older = |a: &Path, b: &Path| -> Option<bool> {
            Some(a.metadata().ok()?.modified().ok()? < b.metadata().ok()?.modified().ok()?)
        };
        if older(&bin, &me) == Some(true) {
            eprintln!(
                "# warning: {} is older than this benchmark: run cargo build --release",
                bin.display()
            );
        }
        Ok(bin)
    }

    /// Spawns `stepcache serve` on 127.0.0.1:0 and waits until Health/Check
    /// answers SERVING. `startup` is spawn-to-serving.
    pub async fn spawn(
        bin: &Path,
        data_dir: &Path,
        store: Option<&str>,
        cache_mb: u64,
        hot_hits: usize,
        extra: &[String],
    ) -> anyhow::Result<ServerProc> {
        let start = Instant::now();
        let mut child = Command::new(bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(store.iter().flat_map(|url| ["--store", url]))
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--cache-capacity-mb")
            .arg(cache_mb.to_string())
            .arg("--hot-hits")
            .arg(hot_hits.to_string())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = tokio::sync::oneshot::channel();
        // Read the log for the bound address, then keep draining it.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(tx) = tx.take_if(|_| line.contains("\"serving\"")) {
                    let addr = serde_json::from_str::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v["fields"]["addr"].as_str().map(str::to_string));
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = match tokio::time::timeout(Duration::from_secs(600), rx).await {
            Ok(Ok(Some(a))) => a,
            _ => {
                let _ = child.kill();
                bail!("the server did not log its address (see its stderr)");
            }
        };
        let addr: SocketAddr = addr.parse()?;
        let url = format!("http://{addr}");
        loop {
            if let Ok(ch) = Endpoint::from_shared(url.clone())?.connect().await {
                let ok = HealthClient::new(ch)
                    .check(HealthCheckRequest::default())
                    .await
                    .is_ok();
                if ok {
                    break;
                }
            }
            if let Some(status) = child.try_wait()? {
                bail!("the server exited: {status}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(ServerProc {
            child,
            addr: url,
            startup: start.elapsed(),
        })
    }

    /// SIGTERM (graceful: in-flight requests finish, the store is flushed and
    /// checkpointed); returns how long the server took to exit.
    pub fn stop(mut self) -> anyhow::Result<Duration> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if self.child.try_wait()?.is_some() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        bail!("the server did not stop within 60 s of SIGTERM; killed")
    }
}
