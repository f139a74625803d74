use super::actions::{self, ActionEnv};
use super::matcher::{event_kinds, matching};
use crate::audit::{AuditKind, AuditMode, AuditRecord, QueueFullPolicy, StoredRecord};
use crate::policy::parse_policy;
use crate::policy::routes::Action;

const BASE: &str = r#"version = 1
[identity]
issuer = "https://idp.test"
audience = "appliance"
jwks_url = "https://idp.test/jwks"
"#;

fn policy(extra: &str) -> Result<crate::policy::Policy, crate::policy::PolicyError> {
    parse_policy(&format!("{BASE}\n{extra}"))
}

fn denied_drop() -> StoredRecord {
    StoredRecord::new(
        9,
        AuditRecord::new(AuditKind::Statement)
            .user("carol@example.com")
            .groups(["contractors"])
            .connection("pg-prod")
            .session("s-1")
            .outcome("denied")
            .detail(serde_json::json!({"statement": "DROP TABLE users", "class": "ddl"})),
    )
}

const ROUTES: &str = r#"
[audit]
mode = "strict"
queue_full = "refuse"

[[route]]
name = "ddl"
on = ["statement_denied"]
connections = ["pg-prod"]
groups = ["contractors"]
statement_classes = ["ddl"]
text = "(?i)drop\\s+table"
actions = [
  { type = "webhook", url = "https://hooks.example.com/x", secret = "hook_key", timeout = "2s", retries = 1 },
  { type = "close_session" },
]

[[route]]
name = "starts"
on = ["session_start"]
actions = [{ type = "command", runbook = "notify.sh", args = ["--quiet"] }]
"#;

#[test]
fn audit_table_and_routes_parse_and_validate() {
    let p = policy(ROUTES).unwrap();
    assert_eq!(p.audit.mode, Some(AuditMode::Strict));
    assert_eq!(p.audit.queue_full, Some(QueueFullPolicy::Refuse));
    assert_eq!(p.routes.len(), 2);
    assert!(matches!(
        p.routes[0].actions[0],
        Action::Webhook { retries: 1, .. }
    ));
    assert_eq!(
        p.routes[1].actions[0],
        Action::Command {
            runbook: "notify.sh".into(),
            args: vec!["--quiet".into()],
            timeout: std::time::Duration::from_secs(30),
        }
    );
    for (bad, needle) in [
        ("[audit]\nmode = \"eventually\"\n", "mode"),
        ("[[route]]\nname = \"x\"\non = [\"nope\"]\nactions = [{ type = \"close_session\" }]\n", "unknown event kind"),
        ("[[route]]\nname = \"x\"\non = [\"event_action\"]\nactions = [{ type = \"close_session\" }]\n", "unknown event kind"),
        ("[[route]]\nname = \"x\"\non = [\"held\"]\nactions = []\n", "actions"),
        ("[[route]]\nname = \"x\"\non = [\"held\"]\ntext = \"(\"\nactions = [{ type = \"close_session\" }]\n", "regex"),
        ("[[route]]\nname = \"x\"\non = [\"held\"]\nactions = [{ type = \"command\", runbook = \"../bin/sh\" }]\n", "plain file name"),
        ("[[route]]\nname = \"x\"\non = [\"held\"]\nactions = [{ type = \"close_session\", url = \"http://x\" }]\n", "does not apply"),
        ("[[route]]\nname = \"x\"\non = [\"held\"]\nactions = [{ type = \"webhook\", url = \"http://x\", secret = \"not a name\" }]\n", "NAME of a secret"),
    ] {
        let err = policy(bad).unwrap_err().to_string();
        assert!(err.contains(needle), "{bad}: {err}");
    }
}

#[test]
fn events_derive_kinds_and_routes_filter_on_every_condition() {
    let p = policy(ROUTES).unwrap();
    let rec = denied_drop();
    assert_eq!(event_kinds(&rec), vec!["statement", "statement_denied"]);
    let m = matching(&p.routes, &rec);
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].0.name.as_str(), m[0].1.as_str()),
        ("ddl", "statement_denied")
    );
    // Each filter excludes on its own.
    let mut other = rec.clone();
    other.record.connection = Some("pg-dev".into());
    assert!(matching(&p.routes, &other).is_empty());
    let mut other = rec.clone();
    other.record.groups = vec!["dba".into()];
    assert!(matching(&p.routes, &other).is_empty());
    let mut other = rec.clone();
    other.record.detail = Some(serde_json::json!({"statement": "DROP TABLE x", "class": "dml"}));
    assert!(matching(&p.routes, &other).is_empty());
    let mut other = rec.clone();
    other.record.detail = Some(serde_json::json!({"statement": "TRUNCATE users", "class": "ddl"}));
    assert!(matching(&p.routes, &other).is_empty());
    // The PostgreSQL gateway's decision sits under `control`.
    let mut other = rec.clone();
    other.record.detail = Some(
        serde_json::json!({"statement": "drop table users", "control": {"decision": "deny", "class": "ddl"}}),
    );
    assert_eq!(matching(&p.routes, &other).len(), 1);
    // Action outcomes never route (no loops).
    let action = StoredRecord::new(1, AuditRecord::new(AuditKind::EventAction));
    assert!(event_kinds(&action).is_empty());
    // Derived kinds.
    let held = StoredRecord::new(1, AuditRecord::new(AuditKind::ApprovalRequested));
    assert!(event_kinds(&held).contains(&"held".to_string()));
    let masked = StoredRecord::new(
        1,
        AuditRecord::new(AuditKind::Statement)
            .detail(serde_json::json!({"masked_columns": ["ssn"]})),
    );
    assert!(event_kinds(&masked).contains(&"masked_column_read".to_string()));
}

#[test]
fn dry_run_plans_without_running() {
    let p = policy(ROUTES).unwrap();
    let (kinds, plans) = super::dry_run(&p.routes, &denied_drop());
    assert_eq!(kinds, vec!["statement", "statement_denied"]);
    assert_eq!(plans.len(), 1);
    assert_eq!(
        plans[0].actions,
        vec!["webhook POST https://hooks.example.com/x", "close_session"]
    );
    assert_eq!(plans[0].payload["record"]["user"], "carol@example.com");
    assert_eq!(plans[0].payload["event"], "statement_denied");
}

#[test]
fn webhook_signatures_are_hmac_sha256_over_timestamp_and_body() {
    // RFC 4231 style check against an independent computation (python hmac):
    // hmac.new(b"key", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert_eq!(
        actions::sign(b"key", 1_700_000_000, b"{}"),
        "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
    );
}

fn env(dir: &std::path::Path) -> ActionEnv {
    ActionEnv {
        secrets: Default::default(),
        sessions: Default::default(),
        live: Default::default(),
        db_path: dir.join("appliance.db"),
        runbook_dir: Some(dir.to_path_buf()),
    }
}

#[tokio::test]
async fn runbooks_get_the_event_on_stdin_and_their_output_is_captured() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("appliance-runbook-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = dir.join("echo.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"event=$HOOP_EVENT arg=$1\"\ncat\necho oops >&2\nexit 3\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let slow = dir.join("slow.sh");
    std::fs::write(&slow, "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o700)).unwrap();
    let loose = dir.join("loose.sh");
    std::fs::write(&loose, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o777)).unwrap();

    let rec = denied_drop();
    let payload = serde_json::json!({"event": "statement_denied", "route": "r", "record": rec});
    let cmd = |runbook: &str, secs| Action::Command {
        runbook: runbook.into(),
        args: vec!["A1".into()],
        timeout: std::time::Duration::from_secs(secs),
    };
    let o = actions::run(&env(&dir), &cmd("echo.sh", 5), "r", 0, &rec, &payload).await;
    assert!(!o.ok);
    assert_eq!(o.reason, "exit 3");
    let out = o.detail["stdout"].as_str().unwrap();
    assert!(out.starts_with("event=statement_denied arg=A1\n"), "{out}");
    let echoed: serde_json::Value = serde_json::from_str(out.lines().nth(1).unwrap()).unwrap();
    assert_eq!(echoed, payload);
    assert_eq!(o.detail["stderr"], "oops\n");

    let started = std::time::Instant::now();
    let o = actions::run(&env(&dir), &cmd("slow.sh", 1), "r", 0, &rec, &payload).await;
    assert!(!o.ok && o.reason.contains("timed out"), "{o:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let o = actions::run(&env(&dir), &cmd("loose.sh", 1), "r", 0, &rec, &payload).await;
    assert!(o.reason.contains("writable by group or others"), "{o:?}");
    let o = actions::run(&env(&dir), &cmd("missing.sh", 1), "r", 0, &rec, &payload).await;
    assert!(!o.ok);
    let _ = std::fs::remove_dir_all(&dir);
}
