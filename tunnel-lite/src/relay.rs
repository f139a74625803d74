//! Bidirectional byte relay with fixed buffers and byte counters.
//!
//! Like `tokio::io::copy_bidirectional`, but the counters stay readable when
//! the relay is abandoned (revocation, shutdown), so the audit record still
//! has the bytes each way. One buffer per direction, reused for every chunk:
//! nothing is allocated per forwarded chunk. A direction starts with a small
//! buffer and grows it once, to [`RELAY_BUF`], the first time a read fills
//! it: an idle or chatty session holds 2 x [`INITIAL_BUF`], a bulk one
//! 2 x [`RELAY_BUF`] after one reallocation per direction.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held per direction once it carried bulk data. One TLS record's
/// worth of plaintext.
pub const RELAY_BUF: usize = 16 * 1024;

/// Bytes held per direction until a read fills them.
pub const INITIAL_BUF: usize = 1024;

/// Which side ended the relay first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Both directions reached end of stream and were shut down.
    Both,
}

struct Direction {
    buf: Vec<u8>,
    pos: usize,
    cap: usize,
    total: u64,
    read_done: bool,
    shut_down: bool,
    need_flush: bool,
}

impl Direction {
    fn new() -> Self {
        Direction {
            buf: vec![0u8; INITIAL_BUF],
            pos: 0,
            cap: 0,
            total: 0,
            read_done: false,
            shut_down: false,
            need_flush: false,
        }
    }

    /// Moves bytes from `r` to `w` until one would block or `r` ends.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.pos == self.cap && !self.read_done {
                self.pos = 0;
                self.cap = 0;
                let mut rb = ReadBuf::new(&mut self.buf[..]);
                match r.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        let n = rb.filled().len();
                        if n == 0 {
                            self.read_done = true;
                        } else {
                            self.cap = n;
                            if n == self.buf.len() && n < RELAY_BUF {
                                // More is coming than the small buffer holds:
                                // grow once (the bytes read are kept).
                                self.buf.resize(RELAY_BUF, 0);
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        // Nothing more to read now: push out what the writer buffered.
                        if self.need_flush {
                            ready!(w.as_mut().poll_flush(cx))?;
                            self.need_flush = false;
                        }
                        return Poll::Pending;
                    }
                }
            }
            while self.pos < self.cap {
                let n = ready!(w.as_mut().poll_write(cx, &self.buf[self.pos..self.cap]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "peer stopped accepting bytes",
                    )));
                }
                self.pos += n;
                self.total += n as u64;
                self.need_flush = true;
            }
            if self.read_done && self.pos == self.cap {
                if self.need_flush {
                    ready!(w.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                if !self.shut_down {
                    // Propagate the half-close so the far side sees end of stream.
                    ready!(w.as_mut().poll_shutdown(cx))?;
                    self.shut_down = true;
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Relays between `a` (the laptop side) and `b` (the upstream) until both
/// directions end. Poll it (e.g. in `select!` with a cancellation) and read
/// the counters afterwards, whether it finished or not.
pub struct Relay<'s, A: ?Sized, B: ?Sized> {
    a: &'s mut A,
    b: &'s mut B,
    a_to_b: Direction,
    b_to_a: Direction,
    a_to_b_done: bool,
    b_to_a_done: bool,
}

impl<'s, A, B> Relay<'s, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    pub fn new(a: &'s mut A, b: &'s mut B) -> Self {
        Relay {
            a,
            b,
            a_to_b: Direction::new(),
            b_to_a: Direction::new(),
            a_to_b_done: false,
            b_to_a_done: false,
        }
    }

    /// Bytes written to `b` (laptop -> upstream) so far.
    pub fn up(&self) -> u64 {
        self.a_to_b.total
    }

    /// Bytes written to `a` (upstream -> laptop) so far.
    pub fn down(&self) -> u64 {
        self.b_to_a.total
    }

    /// Whether the upstream ended its side (true) before the laptop did.
    pub fn upstream_closed_first(&self) -> bool {
        self.b_to_a.read_done && !self.a_to_b.read_done
    }
}

impl<A, B> Future for Relay<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    type Output = io::Result<Closed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.a_to_b_done {
            match this
                .a_to_b
                .poll_copy(cx, Pin::new(&mut *this.a), Pin::new(&mut *this.b))
            {
                Poll::Ready(Ok(())) => this.a_to_b_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if !this.b_to_a_done {
            match this
                .b_to_a
                .poll_copy(cx, Pin::new(&mut *this.b), Pin::new(&mut *this.a))
            {
                Poll::Ready(Ok(())) => this.b_to_a_done = true,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if this.a_to_b_done && this.b_to_a_done {
            Poll::Ready(Ok(Closed::Both))
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_counts() {
        let (mut laptop, mut a) = tokio::io::duplex(1024);
        let (mut b, mut upstream) = tokio::io::duplex(1024);
        let relay_task = tokio::spawn(async move {
            let mut relay = Relay::new(&mut a, &mut b);
            let r = (&mut relay).await;
            (r.is_ok(), relay.up(), relay.down())
        });
        let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let p2 = payload.clone();
        let writer = tokio::spawn(async move {
            laptop.write_all(&p2).await.unwrap();
            laptop.shutdown().await.unwrap();
            let mut back = Vec::new();
            laptop.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        upstream.write_all(b"pong").await.unwrap();
        upstream.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"pong");
        let (ok, up, down) = relay_task.await.unwrap();
        assert!(ok);
        assert_eq!((up, down), (100_000, 4));
    }

    #[tokio::test]
    async fn buffers_start_small_and_grow_once_for_bulk() {
        let (mut laptop, mut a) = tokio::io::duplex(64 * 1024);
        let (mut b, mut upstream) = tokio::io::duplex(64 * 1024);
        let mut relay = Relay::new(&mut a, &mut b);
        assert_eq!(relay.a_to_b.buf.len(), INITIAL_BUF);
        // A few bytes: the small buffer stays.
        laptop.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        tokio::select! {
            _ = &mut relay => panic!("relay should not finish"),
            r = upstream.read_exact(&mut four) => { r.unwrap(); }
        }
        assert_eq!(relay.a_to_b.buf.len(), INITIAL_BUF);
        // Bulk: grows to RELAY_BUF and every byte arrives in order.
        let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let p2 = payload.clone();
        let writer = async move {
            laptop.write_all(&p2).await.unwrap();
            laptop
        };
        let mut got = vec![0u8; payload.len()];
        let reader = upstream.read_exact(&mut got);
        tokio::select! {
            _ = &mut relay => panic!("relay should not finish"),
            (_, r) = async { tokio::join!(writer, reader) } => { r.unwrap(); }
        }
        assert_eq!(got, payload);
        assert_eq!(relay.a_to_b.buf.len(), RELAY_BUF);
        assert_eq!(relay.b_to_a.buf.len(), INITIAL_BUF);
    }

    #[tokio::test]
    async fn counters_survive_abandonment() {
        let (mut laptop, mut a) = tokio::io::duplex(64);
        let (mut b, mut upstream) = tokio::io::duplex(64);
        laptop.write_all(b"hello").await.unwrap();
        let mut relay = Relay::new(&mut a, &mut b);
        let mut buf = [0u8; 5];
        tokio::select! {
            _ = &mut relay => panic!("relay should not finish"),
            r = upstream.read_exact(&mut buf) => { r.unwrap(); }
        }
        // The relay was not polled to completion, yet the count is there.
        assert_eq!(relay.up(), 5);
        assert_eq!(&buf, b"hello");
    }
}
