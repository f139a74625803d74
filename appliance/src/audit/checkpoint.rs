//! Signed checkpoints of the hash chain: "record `seq` of appliance `A` has
//! hash `H`, at time `T`", signed with the audit key (minisign). The writer
//! appends one as an ordinary `audit_checkpoint` record (so checkpoints are
//! chained, shipped and exported like everything else) every
//! `checkpoint_interval` when the trail grew, and at shutdown.
//!
//! The signed statement is plain text, so `minisign -Vm` can check it too:
//!
//! ```text
//! hoop-audit-checkpoint v1
//! appliance=<16 hex digits>
//! seq=<n>
//! hash=<64 hex digits>
//! time_ms=<unix ms>
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::keys::{AuditKey, AuditPublicKey};
use super::record::{AuditKind, AuditRecord};
use super::AuditError;

/// One signed checkpoint (the `detail` of an `audit_checkpoint` record).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub appliance: String,
    /// The sequence number covered: the chain up to and including it.
    pub seq: i64,
    /// Hash of record `seq` (lowercase hex).
    pub hash: String,
    pub time_ms: i64,
    /// Key id of the audit key, as minisign prints it.
    pub key_id: String,
    /// The detached minisign signature text over [`Checkpoint::statement`].
    pub signature: String,
}

impl Checkpoint {
    /// The signed text.
    pub fn statement(&self) -> String {
        statement(&self.appliance, self.seq, &self.hash, self.time_ms)
    }

    /// Signs a checkpoint of `(seq, hash)` now.
    pub fn sign(
        key: &AuditKey,
        appliance: &str,
        seq: i64,
        hash: &str,
        time_ms: i64,
    ) -> Result<Checkpoint, AuditError> {
        let text = statement(appliance, seq, hash, time_ms);
        let trusted = format!("hoop-audit-checkpoint appliance={appliance} seq={seq}");
        let signature = key.sign(text.as_bytes(), &trusted)?;
        Ok(Checkpoint {
            appliance: appliance.to_owned(),
            seq,
            hash: hash.to_owned(),
            time_ms,
            key_id: key.key_id().to_owned(),
            signature,
        })
    }

    /// Checks the signature with `key`.
    pub fn verify(&self, key: &AuditPublicKey) -> Result<(), AuditError> {
        key.verify(self.statement().as_bytes(), &self.signature)
            .map(|_| ())
    }

    /// The audit record that carries this checkpoint.
    pub fn record(&self) -> AuditRecord {
        AuditRecord::new(AuditKind::AuditCheckpoint)
            .outcome("ok")
            .detail(serde_json::to_value(self).unwrap_or(Value::Null))
    }

    /// The checkpoint carried by a record's `detail`, if it is one.
    pub fn from_detail(detail: &Value) -> Option<Checkpoint> {
        serde_json::from_value(detail.clone()).ok()
    }
}

fn statement(appliance: &str, seq: i64, hash: &str, time_ms: i64) -> String {
    format!("hoop-audit-checkpoint v1\nappliance={appliance}\nseq={seq}\nhash={hash}\ntime_ms={time_ms}\n")
}

/// Checkpoints found in a text: NDJSON lines that are `audit_checkpoint`
/// records (as a sink receives them or `audit export --format ndjson` writes
/// them) or `{"checkpoint": {...}}` objects (the export's closing line), or a
/// CSV export. Unrelated lines are skipped.
pub fn parse_checkpoints(text: &str) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
            continue;
        };
        if let Some(c) = v.get("checkpoint").and_then(Checkpoint::from_detail) {
            out.push(c);
        } else if v.get("kind").and_then(Value::as_str) == Some("audit_checkpoint") {
            if let Some(c) = v.get("detail").and_then(Checkpoint::from_detail) {
                out.push(c);
            }
        }
    }
    if out.is_empty() {
        if let Ok(export) = super::export::parse_export_text(text) {
            out.extend(export.checkpoints);
        }
    }
    out
}
