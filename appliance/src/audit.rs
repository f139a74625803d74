//! The local audit trail: one SQLite table (`audit`, WAL) in the appliance's
//! shared database file, written by a single writer thread in batched
//! transactions behind a bounded queue, and read back by [`query`].
//!
//! This module owns the `audit` table and its indexes, nothing else in the file.
//! It does not decide what is audited (callers build [`AuditRecord`]s), does not
//! hash-chain or ship records yet (later issues add those as new columns and
//! tables), and never runs SQLite on a tokio worker thread.
//!
//! Data path contract: [`AuditHandle::record`] waits for queue space
//! (back-pressure) rather than dropping a record; once accepted into the queue a
//! record is kept in memory and retried until it is committed. Strict durability
//! (`synchronous=FULL`, acknowledging only after commit) is a later issue.

mod query;
mod record;
mod store;
mod writer;

#[cfg(test)]
mod tests;

pub use query::{format_ndjson, format_table, parse_since, query, AuditFilter, StoredRecord};
pub use record::{now_ms, AuditKind, AuditRecord};
pub use writer::{
    spawn_writer, AuditConfig, AuditHandle, AuditWriter, DEFAULT_MAX_BATCH, DEFAULT_QUEUE_CAPACITY,
};

/// Errors of the audit subsystem.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// SQLite refused an operation (open, schema, insert, select).
    #[error("audit database: {0}")]
    Sqlite(String),
    /// The queue is full; only returned by [`AuditHandle::try_record`].
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
    /// Operating-system error (spawning the writer thread).
    #[error("audit i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        AuditError::Sqlite(e.to_string())
    }
}
