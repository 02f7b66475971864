//! Prometheus metrics and the per-request log line.
//!
//! - `MetricsLayer`, a tower layer on the tonic server, counts and times every
//!   gRPC call by method (the request path) and status code, and logs one
//!   debug line per call. Unary errors come back trailers-only (grpc-status in
//!   the headers); an OK status comes in the trailers, so the response body is
//!   wrapped to read them.
//! - Lookup outcomes per namespace are counted by `stats::Stats`.
//! - Reservations held and the store's size on disk are read at scrape time.
//!
//! `serve` answers `GET /metrics` in the OpenMetrics text format (which
//! Prometheus scrapes natively) on its own HTTP/1 listener.

pub mod stats;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use anyhow::Context as _;

use crate::backend::Backend;
use crate::error::code_name;
use crate::store::activity::WriteTotals;
use crate::store::reopen::Reopening;
use stats::Stats;

/// Labels of the per-call metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The gRPC method path, e.g. `/stepcache.v1.CacheService/GetCachedExecution`.
    pub method: String,
    /// The status code name, e.g. `OK`, `NOT_FOUND`.
    pub code: &'static str,
}

/// The namespace label of counts over every namespace, when the metrics do
/// not name namespaces (`Config::metrics_namespaces`).
pub const ALL_NAMESPACES: &str = "*";

/// Labels of the per-namespace lookup counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    pub namespace: String,
    /// `hit`, `miss` or `disabled`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    namespace: String,
}

type HistogramFamily = Family<RpcLabels, Histogram, fn() -> Histogram>;

/// The store's write-path totals (`store::activity`), brought up to date at
/// each scrape.
#[derive(Default)]
struct WriteCounters {
    batches: Counter,
    writes: Counter,
    batch_seconds: Counter<f64, AtomicU64>,
    flushes: Counter,
    flush_seconds: Counter<f64, AtomicU64>,
    hits_write_failures: Counter,
}

impl WriteCounters {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "write_batches",
            "PutExecution write batches applied (one sled transaction each, one at a time)",
            self.batches.clone(),
        );
        registry.register(
            "write_batch_writes",
            "PutExecution writes applied in those batches",
            self.writes.clone(),
        );
        registry.register(
            "write_batch_seconds",
            "Time spent applying write batches; its rate near 1 means puts are bound by \
             the one thread that applies them",
            self.batch_seconds.clone(),
        );
        registry.register(
            "store_flushes",
            "Group flushes that made acknowledged writes durable",
            self.flushes.clone(),
        );
        registry.register(
            "store_flush_seconds",
            "Time spent in group flushes",
            self.flush_seconds.clone(),
        );
        registry.register(
            "hits_file_write_failures",
            "Writes of the hits file that failed or were dropped (a full, read-only or \
             stalled disk); the lookups that made them were served all the same",
            self.hits_write_failures.clone(),
        );
    }

    /// Raises each counter to the store's total (totals only grow).
    fn catch_up(&self, t: &WriteTotals) {
        let whole = |c: &Counter, total: u64| {
            c.inc_by(total.saturating_sub(c.get()));
        };
        let seconds = |c: &Counter<f64, AtomicU64>, total: f64| {
            let behind = total - c.get();
            if behind > 0.0 {
                c.inc_by(behind);
            }
        };
        whole(&self.batches, t.batches);
        whole(&self.writes, t.writes);
        seconds(&self.batch_seconds, t.batch_seconds);
        whole(&self.flushes, t.flushes);
        seconds(&self.flush_seconds, t.flush_seconds);
        whole(&self.hits_write_failures, t.hits_write_failures);
    }
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s; longer waits (WaitForCachedExecution) land in +Inf.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

struct Inner {
    registry: Registry,
    requests: Family<RpcLabels, Counter>,
    latency: HistogramFamily,
    reservations: Family<NamespaceLabels, Gauge>,
    store_bytes: Gauge,
    writes: WriteCounters,
    /// Weak: a scrape connection that outlives the server must not keep the
    /// store (and its directory lock) open.
    store: Weak<dyn Backend>,
    /// The sled store behind `store`, whose write path counts its batches.
    sled: Option<Weak<Reopening>>,
    /// One scrape at a time sets the scrape-time gauges.
    scrape: Mutex<()>,
    /// Whether reservations are counted per namespace (else all as one).
    label_namespaces: bool,
}

/// The registry and the metrics the server updates. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Metrics {
    /// The metrics of a server; `label_namespaces`: whether per-namespace
    /// counts name their namespace (else one count over all, labelled
    /// `ALL_NAMESPACES`).
    /// `sled`: the store behind `store` when it is the sled one.
    pub fn new(
        store: &Arc<dyn Backend>,
        sled: Option<&Arc<Reopening>>,
        stats: &Stats,
        label_namespaces: bool,
    ) -> Metrics {
        let mut registry = Registry::with_prefix("stepcache");
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            requests.clone(),
        );
        let latency = HistogramFamily::new_with_constructor(latency_histogram);
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency by method and status code (until the status is sent)",
            latency.clone(),
        );
        registry.register(
            "cache_lookups",
            "Cache lookups by namespace and outcome (hit, miss, disabled; RESERVED and \
             IN_PROGRESS count as misses) since the server started",
            stats.lookups.clone(),
        );
        let reservations = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "reservations_held",
            "Reservations whose lease has not run out, by namespace",
            reservations.clone(),
        );
        let store_bytes = Gauge::default();
        registry.register(
            "store_size_bytes",
            "Size of the sled store on disk",
            store_bytes.clone(),
        );
        // Only a store with a write path of its own has them (sled).
        let writes = WriteCounters::default();
        if sled.is_some() {
            writes.register(&mut registry);
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                requests,
                latency,
                reservations,
                store_bytes,
                writes,
                store: Arc::downgrade(store),
                sled: sled.map(Arc::downgrade),
                scrape: Mutex::new(()),
                label_namespaces,
            }),
        }
    }

    pub fn layer(&self) -> MetricsLayer {
        MetricsLayer {
            metrics: self.clone(),
        }
    }

    fn observe(&self, method: &str, code: i32, started: Instant) {
        let elapsed = started.elapsed();
        let name = code_name(code);
        tracing::debug!(
            method,
            code = name,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "rpc"
        );
        // Unknown paths all answer UNIMPLEMENTED: one label value for them
        // keeps the label set bounded whatever clients send.
        let method = if code == tonic::Code::Unimplemented as i32 {
            "other".to_string()
        } else {
            method.to_string()
        };
        let labels = RpcLabels { method, code: name };
        self.inner.requests.get_or_create(&labels).inc();
        self.inner
            .latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text of every metric, scrape-time gauges refreshed.
    /// Blocks on the store: run it off the executor.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let inner = &self.inner;
        let _one_at_a_time = inner.scrape.lock();
        if let Some(store) = inner.store.upgrade() {
            match store.reservations_by_namespace() {
                Ok(held) => {
                    inner.reservations.clear();
                    for (namespace, n) in held {
                        let namespace = if inner.label_namespaces {
                            namespace
                        } else {
                            ALL_NAMESPACES.to_string()
                        };
                        inner
                            .reservations
                            .get_or_create(&NamespaceLabels { namespace })
                            .inc_by(n);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot count reservations"),
            }
            match store.size_on_disk() {
                Ok(n) => {
                    inner.store_bytes.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                Err(e) => tracing::warn!(error = %e, "metrics: cannot read the store size"),
            }
            if let Some(sled) = inner.sled.as_ref().and_then(Weak::upgrade) {
                inner.writes.catch_up(&sled.write_totals());
            }
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &inner.registry)?;
        Ok(out)
    }

    async fn respond(
        &self,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> hyper::Response<Full<Bytes>> {
        let reply = |status: u16, content_type: &str, body: String| {
            let mut resp = hyper::Response::new(Full::new(Bytes::from(body)));
            *resp.status_mut() = http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
            if let Ok(v) = http::HeaderValue::from_str(content_type) {
                resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
            }
            resp
        };
        if req.uri().path() != "/metrics" {
            return reply(404, "text/plain", "not found: try /metrics\n".into());
        }
        if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
            return reply(405, "text/plain", "method not allowed\n".into());
        }
        let me = self.clone();
        match tokio::task::spawn_blocking(move || me.render()).await {
            Ok(Ok(text)) => reply(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            ),
            Ok(Err(_)) | Err(_) => reply(500, "text/plain", "cannot render metrics\n".into()),
        }
    }
}

/// When `listen` is set, the task serving `metrics` until `stop` turns true
/// (the server awaits it); the bound address goes to `bound`.
pub async fn start(
    listen: Option<SocketAddr>,
    bound: &OnceLock<SocketAddr>,
    metrics: &Metrics,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let (addr_bound, task) = serve(addr, metrics.clone(), stop)
        .await
        .with_context(|| format!("binding the metrics listener {addr}"))?;
    let _ = bound.set(addr_bound);
    Ok(Some(task))
}

/// Binds `addr` and answers `GET /metrics` until `stop` turns true; open
/// connections are closed gracefully then. Returns the bound address (useful
/// with port 0) and the task.
pub async fn serve(
    addr: SocketAddr,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "serving metrics on /metrics");
    let task = tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "metrics: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stopped(&mut stop) => break,
            };
            let metrics = metrics.clone();
            let mut stop = stop.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(metrics.respond(req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stopped(&mut stop) => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "metrics: connection ended");
                }
            });
        }
    });
    Ok((bound, task))
}

/// Resolves when the server starts shutting down (or is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Counts and times every call; see the module doc.
#[derive(Clone)]
pub struct MetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

#[derive(Clone)]
pub struct MetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, B, RB> tower::Service<http::Request<B>> for MetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<MetricsBody<RB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut call = Call {
            metrics: self.metrics.clone(),
            method: req.uri().path().to_string(),
            started: Instant::now(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => {
                    if let Some(code) = grpc_status(resp.headers()) {
                        // Trailers-only: the status is final now.
                        call.finish(code);
                    } else if resp.status() != http::StatusCode::OK {
                        call.finish(tonic::Code::Unknown as i32);
                    }
                    Ok(resp.map(|body| MetricsBody { inner: body, call }))
                }
                Err(e) => {
                    call.finish(tonic::Code::Unknown as i32);
                    Err(e)
                }
            }
        })
    }
}

/// One call in flight: recorded once, with the status the server sent, or as
/// CANCELLED when the response is dropped before its status went out.
struct Call {
    metrics: Metrics,
    method: String,
    started: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: i32) {
        if !self.done {
            self.done = true;
            self.metrics.observe(&self.method, code, self.started);
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled as i32);
    }
}

pin_project_lite::pin_project! {
    /// The response body, watched for the trailers that carry grpc-status.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        call: Call,
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(tonic::Code::Unknown as i32),
            // The body ended without a status: not a well-formed gRPC reply.
            Poll::Ready(None) => this.call.finish(tonic::Code::Unknown as i32),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<i32> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_reads_headers() {
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_status(&h), None);
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(grpc_status(&h), Some(5));
    }
}
