//! One tunnel stream: read the bounded header, decide, answer, then hand the
//! stream to the proxy for the connection's kind, auditing start and end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tunnel_lite::wire::{self, Status, WireError, MAX_REQUEST, MAX_RESPONSE};

use super::admit::{admit, Refusal};
use crate::audit::{AuditKind, AuditRecord};
use crate::identity::Identity;
use crate::policy::{Connection, VerifiedPolicy};
use crate::proxy::{self, tcp, SessionContext, TunnelStream};
use crate::server::Shared;
use crate::sessions::SessionGuard;
use bytes::Bytes;
use tokio::net::TcpStream;

/// Header bytes plus whatever the client pipelined after it.
type HeaderBuf = heapless::Vec<u8, MAX_REQUEST>;

pub(super) async fn handle(
    mut stream: TunnelStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) {
    // The header phase is its own future, so its buffer shares the task's
    // storage with the session's state instead of adding to it.
    let Some(header) = header_phase(&mut stream, peer, deadline, &shared).await else {
        return;
    };
    serve_admitted(
        stream,
        peer,
        shared,
        header.claims,
        &header.target,
        header.port,
        header.pending,
        Framing::Tunnel,
    )
    .await;
}

/// What the session needs from a tunnel header.
struct Header {
    claims: Result<crate::identity::SessionClaims, crate::identity::IdentityError>,
    target: String,
    port: u16,
    pending: Bytes,
}

/// Reads and decodes the tunnel header (refusing malformed or late ones).
async fn header_phase(
    stream: &mut TunnelStream,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    shared: &Arc<Shared>,
) -> Option<Header> {
    let mut buf = HeaderBuf::new();
    let unidentified = RequestInfo {
        peer,
        target: None,
        port: None,
        policy_version: None,
    };
    let unidentified_refusal = |status, reason| Refusal {
        status,
        reason,
        identity: None,
    };
    let header_len = match tokio::time::timeout_at(deadline, read_header(stream, &mut buf)).await {
        Ok(Ok(n)) => n,
        Ok(Err(HeaderError::Wire(e))) => {
            let status = match e {
                WireError::UnsupportedVersion(_) => Status::UnsupportedVersion,
                _ => Status::MalformedRequest,
            };
            let reason = format!("malformed tunnel header: {e}");
            refuse(
                stream,
                shared,
                &unidentified,
                unidentified_refusal(status, reason),
            )
            .await;
            return None;
        }
        Ok(Err(HeaderError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "tunnel closed before its header");
            return None;
        }
        Err(_) => {
            let reason = format!(
                "tunnel header not received within {:?}",
                shared.cfg.header_timeout
            );
            let refusal = unidentified_refusal(Status::MalformedRequest, reason);
            refuse(stream, shared, &unidentified, refusal).await;
            return None;
        }
    };
    // The decode succeeded in read_header; decode again to borrow from `buf`.
    // What the session needs is copied out, so the header buffer is not part
    // of the task's state for the rest of the session.
    let header = {
        let Ok(Some((req, _))) = wire::decode_request(&buf[..header_len]) else {
            return None;
        };
        Header {
            claims: shared.signer.verify(req.token),
            target: String::from(req.target),
            port: req.port,
            pending: Bytes::copy_from_slice(&buf[header_len..]),
        }
    };
    Some(header)
}

/// Whether the laptop side speaks the tunnel protocol (status answer) or is
/// a plain benchmark connection (no answer; a refusal just closes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Tunnel,
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    Plain,
}

/// Admits a request whose token was verified (or not), then serves it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve_admitted(
    mut stream: TunnelStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    claims: Result<crate::identity::SessionClaims, crate::identity::IdentityError>,
    target: &str,
    port: u16,
    pending: Bytes,
    framing: Framing,
) {
    let policy = shared.policy.borrow().clone();
    let policy_version = policy.as_ref().map(|p| p.policy().version);
    let request = RequestInfo {
        peer,
        target: Some(target),
        port: Some(port),
        policy_version,
    };
    let (identity, connection, upstream, guard) =
        match open_session(&shared, policy.as_deref(), claims, target, port).await {
            Ok(admitted) => admitted,
            Err(refusal) => {
                if framing == Framing::Plain {
                    // Nothing to answer in; the audit record says why.
                    let _ = stream.shutdown().await;
                }
                refuse(&mut stream, &shared, &request, refusal).await;
                return;
            }
        };
    if framing == Framing::Tunnel && respond(&mut stream, Status::Ok, "").await.is_err() {
        return;
    }
    let ctx = SessionContext {
        shared: shared.clone(),
        identity,
        connection,
        session_id: new_session_id(),
        peer,
        port,
        policy_version,
        cancel: guard.token.clone(),
        close_reason: guard.reason_handle(),
    };
    tracing::info!(user = %ctx.identity.user, connection = %ctx.connection.name, session = %ctx.session_id, %peer, "session start");
    // Registered first, so an event route can close it as soon as it is audited.
    let _live = shared.live.register(
        &ctx.session_id,
        ctx.cancel.clone(),
        ctx.close_reason.clone(),
    );
    // Strict audit mode: no byte reaches the upstream before this is durable.
    if let Err(e) = shared
        .audit
        .record_gated(ctx.audit_record(AuditKind::SessionStart))
        .await
    {
        tracing::error!(error = %e, "session start not audited; closing session");
        return;
    }
    shared.metrics.session_started(ctx.connection.kind);
    let started = Instant::now();
    let mut end = proxy::serve(stream, upstream, pending, &ctx).await;
    if let Some(reason) = guard.close_reason() {
        end.reason = reason.to_string();
    }
    tracing::info!(user = %ctx.identity.user, connection = %ctx.connection.name, session = %ctx.session_id,
        up = end.bytes_up, down = end.bytes_down, reason = %end.reason, "session end");
    let rec = ctx
        .audit_record(AuditKind::SessionEnd)
        .bytes(end.bytes_up, end.bytes_down)
        .duration(started.elapsed())
        .outcome("ok")
        .reason(end.reason);
    shared
        .metrics
        .session_ended(ctx.connection.kind, end.bytes_up, end.bytes_down);
    if let Err(e) = shared.audit.record(rec).await {
        tracing::error!(error = %e, "audit record of a session end lost");
    }
}

enum HeaderError {
    Wire(WireError),
    Io(std::io::Error),
}

/// Reads until a whole header is buffered; returns its length. Bytes after
/// it (pipelined payload) stay in `buf`.
async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut HeaderBuf,
) -> Result<usize, HeaderError> {
    let mut chunk = [0u8; 1024];
    loop {
        match wire::decode_request(buf) {
            Ok(Some((_, used))) => return Ok(used),
            Ok(None) => {}
            Err(e) => return Err(HeaderError::Wire(e)),
        }
        let room = buf.capacity() - buf.len();
        if room == 0 {
            // Unreachable in practice: a full buffer always decodes or errs.
            return Err(HeaderError::Wire(WireError::BufferTooSmall(MAX_REQUEST)));
        }
        let want = room.min(chunk.len());
        let n = stream
            .read(&mut chunk[..want])
            .await
            .map_err(HeaderError::Io)?;
        if n == 0 {
            return Err(HeaderError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
        // Cannot fail: `want` fits the remaining capacity.
        let _ = buf.extend_from_slice(&chunk[..n]);
    }
}

async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: Status,
    reason: &str,
) -> std::io::Result<()> {
    let mut out = [0u8; MAX_RESPONSE];
    let n = wire::encode_response(status, reason, &mut out)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    stream.write_all(&out[..n]).await?;
    stream.flush().await
}

/// Where a tunnel request came from and what it asked for, as far as known.
struct RequestInfo<'a> {
    peer: SocketAddr,
    target: Option<&'a str>,
    port: Option<u16>,
    policy_version: Option<u64>,
}

/// Admits the request, connects upstream and registers the live session.
async fn open_session(
    shared: &Shared,
    policy: Option<&VerifiedPolicy>,
    claims: Result<crate::identity::SessionClaims, crate::identity::IdentityError>,
    target: &str,
    port: u16,
) -> Result<(Identity, Connection, Option<TcpStream>, SessionGuard), Refusal> {
    let revoked = shared.revoked.borrow().clone();
    let admission = admit(policy.map(|p| p.policy()), claims, &revoked, target, port)?;
    let identity = admission.identity;
    let connection = admission.connection.clone();
    let refusal = |status, reason| Refusal {
        status,
        reason,
        identity: Some(identity.clone()),
    };
    if !proxy::serves(connection.kind) {
        return Err(refusal(
            Status::Internal,
            format!(
                "connection {:?} is of kind {}, which this appliance build does not serve yet",
                connection.name,
                connection.kind.as_str()
            ),
        ));
    }
    let upstream = if proxy::gate_connects_upstream(connection.kind) {
        let stream = tcp::connect_upstream(&connection.upstream, shared.cfg.upstream_connect_timeout)
            .await
            .map_err(|e| {
                tracing::warn!(connection = %connection.name, upstream = %connection.upstream, error = %e, "upstream unreachable");
                refusal(
                    Status::UpstreamUnreachable,
                    format!("the upstream of {:?} is unreachable: {e}", connection.name),
                )
            })?;
        Some(stream)
    } else {
        None
    };
    let guard = shared.sessions.register(&identity.user);
    // A revocation that landed between the snapshot above and registering.
    if shared.revoked.borrow().contains(&identity.user) {
        return Err(refusal(
            Status::IdentityRevoked,
            format!("access for {} has been revoked", identity.user),
        ));
    }
    Ok((identity, connection, upstream, guard))
}

/// Answers a refusal, closes the stream, and audits it.
async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    shared: &Shared,
    request: &RequestInfo<'_>,
    refusal: Refusal,
) {
    let user = refusal
        .identity
        .as_ref()
        .map(|i| i.user.as_str())
        .unwrap_or("-");
    tracing::info!(peer = %request.peer, user, target = request.target.unwrap_or("-"),
        status = refusal.status.as_str(), reason = %refusal.reason, "tunnel refused");
    let _ = respond(stream, refusal.status, &refusal.reason).await;
    let _ = stream.shutdown().await;
    let mut rec = AuditRecord::new(AuditKind::TunnelRefused)
        .client_addr(request.peer)
        .outcome(refusal.status.as_str())
        .reason(refusal.reason);
    if let Some(t) = request.target {
        rec = rec.connection(t);
    }
    if let Some(p) = request.port {
        rec = rec.port(p);
    }
    if let Some(id) = refusal.identity {
        rec = rec.user(id.user).groups(id.groups);
    }
    if let Some(v) = request.policy_version {
        rec = rec.policy_version(v);
    }
    let _ = shared.audit.record(rec).await;
}

/// 16 hex digits from the OS RNG.
pub fn new_session_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    // The OS RNG failing is not recoverable in any useful way; fall back to time.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = t.to_be_bytes();
    }
    tunnel_lite::tls::hex(&b)
}
