//! The PostgreSQL gateway end to end: real psql, pgbench and tokio-postgres
//! through tunnel-lite and the appliance to a throw-away PostgreSQL with
//! scram-sha-256, with the upstream password injected by the appliance.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use appliance::audit::AuditKind;
use e2e::appliance::{policy_with, ApplianceFixture};
use e2e::postgres::{Postgres, PASSWORD, SUPERUSER};
use e2e::tunnel::TunnelLite;
use e2e::{run, unique_name};

const HOUR: Duration = Duration::from_secs(3600);

/// A `kind = "postgres"` connection table logging in as the superuser with
/// the secret `pg_password`.
pub fn pg_connection(name: &str, upstream: &str, extra: &str) -> String {
    format!(
        "[[connection]]\nname = {name:?}\nkind = \"postgres\"\nupstream = {upstream:?}\nallow_groups = [\"dev\"]\n\n\
         [connection.secrets]\npassword = \"pg_password\"\n\n[connection.postgres]\nuser = {SUPERUSER:?}\n{extra}\n"
    )
}

pub struct PgPath {
    pub pg: Postgres,
    pub app: ApplianceFixture,
    pub tl: TunnelLite,
    pub name: String,
    pub at: SocketAddr,
}

impl PgPath {
    /// PostgreSQL, the appliance with the password in its secret store,
    /// tunnel-lite logged in as alice (group dev).
    pub async fn start(extra: &str, secret: &str) -> PgPath {
        let pg = Postgres::start();
        let name = unique_name("pg");
        let policy = policy_with(1, &pg_connection(&name, &pg.addr(), extra));
        let app = ApplianceFixture::start_with_secrets(&policy, &[("pg_password", secret)]).await;
        let tl = TunnelLite::start(&app, &app.token("alice@example.com", &["dev"], HOUR)).await;
        let at = tl.wait_listening(&name, 5432).await;
        PgPath {
            pg,
            app,
            tl,
            name,
            at,
        }
    }

    /// A libpq connection string through the tunnel, with NO password.
    pub fn conninfo(&self, user: &str, db: &str) -> String {
        format!(
            "host={}.hoop hostaddr={} port=5432 user={user} dbname={db} sslmode=prefer",
            self.name,
            self.at.ip()
        )
    }

    /// psql through the tunnel; the environment carries no password at all.
    pub fn psql(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new("psql");
        cmd.env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent/pgpass")
            .arg(self.conninfo("whoever", "postgres"))
            .args(["-X", "-v", "ON_ERROR_STOP=0"])
            .args(args);
        run(&mut cmd, false)
    }
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_connects_without_a_password_and_every_statement_is_audited() {
    let p = PgPath::start("", PASSWORD).await;
    let out = p.psql(&["-A", "-t", "-c", "select current_user, 40 + 2"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{SUPERUSER}|42")
    );

    let statements = p.app.audit(Some(AuditKind::Statement)).await;
    let s = statements
        .iter()
        .find(|r| {
            r.record
                .detail
                .as_ref()
                .and_then(|d| d["statement"].as_str())
                == Some("select current_user, 40 + 2")
        })
        .unwrap_or_else(|| panic!("statement not audited: {statements:#?}"));
    assert_eq!(s.record.user.as_deref(), Some("alice@example.com"));
    assert_eq!(s.record.connection.as_deref(), Some(p.name.as_str()));
    let d = s.record.detail.as_ref().unwrap();
    assert_eq!(d["database"], "postgres");
    assert_eq!(d["rows"], 1);
    assert_eq!(s.record.outcome.as_deref(), Some("ok"));
    // `audit list --session` shows the session's statements.
    let session = s.record.session_id.clone().unwrap();
    let out = p.app.cli(&["audit", "list", "--session", &session]);
    let listing = text(&out);
    assert!(
        listing.contains("select current_user, 40 + 2") && listing.contains("session_start"),
        "{listing}"
    );
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_script_meta_commands_copy_reconnect_and_error_recovery() {
    let p = PgPath::start("", PASSWORD).await;
    p.pg.psql("CREATE DATABASE other");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("in.csv");
    let rows: String = (1..=500).map(|i| format!("{i},item {i}\n")).collect();
    std::fs::write(&csv, &rows).unwrap();
    let out_csv = dir.path().join("out.csv");
    let script = dir.path().join("script.sql");
    std::fs::write(
        &script,
        format!(
            "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
             \\d items\n\
             \\dt+\n\
             \\copy items FROM '{csv}' WITH (FORMAT csv)\n\
             \\copy (SELECT * FROM items ORDER BY id) TO '{out}' WITH (FORMAT csv)\n\
             SELECT count(*) AS n FROM items;\n\
             SELECT 1/0;\n\
             SELECT 'recovered' AS after_error;\n\
             \\c other\n\
             SELECT current_database();\n",
            csv = csv.display(),
            out = out_csv.display()
        ),
    )
    .unwrap();
    let out = p.psql(&["-f", script.to_str().unwrap()]);
    let t = text(&out);
    assert!(t.contains("Table \"public.items\""), "{t}");
    assert!(t.contains("items_pkey"), "{t}");
    assert!(t.contains("COPY 500"), "{t}");
    assert!(t.contains("500"), "{t}");
    assert!(t.contains("division by zero"), "{t}");
    assert!(t.contains("recovered"), "{t}");
    assert!(
        t.contains("You are now connected to database \"other\""),
        "{t}"
    );
    assert!(t.contains(" other\n"), "{t}");
    assert_eq!(std::fs::read_to_string(&out_csv).unwrap(), rows);

    // \watch: iterations until interrupted; the interrupt goes through the
    // gateway as a cancel request.
    let watch = dir.path().join("watch.sql");
    std::fs::write(&watch, "SELECT 'tick' \\watch 0.1\n").unwrap();
    let mut child = std::process::Command::new("psql")
        .env("PGPASSFILE", dir.path().join("no-pgpass"))
        .arg(p.conninfo("whoever", "postgres"))
        .args(["-X", "-A", "-t", "-f", watch.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    run(
        Command::new("kill").args(["-INT", &child.id().to_string()]),
        true,
    );
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let ticks = String::from_utf8_lossy(&out.stdout).matches("tick").count();
    assert!(ticks >= 3, "{}", text(&out));

    // The failed statement is audited with its SQLSTATE.
    let statements = p.app.audit(Some(AuditKind::Statement)).await;
    let failed = statements
        .iter()
        .find(|r| {
            r.record
                .detail
                .as_ref()
                .and_then(|d| d["statement"].as_str())
                == Some("SELECT 1/0;")
        })
        .expect("failed statement audited");
    assert_eq!(failed.record.detail.as_ref().unwrap()["sqlstate"], "22012");
    assert_eq!(failed.record.outcome.as_deref(), Some("error"));
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_in_all_three_protocol_modes() {
    let p = PgPath::start("", PASSWORD).await;
    let base = |args: &[&str]| {
        let mut c = Command::new("pgbench");
        c.env("PGPASSFILE", "/nonexistent/pgpass")
            .args(["-h", &p.at.ip().to_string(), "-p", "5432", "-U", "anyone"])
            .args(args)
            .arg("postgres");
        run(&mut c, false)
    };
    let init = base(&["-i", "-s", "1", "-q"]);
    assert!(init.status.success(), "{}", text(&init));
    for mode in ["simple", "extended", "prepared"] {
        let out = base(&["-c", "4", "-j", "2", "-t", "50", "-M", mode]);
        let t = text(&out);
        assert!(out.status.success(), "{mode}: {t}");
        assert!(
            t.contains("number of transactions actually processed: 200/200"),
            "{mode}: {t}"
        );
        assert!(
            t.contains("number of failed transactions: 0"),
            "{mode}: {t}"
        );
    }
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_password_names_the_credential_not_the_secret() {
    let wrong = "this-is-not-the-password-8f3a";
    let p = PgPath::start("", wrong).await;
    let out = p.psql(&["-c", "select 1"]);
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("rejected the gateway's credential"), "{t}");
    assert!(t.contains(&p.name), "{t}");
    assert!(!t.contains(wrong), "the secret leaked: {t}");
    // Nor in the audit trail.
    let all = p.app.cli(&["audit", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains(wrong));
    p.tl.stop().await;
    p.app.stop().await;
}

/// Speaks the protocol by hand and records every byte that comes back.
async fn raw_session(at: SocketAddr, messages: &[Vec<u8>]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
    let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
    startup.extend_from_slice(b"user\0mallory\0database\0postgres\0\0");
    let len = startup.len() as u32;
    startup[..4].copy_from_slice(&len.to_be_bytes());
    s.write_all(&startup).await.unwrap();
    for m in messages {
        s.write_all(m).await.unwrap();
    }
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
    got
}

fn query_msg(sql: &str) -> Vec<u8> {
    let mut m = vec![b'Q', 0, 0, 0, 0];
    m.extend_from_slice(sql.as_bytes());
    m.push(0);
    let len = (m.len() - 1) as u32;
    m[1..5].copy_from_slice(&len.to_be_bytes());
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_never_reaches_the_laptop_and_bad_input_is_refused() {
    let p = PgPath::start("", PASSWORD).await;
    // A whole session, captured on the client side.
    let got = raw_session(
        p.at,
        &[query_msg("select 'hello'"), b"X\0\0\0\x04".to_vec()],
    )
    .await;
    assert!(got.windows(5).any(|w| w == b"hello"));
    assert!(!got
        .windows(PASSWORD.len())
        .any(|w| w == PASSWORD.as_bytes()));
    assert_eq!(got[0], b'R', "AuthenticationOk first");

    // Oversized message: refused with 08P01 before its body arrives.
    let got = raw_session(p.at, &[b"Q\x7f\xff\xff\xff".to_vec()]).await;
    let t = String::from_utf8_lossy(&got);
    assert!(
        t.contains("08P01") && t.contains("exceeds the limit"),
        "{t}"
    );
    // Length below 4.
    let got = raw_session(p.at, &[b"Q\0\0\0\x02".to_vec()]).await;
    assert!(String::from_utf8_lossy(&got).contains("08P01"));
    // Garbage inside a Query (no terminating NUL).
    let got = raw_session(p.at, &[b"Q\0\0\0\x08abcd".to_vec()]).await;
    assert!(String::from_utf8_lossy(&got).contains("08P01"));

    // A startup packet that lies about its length.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(p.at).await.unwrap();
        s.write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's', b'e', b'r', 0, b'x'])
            .await
            .unwrap();
        s.write_all(&[b'y'; 26]).await.unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        assert!(
            String::from_utf8_lossy(&got).contains("08P01"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }

    // And the gateway still serves everyone else.
    let out = p.psql(&["-A", "-t", "-c", "select 7"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "7",
        "{}",
        text(&out)
    );
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_mid_query_gives_the_client_an_error() {
    let p = PgPath::start("", PASSWORD).await;
    let child = std::process::Command::new("psql")
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .arg(p.conninfo("whoever", "postgres"))
        .args(["-X", "-c", "select pg_sleep(30)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the query to be running, then kill its backend.
    let mut killed = false;
    for _ in 0..100 {
        let n = p.pg.psql("select count(pg_terminate_backend(pid)) from pg_stat_activity where query = 'select pg_sleep(30)'");
        if n == "1" {
            killed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(killed);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(
        t.contains("terminating connection") || t.contains("lost"),
        "{t}"
    );
    let out = p.psql(&["-A", "-t", "-c", "select 'still here'"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("still here"));
    let ends = p.app.audit(Some(AuditKind::SessionEnd)).await;
    assert!(
        ends.iter()
            .any(|r| r.record.reason.as_deref() == Some("upstream connection lost")),
        "{ends:#?}"
    );
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_roles_name_the_person_and_disappear() {
    let pg = Postgres::start();
    pg.psql("CREATE ROLE readers NOLOGIN; GRANT pg_read_all_data TO readers");
    let name = unique_name("pgeph");
    let conn = format!(
        "[[connection]]\nname = {name:?}\nkind = \"postgres\"\nupstream = {:?}\nallow_groups = [\"dev\"]\n\n\
         [connection.secrets]\nadmin_password = \"pg_admin\"\n\n[connection.postgres]\ndatabase = \"postgres\"\n\n\
         [connection.postgres.credential]\nmode = \"ephemeral\"\nadmin_user = {SUPERUSER:?}\ngrant_role = \"readers\"\nttl = \"10m\"\n",
        pg.addr()
    );
    let app =
        ApplianceFixture::start_with_secrets(&policy_with(1, &conn), &[("pg_admin", PASSWORD)])
            .await;
    let tl = TunnelLite::start(&app, &app.token("carol@example.com", &["dev"], HOUR)).await;
    let at = tl.wait_listening(&name, 5432).await;
    let conninfo = format!(
        "host=x hostaddr={} port=5432 user=x dbname=postgres",
        at.ip()
    );
    let (client, connection) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    let row = client
        .query_one("select current_user::text, (select usename::text from pg_stat_activity where pid = pg_backend_pid())", &[])
        .await
        .unwrap();
    let role: String = row.get(0);
    assert!(
        role.starts_with("carol_") && role.len() == "carol_".len() + 4,
        "{role}"
    );
    assert_eq!(row.get::<_, String>(1), role);
    assert_eq!(
        pg.psql(&format!(
            "select count(*) from pg_roles where rolname = '{role}' and rolvaliduntil > now()"
        )),
        "1"
    );
    drop(client);
    let _ = driver.await;
    let gone = e2e::eventually(Duration::from_secs(10), || {
        pg.psql(&format!(
            "select count(*) from pg_roles where rolname = '{role}'"
        )) == "0"
    })
    .await;
    assert!(gone, "ephemeral role {role} still exists");
    tl.stop().await;
    app.stop().await;
}

pub async fn driver(p: &PgPath) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) =
        tokio_postgres::connect(&p.conninfo("driver", "postgres"), tokio_postgres::NoTls)
            .await
            .expect("tokio-postgres connects through the gateway");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Raw binary NUMERIC (no decimal crate needed to see the wire format).
struct RawNumeric(Vec<u8>);
impl<'a> tokio_postgres::types::FromSql<'a> for RawNumeric {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(RawNumeric(raw.to_vec()))
    }
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::NUMERIC
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_types_transactions_streaming_pipelining_and_cancel() {
    use futures_util::{StreamExt, TryStreamExt};
    let p = PgPath::start("", PASSWORD).await;
    let (mut client, task) = driver(&p).await;

    // Prepared statement with binary results across types.
    let stmt = client
        .prepare(
            "select $1::int4 + 1, 12.5::numeric, '2026-11-29 10:00:00+00'::timestamptz, \
             '\\xdeadbeef'::bytea, '{\"a\": [1, 2]}'::jsonb, array[1, 2, 3]::int4[], $2::text",
        )
        .await
        .unwrap();
    let row = client.query_one(&stmt, &[&41i32, &"héllo"]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 42);
    // 12.5: ndigits 2, weight 0, sign +, dscale 1, digits [12, 5000]
    assert_eq!(
        row.get::<_, RawNumeric>(1).0,
        vec![0, 2, 0, 0, 0, 0, 0, 1, 0, 12, 0x13, 0x88]
    );
    let ts: std::time::SystemTime = row.get(2);
    assert_eq!(
        ts.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        1_795_946_400
    );
    assert_eq!(row.get::<_, Vec<u8>>(3), vec![0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(
        row.get::<_, serde_json::Value>(4),
        serde_json::json!({"a": [1, 2]})
    );
    assert_eq!(row.get::<_, Vec<i32>>(5), vec![1, 2, 3]);
    assert_eq!(row.get::<_, String>(6), "héllo");

    // Transactions.
    client
        .batch_execute("create table tx (v int)")
        .await
        .unwrap();
    let t = client.transaction().await.unwrap();
    t.execute("insert into tx values (1)", &[]).await.unwrap();
    t.rollback().await.unwrap();
    let t = client.transaction().await.unwrap();
    t.execute("insert into tx values (2)", &[]).await.unwrap();
    t.commit().await.unwrap();
    let v: Vec<i32> = client
        .query("select v from tx", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(v, vec![2]);

    // A million rows, streamed.
    let rows = client
        .query_raw(
            "select g from generate_series(1, 1000000) g",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    let (count, sum) = rows
        .try_fold((0u64, 0i64), |(n, s), r| async move {
            Ok((n + 1, s + r.get::<_, i32>(0) as i64))
        })
        .await
        .unwrap();
    assert_eq!((count, sum), (1_000_000, 500_000_500_000));

    // Pipelining: many extended queries in flight on one connection.
    let futures: Vec<_> = (0..100i32)
        .map(|i| {
            let c = &client;
            async move {
                c.query_one("select $1::int4 * 2", &[&i])
                    .await
                    .map(|r| r.get::<_, i32>(0))
            }
        })
        .collect();
    let results: Vec<i32> = futures_util::future::try_join_all(futures).await.unwrap();
    assert_eq!(results, (0..100).map(|i| i * 2).collect::<Vec<_>>());

    // Cancel a long query through the gateway's own cancel key.
    let token = client.cancel_token();
    let sleeper = {
        let started = std::time::Instant::now();
        let q = client.simple_query("select pg_sleep(30)");
        let cancel = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(tokio_postgres::NoTls).await
        };
        let (r, c) = tokio::join!(q, cancel);
        c.expect("cancel request sent");
        (r, started.elapsed())
    };
    let err = sleeper.0.expect_err("the sleep was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    assert!(
        sleeper.1 < Duration::from_secs(2),
        "cancel took {:?}",
        sleeper.1
    );
    // The session is still usable afterwards.
    assert_eq!(
        client
            .query_one("select 1", &[])
            .await
            .unwrap()
            .get::<_, i32>(0),
        1
    );

    // LISTEN/NOTIFY across two sessions through the gateway.
    let (listener, mut connection) =
        tokio_postgres::connect(&p.conninfo("listener", "postgres"), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let listen_task = tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(msg)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener.batch_execute("LISTEN news").await.unwrap();
    client.batch_execute("NOTIFY news, 'fresh'").await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, ("news".to_string(), "fresh".to_string()));
    drop(listener);
    listen_task.abort();
    drop(client);
    let _ = task.await;
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_megabyte_copy_round_trip() {
    use futures_util::{SinkExt, StreamExt};
    use ring::digest::{Context, SHA256};
    let p = PgPath::start("", PASSWORD).await;
    let (client, task) = driver(&p).await;
    client
        .batch_execute("create table blobs (id int, body text)")
        .await
        .unwrap();
    // 100 MB of CSV rows, hashed as they are produced.
    let line_body = "x".repeat(1000);
    let mut sent = Context::new(&SHA256);
    let sink = client
        .copy_in("copy blobs from stdin (format csv)")
        .await
        .unwrap();
    futures_util::pin_mut!(sink);
    let mut total = 0usize;
    let mut i = 0;
    while total < 100 * 1024 * 1024 {
        let mut chunk = String::with_capacity(64 * 1024);
        while chunk.len() < 60 * 1024 {
            chunk.push_str(&format!("{i},{line_body}\n"));
            i += 1;
        }
        sent.update(chunk.as_bytes());
        total += chunk.len();
        sink.send(bytes::Bytes::from(chunk)).await.unwrap();
    }
    let n = sink.finish().await.unwrap();
    assert_eq!(n, i as u64);
    let stream = client
        .copy_out("copy (select * from blobs order by id) to stdout (format csv)")
        .await
        .unwrap();
    futures_util::pin_mut!(stream);
    let mut got = Context::new(&SHA256);
    let mut received = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        got.update(&chunk);
    }
    assert_eq!(received, total);
    assert_eq!(sent.finish().as_ref(), got.finish().as_ref());
    drop(client);
    let _ = task.await;
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_upstream_verified_and_required() {
    let pg = Postgres::start_with_tls();
    let ca = pg.ca_cert().display().to_string();
    let verified = unique_name("pgtls");
    let required = unique_name("pgreq");
    let wrong_name = unique_name("pgbad");
    let conns = pg_connection(
        &verified,
        &pg.addr(),
        &format!("tls = \"verify-full\"\nca_file = {ca:?}\nserver_name = \"localhost\"\n"),
    ) + &pg_connection(&required, &pg.addr(), "tls = \"require\"\n")
        + &pg_connection(
            &wrong_name,
            &pg.addr(),
            &format!("tls = \"verify-full\"\nca_file = {ca:?}\nserver_name = \"db.example\"\n"),
        );
    let app =
        ApplianceFixture::start_with_secrets(&policy_with(1, &conns), &[("pg_password", PASSWORD)])
            .await;
    let tl = TunnelLite::start(&app, &app.token("alice@example.com", &["dev"], HOUR)).await;
    for name in [&verified, &required] {
        let at = tl.wait_listening(name, 5432).await;
        let out = run(
            Command::new("psql")
                .env("PGPASSFILE", "/nonexistent/pgpass")
                .arg(format!(
                    "hostaddr={} port=5432 user=x dbname=postgres",
                    at.ip()
                ))
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-c",
                    "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                ]),
            false,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "t",
            "{name}: {}",
            text(&out)
        );
    }
    let at = tl.wait_listening(&wrong_name, 5432).await;
    let out = run(
        Command::new("psql")
            .env("PGPASSFILE", "/nonexistent/pgpass")
            .arg(format!(
                "hostaddr={} port=5432 user=x dbname=postgres",
                at.ip()
            ))
            .args(["-X", "-c", "select 1"]),
        false,
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("TLS to the upstream"), "{}", text(&out));
    tl.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_reaches_psql_as_an_error_message() {
    let p = PgPath::start("", PASSWORD).await;
    assert!(p
        .app
        .cli(&["revoke", "--user", "alice@example.com"])
        .status
        .success());
    let mut refused = String::new();
    // The revocation reaches the appliance within its poll interval; on a
    // loaded machine that can take a while.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while std::time::Instant::now() < deadline {
        let out = p.psql(&["-c", "select 1"]);
        refused = text(&out);
        // Until the appliance has seen the revocation, a session may still be
        // admitted and then closed by it ("identity revoked"): try again.
        if refused.contains("has been revoked") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused.contains("FATAL")
            && refused.contains("access for alice@example.com has been revoked"),
        "{refused}"
    );
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_cleartext_and_trust_upstreams() {
    let pg = Postgres::start();
    pg.psql("SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'pw-md5'");
    pg.psql("CREATE ROLE clearuser LOGIN PASSWORD 'pw-clear'; CREATE ROLE trustuser LOGIN");
    pg.hba_first("host all md5user 127.0.0.1/32 md5\nhost all clearuser 127.0.0.1/32 password\nhost all trustuser 127.0.0.1/32 trust");
    let mut conns = String::new();
    let mut names = Vec::new();
    for (user, secret) in [
        ("md5user", Some("md5_pw")),
        ("clearuser", Some("clear_pw")),
        ("trustuser", None),
    ] {
        let name = unique_name("pgauth");
        let secrets = secret
            .map(|s| format!("[connection.secrets]\npassword = {s:?}\n\n"))
            .unwrap_or_default();
        conns.push_str(&format!(
            "[[connection]]\nname = {name:?}\nkind = \"postgres\"\nupstream = {:?}\nallow_groups = [\"dev\"]\n\n{secrets}\
             [connection.postgres]\nuser = {user:?}\ndatabase = \"postgres\"\n\n",
            pg.addr()
        ));
        names.push((name, user));
    }
    let app = ApplianceFixture::start_with_secrets(
        &policy_with(1, &conns),
        &[("md5_pw", "pw-md5"), ("clear_pw", "pw-clear")],
    )
    .await;
    let tl = TunnelLite::start(&app, &app.token("alice@example.com", &["dev"], HOUR)).await;
    for (name, user) in &names {
        let at = tl.wait_listening(name, 5432).await;
        let out = run(
            Command::new("psql")
                .env("PGPASSFILE", "/nonexistent/pgpass")
                .arg(format!("hostaddr={} port=5432 user=x", at.ip()))
                .args(["-X", "-A", "-t", "-c", "select current_user"]),
            false,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            *user,
            "{}",
            text(&out)
        );
    }
    tl.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_audit_records_a_statement_before_it_is_forwarded() {
    let p = PgPath::start("\n[audit]\nmode = \"strict\"\n", PASSWORD).await;
    let out = p.psql(&["-A", "-t", "-c", "select 'strictly audited'"]);
    assert!(text(&out).contains("strictly audited"), "{}", text(&out));
    let records = p.app.audit(Some(AuditKind::Statement)).await;
    let mine: Vec<_> = records
        .iter()
        .filter(|r| {
            r.record
                .detail
                .as_ref()
                .and_then(|d| d["statement"].as_str())
                == Some("select 'strictly audited'")
        })
        .collect();
    let outcomes: Vec<&str> = mine
        .iter()
        .filter_map(|r| r.record.outcome.as_deref())
        .collect();
    assert_eq!(outcomes, vec!["forwarded", "ok"], "{mine:#?}");
    assert!(mine[0].seq < mine[1].seq);
    p.tl.stop().await;
    p.app.stop().await;
}
