//! Policy tests: schema and validation, signatures (including interop with the
//! real `minisign` tool both ways), the loader, and decisions.

mod decide;
mod loader;
mod schema;
mod signature;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A unique directory under the system temp dir, removed on drop.
pub(super) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "appliance-policy-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A small valid policy with the given version.
pub(super) fn policy_text(version: u64) -> String {
    format!(
        r#"version = {version}

[identity]
issuer = "https://idp.example.com/"
audience = "appliance"
jwks_url = "https://idp.example.com/jwks.json"

[[connection]]
name = "pg-prod"
kind = "postgres"
upstream = "db.internal:5432"
allow_groups = ["dba"]

[connection.secrets]
password = "pg_prod_password"
"#
    )
}
