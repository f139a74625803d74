//! SQLite side of the audit trail: connection settings, the `audit` schema
//! and its migration, chained batch inserts, and row decoding. Blocking;
//! callers keep it off async threads.
//!
//! Tables owned here (the database file is shared with other subsystems):
//! - `audit`: one row per record, with `id`, `prev_hash`, `hash` (schema 2);
//! - `audit_meta`: `schema_version`, `appliance_id` (integers);
//! - `audit_anchor`: the last record deleted by retention (seq, hash), which
//!   the first remaining row chains to;
//! - `audit_cursor`: per shipping sink (and the event router), the highest
//!   sequence number it has acknowledged.

use super::chain::{self, RawRow, GENESIS};
use super::record::AuditRecord;
use super::AuditError;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// Version of the `audit` schema, kept in `audit_meta` (the database file is
/// shared, so `PRAGMA user_version` is not ours to use). 2 added the chain.
pub(crate) const SCHEMA_VERSION: i64 = 2;

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
CREATE INDEX IF NOT EXISTS audit_kind ON audit(kind, seq);
CREATE TABLE IF NOT EXISTS audit_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_anchor (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  INTEGER NOT NULL,
    hash TEXT    NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_cursor (
    sink       TEXT PRIMARY KEY,
    seq        INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
";

/// The column list, in the order [`decode_raw`] expects.
pub(crate) const COLUMNS: &str = "seq, time_ms, kind, user, groups, connection, session_id, \
     client_addr, port, bytes_up, bytes_down, duration_ms, outcome, reason, policy_version, detail, \
     id, prev_hash, hash";

const INSERT: &str = "INSERT INTO audit (seq, time_ms, kind, user, groups, connection, session_id, \
     client_addr, port, bytes_up, bytes_down, duration_ms, outcome, reason, policy_version, detail, \
     id, prev_hash, hash) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

/// Busy timeout on every connection; WAL and `synchronous=NORMAL` on writers
/// (the writer switches a batch to FULL when it holds a durable record).
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
        conn.pragma_update(None, "synchronous", "NORMAL")?;
    }
    Ok(())
}

/// Open (creating if needed) the database for writing, create or migrate the
/// schema, and return the connection with the appliance id.
pub(crate) fn open_writer(path: &Path) -> Result<(Connection, String), AuditError> {
    let mut conn = Connection::open(path)?;
    configure(&conn, true)?;
    conn.execute_batch(SCHEMA)?;
    migrate(&mut conn)?;
    let id = appliance_id(&conn)?;
    Ok((conn, id))
}

fn has_column(conn: &Connection, table: &str, column: &str) -> Result<bool, AuditError> {
    let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
    let names = stmt.query_map([], |r| r.get::<_, String>(1))?;
    for n in names {
        if n? == column {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Schema 1 -> 2: add `id`, `prev_hash`, `hash` and chain the existing rows
/// in one transaction (tampering before the migration cannot be detected).
fn migrate(conn: &mut Connection) -> Result<(), AuditError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT OR IGNORE INTO audit_meta (key, value) VALUES ('appliance_id', ?1)",
        params![random_id()],
    )?;
    if !has_column(&tx, "audit", "hash")? {
        tx.execute_batch(
            "ALTER TABLE audit ADD COLUMN id TEXT;
             ALTER TABLE audit ADD COLUMN prev_hash TEXT;
             ALTER TABLE audit ADD COLUMN hash TEXT;",
        )?;
    }
    let unchained: i64 =
        tx.query_row("SELECT count(*) FROM audit WHERE hash IS NULL", [], |r| {
            r.get(0)
        })?;
    if unchained > 0 {
        let apid = appliance_id(&tx)?;
        let rows = {
            let mut stmt = tx.prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))?;
            let mut rows = stmt.query([])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                out.push(decode_raw(r)?);
            }
            out
        };
        let mut prev = GENESIS;
        let mut update =
            tx.prepare("UPDATE audit SET id = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4")?;
        for mut row in rows {
            if row.hash.is_empty() {
                row.id = chain::record_id(&apid, row.seq);
                prev = row.seal(&prev);
                update.execute(params![row.id, row.prev_hash, row.hash, row.seq])?;
            } else {
                prev = chain::parse_hash(&row.hash).unwrap_or(GENESIS);
            }
        }
        tracing::info!(rows = unchained, "audit trail migrated to the hash chain");
    }
    tx.execute(
        "INSERT INTO audit_meta (key, value) VALUES ('schema_version', ?1)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![SCHEMA_VERSION],
    )?;
    tx.commit()?;
    Ok(())
}

/// A random positive 63-bit number from the OS RNG (time as a fallback).
fn random_id() -> i64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        b = super::record::now_ms().to_be_bytes();
    }
    i64::from_be_bytes(b) & i64::MAX
}

/// This database's appliance id: 16 hex digits.
pub(crate) fn appliance_id(conn: &Connection) -> Result<String, AuditError> {
    let v: Option<i64> = conn
        .query_row(
            "SELECT value FROM audit_meta WHERE key = 'appliance_id'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(format!("{:016x}", v.unwrap_or(0)))
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
    has_table(conn, "audit")
}

/// Whether table `name` exists.
pub(crate) fn has_table(conn: &Connection, name: &str) -> Result<bool, AuditError> {
    let n: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![name],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// The chain's tip: the last row, else the retention anchor, else genesis.
pub(crate) fn tip(conn: &Connection) -> Result<(i64, [u8; 32]), AuditError> {
    // Cached: the writer asks before every batch.
    let last: Option<(i64, Option<String>)> = conn
        .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let row = match last {
        Some((seq, h)) => Some((seq, h.unwrap_or_default())),
        None => anchor(conn)?,
    };
    Ok(match row {
        Some((seq, h)) => (seq, chain::parse_hash(&h).unwrap_or(GENESIS)),
        None => (0, GENESIS),
    })
}

/// The last record removed by retention, if any: `(seq, hash hex)`.
pub(crate) fn anchor(conn: &Connection) -> Result<Option<(i64, String)>, AuditError> {
    Ok(conn
        .query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?)
}

/// What a committed batch did: its sequence range and the new tip hash.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Committed {
    pub first_seq: i64,
    pub last_seq: i64,
}

/// Insert `records` in one IMMEDIATE transaction (all or none), chaining them
/// after the tip read inside the same transaction, so several writers (the
/// server and a CLI command) still build one chain.
pub(crate) fn insert_batch(
    conn: &mut Connection,
    apid: &str,
    records: &[AuditRecord],
) -> Result<Committed, AuditError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (mut seq, mut prev) = tip(&tx)?;
    let first_seq = seq + 1;
    {
        let mut stmt = tx.prepare_cached(INSERT)?;
        for r in records {
            seq += 1;
            let mut row = RawRow::encode(seq, chain::record_id(apid, seq), r);
            prev = row.seal(&prev);
            stmt.execute(params![
                row.seq,
                row.time_ms,
                row.kind,
                row.user,
                row.groups,
                row.connection,
                row.session_id,
                row.client_addr,
                row.port,
                row.bytes_up,
                row.bytes_down,
                row.duration_ms,
                row.outcome,
                row.reason,
                row.policy_version,
                row.detail,
                row.id,
                row.prev_hash,
                row.hash,
            ])?;
        }
    }
    tx.commit()?;
    Ok(Committed {
        first_seq,
        last_seq: seq,
    })
}

/// Decode one row selected with [`COLUMNS`] as stored.
pub(crate) fn decode_raw(row: &Row<'_>) -> Result<RawRow, AuditError> {
    Ok(RawRow {
        seq: row.get(0)?,
        time_ms: row.get(1)?,
        kind: row.get(2)?,
        user: row.get(3)?,
        groups: row.get(4)?,
        connection: row.get(5)?,
        session_id: row.get(6)?,
        client_addr: row.get(7)?,
        port: row.get(8)?,
        bytes_up: row.get(9)?,
        bytes_down: row.get(10)?,
        duration_ms: row.get(11)?,
        outcome: row.get(12)?,
        reason: row.get(13)?,
        policy_version: row.get(14)?,
        detail: row.get(15)?,
        id: row.get::<_, Option<String>>(16)?.unwrap_or_default(),
        prev_hash: row.get::<_, Option<String>>(17)?.unwrap_or_default(),
        hash: row.get::<_, Option<String>>(18)?.unwrap_or_default(),
    })
}

/// Rows with `seq` in `(after, ..]`, oldest first, at most `limit`.
pub(crate) fn rows_after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<RawRow>, AuditError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"
    ))?;
    let mut rows = stmt.query(params![after, i64::try_from(limit).unwrap_or(i64::MAX)])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        out.push(decode_raw(r)?);
    }
    Ok(out)
}

/// The acknowledged sequence number of `sink`, if it has one.
pub(crate) fn cursor(conn: &Connection, sink: &str) -> Result<Option<i64>, AuditError> {
    Ok(conn
        .query_row(
            "SELECT seq FROM audit_cursor WHERE sink = ?1",
            params![sink],
            |r| r.get(0),
        )
        .optional()?)
}

/// Every cursor: `(sink, seq)`.
pub(crate) fn cursors(conn: &Connection) -> Result<Vec<(String, i64)>, AuditError> {
    if !has_table(conn, "audit_cursor")? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT sink, seq FROM audit_cursor ORDER BY sink")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let mut out = Vec::new();
    for r in rows {
        out.push(r?);
    }
    Ok(out)
}

/// Move `sink`'s cursor to `seq` (never backwards).
pub(crate) fn set_cursor(conn: &Connection, sink: &str, seq: i64) -> Result<(), AuditError> {
    conn.execute(
        "INSERT INTO audit_cursor (sink, seq, updated_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(sink) DO UPDATE SET seq = max(seq, excluded.seq), updated_ms = excluded.updated_ms",
        params![sink, seq, super::record::now_ms()],
    )?;
    Ok(())
}
