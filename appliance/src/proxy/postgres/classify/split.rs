//! Tokens to statements: tokenize once, undo the tokenizer's inline COPY
//! data, split at top-level `;`, bound the nesting, parse each statement, and
//! fall back to fixed-effect leading keywords when the parser cannot read one.

use std::collections::BTreeSet;

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use super::{ClassifyOptions, StatementClass, MAX_EXPRESSION_RUN, MAX_PAREN_DEPTH};

/// One statement of the text.
pub(super) enum Piece {
    Parsed(Vec<Statement>),
    /// Not parsed, but its leading keywords fix its effect.
    Fallback(BTreeSet<StatementClass>),
    Unparsed(String),
}

/// Splits and parses `sql`; `Err` when the text cannot even be tokenized.
pub(super) fn pieces(sql: &str, opts: &ClassifyOptions) -> Result<Vec<Piece>, String> {
    let tokens = tokenize(sql)?;
    if !opts.standard_conforming_strings && has_backslash_string(&tokens) {
        return Err(
            "a plain string holds a backslash while standard_conforming_strings is off".into(),
        );
    }
    let dialect = PostgreSqlDialect {};
    let mut out = Vec::new();
    for piece in split(tokens) {
        let scan = Prescan::of(&piece);
        if let Some(reason) = scan.too_deep {
            out.push(Piece::Unparsed(reason));
            continue;
        }
        match Parser::new(&dialect)
            .with_tokens_with_locations(piece)
            .parse_statements()
        {
            Ok(statements) => out.push(Piece::Parsed(statements)),
            Err(e) => {
                let words = scan.words.each_ref().map(LeadWord::as_str);
                match fallback(&words, scan.program) {
                    Some(classes) => out.push(Piece::Fallback(classes)),
                    None => out.push(Piece::Unparsed(e.to_string())),
                }
            }
        }
    }
    Ok(out)
}

/// Tokenizes, replacing each `COPY ... FROM STDIN;` inline-data token by the
/// tokens of that text: on the wire it is SQL, not data.
fn tokenize(sql: &str) -> Result<Vec<TokenWithSpan>, String> {
    let dialect = PostgreSqlDialect {};
    let run = |text: &str| {
        Tokenizer::new(&dialect, text)
            .tokenize_with_location()
            .map_err(|e| e.to_string())
    };
    let first = run(sql)?;
    if !first
        .iter()
        .any(|t| matches!(t.token, Token::CopyData { .. }))
    {
        return Ok(first);
    }
    let mut out = Vec::with_capacity(first.len());
    // A stack of token streams: inline data found in one is tokenized and
    // read before the rest of it.
    let mut work = vec![first.into_iter()];
    while let Some(iter) = work.last_mut() {
        let Some(t) = iter.next() else {
            work.pop();
            continue;
        };
        match t.token {
            Token::CopyData { data, terminated } => {
                if terminated {
                    // `\.` is not SQL: the server rejects the whole text.
                    return Err("backslash-dot line after COPY FROM STDIN in the query text".into());
                }
                out.push(TokenWithSpan::wrap(Token::SemiColon));
                work.push(run(&data)?.into_iter());
            }
            _ => out.push(t),
        }
    }
    Ok(out)
}

fn has_backslash_string(tokens: &[TokenWithSpan]) -> bool {
    tokens.iter().any(|t| match &t.token {
        Token::SingleQuotedString(s)
        | Token::NationalStringLiteral(s)
        | Token::UnicodeStringLiteral(s)
        | Token::SingleQuotedByteStringLiteral(s)
        | Token::HexStringLiteral(s) => s.contains('\\'),
        _ => false,
    })
}

/// Splits at `;` outside parentheses; drops statements with no tokens but
/// whitespace and comments. Each token moves at most once.
fn split(mut tokens: Vec<TokenWithSpan>) -> Vec<Vec<TokenWithSpan>> {
    let mut cuts = Vec::new();
    let mut depth = 0usize;
    for (i, t) in tokens.iter().enumerate() {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            Token::SemiColon if depth == 0 => cuts.push(i),
            _ => {}
        }
    }
    let blank = |p: &[TokenWithSpan]| p.iter().all(|t| matches!(t.token, Token::Whitespace(_)));
    let mut out = Vec::with_capacity(cuts.len() + 1);
    for &cut in cuts.iter().rev() {
        let tail = tokens.split_off(cut + 1);
        tokens.truncate(cut);
        if !blank(&tail) {
            out.push(tail);
        }
    }
    if !blank(&tokens) {
        out.push(tokens);
    }
    out.reverse();
    out
}

/// One pass over a statement's tokens before parsing.
struct Prescan {
    /// Why the statement is too deep to parse safely.
    too_deep: Option<String>,
    /// The unquoted word PROGRAM appears (COPY fallback).
    program: bool,
    /// The first four tokens as upper-case words (empty: not a plain word).
    words: [LeadWord; 4],
}

impl Prescan {
    /// Bounds what the parser, the tree walk and the drop of the tree
    /// recurse into: runs of operators at one parenthesis level (reset by
    /// commas), and the nesting depth.
    fn of(tokens: &[TokenWithSpan]) -> Prescan {
        let mut scan = Prescan {
            too_deep: None,
            program: false,
            words: Default::default(),
        };
        let mut runs: Vec<usize> = vec![0];
        let mut lead = 0;
        for t in tokens {
            if lead < scan.words.len() && !matches!(t.token, Token::Whitespace(_)) {
                scan.words[lead] = LeadWord::of(&t.token);
                lead += 1;
            }
            match &t.token {
                Token::LParen | Token::LBracket | Token::LBrace => {
                    runs.push(0);
                    if runs.len() > MAX_PAREN_DEPTH {
                        scan.too_deep =
                            Some(format!("nested deeper than {MAX_PAREN_DEPTH} parentheses"));
                        return scan;
                    }
                }
                Token::RParen | Token::RBracket | Token::RBrace if runs.len() > 1 => {
                    runs.pop();
                }
                Token::Comma => {
                    if let Some(r) = runs.last_mut() {
                        *r = 0;
                    }
                }
                Token::Word(w) if w.keyword == Keyword::PROGRAM && w.quote_style.is_none() => {
                    scan.program = true;
                }
                other if is_operator(other) => {
                    if let Some(r) = runs.last_mut() {
                        *r += 1;
                        if *r > MAX_EXPRESSION_RUN {
                            scan.too_deep = Some(format!(
                                "expression with more than {MAX_EXPRESSION_RUN} chained operators"
                            ));
                            return scan;
                        }
                    }
                }
                _ => {}
            }
        }
        scan
    }
}

/// A short unquoted ASCII word, upper-cased, kept without allocating.
#[derive(Default)]
struct LeadWord {
    buf: [u8; 24],
    len: usize,
}

impl LeadWord {
    fn of(t: &Token) -> LeadWord {
        let mut w = LeadWord::default();
        if let Token::Word(word) = t {
            let v = word.value.as_bytes();
            if word.quote_style.is_none() && v.len() <= w.buf.len() && v.is_ascii() {
                w.buf[..v.len()].copy_from_slice(v);
                w.buf[..v.len()].make_ascii_uppercase();
                w.len = v.len();
            }
        }
        w
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

/// Tokens that may join two operands (and so deepen the expression tree).
fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::OVERLAPS
                | Keyword::ESCAPE
                | Keyword::OPERATOR
                | Keyword::NOTNULL
                | Keyword::XOR
        ),
        Token::Whitespace(_)
        | Token::Comma
        | Token::SemiColon
        | Token::LParen
        | Token::RParen
        | Token::Number(..)
        | Token::Char(_)
        | Token::EOF => false,
        // Every other symbol: arithmetic, comparison, `::`, `->`, `||`,
        // custom operators, subscripts, `.`.
        other => !is_literal(other),
    }
}

fn is_literal(t: &Token) -> bool {
    matches!(
        t,
        Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::SingleQuotedByteStringLiteral(_)
            | Token::Placeholder(_)
    )
}

/// Statements the parser does not read whose effect the leading keywords
/// fix, whatever follows. Everything else stays `unparsed`.
fn fallback(words: &[&str], program: bool) -> Option<BTreeSet<StatementClass>> {
    use StatementClass::*;
    let w = |i: usize| words.get(i).copied().unwrap_or("");
    // CREATE [OR REPLACE] [CONSTRAINT | EVENT] <what>
    let create_what = {
        let mut i = 1;
        if w(1) == "OR" && w(2) == "REPLACE" {
            i = 3;
        }
        if matches!(w(i), "CONSTRAINT" | "EVENT") {
            i += 1;
        }
        w(i)
    };
    let classes: &[StatementClass] = match (w(0), w(1)) {
        ("DO", _) => &[Procedural],
        ("COPY", _) if program => &[CopyProgram],
        ("ALTER", "SYSTEM") => &[System],
        ("CHECKPOINT", _) | ("LOAD", _) => &[System],
        ("REINDEX", _) | ("CLUSTER", _) | ("VACUUM", _) | ("ANALYZE", _) => &[Ddl],
        ("IMPORT", "FOREIGN") => &[Ddl],
        ("SECURITY", "LABEL") | ("REASSIGN", "OWNED") => &[Privilege],
        ("GRANT", _) | ("REVOKE", _) => &[Privilege],
        ("DROP", "OWNED") => &[Drop, Ddl, Privilege],
        ("DROP", "ROLE" | "USER" | "GROUP") => &[Drop, Privilege],
        ("DROP", _) => &[Drop, Ddl],
        ("CREATE" | "ALTER", "ROLE" | "USER" | "GROUP") => &[Privilege],
        ("ALTER", "DATABASE" | "FUNCTION" | "PROCEDURE" | "ROUTINE" | "AGGREGATE") => &[Ddl],
        ("CREATE", _) if matches!(create_what, "FUNCTION" | "PROCEDURE") => &[Procedural, Ddl],
        ("CREATE", _) if create_what == "TRIGGER" => &[Ddl],
        ("PREPARE", "TRANSACTION") | ("COMMIT" | "ROLLBACK", "PREPARED") => &[Transaction],
        ("BEGIN" | "START" | "COMMIT" | "END" | "ROLLBACK" | "ABORT", _)
        | ("SAVEPOINT" | "RELEASE", _) => &[Transaction],
        ("SET" | "RESET", "ROLE" | "SESSION" | "LOCAL")
            if words.iter().any(|x| matches!(*x, "ROLE" | "AUTHORIZATION")) =>
        {
            &[RoleSwitch]
        }
        // SET values are literals (no function calls); a quoted or unknown
        // parameter name counts as a possible role change.
        ("SET" | "RESET", p) if p.is_empty() || p == "ROLE" || p == "SESSION_AUTHORIZATION" => {
            &[RoleSwitch]
        }
        ("SET" | "RESET", _) | ("SHOW", _) | ("DISCARD", _) => &[SessionConfig],
        ("LISTEN" | "UNLISTEN", _) => &[SessionConfig],
        ("TABLE", _) => &[Read],
        _ => return None,
    };
    Some(classes.iter().copied().collect())
}
