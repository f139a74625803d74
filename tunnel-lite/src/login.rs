//! `tunnel-lite login`: the OAuth 2.0 Device Authorization Grant (RFC 8628)
//! against the company IdP, ending with an OIDC ID token for the appliance.
//!
//! Owns the request/poll loop and the parsing of the IdP's answers (pure
//! helpers, unit-tested without I/O). It does not store tokens, talk to the
//! appliance, or open a browser: the caller shows the prompt and decides what
//! to do with the ID token. Errors never carry token or device-code values.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use crate::http::{self, HttpError, HttpResponse};

/// `grant_type` of the device-code token request (RFC 8628 section 3.4).
pub const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
/// Polling interval when the IdP does not send one (RFC 8628 section 3.2).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// Smallest polling interval accepted from the IdP.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Largest polling interval honoured (a larger one is clamped).
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Added to the interval on each `slow_down` (RFC 8628 section 3.5).
pub const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Longest login window honoured, whatever `expires_in` says.
pub const MAX_EXPIRES_IN: u64 = 3600;
/// Timeout of one HTTP exchange with the IdP.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Provider-supplied error descriptions are cut to this many characters.
const MAX_DESCRIPTION: usize = 200;

/// How the appliance's API tells tunnel-lite to run the device flow.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct DeviceFlowInfo {
    pub client_id: String,
    pub device_authorization_endpoint: String,
    pub token_endpoint: String,
    pub scopes: Vec<String>,
}

/// What the user must do: open `verification_uri` and enter `user_code`.
#[derive(Debug, Clone)]
pub struct DevicePrompt {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    /// Seconds the code stays valid.
    pub expires_in: u64,
}

/// Why a login did not produce an ID token.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("invalid device flow configuration: {0}")]
    Config(&'static str),
    #[error("refusing to send login codes over plain HTTP to {0} (use https)")]
    InsecureEndpoint(String),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("unexpected answer from the {endpoint} endpoint (HTTP {status}): {reason}")]
    BadResponse {
        endpoint: &'static str,
        status: u16,
        reason: String,
    },
    /// The user (or the IdP on their behalf) refused the login.
    #[error("login was denied")]
    Denied,
    /// The code expired before it was approved (said by the IdP, or the
    /// local `expires_in` deadline passed).
    #[error("the login code expired before it was approved; run login again")]
    Expired,
    #[error("identity provider error {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Provider {
        error: String,
        description: Option<String>,
    },
    #[error(
        "the identity provider returned no id_token (is the openid scope allowed for this client?)"
    )]
    MissingIdToken,
}

/// Runs the device flow: asks for a code, shows it through `on_prompt`,
/// polls until the user approves, denies, or the code expires. Returns the
/// ID token.
pub async fn device_login(
    info: &DeviceFlowInfo,
    tls: Option<Arc<rustls::ClientConfig>>,
    on_prompt: impl FnOnce(&DevicePrompt),
) -> Result<String, LoginError> {
    validate_info(info)?;
    let scope = scope_string(&info.scopes);
    let body = http::form_encode(&[("client_id", &info.client_id), ("scope", &scope)]);
    let resp = post_form(&info.device_authorization_endpoint, body, tls.clone()).await?;
    let auth = parse_device_authorization(&resp)?;
    let deadline = Instant::now() + Duration::from_secs(auth.prompt.expires_in);
    on_prompt(&auth.prompt);

    let mut interval = auth.interval;
    loop {
        let wake = (Instant::now() + interval).min(deadline);
        tokio::time::sleep_until(wake).await;
        if Instant::now() >= deadline {
            return Err(LoginError::Expired);
        }
        let body = http::form_encode(&[
            ("grant_type", DEVICE_CODE_GRANT),
            ("device_code", &auth.device_code.0),
            ("client_id", &info.client_id),
        ]);
        let resp = post_form(&info.token_endpoint, body, tls.clone()).await?;
        match parse_token_poll(&resp)? {
            Poll::IdToken(token) => return Ok(token),
            Poll::Pending => tracing::debug!("device login: authorization pending"),
            Poll::SlowDown => {
                interval = slowed_down(interval);
                tracing::debug!(?interval, "device login: slow_down");
            }
        }
    }
}

async fn post_form(
    url: &str,
    body: Vec<u8>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<HttpResponse, LoginError> {
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("accept", "application/json"),
    ];
    Ok(http::request("POST", url, &headers, Some(body), tls, REQUEST_TIMEOUT).await?)
}

/// A value that must not be printed (device codes, tokens).
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// The device authorization response, validated.
#[derive(Debug)]
struct DeviceAuthorization {
    device_code: Secret,
    prompt: DevicePrompt,
    interval: Duration,
}

/// Device authorization response as sent (RFC 8628 section 3.2).
#[derive(Deserialize)]
struct RawDeviceAuthorization {
    device_code: String,
    user_code: String,
    // Some IdPs (Google) spell it `verification_url`.
    #[serde(alias = "verification_url")]
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
}

/// An OAuth error body (RFC 6749 section 5.2).
#[derive(Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

/// The token response; only the ID token matters here.
#[derive(Deserialize)]
struct RawTokenResponse {
    id_token: Option<String>,
}

/// One poll of the token endpoint, interpreted.
#[derive(Debug, PartialEq, Eq)]
enum Poll {
    IdToken(String),
    Pending,
    SlowDown,
}

const DEVICE_ENDPOINT: &str = "device authorization";
const TOKEN_ENDPOINT: &str = "token";

fn validate_info(info: &DeviceFlowInfo) -> Result<(), LoginError> {
    if info.client_id.trim().is_empty() {
        return Err(LoginError::Config("client_id is empty"));
    }
    check_endpoint(&info.device_authorization_endpoint)?;
    check_endpoint(&info.token_endpoint)
}

/// Device codes are bearer secrets: plain HTTP only to a loopback IdP (tests,
/// local development).
fn check_endpoint(url: &str) -> Result<(), LoginError> {
    let uri: ::http::Uri = url
        .parse()
        .map_err(|_| LoginError::Config("an endpoint is not a valid URL"))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") => {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if loopback {
                Ok(())
            } else {
                Err(LoginError::InsecureEndpoint(url.to_string()))
            }
        }
        _ => Err(LoginError::Config("an endpoint is not an http(s) URL")),
    }
}

/// The `scope` parameter: the configured scopes, `openid` first (an ID token
/// is only issued for it), without duplicates.
fn scope_string(scopes: &[String]) -> String {
    let mut out: Vec<&str> = vec!["openid"];
    for s in scopes.iter().flat_map(|s| s.split_whitespace()) {
        if !out.contains(&s) {
            out.push(s);
        }
    }
    out.join(" ")
}

/// The polling interval from the IdP's `interval`, clamped to sane bounds.
fn initial_interval(interval: Option<u64>) -> Duration {
    interval
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_INTERVAL)
        .clamp(MIN_INTERVAL, MAX_INTERVAL)
}

fn slowed_down(interval: Duration) -> Duration {
    (interval + SLOW_DOWN_STEP).min(MAX_INTERVAL)
}

fn parse_device_authorization(resp: &HttpResponse) -> Result<DeviceAuthorization, LoginError> {
    let bad = |reason: String| LoginError::BadResponse {
        endpoint: DEVICE_ENDPOINT,
        status: resp.status,
        reason,
    };
    if let Some(err) = oauth_error(resp) {
        return Err(LoginError::Provider {
            error: err.error,
            description: err.error_description,
        });
    }
    if !(200..300).contains(&resp.status) {
        return Err(bad("not a success and not an OAuth error".into()));
    }
    let raw: RawDeviceAuthorization = resp.json().map_err(|e| bad(json_reason(&e)))?;
    if raw.device_code.is_empty() {
        return Err(bad("empty device_code".into()));
    }
    if raw.user_code.trim().is_empty() {
        return Err(bad("empty user_code".into()));
    }
    let uri_ok = |u: &str| u.starts_with("https://") || u.starts_with("http://");
    if !uri_ok(&raw.verification_uri) {
        return Err(bad("verification_uri is not an http(s) URL".into()));
    }
    if raw.expires_in == 0 {
        return Err(bad("expires_in is 0".into()));
    }
    Ok(DeviceAuthorization {
        device_code: Secret(raw.device_code),
        prompt: DevicePrompt {
            user_code: printable(&raw.user_code),
            verification_uri: printable(&raw.verification_uri),
            verification_uri_complete: raw
                .verification_uri_complete
                .filter(|u| uri_ok(u))
                .map(|u| printable(&u)),
            expires_in: raw.expires_in.min(MAX_EXPIRES_IN),
        },
        interval: initial_interval(raw.interval),
    })
}

fn parse_token_poll(resp: &HttpResponse) -> Result<Poll, LoginError> {
    // Some IdPs answer pending polls with 200 and an error body, so look for
    // an error first, whatever the status.
    if let Some(err) = oauth_error(resp) {
        return match err.error.as_str() {
            "authorization_pending" => Ok(Poll::Pending),
            "slow_down" => Ok(Poll::SlowDown),
            "access_denied" => Err(LoginError::Denied),
            "expired_token" => Err(LoginError::Expired),
            _ => Err(LoginError::Provider {
                error: err.error,
                description: err.error_description,
            }),
        };
    }
    let bad = |reason: String| LoginError::BadResponse {
        endpoint: TOKEN_ENDPOINT,
        status: resp.status,
        reason,
    };
    if !(200..300).contains(&resp.status) {
        return Err(bad("not a success and not an OAuth error".into()));
    }
    let raw: RawTokenResponse = resp.json().map_err(|e| bad(json_reason(&e)))?;
    match raw.id_token {
        Some(t) if !t.is_empty() => Ok(Poll::IdToken(t)),
        _ => Err(LoginError::MissingIdToken),
    }
}

/// The body as an OAuth error, if it is one. The code and description are
/// made printable and bounded (they end up on the user's terminal).
fn oauth_error(resp: &HttpResponse) -> Option<OAuthError> {
    let err: OAuthError = resp.json().ok()?;
    if err.error.is_empty() {
        return None;
    }
    Some(OAuthError {
        error: printable(&err.error),
        error_description: err
            .error_description
            .map(|d| printable(&d))
            .filter(|d| !d.is_empty()),
    })
}

/// Drops control characters and bounds the length of provider text.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_DESCRIPTION)
        .collect()
}

/// Describes a JSON error without quoting the offending value (which may be
/// a token).
fn json_reason(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    if msg.starts_with("missing field") {
        return msg;
    }
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable body",
        serde_json::error::Category::Syntax => "not valid JSON",
        serde_json::error::Category::Data => "a field has the wrong type or value",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn resp(status: u16, body: &str) -> HttpResponse {
        HttpResponse {
            status,
            content_type: Some("application/json".into()),
            body: Bytes::from(body.to_string()),
        }
    }

    const GOOD_DEVICE: &str = r#"{"device_code":"dc-SECRET","user_code":"ABCD-EFGH",
        "verification_uri":"https://idp.example/device",
        "verification_uri_complete":"https://idp.example/device?user_code=ABCD-EFGH",
        "expires_in":600,"interval":2}"#;

    #[test]
    fn device_authorization_parses() {
        let a = parse_device_authorization(&resp(200, GOOD_DEVICE)).unwrap();
        assert_eq!(a.device_code.0, "dc-SECRET");
        assert_eq!(a.prompt.user_code, "ABCD-EFGH");
        assert_eq!(a.prompt.verification_uri, "https://idp.example/device");
        assert_eq!(
            a.prompt.verification_uri_complete.as_deref(),
            Some("https://idp.example/device?user_code=ABCD-EFGH")
        );
        assert_eq!(a.prompt.expires_in, 600);
        assert_eq!(a.interval, Duration::from_secs(2));
        // The device code never shows in Debug output.
        assert!(!format!("{a:?}").contains("dc-SECRET"));
    }

    #[test]
    fn device_authorization_defaults_and_clamps() {
        let body = r#"{"device_code":"d","user_code":"U","verification_url":"https://x/d",
            "expires_in":999999999999}"#;
        let a = parse_device_authorization(&resp(200, body)).unwrap();
        assert_eq!(a.interval, DEFAULT_INTERVAL);
        assert_eq!(a.prompt.expires_in, MAX_EXPIRES_IN);
        assert_eq!(a.prompt.verification_uri, "https://x/d");
        assert_eq!(a.prompt.verification_uri_complete, None);
        assert_eq!(initial_interval(Some(0)), MIN_INTERVAL);
        assert_eq!(initial_interval(Some(100_000)), MAX_INTERVAL);
    }

    #[test]
    fn device_authorization_is_strict() {
        for (missing, body) in [
            (
                "device_code",
                r#"{"user_code":"U","verification_uri":"https://x","expires_in":5}"#,
            ),
            (
                "user_code",
                r#"{"device_code":"d","verification_uri":"https://x","expires_in":5}"#,
            ),
            (
                "verification_uri",
                r#"{"device_code":"d","user_code":"U","expires_in":5}"#,
            ),
            (
                "expires_in",
                r#"{"device_code":"d","user_code":"U","verification_uri":"https://x"}"#,
            ),
        ] {
            let err = parse_device_authorization(&resp(200, body)).unwrap_err();
            assert!(err.to_string().contains(missing), "{err}");
        }
        let zero =
            r#"{"device_code":"d","user_code":"U","verification_uri":"https://x","expires_in":0}"#;
        assert!(matches!(
            parse_device_authorization(&resp(200, zero)),
            Err(LoginError::BadResponse { .. })
        ));
        let not_url = r#"{"device_code":"d","user_code":"U","verification_uri":"javascript:x","expires_in":5}"#;
        assert!(parse_device_authorization(&resp(200, not_url)).is_err());
        assert!(matches!(
            parse_device_authorization(&resp(502, "<html>bad gateway</html>")),
            Err(LoginError::BadResponse { status: 502, .. })
        ));
    }

    #[test]
    fn device_authorization_errors_map_to_provider() {
        let err = parse_device_authorization(&resp(
            401,
            r#"{"error":"invalid_client","error_description":"no such\u001b[31m client"}"#,
        ))
        .unwrap_err();
        match err {
            LoginError::Provider { error, description } => {
                assert_eq!(error, "invalid_client");
                assert_eq!(description.as_deref(), Some("no such[31m client"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn token_poll_maps_errors() {
        let e = |code: &str| resp(400, &format!(r#"{{"error":"{code}"}}"#));
        assert_eq!(
            parse_token_poll(&e("authorization_pending")).unwrap(),
            Poll::Pending
        );
        assert_eq!(parse_token_poll(&e("slow_down")).unwrap(), Poll::SlowDown);
        assert!(matches!(
            parse_token_poll(&e("access_denied")),
            Err(LoginError::Denied)
        ));
        assert!(matches!(
            parse_token_poll(&e("expired_token")),
            Err(LoginError::Expired)
        ));
        match parse_token_poll(&resp(
            400,
            r#"{"error":"invalid_grant","error_description":"code used"}"#,
        )) {
            Err(LoginError::Provider { error, description }) => {
                assert_eq!(error, "invalid_grant");
                assert_eq!(description.as_deref(), Some("code used"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // GitHub-style: a pending poll answered with 200.
        let pending = resp(200, r#"{"error":"authorization_pending"}"#);
        assert_eq!(parse_token_poll(&pending).unwrap(), Poll::Pending);
        assert!(matches!(
            parse_token_poll(&resp(500, "oops")),
            Err(LoginError::BadResponse { status: 500, .. })
        ));
    }

    #[test]
    fn token_poll_success_needs_id_token() {
        let ok = resp(
            200,
            r#"{"access_token":"at","token_type":"Bearer","expires_in":3600,"id_token":"h.p.s"}"#,
        );
        assert_eq!(
            parse_token_poll(&ok).unwrap(),
            Poll::IdToken("h.p.s".into())
        );
        let no_id = resp(200, r#"{"access_token":"at-SECRET","token_type":"Bearer"}"#);
        let err = parse_token_poll(&no_id).unwrap_err();
        assert!(matches!(err, LoginError::MissingIdToken));
        assert!(!err.to_string().contains("SECRET"));
    }

    #[test]
    fn errors_do_not_quote_token_values() {
        let wrong_type = resp(200, r#"{"id_token":["tok-SECRET"]}"#);
        let err = parse_token_poll(&wrong_type).unwrap_err();
        assert!(matches!(err, LoginError::BadResponse { .. }));
        assert!(!err.to_string().contains("SECRET"), "{err}");
        let bad_dc = resp(
            200,
            r#"{"device_code":7,"user_code":"U","verification_uri":"https://x","expires_in":"dc-SECRET"}"#,
        );
        let err = parse_device_authorization(&bad_dc).unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn interval_and_scope_helpers() {
        assert_eq!(slowed_down(Duration::from_secs(1)), Duration::from_secs(6));
        assert_eq!(slowed_down(MAX_INTERVAL), MAX_INTERVAL);
        assert_eq!(scope_string(&[]), "openid");
        let scopes = vec![
            "email".to_string(),
            "openid profile".to_string(),
            "groups".to_string(),
        ];
        assert_eq!(scope_string(&scopes), "openid email profile groups");
    }

    #[test]
    fn endpoints_must_be_https_unless_loopback() {
        assert!(check_endpoint("https://idp.example/token").is_ok());
        assert!(check_endpoint("http://127.0.0.1:8080/token").is_ok());
        assert!(check_endpoint("http://[::1]:8080/token").is_ok());
        assert!(check_endpoint("http://localhost/token").is_ok());
        assert!(matches!(
            check_endpoint("http://idp.example/token"),
            Err(LoginError::InsecureEndpoint(_))
        ));
        assert!(matches!(
            check_endpoint("ftp://x/y"),
            Err(LoginError::Config(_))
        ));
        let info = DeviceFlowInfo {
            client_id: " ".into(),
            device_authorization_endpoint: "https://x/d".into(),
            token_endpoint: "https://x/t".into(),
            scopes: vec![],
        };
        assert!(matches!(validate_info(&info), Err(LoginError::Config(_))));
    }

    #[test]
    fn provider_error_display() {
        let e = LoginError::Provider {
            error: "invalid_scope".into(),
            description: Some("groups not allowed".into()),
        };
        assert_eq!(
            e.to_string(),
            "identity provider error invalid_scope: groups not allowed"
        );
        let e = LoginError::Provider {
            error: "server_error".into(),
            description: None,
        };
        assert_eq!(e.to_string(), "identity provider error server_error");
    }
}
