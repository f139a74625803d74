//! `tunnel-lite login` end to end: the RFC 8628 device flow of
//! `tunnel_lite::login::device_login` against the OIDC fixture, and the ID
//! tokens it returns verified against the fixture's JWKS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use e2e::oidc::{OidcProvider, OidcSettings};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tunnel_lite::login::{device_login, LoginError};

const USER: &str = "alice@example.com";
const GROUPS: &[&str] = &["dba", "oncall"];

#[derive(Debug, serde::Deserialize)]
struct IdClaims {
    iss: String,
    aud: String,
    sub: String,
    email: String,
    groups: Vec<String>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

type UserAction = Box<dyn FnOnce(&OidcProvider, &str) -> anyhow::Result<()> + Send>;

/// Runs `device_login` against `idp`; once the prompt shows, a spawned task
/// plays the user with `action(idp, user_code)`.
async fn login(
    idp: &Arc<OidcProvider>,
    action: UserAction,
) -> anyhow::Result<Result<String, LoginError>> {
    let (tx, rx) = oneshot::channel::<String>();
    let user = {
        let idp = idp.clone();
        tokio::spawn(async move {
            let code = rx.await.context("the prompt never fired")?;
            action(&idp, &code)
        })
    };
    let info = idp.device_flow_info();
    let result = device_login(&info, None, |prompt| {
        assert!(prompt.verification_uri.starts_with(idp.issuer()));
        assert!(prompt
            .verification_uri_complete
            .as_deref()
            .is_some_and(|u| u.contains(&prompt.user_code)));
        assert_eq!(prompt.expires_in, idp.settings().expires_in);
        let _ = tx.send(prompt.user_code.clone());
    })
    .await;
    if let Err(e) = user.await? {
        anyhow::bail!("playing the user failed: {e:#} (login result: {result:?})");
    }
    Ok(result)
}

fn approve() -> UserAction {
    Box::new(|idp, code| idp.approve(code, USER, GROUPS))
}

/// Verifies `token` the way a relying party would: JWKS fetched over HTTP,
/// key by `kid`, signature, `iss`, `aud`, `exp`, `nbf`.
async fn verify(idp: &OidcProvider, token: &str) -> anyhow::Result<(Algorithm, IdClaims)> {
    let resp = tunnel_lite::http::request(
        "GET",
        &idp.url("/jwks"),
        &[],
        None,
        None,
        Duration::from_secs(5),
    )
    .await?;
    anyhow::ensure!(resp.status == 200, "JWKS status {}", resp.status);
    let jwks: JwkSet = resp.json()?;
    let header = jsonwebtoken::decode_header(token)?;
    let kid = header.kid.context("ID token has no kid")?;
    let jwk = jwks.find(&kid).context("kid not in the JWKS")?;
    let key = DecodingKey::from_jwk(jwk)?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(&[idp.settings().audience.as_str()]);
    validation.set_issuer(&[idp.issuer()]);
    validation.validate_nbf = true;
    let data = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)?;
    Ok((header.alg, data.claims))
}

async fn approve_and_verify(alg: Algorithm) -> anyhow::Result<()> {
    let idp = Arc::new(
        OidcProvider::start(OidcSettings {
            alg,
            ..Default::default()
        })
        .await?,
    );
    let token = login(&idp, approve()).await??;
    let (got_alg, claims) = verify(&idp, &token).await?;
    assert_eq!(got_alg, alg);
    assert_eq!(claims.iss, idp.issuer());
    assert_eq!(claims.aud, "appliance");
    assert_eq!(claims.sub, USER);
    assert_eq!(claims.email, USER);
    assert_eq!(claims.groups, GROUPS);
    assert!(claims.nbf <= claims.iat && claims.iat < claims.exp);
    assert_eq!(
        idp.slow_downs_sent(),
        0,
        "the client polled faster than the interval"
    );
    Ok(())
}

#[tokio::test]
async fn login_approved_returns_verifiable_id_token() -> anyhow::Result<()> {
    approve_and_verify(Algorithm::RS256).await
}

#[tokio::test]
async fn login_approved_with_es256_and_eddsa_keys() -> anyhow::Result<()> {
    tokio::try_join!(
        approve_and_verify(Algorithm::ES256),
        approve_and_verify(Algorithm::EdDSA)
    )?;
    Ok(())
}

#[tokio::test]
async fn login_denied() -> anyhow::Result<()> {
    let idp = Arc::new(OidcProvider::start(OidcSettings::default()).await?);
    let result = login(&idp, Box::new(|idp, code| idp.deny(code))).await?;
    assert!(matches!(result, Err(LoginError::Denied)), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn login_expired_by_provider() -> anyhow::Result<()> {
    let idp = Arc::new(OidcProvider::start(OidcSettings::default()).await?);
    let result = login(&idp, Box::new(|idp, code| idp.expire(code))).await?;
    assert!(matches!(result, Err(LoginError::Expired)), "{result:?}");
    Ok(())
}

#[tokio::test]
async fn login_expires_at_local_deadline() -> anyhow::Result<()> {
    let settings = OidcSettings {
        expires_in: 2,
        ..Default::default()
    };
    let idp = Arc::new(OidcProvider::start(settings).await?);
    let started = tokio::time::Instant::now();
    // Nobody approves.
    let result = login(&idp, Box::new(|_, _| Ok(()))).await?;
    assert!(matches!(result, Err(LoginError::Expired)), "{result:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    Ok(())
}

#[tokio::test]
async fn login_survives_slow_down() -> anyhow::Result<()> {
    let settings = OidcSettings {
        slow_down_once: true,
        ..Default::default()
    };
    let idp = Arc::new(OidcProvider::start(settings).await?);
    let token = login(&idp, approve()).await??;
    assert_eq!(
        idp.slow_downs_sent(),
        1,
        "the client did not back off after slow_down"
    );
    let (_, claims) = verify(&idp, &token).await?;
    assert_eq!(claims.email, USER);
    Ok(())
}

#[tokio::test]
async fn login_with_unknown_client_is_a_provider_error() -> anyhow::Result<()> {
    let idp = OidcProvider::start(OidcSettings::default()).await?;
    let mut info = idp.device_flow_info();
    info.client_id = "someone-else".into();
    let result = device_login(&info, None, |_| panic!("no prompt expected")).await;
    match result {
        Err(LoginError::Provider { error, .. }) => assert_eq!(error, "invalid_client"),
        other => panic!("unexpected {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn login_fixture_discovery_and_minted_tokens() -> anyhow::Result<()> {
    let idp = OidcProvider::start(OidcSettings::default()).await?;
    let url = idp.url("/.well-known/openid-configuration");
    let resp =
        tunnel_lite::http::request("GET", &url, &[], None, None, Duration::from_secs(5)).await?;
    let doc: Value = resp.json()?;
    assert_eq!(doc["issuer"], idp.issuer());
    assert_eq!(doc["jwks_uri"], idp.url("/jwks"));
    assert_eq!(
        doc["device_authorization_endpoint"],
        idp.url("/device_authorization")
    );
    assert_eq!(doc["token_endpoint"], idp.url("/token"));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256", "EdDSA"])
    );

    let jwks: JwkSet = serde_json::from_str(&idp.jwks_json())?;
    assert_eq!(jwks.keys.len(), 3);

    let token = idp.mint_id_token("bob@example.com", &["dev"], Duration::from_secs(60));
    let (alg, claims) = verify(&idp, &token).await?;
    assert_eq!(
        (alg, claims.email.as_str(), claims.groups.as_slice()),
        (
            Algorithm::RS256,
            "bob@example.com",
            &["dev".to_string()][..]
        )
    );

    for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
        let claims = json!({"iss": idp.issuer(), "aud": "appliance", "sub": "c", "email": "c",
            "groups": [], "iat": 0, "nbf": 0, "exp": 4_000_000_000u64});
        let (got, _) = verify(&idp, &idp.mint_with(claims, alg)).await?;
        assert_eq!(got, alg);
    }
    // A crafted token for another audience is refused by a relying party.
    let wrong_aud = json!({"iss": idp.issuer(), "aud": "other", "sub": "c", "email": "c",
        "groups": [], "iat": 0, "nbf": 0, "exp": 4_000_000_000u64});
    assert!(verify(&idp, &idp.mint_with(wrong_aud, Algorithm::ES256))
        .await
        .is_err());
    Ok(())
}
