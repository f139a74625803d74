//! The local audit trail: one SQLite table (`audit`, WAL) in the appliance's
//! shared database file, written by a single writer thread in batched
//! transactions behind a bounded queue, and read back by [`query`].
//!
//! - `record`/`writer`/`store`: building records, the queue and the writer
//!   (fast and strict durability, group commit), the schema and its migration.
//! - `chain`: every record's stable id, `prev_hash` and `hash` (the canonical
//!   encoding is documented there); `checkpoint`/`keys`: signed checkpoints
//!   with the audit key; `verify`: `appliance audit verify`.
//! - `export`: signed exports (`audit export`, `audit verify-export`).
//! - `ship`: at-least-once shipping to syslog (RFC 5424/5425) and HTTP NDJSON
//!   sinks from per-sink cursors; `retention`: deleting what every sink
//!   acknowledged, disk threshold.
//!
//! This module does not decide what is audited (callers build
//! [`AuditRecord`]s) and never runs SQLite on a tokio worker thread.
//!
//! Data path contract: [`AuditHandle::record`] waits for queue space
//! (back-pressure) rather than dropping a record; once accepted into the queue a
//! record is kept in memory and retried until it is committed.
//! [`AuditHandle::record_durable`] resolves only after an fsynced commit.

pub mod chain;
mod checkpoint;
pub mod cli;
mod export;
mod keys;
mod query;
mod record;
pub mod retention;
pub mod settings;
pub mod ship;
pub(crate) mod store;
mod verify;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_chain;

pub use chain::{record_id, RawRow, GENESIS};
pub use checkpoint::{parse_checkpoints, Checkpoint};
pub use export::{
    export, parse_export_text, signature_path, verify_export, ExportFormat, ExportRequest,
    ExportSummary, ParsedExport,
};
pub use keys::{AuditKey, AuditPublicKey, AUDIT_KEY_FILE, AUDIT_PUB_FILE};
pub use query::{format_ndjson, format_table, parse_since, query, AuditFilter, StoredRecord};
pub use record::{now_ms, AuditKind, AuditRecord};
pub use verify::{verify, Problem, ProblemKind, VerifyOptions, VerifyReport};
pub use writer::{
    spawn_writer, AuditConfig, AuditHandle, AuditMode, AuditStats, AuditWriter, QueueFullPolicy,
    DEFAULT_MAX_BATCH, DEFAULT_QUEUE_CAPACITY,
};

/// Errors of the audit subsystem.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite refused an operation (open, schema, insert, select).
    #[error("audit database: {0}")]
    Sqlite(String),
    /// The queue is full; only returned by [`AuditHandle::try_record`] and,
    /// with `queue_full = "refuse"`, [`AuditHandle::record_gated`].
    #[error("audit queue is full")]
    QueueFull,
    /// The writer thread has exited (shut down, or panicked).
    #[error("audit writer is gone")]
    WriterGone,
    /// A `--since` value that is neither RFC 3339, a date, nor a duration.
    #[error("bad --since value: {0}")]
    BadSince(String),
    /// A stored row that this version cannot decode (e.g. an unknown kind).
    #[error("bad audit row {seq}: {reason}")]
    BadRow { seq: i64, reason: String },
    /// The audit signing key could not be read, generated or used.
    #[error("audit key: {0}")]
    Key(String),
    /// A signature did not verify.
    #[error("signature: {0}")]
    Signature(String),
    /// An export could not be written or did not verify.
    #[error("export: {0}")]
    Export(String),
    /// Operating-system error (spawning the writer thread, files).
    #[error("audit i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Sqlite(e.to_string())
    }
}

/// Where the audit keys live: `DATA_DIR/keys`.
pub fn key_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("keys")
}

/// Records a sink (or `"export"`) acknowledged through `seq`: the cursor
/// never moves backwards. Blocking.
pub fn set_cursor(db_path: &std::path::Path, sink: &str, seq: i64) -> Result<(), AuditError> {
    let conn = store::open_reader(db_path)?;
    store::set_cursor(&conn, sink, seq)
}

/// Every cursor `(sink, acknowledged seq)`. Blocking.
pub fn cursors(db_path: &std::path::Path) -> Result<Vec<(String, i64)>, AuditError> {
    let conn = store::open_reader(db_path)?;
    store::cursors(&conn)
}

/// Stored rows after `after`, oldest first, at most `limit`. Blocking.
pub fn rows_after(
    db_path: &std::path::Path,
    after: i64,
    limit: usize,
) -> Result<Vec<RawRow>, AuditError> {
    let conn = store::open_reader(db_path)?;
    store::rows_after(&conn, after, limit)
}
