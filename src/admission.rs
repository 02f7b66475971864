//! Admission control: a server-wide limit on requests in flight with load
//! shedding. A request over the limit is answered RESOURCE_EXHAUSTED at once
//! instead of queueing without bound; waiters (WaitForCachedExecution) hold no
//! thread and have a separate, larger limit. It also reports an oversized
//! message as RESOURCE_EXHAUSTED, as grpc-go and grpc-java do (tonic's decoder
//! says OUT_OF_RANGE).
//!
//! A request is admitted once its body has been received whole, not when its
//! headers arrive: a client that sends headers and part of a body, then
//! nothing, holds no admission capacity, and its request fails with
//! DEADLINE_EXCEEDED once the body has taken longer than `body_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::{Layer, Service};

/// Limits on requests in flight.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionLimits {
    /// Requests (other than waits) in flight at once.
    pub max_in_flight: usize,
    /// WaitForCachedExecution calls waiting at once.
    pub max_waiters: usize,
    /// Longest a request's body may take to arrive, from its headers.
    pub body_timeout: Duration,
}

impl Default for AdmissionLimits {
    fn default() -> Self {
        AdmissionLimits {
            max_in_flight: 1024,
            max_waiters: 10_000,
            body_timeout: Duration::from_secs(30),
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
    S: Service<Request<Admitted<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
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
        // The body takes the permit when it ends; the reply keeps it.
        let permit = Arc::new(OnceLock::new());
        let gate = Gate {
            sem: sem.clone(),
            limit,
            what,
            permit: permit.clone(),
        };
        let req = req.map(|body| Admitted {
            inner: body,
            gate: Some(gate),
            deadline: tokio::time::sleep(self.layer.limits.body_timeout),
            timeout: self.layer.limits.body_timeout,
        });
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

/// Admission of one request, taken when its body ends.
struct Gate {
    sem: Arc<Semaphore>,
    limit: usize,
    what: &'static str,
    /// Where the permit goes, held until the reply is ready.
    permit: Arc<OnceLock<OwnedSemaphorePermit>>,
}

impl Gate {
    fn admit(self) -> Result<(), Status> {
        let permit = self.sem.try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "server overloaded: {} {} already (max_in_flight/max_waiters); retry with backoff",
                self.limit, self.what
            ))
        })?;
        let _ = self.permit.set(permit);
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A request body that admits its request when it ends (an error then:
    /// RESOURCE_EXHAUSTED) and fails with DEADLINE_EXCEEDED when it has not
    /// ended by its deadline. tonic answers a request whose body fails with
    /// that error's status.
    pub struct Admitted<B> {
        #[pin]
        inner: B,
        gate: Option<Gate>,
        #[pin]
        deadline: tokio::time::Sleep,
        timeout: Duration,
    }
}

impl<B> Body for Admitted<B>
where
    B: Body,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = B::Data;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if this.gate.is_none() {
            return polled.map_err(Into::into);
        }
        let ended = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(frame))) => frame.is_trailers(),
            Poll::Ready(Some(Err(_))) => false,
            Poll::Pending => {
                if this.deadline.poll(cx).is_ready() {
                    *this.gate = None;
                    let status = Status::deadline_exceeded(format!(
                        "the request body did not arrive within {:?} (body_timeout)",
                        this.timeout
                    ));
                    return Poll::Ready(Some(Err(status.into())));
                }
                false
            }
        };
        if ended {
            if let Some(gate) = this.gate.take() {
                if let Err(status) = gate.admit() {
                    return Poll::Ready(Some(Err(status.into())));
                }
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        // Not before it is admitted: the end must be polled for.
        self.gate.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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
