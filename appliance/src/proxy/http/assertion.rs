//! Identity assertions: short-lived EdDSA JWTs naming the user and groups,
//! sent to HTTP upstreams so they can trust who is calling. Signed with a
//! dedicated Ed25519 key (`DATA_DIR/http_assertion.key`, 0600), not the
//! session-token key, so an assertion an upstream sees can never be used as
//! a session token. Both public keys are published in the appliance API's
//! `GET /.well-known/jwks.json` ([`jwks`]).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{HeaderName, HeaderValue};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{Ed25519KeyPair, KeyPair};

use crate::identity::Identity;
use crate::server::Shared;

/// The `iss` of every identity assertion.
pub const ASSERTION_ISSUER: &str = "appliance";
/// File name of the assertion key in the data dir.
pub const KEY_FILE: &str = "http_assertion.key";

/// The assertion signing key.
pub struct AssertionKey {
    key: Ed25519KeyPair,
    kid: String,
}

impl AssertionKey {
    /// Loads the PKCS#8 PEM key at `path`, or creates one there (0600).
    pub fn load_or_generate(path: &Path) -> Result<AssertionKey, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        match std::fs::metadata(path) {
            Ok(_) => return Self::from_pem(&read(path)?, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| "cannot generate an Ed25519 key".to_string())?;
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            STANDARD.encode(pkcs8.as_ref())
        );
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
        match created {
            Ok(mut f) => {
                f.write_all(pem.as_bytes())
                    .and_then(|_| f.sync_all())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                tracing::info!(path = %path.display(), "generated the HTTP identity assertion key");
                Self::from_pem(pem.as_bytes(), path)
            }
            // Someone else created it first: use theirs.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Self::from_pem(&read(path)?, path)
            }
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    fn from_pem(pem: &[u8], path: &Path) -> Result<AssertionKey, String> {
        let text = std::str::from_utf8(pem).map_err(|_| format!("{}: not PEM", path.display()))?;
        let b64: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = STANDARD
            .decode(b64)
            .map_err(|_| format!("{}: not PEM", path.display()))?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| format!("{}: not a PKCS#8 Ed25519 key", path.display()))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        Ok(AssertionKey {
            key,
            kid: format!("assert-{kid}"),
        })
    }

    #[cfg(test)]
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims` as a compact JWS (EdDSA).
    pub fn sign(&self, claims: &serde_json::Value) -> String {
        let header = serde_json::json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let mut token = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig.as_ref()));
        token
    }

    /// The public key as an OKP/Ed25519 JWK.
    pub fn public_jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(self.key.public_key().as_ref()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// The appliance's JWK Set: the session-token key and the assertion key.
pub fn jwks(shared: &Shared) -> serde_json::Value {
    let keys = vec![
        shared.signer.public_jwk(),
        shared.assertion_key.public_jwk(),
    ];
    serde_json::json!({ "keys": keys })
}

/// Mints a session's assertions, reusing one until half its life is gone.
pub struct Asserter {
    key: Arc<AssertionKey>,
    pub header: HeaderName,
    ttl: Duration,
    audience: String,
    connection: String,
    identity: Identity,
    cached: Mutex<Option<(HeaderValue, u64)>>,
}

impl Asserter {
    pub fn new(
        key: Arc<AssertionKey>,
        header: HeaderName,
        ttl: Duration,
        audience: String,
        connection: String,
        identity: Identity,
    ) -> Asserter {
        Asserter {
            key,
            header,
            ttl,
            audience,
            connection,
            identity,
            cached: Mutex::new(None),
        }
    }

    /// A valid assertion for the session's identity.
    pub fn value(&self) -> HeaderValue {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((v, exp)) = cached.as_ref() {
            if exp.saturating_sub(now) > self.ttl.as_secs() / 2 {
                return v.clone();
            }
        }
        let mut jti = [0u8; 12];
        let _ = SystemRandom::new().fill(&mut jti);
        let exp = now + self.ttl.as_secs();
        let claims = serde_json::json!({
            "iss": ASSERTION_ISSUER,
            "sub": self.identity.user,
            "groups": self.identity.groups,
            "aud": self.audience,
            "connection": self.connection,
            "iat": now,
            "nbf": now.saturating_sub(5),
            "exp": exp,
            "jti": jti.iter().map(|b| format!("{b:02x}")).collect::<String>(),
        });
        let token = self.key.sign(&claims);
        // A compact JWS is base64url and dots: always a valid header value.
        let mut v = HeaderValue::from_str(&token).unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        *cached = Some((v.clone(), exp));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_persists_and_signs_verifiable_tokens() {
        let dir = std::env::temp_dir().join(format!(
            "appliance-assert-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(KEY_FILE);
        let a = AssertionKey::load_or_generate(&path).unwrap();
        let b = AssertionKey::load_or_generate(&path).unwrap();
        assert_eq!(a.kid(), b.kid());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let asserter = Asserter::new(
            Arc::new(a),
            HeaderName::from_static("x-appliance-identity"),
            Duration::from_secs(60),
            "grafana".into(),
            "grafana".into(),
            Identity {
                user: "alice@example.com".into(),
                groups: vec!["dev".into()],
            },
        );
        let token = asserter.value();
        assert_eq!(token, asserter.value(), "reused while fresh");
        let token = token.to_str().unwrap();
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(b.public_jwk()).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        v.set_audience(&["grafana"]);
        v.set_issuer(&[ASSERTION_ISSUER]);
        let data = jsonwebtoken::decode::<serde_json::Value>(token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "alice@example.com");
        assert_eq!(data.claims["groups"][0], "dev");
        assert_eq!(data.header.kid.as_deref(), Some(b.kid()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
