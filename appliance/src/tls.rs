//! The appliance's TLS identity and server configuration: TLS 1.3 only, ring
//! provider, ALPN `tunnel-lite/1` (tunnel streams) and `http/1.1` (the API),
//! session resumption by tickets and a session cache. With no certificate
//! configured, a self-signed one is generated on first start and persisted;
//! laptops pin its SHA-256 fingerprint.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::RuntimeConfig;

pub const ALPN_HTTP: &[u8] = b"http/1.1";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0}: {1}")]
    Pem(String, String),
    #[error("generating the self-signed certificate failed: {0}")]
    Generate(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The loaded certificate chain and key, plus the leaf's fingerprint.
pub struct TlsIdentity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Lowercase hex SHA-256 of the leaf certificate (what tunnel-lite pins).
    pub fingerprint: String,
    /// True when this start generated the certificate.
    pub generated: bool,
}

impl TlsIdentity {
    /// Loads the configured certificate, or the persisted self-signed one,
    /// generating and persisting it (key mode 0600) on first start.
    pub fn load_or_generate(cfg: &RuntimeConfig) -> Result<TlsIdentity, TlsError> {
        if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
            return Self::load(cert, key, false);
        }
        let dir = cfg.tls_dir();
        let cert_path = dir.join("cert.pem");
        let key_path = dir.join("key.pem");
        if cert_path.exists() && key_path.exists() {
            return Self::load(&cert_path, &key_path, false);
        }
        let shown = dir.display().to_string();
        std::fs::create_dir_all(&dir).map_err(|e| TlsError::Io(shown.clone(), e))?;
        let params = rcgen::CertificateParams::new(cfg.tls_names.clone())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        write_private(&key_path, key.serialize_pem().as_bytes())?;
        std::fs::write(&cert_path, cert.pem())
            .map_err(|e| TlsError::Io(cert_path.display().to_string(), e))?;
        Self::load(&cert_path, &key_path, true)
    }

    fn load(cert_path: &Path, key_path: &Path, generated: bool) -> Result<TlsIdentity, TlsError> {
        let shown_cert = cert_path.display().to_string();
        let shown_key = key_path.display().to_string();
        let cert_pem = std::fs::read(cert_path).map_err(|e| TlsError::Io(shown_cert.clone(), e))?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem(shown_cert.clone(), e.to_string()))?;
        let Some(leaf) = chain.first() else {
            return Err(TlsError::Pem(shown_cert, "no certificate in file".into()));
        };
        let key_pem = std::fs::read(key_path).map_err(|e| TlsError::Io(shown_key.clone(), e))?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|e| TlsError::Pem(shown_key.clone(), e.to_string()))?
            .ok_or_else(|| TlsError::Pem(shown_key, "no private key in file".into()))?;
        Ok(TlsIdentity {
            fingerprint: tunnel_lite::tls::fingerprint_hex(leaf.as_ref()),
            chain,
            key,
            generated,
        })
    }

    /// The server config shared by every accepted connection.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![tunnel_lite::wire::ALPN.to_vec(), ALPN_HTTP.to_vec()];
        // Resumption: stateless tickets (TLS 1.3) with a stateful cache as fallback.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Config(e.to_string()))?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(4096);
        config.send_tls13_tickets = 2;
        Ok(Arc::new(config))
    }
}

/// Writes a file only its owner can read (created with mode 0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| TlsError::Io(shown.clone(), e))?;
    f.write_all(bytes).map_err(|e| TlsError::Io(shown, e))
}
