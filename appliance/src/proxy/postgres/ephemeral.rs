//! Short-lived credentials (`credential.mode = "ephemeral"`): per session,
//! the appliance logs in with its admin credential, creates a login role
//! named after the person (`alice_k3f9`) that is a member of the configured
//! role and expires on its own (`VALID UNTIL`), connects as it, and drops it
//! when the session ends. PostgreSQL's own logs and `pg_stat_activity` then
//! name the person. Leftovers (a crash, a failed drop) are swept at startup
//! and periodically. The role's password is sent only as a SCRAM verifier,
//! so it never appears in the server's statement log.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ring::rand::SecureRandom;
use tokio_util::sync::CancellationToken;

use super::codec::ProtocolVersion;
use super::error::PgError;
use super::upstream;
use crate::policy::kinds::postgres::CredentialMode;
use crate::policy::{Connection, KindSettings, PostgresSettings};
use crate::proxy::SessionContext;
use crate::secrets::{Secret, SecretStore};
use crate::server::Shared;

/// Marks the roles this feature creates (in the role's comment).
pub const MARKER: &str = "hoop-ephemeral";

/// A role created for one session.
pub struct EphemeralRole {
    pub name: String,
    pub password: Secret,
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

fn random_string(len: usize, alphabet: &[u8]) -> Result<String, PgError> {
    let mut bytes = vec![0u8; len];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| PgError::Ephemeral {
            connection: String::new(),
            reason: "the OS random generator failed".into(),
        })?;
    Ok(bytes
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect())
}

/// `alice@example.com` -> `alice_` + 4 random lowercase letters or digits.
pub fn role_name(user: &str) -> Result<String, PgError> {
    let local = user.split('@').next().unwrap_or(user);
    let mut base: String = local
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .take(40)
        .collect();
    if base.is_empty() || base.starts_with(|c: char| c.is_ascii_digit()) {
        base.insert(0, 'u');
    }
    let suffix = random_string(
        4,
        &ALNUM[..26]
            .iter()
            .chain(&ALNUM[52..])
            .copied()
            .collect::<Vec<u8>>(),
    )?;
    Ok(format!("{base}_{suffix}"))
}

use super::sideconn::{ident, literal, SideConn, SideError};

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// An admin session on the upstream of `conn`.
struct Admin {
    conn: SideConn,
    connection: String,
}

impl Admin {
    async fn connect(
        conn: &Connection,
        settings: &PostgresSettings,
        secrets: &SecretStore,
        timeout: Duration,
    ) -> Result<Admin, PgError> {
        let CredentialMode::Ephemeral { admin_user, .. } = &settings.credential else {
            return Err(PgError::Ephemeral {
                connection: conn.name.clone(),
                reason: "the connection is not in ephemeral mode".into(),
            });
        };
        let secret_name = conn
            .secrets
            .get("admin_password")
            .cloned()
            .unwrap_or_else(|| "admin_password".into());
        let password = secrets
            .get(&secret_name)
            .ok_or_else(|| PgError::MissingSecret {
                connection: conn.name.clone(),
                secret: secret_name.clone(),
            })?;
        let params = vec![
            (
                "database".to_string(),
                settings
                    .database
                    .clone()
                    .unwrap_or_else(|| "postgres".into()),
            ),
            ("application_name".to_string(), "hoop-appliance".to_string()),
        ];
        let login = upstream::Login {
            connection: &conn.name,
            upstream: &conn.upstream,
            settings,
            user: admin_user,
            password: Some(&password),
            version: ProtocolVersion::V3_0,
            params: &params,
        };
        Ok(Admin {
            conn: SideConn::open(&login, timeout).await?,
            connection: conn.name.clone(),
        })
    }

    /// Runs `sql` (simple protocol) and returns the first column of each row.
    async fn query(&mut self, sql: &str) -> Result<Vec<Option<String>>, PgError> {
        match self.conn.query(sql).await {
            Ok(rows) => Ok(rows
                .into_iter()
                .map(|r| r.into_iter().next().flatten())
                .collect()),
            Err(SideError::Connection(e)) => Err(e),
            Err(SideError::Server(reason)) => Err(PgError::Ephemeral {
                connection: self.connection.clone(),
                reason,
            }),
        }
    }

    async fn close(self) {
        self.conn.close().await;
    }
}

/// Creates the role for this session.
pub async fn create(
    ctx: &SessionContext,
    settings: &PostgresSettings,
) -> Result<EphemeralRole, PgError> {
    let CredentialMode::Ephemeral {
        grant_role, ttl, ..
    } = &settings.credential
    else {
        return Err(PgError::Ephemeral {
            connection: ctx.connection.name.clone(),
            reason: "the connection is not in ephemeral mode".into(),
        });
    };
    let timeout = ctx.shared.cfg.upstream_connect_timeout;
    let mut admin = Admin::connect(&ctx.connection, settings, &ctx.shared.secrets, timeout).await?;
    let name = role_name(&ctx.identity.user)?;
    let password = random_string(32, ALNUM)?;
    let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
    let until = rfc3339(SystemTime::now() + *ttl);
    let comment = format!(
        "{MARKER} user={} session={} instance={}",
        ctx.identity.user,
        ctx.session_id,
        ctx.shared.signer.key_id()
    );
    let sql = format!(
        "CREATE ROLE {role} LOGIN PASSWORD {pw} VALID UNTIL {until} IN ROLE {grant}; COMMENT ON ROLE {role} IS {comment}",
        role = ident(&name),
        pw = literal(&verifier),
        until = literal(&until),
        grant = ident(grant_role),
        comment = literal(&comment),
    );
    let result = admin.query(&sql).await;
    admin.close().await;
    result?;
    tracing::info!(role = %name, user = %ctx.identity.user, connection = %ctx.connection.name, %until, "ephemeral role created");
    Ok(EphemeralRole {
        name,
        password: Secret::new(password),
    })
}

async fn drop_with(admin: &mut Admin, name: &str, grant_role: &str) -> Result<(), PgError> {
    let role = ident(name);
    // Its sessions first, then hand anything it created to the granted role.
    let _ = admin
        .query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = {}",
            literal(name)
        ))
        .await;
    let full = format!(
        "REASSIGN OWNED BY {role} TO {grant}; DROP OWNED BY {role}; DROP ROLE IF EXISTS {role}",
        grant = ident(grant_role)
    );
    if admin.query(&full).await.is_err() {
        admin.query(&format!("DROP ROLE IF EXISTS {role}")).await?;
    }
    Ok(())
}

/// Drops a session's role.
pub async fn drop_role(
    ctx: &SessionContext,
    settings: &PostgresSettings,
    name: &str,
) -> Result<(), PgError> {
    let CredentialMode::Ephemeral { grant_role, .. } = &settings.credential else {
        return Ok(());
    };
    let timeout = ctx.shared.cfg.upstream_connect_timeout;
    let mut admin = Admin::connect(&ctx.connection, settings, &ctx.shared.secrets, timeout).await?;
    let r = drop_with(&mut admin, name, grant_role).await;
    admin.close().await;
    r?;
    tracing::info!(role = %name, connection = %ctx.connection.name, "ephemeral role dropped");
    Ok(())
}

/// Drops leftover roles on one connection: every role this appliance made
/// (`ours_too`, at startup, when none of its sessions is live) and every
/// expired one. Returns how many.
pub async fn sweep(
    conn: &Connection,
    settings: &PostgresSettings,
    shared: &Shared,
    ours_too: bool,
) -> Result<usize, PgError> {
    let CredentialMode::Ephemeral { grant_role, .. } = &settings.credential else {
        return Ok(0);
    };
    let mut admin = Admin::connect(
        conn,
        settings,
        &shared.secrets,
        shared.cfg.upstream_connect_timeout,
    )
    .await?;
    let mine = format!("{MARKER} % instance={}", shared.signer.key_id());
    let sql = format!(
        "SELECT r.rolname FROM pg_roles r JOIN pg_shdescription d ON d.objoid = r.oid \
         AND d.classoid = 'pg_authid'::regclass WHERE d.description LIKE {marker} \
         AND (r.rolvaliduntil < now(){ours})",
        marker = literal(&format!("{MARKER} %")),
        ours = if ours_too {
            format!(" OR d.description LIKE {}", literal(&mine))
        } else {
            String::new()
        }
    );
    let names = admin.query(&sql).await?;
    let mut dropped = 0;
    for name in names.into_iter().flatten() {
        match drop_with(&mut admin, &name, grant_role).await {
            Ok(()) => dropped += 1,
            Err(e) => {
                tracing::warn!(role = %name, error = %e, "sweeping a leftover ephemeral role failed")
            }
        }
    }
    admin.close().await;
    Ok(dropped)
}

/// Runs forever: sweeps each ephemeral-mode connection at startup (including
/// this appliance's own leftovers) and then every `sweep_interval`.
pub async fn sweeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    use std::collections::HashMap;
    let mut next: HashMap<String, tokio::time::Instant> = HashMap::new();
    let mut first_done: std::collections::HashSet<String> = Default::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.cancelled() => return,
        }
        let Some(policy) = shared.policy.borrow().clone() else {
            continue;
        };
        for conn in &policy.policy().connections {
            let KindSettings::Postgres(settings) = &conn.settings else {
                continue;
            };
            let CredentialMode::Ephemeral { sweep_interval, .. } = &settings.credential else {
                continue;
            };
            let now = tokio::time::Instant::now();
            if next.get(&conn.name).is_some_and(|t| *t > now) {
                continue;
            }
            next.insert(conn.name.clone(), now + *sweep_interval);
            let ours_too = first_done.insert(conn.name.clone());
            match sweep(conn, settings, &shared, ours_too).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(connection = %conn.name, roles = n, "swept leftover ephemeral roles")
                }
                Err(e) => {
                    tracing::warn!(connection = %conn.name, error = %e, "ephemeral role sweep failed")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_derive_from_the_identity() {
        let n = role_name("Alice.Smith@example.com").unwrap();
        assert!(n.starts_with("alicesmith_"), "{n}");
        assert_eq!(n.len(), "alicesmith_".len() + 4);
        assert!(role_name("42@x").unwrap().starts_with("u42_"));
        assert!(role_name("\"; DROP TABLE x; --")
            .unwrap()
            .starts_with("droptablex_"));
        assert_ne!(role_name("a").unwrap(), role_name("a").unwrap());
    }
}
