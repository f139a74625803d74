//! The CLIs as operators and engineers use them: `appliance token issue`,
//! `appliance audit list`, `tunnel-lite login` (device flow, ID token file,
//! session token file), `tunnel-lite status`, `tunnel-lite dns-setup`.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::appliance::{tcp_connection, ApplianceFixture};
use e2e::oidc::{OidcProvider, OidcSettings};
use e2e::{bin, run};
use tokio::io::AsyncBufReadExt;

/// A policy whose identity section trusts the fixture IdP (JWKS by URL) and
/// offers the device flow.
fn idp_policy(idp: &OidcProvider, version: u64, connections: &str) -> String {
    let flow = idp.device_flow_info();
    format!(
        r#"version = {version}

[identity]
issuer = "{issuer}"
audience = "appliance"
jwks_url = "{jwks}"
session_ttl = "2h"

[identity.device_flow]
client_id = "{client}"
device_authorization_endpoint = "{dev}"
token_endpoint = "{tok}"

{connections}
"#,
        issuer = idp.issuer(),
        jwks = idp.url("/jwks"),
        client = flow.client_id,
        dev = flow.device_authorization_endpoint,
        tok = flow.token_endpoint,
    )
}

fn tl(dir: &std::path::Path) -> Command {
    let mut c = Command::new(bin("tunnel-lite"));
    c.arg("--config-dir").arg(dir);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_flow_login_end_to_end() {
    let idp = OidcProvider::start(OidcSettings::default()).await.unwrap();
    let app = ApplianceFixture::start(&idp_policy(
        &idp,
        1,
        &tcp_connection("db", "127.0.0.1:5432", &[5432], &[], &["dev"]),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(bin("tunnel-lite"))
        .arg("--config-dir")
        .arg(dir.path())
        .args([
            "login",
            "--appliance",
            &app.addr.to_string(),
            "--fingerprint",
            &app.fingerprint,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read the prompt the person would see, then approve as the IdP would.
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let code = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(code) = line.strip_prefix("and confirm the code: ") {
                return code.trim().to_string();
            }
        }
        panic!("tunnel-lite login printed no code");
    })
    .await
    .expect("prompt within 10 s");
    idp.approve(&code, "alice@example.com", &["dev", "oncall"])
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(15), child.wait_with_output())
        .await
        .expect("login finishes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout.contains("logged in as alice@example.com (groups: dev, oncall)"),
        "{stdout}"
    );
    assert!(stdout.contains("1 connection(s) available"), "{stdout}");

    // The state file is private and `status` shows the person and the names.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("state.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let status = run(tl(dir.path()).arg("status"), true);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("alice@example.com")
            && text.contains("db.hoop")
            && text.contains("reachable:   yes"),
        "{text}"
    );

    let logins = app.audit(Some(appliance::audit::AuditKind::Login)).await;
    assert_eq!(logins.len(), 1);
    assert_eq!(
        logins[0].record.groups,
        vec!["dev".to_string(), "oncall".to_string()]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn id_token_file_login_and_refused_tokens() {
    let idp = OidcProvider::start(OidcSettings::default()).await.unwrap();
    let app = ApplianceFixture::start(&idp_policy(
        &idp,
        1,
        &tcp_connection("db", "127.0.0.1:5432", &[5432], &["bob@example.com"], &[]),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let login = |token: &str| {
        let f = dir.path().join("id_token");
        std::fs::write(&f, token).unwrap();
        run(
            tl(dir.path())
                .args([
                    "login",
                    "--appliance",
                    &app.addr.to_string(),
                    "--fingerprint",
                    &app.fingerprint,
                ])
                .arg("--id-token-file")
                .arg(&f),
            false,
        )
    };
    let ok = login(&idp.mint_id_token("bob@example.com", &[], Duration::from_secs(600)));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let wrong_aud = idp.mint_with(
        serde_json::json!({"iss": idp.issuer(), "aud": "someone-else", "sub": "bob", "email": "bob@example.com",
                           "iat": now, "exp": now + 600}),
        jsonwebtoken::Algorithm::RS256,
    );
    let out = login(&wrong_aud);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("aud"), "{err}");

    let expired = idp.mint_with(
        serde_json::json!({"iss": idp.issuer(), "aud": "appliance", "sub": "bob", "email": "bob@example.com",
                           "iat": now - 7200, "exp": now - 3600}),
        jsonwebtoken::Algorithm::RS256,
    );
    let out = login(&expired);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"));

    let refused = app
        .audit(Some(appliance::audit::AuditKind::LoginRefused))
        .await;
    assert_eq!(refused.len(), 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_and_audit_list() {
    let app = ApplianceFixture::start(&e2e::appliance::policy_with(
        1,
        &tcp_connection("db", "127.0.0.1:1", &[1], &[], &["ops"]),
    ))
    .await;
    let out = app.cli(&[
        "token", "issue", "--user", "hank", "--groups", "ops,dev", "--ttl", "10m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();

    // The CLI-minted token is accepted by the running appliance (same key).
    let dir = e2e::tunnel::login_with_token(&app, &token);
    let status = run(tl(dir.path()).arg("status"), true);
    assert!(String::from_utf8_lossy(&status.stdout).contains("hank (groups: ops, dev)"));

    let out = app.cli(&["audit", "list", "--json", "--user", "hank"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        lines.iter().any(
            |r| r["kind"] == "token_issued" && r["groups"] == serde_json::json!(["ops", "dev"])
        ),
        "{lines:?}"
    );

    let out = app.cli(&["audit", "list", "--since", "1h"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("policy_loaded") && table.contains("token_issued") && table.contains("hank"),
        "{table}"
    );

    let bad = app.cli(&["audit", "list", "--kind", "nonsense"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown --kind"));
    app.stop().await;
}

#[test]
fn dns_setup_prints_and_applies_under_a_root() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        tl(dir.path()).args(["dns-setup", "--dns-listen", "127.77.0.53:53"]),
        true,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Domains=~hoop") && text.contains("dry run"),
        "{text}"
    );

    // Applying under a temp root writes the resolved drop-in and grants the
    // low-port capability to (a copy of) the binary, and nothing more.
    let root = tempfile::tempdir().unwrap();
    let copy = root.path().join("tunnel-lite");
    std::fs::copy(bin("tunnel-lite"), &copy).unwrap();
    let out = run(
        tl(dir.path())
            .args([
                "dns-setup",
                "--apply",
                "--dns-listen",
                "127.77.0.53:53",
                "--root",
            ])
            .arg(root.path())
            .arg("--binary")
            .arg(&copy),
        true,
    );
    let conf =
        std::fs::read_to_string(root.path().join("etc/systemd/resolved.conf.d/hoop.conf")).unwrap();
    assert_eq!(
        conf,
        "[Resolve]\nDNS=127.77.0.53\nDomains=~hoop\n",
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let caps = run(Command::new("getcap").arg(&copy), true);
    assert!(String::from_utf8_lossy(&caps.stdout).contains("cap_net_bind_service=ep"));
}
