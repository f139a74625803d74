//! Who is calling: IdP token verification (JWKS), the appliance's own session
//! tokens, and the persisted revocation set. Pure verification; no network
//! listeners live here.
//!
//! - [`IdpVerifier`] checks OIDC ID tokens (RS256, ES256, EdDSA) against a JWK
//!   Set pinned in the policy or fetched from the IdP and cached.
//! - [`SessionSigner`] mints and checks the appliance's short-lived session
//!   tokens (EdDSA JWTs signed with the appliance's own Ed25519 key).
//! - [`RevocationStore`] is the persisted set of revoked identities, shared by
//!   the `appliance revoke` CLI and the serving process through SQLite.
//!
//! Errors never carry token bytes or key material: a reason is a fixed phrase,
//! at most naming a claim, an algorithm or a key id.

mod idp;
mod jwks;
mod jws;
mod revocation;
mod session;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use idp::{
    IdpSettings, IdpVerifier, JwksSource, DEFAULT_LEEWAY_SECS, DEFAULT_REFRESH_MIN_INTERVAL,
    JWKS_FETCH_TIMEOUT, JWKS_MAX_AGE,
};
pub use revocation::{Revocation, RevocationStore, RevokedSet};
pub use session::{SessionClaims, SessionSigner, SESSION_ISSUER, SESSION_LEEWAY_SECS};

/// A verified person: the subject of a session token or an IdP token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable user name (e.g. the IdP's `email` claim).
    pub user: String,
    /// Group names, as the IdP's groups claim listed them.
    pub groups: Vec<String>,
}

/// Why an identity could not be established, or an identity store failed.
///
/// `Expired` and `InvalidToken` are what a caller shows the user (the first
/// means "log in again", the second "this token is not acceptable"); the
/// others are operational failures of the appliance.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The token was genuine but its `exp` (unix seconds) has passed.
    #[error("token expired at {exp} (unix time)")]
    Expired { exp: u64 },
    /// The token is not acceptable; the reason is a short fixed phrase such as
    /// "malformed", "signed by an unknown key" or "algorithm none is not accepted".
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A JWK Set (pinned or fetched) could not be used.
    #[error("invalid JWK set: {0}")]
    InvalidJwks(String),
    /// The JWK Set URL could not be fetched.
    #[error("cannot fetch the JWK set from {url}: {reason}")]
    JwksFetch { url: String, reason: String },
    /// Settings that cannot work (empty issuer, audience, claim name...).
    #[error("invalid identity settings: {0}")]
    Config(String),
    /// Reading or writing a key file failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A key file exists but does not hold a usable key.
    #[error("session key {}: {reason}", path.display())]
    BadKeyFile { path: PathBuf, reason: String },
    /// The revocation database failed.
    #[error("revocation store: {0}")]
    Storage(#[from] rusqlite::Error),
    /// The system random generator or a signing primitive failed.
    #[error("cryptographic failure: {0}")]
    Crypto(&'static str),
}

impl IdentityError {
    fn invalid(reason: impl Into<String>) -> Self {
        IdentityError::InvalidToken(reason.into())
    }
}
