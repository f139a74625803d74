//! In-session controls for PostgreSQL end to end: guardrails that deny and
//! hold statements, and the human approval of a held statement.

use std::process::Stdio;
use std::time::Duration;

use appliance::audit::AuditKind;
use tokio::io::AsyncBufReadExt;

use crate::postgres::PgPath;
use e2e::postgres::PASSWORD;

const CONTROLS: &str =
    "\n[connection.postgres.guardrails]\ndeny = [\"drop\", \"truncate\"]\nhold = [\"write\"]\n\n\
[connection.postgres.approval]\napprovers_group = \"leads\"\ntimeout = \"4s\"\n";

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts psql running `sql` and returns the approval id from its NOTICE.
async fn held_psql(
    p: &PgPath,
    sql: &str,
) -> (
    tokio::process::Child,
    String,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) {
    let mut child = tokio::process::Command::new("psql")
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .arg(p.conninfo("whoever", "postgres"))
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let id = e2e::held_approval_id(&mut lines, Duration::from_secs(10)).await;
    (child, id, lines)
}

async fn finish(
    child: tokio::process::Child,
    mut lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
) -> (bool, String) {
    let mut err = String::new();
    let out = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(l)) = lines.next_line().await {
            err.push_str(&l);
            err.push('\n');
        }
        child.wait_with_output().await.unwrap()
    })
    .await
    .expect("psql finishes");
    (
        out.status.success(),
        format!("{}{err}", String::from_utf8_lossy(&out.stdout)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_statements_keep_the_session_and_transaction_semantics() {
    let p = PgPath::start(CONTROLS, PASSWORD).await;
    let out = p.psql(&[
        "-c",
        "create table t (x int)",
        "-c",
        "drop table t",
        "-c",
        "select 'after the denial'",
        "-c",
        "begin; truncate t; select 1",
    ]);
    let t = text(&out);
    assert!(
        t.contains("statement denied by policy: class drop is denied by guardrails.deny (policy version 1)"),
        "{t}"
    );
    assert!(t.contains("after the denial"), "{t}");
    assert!(t.contains("class truncate is denied"), "{t}");
    // A multi-statement text with a denied part runs nothing of it.
    assert_eq!(p.pg.psql("select count(*) from t"), "0");

    // In a transaction block, a denial fails the block as any error would.
    let script = "BEGIN;\nDROP TABLE t;\nSELECT 1;\nROLLBACK;\nSELECT 'clean again';\n";
    let mut child = std::process::Command::new("psql")
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .arg(p.conninfo("whoever", "postgres"))
        .args(["-X", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let t = text(&child.wait_with_output().unwrap());
    assert!(t.contains("current transaction is aborted"), "{t}");
    assert!(t.contains("clean again"), "{t}");

    // The extended protocol: Parse of a denied statement, then the session goes on.
    let (client, conn) =
        tokio_postgres::connect(&p.conninfo("d", "postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let task = tokio::spawn(conn);
    let err = client.execute("drop table t", &[]).await.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("42501"), "{err}");
    assert_eq!(
        client
            .query_one("select 5", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        5
    );
    drop(client);
    let _ = task.await;

    let denied: Vec<_> = p
        .app
        .audit(Some(AuditKind::Statement))
        .await
        .into_iter()
        .filter(|r| r.record.outcome.as_deref() == Some("denied"))
        .collect();
    assert!(denied.len() >= 4, "{denied:#?}");
    let d = denied[0].record.detail.as_ref().unwrap();
    assert_eq!(d["control"]["class"], "drop");
    assert_eq!(d["control"]["rule"], "guardrails.deny");
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_statements_wait_for_a_human() {
    let p = PgPath::start(CONTROLS, PASSWORD).await;
    p.pg.psql("create table orders (id int)");

    // Approved (by bob, through the local CLI): the insert runs.
    let (child, id, lines) = held_psql(&p, "insert into orders values (1)").await;
    // Meanwhile another session is not blocked.
    let out = p.psql(&["-A", "-t", "-c", "select 'not blocked'"]);
    assert!(text(&out).contains("not blocked"));
    // Self-approval is refused.
    let own = p.app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        "alice@example.com",
        "--groups",
        "leads",
    ]);
    assert!(!own.status.success());
    assert!(text(&own).contains("self-approval"), "{}", text(&own));
    let ok = p.app.cli(&[
        "approvals",
        "approve",
        &id,
        "--as",
        "bob@example.com",
        "--groups",
        "leads",
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    let (success, t) = finish(child, lines).await;
    assert!(success, "{t}");
    assert!(t.contains("INSERT 0 1"), "{t}");
    assert_eq!(p.pg.psql("select count(*) from orders"), "1");

    // Denied with a reason: the client sees who and why; nothing ran.
    let (child, id, lines) = held_psql(&p, "delete from orders where id = 1").await;
    let no = p.app.cli(&[
        "approvals",
        "deny",
        &id,
        "--as",
        "bob@example.com",
        "--groups",
        "leads",
        "--reason",
        "not during the freeze",
    ]);
    assert!(no.status.success(), "{}", text(&no));
    let (success, t) = finish(child, lines).await;
    assert!(!success);
    assert!(
        t.contains("denied by bob@example.com: not during the freeze"),
        "{t}"
    );
    assert_eq!(p.pg.psql("select count(*) from orders"), "1");

    // Nobody decides: the hold times out (4 s in this policy).
    let (child, _id, lines) = held_psql(&p, "update orders set id = 2").await;
    let (success, t) = finish(child, lines).await;
    assert!(!success);
    assert!(t.contains("timed out"), "{t}");

    // The client cancels while held: the request is withdrawn.
    let (client, conn) =
        tokio_postgres::connect(&p.conninfo("c", "postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let task = tokio::spawn(conn);
    let token = client.cancel_token();
    let held = client.simple_query("insert into orders values (3)");
    let cancel = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    };
    let (r, ()) = tokio::join!(held, cancel);
    let err = r.unwrap_err();
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");
    assert_eq!(
        client
            .query_one("select count(*)::int from orders", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );
    drop(client);
    let _ = task.await;

    let kinds: Vec<AuditKind> = p
        .app
        .audit(None)
        .await
        .iter()
        .map(|r| r.record.kind)
        .collect();
    for k in [
        AuditKind::ApprovalRequested,
        AuditKind::ApprovalGranted,
        AuditKind::ApprovalDenied,
        AuditKind::ApprovalTimedOut,
        AuditKind::ApprovalWithdrawn,
    ] {
        assert!(kinds.contains(&k), "no {k} in {kinds:?}");
    }
    p.tl.stop().await;
    p.app.stop().await;
}
