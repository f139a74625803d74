//! SQLite side of the audit trail: connection settings, the `audit` schema,
//! batch inserts and row decoding. Blocking; callers keep it off async threads.
//!
//! Row encoding is deliberately plain so a later hash chain can hash a
//! canonical form of it: integers as INTEGER, text as TEXT, `groups` as a
//! compact JSON array, `detail` as compact JSON (serde_json sorts object keys).
//! Later issues add columns (id, prev_hash, ...) and tables (shipping cursors)
//! with `ALTER TABLE ... ADD COLUMN` / `CREATE TABLE IF NOT EXISTS`.

use super::record::{AuditKind, AuditRecord};
use super::AuditError;
use rusqlite::{params, Connection, OpenFlags, Row, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Version of the `audit` schema, kept in `audit_meta` (the database file is
/// shared, so `PRAGMA user_version` is not ours to use).
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// How long a connection waits for another connection's lock.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ms        INTEGER NOT NULL,
    kind           TEXT    NOT NULL,
    user           TEXT,
    groups         TEXT    NOT NULL DEFAULT '[]',
    connection     TEXT,
    session_id     TEXT,
    client_addr    TEXT,
    port           INTEGER,
    bytes_up       INTEGER,
    bytes_down     INTEGER,
    duration_ms    INTEGER,
    outcome        TEXT,
    reason         TEXT,
    policy_version INTEGER,
    detail         TEXT
);
CREATE INDEX IF NOT EXISTS audit_user_time ON audit(user, time_ms);
CREATE INDEX IF NOT EXISTS audit_session ON audit(session_id);
CREATE INDEX IF NOT EXISTS audit_time ON audit(time_ms);
CREATE TABLE IF NOT EXISTS audit_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
";

/// The column list, in the order [`decode_row`] expects after `seq`.
pub(crate) const COLUMNS: &str = "seq, time_ms, kind, user, groups, connection, session_id, \
     client_addr, port, bytes_up, bytes_down, duration_ms, outcome, reason, policy_version, detail";

const INSERT: &str = "INSERT INTO audit (time_ms, kind, user, groups, connection, session_id, \
     client_addr, port, bytes_up, bytes_down, duration_ms, outcome, reason, policy_version, detail) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// Busy timeout on every connection; WAL and `synchronous=NORMAL` on writers.
fn configure(conn: &Connection, writer: bool) -> Result<(), AuditError> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    if writer {
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(AuditError::Sqlite(format!(
                "journal_mode is {mode}, WAL is required"
            )));
        }
        // FULL is a later issue's strict mode.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(())
}

/// Open (creating if needed) the database for writing and create the schema.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, AuditError> {
    let conn = Connection::open(path)?;
    configure(&conn, true)?;
    conn.execute_batch(SCHEMA)?;
    conn.execute(
        "INSERT OR IGNORE INTO audit_meta (key, value) VALUES ('schema_version', ?1)",
        params![SCHEMA_VERSION],
    )?;
    Ok(conn)
}

/// Open an existing database for reading. Read-write flags without CREATE so a
/// WAL database can be read even when its `-shm` file does not exist yet, while
/// a missing file is still an error rather than a new empty database.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, AuditError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| AuditError::Sqlite(format!("{}: {e}", path.display())))?;
    configure(&conn, false)?;
    Ok(conn)
}

/// Whether the `audit` table exists (it does not until a writer has run).
pub(crate) fn has_audit_table(conn: &Connection) -> Result<bool, AuditError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'audit'",
        [],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// SQLite integers are signed; values past `i64::MAX` (never seen in practice)
/// are clamped rather than failing, because a record that can never be inserted
/// would stall the whole queue.
fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Insert `records` in one IMMEDIATE transaction: all or none.
pub(crate) fn insert_batch(
    conn: &mut Connection,
    records: &[AuditRecord],
) -> Result<(), AuditError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for r in records {
            // Serializing a Vec<String> or a Value cannot fail; fall back to
            // an empty value rather than poisoning the batch.
            let groups = serde_json::to_string(&r.groups).unwrap_or_else(|_| "[]".to_owned());
            let detail = r
                .detail
                .as_ref()
                .map(|d| serde_json::to_string(d).unwrap_or_else(|_| "null".to_owned()));
            stmt.execute(params![
                r.time_ms,
                r.kind.as_str(),
                r.user,
                groups,
                r.connection,
                r.session_id,
                r.client_addr,
                r.port,
                to_i64(r.bytes_up),
                to_i64(r.bytes_down),
                to_i64(r.duration_ms),
                r.outcome,
                r.reason,
                to_i64(r.policy_version),
                detail,
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn bad(seq: i64, reason: impl Into<String>) -> AuditError {
    AuditError::BadRow {
        seq,
        reason: reason.into(),
    }
}

fn to_u64(seq: i64, col: &str, v: Option<i64>) -> Result<Option<u64>, AuditError> {
    v.map(|v| u64::try_from(v).map_err(|_| bad(seq, format!("{col} is negative: {v}"))))
        .transpose()
}

/// Decode one row selected with [`COLUMNS`] into `(seq, record)`.
pub(crate) fn decode_row(row: &Row<'_>) -> Result<(i64, AuditRecord), AuditError> {
    let seq: i64 = row.get(0)?;
    let kind_name: String = row.get(2)?;
    let kind = AuditKind::from_name(&kind_name)
        .ok_or_else(|| bad(seq, format!("unknown kind {kind_name:?}")))?;
    let groups: String = row.get(4)?;
    let groups: Vec<String> =
        serde_json::from_str(&groups).map_err(|e| bad(seq, format!("groups: {e}")))?;
    let port = row
        .get::<_, Option<i64>>(8)?
        .map(|p| u16::try_from(p).map_err(|_| bad(seq, format!("port out of range: {p}"))))
        .transpose()?;
    let detail = row
        .get::<_, Option<String>>(15)?
        .map(|d| serde_json::from_str(&d).map_err(|e| bad(seq, format!("detail: {e}"))))
        .transpose()?;
    let record = AuditRecord {
        time_ms: row.get(1)?,
        kind,
        user: row.get(3)?,
        groups,
        connection: row.get(5)?,
        session_id: row.get(6)?,
        client_addr: row.get(7)?,
        port,
        bytes_up: to_u64(seq, "bytes_up", row.get(9)?)?,
        bytes_down: to_u64(seq, "bytes_down", row.get(10)?)?,
        duration_ms: to_u64(seq, "duration_ms", row.get(11)?)?,
        outcome: row.get(12)?,
        reason: row.get(13)?,
        policy_version: to_u64(seq, "policy_version", row.get(14)?)?,
        detail,
    };
    Ok((seq, record))
}
