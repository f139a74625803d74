//! The admin HTTP/1.1 server: routing and readiness, no state of its own.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::server::Shared;

type Reply = Response<Full<Bytes>>;

fn text(status: StatusCode, content_type: &str, body: String) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// Why the appliance is not ready, if it is not.
pub fn not_ready(shared: &Shared) -> Option<String> {
    if shared.policy.borrow().is_none() {
        return Some("no policy in force".into());
    }
    if !shared.audit.is_alive() {
        return Some("the audit writer is gone".into());
    }
    if shared.audit.queue_depth() >= shared.audit.queue_capacity() {
        return Some("the audit queue is full".into());
    }
    None
}

fn route(req: &Request<Incoming>, shared: &Shared) -> Reply {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let snap = super::Snapshot {
                audit: &shared.audit,
                live_sessions: shared.sessions.len(),
                policy_version: shared.policy.borrow().as_ref().map(|p| p.policy().version),
            };
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                super::render(&shared.metrics, &snap),
            )
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, PLAIN, "ok\n".into()),
        (&Method::GET, "/readyz") => match not_ready(shared) {
            None => text(StatusCode::OK, PLAIN, "ready\n".into()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "method not allowed\n".into(),
        ),
        (_, path) => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            format!("no such endpoint {path}\n"),
        ),
    }
}

/// Serves the admin endpoints on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let reply = route(&req, &shared);
                async move { Ok::<_, Infallible>(reply) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(16 * 1024)
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        });
    }
}
