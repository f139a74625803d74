//! The approval audit records, built from plain values (no I/O). Every record
//! is about the request, so it names the requester (user, groups, connection,
//! session); the approver, their groups and the channel are in `detail`.

use serde_json::json;

use super::{ApprovalState, ApprovalView};
use crate::audit::{AuditKind, AuditRecord};

/// Who or what settled a request.
#[derive(Debug, Clone)]
pub(super) enum Via {
    /// An approver through the API, in this process.
    Api { groups: Vec<String> },
    /// The local operator CLI (`--as USER --groups ...`): break-glass.
    LocalCli {
        groups: Vec<String>,
        operator: String,
    },
    /// The requester's client cancelled.
    Requester,
    /// The deadline passed.
    Deadline,
    /// The appliance restarted while it was pending.
    Restart,
}

/// The requester's side of a record: who, where, which session, which policy.
fn base_record(kind: AuditKind, view: &ApprovalView) -> AuditRecord {
    let mut rec = AuditRecord::new(kind)
        .user(view.user.clone())
        .groups(view.groups.iter().cloned())
        .connection(view.connection.clone())
        .session(view.session_id.clone());
    if let Some(v) = view.policy_version {
        rec = rec.policy_version(v);
    }
    rec
}

/// `approval_requested`: the full text the approver will see.
pub(super) fn requested(view: &ApprovalView) -> AuditRecord {
    base_record(AuditKind::ApprovalRequested, view)
        .outcome("pending")
        .detail(json!({
            "id": view.id,
            "kind": view.kind,
            "text": view.text,
            "fingerprint": view.fingerprint,
            "approvers_group": view.approvers_group,
            "timeout_ms": view.expires_ms - view.created_ms,
            "reuse_window_ms": view.reuse_window_ms,
        }))
}

/// `approval_granted|denied|timed_out|withdrawn` for a settled `view`.
pub(super) fn settled(view: &ApprovalView, via: &Via) -> AuditRecord {
    let kind = match view.state {
        ApprovalState::Approved => AuditKind::ApprovalGranted,
        ApprovalState::Denied => AuditKind::ApprovalDenied,
        ApprovalState::TimedOut => AuditKind::ApprovalTimedOut,
        ApprovalState::Pending | ApprovalState::Withdrawn | ApprovalState::Expired => {
            AuditKind::ApprovalWithdrawn
        }
    };
    let (via_name, groups, operator) = match via {
        Via::Api { groups } => ("api", Some(groups), None),
        Via::LocalCli { groups, operator } => ("appliance_cli", Some(groups), Some(operator)),
        Via::Requester => ("requester", None, None),
        Via::Deadline => ("timeout", None, None),
        Via::Restart => ("restart", None, None),
    };
    let mut detail = json!({
        "id": view.id,
        "kind": view.kind,
        "fingerprint": view.fingerprint,
        "approvers_group": view.approvers_group,
        "via": via_name,
        "waited_ms": view.decided_ms.map(|d| d - view.created_ms),
    });
    if let Some(by) = &view.decided_by {
        detail["approver"] = json!(by);
    }
    if let Some(g) = groups {
        detail["approver_groups"] = json!(g);
    }
    if let Some(op) = operator {
        detail["break_glass"] = json!(true);
        detail["operator"] = json!(op);
    }
    let mut rec = base_record(kind, view)
        .outcome(view.state.as_str())
        .detail(detail);
    if let Some(r) = &view.reason {
        rec = rec.reason(r.clone());
    }
    rec
}
