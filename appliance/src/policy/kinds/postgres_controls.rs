//! In-session controls of a `kind = "postgres"` connection: the
//! `[connection.postgres.guardrails]`, `[connection.postgres.masking]` and
//! `[connection.postgres.approval]` tables (being written).

use crate::policy::PolicyError;

/// Guardrails, masking and approval settings of one connection.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PgControls {}

/// Validates the three optional raw tables; `whence` names the connection.
pub(super) fn parse(
    guardrails: Option<toml::Table>,
    masking: Option<toml::Table>,
    approval: Option<toml::Table>,
    whence: &str,
) -> Result<PgControls, PolicyError> {
    for (name, t) in [
        ("guardrails", &guardrails),
        ("masking", &masking),
        ("approval", &approval),
    ] {
        if t.is_some() {
            return Err(PolicyError::Invalid(format!(
                "{whence}: [connection.postgres.{name}] is not supported by this build yet"
            )));
        }
    }
    Ok(PgControls {})
}
