//! The policy's `[audit]` table (durability mode, what a full queue does) and
//! its `[[route]]` rules (event kinds and match conditions -> actions). Types
//! and validation only: the event router (`crate::events`) runs them.
//!
//! ```toml
//! [audit]
//! mode = "strict"            # or "fast" (default: the runtime config's audit_mode, else fast)
//! queue_full = "refuse"      # or "backpressure" (fast mode only)
//!
//! [[route]]
//! name = "page-on-denied-ddl"
//! on = ["statement_denied"]  # event kinds, see EVENT_KINDS
//! connections = ["pg-prod"]  # optional filters; all given must match
//! users = ["alice@example.com"]
//! groups = ["contractors"]
//! statement_classes = ["ddl"]
//! text = "(?i)drop\\s+table"  # regex on the statement / command / path
//! actions = [
//!   { type = "webhook", url = "https://hooks.example.com/x", secret = "hook_key", timeout = "5s", retries = 3 },
//!   { type = "command", runbook = "page-oncall.sh", timeout = "10s" },
//!   { type = "close_session" },
//!   { type = "revoke_identity" },
//! ]
//! ```

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::PolicyError;
use crate::audit::{AuditKind, AuditMode, QueueFullPolicy};

/// `[audit]`: `None` fields fall back to the runtime config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AuditPolicy {
    pub mode: Option<AuditMode>,
    pub queue_full: Option<QueueFullPolicy>,
}

/// Event kinds derived from records, besides every audit kind name.
pub const DERIVED_EVENT_KINDS: [&str; 8] = [
    "statement_denied",
    "command_denied",
    "request_denied",
    "held",
    "approved",
    "masked_column_read",
    "sink_failing",
    "disk_threshold",
];

/// Whether `kind` can be named in a route's `on`.
pub fn is_event_kind(kind: &str) -> bool {
    DERIVED_EVENT_KINDS.contains(&kind)
        || AuditKind::ALL
            .iter()
            .any(|k| k.as_str() == kind && *k != AuditKind::EventAction)
}

/// A compiled `text` regex, compared by its pattern.
#[derive(Debug, Clone)]
pub struct TextMatch(pub regex::Regex);

impl PartialEq for TextMatch {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_str() == other.0.as_str()
    }
}

/// One rule: when an event of one of `on` matches every filter, run `actions`.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub on: Vec<String>,
    pub connections: Vec<String>,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub statement_classes: Vec<String>,
    pub text: Option<TextMatch>,
    pub actions: Vec<Action>,
}

/// What a route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// POST the event as JSON; `X-Hoop-Signature: sha256=<hex HMAC>` with the
    /// secret named `secret` from the store.
    Webhook {
        url: String,
        secret: Option<String>,
        timeout: Duration,
        retries: u32,
    },
    /// Run `runbook_dir/<runbook>` with `args`, the event JSON on stdin.
    Command {
        runbook: String,
        args: Vec<String>,
        timeout: Duration,
    },
    /// Close the event's session (its person's sessions on that connection).
    CloseSession,
    /// Revoke the event's user (persisted; closes every session).
    RevokeIdentity,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    mode: Option<String>,
    queue_full: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: String,
    on: Vec<String>,
    #[serde(default)]
    connections: Vec<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    statement_classes: Vec<String>,
    text: Option<String>,
    actions: Vec<RawAction>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    #[serde(rename = "type")]
    kind: String,
    url: Option<String>,
    secret: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    runbook: Option<String>,
    #[serde(default)]
    args: Vec<String>,
}

fn invalid(msg: String) -> PolicyError {
    PolicyError::Invalid(msg)
}

/// Validates `[audit]`; `line` maps a span to its line.
pub(super) fn validate_audit(
    raw: Option<Spanned<toml::Table>>,
    line: &dyn Fn(std::ops::Range<usize>) -> usize,
) -> Result<AuditPolicy, PolicyError> {
    let Some(raw) = raw else {
        return Ok(AuditPolicy::default());
    };
    let at = line(raw.span());
    let raw: RawAudit = raw
        .into_inner()
        .try_into()
        .map_err(|e: toml::de::Error| invalid(format!("[audit] (line {at}): {}", e.message())))?;
    let mode = match raw.mode.as_deref() {
        None => None,
        Some("fast") => Some(AuditMode::Fast),
        Some("strict") => Some(AuditMode::Strict),
        Some(other) => {
            return Err(invalid(format!(
                "[audit] (line {at}): mode {other:?} must be \"strict\" or \"fast\""
            )))
        }
    };
    let queue_full = match raw.queue_full.as_deref() {
        None => None,
        Some("backpressure") => Some(QueueFullPolicy::Backpressure),
        Some("refuse") => Some(QueueFullPolicy::Refuse),
        Some(other) => {
            return Err(invalid(format!(
                "[audit] (line {at}): queue_full {other:?} must be \"backpressure\" or \"refuse\""
            )))
        }
    };
    Ok(AuditPolicy { mode, queue_full })
}

fn duration(
    ctx: &str,
    key: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, PolicyError> {
    match v {
        None => Ok(default),
        Some(s) => match humantime::parse_duration(&s) {
            Ok(d) if !d.is_zero() && d <= Duration::from_secs(3600) => Ok(d),
            _ => Err(invalid(format!(
                "{ctx}: {key} = {s:?} must be a duration like \"5s\", at most 1h"
            ))),
        },
    }
}

fn action(ctx: &str, raw: RawAction) -> Result<Action, PolicyError> {
    let only = |allowed: &[&str]| -> Result<(), PolicyError> {
        let given = [
            ("url", raw.url.is_some()),
            ("secret", raw.secret.is_some()),
            ("timeout", raw.timeout.is_some()),
            ("retries", raw.retries.is_some()),
            ("runbook", raw.runbook.is_some()),
            ("args", !raw.args.is_empty()),
        ];
        match given.iter().find(|(k, set)| *set && !allowed.contains(k)) {
            Some((k, _)) => Err(invalid(format!(
                "{ctx}: `{k}` does not apply to a {} action",
                raw.kind
            ))),
            None => Ok(()),
        }
    };
    match raw.kind.as_str() {
        "webhook" => {
            only(&["url", "secret", "timeout", "retries"])?;
            let url = raw
                .url
                .clone()
                .ok_or_else(|| invalid(format!("{ctx}: a webhook needs `url`")))?;
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(invalid(format!("{ctx}: url {url:?} is not http(s)://")));
            }
            if let Some(s) = &raw.secret {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(invalid(format!(
                        "{ctx}: secret must be the NAME of a secret in the appliance's store ([A-Za-z0-9_]+)"
                    )));
                }
            }
            Ok(Action::Webhook {
                url,
                secret: raw.secret,
                timeout: duration(ctx, "timeout", raw.timeout, Duration::from_secs(5))?,
                retries: raw.retries.unwrap_or(3).min(10),
            })
        }
        "command" => {
            only(&["runbook", "timeout", "args"])?;
            let runbook = raw.runbook.clone().ok_or_else(|| {
                invalid(format!(
                    "{ctx}: a command needs `runbook` (a file name in runbook_dir)"
                ))
            })?;
            let plain = !runbook.is_empty()
                && runbook != "."
                && runbook != ".."
                && runbook
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !plain {
                return Err(invalid(format!(
                    "{ctx}: runbook {runbook:?} must be a plain file name in runbook_dir (no paths)"
                )));
            }
            Ok(Action::Command {
                runbook,
                args: raw.args,
                timeout: duration(ctx, "timeout", raw.timeout, Duration::from_secs(30))?,
            })
        }
        "close_session" => {
            only(&[])?;
            Ok(Action::CloseSession)
        }
        "revoke_identity" => {
            only(&[])?;
            Ok(Action::RevokeIdentity)
        }
        other => Err(invalid(format!(
            "{ctx}: action type {other:?} is not webhook, command, close_session or revoke_identity"
        ))),
    }
}

/// Validates every `[[route]]`.
pub(super) fn validate_routes(
    raw: Vec<Spanned<toml::Table>>,
    line: &dyn Fn(std::ops::Range<usize>) -> usize,
) -> Result<Vec<Route>, PolicyError> {
    let mut out: Vec<Route> = Vec::with_capacity(raw.len());
    for t in raw {
        let at = line(t.span());
        let r: RawRoute = t.into_inner().try_into().map_err(|e: toml::de::Error| {
            invalid(format!("[[route]] (line {at}): {}", e.message()))
        })?;
        let ctx = format!("route {:?} (line {at})", r.name);
        if r.name.trim().is_empty() {
            return Err(invalid(format!(
                "[[route]] (line {at}): name must not be empty"
            )));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(invalid(format!("{ctx}: duplicate route name")));
        }
        if r.on.is_empty() {
            return Err(invalid(format!(
                "{ctx}: `on` must list at least one event kind"
            )));
        }
        if let Some(k) = r.on.iter().find(|k| !is_event_kind(k)) {
            return Err(invalid(format!(
                "{ctx}: unknown event kind {k:?} in `on` (an audit record kind such as session_start, or one of {})",
                DERIVED_EVENT_KINDS.join(", ")
            )));
        }
        if r.actions.is_empty() {
            return Err(invalid(format!("{ctx}: `actions` must not be empty")));
        }
        let text = match r.text {
            None => None,
            // ASCII semantics (`\s`, `(?i)`), as the crate is built without Unicode tables.
            Some(p) => Some(TextMatch(
                regex::RegexBuilder::new(&p)
                    .unicode(false)
                    .build()
                    .map_err(|e| invalid(format!("{ctx}: text is not a valid regex: {e}")))?,
            )),
        };
        let actions = r
            .actions
            .into_iter()
            .enumerate()
            .map(|(i, a)| action(&format!("{ctx} action {}", i + 1), a))
            .collect::<Result<Vec<_>, _>>()?;
        out.push(Route {
            name: r.name,
            on: r.on,
            connections: r.connections,
            users: r.users,
            groups: r.groups,
            statement_classes: r.statement_classes,
            text,
            actions,
        });
    }
    Ok(out)
}
