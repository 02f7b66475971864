//! Limits on connections, below HTTP/2: how many may be open at once, and how
//! long one may go without sending a byte.
//!
//! A connection over the limit is closed as soon as it is accepted (with a
//! warning at most once a second), so that idle connections cannot exhaust the
//! process's file descriptors. A connection that sends nothing for
//! `idle_timeout` is closed: one that never starts HTTP/2, or a peer gone
//! silent. A live HTTP/2 client is never idle that long, because the server
//! pings each connection every `keepalive_interval` (less than the idle
//! timeout; `server`) and the client's acknowledgements count as bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Limits on the connections of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Close a connection that has sent nothing for this long.
    pub idle_timeout: Duration,
    /// HTTP/2 streams (calls) open at once on one connection.
    pub max_streams_per_connection: u32,
    /// How often the server pings each connection (HTTP/2 PING); one that
    /// does not answer within 20 s is closed. At most half the idle timeout.
    pub keepalive_interval: Duration,
}

impl ConnectionLimits {
    /// The default connection limit: three quarters of the process's limit
    /// on open files (the store and the hits file need some too), at most
    /// 10,000.
    pub fn default_max_connections() -> usize {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX)
        } else {
            1024
        };
        (files / 4 * 3).clamp(16, 10_000)
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: Self::default_max_connections(),
            idle_timeout: Duration::from_secs(120),
            max_streams_per_connection: 256,
            keepalive_interval: Duration::from_secs(30),
        }
    }
}

/// The accepted connections of `incoming` within `limits`.
pub fn limited<I>(
    incoming: I,
    limits: ConnectionLimits,
) -> impl Stream<Item = io::Result<Connection>> + Send + 'static
where
    I: Stream<Item = io::Result<TcpStream>> + Send + 'static,
{
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let last_warning = AtomicU64::new(0);
    let started = Instant::now();
    incoming.filter_map(move |accepted| {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => return Some(Err(e)),
        };
        match open.clone().try_acquire_owned() {
            Ok(permit) => Some(Ok(Connection::new(stream, permit, limits.idle_timeout))),
            Err(_) => {
                let second = started.elapsed().as_secs() + 1;
                if last_warning.swap(second, Ordering::Relaxed) != second {
                    tracing::warn!(
                        max_connections = limits.max_connections,
                        peer = ?stream.peer_addr().ok(),
                        "connection refused: too many open connections (max_connections)"
                    );
                }
                None
            }
        }
    })
}

/// An accepted connection: holds its place under the limit until closed, and
/// fails its reads once the peer has sent nothing for the idle timeout.
pub struct Connection {
    stream: TcpStream,
    _open: OwnedSemaphorePermit,
    idle_timeout: Duration,
    last_read: Instant,
    /// Fires at the earliest moment the connection may be idle too long.
    idle: Pin<Box<Sleep>>,
}

impl Connection {
    fn new(stream: TcpStream, open: OwnedSemaphorePermit, idle_timeout: Duration) -> Self {
        let now = Instant::now();
        Connection {
            stream,
            _open: open,
            idle_timeout,
            last_read: now,
            idle: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    // The timer moves only when it fires (below), not per read.
                    this.last_read = Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => loop {
                if this.idle.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = this.last_read + this.idle_timeout;
                if Instant::now() >= due {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection idle past idle_timeout",
                    )));
                }
                this.idle.as_mut().reset(due);
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}
