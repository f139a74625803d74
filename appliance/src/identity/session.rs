//! The appliance's own session tokens: EdDSA JWTs signed with the appliance's
//! Ed25519 key, which is generated once and kept in a 0600 PKCS#8 PEM file.
//! Issuing and checking only; who may get a token is decided elsewhere.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::jws::{self, Alg};
use super::{Identity, IdentityError};

/// The `iss` of every session token.
pub const SESSION_ISSUER: &str = "appliance";
/// Clock-skew allowance on a session token's `exp` (and `iat`).
pub const SESSION_LEEWAY_SECS: u64 = 5;

const PEM_LABEL: &str = "PRIVATE KEY";

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    /// The user (the IdP's user claim at exchange time).
    pub sub: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Issued at, unix seconds.
    pub iat: u64,
    /// Expires at, unix seconds.
    pub exp: u64,
    /// Random token id (hex), for audit records.
    pub jti: String,
    /// Always [`SESSION_ISSUER`].
    pub iss: String,
}

/// Signs and verifies session tokens with the appliance's Ed25519 key.
pub struct SessionSigner {
    key: Ed25519KeyPair,
    kid: String,
    /// Tokens whose signature and fixed claims checked out, by SHA-256 of
    /// the token. Every tunnel presents the laptop's token again; the hash
    /// costs ~1 us where the Ed25519 verification costs ~50 us on x86 and
    /// several hundred on a small ARM core. Only `exp` depends on time, and
    /// it is checked on every use; revocation is checked by the caller.
    verified: std::sync::Mutex<HashMap<[u8; 32], SessionClaims>>,
}

/// Verified tokens kept at most; the map is emptied when full (the working
/// set of a fleet's laptops refills it at one verification each).
pub const VERIFIED_TOKENS_MAX: usize = 4096;

impl std::fmt::Debug for SessionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSigner")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SessionSigner {
    /// Loads the key at `path` (PKCS#8 PEM, or raw DER), or generates one and
    /// writes it there with mode 0600 if the file does not exist. Two
    /// processes racing to generate end up with the same key.
    pub fn load_or_generate(path: &Path) -> Result<Self, IdentityError> {
        match fs::read(path) {
            Ok(bytes) => return Self::from_file(path, &bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("cannot read session key", path, e)),
        }
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| IdentityError::Crypto("cannot generate an Ed25519 key"))?;
        match write_new_key(path, &to_pem(pkcs8.as_ref()), &rng) {
            Ok(()) => {
                tracing::info!(path = %path.display(), "generated the session signing key");
                Self::from_pkcs8(path, pkcs8.as_ref())
            }
            // Another process created it first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let bytes =
                    fs::read(path).map_err(|e| io_error("cannot read session key", path, e))?;
                Self::from_file(path, &bytes)
            }
            Err(e) => Err(io_error("cannot write session key", path, e)),
        }
    }

    /// A signer with a fresh key that lives only in memory (tests, one-shot tools).
    pub fn ephemeral() -> Result<Self, IdentityError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| IdentityError::Crypto("cannot generate an Ed25519 key"))?;
        Self::from_pkcs8(Path::new("(memory)"), pkcs8.as_ref())
    }

    fn from_file(path: &Path, bytes: &[u8]) -> Result<Self, IdentityError> {
        if let Ok(meta) = fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "session key is readable by others; chmod 600 it");
            }
        }
        let der = if bytes.starts_with(b"-----") {
            from_pem(bytes).ok_or_else(|| bad_key(path, "not a PEM \"PRIVATE KEY\""))?
        } else {
            bytes.to_vec()
        };
        Self::from_pkcs8(path, &der)
    }

    fn from_pkcs8(path: &Path, der: &[u8]) -> Result<Self, IdentityError> {
        // "maybe_unchecked" also takes PKCS#8 v1 files (what `openssl genpkey` writes).
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|_| bad_key(path, "not a PKCS#8 Ed25519 private key"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(SessionSigner {
            key,
            kid,
            verified: Default::default(),
        })
    }

    /// Mints a token for `who`, valid for `ttl`.
    pub fn issue(&self, who: &Identity, ttl: Duration) -> Result<String, IdentityError> {
        let mut jti = [0u8; 16];
        SystemRandom::new()
            .fill(&mut jti)
            .map_err(|_| IdentityError::Crypto("system random generator failed"))?;
        let iat = jws::now_unix();
        let claims = SessionClaims {
            sub: who.user.clone(),
            groups: who.groups.clone(),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            iss: SESSION_ISSUER.to_string(),
        };
        self.sign_claims(&claims)
    }

    /// Signs arbitrary claims (tests craft expired or foreign-issuer tokens).
    pub(super) fn sign_claims(&self, claims: &SessionClaims) -> Result<String, IdentityError> {
        let header = json!({ "alg": "EdDSA", "typ": "JWT", "kid": self.kid });
        let mut token = jws::signing_input(&header, claims)?;
        let sig = self.key.sign(token.as_bytes());
        token.push('.');
        token.push_str(&jws::b64url(sig.as_ref()));
        Ok(token)
    }

    /// Checks a session token: EdDSA only, this appliance's key, `iss`, and
    /// `exp` with [`SESSION_LEEWAY_SECS`]. A token verified before skips the
    /// signature check (see `verified`), never the expiry check.
    pub fn verify(&self, token: &str) -> Result<SessionClaims, IdentityError> {
        self.verify_at(token, jws::now_unix())
    }

    /// [`Self::verify`] at `now` (unix seconds).
    pub(crate) fn verify_at(&self, token: &str, now: u64) -> Result<SessionClaims, IdentityError> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        let cached = self.verified_map().get(&key).cloned();
        let claims = match cached {
            Some(claims) => claims,
            None => {
                let claims = self.verify_signed(token, now)?;
                let mut map = self.verified_map();
                if map.len() >= VERIFIED_TOKENS_MAX {
                    map.clear();
                }
                map.insert(key, claims.clone());
                claims
            }
        };
        check_expiry(&claims, now)?;
        Ok(claims)
    }

    fn verified_map(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], SessionClaims>> {
        // A plain map: whatever panicked while holding it left it usable.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many verified tokens are kept (for tests).
    pub fn verified_len(&self) -> usize {
        self.verified_map().len()
    }

    /// The signature and the claims that do not change with time.
    fn verify_signed(&self, token: &str, now: u64) -> Result<SessionClaims, IdentityError> {
        let token = jws::parse(token, &[Alg::EdDsa])?;
        if token.kid.as_deref().is_some_and(|kid| kid != self.kid) {
            return Err(IdentityError::invalid("signed by an unknown key"));
        }
        let public = UnparsedPublicKey::new(&signature::ED25519, self.key.public_key().as_ref());
        if public
            .verify(token.signing_input, &token.signature)
            .is_err()
        {
            // With our kid the token was altered; without one it may be anyone's.
            return Err(IdentityError::invalid(if token.kid.is_some() {
                "bad signature"
            } else {
                "signed by an unknown key"
            }));
        }
        let claims: SessionClaims = serde_json::from_slice(&token.payload)
            .map_err(|_| IdentityError::invalid("malformed claims"))?;
        if claims.iss != SESSION_ISSUER {
            return Err(IdentityError::invalid("wrong issuer"));
        }
        check_expiry(&claims, now)?;
        if claims.iat > now.saturating_add(SESSION_LEEWAY_SECS) {
            return Err(IdentityError::invalid("issued in the future"));
        }
        if claims.sub.is_empty() {
            return Err(IdentityError::invalid("missing subject"));
        }
        Ok(claims)
    }

    /// The identity a verified session token stands for.
    pub fn identity_of(claims: &SessionClaims) -> Identity {
        Identity {
            user: claims.sub.clone(),
            groups: claims.groups.clone(),
        }
    }

    /// The public key as an OKP/Ed25519 JWK (for a JWKS endpoint).
    pub fn public_jwk(&self) -> serde_json::Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": jws::b64url(self.key.public_key().as_ref()),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Key id: the first 16 hex digits of SHA-256 of the public key.
    pub fn key_id(&self) -> &str {
        &self.kid
    }
}

/// Whether `claims` are still valid at `now` (unix seconds), with leeway.
fn check_expiry(claims: &SessionClaims, now: u64) -> Result<(), IdentityError> {
    if claims.exp.saturating_add(SESSION_LEEWAY_SECS) < now {
        return Err(IdentityError::Expired { exp: claims.exp });
    }
    Ok(())
}

/// Writes `contents` to `path` only if it does not exist yet (error
/// `AlreadyExists` otherwise), never exposing a partly written file: the key
/// goes to a 0600 temporary file that is then hard-linked into place.
fn write_new_key(path: &Path, contents: &[u8], rng: &SystemRandom) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
    }
    let mut suffix = [0u8; 8];
    rng.fill(&mut suffix)
        .map_err(|_| io::Error::other("system random generator failed"))?;
    let suffix: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "session-key".into());
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            // Filesystems without hard links: plain rename (may replace a racing writer's key).
            Err(_) => fs::rename(&tmp, path),
        }
    })();
    let _ = fs::remove_file(&tmp);
    if result.is_ok() {
        // Make the new directory entry durable; best effort.
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    result
}

fn to_pem(der: &[u8]) -> Vec<u8> {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    out.into_bytes()
}

fn from_pem(pem: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {PEM_LABEL}-----");
    let end = format!("-----END {PEM_LABEL}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop].split_whitespace().collect();
    STANDARD.decode(b64).ok()
}

fn io_error(what: &'static str, path: &Path, source: io::Error) -> IdentityError {
    IdentityError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn bad_key(path: &Path, reason: &str) -> IdentityError {
    IdentityError::BadKeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
