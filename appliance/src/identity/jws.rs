//! Compact JWS (JWT) parsing shared by IdP and session verification: split the
//! token, decode the header, refuse every algorithm outside an allow-list
//! *before* any key is looked at. No key handling and no claim checks here.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use super::IdentityError;

/// Longest token accepted; ID tokens and session tokens are far smaller.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The signature algorithms this module can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn from_name(name: &str) -> Option<Alg> {
        match name {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }
}

/// A split, header-checked token. The signature is not verified yet.
#[derive(Debug)]
pub(crate) struct Jws<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `base64url(header) "." base64url(payload)`: the signed bytes.
    pub signing_input: &'a [u8],
    pub signature: Vec<u8>,
    /// The decoded payload (JSON bytes).
    pub payload: Vec<u8>,
}

/// Splits `token` and checks its header. `accepted` is the allow-list of
/// algorithms for this kind of token; anything else (notably `none` and the
/// HMAC family, which would let a public key act as a shared secret) is
/// refused with a reason naming the algorithm.
pub(crate) fn parse<'a>(token: &'a str, accepted: &[Alg]) -> Result<Jws<'a>, IdentityError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(IdentityError::invalid("token too long"));
    }
    let token = token.trim();
    let mut parts = token.splitn(4, '.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let header_bytes = URL_SAFE_NO_PAD.decode(h).map_err(|_| malformed())?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header_bytes).map_err(|_| malformed())?;
    let alg_name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        Some(_) => return Err(malformed()),
        None => return Err(IdentityError::invalid("token header has no algorithm")),
    };
    let alg = match Alg::from_name(alg_name) {
        Some(alg) if accepted.contains(&alg) => alg,
        _ => return Err(refused_alg(alg_name)),
    };
    // RFC 7515 4.1.11: extensions we do not understand must fail the token.
    if header.contains_key("crit") {
        return Err(IdentityError::invalid("unsupported critical header"));
    }
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed()),
    };
    let payload = URL_SAFE_NO_PAD.decode(p).map_err(|_| malformed())?;
    let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| malformed())?;
    if signature.is_empty() {
        return Err(IdentityError::invalid("token is not signed"));
    }
    let signing_input = &token.as_bytes()[..h.len() + 1 + p.len()];
    Ok(Jws {
        alg,
        kid,
        signing_input,
        signature,
        payload,
    })
}

fn malformed() -> IdentityError {
    IdentityError::invalid("malformed")
}

/// "algorithm X is not accepted", echoing X only when it looks like an
/// algorithm name (the header is attacker-controlled text).
fn refused_alg(name: &str) -> IdentityError {
    let printable = !name.is_empty()
        && name.len() <= 16
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if printable {
        IdentityError::invalid(format!("algorithm {name} is not accepted"))
    } else {
        IdentityError::invalid("algorithm is not accepted")
    }
}

/// Encodes a header and claims and returns the signing input
/// `base64url(header) "." base64url(claims)`.
pub(crate) fn signing_input(
    header: &Value,
    claims: &impl serde::Serialize,
) -> Result<String, IdentityError> {
    let h = serde_json::to_vec(header)
        .map_err(|_| IdentityError::Crypto("cannot encode token header"))?;
    let c = serde_json::to_vec(claims)
        .map_err(|_| IdentityError::Crypto("cannot encode token claims"))?;
    let mut out = URL_SAFE_NO_PAD.encode(h);
    out.push('.');
    out.push_str(&URL_SAFE_NO_PAD.encode(c));
    Ok(out)
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn b64url_decode(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok()
}

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A NumericDate claim: a non-negative JSON number, fractions allowed.
pub(crate) fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    (f.is_finite() && f >= 0.0 && f < u64::MAX as f64).then_some(f as u64)
}

/// Checks `exp` (required) and `nbf` (optional) against `now` with `leeway`.
pub(crate) fn check_times(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
) -> Result<(), IdentityError> {
    let exp = match claims.get("exp") {
        None | Some(Value::Null) => return Err(IdentityError::invalid("missing exp claim")),
        Some(v) => {
            numeric_date(v).ok_or_else(|| IdentityError::invalid("exp claim is not a number"))?
        }
    };
    if exp.saturating_add(leeway) < now {
        return Err(IdentityError::Expired { exp });
    }
    match claims.get("nbf") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let nbf = numeric_date(v)
                .ok_or_else(|| IdentityError::invalid("nbf claim is not a number"))?;
            if nbf > now.saturating_add(leeway) {
                return Err(IdentityError::invalid("token is not valid yet"));
            }
        }
    }
    Ok(())
}
