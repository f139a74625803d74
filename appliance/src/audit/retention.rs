//! Retention and the disk threshold. Retention deletes the oldest records,
//! by age (`audit_retention_max_age`) or size (`audit_retention_max_bytes`),
//! but only records every configured sink acknowledged, or, with no sinks
//! (air-gapped), records an export covered (the `export` cursor). It always
//! stops just before a checkpoint record, so the new first record chains to
//! an anchor (`audit_anchor`) that a signed checkpoint still vouches for.
//!
//! The disk threshold (`audit_disk_threshold`) compares the database plus its
//! WAL with a size; crossing it (either way) is logged, exported as a metric,
//! and recorded as `audit_disk_threshold`, which event routes can act on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use tokio_util::sync::CancellationToken;

use super::store;
use super::{AuditError, AuditHandle, AuditKind, AuditRecord};

/// Rows deleted per transaction (keeps the writer's lock waits short).
const CHUNK: i64 = 5_000;

/// Validated retention settings.
#[derive(Debug, Clone, Default)]
pub struct RetentionConfig {
    pub max_age: Option<Duration>,
    pub max_bytes: Option<u64>,
    pub disk_threshold: Option<u64>,
    pub interval: Duration,
    /// Sinks whose cursors must cover a record before it may go; empty means
    /// the `export` cursor decides.
    pub sinks: Vec<String>,
}

/// Live values for `/metrics`.
#[derive(Debug, Default)]
pub struct DiskStatus {
    /// Database + WAL bytes.
    pub bytes: AtomicU64,
    /// 1 while over the threshold.
    pub over_threshold: AtomicU64,
    /// Records deleted by retention since start.
    pub deleted: AtomicU64,
}

/// Parses `"512MiB"`, `"10GB"`, `"1048576"` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        other => return Err(format!("{s:?}: unknown unit {other:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Database + WAL size in bytes.
pub fn disk_bytes(db: &Path) -> u64 {
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    [db.to_path_buf(), wal]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// How far retention may delete: the minimum acknowledged seq.
fn covered_through(conn: &rusqlite::Connection, sinks: &[String]) -> Result<i64, AuditError> {
    let names: Vec<String> = if sinks.is_empty() {
        vec!["export".to_owned()]
    } else {
        sinks.to_vec()
    };
    let mut min = i64::MAX;
    for n in &names {
        min = min.min(store::cursor(conn, n)?.unwrap_or(0));
    }
    Ok(min)
}

/// One retention pass; returns the number of records deleted.
pub fn run_once(db: &Path, cfg: &RetentionConfig, now_ms: i64) -> Result<u64, AuditError> {
    if cfg.max_age.is_none() && cfg.max_bytes.is_none() {
        return Ok(0);
    }
    let mut conn = store::open_reader(db)?;
    let covered = covered_through(&conn, &cfg.sinks)?;
    let by_age: Option<i64> = match cfg.max_age {
        Some(age) => {
            let cutoff = now_ms.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
            conn.query_row(
                "SELECT max(seq) FROM audit WHERE time_ms < ?1",
                params![cutoff],
                |r| r.get(0),
            )
            .optional()?
            .flatten()
        }
        None => None,
    };
    let mut deleted = 0u64;
    loop {
        let over_size = cfg
            .max_bytes
            .is_some_and(|m| used_bytes(&conn).unwrap_or(0) > m);
        let goal = if over_size {
            covered
        } else {
            by_age.unwrap_or(0).min(covered)
        };
        let first: Option<i64> = conn
            .query_row("SELECT min(seq) FROM audit", [], |r| r.get(0))
            .optional()?
            .flatten();
        let Some(first) = first else { break };
        if goal < first {
            break;
        }
        let limit = goal.min(first + CHUNK - 1);
        // Stop just before a checkpoint record, which vouches for the anchor.
        let cp: Option<i64> = conn
            .query_row(
                "SELECT seq FROM audit WHERE kind = 'audit_checkpoint' AND seq <= ?1 + 1 AND seq > ?2 ORDER BY seq DESC LIMIT 1",
                params![limit, first],
                |r| r.get(0),
            )
            .optional()?;
        let Some(cp_seq) = cp else { break };
        let through = cp_seq - 1;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let hash: String = tx.query_row(
            "SELECT hash FROM audit WHERE seq = ?1",
            params![through],
            |r| r.get(0),
        )?;
        let n = tx.execute("DELETE FROM audit WHERE seq <= ?1", params![through])?;
        tx.execute(
            "INSERT INTO audit_anchor (id, seq, hash) VALUES (1, ?1, ?2)
             ON CONFLICT(id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            params![through, hash],
        )?;
        tx.commit()?;
        deleted += n as u64;
        if n == 0 {
            break;
        }
    }
    Ok(deleted)
}

fn used_bytes(conn: &rusqlite::Connection) -> Result<u64, AuditError> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
}

/// Runs retention and the disk check every `interval` until `shutdown`.
pub async fn run(
    cfg: RetentionConfig,
    audit: AuditHandle,
    status: Arc<DiskStatus>,
    shutdown: CancellationToken,
) {
    let db = audit.db_path().to_path_buf();
    let mut tick = tokio::time::interval(cfg.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let (db2, cfg2) = (db.clone(), cfg.clone());
        let result =
            tokio::task::spawn_blocking(move || run_once(&db2, &cfg2, super::now_ms())).await;
        match result {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                status.deleted.fetch_add(n, Ordering::Relaxed);
                tracing::info!(records = n, "audit retention deleted acknowledged records");
                let rec = AuditRecord::new(AuditKind::AuditRetention)
                    .outcome("ok")
                    .detail(serde_json::json!({ "deleted": n }));
                let _ = audit.record(rec).await;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "audit retention failed"),
            Err(_) => return,
        }
        let bytes = disk_bytes(&db);
        status.bytes.store(bytes, Ordering::Relaxed);
        if let Some(limit) = cfg.disk_threshold {
            let over = bytes > limit;
            let was = status
                .over_threshold
                .swap(u64::from(over), Ordering::Relaxed)
                == 1;
            if over != was {
                if over {
                    tracing::warn!(
                        bytes,
                        threshold = limit,
                        "audit database crossed its disk threshold"
                    );
                } else {
                    tracing::info!(
                        bytes,
                        threshold = limit,
                        "audit database back under its disk threshold"
                    );
                }
                let rec = AuditRecord::new(AuditKind::AuditDiskThreshold)
                    .outcome(if over { "exceeded" } else { "recovered" })
                    .detail(serde_json::json!({ "bytes": bytes, "threshold": limit }));
                let _ = audit.record(rec).await;
            }
        }
    }
}
