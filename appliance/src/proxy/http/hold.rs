//! Requests matched by a `require_approval` rule. The body is read first
//! (bounded by [`MAX_HELD_BODY`]) so the request can be fingerprinted:
//! SHA-256 over method, target (path and query) and body. An approval of the
//! same user, connection and fingerprint still inside its reuse window lets
//! the request through with the buffered body; otherwise an approval request
//! is filed with the appliance's approvals subsystem and the client is told
//! its id (403). The gateway never waits for the decision: the client sends
//! the identical request again once it is approved.

use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::error::GatewayError;
use super::session::Session;
use crate::approvals::{approve_hint, ApprovalRequest};
use crate::policy::kinds::http::ApprovalSettings;

/// Largest request body a held request may carry (it is shown to approvers).
pub const MAX_HELD_BODY: usize = 64 * 1024;

/// What to do with a held request.
pub enum Held {
    /// Approved earlier (approval id): forward with this body.
    Forward(Bytes, String),
    Refused(GatewayError),
}

/// Reads the body, then reuses an approval or files a new request.
pub async fn check(
    s: &Session,
    rule: &str,
    hold: &ApprovalSettings,
    method: &Method,
    target: &str,
    body: Incoming,
) -> Held {
    let bytes = match Limited::new(body, MAX_HELD_BODY).collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return Held::Refused(GatewayError::HoldTooLarge {
                limit: MAX_HELD_BODY,
                rule: rule.to_string(),
            })
        }
        Err(e) => return Held::Refused(GatewayError::BadBody(e.to_string())),
    };
    let fp = fingerprint(method, target, &bytes);
    if let Some(v) = s
        .approvals
        .find_reusable(&s.identity.user, &s.connection, &fp)
    {
        return Held::Forward(bytes, v.id);
    }
    let req = ApprovalRequest {
        user: s.identity.user.clone(),
        groups: s.identity.groups.clone(),
        connection: s.connection.clone(),
        session_id: s.session_id.clone(),
        kind: "http_request".into(),
        text: describe(method, target, &bytes),
        fingerprint: fp,
        approvers_group: hold.approvers_group.clone(),
        timeout: hold.timeout,
        reuse_window: hold.reuse_window,
        policy_version: s.policy_version,
    };
    match s.approvals.request(req).await {
        // The gateway does not wait: dropping the pending outcome leaves the
        // request filed until it is decided or times out.
        Ok((id, _pending)) => Held::Refused(GatewayError::ApprovalRequired {
            hint: approve_hint(&id),
            id,
            method: method.clone(),
            path: target.to_string(),
            rule: rule.to_string(),
            group: hold.approvers_group.clone(),
        }),
        Err(e) => Held::Refused(GatewayError::ApprovalUnavailable(e.to_string())),
    }
}

/// `sha256:<hex>` of method, target and body, length-prefixed so no two
/// different requests share an input.
pub fn fingerprint(method: &Method, target: &str, body: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [method.as_str().as_bytes(), target.as_bytes(), body] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let hex: String = ctx
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// What the approver sees: the request line and the body (as text when it is).
fn describe(method: &Method, target: &str, body: &[u8]) -> String {
    let mut text = format!("{method} {target}");
    if !body.is_empty() {
        match std::str::from_utf8(body) {
            Ok(b) => {
                text.push_str("\n\n");
                text.push_str(b);
            }
            Err(_) => text.push_str(&format!("\n\n({} bytes of binary body)", body.len())),
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_covers_method_target_and_body() {
        let a = fingerprint(&Method::POST, "/api/x?y=1", b"{}");
        assert!(a.starts_with("sha256:") && a.len() == 7 + 64);
        assert_eq!(a, fingerprint(&Method::POST, "/api/x?y=1", b"{}"));
        assert_ne!(a, fingerprint(&Method::PUT, "/api/x?y=1", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/api/x?y=2", b"{}"));
        assert_ne!(a, fingerprint(&Method::POST, "/api/x?y=1", b"{ }"));
        // Boundaries are length-prefixed: moving bytes between parts changes it.
        assert_ne!(
            fingerprint(&Method::POST, "/a", b"b"),
            fingerprint(&Method::POST, "/ab", b"")
        );
    }

    #[test]
    fn approvers_see_the_request() {
        assert_eq!(describe(&Method::DELETE, "/x", b""), "DELETE /x");
        assert_eq!(
            describe(&Method::POST, "/x", b"{\"a\":1}"),
            "POST /x\n\n{\"a\":1}"
        );
        assert_eq!(
            describe(&Method::POST, "/x", &[0xff, 0xfe]),
            "POST /x\n\n(2 bytes of binary body)"
        );
    }
}
