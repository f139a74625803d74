//! The upstream-to-client direction when masking is on: like
//! [`super::relay::pump`], but every frame is held whole (bounded by the
//! message cap) and each RowDescription, DataRow and CopyData goes through
//! the session's [`Masker`] on its way. Unchanged frames are copied into one
//! outgoing buffer per batch, rewritten ones are appended in their place, and
//! the answers to the gateway's own Describe never reach the client.

use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::codec::{self, backend, FRAME_HEADER_LEN};
use super::mask::shapes::{Action, Shapes};
use super::masker::Masker;
use super::relay::{Direction, Shared, Stop};

/// Moves frames from `r` to `w`, masking results, until end of stream, an
/// error, or a frame masking cannot account for (`Stop::Refused`).
pub async fn pump_masked<R, W, F, Fut>(
    r: &mut R,
    w: &mut W,
    buf: &mut BytesMut,
    shared: &Shared,
    masker: &mut Masker<'_>,
    notices: &mut tokio::sync::mpsc::Receiver<Vec<u8>>,
    mut on_batch: F,
) -> Stop
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = Direction::Down;
    let Some(shapes) = &shared.shapes else {
        return Stop::Refused("masking state missing".into());
    };
    let mut out: Vec<u8> = Vec::with_capacity(super::relay::READ_CHUNK);
    loop {
        out.clear();
        let mut consumed = 0;
        while buf.len() - consumed >= FRAME_HEADER_LEN {
            let rest = &buf[consumed..];
            let header: [u8; FRAME_HEADER_LEN] = [rest[0], rest[1], rest[2], rest[3], rest[4]];
            let total = match codec::frame_len(&header, shared.max_message) {
                Ok(t) => t,
                Err(e) => return Stop::Protocol(e),
            };
            if rest.len() < total {
                break;
            }
            let tag = header[0];
            let frame = &rest[..total];
            let body = &frame[FRAME_HEADER_LEN..];
            if let Err(e) = shared.feed_backend(tag, body) {
                return Stop::Protocol(e);
            }
            let action = match lock(shapes).on_backend(tag, body) {
                Ok(a) => a,
                Err(e) => return Stop::Protocol(e),
            };
            match action {
                Action::Forward => out.extend_from_slice(frame),
                Action::Swallow => {}
                Action::Plan { swallow } => {
                    let plan = match masker.plan(body).await {
                        Ok(p) => p,
                        Err(e) => return Stop::Refused(e),
                    };
                    lock(shapes).planned(Arc::new(plan));
                    if !swallow {
                        out.extend_from_slice(frame);
                    }
                }
                Action::Row(plan) => {
                    if plan.is_noop(&masker.detectors) {
                        out.extend_from_slice(frame);
                    } else {
                        match plan.rewrite(body, &masker.detectors, &mut out) {
                            Ok(true) => {}
                            Ok(false) => out.extend_from_slice(frame),
                            Err(e) => return Stop::Protocol(e),
                        }
                    }
                }
                Action::CopyStart(spec) => {
                    let mask = match masker.copy_mask(spec.as_ref(), body).await {
                        Ok(m) => m,
                        Err(e) => return Stop::Refused(e),
                    };
                    let header = spec.as_ref().is_some_and(|s| s.header);
                    lock(shapes).copy_ready(Arc::new(mask), header);
                    out.extend_from_slice(frame);
                }
                Action::CopyRow(mask) => {
                    let at = out.len();
                    out.push(backend::COPY_DATA_TAG);
                    out.extend_from_slice(&[0; 4]);
                    match mask.rewrite_row(body, &masker.detectors, &mut out) {
                        Ok(true) => {
                            let len = (out.len() - at - 1) as u32;
                            out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
                        }
                        Ok(false) => {
                            out.truncate(at);
                            out.extend_from_slice(frame);
                        }
                        Err(e) => return Stop::Refused(e.to_string()),
                    }
                }
                Action::Refuse(reason) => return Stop::Refused(reason),
            }
            if tag == backend::COMMAND_COMPLETE_TAG && is_ddl(body) {
                // Names may have changed: look relations up again.
                masker.forget();
            }
            consumed += total;
        }
        buf.advance(consumed);
        if !out.is_empty() {
            if let Err(e) = w.write_all(&out).await {
                return Stop::Io(e);
            }
            shared.count(dir, out.len());
        }
        if let Err(e) = w.flush().await {
            return Stop::Io(e);
        }
        on_batch().await;
        shrink(&mut out);
        super::relay::make_room(buf, shared.max_message);
        if let Err(stop) =
            super::relay::read_or_notice(r, w, buf, Some(&mut *notices), shared, dir).await
        {
            return stop;
        }
    }
}

fn lock(shapes: &Mutex<Shapes>) -> std::sync::MutexGuard<'_, Shapes> {
    shapes.lock().unwrap_or_else(|e| e.into_inner())
}

/// A command tag of DDL that can rename or redefine columns.
fn is_ddl(command_complete: &[u8]) -> bool {
    [&b"ALTER "[..], b"CREATE ", b"DROP "]
        .iter()
        .any(|p| command_complete.starts_with(p))
}

/// A batch that held one huge row does not keep its memory for the session.
fn shrink(out: &mut Vec<u8>) {
    if out.capacity() > 4 * super::relay::READ_CHUNK {
        *out = Vec::with_capacity(super::relay::READ_CHUNK);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ddl_tags() {
        assert!(super::is_ddl(b"ALTER TABLE\0"));
        assert!(super::is_ddl(b"CREATE VIEW\0"));
        assert!(!super::is_ddl(b"SELECT 3\0"));
        assert!(!super::is_ddl(b"INSERT 0 1\0"));
    }
}
