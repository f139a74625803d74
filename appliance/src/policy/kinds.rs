//! Per-kind connection settings: the optional `[connection.postgres]`,
//! `[connection.ssh]` and `[connection.http]` tables. Each kind's module owns
//! its typed settings and their validation; this file only routes the raw
//! table to the right one and refuses a table that does not match the kind.

pub mod http;
pub mod postgres;
pub mod postgres_controls;
pub mod ssh;

use toml::Spanned;

use super::schema::ConnectionKind;
use super::PolicyError;

pub use http::HttpSettings;
pub use postgres::PostgresSettings;
pub use ssh::SshSettings;

/// The validated settings of one connection, by kind.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum KindSettings {
    #[default]
    Tcp,
    Postgres(PostgresSettings),
    Ssh(SshSettings),
    Http(HttpSettings),
}

/// The raw per-kind tables of a `[[connection]]`, as parsed.
#[derive(Debug, Default)]
pub(super) struct RawKindTables {
    pub postgres: Option<Spanned<toml::Table>>,
    pub ssh: Option<Spanned<toml::Table>>,
    pub http: Option<Spanned<toml::Table>>,
}

/// Turns a raw `[connection.<kind>]` table into a typed settings struct with
/// unknown keys refused; errors are prefixed with where the table is.
pub(super) fn typed<T: serde::de::DeserializeOwned>(
    table: toml::Table,
    whence: &str,
) -> Result<T, PolicyError> {
    table
        .try_into()
        .map_err(|e: toml::de::Error| PolicyError::Invalid(format!("{whence}: {}", e.message())))
}

/// Validates the per-kind tables of connection `ctx` (e.g. `connection "pg-prod"`).
/// `line_of` maps a span to a 1-based line.
pub(super) fn validate(
    kind: ConnectionKind,
    raw: RawKindTables,
    ctx: &str,
    line_of: &dyn Fn(std::ops::Range<usize>) -> usize,
) -> Result<KindSettings, PolicyError> {
    let tables = [
        ("postgres", ConnectionKind::Postgres, raw.postgres.is_some()),
        ("ssh", ConnectionKind::Ssh, raw.ssh.is_some()),
        ("http", ConnectionKind::Http, raw.http.is_some()),
    ];
    for (name, for_kind, present) in tables {
        if present && for_kind != kind {
            return Err(PolicyError::Invalid(format!(
                "{ctx}: [connection.{name}] settings given for a connection of kind \"{kind}\""
            )));
        }
    }
    let whence = |name: &str, span: std::ops::Range<usize>| {
        format!("{ctx} [connection.{name}] (line {})", line_of(span))
    };
    Ok(match kind {
        ConnectionKind::Tcp => KindSettings::Tcp,
        ConnectionKind::Postgres => KindSettings::Postgres(match raw.postgres {
            Some(t) => {
                let w = whence("postgres", t.span());
                postgres::parse(t.into_inner(), &w)?
            }
            None => PostgresSettings::default(),
        }),
        ConnectionKind::Ssh => KindSettings::Ssh(match raw.ssh {
            Some(t) => {
                let w = whence("ssh", t.span());
                ssh::parse(t.into_inner(), &w)?
            }
            None => SshSettings::default(),
        }),
        ConnectionKind::Http => KindSettings::Http(match raw.http {
            Some(t) => {
                let w = whence("http", t.span());
                http::parse(t.into_inner(), &w)?
            }
            None => HttpSettings::default(),
        }),
    })
}
