//! Streaming bodies, frame by frame, never buffered whole: [`UpBody`] (the
//! client's request body on its way upstream) counts bytes and says when it
//! has been sent in full; [`DownBody`] (what the client receives: the
//! upstream's body or a gateway answer) counts bytes and carries the
//! request's audit log, which it finishes at the end.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::oneshot;

use super::audit::RequestLog;

/// The client's request body, forwarded upstream.
pub struct UpBody {
    inner: Source,
    sent: Arc<AtomicU64>,
    done: Option<oneshot::Sender<()>>,
}

impl UpBody {
    /// Wraps `inner`; `done` fires once it has been forwarded in full (or
    /// dropped). `sent` counts its data bytes.
    pub fn new(inner: Incoming, sent: Arc<AtomicU64>) -> (UpBody, oneshot::Receiver<()>) {
        Self::with(Source::Upstream(inner), sent)
    }

    /// A body that was read in full first (held for approval).
    pub fn buffered(bytes: Bytes, sent: Arc<AtomicU64>) -> (UpBody, oneshot::Receiver<()>) {
        let bytes = if bytes.is_empty() { None } else { Some(bytes) };
        Self::with(Source::Full(bytes), sent)
    }

    fn with(inner: Source, sent: Arc<AtomicU64>) -> (UpBody, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let mut body = UpBody {
            inner,
            sent,
            done: Some(tx),
        };
        if body.inner.is_end_stream() {
            body.finish();
        }
        (body, rx)
    }

    fn finish(&mut self) {
        if let Some(tx) = self.done.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for UpBody {
    fn drop(&mut self) {
        self.finish();
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = this.inner.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.sent.fetch_add(d.len() as u64, Ordering::Relaxed);
                }
                if this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(_) => this.finish(),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A streamed (`Upstream`: from a peer) or already complete body.
enum Source {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl Source {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Source::Full(b) => b.is_none(),
            Source::Upstream(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Source::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Upstream(b) => b.size_hint(),
        }
    }
}

/// What the client receives.
pub struct DownBody {
    source: Source,
    log: Option<RequestLog>,
}

impl DownBody {
    /// The upstream's response body.
    pub fn upstream(body: Incoming, log: RequestLog) -> DownBody {
        DownBody::with(Source::Upstream(body), Some(log))
    }

    /// A body the gateway wrote itself.
    pub fn full(bytes: Bytes, log: Option<RequestLog>) -> DownBody {
        let bytes = if bytes.is_empty() { None } else { Some(bytes) };
        DownBody::with(Source::Full(bytes), log)
    }

    fn with(source: Source, log: Option<RequestLog>) -> DownBody {
        let mut body = DownBody { source, log };
        // hyper may never poll a body that is empty from the start.
        if body.is_end_stream() {
            if let Some(log) = body.log.as_mut() {
                log.complete();
            }
        }
        body
    }

    fn end(&mut self) {
        if let Some(mut log) = self.log.take() {
            log.complete();
        }
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let res = this.source.poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(log)) = (frame.data_ref(), this.log.as_mut()) {
                    log.down += d.len() as u64;
                }
                if this.is_end_stream() {
                    this.end();
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(log) = this.log.as_mut() {
                    log.failed(format!("the upstream's response body broke off: {e}"));
                }
            }
            Poll::Ready(None) => this.end(),
            Poll::Pending => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.source.size_hint()
    }
}
