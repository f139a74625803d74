//! One request through the gateway: limits, method and path rules, header
//! rewriting with credential injection and identity assertion, then the
//! upstream exchange with the bodies streamed both ways. Upgrade requests
//! go to [`super::websocket`]. Every outcome, forwarded or refused, carries
//! a [`RequestLog`] that audits it when the response body ends.

use std::sync::Arc;

use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::audit::RequestLog;
use super::body::{DownBody, UpBody};
use super::controls::{self, Decision};
use super::error::GatewayError;
use super::headers::{self, Forwarding};
use super::hold::{self, Held};
use super::session::Session;

/// Serves one request.
pub async fn handle(s: Arc<Session>, mut req: Request<Incoming>) -> Response<DownBody> {
    let accept = req.headers().get(ACCEPT).cloned();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.clone(), |pq| pq.as_str().to_string());
    let audited = if s.settings.audit_query {
        target.clone()
    } else {
        path.clone()
    };
    let slot = s.audit.reserve().await;
    let mut log = RequestLog::new(s.audit.clone(), slot, method.clone(), audited);

    let size = headers::head_size(method.as_str(), &target, req.headers());
    if size > s.settings.max_header_bytes {
        let limit = s.settings.max_header_bytes;
        return refuse(GatewayError::HeadersTooLarge { size, limit }, &accept, log);
    }
    if method == Method::CONNECT {
        return refuse(GatewayError::MethodNotSupported(method), &accept, log);
    }
    if !(target.starts_with('/') || (target == "*" && method == Method::OPTIONS)) {
        return refuse(GatewayError::BadTarget, &accept, log);
    }
    let held = match controls::decide(&s.settings.rules, &method, &path) {
        Decision::Allow => None,
        Decision::Hold(rule, settings) => Some((rule, settings)),
        Decision::Deny(rule) => {
            let e = GatewayError::Denied {
                method,
                path,
                rule: rule.to_string(),
                connection: s.connection.clone(),
            };
            return refuse(e, &accept, log);
        }
    };
    let inject = match &s.credentials {
        Ok(c) => c.as_slice(),
        Err(e) => return refuse(GatewayError::Credential(e.clone()), &accept, log),
    };
    let assertion = s.asserter.as_ref().map(|a| (&a.header, a.value()));

    let upgrade = headers::upgrade_protocol(req.headers());
    let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    headers::rewrite_request(
        &mut parts.headers,
        Forwarding {
            client_ip: s.peer.ip(),
            upstream_authority: &s.upstream.target.authority,
            preserve_host: s.settings.preserve_host,
            strip: &s.settings.strip_headers,
            inject,
            assertion,
        },
        upgrade.is_some(),
    );
    // Absolute-form targets (proxy-style requests) go upstream as origin-form.
    parts.uri = Uri::try_from(target.as_str()).unwrap_or_else(|_| Uri::from_static("/"));
    let (body, sent) = match held {
        None => UpBody::new(body, log.up.clone()),
        Some((rule, settings)) => {
            match hold::check(&s, rule, settings, &method, &target, body).await {
                Held::Forward(bytes, approval) => {
                    log.approval(&approval);
                    UpBody::buffered(bytes, log.up.clone())
                }
                Held::Refused(e) => return refuse(e, &accept, log),
            }
        }
    };
    let up_req = Request::from_parts(parts, body);
    if s.audit.gate(&method, &path).await.is_err() {
        return refuse(GatewayError::AuditUnavailable, &accept, log);
    }

    if let (Some(protocol), Some(client_upgrade)) = (upgrade, client_upgrade) {
        return super::websocket::proxy(s, up_req, client_upgrade, protocol, path, log, &accept)
            .await;
    }
    match s.upstream.send(up_req, sent).await {
        Ok(resp) => respond(resp, log),
        Err(e) => refuse(e, &accept, log),
    }
}

/// Relays the upstream's response head; the body streams as the client reads.
pub fn respond(resp: Response<Incoming>, mut log: RequestLog) -> Response<DownBody> {
    log.status(resp.status().as_u16());
    log.upstream_version(resp.version());
    let (mut parts, body) = resp.into_parts();
    headers::drop_hop_by_hop(&mut parts.headers, false);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, DownBody::upstream(body, log))
}

/// The gateway's own answer, audited with the refusal.
pub fn refuse(
    e: GatewayError,
    accept: &Option<HeaderValue>,
    mut log: RequestLog,
) -> Response<DownBody> {
    let status = e.status();
    let (content_type, body) = e.body(accept.as_ref());
    tracing::info!(status = status.as_u16(), reason = %e, "HTTP request answered by the gateway");
    log.refused(status.as_u16(), e.code(), e.to_string(), e.rule());
    if let Some(id) = e.approval_id() {
        log.approval(id);
    }
    let mut resp = Response::new(DownBody::full(body, Some(log)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
