//! Which columns are masked: `schema.table.column`, `table.column` (any
//! schema), `*.column` (any table), each part a glob with `*` (any run) and
//! `?` (one character). Matching ignores ASCII case, so a rule catches a
//! column whichever way it was quoted when created (erring toward masking).

use std::fmt;

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN: usize = 256;

/// A column as the catalog names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnName {
    pub schema: String,
    pub table: String,
    pub column: String,
}

impl ColumnName {
    pub fn new(schema: &str, table: &str, column: &str) -> Self {
        ColumnName {
            schema: schema.to_string(),
            table: table.to_string(),
            column: column.to_string(),
        }
    }
}

impl fmt::Display for ColumnName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

/// One name glob: `*` any run of characters, `?` exactly one, ASCII case
/// ignored. Matching is the classic two-pointer walk with one backtrack
/// point: linear in practice, never exponential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameGlob {
    pattern: Vec<char>,
}

impl NameGlob {
    pub fn new(pattern: &str) -> Self {
        NameGlob {
            pattern: pattern.chars().map(|c| c.to_ascii_lowercase()).collect(),
        }
    }

    /// True when the glob is `*` (matches every name).
    pub fn is_any(&self) -> bool {
        !self.pattern.is_empty() && self.pattern.iter().all(|&c| c == '*')
    }

    pub fn matches(&self, name: &str) -> bool {
        let p = &self.pattern;
        let (mut pi, mut ni) = (0usize, 0usize);
        // Backtrack point: pattern index after the last `*`, and where in
        // the name that star's match currently ends.
        let mut star: Option<(usize, usize)> = None;
        while let Some(c) = name[ni..].chars().next() {
            match p.get(pi) {
                Some('*') => {
                    pi += 1;
                    star = Some((pi, ni));
                    continue;
                }
                Some(&q) if q == '?' || q == c.to_ascii_lowercase() => {
                    pi += 1;
                    ni += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, sn)) => {
                    let sn = sn + name[sn..].chars().next().map_or(1, char::len_utf8);
                    star = Some((sp, sn));
                    pi = sp;
                    ni = sn;
                }
                None => return false,
            }
        }
        p[pi..].iter().all(|&c| c == '*')
    }
}

impl fmt::Display for NameGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s: String = self.pattern.iter().collect();
        f.write_str(&s)
    }
}

/// One `columns` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnPattern {
    text: String,
    /// `None`: any schema.
    schema: Option<NameGlob>,
    table: NameGlob,
    column: NameGlob,
}

impl ColumnPattern {
    /// Parses `schema.table.column`, `table.column` or `*.column`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_PATTERN {
            return Err(format!("column pattern is longer than {MAX_PATTERN} bytes"));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("column pattern {text:?} has an empty part"));
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\0')
        {
            return Err(format!(
                "column pattern {text:?} must not contain spaces, quotes or NUL"
            ));
        }
        let (schema, table, column) = match parts.as_slice() {
            [s, t, c] => (Some(NameGlob::new(s)), NameGlob::new(t), NameGlob::new(c)),
            [t, c] => (None, NameGlob::new(t), NameGlob::new(c)),
            _ => {
                return Err(format!(
                    "column pattern {text:?} must be schema.table.column, table.column or *.column"
                ))
            }
        };
        Ok(ColumnPattern {
            text: text.to_string(),
            schema,
            table,
            column,
        })
    }

    /// The pattern as written in the policy.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, c: &ColumnName) -> bool {
        self.column.matches(&c.column)
            && self.table.matches(&c.table)
            && self.schema.as_ref().is_none_or(|s| s.matches(&c.schema))
    }

    /// Matching with unknown parts (`None`): an unknown part could be
    /// anything, so it matches.
    pub fn matches_partial(
        &self,
        schema: Option<&str>,
        table: Option<&str>,
        column: Option<&str>,
    ) -> bool {
        column.is_none_or(|c| self.column.matches(c))
            && table.is_none_or(|t| self.table.matches(t))
            && match (&self.schema, schema) {
                (Some(g), Some(s)) => g.matches(s),
                _ => true,
            }
    }

    /// Matches a result column label with no table (computed columns): the
    /// column part alone decides.
    pub fn matches_label(&self, label: &str) -> bool {
        self.column.matches(label)
    }
}

/// The `columns` rules of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaskRules {
    patterns: Vec<ColumnPattern>,
}

impl MaskRules {
    pub fn new(patterns: Vec<ColumnPattern>) -> Self {
        MaskRules { patterns }
    }

    /// Parses each entry; the error names the bad one.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| ColumnPattern::parse(e.as_ref()))
            .collect::<Result<Vec<_>, _>>()
            .map(MaskRules::new)
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn patterns(&self) -> &[ColumnPattern] {
        &self.patterns
    }

    /// True when some rule masks this catalog column.
    pub fn matches(&self, c: &ColumnName) -> bool {
        self.first_match(c).is_some()
    }

    /// The first rule that masks `c`.
    pub fn first_match(&self, c: &ColumnName) -> Option<&ColumnPattern> {
        self.patterns.iter().find(|p| p.matches(c))
    }

    /// True when a computed result column labelled `label` is masked.
    pub fn matches_label(&self, label: &str) -> bool {
        self.patterns.iter().any(|p| p.matches_label(label))
    }

    /// The first rule that could match with unknown parts (`None`).
    pub fn first_partial(
        &self,
        schema: Option<&str>,
        table: Option<&str>,
        column: Option<&str>,
    ) -> Option<&ColumnPattern> {
        self.patterns
            .iter()
            .find(|p| p.matches_partial(schema, table, column))
    }
}
