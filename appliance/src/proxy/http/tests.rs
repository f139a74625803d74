//! `[connection.http]` settings through the real policy parser; the codecs
//! and decisions have their tests beside them.

use std::time::Duration;

use http::Method;

use crate::policy::kinds::http::{
    ApprovalSettings, HttpSettings, RuleAction, Scheme, DEFAULT_STRIP_HEADERS,
};
use crate::policy::{parse_policy, KindSettings, PolicyError};

fn policy(http: &str) -> String {
    format!(
        r#"version = 1
[identity]
issuer = "https://idp.test"
audience = "appliance"
jwks = '{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"test"}}]}}'

[[connection]]
name = "grafana"
kind = "http"
upstream = "127.0.0.1:3000"
allow_groups = ["*"]

{http}
"#
    )
}

fn settings(http: &str) -> Result<HttpSettings, PolicyError> {
    let p = parse_policy(&policy(http))?;
    match &p.connections[0].settings {
        KindSettings::Http(s) => Ok(s.clone()),
        other => panic!("not http settings: {other:?}"),
    }
}

fn error(http: &str) -> String {
    settings(http).unwrap_err().to_string()
}

#[test]
fn defaults_without_a_table() {
    let s = settings("").unwrap();
    assert_eq!(s, HttpSettings::default());
    assert_eq!(s.scheme, Scheme::Http);
    let strip: Vec<&str> = s.strip_headers.iter().map(|h| h.as_str()).collect();
    assert_eq!(strip, DEFAULT_STRIP_HEADERS);
    assert!(s.http2 && !s.preserve_host && !s.audit_query);
}

#[test]
fn every_setting_parses() {
    let s = settings(
        r#"
[connection.http]
scheme = "https"
ca_file = "/etc/appliance/grafana-ca.pem"
sni = "grafana.internal.example.com"
http2 = false
preserve_host = true
strip_headers = ["Authorization", "Cookie", "X-Debug"]
max_header_bytes = 32768
idle_timeout = "2m"
connect_timeout = "3s"
response_header_timeout = "45s"
audit_query = true

[connection.http.headers]
X-Grafana-Org-Id = "1"
X-Token = "Token ${secret:grafana_token}"

[connection.http.api_key]
header = "X-API-Key"
secret = "grafana_api_key"

[connection.http.identity_assertion]
header = "X-Hoop-User"
ttl = "2m"
audience = "grafana-prod"

[[connection.http.rules]]
name = "no-admin"
paths = ["/api/admin/**"]

[[connection.http.rules]]
name = "read-only-dashboards"
methods = ["post", "PUT", "DELETE"]
paths = ["/api/dashboards/**", "/api/folders/*"]
action = "deny"

[[connection.http.rules]]
name = "hold-deploys"
methods = ["POST"]
paths = ["/api/deploy/**"]
action = "require_approval"
approvers_group = "release-managers"
reuse_window = "30m"
approval_timeout = "5m"
"#,
    )
    .unwrap();
    assert_eq!(s.scheme, Scheme::Https);
    assert_eq!(s.sni.as_deref(), Some("grafana.internal.example.com"));
    assert!(!s.http2 && s.preserve_host && s.audit_query);
    assert_eq!(s.strip_headers.len(), 3);
    assert_eq!(s.strip_headers[2], "x-debug");
    assert_eq!(s.max_header_bytes, 32768);
    assert_eq!(s.idle_timeout, Duration::from_secs(120));
    assert_eq!(s.connect_timeout, Some(Duration::from_secs(3)));
    assert_eq!(s.response_header_timeout, Duration::from_secs(45));
    assert_eq!(s.headers.len(), 2);
    assert_eq!(
        s.headers[1].1.secrets().collect::<Vec<_>>(),
        vec!["grafana_token"]
    );
    assert_eq!(s.api_key.as_ref().unwrap().header, "x-api-key");
    let a = s.identity_assertion.as_ref().unwrap();
    assert_eq!(a.header, "x-hoop-user");
    assert_eq!(a.ttl, Duration::from_secs(120));
    assert_eq!(s.rules.len(), 3);
    assert_eq!(
        s.rules[2].action,
        RuleAction::RequireApproval(ApprovalSettings {
            approvers_group: "release-managers".into(),
            reuse_window: Duration::from_secs(1800),
            timeout: Duration::from_secs(300),
        })
    );
    assert_eq!(
        s.rules[1].methods,
        vec![Method::POST, Method::PUT, Method::DELETE]
    );
    assert_eq!(s.rules[1].action, RuleAction::Deny);
    assert!(s.rules[0].methods.is_empty());
}

#[test]
fn refusals_name_the_key() {
    let cases = [
        ("[connection.http]\nscheme = \"ftp\"", "scheme \"ftp\""),
        ("[connection.http]\nca_file = \"/x\"", "ca_file needs scheme = \"https\""),
        ("[connection.http]\nbogus = 1", "bogus"),
        ("[connection.http]\nmax_header_bytes = 10", "max_header_bytes 10"),
        ("[connection.http]\nidle_timeout = \"soon\"", "idle_timeout \"soon\""),
        ("[connection.http]\nstrip_headers = [\"Host\"]", "managed by the gateway"),
        ("[connection.http.headers]\n\"X-Forwarded-For\" = \"x\"", "managed by the gateway"),
        ("[connection.http.headers]\nX-A = \"${secret:bad-name}\"", "headers.X-A"),
        ("[connection.http.headers]\nX-A = \"${env:HOME}\"", "not a secret reference"),
        (
            "[connection.http.headers]\nAuthorization = \"Bearer ${secret:t}\"\n[connection.http.basic_auth]\nuser = \"u\"\npassword_secret = \"p\"",
            "injected twice",
        ),
        ("[connection.http.identity_assertion]\nttl = \"1s\"", "between 5s and 1h"),
        ("[[connection.http.rules]]\nname = \"r\"\npaths = []", "at least one glob"),
        ("[[connection.http.rules]]\nname = \"r\"\npaths = [\"api/*\"]", "must start with '/'"),
        ("[[connection.http.rules]]\nname = \"r\"\nmethods = [\"G T\"]\npaths = [\"/\"]", "not an HTTP method"),
        (
            "[[connection.http.rules]]\nname = \"r\"\npaths = [\"/\"]\n[[connection.http.rules]]\nname = \"r\"\npaths = [\"/x\"]",
            "used twice",
        ),
        (
            "[[connection.http.rules]]\nname = \"hold\"\npaths = [\"/\"]\naction = \"require_approval\"",
            "approvers_group is required",
        ),
        (
            "[[connection.http.rules]]\nname = \"d\"\npaths = [\"/\"]\napprovers_group = \"x\"",
            "need action = \"require_approval\"",
        ),
        (
            "[[connection.http.rules]]\nname = \"d\"\npaths = [\"/\"]\naction = \"maybe\"",
            "must be \"deny\" or \"require_approval\"",
        ),
    ];
    for (http, want) in cases {
        let e = error(http);
        assert!(e.contains(want), "{http:?}: {e}");
        assert!(e.contains("connection \"grafana\""), "{http:?}: {e}");
    }
}

#[test]
fn http_table_on_another_kind_is_refused() {
    let text = policy("[connection.http]\npreserve_host = true")
        .replace("kind = \"http\"", "kind = \"tcp\"\nports = [1]");
    let e = parse_policy(&text).unwrap_err().to_string();
    assert!(
        e.contains("[connection.http] settings given for a connection of kind \"tcp\""),
        "{e}"
    );
}
