//! Admission control: a server-wide limit on requests in flight with load
//! shedding. A request over the limit is answered RESOURCE_EXHAUSTED at once
//! instead of queueing without bound; waiters (WaitForCachedExecution) hold no
//! thread and have a separate, larger limit. It also reports an oversized
//! message as RESOURCE_EXHAUSTED, as grpc-go and grpc-java do (tonic's decoder
//! says OUT_OF_RANGE).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response};
use tokio::sync::Semaphore;
use tonic::Status;
use tower::{Layer, Service};

/// Limits on requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Requests (other than waits) in flight at once.
    pub max_in_flight: usize,
    /// WaitForCachedExecution calls waiting at once.
    pub max_waiters: usize,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_in_flight: 1024,
            max_waiters: 10_000,
        }
    }
}

#[derive(Clone)]
pub struct AdmissionLayer {
    requests: Arc<Semaphore>,
    waiters: Arc<Semaphore>,
    limits: AdmissionLimits,
}

impl AdmissionLayer {
    /// One layer (and so one pair of semaphores) shared by every service it wraps.
    pub fn new(limits: AdmissionLimits) -> Self {
        AdmissionLayer {
            requests: Arc::new(Semaphore::new(limits.max_in_flight)),
            waiters: Arc::new(Semaphore::new(limits.max_waiters)),
            limits,
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

const OUT_OF_RANGE: &str = "11";
const RESOURCE_EXHAUSTED: &str = "8";

/// Whether a path is a long wait rather than a request doing work.
fn is_wait(path: &str) -> bool {
    path.ends_with("/WaitForCachedExecution")
}

impl<S, B, ResBody> Service<Request<B>> for Admission<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Default + Send + 'static,
    B: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let wait = is_wait(req.uri().path());
        let (sem, limit, what) = if wait {
            (
                &self.layer.waiters,
                self.layer.limits.max_waiters,
                "waiters",
            )
        } else {
            (
                &self.layer.requests,
                self.layer.limits.max_in_flight,
                "requests in flight",
            )
        };
        let Ok(permit) = sem.clone().try_acquire_owned() else {
            let status = Status::resource_exhausted(format!(
                "server overloaded: {limit} {what} already (max_in_flight/max_waiters); retry with backoff"
            ));
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        // Take the ready service, leave a fresh clone for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut resp = inner.call(req).await?;
            drop(permit);
            oversized_is_resource_exhausted(&mut resp);
            Ok(resp)
        })
    }
}

fn oversized_is_resource_exhausted<B>(resp: &mut Response<B>) {
    let h = resp.headers();
    let oversized = h.get("grpc-status").map(HeaderValue::as_bytes)
        == Some(OUT_OF_RANGE.as_bytes())
        && h.get("grpc-message")
            .and_then(|m| m.to_str().ok())
            // grpc-message is percent-encoded on the wire.
            .is_some_and(|m| m.replace("%20", " ").contains("message length too large"));
    if oversized {
        resp.headers_mut()
            .insert("grpc-status", HeaderValue::from_static(RESOURCE_EXHAUSTED));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_oversized_out_of_range_is_rewritten() {
        let mut r = Status::out_of_range("Error, decoded message length too large: found 9 bytes")
            .into_http::<String>();
        oversized_is_resource_exhausted(&mut r);
        assert_eq!(r.headers()["grpc-status"], RESOURCE_EXHAUSTED);
        let mut other = Status::out_of_range("page past the end").into_http::<String>();
        oversized_is_resource_exhausted(&mut other);
        assert_eq!(other.headers()["grpc-status"], OUT_OF_RANGE);
    }

    #[test]
    fn waits_are_told_apart() {
        assert!(is_wait("/stepcache.v1.CacheService/WaitForCachedExecution"));
        assert!(!is_wait("/stepcache.v1.CacheService/GetCachedExecution"));
    }
}
