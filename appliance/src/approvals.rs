//! Human approval of one held action: a SQL statement (PostgreSQL gateway), an
//! HTTP request (HTTP gateway) or a command (SSH gateway). A gateway files an
//! [`ApprovalRequest`], tells its client the id, and awaits the outcome; an
//! approver decides through the API (`tunnel-lite approvals ...`) or the local
//! CLI (`appliance approvals ... --as USER --groups G`).
//!
//! This module owns the `approvals` table, the waiters of this process and the
//! approval audit records. It does not decide *what* is held (the gateways and
//! their policy do), never blocks a session other than the one waiting, and
//! never runs SQLite writes on a tokio worker (they go to the blocking pool).
//!
//! # For gateway authors
//!
//! ```ignore
//! use appliance::approvals::{ApprovalOutcome, ApprovalRequest};
//! if shared.approvals.reusable(&who.user, &conn.name, &fingerprint) {
//!     // approved earlier within the policy's reuse window: run it
//! } else {
//!     let (id, pending) = shared.approvals.request(ApprovalRequest { .. }).await?;
//!     notice(format!("held for approval {id}; approvers: {group}; approve with: {}",
//!         appliance::approvals::approve_hint(&id)));
//!     let outcome = tokio::select! {
//!         o = pending.outcome() => o,
//!         _ = client_cancelled => {
//!             // Withdrawn, unless a decision won the race (then it is NotPending).
//!             let _ = shared.approvals.withdraw(&id).await;
//!             ApprovalOutcome::Withdrawn
//!         }
//!     };
//!     match outcome { ApprovalOutcome::Approved { .. } => run(), other => refuse(other.describe()) }
//! }
//! ```
//!
//! A decision reaches the waiting session at once when it is made in this
//! process (the API), and within one poll interval (the revocation poll
//! interval, 200 ms by default) when another process wrote it (the local CLI):
//! [`Approvals::run_poller`] watches `PRAGMA data_version` like the revocation
//! poller does. The outcome future resolves `TimedOut` at the deadline and marks
//! the row; dropping it does not withdraw the request (the poller still times it
//! out). Every state change is one conditional `UPDATE`, so concurrent deciders
//! cannot both win.

pub mod api;
pub mod cli;
mod model;
mod poller;
mod record;
mod store;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

use crate::audit::{now_ms, AuditHandle};
use crate::identity::Identity;
pub use model::{
    approve_hint, check_decidable, may_decide, normalize_id, ApprovalError, ApprovalOutcome,
    ApprovalRequest, ApprovalState, ApprovalView, DEFAULT_TIMEOUT, ID_LEN, MAX_NAME, MAX_REASON,
    MAX_TEXT, MAX_WAIT,
};
use model::{duration_ms, new_id, same_user, shown, validate};
use record::Via;
use store::{Store, Transition};

/// The approvals of this appliance. Cheap to clone (shared inside).
#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Inner>,
}

struct Inner {
    /// Writes, on the blocking pool.
    writer: Mutex<Store>,
    /// Short reads on the caller's thread (WAL: never blocked by writers).
    reader: Mutex<Store>,
    /// Sessions of this process waiting for an outcome, by request id.
    waiters: Mutex<HashMap<String, oneshot::Sender<ApprovalOutcome>>>,
    audit: AuditHandle,
    /// Rows filed by another instance are orphans after a restart.
    instance: String,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Approvals {
    /// Opens (creating if needed) the `approvals` table in the appliance's
    /// SQLite file. Opening does not touch existing rows; the serving process's
    /// [`run_poller`](Self::run_poller) expires the orphans of a previous run.
    pub fn open(db_path: &Path, audit: AuditHandle) -> Result<Self, ApprovalError> {
        Ok(Approvals {
            inner: Arc::new(Inner {
                writer: Mutex::new(Store::open(db_path)?),
                reader: Mutex::new(Store::open(db_path)?),
                waiters: Mutex::new(HashMap::new()),
                audit,
                instance: new_id()?,
            }),
        })
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ApprovalError>,
    ) -> Result<T, ApprovalError> {
        f(&lock(&self.inner.reader))
    }

    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, ApprovalError> + Send + 'static,
    ) -> Result<T, ApprovalError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&lock(&inner.writer)))
            .await
            .map_err(|e| ApprovalError::Storage(format!("blocking task failed: {e}")))?
    }

    /// Files a request (audited) and returns its id and the [`Pending`]
    /// outcome. Waiting never blocks any other session; dropping the
    /// `Pending` does not withdraw the request (call [`withdraw`](Self::withdraw)).
    pub async fn request(&self, req: ApprovalRequest) -> Result<(String, Pending), ApprovalError> {
        validate(&req)?;
        let now = now_ms();
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut view = ApprovalView {
            id: String::new(),
            user: req.user,
            groups: req.groups,
            connection: req.connection,
            session_id: req.session_id,
            kind: req.kind,
            text: req.text,
            fingerprint: req.fingerprint,
            approvers_group: req.approvers_group,
            state: ApprovalState::Pending,
            created_ms: now,
            expires_ms: now.saturating_add(duration_ms(req.timeout)),
            decided_by: None,
            reason: None,
            decided_ms: None,
            reuse_window_ms: u64::try_from(req.reuse_window.as_millis()).unwrap_or(u64::MAX),
            policy_version: req.policy_version,
        };
        let (tx, rx) = oneshot::channel();
        let mut tx = Some(tx);
        for _ in 0..8 {
            let id = new_id()?;
            // Register before inserting, so no decision can find the row without its waiter.
            {
                let mut waiters = lock(&self.inner.waiters);
                if waiters.contains_key(&id) {
                    continue;
                }
                if let Some(tx) = tx.take() {
                    waiters.insert(id.clone(), tx);
                }
            }
            view.id = id.clone();
            let (row, instance) = (view.clone(), self.inner.instance.clone());
            match self.write(move |s| s.insert(&row, &instance)).await {
                Ok(true) => return self.filed(view, rx, deadline).await,
                Ok(false) => tx = lock(&self.inner.waiters).remove(&id),
                Err(e) => {
                    lock(&self.inner.waiters).remove(&id);
                    return Err(e);
                }
            }
        }
        Err(ApprovalError::Storage(
            "could not allocate a free id".into(),
        ))
    }

    async fn filed(
        &self,
        view: ApprovalView,
        rx: oneshot::Receiver<ApprovalOutcome>,
        deadline: tokio::time::Instant,
    ) -> Result<(String, Pending), ApprovalError> {
        let rec = record::requested(&view);
        if let Err(e) = self.inner.audit.record(rec).await {
            // Unaudited requests must not be approvable: withdraw it.
            let _ = self
                .finish(
                    &view.id,
                    ApprovalState::Withdrawn,
                    None,
                    Some("audit trail unavailable"),
                    false,
                    Via::Requester,
                )
                .await;
            return Err(e.into());
        }
        tracing::info!(id = %view.id, user = %view.user, connection = %view.connection,
            kind = %view.kind, group = %view.approvers_group, "held for approval");
        let id = view.id;
        Ok((
            id.clone(),
            Pending {
                id,
                rx,
                deadline,
                approvals: self.clone(),
            },
        ))
    }

    /// The requester's client cancelled: the request becomes `withdrawn`
    /// (audited) and its waiter resolves `Withdrawn`. `NotPending` if a
    /// decision or the timeout came first.
    pub async fn withdraw(&self, id: &str) -> Result<(), ApprovalError> {
        let id = normalize_id(id).ok_or_else(|| ApprovalError::NotFound(shown(id)))?;
        let reason = Some("cancelled by the client");
        match self
            .finish(
                &id,
                ApprovalState::Withdrawn,
                None,
                reason,
                false,
                Via::Requester,
            )
            .await?
        {
            Some(_) => Ok(()),
            None => Err(self.not_pending(&id)),
        }
    }

    /// Whether an earlier approval of the same user + connection + fingerprint
    /// is still within its reuse window. Errors count as "no" (fail closed).
    pub fn reusable(&self, user: &str, connection: &str, fingerprint: &str) -> bool {
        self.find_reusable(user, connection, fingerprint).is_some()
    }

    /// The approval [`reusable`](Self::reusable) would reuse (for the audit record).
    pub fn find_reusable(
        &self,
        user: &str,
        connection: &str,
        fingerprint: &str,
    ) -> Option<ApprovalView> {
        match self.read(|s| s.reusable(user, connection, fingerprint, now_ms())) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "reading the approvals store failed");
                None
            }
        }
    }

    /// Pending requests `approver` may decide, plus their own pending ones
    /// (shown with `can_decide` false in the API), oldest first.
    pub fn list_pending_for(
        &self,
        approver: &Identity,
    ) -> Result<Vec<ApprovalView>, ApprovalError> {
        Ok(self
            .list_pending()?
            .into_iter()
            .filter(|v| may_decide(v, approver) || same_user(&v.user, &approver.user))
            .collect())
    }

    /// Every pending request whose deadline has not passed (operator view).
    pub fn list_pending(&self) -> Result<Vec<ApprovalView>, ApprovalError> {
        self.read(|s| s.pending(now_ms()))
    }

    /// The `limit` most recent requests in any state, newest first.
    pub fn list_recent(&self, limit: usize) -> Result<Vec<ApprovalView>, ApprovalError> {
        self.read(|s| s.recent(limit))
    }

    /// One request by id.
    pub fn get(&self, id: &str) -> Result<Option<ApprovalView>, ApprovalError> {
        match normalize_id(id) {
            Some(id) => self.read(|s| s.get(&id)),
            None => Ok(None),
        }
    }

    /// An approver's decision (the API). Refuses an unknown id, a request no
    /// longer pending, an approver outside the approvers group, and the
    /// requester. Audited; wakes the waiting session.
    pub async fn decide(
        &self,
        id: &str,
        approver: &Identity,
        approve: bool,
        reason: Option<String>,
    ) -> Result<ApprovalView, ApprovalError> {
        let via = Via::Api {
            groups: approver.groups.clone(),
        };
        self.decide_via(id, approver, approve, reason, via).await
    }

    /// A decision by the local operator CLI on the appliance host, acting as
    /// `approver` (break-glass: audited with the OS user `operator`). Same
    /// checks as [`decide`](Self::decide).
    pub async fn decide_break_glass(
        &self,
        id: &str,
        approver: &Identity,
        approve: bool,
        reason: Option<String>,
        operator: &str,
    ) -> Result<ApprovalView, ApprovalError> {
        let via = Via::LocalCli {
            groups: approver.groups.clone(),
            operator: operator.to_string(),
        };
        self.decide_via(id, approver, approve, reason, via).await
    }

    async fn decide_via(
        &self,
        id: &str,
        approver: &Identity,
        approve: bool,
        reason: Option<String>,
        via: Via,
    ) -> Result<ApprovalView, ApprovalError> {
        let id = normalize_id(id).ok_or_else(|| ApprovalError::NotFound(shown(id)))?;
        let reason = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty());
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON) {
            return Err(ApprovalError::Invalid(format!(
                "the reason is longer than {MAX_REASON} bytes"
            )));
        }
        let view = self
            .read(|s| s.get(&id))?
            .ok_or_else(|| ApprovalError::NotFound(id.clone()))?;
        check_decidable(&view, approver, now_ms())?;
        let to = if approve {
            ApprovalState::Approved
        } else {
            ApprovalState::Denied
        };
        match self
            .finish(&id, to, Some(&approver.user), reason.as_deref(), true, via)
            .await?
        {
            Some(v) => Ok(v),
            None => Err(self.not_pending(&id)),
        }
    }

    /// Why `id` could not change state (it is not pending, or timed out).
    fn not_pending(&self, id: &str) -> ApprovalError {
        match self.read(|s| s.get(id)) {
            Ok(Some(v)) => ApprovalError::NotPending {
                id: id.to_string(),
                state: match v.state {
                    ApprovalState::Pending => ApprovalState::TimedOut,
                    s => s,
                },
            },
            Ok(None) => ApprovalError::NotFound(id.to_string()),
            Err(e) => e,
        }
    }

    /// Moves `id` from pending to `to`; if this call won, audits and wakes the
    /// waiter, and returns the new row. `Ok(None)`: it was not pending (or,
    /// with `only_before`, its deadline had passed).
    async fn finish(
        &self,
        id: &str,
        to: ApprovalState,
        by: Option<&str>,
        reason: Option<&str>,
        only_before: bool,
        via: Via,
    ) -> Result<Option<ApprovalView>, ApprovalError> {
        let (id_owned, by, reason) = (
            id.to_string(),
            by.map(str::to_string),
            reason.map(str::to_string),
        );
        let view = self
            .write(move |s| {
                let t = Transition {
                    to,
                    by: by.as_deref(),
                    reason: reason.as_deref(),
                    now_ms: now_ms(),
                };
                if s.transition(&id_owned, &t, only_before)? {
                    s.get(&id_owned)
                } else {
                    Ok(None)
                }
            })
            .await?;
        let Some(view) = view else {
            return Ok(None);
        };
        self.audit_settled(&view, &via).await;
        self.wake(&view);
        Ok(Some(view))
    }

    /// Resolves this process's waiter of `view`, if it has one.
    fn wake(&self, view: &ApprovalView) {
        let Some(outcome) = view.outcome() else {
            return;
        };
        if let Some(tx) = lock(&self.inner.waiters).remove(&view.id) {
            let _ = tx.send(outcome);
        }
    }

    async fn audit_settled(&self, view: &ApprovalView, via: &Via) {
        let rec = record::settled(view, via);
        if let Err(e) = self.inner.audit.record(rec).await {
            tracing::error!(id = %view.id, error = %e, "could not audit an approval outcome");
        }
        tracing::info!(id = %view.id, state = %view.state, by = ?view.decided_by, "approval settled");
    }
}

/// The outcome of one held request. Await [`outcome`](Self::outcome);
/// dropping it does not withdraw the request.
pub struct Pending {
    id: String,
    rx: oneshot::Receiver<ApprovalOutcome>,
    deadline: tokio::time::Instant,
    approvals: Approvals,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("id", &self.id).finish()
    }
}

impl Pending {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for a decision, a withdrawal, or the deadline (then marks the
    /// request `timed_out`, audited, and returns `TimedOut`).
    pub async fn outcome(self) -> ApprovalOutcome {
        let Pending {
            id,
            mut rx,
            deadline,
            approvals,
        } = self;
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        let deadline_passed = tokio::select! {
            r = &mut rx => match r {
                Ok(outcome) => return outcome,
                Err(_) => false,
            },
            _ = &mut sleep => true,
        };
        if !deadline_passed {
            // The sender went away unsent: the row decides, at the latest at the deadline.
            sleep.await;
        }
        approvals.time_out(&id).await
    }
}

impl Approvals {
    /// The deadline of `id` passed: mark it timed out, unless something else
    /// settled it first (then that outcome). Fails closed to `TimedOut`.
    async fn time_out(&self, id: &str) -> ApprovalOutcome {
        let reason = Some("no decision before the timeout");
        match self
            .finish(
                id,
                ApprovalState::TimedOut,
                None,
                reason,
                false,
                Via::Deadline,
            )
            .await
        {
            Ok(Some(_)) => ApprovalOutcome::TimedOut,
            Ok(None) => match self.read(|s| s.get(id)) {
                Ok(Some(v)) => v.outcome().unwrap_or(ApprovalOutcome::TimedOut),
                Ok(None) => ApprovalOutcome::Withdrawn,
                Err(e) => {
                    tracing::error!(%id, error = %e, "reading an approval failed");
                    ApprovalOutcome::TimedOut
                }
            },
            Err(e) => {
                tracing::error!(%id, error = %e, "marking an approval timed out failed");
                lock(&self.inner.waiters).remove(id);
                ApprovalOutcome::TimedOut
            }
        }
    }
}
