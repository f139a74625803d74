//! tunnel-lite's per-user state: which appliance, how to trust it, the
//! session token, and the last connection list (for `status` and
//! `dns-setup` when the appliance is unreachable). Stored as JSON with mode
//! 0600 in a 0700 directory, because the token is a bearer credential.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::api::ConnectionInfo;
use crate::tls::Trust;

pub const STATE_FILE: &str = "state.json";

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "no tunnel-lite state in {0}; run `tunnel-lite login --appliance HOST:PORT ...` first"
    )]
    NotLoggedIn(String),
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    #[error("{0} is not valid tunnel-lite state: {1}")]
    Corrupt(String, String),
    #[error("cannot find a config directory: set TUNNEL_LITE_CONFIG_DIR, XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
}

/// How the appliance's certificate is trusted, as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TrustSpec {
    /// Lowercase hex SHA-256 of the appliance certificate.
    Fingerprint(String),
    CaFile(PathBuf),
}

impl TrustSpec {
    pub fn to_trust(&self) -> Result<Trust, crate::tls::TlsError> {
        Ok(match self {
            TrustSpec::Fingerprint(fp) => Trust::Pinned(crate::tls::parse_fingerprint(fp)?),
            TrustSpec::CaFile(p) => Trust::CaFile(p.clone()),
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// `host:port` of the appliance's TLS listener.
    pub appliance: String,
    pub trust: TrustSpec,
    pub session_token: String,
    pub user: String,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Unix seconds.
    pub expires_at: u64,
    #[serde(default)]
    pub dns_suffix: Option<String>,
    #[serde(default)]
    pub connections: Vec<ConnectionInfo>,
}

/// The config directory: `$TUNNEL_LITE_CONFIG_DIR`, else
/// `$XDG_CONFIG_HOME/tunnel-lite`, else `$HOME/.config/tunnel-lite`.
pub fn default_dir() -> Result<PathBuf, StateError> {
    if let Some(d) = std::env::var_os("TUNNEL_LITE_CONFIG_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("tunnel-lite"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config").join("tunnel-lite")),
        None => Err(StateError::NoConfigDir),
    }
}

impl State {
    pub fn load(dir: &Path) -> Result<State, StateError> {
        let path = dir.join(STATE_FILE);
        let shown = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotLoggedIn(dir.display().to_string()))
            }
            Err(e) => return Err(StateError::Io(shown, e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt(shown, e.to_string()))
    }

    /// Writes atomically (temp file + rename), mode 0600, directory 0700.
    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let io = |p: &Path, e| StateError::Io(p.display().to_string(), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io(dir, e))?;
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(format!(".{STATE_FILE}.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| StateError::Corrupt(path.display().to_string(), e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| io(&tmp, e))?;
        f.write_all(&bytes).map_err(|e| io(&tmp, e))?;
        f.sync_all().map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
    }

    pub fn is_expired(&self, now_unix: u64) -> bool {
        self.expires_at <= now_unix
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tl-state-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(State::load(&dir), Err(StateError::NotLoggedIn(_))));
        let s = State {
            appliance: "127.0.0.1:8443".into(),
            trust: TrustSpec::Fingerprint("ab".repeat(32)),
            session_token: "t.o.k".into(),
            user: "alice".into(),
            groups: vec!["dba".into()],
            expires_at: 10,
            dns_suffix: Some("hoop".into()),
            connections: vec![],
        };
        s.save(&dir).unwrap();
        let mode = std::fs::metadata(dir.join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(dmode & 0o777, 0o700);
        let back = State::load(&dir).unwrap();
        assert_eq!(back.user, "alice");
        assert!(back.is_expired(10) && !back.is_expired(9));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
