//! What the gateway answers when it, rather than the upstream, ends a
//! request: one enum, mapped in one place to a status, a short machine code
//! and a sentence naming the limit or the refusal. Bodies are plain text or
//! JSON per the client's `Accept`. Messages are built from names and
//! settings only: never a secret, a header value or a request body.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};

use super::template::RenderError;

/// A request the gateway answered itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error(
        "request headers are {size} bytes; this gateway accepts at most {limit} (max_header_bytes)"
    )]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("method {0} is not supported by the HTTP gateway")]
    MethodNotSupported(Method),
    #[error("request target must be a path")]
    BadTarget,
    #[error("{method} {path} is denied by rule {rule:?} of connection {connection:?}")]
    Denied {
        method: Method,
        path: String,
        rule: String,
        connection: String,
    },
    #[error("approval required, request {id}: {method} {path} is held by rule {rule:?} until a member of {group:?} approves it ({hint}); then send the identical request again")]
    ApprovalRequired {
        id: String,
        method: Method,
        path: String,
        rule: String,
        group: String,
        hint: String,
    },
    #[error(
        "the request body is over {limit} bytes, too large to hold for approval (rule {rule:?})"
    )]
    HoldTooLarge { limit: usize, rule: String },
    #[error("the request body could not be read: {0}")]
    BadBody(String),
    #[error("the request could not be held for approval: {0}")]
    ApprovalUnavailable(String),
    #[error("the audit trail is unavailable and strict audit mode forwards nothing unrecorded")]
    AuditUnavailable,
    #[error("the gateway cannot build the upstream credential: {0}")]
    Credential(RenderError),
    #[error("the upstream of {connection:?} is unreachable: {reason}")]
    UpstreamUnreachable { connection: String, reason: String },
    #[error("the upstream of {connection:?} did not accept a connection within {after:?} (connect_timeout)")]
    UpstreamConnectTimeout { connection: String, after: Duration },
    #[error("TLS with the upstream of {connection:?} failed: {reason}")]
    UpstreamTls { connection: String, reason: String },
    #[error("the upstream of {connection:?} sent no response headers within {after:?} (response_header_timeout)")]
    UpstreamTimeout { connection: String, after: Duration },
    #[error("the upstream of {connection:?} broke the exchange: {reason}")]
    UpstreamProtocol { connection: String, reason: String },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::MethodNotSupported(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::BadTarget => StatusCode::BAD_REQUEST,
            GatewayError::Denied { .. } | GatewayError::ApprovalRequired { .. } => {
                StatusCode::FORBIDDEN
            }
            GatewayError::HoldTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::ApprovalUnavailable(_) | GatewayError::AuditUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Credential(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::UpstreamUnreachable { .. }
            | GatewayError::UpstreamTls { .. }
            | GatewayError::UpstreamProtocol { .. } => StatusCode::BAD_GATEWAY,
            GatewayError::UpstreamConnectTimeout { .. } | GatewayError::UpstreamTimeout { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
        }
    }

    /// Short, stable, machine-friendly code (also the audit outcome).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::MethodNotSupported(_) => "method_not_supported",
            GatewayError::BadTarget => "bad_request",
            GatewayError::Denied { .. } => "denied",
            GatewayError::ApprovalRequired { .. } => "approval_required",
            GatewayError::HoldTooLarge { .. } => "body_too_large",
            GatewayError::BadBody(_) => "bad_request",
            GatewayError::ApprovalUnavailable(_) => "approval_unavailable",
            GatewayError::AuditUnavailable => "audit_unavailable",
            GatewayError::Credential(_) => "credential_unavailable",
            GatewayError::UpstreamUnreachable { .. } => "upstream_unreachable",
            GatewayError::UpstreamConnectTimeout { .. } => "upstream_connect_timeout",
            GatewayError::UpstreamTls { .. } => "upstream_tls",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::UpstreamProtocol { .. } => "upstream_error",
        }
    }

    /// The rule that refused the request, if any.
    pub fn rule(&self) -> Option<&str> {
        match self {
            GatewayError::Denied { rule, .. }
            | GatewayError::ApprovalRequired { rule, .. }
            | GatewayError::HoldTooLarge { rule, .. } => Some(rule),
            _ => None,
        }
    }

    /// The approval request filed, if any.
    pub fn approval_id(&self) -> Option<&str> {
        match self {
            GatewayError::ApprovalRequired { id, .. } => Some(id),
            _ => None,
        }
    }

    /// The body and its content type, per the client's `Accept`.
    pub fn body(&self, accept: Option<&HeaderValue>) -> (&'static str, Bytes) {
        if wants_json(accept) {
            let mut v = serde_json::json!({
                "error": self.code(),
                "status": self.status().as_u16(),
                "reason": self.to_string(),
            });
            if let Some(id) = self.approval_id() {
                v["request_id"] = id.into();
            }
            let mut text = v.to_string();
            text.push('\n');
            ("application/json", Bytes::from(text))
        } else {
            let text = format!(
                "{} {}: {}\n",
                self.status().as_u16(),
                self.status().canonical_reason().unwrap_or(""),
                self
            );
            ("text/plain; charset=utf-8", Bytes::from(text))
        }
    }
}

/// Whether the client prefers JSON: its `Accept` names a JSON type.
pub fn wants_json(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept.split(',').any(|item| {
        let mime = item.split(';').next().unwrap_or("").trim();
        let q_zero = item
            .split(';')
            .skip(1)
            .any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
        !q_zero
            && (mime.eq_ignore_ascii_case("application/json")
                || mime.to_ascii_lowercase().ends_with("+json"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_or_text_per_accept() {
        let e = GatewayError::UpstreamTimeout {
            connection: "grafana".into(),
            after: Duration::from_secs(2),
        };
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
        let (ct, body) = e.body(None);
        assert_eq!(ct, "text/plain; charset=utf-8");
        assert_eq!(
            body,
            "504 Gateway Timeout: the upstream of \"grafana\" sent no response headers within 2s (response_header_timeout)\n"
        );
        let json = HeaderValue::from_static("text/html;q=0.9, application/json");
        let (ct, body) = e.body(Some(&json));
        assert_eq!(ct, "application/json");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "upstream_timeout");
        assert_eq!(v["status"], 504);
        assert!(wants_json(Some(&HeaderValue::from_static(
            "application/problem+json"
        ))));
        assert!(!wants_json(Some(&HeaderValue::from_static(
            "application/json;q=0"
        ))));
        assert!(!wants_json(Some(&HeaderValue::from_static("*/*"))));
    }

    #[test]
    fn denial_names_the_rule() {
        let e = GatewayError::Denied {
            method: Method::DELETE,
            path: "/api/dashboards/1".into(),
            rule: "no-deletes".into(),
            connection: "grafana".into(),
        };
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.rule(), Some("no-deletes"));
        assert_eq!(
            e.to_string(),
            "DELETE /api/dashboards/1 is denied by rule \"no-deletes\" of connection \"grafana\""
        );
    }
}
