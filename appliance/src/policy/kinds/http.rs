//! `[connection.http]` settings: how the HTTP gateway reaches the upstream
//! (scheme, TLS, HTTP/2), which client headers it strips, which credential
//! headers it injects (by secret *name*), the identity assertion, limits and
//! timeouts, and the method/path rules. Validation only: no secret is
//! resolved and no file is read here (the CA file is read when a session
//! starts, on the appliance that serves it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;

use crate::policy::PolicyError;
use crate::proxy::http::glob::Glob;
use crate::proxy::http::template::Template;

/// Default `max_header_bytes`: request line plus headers.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default `idle_timeout` of a client connection between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `response_header_timeout`.
pub const DEFAULT_RESPONSE_HEADER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default header of the identity assertion.
pub const DEFAULT_ASSERTION_HEADER: &str = "x-appliance-identity";
/// Default lifetime of an identity assertion.
pub const DEFAULT_ASSERTION_TTL: Duration = Duration::from_secs(60);
/// Client headers stripped when the policy names none.
pub const DEFAULT_STRIP_HEADERS: [&str; 3] = ["authorization", "proxy-authorization", "cookie"];

/// Headers the gateway owns; the policy may neither inject nor strip them.
const RESERVED: [&str; 13] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// Settings of a `kind = "http"` connection.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpSettings {
    /// `http` (default) or `https` to the upstream.
    pub scheme: Scheme,
    /// PEM CA bundle the upstream's certificate must chain to (https);
    /// default: the public web PKI (webpki roots).
    pub ca_file: Option<PathBuf>,
    /// Server name sent (SNI) and verified; default: the upstream's host.
    pub sni: Option<String>,
    /// Offer HTTP/2 by ALPN (https only); default true.
    pub http2: bool,
    /// Keep the client's `Host` instead of the upstream's; default false.
    pub preserve_host: bool,
    /// Client headers removed before injection (lower case). Injected and
    /// assertion headers are always removed too.
    pub strip_headers: Vec<HeaderName>,
    /// Headers set on every upstream request, values with `${secret:NAME}`.
    pub headers: Vec<(HeaderName, Template)>,
    /// `Authorization: Basic` from a user name and a password secret.
    pub basic_auth: Option<BasicAuth>,
    /// An API-key header from a secret.
    pub api_key: Option<ApiKey>,
    /// A signed JWT naming the user, for the upstream to trust.
    pub identity_assertion: Option<AssertionSettings>,
    /// Request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// How long a client connection may sit between requests (and take to
    /// send a request's headers).
    pub idle_timeout: Duration,
    /// Upstream TCP (+TLS) connect timeout; default: the runtime config's.
    pub connect_timeout: Option<Duration>,
    /// How long the upstream may take to send response headers once the
    /// request (body included) has been forwarded.
    pub response_header_timeout: Duration,
    /// Keep the query string in audit records; default false (paths only).
    pub audit_query: bool,
    /// Method and path rules, first match wins.
    pub rules: Vec<HttpRule>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            scheme: Scheme::Http,
            ca_file: None,
            sni: None,
            http2: true,
            preserve_host: false,
            strip_headers: DEFAULT_STRIP_HEADERS
                .into_iter()
                .map(HeaderName::from_static)
                .collect(),
            headers: Vec::new(),
            basic_auth: None,
            api_key: None,
            identity_assertion: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            connect_timeout: None,
            response_header_timeout: DEFAULT_RESPONSE_HEADER_TIMEOUT,
            audit_query: false,
            rules: Vec::new(),
        }
    }
}

/// The upstream's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// `Authorization: Basic base64(user:password)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub user: String,
    /// Name of the password in the secret store.
    pub password_secret: String,
}

/// `<header>: <prefix><secret>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub header: HeaderName,
    pub secret: String,
    pub prefix: String,
}

/// The identity assertion JWT (EdDSA, the appliance's assertion key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSettings {
    pub header: HeaderName,
    pub ttl: Duration,
    /// The `aud` claim; default: the connection's name.
    pub audience: Option<String>,
}

/// One method/path rule.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRule {
    pub name: String,
    /// Upper-case methods; empty means any.
    pub methods: Vec<Method>,
    /// Path globs (`*` within a segment, `**` across, `?` one character).
    pub paths: Vec<Glob>,
    pub action: RuleAction,
}

/// What a matching rule does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleAction {
    /// Answer 403 naming the rule.
    Deny,
    /// File an approval request and answer 403 with its id; once approved,
    /// the same user's identical request (method, target, body) passes for
    /// `reuse_window`.
    RequireApproval(ApprovalSettings),
}

/// How a `require_approval` rule holds requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalSettings {
    /// Members of this group may approve (never the requester).
    pub approvers_group: String,
    /// How long an approval keeps the identical request allowed.
    pub reuse_window: Duration,
    /// How long a request waits for a decision before it expires.
    pub timeout: Duration,
}

/// Default `reuse_window` of a `require_approval` rule.
pub const DEFAULT_REUSE_WINDOW: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpSettings {
    scheme: Option<String>,
    ca_file: Option<String>,
    sni: Option<String>,
    http2: Option<bool>,
    preserve_host: Option<bool>,
    strip_headers: Option<Vec<String>>,
    headers: Option<BTreeMap<String, String>>,
    basic_auth: Option<RawBasicAuth>,
    api_key: Option<RawApiKey>,
    identity_assertion: Option<RawAssertion>,
    max_header_bytes: Option<u64>,
    idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    response_header_timeout: Option<String>,
    audit_query: Option<bool>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasicAuth {
    user: String,
    password_secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiKey {
    header: String,
    secret: String,
    #[serde(default)]
    prefix: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAssertion {
    header: Option<String>,
    ttl: Option<String>,
    audience: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    #[serde(default)]
    methods: Vec<String>,
    paths: Vec<String>,
    action: Option<String>,
    approvers_group: Option<String>,
    reuse_window: Option<String>,
    approval_timeout: Option<String>,
}

/// Validates the raw table; `whence` names it in errors.
pub(super) fn parse(table: toml::Table, whence: &str) -> Result<HttpSettings, PolicyError> {
    let raw: RawHttpSettings = super::typed(table, whence)?;
    let bad = |what: String| PolicyError::Invalid(format!("{whence}: {what}"));
    let scheme = match raw.scheme.as_deref() {
        None | Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => {
            return Err(bad(format!(
                "scheme {other:?} must be \"http\" or \"https\""
            )))
        }
    };
    let mut s = HttpSettings {
        scheme,
        ..HttpSettings::default()
    };
    if s.scheme == Scheme::Http {
        for (key, set) in [
            ("ca_file", raw.ca_file.is_some()),
            ("sni", raw.sni.is_some()),
            ("http2", raw.http2.is_some()),
        ] {
            if set {
                return Err(bad(format!("{key} needs scheme = \"https\"")));
            }
        }
    }
    if let Some(ca) = raw.ca_file {
        if ca.trim().is_empty() {
            return Err(bad("ca_file must not be empty".into()));
        }
        s.ca_file = Some(PathBuf::from(ca));
    }
    if let Some(sni) = raw.sni {
        if rustls::pki_types::ServerName::try_from(sni.as_str()).is_err() {
            return Err(bad(format!("sni {sni:?} is not a DNS name or IP address")));
        }
        s.sni = Some(sni);
    }
    s.http2 = raw.http2.unwrap_or(true);
    s.preserve_host = raw.preserve_host.unwrap_or(false);
    if let Some(list) = raw.strip_headers {
        s.strip_headers = Vec::new();
        for h in list {
            s.strip_headers
                .push(header_name(&h, "strip_headers").map_err(bad)?);
        }
    }
    let mut injected: Vec<HeaderName> = Vec::new();
    let mut claim = |name: &HeaderName, by: &str| -> Result<(), PolicyError> {
        if injected.contains(name) {
            return Err(bad(format!("header {name} is injected twice ({by})")));
        }
        injected.push(name.clone());
        Ok(())
    };
    for (name, value) in raw.headers.unwrap_or_default() {
        let h = header_name(&name, "headers").map_err(bad)?;
        let t = Template::parse(&value).map_err(|e| bad(format!("headers.{name}: {e}")))?;
        claim(&h, "headers")?;
        s.headers.push((h, t));
    }
    if let Some(b) = raw.basic_auth {
        if b.user.is_empty() || b.user.contains(':') || b.user.chars().any(char::is_control) {
            return Err(bad("basic_auth.user must be non-empty, without ':'".into()));
        }
        secret_name(&b.password_secret, "basic_auth.password_secret").map_err(bad)?;
        claim(&http::header::AUTHORIZATION, "basic_auth")?;
        s.basic_auth = Some(BasicAuth {
            user: b.user,
            password_secret: b.password_secret,
        });
    }
    if let Some(k) = raw.api_key {
        let header = header_name(&k.header, "api_key.header").map_err(bad)?;
        secret_name(&k.secret, "api_key.secret").map_err(bad)?;
        if http::HeaderValue::from_str(&k.prefix).is_err() {
            return Err(bad("api_key.prefix is not a valid header value".into()));
        }
        claim(&header, "api_key")?;
        s.api_key = Some(ApiKey {
            header,
            secret: k.secret,
            prefix: k.prefix,
        });
    }
    if let Some(a) = raw.identity_assertion {
        let header = match a.header {
            Some(h) => header_name(&h, "identity_assertion.header").map_err(bad)?,
            None => HeaderName::from_static(DEFAULT_ASSERTION_HEADER),
        };
        claim(&header, "identity_assertion")?;
        let ttl = match a.ttl {
            Some(t) => duration(&t, "identity_assertion.ttl").map_err(bad)?,
            None => DEFAULT_ASSERTION_TTL,
        };
        if ttl < Duration::from_secs(5) || ttl > Duration::from_secs(3600) {
            return Err(bad(
                "identity_assertion.ttl must be between 5s and 1h".into()
            ));
        }
        if a.audience.as_deref().is_some_and(str::is_empty) {
            return Err(bad("identity_assertion.audience must not be empty".into()));
        }
        s.identity_assertion = Some(AssertionSettings {
            header,
            ttl,
            audience: a.audience,
        });
    }
    if let Some(n) = raw.max_header_bytes {
        if !(1024..=1024 * 1024).contains(&n) {
            return Err(bad(format!(
                "max_header_bytes {n} must be between 1024 and 1048576"
            )));
        }
        s.max_header_bytes = n as usize;
    }
    if let Some(t) = raw.idle_timeout {
        s.idle_timeout = duration(&t, "idle_timeout").map_err(bad)?;
    }
    if let Some(t) = raw.connect_timeout {
        s.connect_timeout = Some(duration(&t, "connect_timeout").map_err(bad)?);
    }
    if let Some(t) = raw.response_header_timeout {
        s.response_header_timeout = duration(&t, "response_header_timeout").map_err(bad)?;
    }
    s.audit_query = raw.audit_query.unwrap_or(false);
    for (i, r) in raw.rules.into_iter().enumerate() {
        let rule = rule(r, i).map_err(bad)?;
        if s.rules.iter().any(|o| o.name == rule.name) {
            return Err(bad(format!(
                "rules: the name {:?} is used twice",
                rule.name
            )));
        }
        s.rules.push(rule);
    }
    Ok(s)
}

fn rule(r: RawRule, i: usize) -> Result<HttpRule, String> {
    let at = format!("rules[{i}]");
    let name_ok = !r.name.is_empty()
        && r.name.len() <= 64
        && r.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if !name_ok {
        return Err(format!(
            "{at}.name {:?} must be 1-64 characters of [A-Za-z0-9-_.]",
            r.name
        ));
    }
    let mut methods = Vec::new();
    for m in &r.methods {
        let upper = m.to_ascii_uppercase();
        let method = Method::from_bytes(upper.as_bytes())
            .map_err(|_| format!("{at}.methods: {m:?} is not an HTTP method"))?;
        methods.push(method);
    }
    if r.paths.is_empty() {
        return Err(format!("{at}.paths must list at least one glob"));
    }
    let mut paths = Vec::new();
    for p in &r.paths {
        paths.push(Glob::new(p).map_err(|e| format!("{at}.paths: {e}"))?);
    }
    let action = match r.action.as_deref() {
        None | Some("deny") => {
            if r.approvers_group.is_some()
                || r.reuse_window.is_some()
                || r.approval_timeout.is_some()
            {
                return Err(format!(
                    "{at}: approvers_group, reuse_window and approval_timeout need action = \"require_approval\""
                ));
            }
            RuleAction::Deny
        }
        Some("require_approval") => {
            let group = r.approvers_group.unwrap_or_default();
            if group.trim().is_empty() || group.len() > 512 {
                return Err(format!(
                    "{at}.approvers_group is required for require_approval (1-512 characters)"
                ));
            }
            let reuse_window = match r.reuse_window {
                Some(t) => duration(&t, &format!("{at}.reuse_window"))?,
                None => DEFAULT_REUSE_WINDOW,
            };
            let timeout = match r.approval_timeout {
                Some(t) => duration(&t, &format!("{at}.approval_timeout"))?,
                None => Duration::from_secs(600),
            };
            RuleAction::RequireApproval(ApprovalSettings {
                approvers_group: group,
                reuse_window,
                timeout,
            })
        }
        Some(other) => {
            return Err(format!(
                "{at}.action {other:?} must be \"deny\" or \"require_approval\""
            ))
        }
    };
    Ok(HttpRule {
        name: r.name,
        methods,
        paths,
        action,
    })
}

/// A header name the policy may use (lower-cased; the gateway's own refused).
fn header_name(name: &str, key: &str) -> Result<HeaderName, String> {
    let h = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("{key}: {name:?} is not a valid header name"))?;
    if RESERVED.contains(&h.as_str()) {
        return Err(format!(
            "{key}: header {h} is managed by the gateway and cannot be configured"
        ));
    }
    Ok(h)
}

/// A secret name as the store spells them: `[A-Za-z0-9_]+`.
pub fn secret_name(name: &str, key: &str) -> Result<(), String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "{key}: secret name {name:?} must match [A-Za-z0-9_]+"
        ));
    }
    Ok(())
}

fn duration(text: &str, key: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("{key} {text:?} is not a duration (\"30s\", \"5m\"): {e}"))?;
    if d.is_zero() || d > Duration::from_secs(24 * 3600) {
        return Err(format!("{key} {text:?} must be between 1ms and 24h"));
    }
    Ok(d)
}
