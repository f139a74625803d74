//! The policy types the rest of the appliance sees, and the raw serde structs
//! they are validated from. Raw structs mirror the TOML one to one and reject
//! unknown keys; per-kind connection sections (postgres, ssh, http) are added
//! as new `Option<...>` fields of [`RawConnection`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::kinds::KindSettings;

/// A validated policy bundle (not yet proven signed: see `VerifiedPolicy`).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Monotonic bundle version; a bundle not newer than the one in force is refused.
    pub version: u64,
    /// DNS suffix laptops resolve (`pg-prod.hoop`); default `hoop`.
    pub dns_suffix: String,
    /// How identities are verified.
    pub identity: IdentityConfig,
    /// What may be reached, in bundle order.
    pub connections: Vec<Connection>,
    /// `[audit]`: durability mode and what a full queue does.
    pub audit: super::routes::AuditPolicy,
    /// `[[route]]`: event routing rules, in bundle order.
    pub routes: Vec<super::routes::Route>,
}

/// How IdP tokens are verified and how long appliance sessions last.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    /// Expected `iss` claim.
    pub issuer: String,
    /// Expected `aud` claim.
    pub audience: String,
    /// Claim naming the user; default `email`.
    pub user_claim: String,
    /// Claim listing the user's groups; default `groups`.
    pub groups_claim: String,
    /// Where the IdP's signing keys come from.
    pub jwks: JwksSource,
    /// Lifetime of an appliance session token; default 8h, at most 7 days.
    pub session_ttl: Duration,
    /// OAuth device authorization grant, for laptops logging in from a terminal.
    pub device_flow: Option<DeviceFlowConfig>,
}

/// The IdP's JSON Web Key Set: pinned in the bundle, or fetched from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// JSON text of a JWK Set (`{"keys":[...]}`), validated to parse.
    Inline(String),
    /// An `http(s)://` URL serving the JWK Set.
    Url(String),
}

/// OAuth 2.0 device authorization grant settings (RFC 8628).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFlowConfig {
    pub client_id: String,
    pub device_authorization_endpoint: String,
    pub token_endpoint: String,
    /// Default `["openid", "email", "profile"]`.
    pub scopes: Vec<String>,
}

/// The protocol a connection speaks, which picks the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionKind {
    Postgres,
    Ssh,
    Http,
    Tcp,
}

impl ConnectionKind {
    /// The name used in the TOML and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionKind::Postgres => "postgres",
            ConnectionKind::Ssh => "ssh",
            ConnectionKind::Http => "http",
            ConnectionKind::Tcp => "tcp",
        }
    }

    /// Ports a laptop may use when the bundle lists none (`tcp` has no default).
    pub fn default_ports(self) -> Option<Vec<u16>> {
        match self {
            ConnectionKind::Postgres => Some(vec![5432]),
            ConnectionKind::Ssh => Some(vec![22]),
            ConnectionKind::Http => Some(vec![80]),
            ConnectionKind::Tcp => None,
        }
    }
}

impl std::fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One reachable upstream and who may reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    /// A DNS label, unique in the bundle: `[a-z0-9-]{1,63}`, no leading/trailing `-`.
    pub name: String,
    pub kind: ConnectionKind,
    /// `host:port`; host is a name, an IPv4 address or a bracketed IPv6 address.
    pub upstream: String,
    /// Ports a laptop may use for it: non-empty, nonzero, no duplicates.
    pub ports: Vec<u16>,
    /// User names allowed (exact match).
    pub allow_users: Vec<String>,
    /// Group names allowed (exact match); `"*"` means any authenticated user.
    pub allow_groups: Vec<String>,
    /// Role (e.g. `password`) -> name of a secret in the appliance's store.
    pub secrets: BTreeMap<String, String>,
    pub description: Option<String>,
    /// The kind's own settings (`[connection.<kind>]`).
    pub settings: KindSettings,
}

impl Policy {
    /// The connection called `name`, compared case-insensitively (DNS).
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
    }
}

// ---- raw TOML shape -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub version: u64,
    pub dns_suffix: Option<Spanned<String>>,
    pub identity: Spanned<RawIdentity>,
    #[serde(default)]
    pub connection: Vec<Spanned<RawConnection>>,
    pub audit: Option<Spanned<toml::Table>>,
    #[serde(default)]
    pub route: Vec<Spanned<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    pub issuer: Spanned<String>,
    pub audience: Spanned<String>,
    pub user_claim: Option<Spanned<String>>,
    pub groups_claim: Option<Spanned<String>>,
    pub jwks: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    pub session_ttl: Option<Spanned<String>>,
    pub device_flow: Option<Spanned<RawDeviceFlow>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDeviceFlow {
    pub client_id: Spanned<String>,
    pub device_authorization_endpoint: Spanned<String>,
    pub token_endpoint: Spanned<String>,
    pub scopes: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnection {
    pub name: Spanned<String>,
    pub kind: ConnectionKind,
    pub upstream: Spanned<String>,
    pub ports: Option<Spanned<Vec<u16>>>,
    #[serde(default)]
    pub allow_users: Vec<String>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
    pub secrets: Option<Spanned<BTreeMap<String, String>>>,
    pub description: Option<String>,
    pub postgres: Option<Spanned<toml::Table>>,
    pub ssh: Option<Spanned<toml::Table>>,
    pub http: Option<Spanned<toml::Table>>,
}
