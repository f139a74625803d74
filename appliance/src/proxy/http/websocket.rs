//! Upgrade requests (WebSocket and any other `Upgrade` protocol): forwarded
//! on a fresh HTTP/1.1 upstream connection; when the upstream answers 101,
//! both sides are taken over from hyper and bridged byte for byte on a
//! session task, with the bytes counted and audited at start and end. The
//! bridge stops as soon as the session is cancelled (revocation).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use super::audit::RequestLog;
use super::body::{DownBody, UpBody};
use super::headers;
use super::io::{Counted, Counters};
use super::service::{refuse, respond};
use super::session::Session;
use crate::audit::AuditKind;

/// Forwards an Upgrade request and, on 101, starts the bridge.
pub async fn proxy(
    s: Arc<Session>,
    req: Request<UpBody>,
    client: OnUpgrade,
    protocol: String,
    path: String,
    mut log: RequestLog,
    accept: &Option<HeaderValue>,
) -> Response<DownBody> {
    log.upgrade(protocol.clone());
    let mut resp = match s.upstream.send_upgrade(req).await {
        Ok(r) => r,
        Err(e) => return refuse(e, accept, log),
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The upstream declined the upgrade: an ordinary response.
        return respond(resp, log);
    }
    let upstream = hyper::upgrade::on(&mut resp);
    log.status(101);
    log.upstream_version(resp.version());
    let (mut parts, _) = resp.into_parts();
    headers::drop_hop_by_hop(&mut parts.headers, true);
    let bridge = bridge(s.clone(), client, upstream, protocol, path);
    s.tasks.spawn(bridge);
    Response::from_parts(parts, DownBody::full(Bytes::new(), Some(log)))
}

async fn bridge(
    s: Arc<Session>,
    client: OnUpgrade,
    upstream: OnUpgrade,
    protocol: String,
    path: String,
) {
    let started = Instant::now();
    let both = async { tokio::join!(client, upstream) };
    let (client, upstream) = tokio::select! {
        r = both => r,
        _ = s.cancel.cancelled() => return,
    };
    let (client, upstream) = match (client, upstream) {
        (Ok(c), Ok(u)) => (c, u),
        (Err(e), _) | (_, Err(e)) => {
            tracing::debug!(error = %e, "upgrade did not complete");
            return;
        }
    };
    let detail = serde_json::json!({ "protocol": protocol, "path": path });
    s.audit
        .send(
            s.audit
                .record(AuditKind::WebsocketStart)
                .detail(detail.clone()),
        )
        .await;
    let counts = Arc::new(Counters::default());
    let mut client = Counted::new(TokioIo::new(client), Bytes::new(), counts.clone());
    let mut upstream = Counted::new(TokioIo::new(upstream), Bytes::new(), Arc::default());
    let reason = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => match r {
            Ok(_) => "closed".to_string(),
            Err(e) => format!("ended: {e}"),
        },
        _ = s.cancel.cancelled() => "closed by the appliance".to_string(),
    };
    *s.upgrade_end.lock().unwrap_or_else(|e| e.into_inner()) =
        Some(format!("{protocol} connection {reason}"));
    let rec = s
        .audit
        .record(AuditKind::WebsocketEnd)
        .bytes(counts.read(), counts.written())
        .duration(started.elapsed())
        .outcome("ok")
        .reason(reason)
        .detail(detail);
    s.audit.send(rec).await;
}
