//! `appliance`: the command-line edge. Parses arguments, sets up logging, and
//! calls into the library; errors become one clear line on stderr.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use appliance::audit::{self, AuditConfig, AuditFilter, AuditKind, AuditRecord};
use appliance::config::RuntimeConfig;
use appliance::identity::{Identity, RevocationStore, SessionSigner};
use appliance::policy;

#[derive(Parser)]
#[command(
    name = "appliance",
    version,
    about = "The access appliance: identity-aware gateway to production systems"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (tunnel endpoint, API, policy watcher, audit writer).
    Serve {
        /// Runtime config (TOML); without it, defaults under ./appliance-data/.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Create, sign, verify and check policy bundles.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Mint appliance session tokens locally (break-glass, tests, air-gapped sites).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Revoke a person's access (closes their live sessions within a second).
    Revoke {
        /// The user to revoke (or restore, with --undo).
        #[arg(long, required_unless_present = "list")]
        user: Option<String>,
        /// Restore a revoked user.
        #[arg(long, requires = "user")]
        undo: bool,
        /// List revoked users.
        #[arg(long, conflicts_with_all = ["user", "undo"])]
        list: bool,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Event routes: dry-run them on a sample event.
    Events {
        #[command(subcommand)]
        command: appliance::events::cli::EventsCommand,
    },
    /// Read the audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List, approve and deny held statements, HTTP requests and commands on
    /// this host. Approving or denying acts as `--as USER --groups G1,G2`
    /// (break-glass, audited with the OS user); the serving appliance wakes
    /// the waiting session within a second.
    Approvals {
        #[command(subcommand)]
        command: appliance::approvals::cli::ApprovalsCommand,
    },
    /// List and export recorded SSH sessions (asciicast v2).
    Recordings {
        #[command(subcommand)]
        command: appliance::proxy::ssh::RecordingsCommand,
    },
    /// Print the SHA-256 fingerprint of the appliance's TLS certificate
    /// (generating the self-signed certificate if there is none yet).
    Fingerprint {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Write DIR/policy.key (minisign secret key, unencrypted) and DIR/policy.pub.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign FILE with a minisign secret key, writing FILE.minisig.
    Sign {
        #[arg(long)]
        key: PathBuf,
        file: PathBuf,
    },
    /// Verify FILE against FILE.minisig and a minisign public key.
    Verify {
        #[arg(long)]
        pubkey: String,
        file: PathBuf,
    },
    /// Validate a policy file (schema and semantics), without a signature.
    Check { file: PathBuf },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a session token for a user.
    Issue {
        #[arg(long)]
        user: String,
        /// Comma-separated groups.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Lifetime, e.g. 15m, 1h, 8h.
        #[arg(long, default_value = "1h")]
        ttl: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Print audit records, oldest first.
    List {
        #[arg(long)]
        user: Option<String>,
        /// RFC 3339 time, a date, or a duration ago (15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        session: Option<String>,
        #[arg(long)]
        connection: Option<String>,
        /// Record kind, e.g. session_end, tunnel_refused, policy_refused.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// verify, export, verify-export, pubkey.
    #[command(flatten)]
    Trust(appliance::audit::cli::TrustCommand),
}

#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: tunnel_lite::alloc_count::CountingAlloc = tunnel_lite::alloc_count::CountingAlloc;

fn main() {
    let cli = Cli::parse();
    // The server logs its life at info; one-shot commands only say what went wrong.
    let default_level = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    tunnel_lite::logging::init("APPLIANCE_LOG", default_level, true);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("appliance: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    #[cfg(feature = "count-alloc")]
    runtime.spawn(tunnel_lite::alloc_count::report_on_sigusr1());
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("appliance: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve { config } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            let running = appliance::server::start(cfg).await?;
            println!("appliance listening on {}", running.addr);
            println!(
                "TLS fingerprint (pin it in tunnel-lite): {}",
                running.fingerprint
            );
            running.run_until_signal().await;
            Ok(())
        }
        Command::Policy { command } => policy_command(command),
        Command::Token {
            command:
                TokenCommand::Issue {
                    user,
                    groups,
                    ttl,
                    config,
                },
        } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            let ttl = humantime::parse_duration(&ttl).with_context(|| format!("--ttl {ttl:?}"))?;
            if ttl.is_zero() || ttl > Duration::from_secs(30 * 24 * 3600) {
                bail!("--ttl must be between 1s and 30 days");
            }
            ensure_private_dir(&cfg.data_dir)?;
            if let Some(dir) = cfg.session_key_path().parent() {
                ensure_private_dir(dir)?;
            }
            let signer = SessionSigner::load_or_generate(&cfg.session_key_path())?;
            let who = Identity {
                user: user.clone(),
                groups: groups.into_iter().filter(|g| !g.is_empty()).collect(),
            };
            let token = signer.issue(&who, ttl)?;
            let rec = AuditRecord::new(AuditKind::TokenIssued)
                .user(who.user.clone())
                .groups(who.groups.iter().cloned())
                .outcome("ok")
                .reason(format!(
                    "minted locally with `appliance token issue`, ttl {}",
                    humantime::format_duration(ttl)
                ));
            write_audit(&cfg, rec).await?;
            println!("{token}");
            Ok(())
        }
        Command::Revoke {
            user,
            undo,
            list,
            reason,
            config,
        } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            ensure_private_dir(&cfg.data_dir)?;
            let store = RevocationStore::open(&cfg.db_path())?;
            if list {
                for r in store.list()? {
                    println!(
                        "{}\trevoked {}\tby {}\t{}",
                        r.user,
                        appliance::gate::rfc3339(r.revoked_at),
                        r.revoked_by.as_deref().unwrap_or("-"),
                        r.reason.as_deref().unwrap_or("")
                    );
                }
                return Ok(());
            }
            let Some(user) = user else {
                bail!("--user is required");
            };
            let by = operator();
            if undo {
                let changed = store.undo(&user)?;
                let rec = AuditRecord::new(AuditKind::IdentityRestored)
                    .user(user.clone())
                    .outcome(if changed { "ok" } else { "unchanged" })
                    .detail(serde_json::json!({ "by": by }));
                write_audit(&cfg, rec).await?;
                println!(
                    "{user}: {}",
                    if changed {
                        "access restored"
                    } else {
                        "was not revoked"
                    }
                );
            } else {
                let changed = store.revoke(&user, &by, reason.as_deref())?;
                let mut rec = AuditRecord::new(AuditKind::IdentityRevoked)
                    .user(user.clone())
                    .outcome(if changed { "ok" } else { "unchanged" })
                    .detail(serde_json::json!({ "by": by }));
                if let Some(r) = &reason {
                    rec = rec.reason(r.clone());
                }
                write_audit(&cfg, rec).await?;
                println!(
                    "{user}: {}",
                    if changed {
                        "revoked; a running appliance closes their sessions within a second"
                    } else {
                        "already revoked"
                    }
                );
            }
            Ok(())
        }
        Command::Events { command } => Ok(appliance::events::cli::run(command)?),
        Command::Audit {
            command: AuditCommand::Trust(command),
        } => Ok(appliance::audit::cli::run(command).await?),
        Command::Audit {
            command:
                AuditCommand::List {
                    user,
                    since,
                    session,
                    connection,
                    kind,
                    limit,
                    json,
                    config,
                },
        } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            let db = cfg.db_path();
            if !db.exists() {
                bail!(
                    "no audit database at {} (has the appliance run with this config?)",
                    db.display()
                );
            }
            let kind = match kind {
                Some(k) => Some(AuditKind::from_name(&k).with_context(|| {
                    let names: Vec<&str> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
                    format!("unknown --kind {k:?}; one of: {}", names.join(", "))
                })?),
                None => None,
            };
            let since_ms = match since {
                Some(s) => Some(audit::parse_since(&s, audit::now_ms())?),
                None => None,
            };
            let filter = AuditFilter {
                user,
                session_id: session,
                since_ms,
                kind,
                connection,
                limit,
            };
            let records = audit::query(&db, &filter)?;
            if json {
                print!("{}", audit::format_ndjson(&records));
            } else {
                print!("{}", audit::format_table(&records));
            }
            Ok(())
        }
        Command::Approvals { command } => Ok(appliance::approvals::cli::run(command).await?),
        Command::Recordings { command } => Ok(appliance::proxy::ssh::recordings_command(command)?),
        Command::Fingerprint { config } => {
            let cfg = RuntimeConfig::load(config.as_deref())?;
            ensure_private_dir(&cfg.data_dir)?;
            let tls = appliance::tls::TlsIdentity::load_or_generate(&cfg)?;
            println!("{}", tls.fingerprint);
            Ok(())
        }
    }
}

fn policy_command(command: PolicyCommand) -> Result<()> {
    match command {
        PolicyCommand::Keygen { out } => {
            let (key, public) = policy::keygen(&out)?;
            println!("secret key: {} (keep it offline; mode 0600)", key.display());
            println!("public key: {}", public.display());
            let pubkey = std::fs::read_to_string(&public)?;
            if let Some(line) = pubkey.lines().find(|l| l.starts_with("RW")) {
                println!("add to the appliance's trusted_policy_keys: {line}");
            }
            Ok(())
        }
        PolicyCommand::Sign { key, file } => {
            let sig = policy::sign_file(&key, &file)?;
            println!("wrote {}", sig.display());
            Ok(())
        }
        PolicyCommand::Verify { pubkey, file } => {
            let key = policy::TrustedKey::from_str_or_file(&pubkey)?;
            policy::verify_file(&key, &file)?;
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed = policy::parse_policy(&text)?;
            println!(
                "{}: signature OK (key id {}), policy version {} valid",
                file.display(),
                key.key_id_hex(),
                parsed.version
            );
            Ok(())
        }
        PolicyCommand::Check { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed = policy::parse_policy(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            println!(
                "{}: valid policy version {} with {} connection(s)",
                file.display(),
                parsed.version,
                parsed.connections.len()
            );
            Ok(())
        }
    }
}

fn ensure_private_dir(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}

/// Who ran this command, for the audit trail.
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user} (appliance CLI)")
}

/// Appends one record through the same writer the server uses.
async fn write_audit(cfg: &RuntimeConfig, rec: AuditRecord) -> Result<()> {
    let (handle, writer) = audit::spawn_writer(AuditConfig {
        db_path: cfg.db_path(),
        queue_capacity: 16,
        max_batch: 16,
        checkpoint_key: None,
    })?;
    handle.record(rec).await?;
    handle.flush().await?;
    drop(handle);
    writer.join().await?;
    Ok(())
}
