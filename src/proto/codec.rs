//! The services' codec: tonic-prost's, except that a message that does not
//! decode is answered INVALID_ARGUMENT (the sender's fault) rather than
//! INTERNAL, so that garbage from a client is neither reported nor counted
//! as a fault of the server. (Clients built from the same code get the same
//! code for a reply that does not decode.) A large message is decoded with
//! its worker handed over to another thread (`off_worker`), so that health
//! and small calls on the same worker keep being answered meanwhile.

use prost::bytes::Buf;
use prost::Message;
use tonic::codec::{BufferSettings, DecodeBuf};
use tonic::Status;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// `ProstCodec` with decode errors as INVALID_ARGUMENT.
pub struct Codec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec(ProstCodec::default())
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(self.0.decoder())
    }
}

/// `ProstDecoder` with decode errors as INVALID_ARGUMENT.
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let len = buf.remaining();
        off_worker(len, || self.0.decode(buf)).map_err(|s| {
            Status::invalid_argument(crate::error::bounded(format!(
                "undecodable message: {}",
                s.message()
            )))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Messages at least this long are decoded off the async worker.
const OFF_WORKER_BYTES: usize = 64 * 1024;

/// Runs `decode` (of a message of `len` bytes) where it cannot hold up the
/// async worker's other tasks: on a multi-thread runtime, a large message is
/// decoded under `block_in_place`, which first hands the worker's queue to
/// another thread. A current-thread runtime (`--worker-threads 1`) has no
/// other thread to hand it to, and decodes in place.
fn off_worker<R>(len: usize, decode: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if len >= OFF_WORKER_BYTES && multi_thread {
        tokio::task::block_in_place(decode)
    } else {
        decode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// One worker decoding a large message: a task queued on that worker
    /// still runs before the decode ends (the decode here waits for it, so
    /// decoding in place would never see it run).
    #[test]
    fn a_large_decode_lets_the_workers_other_tasks_run() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let ran = rt.block_on(async {
            tokio::spawn(async {
                let (tx, rx) = std::sync::mpsc::channel();
                // Queued on this worker; it can run only if the decode below
                // gives the worker up.
                tokio::spawn(async move {
                    let _ = tx.send(());
                });
                off_worker(OFF_WORKER_BYTES, || {
                    rx.recv_timeout(Duration::from_secs(10))
                })
            })
            .await
            .unwrap()
        });
        assert!(ran.is_ok(), "the other task waited for the decode to end");
    }
}
