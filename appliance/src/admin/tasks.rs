//! Starts the background tasks of the audit trail and around it: the mode
//! follower (policy `[audit]` -> the writer's mode), the checkpoint ticker,
//! shipping sinks, retention and the disk threshold, the event router, and
//! the admin listener. `server::start` calls [`spawn_all`] once.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::audit::retention::{self, DiskStatus};
use crate::audit::{ship, AuditHandle};
use crate::events::ActionEnv;
use crate::server::{PolicyRx, Shared};

/// Binds the admin listener if `admin_listen` is set (so a taken port fails startup).
pub async fn bind_admin(
    shared_cfg: &crate::config::RuntimeConfig,
) -> std::io::Result<Option<TcpListener>> {
    match shared_cfg.audit.admin_listen {
        None => Ok(None),
        Some(addr) => TcpListener::bind(addr).await.map(Some),
    }
}

/// Applies the policy's `[audit]` (or the runtime defaults) to the writer.
pub fn apply_mode(
    audit: &AuditHandle,
    policy: &PolicyRx,
    defaults: &crate::audit::settings::AuditSettings,
) {
    let p = policy.borrow().as_ref().map(|p| p.policy().audit);
    let mode = p.and_then(|a| a.mode).unwrap_or(defaults.default_mode);
    let full = p
        .and_then(|a| a.queue_full)
        .unwrap_or(defaults.default_queue_full);
    if audit.mode() != (mode, full) {
        tracing::info!(?mode, queue_full = ?full, "audit mode");
    }
    audit.set_mode(mode, full);
}

async fn follow_mode(
    audit: AuditHandle,
    mut policy: PolicyRx,
    defaults: crate::audit::settings::AuditSettings,
    shutdown: CancellationToken,
) {
    loop {
        apply_mode(&audit, &policy, &defaults);
        tokio::select! {
            r = policy.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn checkpoints(audit: AuditHandle, every: std::time::Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(50)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if audit.checkpoint().await.is_err() {
            return;
        }
    }
}

/// Starts every task; returns their handles (aborted at shutdown).
pub fn spawn_all(
    shared: &Arc<Shared>,
    admin: Option<TcpListener>,
    shutdown: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    let settings = shared.cfg.audit.clone();
    apply_mode(&shared.audit, &shared.policy, &settings);
    let mut tasks = vec![
        tokio::spawn(follow_mode(
            shared.audit.clone(),
            shared.policy.clone(),
            settings.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(checkpoints(
            shared.audit.clone(),
            settings.checkpoint_interval,
            shutdown.clone(),
        )),
    ];
    for (status, task) in ship::spawn_sinks(
        &settings.sinks,
        &shared.audit,
        &shared.secrets,
        shutdown.clone(),
    ) {
        shared.metrics.register_sink(status);
        tasks.push(task);
    }
    let disk = Arc::new(DiskStatus::default());
    disk.bytes.store(
        retention::disk_bytes(shared.audit.db_path()),
        std::sync::atomic::Ordering::Relaxed,
    );
    shared.metrics.register_disk(disk.clone());
    tasks.push(tokio::spawn(retention::run(
        settings.retention.clone(),
        shared.audit.clone(),
        disk,
        shutdown.clone(),
    )));
    let env = ActionEnv {
        secrets: shared.secrets.clone(),
        sessions: shared.sessions.clone(),
        live: shared.live.clone(),
        db_path: shared.audit.db_path().to_path_buf(),
        runbook_dir: settings.runbook_dir.clone(),
    };
    tasks.push(tokio::spawn(crate::events::run(
        env,
        shared.audit.clone(),
        shared.policy.clone(),
        shared.metrics.clone(),
        settings.event_concurrency,
        shutdown.clone(),
    )));
    if let Some(listener) = admin {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "admin listener (metrics, health)");
        }
        tasks.push(tokio::spawn(super::serve(
            listener,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    tasks
}
