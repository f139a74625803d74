//! One tunnel stream: read the bounded header, decide, answer, then hand the
//! stream to the proxy for the connection's kind, auditing start and end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tunnel_lite::wire::{self, Status, WireError, MAX_REQUEST, MAX_RESPONSE};

use super::admit::{admit, Refusal};
use crate::audit::{AuditKind, AuditRecord};
use crate::policy::ConnectionKind;
use crate::proxy::tcp;
use crate::server::Shared;

/// Header bytes plus whatever the client pipelined after it.
type HeaderBuf = heapless::Vec<u8, MAX_REQUEST>;

pub(super) async fn handle<S>(
    mut stream: S,
    peer: SocketAddr,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = HeaderBuf::new();
    let header_len = match tokio::time::timeout_at(deadline, read_header(&mut stream, &mut buf))
        .await
    {
        Ok(Ok(n)) => n,
        Ok(Err(HeaderError::Wire(e))) => {
            let status = match e {
                WireError::UnsupportedVersion(_) => Status::UnsupportedVersion,
                _ => Status::MalformedRequest,
            };
            let reason = format!("malformed tunnel header: {e}");
            refuse_unidentified(&mut stream, peer, &shared, status, reason).await;
            return;
        }
        Ok(Err(HeaderError::Io(e))) => {
            tracing::debug!(%peer, error = %e, "tunnel closed before its header");
            return;
        }
        Err(_) => {
            let reason = format!(
                "tunnel header not received within {:?}",
                shared.cfg.header_timeout
            );
            refuse_unidentified(&mut stream, peer, &shared, Status::MalformedRequest, reason).await;
            return;
        }
    };
    // The decode succeeded in read_header; decode again to borrow from `buf`.
    let Ok(Some((req, _))) = wire::decode_request(&buf[..header_len]) else {
        return;
    };
    let policy = shared.policy.borrow().clone();
    let revoked = shared.revoked.borrow().clone();
    let token = shared.signer.verify(req.token);
    let admission = admit(
        policy.as_deref().map(|p| p.policy()),
        token,
        &revoked,
        req.target,
        req.port,
    );
    let policy_version = policy.as_ref().map(|p| p.policy().version);
    let admission = match admission {
        Ok(a) => a,
        Err(refusal) => {
            refuse(
                &mut stream,
                peer,
                &shared,
                &refusal,
                req.target,
                req.port,
                policy_version,
            )
            .await;
            return;
        }
    };
    let identity = admission.identity.clone();
    let connection = admission.connection.clone();
    drop(admission);

    if connection.kind != ConnectionKind::Tcp {
        let refusal = Refusal {
            status: Status::Internal,
            reason: format!(
                "connection {:?} is of kind {}, which this appliance build does not serve yet",
                connection.name,
                connection.kind.as_str()
            ),
            identity: Some(identity),
        };
        refuse(
            &mut stream,
            peer,
            &shared,
            &refusal,
            req.target,
            req.port,
            policy_version,
        )
        .await;
        return;
    }

    let mut upstream = match tcp::connect_upstream(
        &connection.upstream,
        shared.cfg.upstream_connect_timeout,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(connection = %connection.name, upstream = %connection.upstream, error = %e, "upstream unreachable");
            let refusal = Refusal {
                status: Status::UpstreamUnreachable,
                reason: format!("the upstream of {:?} is unreachable: {e}", connection.name),
                identity: Some(identity),
            };
            refuse(
                &mut stream,
                peer,
                &shared,
                &refusal,
                req.target,
                req.port,
                policy_version,
            )
            .await;
            return;
        }
    };

    let guard = shared.sessions.register(&identity.user);
    // A revocation that landed between the snapshot above and registering.
    if shared.revoked.borrow().contains(&identity.user) {
        let refusal = Refusal {
            status: Status::IdentityRevoked,
            reason: format!("access for {} has been revoked", identity.user),
            identity: Some(identity),
        };
        refuse(
            &mut stream,
            peer,
            &shared,
            &refusal,
            req.target,
            req.port,
            policy_version,
        )
        .await;
        return;
    }
    if respond(&mut stream, Status::Ok, "").await.is_err() {
        return;
    }
    let session_id = new_session_id();
    let port = req.port;
    let base = |kind| {
        let mut r = AuditRecord::new(kind)
            .user(identity.user.clone())
            .groups(identity.groups.iter().cloned())
            .connection(connection.name.clone())
            .session(session_id.clone())
            .client_addr(peer)
            .port(port);
        if let Some(v) = policy_version {
            r = r.policy_version(v);
        }
        r
    };
    tracing::info!(user = %identity.user, connection = %connection.name, session = %session_id, %peer, "session start");
    if shared
        .audit
        .record(base(AuditKind::SessionStart))
        .await
        .is_err()
    {
        tracing::error!("audit writer is gone; closing session");
        return;
    }
    let started = Instant::now();
    let pending = &buf[header_len..];
    let mut end = tcp::run(&mut stream, &mut upstream, pending, &guard.token).await;
    if let Some(reason) = guard.close_reason() {
        end.reason = reason.to_string();
    }
    let _ = stream.shutdown().await;
    tracing::info!(user = %identity.user, connection = %connection.name, session = %session_id,
        up = end.bytes_up, down = end.bytes_down, reason = %end.reason, "session end");
    let rec = base(AuditKind::SessionEnd)
        .bytes(end.bytes_up, end.bytes_down)
        .duration(started.elapsed())
        .outcome("ok")
        .reason(end.reason);
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

async fn refuse<S: AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    shared: &Shared,
    refusal: &Refusal,
    target: &str,
    port: u16,
    policy_version: Option<u64>,
) {
    let user = refusal
        .identity
        .as_ref()
        .map(|i| i.user.as_str())
        .unwrap_or("-");
    tracing::info!(%peer, user, target, port, status = refusal.status.as_str(), reason = %refusal.reason, "tunnel refused");
    let _ = respond(stream, refusal.status, &refusal.reason).await;
    let _ = stream.shutdown().await;
    let mut rec = AuditRecord::new(AuditKind::TunnelRefused)
        .connection(target)
        .client_addr(peer)
        .port(port)
        .outcome(refusal.status.as_str())
        .reason(refusal.reason.clone());
    if let Some(id) = &refusal.identity {
        rec = rec.user(id.user.clone()).groups(id.groups.iter().cloned());
    }
    if let Some(v) = policy_version {
        rec = rec.policy_version(v);
    }
    let _ = shared.audit.record(rec).await;
}

async fn refuse_unidentified<S: AsyncWrite + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    shared: &Shared,
    status: Status,
    reason: String,
) {
    tracing::info!(%peer, status = status.as_str(), %reason, "tunnel refused");
    let _ = respond(stream, status, &reason).await;
    let _ = stream.shutdown().await;
    let rec = AuditRecord::new(AuditKind::TunnelRefused)
        .client_addr(peer)
        .outcome(status.as_str())
        .reason(reason);
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
