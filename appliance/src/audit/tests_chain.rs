//! Hash chain, verification, checkpoints, strict mode, exports, retention
//! and the syslog codec.

use super::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!(
            "appliance-chain-{tag}-{}-{}",
            std::process::id(),
            now_ms()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn db(&self) -> PathBuf {
        self.0.join("appliance.db")
    }
    fn key(&self) -> Arc<AuditKey> {
        Arc::new(AuditKey::load_or_generate(&self.0.join("keys")).unwrap())
    }
    fn pubkey(&self) -> AuditPublicKey {
        AuditPublicKey::from_str_or_file(self.key().public_key()).unwrap()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rec(i: u64) -> AuditRecord {
    AuditRecord::new(AuditKind::Statement)
        .at(1_795_000_000_000 + i as i64)
        .user("alice@example.com")
        .connection("pg-prod")
        .session("s1")
        .outcome("ok")
        .detail(serde_json::json!({"statement": format!("SELECT {i}"), "rows": i}))
}

async fn write(db: &Path, n: u64, key: Option<Arc<AuditKey>>) {
    let (h, w) = spawn_writer(AuditConfig {
        checkpoint_key: key,
        ..AuditConfig::new(db)
    })
    .unwrap();
    for i in 0..n {
        h.record(rec(i)).await.unwrap();
    }
    drop(h);
    w.join().await.unwrap();
}

fn sql(db: &Path, s: &str) {
    rusqlite::Connection::open(db)
        .unwrap()
        .execute_batch(s)
        .unwrap();
}

fn check(db: &Path) -> VerifyReport {
    verify(db, &VerifyOptions::default()).unwrap()
}

#[test]
fn canonical_hash_is_pinned() {
    // Changing the encoding breaks every deployed chain: this vector must not move.
    let mut row = RawRow::encode(
        7,
        record_id("00000000000000ff", 7),
        &rec(1).at(1_795_000_000_000),
    );
    let h = row.seal(&GENESIS);
    assert_eq!(row.id, "00000000000000ff-7");
    assert_eq!(row.prev_hash, "0".repeat(64));
    assert_eq!(chain::hex(&h), row.hash);
    assert!(row.content_matches());
    assert_eq!(
        row.hash,
        "754581474ee88f72d527fe0d86c1b401c37a0b170f6fd50d7fcb4fb16e4f2be4"
    );
    // Any field, NULL vs "", changes the hash.
    let mut other = row.clone();
    other.reason = Some(String::new());
    assert_ne!(chain::hex(&other.compute_hash(&GENESIS)), row.hash);
}

#[tokio::test]
async fn a_clean_chain_verifies_and_checkpoints_are_signed() {
    let d = Dir::new("clean");
    write(&d.db(), 50, Some(d.key())).await;
    let opts = VerifyOptions {
        pubkey: Some(d.pubkey()),
        external: Vec::new(),
    };
    let r = verify(&d.db(), &opts).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.records, 51, "50 records and the shutdown checkpoint");
    assert_eq!(r.checkpoints_verified, 1);
    // A checkpoint signed by another key is caught.
    let other = Dir::new("otherkey");
    let opts = VerifyOptions {
        pubkey: Some(other.pubkey()),
        external: Vec::new(),
    };
    let r = verify(&d.db(), &opts).unwrap();
    assert_eq!(r.problems[0].kind, ProblemKind::BadCheckpoint);
}

#[tokio::test]
async fn modified_deleted_inserted_reordered_and_rehashed_rows_are_located() {
    let d = Dir::new("tamper");
    write(&d.db(), 20, None).await;
    let backup = d.0.join("backup.db");
    std::fs::copy(d.db(), &backup).unwrap();
    let restore = || std::fs::copy(&backup, d.db()).unwrap();

    sql(&d.db(), "UPDATE audit SET user = 'mallory' WHERE seq = 7");
    let p = &check(&d.db()).problems[0];
    assert_eq!((p.kind, p.seq), (ProblemKind::Modified, 7), "{p}");
    assert!(p.id.ends_with("-7"));

    restore();
    sql(&d.db(), "DELETE FROM audit WHERE seq = 9");
    let p = &check(&d.db()).problems[0];
    assert_eq!((p.kind, p.seq), (ProblemKind::Deleted, 9), "{p}");

    // Modified and its hash recomputed: the successor's link breaks.
    restore();
    {
        let conn = rusqlite::Connection::open(d.db()).unwrap();
        let mut row = store::rows_after(&conn, 11, 1).unwrap().remove(0);
        row.user = Some("mallory".into());
        let prev = chain::parse_hash(&row.prev_hash).unwrap();
        row.seal(&prev);
        conn.execute(
            "UPDATE audit SET user = ?1, hash = ?2 WHERE seq = 12",
            rusqlite::params![row.user, row.hash],
        )
        .unwrap();
    }
    let p = &check(&d.db()).problems[0];
    assert_eq!((p.kind, p.seq), (ProblemKind::Modified, 12), "{p}");

    // Two rows swapped (content and hashes, seq kept).
    restore();
    sql(
        &d.db(),
        "UPDATE audit SET seq = -5 WHERE seq = 5; UPDATE audit SET seq = 5 WHERE seq = 6; UPDATE audit SET seq = 6 WHERE seq = -5;",
    );
    let p = &check(&d.db()).problems[0];
    assert_eq!(p.kind, ProblemKind::Reordered, "{p}");
    assert_eq!(p.seq, 5, "{p}");

    // A row inserted, later rows renumbered.
    restore();
    {
        let conn = rusqlite::Connection::open(d.db()).unwrap();
        conn.execute_batch("UPDATE audit SET seq = seq + 1000 WHERE seq >= 15; UPDATE audit SET seq = seq - 999 WHERE seq >= 1000;").unwrap();
        let prev: String = conn
            .query_row("SELECT hash FROM audit WHERE seq = 14", [], |r| r.get(0))
            .unwrap();
        let mut row = RawRow::encode(15, "forged-15".into(), &rec(99));
        row.seal(&chain::parse_hash(&prev).unwrap());
        conn.execute(
            "INSERT INTO audit (seq, time_ms, kind, groups, id, prev_hash, hash) VALUES (15, ?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![row.time_ms, row.kind, row.groups, row.id, row.prev_hash, row.hash],
        )
        .unwrap();
    }
    let p = &check(&d.db()).problems[0];
    assert_eq!(
        p.kind,
        ProblemKind::Modified,
        "forged row content differs: {p}"
    );
    assert_eq!(p.seq, 15, "{p}");

    // The tail truncated: caught against a checkpoint kept elsewhere.
    restore();
    let key = d.key();
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    let (seq, hash) = store::tip(&conn).unwrap();
    let apid = store::appliance_id(&conn).unwrap();
    let cp = Checkpoint::sign(&key, &apid, seq, &chain::hex(&hash), now_ms()).unwrap();
    sql(&d.db(), "DELETE FROM audit WHERE seq > 16");
    let opts = VerifyOptions {
        pubkey: Some(d.pubkey()),
        external: vec![(cp, "kept.ndjson".into())],
    };
    let r = verify(&d.db(), &opts).unwrap();
    assert_eq!(
        r.problems[0].kind,
        ProblemKind::Truncated,
        "{:?}",
        r.problems
    );
    assert!(
        r.problems[0].message.contains("records seq 17..=20"),
        "{}",
        r.problems[0]
    );
}

#[tokio::test]
async fn schema_1_databases_are_migrated_and_chained() {
    let d = Dir::new("migrate");
    sql(
        &d.db(),
        "CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, time_ms INTEGER NOT NULL, kind TEXT NOT NULL,
           user TEXT, groups TEXT NOT NULL DEFAULT '[]', connection TEXT, session_id TEXT, client_addr TEXT, port INTEGER,
           bytes_up INTEGER, bytes_down INTEGER, duration_ms INTEGER, outcome TEXT, reason TEXT, policy_version INTEGER, detail TEXT);
         CREATE TABLE audit_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         INSERT INTO audit_meta VALUES ('schema_version', 1);
         INSERT INTO audit (time_ms, kind, user) VALUES (1, 'login', 'a'), (2, 'login', 'b'), (3, 'token_issued', 'c');",
    );
    write(&d.db(), 2, None).await;
    let r = check(&d.db());
    assert!(r.ok(), "{:?}", r.problems);
    assert_eq!(r.records, 5);
    let all = query(&d.db(), &AuditFilter::default()).unwrap();
    assert_eq!(all[0].record.user.as_deref(), Some("a"));
    assert!(all.iter().all(|r| r.id.ends_with(&format!("-{}", r.seq))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn durable_records_share_fsyncs_and_come_back_with_their_seq() {
    let d = Dir::new("durable");
    let (h, w) = spawn_writer(AuditConfig::new(d.db())).unwrap();
    let seq = h.record_durable(rec(1)).await.unwrap();
    assert_eq!(seq, 1);
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20 {
                h.record_durable(rec(t * 100 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = h.stats();
    assert_eq!(stats.durable_records.load(Ordering::Relaxed), 321);
    let fsyncs = stats.durable_batches.load(Ordering::Relaxed);
    assert!(
        fsyncs < 321,
        "group commit: {fsyncs} fsyncs for 321 records"
    );
    // Strict through record_gated too.
    h.set_mode(AuditMode::Strict, QueueFullPolicy::Backpressure);
    h.record_gated(rec(9)).await.unwrap();
    assert_eq!(stats.durable_records.load(Ordering::Relaxed), 322);
    drop(h);
    w.join().await.unwrap();
    assert_eq!(query(&d.db(), &AuditFilter::default()).unwrap().len(), 322);
}

#[tokio::test]
async fn refuse_mode_refuses_when_the_queue_is_full() {
    let d = Dir::new("refuse");
    let (h, w) = spawn_writer(AuditConfig {
        queue_capacity: 2,
        max_batch: 1,
        ..AuditConfig::new(d.db())
    })
    .unwrap();
    h.set_mode(AuditMode::Fast, QueueFullPolicy::Refuse);
    // Hold the write lock so the queue cannot drain.
    let conn = rusqlite::Connection::open(d.db()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut refused = 0;
    for i in 0..10 {
        if matches!(h.record_gated(rec(i)).await, Err(AuditError::QueueFull)) {
            refused += 1;
        }
    }
    assert!(refused >= 6, "refused {refused}");
    assert_eq!(h.stats().refused.load(Ordering::Relaxed), refused);
    conn.execute_batch("COMMIT").unwrap();
    h.flush().await.unwrap();
    drop(h);
    w.join().await.unwrap();
    // Every accepted record was kept.
    assert_eq!(
        query(&d.db(), &AuditFilter::default()).unwrap().len() as u64,
        10 - refused
    );
}

#[tokio::test]
async fn exports_verify_in_both_formats_and_reject_a_changed_byte() {
    let d = Dir::new("export");
    write(&d.db(), 30, Some(d.key())).await;
    let key = d.key();
    for (fmt, name) in [
        (ExportFormat::Ndjson, "e.ndjson"),
        (ExportFormat::Csv, "e.csv"),
    ] {
        let out = d.0.join(name);
        let s = export(
            &d.db(),
            &key,
            &ExportRequest {
                since_ms: Some(1_795_000_000_005),
                until_ms: Some(1_795_000_000_025),
                format: fmt,
                out: out.clone(),
            },
        )
        .unwrap();
        assert_eq!((s.first_seq, s.last_seq, s.records), (6, 25, 20));
        let v = verify_export(&out, &d.pubkey()).unwrap();
        assert_eq!((v.first_seq, v.last_seq, v.records), (6, 25, 20));
        // One byte changed: the signature fails.
        let mut bytes = std::fs::read(&out).unwrap();
        let i = bytes.len() / 2;
        bytes[i] ^= 1;
        std::fs::write(&out, &bytes).unwrap();
        assert!(verify_export(&out, &d.pubkey()).is_err());
        // Re-signed after the change: the record hashes fail instead.
        let sig = key.sign(bytes.as_slice(), "x").unwrap();
        std::fs::write(signature_path(&out), sig).unwrap();
        let err = verify_export(&out, &d.pubkey()).unwrap_err().to_string();
        assert!(!err.contains("signature check"), "{err}");
    }
}

#[tokio::test]
async fn retention_deletes_only_acknowledged_records_and_keeps_the_chain_anchored() {
    let d = Dir::new("retention");
    let key = d.key();
    let (h, w) = spawn_writer(AuditConfig {
        checkpoint_key: Some(key),
        ..AuditConfig::new(d.db())
    })
    .unwrap();
    for i in 0..40 {
        h.record(rec(i).at(1_000 + i as i64)).await.unwrap();
        if i % 10 == 9 {
            h.checkpoint().await.unwrap();
        }
    }
    drop(h);
    w.join().await.unwrap();
    let cfg = retention::RetentionConfig {
        max_age: Some(std::time::Duration::from_secs(1)),
        sinks: vec!["siem".into()],
        ..Default::default()
    };
    // Nothing acknowledged: nothing deleted.
    assert_eq!(retention::run_once(&d.db(), &cfg, now_ms()).unwrap(), 0);
    set_cursor(&d.db(), "siem", 25).unwrap();
    let n = retention::run_once(&d.db(), &cfg, now_ms()).unwrap();
    // Checkpoint records sit at seq 11, 22, 33, 44: deletion stops before 22.
    assert_eq!(n, 21);
    let opts = VerifyOptions {
        pubkey: Some(d.pubkey()),
        external: Vec::new(),
    };
    let r = verify(&d.db(), &opts).unwrap();
    assert!(r.ok(), "{:?}", r.problems);
    assert!(r.notes.is_empty(), "{:?}", r.notes);
    assert_eq!(r.first_seq, Some(22));
}

#[tokio::test]
async fn crossing_the_disk_threshold_is_recorded() {
    let d = Dir::new("disk");
    let (h, w) = spawn_writer(AuditConfig::new(d.db())).unwrap();
    let status = Arc::new(retention::DiskStatus::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let cfg = retention::RetentionConfig {
        disk_threshold: Some(1),
        interval: std::time::Duration::from_millis(20),
        ..Default::default()
    };
    let task = tokio::spawn(retention::run(cfg, h.clone(), status.clone(), stop.clone()));
    let mut found = Vec::new();
    for _ in 0..100 {
        h.flush().await.unwrap();
        let filter = AuditFilter {
            kind: Some(AuditKind::AuditDiskThreshold),
            ..Default::default()
        };
        found = query(&d.db(), &filter).unwrap();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(found.len(), 1, "recorded once while over");
    assert_eq!(found[0].record.outcome.as_deref(), Some("exceeded"));
    assert_eq!(status.over_threshold.load(Ordering::Relaxed), 1);
    assert!(status.bytes.load(Ordering::Relaxed) > 1);
    drop(h);
    w.join().await.unwrap();
}

#[test]
fn syslog_messages_are_rfc5424_with_octet_counting() {
    let mut row = RawRow::encode(3, "00000000000000ff-3".into(), &rec(1).outcome("denied"));
    row.seal(&GENESIS);
    let msg = ship::syslog::format_message(&row, 13, "gw1");
    let expected_head = format!(
        "<109>1 2026-11-18T11:06:40.001Z gw1 appliance - statement [audit@32473 id=\"00000000000000ff-3\" seq=\"3\" hash=\"{}\"] {{",
        row.hash
    );
    assert!(msg.starts_with(&expected_head), "{msg}");
    let json: serde_json::Value =
        serde_json::from_str(&msg[msg.find("] ").unwrap() + 2..]).unwrap();
    assert_eq!(json["id"], "00000000000000ff-3");
    let mut framed = Vec::new();
    ship::syslog::frame("abc", &mut framed);
    assert_eq!(framed, b"3 abc");
}

#[test]
fn sizes_parse() {
    assert_eq!(retention::parse_size("512MiB").unwrap(), 512 << 20);
    assert_eq!(retention::parse_size("10GB").unwrap(), 10_000_000_000);
    assert_eq!(retention::parse_size("42").unwrap(), 42);
    assert!(retention::parse_size("12 parsecs").is_err());
}

/// Quick measurements for bench/RESULTS.md (not a test): records/s in fast
/// and strict mode, strict-mode latency with 1 and 16 concurrent writers.
/// `cargo test -p appliance --lib measure_audit -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, run by hand"]
async fn measure_audit_throughput() {
    use std::time::{Duration, Instant};
    let d = Dir::new("measure");
    let (h, w) = spawn_writer(AuditConfig::new(d.db())).unwrap();
    // Fast: 16 tasks, 100k records.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let h = h.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..6_250 {
                h.record(rec(t * 10_000 + i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    h.flush().await.unwrap();
    let fast = 100_000.0 / started.elapsed().as_secs_f64();
    println!("fast: {fast:.0} records/s (16 writers, 100k records)");
    for writers in [1u64, 16] {
        let started = Instant::now();
        let mut tasks = Vec::new();
        for t in 0..writers {
            let h = h.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let until = Instant::now() + Duration::from_secs(3);
                let mut i = 0;
                while Instant::now() < until {
                    let t0 = Instant::now();
                    h.record_durable(rec(t * 1_000_000 + i)).await.unwrap();
                    lat.push(t0.elapsed());
                    i += 1;
                }
                lat
            }));
        }
        let mut lat: Vec<Duration> = Vec::new();
        for t in tasks {
            lat.extend(t.await.unwrap());
        }
        lat.sort();
        let n = lat.len();
        let secs = started.elapsed().as_secs_f64();
        println!(
            "strict, {writers} writer(s): {:.0} records/s, latency p50 {:?} p99 {:?} mean {:?}",
            n as f64 / secs,
            lat[n / 2],
            lat[n * 99 / 100],
            lat.iter().sum::<Duration>() / n as u32
        );
    }
    let s = h.stats();
    println!(
        "fsyncs {} for {} durable records",
        s.durable_batches.load(Ordering::Relaxed),
        s.durable_records.load(Ordering::Relaxed)
    );
    drop(h);
    w.join().await.unwrap();
}
