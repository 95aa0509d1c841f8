//! quinn's connection and stream API, as far as the distribution layer uses it, over
//! [`direct`](super): the same names and shapes, so that `connection.rs`, `send.rs` and
//! `recv.rs` keep their logic and only change where their types come from.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
pub use quinn_proto::{ConnectionError, ConnectionStats, VarInt};
use quinn_proto::{Dir, StreamId};

use super::endpoint::Connection as Conn;
use super::streams::{ChunkNow, StreamError};

/// quinn's `crypto` module path, for `HandshakeData`.
pub mod crypto {
    /// The rustls session's handshake data.
    pub mod rustls {
        pub use quinn_proto::crypto::rustls::HandshakeData;
    }
}

/// A connection handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Connection(pub(crate) Arc<Conn>);

impl From<Arc<Conn>> for Connection {
    fn from(conn: Arc<Conn>) -> Self {
        Self(conn)
    }
}

/// The sending half of a stream.
#[derive(Debug)]
pub struct SendStream {
    conn: Arc<Conn>,
    id: StreamId,
}

/// The receiving half of a stream.
#[derive(Debug)]
pub struct RecvStream {
    conn: Arc<Conn>,
    id: StreamId,
    /// Its end was read (after the chunks returned with it): quinn-proto forgot the stream.
    ended: bool,
}

/// The deadline passed.
#[derive(Debug, Clone, Copy)]
pub struct Elapsed;

impl Connection {
    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.state().conn.remote_address()
    }

    /// QUIC's counters.
    pub fn stats(&self) -> ConnectionStats {
        self.0.state().conn.stats()
    }

    /// Bounds the bytes in flight (small writes may go a little beyond, see
    /// `Connection::write_all_chunks`).
    pub fn set_send_window(&self, window: u64) {
        self.0.set_send_window(window);
    }

    /// The TLS handshake's data (cipher suite, ALPN, server name).
    pub fn handshake_data(&self) -> Option<Box<dyn std::any::Any>> {
        self.0.state().conn.crypto_session().handshake_data()
    }

    /// The peer's certificate chain.
    pub fn peer_identity(&self) -> Option<Box<dyn std::any::Any>> {
        self.0.state().conn.crypto_session().peer_identity()
    }

    /// Closes the connection at once, telling the peer `code` and `reason`.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        self.0.close(code, reason);
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.0.state().lost.clone()
    }

    /// Waits until the connection ends.
    pub async fn closed(&self) -> ConnectionError {
        self.0.closed().await
    }

    /// Opens a unidirectional stream.
    pub async fn open_uni(&self) -> Result<SendStream, StreamError> {
        let id = self.0.open(Dir::Uni).await?;
        Ok(self.send_stream(id))
    }

    /// Waits for the peer's next unidirectional stream.
    pub async fn accept_uni(&self) -> Result<RecvStream, StreamError> {
        let id = self.0.accept(Dir::Uni).await?;
        Ok(self.recv_stream(id))
    }

    /// Opens a bidirectional stream.
    pub async fn open_bi(&self) -> Result<(SendStream, RecvStream), StreamError> {
        let id = self.0.open(Dir::Bi).await?;
        Ok((self.send_stream(id), self.recv_stream(id)))
    }

    /// Waits for the peer's next bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(SendStream, RecvStream), StreamError> {
        let id = self.0.accept(Dir::Bi).await?;
        Ok((self.send_stream(id), self.recv_stream(id)))
    }

    fn send_stream(&self, id: StreamId) -> SendStream {
        SendStream {
            conn: self.0.clone(),
            id,
        }
    }

    fn recv_stream(&self, id: StreamId) -> RecvStream {
        RecvStream {
            conn: self.0.clone(),
            id,
            ended: false,
        }
    }

    /// Runs `future` as a task of the connection's endpoint.
    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.0.spawn(future);
    }

    /// Waits `duration`.
    pub async fn sleep(&self, duration: Duration) {
        let at = Instant::now() + duration;
        let mut armed = false;
        poll_fn(|cx| {
            if Instant::now() >= at {
                return Poll::Ready(());
            }
            if !armed {
                armed = true;
                self.0.wake_at(at, cx.waker().clone());
            }
            Poll::Pending
        })
        .await
    }

    /// `future`'s output, or `Elapsed` after `duration`.
    pub async fn timeout<T>(
        &self,
        duration: Duration,
        future: impl Future<Output = T>,
    ) -> Result<T, Elapsed> {
        let mut future = pin!(future);
        let mut sleep = pin!(self.sleep(duration));
        poll_fn(|cx| {
            if let Poll::Ready(v) = future.as_mut().poll(cx) {
                return Poll::Ready(Ok(v));
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(Elapsed));
            }
            Poll::Pending
        })
        .await
    }
}

impl SendStream {
    /// Streams of higher priority are sent first.
    pub fn set_priority(&self, priority: i32) -> Result<(), StreamError> {
        self.conn
            .state()
            .conn
            .send_stream(self.id)
            .set_priority(priority)
            .map_err(|e| StreamError::Closed(e.to_string()))
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), StreamError> {
        self.conn
            .write_all_chunks(self.id, &mut [Bytes::copy_from_slice(bytes)])
            .await
    }

    /// Writes all of `chunks`.
    pub async fn write_all_chunks(&mut self, chunks: &mut [Bytes]) -> Result<(), StreamError> {
        self.conn.write_all_chunks(self.id, chunks).await
    }

    /// Ends the stream after what was written.
    pub fn finish(&mut self) -> Result<(), StreamError> {
        self.conn.finish(self.id)
    }

    /// Waits until the peer has everything (after `finish`) or stopped the stream.
    pub async fn stopped(&mut self) -> Result<Option<VarInt>, StreamError> {
        self.conn.stopped(self.id).await
    }
}

impl RecvStream {
    /// Fills `buf` exactly.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        let mut got = 0;
        while got < buf.len() {
            if self.ended {
                return Err(StreamError::Closed("stream finished early".into()));
            }
            match self.conn.read_chunk(self.id, buf.len() - got).await? {
                Some(chunk) => {
                    buf[got..got + chunk.len()].copy_from_slice(&chunk);
                    got += chunk.len();
                }
                None => return Err(StreamError::Closed("stream finished early".into())),
            }
        }
        Ok(())
    }

    /// Waits for data, then fills as many of `bufs` as there are chunks ready; `None` at the
    /// end of the stream.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, StreamError> {
        if self.ended {
            return Ok(None);
        }
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        let Some(first) = self.conn.read_chunk(self.id, usize::MAX).await? else {
            self.ended = true;
            return Ok(None);
        };
        bufs[0] = first;
        let mut n = 1;
        while n < bufs.len() {
            match self.conn.try_read_chunk(self.id)? {
                ChunkNow::Chunk(chunk) => {
                    bufs[n] = chunk;
                    n += 1;
                }
                ChunkNow::NotYet => break,
                ChunkNow::End => {
                    // Returned at the next call, after these chunks.
                    self.ended = true;
                    break;
                }
            }
        }
        Ok(Some(n))
    }
}
