//! The byte streams handed to russh: the tunnel stream (with the bytes that
//! arrived with the tunnel header replayed first) and the upstream TCP
//! connection. Both count bytes and die when the session's kill token fires,
//! so a revoked session closes even if russh is busy elsewhere.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Bytes read from and written to one stream.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub read: AtomicU64,
    pub written: AtomicU64,
}

impl Counters {
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// A stream that replays `prefix` first, counts bytes, and fails every
/// operation once `kill` is cancelled.
pub(super) struct Guarded<S> {
    inner: S,
    prefix: Bytes,
    kill: Pin<Box<WaitForCancellationFutureOwned>>,
    killed: bool,
    counters: Arc<Counters>,
    /// Fired by the first byte read (see [`Guarded::on_first_byte`]).
    first_byte: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<S> Guarded<S> {
    pub fn new(inner: S, prefix: Bytes, kill: CancellationToken, counters: Arc<Counters>) -> Self {
        Guarded {
            inner,
            prefix,
            kill: Box::pin(kill.cancelled_owned()),
            killed: false,
            counters,
            first_byte: None,
        }
    }

    /// A receiver that completes when the first byte has been read.
    pub fn on_first_byte(&mut self) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.first_byte = Some(tx);
        rx
    }

    fn count_read(&mut self, n: usize) {
        self.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        if n > 0 {
            if let Some(tx) = self.first_byte.take() {
                let _ = tx.send(());
            }
        }
    }

    fn check_kill(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if !self.killed && self.kill.as_mut().poll(cx).is_ready() {
            self.killed = true;
        }
        if self.killed {
            Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "session closed by the appliance",
            ))
        } else {
            Ok(())
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_kill(cx)?;
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            this.count_read(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            this.count_read(n);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.check_kill(cx)?;
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = r {
            this.counters.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_kill(cx)?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
