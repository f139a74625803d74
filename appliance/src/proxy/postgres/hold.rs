//! A statement held for a human approval: file the request, tell the client
//! (a NoticeResponse with the id and how to approve), and wait for the
//! decision, the timeout, the client's cancel, or the session's end. Only
//! the client-to-upstream direction of this one session waits.

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use super::codec::{self, Diagnostic, Severity};
use crate::approvals::{approve_hint, ApprovalOutcome, ApprovalRequest};
use crate::policy::kinds::postgres_controls::ApprovalSettings;
use crate::proxy::SessionContext;

/// How a hold ended, for the relay.
pub enum HoldEnd {
    Run,
    /// Refuse with this SQLSTATE and message (denied, timed out, withdrawn, unavailable).
    Refuse(&'static str, String),
    /// The session is being closed.
    SessionClosed,
}

/// Waits for a decision on `sql`. `notices` reaches the client between
/// messages; `cancelled` fires on the client's CancelRequest.
pub async fn hold(
    ctx: &SessionContext,
    approval: Option<&ApprovalSettings>,
    sql: &str,
    fingerprint: String,
    rule: &str,
    notices: &mpsc::Sender<Vec<u8>>,
    cancelled: &Arc<Notify>,
) -> HoldEnd {
    let Some(approval) = approval else {
        return HoldEnd::Refuse(
            "42501",
            format!("statement held by {rule}, but the connection names no approvers ([connection.postgres.approval])"),
        );
    };
    let approvals = &ctx.shared.approvals;
    if approvals.reusable(&ctx.identity.user, &ctx.connection.name, &fingerprint) {
        return HoldEnd::Run;
    }
    let request = ApprovalRequest {
        user: ctx.identity.user.clone(),
        groups: ctx.identity.groups.clone(),
        connection: ctx.connection.name.clone(),
        session_id: ctx.session_id.clone(),
        kind: "statement".into(),
        text: sql.to_string(),
        fingerprint,
        approvers_group: approval.approvers_group.clone(),
        timeout: approval.timeout,
        reuse_window: approval.reuse_window,
        policy_version: ctx.policy_version,
    };
    let (id, pending) = match approvals.request(request).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "filing an approval request failed");
            return HoldEnd::Refuse(
                "42501",
                format!("statement held by {rule}, but the approval request could not be filed"),
            );
        }
    };
    let text = format!(
        "statement held for approval {id} ({rule}); approvers: {}; approve with: {}",
        approval.approvers_group,
        approve_hint(&id)
    );
    let mut notice = Vec::new();
    if codec::notice_response(
        &mut notice,
        &Diagnostic::new(Severity::Notice, "01000", &text),
    )
    .is_ok()
    {
        let _ = notices.send(notice).await;
    }
    let outcome = tokio::select! {
        o = pending.outcome() => o,
        _ = cancelled.notified() => {
            let _ = approvals.withdraw(&id).await;
            ApprovalOutcome::Withdrawn
        }
        _ = ctx.cancel.cancelled() => {
            let _ = approvals.withdraw(&id).await;
            return HoldEnd::SessionClosed;
        }
    };
    match outcome {
        ApprovalOutcome::Approved { .. } => HoldEnd::Run,
        ApprovalOutcome::Withdrawn => HoldEnd::Refuse(
            "57014",
            format!("canceling statement due to user request (approval {id} withdrawn)"),
        ),
        ApprovalOutcome::TimedOut => HoldEnd::Refuse(
            "42501",
            format!(
                "approval {id} timed out after {}; the statement did not run",
                humantime::format_duration(approval.timeout)
            ),
        ),
        other => HoldEnd::Refuse(
            "42501",
            format!(
                "approval {id} {}; the statement did not run",
                other.describe()
            ),
        ),
    }
}
