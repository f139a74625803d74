//! The appliance, in-process on 127.0.0.1:0, with its own data dir, a fresh
//! policy signing key, and a config file so the real `appliance` CLI can act
//! on the same state (revoke, audit list, token issue).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use appliance::audit::{self, AuditFilter, AuditKind, StoredRecord};
use appliance::config::RuntimeConfig;
use appliance::identity::Identity;
use appliance::server::Running;

pub struct ApplianceFixture {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub cfg: RuntimeConfig,
    /// minisign secret and public key trusted by this appliance.
    pub key: PathBuf,
    pub pubkey: PathBuf,
    pub addr: SocketAddr,
    pub fingerprint: String,
    running: Option<Running>,
}

/// A minimal valid policy: `version`, identity with an inline JWKS, and the
/// given `[[connection]]` tables.
pub fn policy_with(version: u64, connections: &str) -> String {
    format!(
        r#"version = {version}
dns_suffix = "hoop"

[identity]
issuer = "https://idp.test"
audience = "appliance"
jwks = '{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"test"}}]}}'
session_ttl = "1h"

{connections}
"#
    )
}

/// One `kind = "tcp"` connection table.
pub fn tcp_connection(
    name: &str,
    upstream: &str,
    ports: &[u16],
    users: &[&str],
    groups: &[&str],
) -> String {
    let list = |v: &[&str]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    format!(
        "[[connection]]\nname = {name:?}\nkind = \"tcp\"\nupstream = {upstream:?}\nports = [{}]\nallow_users = [{}]\nallow_groups = [{}]\n\n",
        ports.join(", "),
        list(users),
        list(groups)
    )
}

impl ApplianceFixture {
    /// Starts with `policy` installed (signed with the fixture's key).
    pub async fn start(policy: &str) -> ApplianceFixture {
        Self::start_with(Some(policy), "").await
    }

    /// Starts with `policy` and a secrets file (mode 0600) holding `secrets`.
    pub async fn start_with_secrets(policy: &str, secrets: &[(&str, &str)]) -> ApplianceFixture {
        let body: String = secrets
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}\n"))
            .collect();
        Self::start_full(
            Some(policy),
            "secrets_file = \"secrets.toml\"\n",
            Some(&body),
        )
        .await
    }

    /// `extra_config` is appended to the runtime config file.
    pub async fn start_with(policy: Option<&str>, extra_config: &str) -> ApplianceFixture {
        Self::start_full(policy, extra_config, None).await
    }

    async fn start_full(
        policy: Option<&str>,
        extra_config: &str,
        secrets: Option<&str>,
    ) -> ApplianceFixture {
        let dir = tempfile::Builder::new()
            .prefix("e2e-appliance-")
            .tempdir()
            .expect("tempdir");
        let keys = dir.path().join("keys");
        let (key, pubkey) = appliance::policy::keygen(&keys).expect("policy keygen");
        let config_path = dir.path().join("appliance.toml");
        std::fs::write(
            &config_path,
            format!(
                "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\ntrusted_policy_keys = [{:?}]\n\
                 policy_poll_interval = \"100ms\"\nrevocation_poll_interval = \"100ms\"\nheader_timeout = \"2s\"\n{extra_config}",
                pubkey.display().to_string()
            ),
        )
        .expect("write config");
        if let Some(body) = secrets {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(dir.path().join("secrets.toml"))
                .expect("secrets file");
            f.write_all(body.as_bytes()).expect("write secrets");
        }
        let cfg = RuntimeConfig::load(Some(&config_path)).expect("config");
        std::fs::create_dir_all(&cfg.policy_dir).expect("policy dir");
        let mut fixture = ApplianceFixture {
            dir,
            config_path,
            cfg: cfg.clone(),
            key,
            pubkey,
            addr: "127.0.0.1:0".parse().expect("addr"),
            fingerprint: String::new(),
            running: None,
        };
        if let Some(p) = policy {
            fixture.install_policy(p);
        }
        let running = appliance::server::start(cfg)
            .await
            .expect("appliance starts");
        fixture.addr = running.addr;
        fixture.fingerprint = running.fingerprint.clone();
        fixture.running = Some(running);
        fixture
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("appliance is running")
    }

    /// Signs `policy` with the trusted key and drops it into the policy dir.
    pub fn install_policy(&self, policy: &str) {
        self.install_policy_bytes(policy.as_bytes(), &self.key.clone());
    }

    /// Signs `bytes` with `key` and installs bundle and signature.
    pub fn install_policy_bytes(&self, bytes: &[u8], key: &std::path::Path) {
        let sig = appliance::policy::sign_bytes(key, bytes, "policy.toml").expect("sign");
        self.install_raw(bytes, &sig);
    }

    /// Installs bundle and signature as given (for tampering tests).
    pub fn install_raw(&self, bytes: &[u8], sig: &str) {
        let dir = &self.cfg.policy_dir;
        let tmp_t = dir.join(".policy.toml.tmp");
        let tmp_s = dir.join(".policy.toml.minisig.tmp");
        std::fs::write(&tmp_t, bytes).expect("write bundle");
        std::fs::write(&tmp_s, sig).expect("write signature");
        std::fs::rename(&tmp_s, dir.join("policy.toml.minisig")).expect("rename sig");
        std::fs::rename(&tmp_t, dir.join("policy.toml")).expect("rename bundle");
    }

    pub fn policy_version(&self) -> Option<u64> {
        self.running()
            .shared
            .policy
            .borrow()
            .as_ref()
            .map(|p| p.policy().version)
    }

    /// Waits until `version` is in force.
    pub async fn wait_policy_version(&self, version: u64) -> bool {
        crate::eventually(Duration::from_secs(5), || {
            self.policy_version() == Some(version)
        })
        .await
    }

    /// A session token minted by this appliance's key.
    pub fn token(&self, user: &str, groups: &[&str], ttl: Duration) -> String {
        let who = Identity {
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        self.running()
            .shared
            .signer
            .issue(&who, ttl)
            .expect("issue token")
    }

    /// Audit records (after flushing the queue), optionally of one kind.
    pub async fn audit(&self, kind: Option<AuditKind>) -> Vec<StoredRecord> {
        self.running()
            .shared
            .audit
            .flush()
            .await
            .expect("audit flush");
        audit::query(
            &self.cfg.db_path(),
            &AuditFilter {
                kind,
                ..Default::default()
            },
        )
        .expect("audit query")
    }

    /// Signs arbitrary claims with the appliance's own session key (to craft
    /// expired or odd tokens the API would never issue).
    pub fn sign_claims(&self, claims: &serde_json::Value) -> String {
        let pem = std::fs::read(self.cfg.session_key_path()).expect("session key");
        let key = jsonwebtoken::EncodingKey::from_ed_pem(&pem).expect("ed25519 pem");
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.running().shared.signer.key_id().to_string());
        jsonwebtoken::encode(&header, claims, &key).expect("sign claims")
    }

    /// The running appliance's approvals (file requests as a gateway would).
    pub fn approvals(&self) -> appliance::approvals::Approvals {
        self.running().shared.approvals.clone()
    }

    pub fn live_sessions(&self) -> usize {
        self.running().shared.sessions.len()
    }

    /// The `appliance` binary with `--config` pointing at this fixture.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = std::process::Command::new(crate::bin("appliance"));
        cmd.args(args).arg("--config").arg(&self.config_path);
        crate::run(&mut cmd, false)
    }

    /// Stops the appliance but keeps its data dir (for restart tests).
    pub async fn stop_keep_dir(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
        self.dir
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}
