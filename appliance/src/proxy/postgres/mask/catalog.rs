//! Catalog lookups for masking: the SQL the caller runs (with its own
//! connection, once per relation, cached per policy version) and pure
//! functions turning the rows into resolver entries `(attnum, ColumnName)`.
//!
//! Views. A RowDescription names a view column by the view's OID, not the
//! base table's, so view columns are resolved here:
//!
//! 1. a view column whose own name matches a rule is masked;
//! 2. a view column that is a plain reference to another column (the view
//!    rule's target entry has `resorigtbl`/`resorigcol`, exactly what a
//!    RowDescription would say for the base column) takes that column's
//!    name, through the caller's `origin` lookup;
//! 3. any other view column (an expression, a UNION, an unparsable rule, or
//!    a reference `origin` could not name) is masked when the view reads any
//!    masked column at all, through [`VIEW_DEPENDENCIES_SQL`], which follows
//!    views over views down to base tables. Conservative: `SELECT id,
//!    lower(email) AS e` masks `e`, and any other computed column, but not
//!    `id`.

use super::{ColumnName, MaskRules};

/// The columns of one relation. `$1`: its OID (as text or oid). Rows:
/// `attnum, nspname, relname, attname, relkind`.
pub const COLUMNS_SQL: &str = "SELECT a.attnum, n.nspname, c.relname, a.attname, c.relkind::text \
FROM pg_catalog.pg_attribute a \
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
WHERE a.attrelid = $1::pg_catalog.oid AND a.attnum > 0 AND NOT a.attisdropped \
ORDER BY a.attnum";

/// The query tree of a view or materialized view (relkind `v`, `m`).
/// `$1`: the view's OID. One row: `ev_action` as text.
pub const VIEW_RULE_SQL: &str = "SELECT r.ev_action::text FROM pg_catalog.pg_rewrite r \
WHERE r.ev_class = $1::pg_catalog.oid AND r.rulename = '_RETURN'";

/// Every column a view reads, following views over views (16 levels at
/// most). `$1`: the view's OID. Rows: `nspname, relname, attname`.
pub const VIEW_DEPENDENCIES_SQL: &str = "WITH RECURSIVE deps(relid, attnum, depth) AS ( \
SELECT d.refobjid, d.refobjsubid, 1 \
FROM pg_catalog.pg_rewrite r \
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
WHERE r.ev_class = $1::pg_catalog.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
AND d.refobjsubid > 0 AND d.refobjid <> r.ev_class \
UNION \
SELECT d.refobjid, d.refobjsubid, deps.depth + 1 \
FROM deps \
JOIN pg_catalog.pg_rewrite r ON r.ev_class = deps.relid AND r.rulename = '_RETURN' \
JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND d.objid = r.oid \
WHERE d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0 \
AND d.refobjid <> r.ev_class AND deps.depth < 16 \
) \
SELECT DISTINCT n.nspname, c.relname, a.attname \
FROM deps \
JOIN pg_catalog.pg_class c ON c.oid = deps.relid \
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
JOIN pg_catalog.pg_attribute a ON a.attrelid = deps.relid AND a.attnum = deps.attnum";

/// A relation name as the server resolves it (search_path), for COPY.
/// `$1`: the name as written (`public.customers`). One row: the OID.
pub const RELATION_OID_SQL: &str = "SELECT $1::pg_catalog.regclass::pg_catalog.oid";

/// Longest `ev_action` text parsed (bigger views are judged conservatively).
pub const MAX_VIEW_RULE: usize = 4 << 20;

/// One relation's columns, from [`COLUMNS_SQL`] rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// `pg_class.relkind`: `r` table, `v` view, `m` materialized view,
    /// `p` partitioned table, `f` foreign table...
    pub kind: char,
    pub columns: Vec<(i16, ColumnName)>,
}

impl Relation {
    /// From [`COLUMNS_SQL`] rows (text values, in column order).
    pub fn from_rows<'a, I>(rows: I) -> Result<Relation, String>
    where
        I: IntoIterator<Item = [&'a str; 5]>,
    {
        let mut kind = 'r';
        let mut columns = Vec::new();
        for [attnum, schema, table, column, relkind] in rows {
            let attnum: i16 = attnum
                .parse()
                .map_err(|_| format!("bad attnum {attnum:?} in catalog row"))?;
            kind = relkind.chars().next().unwrap_or('r');
            columns.push((attnum, ColumnName::new(schema, table, column)));
        }
        Ok(Relation { kind, columns })
    }

    /// A view or materialized view: resolve with [`Relation::view_entries`].
    pub fn is_view(&self) -> bool {
        matches!(self.kind, 'v' | 'm')
    }

    /// Resolver entries of a table: each column as itself.
    pub fn table_entries(&self) -> Vec<(i16, ColumnName)> {
        self.columns.clone()
    }

    /// Resolver entries of a view (see the module doc): each view column
    /// mapped to the name that decides whether it is masked. `ev_action`:
    /// the [`VIEW_RULE_SQL`] value; `dependencies`: [`VIEW_DEPENDENCIES_SQL`]
    /// rows; `origin(oid, attnum)`: the caller's resolver for the columns the
    /// view references (may answer `None` for what it has not resolved).
    pub fn view_entries(
        &self,
        ev_action: Option<&str>,
        dependencies: &[ColumnName],
        rules: &MaskRules,
        origin: &dyn Fn(u32, i16) -> Option<ColumnName>,
    ) -> Vec<(i16, ColumnName)> {
        let targets = ev_action.and_then(parse_view_targets).unwrap_or_default();
        let masked_dep = dependencies.iter().find(|d| rules.matches(d));
        self.columns
            .iter()
            .map(|(attnum, own)| {
                if rules.matches(own) {
                    return (*attnum, own.clone());
                }
                let target = targets.iter().find(|t| t.resno == *attnum);
                let origin_name = match target {
                    Some(t) if t.origin_table != 0 => origin(t.origin_table, t.origin_column),
                    _ => None,
                };
                let name = match (origin_name, masked_dep) {
                    (Some(o), _) => o,
                    (None, Some(dep)) => dep.clone(),
                    (None, None) => own.clone(),
                };
                (*attnum, name)
            })
            .collect()
    }
}

/// One output column of a view rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewTarget {
    /// The view column's attnum.
    pub resno: i16,
    /// The referenced column's table OID, 0 for an expression.
    pub origin_table: u32,
    pub origin_column: i16,
}

/// The top-level target list of a view's `_RETURN` rule (`pg_node_tree`
/// text), without junk entries. `None` when the text is not understood.
pub fn parse_view_targets(ev_action: &str) -> Option<Vec<ViewTarget>> {
    if ev_action.len() > MAX_VIEW_RULE {
        return None;
    }
    let mut tokens = NodeTokens {
        s: ev_action.as_bytes(),
        at: 0,
    };
    let mut depth = 0usize;
    // Depth just inside the outer `{QUERY`.
    let mut query_depth = None;
    let mut list_depth = None;
    let mut out = Vec::new();
    let mut entry: Option<(Option<i16>, u32, i16, bool)> = None;
    let mut field: Option<&[u8]> = None;
    while let Some(tok) = tokens.next() {
        match tok {
            b"{" | b"(" => {
                depth += 1;
                if tok == b"{"
                    && query_depth.is_some()
                    && list_depth.is_some_and(|l| depth == l + 1)
                {
                    entry = Some((None, 0, 0, false));
                }
            }
            b"}" | b")" => {
                if let (Some(l), Some((Some(resno), tbl, col, junk))) = (list_depth, entry) {
                    if tok == b"}" && depth == l + 1 {
                        if !junk {
                            out.push(ViewTarget {
                                resno,
                                origin_table: tbl,
                                origin_column: col,
                            });
                        }
                        entry = None;
                    }
                }
                if list_depth == Some(depth) {
                    return Some(out);
                }
                depth = depth.checked_sub(1)?;
            }
            _ if query_depth.is_none() => {
                if tok == b"QUERY" {
                    query_depth = Some(depth);
                }
            }
            b":targetList" if Some(depth) == query_depth && list_depth.is_none() => {
                match tokens.next()? {
                    b"(" => {
                        depth += 1;
                        list_depth = Some(depth);
                    }
                    b"<>" => return Some(out),
                    _ => return None,
                }
            }
            _ => {
                let in_entry = list_depth.is_some_and(|l| depth == l + 1);
                if !in_entry {
                    continue;
                }
                if let Some(name) = field.take() {
                    let text = std::str::from_utf8(tok).ok()?;
                    if let Some(e) = entry.as_mut() {
                        match name {
                            b":resno" => e.0 = Some(text.parse().ok()?),
                            b":resorigtbl" => e.1 = text.parse().ok()?,
                            b":resorigcol" => e.2 = text.parse().ok()?,
                            b":resjunk" => e.3 = text == "true",
                            _ => {}
                        }
                    }
                } else if matches!(
                    tok,
                    b":resno" | b":resorigtbl" | b":resorigcol" | b":resjunk"
                ) {
                    field = Some(tok);
                }
            }
        }
    }
    None
}

/// Tokens of `pg_node_tree` text: braces and parentheses alone, other
/// tokens split at whitespace; a backslash escapes the next byte.
struct NodeTokens<'a> {
    s: &'a [u8],
    at: usize,
}

impl<'a> NodeTokens<'a> {
    fn next(&mut self) -> Option<&'a [u8]> {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
        let start = self.at;
        match self.s.get(self.at)? {
            b'{' | b'}' | b'(' | b')' => {
                self.at += 1;
                return self.s.get(start..self.at);
            }
            _ => {}
        }
        while let Some(&b) = self.s.get(self.at) {
            match b {
                b'\\' => self.at += 2,
                b'{' | b'}' | b'(' | b')' => break,
                b if b.is_ascii_whitespace() => break,
                _ => self.at += 1,
            }
        }
        self.at = self.at.min(self.s.len());
        self.s.get(start..self.at)
    }
}
