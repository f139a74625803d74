//! `appliance events test --event FILE`: dry-run the routes of the policy in
//! force (or of `--policy FILE`) on a sample event; nothing runs.

use std::path::PathBuf;

use clap::Subcommand;

use crate::audit::{AuditRecord, StoredRecord};
use crate::config::RuntimeConfig;
use crate::policy::{self, Policy};

/// Event routing commands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Show which routes a sample event (an audit record as JSON, e.g. a line
    /// of `appliance audit list --json`) would fire and what they would send.
    Test {
        #[arg(long)]
        event: PathBuf,
        /// An unsigned policy file to test instead of the signed bundle in
        /// policy_dir.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum EventsCliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("{0}")]
    Failed(String),
}

fn read(path: &std::path::Path) -> Result<String, EventsCliError> {
    std::fs::read_to_string(path)
        .map_err(|e| EventsCliError::Failed(format!("{}: {e}", path.display())))
}

fn load_policy(
    policy_file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> Result<Policy, EventsCliError> {
    if let Some(f) = policy_file {
        return Ok(policy::parse_policy(&read(&f)?)?);
    }
    let cfg = RuntimeConfig::load(config.as_deref())?;
    let file = cfg.policy_dir.join(policy::POLICY_FILE);
    let sig = read(&cfg.policy_dir.join(policy::POLICY_SIGNATURE_FILE))?;
    let trusted = cfg
        .trusted_policy_keys
        .iter()
        .map(|k| policy::TrustedKey::from_str_or_file(k))
        .collect::<Result<Vec<_>, _>>()?;
    let bytes = std::fs::read(&file)
        .map_err(|e| EventsCliError::Failed(format!("{}: {e}", file.display())))?;
    Ok(policy::verify_bundle(&bytes, &sig, &trusted)?
        .policy()
        .clone())
}

/// Parses a sample event: a stored record (with `seq`, `id`) or a bare record.
pub fn parse_event(text: &str) -> Result<StoredRecord, String> {
    let v: serde_json::Value =
        serde_json::from_str(text.trim()).map_err(|e| format!("not JSON: {e}"))?;
    if v.get("seq").is_some() {
        return serde_json::from_value(v).map_err(|e| format!("not an audit record: {e}"));
    }
    let record: AuditRecord =
        serde_json::from_value(v).map_err(|e| format!("not an audit record: {e}"))?;
    Ok(StoredRecord {
        seq: 0,
        id: "sample-0".into(),
        record,
        prev_hash: String::new(),
        hash: String::new(),
    })
}

/// Runs the command; prints the plan as JSON.
pub fn run(cmd: EventsCommand) -> Result<(), EventsCliError> {
    match cmd {
        EventsCommand::Test {
            event,
            policy,
            config,
        } => {
            let p = load_policy(policy, config)?;
            let rec = parse_event(&read(&event)?)
                .map_err(|e| EventsCliError::Failed(format!("{}: {e}", event.display())))?;
            let (kinds, plans) = super::dry_run(&p.routes, &rec);
            let out = serde_json::json!({
                "policy_version": p.version,
                "event_kinds": kinds,
                "routes_matched": plans.len(),
                "plans": plans,
            });
            println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            if plans.is_empty() {
                eprintln!("no route matches this event (dry run; nothing was run)");
            } else {
                eprintln!("dry run: nothing was run");
            }
            Ok(())
        }
    }
}
