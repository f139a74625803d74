//! The signed policy bundle: its schema and validation (`schema`, `validate`),
//! minisign signatures and [`VerifiedPolicy`] (`signature`), picking up new
//! bundles from the policy directory (`loader`), and access decisions
//! (`decide`).
//!
//! This module must not: resolve secret values (it only names them; see
//! `crate::secrets`), do network I/O, log or audit (callers report the
//! outcomes it returns), or hand out a policy that was not verified first.

mod decide;
pub mod kinds;
mod loader;
pub mod routes;
mod schema;
mod signature;
mod validate;

pub(crate) use signature::key_id_hex;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use decide::{authorize, visible_connections, Denial, ANY_USER};
pub use kinds::{HttpSettings, KindSettings, PostgresSettings, SshSettings};
pub use loader::{LoadOutcome, PolicyLoader, POLICY_FILE, POLICY_SIGNATURE_FILE};
pub use schema::{
    Connection, ConnectionKind, DeviceFlowConfig, IdentityConfig, JwksSource, Policy,
};
pub use signature::{
    keygen, sign_bytes, sign_file, signature_path, verify_bundle, verify_file, TrustedKey,
    VerifiedPolicy, MAX_FILE_BYTES, PUBLIC_KEY_FILE, SECRET_KEY_FILE, SIGNATURE_SUFFIX,
};
pub use validate::parse_policy;

/// Everything that can go wrong with a policy bundle, its keys or signatures.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// TOML syntax, a missing or unknown key, or a wrong type; the message
    /// names the key and shows the line.
    #[error("invalid policy: {0}")]
    Toml(String),
    /// A value failed validation; the message names the key and its line.
    #[error("invalid policy: {0}")]
    Invalid(String),
    #[error("policy bundle is not UTF-8 text")]
    NotUtf8,
    #[error("malformed minisign public key: {0}")]
    KeyMalformed(String),
    #[error("malformed minisign signature: {0}")]
    SignatureMalformed(String),
    #[error(
        "bundle is signed by key {key_id}, which is not among the trusted keys ({})",
        if trusted.is_empty() { "none configured".to_string() } else { trusted.join(", ") }
    )]
    UntrustedSigner {
        key_id: String,
        trusted: Vec<String>,
    },
    #[error("signature by key {key_id} does not match the bundle (modified after signing?)")]
    SignatureMismatch { key_id: String },
    #[error("version {version} is not newer than version {in_force} in force")]
    NotNewer { version: u64, in_force: u64 },
    #[error(
        "version {version} is older than version {floor}, the highest ever accepted (no rollback)"
    )]
    Rollback { version: u64, floor: u64 },
    #[error("secret key {}: {reason}", path.display())]
    SecretKey { path: PathBuf, reason: String },
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("{} already exists; refusing to overwrite it", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("{} is larger than {max} bytes", path.display())]
    TooLarge { path: PathBuf, max: u64 },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}
