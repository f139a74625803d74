//! `tunnel-lite`: the command-line edge of the laptop daemon.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use tunnel_lite::client::ApplianceClient;
use tunnel_lite::daemon::{self, UpOptions};
use tunnel_lite::state::{self, now_unix, State, TrustSpec};
use tunnel_lite::{addr, dns_setup, login, tls};

#[derive(Parser)]
#[command(
    name = "tunnel-lite",
    version,
    about = "Reach production through the access appliance: DNS for *.hoop names, local listeners, one TLS stream per connection"
)]
struct Cli {
    /// Where the session token and settings live (default: $XDG_CONFIG_HOME/tunnel-lite or ~/.config/tunnel-lite).
    #[arg(long, global = true, env = "TUNNEL_LITE_CONFIG_DIR")]
    config_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in: exchange an IdP identity for an appliance session token.
    Login {
        /// The appliance's TLS address, HOST:PORT.
        #[arg(long)]
        appliance: String,
        /// SHA-256 fingerprint of the appliance certificate (printed by `appliance serve` and `appliance fingerprint`).
        #[arg(long, conflicts_with = "ca_file")]
        fingerprint: Option<String>,
        /// CA certificate(s) that issued the appliance's certificate (PEM).
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Use this OIDC ID token instead of the device flow (scripts, air-gapped sites).
        #[arg(long, conflicts_with = "session_token_file")]
        id_token_file: Option<PathBuf>,
        /// Use a session token minted with `appliance token issue`.
        #[arg(long)]
        session_token_file: Option<PathBuf>,
    },
    /// Run in the foreground: DNS, loopback listeners, tunnels.
    Up {
        /// DNS responder address (UDP and TCP), or `off`.
        #[arg(long, default_value = "127.77.0.53:53")]
        dns_listen: String,
        /// How often to re-read the connection list.
        #[arg(long, default_value = "10s")]
        refresh: String,
        /// Don't keep a spare connection to the appliance handshaken after
        /// each tunnel opens (the next tunnel then does its own TLS handshake).
        #[arg(long)]
        no_spare: bool,
    },
    /// Show who you are, the token's expiry, and the names you can reach.
    Status,
    /// List, approve and deny statements, requests and commands held for approval.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Print (or, with --apply, install) the split-DNS configuration for *.SUFFIX.
    DnsSetup {
        /// Write the files and run the commands (needs root).
        #[arg(long)]
        apply: bool,
        /// Address of tunnel-lite's DNS responder.
        #[arg(long, default_value = "127.77.0.53:53")]
        dns_listen: SocketAddrV4,
        /// Apply under this directory instead of / (for testing the output).
        #[arg(long, default_value = "/", hide = true)]
        root: PathBuf,
        /// The binary that needs cap_net_bind_service (default: this one).
        #[arg(long, hide = true)]
        binary: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Held requests you may decide (and your own, waiting): id, requester,
    /// connection, kind, text, age, expires in.
    List {
        /// The appliance's JSON answer instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Approve a held request (never your own): it runs.
    Approve {
        id: String,
        /// An optional note for the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Deny a held request: the requester sees your name and the reason.
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[cfg(feature = "count-alloc")]
#[global_allocator]
static GLOBAL: tunnel_lite::alloc_count::CountingAlloc = tunnel_lite::alloc_count::CountingAlloc;

fn main() {
    let cli = Cli::parse();
    tunnel_lite::logging::init("TUNNEL_LITE_LOG", "info", false);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tunnel-lite: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    #[cfg(feature = "count-alloc")]
    runtime.spawn(tunnel_lite::alloc_count::report_on_sigusr1());
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("tunnel-lite: {e:#}");
        std::process::exit(1);
    }
}

async fn run(cli: Cli) -> Result<()> {
    let dir = match cli.config_dir {
        Some(d) => d,
        None => state::default_dir()?,
    };
    match cli.command {
        Command::Login {
            appliance,
            fingerprint,
            ca_file,
            id_token_file,
            session_token_file,
        } => {
            let trust = match (fingerprint, ca_file) {
                (Some(fp), _) => {
                    tls::parse_fingerprint(&fp)?;
                    TrustSpec::Fingerprint(fp.trim().to_string())
                }
                (None, Some(ca)) => TrustSpec::CaFile(std::path::absolute(&ca)?),
                (None, None) => match State::load(&dir) {
                    Ok(prev) if prev.appliance == appliance => prev.trust,
                    _ => bail!("say how to trust the appliance: --fingerprint (from `appliance fingerprint`) or --ca-file"),
                },
            };
            let client = ApplianceClient::new(&appliance, &trust.to_trust()?)?;
            let session_token = if let Some(f) = session_token_file {
                read_token(&f)?
            } else {
                let id_token = match id_token_file {
                    Some(f) => read_token(&f)?,
                    None => device_flow(&client).await?,
                };
                client.login(&id_token).await?.session_token
            };
            let list = client
                .connections(&session_token)
                .await
                .context("the appliance did not accept the session token")?;
            let st = State {
                appliance,
                trust,
                session_token,
                user: list.user.clone(),
                groups: list.groups.clone(),
                expires_at: list.token_expires_at,
                dns_suffix: Some(list.dns_suffix.clone()),
                connections: list.connections.clone(),
            };
            st.save(&dir)?;
            println!(
                "logged in as {} (groups: {}) until {}; {} connection(s) available",
                st.user,
                if st.groups.is_empty() {
                    "-".into()
                } else {
                    st.groups.join(", ")
                },
                format_unix(st.expires_at),
                st.connections.len()
            );
            println!("state saved in {}", dir.join(state::STATE_FILE).display());
            Ok(())
        }
        Command::Up {
            dns_listen,
            refresh,
            no_spare,
        } => {
            let dns_listen = match dns_listen.as_str() {
                "off" | "none" => None,
                s => Some(
                    s.parse::<SocketAddr>()
                        .with_context(|| format!("--dns-listen {s:?}"))?,
                ),
            };
            let refresh_every = humantime::parse_duration(&refresh)
                .with_context(|| format!("--refresh {refresh:?}"))?;
            let running = daemon::start(UpOptions {
                config_dir: dir,
                dns_listen,
                refresh_every,
                spare: !no_spare,
            })
            .await?;
            running.wait_for_signal().await;
            Ok(())
        }
        Command::Status => status(&dir).await,
        Command::Approvals { command } => approvals(&dir, command).await,
        Command::DnsSetup {
            apply,
            dns_listen,
            root,
            binary,
        } => {
            let st = State::load(&dir).ok();
            let suffix = st
                .as_ref()
                .and_then(|s| s.dns_suffix.clone())
                .unwrap_or_else(|| "hoop".into());
            let connections = st.map(|s| s.connections).unwrap_or_default();
            let names: Vec<String> = connections.iter().map(|c| c.name.clone()).collect();
            let addrs: Vec<Ipv4Addr> = addr::assign(&names).into_values().collect();
            let low_ports = dns_listen.port() < 1024
                || connections
                    .iter()
                    .any(|c| c.ports.iter().any(|p| *p < 1024));
            let binary = match binary {
                Some(b) => b,
                None => std::env::current_exe().context("locating this binary")?,
            };
            let plan = dns_setup::plan(
                dns_setup::detect_os(),
                &suffix,
                dns_listen,
                &addrs,
                &binary,
                low_ports,
            );
            let mut plan = plan;
            let host_keys = ssh_host_keys(&dir).await;
            dns_setup::add_ssh_known_hosts(&mut plan, &suffix, &host_keys);
            print!("{}", dns_setup::render(&plan));
            if apply {
                for line in dns_setup::apply(&plan, &root)? {
                    println!("{line}");
                }
            } else {
                println!("(dry run: re-run with --apply, as root, to make these changes)");
            }
            Ok(())
        }
    }
}

/// `tunnel-lite approvals ...` with the stored session token.
async fn approvals(dir: &std::path::Path, command: ApprovalsCommand) -> Result<()> {
    let st = State::load(dir)?;
    let client = ApplianceClient::new(&st.appliance, &st.trust.to_trust()?)?;
    let (id, approve, reason) = match command {
        ApprovalsCommand::List { json } => {
            let list = client.approvals(&st.session_token).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.approvals.is_empty() {
                println!("no requests waiting for a decision");
            } else {
                print!("{}", list.to_table());
            }
            return Ok(());
        }
        ApprovalsCommand::Approve { id, reason } => (id, true, reason),
        ApprovalsCommand::Deny { id, reason } => (id, false, Some(reason)),
    };
    let a = client
        .decide_approval(&st.session_token, &id, approve, reason.as_deref())
        .await?;
    println!(
        "{} {}: {} by {} on {}: {}",
        if approve { "approved" } else { "denied" },
        a.id,
        a.kind,
        a.user,
        a.connection,
        tunnel_lite::api::shorten(&a.text, 72)
    );
    Ok(())
}

/// The appliance's SSH host keys (empty, with a note, if it cannot be asked).
async fn ssh_host_keys(dir: &std::path::Path) -> Vec<String> {
    let Ok(st) = State::load(dir) else {
        return Vec::new();
    };
    let info = async {
        ApplianceClient::new(&st.appliance, &st.trust.to_trust()?)?
            .info()
            .await
            .map_err(anyhow::Error::from)
    };
    match tokio::time::timeout(Duration::from_secs(5), info).await {
        Ok(Ok(i)) => i.ssh_host_keys,
        Ok(Err(e)) => {
            eprintln!("note: SSH host keys not installed: asking the appliance failed: {e:#}");
            Vec::new()
        }
        Err(_) => {
            eprintln!("note: SSH host keys not installed: the appliance did not answer");
            Vec::new()
        }
    }
}

fn read_token(path: &std::path::Path) -> Result<String> {
    let t = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let t = t.trim().to_string();
    if t.is_empty() {
        bail!("{} is empty", path.display());
    }
    Ok(t)
}

async fn device_flow(client: &ApplianceClient) -> Result<String> {
    let info = client.info().await?;
    let Some(flow) = info.device_flow else {
        bail!("the appliance's policy configures no device flow; use --id-token-file or --session-token-file");
    };
    let token = login::device_login(&flow, None, |p| {
        eprintln!();
        match &p.verification_uri_complete {
            Some(uri) => eprintln!("To log in, open {uri}"),
            None => eprintln!("To log in, open {}", p.verification_uri),
        }
        eprintln!("and confirm the code: {}", p.user_code);
        eprintln!("(waiting up to {} s)", p.expires_in);
    })
    .await?;
    Ok(token)
}

fn format_unix(t: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_secs(t.min(253_402_300_799));
    humantime::format_rfc3339_seconds(t).to_string()
}

async fn status(dir: &std::path::Path) -> Result<()> {
    let st = State::load(dir)?;
    let now = now_unix();
    println!("appliance:   {}", st.appliance);
    match &st.trust {
        TrustSpec::Fingerprint(fp) => println!("trust:       pinned certificate SHA-256 {fp}"),
        TrustSpec::CaFile(p) => println!("trust:       CA file {}", p.display()),
    }
    println!(
        "user:        {} (groups: {})",
        st.user,
        if st.groups.is_empty() {
            "-".into()
        } else {
            st.groups.join(", ")
        }
    );
    if st.is_expired(now) {
        println!(
            "token:       EXPIRED at {}; run `tunnel-lite login`",
            format_unix(st.expires_at)
        );
    } else {
        let left = humantime::format_duration(Duration::from_secs(st.expires_at - now));
        println!(
            "token:       valid until {} ({left} left)",
            format_unix(st.expires_at)
        );
    }
    let client = ApplianceClient::new(&st.appliance, &st.trust.to_trust()?)?;
    let started = Instant::now();
    let (reachable, connections, suffix) = match client.connections(&st.session_token).await {
        Ok(list) => {
            println!(
                "reachable:   yes ({} ms, policy version {})",
                started.elapsed().as_millis(),
                list.policy_version
            );
            (true, list.connections, list.dns_suffix)
        }
        Err(e) => {
            println!("reachable:   NO: {e}");
            (
                false,
                st.connections.clone(),
                st.dns_suffix.clone().unwrap_or_else(|| "hoop".into()),
            )
        }
    };
    let names: Vec<String> = connections.iter().map(|c| c.name.clone()).collect();
    let addrs = addr::assign(&names);
    println!("connections{}:", if reachable { "" } else { " (cached)" });
    for c in &connections {
        let ip = addrs
            .get(&c.name.to_ascii_lowercase())
            .map(|ip| ip.to_string())
            .unwrap_or_else(|| "-".into());
        let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
        println!(
            "  {:<24} {:<14} {:<8} ports {}",
            format!("{}.{}", c.name, suffix),
            ip,
            c.kind,
            ports.join(",")
        );
    }
    if reachable {
        if let Ok(info) = client.info().await {
            for key in &info.ssh_host_keys {
                let alg = key.split_whitespace().next().unwrap_or("?");
                let fp = dns_setup::ssh_fingerprint(key).unwrap_or_else(|| "?".into());
                println!("ssh host key: {fp} ({alg})");
            }
        }
    }
    Ok(())
}
