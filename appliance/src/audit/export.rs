//! Signed exports for air-gapped sites: `appliance audit export` writes a
//! contiguous range of the chain plus a closing checkpoint, and a detached
//! minisign signature `FILE.minisig` made with the audit key, so
//! `minisign -Vm FILE -P <key>` and `appliance audit verify-export` both
//! check it anywhere.
//!
//! # File layout
//!
//! NDJSON: line 1 `{"export": {...}}` (appliance, range, counts, key), then
//! one record per line exactly as `audit list --json` prints it (with `id`,
//! `prev_hash`, `hash`), then `{"checkpoint": {...}}` signed over the last
//! exported record.
//!
//! CSV (RFC 4180): a header row, then rows whose first column `type` is
//! `export`, `record` or `checkpoint`; for `export` and `checkpoint` rows the
//! `detail` column holds the same JSON object. An empty unquoted field is
//! NULL, `""` is an empty text, so records re-hash exactly.
//!
//! The range is by time (`--since` inclusive, `--until` exclusive) widened to
//! whole sequence numbers: every record from the first in range to the last in
//! range, so the chain inside the file has no holes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde_json::{json, Value};

use super::chain::{self, RawRow};
use super::checkpoint::Checkpoint;
use super::keys::{AuditKey, AuditPublicKey};
use super::query::StoredRecord;
use super::record::now_ms;
use super::store;
use super::AuditError;

/// Output format of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Ndjson,
    Csv,
}

impl std::str::FromStr for ExportFormat {
    type Err = AuditError;
    fn from_str(s: &str) -> Result<Self, AuditError> {
        match s {
            "ndjson" | "json" => Ok(ExportFormat::Ndjson),
            "csv" => Ok(ExportFormat::Csv),
            other => Err(AuditError::Export(format!(
                "unknown format {other:?}: ndjson or csv"
            ))),
        }
    }
}

/// What to export and where.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub format: ExportFormat,
    pub out: PathBuf,
}

/// What an export wrote (or what a verified export holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    pub first_seq: i64,
    pub last_seq: i64,
    pub records: u64,
    pub checkpoints: u64,
    pub signature: PathBuf,
    /// SHA-256 of the file (lowercase hex).
    pub sha256: String,
}

const CSV_HEADER: [&str; 21] = [
    "type",
    "seq",
    "id",
    "time",
    "time_ms",
    "kind",
    "user",
    "groups",
    "connection",
    "session_id",
    "client_addr",
    "port",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "outcome",
    "reason",
    "policy_version",
    "detail",
    "prev_hash",
    "hash",
];

fn export_err(e: impl std::fmt::Display) -> AuditError {
    AuditError::Export(e.to_string())
}

/// `FILE` -> `FILE.minisig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".minisig");
    PathBuf::from(s)
}

/// Writes the export, its closing checkpoint and `FILE.minisig`.
pub fn export(
    db_path: &Path,
    key: &AuditKey,
    req: &ExportRequest,
) -> Result<ExportSummary, AuditError> {
    let conn = store::open_reader(db_path)?;
    let apid = store::appliance_id(&conn)?;
    let first: Option<i64> = conn
        .query_row(
            "SELECT min(seq) FROM audit WHERE time_ms >= ?1",
            params![req.since_ms.unwrap_or(i64::MIN)],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let last: Option<i64> = conn
        .query_row(
            "SELECT max(seq) FROM audit WHERE time_ms < ?1",
            params![req.until_ms.unwrap_or(i64::MAX)],
            |r| r.get(0),
        )
        .optional()?
        .flatten();
    let (first, last) = match (first, last) {
        (Some(f), Some(l)) if f <= l => (f, l),
        _ => return Err(AuditError::Export("no records in that time range".into())),
    };
    let tmp = req.out.with_extension("partial");
    let file = File::create(&tmp).map_err(|e| export_err(format!("{}: {e}", tmp.display())))?;
    let mut out = BufWriter::new(file);
    let header = json!({
        "version": 1,
        "appliance": apid,
        "format": match req.format { ExportFormat::Ndjson => "ndjson", ExportFormat::Csv => "csv" },
        "since_ms": req.since_ms,
        "until_ms": req.until_ms,
        "first_seq": first,
        "last_seq": last,
        "records": last - first + 1,
        "created_ms": now_ms(),
        "key_id": key.key_id(),
        "public_key": key.public_key(),
    });
    match req.format {
        ExportFormat::Ndjson => writeln!(out, "{}", json!({ "export": header }))?,
        ExportFormat::Csv => {
            write_csv_row(&mut out, &CSV_HEADER.map(|h| Some(h.to_owned())))?;
            write_csv_row(&mut out, &meta_row("export", &header))?;
        }
    }
    let mut after = first - 1;
    let mut count = 0u64;
    let mut checkpoints = 0u64;
    let mut last_hash = String::new();
    'outer: loop {
        for raw in store::rows_after(&conn, after, 5000)? {
            if raw.seq > last {
                break 'outer;
            }
            after = raw.seq;
            count += 1;
            checkpoints += u64::from(raw.kind == "audit_checkpoint");
            last_hash = raw.hash.clone();
            match req.format {
                ExportFormat::Ndjson => {
                    let rec = StoredRecord::from_raw(&raw)?;
                    writeln!(out, "{}", serde_json::to_string(&rec).map_err(export_err)?)?;
                }
                ExportFormat::Csv => write_csv_row(&mut out, &record_row(&raw))?,
            }
        }
        if after >= last || store::rows_after(&conn, after, 1)?.is_empty() {
            break;
        }
    }
    if count as i64 != last - first + 1 {
        return Err(AuditError::Export(format!(
            "the trail has holes between seq {first} and {last} ({count} records): run `appliance audit verify`"
        )));
    }
    let cp = Checkpoint::sign(key, &apid, last, &last_hash, now_ms())?;
    let cp_value = serde_json::to_value(&cp).map_err(export_err)?;
    match req.format {
        ExportFormat::Ndjson => writeln!(out, "{}", json!({ "checkpoint": cp_value }))?,
        ExportFormat::Csv => write_csv_row(&mut out, &meta_row("checkpoint", &cp_value))?,
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    drop(out);
    std::fs::rename(&tmp, &req.out)?;
    let name = req
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trusted = format!("hoop-audit-export file:{name} appliance:{apid} seq:{first}-{last}");
    let sig = key.sign(File::open(&req.out)?, &trusted)?;
    let sig_path = signature_path(&req.out);
    std::fs::write(&sig_path, sig)?;
    Ok(ExportSummary {
        first_seq: first,
        last_seq: last,
        records: count,
        checkpoints: checkpoints + 1,
        signature: sig_path,
        sha256: file_sha256(&req.out)?,
    })
}

fn file_sha256(path: &Path) -> Result<String, AuditError> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
    }
    Ok(chain::hex(ctx.finish().as_ref()))
}

type CsvRow = Vec<Option<String>>;

fn meta_row(kind: &str, v: &Value) -> CsvRow {
    let mut row: CsvRow = vec![None; CSV_HEADER.len()];
    row[0] = Some(kind.to_owned());
    row[18] = Some(v.to_string());
    row
}

fn time_text(ms: i64) -> String {
    u64::try_from(ms)
        .ok()
        .map(|m| {
            humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(m),
            )
            .to_string()
        })
        .unwrap_or_default()
}

fn record_row(r: &RawRow) -> CsvRow {
    let i = |v: Option<i64>| v.map(|v| v.to_string());
    vec![
        Some("record".into()),
        Some(r.seq.to_string()),
        Some(r.id.clone()),
        Some(time_text(r.time_ms)),
        Some(r.time_ms.to_string()),
        Some(r.kind.clone()),
        r.user.clone(),
        Some(r.groups.clone()),
        r.connection.clone(),
        r.session_id.clone(),
        r.client_addr.clone(),
        i(r.port),
        i(r.bytes_up),
        i(r.bytes_down),
        i(r.duration_ms),
        r.outcome.clone(),
        r.reason.clone(),
        i(r.policy_version),
        r.detail.clone(),
        Some(r.prev_hash.clone()),
        Some(r.hash.clone()),
    ]
}

/// Every present field quoted (so `""` is an empty text); NULL is empty.
fn write_csv_row(out: &mut impl Write, row: &[Option<String>]) -> Result<(), AuditError> {
    let mut line = String::new();
    for (i, f) in row.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        if let Some(f) = f {
            line.push('"');
            line.push_str(&f.replace('"', "\"\""));
            line.push('"');
        }
    }
    line.push_str("\r\n");
    out.write_all(line.as_bytes())?;
    Ok(())
}

/// RFC 4180 rows; `None` for an empty unquoted field.
fn parse_csv(text: &str) -> Result<Vec<CsvRow>, AuditError> {
    let mut rows = Vec::new();
    let mut row: CsvRow = Vec::new();
    let mut chars = text.chars().peekable();
    let mut field = String::new();
    let mut quoted = false;
    let mut any = false;
    while let Some(c) = chars.next() {
        match c {
            '"' if !any => {
                quoted = true;
                any = true;
                loop {
                    match chars.next() {
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => field.push(c),
                        None => return Err(AuditError::Export("CSV: unterminated quote".into())),
                    }
                }
            }
            ',' | '\n' | '\r' => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                let done = std::mem::take(&mut field);
                row.push(if quoted || !done.is_empty() {
                    Some(done)
                } else {
                    None
                });
                quoted = false;
                any = false;
                if c != ',' {
                    rows.push(std::mem::take(&mut row));
                }
            }
            c => {
                any = true;
                field.push(c);
            }
        }
    }
    if any || !row.is_empty() {
        row.push(if quoted || !field.is_empty() {
            Some(field)
        } else {
            None
        });
        rows.push(row);
    }
    Ok(rows)
}

/// An export file's content.
#[derive(Debug, Clone, Default)]
pub struct ParsedExport {
    pub header: Value,
    pub records: Vec<RawRow>,
    pub checkpoints: Vec<Checkpoint>,
}

fn csv_int(row: &CsvRow, i: usize) -> Result<Option<i64>, AuditError> {
    row.get(i)
        .cloned()
        .flatten()
        .map(|v| {
            v.parse().map_err(|_| {
                AuditError::Export(format!(
                    "CSV: column {} is not an integer: {v:?}",
                    CSV_HEADER[i]
                ))
            })
        })
        .transpose()
}

fn csv_record(row: &CsvRow) -> Result<RawRow, AuditError> {
    let t = |i: usize| row.get(i).cloned().flatten();
    Ok(RawRow {
        seq: csv_int(row, 1)?.unwrap_or(0),
        id: t(2).unwrap_or_default(),
        time_ms: csv_int(row, 4)?.unwrap_or(0),
        kind: t(5).unwrap_or_default(),
        user: t(6),
        groups: t(7).unwrap_or_default(),
        connection: t(8),
        session_id: t(9),
        client_addr: t(10),
        port: csv_int(row, 11)?,
        bytes_up: csv_int(row, 12)?,
        bytes_down: csv_int(row, 13)?,
        duration_ms: csv_int(row, 14)?,
        outcome: t(15),
        reason: t(16),
        policy_version: csv_int(row, 17)?,
        detail: t(18),
        prev_hash: t(19).unwrap_or_default(),
        hash: t(20).unwrap_or_default(),
    })
}

/// Parses an export (either format) without checking anything.
pub fn parse_export_text(text: &str) -> Result<ParsedExport, AuditError> {
    let mut p = ParsedExport::default();
    if text.starts_with("\"type\"") {
        for (n, row) in parse_csv(text)?.into_iter().enumerate().skip(1) {
            let detail = || -> Result<Value, AuditError> {
                let d = row.get(18).cloned().flatten().unwrap_or_default();
                serde_json::from_str(&d)
                    .map_err(|e| AuditError::Export(format!("CSV row {}: detail: {e}", n + 1)))
            };
            match row.first().cloned().flatten().as_deref() {
                Some("export") => p.header = detail()?,
                Some("record") => p.records.push(csv_record(&row)?),
                Some("checkpoint") => {
                    p.checkpoints
                        .push(Checkpoint::from_detail(&detail()?).ok_or_else(|| {
                            AuditError::Export(format!("CSV row {}: bad checkpoint", n + 1))
                        })?)
                }
                other => {
                    return Err(AuditError::Export(format!(
                        "CSV row {}: unknown type {other:?}",
                        n + 1
                    )))
                }
            }
        }
        return Ok(p);
    }
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |e: &dyn std::fmt::Display| AuditError::Export(format!("line {}: {e}", n + 1));
        let v: Value = serde_json::from_str(line).map_err(|e| bad(&e))?;
        if let Some(h) = v.get("export") {
            p.header = h.clone();
        } else if let Some(c) = v.get("checkpoint") {
            p.checkpoints
                .push(Checkpoint::from_detail(c).ok_or_else(|| bad(&"bad checkpoint"))?);
        } else {
            let rec: StoredRecord = serde_json::from_value(v).map_err(|e| bad(&e))?;
            p.records.push(rec.to_raw());
        }
    }
    Ok(p)
}

/// Checks an export anywhere: the minisign signature over the file with
/// `key`, every record's hash, the chain between them, every checkpoint's
/// signature and hash, and the closing checkpoint.
pub fn verify_export(file: &Path, key: &AuditPublicKey) -> Result<ExportSummary, AuditError> {
    let sig_path = signature_path(file);
    let sig = std::fs::read_to_string(&sig_path)
        .map_err(|e| AuditError::Export(format!("{}: {e}", sig_path.display())))?;
    key.verify_reader(File::open(file)?, &sig)
        .map_err(|e| AuditError::Export(format!("signature check failed: {e}")))?;
    let text = std::fs::read_to_string(file)?;
    let p = parse_export_text(&text)?;
    let bad = |m: String| Err(AuditError::Export(m));
    let (Some(first), Some(last)) = (p.records.first(), p.records.last()) else {
        return bad("the export holds no records".into());
    };
    let mut hashes: HashMap<i64, &str> = HashMap::with_capacity(p.records.len());
    let mut prev: Option<&RawRow> = None;
    for r in &p.records {
        if !r.content_matches() {
            return bad(format!(
                "record seq {} (id {}) does not match its hash",
                r.seq, r.id
            ));
        }
        if let Some(pr) = prev {
            if r.seq != pr.seq + 1 || r.prev_hash != pr.hash {
                return bad(format!(
                    "the chain breaks between seq {} and seq {} (id {})",
                    pr.seq, r.seq, r.id
                ));
            }
        }
        hashes.insert(r.seq, &r.hash);
        prev = Some(r);
    }
    let closing = p
        .checkpoints
        .last()
        .ok_or_else(|| AuditError::Export("the export has no closing checkpoint".into()))?;
    let mut all = p.checkpoints.clone();
    all.extend(
        p.records
            .iter()
            .filter(|r| r.kind == "audit_checkpoint")
            .filter_map(|r| {
                r.detail
                    .as_deref()
                    .and_then(|d| serde_json::from_str(d).ok())
            })
            .filter_map(|v: Value| Checkpoint::from_detail(&v)),
    );
    for cp in &all {
        cp.verify(key)
            .map_err(|e| AuditError::Export(format!("checkpoint for seq {}: {e}", cp.seq)))?;
        if let Some(h) = hashes.get(&cp.seq) {
            if *h != cp.hash {
                return bad(format!(
                    "checkpoint for seq {} does not match the record's hash",
                    cp.seq
                ));
            }
        }
    }
    if closing.seq != last.seq || closing.hash != last.hash {
        return bad(format!(
            "the closing checkpoint covers seq {}, not the last record seq {}",
            closing.seq, last.seq
        ));
    }
    if p.header.get("first_seq").and_then(Value::as_i64) != Some(first.seq)
        || p.header.get("last_seq").and_then(Value::as_i64) != Some(last.seq)
    {
        return bad("the header's range does not match the records".into());
    }
    Ok(ExportSummary {
        first_seq: first.seq,
        last_seq: last.seq,
        records: p.records.len() as u64,
        checkpoints: p.checkpoints.len() as u64
            + p.records
                .iter()
                .filter(|r| r.kind == "audit_checkpoint")
                .count() as u64,
        signature: sig_path,
        sha256: file_sha256(file)?,
    })
}
