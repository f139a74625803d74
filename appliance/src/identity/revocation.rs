//! The persisted set of revoked identities: one table in the appliance's
//! SQLite file (WAL), written by the `appliance revoke` CLI and read by the
//! serving process, which polls `data_version` and re-reads a snapshot when
//! another connection committed. Closing live sessions is not done here.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::jws::now_unix;
use super::IdentityError;

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS revocations (
    user TEXT PRIMARY KEY,
    revoked_at INTEGER NOT NULL,
    revoked_by TEXT,
    reason TEXT
)";

/// One revoked identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    pub user: String,
    /// Unix seconds.
    pub revoked_at: u64,
    pub revoked_by: Option<String>,
    pub reason: Option<String>,
}

/// A connection to the revocation table. Not `Sync`: one per task or process.
#[derive(Debug)]
pub struct RevocationStore {
    conn: Connection,
}

impl RevocationStore {
    /// Opens (creating if needed) the database and the `revocations` table,
    /// in WAL mode with a 5 s busy timeout. Other tables of the same file
    /// are left alone.
    pub fn open(db_path: &Path) -> Result<Self, IdentityError> {
        let conn = Connection::open(db_path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %db_path.display(), %mode, "revocation store is not in WAL mode");
        }
        conn.execute_batch(SCHEMA)?;
        Ok(RevocationStore { conn })
    }

    /// Revokes `user`. Returns `false` if it already was (the first record is kept).
    pub fn revoke(
        &self,
        user: &str,
        by: &str,
        reason: Option<&str>,
    ) -> Result<bool, IdentityError> {
        let changed = self.conn.execute(
            "INSERT INTO revocations (user, revoked_at, revoked_by, reason) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(user) DO NOTHING",
            params![user, to_sql_time(now_unix()), by, reason],
        )?;
        Ok(changed > 0)
    }

    /// Lifts the revocation of `user` (exact name). Returns `false` if there was none.
    pub fn undo(&self, user: &str) -> Result<bool, IdentityError> {
        let changed = self
            .conn
            .execute("DELETE FROM revocations WHERE user = ?1", params![user])?;
        Ok(changed > 0)
    }

    /// The revocation of `user` (exact name), if any.
    pub fn get(&self, user: &str) -> Result<Option<Revocation>, IdentityError> {
        let row = self
            .conn
            .query_row(
                "SELECT user, revoked_at, revoked_by, reason FROM revocations WHERE user = ?1",
                params![user],
                row_to_revocation,
            )
            .optional()?;
        Ok(row)
    }

    /// Every revocation, oldest first.
    pub fn list(&self) -> Result<Vec<Revocation>, IdentityError> {
        let mut stmt = self.conn.prepare(
            "SELECT user, revoked_at, revoked_by, reason FROM revocations
             ORDER BY revoked_at, user",
        )?;
        let rows = stmt.query_map([], row_to_revocation)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The revoked users as a cheap-to-clone set for the data path.
    pub fn snapshot(&self) -> Result<RevokedSet, IdentityError> {
        let mut stmt = self
            .conn
            .prepare("SELECT user FROM revocations ORDER BY user")?;
        let users = stmt
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RevokedSet::from_users(users))
    }

    /// `PRAGMA data_version`: changes when *another* connection committed to
    /// the file (any table, so audit writes also move it). Poll it and
    /// re-read [`snapshot`](Self::snapshot) only when it changed.
    pub fn data_version(&self) -> Result<i64, IdentityError> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

fn row_to_revocation(row: &rusqlite::Row<'_>) -> rusqlite::Result<Revocation> {
    let at: i64 = row.get(1)?;
    Ok(Revocation {
        user: row.get(0)?,
        revoked_at: u64::try_from(at).unwrap_or(0),
        revoked_by: row.get(2)?,
        reason: row.get(3)?,
    })
}

fn to_sql_time(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// An immutable snapshot of the revoked users. Cloning is cheap (shared).
///
/// Matching ignores ASCII case, so a revocation typed as `Alice@Corp.com`
/// still stops `alice@corp.com`: when in doubt, the set refuses.
#[derive(Debug, Clone, Default)]
pub struct RevokedSet(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    /// As stored, sorted.
    users: Vec<String>,
    /// ASCII-lowercased, for lookups.
    folded: HashSet<String>,
}

impl RevokedSet {
    /// A set of these users (e.g. for tests or a pinned list).
    pub fn from_users(users: impl IntoIterator<Item = String>) -> Self {
        let mut users: Vec<String> = users.into_iter().collect();
        users.sort();
        users.dedup();
        let folded = users.iter().map(|u| u.to_ascii_lowercase()).collect();
        RevokedSet(Arc::new(Inner { users, folded }))
    }

    /// Whether `user` is revoked.
    pub fn contains(&self, user: &str) -> bool {
        if self.0.folded.is_empty() {
            return false;
        }
        self.0.folded.contains(&user.to_ascii_lowercase())
    }

    /// The revoked users, as stored, sorted.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        self.0.users.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.users.is_empty()
    }
}
