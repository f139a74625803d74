//! Event routes (signed webhooks, runbooks, a hanging webhook that delays no
//! session), the dry run, and `/metrics`.

use std::time::{Duration, Instant};

use appliance::audit::{self, AuditFilter, AuditKind};
use e2e::appliance::{policy_with, tcp_connection};
use e2e::receivers::HttpReceiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::process::Proc;
use super::prometheus::parse_prometheus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_fire_signed_webhooks_and_runbooks_and_a_hanging_webhook_delays_no_session() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = e2e::echo_upstream().await;
    let hook = HttpReceiver::start().await;
    let hang = HttpReceiver::start().await;
    hang.hang(true);
    let mut app = Proc::new("runbook_dir = \"runbooks\"\n", &[("hook_key", "whsec-123")]);
    let runbooks = app.dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).expect("runbooks");
    let seen = app.dir.path().join("runbook-seen.json");
    std::fs::write(
        runbooks.join("record.sh"),
        format!(
            "#!/bin/sh\ncat > {}\necho recorded \"$HOOP_EVENT\"\n",
            seen.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(
        runbooks.join("record.sh"),
        std::fs::Permissions::from_mode(0o700),
    )
    .expect("chmod");
    let routes = format!(
        "\n[[route]]\nname = \"hang-first\"\non = [\"session_start\"]\nactions = [{{ type = \"webhook\", url = \"{}\", timeout = \"1s\", retries = 0 }}]\n\n\
         [[route]]\nname = \"notify\"\non = [\"session_start\"]\nusers = [\"bob@example.com\"]\n\
         actions = [{{ type = \"webhook\", url = \"{}\", secret = \"hook_key\" }}, {{ type = \"command\", runbook = \"record.sh\", timeout = \"5s\" }}]\n\n\
         [[route]]\nname = \"eject-carl\"\non = [\"session_start\"]\nusers = [\"carl@example.com\"]\nactions = [{{ type = \"close_session\" }}]\n",
        hang.url("/slow"),
        hook.url("/hook")
    );
    app.install_policy(
        &(policy_with(
            1,
            &tcp_connection(
                "echo",
                &upstream.to_string(),
                &[7],
                &["bob@example.com", "carl@example.com"],
                &[],
            ),
        ) + &routes),
    );
    app.start().await;
    let token = app.token("bob@example.com");
    let client = app.client();
    let mut ready = false;
    for _ in 0..100 {
        ready = app.get("/readyz").await.0 == 200;
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ready, "{}", app.log());
    // Two sessions while the first route's webhook hangs: each is as fast as usual.
    for _ in 0..2 {
        let t = Instant::now();
        let mut s = client.open_tunnel(&token, "echo", 7).await.expect("tunnel");
        s.write_all(b"ping").await.expect("write");
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.expect("echo");
        assert!(
            t.elapsed() < Duration::from_millis(800),
            "session took {:?}",
            t.elapsed()
        );
    }
    // close_session closes exactly the session the event came from.
    let carl = app.token("carl@example.com");
    let mut bob_live = client.open_tunnel(&token, "echo", 7).await.expect("tunnel");
    let mut s = client.open_tunnel(&carl, "echo", 7).await.expect("tunnel");
    let mut b = [0u8; 4];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "carl's session was closed: {r:?}"
    );
    bob_live
        .write_all(b"ping")
        .await
        .expect("bob's session is untouched");
    bob_live.read_exact(&mut b).await.expect("echo");
    drop(bob_live);
    assert!(
        e2e::eventually(Duration::from_secs(10), || hook
            .received
            .lock()
            .expect("lock")
            .len()
            >= 2)
        .await
    );
    let r = hook.received.lock().expect("lock")[0].clone();
    let ts = r.headers["x-hoop-timestamp"]
        .to_str()
        .expect("ts")
        .to_string();
    let sig = r.headers["x-hoop-signature"]
        .to_str()
        .expect("sig")
        .to_string();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"whsec-123");
    let mut msg = ts.into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(&r.body);
    let mac = ring::hmac::sign(&key, &msg);
    let hex: String = mac.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(
        sig,
        format!("sha256={hex}"),
        "the receiver verifies the HMAC"
    );
    let body: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    assert_eq!(body["event"], "session_start");
    assert_eq!(body["route"], "notify");
    assert_eq!(body["record"]["user"], "bob@example.com");
    assert_eq!(body["record"]["connection"], "echo");
    // The runbook got the same event on stdin; its output is in the audit.
    assert!(
        e2e::eventually(Duration::from_secs(10), || std::fs::read_to_string(&seen)
            .is_ok_and(|s| s.contains("session_start")))
        .await
    );
    let got: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seen).expect("seen")).expect("json");
    assert_eq!(got["record"]["user"], "bob@example.com");
    let actions = || {
        audit::query(
            &app.db(),
            &AuditFilter {
                kind: Some(AuditKind::EventAction),
                ..Default::default()
            },
        )
        .unwrap_or_default()
    };
    let ran_runbook = |all: &[audit::StoredRecord]| {
        all.iter().any(|a| {
            a.record.detail.as_ref().is_some_and(|d| {
                d["action"] == "command" && d["stdout"] == "recorded session_start\n"
            })
        })
    };
    let hang_timed_out = |all: &[audit::StoredRecord]| {
        all.iter().any(|a| {
            a.record.outcome.as_deref() == Some("error")
                && a.record
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.contains("timed out"))
        })
    };
    let closed_carl = |all: &[audit::StoredRecord]| {
        all.iter().any(|a| {
            a.record
                .detail
                .as_ref()
                .is_some_and(|d| d["action"] == "close_session" && d["closed"] == 1)
        })
    };
    assert!(
        e2e::eventually(Duration::from_secs(10), || {
            let all = actions();
            ran_runbook(&all) && hang_timed_out(&all) && closed_carl(&all)
        })
        .await,
        "{:#?}",
        actions()
    );
    // The dry run shows the same plan.
    let sample = app.dir.path().join("event.json");
    std::fs::write(&sample, body["record"].to_string()).expect("sample");
    let out = app.cli(&["events", "test", "--event", &sample.display().to_string()]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("dry run json");
    assert_eq!(plan["routes_matched"], 2, "{plan}");

    // /metrics parses and has what operators need; health endpoints answer.
    let (code, text) = app.get("/metrics").await;
    assert_eq!(code, 200);
    let m = parse_prometheus(&text).expect("prometheus text");
    for family in [
        "appliance_sessions_started_total",
        "appliance_statements_total",
        "appliance_denials_total",
        "appliance_holds_total",
        "appliance_audit_queue_depth",
        "appliance_audit_sink_lag_records",
        "appliance_event_action_failures_total",
        "appliance_bytes_up_total",
    ] {
        assert!(m.contains_key(family), "{family} missing");
    }
    let started = &m["appliance_sessions_started_total"];
    assert!(
        started
            .iter()
            .any(|(l, v)| l.get("kind").is_some_and(|k| k == "tcp") && *v == 4.0),
        "{started:?}"
    );
    let failures = &m["appliance_event_action_failures_total"];
    assert!(failures
        .iter()
        .any(|(l, v)| l.get("action").is_some_and(|a| a == "webhook") && *v >= 1.0));
    assert_eq!(app.get("/healthz").await.0, 200);
    app.stop().await;
}
