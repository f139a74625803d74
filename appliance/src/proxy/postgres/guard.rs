//! The guardrail decision for one statement: a pure function of the
//! connection's controls, the person's groups and the statement's classes.
//! No I/O; the relay turns a `Deny` into ErrorResponse 42501 and a `Hold`
//! into the approval flow.
//!
//! Order: `unparsed` is denied first unless `allow_unparsed` (fail closed);
//! then any denied class denies (deny wins over hold); then any held class
//! holds; else the statement is allowed. When several classes match, the
//! first in [`StatementClass`] order is named. A person in a group of a
//! `[[guardrails.group]]` rule gets that rule's `deny` and `hold` instead of
//! the connection's (the first matching rule wins; group names are exact and
//! case-sensitive, as in `allow_groups`).

use std::collections::BTreeSet;

use super::classify::{Exposure, StatementClass};
use crate::policy::kinds::postgres_controls::PgControls;

/// What happens to a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardDecision {
    Allow,
    /// Refused: ErrorResponse 42501, session stays usable.
    Deny {
        class: StatementClass,
        rule: String,
    },
    /// Waits for a human approval.
    Hold {
        class: StatementClass,
        rule: String,
    },
}

impl GuardDecision {
    /// `allow`, `deny` or `hold`, for audit records.
    pub fn as_str(&self) -> &'static str {
        match self {
            GuardDecision::Allow => "allow",
            GuardDecision::Deny { .. } => "deny",
            GuardDecision::Hold { .. } => "hold",
        }
    }
}

/// Decides on a statement's classes (for `EXECUTE`, pass the effective
/// classes: `PreparedStatements::effective`).
pub fn decide(
    controls: &PgControls,
    groups: &[String],
    classes: &BTreeSet<StatementClass>,
) -> GuardDecision {
    let g = &controls.guardrails;
    if classes.contains(&StatementClass::Unparsed) && !g.allow_unparsed {
        return GuardDecision::Deny {
            class: StatementClass::Unparsed,
            rule: "guardrails (allow_unparsed = false)".into(),
        };
    }
    let rule = g.groups.iter().find_map(|r| {
        r.groups
            .iter()
            .find(|name| groups.contains(name))
            .map(|name| (r, name))
    });
    let (deny, hold, suffix) = match rule {
        Some((r, name)) => (&r.deny, &r.hold, format!(" (group {name})")),
        None => (&g.deny, &g.hold, String::new()),
    };
    if let Some(&class) = classes.iter().find(|c| deny.contains(c)) {
        return GuardDecision::Deny {
            class,
            rule: format!("guardrails.deny{suffix}"),
        };
    }
    if let Some(&class) = classes.iter().find(|c| hold.contains(c)) {
        return GuardDecision::Hold {
            class,
            rule: format!("guardrails.hold{suffix}"),
        };
    }
    GuardDecision::Allow
}

/// [`decide`], then `guardrails.deny_functions_on_masked`: a statement that
/// returns a masked column transformed, or a whole row of a relation with
/// masked columns, is denied (class `read`), unless already denied.
pub fn decide_statement(
    controls: &PgControls,
    groups: &[String],
    classes: &BTreeSet<StatementClass>,
    exposures: &[Exposure],
) -> GuardDecision {
    let decision = decide(controls, groups, classes);
    if matches!(decision, GuardDecision::Deny { .. })
        || !controls.guardrails.deny_functions_on_masked
    {
        return decision;
    }
    match masked_exposure(controls, exposures) {
        Some(what) => GuardDecision::Deny {
            class: StatementClass::Read,
            rule: format!("guardrails.deny_functions_on_masked ({what})"),
        },
        None => decision,
    }
}

/// The first exposure that may reveal a masked column, described.
fn masked_exposure(controls: &PgControls, exposures: &[Exposure]) -> Option<String> {
    let rules = &controls.masking.columns;
    exposures.iter().find_map(|e| {
        let (schema, table) = match e.relation.as_slice() {
            [] => (None, None),
            [t] => (None, Some(t.as_str())),
            [.., s, t] => (Some(s.as_str()), Some(t.as_str())),
        };
        let p = rules.first_partial(schema, table, e.column.as_deref())?;
        let relation = if e.relation.is_empty() {
            "?".to_string()
        } else {
            e.relation.join(".")
        };
        Some(match &e.column {
            Some(c) => format!("column {relation}.{c} matches masking rule {}", p.as_str()),
            None => format!(
                "whole row of {relation} may hold columns of masking rule {}",
                p.as_str()
            ),
        })
    })
}

/// The ErrorResponse message of a denial, e.g. `statement denied by policy:
/// class drop is denied by guardrails.deny (policy version 7)`.
pub fn denial_message(class: StatementClass, rule: &str, policy_version: Option<u64>) -> String {
    let version = match policy_version {
        Some(v) => format!(" (policy version {v})"),
        None => String::new(),
    };
    format!("statement denied by policy: class {class} is denied by {rule}{version}")
}

#[cfg(test)]
mod tests;
