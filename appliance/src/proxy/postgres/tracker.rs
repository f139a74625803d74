//! Follows the statements of one session as frames pass in both directions,
//! and says when each one finished and how: the basis of the per-statement
//! audit. Pure state, no I/O; the relay feeds it frames and turns its
//! events into audit records.
//!
//! - Simple query: one event per Query message (which may hold several
//!   statements), finished by ReadyForQuery, with every command tag.
//! - Extended query: one `prepare` event per named Parse (the text, once),
//!   and one `execute` event per Execute, finished by CommandComplete,
//!   EmptyQueryResponse, PortalSuspended or ErrorResponse; after an error the
//!   server skips to the next Sync, and so does the tracker.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::codec::{backend, frontend, CodecError};

/// Longest statement text kept in an audit record; longer text is cut
/// (the record says by how much).
pub const MAX_AUDIT_TEXT: usize = 64 * 1024;

/// What kind of protocol step an event describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind {
    Simple,
    Prepare,
    Execute,
    FunctionCall,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Simple => "simple",
            StepKind::Prepare => "prepare",
            StepKind::Execute => "execute",
            StepKind::FunctionCall => "function_call",
        }
    }
}

/// One finished statement (or prepare), ready to be audited.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementEvent {
    pub kind: StepKind,
    pub text: Option<Arc<str>>,
    /// Prepared statement name (extended protocol; empty = unnamed).
    pub statement: Option<String>,
    pub params: Option<usize>,
    pub duration: Duration,
    /// Command tags in order (`SELECT 3`, `INSERT 0 1`...).
    pub tags: Vec<String>,
    /// Sum of the rows the tags report.
    pub rows: Option<u64>,
    pub sqlstate: Option<String>,
    pub error: Option<String>,
    /// `ok`, `error`, `skipped` (after an earlier error), `suspended`,
    /// `unfinished`, `denied`.
    pub outcome: &'static str,
    /// Guardrail details (class, rule, decision) when a control acted.
    pub control: Option<serde_json::Value>,
}

#[derive(Debug)]
enum Pending {
    Simple {
        text: Arc<str>,
        started: Instant,
        tags: Vec<String>,
        rows: Option<u64>,
        sqlstate: Option<String>,
        error: Option<String>,
    },
    Function {
        started: Instant,
        sqlstate: Option<String>,
        error: Option<String>,
    },
    Execute {
        statement: String,
        text: Option<Arc<str>>,
        params: usize,
        started: Instant,
    },
    Sync,
    /// A statement the gateway sent in place of a refused one: its answer is
    /// consumed like a simple query's, and it is not audited as a statement.
    Silent,
}

/// The tracker of one session.
#[derive(Debug, Default)]
pub struct Tracker {
    statements: HashMap<String, Arc<str>>,
    /// portal -> (statement name, parameter count)
    portals: HashMap<String, (String, usize)>,
    queue: VecDeque<Pending>,
}

/// Cuts `text` for the audit record at a character boundary.
pub fn audit_text(text: &str) -> Arc<str> {
    if text.len() <= MAX_AUDIT_TEXT {
        return Arc::from(text);
    }
    let mut cut = MAX_AUDIT_TEXT;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Arc::from(format!(
        "{}… [{} more bytes]",
        &text[..cut],
        text.len() - cut
    ))
}

impl Tracker {
    /// A frame from the client. Returns an event for a named Parse.
    pub fn on_frontend(
        &mut self,
        tag: u8,
        body: &[u8],
        now: Instant,
    ) -> Result<Option<StatementEvent>, CodecError> {
        match tag {
            frontend::QUERY_TAG => {
                let q = frontend::Query::parse(body)?;
                self.queue.push_back(Pending::Simple {
                    text: audit_text(&q.sql.to_string()),
                    started: now,
                    tags: Vec::new(),
                    rows: None,
                    sqlstate: None,
                    error: None,
                });
            }
            frontend::PARSE_TAG => {
                let p = frontend::Parse::parse(body)?;
                let name = p.name.to_string();
                let text = audit_text(&p.query.to_string());
                self.statements.insert(name.clone(), text.clone());
                if !name.is_empty() {
                    return Ok(Some(StatementEvent {
                        kind: StepKind::Prepare,
                        text: Some(text),
                        statement: Some(name),
                        params: None,
                        duration: Duration::ZERO,
                        tags: Vec::new(),
                        rows: None,
                        sqlstate: None,
                        error: None,
                        outcome: "ok",
                        control: None,
                    }));
                }
            }
            frontend::BIND_TAG => {
                let b = frontend::Bind::parse(body)?;
                self.portals.insert(
                    b.portal.to_string(),
                    (b.statement.to_string(), b.param_count()),
                );
            }
            frontend::EXECUTE_TAG => {
                let e = frontend::Execute::parse(body)?;
                let (statement, params) = self
                    .portals
                    .get(&e.portal.to_string())
                    .cloned()
                    .unwrap_or_default();
                // The text goes in every execute of the unnamed statement;
                // a named one was audited once at its Parse.
                let text = if statement.is_empty() {
                    self.statements.get(&statement).cloned()
                } else {
                    None
                };
                self.queue.push_back(Pending::Execute {
                    statement,
                    text,
                    params,
                    started: now,
                });
            }
            frontend::CLOSE_TAG => {
                let c = frontend::Close::parse(body)?;
                let name = c.name.to_string();
                match c.target {
                    frontend::Target::Statement => {
                        self.statements.remove(&name);
                    }
                    frontend::Target::Portal => {
                        self.portals.remove(&name);
                    }
                }
            }
            frontend::SYNC_TAG => self.queue.push_back(Pending::Sync),
            frontend::FUNCTION_CALL_TAG => self.queue.push_back(Pending::Function {
                started: now,
                sqlstate: None,
                error: None,
            }),
            _ => {}
        }
        Ok(None)
    }

    /// A frame from the server; finished statements are appended to `out`.
    pub fn on_backend(
        &mut self,
        tag: u8,
        body: &[u8],
        now: Instant,
        out: &mut Vec<StatementEvent>,
    ) -> Result<(), CodecError> {
        match tag {
            backend::COMMAND_COMPLETE_TAG
            | backend::EMPTY_QUERY_RESPONSE_TAG
            | backend::PORTAL_SUSPENDED_TAG => {
                let tag_text = if tag == backend::COMMAND_COMPLETE_TAG {
                    let c = backend::CommandComplete::parse(body)?;
                    Some((c.tag.to_string(), c.rows()))
                } else {
                    None
                };
                match self.queue.front_mut() {
                    Some(Pending::Simple { tags, rows, .. }) => {
                        if let Some((t, r)) = tag_text {
                            tags.push(t);
                            if let Some(r) = r {
                                *rows = Some(rows.unwrap_or(0) + r);
                            }
                        }
                    }
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute {
                            statement,
                            text,
                            params,
                            started,
                        }) = self.queue.pop_front()
                        {
                            let (tags, rows) = match tag_text {
                                Some((t, r)) => (vec![t], r),
                                None => (Vec::new(), None),
                            };
                            let outcome = if tag == backend::PORTAL_SUSPENDED_TAG {
                                "suspended"
                            } else {
                                "ok"
                            };
                            out.push(execute_event(
                                statement,
                                text,
                                params,
                                now - started,
                                tags,
                                rows,
                                None,
                                outcome,
                            ));
                        }
                    }
                    _ => {}
                }
            }
            backend::ERROR_RESPONSE_TAG => {
                let e = backend::ErrorNotice::parse(body)?;
                let state = e.sqlstate().map(str::to_string);
                let msg = e.message().map(|m| m.to_string());
                match self.queue.front_mut() {
                    Some(Pending::Simple {
                        sqlstate, error, ..
                    })
                    | Some(Pending::Function {
                        sqlstate, error, ..
                    }) => {
                        *sqlstate = state;
                        *error = msg;
                    }
                    Some(Pending::Execute { .. }) => {
                        if let Some(Pending::Execute {
                            statement,
                            text,
                            params,
                            started,
                        }) = self.queue.pop_front()
                        {
                            out.push(execute_event(
                                statement,
                                text,
                                params,
                                now - started,
                                Vec::new(),
                                None,
                                Some((state, msg)),
                                "error",
                            ));
                        }
                        // The server ignores everything up to the next Sync.
                        while let Some(Pending::Execute { .. }) = self.queue.front() {
                            if let Some(Pending::Execute {
                                statement,
                                text,
                                params,
                                ..
                            }) = self.queue.pop_front()
                            {
                                out.push(execute_event(
                                    statement,
                                    text,
                                    params,
                                    Duration::ZERO,
                                    Vec::new(),
                                    None,
                                    None,
                                    "skipped",
                                ));
                            }
                        }
                    }
                    _ => {}
                }
            }
            backend::READY_FOR_QUERY_TAG => {
                // Finishes one Simple/Function step, or everything up to a Sync.
                while let Some(p) = self.queue.pop_front() {
                    let ends_step = matches!(
                        p,
                        Pending::Sync
                            | Pending::Simple { .. }
                            | Pending::Function { .. }
                            | Pending::Silent
                    );
                    if let Some(ev) = p.into_event(now, None) {
                        out.push(ev);
                    }
                    if ends_step {
                        break;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A statement the gateway sent in place of a refused one.
    pub fn push_silent(&mut self) {
        self.queue.push_back(Pending::Silent);
    }

    /// The session ended: everything still pending, as `unfinished`.
    pub fn drain(&mut self, now: Instant, reason: &str, out: &mut Vec<StatementEvent>) {
        while let Some(p) = self.queue.pop_front() {
            if let Some(ev) = p.into_event(now, Some(reason)) {
                out.push(ev);
            }
        }
    }
}

impl Pending {
    /// The finished event; `cut_short` marks it unfinished with that reason.
    fn into_event(self, now: Instant, cut_short: Option<&str>) -> Option<StatementEvent> {
        let unfinished = cut_short.map(|r| (None, Some(r.to_string())));
        let (kind, text, tags, rows, started, error) = match self {
            Pending::Sync | Pending::Silent => return None,
            Pending::Execute {
                statement,
                text,
                params,
                started,
            } => {
                let outcome = "unfinished";
                let err = unfinished.or(Some((None, None)));
                return Some(execute_event(
                    statement,
                    text,
                    params,
                    now - started,
                    Vec::new(),
                    None,
                    err,
                    outcome,
                ));
            }
            Pending::Simple {
                text,
                started,
                tags,
                rows,
                sqlstate,
                error,
            } => (
                StepKind::Simple,
                Some(text),
                tags,
                rows,
                started,
                (sqlstate, error),
            ),
            Pending::Function {
                started,
                sqlstate,
                error,
            } => (
                StepKind::FunctionCall,
                None,
                Vec::new(),
                None,
                started,
                (sqlstate, error),
            ),
        };
        let (outcome, (sqlstate, error)) = match unfinished {
            Some(e) => ("unfinished", e),
            None if error.0.is_some() => ("error", error),
            None => ("ok", error),
        };
        Some(StatementEvent {
            kind,
            text,
            statement: None,
            params: None,
            duration: now - started,
            tags,
            rows,
            sqlstate,
            error,
            outcome,
            control: None,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn execute_event(
    statement: String,
    text: Option<Arc<str>>,
    params: usize,
    duration: Duration,
    tags: Vec<String>,
    rows: Option<u64>,
    error: Option<(Option<String>, Option<String>)>,
    outcome: &'static str,
) -> StatementEvent {
    let (sqlstate, error) = error.unwrap_or((None, None));
    StatementEvent {
        kind: StepKind::Execute,
        text,
        statement: Some(statement),
        params: Some(params),
        duration,
        tags,
        rows,
        sqlstate,
        error,
        outcome,
        control: None,
    }
}

#[cfg(test)]
mod tests;
