//! Tests of the identity module. Here: IdP tokens signed with the OpenSSL keys
//! in `testdata/` by the `jsonwebtoken` crate (an independent implementation)
//! against a pinned JWK Set. Submodules: a loopback JWK Set URL, session
//! tokens, the revocation store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::jwks::KeySet;
use super::jws::{b64url, now_unix};
use super::*;

const JWKS: &str = include_str!("testdata/jwks.json");
const RSA_KEY: &[u8] = include_bytes!("testdata/rsa.key.pem");
const RSA_PUB: &[u8] = include_bytes!("testdata/rsa.pub.pem");
const EC_KEY: &[u8] = include_bytes!("testdata/ec.key.pem");
const ED_KEY: &[u8] = include_bytes!("testdata/ed25519.key.pem");

const ISSUER: &str = "https://idp.example.com";
const AUDIENCE: &str = "appliance-client";

fn claims() -> Value {
    let now = now_unix();
    json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "00u1", "email": "alice@example.com",
        "groups": ["dba", "oncall"], "iat": now, "exp": now + 300,
    })
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(RSA_KEY).unwrap(),
        Algorithm::ES256 => EncodingKey::from_ec_pem(EC_KEY).unwrap(),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(ED_KEY).unwrap(),
        other => panic!("no test key for {other:?}"),
    };
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).unwrap()
}

/// A token with a hand-written header and no signature check possible.
fn forge(header: &Value, claims: &Value, signature: &[u8]) -> String {
    let h = b64url(&serde_json::to_vec(header).unwrap());
    let c = b64url(&serde_json::to_vec(claims).unwrap());
    format!("{h}.{c}.{}", b64url(signature))
}

fn settings(jwks: JwksSource) -> IdpSettings {
    IdpSettings::new(ISSUER, AUDIENCE, jwks)
}

fn pinned() -> IdpVerifier {
    IdpVerifier::new(settings(JwksSource::Inline(JWKS.into()))).unwrap()
}

fn reason(result: Result<impl std::fmt::Debug, IdentityError>) -> String {
    match result {
        Err(IdentityError::InvalidToken(reason)) => reason,
        other => panic!("expected InvalidToken, got {other:?}"),
    }
}

#[test]
fn shared_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<IdpVerifier>();
    send_sync::<SessionSigner>();
    send_sync::<RevokedSet>();
    send::<RevocationStore>();
}

#[tokio::test]
async fn rs256_es256_eddsa_tokens_verify() {
    let v = pinned();
    for (alg, kid) in [
        (Algorithm::RS256, "rsa-1"),
        (Algorithm::ES256, "ec-1"),
        (Algorithm::EdDSA, "ed-1"),
    ] {
        let id = v.verify(&sign(alg, Some(kid), &claims())).await.unwrap();
        assert_eq!(id.user, "alice@example.com", "{alg:?}");
        assert_eq!(id.groups, ["dba", "oncall"], "{alg:?}");
    }
}

#[tokio::test]
async fn audience_array_missing_groups_and_no_kid_are_accepted() {
    let v = pinned();
    let c = with(claims(), "aud", json!(["other", AUDIENCE]));
    let mut c = with(c, "nbf", json!(now_unix() - 10));
    c.as_object_mut().unwrap().remove("groups");
    // No kid: the set has exactly one key for each algorithm.
    let id = v.verify(&sign(Algorithm::EdDSA, None, &c)).await.unwrap();
    assert!(id.groups.is_empty());
    v.verify(&sign(Algorithm::RS256, None, &c)).await.unwrap();
}

#[tokio::test]
async fn leeway_applies_to_exp() {
    let v = pinned();
    let c = with(claims(), "exp", json!(now_unix() - 10));
    v.verify(&sign(Algorithm::ES256, Some("ec-1"), &c))
        .await
        .unwrap();
}

#[tokio::test]
async fn expired_token_is_expired_not_invalid() {
    let exp = now_unix() - 120;
    let c = with(claims(), "exp", json!(exp));
    let err = pinned()
        .verify(&sign(Algorithm::RS256, Some("rsa-1"), &c))
        .await;
    assert!(
        matches!(err, Err(IdentityError::Expired { exp: e }) if e == exp),
        "{err:?}"
    );
}

#[tokio::test]
async fn claim_checks_refuse() {
    let v = pinned();
    let mut no_exp = claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut no_user = claims();
    no_user.as_object_mut().unwrap().remove("email");
    let cases = [
        (
            with(claims(), "nbf", json!(now_unix() + 600)),
            "token is not valid yet",
        ),
        (
            with(claims(), "iss", json!("https://evil.example.com")),
            "wrong issuer",
        ),
        (
            with(claims(), "aud", json!("someone-else")),
            "wrong audience",
        ),
        (with(claims(), "aud", json!(["a", "b"])), "wrong audience"),
        (no_exp, "missing exp claim"),
        (no_user, "missing user claim email"),
        (
            with(claims(), "email", json!("")),
            "claim email is not a non-empty string",
        ),
        (
            with(claims(), "groups", json!("dba")),
            "claim groups is not an array of strings",
        ),
        (
            with(claims(), "groups", json!(["dba", 7])),
            "claim groups is not an array of strings",
        ),
    ];
    for (c, want) in cases {
        let got = reason(v.verify(&sign(Algorithm::EdDSA, Some("ed-1"), &c)).await);
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let token = forge(&json!({"alg": "none", "kid": "rsa-1"}), &claims(), b"");
    assert_eq!(
        reason(pinned().verify(&token).await),
        "algorithm none is not accepted"
    );
    let token = forge(&json!({"alg": "none"}), &claims(), b"whatever");
    assert_eq!(
        reason(pinned().verify(&token).await),
        "algorithm none is not accepted"
    );
}

#[tokio::test]
async fn hmac_with_the_public_key_as_secret_is_refused() {
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        let mut header = Header::new(alg);
        header.kid = Some("rsa-1".into());
        let key = EncodingKey::from_secret(RSA_PUB);
        let token = jsonwebtoken::encode(&header, &claims(), &key).unwrap();
        let want = format!("algorithm {alg:?} is not accepted");
        assert_eq!(reason(pinned().verify(&token).await), want);
    }
}

#[tokio::test]
async fn other_algorithms_and_garbage_are_refused() {
    let v = pinned();
    let token = forge(&json!({"alg": "PS256", "kid": "rsa-1"}), &claims(), b"sig");
    assert_eq!(
        reason(v.verify(&token).await),
        "algorithm PS256 is not accepted"
    );
    let token = forge(&json!({"alg": "<script>"}), &claims(), b"sig");
    assert_eq!(reason(v.verify(&token).await), "algorithm is not accepted");
    let token = forge(&json!({"typ": "JWT"}), &claims(), b"sig");
    assert_eq!(
        reason(v.verify(&token).await),
        "token header has no algorithm"
    );
    let good = sign(Algorithm::EdDSA, Some("ed-1"), &claims());
    let crit = forge(
        &json!({"alg": "EdDSA", "kid": "ed-1", "crit": ["b64"]}),
        &claims(),
        b"x",
    );
    assert_eq!(reason(v.verify(&crit).await), "unsupported critical header");
    for bad in [
        "",
        "a.b",
        "a.b.c.d",
        "!!.??.**",
        &good[1..],
        &"x".repeat(20_000),
    ] {
        let got = reason(v.verify(bad).await);
        assert!(
            got == "malformed" || got == "token too long",
            "{bad:.20}: {got}"
        );
    }
}

#[tokio::test]
async fn key_and_algorithm_must_match() {
    let v = pinned();
    let es_on_rsa = sign(Algorithm::ES256, Some("rsa-1"), &claims());
    assert_eq!(
        reason(v.verify(&es_on_rsa).await),
        "RSA key cannot verify ES256"
    );
    let rs_on_okp = sign(Algorithm::RS256, Some("ed-1"), &claims());
    assert_eq!(
        reason(v.verify(&rs_on_okp).await),
        "Ed25519 key cannot verify RS256"
    );
    let ed_on_ec = sign(Algorithm::EdDSA, Some("ec-1"), &claims());
    assert_eq!(
        reason(v.verify(&ed_on_ec).await),
        "EC P-256 key cannot verify EdDSA"
    );

    // The JWK's own `alg` must agree with the header.
    let jwks = JWKS.replace("\"alg\":\"RS256\"", "\"alg\":\"PS256\"");
    let v = IdpVerifier::new(settings(JwksSource::Inline(jwks))).unwrap();
    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims());
    assert_eq!(
        reason(v.verify(&token).await),
        "key is for PS256 but the token says RS256"
    );
}

#[tokio::test]
async fn unknown_kid_tampering_and_ambiguity_are_refused() {
    let v = pinned();
    let token = sign(Algorithm::RS256, Some("rsa-9"), &claims());
    assert_eq!(reason(v.verify(&token).await), "signed by an unknown key");

    let token = sign(Algorithm::RS256, Some("rsa-1"), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let evil = with(claims(), "email", json!("root@example.com"));
    let evil = b64url(&serde_json::to_vec(&evil).unwrap());
    let tampered = format!("{}.{evil}.{}", parts[0], parts[2]);
    assert_eq!(reason(v.verify(&tampered).await), "bad signature");

    // Two RSA keys and a token without kid: no guessing.
    let mut set: Value = serde_json::from_str(JWKS).unwrap();
    let mut second = set["keys"][0].clone();
    second["kid"] = json!("rsa-2");
    set["keys"].as_array_mut().unwrap().push(second);
    let v = IdpVerifier::new(settings(JwksSource::Inline(set.to_string()))).unwrap();
    let token = sign(Algorithm::RS256, None, &claims());
    assert_eq!(
        reason(v.verify(&token).await),
        "token has no kid and several keys fit RS256"
    );
}

#[test]
fn key_sets_skip_unusable_keys_and_settings_are_checked() {
    let only_oct = r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#;
    let err = IdpVerifier::new(settings(JwksSource::Inline(only_oct.into()))).unwrap_err();
    assert!(matches!(err, IdentityError::InvalidJwks(_)), "{err}");
    let mixed = JWKS.replacen(
        "{\"keys\":[",
        "{\"keys\":[{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"},{\"kty\":\"RSA\",\"use\":\"enc\",\"n\":\"AQAB\",\"e\":\"AQAB\"},",
        1,
    );
    assert_eq!(KeySet::parse(mixed.as_bytes()).unwrap().len(), 3);
    assert!(IdpVerifier::new(settings(JwksSource::Inline("[]".into()))).is_err());
    let mut s = settings(JwksSource::Inline(JWKS.into()));
    s.audience = " ".into();
    assert!(matches!(IdpVerifier::new(s), Err(IdentityError::Config(_))));
    let s = settings(JwksSource::Url("file:///etc/jwks.json".into()));
    assert!(matches!(IdpVerifier::new(s), Err(IdentityError::Config(_))));
}

/// A unique temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!(
            "appliance-identity-{name}-{}-{n}-{}",
            std::process::id(),
            now_unix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

mod jwks_url;
mod revocation;
mod session;
