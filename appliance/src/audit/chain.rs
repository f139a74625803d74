//! The hash chain: every stored record carries `prev_hash` (the previous
//! record's `hash`) and `hash` = SHA-256 over a canonical encoding of itself
//! and `prev_hash`. Pure functions over plain values; no I/O.
//!
//! # Canonical encoding (version 1)
//!
//! ```text
//! hash = SHA-256( "hoop-audit-v1" 0x00 || prev_hash (32 raw bytes) || field_1 || ... || field_17 )
//! fields, in this order, as stored in the `audit` table:
//!   seq, id, time_ms, kind, user, groups, connection, session_id, client_addr,
//!   port, bytes_up, bytes_down, duration_ms, outcome, reason, policy_version, detail
//! each field:  NULL    -> 0x00
//!              integer -> 0x01 || i64 big-endian (8 bytes)
//!              text    -> 0x02 || u32 big-endian byte length || UTF-8 bytes
//! ```
//!
//! `groups` is the compact JSON array text and `detail` the compact JSON text
//! (object keys sorted) exactly as serde_json writes them, so an exported
//! record re-serialized from its JSON hashes to the same value. The first
//! record ever written has `prev_hash` = 32 zero bytes. Hashes are stored and
//! shipped as lowercase hex. A record's stable `id` is
//! `<appliance id (16 hex digits)>-<seq>`: unique across appliances, the same
//! on every resend, so receivers de-duplicate on it.

use super::record::{AuditKind, AuditRecord};
use super::AuditError;
use ring::digest::{Context, SHA256};

/// Domain separation prefix of the version 1 encoding.
const DOMAIN: &[u8] = b"hoop-audit-v1\0";

/// The `prev_hash` of the first record.
pub const GENESIS: [u8; 32] = [0u8; 32];

/// A record exactly as its columns are stored: what the chain hashes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawRow {
    pub seq: i64,
    pub id: String,
    pub time_ms: i64,
    pub kind: String,
    pub user: Option<String>,
    pub groups: String,
    pub connection: Option<String>,
    pub session_id: Option<String>,
    pub client_addr: Option<String>,
    pub port: Option<i64>,
    pub bytes_up: Option<i64>,
    pub bytes_down: Option<i64>,
    pub duration_ms: Option<i64>,
    pub outcome: Option<String>,
    pub reason: Option<String>,
    pub policy_version: Option<i64>,
    pub detail: Option<String>,
    /// Lowercase hex of the previous record's hash.
    pub prev_hash: String,
    /// Lowercase hex of this record's hash.
    pub hash: String,
}

/// SQLite integers are signed; values past `i64::MAX` (never seen in
/// practice) are clamped rather than failing, because a record that can never
/// be inserted would stall the whole queue.
fn to_i64(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// The stable id of record `seq` on appliance `appliance_id`.
pub fn record_id(appliance_id: &str, seq: i64) -> String {
    format!("{appliance_id}-{seq}")
}

impl RawRow {
    /// The stored form of `r` at `seq` (hashes left empty).
    pub fn encode(seq: i64, id: String, r: &AuditRecord) -> RawRow {
        // Serializing a Vec<String> or a Value cannot fail; fall back to an
        // empty value rather than poisoning the batch.
        let groups = serde_json::to_string(&r.groups).unwrap_or_else(|_| "[]".to_owned());
        let detail = r
            .detail
            .as_ref()
            .map(|d| serde_json::to_string(d).unwrap_or_else(|_| "null".to_owned()));
        RawRow {
            seq,
            id,
            time_ms: r.time_ms,
            kind: r.kind.as_str().to_owned(),
            user: r.user.clone(),
            groups,
            connection: r.connection.clone(),
            session_id: r.session_id.clone(),
            client_addr: r.client_addr.clone(),
            port: r.port.map(i64::from),
            bytes_up: to_i64(r.bytes_up),
            bytes_down: to_i64(r.bytes_down),
            duration_ms: to_i64(r.duration_ms),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            policy_version: to_i64(r.policy_version),
            detail,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// SHA-256 of the canonical encoding with `prev` as the previous hash.
    pub fn compute_hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut ctx = Context::new(&SHA256);
        ctx.update(DOMAIN);
        ctx.update(prev);
        int(&mut ctx, Some(self.seq));
        text(&mut ctx, Some(&self.id));
        int(&mut ctx, Some(self.time_ms));
        text(&mut ctx, Some(&self.kind));
        text(&mut ctx, self.user.as_deref());
        text(&mut ctx, Some(&self.groups));
        text(&mut ctx, self.connection.as_deref());
        text(&mut ctx, self.session_id.as_deref());
        text(&mut ctx, self.client_addr.as_deref());
        int(&mut ctx, self.port);
        int(&mut ctx, self.bytes_up);
        int(&mut ctx, self.bytes_down);
        int(&mut ctx, self.duration_ms);
        text(&mut ctx, self.outcome.as_deref());
        text(&mut ctx, self.reason.as_deref());
        int(&mut ctx, self.policy_version);
        text(&mut ctx, self.detail.as_deref());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    /// Set `prev_hash` and `hash` for a record following `prev`; returns the new hash.
    pub fn seal(&mut self, prev: &[u8; 32]) -> [u8; 32] {
        let h = self.compute_hash(prev);
        self.prev_hash = hex(prev);
        self.hash = hex(&h);
        h
    }

    /// Whether `hash` matches the content and `prev_hash`.
    pub fn content_matches(&self) -> bool {
        match parse_hash(&self.prev_hash) {
            Some(prev) => hex(&self.compute_hash(&prev)) == self.hash,
            None => false,
        }
    }

    /// Decode into the record callers see.
    pub fn decode(&self) -> Result<AuditRecord, AuditError> {
        let seq = self.seq;
        let bad = |reason: String| AuditError::BadRow { seq, reason };
        let kind = AuditKind::from_name(&self.kind)
            .ok_or_else(|| bad(format!("unknown kind {:?}", self.kind)))?;
        let groups: Vec<String> =
            serde_json::from_str(&self.groups).map_err(|e| bad(format!("groups: {e}")))?;
        let port = self
            .port
            .map(|p| u16::try_from(p).map_err(|_| bad(format!("port out of range: {p}"))))
            .transpose()?;
        let detail = self
            .detail
            .as_deref()
            .map(|d| serde_json::from_str(d).map_err(|e| bad(format!("detail: {e}"))))
            .transpose()?;
        let u = |col: &str, v: Option<i64>| -> Result<Option<u64>, AuditError> {
            v.map(|v| u64::try_from(v).map_err(|_| bad(format!("{col} is negative: {v}"))))
                .transpose()
        };
        Ok(AuditRecord {
            time_ms: self.time_ms,
            kind,
            user: self.user.clone(),
            groups,
            connection: self.connection.clone(),
            session_id: self.session_id.clone(),
            client_addr: self.client_addr.clone(),
            port,
            bytes_up: u("bytes_up", self.bytes_up)?,
            bytes_down: u("bytes_down", self.bytes_down)?,
            duration_ms: u("duration_ms", self.duration_ms)?,
            outcome: self.outcome.clone(),
            reason: self.reason.clone(),
            policy_version: u("policy_version", self.policy_version)?,
            detail,
        })
    }
}

fn int(ctx: &mut Context, v: Option<i64>) {
    match v {
        None => ctx.update(&[0]),
        Some(v) => {
            ctx.update(&[1]);
            ctx.update(&v.to_be_bytes());
        }
    }
}

fn text(ctx: &mut Context, v: Option<&str>) {
    match v {
        None => ctx.update(&[0]),
        Some(s) => {
            ctx.update(&[2]);
            // Texts longer than 4 GiB cannot be stored by SQLite anyway.
            let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
            ctx.update(&len.to_be_bytes());
            ctx.update(s.as_bytes());
        }
    }
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// 64 hex digits -> 32 bytes.
pub fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// The sequence number a record id claims (`<appliance>-<seq>`), if well formed.
pub fn id_seq(id: &str) -> Option<i64> {
    id.rsplit_once('-').and_then(|(_, s)| s.parse().ok())
}
