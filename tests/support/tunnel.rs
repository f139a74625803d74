//! tunnel-lite as users run it: the real binary, logged in through the real
//! CLI, `up` as a child process (killed on drop) with its DNS responder on a
//! free port.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::appliance::ApplianceFixture;

pub struct TunnelLite {
    pub config_dir: tempfile::TempDir,
    pub dns: SocketAddr,
    child: Child,
    log: PathBuf,
}

/// Runs `tunnel-lite login` with a session token; returns the config dir.
pub fn login_with_token(app: &ApplianceFixture, token: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("e2e-tl-")
        .tempdir()
        .expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, token).expect("token file");
    crate::run(
        std::process::Command::new(crate::bin("tunnel-lite"))
            .arg("--config-dir")
            .arg(dir.path())
            .args([
                "login",
                "--appliance",
                &app.addr.to_string(),
                "--fingerprint",
                &app.fingerprint,
            ])
            .arg("--session-token-file")
            .arg(&token_file),
        true,
    );
    dir
}

impl TunnelLite {
    /// Logs in with `token` and starts `tunnel-lite up`.
    pub async fn start(app: &ApplianceFixture, token: &str) -> TunnelLite {
        let dir = login_with_token(app, token);
        Self::up(dir).await
    }

    pub async fn up(config_dir: tempfile::TempDir) -> TunnelLite {
        let port = crate::free_port();
        let dns: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = config_dir.path().join("up.log");
        let child = Command::new(crate::bin("tunnel-lite"))
            .arg("--config-dir")
            .arg(config_dir.path())
            .args(["up", "--dns-listen", &dns.to_string(), "--refresh", "500ms"])
            .env("TUNNEL_LITE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tunnel-lite up");
        let t = TunnelLite {
            config_dir,
            dns,
            child,
            log,
        };
        if crate::wait_for_port(dns, Duration::from_secs(10))
            .await
            .is_err()
        {
            panic!("tunnel-lite up did not start:\n{}", t.log());
        }
        t
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The loopback address tunnel-lite gives `name` (same assignment as the daemon).
    pub fn address_of(&self, name: &str) -> Ipv4Addr {
        address_in(self.config_dir.path(), name)
    }

    /// Waits until tunnel-lite listens for `name` on `port`; returns the address.
    pub async fn wait_listening(&self, name: &str, port: u16) -> SocketAddr {
        let mut last = None;
        for _ in 0..200 {
            let ip = address_in(self.config_dir.path(), name);
            let at = SocketAddr::from((ip, port));
            if tokio::net::TcpStream::connect(at).await.is_ok() {
                return at;
            }
            last = Some(at);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!(
            "tunnel-lite never listened on {last:?} for {name}:\n{}",
            self.log()
        );
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn address_in(config_dir: &Path, name: &str) -> Ipv4Addr {
    let state = tunnel_lite::state::State::load(config_dir).expect("tunnel-lite state");
    let names: Vec<String> = state.connections.iter().map(|c| c.name.clone()).collect();
    *tunnel_lite::addr::assign(&names)
        .get(&name.to_ascii_lowercase())
        .unwrap_or_else(|| panic!("{name} is not in tunnel-lite's connection list"))
}
