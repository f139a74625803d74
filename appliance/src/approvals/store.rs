//! The `approvals` table in the appliance's SQLite file (WAL): plain,
//! synchronous row operations. Every state change is one conditional
//! `UPDATE ... WHERE state = 'pending'`, so when two deciders race (the API,
//! the local CLI in another process, a timeout, a withdrawal) exactly one
//! wins and only the winner audits and wakes the waiter.
//!
//! No tokio here and no policy: callers run writes on the blocking pool and
//! make the decisions ([`super::check_decidable`]).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{ApprovalError, ApprovalState, ApprovalView};

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    user TEXT NOT NULL,
    groups TEXT NOT NULL,
    connection TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    text TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    approvers_group TEXT NOT NULL,
    state TEXT NOT NULL,
    decided_by TEXT,
    reason TEXT,
    decided_ms INTEGER,
    reuse_ms INTEGER NOT NULL DEFAULT 0,
    reuse_until_ms INTEGER,
    policy_version INTEGER,
    instance TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approvals_state ON approvals (state, expires_ms);
CREATE INDEX IF NOT EXISTS approvals_reuse ON approvals (connection, fingerprint, state)";

const COLUMNS: &str = "id, created_ms, expires_ms, user, groups, connection, session_id, kind, \
     text, fingerprint, approvers_group, state, decided_by, reason, decided_ms, reuse_ms, \
     policy_version";

/// One connection to the `approvals` table. Not `Sync`: wrap in a mutex.
pub(super) struct Store {
    conn: Connection,
}

/// A state change: the new state, who made it and why.
pub(super) struct Transition<'a> {
    pub to: ApprovalState,
    pub by: Option<&'a str>,
    pub reason: Option<&'a str>,
    pub now_ms: i64,
}

impl Store {
    /// Opens (creating if needed) the table, WAL mode, 5 s busy timeout.
    /// Other tables of the same file are left alone.
    pub fn open(db_path: &Path) -> Result<Store, ApprovalError> {
        let conn = Connection::open(db_path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %db_path.display(), %mode, "approvals store is not in WAL mode");
        }
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Inserts a new pending row. `Ok(false)` if the id is taken.
    pub fn insert(&self, v: &ApprovalView, instance: &str) -> Result<bool, ApprovalError> {
        let groups = serde_json::to_string(&v.groups).unwrap_or_else(|_| "[]".into());
        let changed = self.conn.execute(
            "INSERT INTO approvals (id, created_ms, expires_ms, user, groups, connection,
                session_id, kind, text, fingerprint, approvers_group, state, reuse_ms,
                policy_version, instance)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'pending', ?12, ?13, ?14)
             ON CONFLICT(id) DO NOTHING",
            params![
                v.id,
                v.created_ms,
                v.expires_ms,
                v.user,
                groups,
                v.connection,
                v.session_id,
                v.kind,
                v.text,
                v.fingerprint,
                v.approvers_group,
                to_sql(v.reuse_window_ms),
                v.policy_version.map(to_sql),
                instance,
            ],
        )?;
        Ok(changed == 1)
    }

    pub fn get(&self, id: &str) -> Result<Option<ApprovalView>, ApprovalError> {
        let sql = format!("SELECT {COLUMNS} FROM approvals WHERE id = ?1");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        Ok(stmt.query_row(params![id], row_to_view).optional()?)
    }

    /// Moves `id` from pending to `t.to`. With `only_before`, only while the
    /// deadline has not passed (a decision after the deadline is too late).
    /// `Ok(true)` if this call made the change.
    pub fn transition(
        &self,
        id: &str,
        t: &Transition<'_>,
        only_before: bool,
    ) -> Result<bool, ApprovalError> {
        let approved = t.to == ApprovalState::Approved;
        let changed = self.conn.execute(
            "UPDATE approvals SET state = ?2, decided_by = ?3, reason = ?4, decided_ms = ?5,
                reuse_until_ms = CASE WHEN ?6 AND reuse_ms > 0 THEN ?5 + reuse_ms END
             WHERE id = ?1 AND state = 'pending' AND (NOT ?7 OR expires_ms > ?5)",
            params![
                id,
                t.to.as_str(),
                t.by,
                t.reason,
                t.now_ms,
                approved,
                only_before
            ],
        )?;
        Ok(changed == 1)
    }

    /// Pending rows, oldest first; with `include_expired` false, only those
    /// whose deadline has not passed.
    pub fn pending(&self, now_ms: i64) -> Result<Vec<ApprovalView>, ApprovalError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE state = 'pending' AND expires_ms > ?1
             ORDER BY created_ms, id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![now_ms], row_to_view)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The most recent rows in any state, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<ApprovalView>, ApprovalError> {
        let sql = format!("SELECT {COLUMNS} FROM approvals ORDER BY created_ms DESC, id LIMIT ?1");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![limit], row_to_view)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Pending rows whose deadline has passed.
    pub fn overdue(&self, now_ms: i64) -> Result<Vec<ApprovalView>, ApprovalError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE state = 'pending' AND expires_ms <= ?1
             ORDER BY created_ms, id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![now_ms], row_to_view)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Pending rows filed by another instance (a process that has since
    /// restarted): their sessions are gone.
    pub fn orphans(&self, instance: &str) -> Result<Vec<ApprovalView>, ApprovalError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals WHERE state = 'pending' AND instance != ?1
             ORDER BY created_ms, id"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params![instance], row_to_view)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The newest approval of this user (ASCII case ignored), connection and
    /// fingerprint whose reuse window is still open.
    pub fn reusable(
        &self,
        user: &str,
        connection: &str,
        fingerprint: &str,
        now_ms: i64,
    ) -> Result<Option<ApprovalView>, ApprovalError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM approvals
             WHERE connection = ?2 AND fingerprint = ?3 AND state = 'approved'
               AND user = ?1 COLLATE NOCASE AND reuse_until_ms > ?4
             ORDER BY decided_ms DESC LIMIT 1"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        Ok(stmt
            .query_row(params![user, connection, fingerprint, now_ms], row_to_view)
            .optional()?)
    }

    /// `PRAGMA data_version`: changes when *another* connection committed to
    /// the file (any table). Poll it and re-read only when it changed.
    pub fn data_version(&self) -> Result<i64, ApprovalError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

fn to_sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row_to_view(row: &rusqlite::Row<'_>) -> rusqlite::Result<ApprovalView> {
    let groups: String = row.get(4)?;
    let state: String = row.get(11)?;
    let reuse: i64 = row.get(15)?;
    let version: Option<i64> = row.get(16)?;
    Ok(ApprovalView {
        id: row.get(0)?,
        created_ms: row.get(1)?,
        expires_ms: row.get(2)?,
        user: row.get(3)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        connection: row.get(5)?,
        session_id: row.get(6)?,
        kind: row.get(7)?,
        text: row.get(8)?,
        fingerprint: row.get(9)?,
        approvers_group: row.get(10)?,
        // An unknown state (written by a newer version) is never "pending",
        // so nothing acts on it.
        state: ApprovalState::from_name(&state).unwrap_or(ApprovalState::Expired),
        decided_by: row.get(12)?,
        reason: row.get(13)?,
        decided_ms: row.get(14)?,
        reuse_window_ms: u64::try_from(reuse).unwrap_or(0),
        policy_version: version.and_then(|v| u64::try_from(v).ok()),
    })
}
