//! JWK Sets: parsing the public signing keys we can use (RSA, EC P-256,
//! Ed25519), choosing the key for a token's `alg` and `kid`, and verifying a
//! signature with it (ring). Keys we cannot use (symmetric `oct` keys,
//! encryption keys, other curves) are skipped, never guessed at. No I/O.

use ring::signature::{self, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::jws::{b64url_decode, Alg};
use super::IdentityError;

/// Most keys a set may hold; real IdPs publish a handful.
const MAX_KEYS: usize = 64;

/// Public key material of one JWK.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum KeyMaterial {
    /// Modulus and exponent, big-endian, without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// Uncompressed SEC1 point `04 || x || y`.
    P256 { point: Vec<u8> },
    /// The 32-byte public key.
    Ed25519 { x: Vec<u8> },
}

impl KeyMaterial {
    fn type_name(&self) -> &'static str {
        match self {
            KeyMaterial::Rsa { .. } => "RSA",
            KeyMaterial::P256 { .. } => "EC P-256",
            KeyMaterial::Ed25519 { .. } => "Ed25519",
        }
    }

    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (KeyMaterial::Rsa { .. }, Alg::Rs256)
                | (KeyMaterial::P256 { .. }, Alg::Es256)
                | (KeyMaterial::Ed25519 { .. }, Alg::EdDsa)
        )
    }
}

/// One usable signing key of a set.
#[derive(Clone)]
pub(crate) struct Jwk {
    pub kid: Option<String>,
    /// The JWK's own `alg` member, when present.
    pub alg: Option<String>,
    pub material: KeyMaterial,
}

impl Jwk {
    /// Whether this key may verify `alg`, and if not, why.
    fn check(&self, alg: Alg) -> Result<(), String> {
        if !self.material.fits(alg) {
            return Err(format!(
                "{} key cannot verify {}",
                self.material.type_name(),
                alg.name()
            ));
        }
        match &self.alg {
            Some(a) if a != alg.name() => Err(format!(
                "key is for {} but the token says {}",
                printable(a),
                alg.name()
            )),
            _ => Ok(()),
        }
    }

    /// Verifies `sig` over `msg` with this key; the caller checked `alg` fits.
    pub(crate) fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match (&self.material, alg) {
            (KeyMaterial::Rsa { n, e }, Alg::Rs256) => signature::RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            (KeyMaterial::P256 { point }, Alg::Es256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, sig)
                    .is_ok()
            }
            (KeyMaterial::Ed25519 { x }, Alg::EdDsa) => {
                UnparsedPublicKey::new(&signature::ED25519, x)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// Why no key could be chosen.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum NoKey {
    /// No key has this kid (or, without a kid, no key fits the algorithm):
    /// a refreshed set might have it.
    Unknown,
    /// A key was found but may not be used this way; refreshing will not help.
    Refused(String),
}

impl NoKey {
    pub(crate) fn into_error(self) -> IdentityError {
        match self {
            NoKey::Unknown => IdentityError::invalid("signed by an unknown key"),
            NoKey::Refused(reason) => IdentityError::InvalidToken(reason),
        }
    }
}

/// The usable signing keys of a JWK Set.
#[derive(Clone)]
pub(crate) struct KeySet {
    keys: Vec<Jwk>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<&str> = self
            .keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect();
        f.debug_struct("KeySet").field("kids", &kids).finish()
    }
}

impl KeySet {
    /// Parses a JWK Set document. Unusable keys are skipped; a set with no
    /// usable signing key at all is an error.
    pub(crate) fn parse(json: &[u8]) -> Result<KeySet, IdentityError> {
        let doc: Map<String, Value> = serde_json::from_slice(json)
            .map_err(|_| IdentityError::InvalidJwks("not a JSON object".into()))?;
        let Some(Value::Array(entries)) = doc.get("keys") else {
            return Err(IdentityError::InvalidJwks("no \"keys\" array".into()));
        };
        if entries.len() > MAX_KEYS {
            return Err(IdentityError::InvalidJwks(format!(
                "more than {MAX_KEYS} keys"
            )));
        }
        let keys: Vec<Jwk> = entries.iter().filter_map(parse_jwk).collect();
        if keys.is_empty() {
            return Err(IdentityError::InvalidJwks(
                "no usable signing key (RSA, EC P-256 or Ed25519)".into(),
            ));
        }
        Ok(KeySet { keys })
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }

    /// The key for a token's `alg` and `kid`. With a kid, the key must carry
    /// that kid and fit the algorithm; without one, exactly one key of the
    /// set may fit the algorithm.
    pub(crate) fn select(&self, alg: Alg, kid: Option<&str>) -> Result<&Jwk, NoKey> {
        match kid {
            Some(kid) => {
                let mut refusal = None;
                for key in self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid)) {
                    match key.check(alg) {
                        Ok(()) => return Ok(key),
                        Err(reason) => refusal = refusal.or(Some(reason)),
                    }
                }
                Err(refusal.map_or(NoKey::Unknown, NoKey::Refused))
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.check(alg).is_ok());
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    (None, _) => Err(NoKey::Unknown),
                    (Some(_), Some(_)) => Err(NoKey::Refused(format!(
                        "token has no kid and several keys fit {}",
                        alg.name()
                    ))),
                }
            }
        }
    }
}

/// One JWK, or `None` when it is not a signing key we can use.
fn parse_jwk(v: &Value) -> Option<Jwk> {
    let obj = v.as_object()?;
    let text = |name: &str| obj.get(name).and_then(Value::as_str);
    if let Some(usage) = text("use") {
        if usage != "sig" {
            return None;
        }
    }
    let material = match text("kty")? {
        "RSA" => {
            let n = strip_zeros(b64url_decode(text("n")?)?);
            let e = strip_zeros(b64url_decode(text("e")?)?);
            if n.is_empty() || e.is_empty() {
                return None;
            }
            KeyMaterial::Rsa { n, e }
        }
        "EC" if text("crv")? == "P-256" => {
            let x = b64url_decode(text("x")?)?;
            let y = b64url_decode(text("y")?)?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut point = Vec::with_capacity(65);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            KeyMaterial::P256 { point }
        }
        "OKP" if text("crv")? == "Ed25519" => {
            let x = b64url_decode(text("x")?)?;
            if x.len() != 32 {
                return None;
            }
            KeyMaterial::Ed25519 { x }
        }
        // `oct` (HMAC secrets) and everything else: never a verification key here.
        _ => return None,
    };
    Some(Jwk {
        kid: text("kid").map(str::to_owned),
        alg: text("alg").map(str::to_owned),
        material,
    })
}

fn strip_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// A JWK `alg` member for an error message: short names only.
fn printable(name: &str) -> &str {
    let ok = name.len() <= 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        name
    } else {
        "another algorithm"
    }
}
