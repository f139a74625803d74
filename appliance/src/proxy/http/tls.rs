//! rustls client configs for `https://` upstreams: the public web PKI
//! (webpki roots) or a CA file named by the policy, ALPN `h2` + `http/1.1`
//! or `http/1.1` alone. One config per (CA file, ALPN) for the process, so
//! TLS session resumption works across sessions. A CA file is re-read when
//! it changes on disk.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use rustls::ClientConfig;

type Key = (Option<PathBuf>, bool);
type Entry = (Option<SystemTime>, Arc<ClientConfig>);

fn cache() -> &'static Mutex<HashMap<Key, Entry>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Entry>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The client config verifying against `ca_file` (or webpki roots),
/// offering h2 by ALPN when `h2`.
pub fn client_config(ca_file: Option<&Path>, h2: bool) -> Result<Arc<ClientConfig>, String> {
    let modified = match ca_file {
        Some(p) => Some(
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .map_err(|e| format!("CA file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let key = (ca_file.map(Path::to_path_buf), h2);
    {
        let cache = cache().lock().unwrap_or_else(|e| e.into_inner());
        if let Some((m, cfg)) = cache.get(&key) {
            if *m == modified {
                return Ok(cfg.clone());
            }
        }
    }
    let roots = match ca_file {
        Some(p) => roots_from_file(p)?,
        None => rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = if h2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    let config = Arc::new(config);
    cache()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, (modified, config.clone()));
    Ok(config)
}

fn roots_from_file(path: &Path) -> Result<rustls::RootCertStore, String> {
    let pem = std::fs::read(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| format!("CA file {}: {e}", path.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("CA file {}: {e}", path.display()))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(roots)
}
