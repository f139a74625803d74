//! `[connection.postgres]` settings: how the gateway logs in upstream, which
//! startup parameters pass, TLS to the upstream, message size bound.

use std::time::Duration;

use serde::Deserialize;

use super::postgres_controls::PgControls;
use crate::policy::PolicyError;

/// Startup parameters a client may pass upstream unless the policy says otherwise.
/// `options` is absent on purpose: it can set arbitrary server settings
/// (`-c role=...`), so a policy must list it explicitly.
pub const DEFAULT_STARTUP_PARAMS: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "extra_float_digits",
    "search_path",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
];

/// Default bound on one protocol message (PostgreSQL's own limit is 1 GiB).
pub const DEFAULT_MAX_MESSAGE: usize = 1 << 30;

/// TLS to the upstream server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    /// Plain TCP.
    #[default]
    Disable,
    /// TLS, certificate not verified (encryption only).
    Require,
    /// TLS, certificate verified against `ca_file` or the web PKI, name checked.
    VerifyFull,
}

/// How the gateway authenticates upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum CredentialMode {
    /// Log in as `user` with the connection's `password` secret.
    #[default]
    Inject,
    /// Log in as `admin_user` (secret `admin_password`), create a short-lived
    /// login role per session that is a member of `grant_role`, connect as it,
    /// drop it afterwards.
    Ephemeral {
        admin_user: String,
        grant_role: String,
        ttl: Duration,
        sweep_interval: Duration,
    },
}

/// Settings of a `kind = "postgres"` connection.
#[derive(Debug, Clone, PartialEq)]
pub struct PostgresSettings {
    /// Upstream login role for `inject` mode; default `postgres`.
    pub user: String,
    /// Database to connect to regardless of what the client asks (optional).
    pub database: Option<String>,
    /// Databases a client may ask for; empty means any.
    pub allowed_databases: Vec<String>,
    pub tls: UpstreamTls,
    /// CA bundle for `verify-full` (PEM); default: the web PKI roots.
    pub ca_file: Option<String>,
    /// Name to verify and send as SNI; default: the upstream's host.
    pub server_name: Option<String>,
    /// Client startup parameters that pass upstream.
    pub startup_params: Vec<String>,
    /// Bound on one protocol message, in bytes.
    pub max_message_bytes: usize,
    pub credential: CredentialMode,
    /// Guardrails, masking, approvals.
    pub controls: PgControls,
}

impl Default for PostgresSettings {
    fn default() -> Self {
        PostgresSettings {
            user: "postgres".into(),
            database: None,
            allowed_databases: Vec::new(),
            tls: UpstreamTls::Disable,
            ca_file: None,
            server_name: None,
            startup_params: DEFAULT_STARTUP_PARAMS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            max_message_bytes: DEFAULT_MAX_MESSAGE,
            credential: CredentialMode::Inject,
            controls: PgControls::default(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgresSettings {
    user: Option<String>,
    database: Option<String>,
    #[serde(default)]
    allowed_databases: Vec<String>,
    tls: Option<UpstreamTls>,
    ca_file: Option<String>,
    server_name: Option<String>,
    startup_params: Option<Vec<String>>,
    max_message_bytes: Option<usize>,
    credential: Option<RawCredential>,
    guardrails: Option<toml::Table>,
    masking: Option<toml::Table>,
    approval: Option<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    mode: Option<String>,
    admin_user: Option<String>,
    grant_role: Option<String>,
    ttl: Option<String>,
    sweep_interval: Option<String>,
}

/// Validates the raw table; `whence` names it in errors.
pub(super) fn parse(table: toml::Table, whence: &str) -> Result<PostgresSettings, PolicyError> {
    let raw: RawPostgresSettings = super::typed(table, whence)?;
    let bad = |msg: String| PolicyError::Invalid(format!("{whence}: {msg}"));
    let d = PostgresSettings::default();
    let ident = |key: &str, v: &str| -> Result<(), PolicyError> {
        if v.is_empty() || v.len() > 63 || v.contains('\0') {
            return Err(bad(format!(
                "{key} {v:?} is not a PostgreSQL identifier (1 to 63 bytes)"
            )));
        }
        Ok(())
    };
    let user = raw.user.unwrap_or(d.user);
    ident("user", &user)?;
    if let Some(db) = &raw.database {
        ident("database", db)?;
    }
    for db in &raw.allowed_databases {
        ident("allowed_databases entry", db)?;
    }
    let tls = raw.tls.unwrap_or_default();
    if raw.ca_file.is_some() && tls != UpstreamTls::VerifyFull {
        return Err(bad("ca_file only applies with tls = \"verify-full\"".into()));
    }
    let max_message_bytes = raw.max_message_bytes.unwrap_or(d.max_message_bytes);
    if !(1024..=DEFAULT_MAX_MESSAGE).contains(&max_message_bytes) {
        return Err(bad(format!(
            "max_message_bytes {max_message_bytes} must be between 1024 and {DEFAULT_MAX_MESSAGE}"
        )));
    }
    let startup_params = raw.startup_params.unwrap_or(d.startup_params);
    for p in &startup_params {
        if matches!(p.as_str(), "user" | "database" | "replication") {
            return Err(bad(format!(
                "startup_params must not list {p:?}: the gateway sets it"
            )));
        }
    }
    let credential = match raw.credential {
        None => CredentialMode::Inject,
        Some(c) => match c.mode.as_deref().unwrap_or("inject") {
            "inject" => {
                if c.admin_user.is_some() || c.grant_role.is_some() || c.ttl.is_some() {
                    return Err(bad(
                        "credential.admin_user, grant_role and ttl only apply to mode = \"ephemeral\"".into(),
                    ));
                }
                CredentialMode::Inject
            }
            "ephemeral" => {
                let admin_user = c.admin_user.ok_or_else(|| {
                    bad("credential.mode = \"ephemeral\" needs admin_user".into())
                })?;
                let grant_role = c.grant_role.ok_or_else(|| {
                    bad("credential.mode = \"ephemeral\" needs grant_role".into())
                })?;
                ident("credential.admin_user", &admin_user)?;
                ident("credential.grant_role", &grant_role)?;
                let dur = |key: &str, v: Option<String>, default: Duration| match v {
                    None => Ok(default),
                    Some(s) => humantime::parse_duration(&s)
                        .map_err(|e| bad(format!("credential.{key} {s:?}: {e}"))),
                };
                let ttl = dur("ttl", c.ttl, Duration::from_secs(8 * 3600))?;
                let sweep_interval =
                    dur("sweep_interval", c.sweep_interval, Duration::from_secs(300))?;
                if ttl < Duration::from_secs(60) || sweep_interval < Duration::from_secs(1) {
                    return Err(bad(
                        "credential.ttl must be at least 1m and sweep_interval at least 1s".into(),
                    ));
                }
                CredentialMode::Ephemeral {
                    admin_user,
                    grant_role,
                    ttl,
                    sweep_interval,
                }
            }
            other => {
                return Err(bad(format!(
                    "credential.mode {other:?} is not \"inject\" or \"ephemeral\""
                )))
            }
        },
    };
    let controls =
        super::postgres_controls::parse(raw.guardrails, raw.masking, raw.approval, whence)?;
    Ok(PostgresSettings {
        controls,
        user,
        database: raw.database,
        allowed_databases: raw.allowed_databases,
        tls,
        ca_file: raw.ca_file,
        server_name: raw.server_name,
        startup_params,
        max_message_bytes,
        credential,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        toml::from_str(s).unwrap()
    }

    #[test]
    fn defaults_and_modes() {
        let s = parse(table(""), "x").unwrap();
        assert_eq!(s, PostgresSettings::default());
        let s = parse(
            table(
                "user = \"app\"\ntls = \"verify-full\"\nca_file = \"/ca.pem\"\n[credential]\nmode = \"ephemeral\"\nadmin_user = \"admin\"\ngrant_role = \"readonly\"\nttl = \"1h\"\n",
            ),
            "x",
        )
        .unwrap();
        assert_eq!(s.tls, UpstreamTls::VerifyFull);
        assert!(
            matches!(s.credential, CredentialMode::Ephemeral { ref grant_role, ttl, .. } if grant_role == "readonly" && ttl == Duration::from_secs(3600))
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse(
            table("colour = 1"),
            "connection \"pg\" [connection.postgres] (line 9)",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colour") && e.contains("line 9"), "{e}");
        let e = parse(table("ca_file = \"/x\""), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("verify-full"), "{e}");
        let e = parse(table("[credential]\nmode = \"ephemeral\""), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("admin_user"), "{e}");
        let e = parse(table("startup_params = [\"user\"]"), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gateway sets it"), "{e}");
        let e = parse(table("tls = \"maybe\""), "w")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maybe"), "{e}");
    }
}
