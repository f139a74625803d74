//! The approvals vocabulary and its pure rules: what a gateway files, how it
//! ends, what is stored, the errors, and who may decide (no I/O here).

use std::time::Duration;

use crate::audit::AuditError;
use crate::identity::Identity;

/// Largest held text (statement, `METHOD path`, command line) accepted.
/// Larger ones are refused rather than shown truncated to an approver.
pub const MAX_TEXT: usize = 256 * 1024;
/// Longest decision reason kept.
pub const MAX_REASON: usize = 1000;
/// Longest user, group, connection, session id, kind or fingerprint.
pub const MAX_NAME: usize = 512;
/// Longest timeout or reuse window accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);
/// The timeout the issue asks for when the policy says nothing.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);
/// Length of a request id: short enough to type.
pub const ID_LEN: usize = 8;
/// Id characters: Crockford's base32, lowercase (no i, l, o, u).
const ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// What a gateway asks an approver to allow.
#[derive(Debug, Clone)]
pub struct ApprovalRequest {
    /// The requester (never allowed to approve it).
    pub user: String,
    pub groups: Vec<String>,
    /// The policy's connection name.
    pub connection: String,
    /// The requester's session, as in its audit records.
    pub session_id: String,
    /// `"statement"`, `"http_request"` or `"command"`.
    pub kind: String,
    /// What the approver sees: statement text, `METHOD path`, command line.
    pub text: String,
    /// Computed by the gateway for reuse matching (e.g. hex SHA-256 of the text,
    /// or of method + path + body).
    pub fingerprint: String,
    /// Members of this group may decide (the requester excepted).
    pub approvers_group: String,
    /// How long to wait for a decision (policy; [`DEFAULT_TIMEOUT`] by default).
    pub timeout: Duration,
    /// After an approval, [`Approvals::reusable`] answers true for the same
    /// user + connection + fingerprint this long. Zero disables reuse.
    pub reuse_window: Duration,
    pub policy_version: Option<u64>,
}

/// How a held request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApprovalOutcome {
    Approved {
        by: String,
    },
    Denied {
        by: String,
        reason: String,
    },
    TimedOut,
    /// The requester cancelled, or the request outlived its session (restart).
    Withdrawn,
}

impl ApprovalOutcome {
    pub fn is_approved(&self) -> bool {
        matches!(self, ApprovalOutcome::Approved { .. })
    }

    /// One sentence for the requester's error message.
    pub fn describe(&self) -> String {
        match self {
            ApprovalOutcome::Approved { by } => format!("approved by {by}"),
            ApprovalOutcome::Denied { by, reason } => format!("denied by {by}: {reason}"),
            ApprovalOutcome::TimedOut => "no approver decided before the timeout".into(),
            ApprovalOutcome::Withdrawn => "the approval request was withdrawn".into(),
        }
    }
}

impl std::fmt::Display for ApprovalOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A request's state, stored as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalState {
    Pending,
    Approved,
    Denied,
    TimedOut,
    Withdrawn,
    /// Pending when the appliance restarted: its session is gone.
    Expired,
}

impl ApprovalState {
    pub const ALL: [ApprovalState; 6] = [
        ApprovalState::Pending,
        ApprovalState::Approved,
        ApprovalState::Denied,
        ApprovalState::TimedOut,
        ApprovalState::Withdrawn,
        ApprovalState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalState::Pending => "pending",
            ApprovalState::Approved => "approved",
            ApprovalState::Denied => "denied",
            ApprovalState::TimedOut => "timed_out",
            ApprovalState::Withdrawn => "withdrawn",
            ApprovalState::Expired => "expired",
        }
    }

    pub fn from_name(name: &str) -> Option<ApprovalState> {
        ApprovalState::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl std::fmt::Display for ApprovalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One stored request. Times are unix milliseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalView {
    pub id: String,
    pub user: String,
    pub groups: Vec<String>,
    pub connection: String,
    pub session_id: String,
    pub kind: String,
    pub text: String,
    pub fingerprint: String,
    pub approvers_group: String,
    pub state: ApprovalState,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub decided_by: Option<String>,
    pub reason: Option<String>,
    pub decided_ms: Option<i64>,
    pub reuse_window_ms: u64,
    pub policy_version: Option<u64>,
}

impl ApprovalView {
    /// The outcome, once the request is no longer pending.
    pub fn outcome(&self) -> Option<ApprovalOutcome> {
        let by = || self.decided_by.clone().unwrap_or_else(|| "?".into());
        Some(match self.state {
            ApprovalState::Pending => return None,
            ApprovalState::Approved => ApprovalOutcome::Approved { by: by() },
            ApprovalState::Denied => ApprovalOutcome::Denied {
                by: by(),
                reason: self
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no reason given".into()),
            },
            ApprovalState::TimedOut => ApprovalOutcome::TimedOut,
            ApprovalState::Withdrawn | ApprovalState::Expired => ApprovalOutcome::Withdrawn,
        })
    }

    /// The API's form; `can_decide` is computed for `viewer`.
    pub fn to_info(&self, viewer: Option<&Identity>) -> tunnel_lite::api::ApprovalInfo {
        tunnel_lite::api::ApprovalInfo {
            id: self.id.clone(),
            user: self.user.clone(),
            connection: self.connection.clone(),
            session_id: self.session_id.clone(),
            kind: self.kind.clone(),
            text: self.text.clone(),
            approvers_group: self.approvers_group.clone(),
            state: self.state.as_str().to_string(),
            created_ms: self.created_ms,
            expires_ms: self.expires_ms,
            decided_by: self.decided_by.clone(),
            reason: self.reason.clone(),
            decided_ms: self.decided_ms,
            can_decide: viewer.is_some_and(|v| may_decide(self, v)),
        }
    }
}

/// Errors of the approvals subsystem. The first four are refusals a person
/// sees (see [`super::api`] for their HTTP form); the rest are operational.
#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    #[error("no approval request {0:?}")]
    NotFound(String),
    #[error("approval request {id} is {state}, no longer pending")]
    NotPending { id: String, state: ApprovalState },
    #[error("self-approval is not allowed: {id} was requested by {user}")]
    SelfApproval { id: String, user: String },
    #[error("{user} may not decide {id}: approvers are the members of group {group:?}")]
    NotApprover {
        id: String,
        user: String,
        group: String,
    },
    #[error("invalid approval request: {0}")]
    Invalid(String),
    #[error("approvals store: {0}")]
    Storage(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Config(String),
}

impl From<rusqlite::Error> for ApprovalError {
    fn from(e: rusqlite::Error) -> Self {
        ApprovalError::Storage(e.to_string())
    }
}

/// Whether `who` is the requester (ASCII case ignored: when in doubt, refuse).
pub(super) fn same_user(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// Whether `approver` may decide `view` (ignoring its state): a member of the
/// approvers group (exact match, like the policy's groups) who is not the requester.
pub fn may_decide(view: &ApprovalView, approver: &Identity) -> bool {
    !same_user(&view.user, &approver.user) && approver.groups.contains(&view.approvers_group)
}

/// The pure decision: may `approver` decide `view` at `now_ms`?
pub fn check_decidable(
    view: &ApprovalView,
    approver: &Identity,
    now_ms: i64,
) -> Result<(), ApprovalError> {
    let state = match view.state {
        ApprovalState::Pending if view.expires_ms <= now_ms => ApprovalState::TimedOut,
        s => s,
    };
    if state != ApprovalState::Pending {
        return Err(ApprovalError::NotPending {
            id: view.id.clone(),
            state,
        });
    }
    if same_user(&view.user, &approver.user) {
        return Err(ApprovalError::SelfApproval {
            id: view.id.clone(),
            user: view.user.clone(),
        });
    }
    if !may_decide(view, approver) {
        return Err(ApprovalError::NotApprover {
            id: view.id.clone(),
            user: approver.user.clone(),
            group: view.approvers_group.clone(),
        });
    }
    Ok(())
}

/// What to tell the requester so an approver can act on `id`.
pub fn approve_hint(id: &str) -> String {
    format!("`tunnel-lite approvals approve {id}` (or deny {id} --reason \"...\")")
}

/// A typed id, lowercased; `None` if it cannot be one of ours.
pub fn normalize_id(id: &str) -> Option<String> {
    let id = id.trim().to_ascii_lowercase();
    (id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b))).then_some(id)
}

pub(super) fn new_id() -> Result<String, ApprovalError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; ID_LEN];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ApprovalError::Storage("the system random generator failed".into()))?;
    // 256 is a multiple of 32: masking keeps the choice uniform.
    Ok(bytes
        .iter()
        .map(|b| char::from(ID_ALPHABET[usize::from(b & 31)]))
        .collect())
}

pub(super) fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// An id as typed, bounded for error messages.
pub(super) fn shown(id: &str) -> String {
    id.chars().take(32).collect()
}

pub(super) fn validate(req: &ApprovalRequest) -> Result<(), ApprovalError> {
    let bad = |m: String| Err(ApprovalError::Invalid(m));
    for (name, v) in [
        ("user", &req.user),
        ("connection", &req.connection),
        ("session_id", &req.session_id),
        ("kind", &req.kind),
        ("approvers_group", &req.approvers_group),
    ] {
        if v.trim().is_empty() {
            return bad(format!("{name} is empty"));
        }
        if v.len() > MAX_NAME {
            return bad(format!("{name} is longer than {MAX_NAME} bytes"));
        }
    }
    if req.fingerprint.len() > MAX_NAME {
        return bad(format!("fingerprint is longer than {MAX_NAME} bytes"));
    }
    if req.text.len() > MAX_TEXT {
        return bad(format!(
            "the {} is {} bytes; at most {MAX_TEXT} can be held for approval",
            req.kind,
            req.text.len()
        ));
    }
    if req.timeout.is_zero() || req.timeout > MAX_WAIT || req.reuse_window > MAX_WAIT {
        return bad("timeout must be between 1 ms and 7 days, reuse window at most 7 days".into());
    }
    Ok(())
}
