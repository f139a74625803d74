//! Column masking end to end: real PostgreSQL, psql (text results, COPY) and
//! tokio-postgres (binary results, unnamed and prepared statements, pipelining)
//! through tunnel-lite and the appliance.

use appliance::audit::AuditKind;

use crate::postgres::PgPath;
use e2e::postgres::PASSWORD;

const MASKING: &str = "\n[connection.postgres.masking]\n\
columns = [\"public.customers.email\", \"customers.ssn\", \"*.salary\"]\n\
detectors = [\"credit_card\", \"email\"]\n";

const SCHEMA: &str = "\
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, ssn text, salary int4, notes text);
INSERT INTO customers VALUES
  (1, 'Alice', 'alice@example.com', '123-45-6789', 5000, 'card 4111 1111 1111 1111 on file'),
  (2, 'Bob', 'bob@example.org', NULL, 6000, 'nothing to see');
CREATE TABLE orders (id int, customer_id int, total numeric);
INSERT INTO orders VALUES (10, 1, 99.5), (11, 2, 12);
CREATE VIEW customer_contacts AS SELECT id, name, email, lower(email) AS email_lc, 'x' || ssn AS tagged FROM customers;
CREATE VIEW contacts_again AS SELECT email AS mail, name FROM customer_contacts;";

fn out(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

async fn masked_path() -> PgPath {
    let p = PgPath::start(MASKING, PASSWORD).await;
    p.pg.psql(SCHEMA);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_sees_masked_columns_views_joins_labels_and_copy() {
    let p = masked_path().await;
    let q = |sql: &str| {
        let o = p.psql(&["-A", "-t", "-F", "|", "-c", sql]);
        assert!(o.status.success(), "{sql}: {}", out(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let (alice, bob) = (keep4("alice@example.com"), keep4("bob@example.org"));
    let ssn = keep4("123-45-6789");
    // SELECT *: email, ssn and salary masked (short values become all
    // stars); the card number in notes found by the detector.
    assert_eq!(
        q("SELECT * FROM customers ORDER BY id"),
        format!(
            "1|Alice|{alice}|{ssn}|****|card {} on file\n2|Bob|{bob}||****|nothing to see",
            keep4("4111 1111 1111 1111")
        )
    );
    // Aliases and joins keep the base column.
    assert_eq!(
        q("SELECT c.email AS contact, o.total FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY o.id"),
        format!("{alice}|99.5\n{bob}|12")
    );
    // Computed columns: matched by their label.
    assert_eq!(
        q("SELECT lower(email) AS email, upper(name) FROM customers WHERE id = 1"),
        format!("{alice}|ALICE")
    );
    // Functions over a masked column under another name: the email detector.
    assert_eq!(
        q("SELECT lower(email) AS contact, upper(name) AS who FROM customers WHERE id = 1"),
        format!("{alice}|ALICE")
    );
    // Subqueries keep the base column.
    assert_eq!(
        q("SELECT x.e FROM (SELECT email AS e FROM customers WHERE id = 2) x"),
        bob.clone()
    );
    // Views: plain references take the base column; computed columns over
    // a masked column are masked; views over views too.
    assert_eq!(
        q("SELECT * FROM customer_contacts WHERE id = 1"),
        format!("1|Alice|{alice}|{alice}|{}", keep4("x123-45-6789"))
    );
    assert_eq!(
        q("SELECT mail, name FROM contacts_again ORDER BY name"),
        format!("{alice}|Alice\n{bob}|Bob")
    );
    // Several statements in one query, each with its own shape.
    assert_eq!(
        q("SELECT name FROM customers WHERE id = 2; SELECT ssn, id FROM customers WHERE id = 1"),
        format!("Bob\n{ssn}|1")
    );
    // COPY TO STDOUT from a table, text and CSV (rewritten fields quoted),
    // with and without a column list; a CSV header passes as it is.
    assert_eq!(
        q("COPY customers (name, email) TO STDOUT"),
        format!("Alice\t{alice}\nBob\t{bob}")
    );
    assert_eq!(
        q("COPY customers TO STDOUT WITH (FORMAT csv, HEADER)"),
        format!(
            "id,name,email,ssn,salary,notes\n1,Alice,\"{alice}\",\"{ssn}\",\"****\",\"card {} on file\"\n\
             2,Bob,\"{bob}\",,\"****\",nothing to see",
            keep4("4111 1111 1111 1111")
        )
    );
    // DDL in the session: the renamed column is looked up again (orders is
    // in the session's cache since the join above, as `total`).
    assert_eq!(
        q("ALTER TABLE orders RENAME COLUMN total TO salary; SELECT salary FROM orders WHERE id = 10"),
        "ALTER TABLE\n****"
    );
    // What masking cannot check ends the session with a clear error.
    let o = p.psql(&["-c", "COPY (SELECT email FROM customers) TO STDOUT"]);
    let t = out(&o);
    assert!(!o.status.success() && t.contains("cannot be masked"), "{t}");
    assert!(!t.contains("alice@"), "{t}");
    // Every statement is still audited under the person's name.
    let statements = p.app.audit(Some(AuditKind::Statement)).await;
    assert!(
        statements.iter().any(|r| {
            r.record.user.as_deref() == Some("alice@example.com")
                && r.record
                    .detail
                    .as_ref()
                    .and_then(|d| d["statement"].as_str())
                    == Some("SELECT * FROM customer_contacts WHERE id = 1")
        }),
        "no audit record for the view query"
    );
    p.tl.stop().await;
    p.app.stop().await;
}

/// What `keep-last-4` makes of `s`.
fn keep4(s: &str) -> String {
    let n = s.chars().count();
    if n < 8 {
        return "*".repeat(n);
    }
    let tail: String = s.chars().skip(n - 4).collect();
    format!("{}{tail}", "*".repeat(n - 4))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_results_prepared_statements_and_pipelines_are_masked() {
    let p = masked_path().await;
    let (client, task) = crate::postgres::driver(&p).await;
    let (alice, bob) = (keep4("alice@example.com"), keep4("bob@example.org"));

    // Unnamed statement, binary results: text masked, int4 becomes 0.
    let row = client
        .query_one(
            "SELECT id, email, salary, name FROM customers WHERE id = $1",
            &[&1i32],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), alice);
    assert_eq!(row.get::<_, i32>(2), 0);
    assert_eq!(row.get::<_, String>(3), "Alice");

    // A prepared statement executed many times without a Describe of its
    // own: each execution is masked.
    let stmt = client
        .prepare("SELECT email, ssn FROM customers WHERE id = $1")
        .await
        .unwrap();
    for _ in 0..3 {
        let rows = client.query(&stmt, &[&2i32]).await.unwrap();
        assert_eq!(rows[0].get::<_, String>(0), bob);
        assert_eq!(rows[0].get::<_, Option<String>>(1), None);
    }

    // Pipelined: several portals in flight at once keep their own shapes.
    let (a, b, c) = tokio::join!(
        client.query("SELECT email FROM customers ORDER BY id", &[]),
        client.query("SELECT total FROM orders ORDER BY id", &[]),
        client.query_one("SELECT notes, ssn FROM customers WHERE id = 1", &[]),
    );
    let emails: Vec<String> = a.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(emails, [alice.clone(), bob.clone()]);
    assert_eq!(b.unwrap().len(), 2);
    let c = c.unwrap();
    assert_eq!(
        c.get::<_, String>(0),
        format!("card {} on file", keep4("4111 1111 1111 1111"))
    );
    assert_eq!(c.get::<_, String>(1), keep4("123-45-6789"));

    // A transaction with a named portal read in pieces (PortalSuspended).
    let mut client = client;
    let tx = client.transaction().await.unwrap();
    let portal = tx
        .bind("SELECT email FROM customers ORDER BY id", &[])
        .await
        .unwrap();
    let first = tx.query_portal(&portal, 1).await.unwrap();
    let second = tx.query_portal(&portal, 1).await.unwrap();
    assert_eq!(first[0].get::<_, String>(0), alice);
    assert_eq!(second[0].get::<_, String>(0), bob);
    tx.commit().await.unwrap();

    // COPY TO STDOUT through the extended protocol.
    use futures_util::TryStreamExt;
    let copied: Vec<bytes::Bytes> = client
        .copy_out("COPY customers (id, email) TO STDOUT")
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let copied: Vec<u8> = copied.concat();
    assert_eq!(
        String::from_utf8_lossy(&copied),
        format!("1\t{alice}\n2\t{bob}\n")
    );
    drop(client);
    let _ = task.await;

    // pgbench's extended and prepared modes run clean with masking on.
    let bench_out = std::process::Command::new("pgbench")
        .env("PGPASSFILE", "/nonexistent/pgpass")
        .args(["-n", "-t", "20", "-M", "prepared", "-f", "-"])
        .arg(p.conninfo("whoever", "postgres"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(b"SELECT email, ssn FROM customers WHERE id = 1;\n")?;
            c.wait_with_output()
        })
        .unwrap();
    let t = out(&bench_out);
    assert!(bench_out.status.success(), "{t}");
    assert!(t.contains("number of failed transactions: 0"), "{t}");
    p.tl.stop().await;
    p.app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sessions_ddl_cannot_unmask_a_cached_relation() {
    let p = masked_path().await;
    let (client, task) = crate::postgres::driver(&p).await;
    let ssn = keep4("123-45-6789");
    // This session caches customers and the customer_contacts view.
    let row = client
        .query_one("SELECT name FROM customers WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Alice");
    let row = client
        .query_one("SELECT name FROM customer_contacts WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Alice");

    // Another session adds a column that the rules mask ("*.salary") and
    // copies data into it; this session reads it under an alias (no label
    // to match): the unknown column makes the relation be looked up again.
    p.pg.psql(
        "ALTER TABLE customers RENAME COLUMN salary TO old_salary; \
         ALTER TABLE customers ADD COLUMN salary int4; \
         UPDATE customers SET salary = old_salary;",
    );
    let row = client
        .query_one("SELECT salary AS pay FROM customers WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0, "added column read unmasked");

    // Another session replaces the view so that a plain column now reads a
    // masked one: picked up once the cached entry expires.
    p.pg.psql(
        "CREATE OR REPLACE VIEW customer_contacts AS \
         SELECT id, ssn AS name, email, lower(email) AS email_lc, 'x' || ssn AS tagged FROM customers;",
    );
    tokio::time::sleep(
        appliance::proxy::postgres::masker::CATALOG_TTL + std::time::Duration::from_millis(500),
    )
    .await;
    let row = client
        .query_one(
            "SELECT name AS who FROM customer_contacts WHERE id = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), ssn, "replaced view read unmasked");
    drop(client);
    let _ = task.await;
    p.tl.stop().await;
    p.app.stop().await;
}
