//! What can go wrong in a PostgreSQL session, and the one place that turns
//! it into what the client sees. Messages name the gateway's credential for
//! the connection, never the secret itself.

use super::codec::{CodecError, Diagnostic, Severity};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Malformed bytes from the laptop side.
    #[error("protocol violation from the client: {0}")]
    ClientProtocol(CodecError),
    /// Malformed bytes from the upstream server.
    #[error("protocol violation from the upstream server: {0}")]
    UpstreamProtocol(CodecError),
    /// The client sent something not allowed at this point.
    #[error("{0}")]
    Unexpected(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS to the upstream failed.
    #[error("TLS to the upstream of {connection:?} failed: {reason}")]
    UpstreamTls { connection: String, reason: String },
    /// The upstream refused the gateway's credential.
    #[error("the upstream of {connection:?} rejected the gateway's credential for that connection ({role}): {upstream_message}")]
    CredentialRejected {
        connection: String,
        role: String,
        upstream_message: String,
    },
    /// The credential the policy names is not in the secret store.
    #[error("the gateway has no credential for {connection:?}: secret {secret:?} is not in the appliance's secret store")]
    MissingSecret { connection: String, secret: String },
    /// The upstream asked for an authentication method the gateway does not do.
    #[error("the upstream of {connection:?} asked for {method} authentication, which the gateway does not support")]
    UnsupportedAuth { connection: String, method: String },
    /// The upstream answered the login with an error (other than a bad credential).
    #[error("the upstream of {connection:?} refused the session: {message}")]
    UpstreamRefused {
        connection: String,
        sqlstate: String,
        message: String,
    },
    /// The policy does not let this client ask for that.
    #[error("{0}")]
    NotAllowed(String),
    /// Creating or dropping an ephemeral role failed.
    #[error("ephemeral credential for {connection:?}: {reason}")]
    Ephemeral { connection: String, reason: String },
}

impl PgError {
    /// SQLSTATE sent to the client.
    pub fn sqlstate(&self) -> &str {
        match self {
            PgError::ClientProtocol(_) | PgError::UpstreamProtocol(_) | PgError::Unexpected(_) => {
                "08P01"
            }
            PgError::Io(_) | PgError::UpstreamTls { .. } => "08006",
            PgError::CredentialRejected { .. }
            | PgError::MissingSecret { .. }
            | PgError::UnsupportedAuth { .. } => "28000",
            PgError::UpstreamRefused { sqlstate, .. } => sqlstate,
            PgError::NotAllowed(_) => "42501",
            PgError::Ephemeral { .. } => "28000",
        }
    }

    /// Writes the FATAL ErrorResponse for this error into `out`.
    pub fn write_error_response(&self, out: &mut Vec<u8>) {
        let message = self.to_string();
        let d = Diagnostic::new(Severity::Fatal, self.sqlstate(), &message);
        // The message is ours and has no NUL; fall back to a fixed text if it does.
        if super::codec::error_response(out, &d).is_err() {
            let d = Diagnostic::new(Severity::Fatal, "08P01", "gateway error");
            let _ = super::codec::error_response(out, &d);
        }
    }
}
