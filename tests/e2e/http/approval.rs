//! `require_approval` rules: the request is answered 403 with an approval
//! request id; once an approver approves it (the real `appliance approvals`
//! CLI), the same user's identical request (method, target, body) passes
//! within the reuse window, while a different body is held again.

use appliance::audit::AuditKind;
use e2e::http_upstream::UpstreamApp;
use e2e::unique_name;

use super::{curl, http_connection, http_records, json, start};

/// The approval id in a gateway answer: "approval required, request <id>: ...".
fn request_id(body: &str) -> String {
    let after = body
        .split("approval required, request ")
        .nth(1)
        .unwrap_or_else(|| panic!("no approval id in {body:?}"));
    after
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_required_then_the_identical_request_passes() {
    let upstream = UpstreamApp::start().await;
    let name = unique_name("deploy");
    let conns = http_connection(
        &name,
        &upstream.addr.to_string(),
        &["alice@example.com"],
        r#"[[connection.http.rules]]
name = "hold-deploys"
methods = ["POST"]
paths = ["/echo/deploy/**"]
action = "require_approval"
approvers_group = "release-managers"
reuse_window = "10m""#,
    );
    let (app, tl, at) = start(&conns, "alice@example.com", &[&name]).await;
    let at = at[&name];
    let deploy = [
        "--data-binary",
        "{\"version\": 42}",
        "-H",
        "Content-Type: application/json",
    ];

    // Held: 403 with the request id, in text and in JSON; nothing reached the app.
    let r = curl(at, &name, "/echo/deploy/prod", &deploy);
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("held by rule \"hold-deploys\""),
        "{}",
        r.body
    );
    assert!(r.body.contains("release-managers"), "{}", r.body);
    let id = request_id(&r.body);
    assert_eq!(id.len(), appliance::approvals::ID_LEN, "{}", r.body);
    let r = curl(
        at,
        &name,
        "/echo/other",
        &["-X", "POST", "-H", "Accept: application/json"],
    );
    assert_eq!(r.status, 200, "unrelated paths pass: {}", r.body);
    let mut with_json = deploy.to_vec();
    with_json.extend(["-H", "Accept: application/json"]);
    let r = curl(at, &name, "/echo/deploy/staging", &with_json);
    assert_eq!(r.status, 403);
    assert_eq!(json(&r)["error"], "approval_required");
    assert_eq!(json(&r)["request_id"].as_str().map(str::len), Some(8));

    // An approver approves the first one (the requester could not).
    let out = app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        "alice@example.com",
        "--groups",
        "release-managers",
    ]);
    assert!(
        !out.status.success(),
        "the requester approved their own request"
    );
    let out = app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        "bob@example.com",
        "--groups",
        "release-managers",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The identical request now passes, body and all; a different body does not.
    let r = curl(at, &name, "/echo/deploy/prod", &deploy);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json(&r)["body_bytes"], 15);
    let r = curl(
        at,
        &name,
        "/echo/deploy/prod",
        &["--data-binary", "{\"version\": 43}"],
    );
    assert_eq!(r.status, 403);
    assert_ne!(request_id(&r.body), id);

    // Audited: held (with the id) and then forwarded reusing the approval.
    let recs = http_records(&app, &name).await;
    let with = |outcome: &str| {
        recs.iter()
            .filter(|r| r.record.outcome.as_deref() == Some(outcome))
            .filter(|r| {
                r.record
                    .detail
                    .as_ref()
                    .is_some_and(|d| d["approval"] == id.as_str())
            })
            .count()
    };
    assert_eq!(with("approval_required"), 1, "{recs:#?}");
    assert_eq!(with("ok"), 1, "{recs:#?}");
    assert!(!app.audit(Some(AuditKind::HttpRequest)).await.is_empty());
    tl.stop().await;
    app.stop().await;
}
