//! The appliance's local secret store: credentials the proxies inject
//! upstream, resolved by the names the policy bundle gives. Sources: a TOML
//! file of `name = "value"` pairs (owner-only permissions) and
//! `APPLIANCE_SECRET_<NAME>` environment variables, which take precedence.
//!
//! Must not: let a value reach a log, an error message or a serializer.
//! [`Secret`] prints as `***` and is not `Serialize`; errors name files,
//! lines and secret names, never values.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

/// Environment variable prefix: `APPLIANCE_SECRET_PG_PROD_PASSWORD` provides
/// the secret `pg_prod_password`.
pub const ENV_PREFIX: &str = "APPLIANCE_SECRET_";

/// A secret value. `Debug` and `Display` print `***`; use [`Secret::expose`]
/// at the single place the value goes on the wire.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Why the secret store could not be loaded. Never carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secrets file {} is not a regular file", path.display())]
    NotRegularFile { path: PathBuf },
    #[error(
        "secrets file {} has mode {mode:04o}; it must not be readable by group or others (chmod 600)",
        path.display()
    )]
    InsecureMode { path: PathBuf, mode: u32 },
    #[error("secrets file {} is not UTF-8 text", path.display())]
    NotUtf8 { path: PathBuf },
    /// The TOML parser's own message is not passed on: it quotes the line.
    #[error("secrets file {}: line {line} is malformed (expected name = \"value\")", path.display())]
    Malformed { path: PathBuf, line: usize },
    #[error("secrets file {}: secret {name:?} must be a string (name = \"value\")", path.display())]
    NotAString { path: PathBuf, name: String },
    #[error("{source_name}: secret name {name:?} must match [A-Za-z0-9_]+")]
    InvalidName { source_name: String, name: String },
    #[error("environment variable {var} is not UTF-8")]
    EnvNotUtf8 { var: String },
}

/// Secrets by name. File names are case-sensitive; environment variables
/// match a name case-insensitively (they are upper case) and win.
#[derive(Clone, Default)]
pub struct SecretStore {
    file: BTreeMap<String, Secret>,
    /// Keyed by upper-cased name.
    env: BTreeMap<String, Secret>,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("names", &self.names())
            .finish()
    }
}

impl SecretStore {
    /// Load from `file` (if any) and the process environment.
    pub fn load(file: Option<&Path>) -> Result<SecretStore, SecretsError> {
        SecretStore::load_from(file, std::env::vars_os())
    }

    /// Load from `file` (if any) and the given environment (tests pass their own).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> Result<SecretStore, SecretsError> {
        let file = match file {
            Some(path) => load_file(path)?,
            None => BTreeMap::new(),
        };
        let mut envs = BTreeMap::new();
        for (k, v) in env {
            let Some(k) = k.to_str() else { continue };
            let Some(name) = k.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if !is_name(name) {
                return Err(SecretsError::InvalidName {
                    source_name: format!("environment variable {k}"),
                    name: name.to_string(),
                });
            }
            let v = v
                .into_string()
                .map_err(|_| SecretsError::EnvNotUtf8 { var: k.to_string() })?;
            envs.insert(name.to_ascii_uppercase(), Secret(v));
        }
        Ok(SecretStore { file, env: envs })
    }

    /// The secret called `name`: `APPLIANCE_SECRET_<NAME>` first, then the file.
    pub fn get(&self, name: &str) -> Option<Secret> {
        self.env
            .get(&name.to_ascii_uppercase())
            .or_else(|| self.file.get(name))
            .cloned()
    }

    /// Names available, sorted: the file's as written, and environment-only
    /// ones in lower case.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.file.keys().cloned().collect();
        for upper in self.env.keys() {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(upper)) {
                names.push(upper.to_ascii_lowercase());
            }
        }
        names.sort();
        names
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn load_file(path: &Path) -> Result<BTreeMap<String, Secret>, SecretsError> {
    let io = |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    };
    // Check and read through one handle, so the file checked is the file read.
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(SecretsError::NotRegularFile {
            path: path.to_path_buf(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(SecretsError::InsecureMode {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).map_err(io)?;
    let text = String::from_utf8(bytes).map_err(|_| SecretsError::NotUtf8 {
        path: path.to_path_buf(),
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| SecretsError::Malformed {
        path: path.to_path_buf(),
        line: e.span().map(|s| line_of(&text, s.start)).unwrap_or(1),
    })?;
    let mut out = BTreeMap::new();
    for (name, value) in table {
        if !is_name(&name) {
            return Err(SecretsError::InvalidName {
                source_name: format!("secrets file {}", path.display()),
                name,
            });
        }
        match value {
            toml::Value::String(v) => {
                out.insert(name, Secret(v));
            }
            _ => {
                return Err(SecretsError::NotAString {
                    path: path.to_path_buf(),
                    name,
                })
            }
        }
    }
    Ok(out)
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!(
                "appliance-secrets-{}-{}-{nanos}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str, mode: u32) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
    }

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{:?}", Some(s.clone())), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn loads_file_and_env_wins() {
        let dir = TempDir::new();
        let p = dir.write(
            "secrets.toml",
            "pg_prod_password = \"from-file\"\ntoken = \"t0k\"\n",
            0o600,
        );
        let store = SecretStore::load_from(
            Some(&p),
            env(&[
                ("APPLIANCE_SECRET_PG_PROD_PASSWORD", "from-env"),
                ("APPLIANCE_SECRET_EXTRA", "x"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(store.get("pg_prod_password").unwrap().expose(), "from-env");
        assert_eq!(store.get("token").unwrap().expose(), "t0k");
        assert_eq!(store.get("extra").unwrap().expose(), "x");
        assert!(store.get("missing").is_none());
        assert_eq!(store.names(), vec!["extra", "pg_prod_password", "token"]);
        assert!(!format!("{store:?}").contains("from-"));
    }

    #[test]
    fn no_file_env_only() {
        let store = SecretStore::load_from(None, env(&[("APPLIANCE_SECRET_TOKEN", "v")])).unwrap();
        assert_eq!(store.get("token").unwrap().expose(), "v");
        assert_eq!(store.get("TOKEN").unwrap().expose(), "v");
    }

    #[test]
    fn refuses_group_or_world_readable_file() {
        let dir = TempDir::new();
        let p = dir.write("secrets.toml", "a = \"b\"\n", 0o644);
        let err = SecretStore::load_from(Some(&p), env(&[])).unwrap_err();
        assert!(matches!(
            err,
            SecretsError::InsecureMode { mode: 0o644, .. }
        ));
        let msg = err.to_string();
        assert!(msg.contains(&p.display().to_string()), "{msg}");
        assert!(msg.contains("mode 0644"), "{msg}");
        assert!(msg.contains("chmod 600"), "{msg}");

        let p = dir.write("s2.toml", "a = \"b\"\n", 0o640);
        assert!(SecretStore::load_from(Some(&p), env(&[])).is_err());
        let p = dir.write("s3.toml", "a = \"b\"\n", 0o400);
        assert!(SecretStore::load_from(Some(&p), env(&[])).is_ok());
    }

    #[test]
    fn refuses_directory_and_missing_file() {
        let dir = TempDir::new();
        let err = SecretStore::load_from(Some(&dir.0), env(&[])).unwrap_err();
        assert!(matches!(err, SecretsError::NotRegularFile { .. }), "{err}");
        let err = SecretStore::load_from(Some(&dir.0.join("nope")), env(&[])).unwrap_err();
        assert!(matches!(err, SecretsError::Io { .. }), "{err}");
    }

    #[test]
    fn malformed_file_error_does_not_echo_values() {
        let dir = TempDir::new();
        let cases = [
            // syntax error on a line holding a secret
            "ok = \"fine\"\npg = \"S3cr3t-Value\n",
            "ok = \"fine\"\npg = S3cr3t-Value\n",
            // not a string: the value would appear in serde's "invalid type" message
            "pg = 8675309\n",
            "[pg]\nS3cr3t-Value = \"S3cr3t-Value\"\n",
        ];
        for (i, text) in cases.iter().enumerate() {
            let p = dir.write(&format!("s{i}.toml"), text, 0o600);
            let err = SecretStore::load_from(Some(&p), env(&[])).unwrap_err();
            let msg = format!("{err} {err:?}");
            assert!(!msg.contains("S3cr3t"), "case {i} leaks: {msg}");
            assert!(!msg.contains("8675309"), "case {i} leaks: {msg}");
        }
        let p = dir.write("line.toml", "ok = \"fine\"\npg = \"S3cr3t-Value\n", 0o600);
        let err = SecretStore::load_from(Some(&p), env(&[])).unwrap_err();
        assert!(
            matches!(err, SecretsError::Malformed { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_names() {
        let err = SecretStore::load_from(None, env(&[("APPLIANCE_SECRET_A-B", "v")])).unwrap_err();
        assert!(matches!(err, SecretsError::InvalidName { .. }), "{err}");
        assert!(!err.to_string().contains("\"v\""));
    }
}
