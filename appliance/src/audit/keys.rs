//! The audit signing key: a minisign (Ed25519) key pair in the data dir
//! (`keys/audit.key`, unencrypted, mode 0600, and `keys/audit.pub`), generated
//! on first use. It signs chain checkpoints and exports, so one public key
//! checks both, with this appliance or with the `minisign` tool. It is not the
//! session-token key: rotating one never invalidates the other.

use std::io::Read;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::AuditError;

/// Secret key file name in the keys directory.
pub const AUDIT_KEY_FILE: &str = "audit.key";
/// Public key file name in the keys directory.
pub const AUDIT_PUB_FILE: &str = "audit.pub";

/// minisign secret key layout: sig_alg(2) kdf_alg(2) ... 158 bytes.
const SECRET_KEY_LEN: usize = 158;

/// The loaded audit signing key.
pub struct AuditKey {
    sk: minisign::SecretKey,
    pk: minisign::PublicKey,
    public_line: String,
    key_id: String,
    path: PathBuf,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

fn key_err(path: &Path, why: impl std::fmt::Display) -> AuditError {
    AuditError::Key(format!("{}: {why}", path.display()))
}

impl AuditKey {
    /// Loads `dir/audit.key`, generating the pair first if it does not exist.
    /// Two processes racing end up with the same key (hard links never replace).
    pub fn load_or_generate(dir: &Path) -> Result<AuditKey, AuditError> {
        let key_path = dir.join(AUDIT_KEY_FILE);
        if !key_path.exists() {
            generate(dir)?;
        }
        Self::load(&key_path)
    }

    /// Loads an unencrypted minisign secret key.
    pub fn load(key_path: &Path) -> Result<AuditKey, AuditError> {
        let text = std::fs::read_to_string(key_path).map_err(|e| key_err(key_path, e))?;
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| key_err(key_path, "no key line"))?;
        let bytes = B64
            .decode(line)
            .map_err(|_| key_err(key_path, "not base64"))?;
        if bytes.len() != SECRET_KEY_LEN || &bytes[..2] != b"Ed" || bytes[2..4] != [0, 0] {
            return Err(key_err(
                key_path,
                "not an unencrypted Ed25519 minisign secret key",
            ));
        }
        let sk = minisign::SecretKey::from_bytes(&bytes).map_err(|e| key_err(key_path, e))?;
        let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| key_err(key_path, e))?;
        let mut id = [0u8; 8];
        id.copy_from_slice(pk.keynum());
        Ok(AuditKey {
            public_line: B64.encode(pk.to_bytes()),
            key_id: crate::policy::key_id_hex(&id),
            sk,
            pk,
            path: key_path.to_path_buf(),
        })
    }

    /// The public key as one base64 line (`RW...`), as `minisign -P` takes it.
    pub fn public_key(&self) -> &str {
        &self.public_line
    }

    /// Key id as `minisign` prints it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The `.pub` file next to the secret key.
    pub fn public_key_path(&self) -> PathBuf {
        self.path.with_file_name(AUDIT_PUB_FILE)
    }

    /// A detached minisign signature (the `.minisig` text) over `data`, with
    /// `trusted_comment` signed too.
    pub fn sign(&self, data: impl Read, trusted_comment: &str) -> Result<String, AuditError> {
        let untrusted = format!("signature from minisign secret key {}", self.key_id);
        let sig = minisign::sign(
            Some(&self.pk),
            &self.sk,
            data,
            Some(trusted_comment),
            Some(&untrusted),
        )
        .map_err(|e| AuditError::Key(format!("signing failed: {e}")))?;
        Ok(sig.into_string())
    }
}

/// Writes a new pair through `policy::keygen` in a private temp dir, then
/// links both files into place without replacing existing ones.
fn generate(dir: &Path) -> Result<(), AuditError> {
    std::fs::create_dir_all(dir).map_err(|e| key_err(dir, e))?;
    let tmp = dir.join(format!(".audit-keygen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let (k, p) = crate::policy::keygen(&tmp).map_err(|e| key_err(dir, e))?;
    let key_path = dir.join(AUDIT_KEY_FILE);
    let result = match std::fs::hard_link(&k, &key_path) {
        Ok(()) => {
            let pub_path = dir.join(AUDIT_PUB_FILE);
            let _ = std::fs::remove_file(&pub_path);
            std::fs::hard_link(&p, &pub_path).map_err(|e| key_err(&pub_path, e))?;
            tracing::info!(path = %key_path.display(), "generated the audit signing key");
            Ok(())
        }
        // Someone else generated it first: theirs stays.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(key_err(&key_path, e)),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// A verifying key: a `RW...` line, or the path of a `.pub` file.
#[derive(Clone)]
pub struct AuditPublicKey {
    key: minisign_verify::PublicKey,
    line: String,
}

impl std::fmt::Debug for AuditPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditPublicKey({})", self.line)
    }
}

impl AuditPublicKey {
    /// Parses a base64 key line, a `.pub` file's text, or reads the file at `s`.
    pub fn from_str_or_file(s: &str) -> Result<AuditPublicKey, AuditError> {
        let text = if Path::new(s.trim()).is_file() {
            std::fs::read_to_string(s.trim()).map_err(|e| key_err(Path::new(s), e))?
        } else {
            s.to_owned()
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .ok_or_else(|| AuditError::Key("no public key line".into()))?;
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| AuditError::Key(format!("bad minisign public key: {e}")))?;
        Ok(AuditPublicKey {
            key,
            line: line.to_owned(),
        })
    }

    /// The key as one base64 line.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// Checks a `.minisig` text over `data`; returns the trusted comment.
    pub fn verify(&self, data: &[u8], minisig: &str) -> Result<String, AuditError> {
        let sig = minisign_verify::Signature::decode(minisig)
            .map_err(|e| AuditError::Signature(format!("malformed signature: {e}")))?;
        self.key
            .verify(data, &sig, false)
            .map_err(|e| AuditError::Signature(e.to_string()))?;
        Ok(sig.trusted_comment().to_owned())
    }

    /// Checks a `.minisig` text over everything `data` yields, streaming.
    pub fn verify_reader(&self, mut data: impl Read, minisig: &str) -> Result<(), AuditError> {
        let sig = minisign_verify::Signature::decode(minisig)
            .map_err(|e| AuditError::Signature(format!("malformed signature: {e}")))?;
        let mut v = self
            .key
            .verify_stream(&sig)
            .map_err(|e| AuditError::Signature(e.to_string()))?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = data.read(&mut buf)?;
            if n == 0 {
                break;
            }
            v.update(&buf[..n]);
        }
        v.finalize()
            .map_err(|e| AuditError::Signature(e.to_string()))
    }
}
