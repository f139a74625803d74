//! Masking COPY TO STDOUT rows (CopyData bodies) in text and CSV format.
//! PostgreSQL sends one CopyData message per row for COPY TO, so a body is
//! one row ending in `\n`. There is no RowDescription: [`copy_out_spec`]
//! reads the relation and column list from the COPY statement, the caller
//! resolves the relation's columns ([`super::catalog::RELATION_OID_SQL`],
//! [`super::catalog::COLUMNS_SQL`]) and builds a [`CopyMask`]. For
//! `COPY (query) TO STDOUT` the columns are unknown: only detectors apply
//! (or the caller refuses it). Binary COPY is not handled.

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::Detectors;

/// How COPY encodes rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated (default), backslash escapes, NULL as `\N`.
    Text {
        delimiter: u8,
        null: Vec<u8>,
    },
    /// Comma-separated, fields quoted with `quote` (doubled or `escape`d
    /// inside), NULL as an empty unquoted field.
    Csv {
        delimiter: u8,
        quote: u8,
        escape: u8,
        null: Vec<u8>,
    },
    Binary,
}

/// What a `COPY ... TO STDOUT` statement sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOutSpec {
    /// The table as written (`[table]` or `[schema, table]`, case-folded);
    /// `None` for `COPY (query)`.
    pub relation: Option<Vec<String>>,
    /// The listed columns (case-folded); empty: all, in attnum order.
    pub columns: Vec<String>,
    pub format: CopyFormat,
    /// The first row is a header (not masked).
    pub header: bool,
}

/// Reads a `COPY ... TO STDOUT` statement; `None` for anything else.
pub fn copy_out_spec(sql: &str) -> Option<CopyOutSpec> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    let [Statement::Copy {
        source,
        to: true,
        target: CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    }] = statements.as_slice()
    else {
        return None;
    };
    let fold = |id: &sqlparser::ast::Ident| {
        if id.quote_style.is_some() {
            id.value.clone()
        } else {
            id.value.to_lowercase()
        }
    };
    let (relation, columns) = match source {
        CopySource::Table {
            table_name,
            columns,
        } => (
            Some(
                table_name
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident())
                    .map(fold)
                    .collect(),
            ),
            columns.iter().map(fold).collect(),
        ),
        CopySource::Query(_) => (None, Vec::new()),
    };
    let (mut csv, mut binary, mut header) = (false, false, false);
    let (mut delimiter, mut null, mut quote, mut escape) = (None, None, None, None);
    for o in options {
        match o {
            CopyOption::Format(f) => {
                csv = f.value.eq_ignore_ascii_case("csv");
                binary = f.value.eq_ignore_ascii_case("binary");
            }
            CopyOption::Delimiter(c) => delimiter = Some(*c),
            CopyOption::Null(s) => null = Some(s.clone()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = Some(*c),
            CopyOption::Escape(c) => escape = Some(*c),
            _ => {}
        }
    }
    for o in legacy_options {
        match o {
            CopyLegacyOption::Binary => binary = true,
            CopyLegacyOption::Delimiter(c) => delimiter = Some(*c),
            CopyLegacyOption::Null(s) => null = Some(s.clone()),
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Csv(list) => {
                csv = true;
                for c in list {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = Some(*q),
                        CopyLegacyCsvOption::Escape(e) => escape = Some(*e),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let byte = |c: Option<char>, default: u8| -> Option<u8> {
        match c {
            None => Some(default),
            Some(c) if c.is_ascii() => Some(c as u8),
            Some(_) => None,
        }
    };
    let format = if binary {
        CopyFormat::Binary
    } else if csv {
        let quote = byte(quote, b'"')?;
        CopyFormat::Csv {
            delimiter: byte(delimiter, b',')?,
            quote,
            escape: byte(escape, quote)?,
            null: null.unwrap_or_default().into_bytes(),
        }
    } else {
        CopyFormat::Text {
            delimiter: byte(delimiter, b'\t')?,
            null: null.unwrap_or_else(|| "\\N".into()).into_bytes(),
        }
    };
    Some(CopyOutSpec {
        relation,
        columns,
        format,
        header,
    })
}

/// Why a COPY row could not be rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CopyMaskError {
    #[error("binary COPY output cannot be masked")]
    Binary,
    #[error("COPY row is not terminated by a newline")]
    Unterminated,
    #[error("COPY row has an unterminated quoted field")]
    BadQuote,
}

/// Masks the rows of one COPY TO STDOUT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyMask {
    pub format: CopyFormat,
    /// Per output column: masked or not. Columns past the end are masked
    /// (the row has more columns than the caller resolved: fail closed).
    pub masked: Vec<bool>,
}

impl CopyMask {
    /// Rewrites one row (a CopyData body). `Ok(false)`: unchanged, nothing
    /// written; `Ok(true)`: the new body is appended to `out` (the caller
    /// frames it as CopyData).
    pub fn rewrite_row(
        &self,
        row: &[u8],
        d: &Detectors,
        out: &mut Vec<u8>,
    ) -> Result<bool, CopyMaskError> {
        let body = row.strip_suffix(b"\n").ok_or(CopyMaskError::Unterminated)?;
        let mut fields = Vec::new();
        match &self.format {
            CopyFormat::Binary => return Err(CopyMaskError::Binary),
            CopyFormat::Text { delimiter, .. } => split_text(body, *delimiter, &mut fields),
            CopyFormat::Csv {
                delimiter,
                quote,
                escape,
                ..
            } => split_csv(body, *delimiter, *quote, *escape, &mut fields)?,
        }
        let masked = |i: usize| self.masked.get(i).copied().unwrap_or(true);
        let null = match &self.format {
            CopyFormat::Text { null, .. } | CopyFormat::Csv { null, .. } => null.as_slice(),
            CopyFormat::Binary => &[],
        };
        let is_null = |raw: &[u8]| match &self.format {
            // CSV NULL is the null string unquoted.
            CopyFormat::Csv { quote, .. } => raw == null && raw.first() != Some(quote),
            _ => raw == null,
        };
        let changes = fields.iter().enumerate().any(|(i, &(s, e))| {
            let raw = &body[s..e];
            !is_null(raw) && (masked(i) || (!d.is_empty() && d.has_match(raw)))
        });
        if !changes {
            return Ok(false);
        }
        for (i, &(s, e)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(match &self.format {
                    CopyFormat::Text { delimiter, .. } | CopyFormat::Csv { delimiter, .. } => {
                        *delimiter
                    }
                    CopyFormat::Binary => b'\t',
                });
            }
            let raw = &body[s..e];
            if is_null(raw) || !(masked(i) || (!d.is_empty() && d.has_match(raw))) {
                out.extend_from_slice(raw);
                continue;
            }
            let value = self.decode(raw)?;
            let mut new = Vec::with_capacity(value.len());
            if masked(i) {
                d.mask_into(&value, &mut new);
            } else {
                d.mask_matches(&value, &mut new);
            }
            self.encode(&new, out);
        }
        out.push(b'\n');
        Ok(true)
    }

    fn decode(&self, raw: &[u8]) -> Result<Vec<u8>, CopyMaskError> {
        let mut v = Vec::with_capacity(raw.len());
        match &self.format {
            CopyFormat::Text { .. } => {
                let mut i = 0;
                while i < raw.len() {
                    if raw[i] == b'\\' && i + 1 < raw.len() {
                        i += 1;
                        v.push(match raw[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'f' => 12,
                            b'v' => 11,
                            other => other,
                        });
                    } else {
                        v.push(raw[i]);
                    }
                    i += 1;
                }
            }
            CopyFormat::Csv { quote, escape, .. } => {
                let Some(inner) = raw
                    .strip_prefix(&[*quote])
                    .and_then(|r| r.strip_suffix(&[*quote]))
                else {
                    return Ok(raw.to_vec());
                };
                let mut i = 0;
                while i < inner.len() {
                    if inner[i] == *escape && i + 1 < inner.len() {
                        i += 1;
                    }
                    v.push(inner[i]);
                    i += 1;
                }
            }
            CopyFormat::Binary => return Err(CopyMaskError::Binary),
        }
        Ok(v)
    }

    fn encode(&self, value: &[u8], out: &mut Vec<u8>) {
        match &self.format {
            CopyFormat::Text { delimiter, .. } => {
                for &b in value {
                    match b {
                        b'\\' => out.extend_from_slice(b"\\\\"),
                        b'\n' => out.extend_from_slice(b"\\n"),
                        b'\r' => out.extend_from_slice(b"\\r"),
                        b'\t' => out.extend_from_slice(b"\\t"),
                        b if b == *delimiter => out.extend_from_slice(&[b'\\', b]),
                        b => out.push(b),
                    }
                }
            }
            CopyFormat::Csv { quote, escape, .. } => {
                out.push(*quote);
                for &b in value {
                    if b == *quote || b == *escape {
                        out.push(*escape);
                    }
                    out.push(b);
                }
                out.push(*quote);
            }
            CopyFormat::Binary => {}
        }
    }
}

fn split_text(body: &[u8], delimiter: u8, out: &mut Vec<(usize, usize)>) {
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i] == b'\\' {
            i += 2;
            continue;
        }
        if body[i] == delimiter {
            out.push((start, i));
            start = i + 1;
        }
        i += 1;
    }
    out.push((start, body.len()));
}

fn split_csv(
    body: &[u8],
    delimiter: u8,
    quote: u8,
    escape: u8,
    out: &mut Vec<(usize, usize)>,
) -> Result<(), CopyMaskError> {
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    while i < body.len() {
        let b = body[i];
        if quoted {
            if b == escape && escape != quote && body.get(i + 1).is_some() {
                i += 2;
                continue;
            }
            if b == quote {
                if escape == quote && body.get(i + 1) == Some(&quote) {
                    i += 2;
                    continue;
                }
                quoted = false;
            }
        } else if b == quote {
            quoted = true;
        } else if b == delimiter {
            out.push((start, i));
            start = i + 1;
        }
        i += 1;
    }
    if quoted {
        return Err(CopyMaskError::BadQuote);
    }
    out.push((start, body.len()));
    Ok(())
}
