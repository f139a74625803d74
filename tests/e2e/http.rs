//! The HTTP gateway end to end: real curl, a real WebSocket client and a
//! raw TCP client through `tunnel-lite up` and the appliance to a real nginx
//! and a small hyper app (`e2e::http_upstream`): methods, streamed 200 MiB
//! bodies both ways, keep-alive, HTTP/1.0, credential injection with client
//! headers stripped, the identity assertion checked against the published
//! JWKS, deny rules, upstream failures and timeouts with their reasons,
//! HTTPS + HTTP/2 upstreams, malformed requests, and revocation closing live
//! HTTP and WebSocket sessions.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use appliance::audit::{AuditKind, StoredRecord};
use e2e::appliance::{policy_with, ApplianceFixture};
use e2e::http_upstream::{self, Nginx, UpstreamApp};
use e2e::tunnel::TunnelLite;
use e2e::unique_name;

mod approval;
mod limits;
mod live;
mod upstreams;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

pub(crate) const HOUR: Duration = Duration::from_secs(3600);
const APP_TOKEN: &str = "tok-4f1d-SECRET-app";
const ORG_KEY: &str = "key-9a7e-SECRET-org";

/// A `kind = "http"` connection for `users`; `extra` follows (secrets,
/// `[connection.http]` tables).
pub(crate) fn http_connection(name: &str, upstream: &str, users: &[&str], extra: &str) -> String {
    let users: Vec<String> = users.iter().map(|u| format!("{u:?}")).collect();
    format!(
        "[[connection]]\nname = {name:?}\nkind = \"http\"\nupstream = {upstream:?}\nallow_users = [{}]\n\n{extra}\n\n",
        users.join(", ")
    )
}

/// Appliance (with secrets), tunnel-lite logged in as `user`, listening for `names`.
pub(crate) async fn start(
    connections: &str,
    user: &str,
    names: &[&str],
) -> (ApplianceFixture, TunnelLite, HashMap<String, SocketAddr>) {
    let app = ApplianceFixture::start_with_secrets(
        &policy_with(1, connections),
        &[("app_token", APP_TOKEN), ("org_key", ORG_KEY)],
    )
    .await;
    let tl = TunnelLite::start(&app, &app.token(user, &["dev"], HOUR)).await;
    let mut at = HashMap::new();
    for n in names {
        at.insert(n.to_string(), tl.wait_listening(n, 80).await);
    }
    (app, tl, at)
}

pub(crate) struct Reply {
    pub status: u16,
    pub body: String,
    pub stderr: String,
}

/// curl `http://NAME.hoop/PATH` through the tunnel-lite address `at`.
pub(crate) fn curl(at: SocketAddr, name: &str, path: &str, args: &[&str]) -> Reply {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "90", "-w", "\n%{http_code}"])
        .arg("--resolve")
        .arg(format!("{name}.hoop:80:{}", at.ip()))
        .args(args)
        .arg(format!("http://{name}.hoop{path}"))
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    Reply {
        status: code.trim().parse().unwrap_or(0),
        body: body.to_string(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub(crate) fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

pub(crate) async fn http_records(app: &ApplianceFixture, name: &str) -> Vec<StoredRecord> {
    app.audit(Some(AuditKind::HttpRequest))
        .await
        .into_iter()
        .filter(|r| r.record.connection.as_deref() == Some(name))
        .collect()
}

/// Checks the identity assertion with the JWKS fetched from the appliance's API.
async fn verify_assertion(
    app: &ApplianceFixture,
    token: &str,
    audience: &str,
) -> serde_json::Value {
    let trust = tunnel_lite::tls::Trust::Pinned(
        tunnel_lite::tls::parse_fingerprint(&app.fingerprint).expect("fingerprint"),
    );
    let tls = tunnel_lite::tls::client_config(&trust, b"http/1.1").expect("tls config");
    let url = format!("https://{}/.well-known/jwks.json", app.addr);
    let resp =
        tunnel_lite::http::request("GET", &url, &[], None, Some(tls), Duration::from_secs(5))
            .await
            .expect("GET jwks");
    assert_eq!(resp.status, 200);
    let jwks: jsonwebtoken::jwk::JwkSet = resp.json().expect("JWK set");
    let kid = jsonwebtoken::decode_header(token)
        .expect("JWT header")
        .kid
        .expect("kid");
    let jwk = jwks
        .find(&kid)
        .expect("assertion key published in the JWKS");
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("decoding key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    v.set_audience(&[audience]);
    v.set_issuer(&["appliance"]);
    v.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &v)
        .expect("assertion verifies with the published JWKS")
        .claims
}

/// Waits (at most 3 s) until the peer closes `s`.
pub(crate) async fn closed(s: &mut TcpStream) -> Result<(), tokio::time::error::Elapsed> {
    let fut = async move {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(3), fut).await
}

/// Reads one HTTP/1.x response (Content-Length framed); returns head and body.
pub(crate) async fn read_response(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return (head, buf[end + 4..end + 4 + len].to_vec());
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("response within 10 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_credentials_identity_and_rules() {
    let upstream = UpstreamApp::start().await;
    let up = upstream.addr.to_string();
    let name = unique_name("app");
    let nocred = unique_name("nocred");
    let conns = http_connection(
        &name,
        &up,
        &["alice@example.com"],
        r#"[connection.secrets]
token = "app_token"

[connection.http.api_key]
header = "X-Api-Key"
secret = "org_key"

[connection.http.identity_assertion]

[[connection.http.rules]]
name = "no-admin-deletes"
methods = ["DELETE"]
paths = ["/echo/admin/**"]"#,
    ) + &http_connection(
        &nocred,
        &up,
        &["alice@example.com"],
        "[connection.secrets]\ntoken = \"missing_secret\"",
    );
    let (app, tl, at) = start(&conns, "alice@example.com", &[&name, &nocred]).await;
    let at_app = at[&name];
    let mut seen = String::new();

    // GET with a forged Authorization and a Cookie: both stripped; the
    // appliance's credentials and assertion arrive instead.
    let r = curl(
        at_app,
        &name,
        "/echo/get?x=1",
        &[
            "-v",
            "-H",
            "Authorization: Bearer forged",
            "-H",
            "Cookie: s=1",
            "-H",
            "X-Api-Key: forged",
        ],
    );
    seen += &(r.body.clone() + &r.stderr);
    assert_eq!(r.status, 200, "{}", r.stderr);
    let v = json(&r);
    let h = &v["headers"];
    let hash = |s: &str| format!("sha256:{}", http_upstream::sha256_hex(s.as_bytes()));
    assert_eq!(
        h["authorization"],
        serde_json::json!([hash(&format!("Bearer {APP_TOKEN}"))])
    );
    assert_eq!(h["x-api-key"], serde_json::json!([hash(ORG_KEY)]));
    assert!(
        h.get("cookie").is_none(),
        "cookie reached the upstream: {h}"
    );
    assert_eq!(h["host"][0], up);
    assert_eq!(h["x-forwarded-host"][0], format!("{name}.hoop"));
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(v["query"], "x=1");
    let jwt = h["x-appliance-identity"][0]
        .as_str()
        .expect("assertion header");
    let claims = verify_assertion(&app, jwt, &name).await;
    assert_eq!(claims["sub"], "alice@example.com");
    assert_eq!(claims["groups"], serde_json::json!(["dev"]));
    assert_eq!(claims["connection"], name.as_str());

    // POST, PUT with Expect: 100-continue, chunked upload, DELETE.
    let r = curl(
        at_app,
        &name,
        "/echo/post",
        &["--data-binary", "hello", "-H", "Content-Type: text/plain"],
    );
    assert_eq!((r.status, json(&r)["method"].as_str()), (200, Some("POST")));
    assert_eq!(json(&r)["body_bytes"], 5);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("two-mb.bin");
    let sha = http_upstream::write_pattern_file(&file, 2 << 20);
    let f = file.to_str().expect("path");
    let r = curl(
        at_app,
        &name,
        "/echo/put",
        &["-T", f, "-H", "Expect: 100-continue", "-v"],
    );
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert!(r.stderr.contains("HTTP/1.1 100 Continue"), "{}", r.stderr);
    assert_eq!(json(&r)["method"], "PUT");
    assert_eq!(json(&r)["body_sha256"], sha.as_str());
    let r = curl(
        at_app,
        &name,
        "/echo/chunked",
        &[
            "--data-binary",
            &format!("@{f}"),
            "-H",
            "Transfer-Encoding: chunked",
        ],
    );
    assert_eq!(json(&r)["body_sha256"], sha.as_str());
    let r = curl(at_app, &name, "/echo/thing/7", &["-X", "DELETE"]);
    assert_eq!(
        (r.status, json(&r)["method"].as_str()),
        (200, Some("DELETE"))
    );
    let r = curl(at_app, &name, "/echo/ten", &["--http1.0"]);
    assert_eq!((r.status, json(&r)["method"].as_str()), (200, Some("GET")));

    // A deny rule: 403 naming the rule, text or JSON per Accept; normalized paths too.
    let r = curl(at_app, &name, "/echo/admin/users", &["-X", "DELETE"]);
    seen += &r.body;
    assert_eq!(r.status, 403);
    assert!(
        r.body.contains("denied by rule \"no-admin-deletes\""),
        "{}",
        r.body
    );
    let r = curl(
        at_app,
        &name,
        "/echo//admin/./x/../users",
        &[
            "-X",
            "DELETE",
            "--path-as-is",
            "-H",
            "Accept: application/json",
        ],
    );
    assert_eq!(r.status, 403);
    assert_eq!(json(&r)["error"], "denied");

    // A credential the store lacks: 500 naming the secret, not a value.
    let r = curl(at[&nocred], &nocred, "/echo/x", &[]);
    seen += &r.body;
    assert_eq!(r.status, 500);
    assert!(
        r.body.contains("no secret named \"missing_secret\""),
        "{}",
        r.body
    );

    // One audit record per request, with method, path (no query), status, bytes.
    assert!(e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await);
    let recs = http_records(&app, &name).await;
    let find = |method: &str, path: &str| {
        recs.iter()
            .find(|r| {
                let d = r.record.detail.as_ref().expect("detail");
                d["method"] == method && d["path"] == path
            })
            .unwrap_or_else(|| panic!("no record of {method} {path}: {recs:#?}"))
    };
    let get = find("GET", "/echo/get");
    assert_eq!(get.record.user.as_deref(), Some("alice@example.com"));
    assert_eq!(get.record.detail.as_ref().expect("detail")["status"], 200);
    assert!(get.record.bytes_down.unwrap_or(0) > 100);
    assert_eq!(find("POST", "/echo/post").record.bytes_up, Some(5));
    assert_eq!(find("PUT", "/echo/put").record.bytes_up, Some(2 << 20));
    let denied = find("DELETE", "/echo/admin/users");
    assert_eq!(denied.record.outcome.as_deref(), Some("denied"));
    assert_eq!(
        denied.record.detail.as_ref().expect("detail")["rule"],
        "no-admin-deletes"
    );
    assert_eq!(recs.len(), 8, "{recs:#?}");

    // The secrets never reached the client, the audit trail or tunnel-lite's log.
    let all = serde_json::to_string(
        &app.audit(None)
            .await
            .iter()
            .map(|r| &r.record)
            .collect::<Vec<_>>(),
    )
    .expect("json");
    for secret in [APP_TOKEN, ORG_KEY] {
        assert!(!seen.contains(secret), "secret in a response");
        assert!(!all.contains(secret), "secret in the audit trail");
        assert!(!tl.log().contains(secret), "secret in tunnel-lite's log");
    }
    tl.stop().await;
    app.stop().await;
}

/// Peak resident memory of this process (the appliance runs in it).
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    const SIZE: u64 = 200 << 20;
    let upstream = UpstreamApp::start().await;
    let nginx = Nginx::start(None).await;
    let big = nginx.www.join("files/big.bin");
    let sha = http_upstream::write_pattern_file(&big, SIZE);
    let (app_name, ngx_name) = (unique_name("up"), unique_name("ngx"));
    let conns = http_connection(&app_name, &upstream.addr.to_string(), &["bo"], "")
        + &http_connection(&ngx_name, &nginx.addr.to_string(), &["bo"], "");
    let (app, tl, at) = start(&conns, "bo", &[&app_name, &ngx_name]).await;
    let before = vm_hwm_kib();

    // Upload 200 MiB (streamed into the app's hash).
    let path = big.to_str().expect("path");
    let r = curl(at[&app_name], &app_name, "/echo/upload", &["-T", path]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    assert_eq!(json(&r)["body_bytes"], SIZE);
    assert_eq!(json(&r)["body_sha256"], sha.as_str());

    // Download 200 MiB from nginx (Content-Length) and from the app (chunked).
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, path) in [
        (&ngx_name, "/files/big.bin".to_string()),
        (&app_name, format!("/download?bytes={SIZE}")),
    ] {
        let out = dir.path().join("download.bin");
        let o = out.to_str().expect("path");
        let r = curl(at[name.as_str()], name, &path, &["-o", o]);
        assert_eq!(r.status, 200, "{}", r.stderr);
        assert_eq!(std::fs::metadata(&out).expect("download").len(), SIZE);
        assert_eq!(
            http_upstream::file_sha256(&out),
            sha,
            "download from {name}"
        );
    }
    // Nothing held a whole body: this process's peak memory barely moved.
    let grew_mib = vm_hwm_kib().saturating_sub(before) / 1024;
    assert!(grew_mib < 100, "peak memory grew by {grew_mib} MiB");
    // Completion records are written as each response finishes, possibly
    // just after curl returned: wait for the sessions to end first.
    assert!(e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await);
    let recs = http_records(&app, &app_name).await;
    assert!(recs.iter().any(|r| r.record.bytes_up == Some(SIZE)));
    assert!(recs.iter().any(|r| r.record.bytes_down == Some(SIZE)));
    tl.stop().await;
    app.stop().await;
    nginx.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_audit_records_a_request_before_it_is_forwarded() {
    let app_upstream = UpstreamApp::start().await;
    let name = unique_name("strict");
    let conns = http_connection(
        &name,
        &app_upstream.addr.to_string(),
        &["alice@example.com"],
        "",
    ) + "\n[audit]\nmode = \"strict\"\n";
    let (app, tl, at) = start(&conns, "alice@example.com", &[&name]).await;
    let r = curl(at[&name], &name, "/echo", &[]);
    assert_eq!(r.status, 200, "{}", r.stderr);
    // The "forwarded" record is durable before the request left; the
    // completion record is written once the response has gone out, which can
    // be just after curl returns, so wait for it.
    let mut outcomes: Vec<String> = Vec::new();
    for _ in 0..200 {
        outcomes = http_records(&app, &name)
            .await
            .iter()
            .filter_map(|r| r.record.outcome.clone())
            .collect();
        if outcomes.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(outcomes, vec!["forwarded".to_string(), "ok".to_string()]);
    tl.stop().await;
    app.stop().await;
}
