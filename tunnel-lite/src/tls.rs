//! TLS client configuration for talking to the appliance: TLS 1.3 only, ring
//! provider, the appliance's certificate either pinned by SHA-256 fingerprint
//! or checked against a CA file. One shared `ClientConfig` per ALPN keeps the
//! session-resumption cache warm across connections.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// How tunnel-lite decides that it is talking to the right appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// SHA-256 of the appliance certificate (DER), 32 bytes.
    Pinned([u8; 32]),
    /// PEM file with the CA certificate(s) that issued the appliance's.
    CaFile(std::path::PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("fingerprint {0:?} is not 64 hex digits (SHA-256)")]
    BadFingerprint(String),
    #[error("cannot read CA file {0}: {1}")]
    CaFile(String, String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Lowercase hex of a certificate's SHA-256, the form operators compare.
pub fn fingerprint_hex(cert_der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, cert_der).as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Parses a fingerprint: 64 hex digits, optionally `SHA256:`-prefixed and
/// colon-separated, any case.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint(s.to_string());
    let trimmed = s.trim();
    let trimmed = trimmed
        .strip_prefix("SHA256:")
        .or_else(|| trimmed.strip_prefix("sha256:"))
        .unwrap_or(trimmed);
    let digits: Vec<u8> = trimmed.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A client config for the appliance with the given ALPN protocol.
pub fn client_config(trust: &Trust, alpn: &[u8]) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = match trust {
        Trust::Pinned(pin) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCert {
                pin: *pin,
                provider,
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let roots = load_roots(path)?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let err = |e: String| TlsError::CaFile(path.display().to_string(), e);
    let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        roots.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no certificate in file".into()));
    }
    Ok(roots)
}

/// Accepts exactly one certificate, by its SHA-256, whatever name it carries:
/// the appliance is addressed by IP as often as by name.
#[derive(Debug)]
struct PinnedCert {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = ring::digest::digest(&ring::digest::SHA256, end_entity.as_ref());
        if got.as_ref() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "appliance certificate fingerprint {} does not match the pinned {}",
                hex(got.as_ref()),
                hex(&self.pin)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let hexs = "ab".repeat(32);
        let want = [0xabu8; 32];
        assert_eq!(parse_fingerprint(&hexs).unwrap(), want);
        assert_eq!(
            parse_fingerprint(&format!("SHA256:{}", hexs.to_uppercase())).unwrap(),
            want
        );
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(parse_fingerprint(&colons.join(":")).unwrap(), want);
        assert!(parse_fingerprint("abcd").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
        assert_eq!(fingerprint_hex(b"").len(), 64);
    }
}
