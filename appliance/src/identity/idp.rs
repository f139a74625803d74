//! Verification of OIDC ID tokens from the company IdP. Owns the JWK Set
//! (pinned, or fetched and cached with a rate-limited refresh) and the claim
//! checks; it does not decide what the identity may reach (policy does).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::jwks::{KeySet, NoKey};
use super::jws::{self, Alg};
use super::{Identity, IdentityError};

/// Default clock-skew allowance on `exp` and `nbf`.
pub const DEFAULT_LEEWAY_SECS: u64 = 30;
/// Default shortest time between two fetches of a JWK Set URL.
pub const DEFAULT_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(30);
/// Timeout of one JWK Set fetch.
pub const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A fetched JWK Set older than this is fetched again on next use, so a key
/// the IdP withdrew stops being trusted even if no unknown kid shows up.
pub const JWKS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The algorithms an IdP token may use.
const IDP_ALGS: &[Alg] = &[Alg::Rs256, Alg::Es256, Alg::EdDsa];

/// Where the IdP's public keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// A JWK Set JSON document pinned in the policy (air-gapped appliances).
    Inline(String),
    /// The IdP's `jwks_uri`, fetched on first use and when an unknown kid shows up.
    Url(String),
}

/// How to check ID tokens of one IdP.
#[derive(Debug, Clone)]
pub struct IdpSettings {
    /// Exact expected `iss`.
    pub issuer: String,
    /// Expected member of `aud` (the appliance's client id at the IdP).
    pub audience: String,
    /// Claim naming the user, e.g. "email".
    pub user_claim: String,
    /// Claim listing the groups, e.g. "groups".
    pub groups_claim: String,
    pub jwks: JwksSource,
    /// Clock-skew allowance on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Shortest time between two fetches of a `JwksSource::Url`.
    pub refresh_min_interval: Duration,
}

impl IdpSettings {
    /// Settings with the defaults: `email` and `groups` claims, 30 s leeway,
    /// refresh at most every 30 s.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, jwks: JwksSource) -> Self {
        IdpSettings {
            issuer: issuer.into(),
            audience: audience.into(),
            user_claim: "email".into(),
            groups_claim: "groups".into(),
            jwks,
            leeway_secs: DEFAULT_LEEWAY_SECS,
            refresh_min_interval: DEFAULT_REFRESH_MIN_INTERVAL,
        }
    }
}

/// Verifies ID tokens of one IdP. `Send + Sync`; share it in an `Arc`.
#[derive(Debug)]
pub struct IdpVerifier {
    issuer: String,
    audience: String,
    user_claim: String,
    groups_claim: String,
    leeway_secs: u64,
    keys: Keys,
}

#[derive(Debug)]
enum Keys {
    Pinned(Arc<KeySet>),
    Remote(RemoteKeys),
}

/// A fetched JWK Set and its refresh bookkeeping.
#[derive(Debug)]
struct RemoteKeys {
    url: String,
    tls: Option<Arc<rustls::ClientConfig>>,
    min_interval: Duration,
    /// The last good set and when it was fetched. Never held across an await.
    cache: RwLock<Option<(Arc<KeySet>, Instant)>>,
    /// When the last fetch started and how it failed, if it did.
    last_fetch: Mutex<Option<(Instant, Option<String>)>>,
    /// Single flight: one fetch at a time; waiters reuse its result.
    refresh: tokio::sync::Mutex<()>,
}

impl IdpVerifier {
    /// Checks the settings; an inline JWK Set is parsed here.
    pub fn new(settings: IdpSettings) -> Result<Self, IdentityError> {
        for (name, value) in [
            ("issuer", &settings.issuer),
            ("audience", &settings.audience),
            ("user claim", &settings.user_claim),
            ("groups claim", &settings.groups_claim),
        ] {
            if value.trim().is_empty() {
                return Err(IdentityError::Config(format!("{name} is empty")));
            }
        }
        let keys = match settings.jwks {
            JwksSource::Inline(json) => Keys::Pinned(Arc::new(KeySet::parse(json.as_bytes())?)),
            JwksSource::Url(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(IdentityError::Config(format!(
                        "JWK set URL {url:?} is not http(s)"
                    )));
                }
                Keys::Remote(RemoteKeys {
                    url,
                    tls: None,
                    min_interval: settings.refresh_min_interval,
                    cache: RwLock::new(None),
                    last_fetch: Mutex::new(None),
                    refresh: tokio::sync::Mutex::new(()),
                })
            }
        };
        Ok(IdpVerifier {
            issuer: settings.issuer,
            audience: settings.audience,
            user_claim: settings.user_claim,
            groups_claim: settings.groups_claim,
            leeway_secs: settings.leeway_secs,
            keys,
        })
    }

    /// TLS client config for an `https://` JWK Set URL (a private CA);
    /// without it the public web PKI is used.
    pub fn with_tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        if let Keys::Remote(remote) = &mut self.keys {
            remote.tls = Some(tls);
        }
        self
    }

    /// Verifies an ID token: algorithm, key, signature, then `iss`, `aud`,
    /// `exp`, `nbf`, and extracts the user and groups.
    pub async fn verify(&self, id_token: &str) -> Result<Identity, IdentityError> {
        // Header first: `none`, HMAC and the like never reach a key or the network.
        let token = jws::parse(id_token, IDP_ALGS)?;
        let kid = token.kid.as_deref();
        let set = match &self.keys {
            Keys::Pinned(set) => Arc::clone(set),
            Keys::Remote(remote) => remote.set_for(token.alg, kid).await?,
        };
        let key = set.select(token.alg, kid).map_err(NoKey::into_error)?;
        if !key.verify(token.alg, token.signing_input, &token.signature) {
            return Err(IdentityError::invalid("bad signature"));
        }
        let claims: Map<String, Value> = serde_json::from_slice(&token.payload)
            .map_err(|_| IdentityError::invalid("malformed claims"))?;
        self.check_claims(&claims, jws::now_unix())?;
        self.identity(&claims)
    }

    fn check_claims(&self, claims: &Map<String, Value>, now: u64) -> Result<(), IdentityError> {
        match claims.get("iss") {
            Some(Value::String(iss)) if *iss == self.issuer => {}
            Some(_) => return Err(IdentityError::invalid("wrong issuer")),
            None => return Err(IdentityError::invalid("missing iss claim")),
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds.iter().any(|a| a.as_str() == Some(&self.audience)),
            Some(_) => false,
            None => return Err(IdentityError::invalid("missing aud claim")),
        };
        if !aud_ok {
            return Err(IdentityError::invalid("wrong audience"));
        }
        jws::check_times(claims, now, self.leeway_secs)
    }

    fn identity(&self, claims: &Map<String, Value>) -> Result<Identity, IdentityError> {
        let user = match claims.get(&self.user_claim) {
            Some(Value::String(u)) if !u.trim().is_empty() => u.clone(),
            Some(_) => {
                return Err(IdentityError::invalid(format!(
                    "claim {} is not a non-empty string",
                    self.user_claim
                )))
            }
            None => {
                return Err(IdentityError::invalid(format!(
                    "missing user claim {}",
                    self.user_claim
                )))
            }
        };
        let groups = match claims.get(&self.groups_claim) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|g| g.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.bad_groups())?,
            Some(_) => return Err(self.bad_groups()),
        };
        Ok(Identity { user, groups })
    }

    fn bad_groups(&self) -> IdentityError {
        IdentityError::invalid(format!(
            "claim {} is not an array of strings",
            self.groups_claim
        ))
    }
}

impl RemoteKeys {
    /// The cached set, fetched on first use and refreshed (rate limited) when
    /// it has no key for this token or is older than [`JWKS_MAX_AGE`].
    async fn set_for(&self, alg: Alg, kid: Option<&str>) -> Result<Arc<KeySet>, IdentityError> {
        let cached = self.cached_with_age();
        if let Some((set, fetched)) = &cached {
            if !matches!(set.select(alg, kid), Err(NoKey::Unknown)) {
                // Stale but usable: refresh unless a refresh is already running.
                if fetched.elapsed() < JWKS_MAX_AGE || self.refresh.try_lock().is_err() {
                    return Ok(Arc::clone(set));
                }
            }
        }
        let cached = cached.map(|(set, _)| set);
        match self.refresh(cached.as_ref()).await {
            Ok(set) => Ok(set),
            // A refresh that is refused or fails still leaves the old set to answer.
            Err(e) => cached.ok_or(e),
        }
    }

    fn cached_with_age(&self) -> Option<(Arc<KeySet>, Instant)> {
        match self.cache.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        self.cached_with_age().map(|(set, _)| set)
    }

    /// Fetches the set again unless another task just did (single flight) or
    /// the last fetch was less than `min_interval` ago (rate limit).
    async fn refresh(&self, seen: Option<&Arc<KeySet>>) -> Result<Arc<KeySet>, IdentityError> {
        let _flight = self.refresh.lock().await;
        // Someone refreshed while we waited for the flight: use theirs.
        if let Some(current) = self.cached() {
            if seen.is_none_or(|s| !Arc::ptr_eq(s, &current)) {
                return Ok(current);
            }
        }
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, error)) = &*last {
                if at.elapsed() < self.min_interval {
                    let reason = match error {
                        Some(e) => format!("{e} (not retried for {:?})", self.min_interval),
                        None => "refreshed too recently".into(),
                    };
                    return Err(self.fetch_error(reason));
                }
            }
            *last = Some((Instant::now(), None));
        }
        let result = self.fetch().await;
        match &result {
            Ok(set) => {
                tracing::info!(url = %self.url, keys = set.len(), "fetched the IdP JWK set");
                let mut cache = self.cache.write().unwrap_or_else(|p| p.into_inner());
                *cache = Some((Arc::clone(set), Instant::now()));
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "cannot fetch the IdP JWK set");
                let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((_, error)) = &mut *last {
                    *error = Some(match e {
                        IdentityError::JwksFetch { reason, .. } => reason.clone(),
                        other => other.to_string(),
                    });
                }
            }
        }
        result
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, IdentityError> {
        let response = tunnel_lite::http::request(
            "GET",
            &self.url,
            &[("accept", "application/json")],
            None,
            self.tls.clone(),
            JWKS_FETCH_TIMEOUT,
        )
        .await
        .map_err(|e| self.fetch_error(e.to_string()))?;
        if response.status != 200 {
            return Err(self.fetch_error(format!("HTTP status {}", response.status)));
        }
        match KeySet::parse(&response.body) {
            Ok(set) => Ok(Arc::new(set)),
            Err(IdentityError::InvalidJwks(reason)) => Err(self.fetch_error(reason)),
            Err(other) => Err(other),
        }
    }

    fn fetch_error(&self, reason: String) -> IdentityError {
        IdentityError::JwksFetch {
            url: self.url.clone(),
            reason,
        }
    }
}
