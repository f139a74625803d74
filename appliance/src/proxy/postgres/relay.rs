//! The relay phase: frames flow both ways unchanged. Only the tags the
//! statement tracker needs are looked at; the rest pass as raw bytes, and a
//! large frame nobody inspects (DataRow, CopyData) streams through without
//! being buffered whole. Buffers are allocated once per session and reused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::codec::{self, backend, frontend, CodecError, FRAME_HEADER_LEN};
use super::tracker::{StatementEvent, Tracker};

/// Bytes read per direction before frames are looked at.
pub const READ_CHUNK: usize = 64 * 1024;

/// Why one direction stopped.
#[derive(Debug)]
pub enum Stop {
    /// Orderly end of stream (or Terminate from the client).
    Closed,
    Io(std::io::Error),
    Protocol(CodecError),
}

/// State shared by the two directions of one session. The mutex is held
/// only while a frame is fed to the tracker, never across an await.
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    pub events: Mutex<Vec<StatementEvent>>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub max_message: usize,
}

impl Shared {
    pub fn new(max_message: usize) -> Self {
        Shared {
            tracker: Mutex::new(Tracker::default()),
            events: Mutex::new(Vec::new()),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            max_message,
        }
    }

    /// Takes the finished statements collected so far.
    pub fn take_events(&self) -> Vec<StatementEvent> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Which way bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Laptop -> upstream.
    Up,
    /// Upstream -> laptop.
    Down,
}

fn inspected(dir: Direction, tag: u8) -> bool {
    match dir {
        Direction::Up => matches!(
            tag,
            frontend::QUERY_TAG
                | frontend::PARSE_TAG
                | frontend::BIND_TAG
                | frontend::EXECUTE_TAG
                | frontend::CLOSE_TAG
                | frontend::SYNC_TAG
                | frontend::FUNCTION_CALL_TAG
                | frontend::TERMINATE_TAG
        ),
        Direction::Down => matches!(
            tag,
            backend::COMMAND_COMPLETE_TAG
                | backend::EMPTY_QUERY_RESPONSE_TAG
                | backend::PORTAL_SUSPENDED_TAG
                | backend::ERROR_RESPONSE_TAG
                | backend::READY_FOR_QUERY_TAG
        ),
    }
}

impl Shared {
    /// Feeds one whole frame; returns true for the client's Terminate.
    fn feed(&self, dir: Direction, tag: u8, body: &[u8]) -> Result<bool, CodecError> {
        let now = Instant::now();
        let mut tracker = self.tracker.lock().unwrap_or_else(|e| e.into_inner());
        match dir {
            Direction::Up => {
                if tag == frontend::TERMINATE_TAG {
                    return Ok(true);
                }
                if let Some(ev) = tracker.on_frontend(tag, body, now)? {
                    self.events
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(ev);
                }
            }
            Direction::Down => {
                let mut events = self.events.lock().unwrap_or_else(|e| e.into_inner());
                tracker.on_backend(tag, body, now, &mut events)?;
            }
        }
        Ok(false)
    }

    fn count(&self, dir: Direction, n: usize) {
        let c = match dir {
            Direction::Up => &self.bytes_up,
            Direction::Down => &self.bytes_down,
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Moves frames from `r` to `w` until end of stream or an error. `buf`
/// holds bytes already read from `r`. `on_batch` runs after each write (the
/// caller audits finished statements there).
pub async fn pump<R, W, F, Fut>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    dir: Direction,
    shared: &Shared,
    mut on_batch: F,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut terminate = false;
    loop {
        // Walk the complete frames at the front of the buffer.
        let mut consumed = 0;
        let mut passthrough = 0usize;
        while buf.len() - consumed >= FRAME_HEADER_LEN {
            let rest = &buf[consumed..];
            let header: [u8; FRAME_HEADER_LEN] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
            let total = match codec::frame_len(&header, shared.max_message) {
                Ok(t) => t,
                Err(e) => return Stop::Protocol(e),
            };
            let tag = header[0];
            if rest.len() < total {
                if !inspected(dir, tag) && total > READ_CHUNK {
                    // A big frame nobody inspects: stream it.
                    passthrough = total - rest.len();
                    consumed = buf.len();
                }
                break;
            }
            if inspected(dir, tag) {
                match shared.feed(dir, tag, &rest[FRAME_HEADER_LEN..total]) {
                    Ok(t) => terminate |= t,
                    Err(e) => return Stop::Protocol(e),
                }
            }
            consumed += total;
        }
        if consumed > 0 {
            if let Err(e) = w.write_all(&buf[..consumed]).await {
                return Stop::Io(e);
            }
            shared.count(dir, consumed);
            buf.advance(consumed);
        }
        while passthrough > 0 {
            buf.clear();
            let want = passthrough.min(buf.capacity().max(READ_CHUNK));
            buf.reserve(want);
            let n = match (&mut *r).take(want as u64).read_buf(buf).await {
                Ok(0) => return Stop::Io(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) => return Stop::Io(e),
            };
            if let Err(e) = w.write_all(&buf[..n]).await {
                return Stop::Io(e);
            }
            shared.count(dir, n);
            passthrough -= n;
            buf.clear();
        }
        if let Err(e) = w.flush().await {
            return Stop::Io(e);
        }
        on_batch().await;
        if terminate {
            return Stop::Closed;
        }
        // Room for the rest of an inspected frame (bounded by max_message).
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            let need = match buf.first_chunk::<FRAME_HEADER_LEN>() {
                Some(h) => codec::frame_len(h, shared.max_message).unwrap_or(READ_CHUNK),
                None => READ_CHUNK,
            };
            buf.reserve(need.saturating_sub(buf.len()).max(READ_CHUNK));
        }
        match r.read_buf(buf).await {
            Ok(0) => return Stop::Closed,
            Ok(_) => {}
            Err(e) => return Stop::Io(e),
        }
    }
}
