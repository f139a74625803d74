//! The `appliance audit verify | export | verify-export | pubkey` commands
//! (flattened into `appliance audit` by `main.rs`). Each prints what it found
//! and fails (non-zero exit) when the trail or the export does not verify.

use std::path::PathBuf;

use clap::Subcommand;

use super::{
    export, parse_checkpoints, parse_since, verify, verify_export, AuditConfig, AuditError,
    AuditKey, AuditKind, AuditPublicKey, AuditRecord, ExportFormat, ExportRequest, VerifyOptions,
};
use crate::config::RuntimeConfig;

/// Audit commands that check or export the chain.
#[derive(Debug, Subcommand)]
pub enum TrustCommand {
    /// Walk the hash chain: report the first modified, deleted, inserted or
    /// reordered record, bad checkpoints, and a truncated tail.
    Verify {
        /// A checkpoint kept elsewhere (an export, or lines a sink received);
        /// repeatable. Detects a truncated tail.
        #[arg(long)]
        checkpoint: Vec<PathBuf>,
        /// The audit public key (`RW...` or a .pub file); default the local
        /// DATA_DIR/keys/audit.pub.
        #[arg(long)]
        pubkey: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Write a signed export (records, checkpoints, FILE.minisig).
    Export {
        /// RFC 3339 time, a date, or a duration ago (inclusive).
        #[arg(long)]
        since: Option<String>,
        /// RFC 3339 time, a date, or a duration ago (exclusive).
        #[arg(long)]
        until: Option<String>,
        /// ndjson or csv.
        #[arg(long, default_value = "ndjson")]
        format: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check an export anywhere: signature, every hash, the chain, checkpoints.
    VerifyExport {
        file: PathBuf,
        /// The audit public key (`RW...` or a .pub file).
        #[arg(long)]
        pubkey: String,
    },
    /// Print the audit public key (minisign), generating the key pair if needed.
    Pubkey {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

/// What can go wrong in these commands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Failed(String),
}

fn local_key(cfg: &RuntimeConfig) -> Result<AuditKey, CliError> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(AuditError::Io)?;
    Ok(AuditKey::load_or_generate(&super::key_dir(&cfg.data_dir))?)
}

fn db(cfg: &RuntimeConfig) -> Result<PathBuf, CliError> {
    let db = cfg.db_path();
    if !db.exists() {
        return Err(CliError::Failed(format!(
            "no audit database at {} (has the appliance run with this config?)",
            db.display()
        )));
    }
    Ok(db)
}

/// Runs one command.
pub async fn run(cmd: TrustCommand) -> Result<(), CliError> {
    match cmd {
        TrustCommand::Verify {
            checkpoint,
            pubkey,
            config,
        } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            let db = db(&cfg)?;
            let key = match pubkey {
                Some(k) => Some(AuditPublicKey::from_str_or_file(&k)?),
                None => {
                    let p = super::key_dir(&cfg.data_dir).join(super::AUDIT_PUB_FILE);
                    p.exists()
                        .then(|| AuditPublicKey::from_str_or_file(&p.display().to_string()))
                        .transpose()?
                }
            };
            let mut external = Vec::new();
            for f in &checkpoint {
                let text = std::fs::read_to_string(f)
                    .map_err(|e| CliError::Failed(format!("{}: {e}", f.display())))?;
                let found = parse_checkpoints(&text);
                let Some(last) = found.into_iter().max_by_key(|c| c.seq) else {
                    return Err(CliError::Failed(format!(
                        "{}: no checkpoint found",
                        f.display()
                    )));
                };
                external.push((last, f.display().to_string()));
            }
            let opts = VerifyOptions {
                pubkey: key,
                external,
            };
            let report = tokio::task::spawn_blocking(move || verify(&db, &opts))
                .await
                .map_err(|e| CliError::Failed(e.to_string()))??;
            for n in &report.notes {
                println!("note: {n}");
            }
            let range = match (report.first_seq, report.last_seq) {
                (Some(a), Some(b)) => format!("seq {a}..={b}"),
                _ => "no records".to_owned(),
            };
            if report.ok() {
                println!(
                    "audit trail OK: {} records ({range}), {} checkpoints verified",
                    report.records, report.checkpoints_verified
                );
                Ok(())
            } else {
                for p in &report.problems {
                    println!("TAMPERED: {p}");
                }
                let first = &report.problems[0];
                Err(CliError::Failed(format!(
                    "audit trail does not verify: {} ({} problem(s); {} records, {range})",
                    first.message,
                    report.problems.len(),
                    report.records
                )))
            }
        }
        TrustCommand::Export {
            since,
            until,
            format,
            out,
            config,
        } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            let db = db(&cfg)?;
            let key = local_key(&cfg)?;
            let now = super::now_ms();
            let req = ExportRequest {
                since_ms: since.map(|s| parse_since(&s, now)).transpose()?,
                until_ms: until.map(|s| parse_since(&s, now)).transpose()?,
                format: format.parse::<ExportFormat>()?,
                out: out.clone(),
            };
            let (db2, pk) = (db.clone(), key.public_key().to_owned());
            let summary = tokio::task::spawn_blocking(move || export(&db2, &key, &req))
                .await
                .map_err(|e| CliError::Failed(e.to_string()))??;
            super::set_cursor(&db, "export", summary.last_seq)?;
            let rec = AuditRecord::new(AuditKind::AuditExported)
                .outcome("ok")
                .detail(serde_json::json!({
                    "file": out.display().to_string(),
                    "first_seq": summary.first_seq,
                    "last_seq": summary.last_seq,
                    "records": summary.records,
                    "sha256": summary.sha256,
                }));
            let (handle, writer) = super::spawn_writer(AuditConfig {
                queue_capacity: 4,
                max_batch: 4,
                ..AuditConfig::new(db)
            })?;
            handle.record(rec).await?;
            handle.flush().await?;
            drop(handle);
            writer.join().await?;
            println!(
                "wrote {} records (seq {}..={}, {} checkpoints) to {}",
                summary.records,
                summary.first_seq,
                summary.last_seq,
                summary.checkpoints,
                out.display()
            );
            println!("signature: {}", summary.signature.display());
            println!("sha256: {}", summary.sha256);
            println!("audit public key: {pk}");
            println!(
                "check with: appliance audit verify-export {} --pubkey {pk}   (or minisign -Vm {} -P {pk})",
                out.display(),
                out.display()
            );
            Ok(())
        }
        TrustCommand::VerifyExport { file, pubkey } => {
            let key = AuditPublicKey::from_str_or_file(&pubkey)?;
            let f = file.clone();
            let summary = tokio::task::spawn_blocking(move || verify_export(&f, &key))
                .await
                .map_err(|e| CliError::Failed(e.to_string()))?
                .map_err(|e| CliError::Failed(format!("{}: {e}", file.display())))?;
            println!(
                "{}: export OK: {} records (seq {}..={}), {} checkpoints, signature valid",
                file.display(),
                summary.records,
                summary.first_seq,
                summary.last_seq,
                summary.checkpoints
            );
            Ok(())
        }
        TrustCommand::Pubkey { config } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            let key = local_key(&cfg)?;
            println!("{}", key.public_key());
            Ok(())
        }
    }
}
