//! The router task: read records after the `events` cursor, match them
//! against the routes of the policy in force, run the actions, audit each
//! outcome, advance the cursor. Also the dry run behind
//! `appliance events test --event FILE`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::actions::{self, ActionEnv};
use super::matcher;
use crate::admin::Metrics;
use crate::audit::{self, AuditHandle, AuditKind, AuditRecord, StoredRecord};
use crate::policy::routes::{Action, Route};
use crate::server::PolicyRx;

/// The cursor name in `audit_cursor`.
pub const CURSOR: &str = "events";
const BATCH: usize = 500;
const IDLE: Duration = Duration::from_secs(1);
/// With no routes, how often the skipped-to cursor is stored.
const CURSOR_SAVE_EVERY: Duration = Duration::from_secs(1);

/// One planned action of a dry run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DryRun {
    pub route: String,
    pub event: String,
    pub actions: Vec<String>,
    pub payload: Value,
}

/// What `routes` would do with `rec` (no action runs).
pub fn dry_run(routes: &[Route], rec: &StoredRecord) -> (Vec<String>, Vec<DryRun>) {
    let kinds = matcher::event_kinds(rec);
    let plans = matcher::matching(routes, rec)
        .into_iter()
        .map(|(route, event)| DryRun {
            route: route.name.clone(),
            actions: route
                .actions
                .iter()
                .map(|a| match a {
                    Action::Webhook { url, .. } => format!("webhook POST {url}"),
                    Action::Command { runbook, args, .. } => {
                        format!("command {runbook} {}", args.join(" "))
                            .trim_end()
                            .to_owned()
                    }
                    other => actions::action_name(other).to_owned(),
                })
                .collect(),
            payload: matcher::payload(route, &event, rec),
            event,
        })
        .collect();
    (kinds, plans)
}

async fn save_cursor(db: &std::path::Path, seq: i64) {
    let db = db.to_path_buf();
    if let Err(e) = blocking(move || audit::set_cursor(&db, CURSOR, seq)).await {
        tracing::error!(error = %e, "event router cannot store its cursor");
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, audit::AuditError> + Send + 'static,
) -> Result<T, audit::AuditError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| audit::AuditError::WriterGone)?
}

fn outcome_record(
    route: &str,
    event: &str,
    action: &Action,
    rec: &StoredRecord,
    o: &actions::Outcome,
) -> AuditRecord {
    let mut detail = serde_json::json!({
        "route": route,
        "event": event,
        "action": actions::action_name(action),
        "record_id": rec.id,
        "record_seq": rec.seq,
    });
    if let (Some(d), Some(extra)) = (detail.as_object_mut(), o.detail.as_object()) {
        for (k, v) in extra {
            d.insert(k.clone(), v.clone());
        }
    }
    let mut r = AuditRecord::new(AuditKind::EventAction)
        .outcome(if o.ok { "ok" } else { "error" })
        .reason(o.reason.clone())
        .detail(detail);
    if let Some(u) = &rec.record.user {
        r = r.user(u.clone());
    }
    if let Some(c) = &rec.record.connection {
        r = r.connection(c.clone());
    }
    if let Some(s) = &rec.record.session_id {
        r = r.session(s.clone());
    }
    r
}

/// Runs the router until `shutdown`.
pub async fn run(
    env: ActionEnv,
    audit: AuditHandle,
    policy: PolicyRx,
    metrics: Arc<Metrics>,
    concurrency: usize,
    shutdown: CancellationToken,
) {
    let db = env.db_path.clone();
    let start = {
        let db = db.clone();
        blocking(move || {
            let conn = audit::store::open_reader(&db)?;
            match audit::store::cursor(&conn, CURSOR)? {
                Some(c) => Ok(c),
                None => {
                    let (tip, _) = audit::store::tip(&conn)?;
                    audit::store::set_cursor(&conn, CURSOR, tip)?;
                    Ok(tip)
                }
            }
        })
        .await
    };
    let mut cursor = match start {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "event router cannot read its cursor; not routing events");
            return;
        }
    };
    let (mut saved, mut saved_at) = (cursor, tokio::time::Instant::now());
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tip = audit.subscribe_tip();
    loop {
        let no_routes = policy
            .borrow()
            .as_ref()
            .is_none_or(|p| p.policy().routes.is_empty());
        if no_routes {
            // Nothing to route: skip what was written meanwhile without
            // reading it. The skip is stored at most once per CURSOR_SAVE_EVERY,
            // not per commit: each store is a write transaction of its own
            // (and it made the audit writer re-read its pages after every
            // commit). A crash loses at most that much skipping, and with no
            // routes there is nothing to run twice.
            cursor = cursor.max(*tip.borrow_and_update());
            if cursor > saved && saved_at.elapsed() >= CURSOR_SAVE_EVERY {
                save_cursor(&db, cursor).await;
                (saved, saved_at) = (cursor, tokio::time::Instant::now());
            }
            let wait = if cursor > saved {
                CURSOR_SAVE_EVERY.saturating_sub(saved_at.elapsed())
            } else {
                IDLE
            };
            tokio::select! {
                _ = tip.changed() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {
                    if cursor > saved {
                        save_cursor(&db, cursor).await;
                    }
                    return;
                }
            }
            continue;
        }
        let rows = {
            let db = db.clone();
            blocking(move || audit::rows_after(&db, cursor, BATCH)).await
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "event router cannot read the trail");
                Vec::new()
            }
        };
        if rows.is_empty() {
            tokio::select! {
                _ = tip.changed() => {}
                _ = tokio::time::sleep(IDLE) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        let routes: Vec<Route> = policy
            .borrow()
            .as_ref()
            .map(|p| p.policy().routes.clone())
            .unwrap_or_default();
        for raw in &rows {
            cursor = raw.seq;
            if routes.is_empty() {
                continue;
            }
            let Ok(rec) = StoredRecord::from_raw(raw) else {
                continue;
            };
            let matched = matcher::matching(&routes, &rec);
            if matched.is_empty() {
                continue;
            }
            metrics
                .events_matched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            for (route, event) in matched {
                let payload = matcher::payload(route, &event, &rec);
                for (i, action) in route.actions.iter().enumerate() {
                    // Webhooks and runbooks wait when `concurrency` of them run:
                    // the router lags, sessions never notice. Local actions
                    // (close_session, revoke_identity) never queue behind them.
                    let slow = matches!(action, Action::Webhook { .. } | Action::Command { .. });
                    let permit = if slow {
                        tokio::select! {
                            p = permits.clone().acquire_owned() => match p {
                                Ok(p) => Some(p),
                                Err(_) => return,
                            },
                            _ = shutdown.cancelled() => return,
                        }
                    } else {
                        None
                    };
                    let (env, audit, metrics) = (env.clone(), audit.clone(), metrics.clone());
                    let (route_name, event, action, rec, payload) = (
                        route.name.clone(),
                        event.clone(),
                        action.clone(),
                        rec.clone(),
                        payload.clone(),
                    );
                    let stop = shutdown.clone();
                    tokio::spawn(async move {
                        // Shutdown does not wait for a slow webhook or runbook.
                        let o = tokio::select! {
                            o = actions::run(&env, &action, &route_name, i, &rec, &payload) => o,
                            _ = stop.cancelled() => return,
                        };
                        drop(permit);
                        metrics.action(actions::action_name(&action), o.ok);
                        if !o.ok {
                            tracing::warn!(route = %route_name, action = actions::action_name(&action), reason = %o.reason, "event action failed");
                        }
                        let _ = audit
                            .record(outcome_record(&route_name, &event, &action, &rec, &o))
                            .await;
                    });
                }
            }
        }
        save_cursor(&db, cursor).await;
    }
}
