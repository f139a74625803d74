//! `appliance audit verify`: walk the hash chain and report the first record
//! that was modified, deleted, inserted or reordered, by seq and id; check
//! every checkpoint's signature and hash; detect a truncated tail against
//! checkpoints kept elsewhere (a sink's copy, an export) and the sinks'
//! acknowledged cursors. Read-only.
//!
//! What it can and cannot prove: someone with write access to the database
//! and the audit key can rewrite the whole chain and re-sign it. What they
//! cannot do is change what was already shipped or exported; pass a
//! checkpoint from there (`--checkpoint FILE`) and a pinned `--pubkey`.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};

use super::chain::{self, RawRow, GENESIS};
use super::checkpoint::Checkpoint;
use super::keys::AuditPublicKey;
use super::record::AuditKind;
use super::store;
use super::AuditError;

/// Rows read per query while walking.
const CHUNK: usize = 10_000;
/// Problems collected before the walk stops listing them.
const MAX_PROBLEMS: usize = 20;

/// What `verify` checks against, besides the database itself.
#[derive(Debug, Default, Clone)]
pub struct VerifyOptions {
    /// Key that must have signed checkpoints; `None` skips signature checks.
    pub pubkey: Option<AuditPublicKey>,
    /// Checkpoints kept outside the database (shipped, exported), with where
    /// they came from.
    pub external: Vec<(Checkpoint, String)>,
}

/// One finding, located by seq and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub seq: i64,
    pub id: String,
    pub message: String,
}

/// The class of a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    Modified,
    Deleted,
    Inserted,
    Reordered,
    Rewritten,
    BadCheckpoint,
    Truncated,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome of a walk.
#[derive(Debug, Default, Clone)]
pub struct VerifyReport {
    pub records: u64,
    pub first_seq: Option<i64>,
    pub last_seq: Option<i64>,
    pub checkpoints_verified: u64,
    /// In the order found; the first is the headline.
    pub problems: Vec<Problem>,
    /// Things worth knowing that are not tampering.
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Walk<'a> {
    conn: &'a Connection,
    opts: &'a VerifyOptions,
    report: VerifyReport,
    /// Highest seq covered by a valid checkpoint so far.
    good_checkpoint: i64,
}

impl Walk<'_> {
    fn problem(&mut self, kind: ProblemKind, row: Option<&RawRow>, seq: i64, message: String) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(Problem {
                kind,
                seq,
                id: row.map(|r| r.id.clone()).unwrap_or_default(),
                message,
            });
        }
    }

    fn seq_of_hash(&self, hash: &str) -> Result<Option<i64>, AuditError> {
        Ok(self
            .conn
            .query_row(
                "SELECT seq FROM audit WHERE hash = ?1 ORDER BY seq LIMIT 1",
                params![hash],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn hash_at(&self, seq: i64) -> Result<Option<String>, AuditError> {
        Ok(self
            .conn
            .query_row("SELECT hash FROM audit WHERE seq = ?1", params![seq], |r| {
                r.get::<_, Option<String>>(0)
            })
            .optional()?
            .flatten())
    }

    /// Diagnoses a row whose `prev_hash` is not the previous row's hash.
    fn broken_link(
        &mut self,
        prev: &RawRow,
        row: &RawRow,
        next: Option<&RawRow>,
    ) -> Result<(), AuditError> {
        let (s, id) = (row.seq, row.id.as_str());
        match self.seq_of_hash(&row.prev_hash)? {
            Some(j) if j > s => self.problem(
                ProblemKind::Reordered,
                Some(row),
                s,
                format!("record seq {s} (id {id}) is out of order: it chains to record seq {j}, which comes after it"),
            ),
            Some(j) if j < prev.seq => self.problem(
                ProblemKind::Inserted,
                Some(prev),
                j + 1,
                format!(
                    "records seq {}..={} were inserted: record seq {s} (id {id}) chains directly to seq {j}",
                    j + 1,
                    prev.seq
                ),
            ),
            _ => {
                let inserted = next.is_some_and(|n| n.prev_hash == prev.hash);
                if inserted {
                    self.problem(
                        ProblemKind::Inserted,
                        Some(row),
                        s,
                        format!("record seq {s} (id {id}) was inserted: the next record chains to seq {}", prev.seq),
                    );
                } else if chain::id_seq(&row.id) != Some(s) || chain::id_seq(&prev.id) != Some(prev.seq) {
                    self.problem(
                        ProblemKind::Deleted,
                        Some(row),
                        s,
                        format!("a record between seq {} and seq {s} (id {id}) was deleted and the rest renumbered", prev.seq),
                    );
                } else {
                    self.problem(
                        ProblemKind::Modified,
                        Some(prev),
                        prev.seq,
                        format!(
                            "record seq {} (id {}) was modified and its hash recomputed: record seq {s} chains to a different hash",
                            prev.seq, prev.id
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    fn check_checkpoint(
        &mut self,
        cp: &Checkpoint,
        row: Option<&RawRow>,
        whence: &str,
    ) -> Result<(), AuditError> {
        if let Some(key) = &self.opts.pubkey {
            if let Err(e) = cp.verify(key) {
                let seq = row.map_or(cp.seq, |r| r.seq);
                self.problem(
                    ProblemKind::BadCheckpoint,
                    row,
                    seq,
                    format!(
                        "checkpoint for seq {} ({whence}) has a bad signature: {e}",
                        cp.seq
                    ),
                );
                return Ok(());
            }
        }
        match self.hash_at(cp.seq)? {
            Some(h) if h == cp.hash => {
                self.report.checkpoints_verified += 1;
                self.good_checkpoint = self.good_checkpoint.max(cp.seq);
            }
            Some(_) => {
                let from = self.good_checkpoint + 1;
                self.problem(
                    ProblemKind::Rewritten,
                    row,
                    cp.seq,
                    format!(
                        "the chain was rewritten: record seq {} does not have the hash signed in the checkpoint ({whence}); the rewrite is between seq {from} and {}",
                        cp.seq, cp.seq
                    ),
                );
            }
            None => {
                let last = self.report.last_seq.unwrap_or(0);
                if cp.seq > last {
                    self.problem(
                        ProblemKind::Truncated,
                        None,
                        last + 1,
                        format!(
                            "truncated tail: the trail ends at seq {last} but a checkpoint ({whence}) covers seq {}: records seq {}..={} were removed",
                            cp.seq,
                            last + 1,
                            cp.seq
                        ),
                    );
                } else if self.report.first_seq.is_some_and(|f| cp.seq >= f) {
                    self.problem(
                        ProblemKind::Deleted,
                        row,
                        cp.seq,
                        format!(
                            "record seq {} was deleted: a checkpoint ({whence}) covers it",
                            cp.seq
                        ),
                    );
                } else {
                    self.report.notes.push(format!(
                        "checkpoint for seq {} ({whence}) is older than the retained trail",
                        cp.seq
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The seq a renumbered row was written at, if its content hashes right there.
fn moved_from(row: &RawRow) -> Option<i64> {
    let m = chain::id_seq(&row.id).filter(|m| *m != row.seq)?;
    let mut orig = row.clone();
    orig.seq = m;
    orig.content_matches().then_some(m)
}

/// Walks the whole trail in `db_path`.
pub fn verify(db_path: &Path, opts: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let conn = store::open_reader(db_path)?;
    if !store::has_audit_table(&conn)? {
        return Ok(VerifyReport::default());
    }
    let mut w = Walk {
        conn: &conn,
        opts,
        report: VerifyReport::default(),
        good_checkpoint: 0,
    };
    let anchor = if store::has_table(&conn, "audit_anchor")? {
        store::anchor(&conn)?
    } else {
        None
    };
    let mut prev = RawRow {
        seq: anchor.as_ref().map_or(0, |a| a.0),
        hash: anchor
            .as_ref()
            .map_or_else(|| chain::hex(&GENESIS), |a| a.1.clone()),
        ..RawRow::default()
    };
    let mut anchor_covered = anchor.is_none();
    let mut after = 0i64;
    loop {
        let rows = store::rows_after(&conn, after, CHUNK)?;
        let Some(last) = rows.last() else { break };
        after = last.seq;
        for (i, row) in rows.iter().enumerate() {
            w.report.records += 1;
            w.report.first_seq.get_or_insert(row.seq);
            w.report.last_seq = Some(row.seq);
            let (s, id) = (row.seq, row.id.clone());
            if row.hash.is_empty() {
                w.problem(
                    ProblemKind::Modified,
                    Some(row),
                    s,
                    format!("record seq {s} has no hash (written outside the appliance)"),
                );
            } else if !row.content_matches() && moved_from(row).is_some() {
                let m = moved_from(row).unwrap_or_default();
                w.problem(
                    ProblemKind::Reordered,
                    Some(row),
                    s,
                    format!("records were reordered: record id {id} (written as seq {m}) now sits at seq {s}"),
                );
            } else if !row.content_matches() {
                w.problem(
                    ProblemKind::Modified,
                    Some(row),
                    s,
                    format!("record seq {s} (id {id}) was modified: its content does not match its hash"),
                );
            } else if s != prev.seq + 1 && row.prev_hash != prev.hash {
                let (a, b) = (prev.seq + 1, s - 1);
                let what = if a == b {
                    format!("record seq {a} was")
                } else {
                    format!("records seq {a}..={b} were")
                };
                w.problem(
                    ProblemKind::Deleted,
                    Some(row),
                    a,
                    format!(
                        "{what} deleted: the trail jumps from seq {} to seq {s} (id {id})",
                        prev.seq
                    ),
                );
            } else if row.prev_hash != prev.hash {
                let next = match rows.get(i + 1) {
                    Some(n) => Some(n.clone()),
                    None => store::rows_after(&conn, row.seq, 1)?.pop(),
                };
                w.broken_link(&prev, row, next.as_ref())?;
            } else if s != prev.seq + 1 || chain::id_seq(&row.id) != Some(s) {
                w.problem(
                    ProblemKind::Reordered,
                    Some(row),
                    s,
                    format!("record seq {s} carries id {id}: it was renumbered"),
                );
            }
            if row.kind == AuditKind::AuditCheckpoint.as_str() {
                let cp = row
                    .detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str(d).ok())
                    .and_then(|v| Checkpoint::from_detail(&v));
                match cp {
                    Some(cp) => {
                        if anchor
                            .as_ref()
                            .is_some_and(|a| a.0 == cp.seq && a.1 == cp.hash)
                        {
                            // The checkpoint vouches for the retention anchor.
                            anchor_covered =
                                opts.pubkey.as_ref().is_none_or(|k| cp.verify(k).is_ok());
                            w.report.checkpoints_verified += u64::from(anchor_covered);
                        } else if cp.seq < s {
                            w.check_checkpoint(&cp, Some(row), &format!("record seq {s}"))?;
                        }
                    }
                    None => w.problem(
                        ProblemKind::BadCheckpoint,
                        Some(row),
                        s,
                        format!("checkpoint record seq {s} (id {id}) is malformed"),
                    ),
                }
            }
            prev = row.clone();
        }
    }
    if !anchor_covered {
        w.report.notes.push(
            "the records before the retention anchor are gone and no signed checkpoint covers the anchor"
                .to_owned(),
        );
    }
    for (cp, whence) in &opts.external {
        w.check_checkpoint(cp, None, whence)?;
    }
    let last = w.report.last_seq.unwrap_or(prev.seq);
    for (sink, seq) in store::cursors(&conn)? {
        if seq > last {
            w.problem(
                ProblemKind::Truncated,
                None,
                last + 1,
                format!("truncated tail: {sink} acknowledged records up to seq {seq} but the trail ends at seq {last}"),
            );
        }
    }
    Ok(w.report)
}
