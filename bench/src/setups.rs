//! The compared setups, each ending at the harness's upstream:
//!
//! - direct: the client connects to the upstream itself;
//! - socat: a `socat` relay process (the dumb-proxy floor);
//! - tunnel: tunnel-lite's loopback listener -> TLS tunnel -> appliance ->
//!   upstream (`kind = "tcp"`), both as the release binaries, set up with the
//!   same CLI commands an operator and a user type.
//!
//! Every child process is killed when its guard drops (also on error or
//! panic); each stack lives in its own temp dir, removed on drop.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::sysinfo::{free_port, is_listening, localhost};
use crate::{dns, upstream};

/// The product binaries and socat, found and checked before anything runs.
#[derive(Debug, Clone)]
pub struct Bins {
    pub appliance: PathBuf,
    pub tunnel_lite: PathBuf,
    pub socat: PathBuf,
    /// Sources newer than the binaries (a stale build measures old code).
    pub stale: Vec<String>,
}

impl Bins {
    pub fn locate(workspace: &Path) -> Result<Bins> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        if let Ok(exe) = std::env::current_exe() {
            if let Some(d) = exe.parent() {
                if d.ends_with("release") {
                    dirs.push(d.to_path_buf());
                }
            }
        }
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            dirs.push(PathBuf::from(t).join("release"));
        }
        dirs.push(workspace.join("target").join("release"));
        let find = |name: &str| -> Result<PathBuf> {
            dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()).with_context(|| {
                format!(
                    "the release binary `{name}` is missing (looked in {}).\n\
                     Build the binaries first, from the workspace root:\n    cargo build --release --bins",
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
                )
            })
        };
        let appliance = find("appliance")?;
        let tunnel_lite = find("tunnel-lite")?;
        let socat = crate::sysinfo::which("socat").context(
            "socat is not installed; it is the relay the tunnel is compared with.\n\
             Install it (Debian): apt-get install -y socat",
        )?;
        let mut stale = Vec::new();
        for (bin, srcs) in [
            (&appliance, ["appliance", "tunnel-lite"].as_slice()),
            (&tunnel_lite, ["tunnel-lite"].as_slice()),
        ] {
            let built = mtime(bin);
            for src in srcs {
                if let Some((path, t)) = newest_file(&workspace.join(src).join("src")) {
                    if t > built {
                        stale.push(format!(
                            "{} is older than {}",
                            bin.display(),
                            path.display()
                        ));
                    }
                }
            }
        }
        Ok(Bins {
            appliance,
            tunnel_lite,
            socat,
            stale,
        })
    }
}

fn mtime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.modified())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn newest_file(dir: &Path) -> Option<(PathBuf, SystemTime)> {
    let mut best: Option<(PathBuf, SystemTime)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let p = entry.path();
        let cand = if p.is_dir() {
            newest_file(&p)
        } else {
            Some((p.clone(), mtime(&p)))
        };
        if let Some(c) = cand {
            if best.as_ref().is_none_or(|b| c.1 > b.1) {
                best = Some(c);
            }
        }
    }
    best
}

/// A child process, killed when dropped.
pub struct Proc {
    pub name: &'static str,
    pub pid: u32,
    pub log: PathBuf,
    child: tokio::process::Child,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut tokio::process::Command, log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log).with_context(|| log.display().to_string())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let pid = child.id().context("child has no pid")?;
        Ok(Proc {
            name,
            pid,
            log,
            child,
        })
    }

    /// Fails (with the log's tail) if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ({}):\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

pub fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// Runs a short command to completion; returns its stdout or fails with all output.
fn run(cmd: &mut std::process::Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `socat` relay to the upstream.
pub struct Socat {
    pub addr: SocketAddr,
    pub command: String,
    pub proc: Proc,
    _dir: tempfile::TempDir,
}

impl Socat {
    pub async fn start(bins: &Bins, upstream: SocketAddr) -> Result<Socat> {
        let dir = tempfile::Builder::new().prefix("bench-socat-").tempdir()?;
        let port = free_port()?;
        let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork");
        let connect = format!("TCP:{upstream}");
        let command = format!("socat {listen} {connect}");
        let mut proc = Proc::spawn(
            "socat",
            tokio::process::Command::new(&bins.socat).args([&listen, &connect]),
            dir.path().join("socat.log"),
        )?;
        let addr = localhost(port);
        wait_until(Duration::from_secs(10), || {
            is_listening(SocketAddrV4::new([127, 0, 0, 1].into(), port))
        })
        .await
        .with_context(|| format!("socat never listened on {addr}"))?;
        proc.check_alive()?;
        Ok(Socat {
            addr,
            command,
            proc,
            _dir: dir,
        })
    }
}

/// User and group the bench policy allows.
const USER: &str = "bench@example.com";
const GROUP: &str = "bench";

/// appliance + tunnel-lite, logged in, with one `kind = "tcp"` connection to
/// the upstream; `addr` is tunnel-lite's loopback listener for it.
pub struct TunnelStack {
    pub addr: SocketAddr,
    pub appliance: Proc,
    pub tunnel_lite: Proc,
    /// The commands that built this stack, in order, for the report.
    pub commands: Vec<String>,
    pub policy: String,
    pub appliance_config: String,
    _dir: tempfile::TempDir,
}

impl TunnelStack {
    /// Starts both processes and waits until tunnel-lite listens for the
    /// connection, without opening any tunnel (so idle RSS is truly idle).
    pub async fn start(bins: &Bins, upstream: SocketAddr, name: &str) -> Result<TunnelStack> {
        Self::start_with(bins, upstream, name, &[]).await
    }

    /// [`Self::start`] with extra arguments for `tunnel-lite up`.
    pub async fn start_with(
        bins: &Bins,
        upstream: SocketAddr,
        name: &str,
        up_extra: &[&str],
    ) -> Result<TunnelStack> {
        let dir = tempfile::Builder::new().prefix("bench-tunnel-").tempdir()?;
        let d = dir.path();
        let mut commands = Vec::new();
        let appl = |args: &[&str]| {
            let mut c = std::process::Command::new(&bins.appliance);
            c.args(args);
            c
        };
        let show = |args: &[&str]| format!("appliance {}", args.join(" "));

        // Policy signing key, runtime config, signed policy in the policy dir.
        let keys = d.join("keys");
        let keys_s = keys.display().to_string();
        run(&mut appl(&["policy", "keygen", "--out", &keys_s]))?;
        commands.push(show(&["policy", "keygen", "--out", &keys_s]));
        let listen = localhost(free_port()?);
        let config = d.join("appliance.toml");
        let config_s = config.display().to_string();
        let appliance_config = format!(
            "listen = \"{listen}\"\ndata_dir = \"data\"\ntrusted_policy_keys = [{:?}]\n",
            keys.join("policy.pub").display().to_string()
        );
        std::fs::write(&config, &appliance_config)?;
        let policy_dir = d.join("data").join("policy");
        std::fs::create_dir_all(&policy_dir)?;
        let lport = free_port()?;
        let policy = policy_text(name, upstream, lport);
        let policy_file = policy_dir.join("policy.toml");
        std::fs::write(&policy_file, &policy)?;
        let key_s = keys.join("policy.key").display().to_string();
        let policy_s = policy_file.display().to_string();
        run(&mut appl(&["policy", "sign", "--key", &key_s, &policy_s]))?;
        commands.push(show(&["policy", "sign", "--key", &key_s, &policy_s]));

        // A session token and the certificate fingerprint, from the CLI.
        let token_args = [
            "token", "issue", "--user", USER, "--groups", GROUP, "--ttl", "8h", "--config",
            &config_s,
        ];
        let token = run(&mut appl(&token_args))?.trim().to_string();
        commands.push(show(&token_args));
        let fp_args = ["fingerprint", "--config", &config_s];
        let fingerprint = run(&mut appl(&fp_args))?.trim().to_string();
        commands.push(show(&fp_args));

        let serve_args = ["serve", "--config", &config_s];
        let mut appliance = Proc::spawn(
            "appliance",
            tokio::process::Command::new(&bins.appliance).args(serve_args),
            d.join("appliance.log"),
        )?;
        commands.push(show(&serve_args));
        let SocketAddr::V4(listen_v4) = listen else {
            unreachable!("listen is 127.0.0.1")
        };
        if wait_until(Duration::from_secs(20), || is_listening(listen_v4))
            .await
            .is_err()
        {
            appliance.check_alive()?;
            bail!(
                "the appliance never listened on {listen}; log:\n{}",
                tail(&appliance.log)
            );
        }

        // tunnel-lite: login with the minted token, then `up`.
        let tl_dir = d.join("tunnel-lite");
        let tl_dir_s = tl_dir.display().to_string();
        let token_file = d.join("token");
        std::fs::write(&token_file, &token)?;
        let token_file_s = token_file.display().to_string();
        let listen_s = listen.to_string();
        let login_args = [
            "--config-dir",
            &tl_dir_s,
            "login",
            "--appliance",
            &listen_s,
            "--fingerprint",
            &fingerprint,
            "--session-token-file",
            &token_file_s,
        ];
        run(std::process::Command::new(&bins.tunnel_lite).args(login_args))?;
        commands.push(format!("tunnel-lite {}", login_args.join(" ")));
        let dns_at = localhost(free_port()?);
        let dns_s = dns_at.to_string();
        let mut up_args = vec!["--config-dir", &tl_dir_s, "up", "--dns-listen", &dns_s];
        up_args.extend_from_slice(up_extra);
        let mut tunnel_lite = Proc::spawn(
            "tunnel-lite",
            tokio::process::Command::new(&bins.tunnel_lite).args(&up_args),
            d.join("tunnel-lite.log"),
        )?;
        commands.push(format!("tunnel-lite {}", up_args.join(" ")));

        let fqdn = format!("{name}.hoop");
        let ip = match dns::wait_for_a(dns_at, &fqdn, Duration::from_secs(20)).await {
            Ok(ip) => ip,
            Err(e) => {
                tunnel_lite.check_alive()?;
                bail!("{e:#}; tunnel-lite log:\n{}", tail(&tunnel_lite.log));
            }
        };
        let at = SocketAddrV4::new(ip, lport);
        if wait_until(Duration::from_secs(20), || is_listening(at))
            .await
            .is_err()
        {
            tunnel_lite.check_alive()?;
            bail!(
                "tunnel-lite never listened on {at}; log:\n{}",
                tail(&tunnel_lite.log)
            );
        }
        Ok(TunnelStack {
            addr: SocketAddr::V4(at),
            appliance,
            tunnel_lite,
            commands,
            policy,
            appliance_config,
            _dir: dir,
        })
    }

    /// One echo round trip end to end; fails with both logs if the path is broken.
    pub async fn verify(&mut self) -> Result<()> {
        let r = tokio::time::timeout(Duration::from_secs(10), echo_once(self.addr)).await;
        match r {
            Ok(Ok(())) => Ok(()),
            other => {
                self.appliance.check_alive()?;
                self.tunnel_lite.check_alive()?;
                let why = match other {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => "timed out".into(),
                };
                bail!(
                    "no echo through the tunnel at {} ({why}).\nappliance log:\n{}\ntunnel-lite log:\n{}",
                    self.addr,
                    tail(&self.appliance.log),
                    tail(&self.tunnel_lite.log)
                )
            }
        }
    }

    pub fn check_alive(&mut self) -> Result<()> {
        self.appliance.check_alive()?;
        self.tunnel_lite.check_alive()
    }

    pub async fn stop(self) {
        self.tunnel_lite.stop().await;
        self.appliance.stop().await;
    }
}

/// The signed policy: one tcp connection for the bench user.
fn policy_text(name: &str, upstream: SocketAddr, port: u16) -> String {
    format!(
        r#"version = 1
dns_suffix = "hoop"

[identity]
issuer = "https://idp.bench"
audience = "appliance"
jwks = '{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"bench"}}]}}'
session_ttl = "8h"

[[connection]]
name = "{name}"
kind = "tcp"
upstream = "{upstream}"
ports = [{port}]
allow_users = ["{USER}"]
allow_groups = ["{GROUP}"]
"#
    )
}

/// Connect, send ECHO plus one byte, read it back.
pub async fn echo_once(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(&[upstream::ECHO, 7]).await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    if b[0] != 7 {
        bail!("echo returned {:#x}", b[0]);
    }
    Ok(())
}

async fn wait_until(within: Duration, mut check: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
