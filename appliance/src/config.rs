//! The appliance's runtime configuration (`appliance serve --config FILE`):
//! where to listen, where state lives, which keys may sign policy bundles.
//! This is local, unsigned operator config; the policy itself is the signed
//! bundle in `policy_dir`. Relative paths are resolved against the config
//! file's directory (or the working directory for the embedded defaults).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The shortest `header_timeout` accepted: a second more than tunnel-lite
/// keeps a spare connection waiting for its header.
pub const MIN_HEADER_TIMEOUT: Duration =
    Duration::from_secs(tunnel_lite::spare::SPARE_MAX_AGE.as_secs() + 1);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(String, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(String, String),
    #[error("config file {0}: {1}")]
    Invalid(String, String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    #[serde(default)]
    trusted_policy_keys: Vec<String>,
    secrets_file: Option<PathBuf>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    #[serde(default)]
    tls_names: Vec<String>,
    audit_queue: Option<usize>,
    upstream_connect_timeout: Option<String>,
    header_timeout: Option<String>,
    policy_poll_interval: Option<String>,
    revocation_poll_interval: Option<String>,
    // Audit trail, shipping, retention, events, admin listener (see audit::settings).
    admin_listen: Option<String>,
    audit_mode: Option<String>,
    audit_queue_full: Option<String>,
    audit_checkpoint_interval: Option<String>,
    audit_retention_max_age: Option<String>,
    audit_retention_max_bytes: Option<String>,
    audit_retention_interval: Option<String>,
    audit_disk_threshold: Option<String>,
    #[serde(default)]
    audit_sink: Vec<crate::audit::ship::RawSink>,
    runbook_dir: Option<PathBuf>,
    event_concurrency: Option<usize>,
    #[cfg(feature = "bench")]
    #[serde(default)]
    bench_listener: Vec<BenchListener>,
}

/// Benchmark builds only (`--features bench`): a plain TCP listener on a
/// loopback address whose connections are admitted as `user`/`groups` to
/// `target:port`, exactly as a tunnel stream would be but without TLS and
/// the tunnel header, to measure the appliance alone.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchListener {
    pub listen: SocketAddr,
    pub target: String,
    pub port: u16,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// Validated runtime configuration with absolute paths.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// The one TLS port: tunnel streams (ALPN `tunnel-lite/1`) and the HTTPS API (ALPN `http/1.1`).
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policy_dir: PathBuf,
    /// minisign public keys (the `RW...` line or a path to a `.pub` file).
    pub trusted_policy_keys: Vec<String>,
    pub secrets_file: Option<PathBuf>,
    /// Operator-provided certificate and key (PEM); a self-signed pair is generated otherwise.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Names and IPs put in a generated certificate.
    pub tls_names: Vec<String>,
    pub audit_queue: usize,
    pub upstream_connect_timeout: Duration,
    /// Bound on TLS handshake plus tunnel header (slowloris defence).
    pub header_timeout: Duration,
    pub policy_poll_interval: Duration,
    pub revocation_poll_interval: Duration,
    /// Audit modes, checkpoints, sinks, retention, runbooks, admin listener.
    pub audit: crate::audit::settings::AuditSettings,
    /// Plain benchmark listeners (always empty unless built with `bench`).
    pub bench_listeners: Vec<BenchListener>,
}

impl RuntimeConfig {
    /// Embedded defaults: everything under `./appliance-data/`.
    pub fn defaults() -> RuntimeConfig {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::from_raw(RawConfig::default(), &cwd, "<defaults>")
            .expect("the embedded defaults are valid")
    }

    /// Loads `path`, or the embedded defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<RuntimeConfig, ConfigError> {
        let Some(path) = path else {
            return Ok(Self::defaults());
        };
        let shown = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(shown.clone(), e))?;
        let raw: RawConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Parse(shown.clone(), e.to_string()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let base = std::path::absolute(&base).unwrap_or(base);
        Self::from_raw(raw, &base, &shown)
    }

    fn from_raw(raw: RawConfig, base: &Path, shown: &str) -> Result<RuntimeConfig, ConfigError> {
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let dur =
            |key: &str, v: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
                match v {
                    None => Ok(default),
                    Some(s) => humantime::parse_duration(&s).map_err(|e| {
                        ConfigError::Invalid(shown.to_string(), format!("{key} = {s:?}: {e}"))
                    }),
                }
            };
        let data_dir = abs(raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("appliance-data")));
        let policy_dir = raw
            .policy_dir
            .map(abs)
            .unwrap_or_else(|| data_dir.join("policy"));
        if raw.tls_cert.is_some() != raw.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                shown.to_string(),
                "tls_cert and tls_key must be given together".into(),
            ));
        }
        let header_timeout = dur(
            "header_timeout",
            raw.header_timeout,
            Duration::from_secs(10),
        )?;
        if header_timeout < MIN_HEADER_TIMEOUT {
            // tunnel-lite holds a spare connection up to 1 s before its header
            // (tunnel_lite::spare); a shorter deadline would refuse spares.
            return Err(ConfigError::Invalid(
                shown.to_string(),
                format!(
                    "header_timeout = {:?} is below the minimum of {:?}",
                    header_timeout, MIN_HEADER_TIMEOUT
                ),
            ));
        }
        let tls_names = if raw.tls_names.is_empty() {
            vec!["localhost".into(), "127.0.0.1".into(), "appliance".into()]
        } else {
            raw.tls_names
        };
        #[cfg(feature = "bench")]
        let bench_listeners = {
            for b in &raw.bench_listener {
                if !b.listen.ip().is_loopback() {
                    return Err(ConfigError::Invalid(
                        shown.to_string(),
                        format!("bench_listener {} must be a loopback address", b.listen),
                    ));
                }
            }
            raw.bench_listener.clone()
        };
        #[cfg(not(feature = "bench"))]
        let bench_listeners = Vec::new();
        Ok(RuntimeConfig {
            bench_listeners,
            listen: raw
                .listen
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8443))),
            secrets_file: raw.secrets_file.map(abs),
            tls_cert: raw.tls_cert.map(abs),
            tls_key: raw.tls_key.map(abs),
            tls_names,
            trusted_policy_keys: raw
                .trusted_policy_keys
                .into_iter()
                .map(|k| {
                    // A key is either the base64 line or a path to a .pub file.
                    let as_path = Path::new(&k);
                    if k.starts_with("RW") || as_path.is_absolute() {
                        k
                    } else {
                        base.join(as_path).display().to_string()
                    }
                })
                .collect(),
            audit_queue: raw.audit_queue.unwrap_or(8192),
            upstream_connect_timeout: dur(
                "upstream_connect_timeout",
                raw.upstream_connect_timeout,
                Duration::from_secs(5),
            )?,
            header_timeout,
            policy_poll_interval: dur(
                "policy_poll_interval",
                raw.policy_poll_interval,
                Duration::from_secs(1),
            )?,
            revocation_poll_interval: dur(
                "revocation_poll_interval",
                raw.revocation_poll_interval,
                Duration::from_millis(200),
            )?,
            audit: crate::audit::settings::RawAuditSettings {
                admin_listen: raw.admin_listen,
                audit_mode: raw.audit_mode,
                audit_queue_full: raw.audit_queue_full,
                audit_checkpoint_interval: raw.audit_checkpoint_interval,
                audit_retention_max_age: raw.audit_retention_max_age,
                audit_retention_max_bytes: raw.audit_retention_max_bytes,
                audit_retention_interval: raw.audit_retention_interval,
                audit_disk_threshold: raw.audit_disk_threshold,
                audit_sink: raw.audit_sink,
                runbook_dir: raw.runbook_dir,
                event_concurrency: raw.event_concurrency,
            }
            .validate(base)
            .map_err(|e| ConfigError::Invalid(shown.to_string(), e))?,
            data_dir,
            policy_dir,
        })
    }

    /// The SQLite file holding the audit trail, revocations and policy state.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("appliance.db")
    }

    /// The appliance's Ed25519 key for session tokens.
    pub fn session_key_path(&self) -> PathBuf {
        self.data_dir.join("keys").join("session-signing.pk8")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.data_dir.join("tls")
    }

    /// The secrets file in use: the configured one, else `DATA_DIR/secrets.toml` if present.
    pub fn effective_secrets_file(&self) -> Option<PathBuf> {
        self.secrets_file.clone().or_else(|| {
            let p = self.data_dir.join("secrets.toml");
            p.exists().then_some(p)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = std::env::temp_dir().join(format!("appl-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("appliance.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9443\"\ndata_dir = \"state\"\ntrusted_policy_keys = [\"keys/policy.pub\", \"RWQabc\"]\nheader_timeout = \"3s\"\n",
        )
        .unwrap();
        let cfg = RuntimeConfig::load(Some(&file)).unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(cfg.data_dir, dir.join("state"));
        assert_eq!(cfg.policy_dir, dir.join("state/policy"));
        assert_eq!(
            cfg.trusted_policy_keys[0],
            dir.join("keys/policy.pub").display().to_string()
        );
        assert_eq!(cfg.trusted_policy_keys[1], "RWQabc");
        assert_eq!(cfg.header_timeout, Duration::from_secs(3));
        std::fs::write(&file, "listen = \"127.0.0.1:9443\"\nbogus = 1\n").unwrap();
        let err = RuntimeConfig::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        std::fs::write(&file, "header_timeout = \"500ms\"\n").unwrap();
        let err = RuntimeConfig::load(Some(&file)).unwrap_err().to_string();
        assert!(
            err.contains("header_timeout") && err.contains("minimum of 2s"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
