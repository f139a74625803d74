//! A small OIDC provider for tests: discovery, JWKS, the RFC 8628 device
//! flow, and ID tokens signed with fixed test keys from `tests/testdata/`
//! (RS256 by default, ES256 and EdDSA on request; all three in the JWKS).
//!
//! Plain HTTP on 127.0.0.1, one in-process task, stopped on drop. Tests drive
//! the user's side through `approve` / `deny` / `expire`, or skip the device
//! dance with `mint_id_token` / `mint_with`. Not a real IdP: no browser
//! pages, no refresh tokens, no client secrets.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tunnel_lite::login::{DeviceFlowInfo, DEVICE_CODE_GRANT};

/// Key id of the RS256 test key in the JWKS.
pub const RS256_KID: &str = "oidc-test-rs256";
/// Key id of the ES256 (P-256) test key in the JWKS.
pub const ES256_KID: &str = "oidc-test-es256";
/// Key id of the Ed25519 test key in the JWKS.
pub const EDDSA_KID: &str = "oidc-test-eddsa";
/// The secret `mint_with` uses for HS256/384/512 tokens (never in the JWKS:
/// such tokens must be refused).
pub const HMAC_SECRET: &[u8] = b"oidc-fixture-hmac-secret-not-in-jwks";

const RS256_PEM: &str = include_str!("../testdata/oidc-rs256.pem");
const ES256_PEM: &str = include_str!("../testdata/oidc-es256.pem");
const EDDSA_PEM: &str = include_str!("../testdata/oidc-eddsa.pem");

/// Largest request body the fixture reads.
const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Slack allowed when checking that a client waited `interval` between polls.
const POLL_TOLERANCE: Duration = Duration::from_millis(20);
/// Interval increase that comes with `slow_down` (RFC 8628 section 3.5).
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);

/// How the fixture behaves.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    /// The only client id accepted (others get `invalid_client`).
    pub client_id: String,
    /// `aud` of ID tokens.
    pub audience: String,
    /// `interval` of device authorizations, seconds.
    pub interval: u64,
    /// `expires_in` of device codes, seconds.
    pub expires_in: u64,
    /// Answer the first poll of each device code with `slow_down`.
    pub slow_down_once: bool,
    /// Algorithm of ID tokens issued by the token endpoint and `mint_id_token`.
    pub alg: Algorithm,
    /// Lifetime of ID tokens issued by the token endpoint.
    pub id_token_ttl: Duration,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            client_id: "tunnel-lite".into(),
            audience: "appliance".into(),
            interval: 1,
            expires_in: 600,
            slow_down_once: false,
            alg: Algorithm::RS256,
            id_token_ttl: Duration::from_secs(3600),
        }
    }
}

/// A running provider; its server task is aborted on drop.
pub struct OidcProvider {
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

struct Shared {
    settings: OidcSettings,
    issuer: String,
    keys: Keys,
    grants: Mutex<HashMap<String, Grant>>,
    slow_downs: AtomicUsize,
    rng: SystemRandom,
}

struct SigningKey {
    kid: &'static str,
    key: EncodingKey,
    jwk: Value,
}

struct Keys {
    rs256: SigningKey,
    es256: SigningKey,
    eddsa: SigningKey,
    hmac: EncodingKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum GrantState {
    Pending,
    Approved { user: String, groups: Vec<String> },
    Denied,
    Expired,
    Redeemed,
}

struct Grant {
    user_code: String,
    state: GrantState,
    expires_at: Instant,
    interval: Duration,
    last_poll: Instant,
    slow_down_sent: bool,
}

impl OidcProvider {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start(settings: OidcSettings) -> anyhow::Result<OidcProvider> {
        let keys = Keys::load()?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the OIDC fixture")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            settings,
            issuer: format!("http://{addr}"),
            keys,
            grants: Mutex::new(HashMap::new()),
            slow_downs: AtomicUsize::new(0),
            rng: SystemRandom::new(),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(OidcProvider { shared, task })
    }

    /// `http://127.0.0.1:PORT`, the `iss` of its tokens.
    pub fn issuer(&self) -> &str {
        &self.shared.issuer
    }

    /// An absolute URL on the provider; `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.shared.issuer)
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.shared.settings
    }

    /// What the appliance would publish for this provider.
    pub fn device_flow_info(&self) -> DeviceFlowInfo {
        DeviceFlowInfo {
            client_id: self.shared.settings.client_id.clone(),
            device_authorization_endpoint: self.url("/device_authorization"),
            token_endpoint: self.url("/token"),
            scopes: vec!["openid".into(), "email".into(), "groups".into()],
        }
    }

    /// The JWK Set served at `/jwks`.
    pub fn jwks_json(&self) -> String {
        self.shared.jwks().to_string()
    }

    /// The user approves the login showing `user_code`.
    pub fn approve(&self, user_code: &str, user: &str, groups: &[&str]) -> anyhow::Result<()> {
        let state = GrantState::Approved {
            user: user.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        self.shared.set_state(user_code, state)
    }

    /// The user refuses the login showing `user_code`.
    pub fn deny(&self, user_code: &str) -> anyhow::Result<()> {
        self.shared.set_state(user_code, GrantState::Denied)
    }

    /// The code `user_code` expires now.
    pub fn expire(&self, user_code: &str) -> anyhow::Result<()> {
        self.shared.set_state(user_code, GrantState::Expired)
    }

    /// How many `slow_down` answers the token endpoint has sent.
    pub fn slow_downs_sent(&self) -> usize {
        self.shared.slow_downs.load(Ordering::Relaxed)
    }

    /// A valid ID token for `user`, signed with the settings' algorithm.
    pub fn mint_id_token(&self, user: &str, groups: &[&str], ttl: Duration) -> String {
        let groups: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        let claims = self.shared.id_claims(user, &groups, ttl);
        self.mint_with(claims, self.shared.settings.alg)
    }

    /// Signs arbitrary claims with the test key of `alg` (its kid in the
    /// header). HS* algorithms use `HMAC_SECRET`. Panics on an algorithm
    /// without a test key (ES384): a test bug.
    pub fn mint_with(&self, claims: Value, alg: Algorithm) -> String {
        self.shared.sign(&self.shared.header(alg), &claims)
    }

    /// Signs `claims` with the key matching `header.alg`, keeping the header
    /// as given (to craft a wrong or missing `kid`, an odd `typ`, ...).
    pub fn mint_with_header(&self, header: Header, claims: &Value) -> String {
        self.shared.sign(&header, claims)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Keys {
    fn load() -> anyhow::Result<Keys> {
        Ok(Keys {
            rs256: rsa_key(RS256_KID, RS256_PEM)?,
            es256: ec_key(ES256_KID, ES256_PEM)?,
            eddsa: ed_key(EDDSA_KID, EDDSA_PEM)?,
            hmac: EncodingKey::from_secret(HMAC_SECRET),
        })
    }

    /// The key for `alg` and its kid (none for HMAC: not in the JWKS).
    fn for_alg(&self, alg: Algorithm) -> (Option<&'static str>, &EncodingKey) {
        use Algorithm::*;
        let k = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => &self.rs256,
            ES256 => &self.es256,
            EdDSA => &self.eddsa,
            HS256 | HS384 | HS512 => return (None, &self.hmac),
            ES384 => panic!("the OIDC fixture has no P-384 key"),
        };
        (Some(k.kid), &k.key)
    }
}

fn pem_to_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect();
    STANDARD.decode(b64).context("test key PEM is not base64")
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn rsa_key(kid: &'static str, pem: &str) -> anyhow::Result<SigningKey> {
    let der = pem_to_der(pem)?;
    let pair = ring::rsa::KeyPair::from_pkcs8(&der).map_err(|e| anyhow!("RSA test key: {e}"))?;
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    let jwk = json!({
        "kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
        "n": b64(&public.n), "e": b64(&public.e),
    });
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).context("RSA test key")?;
    Ok(SigningKey { kid, key, jwk })
}

fn ec_key(kid: &'static str, pem: &str) -> anyhow::Result<SigningKey> {
    let der = pem_to_der(pem)?;
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &SystemRandom::new())
            .map_err(|e| anyhow!("ES256 test key: {e}"))?;
    // Uncompressed SEC1 point: 0x04 || x || y.
    let point = pair.public_key().as_ref();
    if point.len() != 65 || point[0] != 4 {
        bail!("ES256 test key: unexpected public key encoding");
    }
    let jwk = json!({
        "kty": "EC", "kid": kid, "use": "sig", "alg": "ES256", "crv": "P-256",
        "x": b64(&point[1..33]), "y": b64(&point[33..]),
    });
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).context("ES256 test key")?;
    Ok(SigningKey { kid, key, jwk })
}

fn ed_key(kid: &'static str, pem: &str) -> anyhow::Result<SigningKey> {
    let der = pem_to_der(pem)?;
    let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
        .map_err(|e| anyhow!("EdDSA test key: {e}"))?;
    let jwk = json!({
        "kty": "OKP", "kid": kid, "use": "sig", "alg": "EdDSA", "crv": "Ed25519",
        "x": b64(pair.public_key().as_ref()),
    });
    let key = EncodingKey::from_ed_pem(pem.as_bytes()).context("EdDSA test key")?;
    Ok(SigningKey { kid, key, jwk })
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// User codes compare without case, dashes or spaces.
fn normalize_user_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

impl Shared {
    fn grants(&self) -> MutexGuard<'_, HashMap<String, Grant>> {
        // A panic while holding the lock only happens in a failing test.
        self.grants.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, user_code: &str, state: GrantState) -> anyhow::Result<()> {
        let wanted = normalize_user_code(user_code);
        let mut grants = self.grants();
        let grant = grants
            .values_mut()
            .find(|g| normalize_user_code(&g.user_code) == wanted)
            .ok_or_else(|| anyhow!("no device authorization with user code {user_code}"))?;
        if grant.state != GrantState::Pending {
            bail!(
                "user code {user_code} is no longer pending ({:?})",
                grant.state
            );
        }
        grant.state = state;
        Ok(())
    }

    fn jwks(&self) -> Value {
        let k = &self.keys;
        json!({ "keys": [k.rs256.jwk, k.es256.jwk, k.eddsa.jwk] })
    }

    fn id_claims(&self, user: &str, groups: &[String], ttl: Duration) -> Value {
        let now = unix_now();
        json!({
            "iss": self.issuer,
            "aud": self.settings.audience,
            "sub": user,
            "email": user,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + ttl.as_secs(),
        })
    }

    /// A JWT header for `alg` naming the test key's kid.
    fn header(&self, alg: Algorithm) -> Header {
        let mut header = Header::new(alg);
        header.kid = self.keys.for_alg(alg).0.map(str::to_string);
        header
    }

    fn sign(&self, header: &Header, claims: &Value) -> String {
        let (_, key) = self.keys.for_alg(header.alg);
        jsonwebtoken::encode(header, claims, key)
            .unwrap_or_else(|e| panic!("OIDC fixture cannot sign with {:?}: {e}", header.alg))
    }

    fn random<const N: usize>(&self) -> [u8; N] {
        let mut buf = [0u8; N];
        // SystemRandom only fails if the OS has no randomness at all.
        self.rng
            .fill(&mut buf)
            .unwrap_or_else(|_| panic!("OIDC fixture: no system randomness"));
        buf
    }

    fn random_hex(&self) -> String {
        self.random::<16>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn new_user_code(&self, grants: &HashMap<String, Grant>) -> String {
        const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
        loop {
            let letters: String = (self.random::<8>())
                .iter()
                .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
                .collect();
            let code = format!("{}-{}", &letters[..4], &letters[4..]);
            if !grants.values().any(|g| g.user_code == code) {
                return code;
            }
        }
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    // Connections live in this set, so aborting the accept task ends them too.
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let shared = shared.clone();
        conns.spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> Reply {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    let json = http::HeaderValue::from_static("application/json");
    resp.headers_mut().insert(http::header::CONTENT_TYPE, json);
    let no_store = http::HeaderValue::from_static("no-store");
    resp.headers_mut()
        .insert(http::header::CACHE_CONTROL, no_store);
    resp
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Reply {
    reply(
        status,
        json!({ "error": error, "error_description": description }),
    )
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = match Limited::new(req.into_body(), MAX_REQUEST_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "bad body"),
    };
    let form = || {
        let text = String::from_utf8_lossy(&body);
        tunnel_lite::http::form_decode(&text)
            .into_iter()
            .collect::<HashMap<String, String>>()
    };
    match (method, path.as_str()) {
        (Method::GET, "/.well-known/openid-configuration") => {
            reply(StatusCode::OK, discovery(&shared.issuer))
        }
        (Method::GET, "/jwks") => reply(StatusCode::OK, shared.jwks()),
        (Method::POST, "/device_authorization") => device_authorization(shared, &form()),
        (Method::POST, "/token") => token(shared, &form()),
        _ => reply(StatusCode::NOT_FOUND, json!({ "error": "not_found" })),
    }
}

fn discovery(issuer: &str) -> Value {
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks"),
        "device_authorization_endpoint": format!("{issuer}/device_authorization"),
        "token_endpoint": format!("{issuer}/token"),
        "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
        "grant_types_supported": [DEVICE_CODE_GRANT],
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["openid", "email", "groups"],
        "claims_supported": ["iss", "aud", "sub", "email", "groups", "iat", "exp", "nbf"],
    })
}

fn device_authorization(shared: &Shared, form: &HashMap<String, String>) -> Reply {
    let settings = &shared.settings;
    if form.get("client_id") != Some(&settings.client_id) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    let device_code = format!("dc-{}", shared.random_hex());
    let now = Instant::now();
    let interval = Duration::from_secs(settings.interval);
    let mut grants = shared.grants();
    let user_code = shared.new_user_code(&grants);
    grants.insert(
        device_code.clone(),
        Grant {
            user_code: user_code.clone(),
            state: GrantState::Pending,
            expires_at: now + Duration::from_secs(settings.expires_in),
            interval,
            last_poll: now,
            slow_down_sent: false,
        },
    );
    let verification_uri = format!("{}/device", shared.issuer);
    reply(
        StatusCode::OK,
        json!({
            "device_code": device_code,
            "user_code": user_code,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={user_code}"),
            "expires_in": settings.expires_in,
            "interval": settings.interval,
        }),
    )
}

fn token(shared: &Shared, form: &HashMap<String, String>) -> Reply {
    let bad =
        |error: &str, description: &str| oauth_error(StatusCode::BAD_REQUEST, error, description);
    if form.get("grant_type").map(String::as_str) != Some(DEVICE_CODE_GRANT) {
        return bad(
            "unsupported_grant_type",
            "only the device code grant is supported",
        );
    }
    if form.get("client_id") != Some(&shared.settings.client_id) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    }
    let Some(device_code) = form.get("device_code") else {
        return bad("invalid_request", "device_code is missing");
    };
    let now = Instant::now();
    let mut grants = shared.grants();
    let Some(grant) = grants.get_mut(device_code) else {
        return bad("invalid_grant", "unknown device_code");
    };
    if now >= grant.expires_at && grant.state == GrantState::Pending {
        grant.state = GrantState::Expired;
    }
    match &grant.state {
        GrantState::Expired => return bad("expired_token", "the device code expired"),
        GrantState::Denied => return bad("access_denied", "the user denied the request"),
        GrantState::Redeemed => return bad("invalid_grant", "the device code was already used"),
        GrantState::Pending | GrantState::Approved { .. } => {}
    }
    let too_fast = now + POLL_TOLERANCE < grant.last_poll + grant.interval;
    let forced = shared.settings.slow_down_once && !grant.slow_down_sent;
    grant.last_poll = now;
    if too_fast || forced {
        grant.slow_down_sent = true;
        grant.interval += SLOW_DOWN_STEP;
        shared.slow_downs.fetch_add(1, Ordering::Relaxed);
        return bad("slow_down", "polling too fast");
    }
    let GrantState::Approved { user, groups } = grant.state.clone() else {
        return bad("authorization_pending", "waiting for the user");
    };
    grant.state = GrantState::Redeemed;
    drop(grants);

    let ttl = shared.settings.id_token_ttl;
    let claims = shared.id_claims(&user, &groups, ttl);
    let id_token = shared.sign(&shared.header(shared.settings.alg), &claims);
    reply(
        StatusCode::OK,
        json!({
            "access_token": format!("at-{}", shared.random_hex()),
            "token_type": "Bearer",
            "expires_in": ttl.as_secs(),
            "id_token": id_token,
        }),
    )
}
