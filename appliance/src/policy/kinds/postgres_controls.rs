//! In-session controls of a `kind = "postgres"` connection: the
//! `[connection.postgres.guardrails]`, `[connection.postgres.masking]` and
//! `[connection.postgres.approval]` tables, validated into the types the
//! guard (`proxy::postgres::guard`), the masker (`proxy::postgres::mask`)
//! and the approval flow use.
//!
//! Without a `guardrails` table nothing is denied or held (not even
//! `unparsed`); with one, `unparsed` is denied unless `allow_unparsed = true`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::Deserialize;

use crate::policy::PolicyError;
use crate::proxy::postgres::classify::StatementClass;
use crate::proxy::postgres::mask::{BuiltinDetector, CustomDetector, MaskMode, MaskRules};

/// Default `approval.timeout`.
pub const DEFAULT_APPROVAL_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest `approval.timeout` and `approval.reuse_window`.
pub const MAX_APPROVAL_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Default `masking.replacement`.
pub const DEFAULT_REPLACEMENT: &str = "****";
/// Longest `masking.replacement`, in bytes.
pub const MAX_REPLACEMENT: usize = 64;

/// Guardrails, masking and approval settings of one connection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgControls {
    pub guardrails: Guardrails,
    pub masking: Masking,
    /// Present when the connection has an `[connection.postgres.approval]`
    /// table (required when anything is held).
    pub approval: Option<ApprovalSettings>,
}

/// Statement classes denied or held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guardrails {
    pub deny: BTreeSet<StatementClass>,
    pub hold: BTreeSet<StatementClass>,
    /// `unparsed` statements pass (else they are denied: fail closed).
    pub allow_unparsed: bool,
    /// Deny statements that return masked columns transformed (functions,
    /// casts, operators) or as whole rows.
    pub deny_functions_on_masked: bool,
    /// Per-group rules; the first whose `groups` meets a person's groups
    /// replaces `deny` and `hold` for that person.
    pub groups: Vec<GroupGuardrails>,
}

impl Default for Guardrails {
    /// No guardrails table: nothing denied or held.
    fn default() -> Self {
        Guardrails {
            deny: BTreeSet::new(),
            hold: BTreeSet::new(),
            allow_unparsed: true,
            deny_functions_on_masked: false,
            groups: Vec::new(),
        }
    }
}

/// One `[[connection.postgres.guardrails.group]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupGuardrails {
    pub groups: Vec<String>,
    pub deny: BTreeSet<StatementClass>,
    pub hold: BTreeSet<StatementClass>,
}

/// Column masking and value detectors.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Masking {
    pub columns: MaskRules,
    pub detectors: Vec<BuiltinDetector>,
    pub custom: Vec<CustomDetector>,
    pub mask: MaskMode,
}

impl Masking {
    /// True when results need looking at.
    pub fn is_active(&self) -> bool {
        !self.columns.is_empty() || !self.detectors.is_empty() || !self.custom.is_empty()
    }
}

/// Human approval of held statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Members of this group may approve (never the requester).
    pub approvers_group: String,
    /// A held statement is refused after this long without a decision.
    pub timeout: Duration,
    /// An approval also covers the same statement text from the same person
    /// for this long (zero: single use).
    pub reuse_window: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardrails {
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    hold: Vec<String>,
    #[serde(default)]
    allow_unparsed: bool,
    #[serde(default)]
    deny_functions_on_masked: bool,
    #[serde(default)]
    group: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    groups: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    hold: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    #[serde(default)]
    columns: Vec<String>,
    #[serde(default)]
    detectors: Vec<String>,
    #[serde(default)]
    custom: Vec<RawCustom>,
    mask: Option<String>,
    replacement: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCustom {
    name: String,
    regex: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApproval {
    approvers_group: String,
    timeout: Option<String>,
    reuse_window: Option<String>,
}

/// Validates the three optional raw tables; `whence` names the connection.
pub(super) fn parse(
    guardrails: Option<toml::Table>,
    masking: Option<toml::Table>,
    approval: Option<toml::Table>,
    whence: &str,
) -> Result<PgControls, PolicyError> {
    let guardrails = match guardrails {
        None => Guardrails::default(),
        Some(t) => parse_guardrails(
            super::typed(t, &format!("{whence} [connection.postgres.guardrails]"))?,
            whence,
        )?,
    };
    let masking = match masking {
        None => Masking::default(),
        Some(t) => parse_masking(
            super::typed(t, &format!("{whence} [connection.postgres.masking]"))?,
            whence,
        )?,
    };
    let approval = match approval {
        None => None,
        Some(t) => Some(parse_approval(
            super::typed(t, &format!("{whence} [connection.postgres.approval]"))?,
            whence,
        )?),
    };
    let holds = !guardrails.hold.is_empty() || guardrails.groups.iter().any(|g| !g.hold.is_empty());
    if holds && approval.is_none() {
        return Err(PolicyError::Invalid(format!(
            "{whence}: guardrails hold statements for approval but [connection.postgres.approval] is missing (approvers_group)"
        )));
    }
    if guardrails.deny_functions_on_masked && masking.columns.is_empty() {
        return Err(PolicyError::Invalid(format!(
            "{whence}: guardrails.deny_functions_on_masked needs masking.columns"
        )));
    }
    Ok(PgControls {
        guardrails,
        masking,
        approval,
    })
}

fn classes(
    list: &[String],
    key: &str,
    whence: &str,
) -> Result<BTreeSet<StatementClass>, PolicyError> {
    let mut out = BTreeSet::new();
    for name in list {
        let class: StatementClass = name
            .parse()
            .map_err(|e| PolicyError::Invalid(format!("{whence}: {key}: {e}")))?;
        if !out.insert(class) {
            return Err(PolicyError::Invalid(format!(
                "{whence}: {key} lists {name:?} twice"
            )));
        }
    }
    Ok(out)
}

fn check_overlap(
    deny: &BTreeSet<StatementClass>,
    hold: &BTreeSet<StatementClass>,
    key: &str,
    whence: &str,
) -> Result<(), PolicyError> {
    match deny.intersection(hold).next() {
        Some(c) => Err(PolicyError::Invalid(format!(
            "{whence}: {key}: class {c} is both denied and held"
        ))),
        None => Ok(()),
    }
}

fn parse_guardrails(raw: RawGuardrails, whence: &str) -> Result<Guardrails, PolicyError> {
    let deny = classes(&raw.deny, "guardrails.deny", whence)?;
    let hold = classes(&raw.hold, "guardrails.hold", whence)?;
    check_overlap(&deny, &hold, "guardrails", whence)?;
    if hold.contains(&StatementClass::Unparsed) && !raw.allow_unparsed {
        return Err(PolicyError::Invalid(format!(
            "{whence}: guardrails.hold lists \"unparsed\", which is denied unless allow_unparsed = true"
        )));
    }
    let mut groups = Vec::new();
    for (i, g) in raw.group.into_iter().enumerate() {
        let key = format!("guardrails.group[{i}]");
        if g.groups.is_empty() || g.groups.iter().any(|n| n.trim().is_empty()) {
            return Err(PolicyError::Invalid(format!(
                "{whence}: {key}.groups must list at least one non-empty group name"
            )));
        }
        let deny = classes(&g.deny, &format!("{key}.deny"), whence)?;
        let hold = classes(&g.hold, &format!("{key}.hold"), whence)?;
        check_overlap(&deny, &hold, &key, whence)?;
        groups.push(GroupGuardrails {
            groups: g.groups,
            deny,
            hold,
        });
    }
    Ok(Guardrails {
        deny,
        hold,
        allow_unparsed: raw.allow_unparsed,
        deny_functions_on_masked: raw.deny_functions_on_masked,
        groups,
    })
}

fn parse_masking(raw: RawMasking, whence: &str) -> Result<Masking, PolicyError> {
    let bad = |msg: String| PolicyError::Invalid(format!("{whence}: masking.{msg}"));
    let columns = MaskRules::parse(&raw.columns).map_err(|e| bad(format!("columns: {e}")))?;
    let mut detectors = Vec::new();
    for name in &raw.detectors {
        let d = BuiltinDetector::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = BuiltinDetector::ALL.iter().map(|d| d.as_str()).collect();
            bad(format!(
                "detectors: unknown detector {name:?} (known: {}; use `custom` for regexes)",
                known.join(", ")
            ))
        })?;
        if detectors.contains(&d) {
            return Err(bad(format!("detectors lists {name:?} twice")));
        }
        detectors.push(d);
    }
    let mut custom: Vec<CustomDetector> = Vec::new();
    for c in raw.custom {
        if c.name.is_empty() || c.name.len() > 63 {
            return Err(bad("custom: name must be 1 to 63 bytes".into()));
        }
        if custom.iter().any(|x| x.name == c.name) || BuiltinDetector::from_name(&c.name).is_some()
        {
            return Err(bad(format!(
                "custom: detector name {:?} is used twice",
                c.name
            )));
        }
        let d = CustomDetector {
            name: c.name,
            regex: c.regex,
        };
        d.compile()
            .map_err(|e| bad(format!("custom {:?}: {e}", d.name)))?;
        custom.push(d);
    }
    let mask = match raw.mask.as_deref().unwrap_or("keep-last-4") {
        "keep-last-4" => MaskMode::KeepLast4,
        "hash" => MaskMode::Hash,
        "fixed" => {
            let r = raw
                .replacement
                .clone()
                .unwrap_or_else(|| DEFAULT_REPLACEMENT.into());
            if r.len() > MAX_REPLACEMENT || r.contains('\0') {
                return Err(bad(format!(
                    "replacement must be at most {MAX_REPLACEMENT} bytes without NUL"
                )));
            }
            MaskMode::Fixed(r)
        }
        other => {
            return Err(bad(format!(
                "mask {other:?} is not \"keep-last-4\", \"fixed\" or \"hash\""
            )))
        }
    };
    if raw.replacement.is_some() && !matches!(mask, MaskMode::Fixed(_)) {
        return Err(bad("replacement only applies with mask = \"fixed\"".into()));
    }
    Ok(Masking {
        columns,
        detectors,
        custom,
        mask,
    })
}

fn parse_approval(raw: RawApproval, whence: &str) -> Result<ApprovalSettings, PolicyError> {
    let bad = |msg: String| PolicyError::Invalid(format!("{whence}: approval.{msg}"));
    if raw.approvers_group.trim().is_empty() {
        return Err(bad("approvers_group must not be empty".into()));
    }
    let dur = |key: &str, v: Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).map_err(|e| bad(format!("{key} {s:?}: {e}"))),
    };
    let timeout = dur("timeout", raw.timeout, DEFAULT_APPROVAL_TIMEOUT)?;
    let reuse_window = dur("reuse_window", raw.reuse_window, Duration::ZERO)?;
    if timeout < Duration::from_secs(1) || timeout > MAX_APPROVAL_WINDOW {
        return Err(bad("timeout must be between 1s and 24h".into()));
    }
    if reuse_window > MAX_APPROVAL_WINDOW {
        return Err(bad("reuse_window must be at most 24h".into()));
    }
    Ok(ApprovalSettings {
        approvers_group: raw.approvers_group,
        timeout,
        reuse_window,
    })
}

#[cfg(test)]
mod tests;
