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
use super::mask::shapes::Shapes;
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
    /// Masking cannot account for what the server sent: the session ends
    /// rather than pass it on (the reason goes to the client).
    Refused(String),
}

/// State shared by the two directions of one session. The mutex is held
/// only while a frame is fed to the tracker, never across an await.
pub struct Shared {
    pub tracker: Mutex<Tracker>,
    pub events: Mutex<Vec<StatementEvent>>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub max_message: usize,
    /// Result shapes for masking (`None`: masking is off, results pass as they are).
    pub shapes: Option<Mutex<Shapes>>,
}

impl Shared {
    pub fn new(max_message: usize, masking: bool) -> Self {
        Shared {
            tracker: Mutex::new(Tracker::default()),
            events: Mutex::new(Vec::new()),
            bytes_up: AtomicU64::new(0),
            bytes_down: AtomicU64::new(0),
            max_message,
            shapes: masking.then(|| Mutex::new(Shapes::default())),
        }
    }

    /// A frame forwarded upstream, for masking's result shapes. Returns the
    /// Describe the gateway must send right behind it (after a Bind).
    fn shape_frontend(&self, tag: u8, body: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
        let Some(shapes) = &self.shapes else {
            return Ok(None);
        };
        let describe = shapes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .on_frontend(tag, body)?;
        if !describe {
            return Ok(None);
        }
        let portal = frontend::Bind::parse(body)?.portal;
        let mut frame = Vec::with_capacity(portal.len() + 7);
        super::mask::shapes::describe_portal(portal.as_bytes(), &mut frame);
        Ok(Some(frame))
    }

    /// A frame from the server, for the statement tracker.
    pub(super) fn feed_backend(&self, tag: u8, body: &[u8]) -> Result<(), CodecError> {
        if inspected(Direction::Down, tag) {
            self.feed(Direction::Down, tag, body)?;
        }
        Ok(())
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

    pub(super) fn count(&self, dir: Direction, n: usize) {
        let c = match dir {
            Direction::Up => &self.bytes_up,
            Direction::Down => &self.bytes_down,
        };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Forwards the rest (`remaining` bytes) of a large frame nobody inspects,
/// a buffer at a time, without holding it whole.
async fn stream_through<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    mut remaining: usize,
    dir: Direction,
    shared: &Shared,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    while remaining > 0 {
        buf.clear();
        let want = remaining.min(buf.capacity().max(READ_CHUNK));
        buf.reserve(want);
        let n = match (&mut *r).take(want as u64).read_buf(buf).await {
            Ok(0) => return Err(Stop::Io(std::io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => n,
            Err(e) => return Err(Stop::Io(e)),
        };
        w.write_all(&buf[..n]).await.map_err(Stop::Io)?;
        shared.count(dir, n);
        remaining -= n;
        buf.clear();
    }
    Ok(())
}

/// Room for the rest of a frame being buffered (bounded by `max_message`).
pub(super) fn make_room(buf: &mut BytesMut, max_message: usize) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        let need = match buf.first_chunk::<FRAME_HEADER_LEN>() {
            Some(h) => codec::frame_len(h, max_message).unwrap_or(READ_CHUNK),
            None => READ_CHUNK,
        };
        buf.reserve(need.saturating_sub(buf.len()).max(READ_CHUNK));
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
    mut notices: Option<&mut tokio::sync::mpsc::Receiver<Vec<u8>>>,
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
        if let Err(stop) = stream_through(r, w, buf, passthrough, dir, shared).await {
            return stop;
        }
        if let Err(e) = w.flush().await {
            return Stop::Io(e);
        }
        on_batch().await;
        if terminate {
            return Stop::Closed;
        }
        make_room(buf, shared.max_message);
        if let Err(stop) = read_or_notice(r, w, buf, notices.as_deref_mut(), shared, dir).await {
            return stop;
        }
    }
}

/// Waits for more bytes from `r` into `buf`. Everything written so far ends
/// at a message boundary, so a notice from the other direction that comes
/// first is written here (then the caller walks its frames again).
pub(super) async fn read_or_notice<R, W>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    notices: Option<&mut tokio::sync::mpsc::Receiver<Vec<u8>>>,
    shared: &Shared,
    dir: Direction,
) -> Result<(), Stop>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let read = match notices {
        None => r.read_buf(buf).await,
        Some(rx) => tokio::select! {
            read = r.read_buf(buf) => read,
            Some(notice) = rx.recv() => {
                w.write_all(&notice).await.map_err(Stop::Io)?;
                w.flush().await.map_err(Stop::Io)?;
                shared.count(dir, notice.len());
                return Ok(());
            }
        },
    };
    match read {
        Ok(0) => Err(Stop::Closed),
        Ok(_) => Ok(()),
        Err(e) => Err(Stop::Io(e)),
    }
}

/// What the client-to-upstream direction needs for guardrails and holds.
pub struct UpControls<'a> {
    pub controls: super::controls::Controls,
    pub ctx: &'a crate::proxy::SessionContext,
    /// Messages for the client (notices), written by the other direction.
    pub notices: tokio::sync::mpsc::Sender<Vec<u8>>,
    /// Fires when the client sends a CancelRequest for this session.
    pub cancelled: std::sync::Arc<tokio::sync::Notify>,
    /// For the strict-mode record written before a statement is forwarded.
    pub database: String,
}

/// Strict audit mode: the record that must be durable before a Query,
/// Parse or Execute goes upstream. `None` when nothing needs recording.
fn forwarded_record(
    up: &UpControls<'_>,
    tag: u8,
    body: &[u8],
) -> Option<crate::audit::AuditRecord> {
    use crate::audit::AuditMode;
    if up.ctx.shared.audit.mode().0 != AuditMode::Strict {
        return None;
    }
    let (protocol, field, value) = match tag {
        frontend::QUERY_TAG => (
            "simple",
            "statement",
            frontend::Query::parse(body).ok()?.sql.to_string(),
        ),
        frontend::PARSE_TAG => (
            "prepare",
            "statement",
            frontend::Parse::parse(body).ok()?.query.to_string(),
        ),
        frontend::EXECUTE_TAG => (
            "execute",
            "portal",
            frontend::Execute::parse(body).ok()?.portal.to_string(),
        ),
        _ => return None,
    };
    let mut detail = serde_json::json!({ "database": up.database, "protocol": protocol });
    detail[field] = serde_json::Value::from(&*super::tracker::audit_text(&value));
    Some(
        up.ctx
            .audit_record(crate::audit::AuditKind::Statement)
            .outcome("forwarded")
            .detail(detail),
    )
}

/// Why a refused statement did not run, for its audit record.
fn denied_event(
    text: &[u8],
    kind: super::tracker::StepKind,
    control: serde_json::Value,
    message: &str,
) -> StatementEvent {
    StatementEvent {
        kind,
        text: Some(super::tracker::audit_text(&String::from_utf8_lossy(text))),
        statement: None,
        params: None,
        duration: std::time::Duration::ZERO,
        tags: Vec::new(),
        rows: None,
        sqlstate: Some("42501".into()),
        error: Some(message.to_string()),
        outcome: "denied",
        control: Some(control),
    }
}

/// The client-to-upstream direction with guardrails: like [`pump`], but each
/// Query and Parse is classified first; a denied one is replaced by a
/// statement that raises the denial server-side (and, for Parse, everything up
/// to the next Sync is dropped, as the server would skip it); a held one waits
/// for its approval while frames before it are already on their way.
pub async fn pump_up<R, W, F, Fut>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    shared: &Shared,
    up: &mut UpControls<'_>,
    mut on_batch: F,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use super::controls::{fingerprint, raise_query, Verdict};
    use super::hold::{hold, HoldEnd};
    use super::tracker::StepKind;
    let dir = Direction::Up;
    let mut skipping = false;
    loop {
        let mut start = 0;
        let mut at = 0;
        let mut terminate = false;
        let mut passthrough = 0usize;
        while buf.len() - at >= FRAME_HEADER_LEN {
            let header: [u8; FRAME_HEADER_LEN] =
                [buf[at], buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]];
            let total = match codec::frame_len(&header, shared.max_message) {
                Ok(t) => t,
                Err(e) => return Stop::Protocol(e),
            };
            let tag = header[0];
            if buf.len() - at < total {
                if !inspected(dir, tag) && total > READ_CHUNK && !skipping {
                    passthrough = total - (buf.len() - at);
                    at = buf.len();
                }
                break;
            }
            if skipping {
                // A refused Parse: the server never saw it, so nothing up to
                // the Sync may reach it either; the raised error stands for them.
                if at > start {
                    if let Err(e) = w.write_all(&buf[start..at]).await {
                        return Stop::Io(e);
                    }
                    shared.count(dir, at - start);
                }
                if tag == frontend::SYNC_TAG {
                    skipping = false;
                }
                at += total;
                start = at;
                continue;
            }
            let body_range = at + FRAME_HEADER_LEN..at + total;
            if up.controls.active() && (tag == frontend::QUERY_TAG || tag == frontend::PARSE_TAG) {
                let (sql, name) = match tag {
                    frontend::QUERY_TAG => match frontend::Query::parse(&buf[body_range.clone()]) {
                        Ok(q) => (q.sql.as_bytes().to_vec(), None),
                        Err(e) => return Stop::Protocol(e),
                    },
                    _ => match frontend::Parse::parse(&buf[body_range.clone()]) {
                        Ok(p) => (p.query.as_bytes().to_vec(), Some(p.name.to_string())),
                        Err(e) => return Stop::Protocol(e),
                    },
                };
                let (verdict, classes) = up.controls.check(&sql, name.as_deref());
                let class_names: Vec<&str> = classes.iter().map(|c| c.as_str()).collect();
                let kind = if tag == frontend::QUERY_TAG {
                    StepKind::Simple
                } else {
                    StepKind::Prepare
                };
                let refusal = match verdict {
                    Verdict::Forward => None,
                    Verdict::Deny {
                        class,
                        rule,
                        message,
                    } => Some((
                        "42501",
                        message,
                        serde_json::json!({"decision": "deny", "class": class.as_str(), "rule": rule, "classes": class_names}),
                    )),
                    Verdict::Hold { class, rule } => {
                        // What is already decided goes first.
                        if at > start {
                            if let Err(e) = w.write_all(&buf[start..at]).await {
                                return Stop::Io(e);
                            }
                            shared.count(dir, at - start);
                            start = at;
                        }
                        if let Err(e) = w.flush().await {
                            return Stop::Io(e);
                        }
                        on_batch().await;
                        let text = String::from_utf8_lossy(&sql).into_owned();
                        let approval = up.controls.settings().approval.clone();
                        match hold(
                            up.ctx,
                            approval.as_ref(),
                            &text,
                            fingerprint(&sql),
                            &rule,
                            &up.notices,
                            &up.cancelled,
                        )
                        .await
                        {
                            HoldEnd::Run => None,
                            HoldEnd::SessionClosed => return Stop::Closed,
                            HoldEnd::Refuse(state, message) => Some((
                                state,
                                message,
                                serde_json::json!({"decision": "hold", "class": class.as_str(), "rule": rule, "classes": class_names}),
                            )),
                        }
                    }
                };
                if let Some((state, message, control)) = refusal {
                    if at > start {
                        if let Err(e) = w.write_all(&buf[start..at]).await {
                            return Stop::Io(e);
                        }
                        shared.count(dir, at - start);
                    }
                    let raise = raise_query(state, &message);
                    if let Err(e) =
                        shared.shape_frontend(frontend::QUERY_TAG, &raise[FRAME_HEADER_LEN..])
                    {
                        return Stop::Protocol(e);
                    }
                    if let Err(e) = w.write_all(&raise).await {
                        return Stop::Io(e);
                    }
                    shared
                        .tracker
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_silent();
                    shared
                        .events
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(denied_event(&sql, kind, control, &message));
                    skipping = tag == frontend::PARSE_TAG;
                    at += total;
                    start = at;
                    continue;
                }
            }
            if let Some(rec) = forwarded_record(up, tag, &buf[body_range.clone()]) {
                // Strict mode: what precedes goes now; this frame only once
                // its record is durable.
                if at > start {
                    if let Err(e) = w.write_all(&buf[start..at]).await {
                        return Stop::Io(e);
                    }
                    shared.count(dir, at - start);
                    start = at;
                }
                if up.ctx.shared.audit.record_durable(rec).await.is_err() {
                    tracing::error!("audit writer gone in strict mode; closing the session");
                    return Stop::Closed;
                }
            }
            if tag == frontend::CLOSE_TAG {
                if let Ok(c) = frontend::Close::parse(&buf[body_range.clone()]) {
                    if c.target == frontend::Target::Statement {
                        up.controls.close_statement(&c.name.to_string());
                    }
                }
            }
            if inspected(dir, tag) {
                match shared.shape_frontend(tag, &buf[body_range.clone()]) {
                    Ok(Some(describe)) => {
                        // Our Describe goes right behind the Bind.
                        let end = at + total;
                        if let Err(e) = w.write_all(&buf[start..end]).await {
                            return Stop::Io(e);
                        }
                        if let Err(e) = w.write_all(&describe).await {
                            return Stop::Io(e);
                        }
                        shared.count(dir, end - start);
                        start = end;
                    }
                    Ok(None) => {}
                    Err(e) => return Stop::Protocol(e),
                }
                match shared.feed(dir, tag, &buf[body_range]) {
                    Ok(t) => terminate |= t,
                    Err(e) => return Stop::Protocol(e),
                }
            }
            at += total;
        }
        if at > start {
            if let Err(e) = w.write_all(&buf[start..at]).await {
                return Stop::Io(e);
            }
            shared.count(dir, at - start);
        }
        buf.advance(at);
        if let Err(stop) = stream_through(r, w, buf, passthrough, dir, shared).await {
            return stop;
        }
        if let Err(e) = w.flush().await {
            return Stop::Io(e);
        }
        on_batch().await;
        if terminate {
            return Stop::Closed;
        }
        make_room(buf, shared.max_message);
        match r.read_buf(buf).await {
            Ok(0) => return Stop::Closed,
            Ok(_) => {}
            Err(e) => return Stop::Io(e),
        }
    }
}
