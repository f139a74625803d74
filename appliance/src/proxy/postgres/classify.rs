//! Statement classification for the PostgreSQL guardrails: SQL text in,
//! the set of effect classes out. Pure: no I/O, no session state, no policy.
//!
//! How a text is classified:
//!
//! 1. The whole text is tokenized once with sqlparser's PostgreSQL dialect
//!    (comments, `E''` strings, dollar quoting and quoted identifiers are
//!    tokens, so keywords inside them never count). The tokenizer's psql
//!    convenience of treating the text after `COPY ... FROM STDIN;` as inline
//!    data is undone: on the wire that text is more SQL, and it is classified.
//! 2. The tokens are split at top-level `;` into statements; each is parsed
//!    on its own, so one statement the parser cannot read does not hide the
//!    others. A statement that does not parse falls back to a short list of
//!    leading keywords whose effect is fixed whatever follows (`DO`,
//!    `ALTER SYSTEM`, `REINDEX`, `GRANT`, `DROP`, ...; see `split.rs`);
//!    anything else is [`StatementClass::Unparsed`] (fail closed).
//! 3. Each parsed statement is classified by effect, not first word, walking
//!    its whole tree: writes inside CTEs, `EXPLAIN ANALYZE` of a write, `SELECT
//!    INTO`, row locks (`FOR UPDATE`), and calls to a small deny-list of
//!    functions with side effects (see `walk.rs`).
//!
//! Decisions on the classes belong to `guard`; the classes of `EXECUTE`d
//! prepared statements come from the session ([`PreparedStatements`]).
//!
//! What the classifier cannot see: the bodies of functions the statement
//! calls (`SELECT my_func()` is a read unless `my_func` is on the side-effect
//! list), SQL built at run time inside `DO` blocks and functions (those are
//! `procedural`), and rules or triggers fired by a write. Texts larger than
//! [`MAX_CLASSIFY_BYTES`], expressions nested beyond [`MAX_EXPRESSION_RUN`]
//! operators, and (with `standard_conforming_strings = off`) plain strings
//! holding a backslash are `unparsed` rather than risk a wrong answer.

mod exposure;
mod split;
mod walk;

#[cfg(test)]
mod corpus;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;

pub use exposure::Exposure;

/// Largest text classified; a longer one is [`StatementClass::Unparsed`].
/// Bounds parse time and the syntax tree's memory (several times the text).
pub const MAX_CLASSIFY_BYTES: usize = 1 << 20;

/// Longest run of operators at one parenthesis level (between commas) that
/// is parsed. Operator chains become nested trees that the parser, the tree
/// walk and the tree's drop all recurse into, so an unbounded chain could
/// overflow the stack; with this bound a classification needs about 1 MiB of
/// stack in a debug build and about 100 KiB in release (tokio's worker
/// threads have 2 MiB). Every operator counts, so `a = 1 OR b = 2 OR ...`
/// reaches it at 500 terms.
pub const MAX_EXPRESSION_RUN: usize = 1_000;

/// Deepest parenthesis nesting parsed (the parser itself stops at 50).
pub const MAX_PAREN_DEPTH: usize = 64;

/// The effect classes a policy can deny or hold. Names (snake case) are the
/// ones used in `[connection.postgres.guardrails]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatementClass {
    /// SELECT, VALUES, TABLE, SHOW-free reads, COPY TO, FETCH, plain EXPLAIN.
    Read,
    /// INSERT, UPDATE, DELETE, MERGE, COPY FROM, LOCK, NOTIFY, row locks,
    /// side-effect functions such as `setval`.
    Write,
    /// DELETE with no WHERE clause (also `write`).
    DeleteWithoutWhere,
    /// UPDATE with no WHERE clause (also `write`).
    UpdateWithoutWhere,
    /// CREATE / ALTER / DROP / COMMENT, CREATE TABLE AS, SELECT INTO, index
    /// and maintenance commands (VACUUM, ANALYZE, REINDEX, CLUSTER, REFRESH).
    Ddl,
    /// Any DROP (also `ddl`, or `privilege` for roles).
    Drop,
    /// TRUNCATE (also `write`).
    Truncate,
    /// GRANT, REVOKE, CREATE / ALTER / DROP ROLE or USER, ALTER DEFAULT
    /// PRIVILEGES, row-level security policies, REASSIGN OWNED.
    Privilege,
    /// DO, CREATE FUNCTION / PROCEDURE, CALL.
    Procedural,
    /// COPY ... TO / FROM PROGRAM.
    CopyProgram,
    /// SET ROLE, SET SESSION AUTHORIZATION, RESET ROLE, `set_config('role')`.
    RoleSwitch,
    /// ALTER SYSTEM, LOAD, CHECKPOINT, CREATE EXTENSION, server-side file
    /// access (COPY to or from a file), backend and server control functions.
    System,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, SET TRANSACTION, PREPARE TRANSACTION.
    Transaction,
    /// SET, RESET, SHOW, DISCARD, LISTEN, PREPARE, DEALLOCATE.
    SessionConfig,
    /// Text the classifier cannot read: denied unless the policy allows it.
    Unparsed,
}

impl StatementClass {
    /// Every class, in order.
    pub const ALL: [StatementClass; 15] = [
        StatementClass::Read,
        StatementClass::Write,
        StatementClass::DeleteWithoutWhere,
        StatementClass::UpdateWithoutWhere,
        StatementClass::Ddl,
        StatementClass::Drop,
        StatementClass::Truncate,
        StatementClass::Privilege,
        StatementClass::Procedural,
        StatementClass::CopyProgram,
        StatementClass::RoleSwitch,
        StatementClass::System,
        StatementClass::Transaction,
        StatementClass::SessionConfig,
        StatementClass::Unparsed,
    ];

    /// The policy name, e.g. `delete_without_where`.
    pub const fn as_str(self) -> &'static str {
        match self {
            StatementClass::Read => "read",
            StatementClass::Write => "write",
            StatementClass::DeleteWithoutWhere => "delete_without_where",
            StatementClass::UpdateWithoutWhere => "update_without_where",
            StatementClass::Ddl => "ddl",
            StatementClass::Drop => "drop",
            StatementClass::Truncate => "truncate",
            StatementClass::Privilege => "privilege",
            StatementClass::Procedural => "procedural",
            StatementClass::CopyProgram => "copy_program",
            StatementClass::RoleSwitch => "role_switch",
            StatementClass::System => "system",
            StatementClass::Transaction => "transaction",
            StatementClass::SessionConfig => "session_config",
            StatementClass::Unparsed => "unparsed",
        }
    }
}

impl fmt::Display for StatementClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown class name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownClass(pub String);

impl fmt::Display for UnknownClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = StatementClass::ALL.iter().map(|c| c.as_str()).collect();
        write!(
            f,
            "unknown statement class {:?} (known: {})",
            self.0,
            names.join(", ")
        )
    }
}

impl std::error::Error for UnknownClass {}

impl FromStr for StatementClass {
    type Err = UnknownClass;
    fn from_str(s: &str) -> Result<Self, UnknownClass> {
        StatementClass::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownClass(s.to_string()))
    }
}

/// What one text (a simple Query, or a Parse) does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Classification {
    /// Union of the classes of every statement. Empty for an empty text.
    /// Does not include the classes of `EXECUTE`d statements: see
    /// [`PreparedStatements::effective`].
    pub classes: BTreeSet<StatementClass>,
    /// Number of statements (empty ones between `;;` not counted).
    pub statements: usize,
    /// `PREPARE name AS stmt`: the name (case-folded like PostgreSQL does)
    /// and the classes of `stmt`. The PREPARE itself is `session_config`.
    pub prepares: Vec<(String, BTreeSet<StatementClass>)>,
    /// `EXECUTE name`: prepared statement names (case-folded), also under
    /// `EXPLAIN ANALYZE` and `CREATE TABLE AS`.
    pub executes: Vec<String>,
    /// `DEALLOCATE name` (`None`: `DEALLOCATE ALL`).
    pub deallocates: Vec<Option<String>>,
    /// Columns the statements return transformed (inside functions, casts,
    /// operators) or whole rows: input to `guardrails.deny_functions_on_masked`.
    pub exposures: Vec<Exposure>,
    /// Why (the first) statement is `unparsed`, for the audit record.
    pub unparsed_reason: Option<String>,
}

impl Classification {
    fn unparsed(reason: impl Into<String>) -> Self {
        let mut c = Classification::default();
        c.mark_unparsed(reason);
        c.statements = 1;
        c
    }

    fn mark_unparsed(&mut self, reason: impl Into<String>) {
        self.classes.insert(StatementClass::Unparsed);
        if self.unparsed_reason.is_none() {
            self.unparsed_reason = Some(reason.into());
        }
    }
}

/// How the session reads SQL text; the relay keeps these from the server's
/// ParameterStatus messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyOptions {
    /// The server's `standard_conforming_strings` (reported by ParameterStatus;
    /// `on` since PostgreSQL 9.1). When off, backslashes escape inside plain
    /// `'...'` strings, which moves string boundaries: texts with such a
    /// string are `unparsed`.
    pub standard_conforming_strings: bool,
    /// Texts longer than this are `unparsed`.
    pub max_bytes: usize,
}

impl Default for ClassifyOptions {
    fn default() -> Self {
        ClassifyOptions {
            standard_conforming_strings: true,
            max_bytes: MAX_CLASSIFY_BYTES,
        }
    }
}

/// Classifies `sql` with the default options.
pub fn classify(sql: &str) -> Classification {
    classify_with(sql, &ClassifyOptions::default())
}

/// Classifies raw wire text: text that is not UTF-8 (a non-UTF-8
/// `client_encoding`) is `unparsed`.
pub fn classify_bytes(sql: &[u8], opts: &ClassifyOptions) -> Classification {
    match std::str::from_utf8(sql) {
        Ok(s) => classify_with(s, opts),
        Err(_) => Classification::unparsed("statement text is not UTF-8"),
    }
}

/// Classifies `sql`: every statement of it, by effect.
pub fn classify_with(sql: &str, opts: &ClassifyOptions) -> Classification {
    if sql.len() > opts.max_bytes {
        return Classification::unparsed(format!(
            "statement text of {} bytes is larger than the {} bytes classified",
            sql.len(),
            opts.max_bytes
        ));
    }
    let pieces = match split::pieces(sql, opts) {
        Ok(p) => p,
        Err(reason) => return Classification::unparsed(reason),
    };
    let mut out = Classification::default();
    for piece in pieces {
        out.statements += 1;
        match piece {
            split::Piece::Unparsed(reason) => out.mark_unparsed(reason),
            split::Piece::Fallback(classes) => out.classes.extend(classes),
            split::Piece::Parsed(statements) => {
                for s in &statements {
                    walk::classify_statement(s, &mut out);
                }
            }
        }
    }
    out
}

/// The prepared statements of one session (SQL `PREPARE` and protocol
/// Parse share one namespace) and their classes, so `EXECUTE` carries them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreparedStatements {
    map: HashMap<String, BTreeSet<StatementClass>>,
}

/// Most prepared statements remembered per session; beyond it new names are
/// not recorded, so executing them is `unparsed` (fail closed).
pub const MAX_PREPARED: usize = 10_000;

impl PreparedStatements {
    /// The classes a text really has: its own, plus those of every statement
    /// it `EXECUTE`s (prepared earlier, or by a `PREPARE` in the same text).
    /// An unknown name is `unparsed`: it was prepared where the gateway could
    /// not see (inside a function), or never.
    pub fn effective(&self, c: &Classification) -> BTreeSet<StatementClass> {
        let mut classes = c.classes.clone();
        for name in &c.executes {
            let mut found = false;
            for (n, inner) in &c.prepares {
                if n == name {
                    classes.extend(inner.iter().copied());
                    found = true;
                }
            }
            if let Some(inner) = self.map.get(name) {
                classes.extend(inner.iter().copied());
                found = true;
            }
            if !found {
                classes.insert(StatementClass::Unparsed);
            }
        }
        classes
    }

    /// Records the PREPAREs and DEALLOCATEs of a text that ran.
    pub fn record(&mut self, c: &Classification) {
        for d in &c.deallocates {
            match d {
                None => self.map.clear(),
                Some(name) => {
                    self.map.remove(name);
                }
            }
        }
        for (name, classes) in &c.prepares {
            self.insert(name, classes.clone());
        }
    }

    /// Records a protocol-level Parse of a named statement (exact name, no
    /// case folding) with the classification of its text; for the classes,
    /// pass [`PreparedStatements::effective`] of it.
    pub fn record_parse(&mut self, name: &str, classes: BTreeSet<StatementClass>) {
        if !name.is_empty() {
            self.insert(name, classes);
        }
    }

    /// A protocol Close of a named statement.
    pub fn close(&mut self, name: &str) {
        self.map.remove(name);
    }

    /// The classes of a prepared statement, if known.
    pub fn get(&self, name: &str) -> Option<&BTreeSet<StatementClass>> {
        self.map.get(name)
    }

    fn insert(&mut self, name: &str, classes: BTreeSet<StatementClass>) {
        if self.map.len() < MAX_PREPARED || self.map.contains_key(name) {
            self.map.insert(name.to_string(), classes);
        }
    }
}

/// Recently classified texts of one session, keyed by exact text and
/// options: classification is a pure function of both, so a repeated text
/// (`BEGIN`, `COMMIT`, health checks, an application's fixed statements)
/// costs a hash lookup instead of a parse. Bounded; oldest entries leave
/// first. Texts longer than [`ClassifyCache::MAX_TEXT`] are not kept.
#[derive(Debug, Clone, Default)]
pub struct ClassifyCache {
    map: HashMap<(bool, Box<str>), std::sync::Arc<Classification>>,
    order: std::collections::VecDeque<(bool, Box<str>)>,
}

impl ClassifyCache {
    /// Entries kept.
    pub const CAPACITY: usize = 256;
    /// Longest text kept, in bytes.
    pub const MAX_TEXT: usize = 4096;

    /// The classification of `sql`, from the cache or computed (and kept).
    pub fn classify(
        &mut self,
        sql: &str,
        opts: &ClassifyOptions,
    ) -> std::sync::Arc<Classification> {
        let scs = opts.standard_conforming_strings;
        let key = (scs, Box::<str>::from(sql));
        if let Some(c) = self.map.get(&key) {
            return c.clone();
        }
        let c = std::sync::Arc::new(classify_with(sql, opts));
        if sql.len() <= Self::MAX_TEXT && opts.max_bytes >= Self::MAX_TEXT {
            if self.order.len() >= Self::CAPACITY {
                if let Some(old) = self.order.pop_front() {
                    self.map.remove(&old);
                }
            }
            self.order.push_back(key.clone());
            self.map.insert(key, c.clone());
        }
        c
    }
}

/// Nanoseconds per classification of `sql`, averaged over `iterations`
/// (a benchmark hook for bench/RESULTS.md; measures, asserts nothing).
pub fn bench_classify_ns(sql: &str, iterations: u32) -> f64 {
    let iterations = iterations.max(1);
    let start = std::time::Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(classify(std::hint::black_box(sql)));
    }
    start.elapsed().as_nanos() as f64 / f64::from(iterations)
}
