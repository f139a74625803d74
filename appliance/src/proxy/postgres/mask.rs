//! Column masking and value detectors for PostgreSQL results. Pure: bytes of
//! RowDescription / DataRow / CopyData in, rewritten frames out; the catalog
//! lookups it needs are SQL text the caller runs ([`catalog`]).
//!
//! - [`MaskRules`]: which catalog columns are masked (`schema.table.column`,
//!   `table.column`, `*.column`, globs; ASCII case ignored).
//! - [`MaskPlan`]: built once per RowDescription. A field with a table OID
//!   is resolved to its catalog column (the caller's cached resolver; view
//!   columns resolve to their base columns, see [`catalog`]); a field without
//!   one (expressions, `lower(email)`, `email || ''`) is masked when its
//!   label matches the column part of any rule.
//! - [`MaskPlan::rewrite`]: a DataRow with masked values rewritten (text
//!   format: the connection's mask; binary: a zero for int2/int4/int8, the
//!   mask text for text-like types, NULL for every other type) and every
//!   text value scanned by the [`Detectors`]. Unchanged rows are not copied.
//! - [`copy`]: the same for COPY TO STDOUT rows in text and CSV format.
//!
//! Masks: `keep-last-4` replaces every character but the last four with `*`
//! (length in characters kept; values under 8 characters become all `*`),
//! `fixed` writes the replacement text, `hash` writes 16 hex digits of a keyed
//! HMAC-SHA-256 of the value (a stable pseudonym: equal values stay equal).
//!
//! # What masking cannot see
//!
//! Masking rewrites what the server sends; it cannot undo what the client
//! learns another way. It does not protect:
//!
//! - values the client derives itself: `WHERE ssn LIKE '123%'` row counts,
//!   ORDER BY on a masked column, `count(DISTINCT ...)`, timing;
//! - values transformed by SQL so neither the catalog nor a detector
//!   recognizes them: `md5(ssn)`, `encode(ssn::bytea, 'base64')`,
//!   `substr(card, 1, 6)` (pieces shorter than a detector needs),
//!   `reverse(email)`, `translate(...)`, arithmetic on numbers, unless the
//!   result's label still matches a rule or `deny_functions_on_masked` refuses
//!   the statement;
//! - whole rows as one value (`SELECT c FROM customers c`, `row_to_json(c)`,
//!   `c::text`): columns in them are not masked, only detectors apply
//!   (`deny_functions_on_masked` refuses these when the relation has masked
//!   columns);
//! - binary-format values of types other than int2/int4/int8 and text-like
//!   types become NULL (not a type-valid placeholder), and detectors scan only
//!   text-format values and binary text, varchar, bpchar, name, json, jsonb,
//!   xml and unknown values: numbers, arrays, composites and bytea in binary
//!   are not scanned;
//! - data in other encodings than the detectors' ASCII patterns (a card
//!   number written with full-width digits), emails with non-ASCII parts,
//!   phone numbers without a leading `+`;
//! - text-format masks are text whatever the column type: a driver that
//!   parses a masked integer or date column from text will fail on `***`;
//!   a detector match inside a JSON number makes that JSON invalid;
//! - COPY TO STDOUT in binary format, and `COPY (query) TO STDOUT` columns
//!   (no RowDescription: only detectors apply); COPY in text and CSV format
//!   from a table is handled by [`copy`];
//! - notifications, notices, error messages (`ERROR: duplicate key value
//!   (email)=(alice@example.com)`), function-call (fast path) results, and
//!   server logs.

pub mod catalog;
pub mod copy;
mod detect;
mod rules;
pub mod shapes;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_rewrite;
#[cfg(test)]
mod tests_shapes;

pub use detect::{BuiltinDetector, CustomDetector, Detectors, MAX_REGEX_SIZE, MAX_REGEX_SOURCE};
pub use rules::{ColumnName, ColumnPattern, MaskRules, NameGlob, MAX_PATTERN};

use super::codec::backend::{DataRow, RowDescription};
use super::codec::{CodecError, DataRowBuilder};

/// How a masked value is written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MaskMode {
    /// `*******1234`: every character but the last four (values of 8+).
    #[default]
    KeepLast4,
    /// The given text in place of the value.
    Fixed(String),
    /// 16 hex digits of HMAC-SHA-256(key, value).
    Hash,
}

impl MaskMode {
    /// The policy name.
    pub fn as_str(&self) -> &'static str {
        match self {
            MaskMode::KeepLast4 => "keep-last-4",
            MaskMode::Fixed(_) => "fixed",
            MaskMode::Hash => "hash",
        }
    }
}

/// Type OIDs with a placeholder or a text-compatible binary form.
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;
const JSON: u32 = 114;
const JSONB: u32 = 3802;
/// Types whose binary form is their text (jsonb: a version byte, then text).
const TEXT_LIKE: &[u32] = &[25, 1043, 1042, 19, 705, JSON, JSONB, 142];

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldPlan {
    masked: bool,
    /// 0 text, 1 binary.
    format: i16,
    type_oid: u32,
}

impl FieldPlan {
    /// Detectors look at text and at text-like binary values.
    fn scannable(&self) -> bool {
        self.format == 0 || TEXT_LIKE.contains(&self.type_oid)
    }
}

/// Which fields of a result are masked, and how each is encoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaskPlan {
    fields: Vec<FieldPlan>,
}

impl MaskPlan {
    /// Plans a result from its RowDescription body. `resolve(table_oid,
    /// attnum)` names a catalog column (the caller's cache, filled with
    /// [`catalog`] queries); `None` (unknown) and fields without a table
    /// fall back to matching the field label against each rule's column part.
    pub fn new(
        row_description: &[u8],
        rules: &MaskRules,
        resolve: &dyn Fn(u32, i16) -> Option<ColumnName>,
    ) -> Result<Self, CodecError> {
        let desc = RowDescription::parse(row_description)?;
        let fields = desc
            .fields()
            .map(|f| {
                let label = String::from_utf8_lossy(f.name.as_bytes());
                let by_name = || rules.matches_label(&label);
                let masked = if rules.is_empty() {
                    false
                } else if f.table_oid != 0 {
                    match resolve(f.table_oid, f.column_id) {
                        Some(c) => rules.matches(&c),
                        None => by_name(),
                    }
                } else {
                    by_name()
                };
                FieldPlan {
                    masked,
                    format: f.format,
                    type_oid: f.type_oid,
                }
            })
            .collect();
        Ok(MaskPlan { fields })
    }

    /// Applies Bind's result-format codes (extended protocol): none means all
    /// text, one applies to every column, otherwise one per column. A
    /// RowDescription answering Describe of a statement carries 0 for every
    /// column, so the relay must pass what Bind asked for.
    pub fn set_result_formats(&mut self, formats: &[i16]) {
        for (i, f) in self.fields.iter_mut().enumerate() {
            f.format = match formats {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// True for a result without fields.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Indexes of the masked fields.
    pub fn masked_fields(&self) -> impl Iterator<Item = usize> + '_ {
        self.fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.masked)
            .map(|(i, _)| i)
    }

    /// True when no row can change: nothing masked and no detectors.
    pub fn is_noop(&self, detectors: &Detectors) -> bool {
        detectors.is_empty() && self.fields.iter().all(|f| !f.masked)
    }

    /// Rewrites one DataRow body. Returns `Ok(false)` and writes nothing when
    /// no value changes (forward the original frame); otherwise appends a
    /// whole new DataRow frame to `out`. A row whose column count differs
    /// from the description (a protocol anomaly) has every value nulled.
    pub fn rewrite(
        &self,
        data_row_body: &[u8],
        detectors: &Detectors,
        out: &mut Vec<u8>,
    ) -> Result<bool, CodecError> {
        let row = DataRow::parse(data_row_body)?;
        if row.len() != self.fields.len() {
            let mut b = DataRowBuilder::new(out);
            for _ in 0..row.len() {
                b.null();
            }
            b.finish()?;
            return Ok(true);
        }
        let scan = !detectors.is_empty();
        let first = row.values().zip(&self.fields).position(|(v, f)| match v {
            None => false,
            Some(v) => f.masked || (scan && f.scannable() && detectors.has_match(v)),
        });
        let Some(first) = first else {
            return Ok(false);
        };
        let mut b = DataRowBuilder::new(out);
        for (i, (v, f)) in row.values().zip(&self.fields).enumerate() {
            let Some(v) = v else {
                b.null();
                continue;
            };
            if i < first {
                b.value(v);
            } else if f.masked {
                masked_value(&mut b, v, f, detectors);
            } else if scan && f.scannable() && (i == first || detectors.has_match(v)) {
                b.value_with(|buf| detectors.mask_matches(v, buf));
            } else {
                b.value(v);
            }
        }
        b.finish()?;
        Ok(true)
    }
}

fn masked_value(b: &mut DataRowBuilder<'_, Vec<u8>>, v: &[u8], f: &FieldPlan, d: &Detectors) {
    if f.format == 0 {
        b.value_with(|buf| d.mask_into(v, buf));
        return;
    }
    match f.type_oid {
        INT2 => b.value(&[0; 2]),
        INT4 => b.value(&[0; 4]),
        INT8 => b.value(&[0; 8]),
        // json / jsonb binary: (version 1 and) a JSON string holding the mask.
        JSON | JSONB => b.value_with(|buf| {
            let text = if f.type_oid == JSONB {
                buf.push(1);
                v.get(1..).unwrap_or_default()
            } else {
                v
            };
            let mut mask = Vec::new();
            d.mask_into(text, &mut mask);
            json_string(&mask, buf);
        }),
        t if TEXT_LIKE.contains(&t) => b.value_with(|buf| d.mask_into(v, buf)),
        _ => b.null(),
    }
}

/// Appends `s` as a JSON string literal.
fn json_string(s: &[u8], out: &mut Vec<u8>) {
    out.push(b'"');
    for &c in s {
        match c {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', c]),
            0..=0x1f => out.extend_from_slice(format!("\\u{c:04x}").as_bytes()),
            _ => out.push(c),
        }
    }
    out.push(b'"');
}

/// Nanoseconds per [`MaskPlan::rewrite`] of `row` (a DataRow body),
/// averaged over `iterations` (benchmark hook; measures, asserts nothing).
pub fn bench_rewrite_ns(
    plan: &MaskPlan,
    row: &[u8],
    detectors: &Detectors,
    iterations: u32,
) -> f64 {
    let iterations = iterations.max(1);
    let mut out = Vec::with_capacity(row.len() + 64);
    let start = std::time::Instant::now();
    for _ in 0..iterations {
        out.clear();
        let _ = std::hint::black_box(plan.rewrite(std::hint::black_box(row), detectors, &mut out));
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}
