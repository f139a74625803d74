//! The appliance as a real process (`appliance serve`) for the audit tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tunnel_lite::client::ApplianceClient;
use tunnel_lite::tls::{parse_fingerprint, Trust};

/// The appliance as a child process with its own dir, config and policy key.
pub struct Proc {
    pub dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
    admin: u16,
    policy_key: PathBuf,
    child: Option<tokio::process::Child>,
}

impl Proc {
    pub fn new(extra_config: &str, secrets: &[(&str, &str)]) -> Proc {
        let dir = tempfile::Builder::new()
            .prefix("e2e-audit-")
            .tempdir()
            .expect("tempdir");
        let (policy_key, pubkey) =
            appliance::policy::keygen(&dir.path().join("keys")).expect("keygen");
        let (port, admin) = (e2e::free_port(), e2e::free_port());
        let secrets_body: String = secrets
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.path().join("secrets.toml"))
                .expect("secrets");
            f.write_all(secrets_body.as_bytes()).expect("write secrets");
        }
        let config = dir.path().join("appliance.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\nsecrets_file = \"secrets.toml\"\n\
                 trusted_policy_keys = [{:?}]\nadmin_listen = \"127.0.0.1:{admin}\"\n\
                 policy_poll_interval = \"100ms\"\naudit_checkpoint_interval = \"500ms\"\n{extra_config}",
                pubkey.display().to_string()
            ),
        )
        .expect("config");
        std::fs::create_dir_all(dir.path().join("data/policy")).expect("policy dir");
        Proc {
            dir,
            config,
            port,
            admin,
            policy_key,
            child: None,
        }
    }

    pub fn install_policy(&self, text: &str) {
        let sig = appliance::policy::sign_bytes(&self.policy_key, text.as_bytes(), "policy.toml")
            .expect("sign");
        let d = self.dir.path().join("data/policy");
        std::fs::write(d.join("policy.toml.minisig"), sig).expect("sig");
        std::fs::write(d.join("policy.toml"), text).expect("policy");
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/appliance.db")
    }

    pub async fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("serve.log"))
            .expect("log");
        let child = tokio::process::Command::new(e2e::bin("appliance"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .env("APPLIANCE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn appliance");
        self.child = Some(child);
        e2e::wait_for_port(([127, 0, 0, 1], self.admin).into(), Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log()));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }

    /// SIGTERM, then wait.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            let _ = tokio::time::timeout(Duration::from_secs(15), c.wait()).await;
        }
    }

    /// SIGKILL: no shutdown code runs.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(e2e::bin("appliance"));
        cmd.args(args).arg("--config").arg(&self.config);
        e2e::run(&mut cmd, false)
    }

    pub fn client(&self) -> ApplianceClient {
        let out = self.cli(&["fingerprint"]);
        let fp = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let trust = Trust::Pinned(parse_fingerprint(&fp).expect("fingerprint"));
        ApplianceClient::new(&format!("127.0.0.1:{}", self.port), &trust).expect("client")
    }

    pub fn token(&self, user: &str) -> String {
        let out = self.cli(&["token", "issue", "--user", user, "--ttl", "1h"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.admin))
            .await
            .expect("admin");
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut buf = String::new();
        s.read_to_string(&mut buf).await.expect("read");
        let code = buf.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (code, body)
    }
}
