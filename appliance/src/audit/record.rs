//! The audit record as callers build it: plain values, no I/O.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// What happened. Stored as its snake_case name in the `kind` column.
///
/// New kinds are appended (statements, commands, HTTP requests, approvals);
/// names are never reused or renamed, since stored rows refer to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A proxied session began. `Default` exists only so [`AuditRecord`] can
    /// derive it; always pick the kind with [`AuditRecord::new`].
    #[default]
    SessionStart,
    SessionEnd,
    TunnelRefused,
    Login,
    LoginRefused,
    TokenIssued,
    IdentityRevoked,
    IdentityRestored,
    PolicyLoaded,
    PolicyRefused,
    ApplianceStarted,
    ApplianceStopped,
    /// One SQL statement (simple Query, or an Execute of a prepared statement).
    Statement,
    /// An SSH exec or subsystem channel: command line, exit status, bytes each way.
    SshExec,
    /// An interactive SSH shell, with its recording.
    SshShell,
    /// One SFTP file operation (open/read/write/remove/rename...) with its path.
    SshSftp,
    /// An SSH port forwarding channel (`ssh -L`), allowed or refused, with its destination.
    SshForward,
    /// An SSH command refused by a deny pattern.
    SshCommandDenied,
    /// The SSH upstream could not be used: host key mismatch, credential refused.
    SshUpstreamRefused,
    /// One HTTP request through the HTTP gateway: method, path, status, bytes each way.
    HttpRequest,
    /// An upgraded (WebSocket) connection through the HTTP gateway began.
    WebsocketStart,
    /// An upgraded (WebSocket) connection ended: bytes each way, duration.
    WebsocketEnd,
    /// A statement, HTTP request or command was held for a human approval.
    ApprovalRequested,
    /// An approver approved a held request.
    ApprovalGranted,
    /// An approver denied a held request, with a reason.
    ApprovalDenied,
    /// Nobody decided a held request before its deadline.
    ApprovalTimedOut,
    /// The requester cancelled, or the requesting session was gone after a restart.
    ApprovalWithdrawn,
    /// A signed checkpoint of the hash chain (sequence, hash, time) in `detail`.
    AuditCheckpoint,
    /// A signed export of the trail was written (`appliance audit export`): range, file, digest.
    AuditExported,
    /// Retention deleted records every sink acknowledged (or an export covered).
    AuditRetention,
    /// The audit database crossed (or fell back under) its disk threshold.
    AuditDiskThreshold,
    /// A shipping sink keeps failing (or recovered): sink, error, lag.
    AuditSinkFailing,
    /// An event route ran an action (webhook, command, close_session, revoke_identity) and its outcome.
    EventAction,
}

impl AuditKind {
    /// Every kind, in declaration order.
    pub const ALL: [AuditKind; 33] = [
        AuditKind::SessionStart,
        AuditKind::SessionEnd,
        AuditKind::TunnelRefused,
        AuditKind::Login,
        AuditKind::LoginRefused,
        AuditKind::TokenIssued,
        AuditKind::IdentityRevoked,
        AuditKind::IdentityRestored,
        AuditKind::PolicyLoaded,
        AuditKind::PolicyRefused,
        AuditKind::ApplianceStarted,
        AuditKind::ApplianceStopped,
        AuditKind::Statement,
        AuditKind::SshExec,
        AuditKind::SshShell,
        AuditKind::SshSftp,
        AuditKind::SshForward,
        AuditKind::SshCommandDenied,
        AuditKind::SshUpstreamRefused,
        AuditKind::HttpRequest,
        AuditKind::WebsocketStart,
        AuditKind::WebsocketEnd,
        AuditKind::ApprovalRequested,
        AuditKind::ApprovalGranted,
        AuditKind::ApprovalDenied,
        AuditKind::ApprovalTimedOut,
        AuditKind::ApprovalWithdrawn,
        AuditKind::AuditCheckpoint,
        AuditKind::AuditExported,
        AuditKind::AuditRetention,
        AuditKind::AuditDiskThreshold,
        AuditKind::AuditSinkFailing,
        AuditKind::EventAction,
    ];

    /// The stored name (identical to the serde name; a test keeps them equal).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::SessionStart => "session_start",
            AuditKind::SessionEnd => "session_end",
            AuditKind::TunnelRefused => "tunnel_refused",
            AuditKind::Login => "login",
            AuditKind::LoginRefused => "login_refused",
            AuditKind::TokenIssued => "token_issued",
            AuditKind::IdentityRevoked => "identity_revoked",
            AuditKind::IdentityRestored => "identity_restored",
            AuditKind::PolicyLoaded => "policy_loaded",
            AuditKind::PolicyRefused => "policy_refused",
            AuditKind::ApplianceStarted => "appliance_started",
            AuditKind::ApplianceStopped => "appliance_stopped",
            AuditKind::Statement => "statement",
            AuditKind::SshExec => "ssh_exec",
            AuditKind::SshShell => "ssh_shell",
            AuditKind::SshSftp => "ssh_sftp",
            AuditKind::SshForward => "ssh_forward",
            AuditKind::SshCommandDenied => "ssh_command_denied",
            AuditKind::SshUpstreamRefused => "ssh_upstream_refused",
            AuditKind::HttpRequest => "http_request",
            AuditKind::WebsocketStart => "websocket_start",
            AuditKind::WebsocketEnd => "websocket_end",
            AuditKind::ApprovalRequested => "approval_requested",
            AuditKind::ApprovalGranted => "approval_granted",
            AuditKind::ApprovalDenied => "approval_denied",
            AuditKind::ApprovalTimedOut => "approval_timed_out",
            AuditKind::ApprovalWithdrawn => "approval_withdrawn",
            AuditKind::AuditCheckpoint => "audit_checkpoint",
            AuditKind::AuditExported => "audit_exported",
            AuditKind::AuditRetention => "audit_retention",
            AuditKind::AuditDiskThreshold => "audit_disk_threshold",
            AuditKind::AuditSinkFailing => "audit_sink_failing",
            AuditKind::EventAction => "event_action",
        }
    }

    /// The kind with this stored name, if this version knows it.
    pub fn from_name(name: &str) -> Option<AuditKind> {
        AuditKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl std::fmt::Display for AuditKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit event. Every field maps to one column of the `audit` table
/// (`groups` and `detail` as JSON text). Absent values are omitted from JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Unix time in milliseconds; set by [`AuditRecord::new`].
    pub time_ms: i64,
    pub kind: AuditKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// The policy's connection (target) name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_addr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Bytes laptop -> upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_up: Option<u64>,
    /// Bytes upstream -> laptop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_down: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Short machine-friendly outcome: "ok", "refused", "error".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Human-readable reason (end reason, refusal reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<u64>,
    /// Kind-specific extras, stored as compact JSON text (object keys sorted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// Current unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl AuditRecord {
    /// A record of `kind` stamped with the current time; fill the rest with the
    /// builder-style setters.
    pub fn new(kind: AuditKind) -> Self {
        AuditRecord {
            time_ms: now_ms(),
            kind,
            ..AuditRecord::default()
        }
    }

    /// Override the timestamp (imports, tests).
    pub fn at(mut self, time_ms: i64) -> Self {
        self.time_ms = time_ms;
        self
    }

    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self
    }

    pub fn groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    pub fn connection(mut self, connection: impl Into<String>) -> Self {
        self.connection = Some(connection.into());
        self
    }

    pub fn session(mut self, session_id: impl Into<String>) -> Self {
        self.session_id = Some(session_id.into());
        self
    }

    pub fn client_addr(mut self, addr: impl ToString) -> Self {
        self.client_addr = Some(addr.to_string());
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Bytes laptop -> upstream and upstream -> laptop.
    pub fn bytes(mut self, up: u64, down: u64) -> Self {
        self.bytes_up = Some(up);
        self.bytes_down = Some(down);
        self
    }

    /// Duration, saturating at `u64::MAX` milliseconds.
    pub fn duration(mut self, d: std::time::Duration) -> Self {
        self.duration_ms = Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self
    }

    pub fn outcome(mut self, outcome: impl Into<String>) -> Self {
        self.outcome = Some(outcome.into());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn policy_version(mut self, version: u64) -> Self {
        self.policy_version = Some(version);
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}
