//! Which result each backend frame belongs to, so masking knows the shape of
//! every DataRow and CopyData before it reaches the client. Pure state: the
//! relay feeds it the frames it forwards upstream, in order, and asks it about
//! each frame coming back.
//!
//! The hard case is the extended protocol: Execute sends rows without a
//! RowDescription, and clients often never describe the portal (pgbench
//! `-M prepared`, tokio-postgres, JDBC after the first run). So after every
//! Bind the relay sends a `Describe` of that portal itself; the server answers
//! it right after BindComplete with the portal's RowDescription (with the
//! result formats Bind asked for) or NoData, and that answer is consumed here
//! and never reaches the client. After an error the server skips to the next
//! Sync, and so does this queue.
//!
//! Anything this model cannot attribute (a DataRow with no described result,
//! CopyData outside a COPY it knows) is refused: the caller ends the session
//! rather than forward a value it could not check.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::copy::{copy_out_spec, CopyMask, CopyOutSpec};
use super::MaskPlan;
use crate::proxy::postgres::codec::{backend, frontend, CodecError};

/// A step sent upstream whose answer is still due, in order.
#[derive(Debug)]
enum Expect {
    /// A simple Query (or FunctionCall, or the gateway's own refusal query):
    /// ends at ReadyForQuery; its results describe themselves.
    Query {
        copy: Option<CopyOutSpec>,
    },
    /// A Bind, followed by the gateway's Describe of the same portal.
    Bind {
        portal: String,
        copy: Option<CopyOutSpec>,
    },
    Execute {
        portal: String,
    },
    Sync,
}

/// What a result of one portal looks like.
#[derive(Debug, Default)]
struct Portal {
    /// `None`: the portal returns no rows (NoData).
    plan: Option<Arc<MaskPlan>>,
    copy: Option<CopyOutSpec>,
}

/// Which described result a RowDescription being planned belongs to.
#[derive(Debug)]
enum PlanTarget {
    Portal(String),
    Current,
}

/// What the relay does with one backend frame.
#[derive(Debug)]
pub enum Action {
    /// Pass it on unchanged.
    Forward,
    /// Drop it: the answer to the gateway's own Describe.
    Swallow,
    /// A RowDescription: build its plan and hand it to [`Shapes::planned`];
    /// forward the frame unless `swallow`.
    Plan { swallow: bool },
    /// A DataRow of the result this plan describes.
    Row(Arc<MaskPlan>),
    /// CopyOutResponse: build the COPY's mask (from the statement, when it
    /// was recognized) and hand it to [`Shapes::copy_ready`]; forward.
    CopyStart(Option<CopyOutSpec>),
    /// A COPY TO STDOUT row.
    CopyRow(Arc<CopyMask>),
    /// Nothing can tell how to mask this frame: end the session.
    Refuse(String),
}

/// The result-shape state of one session (both directions feed it).
#[derive(Debug, Default)]
pub struct Shapes {
    queue: VecDeque<Expect>,
    /// Named statements that are `COPY ... TO STDOUT`.
    copies: HashMap<String, CopyOutSpec>,
    portals: HashMap<String, Portal>,
    /// BindComplete seen: the next RowDescription / NoData answers our Describe.
    describing: Option<(String, Option<CopyOutSpec>)>,
    planning: Option<PlanTarget>,
    /// The simple query's current result.
    current: Option<Arc<MaskPlan>>,
    copy: Option<Arc<CopyMask>>,
    /// The COPY's first row is its header: passed as it is.
    copy_header: bool,
}

/// A Describe-portal frame for `portal` (what the gateway sends after Bind).
pub fn describe_portal(portal: &[u8], out: &mut Vec<u8>) {
    out.push(b'D');
    let len = 4 + 1 + portal.len() + 1;
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(b'P');
    out.extend_from_slice(portal);
    out.push(0);
}

/// `COPY ... TO STDOUT` statements, recognized without parsing every text.
fn copy_spec(sql: &str) -> Option<CopyOutSpec> {
    let b = sql.as_bytes();
    let mentions_copy = b.windows(4).any(|w| w.eq_ignore_ascii_case(b"copy"));
    if mentions_copy {
        copy_out_spec(sql)
    } else {
        None
    }
}

impl Shapes {
    /// A frame the relay forwards upstream. Returns true after a Bind: the
    /// relay must send [`describe_portal`] for it right behind.
    pub fn on_frontend(&mut self, tag: u8, body: &[u8]) -> Result<bool, CodecError> {
        match tag {
            frontend::QUERY_TAG => {
                let q = frontend::Query::parse(body)?;
                let copy = q.sql.to_str().ok().and_then(copy_spec);
                self.queue.push_back(Expect::Query { copy });
            }
            frontend::FUNCTION_CALL_TAG => self.queue.push_back(Expect::Query { copy: None }),
            frontend::PARSE_TAG => {
                let p = frontend::Parse::parse(body)?;
                let name = p.name.to_string();
                match p.query.to_str().ok().and_then(copy_spec) {
                    Some(spec) => {
                        self.copies.insert(name, spec);
                    }
                    None => {
                        self.copies.remove(&name);
                    }
                }
            }
            frontend::BIND_TAG => {
                let b = frontend::Bind::parse(body)?;
                let copy = self.copies.get(&*b.statement.to_string()).cloned();
                self.queue.push_back(Expect::Bind {
                    portal: b.portal.to_string(),
                    copy,
                });
                return Ok(true);
            }
            frontend::EXECUTE_TAG => {
                let e = frontend::Execute::parse(body)?;
                self.queue.push_back(Expect::Execute {
                    portal: e.portal.to_string(),
                });
            }
            frontend::SYNC_TAG => self.queue.push_back(Expect::Sync),
            frontend::CLOSE_TAG => {
                let c = frontend::Close::parse(body)?;
                let name = c.name.to_string();
                match c.target {
                    frontend::Target::Statement => {
                        self.copies.remove(&name);
                    }
                    frontend::Target::Portal => {
                        self.portals.remove(&name);
                    }
                }
            }
            _ => {}
        }
        Ok(false)
    }

    /// A frame from the server: what to do with it.
    pub fn on_backend(&mut self, tag: u8, body: &[u8]) -> Result<Action, CodecError> {
        Ok(match tag {
            backend::BIND_COMPLETE_TAG => match self.queue.pop_front() {
                Some(Expect::Bind { portal, copy }) => {
                    self.describing = Some((portal, copy));
                    Action::Forward
                }
                _ => Action::Refuse("BindComplete without a Bind".into()),
            },
            backend::ROW_DESCRIPTION_TAG => {
                if let Some((portal, copy)) = self.describing.take() {
                    self.portals
                        .insert(portal.clone(), Portal { plan: None, copy });
                    self.planning = Some(PlanTarget::Portal(portal));
                    Action::Plan { swallow: true }
                } else if matches!(self.queue.front(), Some(Expect::Query { .. })) {
                    self.planning = Some(PlanTarget::Current);
                    Action::Plan { swallow: false }
                } else {
                    // The client's own Describe: rows come later, planned
                    // from our Describe of the portal.
                    Action::Forward
                }
            }
            backend::NO_DATA_TAG => match self.describing.take() {
                Some((portal, copy)) => {
                    self.portals.insert(portal, Portal { plan: None, copy });
                    Action::Swallow
                }
                None => Action::Forward,
            },
            backend::DATA_ROW_TAG => {
                let plan = match self.queue.front() {
                    Some(Expect::Query { .. }) => self.current.clone(),
                    Some(Expect::Execute { portal }) => {
                        self.portals.get(portal).and_then(|p| p.plan.clone())
                    }
                    _ => None,
                };
                match plan {
                    Some(p) => Action::Row(p),
                    None => Action::Refuse("a result row arrived for no described result".into()),
                }
            }
            backend::COMMAND_COMPLETE_TAG
            | backend::EMPTY_QUERY_RESPONSE_TAG
            | backend::PORTAL_SUSPENDED_TAG => {
                self.copy = None;
                match self.queue.front() {
                    Some(Expect::Execute { .. }) => {
                        self.queue.pop_front();
                    }
                    Some(Expect::Query { .. }) => self.current = None,
                    _ => {}
                }
                Action::Forward
            }
            backend::ERROR_RESPONSE_TAG => {
                self.copy = None;
                self.current = None;
                self.describing = None;
                if !matches!(self.queue.front(), Some(Expect::Query { .. })) {
                    // The server skips to the next Sync.
                    while matches!(
                        self.queue.front(),
                        Some(Expect::Bind { .. } | Expect::Execute { .. })
                    ) {
                        self.queue.pop_front();
                    }
                }
                Action::Forward
            }
            backend::READY_FOR_QUERY_TAG => {
                let r = backend::ReadyForQuery::parse(body)?;
                while let Some(e) = self.queue.pop_front() {
                    if matches!(e, Expect::Sync | Expect::Query { .. }) {
                        break;
                    }
                }
                self.current = None;
                self.copy = None;
                self.describing = None;
                if r.status == backend::TransactionStatus::Idle {
                    // Portals live no longer than their transaction.
                    self.portals.clear();
                }
                Action::Forward
            }
            backend::COPY_OUT_RESPONSE_TAG => {
                let spec = match self.queue.front() {
                    Some(Expect::Query { copy }) => copy.clone(),
                    Some(Expect::Execute { portal }) => {
                        self.portals.get(portal).and_then(|p| p.copy.clone())
                    }
                    _ => None,
                };
                Action::CopyStart(spec)
            }
            backend::COPY_DATA_TAG => match &self.copy {
                Some(_) if std::mem::take(&mut self.copy_header) => Action::Forward,
                Some(m) => Action::CopyRow(m.clone()),
                None => Action::Refuse("COPY data arrived outside a COPY TO STDOUT".into()),
            },
            backend::COPY_DONE_TAG => {
                self.copy = None;
                self.copy_header = false;
                Action::Forward
            }
            backend::COPY_BOTH_RESPONSE_TAG => {
                Action::Refuse("COPY BOTH (replication) cannot be masked".into())
            }
            _ => Action::Forward,
        })
    }

    /// The plan for the RowDescription [`Action::Plan`] was about.
    pub fn planned(&mut self, plan: Arc<MaskPlan>) {
        match self.planning.take() {
            Some(PlanTarget::Portal(name)) => {
                if let Some(p) = self.portals.get_mut(&name) {
                    p.plan = Some(plan);
                }
            }
            Some(PlanTarget::Current) => self.current = Some(plan),
            None => {}
        }
    }

    /// The mask for the COPY [`Action::CopyStart`] announced; `header`: its
    /// first row holds column names (CSV `HEADER`), not data.
    pub fn copy_ready(&mut self, mask: Arc<CopyMask>, header: bool) {
        self.copy = Some(mask);
        self.copy_header = header;
    }
}
