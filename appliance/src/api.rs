//! The appliance's HTTPS API, served on the same TLS port as the tunnel
//! (ALPN `http/1.1`). It is the control plane for laptops:
//!
//! - `GET  /v1/health`       liveness and the policy version in force
//! - `GET  /v1/info`         what a laptop needs to log in (device flow, DNS suffix)
//! - `POST /v1/login`        `{"id_token": ...}` -> an appliance session token
//! - `GET  /v1/connections`  (Bearer session token) what this person may reach
//! - `GET  /.well-known/jwks.json`  the appliance's public keys (session tokens,
//!   HTTP identity assertions)
//! - `GET  /v1/approvals`   (Bearer) held requests the caller may decide
//! - `POST /v1/approvals/{id}/approve|deny`  (Bearer) `{"reason": "..."}`; see
//!   [`crate::approvals::api`]
//!
//! Request bodies are bounded by `MAX_BODY`; errors are JSON `{"error", "reason"}`
//! and never echo tokens.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tunnel_lite::api::{
    ApiError, ConnectionInfo, ConnectionsResponse, InfoResponse, LoginRequest, LoginResponse,
};
use tunnel_lite::login::DeviceFlowInfo;

use crate::audit::{AuditKind, AuditRecord};
use crate::identity::{IdentityError, SessionClaims, SessionSigner};
use crate::policy::visible_connections;
use crate::server::Shared;

/// Largest request body accepted (an ID token is a few KiB).
pub const MAX_BODY: usize = 64 * 1024;

/// Serves one HTTP/1.1 connection (keep-alive) until the client closes it.
pub async fn serve_connection<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, peer, &shared).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(64 * 1024)
        .header_read_timeout(std::time::Duration::from_secs(10))
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "API connection ended with an error");
    }
}

type Reply = Response<Full<Bytes>>;

async fn route(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Reply {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/v1/health") => health(shared),
        (&Method::GET, "/v1/info") => info(shared),
        (&Method::POST, "/v1/login") => login(req, peer, shared).await,
        (&Method::GET, "/v1/connections") => connections(&req, shared),
        (&Method::GET, "/v1/approvals") => approvals_list(&req, shared),
        (&Method::POST, p) if p.starts_with(crate::approvals::api::PREFIX) => {
            approvals_decide(req, shared, &path).await
        }
        // Session-token key and the HTTP gateway's identity assertion key.
        (&Method::GET, "/.well-known/jwks.json") => {
            json(StatusCode::OK, &crate::proxy::http::jwks(shared))
        }
        (_, "/v1/health" | "/v1/info" | "/v1/login" | "/v1/connections" | "/v1/approvals") => {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed",
            )
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no such endpoint {path}"),
        ),
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn error(status: StatusCode, code: &str, reason: &str) -> Reply {
    json(
        status,
        &ApiError {
            error: code.to_string(),
            reason: reason.to_string(),
        },
    )
}

fn policy_not_loaded() -> Reply {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "policy_not_loaded",
        "the appliance has no policy loaded yet",
    )
}

fn health(shared: &Shared) -> Reply {
    let version = shared.policy.borrow().as_ref().map(|p| p.policy().version);
    json(
        StatusCode::OK,
        &serde_json::json!({
            "status": "ok",
            "policy_version": version,
            "live_sessions": shared.sessions.len(),
            "tls_fingerprint": shared.fingerprint,
        }),
    )
}

fn info(shared: &Shared) -> Reply {
    let Some(policy) = shared.policy.borrow().clone() else {
        return policy_not_loaded();
    };
    let p = policy.policy();
    let device_flow = p.identity.device_flow.as_ref().map(|d| DeviceFlowInfo {
        client_id: d.client_id.clone(),
        device_authorization_endpoint: d.device_authorization_endpoint.clone(),
        token_endpoint: d.token_endpoint.clone(),
        scopes: d.scopes.clone(),
    });
    json(
        StatusCode::OK,
        &InfoResponse {
            policy_version: p.version,
            dns_suffix: p.dns_suffix.clone(),
            issuer: p.identity.issuer.clone(),
            device_flow,
            ssh_host_keys: crate::proxy::ssh::hostkey::public_lines(&shared.cfg.data_dir),
        },
    )
}

async fn login(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Reply {
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("request body exceeds {MAX_BODY} bytes or was cut off"),
            )
        }
    };
    let request: LoginRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("expected JSON {{\"id_token\": \"...\"}}: {e}"),
            )
        }
    };
    let refused = |reason: String, user: Option<String>| {
        let mut rec = AuditRecord::new(AuditKind::LoginRefused)
            .client_addr(peer)
            .outcome("refused")
            .reason(reason);
        if let Some(u) = user {
            rec = rec.user(u);
        }
        rec
    };
    let verifier = match shared.idp_verifier() {
        None => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "policy_not_loaded",
                "the appliance has no policy loaded yet",
            )
        }
        Some(Err(e)) => {
            tracing::error!(error = %e, "the policy's identity settings are unusable");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "idp_config",
                &e.to_string(),
            );
        }
        Some(Ok(v)) => v,
    };
    let identity = match verifier.verify(&request.id_token).await {
        Ok(id) => id,
        Err(e) => {
            let (status, code) = match &e {
                IdentityError::Expired { .. } => (StatusCode::UNAUTHORIZED, "token_expired"),
                IdentityError::InvalidToken(_) => (StatusCode::UNAUTHORIZED, "token_invalid"),
                _ => (StatusCode::BAD_GATEWAY, "idp_unavailable"),
            };
            let reason = format!("ID token refused: {e}");
            let _ = shared.audit.record(refused(reason.clone(), None)).await;
            return error(status, code, &reason);
        }
    };
    if shared.revoked.borrow().contains(&identity.user) {
        let reason = format!("access for {} has been revoked", identity.user);
        let _ = shared
            .audit
            .record(refused(reason.clone(), Some(identity.user.clone())))
            .await;
        return error(StatusCode::FORBIDDEN, "identity_revoked", &reason);
    }
    let ttl = shared
        .policy
        .borrow()
        .as_ref()
        .map(|p| p.policy().identity.session_ttl)
        .unwrap_or(std::time::Duration::from_secs(3600));
    let token = match shared.signer.issue(&identity, ttl) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "issuing a session token failed");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "could not issue a session token",
            );
        }
    };
    let expires_at = match shared.signer.verify(&token) {
        Ok(c) => c.exp,
        Err(_) => 0,
    };
    let rec = AuditRecord::new(AuditKind::Login)
        .user(identity.user.clone())
        .groups(identity.groups.iter().cloned())
        .client_addr(peer)
        .outcome("ok")
        .detail(serde_json::json!({ "expires_at": expires_at }));
    if shared.audit.record(rec).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            "the audit trail is unavailable",
        );
    }
    tracing::info!(user = %identity.user, %peer, "login");
    json(
        StatusCode::OK,
        &LoginResponse {
            session_token: token,
            user: identity.user,
            groups: identity.groups,
            expires_at,
        },
    )
}

fn connections(req: &Request<Incoming>, shared: &Shared) -> Reply {
    let (identity, claims) = match bearer_session(req, shared) {
        Ok(session) => session,
        Err(reply) => return reply,
    };
    let Some(policy) = shared.policy.borrow().clone() else {
        return policy_not_loaded();
    };
    let p = policy.policy();
    let list = visible_connections(p, &identity)
        .into_iter()
        .map(|c| ConnectionInfo {
            name: c.name.clone(),
            kind: c.kind.as_str().to_string(),
            ports: c.ports.clone(),
            description: c.description.clone(),
        })
        .collect();
    json(
        StatusCode::OK,
        &ConnectionsResponse {
            policy_version: p.version,
            dns_suffix: p.dns_suffix.clone(),
            user: identity.user,
            groups: identity.groups,
            token_expires_at: claims.exp,
            connections: list,
        },
    )
}

/// The caller's identity from `Authorization: Bearer <session token>`, or the
/// reply refusing it (missing, expired, invalid, revoked).
// The Err is the HTTP reply itself, handed straight back to hyper.
#[allow(clippy::result_large_err)]
fn bearer_identity(
    req: &Request<Incoming>,
    shared: &Shared,
) -> Result<crate::identity::Identity, Reply> {
    bearer_session(req, shared).map(|(identity, _)| identity)
}

/// [`bearer_identity`] with the token's claims.
#[allow(clippy::result_large_err)]
fn bearer_session(
    req: &Request<Incoming>,
    shared: &Shared,
) -> Result<(crate::identity::Identity, SessionClaims), Reply> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| {
            error(
                StatusCode::UNAUTHORIZED,
                "token_missing",
                "send the session token as `Authorization: Bearer <token>`",
            )
        })?;
    let claims = shared.signer.verify(token).map_err(|e| match e {
        IdentityError::Expired { .. } => error(
            StatusCode::UNAUTHORIZED,
            "token_expired",
            "session token expired; run `tunnel-lite login` again",
        ),
        e => error(
            StatusCode::UNAUTHORIZED,
            "token_invalid",
            &format!("session token refused ({e}); run `tunnel-lite login` again"),
        ),
    })?;
    let identity = SessionSigner::identity_of(&claims);
    if shared.revoked.borrow().contains(&identity.user) {
        return Err(error(
            StatusCode::FORBIDDEN,
            "identity_revoked",
            &format!("access for {} has been revoked", identity.user),
        ));
    }
    Ok((identity, claims))
}

fn approval_reply<T: Serialize>(r: Result<T, crate::approvals::api::ApiFailure>) -> Reply {
    match r {
        Ok(body) => json(StatusCode::OK, &body),
        Err(f) => error(f.status, f.code, &f.reason),
    }
}

fn approvals_list(req: &Request<Incoming>, shared: &Shared) -> Reply {
    match bearer_identity(req, shared) {
        Ok(who) => approval_reply(crate::approvals::api::list(&shared.approvals, &who)),
        Err(reply) => reply,
    }
}

async fn approvals_decide(req: Request<Incoming>, shared: &Shared, path: &str) -> Reply {
    let who = match bearer_identity(&req, shared) {
        Ok(who) => who,
        Err(reply) => return reply,
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                &format!("request body exceeds {MAX_BODY} bytes or was cut off"),
            )
        }
    };
    approval_reply(crate::approvals::api::decide(&shared.approvals, &who, path, &body).await)
}
