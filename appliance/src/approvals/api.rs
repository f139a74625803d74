//! The approval routes of the HTTPS API, minus HTTP plumbing (the caller,
//! `crate::api`, verifies the Bearer session token and writes the reply):
//!
//! - `GET  /v1/approvals`               pending requests the caller may decide,
//!   and the caller's own pending requests (`can_decide: false`)
//! - `POST /v1/approvals/{id}/approve`  body `{}` or `{"reason": "..."}`
//! - `POST /v1/approvals/{id}/deny`     body `{"reason": "..."}` (required)
//!
//! This is the one place approval errors become what a person sees:
//! 403 not an approver or self-approval, 404 unknown id, 409 not pending,
//! 400 bad body; storage and audit failures are a generic 500/503 that
//! leaks nothing.

use http::StatusCode;
use tunnel_lite::api::{ApprovalDecision, ApprovalInfo, ApprovalsResponse};

use super::{ApprovalError, Approvals};
use crate::audit::now_ms;
use crate::identity::Identity;

/// The prefix of the decision routes.
pub const PREFIX: &str = "/v1/approvals/";

/// An error as the API answers it: `{"error": code, "reason": reason}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub reason: String,
}

impl ApiFailure {
    fn new(status: StatusCode, code: &'static str, reason: impl Into<String>) -> Self {
        ApiFailure {
            status,
            code,
            reason: reason.into(),
        }
    }
}

impl ApprovalError {
    /// The HTTP status, code and sentence for this error.
    pub fn to_api(&self) -> ApiFailure {
        let (status, code) = match self {
            ApprovalError::NotFound(_) => (StatusCode::NOT_FOUND, "approval_not_found"),
            ApprovalError::NotPending { .. } => (StatusCode::CONFLICT, "approval_not_pending"),
            ApprovalError::SelfApproval { .. } => (StatusCode::FORBIDDEN, "self_approval"),
            ApprovalError::NotApprover { .. } => (StatusCode::FORBIDDEN, "not_an_approver"),
            ApprovalError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApprovalError::Audit(_) => {
                tracing::error!(error = %self, "approval API: audit trail unavailable");
                return ApiFailure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "the audit trail is unavailable",
                );
            }
            ApprovalError::Storage(_) | ApprovalError::Config(_) => {
                tracing::error!(error = %self, "approval API failed");
                return ApiFailure::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the approvals store failed; see the appliance log",
                );
            }
        };
        ApiFailure::new(status, code, self.to_string())
    }
}

/// `GET /v1/approvals`.
pub fn list(approvals: &Approvals, who: &Identity) -> Result<ApprovalsResponse, ApiFailure> {
    let views = approvals.list_pending_for(who).map_err(|e| e.to_api())?;
    Ok(ApprovalsResponse {
        now_ms: now_ms(),
        approvals: views.iter().map(|v| v.to_info(Some(who))).collect(),
    })
}

/// Splits `/v1/approvals/{id}/approve|deny` into the id and whether it approves.
pub fn parse_decision_path(path: &str) -> Option<(&str, bool)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (id, action) = rest.split_once('/')?;
    match action {
        "approve" => Some((id, true)),
        "deny" => Some((id, false)),
        _ => None,
    }
}

/// `POST /v1/approvals/{id}/approve` and `.../deny`, with the request body.
pub async fn decide(
    approvals: &Approvals,
    who: &Identity,
    path: &str,
    body: &[u8],
) -> Result<ApprovalInfo, ApiFailure> {
    let Some((id, approve)) = parse_decision_path(path) else {
        return Err(ApiFailure::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "expected /v1/approvals/{id}/approve or /v1/approvals/{id}/deny",
        ));
    };
    let decision: ApprovalDecision = if body.iter().all(u8::is_ascii_whitespace) {
        ApprovalDecision::default()
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected JSON {{\"reason\": \"...\"}}: {e}"),
            )
        })?
    };
    let reason = decision
        .reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if !approve && reason.is_none() {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "a denial needs a reason: {\"reason\": \"...\"}",
        ));
    }
    let view = approvals
        .decide(id, who, approve, reason)
        .await
        .map_err(|e| e.to_api())?;
    Ok(view.to_info(Some(who)))
}
