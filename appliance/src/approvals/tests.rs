//! The approvals store and waiters, without the network: request, decide,
//! time out, withdraw, reuse, a second process's decision, restart orphans.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::*;
use crate::audit::{self, AuditConfig, AuditFilter, AuditKind, AuditWriter};

struct Env {
    dir: PathBuf,
    db: PathBuf,
    audit: AuditHandle,
    writer: Option<AuditWriter>,
}

impl Env {
    fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!("approvals-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("appliance.db");
        let (audit, writer) = audit::spawn_writer(AuditConfig::new(&db)).unwrap();
        Env {
            dir,
            db,
            audit,
            writer: Some(writer),
        }
    }

    fn open(&self) -> Approvals {
        Approvals::open(&self.db, self.audit.clone()).unwrap()
    }

    async fn audit_kinds(&self) -> Vec<AuditKind> {
        self.audit.flush().await.unwrap();
        audit::query(&self.db, &AuditFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.record.kind)
            .filter(|k| k.as_str().starts_with("approval_"))
            .collect()
    }

    async fn finish(mut self) {
        if let Some(w) = self.writer.take() {
            let _ = w.shutdown(self.audit.clone()).await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn who(user: &str, groups: &[&str]) -> Identity {
    Identity {
        user: user.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn req(text: &str, timeout: Duration) -> ApprovalRequest {
    ApprovalRequest {
        user: "alice@example.com".into(),
        groups: vec!["dev".into()],
        connection: "pg-prod".into(),
        session_id: "sess-1".into(),
        kind: "statement".into(),
        text: text.into(),
        fingerprint: format!("fp:{text}"),
        approvers_group: "dba-leads".into(),
        timeout,
        reuse_window: Duration::ZERO,
        policy_version: Some(3),
    }
}

const LONG: Duration = Duration::from_secs(60);

#[test]
fn ids_are_short_typeable_and_normalized() {
    for _ in 0..100 {
        let id = new_id().unwrap();
        assert_eq!(id.len(), ID_LEN);
        assert_eq!(normalize_id(&id).as_deref(), Some(id.as_str()));
    }
    assert_eq!(normalize_id(" AB12CD34 ").as_deref(), Some("ab12cd34"));
    assert_eq!(normalize_id("ab12cd3"), None);
    assert_eq!(normalize_id("ab12cd3i"), None, "i is not in the alphabet");
    assert_eq!(normalize_id("../../x/"), None);
}

fn view(user: &str, state: ApprovalState, expires_ms: i64) -> ApprovalView {
    ApprovalView {
        id: "ab12cd34".into(),
        user: user.into(),
        groups: vec![],
        connection: "c".into(),
        session_id: "s".into(),
        kind: "statement".into(),
        text: "DELETE FROM t".into(),
        fingerprint: "f".into(),
        approvers_group: "dba-leads".into(),
        state,
        created_ms: 0,
        expires_ms,
        decided_by: None,
        reason: None,
        decided_ms: None,
        reuse_window_ms: 0,
        policy_version: None,
    }
}

#[test]
fn the_decision_rules_are_pure() {
    let v = view("alice", ApprovalState::Pending, 1000);
    let bob = who("bob", &["dba-leads"]);
    assert!(check_decidable(&v, &bob, 10).is_ok());
    // Self-approval, also with other case, also when in the group.
    for me in ["alice", "ALICE"] {
        let e = check_decidable(&v, &who(me, &["dba-leads"]), 10).unwrap_err();
        assert!(matches!(e, ApprovalError::SelfApproval { .. }), "{e}");
        assert!(e.to_string().contains("self-approval is not allowed"));
    }
    // Group names match exactly, like the policy's.
    for groups in [&["dev"][..], &["DBA-LEADS"], &[]] {
        let e = check_decidable(&v, &who("carol", groups), 10).unwrap_err();
        assert!(matches!(e, ApprovalError::NotApprover { .. }), "{e}");
    }
    // Past the deadline it counts as timed out, even before the row says so.
    let e = check_decidable(&v, &bob, 1000).unwrap_err();
    assert!(matches!(
        e,
        ApprovalError::NotPending {
            state: ApprovalState::TimedOut,
            ..
        }
    ));
    let done = view("alice", ApprovalState::Denied, 1000);
    assert!(matches!(
        check_decidable(&done, &bob, 10),
        Err(ApprovalError::NotPending {
            state: ApprovalState::Denied,
            ..
        })
    ));
    for s in ApprovalState::ALL {
        assert_eq!(ApprovalState::from_name(s.as_str()), Some(s));
    }
}

#[test]
fn api_statuses() {
    use http::StatusCode;
    let cases = [
        (ApprovalError::NotFound("x".into()), StatusCode::NOT_FOUND),
        (
            ApprovalError::NotPending {
                id: "x".into(),
                state: ApprovalState::Approved,
            },
            StatusCode::CONFLICT,
        ),
        (
            ApprovalError::SelfApproval {
                id: "x".into(),
                user: "a".into(),
            },
            StatusCode::FORBIDDEN,
        ),
        (
            ApprovalError::NotApprover {
                id: "x".into(),
                user: "a".into(),
                group: "g".into(),
            },
            StatusCode::FORBIDDEN,
        ),
        (
            ApprovalError::Storage("secret path".into()),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
    ];
    for (e, status) in cases {
        let f = e.to_api();
        assert_eq!(f.status, status, "{e}");
        assert!(!f.reason.contains("secret path"));
    }
    assert_eq!(
        api::parse_decision_path("/v1/approvals/ab12cd34/approve"),
        Some(("ab12cd34", true))
    );
    assert_eq!(
        api::parse_decision_path("/v1/approvals/ab12cd34/deny"),
        Some(("ab12cd34", false))
    );
    assert_eq!(api::parse_decision_path("/v1/approvals/ab12cd34"), None);
    assert_eq!(api::parse_decision_path("/v1/approvals/x/other"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_wakes_the_waiter_and_is_audited() {
    let env = Env::new("approve");
    let a = env.open();
    let (id, pending) = a.request(req("DELETE FROM t", LONG)).await.unwrap();
    assert_eq!(pending.id(), id);
    let listed = a.list_pending_for(&who("bob", &["dba-leads"])).unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].text, "DELETE FROM t");
    // The requester sees their own; an outsider sees nothing.
    assert_eq!(
        a.list_pending_for(&who("alice@example.com", &[]))
            .unwrap()
            .len(),
        1
    );
    assert!(a
        .list_pending_for(&who("carol", &["dev"]))
        .unwrap()
        .is_empty());

    let waiter = tokio::spawn(pending.outcome());
    let started = Instant::now();
    let v = a
        .decide(&id.to_uppercase(), &who("bob", &["dba-leads"]), true, None)
        .await
        .unwrap();
    assert_eq!(v.state, ApprovalState::Approved);
    let outcome = waiter.await.unwrap();
    assert_eq!(outcome, ApprovalOutcome::Approved { by: "bob".into() });
    assert!(started.elapsed() < Duration::from_millis(500));
    // Decided once: a second decision is refused.
    let again = a
        .decide(&id, &who("dan", &["dba-leads"]), false, Some("no".into()))
        .await;
    assert!(matches!(
        again,
        Err(ApprovalError::NotPending {
            state: ApprovalState::Approved,
            ..
        })
    ));
    assert!(a.list_pending().unwrap().is_empty());
    assert_eq!(
        env.audit_kinds().await,
        vec![AuditKind::ApprovalRequested, AuditKind::ApprovalGranted]
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deny_timeout_and_withdraw() {
    let env = Env::new("deny");
    let a = env.open();

    let (id, pending) = a.request(req("DROP TABLE t", LONG)).await.unwrap();
    let bob = who("bob", &["dba-leads"]);
    a.decide(&id, &bob, false, Some("  not during the freeze ".into()))
        .await
        .unwrap();
    assert_eq!(
        pending.outcome().await,
        ApprovalOutcome::Denied {
            by: "bob".into(),
            reason: "not during the freeze".into()
        }
    );

    let (id, pending) = a
        .request(req("TRUNCATE t", Duration::from_millis(200)))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(pending.outcome().await, ApprovalOutcome::TimedOut);
    assert!(started.elapsed() >= Duration::from_millis(190));
    assert_eq!(a.get(&id).unwrap().unwrap().state, ApprovalState::TimedOut);
    assert!(matches!(
        a.decide(&id, &bob, true, None).await,
        Err(ApprovalError::NotPending {
            state: ApprovalState::TimedOut,
            ..
        })
    ));

    let (id, pending) = a.request(req("UPDATE t SET a = 1", LONG)).await.unwrap();
    let waiter = tokio::spawn(pending.outcome());
    a.withdraw(&id).await.unwrap();
    assert_eq!(waiter.await.unwrap(), ApprovalOutcome::Withdrawn);
    assert!(matches!(
        a.withdraw(&id).await,
        Err(ApprovalError::NotPending { .. })
    ));
    assert!(matches!(
        a.withdraw("zzzzzzzz").await,
        Err(ApprovalError::NotFound(_))
    ));
    assert!(matches!(
        a.decide("nope", &bob, true, None).await,
        Err(ApprovalError::NotFound(_))
    ));

    assert_eq!(
        env.audit_kinds().await,
        vec![
            AuditKind::ApprovalRequested,
            AuditKind::ApprovalDenied,
            AuditKind::ApprovalRequested,
            AuditKind::ApprovalTimedOut,
            AuditKind::ApprovalRequested,
            AuditKind::ApprovalWithdrawn,
        ]
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_window_covers_the_same_fingerprint_only() {
    let env = Env::new("reuse");
    let a = env.open();
    let bob = who("bob", &["dba-leads"]);
    let mut r = req("UPDATE t SET a = 1", LONG);
    r.reuse_window = Duration::from_millis(400);
    let (id, _pending) = a.request(r).await.unwrap();
    let fp = "fp:UPDATE t SET a = 1";
    assert!(
        !a.reusable("alice@example.com", "pg-prod", fp),
        "not approved yet"
    );
    a.decide(&id, &bob, true, None).await.unwrap();
    assert!(a.reusable("alice@example.com", "pg-prod", fp));
    assert!(a.reusable("Alice@Example.com", "pg-prod", fp));
    assert_eq!(
        a.find_reusable("alice@example.com", "pg-prod", fp)
            .unwrap()
            .id,
        id
    );
    assert!(!a.reusable("alice@example.com", "pg-prod", "fp:other"));
    assert!(!a.reusable("alice@example.com", "pg-other", fp));
    assert!(!a.reusable("mallory", "pg-prod", fp));
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(
        !a.reusable("alice@example.com", "pg-prod", fp),
        "window closed"
    );

    // No window, or denied: never reusable.
    let (id, _p) = a.request(req("DELETE FROM u", LONG)).await.unwrap();
    a.decide(&id, &bob, true, None).await.unwrap();
    assert!(!a.reusable("alice@example.com", "pg-prod", "fp:DELETE FROM u"));
    let mut r = req("DELETE FROM v", LONG);
    r.reuse_window = LONG;
    let (id, _p) = a.request(r).await.unwrap();
    a.decide(&id, &bob, false, Some("no".into())).await.unwrap();
    assert!(!a.reusable("alice@example.com", "pg-prod", "fp:DELETE FROM v"));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_decides_and_the_poller_wakes_the_waiter() {
    let env = Env::new("poller");
    let server = env.open();
    let shutdown = CancellationToken::new();
    let poller = tokio::spawn(
        server
            .clone()
            .run_poller(Duration::from_millis(50), shutdown.clone()),
    );
    let (id, pending) = server.request(req("DELETE FROM t", LONG)).await.unwrap();
    let waiter = tokio::spawn(pending.outcome());

    // The CLI opens its own connection (as a separate process would).
    let cli = env.open();
    let started = Instant::now();
    cli.decide_break_glass(&id, &who("bob", &["dba-leads"]), true, None, "root (test)")
        .await
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(1), waiter)
        .await
        .expect("woken within a second")
        .unwrap();
    assert_eq!(outcome, ApprovalOutcome::Approved { by: "bob".into() });
    assert!(started.elapsed() < Duration::from_millis(500));

    env.audit.flush().await.unwrap();
    let granted = audit::query(
        &env.db,
        &AuditFilter {
            kind: Some(AuditKind::ApprovalGranted),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(granted.len(), 1);
    let r = &granted[0].record;
    assert_eq!(r.user.as_deref(), Some("alice@example.com"));
    assert_eq!(r.session_id.as_deref(), Some("sess-1"));
    assert_eq!(r.policy_version, Some(3));
    let d = r.detail.as_ref().unwrap();
    assert_eq!(d["approver"], "bob");
    assert_eq!(d["via"], "appliance_cli");
    assert_eq!(d["break_glass"], true);
    assert_eq!(d["operator"], "root (test)");

    shutdown.cancel();
    poller.await.unwrap();
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_outcome_does_not_withdraw_and_the_poller_times_it_out() {
    let env = Env::new("dropped");
    let a = env.open();
    let (id, pending) = a
        .request(req("DELETE FROM t", Duration::from_millis(300)))
        .await
        .unwrap();
    drop(pending);
    assert_eq!(a.get(&id).unwrap().unwrap().state, ApprovalState::Pending);
    let shutdown = CancellationToken::new();
    let poller = tokio::spawn(
        a.clone()
            .run_poller(Duration::from_millis(50), shutdown.clone()),
    );
    let timed_out = async {
        loop {
            if a.get(&id).unwrap().unwrap().state == ApprovalState::TimedOut {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), timed_out)
        .await
        .expect("timed out by the poller");
    shutdown.cancel();
    poller.await.unwrap();
    assert_eq!(
        env.audit_kinds().await,
        vec![AuditKind::ApprovalRequested, AuditKind::ApprovalTimedOut]
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_expires_what_the_previous_run_left_pending() {
    let env = Env::new("restart");
    let before = env.open();
    let (id, _pending) = before.request(req("DELETE FROM t", LONG)).await.unwrap();
    // `list` survives a restart (a new instance reads the same rows)...
    let after = env.open();
    assert_eq!(after.list_pending().unwrap().len(), 1);
    // ...and the serving process expires the orphans when it starts polling.
    assert_eq!(after.expire_orphans().await, 1);
    let v = after.get(&id).unwrap().unwrap();
    assert_eq!(v.state, ApprovalState::Expired);
    assert_eq!(v.outcome(), Some(ApprovalOutcome::Withdrawn));
    // Its own requests are not orphans.
    let (_mine, _p) = after.request(req("DELETE FROM u", LONG)).await.unwrap();
    assert_eq!(after.expire_orphans().await, 0);
    assert_eq!(after.list_recent(10).unwrap().len(), 2);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deciders_one_wins() {
    let env = Env::new("race");
    let a = env.open();
    let (id, pending) = a.request(req("DELETE FROM t", LONG)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (a, id) = (a.clone(), id.clone());
        tasks.push(tokio::spawn(async move {
            let who = who(&format!("approver{i}"), &["dba-leads"]);
            a.decide(&id, &who, i % 2 == 0, Some("r".into())).await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(ApprovalError::NotPending { .. }) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(wins, 1);
    assert!(pending.outcome().await != ApprovalOutcome::TimedOut);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_are_refused() {
    let env = Env::new("invalid");
    let a = env.open();
    let mut r = req("x", LONG);
    r.approvers_group = " ".into();
    assert!(matches!(a.request(r).await, Err(ApprovalError::Invalid(_))));
    let r = req(&"x".repeat(MAX_TEXT + 1), LONG);
    assert!(matches!(a.request(r).await, Err(ApprovalError::Invalid(_))));
    let r = req("x", Duration::ZERO);
    assert!(matches!(a.request(r).await, Err(ApprovalError::Invalid(_))));
    let (id, _p) = a.request(req("x", LONG)).await.unwrap();
    let long = "r".repeat(MAX_REASON + 1);
    assert!(matches!(
        a.decide(&id, &who("bob", &["dba-leads"]), false, Some(long))
            .await,
        Err(ApprovalError::Invalid(_))
    ));
    assert!(a.list_recent(10).unwrap().len() == 1);
    env.finish().await;
}
