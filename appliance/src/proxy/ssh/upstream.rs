//! The upstream side: a russh client on the TCP connection the gate opened,
//! checking the upstream host key against the policy's pinned fingerprints
//! and logging in as the configured account with the credential from the
//! secret store (OpenSSH private key: Ed25519, ECDSA, RSA with
//! rsa-sha2-256/512; or a password).
//!
//! Must not: let the credential reach a log line or an error message.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{HashAlg, PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use crate::policy::SshSettings;
use crate::secrets::Secret;

/// The upstream credential, from `[connection.secrets]`.
pub enum Credential {
    PrivateKey(Secret),
    Password(Secret),
}

/// Why the upstream could not be used. Messages are shown to the person.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error(
        "the upstream host key is {presented}, not the one pinned in the policy ({expected}); \
         refusing to connect (possible man-in-the-middle, or the host was reinstalled: \
         an operator must update host_key)"
    )]
    HostKeyMismatch { presented: String, expected: String },
    #[error("the upstream refused the appliance's credential for account {user:?}")]
    AuthRejected { user: String },
    #[error("connection {0:?} has no [connection.ssh] settings (user, host_key)")]
    NotConfigured(String),
    #[error("connection {connection:?} names no credential: [connection.secrets] needs private_key or password")]
    NoCredential { connection: String },
    #[error("secret {0:?} is missing from the appliance's secret store")]
    SecretMissing(String),
    #[error("the private key in secret {0:?} is not a usable OpenSSH private key")]
    BadKey(String),
    #[error("SSH to the upstream failed: {0}")]
    Protocol(String),
}

impl UpstreamError {
    /// Short outcome for the audit record.
    pub fn outcome(&self) -> &'static str {
        match self {
            UpstreamError::HostKeyMismatch { .. } => "host_key_mismatch",
            UpstreamError::AuthRejected { .. } => "credential_rejected",
            UpstreamError::Protocol(_) => "error",
            _ => "misconfigured",
        }
    }
}

/// russh client callbacks: only the host key check matters here.
pub struct Back {
    pins: Vec<String>,
    /// The fingerprint the upstream presented, for the mismatch message.
    presented: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Back {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let fp = key.public_key().fingerprint(HashAlg::Sha256).to_string();
        let ok = self.pins.iter().any(|p| p == &fp);
        *self.presented.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
        Ok(ok)
    }
}

/// An authenticated upstream session.
pub type UpstreamHandle = client::Handle<Back>;

fn config(settings: &SshSettings) -> client::Config {
    let keepalive =
        (settings.keepalive_secs > 0).then(|| Duration::from_secs(settings.keepalive_secs));
    client::Config {
        window_size: super::WINDOW,
        maximum_packet_size: super::MAX_PACKET,
        channel_buffer_size: super::CHANNEL_BUFFER,
        inactivity_timeout: None,
        keepalive_interval: keepalive,
        keepalive_max: 3,
        nodelay: true,
        preferred: super::preferred(),
        ..Default::default()
    }
}

/// Picks the credential named by the connection's secrets.
pub fn credential(
    connection: &crate::policy::Connection,
    secrets: &crate::secrets::SecretStore,
) -> Result<Credential, UpstreamError> {
    let named = |role: &str| connection.secrets.get(role).cloned();
    if let Some(name) = named("private_key") {
        let s = secrets
            .get(&name)
            .ok_or(UpstreamError::SecretMissing(name))?;
        return Ok(Credential::PrivateKey(s));
    }
    if let Some(name) = named("password") {
        let s = secrets
            .get(&name)
            .ok_or(UpstreamError::SecretMissing(name))?;
        return Ok(Credential::Password(s));
    }
    Err(UpstreamError::NoCredential {
        connection: connection.name.clone(),
    })
}

/// SSH handshake, host key check and login on `stream`.
pub async fn establish<S>(
    stream: S,
    settings: &SshSettings,
    user: &str,
    credential: Credential,
    key_secret_name: &str,
) -> Result<UpstreamHandle, UpstreamError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let presented = Arc::new(Mutex::new(None));
    let back = Back {
        pins: settings.host_keys.clone(),
        presented: presented.clone(),
    };
    let mismatch = |presented: &Arc<Mutex<Option<String>>>| {
        let p = presented.lock().unwrap_or_else(|e| e.into_inner()).clone();
        p.filter(|fp| !settings.host_keys.contains(fp))
            .map(|fp| UpstreamError::HostKeyMismatch {
                presented: fp,
                expected: settings.host_keys.join(", "),
            })
    };
    let mut handle = match client::connect_stream(Arc::new(config(settings)), stream, back).await {
        Ok(h) => h,
        Err(e) => {
            return Err(mismatch(&presented).unwrap_or(UpstreamError::Protocol(e.to_string())))
        }
    };
    let result = match credential {
        Credential::Password(p) => handle.authenticate_password(user, p.expose()).await,
        Credential::PrivateKey(k) => {
            let key = russh::keys::decode_secret_key(k.expose(), None)
                .map_err(|_| UpstreamError::BadKey(key_secret_name.to_string()))?;
            let hash = if key.algorithm().is_rsa() {
                match handle.best_supported_rsa_hash().await {
                    Ok(Some(h)) => h.or(Some(HashAlg::Sha256)),
                    _ => Some(HashAlg::Sha256),
                }
            } else {
                None
            };
            let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
            handle.authenticate_publickey(user, key).await
        }
    };
    match result {
        Ok(r) if r.success() => Ok(handle),
        Ok(_) => Err(UpstreamError::AuthRejected {
            user: user.to_string(),
        }),
        Err(e) => Err(mismatch(&presented).unwrap_or(UpstreamError::Protocol(e.to_string()))),
    }
}
