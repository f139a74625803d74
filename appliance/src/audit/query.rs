//! Reading the audit trail back: filters, `--since` parsing, and the two
//! output formats of `appliance audit list` (aligned table, NDJSON).
//!
//! Synchronous: opens its own read connection (WAL lets it run beside the
//! writer). Never writes.

use super::record::{AuditKind, AuditRecord};
use super::store;
use super::AuditError;
use rusqlite::types::Value;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which records to list. All set fields must match.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub session_id: Option<String>,
    /// Records at or after this unix time (ms); see [`parse_since`].
    pub since_ms: Option<i64>,
    pub kind: Option<AuditKind>,
    pub connection: Option<String>,
    /// At most this many records: the most recent ones (like `tail -n`),
    /// still returned oldest first.
    pub limit: Option<usize>,
}

/// A record as stored, with its sequence number, stable id and chain hashes.
/// Serializes flat (`{"seq":1,"id":"...","time_ms":...,"kind":"login",...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub seq: i64,
    /// Stable id (`<appliance id>-<seq>`), the de-duplication key for receivers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(flatten)]
    pub record: AuditRecord,
    /// Hash of the previous record (lowercase hex; see `audit::chain`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prev_hash: String,
    /// This record's hash.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
}

impl StoredRecord {
    /// A record at `seq` without chain fields (tests, samples).
    pub fn new(seq: i64, record: AuditRecord) -> StoredRecord {
        StoredRecord {
            seq,
            id: String::new(),
            record,
            prev_hash: String::new(),
            hash: String::new(),
        }
    }

    /// Decode a stored row.
    pub(crate) fn from_raw(raw: &super::chain::RawRow) -> Result<StoredRecord, AuditError> {
        Ok(StoredRecord {
            seq: raw.seq,
            id: raw.id.clone(),
            record: raw.decode()?,
            prev_hash: raw.prev_hash.clone(),
            hash: raw.hash.clone(),
        })
    }

    /// Back to the stored form (for re-hashing an exported or shipped record).
    pub fn to_raw(&self) -> super::chain::RawRow {
        let mut raw = super::chain::RawRow::encode(self.seq, self.id.clone(), &self.record);
        raw.prev_hash = self.prev_hash.clone();
        raw.hash = self.hash.clone();
        raw
    }
}

/// Records matching `filter`, ordered by `seq` ascending. A database where no
/// writer has created the `audit` table yet yields an empty list.
pub fn query(db_path: &Path, filter: &AuditFilter) -> Result<Vec<StoredRecord>, AuditError> {
    let conn = store::open_reader(db_path)?;
    if !store::has_audit_table(&conn)? {
        return Ok(Vec::new());
    }
    let mut clauses: Vec<&str> = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(user) = &filter.user {
        clauses.push("user = ?");
        args.push(Value::Text(user.clone()));
    }
    if let Some(session) = &filter.session_id {
        clauses.push("session_id = ?");
        args.push(Value::Text(session.clone()));
    }
    if let Some(since) = filter.since_ms {
        clauses.push("time_ms >= ?");
        args.push(Value::Integer(since));
    }
    if let Some(kind) = filter.kind {
        clauses.push("kind = ?");
        args.push(Value::Text(kind.as_str().to_owned()));
    }
    if let Some(connection) = &filter.connection {
        clauses.push("connection = ?");
        args.push(Value::Text(connection.clone()));
    }
    let cols = store::COLUMNS;
    let mut sql = format!("SELECT {cols} FROM audit");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    let sql = match filter.limit {
        Some(limit) => {
            args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
            format!("SELECT {cols} FROM ({sql} ORDER BY seq DESC LIMIT ?) ORDER BY seq ASC")
        }
        None => format!("{sql} ORDER BY seq ASC"),
    };
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(args))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(StoredRecord::from_raw(&store::decode_raw(row)?)?);
    }
    Ok(out)
}

/// One JSON object per line (with a trailing newline), for `--json`.
pub fn format_ndjson(records: &[StoredRecord]) -> String {
    let mut out = String::new();
    for r in records {
        // Serializing plain data to a String cannot fail; skip rather than panic.
        if let Ok(line) = serde_json::to_string(r) {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Widest a user/connection/session cell gets before it is truncated.
const MAX_CELL: usize = 36;

/// Human-readable table, one line per record after a header: seq, time
/// (RFC 3339 UTC, seconds), kind, user, connection, session, then the
/// interesting fields as `key=value`. Control characters are escaped so a
/// stored value cannot rewrite the operator's terminal.
pub fn format_table(records: &[StoredRecord]) -> String {
    const HEADER: [&str; 7] = [
        "SEQ",
        "TIME",
        "KIND",
        "USER",
        "CONNECTION",
        "SESSION",
        "DETAILS",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|s| {
            let r = &s.record;
            [
                s.seq.to_string(),
                format_time(r.time_ms),
                r.kind.as_str().to_owned(),
                cell(r.user.as_deref()),
                cell(r.connection.as_deref()),
                cell(r.session_id.as_deref()),
                details(r),
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let header = HEADER.map(str::to_owned);
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else if i == 0 {
                // Right-align the sequence number.
                let _ = write!(line, "{c:>w$}  ", w = widths[i]);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Escape control and bidi-override characters; keep everything else.
fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        let bidi = matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

fn cell(v: Option<&str>) -> String {
    match v {
        None => "-".to_owned(),
        Some(s) => {
            let s = sanitize(s);
            if s.chars().count() > MAX_CELL {
                let mut t: String = s.chars().take(MAX_CELL - 1).collect();
                t.push('…');
                t
            } else {
                s
            }
        }
    }
}

fn details(r: &AuditRecord) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(o) = &r.outcome {
        parts.push(format!("outcome={}", sanitize(o)));
    }
    if let Some(b) = r.bytes_up {
        parts.push(format!("up={}", format_bytes(b)));
    }
    if let Some(b) = r.bytes_down {
        parts.push(format!("down={}", format_bytes(b)));
    }
    if let Some(d) = r.duration_ms {
        parts.push(format!("dur={}", format_duration_ms(d)));
    }
    if let Some(p) = r.port {
        parts.push(format!("port={p}"));
    }
    if let Some(v) = r.policy_version {
        parts.push(format!("policy=v{v}"));
    }
    if let Some(a) = &r.client_addr {
        parts.push(format!("from={}", sanitize(a)));
    }
    if !r.groups.is_empty() {
        parts.push(format!("groups={}", sanitize(&r.groups.join(","))));
    }
    if let Some(reason) = &r.reason {
        // Debug quoting escapes quotes and control characters.
        parts.push(format!("reason={}", sanitize(&format!("{reason:?}"))));
    }
    if let Some(d) = &r.detail {
        if r.kind == AuditKind::AuditCheckpoint {
            // The signature is long and says nothing to a reader; `--json` has it.
            let covers = d
                .get("seq")
                .and_then(serde_json::Value::as_i64)
                .unwrap_or(0);
            parts.push(format!("signed checkpoint of seq {covers}"));
        } else {
            parts.push(format!("detail={}", sanitize(&d.to_string())));
        }
    }
    parts.join(" ")
}

/// `2026-11-29T10:00:00Z`; out-of-range times (which humantime cannot print)
/// as raw milliseconds.
fn format_time(ms: i64) -> String {
    const YEAR_10000_MS: i64 = 253_402_300_800_000;
    match u64::try_from(ms) {
        Ok(m) if ms < YEAR_10000_MS => {
            let t = UNIX_EPOCH + Duration::from_millis(m);
            humantime::format_rfc3339_seconds(t).to_string()
        }
        _ => format!("@{ms}ms"),
    }
}

fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1}{}", UNITS[unit])
}

fn format_duration_ms(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn system_time_ms(t: SystemTime) -> Option<i64> {
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

/// Parse a `--since` value into unix ms. Accepts RFC 3339
/// (`2026-11-29T10:00:00Z`, `2026-11-29T12:00:00+02:00`, fractional seconds;
/// no zone means UTC), a date (`2026-11-29`, midnight UTC), or a duration
/// meaning that long before `now_ms` (`15m`, `2h`, `7d`, `1h 30m`, optional
/// trailing `ago`).
pub fn parse_since(s: &str, now_ms: i64) -> Result<i64, AuditError> {
    let input = s.trim();
    let bad = |why: &str| AuditError::BadSince(format!("{input:?}: {why}"));
    if input.is_empty() {
        return Err(bad("empty"));
    }
    let b = input.as_bytes();
    let looks_like_date = b.len() >= 10 && b[4] == b'-' && b[7] == b'-';
    if looks_like_date && b.len() == 10 {
        let t = humantime::parse_rfc3339(&format!("{input}T00:00:00Z"))
            .map_err(|e| bad(&e.to_string()))?;
        return system_time_ms(t).ok_or_else(|| bad("out of range"));
    }
    if looks_like_date {
        return parse_timestamp(input).ok_or_else(|| {
            bad("expected RFC 3339 like 2026-11-29T10:00:00Z, a date like 2026-11-29, or a duration like 15m")
        });
    }
    let dur_text = input.strip_suffix("ago").unwrap_or(input).trim_end();
    let d = humantime::parse_duration(dur_text).map_err(|e| {
        bad(&format!(
            "{e}; expected a duration like 15m, 2h, 7d, a date, or RFC 3339"
        ))
    })?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| bad("duration too long"))?;
    Ok(now_ms.saturating_sub(ms))
}

/// RFC 3339 with `Z`, `+HH:MM`/`-HH:MM`, or no zone (UTC).
fn parse_timestamp(s: &str) -> Option<i64> {
    let (base, offset_ms) = match s
        .len()
        .checked_sub(6)
        .and_then(|i| s.get(i..).map(|z| (i, z)))
    {
        Some((i, zone))
            if matches!(zone.as_bytes().first(), Some(b'+' | b'-'))
                && zone.as_bytes().get(3) == Some(&b':') =>
        {
            let hours: i64 = zone.get(1..3)?.parse().ok()?;
            let minutes: i64 = zone.get(4..6)?.parse().ok()?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let sign = if zone.starts_with('-') { -1 } else { 1 };
            (s.get(..i)?, sign * (hours * 60 + minutes) * 60_000)
        }
        _ => (s.strip_suffix(['Z', 'z']).unwrap_or(s), 0),
    };
    // `T` (or a space) between date and time; humantime wants it upper case.
    let base = base.replacen('t', "T", 1);
    let t = humantime::parse_rfc3339_weak(&base).ok()?;
    // Local time minus its offset is UTC.
    system_time_ms(t)?.checked_sub(offset_ms)
}
