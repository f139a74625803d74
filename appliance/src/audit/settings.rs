//! The runtime-config keys of the audit trail, shipping, retention, event
//! routing and the admin listener, validated into [`AuditSettings`].
//! `config.rs` owns the file; this owns what these keys mean.
//!
//! ```toml
//! admin_listen = "127.0.0.1:9090"      # /metrics /healthz /readyz; default off
//! audit_mode = "fast"                  # default when the policy has no [audit] mode
//! audit_queue_full = "backpressure"    # or "refuse"
//! audit_checkpoint_interval = "1m"
//! audit_retention_max_age = "400d"     # delete acknowledged records older than this
//! audit_retention_max_bytes = "20GiB"  # ... or while the database is larger
//! audit_retention_interval = "10m"
//! audit_disk_threshold = "16GiB"       # log, metric, audit_disk_threshold event
//! runbook_dir = "/etc/appliance/runbooks"
//! event_concurrency = 4
//!
//! [[audit_sink]]
//! name = "siem"
//! type = "syslog"
//! address = "siem.example.com:6514"
//! ca_file = "/etc/appliance/siem-ca.pem"
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::retention::{parse_size, RetentionConfig};
use super::ship::{RawSink, SinkConfig};
use super::{AuditMode, QueueFullPolicy};

/// The raw values, as `config.rs` parsed them.
#[derive(Debug, Default)]
pub struct RawAuditSettings {
    pub admin_listen: Option<String>,
    pub audit_mode: Option<String>,
    pub audit_queue_full: Option<String>,
    pub audit_checkpoint_interval: Option<String>,
    pub audit_retention_max_age: Option<String>,
    pub audit_retention_max_bytes: Option<String>,
    pub audit_retention_interval: Option<String>,
    pub audit_disk_threshold: Option<String>,
    pub audit_sink: Vec<RawSink>,
    pub runbook_dir: Option<PathBuf>,
    pub event_concurrency: Option<usize>,
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The admin listener's address; `None` = off.
    pub admin_listen: Option<SocketAddr>,
    pub default_mode: AuditMode,
    pub default_queue_full: QueueFullPolicy,
    pub checkpoint_interval: Duration,
    pub retention: RetentionConfig,
    pub sinks: Vec<SinkConfig>,
    pub runbook_dir: Option<PathBuf>,
    pub event_concurrency: usize,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            admin_listen: None,
            default_mode: AuditMode::Fast,
            default_queue_full: QueueFullPolicy::Backpressure,
            checkpoint_interval: Duration::from_secs(60),
            retention: RetentionConfig {
                interval: Duration::from_secs(600),
                ..RetentionConfig::default()
            },
            sinks: Vec::new(),
            runbook_dir: None,
            event_concurrency: 4,
        }
    }
}

fn dur(key: &str, v: Option<String>, default: Duration) -> Result<Duration, String> {
    match v {
        None => Ok(default),
        Some(s) => humantime::parse_duration(&s).map_err(|e| format!("{key} = {s:?}: {e}")),
    }
}

fn size(key: &str, v: Option<String>) -> Result<Option<u64>, String> {
    v.map(|s| parse_size(&s).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

impl RawAuditSettings {
    /// Validates; relative paths resolve against `base`.
    pub fn validate(self, base: &Path) -> Result<AuditSettings, String> {
        let admin_listen = match self.admin_listen.as_deref() {
            None | Some("off") | Some("") => None,
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|e| {
                format!("admin_listen = {a:?}: {e} (use \"127.0.0.1:9090\" or \"off\")")
            })?),
        };
        let default_mode = match self.audit_mode.as_deref() {
            None | Some("fast") => AuditMode::Fast,
            Some("strict") => AuditMode::Strict,
            Some(o) => return Err(format!("audit_mode = {o:?}: \"strict\" or \"fast\"")),
        };
        let default_queue_full = match self.audit_queue_full.as_deref() {
            None | Some("backpressure") => QueueFullPolicy::Backpressure,
            Some("refuse") => QueueFullPolicy::Refuse,
            Some(o) => {
                return Err(format!(
                    "audit_queue_full = {o:?}: \"backpressure\" or \"refuse\""
                ))
            }
        };
        let mut sinks: Vec<SinkConfig> = Vec::new();
        for raw in self.audit_sink {
            let s = raw.validate(base)?;
            if sinks.iter().any(|o| o.name == s.name) {
                return Err(format!("audit_sink {:?} is defined twice", s.name));
            }
            sinks.push(s);
        }
        let retention = RetentionConfig {
            max_age: self
                .audit_retention_max_age
                .map(|s| {
                    humantime::parse_duration(&s)
                        .map_err(|e| format!("audit_retention_max_age = {s:?}: {e}"))
                })
                .transpose()?,
            max_bytes: size("audit_retention_max_bytes", self.audit_retention_max_bytes)?,
            disk_threshold: size("audit_disk_threshold", self.audit_disk_threshold)?,
            interval: dur(
                "audit_retention_interval",
                self.audit_retention_interval,
                Duration::from_secs(600),
            )?,
            sinks: sinks.iter().map(|s| s.name.clone()).collect(),
        };
        Ok(AuditSettings {
            admin_listen,
            default_mode,
            default_queue_full,
            checkpoint_interval: dur(
                "audit_checkpoint_interval",
                self.audit_checkpoint_interval,
                Duration::from_secs(60),
            )?,
            retention,
            sinks,
            runbook_dir: self
                .runbook_dir
                .map(|p| if p.is_absolute() { p } else { base.join(p) }),
            event_concurrency: self.event_concurrency.unwrap_or(4).clamp(1, 64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(kind: &str) -> RawSink {
        RawSink {
            name: "siem".into(),
            kind: kind.into(),
            address: Some("siem.example.com:6514".into()),
            url: Some("https://ingest.example.com/audit".into()),
            tls: None,
            ca_file: Some("ca.pem".into()),
            server_name: None,
            token_secret: Some("tok".into()),
            facility: None,
            hostname: Some("gw1".into()),
            settle: None,
            batch_size: None,
            timeout: None,
            backoff_max: Some("5s".into()),
            fail_after: None,
        }
    }

    #[test]
    fn settings_validate_with_defaults_and_name_what_is_wrong() {
        let base = Path::new("/etc/appliance");
        let s = RawAuditSettings {
            admin_listen: Some("127.0.0.1:9090".into()),
            audit_mode: Some("strict".into()),
            audit_retention_max_bytes: Some("2GiB".into()),
            audit_sink: vec![sink("syslog")],
            runbook_dir: Some("runbooks".into()),
            ..Default::default()
        }
        .validate(base)
        .unwrap();
        assert_eq!(s.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
        assert_eq!(s.default_mode, AuditMode::Strict);
        assert_eq!(s.retention.max_bytes, Some(2 << 30));
        assert_eq!(s.retention.sinks, vec!["siem".to_string()]);
        assert_eq!(
            s.runbook_dir,
            Some(PathBuf::from("/etc/appliance/runbooks"))
        );
        assert_eq!(
            s.sinks[0].ca_file,
            Some(PathBuf::from("/etc/appliance/ca.pem"))
        );
        assert_eq!(s.sinks[0].backoff_max, Duration::from_secs(5));
        assert!(matches!(
            s.sinks[0].kind,
            super::super::ship::SinkKind::Syslog {
                tls: true,
                facility: 13,
                ..
            }
        ));
        assert!(RawAuditSettings::default()
            .validate(base)
            .unwrap()
            .admin_listen
            .is_none());
        for (raw, needle) in [
            (
                RawAuditSettings {
                    audit_sink: vec![sink("kafka")],
                    ..Default::default()
                },
                "kafka",
            ),
            (
                RawAuditSettings {
                    audit_sink: vec![sink("http"), sink("http")],
                    ..Default::default()
                },
                "twice",
            ),
            (
                RawAuditSettings {
                    audit_mode: Some("eventual".into()),
                    ..Default::default()
                },
                "audit_mode",
            ),
            (
                RawAuditSettings {
                    admin_listen: Some("9090".into()),
                    ..Default::default()
                },
                "admin_listen",
            ),
            (
                RawAuditSettings {
                    audit_disk_threshold: Some("lots".into()),
                    ..Default::default()
                },
                "audit_disk_threshold",
            ),
        ] {
            let err = raw.validate(base).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }
}
