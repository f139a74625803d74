//! The appliance's own SSH host key (what laptops see when they `ssh
//! web-1.hoop`): Ed25519, generated on first use in
//! `DATA_DIR/ssh/host_ed25519_key` (OpenSSH format, mode 0600) and reused
//! forever after, so `tunnel-lite dns-setup` can pin it once.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};

/// File name of the host key under `DATA_DIR/ssh/`.
pub const HOST_KEY_FILE: &str = "host_ed25519_key";

/// Why the host key could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum HostKeyError {
    #[error("SSH host key {0}: {1}")]
    Io(String, std::io::Error),
    #[error("SSH host key {0} is not an OpenSSH private key: {1}")]
    Parse(String, String),
    #[error("generating the SSH host key: {0}")]
    Generate(String),
}

/// Where the host key of this data dir lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("ssh").join(HOST_KEY_FILE)
}

fn cache() -> &'static Mutex<HashMap<PathBuf, Arc<PrivateKey>>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Arc<PrivateKey>>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Loads the host key, generating and persisting it the first time.
/// Concurrent first calls agree on one key (the file is created exclusively).
pub fn load_or_generate(data_dir: &Path) -> Result<Arc<PrivateKey>, HostKeyError> {
    let p = path(data_dir);
    let mut cache = cache().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = cache.get(&p) {
        return Ok(k.clone());
    }
    let shown = p.display().to_string();
    let io = |e| HostKeyError::Io(shown.clone(), e);
    if !p.exists() {
        if let Some(dir) = p.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let key = generate()?;
        let text = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| HostKeyError::Generate(e.to_string()))?;
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
        {
            Ok(mut f) => {
                f.write_all(text.as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                tracing::info!(path = %shown, fingerprint = %fingerprint(&key), "generated the SSH host key");
            }
            // Another process won the race; use its key.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    let text = std::fs::read_to_string(&p).map_err(io)?;
    let key = PrivateKey::from_openssh(text.trim())
        .map_err(|e| HostKeyError::Parse(shown.clone(), e.to_string()))?;
    let key = Arc::new(key);
    cache.insert(p, key.clone());
    Ok(key)
}

fn generate() -> Result<PrivateKey, HostKeyError> {
    use ring::rand::SecureRandom;
    let mut seed = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| HostKeyError::Generate("no system randomness".into()))?;
    let pair = Ed25519Keypair::from_seed(&seed);
    PrivateKey::new(KeypairData::Ed25519(pair), "hoop-appliance")
        .map_err(|e| HostKeyError::Generate(e.to_string()))
}

/// `SHA256:...`, as `ssh-keygen -lf` prints it.
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key().fingerprint(HashAlg::Sha256).to_string()
}

/// The public key as an OpenSSH line without comment (`ssh-ed25519 AAAA...`).
pub fn public_line(key: &PrivateKey) -> String {
    let mut public = key.public_key().clone();
    public.set_comment("");
    public
        .to_openssh()
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The host key's public line for `GET /v1/info`, generating the key if this
/// appliance has none yet; empty if it cannot be read.
pub fn public_lines(data_dir: &Path) -> Vec<String> {
    match load_or_generate(data_dir) {
        Ok(k) => vec![public_line(&k)],
        Err(e) => {
            tracing::warn!(error = %e, "no SSH host key to publish");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_persisted_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ssh-hostkey-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = load_or_generate(&dir).unwrap();
        let mode = std::fs::metadata(path(&dir)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A fresh process (empty cache) reads the same key back.
        cache().lock().unwrap().clear();
        let b = load_or_generate(&dir).unwrap();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        assert!(fingerprint(&a).starts_with("SHA256:"));
        assert!(public_line(&a).starts_with("ssh-ed25519 AAAA"));
        assert!(!public_line(&a).contains("hoop-appliance"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
