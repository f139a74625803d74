//! `appliance approvals ...`: the local operator's view on the appliance host.
//!
//! ```text
//! appliance approvals list [--all] [--json] --config FILE
//! appliance approvals approve ID --as USER --groups G1,G2 [--reason R] --config FILE
//! appliance approvals deny ID --as USER --groups G1,G2 --reason R --config FILE
//! ```
//!
//! The CLI has no session token, so the operator says whom they act as with
//! `--as USER --groups ...`; the same rules apply as through the API (a member
//! of the approvers group, never the requester). This is break-glass: the
//! audit record carries `via: appliance_cli`, `break_glass: true` and the OS
//! user who ran it. The decision is written to SQLite; the serving process
//! notices within its poll interval (about 200 ms) and wakes the session.

use std::path::PathBuf;

use clap::Subcommand;

use tunnel_lite::api::{ApprovalInfo, ApprovalsResponse};

use super::store::Store;
use super::{ApprovalError, Approvals};
use crate::audit::{self, AuditConfig};
use crate::config::RuntimeConfig;
use crate::identity::Identity;

#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// List pending requests (all of them: the operator's view).
    List {
        /// The 100 most recent requests in any state instead.
        #[arg(long)]
        all: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Approve a held request, acting as USER (break-glass, audited as such).
    Approve {
        id: String,
        /// The approver you act as (never the requester).
        #[arg(long = "as", value_name = "USER")]
        as_user: String,
        /// The approver's groups (comma-separated); must include the approvers group.
        #[arg(long, value_delimiter = ',', required = true)]
        groups: Vec<String>,
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Deny a held request, acting as USER; the requester sees the reason.
    Deny {
        id: String,
        #[arg(long = "as", value_name = "USER")]
        as_user: String,
        #[arg(long, value_delimiter = ',', required = true)]
        groups: Vec<String>,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// Runs one `appliance approvals` command, printing to stdout.
pub async fn run(command: ApprovalsCommand) -> Result<(), ApprovalError> {
    let (config, decision) = match command {
        ApprovalsCommand::List { all, json, config } => {
            return list(config, all, json);
        }
        ApprovalsCommand::Approve {
            id,
            as_user,
            groups,
            reason,
            config,
        } => (config, (id, as_user, groups, true, reason)),
        ApprovalsCommand::Deny {
            id,
            as_user,
            groups,
            reason,
            config,
        } => (config, (id, as_user, groups, false, Some(reason))),
    };
    let (id, user, groups, approve, reason) = decision;
    if !approve && reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
        return Err(ApprovalError::Invalid("a denial needs a --reason".into()));
    }
    let cfg = load(config)?;
    let (handle, writer) = audit::spawn_writer(AuditConfig {
        queue_capacity: 16,
        max_batch: 16,
        ..AuditConfig::new(cfg.db_path())
    })?;
    let approvals = Approvals::open(&cfg.db_path(), handle.clone())?;
    let who = Identity {
        user,
        groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
    };
    let result = approvals
        .decide_break_glass(&id, &who, approve, reason, &operator())
        .await;
    drop(approvals);
    writer.shutdown(handle).await?;
    let v = result?;
    println!(
        "{} {} ({} by {} on {}: {}); the waiting session resumes within a second",
        v.state,
        v.id,
        v.kind,
        v.user,
        v.connection,
        tunnel_lite::api::shorten(&v.text, 72)
    );
    Ok(())
}

fn list(config: Option<PathBuf>, all: bool, json: bool) -> Result<(), ApprovalError> {
    let cfg = load(config)?;
    // Reading needs no waiters and no audit writer: the store alone.
    let store = Store::open(&cfg.db_path())?;
    let now = audit::now_ms();
    let views = if all {
        store.recent(100)?
    } else {
        store.pending(now)?
    };
    if json {
        for v in &views {
            println!(
                "{}",
                serde_json::to_string(&v.to_info(None)).unwrap_or_default()
            );
        }
        return Ok(());
    }
    if views.is_empty() {
        println!("no {}approval requests", if all { "" } else { "pending " });
        return Ok(());
    }
    let table = ApprovalsResponse {
        now_ms: now,
        approvals: views
            .iter()
            .map(|v| ApprovalInfo {
                // The operator acts as an approver: no "(yours)" notes.
                can_decide: true,
                ..v.to_info(None)
            })
            .collect(),
    };
    let rows = std::iter::once(None).chain(views.iter().map(Some));
    for (line, v) in table.to_table().lines().zip(rows) {
        match v {
            None => println!("{line}  {:<10}  APPROVERS", "STATE"),
            Some(v) => println!("{line}  {:<10}  {}", v.state.as_str(), v.approvers_group),
        }
    }
    Ok(())
}

fn load(config: Option<PathBuf>) -> Result<RuntimeConfig, ApprovalError> {
    let cfg =
        RuntimeConfig::load(config.as_deref()).map_err(|e| ApprovalError::Config(e.to_string()))?;
    let db = cfg.db_path();
    if !db.exists() {
        return Err(ApprovalError::Config(format!(
            "no appliance database at {} (has the appliance run with this config?)",
            db.display()
        )));
    }
    Ok(cfg)
}

/// Who ran this command, for the audit trail.
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user} (appliance CLI)")
}
