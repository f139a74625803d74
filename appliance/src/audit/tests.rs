use super::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A unique temp directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "appliance-audit-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn db(&self) -> PathBuf {
        self.0.join("appliance.db")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn spawn(db: &Path, queue_capacity: usize, max_batch: usize) -> (AuditHandle, AuditWriter) {
    spawn_writer(AuditConfig {
        queue_capacity,
        max_batch,
        ..AuditConfig::new(db)
    })
    .unwrap()
}

fn all(db: &Path) -> Vec<StoredRecord> {
    query(db, &AuditFilter::default()).unwrap()
}

fn full_record() -> AuditRecord {
    AuditRecord::new(AuditKind::SessionEnd)
        .at(1_795_000_000_123)
        .user("alice@example.com")
        .groups(["dba", "oncall"])
        .connection("pg-prod")
        .session("s-0001")
        .client_addr("10.1.2.3:50123")
        .port(5432)
        .bytes(1234, 5_678_901)
        .duration(Duration::from_millis(93_500))
        .outcome("ok")
        .reason("client closed")
        .policy_version(7)
        .detail(serde_json::json!({"tls": true, "alpn": "tunnel-lite/1"}))
}

#[test]
fn kind_names_match_serde() {
    for k in AuditKind::ALL {
        let json = serde_json::to_value(k).unwrap();
        assert_eq!(json, serde_json::Value::String(k.as_str().to_owned()));
        assert_eq!(AuditKind::from_name(k.as_str()), Some(k));
    }
    assert_eq!(AuditKind::from_name("no_such_kind"), None);
}

#[test]
fn new_stamps_the_current_time() {
    let before = now_ms();
    let r = AuditRecord::new(AuditKind::Login);
    assert!(r.time_ms >= before && r.time_ms <= now_ms());
    assert_eq!(r.kind, AuditKind::Login);
}

#[tokio::test]
async fn every_field_round_trips() {
    let dir = TempDir::new("roundtrip");
    let (handle, writer) = spawn(&dir.db(), 16, 8);
    let full = full_record();
    let sparse = AuditRecord::new(AuditKind::ApplianceStarted).at(5);
    handle.record(full.clone()).await.unwrap();
    handle.record(sparse.clone()).await.unwrap();
    handle.flush().await.unwrap();

    let got = all(&dir.db());
    assert_eq!(got.len(), 2);
    assert!(got[0].seq < got[1].seq);
    assert_eq!(got[0].record, full);
    assert_eq!(got[1].record, sparse);

    // NDJSON is flat and parses back to the same records.
    let text = format_ndjson(&got);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["seq"], got[0].seq);
    assert_eq!(v["kind"], "session_end");
    assert_eq!(v["bytes_down"], 5_678_901);
    let back: StoredRecord = serde_json::from_str(lines[1]).unwrap();
    assert_eq!(back, got[1]);

    drop(handle);
    writer.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_every_record_in_order() {
    const TASKS: u64 = 16;
    const PER_TASK: u64 = 625;
    let dir = TempDir::new("concurrent");
    let (handle, writer) = spawn(&dir.db(), 256, 64);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let h = handle.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_TASK {
                let rec = AuditRecord::new(AuditKind::SessionStart)
                    .session(format!("task-{t}"))
                    .duration(Duration::from_millis(i));
                h.record(rec).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    handle.flush().await.unwrap();

    let got = all(&dir.db());
    assert_eq!(got.len() as u64, TASKS * PER_TASK);
    let mut next = vec![0u64; TASKS as usize];
    for s in &got {
        let sid = s.record.session_id.as_deref().unwrap();
        let t: usize = sid.trim_start_matches("task-").parse().unwrap();
        assert_eq!(s.record.duration_ms, Some(next[t]), "task {t} out of order");
        next[t] += 1;
    }
    assert!(next.iter().all(|&n| n == PER_TASK));
    drop(handle);
    writer.join().await.unwrap();
}

#[tokio::test]
async fn filters_select_the_right_records() {
    let dir = TempDir::new("filters");
    let (handle, writer) = spawn(&dir.db(), 64, 16);
    let recs = [
        AuditRecord::new(AuditKind::Login).at(1_000).user("alice"),
        AuditRecord::new(AuditKind::SessionStart)
            .at(2_000)
            .user("alice")
            .session("s1")
            .connection("pg-prod"),
        AuditRecord::new(AuditKind::SessionStart)
            .at(3_000)
            .user("bob")
            .session("s2")
            .connection("web-1"),
        AuditRecord::new(AuditKind::SessionEnd)
            .at(4_000)
            .user("alice")
            .session("s1")
            .connection("pg-prod"),
        AuditRecord::new(AuditKind::PolicyLoaded)
            .at(5_000)
            .policy_version(3),
    ];
    for r in recs {
        handle.record(r).await.unwrap();
    }
    handle.flush().await.unwrap();
    let db = dir.db();
    let times = |f: AuditFilter| -> Vec<i64> {
        query(&db, &f)
            .unwrap()
            .iter()
            .map(|s| s.record.time_ms)
            .collect()
    };

    assert_eq!(
        times(AuditFilter::default()),
        [1_000, 2_000, 3_000, 4_000, 5_000]
    );
    let user = |u: &str| Some(u.to_owned());
    assert_eq!(
        times(AuditFilter {
            user: user("alice"),
            ..Default::default()
        }),
        [1_000, 2_000, 4_000]
    );
    assert_eq!(
        times(AuditFilter {
            session_id: user("s1"),
            ..Default::default()
        }),
        [2_000, 4_000]
    );
    assert_eq!(
        times(AuditFilter {
            since_ms: Some(3_000),
            ..Default::default()
        }),
        [3_000, 4_000, 5_000]
    );
    assert_eq!(
        times(AuditFilter {
            kind: Some(AuditKind::SessionStart),
            ..Default::default()
        }),
        [2_000, 3_000]
    );
    assert_eq!(
        times(AuditFilter {
            connection: user("web-1"),
            ..Default::default()
        }),
        [3_000]
    );
    // Limit keeps the most recent matches, oldest first.
    assert_eq!(
        times(AuditFilter {
            limit: Some(2),
            ..Default::default()
        }),
        [4_000, 5_000]
    );
    assert_eq!(
        times(AuditFilter {
            user: user("alice"),
            since_ms: Some(1_500),
            kind: Some(AuditKind::SessionEnd),
            limit: Some(10),
            ..Default::default()
        }),
        [4_000]
    );
    assert!(times(AuditFilter {
        user: user("carol"),
        ..Default::default()
    })
    .is_empty());
    drop(handle);
    writer.join().await.unwrap();
}

/// Holds a write lock on the database from another connection until told to
/// release it.
fn hold_write_lock(db: &Path) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let db = db.to_path_buf();
    let thread = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        // Release on request, or after 3 s at most (below the 5 s busy timeout).
        let _ = release_rx.recv_timeout(Duration::from_secs(3));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked_rx.recv().unwrap();
    (release_tx, thread)
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not reached");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_writer_back_pressures_instead_of_failing() {
    let dir = TempDir::new("backpressure");
    let (handle, writer) = spawn(&dir.db(), 4, 2);
    let (release, holder) = hold_write_lock(&dir.db());
    let held_at = Instant::now();

    // The writer takes this one and then waits on the lock inside its batch.
    handle
        .record(AuditRecord::new(AuditKind::Login).user("first"))
        .await
        .unwrap();
    wait_until(|| handle.queue_depth() == 0).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    // The queue (capacity 4) fills; the next try_record reports it.
    for i in 0..4 {
        handle
            .try_record(AuditRecord::new(AuditKind::Login).user(format!("q{i}")))
            .unwrap();
    }
    assert_eq!(handle.queue_depth(), 4);
    assert!(matches!(
        handle.try_record(AuditRecord::new(AuditKind::Login)),
        Err(AuditError::QueueFull)
    ));

    // record() waits for space rather than failing.
    let h = handle.clone();
    let waiting = tokio::spawn(async move {
        for i in 0..10 {
            h.record(AuditRecord::new(AuditKind::Login).user(format!("w{i}")))
                .await
                .unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "record() should be waiting for space"
    );
    assert_eq!(handle.queue_depth(), 4);

    while held_at.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    release.send(()).unwrap();
    holder.join().unwrap();
    waiting.await.unwrap();
    handle.flush().await.unwrap();

    let users: Vec<String> = all(&dir.db())
        .into_iter()
        .filter_map(|s| s.record.user)
        .collect();
    let mut expected = vec!["first".to_owned()];
    expected.extend((0..4).map(|i| format!("q{i}")));
    expected.extend((0..10).map(|i| format!("w{i}")));
    assert_eq!(users, expected);
    drop(handle);
    writer.join().await.unwrap();
}

#[tokio::test]
async fn dropping_all_handles_then_join_drains_the_queue() {
    let dir = TempDir::new("drain");
    let (handle, writer) = spawn(&dir.db(), 2048, 100);
    let other = handle.clone();
    for i in 0..1000u64 {
        let h = if i % 2 == 0 { &handle } else { &other };
        h.try_record(AuditRecord::new(AuditKind::TokenIssued).duration(Duration::from_millis(i)))
            .unwrap();
    }
    drop(handle);
    drop(other);
    writer.join().await.unwrap();
    let got = all(&dir.db());
    assert_eq!(got.len(), 1000);
    assert_eq!(got[999].record.duration_ms, Some(999));
}

#[tokio::test]
async fn shutdown_drains_even_with_a_leaked_handle() {
    let dir = TempDir::new("shutdown");
    let (handle, writer) = spawn(&dir.db(), 1024, 64);
    let leaked = handle.clone();
    for _ in 0..500 {
        handle
            .record(AuditRecord::new(AuditKind::SessionEnd))
            .await
            .unwrap();
    }
    handle
        .record(AuditRecord::new(AuditKind::ApplianceStopped))
        .await
        .unwrap();
    writer.shutdown(handle).await.unwrap();
    let got = all(&dir.db());
    assert_eq!(got.len(), 501);
    assert_eq!(got[500].record.kind, AuditKind::ApplianceStopped);
    assert!(matches!(
        leaked.record(AuditRecord::new(AuditKind::Login)).await,
        Err(AuditError::WriterGone)
    ));
    assert!(matches!(
        leaked.try_record(AuditRecord::new(AuditKind::Login)),
        Err(AuditError::WriterGone)
    ));
    assert!(matches!(leaked.flush().await, Err(AuditError::WriterGone)));
}

#[test]
fn startup_errors_surface_synchronously() {
    let dir = TempDir::new("badpath");
    let bad = dir.0.join("missing-dir").join("appliance.db");
    assert!(matches!(
        spawn_writer(AuditConfig::new(bad)),
        Err(AuditError::Sqlite(_))
    ));
}

#[test]
fn query_without_audit_table_is_empty_and_missing_file_errs() {
    let dir = TempDir::new("notable");
    assert!(query(&dir.db(), &AuditFilter::default()).is_err());
    rusqlite::Connection::open(dir.db())
        .unwrap()
        .execute_batch("CREATE TABLE revocations (user TEXT)")
        .unwrap();
    assert!(all(&dir.db()).is_empty());
}

#[test]
fn schema_sets_wal_and_coexists_with_other_tables() {
    let dir = TempDir::new("schema");
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch("CREATE TABLE policy_state (version INTEGER)")
        .unwrap();
    drop(conn);
    let (handle, writer) = spawn(&dir.db(), 4, 4);
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = conn
        .query_row(
            "SELECT value FROM audit_meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 2);
    drop(handle);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(writer.join()).unwrap();
    // Reopening an existing database is fine.
    let (handle, writer) = spawn(&dir.db(), 4, 4);
    drop(handle);
    rt.block_on(writer.join()).unwrap();
}

#[test]
fn parse_since_accepts_three_forms() {
    let now = 1_795_000_000_000;
    assert_eq!(
        parse_since("2026-11-29T10:00:00Z", now).unwrap(),
        1_795_946_400_000
    );
    assert_eq!(
        parse_since("2026-11-29T12:00:00+02:00", now).unwrap(),
        1_795_946_400_000
    );
    assert_eq!(
        parse_since("2026-11-29T10:00:00.250Z", now).unwrap(),
        1_795_946_400_250
    );
    assert_eq!(parse_since("2026-11-29", now).unwrap(), 1_795_910_400_000);
    assert_eq!(parse_since("15m", now).unwrap(), now - 15 * 60_000);
    assert_eq!(parse_since("2h", now).unwrap(), now - 2 * 3_600_000);
    assert_eq!(parse_since(" 7d ago", now).unwrap(), now - 7 * 86_400_000);
    for bad in [
        "",
        "yesterday",
        "2026-13-01",
        "2026-11-29T25:00:00Z",
        "15",
        "2026-11-29T10:00:00+2",
    ] {
        assert!(
            matches!(parse_since(bad, now), Err(AuditError::BadSince(_))),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn format_table_shows_the_fields_aligned() {
    let recs = vec![
        StoredRecord::new(7, full_record().at(1_795_946_400_999)),
        StoredRecord::new(
            12,
            AuditRecord::new(AuditKind::TunnelRefused)
                .at(1_795_946_401_000)
                .user("mallory\x1b[2J\nfake")
                .reason("identity revoked"),
        ),
    ];
    let table = format_table(&recs);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for needle in [
        "SEQ",
        "2026-11-29T10:00:00Z",
        "session_end",
        "alice@example.com",
        "pg-prod",
        "s-0001",
        "outcome=ok",
        "up=1.2KiB",
        "down=5.4MiB",
        "dur=1m33s",
        "port=5432",
        "policy=v7",
        "from=10.1.2.3:50123",
        "groups=dba,oncall",
        "reason=\"client closed\"",
        "\"alpn\":\"tunnel-lite/1\"",
        "tunnel_refused",
        "reason=\"identity revoked\"",
    ] {
        assert!(table.contains(needle), "missing {needle:?} in\n{table}");
    }
    // Control characters are escaped, never printed raw.
    assert!(!table.contains('\x1b'));
    assert!(lines[2].contains("mallory\\u{1b}[2J\\nfake"));
    // Columns line up: KIND starts at the same offset on every line.
    let col = lines[0].find("KIND").unwrap();
    assert_eq!(lines[1].find("session_end"), Some(col));
    assert_eq!(lines[2].find("tunnel_refused"), Some(col));
    assert_eq!(format_table(&[]).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_batches_are_retried_not_dropped() {
    let dir = TempDir::new("retry");
    let (handle, writer) = spawn(&dir.db(), 64, 8);
    handle
        .record(AuditRecord::new(AuditKind::Login).user("before"))
        .await
        .unwrap();
    handle.flush().await.unwrap();

    // Make every insert fail ("no such table") until the table comes back.
    let conn = rusqlite::Connection::open(dir.db()).unwrap();
    conn.execute_batch("ALTER TABLE audit RENAME TO audit_away")
        .unwrap();
    for i in 0..5 {
        handle
            .record(AuditRecord::new(AuditKind::Login).user(format!("during{i}")))
            .await
            .unwrap();
    }
    let flushed = {
        let h = handle.clone();
        tokio::spawn(async move { h.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(
        !flushed.is_finished(),
        "flush must wait for the failing batch"
    );
    conn.execute_batch("ALTER TABLE audit_away RENAME TO audit")
        .unwrap();
    flushed.await.unwrap().unwrap();

    let users: Vec<String> = all(&dir.db())
        .into_iter()
        .filter_map(|s| s.record.user)
        .collect();
    assert_eq!(
        users,
        ["before", "during0", "during1", "during2", "during3", "during4"]
    );
    drop(handle);
    writer.join().await.unwrap();
}
