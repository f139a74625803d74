//! Signed policy bundles: hot reload by file drop, every kind of bad bundle
//! refused with a precise reason (log and audit) while the policy in force
//! keeps serving, and signature interop with the standard `minisign` tool.

use std::process::Command;
use std::time::Duration;

use appliance::audit::AuditKind;
use e2e::appliance::{policy_with, tcp_connection, ApplianceFixture};
use e2e::{bin, run};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lite::client::ApplianceClient;
use tunnel_lite::tls::{parse_fingerprint, Trust};

const HOUR: Duration = Duration::from_secs(3600);

async fn still_serves(app: &ApplianceFixture, user: &str, target: &str) {
    let trust = Trust::Pinned(parse_fingerprint(&app.fingerprint).unwrap());
    let client = ApplianceClient::new(&app.addr.to_string(), &trust).unwrap();
    let mut t = client
        .open_tunnel(&app.token(user, &[], HOUR), target, 1)
        .await
        .expect("the policy in force still serves");
    t.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).await.unwrap();
}

/// Waits for the n-th policy_refused record and returns its reason.
async fn nth_refusal(app: &ApplianceFixture, n: usize) -> String {
    for _ in 0..100 {
        let refused = app.audit(Some(AuditKind::PolicyRefused)).await;
        if refused.len() >= n {
            return refused[n - 1].record.reason.clone().unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no policy_refused record #{n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundles_are_refused_and_the_policy_in_force_stays() {
    let upstream = e2e::echo_upstream().await.to_string();
    let v = |version: u64, target: &str| {
        policy_with(
            version,
            &tcp_connection(target, &upstream, &[1], &["ops"], &[]),
        )
    };
    let app = ApplianceFixture::start(&v(5, "one")).await;
    assert_eq!(app.policy_version(), Some(5));
    still_serves(&app, "ops", "one").await;
    let mut refusals = 0;

    // 1. A tampered byte after signing.
    let good = v(6, "two");
    let sig = appliance::policy::sign_bytes(&app.key, good.as_bytes(), "policy.toml").unwrap();
    let tampered = good.replace("\"two\"", "\"twO\"");
    app.install_raw(tampered.as_bytes(), &sig);
    refusals += 1;
    let reason = nth_refusal(&app, refusals).await;
    assert!(reason.contains("does not match"), "{reason}");

    // 2. Signed by a key the appliance does not trust.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_key, _) = appliance::policy::keygen(other_dir.path()).unwrap();
    app.install_policy_bytes(v(6, "two").as_bytes(), &other_key);
    refusals += 1;
    let reason = nth_refusal(&app, refusals).await;
    assert!(
        reason.contains("not") && reason.contains("trusted"),
        "{reason}"
    );

    // 3. The same version again, and 4. a lower one (no rollback).
    app.install_policy(&v(5, "two"));
    refusals += 1;
    let reason = nth_refusal(&app, refusals).await;
    assert!(reason.contains("not newer"), "{reason}");
    app.install_policy(&v(4, "two"));
    refusals += 1;
    let reason = nth_refusal(&app, refusals).await;
    assert!(reason.contains("not newer"), "{reason}");

    // 5. Invalid TOML, validly signed: the reason names the line.
    app.install_policy("version = 6\n[identity\nissuer = 1\n");
    refusals += 1;
    let reason = nth_refusal(&app, refusals).await;
    assert!(reason.contains("line 2"), "{reason}");

    // 6. An unknown field: named, with its line.
    app.install_policy(&v(6, "two").replace("kind = \"tcp\"", "kind = \"tcp\"\ncolour = \"blue\""));
    refusals += 1;
    let reason = nth_refusal(&app, refusals).await;
    assert!(
        reason.contains("colour") && reason.contains("line"),
        "{reason}"
    );

    // Through all of it, version 5 stayed in force and served.
    assert_eq!(app.policy_version(), Some(5));
    still_serves(&app, "ops", "one").await;

    // A good newer bundle is picked up without a restart.
    app.install_policy(&v(6, "two"));
    assert!(app.wait_policy_version(6).await);
    still_serves(&app, "ops", "two").await;
    let loaded = app.audit(Some(AuditKind::PolicyLoaded)).await;
    assert_eq!(loaded.last().unwrap().record.policy_version, Some(6));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_cannot_roll_the_policy_back() {
    let upstream = e2e::echo_upstream().await.to_string();
    let app = ApplianceFixture::start(&policy_with(
        3,
        &tcp_connection("a", &upstream, &[1], &["u"], &[]),
    ))
    .await;
    app.install_policy(&policy_with(
        4,
        &tcp_connection("b", &upstream, &[1], &["u"], &[]),
    ));
    assert!(app.wait_policy_version(4).await);
    let cfg = app.cfg.clone();
    // Put version 3 back on disk, then restart on the same data dir.
    app.install_policy(&policy_with(
        3,
        &tcp_connection("a", &upstream, &[1], &["u"], &[]),
    ));
    let _keep = app.stop_keep_dir().await;
    let restarted = appliance::server::start(cfg.clone()).await.unwrap();
    assert_eq!(
        restarted
            .shared
            .policy
            .borrow()
            .as_ref()
            .map(|p| p.policy().version),
        None
    );
    restarted.shared.audit.flush().await.unwrap();
    let refused = appliance::audit::query(
        &cfg.db_path(),
        &appliance::audit::AuditFilter {
            kind: Some(AuditKind::PolicyRefused),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        refused.iter().any(|r| r
            .record
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("no rollback")),
        "{refused:#?}"
    );
    restarted.shutdown().await;
}

#[test]
fn minisign_verifies_what_appliance_signs_and_the_reverse() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let policy = p.join("policy.toml");
    std::fs::write(
        &policy,
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../policy.example.toml"
        ))
        .unwrap(),
    )
    .unwrap();

    // appliance keygen + sign -> minisign -Vm
    run(
        Command::new(bin("appliance"))
            .args(["policy", "keygen", "--out"])
            .arg(p.join("ours")),
        true,
    );
    run(
        Command::new(bin("appliance"))
            .args(["policy", "sign", "--key"])
            .arg(p.join("ours/policy.key"))
            .arg(&policy),
        true,
    );
    let out = run(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&policy)
            .arg("-p")
            .arg(p.join("ours/policy.pub")),
        true,
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Signature and comment signature verified")
    );
    run(
        Command::new(bin("appliance"))
            .args(["policy", "verify", "--pubkey"])
            .arg(p.join("ours/policy.pub"))
            .arg(&policy),
        true,
    );

    // minisign -G -W + -S -> appliance policy verify
    run(
        Command::new("minisign")
            .args(["-G", "-W", "-p"])
            .arg(p.join("theirs.pub"))
            .arg("-s")
            .arg(p.join("theirs.key")),
        true,
    );
    run(
        Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(p.join("theirs.key"))
            .arg("-m")
            .arg(&policy),
        true,
    );
    run(
        Command::new(bin("appliance"))
            .args(["policy", "verify", "--pubkey"])
            .arg(p.join("theirs.pub"))
            .arg(&policy),
        true,
    );

    // One changed byte: both refuse.
    let mut bytes = std::fs::read(&policy).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    std::fs::write(&policy, &bytes).unwrap();
    let ours = run(
        Command::new(bin("appliance"))
            .args(["policy", "verify", "--pubkey"])
            .arg(p.join("theirs.pub"))
            .arg(&policy),
        false,
    );
    assert!(!ours.status.success());
    assert!(
        String::from_utf8_lossy(&ours.stderr).contains("does not match"),
        "{}",
        String::from_utf8_lossy(&ours.stderr)
    );
    let theirs = run(
        Command::new("minisign")
            .arg("-Vm")
            .arg(&policy)
            .arg("-p")
            .arg(p.join("theirs.pub")),
        false,
    );
    assert!(!theirs.status.success());
}

#[test]
fn policy_check_names_the_problem() {
    let out = run(
        Command::new(bin("appliance"))
            .args(["policy", "check"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../policy.example.toml"
            )),
        true,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("valid policy version"));
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("p.toml");
    std::fs::write(
        &f,
        policy_with(1, &tcp_connection("x", "127.0.0.1:1", &[1], &["u"], &[]))
            .replace("ports = [1]", "ports = [1]\nport = 2"),
    )
    .unwrap();
    let out = run(
        Command::new(bin("appliance"))
            .args(["policy", "check"])
            .arg(&f),
        false,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("port") && err.contains("line"), "{err}");
}
