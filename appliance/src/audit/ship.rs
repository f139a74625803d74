//! Shipping the trail upstream, at least once: one task per sink reads the
//! chain after the sink's cursor (kept in SQLite, so it survives restarts),
//! sends batches, and moves the cursor only once the receiver acknowledged
//! them. Failures back off exponentially with jitter (to `backoff_max`) and
//! never lose anything: the next attempt starts again from the cursor.
//! Every record carries its stable `id`, so receivers de-duplicate resends.
//!
//! Sinks (runtime config, `[[audit_sink]]`):
//! - `type = "syslog"`: RFC 5424 messages with RFC 5425 octet-counting
//!   framing, over TLS (`tls = true`, the default) or plain TCP. Syslog has no
//!   application acknowledgement, so a record counts as delivered once it was
//!   written on a connection that then stayed open for `settle` (default 2 s);
//!   when the connection drops, everything not yet settled is sent again.
//! - `type = "http"`: POST of NDJSON batches (gzip), `Authorization: Bearer`
//!   with the secret named by `token_secret`; a 2xx answer acknowledges.
//!
//! This module never writes records itself except `audit_sink_failing`
//! (after `fail_after` of consecutive failures, and once more on recovery).

pub mod cursor;
pub mod http;
pub mod syslog;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

/// A sink as written in the runtime config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSink {
    /// Unique name: the cursor's key and the metrics label.
    pub name: String,
    /// `syslog` or `http`.
    #[serde(rename = "type")]
    pub kind: String,
    /// syslog: `host:port`.
    pub address: Option<String>,
    /// http: `http(s)://host[:port]/path`.
    pub url: Option<String>,
    /// syslog: TLS (default true). http: from the URL scheme.
    pub tls: Option<bool>,
    /// PEM CA bundle to verify the receiver; default the public web PKI.
    pub ca_file: Option<PathBuf>,
    /// TLS server name if not the host of `address`/`url`.
    pub server_name: Option<String>,
    /// http: name of the bearer token in the secrets store.
    pub token_secret: Option<String>,
    /// syslog facility number (default 13, "log audit").
    pub facility: Option<u8>,
    /// syslog HOSTNAME (default: this machine's host name).
    pub hostname: Option<String>,
    /// syslog: how long a written record must survive on an open connection
    /// to count as delivered (default "2s").
    pub settle: Option<String>,
    /// Records per batch (default 500).
    pub batch_size: Option<usize>,
    /// Per-attempt timeout (default "10s").
    pub timeout: Option<String>,
    /// Longest backoff between attempts (default "60s").
    pub backoff_max: Option<String>,
    /// Consecutive failing time before `audit_sink_failing` (default "30s").
    pub fail_after: Option<String>,
}

/// Kind-specific settings of a validated sink.
#[derive(Debug, Clone)]
pub enum SinkKind {
    Syslog {
        address: String,
        tls: bool,
        facility: u8,
        hostname: String,
        settle: Duration,
    },
    Http {
        url: String,
        token_secret: Option<String>,
    },
}

/// A validated sink.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    pub name: String,
    pub kind: SinkKind,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
    pub batch_size: usize,
    pub timeout: Duration,
    pub backoff_max: Duration,
    pub fail_after: Duration,
}

fn duration(
    name: &str,
    key: &str,
    v: &Option<String>,
    default: Duration,
) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(s)
            .map_err(|e| format!("audit_sink {name:?}: {key} = {s:?}: {e}")),
    }
}

fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| (33..=126).contains(&b)))
        .unwrap_or_else(|| "-".to_owned())
}

impl RawSink {
    /// Checks the sink; `base` resolves a relative `ca_file`.
    pub fn validate(self, base: &std::path::Path) -> Result<SinkConfig, String> {
        let name = self.name.clone();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!(
                "audit_sink name {name:?} must match [A-Za-z0-9_-]+"
            ));
        }
        if name == "export" || name == "events" {
            return Err(format!("audit_sink name {name:?} is reserved"));
        }
        let kind = match self.kind.as_str() {
            "syslog" => {
                let address = self.address.clone().ok_or_else(|| {
                    format!("audit_sink {name:?}: syslog needs address = \"host:port\"")
                })?;
                if address
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(format!(
                        "audit_sink {name:?}: address {address:?} is not host:port"
                    ));
                }
                SinkKind::Syslog {
                    address,
                    tls: self.tls.unwrap_or(true),
                    facility: match self.facility.unwrap_or(13) {
                        f @ 0..=23 => f,
                        f => {
                            return Err(format!("audit_sink {name:?}: facility {f} is not 0..=23"))
                        }
                    },
                    hostname: self.hostname.clone().unwrap_or_else(local_hostname),
                    settle: duration(&name, "settle", &self.settle, Duration::from_secs(2))?,
                }
            }
            "http" => {
                let url = self.url.clone().ok_or_else(|| {
                    format!("audit_sink {name:?}: http needs url = \"https://...\"")
                })?;
                http::Target::parse(&url, None, None)
                    .map_err(|e| format!("audit_sink {name:?}: {e}"))?;
                SinkKind::Http {
                    url,
                    token_secret: self.token_secret.clone(),
                }
            }
            other => {
                return Err(format!(
                    "audit_sink {name:?}: type {other:?} is not syslog or http"
                ))
            }
        };
        Ok(SinkConfig {
            kind,
            ca_file: self
                .ca_file
                .map(|p| if p.is_absolute() { p } else { base.join(p) }),
            server_name: self.server_name,
            batch_size: self.batch_size.unwrap_or(500).clamp(1, 10_000),
            timeout: duration(&name, "timeout", &self.timeout, Duration::from_secs(10))?,
            backoff_max: duration(
                &name,
                "backoff_max",
                &self.backoff_max,
                Duration::from_secs(60),
            )?,
            fail_after: duration(
                &name,
                "fail_after",
                &self.fail_after,
                Duration::from_secs(30),
            )?,
            name,
        })
    }
}

/// Live state of one sink, for `/metrics`.
#[derive(Debug, Default)]
pub struct SinkStatus {
    pub name: String,
    /// Highest seq the receiver acknowledged.
    pub acked_seq: AtomicI64,
    /// Records sent (including resends).
    pub sent_records: AtomicU64,
    /// Bytes sent (after framing/compression).
    pub sent_bytes: AtomicU64,
    /// Failed attempts.
    pub failures: AtomicU64,
    /// Unix ms of the last acknowledged batch (0: none yet).
    pub last_ack_ms: AtomicI64,
    /// 1 while failing for longer than `fail_after`.
    pub failing: AtomicU64,
    pub last_error: Mutex<String>,
}

impl SinkStatus {
    pub fn new(name: &str) -> SinkStatus {
        SinkStatus {
            name: name.to_owned(),
            ..SinkStatus::default()
        }
    }

    /// Records behind the tip.
    pub fn lag(&self, tip: i64) -> i64 {
        (tip - self.acked_seq.load(Ordering::Relaxed)).max(0)
    }
}

/// Errors of a delivery attempt (all retried).
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error("connect {0}: {1}")]
    Connect(String, String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the receiver closed the connection")]
    Closed,
    #[error("HTTP {0}")]
    Status(u16),
    #[error("HTTP: {0}")]
    Http(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Config(String),
}

/// A rustls client config trusting `ca_file` (PEM) or the public web PKI.
pub fn client_tls(
    ca_file: Option<&std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, ShipError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| ShipError::Tls(format!("{}: {e}", path.display())))?;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| ShipError::Tls(format!("{}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| ShipError::Tls(format!("{}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ShipError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Starts one shipping task per sink; returns their live status.
pub fn spawn_sinks(
    sinks: &[SinkConfig],
    audit: &super::AuditHandle,
    secrets: &crate::secrets::SecretStore,
    shutdown: tokio_util::sync::CancellationToken,
) -> Vec<(Arc<SinkStatus>, tokio::task::JoinHandle<()>)> {
    sinks
        .iter()
        .map(|s| {
            let status = Arc::new(SinkStatus::new(&s.name));
            let token = match &s.kind {
                SinkKind::Http {
                    token_secret: Some(name),
                    ..
                } => {
                    let t = secrets.get(name);
                    if t.is_none() {
                        tracing::error!(sink = %s.name, secret = %name, "audit sink token secret not found; sending without a token");
                    }
                    t
                }
                _ => None,
            };
            let task = tokio::spawn(cursor::run(
                s.clone(),
                token,
                audit.clone(),
                status.clone(),
                shutdown.clone(),
            ));
            (status, task)
        })
        .collect()
}
