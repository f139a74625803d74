//! The tunnel end to end: real psql and ssh through tunnel-lite and the
//! appliance (`kind = "tcp"`), refusals with their exact reasons, revocation
//! closing a live session, and malformed headers.

use std::process::Command;
use std::time::{Duration, Instant};

use e2e::appliance::{policy_with, tcp_connection, ApplianceFixture};
use e2e::postgres::{Postgres, PASSWORD, SUPERUSER};
use e2e::sshd::Sshd;
use e2e::tunnel::TunnelLite;
use e2e::{run, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lite::client::{ApplianceClient, ClientError};
use tunnel_lite::tls::{parse_fingerprint, Trust};
use tunnel_lite::wire::Status;

const HOUR: Duration = Duration::from_secs(3600);

fn client_for(app: &ApplianceFixture) -> ApplianceClient {
    let trust = Trust::Pinned(parse_fingerprint(&app.fingerprint).unwrap());
    ApplianceClient::new(&app.addr.to_string(), &trust).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_ssh_through_the_hoop_names() {
    let pg = Postgres::start();
    let sshd = Sshd::start().await.unwrap();
    let pg_name = unique_name("pg");
    let ssh_name = unique_name("web");
    let policy = policy_with(
        1,
        &(tcp_connection(&pg_name, &pg.addr(), &[5432], &[], &["dev"])
            + &tcp_connection(&ssh_name, &sshd.addr(), &[22], &["alice@example.com"], &[])),
    );
    let app = ApplianceFixture::start(&policy).await;
    let token = app.token("alice@example.com", &["dev"], HOUR);
    let tl = TunnelLite::start(&app, &token).await;

    // DNS answers the name with the address tunnel-lite listens on.
    let pg_at = tl.wait_listening(&pg_name, 5432).await;
    let out = run(
        Command::new("dig")
            .args([
                "+short",
                "+tries=1",
                "+time=2",
                "-p",
                &tl.dns.port().to_string(),
                "@127.0.0.1",
            ])
            .arg(format!("{pg_name}.hoop")),
        true,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        pg_at.ip().to_string()
    );

    // Real psql, with the PostgreSQL password (kind = "tcp" relays bytes as they are).
    let out = run(
        Command::new("psql")
            .env("PGPASSWORD", PASSWORD)
            .arg(format!(
                "host={pg_name}.hoop hostaddr={} port=5432 user={SUPERUSER} dbname=postgres",
                pg_at.ip()
            ))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", "select 40 + 2", "-c", "select current_user"]),
        true,
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("42\n{SUPERUSER}")
    );

    // Real ssh to the real sshd through the tunnel.
    let ssh_at = tl.wait_listening(&ssh_name, 22).await;
    let me = String::from_utf8(run(&mut Command::new("whoami"), true).stdout).unwrap();
    let out = run(
        Command::new("ssh")
            .args(sshd.ssh_args())
            .args(["-p", "22"])
            .arg(format!("{}@{}", me.trim(), ssh_at.ip()))
            .arg("echo hello-through-the-tunnel; exit 3"),
        false,
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "ssh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-through-the-tunnel"
    );

    // Both sessions are in the audit trail under the person's name, with bytes.
    assert!(
        e2e::eventually(Duration::from_secs(5), || app.live_sessions() == 0).await,
        "sessions did not end"
    );
    let ends = app
        .audit(Some(appliance::audit::AuditKind::SessionEnd))
        .await;
    for name in [&pg_name, &ssh_name] {
        // The busiest session of that connection (the fixture's readiness
        // probes open empty ones).
        let r = ends
            .iter()
            .filter(|r| r.record.connection.as_deref() == Some(name.as_str()))
            .max_by_key(|r| r.record.bytes_down)
            .unwrap_or_else(|| panic!("no session_end for {name}: {ends:?}"));
        assert_eq!(r.record.user.as_deref(), Some("alice@example.com"));
        assert!(r.record.bytes_up.unwrap() > 0 && r.record.bytes_down.unwrap() > 0);
        assert!(r.record.client_addr.is_some());
    }
    tl.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_carry_the_exact_reason() {
    let upstream = e2e::echo_upstream().await;
    let closed_port = e2e::free_port();
    let policy = policy_with(
        7,
        &(tcp_connection("db", &upstream.to_string(), &[5432], &[], &["dba"])
            + &tcp_connection(
                "gone",
                &format!("127.0.0.1:{closed_port}"),
                &[9],
                &[],
                &["dba"],
            )),
    );
    let app = ApplianceFixture::start(&policy).await;
    let client = client_for(&app);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let refusal = |r: Result<_, ClientError>| match r {
        Err(ClientError::Refused { status, reason }) => (status, reason),
        Err(e) => panic!("expected a refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a tunnel"),
    };

    let good = app.token("dana", &["dba"], HOUR);
    let mut t = client
        .open_tunnel(&good, "db", 5432)
        .await
        .expect("allowed");
    t.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    t.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    let other = app.token("mallory", &["dev"], HOUR);
    let (s, reason) = refusal(client.open_tunnel(&other, "db", 5432).await);
    assert_eq!(s, Status::NotAllowed);
    assert_eq!(reason, "mallory may not use \"db\" (policy version 7)");

    let (s, reason) = refusal(client.open_tunnel(&good, "db", 5433).await);
    assert_eq!(s, Status::PortNotAllowed);
    assert_eq!(reason, "port 5433 is not allowed for \"db\"; allowed: 5432");

    let (s, reason) = refusal(client.open_tunnel(&good, "nope", 5432).await);
    assert_eq!(s, Status::UnknownTarget);
    assert!(reason.contains("no connection named \"nope\""), "{reason}");

    let (s, reason) = refusal(client.open_tunnel(&good, "gone", 9).await);
    assert_eq!(s, Status::UpstreamUnreachable);
    assert!(
        reason.contains("upstream of \"gone\" is unreachable"),
        "{reason}"
    );

    let expired = app.sign_claims(&serde_json::json!({
        "iss": "appliance", "sub": "dana", "groups": ["dba"],
        "iat": now - 7200, "exp": now - 3600, "jti": "x"
    }));
    let (s, reason) = refusal(client.open_tunnel(&expired, "db", 5432).await);
    assert_eq!(s, Status::TokenExpired);
    assert!(
        reason.contains("expired at") && reason.contains("tunnel-lite login"),
        "{reason}"
    );

    let stranger = appliance::identity::SessionSigner::ephemeral().unwrap();
    let foreign = stranger
        .issue(
            &appliance::identity::Identity {
                user: "dana".into(),
                groups: vec!["dba".into()],
            },
            HOUR,
        )
        .unwrap();
    let (s, reason) = refusal(client.open_tunnel(&foreign, "db", 5432).await);
    assert_eq!(s, Status::TokenInvalid);
    assert!(reason.contains("unknown key"), "{reason}");

    use base64::Engine;
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let none = format!(
        "{}.{}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})),
        b64(
            serde_json::json!({"iss": "appliance", "sub": "dana", "groups": ["dba"], "iat": now, "exp": now + 600, "jti": "n"})
        )
    );
    let (s, reason) = refusal(client.open_tunnel(&none, "db", 5432).await);
    assert_eq!(s, Status::TokenInvalid);
    assert!(reason.contains("none"), "{reason}");

    // Every refusal is audited with its reason.
    let refused = app
        .audit(Some(appliance::audit::AuditKind::TunnelRefused))
        .await;
    assert_eq!(refused.len(), 7, "{refused:#?}");
    assert!(refused
        .iter()
        .any(|r| r.record.user.as_deref() == Some("mallory")
            && r.record.outcome.as_deref() == Some("not allowed")));
    drop(t);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_live_sessions_within_a_second() {
    let upstream = e2e::echo_upstream().await;
    let name = unique_name("echo");
    let app = ApplianceFixture::start(&policy_with(
        1,
        &tcp_connection(
            &name,
            &upstream.to_string(),
            &[7000],
            &["erin", "frank"],
            &[],
        ),
    ))
    .await;
    let tl = TunnelLite::start(&app, &app.token("erin", &[], HOUR)).await;
    let at = tl.wait_listening(&name, 7000).await;
    let mut a = tokio::net::TcpStream::connect(at).await.unwrap();
    let mut b = tokio::net::TcpStream::connect(at).await.unwrap();
    for s in [&mut a, &mut b] {
        s.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
    }
    // Another user's session must survive.
    let client = client_for(&app);
    let mut frank = client
        .open_tunnel(&app.token("frank", &[], HOUR), &name, 7000)
        .await
        .unwrap();

    let started = Instant::now();
    let out = app.cli(&["revoke", "--user", "erin", "--reason", "left the company"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for s in [&mut a, &mut b] {
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("session still open 3 s after the revocation")
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
    let elapsed = started.elapsed();
    // The CLI process itself takes part of this; the bound is the requirement's.
    assert!(
        elapsed < Duration::from_millis(1500),
        "sessions closed after {elapsed:?}"
    );

    frank.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    frank.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");

    // New connections are refused, and tunnel-lite says why.
    let mut c = tokio::net::TcpStream::connect(at).await.unwrap();
    let mut buf = [0u8; 1];
    assert_eq!(c.read(&mut buf).await.unwrap_or(0), 0);
    assert!(
        e2e::eventually(Duration::from_secs(3), || tl
            .log()
            .contains("access for erin has been revoked"))
        .await,
        "{}",
        tl.log()
    );

    let list = app.cli(&["revoke", "--list"]);
    assert!(String::from_utf8_lossy(&list.stdout).contains("erin"));
    let ends = app
        .audit(Some(appliance::audit::AuditKind::SessionEnd))
        .await;
    assert_eq!(
        ends.iter()
            .filter(|r| r.record.reason.as_deref() == Some("identity revoked"))
            .count(),
        2
    );
    assert_eq!(
        app.audit(Some(appliance::audit::AuditKind::IdentityRevoked))
            .await
            .len(),
        1
    );

    // Undo restores access.
    assert!(app
        .cli(&["revoke", "--user", "erin", "--undo"])
        .status
        .success());
    let mut ok = false;
    for _ in 0..40 {
        if client
            .open_tunnel(&app.token("erin", &[], HOUR), &name, 7000)
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "erin still refused after --undo");
    tl.stop().await;
    app.stop().await;
}

/// A raw TLS stream to the tunnel ALPN, for sending broken headers.
async fn raw_tunnel(
    app: &ApplianceFixture,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let trust = Trust::Pinned(parse_fingerprint(&app.fingerprint).unwrap());
    let config = tunnel_lite::tls::client_config(&trust, tunnel_lite::wire::ALPN).unwrap();
    let tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap()
}

async fn read_response(s: &mut (impl AsyncReadExt + Unpin)) -> (Status, String) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let (resp, _) = tunnel_lite::wire::decode_response(&buf)
        .unwrap()
        .expect("a whole response");
    (resp.status, resp.reason.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_headers_are_refused_and_others_keep_working() {
    let upstream = e2e::echo_upstream().await;
    let app = ApplianceFixture::start(&policy_with(
        1,
        &tcp_connection("echo", &upstream.to_string(), &[1], &["gina"], &[]),
    ))
    .await;
    let token = app.token("gina", &[], HOUR);

    let mut garbage = raw_tunnel(&app).await;
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (s, reason) = read_response(&mut garbage).await;
    assert_eq!(s, Status::MalformedRequest);
    assert!(reason.contains("bad magic"), "{reason}");

    let mut oversized = raw_tunnel(&app).await;
    oversized.write_all(b"TL\x01\x00\xff\xff").await.unwrap();
    let (s, reason) = read_response(&mut oversized).await;
    assert_eq!(s, Status::MalformedRequest);
    assert!(reason.contains("65535"), "{reason}");

    let mut version = raw_tunnel(&app).await;
    version.write_all(b"TL\x07").await.unwrap();
    let (s, _) = read_response(&mut version).await;
    assert_eq!(s, Status::UnsupportedVersion);

    // Truncated: half a header, then the client goes away.
    let mut truncated = raw_tunnel(&app).await;
    truncated.write_all(b"TL\x01\x00\x00\x10abc").await.unwrap();
    truncated.shutdown().await.unwrap();
    drop(truncated);

    // Slowloris: one byte at a time, never finishing; the header timeout (2 s) ends it.
    let mut slow = raw_tunnel(&app).await;
    let slow_task = tokio::spawn(async move {
        for b in b"TL\x01\x00\x00\x40aaaaaaaaaaaaaaaa" {
            if slow.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        read_response(&mut slow).await
    });

    // Meanwhile a well-formed tunnel works.
    let client = client_for(&app);
    let mut ok = client.open_tunnel(&token, "echo", 1).await.unwrap();
    ok.write_all(b"fine").await.unwrap();
    let mut buf = [0u8; 4];
    ok.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"fine");

    let (s, reason) = slow_task.await.unwrap();
    assert_eq!(s, Status::MalformedRequest);
    assert!(reason.contains("not received within"), "{reason}");

    // And still works after all of that.
    let mut again = client.open_tunnel(&token, "echo", 1).await.unwrap();
    again.write_all(b"more").await.unwrap();
    again.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"more");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tunnels_resume_the_tls_session() {
    let upstream = e2e::echo_upstream().await;
    let app = ApplianceFixture::start(&policy_with(
        1,
        &tcp_connection("echo", &upstream.to_string(), &[1], &["ivy"], &[]),
    ))
    .await;
    let client = client_for(&app);
    let token = app.token("ivy", &[], HOUR);
    let first = client.open_tunnel(&token, "echo", 1).await.unwrap();
    assert_eq!(
        first.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    assert_eq!(
        first.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    drop(first);
    let second = client.open_tunnel(&token, "echo", 1).await.unwrap();
    assert_eq!(
        second.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    app.stop().await;
}
