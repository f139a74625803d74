//! Pure event logic: which event kinds a committed record raises, which
//! routes match it, and the JSON payload actions receive. No I/O.
//!
//! Every record raises its own kind (`session_start`, `statement`,
//! `approval_requested`, `identity_revoked`, `policy_refused`, ...) plus:
//! - `statement_denied` / `command_denied` / `request_denied`: outcome
//!   `denied` on a `statement` / `ssh_exec`, `ssh_shell`, `ssh_command_denied`
//!   / `http_request` record;
//! - `held`: an `approval_requested` record or outcome `held`;
//! - `approved`: an `approval_granted` record (`approval_denied` is its own kind);
//! - `masked_column_read`: a record whose `detail.masked_columns` is a
//!   non-empty list;
//! - `sink_failing`: `audit_sink_failing` with outcome `failing`;
//! - `disk_threshold`: `audit_disk_threshold` with outcome `exceeded`.
//!
//! Filters read `detail.class` (a string) or `detail.classes` (a list), or
//! the same under `detail.control` (the PostgreSQL gateway's decision), for
//! `statement_classes`, and the first of `detail.statement`,
//! `detail.command`, `detail.path`, `reason` for `text`.

use serde_json::{json, Value};

use crate::audit::{AuditKind, StoredRecord};
use crate::policy::routes::Route;

/// The event kinds `rec` raises; empty for records that never trigger
/// routes (`event_action`, so actions cannot loop).
pub fn event_kinds(rec: &StoredRecord) -> Vec<String> {
    let r = &rec.record;
    if r.kind == AuditKind::EventAction {
        return Vec::new();
    }
    let mut out = vec![r.kind.as_str().to_owned()];
    let outcome = r.outcome.as_deref().unwrap_or("");
    let mut add = |k: &str| {
        if !out.iter().any(|o| o == k) {
            out.push(k.to_owned());
        }
    };
    match (r.kind, outcome) {
        (AuditKind::Statement, "denied") => add("statement_denied"),
        (AuditKind::SshExec | AuditKind::SshShell, "denied") | (AuditKind::SshCommandDenied, _) => {
            add("command_denied")
        }
        (AuditKind::HttpRequest, "denied") => add("request_denied"),
        (AuditKind::ApprovalRequested, _) => add("held"),
        (AuditKind::ApprovalGranted, _) => add("approved"),
        (AuditKind::AuditSinkFailing, "failing") => add("sink_failing"),
        (AuditKind::AuditDiskThreshold, "exceeded") => add("disk_threshold"),
        _ => {}
    }
    if outcome == "held" {
        add("held");
    }
    let masked = r
        .detail
        .as_ref()
        .and_then(|d| d.get("masked_columns"))
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    if masked {
        add("masked_column_read");
    }
    out
}

/// The statement, command line, path or reason a `text` regex looks at.
pub fn event_text(rec: &StoredRecord) -> Option<&str> {
    let d = rec.record.detail.as_ref();
    ["statement", "command", "path"]
        .iter()
        .find_map(|k| d.and_then(|d| d.get(*k)).and_then(Value::as_str))
        .or(rec.record.reason.as_deref())
}

fn classes(rec: &StoredRecord) -> Vec<&str> {
    let Some(d) = rec.record.detail.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<&str> = Vec::new();
    // The PostgreSQL gateway puts its decision under `control`.
    for v in [Some(d), d.get("control")].into_iter().flatten() {
        out.extend(v.get("class").and_then(Value::as_str));
        if let Some(list) = v.get("classes").and_then(Value::as_array) {
            out.extend(list.iter().filter_map(Value::as_str));
        }
    }
    out
}

/// Whether `route` fires for `rec` raising `kinds`.
pub fn route_matches(route: &Route, rec: &StoredRecord, kinds: &[String]) -> bool {
    let r = &rec.record;
    if !route.on.iter().any(|k| kinds.contains(k)) {
        return false;
    }
    if !route.connections.is_empty()
        && !r
            .connection
            .as_deref()
            .is_some_and(|c| route.connections.iter().any(|x| x.eq_ignore_ascii_case(c)))
    {
        return false;
    }
    if !route.users.is_empty()
        && !r
            .user
            .as_deref()
            .is_some_and(|u| route.users.iter().any(|x| x.eq_ignore_ascii_case(u)))
    {
        return false;
    }
    if !route.groups.is_empty() && !r.groups.iter().any(|g| route.groups.contains(g)) {
        return false;
    }
    if !route.statement_classes.is_empty() {
        let have = classes(rec);
        if !route
            .statement_classes
            .iter()
            .any(|c| have.contains(&c.as_str()))
        {
            return false;
        }
    }
    if let Some(t) = &route.text {
        if !event_text(rec).is_some_and(|s| t.0.is_match(s)) {
            return false;
        }
    }
    true
}

/// The routes that fire for `rec`, in policy order, with the kind that
/// matched first.
pub fn matching<'a>(routes: &'a [Route], rec: &StoredRecord) -> Vec<(&'a Route, String)> {
    let kinds = event_kinds(rec);
    if kinds.is_empty() {
        return Vec::new();
    }
    routes
        .iter()
        .filter(|route| route_matches(route, rec, &kinds))
        .map(|route| {
            let k = route
                .on
                .iter()
                .find(|k| kinds.contains(k))
                .cloned()
                .unwrap_or_default();
            (route, k)
        })
        .collect()
}

/// The JSON an action receives (webhook body, runbook stdin).
pub fn payload(route: &Route, event: &str, rec: &StoredRecord) -> Value {
    json!({
        "event": event,
        "route": route.name,
        "kinds": event_kinds(rec),
        "record": rec,
    })
}
