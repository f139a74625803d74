//! Session tokens: issue, verify, forgeries, the persisted key.

use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::{forge, reason, with, TempDir, ED_KEY};
use crate::identity::jwks::KeySet;
use crate::identity::jws::{b64url, b64url_decode, now_unix, Alg};
use crate::identity::{Identity, IdentityError, SessionClaims, SessionSigner};

fn alice() -> Identity {
    Identity {
        user: "alice@example.com".into(),
        groups: vec!["dba".into()],
    }
}

fn session_claims(
    signer_claims: SessionClaims,
    f: impl FnOnce(&mut SessionClaims),
) -> SessionClaims {
    let mut c = signer_claims;
    f(&mut c);
    c
}

#[test]
fn session_round_trip() {
    let signer = SessionSigner::ephemeral().unwrap();
    let token = signer.issue(&alice(), Duration::from_secs(600)).unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    assert_eq!(header.kid.as_deref(), Some(signer.key_id()));
    let claims = signer.verify(&token).unwrap();
    assert_eq!(claims.iss, "appliance");
    assert_eq!(claims.exp, claims.iat + 600);
    assert_eq!(claims.jti.len(), 32);
    assert_eq!(SessionSigner::identity_of(&claims), alice());
    let other = signer.issue(&alice(), Duration::from_secs(600)).unwrap();
    assert_ne!(signer.verify(&other).unwrap().jti, claims.jti);
}

#[test]
fn session_expired_is_distinct_from_invalid() {
    let signer = SessionSigner::ephemeral().unwrap();
    let good = signer
        .verify(&signer.issue(&alice(), Duration::from_secs(60)).unwrap())
        .unwrap();
    let now = now_unix();
    let expired = session_claims(good.clone(), |c| c.exp = now - 60);
    let err = signer.verify(&signer.sign_claims(&expired).unwrap());
    assert!(
        matches!(err, Err(IdentityError::Expired { exp }) if exp == now - 60),
        "{err:?}"
    );
    // Within the 5 s leeway.
    let just = session_claims(good.clone(), |c| c.exp = now - 2);
    signer.verify(&signer.sign_claims(&just).unwrap()).unwrap();
    let foreign = session_claims(good.clone(), |c| c.iss = "someone".into());
    assert_eq!(
        reason(signer.verify(&signer.sign_claims(&foreign).unwrap())),
        "wrong issuer"
    );
    let future = session_claims(good, |c| c.iat = now + 3600);
    assert_eq!(
        reason(signer.verify(&signer.sign_claims(&future).unwrap())),
        "issued in the future"
    );
}

#[test]
fn session_forgeries_are_invalid() {
    let dir = TempDir::new("forge");
    let signer = SessionSigner::ephemeral().unwrap();
    let stranger = SessionSigner::load_or_generate(&dir.path("other.key")).unwrap();
    let token = stranger.issue(&alice(), Duration::from_secs(60)).unwrap();
    assert_eq!(reason(signer.verify(&token)), "signed by an unknown key");

    // The stranger's key as standard tooling would use it, without a kid.
    let pem = std::fs::read(dir.path("other.key")).unwrap();
    let key = EncodingKey::from_ed_pem(&pem).unwrap();
    let claims = stranger.verify(&token).unwrap();
    let no_kid = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key).unwrap();
    stranger.verify(&no_kid).unwrap();
    assert_eq!(reason(signer.verify(&no_kid)), "signed by an unknown key");

    let mine = signer.issue(&alice(), Duration::from_secs(60)).unwrap();
    let parts: Vec<&str> = mine.split('.').collect();
    let claims: Value = serde_json::from_slice(&b64url_decode(parts[1]).unwrap()).unwrap();
    let kid = signer.key_id();
    let none = forge(
        &json!({"alg": "none", "typ": "JWT", "kid": kid}),
        &claims,
        b"",
    );
    assert_eq!(
        reason(signer.verify(&none)),
        "algorithm none is not accepted"
    );

    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some(kid.to_owned());
    let jwk = signer.public_jwk();
    let public = b64url_decode(jwk["x"].as_str().unwrap()).unwrap();
    let hs = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(&public)).unwrap();
    assert_eq!(
        reason(signer.verify(&hs)),
        "algorithm HS256 is not accepted"
    );

    let es = forge(&json!({"alg": "ES256", "kid": kid}), &claims, &[1; 64]);
    assert_eq!(
        reason(signer.verify(&es)),
        "algorithm ES256 is not accepted"
    );

    let root = with(claims, "sub", json!("root"));
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64url(root.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(reason(signer.verify(&tampered)), "bad signature");
    assert_eq!(reason(signer.verify("not a token")), "malformed");
}

#[test]
fn session_key_is_persisted_with_mode_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("persist");
    let path = dir.path("keys/session.key");
    let first = SessionSigner::load_or_generate(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(
        pem.starts_with("-----BEGIN PRIVATE KEY-----\n"),
        "{:.30}",
        pem
    );

    let again = SessionSigner::load_or_generate(&path).unwrap();
    assert_eq!(first.key_id(), again.key_id());
    assert_eq!(first.key_id().len(), 16);
    assert!(first.key_id().bytes().all(|b| b.is_ascii_hexdigit()));
    let token = first.issue(&alice(), Duration::from_secs(60)).unwrap();
    assert_eq!(again.verify(&token).unwrap().sub, "alice@example.com");

    // The published JWK verifies the tokens.
    let set = KeySet::parse(json!({"keys": [first.public_jwk()]}).to_string().as_bytes()).unwrap();
    let key = set.select(Alg::EdDsa, Some(first.key_id())).unwrap();
    let (input, sig) = token.rsplit_once('.').unwrap();
    assert!(key.verify(Alg::EdDsa, input.as_bytes(), &b64url_decode(sig).unwrap()));

    // An OpenSSL-made key file is accepted too; garbage is an error, not a new key.
    let openssl = dir.path("openssl.key");
    std::fs::write(&openssl, ED_KEY).unwrap();
    SessionSigner::load_or_generate(&openssl).unwrap();
    let bad = dir.path("bad.key");
    std::fs::write(
        &bad,
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let err = SessionSigner::load_or_generate(&bad).unwrap_err();
    assert!(matches!(err, IdentityError::BadKeyFile { .. }), "{err}");
}

#[test]
fn a_verified_token_is_remembered_but_its_expiry_is_checked_every_time() {
    let signer = SessionSigner::ephemeral().unwrap();
    let token = signer.issue(&alice(), Duration::from_secs(60)).unwrap();
    let now = now_unix();
    let claims = signer.verify_at(&token, now).unwrap();
    assert_eq!(signer.verified_len(), 1);
    assert_eq!(signer.verify_at(&token, now + 30).unwrap(), claims);
    assert_eq!(signer.verified_len(), 1, "the second use hit the cache");
    // Remembered, yet refused once it has expired.
    assert!(matches!(
        signer.verify_at(&token, now + 120),
        Err(IdentityError::Expired { .. })
    ));
    // A token differing in one byte of its signature is a different key, and fails.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    assert!(signer.verify_at(&tampered, now).is_err());
    assert_eq!(signer.verified_len(), 1, "failures are not remembered");
}

#[test]
fn the_verified_tokens_stay_bounded() {
    let signer = SessionSigner::ephemeral().unwrap();
    for _ in 0..crate::identity::session::VERIFIED_TOKENS_MAX + 10 {
        let token = signer.issue(&alice(), Duration::from_secs(60)).unwrap();
        signer.verify(&token).unwrap();
    }
    assert!(signer.verified_len() <= crate::identity::session::VERIFIED_TOKENS_MAX);
}
