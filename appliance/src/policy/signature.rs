//! Detached minisign (Ed25519) signatures over the policy bundle, in the exact
//! formats of the `minisign` tool, and [`VerifiedPolicy`], the only way a
//! policy reaches the server. The signature is checked before the TOML is
//! parsed. File I/O here is limited to the CLI helpers (keygen, sign, verify).

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use super::schema::Policy;
use super::validate::parse_policy;
use super::PolicyError;

/// Secret key file name written by [`keygen`].
pub const SECRET_KEY_FILE: &str = "policy.key";
/// Public key file name written by [`keygen`].
pub const PUBLIC_KEY_FILE: &str = "policy.pub";
/// Suffix of a detached signature file.
pub const SIGNATURE_SUFFIX: &str = ".minisig";
/// Largest file the CLI helpers read (bundles, keys, signatures).
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

const COMMENT_PREFIX: &str = "untrusted comment:";
const SIG_ALG: [u8; 2] = *b"Ed";
const KDF_NONE: [u8; 2] = [0, 0];
const KDF_SCRYPT: [u8; 2] = *b"Sc";
/// Public key: alg(2) keynum(8) key(32).
const PUBLIC_KEY_LEN: usize = 42;
/// Signature line: alg(2) keynum(8) sig(64).
const SIGNATURE_LEN: usize = 74;
/// Secret key: sig_alg(2) kdf_alg(2) chk_alg(2) salt(32) opslimit(8)
/// memlimit(8) keynum(8) sk(64) chk(32).
const SECRET_KEY_LEN: usize = 158;
/// salt + opslimit + memlimit: zero in an unencrypted key, as `minisign -G -W` writes them.
const KDF_PARAMS: std::ops::Range<usize> = 6..54;

/// A minisign public key the appliance trusts to sign policy bundles.
#[derive(Clone)]
pub struct TrustedKey {
    key: minisign_verify::PublicKey,
    id: [u8; 8],
    base64: String,
}

impl TrustedKey {
    /// Parse the base64 line (`RW...`) or a whole `.pub` file's text.
    pub fn parse(text: &str) -> Result<TrustedKey, PolicyError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with(COMMENT_PREFIX))
            .ok_or_else(|| PolicyError::KeyMalformed("no key line found".to_string()))?;
        let bytes = B64
            .decode(line)
            .map_err(|_| PolicyError::KeyMalformed("not base64".to_string()))?;
        if bytes.len() != PUBLIC_KEY_LEN || bytes[..2] != SIG_ALG {
            return Err(PolicyError::KeyMalformed(
                "not an Ed25519 minisign public key".to_string(),
            ));
        }
        let key = minisign_verify::PublicKey::from_base64(line)
            .map_err(|e| PolicyError::KeyMalformed(e.to_string()))?;
        Ok(TrustedKey {
            key,
            id: key_id(&bytes[2..10]),
            base64: line.to_string(),
        })
    }

    /// `s` is a path to an existing `.pub` file, or the key text itself.
    pub fn from_str_or_file(s: &str) -> Result<TrustedKey, PolicyError> {
        let path = Path::new(s.trim());
        if path.is_file() {
            let text = read_text(path)?;
            return TrustedKey::parse(&text).map_err(|e| match e {
                PolicyError::KeyMalformed(why) => {
                    PolicyError::KeyMalformed(format!("{}: {why}", path.display()))
                }
                other => other,
            });
        }
        TrustedKey::parse(s).map_err(|e| match e {
            PolicyError::KeyMalformed(why) => PolicyError::KeyMalformed(format!(
                "{why} (expected a minisign public key `RW...` or the path of an existing .pub file)"
            )),
            other => other,
        })
    }

    /// Key id as `minisign` prints it (16 uppercase hex digits).
    pub fn key_id_hex(&self) -> String {
        key_id_hex(&self.id)
    }

    /// The key as one base64 line (`RW...`).
    pub fn to_base64(&self) -> &str {
        &self.base64
    }
}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustedKey({})", self.key_id_hex())
    }
}

impl PartialEq for TrustedKey {
    fn eq(&self, other: &Self) -> bool {
        self.base64 == other.base64
    }
}

impl Eq for TrustedKey {}

fn key_id(b: &[u8]) -> [u8; 8] {
    let mut id = [0u8; 8];
    id.copy_from_slice(b);
    id
}

/// Rendered the way minisign prints key ids (`%X`, no zero padding), so the
/// id in our logs and audit matches the one in a `.pub` file's comment.
pub(crate) fn key_id_hex(id: &[u8; 8]) -> String {
    format!("{:X}", u64::from_le_bytes(*id))
}

/// A policy whose bundle was signed by a trusted key. Only [`verify_bundle`]
/// builds one, so "used an unverified policy" does not compile.
#[derive(Debug, Clone)]
pub struct VerifiedPolicy {
    policy: Policy,
    signer_key_id: String,
    bundle_sha256: String,
    trusted_comment: String,
}

impl VerifiedPolicy {
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Key id (hex, as `minisign` prints it) of the key that signed the bundle.
    pub fn signer_key_id(&self) -> &str {
        &self.signer_key_id
    }

    /// SHA-256 of the bundle's TOML bytes, lowercase hex.
    pub fn bundle_sha256(&self) -> &str {
        &self.bundle_sha256
    }

    /// The signature's trusted (signed) comment, e.g. `timestamp:... file:...`.
    pub fn trusted_comment(&self) -> &str {
        &self.trusted_comment
    }
}

impl Deref for VerifiedPolicy {
    type Target = Policy;
    fn deref(&self) -> &Policy {
        &self.policy
    }
}

/// Check `minisig_text` over `toml_bytes` against `trusted`, then parse and
/// validate the policy.
pub fn verify_bundle(
    toml_bytes: &[u8],
    minisig_text: &str,
    trusted: &[TrustedKey],
) -> Result<VerifiedPolicy, PolicyError> {
    let (signer, trusted_comment) = check_signature(toml_bytes, minisig_text, trusted)?;
    let text = std::str::from_utf8(toml_bytes).map_err(|_| PolicyError::NotUtf8)?;
    let policy = parse_policy(text)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, toml_bytes);
    Ok(VerifiedPolicy {
        policy,
        signer_key_id: signer.key_id_hex(),
        bundle_sha256: hex(digest.as_ref()),
        trusted_comment,
    })
}

/// Returns the key that signed and the trusted comment.
fn check_signature<'k>(
    data: &[u8],
    minisig_text: &str,
    trusted: &'k [TrustedKey],
) -> Result<(&'k TrustedKey, String), PolicyError> {
    let malformed = |why: &str| PolicyError::SignatureMalformed(why.to_string());
    let sig_line = minisig_text.lines().nth(1).ok_or_else(|| {
        malformed(
            "expected 4 lines (untrusted comment, signature, trusted comment, global signature)",
        )
    })?;
    let sig_bytes = B64
        .decode(sig_line.trim())
        .map_err(|_| malformed("signature line is not base64"))?;
    if sig_bytes.len() != SIGNATURE_LEN {
        return Err(malformed("signature line has the wrong length"));
    }
    let sig = minisign_verify::Signature::decode(minisig_text)
        .map_err(|e| PolicyError::SignatureMalformed(e.to_string()))?;
    let id = key_id(&sig_bytes[2..10]);
    let key = trusted
        .iter()
        .find(|k| k.id == id)
        .ok_or_else(|| PolicyError::UntrustedSigner {
            key_id: key_id_hex(&id),
            trusted: trusted.iter().map(TrustedKey::key_id_hex).collect(),
        })?;
    match key.key.verify(data, &sig, true) {
        Ok(()) => Ok((key, sig.trusted_comment().to_string())),
        Err(minisign_verify::Error::InvalidSignature) => Err(PolicyError::SignatureMismatch {
            key_id: key.key_id_hex(),
        }),
        Err(e) => Err(PolicyError::SignatureMalformed(e.to_string())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PolicyError + '_ {
    move |source| PolicyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Read a file of at most [`MAX_FILE_BYTES`].
pub(super) fn read_capped(path: &Path) -> Result<Vec<u8>, PolicyError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io_err(path))?;
    if buf.len() as u64 > MAX_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            path: path.to_path_buf(),
            max: MAX_FILE_BYTES,
        });
    }
    Ok(buf)
}

fn read_text(path: &Path) -> Result<String, PolicyError> {
    String::from_utf8(read_capped(path)?).map_err(|_| PolicyError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8 text"),
    })
}

/// `FILE` -> `FILE.minisig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(SIGNATURE_SUFFIX);
    PathBuf::from(s)
}

/// Create `out_dir/policy.key` (unencrypted, mode 0600, usable by
/// `minisign -S -s`) and `out_dir/policy.pub`. Refuses to overwrite either.
pub fn keygen(out_dir: &Path) -> Result<(PathBuf, PathBuf), PolicyError> {
    let key_path = out_dir.join(SECRET_KEY_FILE);
    let pub_path = out_dir.join(PUBLIC_KEY_FILE);
    for p in [&key_path, &pub_path] {
        if p.exists() {
            return Err(PolicyError::AlreadyExists { path: p.clone() });
        }
    }
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;

    // An empty password computes the checksum and skips encryption; the KDF
    // fields are then cleared so the key reads as unencrypted (`-W`).
    let kp = minisign::KeyPair::generate_encrypted_keypair(Some(String::new()))
        .map_err(|e| PolicyError::Sign(e.to_string()))?;
    let mut sk = kp.sk.to_bytes();
    if sk.len() != SECRET_KEY_LEN {
        return Err(PolicyError::Sign(
            "unexpected secret key layout".to_string(),
        ));
    }
    sk[2..4].copy_from_slice(&KDF_NONE);
    sk[KDF_PARAMS].fill(0);
    let id = key_id(kp.pk.keynum());
    let key_text = format!(
        "untrusted comment: minisign secret key {} (unencrypted)\n{}\n",
        key_id_hex(&id),
        B64.encode(&sk)
    );
    let pub_text = format!(
        "untrusted comment: minisign public key {}\n{}\n",
        key_id_hex(&id),
        B64.encode(kp.pk.to_bytes())
    );

    write_new(&key_path, key_text.as_bytes(), 0o600)?;
    write_new(&pub_path, pub_text.as_bytes(), 0o644)?;
    Ok((key_path, pub_path))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PolicyError> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => PolicyError::AlreadyExists {
            path: path.to_path_buf(),
        },
        _ => io_err(path)(e),
    })?;
    f.write_all(bytes).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

/// Load an unencrypted minisign secret key (ours, or `minisign -G -W`).
fn load_secret_key(key_file: &Path) -> Result<minisign::SecretKey, PolicyError> {
    let bad = |reason: &str| PolicyError::SecretKey {
        path: key_file.to_path_buf(),
        reason: reason.to_string(),
    };
    let text = read_text(key_file)?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with(COMMENT_PREFIX))
        .ok_or_else(|| bad("no key line found"))?;
    let bytes = B64
        .decode(line)
        .map_err(|_| bad("not a minisign secret key (bad base64)"))?;
    if bytes.len() != SECRET_KEY_LEN || bytes[..2] != SIG_ALG {
        return Err(bad("not an Ed25519 minisign secret key"));
    }
    match [bytes[2], bytes[3]] {
        KDF_NONE => {}
        KDF_SCRYPT => {
            return Err(bad(
                "the key is password-protected; use an unencrypted key \
                 (`appliance policy keygen`, or `minisign -G -W`)",
            ))
        }
        _ => return Err(bad("unsupported key derivation function")),
    }
    minisign::SecretKey::from_bytes(&bytes).map_err(|e| bad(&e.to_string()))
}

/// Sign `data` with the secret key in `key_file`; returns the `.minisig` text.
/// `file_name` goes into the trusted comment, as `minisign -S` does.
pub fn sign_bytes(key_file: &Path, data: &[u8], file_name: &str) -> Result<String, PolicyError> {
    let sk = load_secret_key(key_file)?;
    let pk = minisign::PublicKey::from_secret_key(&sk).map_err(|e| PolicyError::SecretKey {
        path: key_file.to_path_buf(),
        reason: e.to_string(),
    })?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name: String = file_name.chars().filter(|c| !c.is_control()).collect();
    let trusted = format!("timestamp:{now}\tfile:{name}\thashed");
    let untrusted = format!(
        "signature from minisign secret key {}",
        key_id_hex(&key_id(pk.keynum()))
    );
    let sig = minisign::sign(Some(&pk), &sk, data, Some(&trusted), Some(&untrusted))
        .map_err(|e| PolicyError::Sign(e.to_string()))?;
    Ok(sig.into_string())
}

/// Sign `file` with the secret key in `key_file`, writing `FILE.minisig`
/// (replaced if present). Any file can be signed; check a policy with
/// `parse_policy` first.
pub fn sign_file(key_file: &Path, file: &Path) -> Result<PathBuf, PolicyError> {
    let data = read_capped(file)?;
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sig = sign_bytes(key_file, &data, &name)?;
    let sig_path = signature_path(file);
    fs::write(&sig_path, sig).map_err(io_err(&sig_path))?;
    Ok(sig_path)
}

/// Check `FILE.minisig` over `file` with `pubkey` (signature only; the
/// content is not parsed).
pub fn verify_file(pubkey: &TrustedKey, file: &Path) -> Result<(), PolicyError> {
    let data = read_capped(file)?;
    let sig = read_text(&signature_path(file))?;
    check_signature(&data, &sig, std::slice::from_ref(pubkey)).map(|_| ())
}
