//! Accepted connections as the gRPC server sees them.
//!
//! h2 copies a DATA frame's payload into the connection's write buffer only
//! below a threshold: 256 bytes on a socket that takes vectored writes,
//! 1 KiB on one that does not. A larger payload is queued beside the buffer,
//! and while it is queued the encoder takes no other frame, so the
//! connection writes. A cache hit's reply (~0.7 KB) would end a write on a
//! vectored socket, and its trailers would go out in the next one. A socket
//! that reports no vectored writes (`CopyingWrites`) makes h2 copy it
//! instead, so that the replies of many streams share one write. Payloads of
//! 1 KiB and more are written from their own buffer.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// A connection that reports no vectored writes (see the module); reads,
/// writes and the peer's address are the inner connection's.
pub struct CopyingWrites<T>(T);

impl<T> CopyingWrites<T> {
    pub fn new(inner: T) -> Self {
        CopyingWrites(inner)
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CopyingWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CopyingWrites<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        // Callers that ignore `is_write_vectored` still get a correct write.
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for CopyingWrites<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.0.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    /// What h2 asks before it picks its copy threshold, and what a write
    /// through the wrapper delivers, vectored or not.
    #[tokio::test]
    async fn a_connection_reports_no_vectored_writes_and_delivers_every_byte() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let mut server = CopyingWrites::new(accepted.unwrap().0);
        let mut client = client.unwrap();
        assert!(!server.is_write_vectored());
        assert_eq!(server.connect_info().local_addr(), client.peer_addr().ok());

        server.write_all(b"head ").await.unwrap();
        let parts = [IoSlice::new(b"one "), IoSlice::new(b"two")];
        let mut sent = 0;
        while sent < 7 {
            let skip = sent.min(4);
            let rest: Vec<IoSlice<'_>> = if skip < 4 {
                vec![IoSlice::new(&b"one "[skip..]), parts[1]]
            } else {
                vec![IoSlice::new(&b"two"[sent - 4..])]
            };
            sent += server.write_vectored(&rest).await.unwrap();
        }
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"head one two");

        client.write_all(b"back").await.unwrap();
        let mut back = [0u8; 4];
        server.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }
}
