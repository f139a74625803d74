//! `kind = "http"` gateway: a reverse proxy on the admitted tunnel stream.
//! hyper serves HTTP/1.1 (keep-alive, chunked, `Expect: 100-continue`,
//! Upgrade) to the laptop; each request is checked against the
//! connection's rules, cleaned of the client headers the policy names, given
//! the injected credential and the identity assertion, and forwarded to the
//! upstream (`http`/`https`, HTTP/2 when ALPN says so) with bodies streamed
//! both ways. Each request, and each WebSocket start and end, is audited.
//!
//! Layout: `service` (one request), `upstream` (connections, timeouts),
//! `websocket` (Upgrade bridge), `headers` and `controls` (pure rewriting and
//! decisions), `hold` (requests held for approval), `credentials`,
//! `template` and `assertion` (what is injected), `body` and `io` (streaming
//! and counting), `audit`, `error` (what the client sees), `tls` (upstream
//! TLS configs).
//!
//! Must not: put a secret value in a log, an error, an audit record or a
//! response; buffer a whole body (a request held for approval is read first,
//! bounded by `hold::MAX_HELD_BODY`); outlive the session's cancellation by more
//! than a moment.

pub mod assertion;
mod audit;
mod body;
mod controls;
mod credentials;
mod error;
pub mod glob;
mod headers;
mod hold;
mod io;
mod service;
mod session;
pub mod template;
mod tls;
mod upstream;
mod websocket;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::{SessionContext, SessionEnd, TunnelStream};
use crate::audit::AuditKind;
use crate::policy::KindSettings;

pub use assertion::{jwks, ASSERTION_ISSUER};
pub use error::GatewayError;

/// Whether this build serves the kind.
pub const SERVED: bool = true;

/// How long upgraded connections get to finish after the client side ends.
const DRAIN: Duration = Duration::from_secs(1);

/// Serves one admitted session until the client leaves, the idle timeout
/// passes or the session is cancelled.
pub async fn serve(
    stream: TunnelStream,
    _upstream: Option<TcpStream>,
    pending: Bytes,
    ctx: &SessionContext,
) -> SessionEnd {
    let settings = match &ctx.connection.settings {
        KindSettings::Http(s) => s.clone(),
        _ => Default::default(),
    };
    let idle = settings.idle_timeout;
    let max_buf = (settings.max_header_bytes * 2).max(400 * 1024);
    let (sink, forward) = audit::AuditSink::new(
        ctx.audit_record(AuditKind::HttpRequest),
        ctx.shared.audit.clone(),
    );
    let forwarder = tokio::spawn(forward);
    let session = match session::Session::new(ctx, settings, sink.clone()) {
        Ok(s) => Arc::new(s),
        Err(reason) => {
            tracing::error!(connection = %ctx.connection.name, %reason, "HTTP session not started");
            drop(sink);
            let _ = forwarder.await;
            return SessionEnd {
                bytes_up: 0,
                bytes_down: 0,
                reason,
            };
        }
    };
    drop(sink);
    let counters = Arc::new(io::Counters::default());
    let stream = io::Counted::new(stream, pending, counters.clone());
    let reason = {
        let s = session.clone();
        let svc = hyper::service::service_fn(move |req| {
            let s = s.clone();
            async move { Ok::<_, Infallible>(service::handle(s, req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .max_buf_size(max_buf)
            .max_headers(256)
            .serve_connection(TokioIo::new(stream), svc)
            .with_upgrades();
        tokio::select! {
            r = conn => match r {
                Ok(()) => "client closed the connection".to_string(),
                Err(e) => ended(&e, idle, &session).await,
            },
            _ = ctx.cancel.cancelled() => "closed by the appliance".to_string(),
        }
    };
    // Upgraded connections outlive the HTTP connection; they stop on cancel.
    session.tasks.close();
    tokio::select! {
        _ = session.tasks.wait() => {}
        _ = ctx.cancel.cancelled() => {
            let _ = tokio::time::timeout(DRAIN, session.tasks.wait()).await;
        }
    }
    let upgraded = session
        .upgrade_end
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let reason = match upgraded {
        Some(r) if !ctx.cancel.is_cancelled() => r,
        _ => reason,
    };
    drop(session);
    let _ = forwarder.await;
    SessionEnd {
        bytes_up: counters.read(),
        bytes_down: counters.written(),
        reason,
    }
}

/// The end reason for a connection error; a malformed request (which hyper
/// answered with a bare 400/431) is audited here, since no service saw it.
async fn ended(e: &hyper::Error, idle: Duration, s: &session::Session) -> String {
    if e.is_timeout() {
        return format!("idle for {idle:?} (idle_timeout)");
    }
    if e.is_parse() || e.is_parse_too_large() {
        let status = if e.is_parse_too_large() { 431 } else { 400 };
        let reason = format!("malformed request: {e}");
        let rec = s
            .audit
            .record(AuditKind::HttpRequest)
            .outcome("malformed")
            .reason(reason.clone())
            .detail(serde_json::json!({ "status": status }));
        s.audit.send(rec).await;
        return reason;
    }
    format!("connection error: {e}")
}
