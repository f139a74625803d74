//! The appliance API's request and response bodies, shared by the appliance
//! (which serves them) and tunnel-lite (which calls them). Plain data.

use serde::{Deserialize, Serialize};

use crate::login::DeviceFlowInfo;

/// `POST /v1/login` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub id_token: String,
}

/// `POST /v1/login` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    pub session_token: String,
    pub user: String,
    pub groups: Vec<String>,
    pub expires_at: u64,
}

/// One connection a person may reach.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub name: String,
    /// `postgres`, `ssh`, `http` or `tcp`.
    pub kind: String,
    pub ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /v1/connections` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnectionsResponse {
    pub policy_version: u64,
    pub dns_suffix: String,
    pub user: String,
    pub groups: Vec<String>,
    pub token_expires_at: u64,
    pub connections: Vec<ConnectionInfo>,
}

/// `GET /v1/info` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoResponse {
    pub policy_version: u64,
    pub dns_suffix: String,
    pub issuer: String,
    pub device_flow: Option<DeviceFlowInfo>,
    /// The appliance's SSH host public keys (`ssh-ed25519 AAAA...`), for known_hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_host_keys: Vec<String>,
}

/// Every error body: a stable code and a sentence for the person.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub reason: String,
}

/// One request held for a human approval, as `GET /v1/approvals` lists it.
/// Times are unix milliseconds on the appliance's clock.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApprovalInfo {
    /// Short id to type: `tunnel-lite approvals approve ID`.
    pub id: String,
    /// The requester.
    pub user: String,
    pub connection: String,
    pub session_id: String,
    /// `statement`, `http_request` or `command`.
    pub kind: String,
    /// The statement text, `METHOD path`, or command line.
    pub text: String,
    pub approvers_group: String,
    /// `pending`, `approved`, `denied`, `timed_out`, `withdrawn` or `expired`.
    pub state: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<i64>,
    /// Whether the caller may approve or deny it (false for their own requests).
    #[serde(default)]
    pub can_decide: bool,
}

/// `GET /v1/approvals` answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalsResponse {
    /// The appliance's clock, so ages do not depend on the laptop's.
    pub now_ms: i64,
    pub approvals: Vec<ApprovalInfo>,
}

/// `POST /v1/approvals/{id}/approve|deny` body (a denial needs a reason).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalDecision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl ApprovalsResponse {
    /// A fixed-width table: id, requester, connection, kind, text (shortened
    /// to one line), age, expires in, and a note on rows the caller cannot decide.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<8}  {:<24}  {:<16}  {:<12}  {:<48}  {:>7}  {:>10}",
            "ID", "REQUESTER", "CONNECTION", "KIND", "TEXT", "AGE", "EXPIRES IN"
        );
        for a in &self.approvals {
            let expires = if a.expires_ms <= self.now_ms {
                "expired".to_string()
            } else {
                short_duration(a.expires_ms - self.now_ms)
            };
            let _ = write!(
                out,
                "{:<8}  {:<24}  {:<16}  {:<12}  {:<48}  {:>7}  {:>10}",
                a.id,
                shorten(&a.user, 24),
                shorten(&a.connection, 16),
                shorten(&a.kind, 12),
                shorten(&a.text, 48),
                short_duration(self.now_ms - a.created_ms),
                expires
            );
            if !a.can_decide {
                let _ = write!(out, "  (yours; approvers: {})", a.approvers_group);
            }
            out.push('\n');
        }
        out
    }
}

/// `text` on one line (whitespace runs become one space), at most `max`
/// characters, ending in `…` when cut.
pub fn shorten(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut s: String = one_line.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// `45s`, `12m`, `3h05m`, `2d04h`.
pub fn short_duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_and_durations() {
        assert_eq!(shorten("UPDATE  t\n  SET a = 1", 48), "UPDATE t SET a = 1");
        assert_eq!(shorten("abcdefghij", 5), "abcd…");
        assert_eq!(short_duration(12_345), "12s");
        assert_eq!(short_duration(125_000), "2m05s");
        assert_eq!(short_duration(3_900_000), "1h05m");
        assert_eq!(short_duration(-5), "0s");
    }

    #[test]
    fn approvals_table_lists_rows() {
        let r = ApprovalsResponse {
            now_ms: 100_000,
            approvals: vec![ApprovalInfo {
                id: "ab12cd34".into(),
                user: "alice@example.com".into(),
                connection: "pg-prod".into(),
                session_id: "s1".into(),
                kind: "statement".into(),
                text: "DELETE FROM users\nWHERE id = 7".into(),
                approvers_group: "dba-leads".into(),
                state: "pending".into(),
                created_ms: 40_000,
                expires_ms: 700_000,
                decided_by: None,
                reason: None,
                decided_ms: None,
                can_decide: true,
            }],
        };
        let t = r.to_table();
        assert!(t.starts_with("ID "), "{t}");
        assert!(t.contains("ab12cd34  alice@example.com"), "{t}");
        assert!(t.contains("DELETE FROM users WHERE id = 7"), "{t}");
        assert!(t.contains("1m00s") && t.contains("10m00s"), "{t}");
        assert!(!t.contains("yours"), "{t}");
    }
}
