//! Approvals end to end: requests filed in-process (as a gateway does) are
//! listed, approved and denied by approvers through the real `tunnel-lite
//! approvals` CLI and the appliance API, and by the local `appliance
//! approvals` CLI in a separate process; the waiting side wakes within a
//! second. Refusals (self-approval, non-approver, unknown, not pending),
//! timeout, withdrawal, the reuse window, and an unrelated tunnel session
//! that keeps working while requests are held.

use std::process::Command;
use std::time::Duration;

use appliance::approvals::{ApprovalOutcome, ApprovalRequest, ApprovalState};
use appliance::audit::AuditKind;
use e2e::appliance::{policy_with, tcp_connection, ApplianceFixture};
use e2e::tunnel::{login_with_token, TunnelLite};
use e2e::{bin, run, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lite::client::{ApplianceClient, ClientError};
use tunnel_lite::tls::{parse_fingerprint, Trust};

const HOUR: Duration = Duration::from_secs(3600);
const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const CAROL: &str = "carol@example.com";
const LEADS: &str = "dba-leads";

/// An appliance whose one tcp connection (an echo server) dev and dba-leads may reach.
async fn start() -> (ApplianceFixture, String) {
    let echo = e2e::echo_upstream().await;
    let name = unique_name("pg");
    let policy = policy_with(
        1,
        &tcp_connection(&name, &echo.to_string(), &[5432], &[], &["dev", LEADS]),
    );
    (ApplianceFixture::start(&policy).await, name)
}

fn held(user: &str, connection: &str, text: &str, timeout: Duration) -> ApprovalRequest {
    ApprovalRequest {
        user: user.into(),
        groups: vec!["dev".into()],
        connection: connection.into(),
        session_id: unique_name("sess"),
        kind: "statement".into(),
        text: text.into(),
        fingerprint: format!("sha256:{text}"),
        approvers_group: LEADS.into(),
        timeout,
        reuse_window: Duration::ZERO,
        policy_version: Some(1),
    }
}

/// `tunnel-lite` logged in as `user` with `groups`; returns its config dir.
fn logged_in(app: &ApplianceFixture, user: &str, groups: &[&str]) -> tempfile::TempDir {
    login_with_token(app, &app.token(user, groups, HOUR))
}

fn tl(dir: &tempfile::TempDir, args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin("tunnel-lite"));
    c.arg("--config-dir").arg(dir.path()).args(args);
    run(&mut c, false)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn client(app: &ApplianceFixture) -> ApplianceClient {
    let trust = Trust::Pinned(parse_fingerprint(&app.fingerprint).unwrap());
    ApplianceClient::new(&app.addr.to_string(), &trust).unwrap()
}

/// The status and code of an API refusal.
fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn within_a_second(waiter: tokio::task::JoinHandle<ApprovalOutcome>) -> ApprovalOutcome {
    tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("the waiting session wakes within a second")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_and_deny_with_tunnel_lite() {
    let (app, name) = start().await;
    let approvals = app.approvals();
    let bob = logged_in(&app, BOB, &[LEADS]);

    let statement = "DELETE FROM users\n  WHERE id = 7";
    let (id, pending) = approvals
        .request(held(ALICE, &name, statement, HOUR))
        .await
        .unwrap();
    assert_eq!(id.len(), 8);
    let waiter = tokio::spawn(pending.outcome());

    let out = tl(&bob, &["approvals", "list"]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for want in [
        &id[..],
        ALICE,
        &name,
        "statement",
        "DELETE FROM users WHERE id = 7",
    ] {
        assert!(table.contains(want), "{want:?} missing from:\n{table}");
    }
    assert!(table.contains("EXPIRES IN"), "{table}");

    let out = tl(&bob, &["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("approved {id}")));
    assert_eq!(
        within_a_second(waiter).await,
        ApprovalOutcome::Approved { by: BOB.into() }
    );

    let (id2, pending) = approvals
        .request(held(ALICE, &name, "DROP TABLE users", HOUR))
        .await
        .unwrap();
    let waiter = tokio::spawn(pending.outcome());
    let out = tl(
        &bob,
        &[
            "approvals",
            "deny",
            &id2,
            "--reason",
            "use the archive table",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        within_a_second(waiter).await,
        ApprovalOutcome::Denied {
            by: BOB.into(),
            reason: "use the archive table".into()
        }
    );
    let out = tl(&bob, &["approvals", "list"]);
    assert!(
        text(&out.stdout).contains("no requests waiting"),
        "{}",
        text(&out.stdout)
    );

    // Request, approver and outcome are in the audit trail, under the requester.
    let granted = app.audit(Some(AuditKind::ApprovalGranted)).await;
    assert_eq!(granted.len(), 1);
    let r = &granted[0].record;
    assert_eq!(r.user.as_deref(), Some(ALICE));
    assert_eq!(r.connection.as_deref(), Some(name.as_str()));
    let d = r.detail.as_ref().unwrap();
    assert_eq!(
        (d["approver"].as_str(), d["id"].as_str()),
        (Some(BOB), Some(id.as_str()))
    );
    assert_eq!(d["via"], "api");
    let denied = app.audit(Some(AuditKind::ApprovalDenied)).await;
    assert_eq!(
        denied[0].record.reason.as_deref(),
        Some("use the archive table")
    );
    assert_eq!(app.audit(Some(AuditKind::ApprovalRequested)).await.len(), 2);
    // The fixture's shutdown waits for every audit handle (approvals hold one).
    drop(approvals);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_self_approval_non_approver_unknown_not_pending() {
    let (app, name) = start().await;
    let approvals = app.approvals();
    // Alice is herself an approver, but not of her own request.
    let alice = logged_in(&app, ALICE, &["dev", LEADS]);
    let carol = logged_in(&app, CAROL, &["dev"]);
    let (id, pending) = approvals
        .request(held(ALICE, &name, "UPDATE accounts SET x = 1", HOUR))
        .await
        .unwrap();

    let out = tl(&alice, &["approvals", "approve", &id]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("403") && err.contains("self-approval is not allowed"),
        "{err}"
    );
    // She sees her own request, marked as not hers to decide.
    let list = tl(&alice, &["approvals", "list"]);
    assert!(text(&list.stdout).contains(&format!("(yours; approvers: {LEADS})")));

    let out = tl(&carol, &["approvals", "deny", &id, "--reason", "no"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("403") && err.contains("may not decide"),
        "{err}"
    );
    // Carol is not an approver: she is shown nothing.
    assert!(text(&tl(&carol, &["approvals", "list"]).stdout).contains("no requests waiting"));

    // The API's codes, as a program sees them.
    let api = client(&app);
    let bob_token = app.token(BOB, &[LEADS], HOUR);
    let alice_token = app.token(ALICE, &[LEADS], HOUR);
    assert_eq!(
        status_of(api.decide_approval(&alice_token, &id, true, None).await),
        (403, "self_approval".into())
    );
    assert_eq!(
        status_of(
            api.decide_approval(&bob_token, "zzzzzzzz", true, None)
                .await
        ),
        (404, "approval_not_found".into())
    );
    assert_eq!(
        status_of(api.decide_approval(&bob_token, &id, false, None).await),
        (400, "reason_required".into())
    );
    assert_eq!(
        status_of(api.approvals("not-a-token").await),
        (401, "token_invalid".into())
    );
    let list = api.approvals(&bob_token).await.unwrap();
    assert_eq!(list.approvals.len(), 1);
    assert!(list.approvals[0].can_decide);
    api.decide_approval(&bob_token, &id, true, Some("checked the ticket"))
        .await
        .unwrap();
    assert_eq!(
        status_of(api.decide_approval(&bob_token, &id, true, None).await),
        (409, "approval_not_pending".into())
    );
    assert_eq!(
        pending.outcome().await,
        ApprovalOutcome::Approved { by: BOB.into() }
    );
    // The fixture's shutdown waits for every audit handle (approvals hold one).
    drop(approvals);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_cli_in_another_process_wakes_the_waiter() {
    let (app, name) = start().await;
    let approvals = app.approvals();
    let (id, pending) = approvals
        .request(held(ALICE, &name, "ALTER TABLE t ADD c int", HOUR))
        .await
        .unwrap();
    let waiter = tokio::spawn(pending.outcome());

    let list = app.cli(&["approvals", "list"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(text(&list.stdout).contains(&id) && text(&list.stdout).contains(LEADS));

    // Break-glass as the requester is still self-approval.
    let out = app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        ALICE,
        "--groups",
        LEADS,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("self-approval is not allowed"),
        "{}",
        text(&out.stderr)
    );

    let out = app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        BOB,
        "--groups",
        &format!("dev,{LEADS}"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        within_a_second(waiter).await,
        ApprovalOutcome::Approved { by: BOB.into() }
    );
    let granted = app.audit(Some(AuditKind::ApprovalGranted)).await;
    let d = granted[0].record.detail.as_ref().unwrap();
    assert_eq!(
        (d["via"].as_str(), d["break_glass"].as_bool()),
        (Some("appliance_cli"), Some(true))
    );

    // Denial through the CLI, with its reason.
    let (id, pending) = approvals
        .request(held(ALICE, &name, "TRUNCATE t", HOUR))
        .await
        .unwrap();
    let waiter = tokio::spawn(pending.outcome());
    let out = app.cli(&[
        "approvals",
        "deny",
        &id,
        "--as",
        BOB,
        "--groups",
        LEADS,
        "--reason",
        "not today",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        within_a_second(waiter).await,
        ApprovalOutcome::Denied {
            by: BOB.into(),
            reason: "not today".into()
        }
    );
    let all = app.cli(&["approvals", "list", "--all"]);
    assert!(
        text(&all.stdout).contains("denied"),
        "{}",
        text(&all.stdout)
    );
    // The fixture's shutdown waits for every audit handle (approvals hold one).
    drop(approvals);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_withdraw_and_reuse_window() {
    let (app, name) = start().await;
    let approvals = app.approvals();
    let bob = logged_in(&app, BOB, &[LEADS]);

    // Timeout: the waiter resolves at the deadline and the row says so.
    let (id, pending) = approvals
        .request(held(
            ALICE,
            &name,
            "DELETE FROM t",
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    assert_eq!(pending.outcome().await, ApprovalOutcome::TimedOut);
    assert_eq!(
        approvals.get(&id).unwrap().unwrap().state,
        ApprovalState::TimedOut
    );
    let out = tl(&bob, &["approvals", "approve", &id]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("409") && text(&out.stderr).contains("timed_out"));

    // Withdraw (the client cancelled): the waiter resolves, approving is refused.
    let (id, pending) = approvals
        .request(held(ALICE, &name, "DELETE FROM u", HOUR))
        .await
        .unwrap();
    let waiter = tokio::spawn(pending.outcome());
    approvals.withdraw(&id).await.unwrap();
    assert_eq!(within_a_second(waiter).await, ApprovalOutcome::Withdrawn);
    let out = tl(&bob, &["approvals", "approve", &id]);
    assert!(
        text(&out.stderr).contains("withdrawn"),
        "{}",
        text(&out.stderr)
    );

    // Reuse window: the same user, connection and fingerprint, for a while.
    let mut req = held(ALICE, &name, "UPDATE t SET a = 1", HOUR);
    req.reuse_window = Duration::from_secs(600);
    let fingerprint = req.fingerprint.clone();
    let (id, pending) = approvals.request(req).await.unwrap();
    assert!(!approvals.reusable(ALICE, &name, &fingerprint));
    let out = tl(&bob, &["approvals", "approve", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(pending.outcome().await.is_approved());
    assert!(approvals.reusable(ALICE, &name, &fingerprint));
    assert!(!approvals.reusable(ALICE, &name, "sha256:something else"));
    assert!(!approvals.reusable(CAROL, &name, &fingerprint));

    for kind in [AuditKind::ApprovalTimedOut, AuditKind::ApprovalWithdrawn] {
        assert_eq!(app.audit(Some(kind)).await.len(), 1, "{kind}");
    }
    // The fixture's shutdown waits for every audit handle (approvals hold one).
    drop(approvals);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_requests_never_block_another_session() {
    let (app, name) = start().await;
    let approvals = app.approvals();
    // Two requests wait...
    let mut waiters = Vec::new();
    let mut ids = Vec::new();
    for user in [ALICE, "dave@example.com"] {
        let (id, pending) = approvals
            .request(held(user, &name, "DELETE FROM big_table", HOUR))
            .await
            .unwrap();
        ids.push(id);
        waiters.push(tokio::spawn(pending.outcome()));
    }
    // ...while a third, unrelated person's tunnel session works normally.
    let carol = TunnelLite::start(&app, &app.token(CAROL, &["dev"], HOUR)).await;
    let at = carol.wait_listening(&name, 5432).await;
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    for i in 0..20 {
        let msg = format!("ping {i}\n");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut back))
            .await
            .expect("echo answers while requests are held")
            .unwrap();
        assert_eq!(back, msg.as_bytes());
    }
    assert!(waiters.iter().all(|w| !w.is_finished()));
    assert_eq!(approvals.list_pending().unwrap().len(), 2);

    let api = client(&app);
    let bob = app.token(BOB, &[LEADS], HOUR);
    for id in &ids {
        api.decide_approval(&bob, id, true, None).await.unwrap();
    }
    for w in waiters {
        assert!(within_a_second(w).await.is_approved());
    }
    drop(s);
    carol.stop().await;
    // The fixture's shutdown waits for every audit handle (approvals hold one).
    drop(approvals);
    app.stop().await;
}
